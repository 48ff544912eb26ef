"""Training targets from a loaded descriptor file: lower/upper bounds per core descriptor.

The trainer calls :func:`case_targets_array_frame` once per case on a file loaded by
:mod:`.read`; the result is in the file's array frame (mm from the first voxel, array order)
and :mod:`nnunet_shape.core.geometry` maps it into the preprocessed and augmented patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnunet_shape.core.intensity import zscore_intensity_targets
from nnunet_shape.descriptor_files.model import (
    CORE_FIELD_OF_DESCRIPTOR,
    DESCRIPTOR_FIELDS,
    IMAGE_INTENSITY_FIELD,
    INTENSITY_FIELD,
    CaseDescriptors,
    ClassDescriptors,
    DescriptorFileError,
    is_nnunet_2d_layout,
    json_path,
)

__all__ = ["case_targets_array_frame", "case_intensity_targets", "case_intensity_targets_zscore"]


def _signed_permutation(matrix: np.ndarray) -> bool:
    rounded = np.round(matrix)
    return bool(np.allclose(matrix, rounded, atol=1e-6) and np.all(np.abs(rounded).sum(0) == 1)
                and np.all(np.abs(rounded).sum(1) == 1))


def _centroid_array_bounds(case: CaseDescriptors, cls: ClassDescriptors) -> tuple[np.ndarray, np.ndarray] | None:
    """Centroid bounds in the array frame (mm from the first voxel), from whichever field is given.

    ``centroid_mm`` is used as is. Otherwise ``centroid_voxel`` is scaled by ``spacing_mm``,
    and ``centroid_world_mm`` is mapped through the inverse ITK geometry -- exact values for
    any direction, bounds only for axis-aligned directions (a box stays a box). Returns None
    when no centroid field is given.
    """
    fail_parts = ("classes", cls.name)
    if "centroid_mm" in cls.bounds:
        return cls.bounds["centroid_mm"]
    if "centroid_voxel" in cls.bounds:
        if case.spacing_mm is None:
            raise DescriptorFileError(case.path, case.case_id, json_path(fail_parts + ("centroid_voxel",)),
                                      "centroid_voxel needs spacing_mm in the file to be used as a target")
        spacing = np.asarray(case.spacing_mm)
        lower, upper = cls.bounds["centroid_voxel"]
        return lower * spacing, upper * spacing
    if "centroid_world_mm" in cls.bounds:
        where = json_path(fail_parts + ("centroid_world_mm",))
        if case.origin_mm is None or case.direction is None:
            raise DescriptorFileError(case.path, case.case_id, where,
                                      "centroid_world_mm needs origin_mm and direction in the file "
                                      "to be used as a target")
        lower, upper = cls.bounds["centroid_world_mm"]
        origin = np.asarray(case.origin_mm)
        direction = case.direction
        # world = origin + direction @ array_mm[::-1]  (ITK: index_xyz * spacing_xyz, rotated)
        if _signed_permutation(direction):
            # axis-aligned: every array axis is one world axis, maybe flipped -> boxes stay boxes
            inverse = np.round(np.linalg.inv(direction))
            world_axis = np.abs(inverse).argmax(axis=1)
            sign = inverse[np.arange(len(world_axis)), world_axis]
            lo = lower[world_axis] - origin[world_axis]
            hi = upper[world_axis] - origin[world_axis]
            new_lower = np.where(sign > 0, lo, -hi)
            new_upper = np.where(sign > 0, hi, -lo)
            return new_lower[::-1].copy(), new_upper[::-1].copy()
        if np.array_equal(lower, upper) and np.all(np.isfinite(lower)):
            exact = (np.linalg.solve(direction, lower - origin))[::-1]
            return exact.copy(), exact.copy()
        raise DescriptorFileError(case.path, case.case_id, where,
                                  "bounds or null components of centroid_world_mm need an axis-aligned "
                                  "direction matrix to map to the array frame; give centroid_mm instead")
    return None


def _adapt_dimension(case: CaseDescriptors, array: np.ndarray, rank: int, dim: int,
                     field_parts: tuple[str, ...]) -> np.ndarray:
    """Bring a (D,) / (D, D) array of the case to ``dim`` axes.

    Equal dimensions pass through; a 3-D case with a single slice on axis 0 (nnU-Net's
    layout of a 2-D image, :func:`~.model.is_nnunet_2d_layout` on the file's shape; its spacing
    is not asked: a single-slice file may carry a real one) drops that axis for ``dim == 2``;
    anything else is an error.
    """
    case_dim = array.shape[0] if rank else dim
    if rank == 0 or case_dim == dim:
        return array
    if case_dim == 3 and dim == 2 and case.shape is not None and is_nnunet_2d_layout(case.shape):
        return array[1:] if rank == 1 else array[1:, 1:]
    raise DescriptorFileError(case.path, case.case_id, json_path(("classes",) + field_parts),
                              f"wrong dimensionality: the file has {case_dim} axes (shape {case.shape}), "
                              f"the trainer asks for {dim}")


def case_targets_array_frame(
    case: CaseDescriptors, class_labels: Sequence[int | str], dim: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Lower/upper target bounds per descriptor of :mod:`nnunet_shape.core.descriptors`.

    Args:
        case: a loaded descriptor file.
        class_labels: length K; entry k is the label value (int, matched against each
            class's ``label``) or the class name (str) of output channel k. Index 0 is the
            background and is always unconstrained.
        dim: number of spatial axes of the network (2 or 3).
    Returns:
        ``{"volume": (K,), "centroid": (K, D), "spread": (K, D), "covariance": (K, D, D),
        "surface": (K,)}``, each a ``(lower, upper)`` pair of float64 arrays in mm (array
        order, centroid relative to the first voxel). NaN = unconstrained. Classes absent
        from the case (``voxels == 0``) get volume ``[0, 0]`` and NaN elsewhere; classes not
        in the file (priors) are all NaN.
    """
    k = len(class_labels)
    shapes = {"volume": (k,), "centroid": (k, dim), "spread": (k, dim), "covariance": (k, dim, dim),
              "surface": (k,)}
    out = {name: (np.full(s, np.nan), np.full(s, np.nan)) for name, s in shapes.items()}
    by_label = {cls.label: cls for cls in case.classes.values() if cls.label is not None}
    for index, key in enumerate(class_labels):
        if index == 0:
            continue
        cls = case.classes.get(key) if isinstance(key, str) else by_label.get(int(key))
        if cls is None:
            continue
        if cls.absent:
            out["volume"][0][index] = 0.0
            out["volume"][1][index] = 0.0
            continue
        for name, field_name in CORE_FIELD_OF_DESCRIPTOR.items():
            if name == "centroid":
                pair = _centroid_array_bounds(case, cls)
            else:
                pair = cls.bounds.get(field_name)
            if pair is None:
                continue
            rank = DESCRIPTOR_FIELDS[field_name]
            lower, upper = pair
            if rank and lower.ndim == 0:  # scalar bound in a prior without known D
                lower = np.broadcast_to(lower, (dim,) * rank)
                upper = np.broadcast_to(upper, (dim,) * rank)
            lower = _adapt_dimension(case, lower, rank, dim, (cls.name, field_name))
            upper = _adapt_dimension(case, upper, rank, dim, (cls.name, field_name))
            out[name][0][index] = lower
            out[name][1][index] = upper
    return out


def case_intensity_targets(
    case: CaseDescriptors, class_labels: Sequence[int | str], channels: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Lower/upper bounds of the class intensity statistics, RAW image units.

    Args:
        case: a loaded descriptor file.
        class_labels: as for :func:`case_targets_array_frame` (entry 0, the background, is NaN).
        channels: number of image channels C the trainer sees.
    Returns:
        ``{"mean": (K, C), "std": (K, C)}`` pairs ``(lower, upper)`` of float64 arrays; NaN =
        unconstrained (classes without an ``intensity`` block, absent classes, the background).
    Raises:
        DescriptorFileError naming the file and field when a block has another number of channels.
    """
    k = len(class_labels)
    out = {stat: (np.full((k, channels), np.nan), np.full((k, channels), np.nan)) for stat in ("mean", "std")}
    by_label = {cls.label: cls for cls in case.classes.values() if cls.label is not None}
    for index, key in enumerate(class_labels):
        if index == 0:
            continue
        cls = case.classes.get(key) if isinstance(key, str) else by_label.get(int(key))
        if cls is None or cls.absent:
            continue
        for stat, (lower, upper) in cls.intensity.items():
            if lower.ndim and lower.shape[0] != channels:
                raise DescriptorFileError(case.path, case.case_id, json_path(("classes", cls.name, INTENSITY_FIELD,
                                                                              stat)),
                                          f"wrong number of channels: {lower.shape[0]} entries, the images have "
                                          f"{channels}")
            out[stat][0][index] = lower
            out[stat][1][index] = upper
    return out


def case_intensity_targets_zscore(
    case: CaseDescriptors, class_labels: Sequence[int | str], channels: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`case_intensity_targets` in the units of nnU-Net's ZScoreNormalization without mask,
    converted with the file's ``image_intensity`` block (``(v - m) / s`` for means, ``v / s`` for
    standard deviations; :func:`nnunet_shape.core.intensity.zscore_intensity_targets`).

    A file whose classes give intensities but which has no ``image_intensity`` block (or one with
    another number of channels) is a DescriptorFileError naming the file and the field.
    """
    raw = case_intensity_targets(case, class_labels, channels)
    if not any(np.isfinite(lo).any() or np.isfinite(hi).any() for lo, hi in raw.values()):
        return raw
    where = json_path((IMAGE_INTENSITY_FIELD,))
    if case.image_intensity is None:
        raise DescriptorFileError(case.path, case.case_id, where,
                                  "missing: the classes give raw intensities, which need the image's mean and "
                                  "std to be converted to nnU-Net's normalised units (nnUNetv2_export_descriptors "
                                  "--intensity writes both)")
    if case.image_intensity.channels != channels:
        raise DescriptorFileError(case.path, case.case_id, where,
                                  f"wrong number of channels: {case.image_intensity.channels}, the images have "
                                  f"{channels}")
    return zscore_intensity_targets(raw, case.image_intensity.mean, case.image_intensity.std)
