"""Read, validate and write per-case descriptor files (schema ``nnunet-shape/descriptors/v1``).

The files are written by ``nnUNetv2_export_descriptors`` (``kind: "measured"``) or by hand
(``kind: "prior"``); docs/descriptor-json.md describes the format. This module is the one
place that interprets them: the trainer calls :func:`load_descriptor_folder` once and
:func:`case_targets_array_frame` per case to get lower/upper bounds per descriptor of
:mod:`nnunet_shape.core.descriptors` (NaN = unconstrained).

Every descriptor field of a class holds either an exact value or bounds
``{"min": .., "max": ..}`` (either side optional, ``null`` components unbounded). Both are
normalised to ``(lower, upper)`` float64 arrays: an exact value gives ``lower == upper``,
a missing side or a ``null`` gives NaN.

Errors are :class:`DescriptorFileError` whose message names the file, the case and the
field as a JSON path (``$.classes.femur.volume_mm3``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = [
    "SCHEMA_ID",
    "SUMMARY_FILE_NAME",
    "DESCRIPTOR_FIELDS",
    "CORE_FIELD_OF_DESCRIPTOR",
    "DescriptorFileError",
    "ClassDescriptors",
    "CaseDescriptors",
    "ClassSpec",
    "class_specs_from_dataset_json",
    "load_schema",
    "load_case_descriptors",
    "load_descriptor_folder",
    "write_json_atomic",
    "write_text_atomic",
    "case_targets_array_frame",
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

# fields whose length is the number of array axes (the world centroid has the image's
# world dimension, which equals it for every reader nnU-Net ships)
_ARRAY_FRAME_VECTORS = ("centroid_mm", "centroid_voxel", "spread_mm")


class DescriptorFileError(ValueError):
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
    """

    name: str
    label: int | None
    voxels: int | None
    values: dict[str, Any]
    bounds: dict[str, tuple[np.ndarray, np.ndarray]]
    region_labels: tuple[int, ...] | None = None

    @property
    def absent(self) -> bool:
        """True when the class is known to be empty in this case (``voxels == 0``)."""
        return self.voxels == 0


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
        raise ValueError("dataset.json has no 'labels' mapping")
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
        raise ValueError(
            f"region-based dataset.json needs 'regions_class_order' with one entry "
            f"per region ({len(regions)}), got {order!r}"
        )
    return [ClassSpec(name, int(o), members) for (name, members), o in zip(regions, order)]


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


def _current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, not thread-safe)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: PathLike, write: Callable[[TextIO], None]) -> None:
    """Run ``write`` on a temporary file next to ``path``, fsync it, then rename it over ``path``.

    Readers see either the old file or the complete new one. If ``write`` or the rename
    fails -- or the process is interrupted by an exception such as KeyboardInterrupt -- the
    temporary file is removed and ``path`` is untouched. The temporary name starts with '.'
    and ends with '.tmp', so folder readers globbing ``*.json`` never see it (a hard kill can
    leave such a file behind, never a partial ``path``).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would have
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    # make the rename itself durable (POSIX; skipped where a directory cannot be opened)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    _write_atomic(path, lambda handle: handle.write(text))


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Serialise ``obj`` as JSON (indent 2, NaN refused) to ``path`` atomically.

    Serialisation streams into the temporary file, so a failure while dumping (e.g. a NaN
    or an object that is not JSON-serialisable) leaves no partial ``path`` either.
    """

    def dump(handle: TextIO) -> None:
        json.dump(obj, handle, indent=2, allow_nan=False)
        handle.write("\n")

    _write_atomic(path, dump)


# ---------------------------------------------------------------------------------------
# reading and validation
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The JSON Schema of v1, shipped as ``nnunet_shape/descriptor_files/schema_v1.json``."""
    text = resources.files("nnunet_shape.descriptor_files").joinpath("schema_v1.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _find_non_finite(obj: Any, parts: tuple = ()) -> tuple | None:
    """Path of the first NaN/inf number in a parsed JSON tree (Python's json accepts them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return parts
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _find_non_finite(value, parts + (key,))
            if found is not None:
                return found
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found = _find_non_finite(value, parts + (index,))
            if found is not None:
                return found
    return None


def _field_shape(rank: int, dim: int | None, world_dim: int | None, name: str) -> tuple[int, ...] | None:
    if rank == 0:
        return ()
    d = world_dim if name == "centroid_world_mm" else dim
    if d is None:
        return None
    return (d,) * rank


def _as_float_array(value: Any) -> np.ndarray:
    """Nested lists with None -> float64 array with NaN."""
    if value is None:
        return np.array(np.nan)
    if isinstance(value, list):
        return np.array([_as_float_array(v) for v in value], dtype=np.float64)
    return np.array(float(value), dtype=np.float64)


def _bounds_of(value: Any, shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(value, dict):
        lower = _as_float_array(value.get("min"))
        upper = _as_float_array(value.get("max"))
    else:
        lower = _as_float_array(value)
        upper = lower.copy()
    if shape is not None:
        # a scalar bound applies to every component ("spread at most 20 mm on each axis")
        lower = np.broadcast_to(lower, shape).copy()
        upper = np.broadcast_to(upper, shape).copy()
    return lower, upper


def _components(value: Any) -> list[Any]:
    """The arrays (value, min, max) inside a field, for the dimensionality check."""
    if isinstance(value, dict):
        return [v for v in (value.get("min"), value.get("max")) if isinstance(v, list)]
    return [value] if isinstance(value, list) else []


def _expected_classes(dataset_json: Mapping[str, Any]) -> dict[str, ClassSpec]:
    return {spec.name: spec for spec in class_specs_from_dataset_json(dataset_json)}


def load_case_descriptors(path: PathLike, dataset_json: Mapping[str, Any] | None = None) -> CaseDescriptors:
    """Read and validate one descriptor file.

    Checks, each raising :class:`DescriptorFileError` naming file, case and field:
    valid JSON; ``schema`` equals :data:`SCHEMA_ID`; no NaN/inf anywhere; the JSON Schema
    (types, required fields, non-negative volume/surface/spread, ...); dimensionality
    (``spacing_mm``/``axis_order``/centroids/spread/covariance agree with ``shape``);
    ``min <= max``; measured files: absent classes (``voxels == 0``) have null geometry and
    present classes have all of it. With ``dataset_json``: class names match the
    (non-background) labels or regions of ``dataset.json`` -- no unknown name, and for
    measured files none missing -- and ``label``/``region_labels`` agree with it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DescriptorFileError(path, None, "$", f"cannot read the file ({error})") from error
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise DescriptorFileError(path, None, "$", f"not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise DescriptorFileError(path, None, "$", f"expected a JSON object, got {type(raw).__name__}")
    case_id = raw.get("case_id") if isinstance(raw.get("case_id"), str) else None

    def fail(parts: Sequence[Any], problem: str) -> DescriptorFileError:
        return DescriptorFileError(path, case_id, _json_path(parts), problem)

    schema_id = raw.get("schema")
    if schema_id != SCHEMA_ID:
        raise fail(("schema",), f"unknown schema version {schema_id!r}; this reader understands {SCHEMA_ID!r}")
    bad = _find_non_finite(raw)
    if bad is not None:
        raise fail(bad, "NaN or infinite number (not allowed; use null or omit the field)")

    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(raw))
    if error is not None:
        raise fail(tuple(error.absolute_path), f"{error.message} (JSON Schema {SCHEMA_ID})")

    kind = raw["kind"]
    shape = tuple(int(n) for n in raw["shape"]) if "shape" in raw else None
    spacing = tuple(float(s) for s in raw["spacing_mm"]) if "spacing_mm" in raw else None
    axis_order = tuple(raw["axis_order"]) if "axis_order" in raw else None
    origin = tuple(float(v) for v in raw["origin_mm"]) if "origin_mm" in raw else None
    direction = None
    if "direction" in raw:
        rows = raw["direction"]
        if any(len(row) != len(rows) for row in rows):
            raise fail(("direction",), f"wrong dimensionality: direction must be square, got rows of "
                                       f"{[len(row) for row in rows]} entries")
        direction = np.array(rows, dtype=np.float64)

    # --- dimensionality ------------------------------------------------------------------
    dim: int | None = None
    dim_source = None
    for key, length in (("shape", shape), ("dimension", raw.get("dimension")),
                        ("spacing_mm", spacing), ("axis_order", axis_order)):
        if length is None:
            continue
        n = length if isinstance(length, int) else len(length)
        if dim is None:
            dim, dim_source = n, key
        elif n != dim:
            raise fail((key,), f"wrong dimensionality: {n} entries but {dim_source} says {dim}")
    world_dim = len(origin) if origin is not None else None
    if direction is not None:
        if world_dim is None:
            world_dim = direction.shape[0]
        if direction.shape != (world_dim, world_dim):
            raise fail(("direction",), f"wrong dimensionality: expected {world_dim}x{world_dim}, "
                                       f"got {list(direction.shape)}")
    if world_dim is None:
        world_dim = dim

    classes_raw: dict = raw["classes"]
    for name, entry in classes_raw.items():
        for field_name, rank in DESCRIPTOR_FIELDS.items():
            if rank == 0 or field_name not in entry:
                continue
            for array in _components(entry[field_name]):
                expected = world_dim if field_name == "centroid_world_mm" else dim
                rows = len(array)
                if expected is None:  # a prior without shape: the first vector fixes D
                    dim = world_dim = rows
                    dim_source = f"classes.{name}.{field_name}"
                    expected = rows
                if rows != expected:
                    source = "origin_mm/direction" if field_name == "centroid_world_mm" else dim_source
                    raise fail(("classes", name, field_name),
                               f"wrong dimensionality: {rows} components, expected {expected} (from {source})")
                if rank == 2:
                    for row_index, row in enumerate(array):
                        if len(row) != expected:
                            raise fail(("classes", name, field_name, row_index),
                                       f"wrong dimensionality: {len(row)} components, expected {expected}")
        axes = entry.get("principal_axes_mm")
        if axes is not None and dim is not None:
            vectors = axes["vectors"]
            if len(axes["lengths"]) != dim or len(vectors) != dim or any(len(v) != dim for v in vectors):
                raise fail(("classes", name, "principal_axes_mm"), f"wrong dimensionality: expected {dim} axes "
                                                                   f"of {dim} components")

    # --- per class values and bounds -----------------------------------------------------
    classes: dict[str, ClassDescriptors] = {}
    for name, entry in classes_raw.items():
        values: dict[str, Any] = {}
        bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for field_name, rank in DESCRIPTOR_FIELDS.items():
            if field_name not in entry:
                continue
            value = entry[field_name]
            shape_of_field = _field_shape(rank, dim, world_dim, field_name)
            lower, upper = _bounds_of(value, shape_of_field)
            with np.errstate(invalid="ignore"):
                crossed = lower > upper
            if np.any(crossed):
                raise fail(("classes", name, field_name), f"min > max ({lower.tolist()} > {upper.tolist()})")
            bounds[field_name] = (lower, upper)
            if not isinstance(value, dict):
                values[field_name] = value
        if "principal_axes_mm" in entry:
            values["principal_axes_mm"] = entry["principal_axes_mm"]
        voxels = entry.get("voxels")
        if kind == "measured":
            geometry_null = [f for f in ("centroid_mm", "centroid_world_mm", "centroid_voxel", "spread_mm",
                                         "covariance_mm2", "principal_axes_mm") if entry[f] is None]
            if voxels == 0 and len(geometry_null) < 6:
                present = sorted({"centroid_mm", "centroid_world_mm", "centroid_voxel", "spread_mm",
                                  "covariance_mm2", "principal_axes_mm"} - set(geometry_null))
                raise fail(("classes", name, present[0]), "absent class (voxels == 0) must have null geometry")
            if voxels and geometry_null:
                raise fail(("classes", name, geometry_null[0]), f"null geometry for a present class "
                                                                 f"(voxels = {voxels})")
        region = entry.get("region_labels")
        classes[name] = ClassDescriptors(
            name=name,
            label=entry.get("label"),
            voxels=voxels,
            values=values,
            bounds=bounds,
            region_labels=tuple(region) if region is not None else None,
        )

    # --- class names against dataset.json ------------------------------------------------
    if dataset_json is not None:
        expected = _expected_classes(dataset_json)
        unknown = [n for n in classes if n not in expected]
        if unknown:
            raise fail(("classes", unknown[0]),
                       f"class name {unknown[0]!r} does not match dataset.json labels {sorted(expected)}")
        if kind == "measured":
            missing = [n for n in expected if n not in classes]
            if missing:
                raise fail(("classes", missing[0]), f"missing class {missing[0]!r} (dataset.json labels "
                                                    f"{sorted(expected)}; measured files list every class)")
        for name, cls in classes.items():
            spec = expected[name]
            if cls.label is not None and cls.label != spec.label:
                raise fail(("classes", name, "label"), f"label {cls.label} does not match dataset.json ({spec.label})")
            if cls.region_labels is not None and tuple(sorted(cls.region_labels)) != tuple(sorted(spec.labels)):
                raise fail(("classes", name, "region_labels"),
                           f"region labels {list(cls.region_labels)} do not match dataset.json {list(spec.labels)}")
            # priors may leave label out: dataset.json supplies it so channels can be addressed by label
            if cls.label is None:
                cls.label = spec.label
            if cls.region_labels is None and spec.region_labels is not None:
                cls.region_labels = spec.region_labels

    return CaseDescriptors(
        case_id=raw["case_id"],
        path=str(path),
        spacing_mm=spacing,
        shape=shape,
        axis_order=axis_order,
        classes=classes,
        raw=raw,
        kind=kind,
        origin_mm=origin,
        direction=direction,
    )


def load_descriptor_folder(folder: PathLike, dataset_json: Mapping[str, Any] | None) -> dict[str, CaseDescriptors]:
    """Every ``*.json`` case file of a folder (``summary.json`` and hidden files skipped), by case id.

    Raises :class:`DescriptorFileError` for the first invalid file and for two files with
    the same case id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"descriptor folder {folder} does not exist")
    cases: dict[str, CaseDescriptors] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == SUMMARY_FILE_NAME or path.name.startswith("."):
            continue
        case = load_case_descriptors(path, dataset_json)
        if case.case_id in cases:
            raise DescriptorFileError(path, case.case_id, "$.case_id",
                                      f"duplicate case id, also in {cases[case.case_id].path}")
        cases[case.case_id] = case
    return cases


# ---------------------------------------------------------------------------------------
# targets for the training side
# ---------------------------------------------------------------------------------------


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
            raise DescriptorFileError(case.path, case.case_id, _json_path(fail_parts + ("centroid_voxel",)),
                                      "centroid_voxel needs spacing_mm in the file to be used as a target")
        spacing = np.asarray(case.spacing_mm)
        lower, upper = cls.bounds["centroid_voxel"]
        return lower * spacing, upper * spacing
    if "centroid_world_mm" in cls.bounds:
        where = _json_path(fail_parts + ("centroid_world_mm",))
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
    pseudo-3-D layout of a 2-D image) drops that axis for ``dim == 2``; anything else is an error.
    """
    case_dim = array.shape[0] if rank else dim
    if rank == 0 or case_dim == dim:
        return array
    if case_dim == 3 and dim == 2 and case.shape is not None and case.shape[0] == 1:
        return array[1:] if rank == 1 else array[1:, 1:]
    raise DescriptorFileError(case.path, case.case_id, _json_path(("classes",) + field_parts),
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
