"""Per-case surface-point files, schema ``nnunet-shape/points/v1`` (``pointsTr/<case>.json``).

A file holds, per class of ``dataset.json``, 3-D points on the object's surface in world
millimetres -- the frame of the descriptor files (docs/descriptor-json.md): ITK's LPS world,
``world (x, y, z) = origin + direction . (index_xyz * spacing_xyz)``, which is what nnU-Net's
SimpleITK reader and 3D Slicer's LPS files use. A class missing from the file is not annotated;
``"points_world_mm": []`` declares it absent from the case.

Errors are :class:`PointFileError` whose message names the file, the case, the class and the
point index (and the JSON path of the field), e.g.
``…/knee_000.json: case 'knee_000': class 'femur': point 3: field $.classes.femur.points_world_mm[3]: …``.

A case may also come as 3D Slicer markups (``pointsTr/<case>/<class>.mrk.json``, see
:mod:`nnunet_shape.point_files.slicer`); :func:`load_points_folder` reads both layouts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.descriptor_files.json_schema import find_non_finite, json_schema_validator, load_json_schema
from nnunet_shape.errors import UserError

__all__ = [
    "SCHEMA_ID",
    "WORLD_FRAMES",
    "PointFileError",
    "ClassPoints",
    "CasePoints",
    "load_schema",
    "case_points_to_json",
    "validate_case_points",
    "load_case_points",
    "write_case_points",
    "load_points_folder",
    "array_mm_to_world",
    "world_to_array_mm",
]

SCHEMA_ID = "nnunet-shape/points/v1"
WORLD_FRAMES = ("ITK-LPS", "index*spacing")

PathLike = str | os.PathLike


class PointFileError(UserError):
    """A point file that cannot be used; the message names file, case, class, point and field."""

    def __init__(self, path: PathLike | None, case_id: str | None, problem: str, class_name: str | None = None,
                 point: int | None = None, field_path: str | None = None):
        self.path = None if path is None else str(path)
        self.case_id = case_id
        self.class_name = class_name
        self.point = point
        self.field = field_path
        self.problem = problem
        parts = ["<in memory>" if path is None else str(path),
                 f"case {'<unknown case>' if case_id is None else repr(case_id)}"]
        if class_name is not None:
            parts.append(f"class {class_name!r}")
        if point is not None:
            parts.append(f"point {point}")
        if field_path is not None:
            parts.append(f"field {field_path}")
        super().__init__(": ".join(parts + [problem]))


@dataclass
class ClassPoints:
    """The points of one class of one case.

    Attributes:
        name: class name (a ``dataset.json["labels"]`` key).
        points_world_mm: (N, 3) float64, world x, y, z in mm (N = 0: the class is absent).
        label: the label value, when the file gives it or a ``dataset.json`` was checked.
        comment: free text.
    """

    name: str
    points_world_mm: np.ndarray
    label: int | None = None
    comment: str | None = None


@dataclass
class CasePoints:
    """One case: its classes' points, the world frame they are in, and where they come from."""

    case_id: str
    classes: dict[str, ClassPoints]
    world_frame: str = "ITK-LPS"
    source: dict[str, Any] | None = None
    comment: str | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        """Annotation effort as paper 003 counts it: the number of points of the case."""
        return int(sum(len(c.points_world_mm) for c in self.classes.values()))


def load_schema() -> dict:
    """The JSON Schema of v1, shipped as ``nnunet_shape/point_files/schema_v1.json``."""
    return load_json_schema('nnunet_shape.point_files', 'schema_v1.json')


def _validator():
    return json_schema_validator('nnunet_shape.point_files', 'schema_v1.json')


def _json_path(parts: Sequence[Any]) -> str:
    from nnunet_shape.descriptor_files.model import json_path

    return json_path(parts)


def _where(parts: Sequence[Any]) -> tuple[str | None, int | None]:
    """(class, point index) named by a JSON path inside ``classes``."""
    parts = list(parts)
    if len(parts) >= 2 and parts[0] == "classes" and isinstance(parts[1], str):
        point = parts[3] if len(parts) >= 4 and parts[2] == "points_world_mm" and isinstance(parts[3], int) else None
        return parts[1], point
    return None, None


def _class_specs(dataset_json: Mapping[str, Any]) -> dict[str, Any]:
    from nnunet_shape.descriptor_files.model import class_specs_from_dataset_json

    return {spec.name: spec for spec in class_specs_from_dataset_json(dataset_json)}


def validate_case_points(raw: Any, path: PathLike | None = None,
                         dataset_json: Mapping[str, Any] | None = None) -> CasePoints:
    """Validate a parsed point file and turn it into :class:`CasePoints`.

    Checks, each raising :class:`PointFileError`: a JSON object; ``schema`` is :data:`SCHEMA_ID`;
    no NaN/inf; the JSON Schema (required fields, 3 numbers per point, no unknown field). With
    ``dataset_json``: every class name is a class of ``dataset.json`` (not background/ignore,
    not a region) and a given ``label`` is that class's label.
    """
    if not isinstance(raw, dict):
        raise PointFileError(path, None, f"expected a JSON object, got {type(raw).__name__}", field_path="$")
    case_id = raw.get("case_id") if isinstance(raw.get("case_id"), str) else None

    def fail(parts: Sequence[Any], problem: str) -> PointFileError:
        class_name, point = _where(parts)
        return PointFileError(path, case_id, problem, class_name, point, _json_path(parts))

    if raw.get("schema") != SCHEMA_ID:
        raise fail(("schema",), f"unknown schema version {raw.get('schema')!r}; this reader understands {SCHEMA_ID!r}")
    bad = find_non_finite(raw)
    if bad is not None:
        raise fail(bad, "NaN or infinite number (not allowed)")

    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(raw))
    if error is not None:
        raise fail(tuple(error.absolute_path), f"{error.message} (JSON Schema {SCHEMA_ID})")

    specs = _class_specs(dataset_json) if dataset_json is not None else None
    classes: dict[str, ClassPoints] = {}
    for name, entry in raw["classes"].items():
        label = entry.get("label")
        if specs is not None:
            if name not in specs:
                raise fail(("classes", name), f"class {name!r} does not match dataset.json; expected one of "
                                              f"{sorted(specs)}")
            spec = specs[name]
            if spec.region_labels is not None:
                raise fail(("classes", name), f"class {name!r} is a region of dataset.json; points need a class "
                                              f"with its own label")
            if label is not None and int(label) != spec.label:
                raise fail(("classes", name, "label"), f"label {label} does not match dataset.json ({spec.label})")
            label = spec.label
        points = np.asarray(entry["points_world_mm"], dtype=np.float64).reshape(-1, 3)
        classes[name] = ClassPoints(name, points, None if label is None else int(label), entry.get("comment"))
    return CasePoints(case_id=raw["case_id"], classes=classes, world_frame=raw["world_frame"],
                      source=raw.get("source"), comment=raw.get("comment"),
                      path=None if path is None else str(path), extra=dict(raw.get("extra", {})))


def load_case_points(path: PathLike, dataset_json: Mapping[str, Any] | None = None) -> CasePoints:
    """Read and validate one ``<case>.json`` point file (see :func:`validate_case_points`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PointFileError(path, None, f"cannot read the file ({error.strerror or error})") from error
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise PointFileError(path, None, f"not valid JSON (line {error.lineno}, column {error.colno}: "
                                         f"{error.msg})") from None
    case_points = validate_case_points(raw, path, dataset_json)
    expected = path.name[: -len(".json")]
    if case_points.case_id != expected:
        raise PointFileError(path, case_points.case_id, f"case_id {case_points.case_id!r} does not match the file "
                                                        f"name (expected {expected!r})", field_path="$.case_id")
    return case_points


def case_points_to_json(case: CasePoints) -> dict[str, Any]:
    """The v1 JSON object of ``case`` (full float64 precision)."""
    out: dict[str, Any] = {"schema": SCHEMA_ID, "case_id": case.case_id, "world_frame": case.world_frame,
                           "units": {"length": "mm"}}
    if case.comment is not None:
        out["comment"] = case.comment
    if case.source is not None:
        out["source"] = dict(case.source)
    classes = {}
    for name, cls in case.classes.items():
        entry: dict[str, Any] = {}
        if cls.label is not None:
            entry["label"] = int(cls.label)
        entry["points_world_mm"] = np.asarray(cls.points_world_mm, dtype=np.float64).reshape(-1, 3).tolist()
        if cls.comment is not None:
            entry["comment"] = cls.comment
        classes[name] = entry
    out["classes"] = classes
    if case.extra:
        out["extra"] = dict(case.extra)
    return out


def write_case_points(path: PathLike, case: CasePoints) -> None:
    """Validate ``case`` and write it to ``path`` atomically (a reader sees the old file or the new one)."""
    from nnunet_shape.descriptor_files.atomic import write_json_atomic

    raw = case_points_to_json(case)
    validate_case_points(raw, path)
    write_json_atomic(path, raw)


def load_points_folder(folder: PathLike, dataset_json: Mapping[str, Any] | None = None) -> dict[str, CasePoints]:
    """Every case of a ``pointsTr`` folder: ``<case>.json`` files and ``<case>/<class>.mrk.json`` folders.

    A case given both ways is an error (which one would win is not obvious). Hidden files and
    folders (names starting with '.') are skipped.
    """
    from nnunet_shape.point_files.slicer import load_slicer_case

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"point folder {folder} does not exist")
    cases: dict[str, CasePoints] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.endswith(".json") and not entry.name.endswith(".mrk.json"):
            case = load_case_points(entry, dataset_json)
        elif entry.is_dir() and any(p.name.endswith(".mrk.json") for p in entry.iterdir()):
            case = load_slicer_case(entry, entry.name, dataset_json)
        else:
            continue
        if case.case_id in cases:
            raise PointFileError(entry, case.case_id, f"case {case.case_id!r} is given twice in {folder} (as "
                                                      f"<case>.json and as a folder of Slicer markups); keep one")
        cases[case.case_id] = case
    return cases


# ---------------------------------------------------------------------------------------
# world frame <-> array frame
# ---------------------------------------------------------------------------------------


def array_mm_to_world(points_mm: np.ndarray, origin: Sequence[float], direction: np.ndarray) -> np.ndarray:
    """(N, 3) array-frame mm points (array order z, y, x) -> (N, 3) world x, y, z.

    ``origin + direction . p[::-1]`` row by row: the descriptor files' ``centroid_world_mm`` rule
    (ITK's TransformContinuousIndexToPhysicalPoint), vectorised.
    """
    points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    return np.asarray(origin, dtype=np.float64) + points[:, ::-1] @ np.asarray(direction, dtype=np.float64).T


def world_to_array_mm(points_world: np.ndarray, origin: Sequence[float], direction: np.ndarray) -> np.ndarray:
    """Inverse of :func:`array_mm_to_world` (any invertible direction, orthonormal in practice)."""
    points = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    inverse = np.linalg.inv(np.asarray(direction, dtype=np.float64))
    return ((points - np.asarray(origin, dtype=np.float64)) @ inverse.T)[:, ::-1]
