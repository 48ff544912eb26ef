"""``nnunet-shape click-bounds``: per-case descriptor bounds from a few surface points (issue 16).

For every case with a point file (``pointsTr/<case>.json`` or 3D Slicer markups, the format of
:mod:`nnunet_shape.point_files`; ``nnunet-shape simulate-points`` imitates them), the points of
each class are mapped into the case's array frame (the geometry of ``imagesTr/<case>_0000``,
read with nnU-Net's reader) and turned into bounds on volume, centroid and spread
(:func:`nnunet_shape.core.click_bounds.click_bounds`, whose docstring gives the reasoning).
They are written as ``kind: "prior"`` descriptor files (docs/descriptor-json.md), by default
into ``<raw dataset>/descriptorsTr`` where ``nnUNetTrainerShapeDescriptorsFromFile`` reads them.

A class with ``"points_world_mm": []`` is written as absent (``voxels: 0``); a class missing
from the point file is left out (unconstrained); a class with fewer than 4 points only gets
its presence (a one-voxel volume lower bound).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.errors import UserError, run_console
from nnunet_shape.nnunet.raw_dataset import (
    add_dataset_argument,
    add_output_folder_argument,
    image_reader_class,
    open_raw_dataset,
    read_3d_case,
)
from nnunet_shape.nnunet.weak_annotations import add_points_argument, points_and_images

__all__ = ["CLICK_BOUNDS_TOOL", "case_click_bounds", "click_bounds_dataset", "main"]

#: ``extra.tool`` of the files this command writes (what it may replace without --overwrite)
CLICK_BOUNDS_TOOL = "nnunet-shape click-bounds"
DESCRIPTORS_FOLDER = "descriptorsTr"


def _bounds(lower: np.ndarray, upper: np.ndarray) -> dict[str, Any]:
    def listed(values: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in np.asarray(values).reshape(-1)]

    return {"min": listed(lower), "max": listed(upper)}


def case_click_bounds(case, geometry, min_points: int = 4) -> dict[str, Any]:
    """The ``kind: "prior"`` descriptor object of one case.

    Args:
        case: :class:`~nnunet_shape.point_files.format.CasePoints` (world mm).
        geometry: the case image's :class:`~nnunet_shape.descriptor_files.measure.Geometry`.
    """
    from nnunet_shape.core.click_bounds import click_bounds
    from nnunet_shape.descriptor_files.model import SCHEMA_ID
    from nnunet_shape.point_files.format import world_to_array_mm

    spacing = np.asarray(geometry.spacing_mm, dtype=np.float64)
    classes: dict[str, Any] = {}
    notes: dict[str, Any] = {}
    for name, points in case.classes.items():
        world = np.asarray(points.points_world_mm, dtype=np.float64).reshape(-1, 3)
        if len(world) == 0:
            classes[name] = {"voxels": 0}
            continue
        if len(world) < min_points:
            classes[name] = {"volume_mm3": {"min": float(np.prod(spacing))}}
            notes[name] = {"points": len(world), "note": f"fewer than {min_points} points: presence only"}
            continue
        array_mm = world_to_array_mm(world, geometry.origin_mm, np.asarray(geometry.direction))
        try:
            b = click_bounds(array_mm, spacing, geometry.shape)
        except Exception as error:  # Qhull: all points in one plane
            raise UserError(f"case {case.case_id!r}: class {name!r}: its {len(world)} points give no 3-D hull "
                            f"({str(error).splitlines()[0]}); click points spread over the whole surface") from None
        classes[name] = {"volume_mm3": {"min": b.volume[0], "max": b.volume[1]},
                         "centroid_mm": _bounds(*b.centroid), "spread_mm": _bounds(*b.spread)}
        notes[name] = {"points": b.n_points, "convex": b.convex, "sampling_radius_mm": round(b.radius, 4)}
    return {"schema": SCHEMA_ID, "kind": "prior", "case_id": case.case_id,
            "comment": "descriptor bounds from surface points (nnunet-shape click-bounds)",
            "shape": [int(n) for n in geometry.shape], "spacing_mm": [float(s) for s in spacing],
            "classes": classes, "extra": {"tool": CLICK_BOUNDS_TOOL, "classes": notes}}


def _replaceable(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and (raw.get("extra") or {}).get("tool") == CLICK_BOUNDS_TOOL


def click_bounds_dataset(dataset: str | int, output_folder: str | os.PathLike | None = None,
                         points_folder: str | os.PathLike | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write ``<output>/<case>.json`` for every case with points; returns ``{"output_folder", "cases"}``.

    Files this command wrote before are replaced; other files (exported, hand-written) only
    with ``overwrite``.
    """
    from nnunet_shape.descriptor_files.atomic import write_json_atomic
    from nnunet_shape.descriptor_files.read import load_case_descriptors

    data = open_raw_dataset(dataset)
    _, cases, images = points_and_images(data, points_folder, dataset)
    output = Path(output_folder) if output_folder is not None else data.folder / DESCRIPTORS_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        blocked = [str(output / f"{c}.json") for c in cases
                   if (output / f"{c}.json").is_file() and not _replaceable(output / f"{c}.json")]
        if blocked:
            raise UserError(f"click-bounds would replace descriptor files it did not write: {blocked[:5]}"
                            f"{' ...' if len(blocked) > 5 else ''}. Pass --overwrite, or write elsewhere with -o")
    reader = image_reader_class(data.dataset_json, next(iter(images.values())))
    written: dict[str, Any] = {}
    for case_id in sorted(cases):
        _, _, geometry = read_3d_case(reader, images[case_id])
        obj = case_click_bounds(cases[case_id], geometry)
        path = output / f"{case_id}.json"
        write_json_atomic(path, obj)
        load_case_descriptors(path, data.dataset_json)  # the reader FromFile uses must accept it
        written[case_id] = obj["extra"]["classes"]
    return {"output_folder": str(output), "cases": written}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape click-bounds",
        description="Per-case descriptor bounds (volume, centroid, spread) from surface points "
                    "(pointsTr), written as kind 'prior' descriptor files for nnUNetTrainerShapeDescriptorsFromFile.")
    add_dataset_argument(parser)
    add_output_folder_argument(parser, DESCRIPTORS_FOLDER)
    add_points_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="also replace descriptor files this command did not write (exported, hand-written)")
    args = parser.parse_args(argv)

    def run() -> int:
        result = click_bounds_dataset(args.dataset, args.output, args.points, args.overwrite)
        print(f"click-bounds: {len(result['cases'])} cases -> {result['output_folder']}")
        return 0

    return run_console("nnunet-shape click-bounds", run)
