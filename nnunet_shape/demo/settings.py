"""The demo's settings: the rows of paper 000's Table 1, their trainers and schedules, the data
sets it runs on, the options.

Pure definitions and small look-ups of the trainer classes; nothing here runs nnU-Net.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from nnunet_shape.demo import brains, phantoms
from nnunet_shape.demo.console import StageFailed

__all__ = [
    "CONFIGURATION", "DATASET_NAME", "DEFAULT_DATASET_ID", "DEFAULT_SHAPE", "DEFAULT_TRAINER_SUFFIX", "SUITE_SHAPE",
    "SUITE_TRAINER_SUFFIX",
    "DEFAULT_FOLD", "TIME_BUDGET_SECONDS", "CLEARLY_ABOVE_CHANCE", "POSTPROCESSING_VARIANTS", "HEADLINE_POSTPROCESSING",
    "MARKER_FILE",
    "Setting", "SETTINGS", "IMAGE_AWARE_SETTING", "EXPECTED_ORDER", "demo_settings", "ordered_settings",
    "DemoData", "KNEE", "BRAIN", "BRAIN_HEMISPHERES", "DEMO_DATA", "demo_data", "DemoOptions",
    "descriptor_value_count", "voxel_annotation_count", "phantom_spacing",
    "optimizer_description", "superior_inferior_patch_axis", "anatomical_mirror_axes", "trained_mirror_axes",
]

CONFIGURATION = "3d_fullres"
DATASET_NAME = "KneePhantom"
DEFAULT_DATASET_ID = 701
DEFAULT_SHAPE: tuple[int, int, int] = (32, 48, 48)
#: the comparison suites' grid (--suite weak / priors; the same field of view, coarser voxels): a
#: multiple of the network's total stride (4, 8, 8), so the whole-scan patch is the case itself
#: (24 x 36 x 36, the grid before 2026-12-07, was padded to 24 x 40 x 40: 56 % more voxels)
SUITE_SHAPE: tuple[int, int, int] = (24, 32, 32)
DEFAULT_TRAINER_SUFFIX = "_demo"
#: the comparison suites' schedule (``SuiteSchedule``: 10 epochs of 50 iterations), so that six or
#: seven trainings fit 25 min on 2 CPU cores (docs/weak-points.md, docs/population-priors.md)
SUITE_TRAINER_SUFFIX = "_suite"
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
# the rows of paper 000's Table 1 (and the optional image-aware row)
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
    #: per-case intensity statistics the trainer is given besides the descriptors ("mean": one value
    #: per class and channel; they must equal the trainer's ``intensity_statistics`` when its
    #: ``intensity_weight`` is on)
    intensity_statistics: tuple[str, ...] = ()

    @property
    def value_names(self) -> tuple[str, ...]:
        """What a human supplies per class and case: the descriptors, then ``intensity_<stat>``."""
        return (*(self.descriptors or ()), *(f"intensity_{s}" for s in self.intensity_statistics))


SETTINGS: tuple[Setting, ...] = (
    Setting("Full supervision", "full_supervision", "nnUNetTrainerShapeFullSupervision", None),
    Setting("V+C", "vc", "nnUNetTrainerShapeDescriptorsVC", ("volume", "centroid")),
    Setting("V+C+D", "vcd", "nnUNetTrainerShapeDescriptors", ("volume", "centroid", "spread")),
)
#: ``--image-aware``: V+C+D plus what docs/image-aware-study.md kept (descriptor templates, region
#: homogeneity, edge-aware boundary, entropy, +-20 % volume; issue 14) and each class's mean intensity
IMAGE_AWARE_SETTING = Setting("V+C+D + image terms", "image_aware", "nnUNetTrainerShapeDescriptorsImageAware",
                              ("volume", "centroid", "spread"), intensity_statistics=("mean",))
#: the expected ordering of the rows by mean Dice, best first (paper 000: full > V+C+D > V+C; issue
#: 14: the image terms between full supervision and V+C+D)
EXPECTED_ORDER: tuple[str, ...] = ("full_supervision", "image_aware", "vcd", "vc")


def demo_settings(image_aware: bool = False) -> tuple[Setting, ...]:
    """The rows of one demo run, in table order: :data:`SETTINGS`, then with ``image_aware``
    :data:`IMAGE_AWARE_SETTING`."""
    return (*SETTINGS, IMAGE_AWARE_SETTING) if image_aware else SETTINGS


def ordered_settings(slugs: Sequence[str]) -> list[Setting]:
    """The settings of ``slugs`` in :data:`EXPECTED_ORDER` (best expected first); ValueError
    naming a slug that is no demo row."""
    known = {s.slug: s for s in (*SETTINGS, IMAGE_AWARE_SETTING)}
    unknown = sorted(set(slugs) - set(known))
    if unknown:
        raise ValueError(f"no demo row {unknown}; the rows are {list(EXPECTED_ORDER)}")
    return [known[slug] for slug in EXPECTED_ORDER if slug in slugs]

#: values one descriptor contributes per class in D dimensions (what the loss constrains)
VALUES_PER_CLASS: dict[str, Callable[[int], int]] = {
    "volume": lambda d: 1,
    "surface": lambda d: 1,
    "centroid": lambda d: d,
    "spread": lambda d: d,  # one per axis: sqrt(diag covariance)
    "covariance": lambda d: d * (d + 1) // 2,  # symmetric: upper triangle only
    # intensity descriptors: one value per class (and image channel; the demo's images have one)
    "intensity_mean": lambda d: 1,
    "intensity_std": lambda d: 1,
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
# the data sets (--data)
# ------------------------------------------------------------------------------------------------

#: the plane of a slice across each anatomical axis (the overlays show slices across array axis 0)
PLANE_ACROSS: dict[str, str] = {"LR": "sagittal", "AP": "coronal", "SI": "axial"}


@dataclass(frozen=True)
class DemoData:
    """One data set the Table-1 demo runs on (``--data``): what the stages, the report and the
    console need to know of it. The classes, their names and the file ending are read from the
    dataset.json it writes; the descriptor counts follow from the number of classes.

    ``array_axes`` names the anatomical axis (``LR``, ``AP``, ``SI``) along each raw array axis
    (nnU-Net's ``(z, y, x)`` order, the same in every case); training mirrors the patch axes along
    ``mirrored`` (unless ``--mirror-si``). ``compartments``: report whether the models find every
    connected component of a class whose reference has several (the phantoms' tibial cartilage).
    ``detail_class``: the overlays' second slice is the one with the most voxels of the classes
    whose name contains it.
    """

    key: str
    title: str
    generator: str  # the nnunet-shape command that writes it; also the name of the demo's first stage
    dataset_name: str
    default_dataset_id: int
    default_output: str
    parameters_file: str  # the generator's record in the raw dataset folder
    cases_title: str  # "Phantoms": the schedule's line on the data
    grid_note: str  # what the grid keeps, for that line
    seed_name: str  # "phantom": "phantom seed 0"
    array_axes: tuple[str, str, str]
    mirrored: tuple[str, ...]
    compartments: bool
    detail_class: str
    largest_component_note: str

    @property
    def overlay_plane(self) -> str:
        """The plane of the overlays' slices (across array axis 0)."""
        return PLANE_ACROSS[self.array_axes[0]]


KNEE = DemoData(
    key="knee", title="knee phantoms", generator="phantoms", dataset_name=DATASET_NAME,
    default_dataset_id=DEFAULT_DATASET_ID, default_output="demo_output", parameters_file="phantom_parameters.json",
    cases_title="Phantoms", grid_note="the generator's default field of view", seed_name="phantom",
    array_axes=phantoms.ARRAY_AXES, mirrored=("LR", "AP"), compartments=True, detail_class="cartilage",
    largest_component_note="The phantoms' tibial cartilage has two compartments (medial and lateral) under one "
                           "label, so this step removes the smaller compartment even from a perfect prediction; "
                           "the decision above does not apply it where it hurts.")
#: ``--data brain``: real brain MRI anatomy (nilearn's MNI152 template, ``nnunet-shape brains``):
#: gray and white matter, mirrored left-right only (the template is symmetric; front-back and
#: top-bottom mirror images are no brains)
BRAIN = DemoData(
    key="brain", title="MNI152 brains (gray and white matter)", generator="brains", dataset_name="BrainMNI",
    default_dataset_id=720, default_output="demo_brain_output", parameters_file="brain_parameters.json",
    cases_title="Brains", grid_note="isotropic, over the MNI152 template's field of view", seed_name="brain dataset",
    array_axes=brains.ARRAY_AXES, mirrored=("LR",), compartments=False, detail_class="white_matter",
    largest_component_note="At the demo's coarse voxels the thresholded cortex falls apart into many pieces "
                           "(docs/real-anatomy.md, \"Limits\"), so this step removes true gray matter even from "
                           "a perfect prediction; the decision above does not apply it where it hurts.")
#: ``--data brain --hemispheres``: the four classes tissue x hemisphere, never mirrored (a left-right
#: mirror image would put the left classes' voxels on the right)
BRAIN_HEMISPHERES = replace(
    BRAIN, title="MNI152 brains (gray and white matter x hemisphere)", dataset_name="BrainMNIHemispheres",
    default_dataset_id=721, default_output="demo_brain_hemispheres_output", mirrored=())
#: ``--data`` -> its data set (``--hemispheres`` turns BRAIN into BRAIN_HEMISPHERES: :func:`demo_data`)
DEMO_DATA: dict[str, DemoData] = {"knee": KNEE, "brain": BRAIN}

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
    #: ``--data``: a key of :data:`DEMO_DATA`
    data: str = "knee"
    #: ``--data brain``: the four classes tissue x hemisphere, and the isotropic voxel size (mm)
    hemispheres: bool = False
    spacing_mm: float = 5.0
    #: ``--image-aware``: the row V+C+D + image terms (:data:`IMAGE_AWARE_SETTING`)
    image_aware: bool = False
    #: ``--recon-row`` (weak suite): the row V+C+D + reconstruction (``nnUNetTrainerShapeDescriptorsRecon``)
    recon_row: bool = False


def demo_data(options: DemoOptions) -> DemoData:
    """The data set of a run: ``DEMO_DATA[options.data]``, the four-class brains with
    ``hemispheres``. ValueError for an unknown ``data`` or ``hemispheres`` without the brains."""
    if options.data not in DEMO_DATA:
        raise ValueError(f"unknown demo data {options.data!r}; known: {', '.join(DEMO_DATA)}")
    if options.hemispheres and options.data != "brain":
        raise ValueError(f"hemispheres are a split of the brain data, not of --data {options.data}")
    return BRAIN_HEMISPHERES if options.hemispheres else DEMO_DATA[options.data]


def dataset_folder_name(dataset_id: int, data: DemoData = KNEE) -> str:
    return f"Dataset{dataset_id:03d}_{data.dataset_name}"


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


def superior_inferior_patch_axis(transpose_forward: Sequence[int], data: DemoData = KNEE) -> int:
    """The patch axis that nnU-Net's ``transpose_forward`` makes of the data's superior-inferior
    raw axis (patch axis ``i`` is raw axis ``transpose_forward[i]``)."""
    return [int(raw_axis) for raw_axis in transpose_forward].index(data.array_axes.index("SI"))


def anatomical_mirror_axes(transpose_forward: Sequence[int], data: DemoData = KNEE) -> tuple[int, ...]:
    """Patch axes that training may mirror: those along the data's ``mirrored`` anatomical axes.

    Knee phantoms: every axis but the superior-inferior one. Mirroring along it would put the
    tibia above the femur: same intensities, similar volume and spread, so a descriptor-only model
    can only tell them apart by position (docs/method.md, "Mirroring"). Medial-lateral mirroring
    (a left knee from a right one) stays. Brains: left-right only, and none with the hemispheres.
    """
    return tuple(i for i, raw_axis in enumerate(transpose_forward) if data.array_axes[int(raw_axis)] in data.mirrored)


def trained_mirror_axes(fold_folder: Path) -> tuple[int, ...] | None:
    """The mirror axes a trained model used (stored by nnU-Net in the checkpoint; None: none)."""
    import torch

    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return None if axes is None else tuple(int(a) for a in axes)

