"""The demo's settings: the rows of paper 000's Table 1, their trainers and schedules, the options.

Pure definitions and small look-ups of the trainer classes; nothing here runs nnU-Net.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_shape.demo.console import StageFailed

__all__ = [
    "CONFIGURATION", "DATASET_NAME", "DEFAULT_DATASET_ID", "DEFAULT_SHAPE", "DEFAULT_TRAINER_SUFFIX",
    "DEFAULT_FOLD", "TIME_BUDGET_SECONDS", "CLEARLY_ABOVE_CHANCE", "POSTPROCESSING_VARIANTS", "HEADLINE_POSTPROCESSING",
    "MARKER_FILE",
    "Setting", "SETTINGS", "DemoOptions", "descriptor_value_count", "voxel_annotation_count", "phantom_spacing",
    "optimizer_description", "superior_inferior_patch_axis", "anatomical_mirror_axes", "trained_mirror_axes",
]

CONFIGURATION = "3d_fullres"
DATASET_NAME = "KneePhantom"
DEFAULT_DATASET_ID = 701
DEFAULT_SHAPE: tuple[int, int, int] = (32, 48, 48)
DEFAULT_TRAINER_SUFFIX = "_demo"
DEFAULT_FOLD = "0"
TIME_BUDGET_SECONDS = 20 * 60
#: a descriptor-only setting is "clearly above chance" when its mean Dice beats chance by this
CLEARLY_ABOVE_CHANCE = 0.10
#: prediction folders and table rows per model: raw, unconditional largest component per label, and
#: the postprocessing nnU-Net's decision chooses on the fold's validation cases (the headline)
POSTPROCESSING_VARIANTS: tuple[str, ...] = ("raw", "largest_component", "chosen")
HEADLINE_POSTPROCESSING = "chosen"
MARKER_FILE = ".nnunet_shape_demo"

# ------------------------------------------------------------------------------------------------
# the three rows of paper 000's Table 1
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One row of Table 1: the trainer (without length suffix) and what supervises it.

    ``descriptors`` is None for voxel supervision, else the descriptors the trainer constrains
    (they must equal the trainer class's ``descriptors``; tests/test_demo.py checks it).
    """

    title: str
    slug: str
    trainer: str
    descriptors: tuple[str, ...] | None


SETTINGS: tuple[Setting, ...] = (
    Setting("Full supervision", "full_supervision", "nnUNetTrainerShapeFullSupervision", None),
    Setting("V+C", "vc", "nnUNetTrainerShapeDescriptorsVC", ("volume", "centroid")),
    Setting("V+C+D", "vcd", "nnUNetTrainerShapeDescriptors", ("volume", "centroid", "spread")),
)

#: values one descriptor contributes per class in D dimensions (what the loss constrains)
VALUES_PER_CLASS: dict[str, Callable[[int], int]] = {
    "volume": lambda d: 1,
    "surface": lambda d: 1,
    "centroid": lambda d: d,
    "spread": lambda d: d,  # one per axis: sqrt(diag covariance)
    "covariance": lambda d: d * (d + 1) // 2,  # symmetric: upper triangle only
}


def descriptor_value_count(descriptors: Sequence[str], n_classes: int, ndim: int = 3) -> int:
    """Number of target values a descriptor trainer needs per case.

    ``volume`` 1, ``centroid`` D, ``spread`` D, ``surface`` 1, ``covariance`` D(D+1)/2 values per
    foreground class. Paper 000 counts V+C with 4 classes as 16 (= 4 x (1 + 3)) and V+C+D as 20,
    i.e. 𝔇 as one descriptor per class although it is a 3-vector; here every constrained value
    counts, so V+C+D is 28.
    """
    unknown = [d for d in descriptors if d not in VALUES_PER_CLASS]
    if unknown:
        raise ValueError(f"descriptor_value_count: unknown descriptors {unknown}; "
                         f"known: {sorted(VALUES_PER_CLASS)}")
    if n_classes < 0 or ndim < 1:
        raise ValueError(f"descriptor_value_count: need n_classes >= 0 and ndim >= 1, "
                         f"got {n_classes}, {ndim}")
    return int(n_classes * sum(VALUES_PER_CLASS[d](ndim) for d in descriptors))


def voxel_annotation_count(shape: Sequence[int]) -> int:
    """Labelled voxels of one case under full supervision: every voxel of the volume (paper 000's
    "24 million of voxels" = 384 x 384 x 160)."""
    return int(math.prod(int(s) for s in shape))


def phantom_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Voxel spacing (mm) that keeps the phantom generator's default field of view on ``shape``,
    so the anatomy keeps its size in millimetres whatever the grid."""
    from nnunet_shape.demo.phantoms import DEFAULT_FOV_MM

    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"phantom_spacing: need three positive sizes, got {tuple(shape)}")
    return tuple(float(f) / int(n) for f, n in zip(DEFAULT_FOV_MM, shape))  # type: ignore[return-value]

# ------------------------------------------------------------------------------------------------
# the options of one run
# ------------------------------------------------------------------------------------------------

@dataclass
class DemoOptions:
    """Everything ``run_demo`` needs (the command-line options)."""

    output: Path
    n_train: int = 20
    n_test: int = 5
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    seed: int = 0
    trainer_suffix: str = DEFAULT_TRAINER_SUFFIX
    device: str = "cpu"
    skip_training: bool = False
    fold: str = DEFAULT_FOLD
    dataset_id: int = DEFAULT_DATASET_ID
    tta: bool = False
    n_proc_da: int = 0
    num_processes: int = 2
    progress: bool = True
    mirror_si: bool = False
    #: nnUNetShape_seed of every training (the first of ``seeds`` consecutive ones with --seeds)
    training_seed: int = 0
    seeds: int = 1



def dataset_folder_name(dataset_id: int) -> str:
    return f"Dataset{dataset_id:03d}_{DATASET_NAME}"


def _trainer_class(trainer: str) -> type:
    """A nnunet-shape trainer class by name (with its length suffix), looked up where
    ``nnUNet_extTrainer`` finds it: the re-export modules of :mod:`nnunet_shape.nnunet.trainers`."""
    import importlib
    import pkgutil

    import nnunet_shape.nnunet.trainers as trainers_package
    from nnunet_shape.nnunet.training.variants import LENGTH_SCHEDULES

    cls = None
    for module in pkgutil.iter_modules(trainers_package.__path__):
        cls = getattr(importlib.import_module(f"{trainers_package.__name__}.{module.name}"), trainer, None)
        if cls is not None:
            break
    if cls is None:
        raise StageFailed(f"no nnunet-shape trainer {trainer} (a trainer name with one of the length suffixes "
                          f"{sorted(LENGTH_SCHEDULES)})")
    return cls


def _trainer_schedule(trainer: str) -> tuple[int, int, int]:
    """(epochs, iterations per epoch, validation iterations) of a nnunet-shape trainer class."""
    cls = _trainer_class(trainer)
    return int(cls.training_epochs), int(cls.iterations_per_epoch), int(cls.val_iterations_per_epoch)


def optimizer_description(trainer: str) -> str:
    """How a trainer optimises, for the report: the descriptor trainers use Adam, the
    full-supervision reference keeps nnU-Net's SGD (both with nnU-Net's poly decay)."""
    cls = _trainer_class(trainer)
    if getattr(cls, "optimizer_name", "sgd") == "adam":
        return f"Adam (lr {cls.initial_learning_rate:g}, betas {tuple(cls.adam_betas)}, poly decay)"
    return "nnU-Net's SGD (lr 0.01, momentum 0.99, Nesterov, poly decay)"


def superior_inferior_patch_axis(transpose_forward: Sequence[int]) -> int:
    """The patch axis that nnU-Net's ``transpose_forward`` makes of the phantoms' superior-inferior
    raw axis (patch axis ``i`` is raw axis ``transpose_forward[i]``)."""
    from nnunet_shape.demo.phantoms import SUPERIOR_INFERIOR_AXIS

    return [int(raw_axis) for raw_axis in transpose_forward].index(SUPERIOR_INFERIOR_AXIS)


def anatomical_mirror_axes(transpose_forward: Sequence[int]) -> tuple[int, ...]:
    """Patch axes that training may mirror: every axis but the superior-inferior one.

    Mirroring along it would put the tibia above the femur: same intensities, similar volume and
    spread, so a descriptor-only model can only tell them apart by position (docs/method.md,
    "Mirroring"). Medial-lateral mirroring (a left knee from a right one) stays.
    """
    fixed = superior_inferior_patch_axis(transpose_forward)
    return tuple(i for i in range(len(transpose_forward)) if i != fixed)


def trained_mirror_axes(fold_folder: Path) -> tuple[int, ...] | None:
    """The mirror axes a trained model used (stored by nnU-Net in the checkpoint; None: none)."""
    import torch

    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return None if axes is None else tuple(int(a) for a in axes)

