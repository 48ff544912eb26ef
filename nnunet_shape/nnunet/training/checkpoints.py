"""Checkpoints written atomically, with extra entries, in one write (every nnunet-shape trainer).

nnU-Net's ``nnUNetTrainer.save_checkpoint`` builds its checkpoint dict and ``torch.save``\\ s it
in place: a kill (SIGKILL, SIGINT, a pre-empted job) during the save leaves a truncated
``checkpoint_latest.pth`` that ``nnUNetv2_train --c`` cannot load, and a trainer that stores more
(Weak-Net's reconstruction network) would have to load the file again, add its entry and save it a
second time. :class:`AtomicCheckpointMixin` builds nnU-Net's dict itself (:func:`nnunet_checkpoint`,
the keys and values of the installed nnU-Net's ``save_checkpoint``: ``tests/test_recon_trainers.py``
compares the two), adds the trainer's extra entries and writes it once, to ``<file>.partial``, which
:func:`save_checkpoint_atomically` then renames onto ``<file>``. The rename is atomic on POSIX, so
``<file>`` is always the old or the new checkpoint, complete.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch._dynamo import OptimizedModule

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

__all__ = ["partial_checkpoint_path", "save_checkpoint_atomically", "nnunet_checkpoint", "AtomicCheckpointMixin"]


def partial_checkpoint_path(filename: str) -> str:
    """Where a checkpoint is written before it is renamed onto ``filename``."""
    return f"{filename}.partial"


def save_checkpoint_atomically(checkpoint: Mapping[str, object], filename: str,
                               extras: Mapping[str, object] | None = None) -> None:
    """``torch.save`` ``checkpoint`` with ``extras`` added, once, to :func:`partial_checkpoint_path`
    of ``filename``, then rename it onto ``filename``.

    ``extras`` must not replace an entry of ``checkpoint`` (KeyError, nothing written). When the write
    fails or is interrupted, ``filename`` keeps the previous checkpoint.
    """
    added = dict(extras or {})
    clash = sorted(set(added) & set(checkpoint))
    if clash:
        raise KeyError(f"checkpoint {filename}: extra entries {clash} would replace nnU-Net's own")
    partial = partial_checkpoint_path(filename)
    torch.save({**checkpoint, **added}, partial)
    os.replace(partial, filename)


def nnunet_checkpoint(trainer: nnUNetTrainer) -> dict[str, object]:
    """The dict nnU-Net's ``nnUNetTrainer.save_checkpoint`` writes for ``trainer`` (an initialised
    ``nnUNetTrainer``): the same keys and values, the core network's weights unwrapped from DDP and
    ``torch.compile`` as nnU-Net does."""
    network = trainer.network.module if trainer.is_ddp else trainer.network
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return {
        "network_weights": network.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
        "logging": trainer.logger.get_checkpoint(),
        "_best_ema": trainer._best_ema,
        "current_epoch": trainer.current_epoch + 1,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": trainer.__class__.__name__,
        "inference_allowed_mirroring_axes": trainer.inference_allowed_mirroring_axes,
    }


class AtomicCheckpointMixin:
    """``save_checkpoint`` as one atomic write of :func:`nnunet_checkpoint` and
    :meth:`checkpoint_extras`; put it before nnU-Net's trainer.

    Where nnU-Net writes nothing (ranks other than 0, ``disable_checkpointing``) nnU-Net's own
    ``save_checkpoint`` runs (it logs that checkpointing is disabled). Subclasses that store more than
    nnU-Net override :meth:`checkpoint_extras` (calling super and adding their entries) and read them
    back in ``load_checkpoint``.
    """

    def checkpoint_extras(self) -> dict[str, object]:
        """Entries stored in the checkpoint beside nnU-Net's (none here)."""
        return {}

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)  # writes nothing
            return
        save_checkpoint_atomically(nnunet_checkpoint(self), filename, self.checkpoint_extras())
