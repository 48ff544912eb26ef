"""Measure label maps: the descriptors of each class, as a v1 file's JSON object.

Per case: read the label map with nnU-Net's reader for the dataset (:func:`read_label_map`,
so the array axis order and spacing are exactly what nnU-Net holds), compute every descriptor
with the core (:mod:`nnunet_shape.core.descriptors`, float64) on each class or region
(:func:`mask_descriptors`), add world-frame values from the image geometry and build the
file's object (:func:`case_descriptors`). :mod:`.export` writes it; ``nnunet-shape evaluate``
measures its masks with :func:`mask_descriptors` and compares with
:func:`volume_and_centroid_errors`, as the label-free trainer's validation does.

Conventions (docs/descriptor-json.md): array order as nnU-Net (``(z, y, x)`` for
SimpleITK 3-D, ``(y, x)`` for 2-D images), ``centroid_mm = centroid_voxel * spacing_mm``
(origin at the first voxel), ``centroid_world_mm = origin + direction . (index_xyz *
spacing_xyz)`` (ITK ``TransformContinuousIndexToPhysicalPoint``, LPS).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnunet_shape.descriptor_files.model import SCHEMA_ID, ClassSpec, is_nnunet_2d_layout
from nnunet_shape.errors import UserError, check_image_file_complete, one_line

__all__ = [
    "GEOMETRY_FIELDS",
    "MASK_DESCRIPTOR_NAMES",
    "Geometry",
    "geometry_from_properties",
    "read_label_map",
    "read_image_channels",
    "nonzero_bounding_box",
    "image_intensity",
    "mask_intensity",
    "image_geometry",
    "geometry_mismatch",
    "LabelIndex",
    "index_labels",
    "json_floats",
    "mask_descriptors",
    "class_descriptors",
    "case_descriptors",
    "volume_and_centroid_errors",
]

GEOMETRY_FIELDS = ("centroid_mm", "centroid_world_mm", "centroid_voxel", "spread_mm", "covariance_mm2",
                   "principal_axes_mm", "elongation", "flatness")
# what a class entry of a v1 file is computed from
MASK_DESCRIPTOR_NAMES = ("volume", "centroid", "covariance", "spread", "surface")


# ---------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Array-frame and world-frame geometry of one label map.

    Attributes:
        shape: array shape (array order, D axes).
        spacing_mm: voxel spacing in array order.
        axis_order: names of the array axes ("z", "y", "x" / "y", "x"): ITK index axes reversed.
        origin_mm: world position of the first voxel centre, ITK (x, y, z) order.
        direction: (Dw, Dw) ITK direction matrix (rows), world axes x, y, z.
        world_frame: "ITK-LPS" when the file has a geometry, "index*spacing" otherwise
            (identity direction, zero origin).
    """

    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    axis_order: tuple[str, ...]
    origin_mm: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]
    world_frame: str

    def world_point(self, array_mm: np.ndarray) -> np.ndarray:
        """World point of an array-frame position (mm from the first voxel, array order).

        ``origin + direction @ (index_xyz * spacing_xyz)`` with ``index_xyz * spacing_xyz =
        array_mm[::-1]`` -- ITK's TransformContinuousIndexToPhysicalPoint.
        """
        return np.asarray(self.origin_mm) + np.asarray(self.direction) @ np.asarray(array_mm)[::-1]

    def world_vector(self, array_vector: np.ndarray) -> np.ndarray:
        """World direction of an array-frame vector (a rotation, no origin)."""
        return np.asarray(self.direction) @ np.asarray(array_vector)[::-1]


_AXIS_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


def geometry_from_properties(properties: Mapping[str, Any], array_shape: Sequence[int]) -> tuple[bool, Geometry]:
    """Geometry from an nnU-Net reader's properties for an array of shape ``(c, *S3)``.

    Returns ``(native_2d, geometry)``. ``native_2d`` is True for 2-D images, which nnU-Net
    holds as ``(c, 1, y, x)`` with a dummy first spacing (999 x, :func:`~.model.is_nnunet_2d_layout`):
    the export drops that axis and reports D = 2. An image whose world frame is 3-D (a
    NIfTI/NRRD file of one slice, any NIfTI read by nibabel) keeps its three axes, so that
    the array frame and the world frame keep the same number of axes.

    SimpleITKIO: ``sitk_stuff`` gives origin/direction/spacing in ITK order. NibabelIO(WithReorient):
    the array is the NIfTI voxel array transposed to (k, j, i), the affine maps (i, j, k) to
    RAS; it is converted to ITK's LPS convention (x and y negated) with spacing = column norms.
    Readers without a geometry (tif, png): zero origin and identity direction.
    """
    spatial = tuple(int(n) for n in array_shape[1:])
    spacing = tuple(float(s) for s in properties["spacing"])
    sitk_stuff = properties.get("sitk_stuff")
    nib_stuff = properties.get("nibabel_stuff")
    # the world dimension of the image as its reader saw it; None: the reader has no geometry
    if sitk_stuff is not None:
        world_dim = len(sitk_stuff["spacing"])
    elif nib_stuff is not None:
        world_dim = 3
    else:
        world_dim = None
    native_2d = world_dim in (None, 2) and is_nnunet_2d_layout(spatial, spacing)
    if native_2d:
        spatial, spacing = spatial[1:], spacing[1:]
    dim = len(spatial)
    if sitk_stuff is not None:
        world_dim = len(sitk_stuff["origin"])
        origin = tuple(float(v) for v in sitk_stuff["origin"])
        flat = [float(v) for v in sitk_stuff["direction"]]
        direction = tuple(tuple(flat[r * world_dim:(r + 1) * world_dim]) for r in range(world_dim))
        frame = "ITK-LPS"
    elif nib_stuff is not None:
        affine = np.asarray(nib_stuff.get("reoriented_affine", nib_stuff["original_affine"]), dtype=np.float64)
        ras_to_lps = np.diag([-1.0, -1.0, 1.0])
        linear = ras_to_lps @ affine[:3, :3]
        zooms = np.linalg.norm(linear, axis=0)
        origin = tuple(float(v) for v in ras_to_lps @ affine[:3, 3])
        direction = tuple(tuple(float(v) for v in row) for row in linear / zooms)
        frame = "ITK-LPS"
    else:
        origin = (0.0,) * dim
        direction = tuple(tuple(1.0 if r == c else 0.0 for c in range(dim)) for r in range(dim))
        frame = "index*spacing"
    geometry = Geometry(shape=spatial, spacing_mm=spacing, axis_order=_AXIS_NAMES[dim], origin_mm=origin,
                        direction=direction, world_frame=frame)
    return native_2d, geometry


def _read_with(path: str | os.PathLike, read: Any, what: str) -> Any:
    """``read(str(path))`` with a truncated NIfTI or a reader failure as a UserError naming the file
    (SimpleITK reads a cut ``.nii.gz`` silently, the rest as 0; other failures are one-line)."""
    check_image_file_complete(path)
    try:
        return read(str(path))
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise UserError(f"{path}: cannot read this {what} ({type(error).__name__}: {one_line(error)})") from None


def read_label_map(path: str | os.PathLike, reader_class: type) -> tuple[np.ndarray, Geometry]:
    """Integer label map ``(*S)`` (int32) in nnU-Net's array order and its :class:`Geometry`.

    A truncated or unreadable file, and a map with non-integer values, are UserErrors naming
    the file. The integer check and the conversion run in slabs: no full-size float copy on top
    of the reader's array.
    """
    seg, properties = _read_with(path, reader_class().read_seg, "label map")
    native_2d, geometry = geometry_from_properties(properties, seg.shape)
    labels = seg[0, 0] if native_2d else seg[0]
    out = np.empty(labels.shape, dtype=np.int32)
    step = max(1, (1 << 22) // max(1, int(np.prod(labels.shape[1:]))))
    for start in range(0, labels.shape[0], step):
        block = labels[start:start + step]
        converted = block.astype(np.int32)
        if not np.array_equal(converted, block):
            raise UserError(f"{path} holds non-integer values; is it a label map?")
        out[start:start + step] = converted
    return out, geometry


def read_image_channels(paths: Sequence[str | os.PathLike], reader_class: type, case_id: str
                        ) -> tuple[np.ndarray, Geometry]:
    """The image channels of one case, ``(C, *S)`` float64 in nnU-Net's array order (the 2-D rule of
    :func:`read_label_map`), and their :class:`Geometry`, read with nnU-Net's reader as its
    preprocessing does (all channels in one ``read_images`` call). A truncated or unreadable
    file is a UserError naming the case and the file."""
    for path in paths:
        check_image_file_complete(path)
    try:
        data, properties = reader_class().read_images([str(p) for p in paths])
    except (RuntimeError, OSError, EOFError, ValueError, AssertionError) as error:
        shown = ", ".join(str(p) for p in paths)
        # nnU-Net's readers print why channels disagree and raise an empty RuntimeError
        why = one_line(error) or ("nnU-Net's reader refused them (channels of different shape, spacing, origin "
                                  "or direction?)")
        raise UserError(f"case {case_id!r}: cannot read its image ({shown}): {type(error).__name__}: {why}") from None
    native_2d, geometry = geometry_from_properties(properties, data.shape)
    data = np.asarray(data[:, 0] if native_2d else data, dtype=np.float64)
    return data, geometry


def nonzero_bounding_box(image: np.ndarray) -> tuple[slice, ...]:
    """The box nnU-Net's preprocessing crops every image to before normalising (``crop_to_nonzero``):
    the bounding box of the voxels where any channel is non-zero (its hole filling adds no voxel
    outside that box). ``image``: (C, *S). An all-zero image keeps its whole extent."""
    occupied = np.any(image != 0, axis=0)
    if not occupied.any():
        return tuple(slice(0, n) for n in occupied.shape)
    box = []
    for axis in range(occupied.ndim):
        hit = np.flatnonzero(occupied.any(axis=tuple(a for a in range(occupied.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def image_intensity(image: np.ndarray) -> dict[str, Any]:
    """The file's ``image_intensity`` block: per channel mean and population standard deviation of the
    RAW image over its :func:`nonzero_bounding_box` -- what nnU-Net's ZScoreNormalization (with
    ``use_mask_for_norm`` False) subtracts and divides by. ``image``: (C, *S)."""
    crop = image[(slice(None), *nonzero_bounding_box(image))].reshape(image.shape[0], -1)
    return {"mean": json_floats(crop.mean(1)), "std": json_floats(crop.std(1)), "region": "nonzero_bounding_box"}


def mask_intensity(image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Per channel mean and population standard deviation of ``image`` (C, *S) inside ``mask`` (*S):
    :func:`nnunet_shape.core.intensity.class_intensity` in float64 on the binary mask -- on such a
    mask pyradiomics' first-order ``Mean`` and ``StandardDeviation``."""
    import torch

    from nnunet_shape.core.intensity import class_intensity

    probs = torch.from_numpy(np.asarray(mask, dtype=np.float64))[None, None]
    stats = class_intensity(probs, torch.from_numpy(np.asarray(image, dtype=np.float64))[None])
    return {"mean": json_floats(stats.mean[0, 0]), "std": json_floats(stats.std[0, 0])}


def image_geometry(path: str | os.PathLike, reader_class: type) -> Geometry:
    """The :class:`Geometry` nnU-Net's reader gives an image (for comparison with its label map).

    SimpleITK-readable files: from the header only (no voxel is read); other readers read the
    image. Same conventions as :func:`read_label_map` (array order, the 2-D rule).
    """
    if getattr(reader_class, "__name__", "") == "SimpleITKIO":
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        _read_with(path, lambda _: reader.ReadImageInformation(), "image")
        world_dim = reader.GetDimension()
        spacing = tuple(float(v) for v in reader.GetSpacing())[::-1]
        shape = tuple(int(v) for v in reader.GetSize())[::-1]
        properties = {"spacing": spacing if world_dim == 3 else (999.0 * max(spacing), *spacing),
                      "sitk_stuff": {"spacing": reader.GetSpacing(), "origin": reader.GetOrigin(),
                                     "direction": reader.GetDirection()}}
        array_shape = (1, *shape) if world_dim == 3 else (1, 1, *shape)
        return geometry_from_properties(properties, array_shape)[1]
    data, properties = _read_with(path, lambda p: reader_class().read_images([p]), "image")
    return geometry_from_properties(properties, data.shape)[1]


def geometry_mismatch(labels: Geometry, image: Geometry) -> str | None:
    """Which field of a label map's geometry differs from its image's (with both values), or None.

    Shapes equal; spacings within a relative 1e-5, origins within 1e-3 mm, directions within
    1e-5 (nnU-Net's integrity check compares with ``np.allclose`` as well).
    """
    if tuple(labels.shape) != tuple(image.shape):
        return f"shape {list(labels.shape)} vs {list(image.shape)}"
    if not np.allclose(labels.spacing_mm, image.spacing_mm, rtol=1e-5, atol=0.0):
        return f"spacing_mm {list(labels.spacing_mm)} vs {list(image.spacing_mm)}"
    if len(labels.origin_mm) != len(image.origin_mm) or not np.allclose(labels.origin_mm, image.origin_mm,
                                                                        rtol=0.0, atol=1e-3):
        return f"origin_mm {list(labels.origin_mm)} vs {list(image.origin_mm)}"
    if np.shape(labels.direction) != np.shape(image.direction) or not np.allclose(
            labels.direction, image.direction, rtol=0.0, atol=1e-5):
        return f"direction {[list(r) for r in labels.direction]} vs {[list(r) for r in image.direction]}"
    return None


# ---------------------------------------------------------------------------------------
# one pass over a label map: where every label is
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelIndex:
    """Bounding boxes of the label values of a map, from ONE pass (``scipy.ndimage.find_objects``).

    ``boxes[v - 1]`` is the slice tuple of value ``v`` (None: absent) for ``1 <= v <= max_known``;
    ``unknown`` lists the values present that ``known`` (dataset.json's labels) does not name,
    negative ones and those above ``max_known`` included. Measuring a class then reads only its
    box, so a case costs a few passes over the map plus the boxes, not one pass per class.
    """

    boxes: tuple[tuple[slice, ...] | None, ...]
    unknown: tuple[int, ...]

    def box(self, values: Sequence[int], shape: Sequence[int], margin: int = 1) -> tuple[slice, ...] | None:
        """Union of the boxes of ``values``, widened by ``margin`` voxels (clipped), or None if absent."""
        found = [self.boxes[v - 1] for v in values if 1 <= v <= len(self.boxes) and self.boxes[v - 1] is not None]
        if not found:
            return None
        return tuple(slice(max(min(b[a].start for b in found) - margin, 0),
                           min(max(b[a].stop for b in found) + margin, shape[a])) for a in range(len(shape)))


def index_labels(labels: np.ndarray, known: Sequence[int]) -> LabelIndex:
    """:class:`LabelIndex` of an integer map: min/max (two reductions) and one ``find_objects``."""
    from scipy import ndimage

    known_set = {int(v) for v in known}
    max_known = max([v for v in known_set if v > 0], default=0)
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    unknown: set[int] = set()
    if low < 0 or high > max_known:  # outside the boxes' range: find the values (an error path)
        outside = labels[(labels < 0) | (labels > max_known)]
        unknown.update(int(v) for v in np.unique(outside))
    boxes = tuple(ndimage.find_objects(labels, max_label=max_known)) if max_known > 0 else ()
    unknown.update(v for v, box in enumerate(boxes, start=1) if box is not None and v not in known_set)
    return LabelIndex(boxes=boxes, unknown=tuple(sorted(unknown)))


# ---------------------------------------------------------------------------------------
# descriptors of one case
# ---------------------------------------------------------------------------------------


def json_floats(array: Any) -> Any:
    """Tensor/ndarray -> nested lists of Python floats (exact repr round trip in JSON)."""
    return np.asarray(array, dtype=np.float64).tolist()


def mask_descriptors(mask: np.ndarray, spacing_mm: Sequence[float],
                     names: Sequence[str] = MASK_DESCRIPTOR_NAMES) -> dict[str, np.ndarray]:
    """Descriptors of one binary mask ``(*S)``, float64, mm, centroid from the first voxel of ``mask``.

    :func:`nnunet_shape.core.descriptors.compute_descriptors` in float64 on the mask cropped to
    its bounding box plus one voxel: every inside/outside face pair of the full array is kept,
    so the values are the full array's, and the centroid is shifted back by the crop offset. An
    empty mask gives volume and surface 0 and the core's placeholder geometry (zeros, not a
    position: callers treat an empty mask as absent).

    Args:
        mask: boolean (or 0/1) array, ``D`` axes in array order.
        spacing_mm: ``D`` spacings in array order.
        names: descriptors to compute, from ``compute_descriptors``' names.
    Returns:
        name -> float64 array: volume and surface ``()``, centroid and spread ``(D,)``,
        covariance ``(D, D)``.
    """
    import torch

    from nnunet_shape.core.descriptors import compute_descriptors

    mask = np.asarray(mask, dtype=bool)
    low = [0] * mask.ndim
    crop = mask
    if mask.any():
        high = []
        for axis in range(mask.ndim):
            occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
            low[axis] = max(int(occupied[0]) - 1, 0)
            high.append(min(int(occupied[-1]) + 2, mask.shape[axis]))
        crop = mask[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
    probs = torch.from_numpy(crop.astype(np.float64))[None, None]
    spacing = torch.tensor(tuple(float(s) for s in spacing_mm), dtype=torch.float64)
    values = compute_descriptors(probs, spacing, names=tuple(names))
    out = {name: values[name][0, 0].numpy() for name in names}
    if "centroid" in out:
        out["centroid"] = out["centroid"] + np.asarray(low, dtype=np.float64) * spacing.numpy()
    return out


def class_descriptors(labels: np.ndarray, spec: ClassSpec, geometry: Geometry,
                      index: LabelIndex | None = None, image: np.ndarray | None = None) -> dict[str, Any]:
    """The JSON object of one class (or region) of a label map.

    Descriptors come from :func:`mask_descriptors` on the class's mask (float64, cropped).
    An absent class gives ``voxels: 0``, volume and surface 0 and null geometry. With
    ``index`` (:func:`index_labels`) only the class's bounding box (plus one voxel, so every
    inside/outside face is kept) is read; the values are the same. With ``image`` ((C, *S), the
    case's raw image on the label map's grid) the entry gets ``intensity`` (:func:`mask_intensity`;
    null for an absent class).
    """
    import torch

    from nnunet_shape.core import descriptors as core

    offset = np.zeros(labels.ndim)
    if index is not None:
        box = index.box(spec.labels, labels.shape)
        if box is None:
            box = tuple(slice(0, 0) for _ in range(labels.ndim))
        else:
            offset = np.array([b.start for b in box], dtype=np.float64)
        labels = labels[box]
        if image is not None:
            image = image[(slice(None), *box)]
    mask = np.isin(labels, spec.labels) if spec.region_labels is not None else labels == spec.label
    voxels = int(np.count_nonzero(mask))
    entry: dict[str, Any] = {"label": spec.label}
    if spec.region_labels is not None:
        entry["region_labels"] = list(spec.region_labels)
    entry["voxels"] = voxels
    if voxels == 0:
        entry.update({"volume_mm3": 0.0, "surface_mm2": 0.0})
        entry.update({name: None for name in GEOMETRY_FIELDS})
        if image is not None:
            entry["intensity"] = None
        return entry

    dim = labels.ndim
    values = mask_descriptors(mask, geometry.spacing_mm)
    covariance = torch.from_numpy(values["covariance"])
    centroid_mm = values["centroid"] + offset * np.asarray(geometry.spacing_mm, dtype=np.float64)
    lengths, vectors = core.principal_axes(covariance)
    axes_rows = vectors.numpy().T  # row i = unit axis i (the core returns columns)
    entry.update({
        "volume_mm3": float(values["volume"]),
        "surface_mm2": float(values["surface"]),
        "centroid_mm": json_floats(centroid_mm),
        "centroid_world_mm": json_floats(geometry.world_point(centroid_mm)),
        "centroid_voxel": json_floats(centroid_mm / np.asarray(geometry.spacing_mm)),
        "spread_mm": json_floats(values["spread"]),
        "covariance_mm2": json_floats(covariance),
        "principal_axes_mm": {
            "lengths": json_floats(lengths),
            "vectors": json_floats(axes_rows),
            "vectors_world": json_floats([geometry.world_vector(v) for v in axes_rows]),
        },
        "elongation": float(core.elongation(covariance)),
        "flatness": float(core.flatness(covariance)) if dim == 3 else None,
    })
    if image is not None:
        entry["intensity"] = mask_intensity(image, mask)
    return entry


def _units(dim: int) -> dict[str, str]:
    if dim == 3:
        return {"length": "mm", "volume_mm3": "mm^3", "surface_mm2": "mm^2", "covariance_mm2": "mm^2"}
    # the v1 field names are fixed; in 2-D they hold an area and a boundary length
    return {"length": "mm", "volume_mm3": "mm^2 (area)", "surface_mm2": "mm (boundary length)",
            "covariance_mm2": "mm^2"}


def case_descriptors(
    labels: np.ndarray,
    geometry: Geometry,
    specs: Sequence[ClassSpec],
    case_id: str,
    source: Mapping[str, Any],
    export: Mapping[str, Any],
    index: LabelIndex | None = None,
    image: np.ndarray | None = None,
    image_files: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The complete v1 JSON object of one case (``kind: "measured"``).

    ``index``: the map's :func:`index_labels` (made here when not given): every class is then
    measured in its bounding box only. ``image`` ((C, *S) raw intensities on the label map's
    grid): adds ``image_intensity`` (:func:`image_intensity`, with ``image_files`` as its
    ``files``) and every class's ``intensity``.
    """
    if index is None:
        index = index_labels(labels, [v for spec in specs for v in spec.labels])
    out = {
        "schema": SCHEMA_ID,
        "kind": "measured",
        "case_id": case_id,
        "source": dict(source),
        "export": dict(export),
        "dimension": labels.ndim,
        "shape": list(geometry.shape),
        "spacing_mm": list(geometry.spacing_mm),
        "axis_order": list(geometry.axis_order),
        "origin_mm": list(geometry.origin_mm),
        "direction": [list(row) for row in geometry.direction],
        "world_frame": geometry.world_frame,
        "units": _units(labels.ndim),
    }
    if image is not None:
        out["image_intensity"] = {**image_intensity(image), "files": [dict(f) for f in image_files or ()]}
    out["classes"] = {spec.name: class_descriptors(labels, spec, geometry, index, image) for spec in specs}
    return out


# ---------------------------------------------------------------------------------------
# comparing two measurements
# ---------------------------------------------------------------------------------------


def volume_and_centroid_errors(reference_volume: float, predicted_volume: float,
                               reference_centroid: Sequence[float] | np.ndarray | None,
                               predicted_centroid: Sequence[float] | np.ndarray | None) -> tuple[float, float]:
    """Relative volume error and centroid distance of a prediction against a reference.

    Returns ``(|V_pred - V_ref| / V_ref, ||c_pred - c_ref||)``: the first NaN when
    ``V_ref == 0`` (undefined without a reference volume), the second NaN when either
    centroid is None (an empty class has no position). Volumes in mm^3 (mm^2 in 2-D),
    centroids in mm in one frame.
    """
    relative = math.nan if reference_volume == 0 else abs(predicted_volume - reference_volume) / reference_volume
    if reference_centroid is None or predicted_centroid is None:
        return relative, math.nan
    return relative, float(np.linalg.norm(np.subtract(predicted_centroid, reference_centroid)))
