"""Point annotations on an nnU-Net raw dataset: ``simulate-points`` and ``fit-templates`` (paper 003).

``nnunet-shape simulate-points -d ID -n N --seed S`` imitates an annotator from the full labels
of ``labelsTr``: N points per class spread over the class's surface (seeded farthest-point
sampling of boundary voxels, :mod:`nnunet_shape.core.surface_sampling`), written in world
millimetres as ``pointsTr/<case>.json`` (:mod:`nnunet_shape.point_files.format`).

``nnunet-shape fit-templates -d ID`` deforms a sphere to each class's points and rasterises it
(:mod:`nnunet_shape.point_files.templates`) into ``templatesTr/<case><file_ending>`` with the
geometry of the case's image, next to ``labelsTr``, which stays untouched (for evaluation).
When a case has a real reference label it reports Dice and mean surface distance per class
(printed, and in ``templatesTr/template_quality.json``).

Images and labels are read with nnU-Net's reader for the dataset, so arrays, spacing and world
frame are what nnU-Net and the descriptor files use (docs/descriptor-json.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.errors import UserError, run_console
from nnunet_shape.nnunet.raw_dataset import (
    RawDataset,
    add_dataset_argument,
    add_output_folder_argument,
    add_seed_argument,
    image_reader_class,
    open_raw_dataset,
    read_3d_case,
    refuse_2d_image,
)

__all__ = [
    "POINTS_FOLDER",
    "TEMPLATES_FOLDER",
    "QUALITY_FILE",
    "SIMULATION_METHOD",
    "class_seed",
    "points_and_images",
    "add_points_argument",
    "simulate_case_points",
    "simulate_points_dataset",
    "fit_case_template",
    "fit_templates_dataset",
    "simulate_points_main",
    "fit_templates_main",
]

POINTS_FOLDER = "pointsTr"
TEMPLATES_FOLDER = "templatesTr"
QUALITY_FILE = "template_quality.json"
SIMULATION_METHOD = "farthest-point sampling of boundary voxels (nnunet_shape.core.surface_sampling)"
#: points farther than this many voxels outside the image are an error (a RAS/LPS mix-up, another case)
OUTSIDE_MARGIN_VOXELS = 1.0


# ---------------------------------------------------------------------------------------
# the dataset (opened and read with nnunet_shape.nnunet.raw_dataset)
# ---------------------------------------------------------------------------------------


def _point_classes(dataset_json: Mapping[str, Any]) -> list:
    """The classes that can carry points: every label of dataset.json except background/ignore; no regions."""
    from nnunet_shape.descriptor_files.model import class_specs_from_dataset_json

    specs = class_specs_from_dataset_json(dataset_json)
    if any(spec.region_labels is not None for spec in specs):
        raise UserError("dataset.json defines regions (label lists with regions_class_order); surface points and "
                        "templates need one label per class")
    return specs


def points_and_images(data: RawDataset, points_folder: str | os.PathLike | None, dataset: str | int
                      ) -> tuple[Path, dict[str, Any], dict[str, Path]]:
    """``(points folder, {case: CasePoints}, {case: imagesTr/<case>_0000 file})`` of a dataset.

    ``points_folder`` defaults to ``<raw dataset>/pointsTr``. UserErrors: the folder is missing
    (``dataset`` as the user gave it names the simulate-points command to run), it holds no
    point file, or it holds points of a case without an image.
    """
    from nnunet_shape.point_files.format import load_points_folder

    points_folder = Path(points_folder) if points_folder is not None else data.folder / POINTS_FOLDER
    if not points_folder.is_dir():
        raise UserError(f"{points_folder} does not exist; write point files there (docs/weak-points.md) or run "
                        f"nnunet-shape simulate-points -d {dataset} -n N")
    cases = load_points_folder(points_folder, data.dataset_json)
    if not cases:
        raise UserError(f"{points_folder}: no point files (<case>.json or <case>/<class>.mrk.json)")
    images = {p.name[: -len(f"_0000{data.ending}")]: p
              for p in sorted((data.folder / "imagesTr").glob(f"*_0000{data.ending}"))}
    unknown = sorted(set(cases) - set(images))
    if unknown:
        raise UserError(f"{points_folder}: points for cases without an image in {data.folder / 'imagesTr'}: {unknown}")
    return points_folder, cases, images


def class_seed(seed: int, case_id: str, label: int) -> int:
    """The sampling seed of one (case, class): a function of ``seed``, the case id and the label only,
    so a case's points do not change when other cases are added or removed."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(case_id.encode("utf-8")), int(label)]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


# ---------------------------------------------------------------------------------------
# simulate-points
# ---------------------------------------------------------------------------------------


def simulate_case_points(labels: np.ndarray, geometry: Any, case_id: str, specs: Sequence[Any], n: int, seed: int,
                         label_file: str | None = None):
    """:class:`~nnunet_shape.point_files.format.CasePoints` of ``n`` points per class of a label map.

    ``labels`` (Z, Y, X) in nnU-Net's array order, ``geometry`` its
    ``nnunet_shape.descriptor_files`` Geometry. A class absent from the map gets ``[]``.
    """
    from nnunet_shape.core.surface_sampling import sample_surface_points
    from nnunet_shape.point_files.format import CasePoints, ClassPoints, array_mm_to_world

    classes = {}
    for spec in specs:
        points_mm = sample_surface_points(labels == spec.label, geometry.spacing_mm, n,
                                          class_seed(seed, case_id, spec.label))
        world = array_mm_to_world(points_mm, geometry.origin_mm, geometry.direction)
        classes[spec.name] = ClassPoints(spec.name, world, spec.label)
    source = {"kind": "simulated", "method": SIMULATION_METHOD, "points_per_class": int(n), "seed": int(seed)}
    if label_file is not None:
        source["label_file"] = label_file
    return CasePoints(case_id=case_id, classes=classes, world_frame=geometry.world_frame, source=source)


def _existing_annotation(output: Path, case_id: str) -> str | None:
    """Why ``output`` already holds a non-simulated annotation of ``case_id`` (None: it does not)."""
    from nnunet_shape.point_files.slicer import MARKUPS_SUFFIX

    folder = output / case_id
    if folder.is_dir() and any(p.name.endswith(MARKUPS_SUFFIX) for p in folder.iterdir()):
        return f"{folder} holds 3D Slicer markups of this case"
    path = output / f"{case_id}.json"
    if path.is_file():
        try:
            kind = (json.loads(path.read_text(encoding="utf-8")).get("source") or {}).get("kind")
        except (OSError, json.JSONDecodeError, AttributeError):
            kind = None
        if kind != "simulated":
            return f"{path} exists and is not a simulated annotation (source.kind {kind!r})"
    return None


def simulate_points_dataset(dataset: str | int, n: int, seed: int = 0, output_folder: str | os.PathLike | None = None,
                            overwrite: bool = False) -> dict[str, Any]:
    """Write ``<output>/<case>.json`` (default ``<raw dataset>/pointsTr``) for every case of ``labelsTr``.

    Earlier simulated files are replaced; files that are not simulated (hand-made, Slicer) are
    only replaced with ``overwrite``. Returns ``{case_id: {class: number of points}}``.
    """
    from nnunet_shape.descriptor_files.export import list_label_files
    from nnunet_shape.descriptor_files.measure import read_label_map
    from nnunet_shape.point_files.format import write_case_points

    if n < 1:
        raise UserError(f"simulate-points: -n must be at least 1, got {n}")
    data = open_raw_dataset(dataset)
    if data.placeholder_labels:
        raise UserError(f"{data.folder / 'dataset.json'}: labelsTr are placeholders (nnunet-shape placeholder-labels); "
                        f"there is no surface to simulate points from")
    specs = _point_classes(data.dataset_json)
    files = list_label_files(data.folder / "labelsTr", data.ending)
    if not files:
        raise UserError(f"{data.folder / 'labelsTr'}: no label file ending in {data.ending!r}")
    output = Path(output_folder) if output_folder is not None else data.folder / POINTS_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        reasons = [reason for case_id in files if (reason := _existing_annotation(output, case_id))]
        if reasons:
            raise UserError(f"simulate-points would replace real annotations: {'; '.join(reasons)}. Pass --overwrite, "
                            f"or write elsewhere with -o")
    reader = image_reader_class(data.dataset_json, next(iter(files.values())))
    counts: dict[str, Any] = {}
    for case_id, path in files.items():
        labels, geometry = read_label_map(path, reader)
        refuse_2d_image(len(geometry.shape) != 3, path)
        case = simulate_case_points(labels, geometry, case_id, specs, n, seed, str(path))
        write_case_points(output / f"{case_id}.json", case)
        counts[case_id] = {name: len(cls.points_world_mm) for name, cls in case.classes.items()}
    return {"output_folder": str(output), "cases": counts}


# ---------------------------------------------------------------------------------------
# fit-templates
# ---------------------------------------------------------------------------------------


@dataclass
class CaseTemplate:
    """The template of one case: its label map and per-class fit/quality numbers."""

    labels: np.ndarray
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)


def _file_of(case: Any, class_name: str) -> str | None:
    """The file holding a class's points: the case file, or the class's Slicer markups file."""
    from nnunet_shape.point_files.slicer import MARKUPS_SUFFIX

    for name in (case.source or {}).get("files", []) if (case.source or {}).get("kind") == "slicer" else []:
        if name.endswith(f"/{class_name}{MARKUPS_SUFFIX}") or name == f"{class_name}{MARKUPS_SUFFIX}":
            return name
    return case.path


def _check_inside(case: Any, class_name: str, points_mm: np.ndarray, geometry: Any, image: Path) -> None:
    from nnunet_shape.point_files.format import PointFileError

    index = points_mm / np.asarray(geometry.spacing_mm)
    shape = np.asarray(geometry.shape)
    outside = np.any((index < -0.5 - OUTSIDE_MARGIN_VOXELS) | (index > shape - 0.5 + OUTSIDE_MARGIN_VOXELS), axis=1)
    if outside.any():
        j = int(np.argmax(outside))
        point = case.classes[class_name].points_world_mm[j].tolist()
        raise PointFileError(_file_of(case, class_name), case.case_id,
                             f"world point {point} (mm) lies outside the image {image} (voxel index z, y, x "
                             f"{np.round(index[j], 1).tolist()} of shape {list(geometry.shape)}); points must be in "
                             f"the image's {geometry.world_frame} world frame (a Slicer file in RAS must say "
                             f"\"coordinateSystem\": \"RAS\")", class_name, j)


def fit_case_template(case: Any, geometry: Any, specs: Sequence[Any], image: Path,
                      reference: np.ndarray | None = None, subdivisions: int = 3) -> CaseTemplate:
    """Fit and rasterise the templates of one case (:class:`CasePoints`) on the image's grid.

    ``reference`` (Z, Y, X) labels, when given, adds ``dice`` and ``mean_surface_distance_mm``
    per class. Classes of ``specs`` without points (missing or ``[]``) get no template.
    """
    from nnunet_shape.point_files.format import PointFileError, world_to_array_mm
    from nnunet_shape.point_files.templates import (
        MIN_RADIUS_VOXELS,
        combine_templates,
        dice,
        fit_template,
        mean_surface_distance,
        rasterise_mesh,
    )

    if case.world_frame != geometry.world_frame:
        raise PointFileError(case.path, case.case_id, f"world_frame {case.world_frame!r} but the image {image} is in "
                                                      f"{geometry.world_frame!r}", field_path="$.world_frame")
    masks: dict[int, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    for spec in specs:
        cls = case.classes.get(spec.name)
        points = np.zeros((0, 3)) if cls is None else cls.points_world_mm
        entry: dict[str, Any] = {"label": spec.label, "points": int(len(points)), "annotated": cls is not None}
        if len(points):
            points_mm = world_to_array_mm(points, geometry.origin_mm, geometry.direction)
            _check_inside(case, spec.name, points_mm, geometry, image)
            fit = fit_template(points_mm[:, ::-1], MIN_RADIUS_VOXELS * max(geometry.spacing_mm), subdivisions)
            masks[spec.label] = rasterise_mesh(fit.vertices, fit.faces, geometry.shape, geometry.spacing_mm)
            entry["point_to_surface_mm"] = fit.residual_mm
        info[spec.name] = entry
    labels = combine_templates(masks, geometry.shape)
    for spec in specs:
        entry = info[spec.name]
        entry["template_voxels"] = int(np.count_nonzero(labels == spec.label))
        if reference is not None:
            entry["dice"] = dice(labels == spec.label, reference == spec.label)
            entry["mean_surface_distance_mm"] = mean_surface_distance(labels == spec.label, reference == spec.label,
                                                                      geometry.spacing_mm)
    return CaseTemplate(labels, info)


def _write_seg_atomic(reader: type, labels: np.ndarray, target: Path, properties: dict, ending: str) -> None:
    temporary = target.with_name(f".{target.name}.tmp{ending}")
    try:
        reader().write_seg(labels, str(temporary), properties)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _nan_mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def fit_templates_dataset(dataset: str | int, points_folder: str | os.PathLike | None = None,
                          output_folder: str | os.PathLike | None = None, subdivisions: int = 3) -> dict[str, Any]:
    """Templates for every training case with points; returns (and writes) the quality summary.

    Points: ``points_folder`` (default ``<raw>/pointsTr``). Output: ``output_folder`` (default
    ``<raw>/templatesTr``), one label map per case with the geometry of ``imagesTr/<case>_0000``,
    and :data:`QUALITY_FILE`. Reference labels are ``labelsTr/<case>`` unless the dataset has
    placeholder labels.
    """
    from nnunet_shape.descriptor_files.atomic import write_json_atomic
    from nnunet_shape.descriptor_files.measure import read_label_map

    data = open_raw_dataset(dataset)
    specs = _point_classes(data.dataset_json)
    points_folder, cases, images = points_and_images(data, points_folder, dataset)
    output = Path(output_folder) if output_folder is not None else data.folder / TEMPLATES_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    reader = image_reader_class(data.dataset_json, next(iter(images.values())))
    per_case: dict[str, Any] = {}
    for case_id in sorted(cases):
        image = images[case_id]
        _, properties, geometry = read_3d_case(reader, image)
        reference_path = data.folder / "labelsTr" / f"{case_id}{data.ending}"
        reference = None
        if reference_path.is_file() and not data.placeholder_labels:
            reference, _ = read_label_map(reference_path, reader)
        template = fit_case_template(cases[case_id], geometry, specs, image, reference, subdivisions)
        _write_seg_atomic(reader, template.labels, output / f"{case_id}{data.ending}", properties, data.ending)
        per_case[case_id] = {"points": cases[case_id].num_points, "classes": template.classes}
    mean = {}
    for spec in specs:
        rows = [c["classes"][spec.name] for c in per_case.values()]
        mean[spec.name] = {"points": float(np.mean([r["points"] for r in rows])),
                           "dice": _nan_mean([r.get("dice") for r in rows]),
                           "mean_surface_distance_mm": _nan_mean([r.get("mean_surface_distance_mm") for r in rows])}
    summary = {"points_folder": str(points_folder), "output_folder": str(output),
               "cases_without_points": sorted(set(images) - set(cases)), "mean": mean, "cases": per_case}
    # JSON has no NaN: a metric that is undefined (class absent from template and reference) is null
    write_json_atomic(output / QUALITY_FILE, _nan_to_none(summary))
    return summary


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _format_number(value: Any, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def format_quality_table(summary: Mapping[str, Any]) -> str:
    """Plain-text table: one row per case and class (points, Dice, mean surface distance), then the means."""
    lines = [f"{'case':<20} {'class':<16} {'points':>6} {'Dice':>6} {'MSD mm':>7}"]
    for case_id, case in summary["cases"].items():
        for name, entry in case["classes"].items():
            lines.append(f"{case_id:<20} {name:<16} {entry['points']:>6} {_format_number(entry.get('dice'), 3):>6} "
                         f"{_format_number(entry.get('mean_surface_distance_mm'), 2):>7}")
    for name, entry in summary["mean"].items():
        lines.append(f"{'mean':<20} {name:<16} {entry['points']:>6.1f} {_format_number(entry['dice'], 3):>6} "
                     f"{_format_number(entry['mean_surface_distance_mm'], 2):>7}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------------------


def add_points_argument(parser: argparse.ArgumentParser) -> None:
    """``-p/--points`` (default None): the point folder of :func:`points_and_images`."""
    parser.add_argument("-p", "--points", default=None, help=f"point folder (default <raw dataset>/{POINTS_FOLDER})")


def simulate_points_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape simulate-points",
        description="Simulate an annotator: N surface points per class from labelsTr (farthest-point sampling "
                    "of boundary voxels, seeded), written as <raw dataset>/pointsTr/<case>.json in world mm.")
    add_dataset_argument(parser)
    parser.add_argument("-n", "--num-points", type=int, required=True, help="points per class and case")
    add_seed_argument(parser)
    add_output_folder_argument(parser, POINTS_FOLDER)
    parser.add_argument("--overwrite", action="store_true",
                        help="also replace point files that are not simulated (hand-made, Slicer)")
    args = parser.parse_args(argv)

    def run() -> int:
        result = simulate_points_dataset(args.dataset, args.num_points, args.seed, args.output, args.overwrite)
        print(f"simulate-points: {len(result['cases'])} cases, {args.num_points} points per class (seed "
              f"{args.seed}) -> {result['output_folder']}")
        return 0

    return run_console("nnunet-shape simulate-points", run)


def fit_templates_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape fit-templates",
        description="Deform a sphere to each class's surface points and rasterise it: <raw dataset>/templatesTr/"
                    "<case><file_ending> (labelsTr untouched); Dice and mean surface distance against labelsTr "
                    f"when it holds real labels (printed and in templatesTr/{QUALITY_FILE}).")
    add_dataset_argument(parser)
    add_points_argument(parser)
    add_output_folder_argument(parser, TEMPLATES_FOLDER)
    parser.add_argument("--subdivisions", type=int, default=3,
                        help="icosphere subdivisions of the template mesh (3: 642 vertices, default)")
    args = parser.parse_args(argv)

    def run() -> int:
        summary = fit_templates_dataset(args.dataset, args.points, args.output, args.subdivisions)
        print(format_quality_table(summary))
        missing = summary["cases_without_points"]
        if missing:
            print(f"fit-templates: {len(missing)} training case(s) without points, no template: {missing}")
        print(f"fit-templates: {len(summary['cases'])} templates -> {summary['output_folder']}")
        return 0

    return run_console("nnunet-shape fit-templates", run)
