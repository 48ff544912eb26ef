"""3D Slicer markups files (``.mrk.json``) as surface points, both ways.

Layout in a raw dataset: ``pointsTr/<case>/<class>.mrk.json`` -- one markups file per class,
named after the class of ``dataset.json`` (in Slicer: name the point list after the class and
save it into the case's folder). Every markups entry of the file belongs to that class.

Reading honours each entry's ``coordinateSystem`` (``"LPS"``, Slicer's default since 4.11 and
the schema default when the field is missing, or ``"RAS"``: x and y negated into LPS) and
``coordinateUnits`` (``"mm"``, the default, or ``"um"``). Control points whose
``positionStatus`` is ``"undefined"`` or ``"preview"`` carry no clicked position and are
skipped. Point lists, curves, closed curves, lines and angles are read (their control points
are clicks on the surface); planes and ROIs are refused (their control points are not).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.point_files.format import (
    CasePoints,
    ClassPoints,
    PointFileError,
    case_points_to_json,
    validate_case_points,
)

__all__ = ["MARKUPS_SUFFIX", "read_slicer_markups", "write_slicer_markups", "load_slicer_case"]

MARKUPS_SUFFIX = ".mrk.json"
SLICER_SCHEMA_URL = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                     "Schema/markups-schema-v1.0.3.json#")
_POINT_TYPES = ("Fiducial", "Line", "Angle", "Curve", "ClosedCurve")
_UNIT_SCALE = {"mm": 1.0, "um": 1e-3}
_TO_LPS = {"LPS": np.array([1.0, 1.0, 1.0]), "RAS": np.array([-1.0, -1.0, 1.0])}

PathLike = str | os.PathLike


def _class_of(path: Path) -> str:
    return path.name[: -len(MARKUPS_SUFFIX)] if path.name.endswith(MARKUPS_SUFFIX) else path.stem


def read_slicer_markups(path: PathLike, case_id: str | None = None, class_name: str | None = None) -> np.ndarray:
    """The defined control points of a ``.mrk.json`` file: (N, 3) float64, world LPS, mm.

    Errors (:class:`PointFileError`) name the file, the case and class (when given; the class
    defaults to the file name without ``.mrk.json``) and the control point.
    """
    path = Path(path)
    class_name = class_name if class_name is not None else _class_of(path)

    def fail(problem: str, point: int | None = None, parts: str | None = None) -> PointFileError:
        return PointFileError(path, case_id, problem, class_name, point, parts)

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise fail(f"cannot read the file ({error.strerror or error})") from error
    except json.JSONDecodeError as error:
        raise fail(f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("markups"), list):
        raise fail("not a 3D Slicer markups file: expected an object with a 'markups' list", parts="$.markups")
    points: list[np.ndarray] = []
    for m, markup in enumerate(raw["markups"]):
        where = f"$.markups[{m}]"
        if not isinstance(markup, dict):
            raise fail("expected a markups object", parts=where)
        kind = markup.get("type", "Fiducial")
        if kind not in _POINT_TYPES:
            raise fail(f"markups type {kind!r} has no surface points; expected one of {list(_POINT_TYPES)}",
                       parts=f"{where}.type")
        system = markup.get("coordinateSystem", "LPS")
        if system not in _TO_LPS:
            raise fail(f"coordinateSystem {system!r}; expected 'LPS' or 'RAS'", parts=f"{where}.coordinateSystem")
        units = markup.get("coordinateUnits", "mm")
        units = units[0] if isinstance(units, list) and units else units
        if units not in _UNIT_SCALE:
            raise fail(f"coordinateUnits {units!r}; expected 'mm' or 'um'", parts=f"{where}.coordinateUnits")
        scale = _TO_LPS[system] * _UNIT_SCALE[units]
        control_points = markup.get("controlPoints", [])
        if not isinstance(control_points, list):
            raise fail("controlPoints must be a list", parts=f"{where}.controlPoints")
        for c, control in enumerate(control_points):
            index = len(points)
            if not isinstance(control, dict):
                raise fail("expected a control point object", index, f"{where}.controlPoints[{c}]")
            if control.get("positionStatus", "defined") != "defined":
                continue
            position = control.get("position")
            if (not isinstance(position, list) or len(position) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in position)):
                raise fail(f"position {position!r}; expected 3 numbers", index,
                           f"{where}.controlPoints[{c}].position")
            value = np.asarray(position, dtype=np.float64)
            if not np.all(np.isfinite(value)):
                raise fail(f"position {position!r} is not finite", index, f"{where}.controlPoints[{c}].position")
            points.append(value * scale)
    return np.asarray(points, dtype=np.float64).reshape(-1, 3)


def write_slicer_markups(path: PathLike, points_world_lps: np.ndarray, name: str,
                         coordinate_system: str = "LPS") -> None:
    """Write (N, 3) world LPS points as a Slicer point list (``Fiducial``) in LPS or RAS.

    For looking at simulated points in Slicer, and for the round-trip tests.
    """
    if coordinate_system not in _TO_LPS:
        raise ValueError(f"write_slicer_markups: coordinate_system {coordinate_system!r}; expected 'LPS' or 'RAS'")
    points = np.asarray(points_world_lps, dtype=np.float64).reshape(-1, 3) * _TO_LPS[coordinate_system]
    markup = {
        "type": "Fiducial",
        "name": name,
        "coordinateSystem": coordinate_system,
        "coordinateUnits": "mm",
        "controlPoints": [{"id": str(i + 1), "label": f"{name}-{i + 1}", "position": p.tolist(),
                           "positionStatus": "defined"} for i, p in enumerate(points)],
    }
    from nnunet_shape.descriptor_files.atomic import write_json_atomic

    write_json_atomic(path, {"@schema": SLICER_SCHEMA_URL, "markups": [markup]})


def load_slicer_case(folder: PathLike, case_id: str, dataset_json: Mapping[str, Any] | None = None,
                     files: Sequence[PathLike] | None = None) -> CasePoints:
    """A case from Slicer markups: ``folder/<class>.mrk.json`` (or the given ``files``), one per class.

    The result is validated like a v1 point file (class names against ``dataset.json`` when given).
    """
    folder = Path(folder)
    paths = [Path(f) for f in files] if files is not None else sorted(
        p for p in folder.iterdir() if p.name.endswith(MARKUPS_SUFFIX) and not p.name.startswith("."))
    classes: dict[str, ClassPoints] = {}
    for path in paths:
        name = _class_of(path)
        if name in classes:
            raise PointFileError(path, case_id, "a second markups file for this class", name)
        classes[name] = ClassPoints(name, read_slicer_markups(path, case_id, name))
    case = CasePoints(case_id=case_id, classes=classes, world_frame="ITK-LPS",
                      source={"kind": "slicer", "files": [str(p) for p in paths]}, path=str(folder))
    try:
        return validate_case_points(case_points_to_json(case), folder, dataset_json)
    except PointFileError as error:
        # name the markups file of the class, not the folder
        if error.class_name is not None and error.class_name in classes:
            path = next(p for p in paths if _class_of(p) == error.class_name)
            raise PointFileError(path, case_id, error.problem, error.class_name, error.point, error.field) from None
        raise
