"""Read and validate per-case descriptor files (schema ``nnunet-shape/descriptors/v1``).

The files are written by ``nnUNetv2_export_descriptors`` (``kind: "measured"``) or by hand
(``kind: "prior"``); docs/descriptor-json.md describes the format. :func:`load_descriptor_folder`
reads a folder once, :func:`load_case_descriptors` one file; :mod:`.targets` turns a loaded
file into lower/upper bounds for the trainer. The classes they return are in :mod:`.model`.

Every descriptor field of a class holds either an exact value or bounds
``{"min": .., "max": ..}`` (either side optional, ``null`` components unbounded). Both are
normalised to ``(lower, upper)`` float64 arrays: an exact value gives ``lower == upper``,
a missing side or a ``null`` gives NaN.

Errors are :class:`~.model.DescriptorFileError` whose message names the file, the case and
the field as a JSON path (``$.classes.femur.volume_mm3``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.descriptor_files.json_schema import find_non_finite, json_schema_validator, load_json_schema
from nnunet_shape.descriptor_files.model import (
    DESCRIPTOR_FIELDS,
    IMAGE_INTENSITY_FIELD,
    INTENSITY_FIELD,
    SCHEMA_ID,
    SUMMARY_FILE_NAME,
    CaseDescriptors,
    ClassDescriptors,
    ClassSpec,
    DescriptorFileError,
    ImageIntensity,
    PathLike,
    class_specs_from_dataset_json,
    json_path,
)

__all__ = [
    "load_schema",
    "load_case_descriptors",
    "load_descriptor_folder",
    "check_case_matches_image",
]

#: tolerances of :func:`check_case_matches_image` (the exporter writes the reader's exact values)
SPACING_RTOL = 1e-5
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-5


def load_schema() -> dict:
    """The JSON Schema of v1, shipped as ``nnunet_shape/descriptor_files/schema_v1.json``."""
    return load_json_schema('nnunet_shape.descriptor_files', 'schema_v1.json')


def _validator():
    return json_schema_validator('nnunet_shape.descriptor_files', 'schema_v1.json')


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


def _dataset_channels(dataset_json: Mapping[str, Any]) -> int | None:
    """Number of image channels dataset.json declares (``channel_names``, or the old ``modality``)."""
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    return len(names) if isinstance(names, Mapping) else None


def _intensity_channels(raw: Mapping[str, Any], fail) -> tuple[int | None, tuple[Any, ...]]:
    """The number of image channels of a file's intensity blocks (``image_intensity`` first, else the
    first list of a class's ``intensity``) and the field it comes from; every list must agree."""
    channels, source = None, ()
    block = raw.get(IMAGE_INTENSITY_FIELD)
    if block is not None:
        channels, source = len(block["mean"]), (IMAGE_INTENSITY_FIELD, "mean")
        if len(block["std"]) != channels:
            raise fail((IMAGE_INTENSITY_FIELD, "std"), f"wrong number of channels: {len(block['std'])} entries, "
                                                      f"expected {channels} (from {json_path(source)})")
    for name, entry in raw["classes"].items():
        intensity = entry.get(INTENSITY_FIELD)
        if not isinstance(intensity, dict):
            continue
        for stat in ("mean", "std"):
            for array in _components(intensity.get(stat)):
                if channels is None:
                    channels, source = len(array), ("classes", name, INTENSITY_FIELD, stat)
                elif len(array) != channels:
                    raise fail(("classes", name, INTENSITY_FIELD, stat), f"wrong number of channels: {len(array)} "
                                                                        f"entries, expected {channels} (from "
                                                                        f"{json_path(source)})")
    return channels, source


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
        return DescriptorFileError(path, case_id, json_path(parts), problem)

    schema_id = raw.get("schema")
    if schema_id != SCHEMA_ID:
        raise fail(("schema",), f"unknown schema version {schema_id!r}; this reader understands {SCHEMA_ID!r}")
    bad = find_non_finite(raw)
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

    # --- intensity blocks (optional): one entry per image channel ---------------------------
    channels, channel_source = _intensity_channels(raw, fail)
    image_intensity = None
    if IMAGE_INTENSITY_FIELD in raw:
        block = raw[IMAGE_INTENSITY_FIELD]
        image_intensity = ImageIntensity(np.asarray(block["mean"], dtype=np.float64),
                                         np.asarray(block["std"], dtype=np.float64),
                                         block.get("region", "nonzero_bounding_box"))
    if dataset_json is not None and channels is not None:
        declared = _dataset_channels(dataset_json)
        if declared is not None and declared != channels:
            raise fail(channel_source, f"wrong number of channels: {channels}, but dataset.json "
                                                         f"has {declared} channel_names")

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
        intensity: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        block = entry.get(INTENSITY_FIELD)
        for stat in ("mean", "std") if isinstance(block, dict) else ():
            if stat not in block:
                continue
            lower, upper = _bounds_of(block[stat], None if channels is None else (channels,))
            with np.errstate(invalid="ignore"):
                crossed = lower > upper
            if np.any(crossed):
                raise fail(("classes", name, INTENSITY_FIELD, stat), f"min > max ({lower.tolist()} > {upper.tolist()})")
            intensity[stat] = (lower, upper)
        voxels = entry.get("voxels")
        if kind == "measured":
            if image_intensity is not None and INTENSITY_FIELD not in entry:
                raise fail(("classes", name), f"missing {INTENSITY_FIELD!r}: the file has {IMAGE_INTENSITY_FIELD}, so "
                                              f"every class lists its intensity (null when absent)")
            if image_intensity is None and INTENSITY_FIELD in entry:
                raise fail((IMAGE_INTENSITY_FIELD,), f"missing: class {name!r} has an {INTENSITY_FIELD!r} block, which "
                                                     f"a measured file comes with (re-export with --intensity)")
            if voxels == 0 and entry.get(INTENSITY_FIELD) is not None:
                raise fail(("classes", name, INTENSITY_FIELD), "absent class (voxels == 0) must have null intensity")
            if voxels and INTENSITY_FIELD in entry and entry[INTENSITY_FIELD] is None:
                raise fail(("classes", name, INTENSITY_FIELD),
                           f"null intensity for a present class (voxels = {voxels})")
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
            components=entry.get("components"),
            intensity=intensity,
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
        image_intensity=image_intensity,
    )


def load_descriptor_folder(folder: PathLike, dataset_json: Mapping[str, Any] | None) -> dict[str, CaseDescriptors]:
    """Every ``*.json`` case file of a folder (``summary.json`` and hidden files skipped), by case id.

    Raises :class:`DescriptorFileError` for the first invalid file, for a file whose
    ``case_id`` is not its name (``case_002.json`` holding ``"case_id": "case_001"``, e.g. a
    copied file: it would be used as the targets of the other case) and for two files with
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
        if case.case_id != path.stem:
            raise DescriptorFileError(path, case.case_id, "$.case_id",
                                      f"case_id {case.case_id!r} does not match the file name {path.name} "
                                      f"(expected {path.stem!r}): a file copied from another case? Rename the "
                                      f"file or correct its case_id")
        if case.case_id in cases:
            raise DescriptorFileError(path, case.case_id, "$.case_id",
                                      f"duplicate case id, also in {cases[case.case_id].path}")
        cases[case.case_id] = case
    return cases


def _format_values(values: Any) -> str:
    return json.dumps(np.asarray(values, dtype=np.float64).round(6).tolist())


def check_case_matches_image(case: CaseDescriptors, image: str, shape: Sequence[int] | None,
                             spacing_mm: Sequence[float] | None, origin_mm: Sequence[float] | None = None,
                             direction: Sequence[Sequence[float]] | np.ndarray | None = None) -> None:
    """Raise :class:`DescriptorFileError` when the file's geometry differs from its image's.

    Descriptor targets are in mm of the image they were measured on: a file of another image (a
    copy, a stale export after the images were resampled) would train on wrong targets without
    any other symptom. ``shape`` and ``spacing_mm`` are in array order, ``origin_mm`` and
    ``direction`` (rows) in ITK's world order, as the file holds them; ``image`` names the image
    in the message. Fields absent from the file (priors may omit them) or unknown for the image
    (None) are not compared. Shapes must be equal, spacings equal within a relative
    :data:`SPACING_RTOL`, origins within :data:`ORIGIN_ATOL_MM` mm, directions within
    :data:`DIRECTION_ATOL`. The message gives both values.
    """
    def fail(field: str, what: str, file_value: Any, image_value: Any) -> DescriptorFileError:
        return DescriptorFileError(case.path, case.case_id, f"$.{field}",
                                   f"{what} {_format_values(file_value)} does not match the image {image} "
                                   f"({_format_values(image_value)}): the file describes another image; "
                                   f"re-export it (nnUNetv2_export_descriptors)")

    if case.shape is not None and shape is not None and tuple(case.shape) != tuple(int(n) for n in shape):
        raise fail("shape", "shape", case.shape, shape)
    if case.spacing_mm is not None and spacing_mm is not None and (
            len(case.spacing_mm) != len(spacing_mm)
            or not np.allclose(case.spacing_mm, spacing_mm, rtol=SPACING_RTOL, atol=0.0)):
        raise fail("spacing_mm", "spacing_mm", case.spacing_mm, spacing_mm)
    if case.origin_mm is not None and origin_mm is not None and (
            len(case.origin_mm) != len(origin_mm)
            or not np.allclose(case.origin_mm, origin_mm, rtol=0.0, atol=ORIGIN_ATOL_MM)):
        raise fail("origin_mm", "origin_mm", case.origin_mm, origin_mm)
    if case.direction is not None and direction is not None:
        image_direction = np.asarray(direction, dtype=np.float64)
        if (case.direction.shape != image_direction.shape
                or not np.allclose(case.direction, image_direction, rtol=0.0, atol=DIRECTION_ATOL)):
            raise fail("direction", "direction", case.direction, image_direction)
