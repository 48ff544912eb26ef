"""``nnUNetTrainerShapeDescriptorsRecon``: shape descriptors plus Weak-Net's image reconstruction.

Beyond the papers (issue 15): paper 000's V+C+D supervision (``nnUNetTrainerShapeDescriptors``:
extended log-barrier on per-class descriptors, whole scan, STD/EXP network, Adam) plus paper 003's
reconstruction term,

    L = L_descriptors + lambda * mean((X - R(softmax(Y_hat)))^2)

where ``R`` is Weak-Net's small reconstruction U-Net
(:class:`~nnunet_shape.nnunet.training.reconstruction_branch.ReconstructionBranch`): it must
rebuild the (normalised, augmented) input image from the segmentation alone, so a segmentation
that follows the image's structures is cheaper than one that only meets the descriptor bounds.

* **Voxel weights: uniform** (``reconstruction_weight_map = "uniform"``, our choice). Weak-Net
  weights the voxels near a template boundary higher; here there is no template (the descriptor
  targets say nothing about where a boundary lies), so every voxel counts the same.
* **lambda** (``reconstruction_weight``) **= 0.1**, Weak-Net's: the same term on the same
  normalised image (z-score: the MSE is of the order of the image's variance, 1, and falls as
  ``R`` learns), so ``lambda * MSE`` is of the order of 0.1 or less. The barrier loss of violated descriptors is far
  larger and ~0 once they hold: as with the image-aware terms, the reconstruction mostly chooses
  among the segmentations that satisfy the descriptors. Not tuned (no ablation yet). 0 = off: no
  reconstruction network, the plain V+C+D trainer.
* **Optimisation**: ``R`` joins the descriptor trainer's optimiser (Adam, betas and learning rate
  of ``nnUNetTrainerShapeDescriptors``, one parameter group, nnU-Net's poly schedule) and is
  clipped together with the network (one gradient norm over both, at 12).
* **Checkpoints**: ``R`` under ``reconstruction_network_weights`` (``nnUNetv2_train --c``
  resumes it), never in ``network_weights``: ``nnUNetv2_predict`` loads the STD/EXP network alone.
  The term is computed in training and validation steps alike, so the logged train and
  validation losses are the same objective; checkpoints are still selected by descriptor
  satisfaction.
"""

from __future__ import annotations

import numpy as np
import torch
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_shape.nnunet.training.reconstruction_branch import ReconstructionBranch
from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors
from nnunet_shape.nnunet.training.variants import (
    DebugSchedule,
    DemoSchedule,
    Schedule5Epochs,
    Schedule50Epochs,
    Schedule250Epochs,
    SuiteSchedule,
    trainer_names,
)

#: the voxel weightings of the reconstruction term this trainer knows
RECONSTRUCTION_WEIGHT_MAPS = ("uniform",)
#: train_step output key of the step's reconstruction MSE
RECONSTRUCTION_MSE_KEY = "reconstruction_mse"


class nnUNetTrainerShapeDescriptorsRecon(ReconstructionBranch, nnUNetTrainerShapeDescriptors):
    """V+C+D descriptor supervision + lambda * uniformly weighted reconstruction of the image."""

    #: lambda: ReconstructionBranch.reconstruction_weight (0.1, Weak-Net's; see the module docstring)
    #: voxel weights of the MSE: "uniform" (no template here to say where boundaries are)
    reconstruction_weight_map: str = "uniform"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.reconstruction_weight_map not in RECONSTRUCTION_WEIGHT_MAPS:
            raise ValueError(f"{type(self).__name__}.reconstruction_weight_map is {self.reconstruction_weight_map!r}; "
                             f"expected one of {list(RECONSTRUCTION_WEIGHT_MAPS)}")
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._step_mse: torch.Tensor | None = None

    def reconstruction_voxel_weight(self, data: torch.Tensor) -> torch.Tensor:
        """The MSE's weight for ``data`` (B, C, *S): uniform, a scalar 1 (broadcast over the voxels)."""
        return data.new_ones((), dtype=torch.float32)

    def _extra_loss(self, data: torch.Tensor, probabilities: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
        """The descriptor trainer's extra terms + ``reconstruction_weight`` * the reconstruction MSE
        of ``data`` from ``probabilities`` (B, K, *S), the full-resolution softmax."""
        total = super()._extra_loss(data, probabilities, spacing)
        if self.reconstruction_network is None:
            return total
        mse = self.reconstruction_mse(data, probabilities, self.reconstruction_voxel_weight(data))
        self._step_mse = mse.detach()
        return total + self.reconstruction_weight * mse

    def train_step(self, batch: dict) -> dict:
        self._step_mse = None
        out = super().train_step(batch)
        if self._step_mse is not None:
            out[RECONSTRUCTION_MSE_KEY] = self._step_mse.cpu().numpy()
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        if train_outputs and RECONSTRUCTION_MSE_KEY in train_outputs[0]:
            mse = np.mean(collate_outputs(train_outputs)[RECONSTRUCTION_MSE_KEY])
            self.print_to_log_file(f"reconstruction MSE ({self.reconstruction_weight_map} weights) {mse:.4f} "
                                   f"(lambda {self.reconstruction_weight})")


# training-length variants, nnU-Net style (schedules: nnunet_shape.nnunet.training.variants)
class nnUNetTrainerShapeDescriptorsRecon_5epochs(Schedule5Epochs, nnUNetTrainerShapeDescriptorsRecon): ...
class nnUNetTrainerShapeDescriptorsRecon_50epochs(Schedule50Epochs, nnUNetTrainerShapeDescriptorsRecon): ...
class nnUNetTrainerShapeDescriptorsRecon_250epochs(Schedule250Epochs, nnUNetTrainerShapeDescriptorsRecon): ...
class nnUNetTrainerShapeDescriptorsRecon_demo(DemoSchedule, nnUNetTrainerShapeDescriptorsRecon): ...
class nnUNetTrainerShapeDescriptorsRecon_suite(SuiteSchedule, nnUNetTrainerShapeDescriptorsRecon): ...
class nnUNetTrainerShapeDescriptorsRecon_debug(DebugSchedule, nnUNetTrainerShapeDescriptorsRecon): ...


#: every trainer class defined in this module (what the trainers/ re-export module exposes)
TRAINER_NAMES: tuple[str, ...] = trainer_names(globals())
__all__ = list(TRAINER_NAMES)
