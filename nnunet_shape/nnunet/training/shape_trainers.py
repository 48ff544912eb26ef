"""nnU-Net trainers supervised by shape descriptors only (papers 000 and 001).

The network sees the whole scan (``nnUNetTrainerWholeScan``); the loss is the extended
log-barrier on per-class descriptors (``nnunet_shape.core.losses``) - no voxel loss at all. Targets
are computed from the (augmented) label map of each case in the batch, in physical units: the
preprocessed spacing of that case. Checkpoints are selected by descriptor satisfaction on the
validation cases, never by a voxel metric.

Variants follow nnU-Net's idiom: small subclasses that change class attributes
(``nnUNetTrainerShapeDescriptorsVC``), and one explicit class per training length
(``..._5epochs``, ``..._debug``; the schedules are in :mod:`nnunet_shape.nnunet.training.variants`).

Subclasses that take their targets from elsewhere (``nnUNetTrainerShapeDescriptorsFromFile``)
override one method, ``_loss_targets(batch) -> (DescriptorBounds, spacing)``; the loss is always
called with explicit bounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_shape.core.barrier import BarrierSchedule
from nnunet_shape.core.bounds import DescriptorBounds
from nnunet_shape.core.descriptor_templates import (
    ellipsoid_template,
    template_cross_entropy,
    template_targets_from_bounds,
    template_volume_from_bounds,
)
from nnunet_shape.core.descriptors import one_hot_labels
from nnunet_shape.core.geometry import preprocessed_spacing
from nnunet_shape.core.image_terms import edge_aware_boundary, prediction_entropy, region_homogeneity
from nnunet_shape.core.intensity import (
    INTENSITY_STATISTICS,
    INTENSITY_VALUE_KEYS,
    IntensityBounds,
    IntensityBoundsTerm,
    class_intensity,
    intensity_bounds_from_targets,
    intensity_values,
)
from nnunet_shape.core.losses import ShapeDescriptorLoss, shape_descriptor_loss
from nnunet_shape.errors import UserError
from nnunet_shape.nnunet.training.progress import plot_descriptor_progress
from nnunet_shape.nnunet.training.variants import (
    DebugSchedule,
    DemoSchedule,
    Schedule5Epochs,
    Schedule50Epochs,
    Schedule250Epochs,
    SuiteSchedule,
    trainer_names,
)
from nnunet_shape.nnunet.training.whole_scan import load_preprocessed_image, nnUNetTrainerWholeScan

#: logger keys added by the descriptor trainers (one value per epoch, as nnU-Net's logger wants)
T_KEY = "barrier_t"
TRAIN_SATISFACTION_KEY = "train_descriptor_satisfaction"
VAL_SATISFACTION_KEY = "val_descriptor_satisfaction"
EMA_SATISFACTION_KEY = "ema_val_descriptor_satisfaction"
#: the same measured on the hard prediction (argmax one-hot; regions: sigmoid > 0.5), what the user
#: gets from nnUNetv2_predict; the EMA of the validation value selects checkpoint_best
TRAIN_HARD_SATISFACTION_KEY = "train_descriptor_satisfaction_hard"
VAL_HARD_SATISFACTION_KEY = "val_descriptor_satisfaction_hard"
EMA_HARD_SATISFACTION_KEY = "ema_val_descriptor_satisfaction_hard"
#: per-descriptor, per-class keys: f"{SOFT_PREFIX}{name}" (soft output), f"{HARD_PREFIX}{name}" (hard)
SOFT_PREFIX = "val_satisfied_"
HARD_PREFIX = "val_hard_satisfied_"


def hard_prediction(probabilities: torch.Tensor, regions: bool) -> torch.Tensor:
    """(B, K, *S) probabilities -> (B, K, *S) float one-hot of the argmax over K (nnU-Net's
    prediction); for region training (sigmoid outputs) each channel thresholded at 0.5."""
    if regions:
        return (probabilities > 0.5).to(probabilities.dtype)
    hard = torch.zeros_like(probabilities)
    return hard.scatter_(1, probabilities.argmax(1, keepdim=True), 1.0)


def satisfaction_codes(result, descriptors: Sequence[str], prefix: str = "satisfied_") -> dict[str, torch.Tensor]:
    """Per descriptor, (B, K) int8 codes of a loss result (on its device): 1 = constraints of
    this descriptor met, 0 = violated, -1 = nothing constrained (e.g. the centroid of an absent
    class), which must not count as success."""
    return {f"{prefix}{name}": torch.where(result.active[name], result.satisfied[name].to(torch.int8),
                                           torch.full_like(result.satisfied[name], -1, dtype=torch.int8))
            for name in descriptors}


def intensity_satisfaction_names(trainer) -> tuple[str, ...]:
    """The satisfaction entries of a trainer's per-case intensity bounds (``intensity_mean``, ...;
    none while its ``intensity_weight`` is 0)."""
    if not getattr(trainer, "intensity_weight", 0.0):
        return ()
    return tuple(INTENSITY_VALUE_KEYS[s] for s in trainer.intensity_statistics)


def checked_case_spacing(case: str, spacing) -> tuple[float, ...]:
    """``spacing`` of a preprocessed case as floats; UserError naming the case unless every value is
    finite and > 0 (checked once per case on the host: the loss does not check device tensors)."""
    values = tuple(float(v) for v in spacing)
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise UserError(f"case {case}: its preprocessed spacing {list(values)} is not finite and > 0; check the "
                        f"spacing of its raw image and re-run nnUNetv2_plan_and_preprocess")
    return values


class nnUNetTrainerShapeDescriptors(nnUNetTrainerWholeScan):
    """Paper 000's best setting: volume + centroid + spread (V+C+D), extended log-barrier, no voxel loss."""

    descriptors: tuple[str, ...] = ("volume", "centroid", "spread")
    relative_margin: float = 0.1
    #: absolute half-widths in mm: relative +-10 % means nothing for a coordinate near the origin
    absolute_margin: dict = {"centroid": 2.0}
    #: t-schedule: paper 000 keeps t = 5; paper 001 starts at 1 and multiplies by 1.1 per epoch
    barrier_t0: float = 5.0
    barrier_factor: float = 1.0
    barrier_t_max: float | None = None
    use_deep_supervision: bool = False
    #: Adam, not nnU-Net's SGD: paper 001 trains every setting with Adam (betas 0.9, 0.99).
    #: nnU-Net's SGD (momentum 0.99) is tuned for voxel losses; with a descriptor loss it barely
    #: moved in the demo's 600 iterations (V+C+D mean Dice 4 %, against 29.5 % with Adam at 3e-3
    #: and the same schedule; docs/method.md, "Optimisation"). The poly decay stays nnU-Net's.
    optimizer_name: str = "adam"
    initial_learning_rate: float = 3e-3
    adam_betas: tuple[float, float] = (0.9, 0.99)
    #: image-aware terms added to the descriptor loss (nnunet_shape.core.image_terms, each
    #: normalised to a per-voxel / per-face value, averaged over the batch); weight 0 = off.
    #: Paper 000's setting (this class) uses none of them.
    homogeneity_weight: float = 0.0
    edge_weight: float = 0.0
    #: contrast scale of the edge term, in units of nnU-Net's normalised intensity (z-score: 1 = one
    #: standard deviation of the foreground intensities)
    edge_sigma: float = 0.5
    entropy_weight: float = 0.0
    #: intensity descriptors (docs/method.md, "Intensity descriptors"): per-case bounds on the soft
    #: class statistics of the normalised image the network sees -- ``intensity_statistics``:
    #: "mean" (add "std" for the standard deviations) -- and the weight of their barrier terms;
    #: 0 = off. Paper 000's setting (this class) uses none.
    intensity_weight: float = 0.0
    intensity_statistics: tuple[str, ...] = ("mean",)
    #: half-width max(relative |tau|, absolute) of each band; absolute in normalised units (z-score:
    #: standard deviations of the image)
    intensity_relative_margin: float = 0.1
    intensity_absolute_margin: float = 0.1
    #: descriptor templates (docs/method.md, "Descriptor templates"): a cross-entropy towards the
    #: per-case ellipsoids of the centroid and spread targets (no information beyond the
    #: descriptors), weight ``template_weight`` in the first epoch, decreasing linearly to 0 at
    #: ``template_decay_fraction`` of the epochs (1.0: until the last epoch); 0 = off. Needs
    #: per-case centroid and spread targets.
    template_weight: float = 0.0
    template_decay_fraction: float = 0.5
    #: shorten each template's shortest semi-axis to its volume target (a flat disc for a thin sheet)
    template_match_volume: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        unknown = [s for s in self.intensity_statistics if s not in INTENSITY_STATISTICS]
        if unknown:
            raise ValueError(f"{type(self).__name__}.intensity_statistics: unknown {unknown}; known: "
                             f"{INTENSITY_STATISTICS}")
        if self.template_weight < 0 or not 0 < self.template_decay_fraction <= 1:
            raise ValueError(f"{type(self).__name__}: template_weight must be >= 0 and template_decay_fraction in "
                             f"(0, 1], not {self.template_weight} and {self.template_decay_fraction}")
        if self.template_weight and not {"centroid", "spread"} <= set(self.descriptors):
            raise ValueError(f"{type(self).__name__}: template_weight {self.template_weight} needs centroid and spread "
                             f"targets, but the trainer's descriptors are {self.descriptors}")
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.initial_learning_rate
        self.barrier_schedule = BarrierSchedule(self.barrier_t0, self.barrier_factor, self.barrier_t_max)
        self._case_spacing: dict[str, tuple[float, ...]] = {}
        self._best_satisfaction: float | None = None
        for key in self._descriptor_log_keys():
            self.logger.local_logger.my_fantastic_logging[key] = []

    def _descriptor_log_keys(self) -> list[str]:
        """The logger keys this trainer adds (each gets one value per epoch)."""
        return [T_KEY, TRAIN_SATISFACTION_KEY, VAL_SATISFACTION_KEY, EMA_SATISFACTION_KEY,
                TRAIN_HARD_SATISFACTION_KEY, VAL_HARD_SATISFACTION_KEY, EMA_HARD_SATISFACTION_KEY,
                *[prefix + name for prefix in (SOFT_PREFIX, HARD_PREFIX) for name in self._satisfaction_names()]]

    def _satisfaction_names(self) -> tuple[str, ...]:
        """What the satisfaction is logged for (and checkpoint_best selected by): the descriptors
        and, with the intensity terms on, one entry per statistic (``intensity_mean``, ...)."""
        return (*self.descriptors, *intensity_satisfaction_names(self))

    def _uses_intensity(self) -> bool:
        """Whether the loss needs the soft class intensities of the image (``values`` of the loss):
        for the per-case intensity bounds here; subclasses add intensity relations."""
        return bool(self.intensity_weight)

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return super().configure_optimizers()
        if self.optimizer_name != "adam":
            raise ValueError(f"{type(self).__name__}.optimizer_name must be 'adam' or 'sgd', "
                             f"not {self.optimizer_name!r}")
        optimizer = torch.optim.Adam(self._trained_parameters(), lr=self.initial_lr, betas=self.adam_betas,
                                     weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _trained_parameters(self) -> list[torch.Tensor]:
        """What the optimiser trains and ``train_step`` clips (at nnU-Net's norm 12): the network's
        parameters; a reconstruction branch (``nnUNetTrainerShapeDescriptorsRecon``) adds its own."""
        return list(self.network.parameters())

    # ----------------------------------------------------------------------------------- loss
    def _build_loss(self):
        regions = self.label_manager.has_regions
        return ShapeDescriptorLoss(descriptors=self.descriptors, t=self.barrier_schedule.t,
                                   relative_margin=self.relative_margin,
                                   absolute_margin=dict(self.absolute_margin),
                                   include_background=regions)

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        # descriptors are sums over the whole scan: compute them in float32 even under autocast
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    def _label_map(self, batch: dict) -> torch.Tensor:
        """The (augmented) label map of the batch on the device, (B, 1, *S); for region training
        the (B, K, *S) float region masks."""
        target = batch["target"]
        target = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        return target.float() if self.label_manager.has_regions else target

    def _batch_spacing(self, keys: Sequence[str], patch_ndim: int) -> torch.Tensor:
        """(B, D) spacing of the cases in the batch, read once per case from its properties."""
        rows = []
        for key in keys:
            if key not in self._case_spacing:
                data, properties = load_preprocessed_image(self.preprocessed_dataset_folder, key)
                self._case_spacing[key] = checked_case_spacing(key, preprocessed_spacing(
                    properties["spacing"], self.plans_manager.transpose_forward,
                    properties["shape_after_cropping_and_before_resampling"], data.shape[1:]))
            rows.append(self._case_spacing[key][-patch_ndim:])
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def _loss_targets(self, batch: dict) -> tuple[DescriptorBounds, torch.Tensor]:
        """What the prediction of ``batch`` must satisfy: per-case descriptor bounds and the
        (B, D) spacing (on the device) in which both are measured.

        Here the bounds are the descriptors of the batch's augmented label map (or region
        masks) widened by the trainer's margins. Subclasses with another source of targets
        override this one method.
        """
        spatial_shape = tuple(batch["data"].shape[2:])
        spacing = self._batch_spacing(batch["keys"], len(spatial_shape))
        bounds = self.loss.make_bounds(self._label_map(batch), self.label_manager.num_segmentation_heads,
                                       spatial_shape, spacing)
        return bounds, spacing

    def _descriptor_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, network output, per-descriptor satisfaction codes) of one batch: codes of the
        soft output (``satisfied_<name>``) and of the hard prediction (``hard_satisfied_<name>``).

        Nothing here waits for the device: the codes stay on it (int8, (B, K)) and are copied to
        the host by :meth:`_host_codes` after the step, so the forward, the loss and the backward
        are queued without a host round trip (``tests/test_whole_scan_trainer.py`` checks it)."""
        data = batch["data"].to(self.device, non_blocking=True)
        bounds, spacing = self._loss_targets(batch)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
        output = output[0] if isinstance(output, (list, tuple)) else output
        probabilities = self._probabilities(output)
        image = data.float() if self._uses_intensity() else None
        values = intensity_values(probabilities, image) if image is not None else None
        result = self.loss(probabilities, bounds, spacing, return_result=True, values=values)
        # the prediction the user gets, and its class intensities: computed once, measured against
        # the descriptor bounds and (with intensity_weight) the intensity bounds
        with torch.no_grad():
            hard = hard_prediction(probabilities.detach(), self.label_manager.has_regions)
            hard_values = intensity_values(hard, image) if image is not None else None
        hard_result = self._hard_result(hard, bounds, spacing, hard_values)
        satisfied = {**satisfaction_codes(result, self.descriptors),
                     **satisfaction_codes(hard_result, self.descriptors, prefix="hard_satisfied_")}
        loss = result.loss + self._extra_loss(data, probabilities, spacing)
        if self._template_weight_now():
            loss = loss + self._template_weight_now() * self._template_loss(output, bounds, spacing)
        if self.intensity_weight:
            soft_i, hard_i = self._intensity_results(batch, image, probabilities, values, hard, hard_values, bounds)
            names = self._satisfaction_names()[len(self.descriptors):]
            satisfied.update({**satisfaction_codes(soft_i, names),
                              **satisfaction_codes(hard_i, names, prefix="hard_satisfied_")})
            loss = loss + self.intensity_weight * soft_i.loss
        return loss, output, satisfied

    def _hard_result(self, hard: torch.Tensor, bounds: DescriptorBounds, spacing: torch.Tensor,
                     values: dict[str, torch.Tensor] | None = None):
        """The loss result of the hard prediction ``hard`` (:func:`hard_prediction`, (B, K, *S))
        against the same bounds (no gradient). The functional loss is called directly, so the loss
        module's state (``last_result``) stays that of the soft output. ``values``: the hard
        prediction's class intensities (:func:`intensity_values`; for intensity relations among
        the priors), None when the trainer uses none."""
        loss = self.loss
        with torch.no_grad():
            return shape_descriptor_loss(hard, loss.make_bounds(bounds, hard.shape[1], hard.shape[2:], spacing),
                                         spacing=spacing, t=loss.t, descriptors=loss.descriptors,
                                         include_background=loss.include_background, priors=loss.priors,
                                         reduction=loss.reduction, values=values, scale_mode=loss.scale_mode)

    # ------------------------------------------------------------------------- intensity
    def _intensity_bounds(self, batch: dict, image: torch.Tensor) -> IntensityBounds:
        """Per-case bounds on the class statistics of ``image`` ((B, C, *S), the normalised input).

        Here from the labels, like the descriptor targets: the statistics of the batch's augmented
        label map (one-hot; regions: the masks) on the same augmented image, widened by
        ``intensity_relative_margin`` / ``intensity_absolute_margin``; classes absent from a
        sample are unconstrained. No unit conversion: target and prediction see one image.
        Subclasses with another source of targets override this method."""
        target = self._label_map(batch)
        with torch.no_grad():
            if self.label_manager.has_regions:
                masks = target.float()
            else:
                masks = one_hot_labels(target, self.label_manager.num_segmentation_heads, torch.float32,
                                       spatial_dims=image.ndim - 2, validate=False)
            stats = class_intensity(masks, image)
            present = masks.flatten(2).sum(2) > 0
        targets = {s: getattr(stats, s) for s in self.intensity_statistics}
        return intensity_bounds_from_targets(targets, present, self.intensity_relative_margin,
                                             self.intensity_absolute_margin)

    def _intensity_results(self, batch: dict, image: torch.Tensor, probabilities: torch.Tensor,
                           values: dict[str, torch.Tensor], hard: torch.Tensor, hard_values: dict[str, torch.Tensor],
                           bounds: DescriptorBounds):
        """The loss results (soft output, hard prediction) of the per-case intensity bounds alone:
        one barrier term per statistic (:class:`~nnunet_shape.core.intensity.IntensityBoundsTerm`,
        named ``intensity_mean`` / ``intensity_std``), the descriptor bounds' presence and ``t``.
        ``values`` / ``hard_values``: the class intensities of ``probabilities`` / of the hard
        prediction ``hard`` (computed once per step by the caller)."""
        regions = self.label_manager.has_regions
        limits = self._intensity_bounds(batch, image)
        terms = [IntensityBoundsTerm(limits, s, include_background=regions) for s in self.intensity_statistics]
        presence = DescriptorBounds(lower={}, upper={}, present=bounds.presence())
        common = dict(descriptors=(), priors=terms, t=self.loss.t, reduction=self.loss.reduction)
        soft = shape_descriptor_loss(probabilities, presence, values=values, **common)
        with torch.no_grad():
            hard_result = shape_descriptor_loss(hard, presence, values=hard_values, **common)
        return soft, hard_result

    def _template_weight_now(self) -> float:
        """The template term's weight in the current epoch: ``template_weight`` at epoch 0, linearly
        down to 0 at ``template_decay_fraction * num_epochs``, 0 after."""
        if not self.template_weight:
            return 0.0
        end = self.template_decay_fraction * self.num_epochs
        return float(self.template_weight * max(0.0, 1.0 - self.current_epoch / end))

    def _template_loss(self, logits: torch.Tensor, bounds: DescriptorBounds, spacing: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits`` (B, K, *S) towards the ellipsoids of the per-case centroid and
        spread targets (:func:`~nnunet_shape.core.descriptor_templates.ellipsoid_template`)."""
        if self.label_manager.has_regions:
            raise UserError(f"{type(self).__name__}: template_weight {self.template_weight} needs one label per voxel; "
                            f"dataset {self.plans_manager.dataset_name} trains regions (set template_weight = 0)")
        targets = template_targets_from_bounds(bounds)
        if targets is None:
            raise UserError(f"{type(self).__name__}: template_weight {self.template_weight} needs per-case centroid "
                            f"and spread targets, and this trainer's bounds have none (descriptors: "
                            f"{bounds.names}); set template_weight = 0")
        centroid, spread, present = targets
        volume = template_volume_from_bounds(bounds) if self.template_match_volume else None
        template = ellipsoid_template(centroid, spread, present, logits.shape[2:], spacing, volume)
        return template_cross_entropy(logits, template)

    def _extra_loss(self, data: torch.Tensor, probabilities: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
        """The image-aware terms with their class-attribute weights (0 when every weight is 0).

        ``data`` (B, C, *S) the network's input (the normalised image), ``probabilities``
        (B, K, *S) float32, ``spacing`` (B, D) in mm."""
        total = probabilities.new_zeros(())
        if self.homogeneity_weight:
            total = total + self.homogeneity_weight * region_homogeneity(probabilities, data.float(), normalize=True)
        if self.edge_weight:
            total = total + self.edge_weight * edge_aware_boundary(probabilities, data.float(), self.edge_sigma,
                                                                   spacing, normalize=True)
        if self.entropy_weight:
            total = total + self.entropy_weight * prediction_entropy(
                probabilities, normalize=True, multilabel=self.label_manager.has_regions)
        return total

    @staticmethod
    def _host_codes(satisfied: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The satisfaction codes as numpy arrays (one device-to-host copy each)."""
        return {key: value.cpu().numpy() for key, value in satisfied.items()}

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss, _, satisfied = self._descriptor_step(batch)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._trained_parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self._trained_parameters(), 12)
            self.optimizer.step()
        # the first host transfers of the step, once everything is queued (as nnU-Net's loss.cpu())
        out = {"loss": loss.detach().cpu().numpy(), **self._host_codes(satisfied)}
        # labels >= K in the batch's label map: its maximum was computed on the device and copied
        # behind the loss, so after the copies above reading it waits for nothing
        self.loss.label_check.flush()
        return out

    def validation_step(self, batch: dict) -> dict:
        loss, output, satisfied = self._descriptor_step(batch)
        # pseudo Dice for information only (checkpoints are chosen by descriptor satisfaction)
        tp, fp, fn = self._pseudo_dice_counts(output, batch)
        out = {"loss": loss.detach().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn,
               **self._host_codes(satisfied)}
        self.loss.label_check.flush()
        return out

    def _pseudo_dice_counts(self, output: torch.Tensor, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Foreground tp, fp, fn of the hard prediction against the batch's label map."""
        from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

        target = self._label_map(batch)
        axes = [0] + list(range(2, output.ndim))
        if self.label_manager.has_regions:
            prediction = (torch.sigmoid(output) > 0.5).long()
        else:
            prediction = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
            prediction.scatter_(1, output.argmax(1, keepdim=True), 1)
        tp, fp, fn, _ = get_tp_fp_fn_tn(prediction, target, axes=axes, mask=None)
        tp, fp, fn = (v.detach().cpu().numpy() for v in (tp, fp, fn))
        if not self.label_manager.has_regions:
            tp, fp, fn = tp[1:], fp[1:], fn[1:]
        return tp, fp, fn

    # ------------------------------------------------------------------------------- logging
    def _classes_for_report(self) -> list[str]:
        names = {int(v) if not isinstance(v, (list, tuple)) else tuple(v): k
                 for k, v in self.dataset_json["labels"].items()}
        if self.label_manager.has_regions:
            return [names.get(tuple(r), str(r)) if isinstance(r, (list, tuple)) else names.get(r, str(r))
                    for r in self.label_manager.foreground_regions]
        return [names.get(label, str(label)) for label in self.label_manager.foreground_labels]

    def _satisfaction_per_class(self, outputs: dict, prefix: str = "satisfied_") -> dict[str, np.ndarray]:
        """Per descriptor and foreground class: the fraction of the constrained cases in which it
        was within bounds (NaN where it was never constrained). ``prefix`` picks the soft
        (``satisfied_``) or the hard (``hard_satisfied_``) codes of the step outputs."""
        first = 0 if self.label_manager.has_regions else 1  # no background row in region training
        fractions = {}
        for name in (*self.descriptors, *intensity_satisfaction_names(self)):
            codes = np.asarray(outputs[f"{prefix}{name}"])
            codes = codes.reshape(-1, codes.shape[-1])[:, first:]
            active = (codes >= 0).sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                fractions[name] = np.where(active > 0, (codes == 1).sum(0) / np.maximum(active, 1), np.nan)
        return fractions

    @staticmethod
    def _overall_satisfaction(per_class: dict[str, np.ndarray]) -> float:
        """Mean over descriptors and classes of the constrained ones (1.0 if nothing was)."""
        values = np.concatenate([v for v in per_class.values()])
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else 1.0

    def on_train_epoch_start(self):
        self.loss.t = self.barrier_schedule.t
        self.logger.log(T_KEY, self.barrier_schedule.t, self.current_epoch)
        super().on_train_epoch_start()
        self.print_to_log_file(f"barrier t: {self.barrier_schedule.t:.4g}")

    def _gathered_codes(self, outputs: list[dict]) -> dict[str, np.ndarray]:
        """The epoch's satisfaction codes (``satisfied_<name>`` of the soft output and
        ``hard_satisfied_<name>`` of the hard prediction, (cases, K) each) of every rank.

        nnU-Net gathers its own validation counts and losses across DDP ranks
        (``nnUNetv2_train ... -num_gpus N``); without this, each rank would log (and choose the
        best checkpoint by) its own share of the cases only."""
        collated = collate_outputs(outputs)
        codes = {f"{prefix}{name}": np.asarray(collated[f"{prefix}{name}"])
                 for prefix in ("satisfied_", "hard_satisfied_") for name in self._satisfaction_names()}
        if not self.is_ddp:
            return codes
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, codes)
        return {key: np.concatenate([np.asarray(rank[key]).reshape(-1, codes[key].shape[-1]) for rank in gathered])
                for key in codes}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])
        codes = self._gathered_codes(train_outputs)
        for key, prefix in ((TRAIN_SATISFACTION_KEY, "satisfied_"), (TRAIN_HARD_SATISFACTION_KEY, "hard_satisfied_")):
            per_class = self._satisfaction_per_class(codes, prefix)
            self.logger.log(key, self._overall_satisfaction(per_class), self.current_epoch)

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)
        codes = self._gathered_codes(val_outputs)
        for prefix, value_key, ema_key, class_prefix in (
                ("satisfied_", VAL_SATISFACTION_KEY, EMA_SATISFACTION_KEY, SOFT_PREFIX),
                ("hard_satisfied_", VAL_HARD_SATISFACTION_KEY, EMA_HARD_SATISFACTION_KEY, HARD_PREFIX)):
            per_class = self._satisfaction_per_class(codes, prefix)
            overall = self._overall_satisfaction(per_class)
            previous = self.logger.get_value(ema_key, step=None)
            ema = overall if len(previous) == 0 else 0.9 * previous[-1] + 0.1 * overall
            self.logger.log(value_key, overall, self.current_epoch)
            self.logger.log(ema_key, ema, self.current_epoch)
            for name, fractions in per_class.items():
                self.logger.log(f"{class_prefix}{name}", [float(f) for f in fractions], self.current_epoch)

    def _print_descriptor_report(self) -> None:
        epoch = self.current_epoch
        self.print_to_log_file(
            f"descriptor loss (train/val): {self.logger.get_value('train_losses', step=-1):.4f} / "
            f"{self.logger.get_value('val_losses', step=-1):.4f}; t = {self.logger.get_value(T_KEY, step=-1):.4g}")
        classes = self._classes_for_report()
        for name in self._satisfaction_names():
            fractions = self.logger.get_value(f"{SOFT_PREFIX}{name}", step=epoch)
            cells = ", ".join(f"{c}: {f:.2f}" for c, f in zip(classes, fractions))
            self.print_to_log_file(f"descriptor satisfied (val) {name:<10} {cells}")
        for name in self._satisfaction_names():
            soft = self.logger.get_value(f"{SOFT_PREFIX}{name}", step=epoch)
            hard = self.logger.get_value(f"{HARD_PREFIX}{name}", step=epoch)
            cells = ", ".join(f"{c}: {h:.2f} (soft-hard gap {s - h:+.2f})" for c, s, h in zip(classes, soft, hard))
            self.print_to_log_file(f"hard-prediction satisfied (val) {name:<10} {cells}")
        self.print_to_log_file(
            f"descriptor satisfaction (train/val/val EMA): "
            f"{self.logger.get_value(TRAIN_SATISFACTION_KEY, step=-1):.3f} / "
            f"{self.logger.get_value(VAL_SATISFACTION_KEY, step=-1):.3f} / "
            f"{self.logger.get_value(EMA_SATISFACTION_KEY, step=-1):.3f}")
        self.print_to_log_file(
            f"hard-prediction satisfaction (train/val/val EMA, selects checkpoint_best): "
            f"{self.logger.get_value(TRAIN_HARD_SATISFACTION_KEY, step=-1):.3f} / "
            f"{self.logger.get_value(VAL_HARD_SATISFACTION_KEY, step=-1):.3f} / "
            f"{self.logger.get_value(EMA_HARD_SATISFACTION_KEY, step=-1):.3f}")

    def on_epoch_end(self):
        # nnU-Net's on_epoch_end picks checkpoint_best by EMA pseudo Dice (a voxel metric); here
        # the best checkpoint is the one with the best EMA descriptor satisfaction on validation.
        self.logger.log("epoch_end_timestamps", time.time(), self.current_epoch)
        self.print_to_log_file("train_loss", np.round(self.logger.get_value("train_losses", step=-1), decimals=4))
        self.print_to_log_file("val_loss", np.round(self.logger.get_value("val_losses", step=-1), decimals=4))
        self._print_descriptor_report()
        self.print_to_log_file("Pseudo dice (information only)",
                               [np.round(i, decimals=4) for i in
                                self.logger.get_value("dice_per_class_or_region", step=-1)])
        epoch_seconds = (self.logger.get_value("epoch_end_timestamps", step=-1)
                         - self.logger.get_value("epoch_start_timestamps", step=-1))
        self.print_to_log_file(f"Epoch time: {np.round(epoch_seconds, decimals=2)} s")
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1):
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        # selected on the hard prediction: the soft output may satisfy every constraint while a
        # class never wins the argmax (what nnUNetv2_predict returns)
        ema = self.logger.get_value(EMA_HARD_SATISFACTION_KEY, step=-1)
        if self._best_satisfaction is None or ema > self._best_satisfaction:
            self._best_satisfaction = ema
            self.print_to_log_file(f"New best EMA hard-prediction descriptor satisfaction: {np.round(ema, decimals=4)}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0 and self._plots_progress_now():
            self.logger.plot_progress_png(self.output_folder)
            plot_descriptor_progress(self.logger.local_logger.my_fantastic_logging, self._satisfaction_names(),
                                     self._classes_for_report(), self.output_folder)
        self.barrier_schedule.step()
        self.current_epoch += 1

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        # t and the best satisfaction live in the checkpoint's logging dict: t of the last
        # finished epoch, stepped once, is the t of the epoch we resume at.
        logged_t = self.logger.get_value(T_KEY, step=None)
        if len(logged_t) > 0:
            self.barrier_schedule.t = float(logged_t[-1])
            self.barrier_schedule.step()
        logged = self.logger.local_logger.my_fantastic_logging
        epochs = len(logged.get(T_KEY, []))
        for key in self._descriptor_log_keys():
            # checkpoints written before the hard-prediction keys existed: those epochs have none
            logged.setdefault(key, [np.nan] * epochs)
        ema = [v for v in self.logger.get_value(EMA_HARD_SATISFACTION_KEY, step=None) if np.isfinite(v)]
        self._best_satisfaction = max(ema) if len(ema) > 0 else None
        # users resuming with `nnUNetv2_train ... --c` see which t the barrier continues with
        self.print_to_log_file(f"resumed at epoch {self.current_epoch}: barrier t = {self.barrier_schedule.t:.4g}, "
                               f"best EMA hard-prediction descriptor satisfaction = {self._best_satisfaction}")


class nnUNetTrainerShapeDescriptorsVC(nnUNetTrainerShapeDescriptors):
    """Volume + centroid only (paper 000, Table 1, row 2)."""

    descriptors = ("volume", "centroid")


class nnUNetTrainerShapeDescriptorsVCDS(nnUNetTrainerShapeDescriptors):
    """Volume + centroid + spread + surface (paper 001's length descriptor, in 3D: the surface)."""

    descriptors = ("volume", "centroid", "spread", "surface")


class nnUNetTrainerShapeDescriptorsGrowingT(nnUNetTrainerShapeDescriptors):
    """V+C+D with paper 001's schedule: t starts at 1 and grows by 1.1 per epoch (capped at 100),
    so the bounds tighten as training goes on."""

    barrier_t0 = 1.0
    barrier_factor = 1.1
    barrier_t_max = 100.0


class nnUNetTrainerShapeDescriptorsImageAware(nnUNetTrainerShapeDescriptors):
    """V+C+D (paper 000's targets) plus what the study of docs/image-aware-study.md kept so that the
    prediction follows the image and not only the descriptors (2026-12-07, the demo's 600
    iterations, three training seeds: knee phantoms 58.8 +- 10.4 % test Dice against 41.5 % for
    V+C+D, 60.9 % for the atlas and 55.5 % for the descriptor ellipsoids; MNI152 brains 68.5 +- 0.3
    against 52.5, 67.5 and 41.6 %; on the phantoms with 1,250 iterations (``_5epochs``) 72.9 +- 2.1
    against 49.6 for V+C+D, above both no-image baselines in every seed):

    * descriptor templates (``template_weight`` 1, decayed to 0 at half of the epochs): mass where
      the targets say from the first epoch (docs/method.md, "Descriptor templates"); without
      them nothing else helped much;
    * per-case bounds on each class's mean intensity (``intensity_weight`` 1; one value per class
      and case besides V+C+D: 32 values for the 4 knee classes, not 28): each class on its tissue
      (docs/method.md, "Intensity descriptors");
    * region homogeneity 1, edge-aware boundary 0.5 (sigma 0.5), entropy 0.1 (docs/method.md,
      "Image-aware terms");
    * a volume tolerance of +-20 % (paper 000's code widens thin classes' volume tolerance to 20 %),
      spread and centroid as paper 000.
    """

    homogeneity_weight = 1.0
    edge_weight = 0.5
    entropy_weight = 0.1
    template_weight = 1.0
    intensity_weight = 1.0
    relative_margin = {"volume": 0.2, "spread": 0.1}


class nnUNetTrainerShapeDescriptorsIntensity(nnUNetTrainerShapeDescriptors):
    """V+C+D (paper 000's targets) plus per-case bounds on each class's soft mean intensity in the
    normalised image the network sees, from the labels like the descriptor targets, so that each
    class is pushed to where the image has that class's intensity (docs/method.md, "Intensity
    descriptors"). Weight 1.0 (a band missed by one band width costs as much as one descriptor's),
    margins +-10 % or 0.1 standard deviations of the image. Alone it changed little in the study
    (docs/image-aware-study.md: 34.6 against 33.6 % Dice); with the descriptor templates it makes the
    thin classes appear, and ``nnUNetTrainerShapeDescriptorsImageAware`` uses it."""

    intensity_weight = 1.0


class nnUNetTrainerShapeDescriptorsTemplate(nnUNetTrainerShapeDescriptors):
    """V+C+D (paper 000's targets) plus the descriptor templates: a cross-entropy towards each case's
    ellipsoids of its centroid and spread targets, weight 1 in the first epoch, decreasing linearly to
    0 at half of the epochs, so the barrier starts from mass in the right place (docs/method.md,
    "Descriptor templates"). The same annotation as V+C+D: no value beyond the descriptors."""

    template_weight = 1.0


class nnUNetTrainerShapeFullSupervision(nnUNetTrainerWholeScan):
    """Reference row of Table 1: nnU-Net's DC+CE loss (deep supervision) on the same whole-scan
    STD/EXP setup."""


# training-length variants, nnU-Net style (schedules: nnunet_shape.nnunet.training.variants)
class nnUNetTrainerShapeDescriptors_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptors): ...
class nnUNetTrainerShapeDescriptors_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptors): ...
class nnUNetTrainerShapeDescriptors_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptors): ...
class nnUNetTrainerShapeDescriptors_demo(DemoSchedule, nnUNetTrainerShapeDescriptors): ...
class nnUNetTrainerShapeDescriptors_suite(SuiteSchedule, nnUNetTrainerShapeDescriptors): ...
class nnUNetTrainerShapeDescriptors_debug(DebugSchedule, nnUNetTrainerShapeDescriptors): ...


class nnUNetTrainerShapeDescriptorsVC_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptorsVC): ...
class nnUNetTrainerShapeDescriptorsVC_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptorsVC): ...
class nnUNetTrainerShapeDescriptorsVC_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptorsVC): ...
class nnUNetTrainerShapeDescriptorsVC_demo(DemoSchedule, nnUNetTrainerShapeDescriptorsVC): ...
class nnUNetTrainerShapeDescriptorsVC_suite(SuiteSchedule, nnUNetTrainerShapeDescriptorsVC): ...
class nnUNetTrainerShapeDescriptorsVC_debug(DebugSchedule, nnUNetTrainerShapeDescriptorsVC): ...


class nnUNetTrainerShapeDescriptorsVCDS_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptorsVCDS): ...
class nnUNetTrainerShapeDescriptorsVCDS_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptorsVCDS): ...
class nnUNetTrainerShapeDescriptorsVCDS_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptorsVCDS): ...
class nnUNetTrainerShapeDescriptorsVCDS_demo(DemoSchedule, nnUNetTrainerShapeDescriptorsVCDS): ...
class nnUNetTrainerShapeDescriptorsVCDS_suite(SuiteSchedule, nnUNetTrainerShapeDescriptorsVCDS): ...
class nnUNetTrainerShapeDescriptorsVCDS_debug(DebugSchedule, nnUNetTrainerShapeDescriptorsVCDS): ...


class nnUNetTrainerShapeDescriptorsGrowingT_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptorsGrowingT): ...
class nnUNetTrainerShapeDescriptorsGrowingT_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptorsGrowingT): ...
class nnUNetTrainerShapeDescriptorsGrowingT_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptorsGrowingT): ...
class nnUNetTrainerShapeDescriptorsGrowingT_demo(DemoSchedule, nnUNetTrainerShapeDescriptorsGrowingT): ...
class nnUNetTrainerShapeDescriptorsGrowingT_suite(SuiteSchedule, nnUNetTrainerShapeDescriptorsGrowingT): ...
class nnUNetTrainerShapeDescriptorsGrowingT_debug(DebugSchedule, nnUNetTrainerShapeDescriptorsGrowingT): ...


class nnUNetTrainerShapeDescriptorsImageAware_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptorsImageAware): ...
class nnUNetTrainerShapeDescriptorsImageAware_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptorsImageAware): ...
class nnUNetTrainerShapeDescriptorsImageAware_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptorsImageAware): ...
class nnUNetTrainerShapeDescriptorsImageAware_demo(DemoSchedule, nnUNetTrainerShapeDescriptorsImageAware): ...
class nnUNetTrainerShapeDescriptorsImageAware_suite(SuiteSchedule, nnUNetTrainerShapeDescriptorsImageAware): ...
class nnUNetTrainerShapeDescriptorsImageAware_debug(DebugSchedule, nnUNetTrainerShapeDescriptorsImageAware): ...


class nnUNetTrainerShapeDescriptorsIntensity_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptorsIntensity): ...
class nnUNetTrainerShapeDescriptorsIntensity_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptorsIntensity): ...
class nnUNetTrainerShapeDescriptorsIntensity_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptorsIntensity): ...
class nnUNetTrainerShapeDescriptorsIntensity_demo(DemoSchedule, nnUNetTrainerShapeDescriptorsIntensity): ...
class nnUNetTrainerShapeDescriptorsIntensity_suite(SuiteSchedule, nnUNetTrainerShapeDescriptorsIntensity): ...
class nnUNetTrainerShapeDescriptorsIntensity_debug(DebugSchedule, nnUNetTrainerShapeDescriptorsIntensity): ...


class nnUNetTrainerShapeDescriptorsTemplate_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptorsTemplate): ...
class nnUNetTrainerShapeDescriptorsTemplate_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptorsTemplate): ...
class nnUNetTrainerShapeDescriptorsTemplate_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptorsTemplate): ...
class nnUNetTrainerShapeDescriptorsTemplate_demo(DemoSchedule, nnUNetTrainerShapeDescriptorsTemplate): ...
class nnUNetTrainerShapeDescriptorsTemplate_suite(SuiteSchedule, nnUNetTrainerShapeDescriptorsTemplate): ...
class nnUNetTrainerShapeDescriptorsTemplate_debug(DebugSchedule, nnUNetTrainerShapeDescriptorsTemplate): ...


class nnUNetTrainerShapeFullSupervision_5epochs(Schedule5Epochs, nnUNetTrainerShapeFullSupervision): ...
class nnUNetTrainerShapeFullSupervision_50epochs(Schedule50Epochs, nnUNetTrainerShapeFullSupervision): ...
class nnUNetTrainerShapeFullSupervision_250epochs(Schedule250Epochs, nnUNetTrainerShapeFullSupervision): ...
class nnUNetTrainerShapeFullSupervision_demo(DemoSchedule, nnUNetTrainerShapeFullSupervision): ...
class nnUNetTrainerShapeFullSupervision_suite(SuiteSchedule, nnUNetTrainerShapeFullSupervision): ...
class nnUNetTrainerShapeFullSupervision_debug(DebugSchedule, nnUNetTrainerShapeFullSupervision): ...


#: every trainer class defined in this module (what the trainers/ re-export module exposes)
TRAINER_NAMES: tuple[str, ...] = trainer_names(globals())
__all__ = list(TRAINER_NAMES)
