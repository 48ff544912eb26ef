"""The v1 format's data model: constants, the parsed-file classes, the classes of a dataset.

Both directions build on this module and nothing else of the package's descriptor files:
:mod:`.read` and :mod:`.targets` (file -> trainer), :mod:`.measure` and :mod:`.export`
(label map -> file). It also holds the one rule for nnU-Net's layout of a 2-D image
(:func:`is_nnunet_2d_layout`), which the export, the targets and ``nnunet-shape evaluate``
(through :mod:`nnunet_shape.nnunet.frames`) all apply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnunet_shape.errors import UserError

__all__ = [
    "SCHEMA_ID",
    "SUMMARY_FILE_NAME",
    "DESCRIPTOR_FIELDS",
    "CORE_FIELD_OF_DESCRIPTOR",
    "NNUNET_2D_SPACING_FACTOR",
    "PathLike",
    "DescriptorFileError",
    "INTENSITY_FIELD",
    "IMAGE_INTENSITY_FIELD",
    "ImageIntensity",
    "ClassDescriptors",
    "CaseDescriptors",
    "ClassSpec",
    "class_specs_from_dataset_json",
    "named_label_values",
    "json_path",
    "is_nnunet_2d_layout",
]

SCHEMA_ID = "nnunet-shape/descriptors/v1"
SUMMARY_FILE_NAME = "summary.json"

PathLike = str | os.PathLike

# Descriptor field -> rank (0 scalar, 1 vector of D, 2 matrix D x D). These are the fields
# that may be given as a value or as bounds; ``principal_axes_mm`` is informational only.
DESCRIPTOR_FIELDS: dict[str, int] = {
    "volume_mm3": 0,
    "surface_mm2": 0,
    "centroid_mm": 1,
    "centroid_world_mm": 1,
    "centroid_voxel": 1,
    "spread_mm": 1,
    "covariance_mm2": 2,
    "elongation": 0,
    "flatness": 0,
}

# nnunet_shape.core.descriptors name -> file field (array frame, mm, origin at the first voxel)
CORE_FIELD_OF_DESCRIPTOR: dict[str, str] = {
    "volume": "volume_mm3",
    "centroid": "centroid_mm",
    "spread": "spread_mm",
    "covariance": "covariance_mm2",
    "surface": "surface_mm2",
}

#: the optional per-class block (per channel raw ``mean`` / ``std`` inside the class) and the
#: optional per-case block (per channel raw ``mean`` / ``std`` of the image nnU-Net normalises)
INTENSITY_FIELD = "intensity"
IMAGE_INTENSITY_FIELD = "image_intensity"


class DescriptorFileError(UserError):
    """A descriptor file that cannot be used; the message names file, case and field."""

    def __init__(self, path: PathLike | None, case_id: str | None, field_path: str, problem: str):
        self.path = None if path is None else str(path)
        self.case_id = case_id
        self.field = field_path
        file_text = "<in memory>" if path is None else str(path)
        case_text = "<unknown case>" if case_id is None else repr(case_id)
        super().__init__(f"{file_text}: case {case_text}: field {field_path}: {problem}")


@dataclass
class ClassDescriptors:
    """One class (or region) of one case.

    Attributes:
        name: class name as in ``dataset.json["labels"]``.
        label: label value in the label map (for a region: the value of
            ``regions_class_order``); for a prior without ``label``, taken from
            ``dataset.json`` when the file is loaded with it, else None.
        voxels: voxel count (measured files); None when unknown (priors).
        values: the fields given as exact values (``float``, nested lists, ``None`` for the
            null geometry of an absent class), plus ``principal_axes_mm`` if present.
        bounds: every descriptor field present in the file -> ``(lower, upper)`` float64
            arrays of the field's shape (``()``, ``(D,)`` or ``(D, D)``); exact values give
            ``lower == upper``; NaN = unbounded on that side.
        region_labels: labels whose union forms the region (region-based datasets), else None.
        components: the number of connected components the file states the class has
            (optional field ``components``, an integer >= 1), else None. Largest-component
            postprocessing keeps that many (``nnunet-shape determine-postprocessing``).
        intensity: the optional ``intensity`` block: ``"mean"`` / ``"std"`` -> ``(lower, upper)``
            float64 arrays, one entry per image channel (``(C,)``; ``()`` for a scalar bound of a
            prior that names no channel count), RAW image units; empty when not given.
    """

    name: str
    label: int | None
    voxels: int | None
    values: dict[str, Any]
    bounds: dict[str, tuple[np.ndarray, np.ndarray]]
    region_labels: tuple[int, ...] | None = None
    components: int | None = None
    intensity: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def absent(self) -> bool:
        """True when the class is known to be empty in this case (``voxels == 0``)."""
        return self.voxels == 0


@dataclass(frozen=True)
class ImageIntensity:
    """The per-case ``image_intensity`` block: per channel ``mean`` and (population) ``std`` (C,)
    of the RAW image over ``region`` -- what nnU-Net's ZScoreNormalization (no mask) divides by."""

    mean: np.ndarray
    std: np.ndarray
    region: str = "nonzero_bounding_box"

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])


@dataclass
class CaseDescriptors:
    """One descriptor file.

    Attributes:
        case_id: nnU-Net case identifier.
        path: the file it was read from.
        spacing_mm: voxel spacing in array order (None if a prior does not give it).
        shape: array shape in array order (None if a prior does not give it).
        axis_order: names of the array axes, e.g. ("z", "y", "x") (ITK index axes reversed).
        classes: class name -> :class:`ClassDescriptors` (priors may omit classes).
        raw: the parsed JSON object.
        kind: "measured" or "prior".
        origin_mm, direction: ITK world geometry (x, y, z order; direction as rows), if given.
        image_intensity: the ``image_intensity`` block, if given.
    """

    case_id: str
    path: str
    spacing_mm: tuple[float, ...] | None
    shape: tuple[int, ...] | None
    axis_order: tuple[str, ...] | None
    classes: dict[str, ClassDescriptors]
    raw: dict
    kind: str = "measured"
    origin_mm: tuple[float, ...] | None = None
    direction: np.ndarray | None = None
    image_intensity: ImageIntensity | None = None

    @property
    def dimension(self) -> int | None:
        """Number of array axes, from ``shape``, ``spacing_mm`` or ``dimension`` (None if unknown)."""
        if self.shape is not None:
            return len(self.shape)
        if self.spacing_mm is not None:
            return len(self.spacing_mm)
        dim = self.raw.get("dimension")
        return int(dim) if dim is not None else None


@dataclass(frozen=True)
class ClassSpec:
    """A class to export, from ``dataset.json``: a label, or a region (union of labels)."""

    name: str
    label: int
    region_labels: tuple[int, ...] | None = None

    @property
    def labels(self) -> tuple[int, ...]:
        return self.region_labels if self.region_labels is not None else (self.label,)


def class_specs_from_dataset_json(dataset_json: Mapping[str, Any]) -> list[ClassSpec]:
    """The exported classes of a dataset, in ``dataset.json["labels"]`` order.

    Plain datasets: every label except ``background`` and ``ignore``. Region-based datasets
    (some label value is a list of more than one label, as nnU-Net's LabelManager decides):
    every region except background, with ``label`` taken from ``regions_class_order``.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping):
        raise UserError("dataset.json has no 'labels' mapping")
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    specs: list[ClassSpec] = []
    if not has_regions:
        for name, value in labels.items():
            if name in ("background", "ignore"):
                continue
            value = value[0] if isinstance(value, (list, tuple)) else value
            specs.append(ClassSpec(str(name), int(value)))
        return specs
    order = dataset_json.get("regions_class_order")
    regions = []
    for name, value in labels.items():
        members = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
        if name == "ignore" or set(members) == {0}:
            continue
        regions.append((str(name), members))
    if order is None or len(order) != len(regions):
        raise UserError(
            f"region-based dataset.json needs 'regions_class_order' with one entry "
            f"per region ({len(regions)}), got {order!r}"
        )
    return [ClassSpec(name, int(o), members) for (name, members), o in zip(regions, order)]


def named_label_values(dataset_json: Mapping[str, Any]) -> frozenset[int]:
    """Every label value ``dataset.json["labels"]`` names: background, the classes, the members of
    regions and the ignore label. A label map value outside this set belongs to no class."""
    values: set[int] = set()
    for value in (dataset_json.get("labels") or {}).values():
        values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else (value,)))
    return frozenset(values)


def json_path(parts: Iterable[Any]) -> str:
    """A field's JSON path for error messages: ``("classes", "femur", 0)`` -> ``$.classes.femur[0]``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


# ---------------------------------------------------------------------------------------
# nnU-Net's layout of a 2-D image
# ---------------------------------------------------------------------------------------

#: nnU-Net's readers hold a 2-D image as ``(c, 1, y, x)`` whose first spacing is this factor
#: times the largest in-plane spacing (SimpleITKIO: ``999 * max(sy, sx)``; NaturalImage2DIO:
#: ``(999, 1, 1)``), so that no planner ever resamples along it.
NNUNET_2D_SPACING_FACTOR = 999


def is_nnunet_2d_layout(shape: Sequence[int], spacing: Sequence[float] | None = None) -> bool:
    """True when axis 0 of a 3-axis spatial array is nnU-Net's dummy axis of a 2-D image.

    The rule: three axes, the first of size 1, and -- where ``spacing`` is given -- a first
    spacing of at least half :data:`NNUNET_2D_SPACING_FACTOR` times the largest other one (half:
    a margin for rounding through file formats; no real scan comes near 500:1). Measuring in
    such an array would scale every area by ~1000, so callers drop axis 0 when this is True.

    Without ``spacing`` only the shape is tested: a descriptor file of a single slice (its
    spacing is the file's own, maybe real) may feed a 2-D network (:mod:`.targets`).

    Args:
        shape: spatial shape, array order (no channel axis).
        spacing: spacing in array order, as nnU-Net's reader reports it, or None.
    """
    if len(shape) != 3 or int(shape[0]) != 1:
        return False
    if spacing is None:
        return True
    return float(spacing[0]) >= 0.5 * NNUNET_2D_SPACING_FACTOR * max(float(s) for s in spacing[1:])
