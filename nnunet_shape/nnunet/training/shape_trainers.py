"""nnU-Net trainers supervised by shape descriptors only (papers 000 and 001).

The network sees the whole scan (``nnUNetTrainerWholeScan``); the loss is the extended
log-barrier on per-class descriptors (``nnunet_shape.core.losses``) - no voxel loss at all. Targets
are computed from the (augmented) label map of each case in the batch, in physical units: the
preprocessed spacing of that case. Checkpoints are selected by descriptor satisfaction on the
validation cases, never by a voxel metric.

Variants follow nnU-Net's idiom: small subclasses that change class attributes
(``nnUNetTrainerShapeDescriptorsVC``, ``..._5epochs``, ``..._debug``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_shape.core.barrier import BarrierSchedule
from nnunet_shape.core.losses import ShapeDescriptorLoss
from nnunet_shape.nnunet.training.progress import plot_descriptor_progress
from nnunet_shape.nnunet.training.whole_scan import load_preprocessed_image, nnUNetTrainerWholeScan

#: logger keys added by the descriptor trainers (one value per epoch, as nnU-Net's logger wants)
T_KEY = "barrier_t"
TRAIN_SATISFACTION_KEY = "train_descriptor_satisfaction"
VAL_SATISFACTION_KEY = "val_descriptor_satisfaction"
EMA_SATISFACTION_KEY = "ema_val_descriptor_satisfaction"


def preprocessed_spacing(properties: dict, preprocessed_shape: Sequence[int], transpose_forward: Sequence[int]
                         ) -> tuple[float, ...]:
    """Effective voxel spacing of a preprocessed case, in the preprocessed (transposed) axis order.

    nnU-Net resamples to the target spacing but rounds the shape, so the exact spacing is the
    cropped extent divided by the preprocessed shape. ``properties["spacing"]`` is in the raw
    axis order; ``shape_after_cropping_and_before_resampling`` is already transposed (nnU-Net
    transposes, then crops).
    """
    spacing = np.asarray(properties["spacing"], dtype=np.float64)[list(transpose_forward)]
    shape_before = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    return tuple(float(v) for v in spacing * shape_before / np.asarray(preprocessed_shape, dtype=np.float64))


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

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.initial_learning_rate
        self.barrier_schedule = BarrierSchedule(self.barrier_t0, self.barrier_factor, self.barrier_t_max)
        self._case_spacing: dict[str, tuple[float, ...]] = {}
        self._best_satisfaction: float | None = None
        for key in (T_KEY, TRAIN_SATISFACTION_KEY, VAL_SATISFACTION_KEY, EMA_SATISFACTION_KEY):
            self.logger.local_logger.my_fantastic_logging[key] = []
        for name in self.descriptors:
            self.logger.local_logger.my_fantastic_logging[f"val_satisfied_{name}"] = []

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return super().configure_optimizers()
        if self.optimizer_name != "adam":
            raise ValueError(f"{type(self).__name__}.optimizer_name must be 'adam' or 'sgd', "
                             f"not {self.optimizer_name!r}")
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, betas=self.adam_betas,
                                     weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

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

    def _loss_target(self, batch: dict):
        """What the loss compares with: the (augmented) label map of the batch, on the device
        (for regions, the float region masks, whose descriptors are computed directly)."""
        target = batch["target"]
        target = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        return target.float() if self.label_manager.has_regions else target

    def _batch_spacing(self, keys: Sequence[str], patch_ndim: int) -> torch.Tensor:
        """(B, D) spacing of the cases in the batch, read once per case from its properties."""
        rows = []
        for key in keys:
            if key not in self._case_spacing:
                data, properties = load_preprocessed_image(self.preprocessed_dataset_folder, key)
                self._case_spacing[key] = preprocessed_spacing(
                    properties, data.shape[1:], self.plans_manager.transpose_forward)
            rows.append(self._case_spacing[key][-patch_ndim:])
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def _descriptor_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        data = batch["data"].to(self.device, non_blocking=True)
        target = self._loss_target(batch)
        spacing = self._batch_spacing(batch["keys"], data.ndim - 2)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
        output = output[0] if isinstance(output, (list, tuple)) else output
        result = self.loss(self._probabilities(output), target, spacing, return_result=True)
        # per (case, class): 1 = constraints of this descriptor met, 0 = violated, -1 = nothing
        # constrained (e.g. the centroid of an absent class), which must not count as success
        satisfied = {f"satisfied_{name}": torch.where(result.active[name], result.satisfied[name].to(torch.int8),
                                                      torch.full_like(result.satisfied[name], -1, dtype=torch.int8)
                                                      ).cpu().numpy()
                     for name in self.descriptors}
        return result.loss, {"output": output, "target": target, **satisfied}

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss, extras = self._descriptor_step(batch)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy(),
                **{k: v for k, v in extras.items() if k.startswith("satisfied_")}}

    def validation_step(self, batch: dict) -> dict:
        loss, extras = self._descriptor_step(batch)
        output, target = extras.pop("output"), extras.pop("target")
        # pseudo Dice for information only (checkpoints are chosen by descriptor satisfaction)
        tp, fp, fn = self._pseudo_dice_counts(output, target)
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn, **extras}

    def _pseudo_dice_counts(self, output: torch.Tensor, target: torch.Tensor):
        from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

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

    def _satisfaction_per_class(self, outputs: dict) -> dict[str, np.ndarray]:
        """Per descriptor and foreground class: the fraction of the constrained cases in which it
        was within bounds (NaN where it was never constrained)."""
        first = 0 if self.label_manager.has_regions else 1  # no background row in region training
        fractions = {}
        for name in self.descriptors:
            codes = np.asarray(outputs[f"satisfied_{name}"])
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

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])
        per_class = self._satisfaction_per_class(collate_outputs(train_outputs))
        self.logger.log(TRAIN_SATISFACTION_KEY, self._overall_satisfaction(per_class), self.current_epoch)

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)
        per_class = self._satisfaction_per_class(collate_outputs(val_outputs))
        overall = self._overall_satisfaction(per_class)
        previous = self.logger.get_value(EMA_SATISFACTION_KEY, step=None)
        ema = overall if len(previous) == 0 else 0.9 * previous[-1] + 0.1 * overall
        self.logger.log(VAL_SATISFACTION_KEY, overall, self.current_epoch)
        self.logger.log(EMA_SATISFACTION_KEY, ema, self.current_epoch)
        for name, fractions in per_class.items():
            self.logger.log(f"val_satisfied_{name}", [float(f) for f in fractions], self.current_epoch)

    def _print_descriptor_report(self) -> None:
        epoch = self.current_epoch
        self.print_to_log_file(
            f"descriptor loss (train/val): {self.logger.get_value('train_losses', step=-1):.4f} / "
            f"{self.logger.get_value('val_losses', step=-1):.4f}; t = {self.logger.get_value(T_KEY, step=-1):.4g}")
        classes = self._classes_for_report()
        for name in self.descriptors:
            fractions = self.logger.get_value(f"val_satisfied_{name}", step=epoch)
            cells = ", ".join(f"{c}: {f:.2f}" for c, f in zip(classes, fractions))
            self.print_to_log_file(f"descriptor satisfied (val) {name:<10} {cells}")
        self.print_to_log_file(
            f"descriptor satisfaction (train/val/val EMA): "
            f"{self.logger.get_value(TRAIN_SATISFACTION_KEY, step=-1):.3f} / "
            f"{self.logger.get_value(VAL_SATISFACTION_KEY, step=-1):.3f} / "
            f"{self.logger.get_value(EMA_SATISFACTION_KEY, step=-1):.3f}")

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
        ema = self.logger.get_value(EMA_SATISFACTION_KEY, step=-1)
        if self._best_satisfaction is None or ema > self._best_satisfaction:
            self._best_satisfaction = ema
            self.print_to_log_file(f"New best EMA descriptor satisfaction: {np.round(ema, decimals=4)}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
            plot_descriptor_progress(self.logger.local_logger.my_fantastic_logging, self.descriptors,
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
        ema = self.logger.get_value(EMA_SATISFACTION_KEY, step=None)
        self._best_satisfaction = max(ema) if len(ema) > 0 else None
        # users resuming with `nnUNetv2_train ... --c` see which t the barrier continues with
        self.print_to_log_file(f"resumed at epoch {self.current_epoch}: barrier t = {self.barrier_schedule.t:.4g}, "
                               f"best EMA descriptor satisfaction = {self._best_satisfaction}")


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


class nnUNetTrainerShapeFullSupervision(nnUNetTrainerWholeScan):
    """Reference row of Table 1: nnU-Net's DC+CE loss (deep supervision) on the same whole-scan
    STD/EXP setup."""


#: training-length variants in nnU-Net's naming style: (suffix, epochs, iterations, val iterations)
LENGTH_VARIANTS: tuple[tuple[str, int, int, int], ...] = (
    ("_5epochs", 5, 250, 50),
    ("_50epochs", 50, 250, 50),
    ("_250epochs", 250, 250, 50),
    # `make demo` (nnunet_shape/demo.py): every Table-1 row gets the same CPU-sized schedule
    ("_demo", 12, 50, 2),
    # smoke tests: one epoch of a handful of iterations and a tiny validation
    ("_debug", 1, 3, 1),
)
BASE_TRAINERS = (nnUNetTrainerShapeDescriptors, nnUNetTrainerShapeDescriptorsVC,
                 nnUNetTrainerShapeDescriptorsVCDS, nnUNetTrainerShapeDescriptorsGrowingT,
                 nnUNetTrainerShapeFullSupervision)


def _length_variant(base: type, suffix: str, epochs: int, iterations: int, val_iterations: int) -> type:
    """``base`` with another training length, belonging to ``base``'s module (so that it pickles:
    the caller binds it there under its name)."""
    return type(base.__name__ + suffix, (base,), {
        "__module__": base.__module__,
        "__doc__": f"{base.__name__} for {epochs} epoch(s) of {iterations} iterations.",
        "training_epochs": epochs, "iterations_per_epoch": iterations, "val_iterations_per_epoch": val_iterations,
    })


for _base in BASE_TRAINERS:
    for _suffix, _epochs, _iterations, _val_iterations in LENGTH_VARIANTS:
        _variant = _length_variant(_base, _suffix, _epochs, _iterations, _val_iterations)
        globals()[_variant.__name__] = _variant

TRAINER_NAMES: tuple[str, ...] = tuple(
    [b.__name__ for b in BASE_TRAINERS] + [b.__name__ + v[0] for b in BASE_TRAINERS for v in LENGTH_VARIANTS])
__all__ = list(TRAINER_NAMES)
