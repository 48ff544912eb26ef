"""The reconstruction branch of Weak-Net (paper 003), for any nnU-Net trainer.

A second, small U-Net ``R`` reconstructs the network's (normalised, augmented) input image from
its full-resolution softmax, and the trainer adds ``lambda * mean(W * (X - R(softmax))^2)`` to
its loss (:func:`nnunet_shape.core.reconstruction.weighted_mse`; ``W`` is the trainer's choice).
``R`` is trained jointly, in the trainer's own optimiser (same settings, clipped with the core
network), and exists only in training: its weights are stored in the checkpoint under
``reconstruction_network_weights`` (so ``nnUNetv2_train --c`` resumes it), never in
``network_weights``, so ``nnUNetv2_predict`` loads the core network alone.

:class:`ReconstructionBranch` is the mixin that does this (put it first among the bases);
``nnUNetTrainerWeakNet`` and ``nnUNetTrainerShapeDescriptorsRecon`` use it. With
``reconstruction_weight = 0`` no reconstruction network is built at all.
"""

from __future__ import annotations

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import autocast, nn

from nnunet_shape.core.reconstruction import weighted_mse
from nnunet_shape.nnunet.training.checkpoints import AtomicCheckpointMixin

__all__ = ["RECONSTRUCTION_KEY", "PLAIN_UNET", "build_reconstruction_network", "ReconstructionBranch"]

#: the checkpoint key of the reconstruction network (never 'network_weights')
RECONSTRUCTION_KEY = "reconstruction_network_weights"
PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def build_reconstruction_network(configuration_manager: ConfigurationManager, num_segmentation_heads: int,
                                 num_image_channels: int, stages: int, base_features: int,
                                 max_features: int) -> nn.Module:
    """A small PlainConvUNet: softmax ``(B, K, *S)`` -> image ``(B, C, *S)``.

    It uses the first ``stages`` stages of the plans' kernel sizes and strides (so the training
    patch, divisible by the plans' total stride, is divisible by its own), the plans' conv and norm
    ops, ``base_features * 2**i`` features (at most ``max_features``) and no deep supervision.
    Without deep supervision PlainConvUNet evaluates only its last 1x1 head; the lower-resolution
    heads (``decoder.seg_layers[:-1]``, kept so that the layout is PlainConvUNet's) are frozen: they
    would never get a gradient, and DDP (``find_unused_parameters=False``) would wait for one.
    """
    arch = configuration_manager.network_arch_init_kwargs
    n = max(1, min(int(stages), len(arch["strides"])))
    kwargs = {
        "n_stages": n,
        "features_per_stage": [min(base_features * 2 ** i, max_features) for i in range(n)],
        "conv_op": arch["conv_op"],
        "kernel_sizes": arch["kernel_sizes"][:n],
        "strides": arch["strides"][:n],
        "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1),
        "conv_bias": True,
        "norm_op": arch.get("norm_op", "torch.nn.modules.instancenorm.InstanceNorm3d"),
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    network = get_network_from_plans(PLAIN_UNET, kwargs, ["conv_op", "norm_op", "dropout_op", "nonlin"],
                                     num_segmentation_heads, num_image_channels, allow_init=True,
                                     deep_supervision=False)
    for head in network.decoder.seg_layers[:-1]:
        head.requires_grad_(False)
    return network


class ReconstructionBranch(AtomicCheckpointMixin):
    """Mixin for an ``nnUNetTrainer`` subclass: the reconstruction network ``R``, its optimisation,
    clipping and checkpointing. The trainer computes its loss with :meth:`reconstruction_mse`.

    * :meth:`configure_optimizers` builds ``R`` (when ``reconstruction_weight > 0``) and then calls
      the trainer's own ``configure_optimizers``; a trainer whose optimiser takes
      :meth:`_trained_parameters` trains ``R`` in the same parameter group, and parameters of ``R``
      its optimiser left out are added to it as a group with the optimiser's defaults (the same
      learning rate, momentum or betas, weight decay; nnU-Net's poly schedule sets every group).
    * :meth:`_trained_parameters`: the core network's and ``R``'s parameters, which the trainer's
      ``train_step`` clips together (nnU-Net's norm 12).
    * checkpoints: ``R``'s weights under :data:`RECONSTRUCTION_KEY`, written with nnU-Net's dict in
      one atomic write (:mod:`nnunet_shape.nnunet.training.checkpoints`), loaded back by
      :meth:`load_checkpoint` (``nnUNetv2_train --c``).
    """

    #: lambda of L = L_trainer + lambda * L_mse. Both Weak-Net terms are means over voxels (paper 003's
    #: sums divided by the same count, so their ratio is the paper's) on nnU-Net's normalised image
    #: (z-score for MRI). The paper's 1e-4 multiplies squared errors of intensities whose scale it does
    #: not give; for 8-bit intensities (std ~30 grey values) it is 1e-4 * 30^2 ~ 0.1 on z-scored ones:
    #: our default. 0 = no reconstruction network.
    reconstruction_weight: float = 0.1
    #: the reconstruction U-Net (training only)
    reconstruction_stages: int = 3
    reconstruction_base_features: int = 8
    reconstruction_max_features: int = 32
    #: R once built (None: not built, or reconstruction_weight == 0); DDP-wrapped under DDP
    reconstruction_network: nn.Module | None = None

    def build_reconstruction_branch(self) -> nn.Module | None:
        """Build ``R`` on the trainer's device (once; DDP-wrapped under DDP) unless
        ``reconstruction_weight`` is 0. Returns it (None when off)."""
        if self.reconstruction_weight < 0:
            raise ValueError(f"{type(self).__name__}.reconstruction_weight must be >= 0 (0 = no reconstruction), "
                             f"not {self.reconstruction_weight}")
        if self.reconstruction_weight == 0 or self.reconstruction_network is not None:
            return self.reconstruction_network
        network = build_reconstruction_network(
            self.configuration_manager, self.label_manager.num_segmentation_heads, self.num_input_channels,
            self.reconstruction_stages, self.reconstruction_base_features,
            self.reconstruction_max_features).to(self.device)
        if self.is_ddp:
            from torch.nn.parallel import DistributedDataParallel

            network = DistributedDataParallel(network, device_ids=[self.local_rank])
        self.reconstruction_network = network
        return network

    def _reconstruction_module(self) -> nn.Module | None:
        """``R`` itself (inside its DDP wrapper), or None."""
        module = self.reconstruction_network
        return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module

    def _trained_parameters(self) -> list[torch.Tensor]:
        """The parameters trained and clipped together: the core network's, then ``R``'s."""
        extra = [] if self.reconstruction_network is None else list(self.reconstruction_network.parameters())
        return list(self.network.parameters()) + extra

    def configure_optimizers(self):
        self.build_reconstruction_branch()
        optimizer, lr_scheduler = super().configure_optimizers()
        if self.reconstruction_network is not None:
            optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
            missing = [p for p in self.reconstruction_network.parameters() if id(p) not in optimised]
            if missing:
                optimizer.add_param_group({"params": missing})
        return optimizer, lr_scheduler

    def reconstruction_mse(self, data: torch.Tensor, probabilities: torch.Tensor,
                           weight: torch.Tensor) -> torch.Tensor:
        """``mean(weight * (data - R(probabilities))^2)``, a scalar.

        ``data`` (B, C, *S) the network's input, ``probabilities`` (B, K, *S) the core network's
        full-resolution softmax, ``weight`` broadcastable to ``data`` (``(B, 1, *S)``, or a scalar
        for uniform weights). ``R`` runs under autocast on CUDA (as nnU-Net's forward); the MSE is
        taken in float32."""
        if self.reconstruction_network is None:
            raise RuntimeError(f"{type(self).__name__}: no reconstruction network (reconstruction_weight is "
                               f"{self.reconstruction_weight}, or configure_optimizers has not run)")
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            reconstruction = self.reconstruction_network(probabilities)
        return weighted_mse(reconstruction.float(), data.float(), weight)

    # --- checkpoints: R beside, never inside, network_weights ----------------------------------

    def checkpoint_extras(self) -> dict[str, object]:
        extras = super().checkpoint_extras()
        module = self._reconstruction_module()
        if module is not None:
            extras[RECONSTRUCTION_KEY] = module.state_dict()
        return extras

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        module = self._reconstruction_module()
        if module is not None and RECONSTRUCTION_KEY in checkpoint:
            module.load_state_dict(checkpoint[RECONSTRUCTION_KEY])
