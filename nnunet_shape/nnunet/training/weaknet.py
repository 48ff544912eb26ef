"""Paper 003's Weak-Net on nnU-Net -- train from sphere templates fitted to points.

Two trainers, one rule (the same two mixins, :class:`TemplateTargets` and :class:`WeakNetLoss`):

* ``nnUNetTrainerWeakNet``, the paper-faithful one: the core network is nnU-Net's own network
  from the plans (PlainConvUNet, nnU-Net's patch and sampling; ``nnUNetv2_predict`` needs nothing
  extra).
* ``nnUNetTrainerWeakNetWholeScan``, for comparisons: the same loss on the project's whole-scan
  setup (:class:`~nnunet_shape.nnunet.training.whole_scan.nnUNetTrainerWholeScan`: the whole scan
  as one patch, the STD/EXP network, its whole-case loading and augmentation), the network of
  the descriptor rows and of ``nnUNetTrainerShapeFullSupervision`` (whose nnU-Net SGD it keeps). On it a comparison
  of supervisions compares supervisions, not networks. It is also cheaper on a CPU: in the first
  ``make demo-weak`` (2 cores, knee phantoms) ``nnUNetTrainerWeakNet`` took ~80 s per 50-iteration
  epoch, the STD/EXP rows ~20 s (docs/weak-points.md).

Both learn from the rough label maps of ``nnUNet_raw/DatasetXXX/templatesTr`` (written by
``nnunet-shape fit-templates``), never from ``labelsTr``, with

    L = CE(Y_hat, Y_template) + lambda * mean(W * (X - R(softmax(Y_hat)))^2)

where ``R`` is a second, small U-Net that reconstructs the (normalised, augmented) input image
from the core network's softmax, and ``W`` is ``w_high`` within ``d`` mm of a template boundary
and ``w_low`` elsewhere (:mod:`nnunet_shape.core.reconstruction`). ``R`` exists only in training:
its weights are stored in the checkpoint under ``reconstruction_network_weights`` (for ``--c``),
never in ``network_weights``, so ``nnUNetv2_predict`` loads the core network alone and predicts
with nnU-Net's argmax over the softmax (for one class: the threshold 0.5 of the paper's gamma).
``R``, its optimisation and its checkpointing are the mixin
:class:`~nnunet_shape.nnunet.training.reconstruction_branch.ReconstructionBranch`, shared with
``nnUNetTrainerShapeDescriptorsRecon``; checkpoints are written once, atomically.

**How the templates reach the data loader** (:class:`TemplateTargets`). After an ordinary
``nnUNetv2_plan_and_preprocess -d ID``, the trainer runs the configuration's own preprocessor (the
same transpose, crop and resampling as for ``labelsTr``) on every case's image and template and
writes the result to ``nnUNet_preprocessed/DatasetXXX/<data_identifier>__templates_<hash>/``
(redone only for templates that changed; both trainers share the folder, their preprocessing is
the same), and trains and validates from that folder: labels never enter the loss or the
checkpoint selection. Cases without a template are left out of training and validation (the
split stays nnU-Net's, made from all cases). ``nnUNet_raw`` must hold the raw dataset.
Placeholder labels (``nnunet-shape placeholder-labels``) are fine: they are never read for
training (nnU-Net's final validation still compares against them; ignore those numbers then).

Variants follow nnU-Net's idiom: small subclasses changing class attributes
(``...NoRecon``: lambda = 0, the template-only ablation of the paper's Fig. 3) and one explicit
class per training length.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn

from nnunet_shape.core.reconstruction import boundary_weight_map
from nnunet_shape.errors import UserError
from nnunet_shape.nnunet.training.reconstruction_branch import (  # noqa: F401 (re-exported: weaknet's API)
    PLAIN_UNET,
    RECONSTRUCTION_KEY,
    ReconstructionBranch,
    build_reconstruction_network,
)
from nnunet_shape.nnunet.training.variants import (
    DebugSchedule,
    DemoSchedule,
    Schedule5Epochs,
    Schedule50Epochs,
    Schedule250Epochs,
    SuiteSchedule,
    trainer_names,
)
from nnunet_shape.nnunet.training.whole_scan import nnUNetTrainerWholeScan

#: environment variable: a templates folder other than <raw dataset>/templatesTr (e.g. fit-templates -o)
TEMPLATES_ENV = "nnUNetShape_templates"
TEMPLATES_FOLDER = "templatesTr"
#: bookkeeping of the preprocessed templates (which template file each case came from), beside the
#: folder: nnU-Net infers the dataset class from the file endings inside it
SOURCES_SUFFIX = ".sources.json"


class TemplateTargets:
    """Mixin for an ``nnUNetTrainer`` subclass (put it first among the bases): train and validate on
    the template label maps of :meth:`templates_folder`, preprocessed by the configuration's own
    preprocessor into a folder of their own, instead of on nnU-Net's preprocessed ``labelsTr``.

    * ``__init__`` points ``preprocessed_dataset_folder`` at
      ``<data_identifier>__templates_<hash of the templates folder>`` (nnU-Net's own folder is kept
      in ``original_preprocessed_folder``) and refuses region datasets;
    * :meth:`initialize` runs :meth:`prepare_templates` (rank 0; the other ranks wait);
    * :meth:`do_split` is nnU-Net's split over all cases, restricted to the cases with a template.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise UserError(f"{type(self).__name__}: dataset {self.plans_manager.dataset_name} defines regions; "
                            f"sphere templates give one label per voxel (use a dataset without regions)")
        self.original_preprocessed_folder = self.preprocessed_dataset_folder
        if self.preprocessed_dataset_folder is not None:
            self.preprocessed_dataset_folder = join(
                self.preprocessed_dataset_folder_base,
                f"{self.configuration_manager.data_identifier}__templates_{zlib.crc32(self.templates_folder().encode()):08x}")

    def templates_folder(self) -> str:
        """The folder of the template label maps: $nnUNetShape_templates, else <raw dataset>/templatesTr."""
        if os.environ.get(TEMPLATES_ENV):
            return os.path.abspath(os.environ[TEMPLATES_ENV])
        raw = nnUNet_raw.get() if nnUNet_raw.is_set() else os.environ.get("nnUNet_raw", "")
        return os.path.abspath(join(raw, self.plans_manager.dataset_name, TEMPLATES_FOLDER))

    def prepare_templates(self) -> list[str]:
        """Preprocess every case's image and template into ``self.preprocessed_dataset_folder``
        (cases whose template file is unchanged are kept). Returns the case ids with a template."""
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        templates = self.templates_folder()
        raw_folder = join(nnUNet_raw.get() if nnUNet_raw.is_set() else os.environ.get("nnUNet_raw", ""),
                          self.plans_manager.dataset_name)
        if not os.path.isdir(templates):
            raise UserError(f"{type(self).__name__}: no templates folder {templates}; run nnunet-shape simulate-points "
                            f"and nnunet-shape fit-templates -d {self.plans_manager.dataset_name} first "
                            f"(docs/weak-points.md), or set {TEMPLATES_ENV}")
        ending = self.dataset_json["file_ending"]
        cases = get_filenames_of_train_images_and_targets(raw_folder, self.dataset_json)
        available = {c: join(templates, c + ending) for c in cases if os.path.isfile(join(templates, c + ending))}
        if not available:
            raise UserError(f"{type(self).__name__}: {templates} holds no template <case>{ending} for the training "
                            f"cases of {raw_folder} (e.g. {sorted(cases)[:3]})")
        out = self.preprocessed_dataset_folder
        os.makedirs(out, exist_ok=True)
        sources_path = out + SOURCES_SUFFIX
        sources = {}
        if os.path.isfile(sources_path):
            with open(sources_path) as handle:
                sources = json.load(handle)
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        for case_id, template in sorted(available.items()):
            stat = os.stat(template)
            record = {"template": template, "mtime_ns": stat.st_mtime_ns, "size": stat.st_size,
                      "data_identifier": self.configuration_manager.data_identifier}
            if sources.get(case_id) == record and os.path.isfile(join(out, case_id + ".pkl")):
                continue
            with tempfile.TemporaryDirectory(dir=out) as scratch:
                preprocessor.run_case_save(join(scratch, case_id), cases[case_id]["images"], template,
                                           self.plans_manager, self.configuration_manager, self.dataset_json)
                for name in sorted(os.listdir(scratch)):  # data and seg first, the .pkl that lists the case last
                    if not name.endswith(".pkl"):
                        os.replace(join(scratch, name), join(out, name))
                os.replace(join(scratch, case_id + ".pkl"), join(out, case_id + ".pkl"))
            sources[case_id] = record
        tmp = sources_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(sources, handle, indent=1)
        os.replace(tmp, sources_path)
        missing = sorted(set(cases) - set(available))
        if missing:
            self.print_to_log_file(f"{len(missing)} training case(s) without a template in {templates} are left out: "
                                   f"{missing}")
        self.print_to_log_file(f"training on the templates of {templates} ({len(available)} cases), "
                               f"preprocessed into {out}")
        return sorted(available)

    def initialize(self):
        if not self.was_initialized and self.local_rank == 0:
            self.prepare_templates()
        if self.is_ddp:
            torch.distributed.barrier()
        super().initialize()

    def do_split(self):
        # nnU-Net's split over *all* preprocessed cases (so splits_final.json is the one every trainer
        # of this dataset uses), then only the cases that have a template
        templates_folder = self.preprocessed_dataset_folder
        self.preprocessed_dataset_folder = self.original_preprocessed_folder
        try:
            tr_keys, val_keys = super().do_split()
        finally:
            self.preprocessed_dataset_folder = templates_folder
        with_template = set(self.dataset_class.get_identifiers(templates_folder))
        tr_keys = [k for k in tr_keys if k in with_template]
        val_keys = [k for k in val_keys if k in with_template]
        if not tr_keys:
            raise UserError(f"{type(self).__name__}: no training case of fold {self.fold} has a template in "
                            f"{self.templates_folder()}")
        return tr_keys, val_keys


class WeakNetLoss(ReconstructionBranch):
    """Mixin for an ``nnUNetTrainer`` subclass: paper 003's loss, CE on the (template) target +
    ``reconstruction_weight`` * the boundary-weighted reconstruction MSE (:meth:`weak_net_loss`),
    in nnU-Net's ``train_step`` (autocast on CUDA, both networks clipped together at 12) with
    nnU-Net's SGD and poly schedule over both networks, in one parameter group."""

    #: lambda of L = CE + lambda * L_mse: ReconstructionBranch.reconstruction_weight (0.1; why, there),
    #: like the reconstruction U-Net's size (reconstruction_stages, _base_features, _max_features)
    #: d (mm): voxels within d of a template boundary get boundary_weight_high, the others _low
    boundary_distance_mm: float = 5.0
    boundary_weight_high: float = 1.0
    boundary_weight_low: float = 0.1

    def _build_loss(self):
        # paper 003: cross entropy on the template (no Dice); nnU-Net's deep-supervision weighting
        loss = RobustCrossEntropyLoss(ignore_index=self.label_manager.ignore_label
                                      if self.label_manager.has_ignore_label else -100)
        if self.enable_deep_supervision:
            weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
            weights[-1] = 1e-6 if self.is_ddp and not self._do_i_compile() else 0
            loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        return loss

    def configure_optimizers(self):
        # nnU-Net's SGD and poly schedule over both networks, in one parameter group
        self.build_reconstruction_branch()
        optimizer = torch.optim.SGD(self._trained_parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def weak_net_loss(self, data: torch.Tensor, output, target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L, CE, weighted MSE) of one batch; ``data`` (B, C, *S), ``output``/``target`` nnU-Net's (lists
        with deep supervision)."""
        ce = self.loss(output, target)
        if self.reconstruction_network is None:
            return ce, ce, torch.zeros((), device=ce.device)
        logits = output[0] if isinstance(output, (list, tuple)) else output
        template = target[0] if isinstance(target, (list, tuple)) else target
        spacing = self.configuration_manager.spacing[-(template.ndim - 2):]
        weight = boundary_weight_map(template[:, 0].detach().cpu().numpy().round().astype(np.int64), spacing,
                                     self.boundary_distance_mm, self.boundary_weight_high, self.boundary_weight_low)
        weight = torch.from_numpy(weight[:, None]).to(data.device)
        mse = self.reconstruction_mse(data, torch.softmax(logits.float(), dim=1), weight)
        return ce + self.reconstruction_weight * mse, ce, mse

    def train_step(self, batch: dict) -> dict:
        # nnU-Net's train_step with the reconstruction term; both networks are clipped at 12
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            loss, ce, mse = self.weak_net_loss(data, output, target)
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
        return {"loss": loss.detach().cpu().numpy(), "ce": ce.detach().cpu().numpy(),
                "weighted_mse": mse.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        self.print_to_log_file(f"template CE {np.mean(outputs['ce']):.4f}, weighted reconstruction MSE "
                               f"{np.mean(outputs['weighted_mse']):.4f} (lambda {self.reconstruction_weight})")


class nnUNetTrainerWeakNet(TemplateTargets, WeakNetLoss, nnUNetTrainer):
    """Paper 003: CE on the fitted templates + lambda * boundary-weighted image reconstruction, on
    nnU-Net's own network, patch and sampling from the plans (paper-faithful)."""

    #: training length (nnU-Net's defaults; the ``_Nepochs`` variants change them)
    training_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.training_epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        self.reconstruction_network: nn.Module | None = None


class nnUNetTrainerWeakNetNoRecon(nnUNetTrainerWeakNet):
    """lambda = 0: CE on the templates only, no reconstruction network (paper 003, Fig. 3, lambda = 0)."""

    reconstruction_weight = 0.0


class nnUNetTrainerWeakNetWholeScan(TemplateTargets, WeakNetLoss, nnUNetTrainerWholeScan):
    """Paper 003's loss (the same rule as ``nnUNetTrainerWeakNet``) on the whole-scan STD/EXP setup of
    the descriptor rows: the whole scan as one patch, the STD/EXP network with deep supervision on its
    EXP heads, whole-case loading and augmentation, mirror axes and seeds as every whole-scan trainer."""

    #: the targets are the templates: placeholder labelsTr are accepted (they are never read for training)
    reads_voxel_labels = False


class nnUNetTrainerWeakNetWholeScanNoRecon(nnUNetTrainerWeakNetWholeScan):
    """lambda = 0 on the whole-scan setup: CE on the templates only, no reconstruction network."""

    reconstruction_weight = 0.0


# --- training lengths: one explicit class per length (nnunet_shape.nnunet.training.variants) ---

class nnUNetTrainerWeakNet_5epochs(Schedule5Epochs, nnUNetTrainerWeakNet): ...
class nnUNetTrainerWeakNet_50epochs(Schedule50Epochs, nnUNetTrainerWeakNet): ...
class nnUNetTrainerWeakNet_250epochs(Schedule250Epochs, nnUNetTrainerWeakNet): ...
class nnUNetTrainerWeakNet_demo(DemoSchedule, nnUNetTrainerWeakNet): ...
class nnUNetTrainerWeakNet_suite(SuiteSchedule, nnUNetTrainerWeakNet): ...
class nnUNetTrainerWeakNet_debug(DebugSchedule, nnUNetTrainerWeakNet): ...


class nnUNetTrainerWeakNetNoRecon_5epochs(Schedule5Epochs, nnUNetTrainerWeakNetNoRecon): ...
class nnUNetTrainerWeakNetNoRecon_50epochs(Schedule50Epochs, nnUNetTrainerWeakNetNoRecon): ...
class nnUNetTrainerWeakNetNoRecon_250epochs(Schedule250Epochs, nnUNetTrainerWeakNetNoRecon): ...
class nnUNetTrainerWeakNetNoRecon_demo(DemoSchedule, nnUNetTrainerWeakNetNoRecon): ...
class nnUNetTrainerWeakNetNoRecon_suite(SuiteSchedule, nnUNetTrainerWeakNetNoRecon): ...
class nnUNetTrainerWeakNetNoRecon_debug(DebugSchedule, nnUNetTrainerWeakNetNoRecon): ...


class nnUNetTrainerWeakNetWholeScan_5epochs(Schedule5Epochs, nnUNetTrainerWeakNetWholeScan): ...
class nnUNetTrainerWeakNetWholeScan_50epochs(Schedule50Epochs, nnUNetTrainerWeakNetWholeScan): ...
class nnUNetTrainerWeakNetWholeScan_250epochs(Schedule250Epochs, nnUNetTrainerWeakNetWholeScan): ...
class nnUNetTrainerWeakNetWholeScan_demo(DemoSchedule, nnUNetTrainerWeakNetWholeScan): ...
class nnUNetTrainerWeakNetWholeScan_suite(SuiteSchedule, nnUNetTrainerWeakNetWholeScan): ...
class nnUNetTrainerWeakNetWholeScan_debug(DebugSchedule, nnUNetTrainerWeakNetWholeScan): ...


class nnUNetTrainerWeakNetWholeScanNoRecon_5epochs(Schedule5Epochs, nnUNetTrainerWeakNetWholeScanNoRecon): ...
class nnUNetTrainerWeakNetWholeScanNoRecon_50epochs(Schedule50Epochs, nnUNetTrainerWeakNetWholeScanNoRecon): ...
class nnUNetTrainerWeakNetWholeScanNoRecon_250epochs(Schedule250Epochs, nnUNetTrainerWeakNetWholeScanNoRecon): ...
class nnUNetTrainerWeakNetWholeScanNoRecon_demo(DemoSchedule, nnUNetTrainerWeakNetWholeScanNoRecon): ...
class nnUNetTrainerWeakNetWholeScanNoRecon_suite(SuiteSchedule, nnUNetTrainerWeakNetWholeScanNoRecon): ...
class nnUNetTrainerWeakNetWholeScanNoRecon_debug(DebugSchedule, nnUNetTrainerWeakNetWholeScanNoRecon): ...


#: every trainer class defined in this module (what the trainers/ re-export module exposes)
TRAINER_NAMES: tuple[str, ...] = trainer_names(globals())
__all__ = list(TRAINER_NAMES)
