"""Checkpoints written atomically, with extra entries, in one write (every nnunet-shape trainer).

nnU-Net's ``nnUNetTrainer.save_checkpoint`` builds its checkpoint dict and ``torch.save``\\ s it
in place: a kill (SIGKILL, SIGINT, a pre-empted job) during the save leaves a truncated
``checkpoint_latest.pth`` that ``nnUNetv2_train --c`` cannot load, and a trainer that stores more
(Weak-Net's reconstruction network) had to load the file again, add its entry and save it a second
time. :func:`save_checkpoint_atomically` runs nnU-Net's save once, aimed at ``<file>.partial``,
adds the extra entries to nnU-Net's own dict as it is written (whatever keys this nnU-Net version
puts in it: nothing of it is copied here), and renames the file onto ``<file>``. The rename is
atomic on POSIX, so ``<file>`` is always the old or the new checkpoint, complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch

__all__ = ["partial_checkpoint_path", "save_checkpoint_atomically", "AtomicCheckpointMixin"]


def partial_checkpoint_path(filename: str) -> str:
    """Where a checkpoint is written before it is renamed onto ``filename``."""
    return f"{filename}.partial"


def save_checkpoint_atomically(save: Callable[[str], None], filename: str,
                               extras: Callable[[], Mapping[str, object]] | None = None) -> None:
    """Run ``save(path)`` (nnU-Net's ``save_checkpoint``) once, onto ``filename`` atomically.

    ``save`` is called with :func:`partial_checkpoint_path` of ``filename``; when it writes there
    (nnU-Net writes on rank 0 only, and not with checkpointing disabled) the file is renamed onto
    ``filename``. ``extras`` (called only when the checkpoint is written) returns entries added to
    the dict ``save`` hands to ``torch.save`` for that path, in the same single write; they must not
    replace one of its keys. While ``save`` runs, ``torch.save`` is wrapped: calls for other paths
    or objects pass through unchanged, and the original is restored afterwards.
    """
    partial = partial_checkpoint_path(filename)
    if extras is None:
        save(partial)
    else:
        original = torch.save

        def save_with_extras(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and isinstance(f, (str, os.PathLike)) and os.fspath(f) == partial:
                added = dict(extras())
                clash = sorted(set(added) & set(obj))
                if clash:
                    raise KeyError(f"checkpoint {filename}: extra entries {clash} would replace nnU-Net's own")
                obj = {**obj, **added}
            return original(obj, f, *args, **kwargs)

        torch.save = save_with_extras
        try:
            save(partial)
        finally:
            torch.save = original
    if os.path.isfile(partial):
        os.replace(partial, filename)


class AtomicCheckpointMixin:
    """``save_checkpoint`` through :func:`save_checkpoint_atomically`; put it before nnU-Net's trainer.

    Subclasses that store more than nnU-Net override :meth:`checkpoint_extras` (calling super and
    adding their entries) and read them back in ``load_checkpoint``.
    """

    def checkpoint_extras(self) -> dict[str, object]:
        """Entries stored in the checkpoint beside nnU-Net's (none here)."""
        return {}

    def save_checkpoint(self, filename: str) -> None:
        save_checkpoint_atomically(super().save_checkpoint, filename, self.checkpoint_extras)
