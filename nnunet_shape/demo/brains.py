"""Real brain MRI with real tissue labels as an nnU-Net raw dataset (``nnunet-shape brains``).

The source is the MNI ICBM152 2009a nonlinear symmetric template that nilearn ships INSIDE its
wheel (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``: a T1
average of 152 adults and its gray/white-matter probability maps, 197 x 233 x 189 voxels of 1 mm,
MNI world coordinates). Nothing is downloaded; nilearn itself is never imported (the files are
located through the import system, :func:`template_files`). See ``docs/real-anatomy.md``.

Labels (the rule, :func:`tissue_labels`): with ``p_gm``, ``p_wm`` the maps divided by their
maximum (as nilearn's own ``load_mni152_gm_template`` does), a voxel is gray matter (1) where
``p_gm >= 0.5`` and ``p_gm >= p_wm``, white matter (2) where ``p_wm >= 0.5`` and ``p_wm > p_gm``,
background (0) elsewhere (CSF, non-brain, voxels where no tissue reaches 0.5). With
``hemispheres=True`` the labels split at the template's mid-sagittal plane, MNI ``x = 0`` in world
coordinates: left gray / left white / right gray / right white = 1 / 2 / 3 / 4
(:data:`HEMISPHERE_LABELS`). "Left" is the PATIENT's left: RAS ``x < 0`` (NIfTI, nibabel), which
is LPS ``x > 0`` (ITK, SimpleITK, the descriptor files); the plane itself (``x = 0``) goes to the
right hemisphere.

Cases. The one template becomes many plausible subjects through seeded random transforms, drawn
by :func:`sample_subject` into a :class:`BrainSubject` (TorchIO style: drawing and rendering are
apart; :func:`render_brain` is a pure function of the subject, the spacing and the label set):

* a small affine ``F(q) = R S (q - c) + c + t`` (template -> subject, ``c`` the field-of-view
  centre): per-axis scaling 0.92-1.08, rotations of +-6 degrees about each axis, translations of
  +-3 mm; ``translation_mm = (3, 0, 0)`` moves the brain 3 mm along LPS ``x`` (to its left);
* a smooth elastic deformation: a cubic B-spline (SimpleITK ``BSplineTransform``, 4 x 4 x 4 mesh
  over the field of view, ~50 mm between control points) whose coefficients are uniform in
  ``[-a, a]`` mm per component, ``a`` in 2-4 mm; a B-spline is a convex combination of its
  coefficients, so no component of a displacement exceeds ``a``;
* a smooth multiplicative bias field ``exp(b f)``, ``f`` a random quadratic polynomial of the
  normalised grid coordinates scaled to ``max |f| = 1``, ``b`` in 0.05-0.20;
* Gaussian noise of std ``noise_sigma`` (0.01-0.03 of the template's maximum), then a gain.

The output voxel at world point ``p`` samples the template at ``E(F^-1(p))`` (``E`` the B-spline),
with linear interpolation for the image and nearest neighbour for the labels -- the SAME map for
both -- on an isotropic ``spacing_mm`` grid over the template's field of view (5 mm: 40 x 47 x 38
voxels) with the template's direction (RAS+ on disk, so viewers show it the right way up). Before
a coarser resampling the T1 is blurred with a Gaussian whose FWHM is the output voxel size (the
partial volume of a low-resolution scan); labels are not blurred. Only SimpleITK resamples.

Arrays are in SimpleITK/nnU-Net order ``(z, y, x)``; only ``numpy.random.Generator`` instances
are used, never the global random state.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nnunet_shape.demo.dataset_writer import (
    SPLIT_FOLDERS,
    add_dataset_writer_arguments,
    add_name_and_processes_arguments,
    make_split_folders,
    write_cases,
    write_image_atomic,
)
from nnunet_shape.errors import UserError, prepare_output_folder

__all__ = [
    "TISSUE_LABELS",
    "HEMISPHERE_LABELS",
    "PROBABILITY_THRESHOLD",
    "ARRAY_AXES",
    "DEFAULT_SPACING_MM",
    "TEMPLATE_FILES",
    "INSTALL_HINT",
    "BrainSubject",
    "UNDEFORMED",
    "template_files",
    "tissue_labels",
    "hemisphere_labels",
    "sample_subject",
    "output_grid",
    "check_spacing",
    "subject_transform",
    "render_brain",
    "generate_case",
    "write_brain_dataset",
    "main",
]

TISSUE_LABELS: dict[str, int] = {"background": 0, "gray_matter": 1, "white_matter": 2}
HEMISPHERE_LABELS: dict[str, int] = {
    "background": 0,
    "left_gray_matter": 1,
    "left_white_matter": 2,
    "right_gray_matter": 3,
    "right_white_matter": 4,
}
#: a voxel takes a tissue class only where that class's probability reaches this value
PROBABILITY_THRESHOLD = 0.5
#: role -> file name inside nilearn/datasets/data (shipped in nilearn's wheel)
TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
INSTALL_HINT = "pip install nilearn  (or: pip install 'nnunet-shape[anatomy]')"
#: B-spline control mesh (cells per axis) of the elastic deformation
ELASTIC_MESH = 4
#: spacing_mm accepted by the writer (the template has 1 mm voxels; 20 mm leaves 10 x 12 x 10 voxels)
SPACING_RANGE_MM = (1.0, 20.0)
DEFAULT_SPACING_MM = 5.0
#: the anatomical axis along each array axis ``(z, y, x)`` of every case: the files keep the
#: template's RAS+ direction (SimpleITK direction diag(-1, -1, 1): index x runs along LR, y along
#: AP, z along SI), which the per-case transforms rotate by 6 degrees at most
ARRAY_AXES: tuple[str, str, str] = ("SI", "AP", "LR")

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class BrainSubject:
    """All random parameters of one case (world axes are LPS: x to the patient's left, y posterior,
    z superior)."""

    scale: Vec3  # brain size factor along x, y, z (1.08 = 8 % larger than the template)
    rotation_deg: Vec3  # about x, y, z, composed Rx @ Ry @ Rz
    translation_mm: Vec3  # of the brain, world x, y, z
    elastic_mm: float  # bound a of the B-spline coefficients (uniform in [-a, a] per component)
    bias_amplitude: float  # b: the bias field lies in [exp(-b), exp(b)]
    noise_sigma: float  # Gaussian noise std relative to the template's maximum intensity
    gain: float  # global scale of the written intensities
    field_seed: int  # seeds the B-spline coefficients, the bias polynomial and the noise

    @classmethod
    def from_dict(cls, values: dict) -> BrainSubject:
        """Inverse of ``dataclasses.asdict`` after a JSON round trip (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


#: the template itself: no deformation, no bias, no noise, gain 1
UNDEFORMED = BrainSubject(scale=(1.0, 1.0, 1.0), rotation_deg=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0),
                          elastic_mm=0.0, bias_amplitude=0.0, noise_sigma=0.0, gain=1.0, field_seed=0)


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def sample_subject(rng: np.random.Generator) -> BrainSubject:
    """Draw one subject (every random number of a case that is not drawn from ``field_seed``)."""
    return BrainSubject(
        scale=(_u(rng, 0.92, 1.08), _u(rng, 0.92, 1.08), _u(rng, 0.92, 1.08)),
        rotation_deg=(_u(rng, -6.0, 6.0), _u(rng, -6.0, 6.0), _u(rng, -6.0, 6.0)),
        translation_mm=(_u(rng, -3.0, 3.0), _u(rng, -3.0, 3.0), _u(rng, -3.0, 3.0)),
        elastic_mm=_u(rng, 2.0, 4.0),
        bias_amplitude=_u(rng, 0.05, 0.20),
        noise_sigma=_u(rng, 0.01, 0.03),
        gain=_u(rng, 800.0, 1200.0),
        field_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ----------------------------------------------------------------------------------------
# the template (nilearn's files, located without importing nilearn)
# ----------------------------------------------------------------------------------------


def _nilearn_data_folder() -> Path:
    """``<site-packages>/nilearn/datasets/data`` through the import system, without importing
    nilearn (whose top level pulls in pandas, scikit-learn, ...)."""
    try:
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the brain dataset needs the Python package 'nilearn' (it ships the MNI ICBM152 "
                        f"template in its wheel), which is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def template_files() -> dict[str, Path]:
    """Role (``"t1"``, ``"gm"``, ``"wm"``) -> path of the template file in the installed nilearn.

    Raises UserError naming the missing package or file and the install command.
    """
    folder = _nilearn_data_folder()
    paths = {role: folder / name for role, name in TEMPLATE_FILES.items()}
    for role, path in paths.items():
        if not path.is_file():
            raise UserError(f"nilearn is installed but its template file {path} ({role}) is missing; "
                            f"this nilearn may be too old or incomplete: reinstall it ({INSTALL_HINT})")
    return paths


def tissue_labels(p_gm: np.ndarray, p_wm: np.ndarray, threshold: float = PROBABILITY_THRESHOLD) -> np.ndarray:
    """Labels 0/1/2 (background/gray/white) from two probability maps of one shape (uint8).

    Gray where ``p_gm >= threshold`` and ``p_gm >= p_wm``; white where ``p_wm >= threshold`` and
    ``p_wm > p_gm`` (a tie goes to gray matter); background elsewhere.
    """
    p_gm, p_wm = np.asarray(p_gm), np.asarray(p_wm)
    if p_gm.shape != p_wm.shape:
        raise ValueError(f"tissue_labels: gray and white matter maps differ in shape: {p_gm.shape} vs {p_wm.shape}")
    labels = np.zeros(p_gm.shape, dtype=np.uint8)
    labels[(p_gm >= threshold) & (p_gm >= p_wm)] = TISSUE_LABELS["gray_matter"]
    labels[(p_wm >= threshold) & (p_wm > p_gm)] = TISSUE_LABELS["white_matter"]
    return labels


def hemisphere_labels(tissue: np.ndarray, lps_x_mm: np.ndarray) -> np.ndarray:
    """:data:`HEMISPHERE_LABELS` from tissue labels 0/1/2 and each voxel's world LPS ``x`` (mm,
    broadcastable): the patient's left is ``x > 0``; the plane ``x = 0`` goes to the right."""
    tissue = np.asarray(tissue, dtype=np.uint8)
    right = np.broadcast_to(np.asarray(lps_x_mm) <= 0.0, tissue.shape)
    return np.where(right & (tissue > 0), tissue + np.uint8(2), tissue).astype(np.uint8)


def _world_lps_x(image) -> np.ndarray:
    """World LPS ``x`` (mm) of every voxel of a SimpleITK image, broadcastable to its ``(z, y, x)`` array."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    size = image.GetSize()
    x = np.full((1, 1, 1), float(image.GetOrigin()[0]))
    for k in range(3):  # index axis k (SimpleITK order) is array axis 2 - k
        shape = [1, 1, 1]
        shape[2 - k] = size[k]
        x = x + (direction[0, k] * spacing[k] * np.arange(size[k], dtype=np.float64)).reshape(shape)
    return x


@dataclass(frozen=True)
class _Template:
    t1: object  # SimpleITK float32 image, intensities / max (0..1)
    labels: object  # SimpleITK uint8 image (tissue or hemisphere labels)


@functools.lru_cache(maxsize=2)
def _read_maps() -> tuple[object, np.ndarray, np.ndarray]:
    """(T1 image float32 scaled to max 1, p_gm, p_wm) as read from nilearn's files."""
    import SimpleITK as sitk

    paths = template_files()
    images = {role: sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32) for role, path in paths.items()}
    arrays = {role: sitk.GetArrayFromImage(image) for role, image in images.items()}
    t1 = sitk.GetImageFromArray(arrays["t1"] / np.float32(arrays["t1"].max()))
    t1.CopyInformation(images["t1"])
    return t1, arrays["gm"] / np.float32(arrays["gm"].max()), arrays["wm"] / np.float32(arrays["wm"].max())


@functools.lru_cache(maxsize=4)
def _template(hemispheres: bool) -> _Template:
    import SimpleITK as sitk

    t1, p_gm, p_wm = _read_maps()
    labels = tissue_labels(p_gm, p_wm)
    if hemispheres:
        labels = hemisphere_labels(labels, _world_lps_x(t1))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(t1)
    return _Template(t1=t1, labels=label_image)


@functools.lru_cache(maxsize=4)
def _blurred_t1(spacing_mm: float):
    """The T1 blurred to a point-spread function of FWHM ``spacing_mm`` (none at <= 1 mm)."""
    import SimpleITK as sitk

    t1 = _template(False).t1
    native = max(t1.GetSpacing())
    if spacing_mm <= native:
        return t1
    sigma = math.sqrt((spacing_mm**2 - native**2) / (8.0 * math.log(2.0)))
    return sitk.SmoothingRecursiveGaussian(t1, sigma)


# ----------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------


def output_grid(spacing_mm: float):
    """Empty SimpleITK image (uint8) of the output grid: the template's field of view and
    direction, isotropic ``spacing_mm``, ``ceil(extent / spacing_mm)`` voxels per axis, centred
    on the template's centre."""
    import SimpleITK as sitk

    t1 = _template(False).t1
    size = [int(math.ceil(n * s / spacing_mm - 1e-9)) for n, s in zip(t1.GetSize(), t1.GetSpacing())]
    centre = np.asarray(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
    direction = np.asarray(t1.GetDirection()).reshape(3, 3)
    origin = centre - direction @ (0.5 * (np.asarray(size) - 1) * spacing_mm)
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetDirection(t1.GetDirection())
    grid.SetOrigin(tuple(float(v) for v in origin))
    return grid


def _rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    a, b, c = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def subject_transform(subject: BrainSubject, rng: np.random.Generator):
    """The pull-back map of a subject, output world point -> template world point: ``E(F^-1(p))``.

    ``F`` is the affine (template -> subject) around the template's centre; ``E`` the B-spline
    displacement, whose coefficients are drawn from ``rng`` (omitted when ``elastic_mm`` is 0).
    """
    import SimpleITK as sitk

    t1 = _template(False).t1
    forward = sitk.AffineTransform(3)
    forward.SetCenter(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
    matrix = _rotation_matrix(subject.rotation_deg) @ np.diag(np.asarray(subject.scale, dtype=np.float64))
    forward.SetMatrix(tuple(float(v) for v in matrix.ravel()))
    forward.SetTranslation(tuple(float(v) for v in subject.translation_mm))
    inverse = forward.GetInverse()
    if subject.elastic_mm <= 0.0:
        return inverse
    elastic = sitk.BSplineTransformInitializer(t1, [ELASTIC_MESH] * 3, 3)
    count = elastic.GetNumberOfParameters()
    elastic.SetParameters(tuple(float(v) for v in rng.uniform(-subject.elastic_mm, subject.elastic_mm, count)))
    return sitk.CompositeTransform([elastic, inverse])  # applied right to left: E(F^-1(p))


def _bias_field(rng: np.random.Generator, shape: Sequence[int], amplitude: float) -> np.ndarray:
    """``exp(b f)``, ``f`` a random quadratic polynomial (no constant term) of the coordinates
    normalised to [-1, 1], scaled to ``max |f| = 1`` on the grid."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    terms = [*axes] + [axes[i] * axes[j] for i in range(3) for j in range(i, 3)]
    coefficients = rng.standard_normal(len(terms))
    field = np.zeros(tuple(shape), dtype=np.float32)
    for c, t in zip(coefficients, terms):
        field += np.float32(c) * t
    field = field / max(float(np.abs(field).max()), 1e-12)
    return np.exp(amplitude * field).astype(np.float32)


def check_spacing(spacing_mm: float, what: str) -> float:
    """``spacing_mm`` as a float; UserError starting with ``what`` unless within :data:`SPACING_RANGE_MM`."""
    spacing_mm = float(spacing_mm)
    low, high = SPACING_RANGE_MM
    if not low <= spacing_mm <= high:
        raise UserError(f"{what}: spacing_mm must be {low:g}..{high:g} mm (the template has 1 mm voxels), "
                        f"got {spacing_mm:g}")
    return spacing_mm


def render_brain(subject: BrainSubject, spacing_mm: float = DEFAULT_SPACING_MM, hemispheres: bool = False):
    """One case: ``(image, labels)`` as SimpleITK images on :func:`output_grid` (float32 / uint8).

    Pure: the same subject, spacing and label set give the same voxels (random fields come from
    ``subject.field_seed``).
    """
    import SimpleITK as sitk

    spacing_mm = check_spacing(spacing_mm, "render_brain")
    rng = np.random.default_rng(subject.field_seed)
    grid = output_grid(spacing_mm)
    transform = subject_transform(subject, rng)
    image = sitk.Resample(_blurred_t1(spacing_mm), grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    labels = sitk.Resample(_template(hemispheres).labels, grid, transform, sitk.sitkNearestNeighbor, 0,
                           sitk.sitkUInt8)

    array = sitk.GetArrayFromImage(image)
    if subject.bias_amplitude > 0.0:
        array = array * _bias_field(rng, array.shape, subject.bias_amplitude)
    if subject.noise_sigma > 0.0:
        array = array + np.float32(subject.noise_sigma) * rng.standard_normal(array.shape, dtype=np.float32)
    array = (array * np.float32(subject.gain)).astype(np.float32)
    written = sitk.GetImageFromArray(array)
    written.CopyInformation(grid)
    return written, labels


def generate_case(seed: int, spacing_mm: float = DEFAULT_SPACING_MM,
                  hemispheres: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One case from an integer seed: ``(image float32, labels uint8)`` arrays in ``(z, y, x)`` order."""
    import SimpleITK as sitk

    image, labels = render_brain(sample_subject(np.random.default_rng(seed)), spacing_mm, hemispheres)
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)


# ----------------------------------------------------------------------------------------
# nnU-Net raw dataset
# ----------------------------------------------------------------------------------------


def _write_case(job: tuple[str, str, str, int, float, bool]) -> dict:
    """One case of :func:`~nnunet_shape.demo.dataset_writer.write_cases`: render and write it,
    return its record (split, seed, subject)."""
    folder, case_id, split, seed, spacing_mm, hemispheres = job
    subject = sample_subject(np.random.default_rng(seed))
    image, labels = render_brain(subject, spacing_mm, hemispheres)
    images, label_dir = SPLIT_FOLDERS[split]
    write_image_atomic(image, Path(folder) / images / f"{case_id}_0000.nii.gz")
    write_image_atomic(labels, Path(folder) / label_dir / f"{case_id}.nii.gz")
    return {"split": split, "seed": seed, "subject": asdict(subject)}


def write_brain_dataset(
    raw_root: str | os.PathLike,
    n_train: int,
    n_test: int,
    seed: int,
    dataset_id: int,
    name: str = "BrainMNI",
    spacing_mm: float = DEFAULT_SPACING_MM,
    hemispheres: bool = False,
    num_processes: int = 1,
) -> Path:
    """Write ``raw_root/Dataset{id:03d}_{name}`` as an nnU-Net raw dataset of deformed MNI brains.

    Layout as :func:`nnunet_shape.demo.phantoms.write_phantom_dataset`: ``dataset.json`` (channel
    ``T1``), ``imagesTr/brain_XXX_0000.nii.gz``, ``labelsTr/brain_XXX.nii.gz``, ``imagesTs`` /
    ``labelsTs`` (test cases numbered after the training cases) and ``brain_parameters.json``
    (settings, the label rule, every case's seed and subject). Case ``i`` of a split depends only
    on ``seed``, the split and ``i`` (:func:`~nnunet_shape.demo.dataset_writer.case_seed`), not on how
    many cases are written. Returns the dataset folder.
    """
    from importlib.metadata import PackageNotFoundError, version

    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    from nnunet_shape.descriptor_files.atomic import write_json_atomic

    if n_train < 1 or n_test < 0:
        raise UserError(f"write_brain_dataset: need n_train >= 1 and n_test >= 0, got n_train={n_train}, "
                        f"n_test={n_test}")
    if not 1 <= dataset_id <= 999:
        raise UserError(f"write_brain_dataset: dataset_id must be 1..999, got {dataset_id}")
    spacing_mm = check_spacing(spacing_mm, "write_brain_dataset")
    paths = template_files()  # fail before writing anything
    folder = prepare_output_folder(raw_root, "nnUNet_raw folder") / f"Dataset{dataset_id:03d}_{name}"
    make_split_folders(folder)
    cases = write_cases(folder, "brain", n_train, n_test, seed, _write_case, (spacing_mm, hemispheres), num_processes)

    labels = HEMISPHERE_LABELS if hemispheres else TISSUE_LABELS
    generate_dataset_json(
        str(folder),
        channel_names={0: "T1"},
        labels=dict(labels),
        num_training_cases=n_train,
        file_ending=".nii.gz",
        dataset_name=name,
        description=(
            "MNI ICBM152 2009a nonlinear symmetric T1 template (shipped with nilearn), deformed per case by a "
            "seeded affine + B-spline transform with bias field and noise (nnunet_shape.demo.brains); labels: "
            "gray / white matter from the template's probability maps (p >= 0.5)"
            + (", split into the patient's left and right hemisphere at MNI x = 0." if hemispheres else ".")
        ),
        reference="Fonov et al., NeuroImage 47 (2009) S102 and 54 (2011) 313-327; nilearn (nilearn.github.io)",
        license="MNI ICBM152 2009 template: Copyright (C) Louis Collins, McConnell Brain Imaging Centre, "
                "Montreal Neurological Institute, McGill University (permissive, notice required); nilearn: "
                "BSD-3-Clause. See docs/real-anatomy.md of nnunet-shape.",
        converted_by="nnunet-shape brains",
    )
    try:
        nilearn_version = version("nilearn")
    except PackageNotFoundError:  # found on sys.path without its metadata (a source checkout)
        nilearn_version = "unknown"
    write_json_atomic(folder / "brain_parameters.json", {
        "generator": "nnunet_shape.demo.brains",
        "template": {role: path.name for role, path in paths.items()},
        "nilearn_version": nilearn_version,
        "seed": seed,
        "spacing_mm": spacing_mm,
        "shape_zyx": list(output_grid(spacing_mm).GetSize())[::-1],
        "hemispheres": hemispheres,
        "labels": dict(labels),
        "label_rule": (f"gray matter where p_gm >= {PROBABILITY_THRESHOLD} and p_gm >= p_wm, white matter where "
                       f"p_wm >= {PROBABILITY_THRESHOLD} and p_wm > p_gm, else background (p = map / its max)"
                       + ("; left hemisphere = world LPS x > 0 (RAS x < 0) of the template" if hemispheres else "")),
        "world_axes": "LPS (SimpleITK); files are written with the template's direction (RAS+ NIfTI)",
        "cases": cases,
    })
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """``nnunet-shape brains -o RAW -d ID --n-train N --n-test M [--seed S] [--spacing MM] [--hemispheres]``"""
    parser = argparse.ArgumentParser(
        prog="nnunet-shape brains",
        description="Write deformed copies of the MNI ICBM152 brain template (T1, gray/white matter labels; "
                    "shipped with nilearn, nothing downloaded) as an nnU-Net raw dataset (RAW/DatasetXXX_NAME).",
    )
    add_dataset_writer_arguments(parser, dataset_id=None, n_train=None, n_test=None)
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING_MM,
                        help=f"isotropic voxel size in mm (default {DEFAULT_SPACING_MM:g}: 40 x 47 x 38 voxels)")
    parser.add_argument("--hemispheres", action="store_true",
                        help="four classes: left/right (patient's) x gray/white matter")
    add_name_and_processes_arguments(parser, "BrainMNI")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    folder = write_brain_dataset(
        args.output, n_train=args.n_train, n_test=args.n_test, seed=args.seed, dataset_id=args.dataset_id,
        name=args.name, spacing_mm=args.spacing, hemispheres=args.hemispheres, num_processes=args.num_processes,
    )
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
