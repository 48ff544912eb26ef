"""Per-case shape-descriptor export of label maps (schema ``nnunet-shape/descriptors/v1``).

Pipeline per case: read the label map with nnU-Net's reader for the dataset (so the array
axis order and spacing are exactly what nnU-Net holds), compute every descriptor with the
core (:mod:`nnunet_shape.core.descriptors`, float64) on each class or region, add world-frame
values from the image geometry, and write ``<case>.json`` atomically. A folder export adds
``summary.json`` and, on request, ``descriptors.csv``; unchanged cases are skipped.

Conventions (docs/descriptor-json.md): array order as nnU-Net (``(z, y, x)`` for
SimpleITK 3-D, ``(y, x)`` for 2-D images), ``centroid_mm = centroid_voxel * spacing_mm``
(origin at the first voxel), ``centroid_world_mm = origin + direction . (index_xyz *
spacing_xyz)`` (ITK ``TransformContinuousIndexToPhysicalPoint``, LPS).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape import __version__ as _package_version
from nnunet_shape.descriptor_files.read import (
    SCHEMA_ID,
    SUMMARY_FILE_NAME,
    ClassSpec,
    class_specs_from_dataset_json,
    write_json_atomic,
    write_text_atomic,
)

__all__ = [
    "EXPORTER_VERSION",
    "CSV_FILE_NAME",
    "Geometry",
    "ExportTask",
    "ExportReport",
    "geometry_from_properties",
    "read_label_map",
    "class_descriptors",
    "case_descriptors",
    "export_settings",
    "is_up_to_date",
    "export_case",
    "export_files",
    "default_num_processes",
    "summarize",
    "csv_table",
    "find_raw_dataset",
    "list_label_files",
    "export_dataset",
]

# Bump when the computed values or the file layout change: it is part of the settings hash,
# so existing exports are recomputed instead of being skipped as up to date.
EXPORTER_VERSION = 1
CSV_FILE_NAME = "descriptors.csv"
GEOMETRY_FIELDS = ("centroid_mm", "centroid_world_mm", "centroid_voxel", "spread_mm", "covariance_mm2",
                   "principal_axes_mm", "elongation", "flatness")


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
    holds as ``(c, 1, y, x)`` with a dummy first spacing (999 x): the export drops that axis
    and reports D = 2.

    SimpleITKIO: ``sitk_stuff`` gives origin/direction/spacing in ITK order. NibabelIO(WithReorient):
    the array is the NIfTI voxel array transposed to (k, j, i), the affine maps (i, j, k) to
    RAS; it is converted to ITK's LPS convention (x and y negated) with spacing = column norms.
    Readers without a geometry (tif, png): zero origin and identity direction.
    """
    spatial = tuple(int(n) for n in array_shape[1:])
    spacing = tuple(float(s) for s in properties["spacing"])
    sitk_stuff = properties.get("sitk_stuff")
    nib_stuff = properties.get("nibabel_stuff")
    if sitk_stuff is not None:
        native_2d = len(sitk_stuff["spacing"]) == 2
    else:
        native_2d = nib_stuff is None and spatial[0] == 1 and spacing[0] >= 999 * max(spacing[1:])
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


def read_label_map(path: str | os.PathLike, reader_class: type) -> tuple[np.ndarray, Geometry]:
    """Integer label map ``(*S)`` in nnU-Net's array order and its :class:`Geometry`."""
    seg, properties = reader_class().read_seg(str(path))
    native_2d, geometry = geometry_from_properties(properties, seg.shape)
    labels = seg[0, 0] if native_2d else seg[0]
    rounded = np.rint(labels)
    if not np.array_equal(rounded, labels):
        raise ValueError(f"read_label_map: {path} holds non-integer values; is it a label map?")
    return rounded.astype(np.int32), geometry


# ---------------------------------------------------------------------------------------
# descriptors of one case
# ---------------------------------------------------------------------------------------


def _floats(array: Any) -> Any:
    """Tensor/ndarray -> nested lists of Python floats (exact repr round trip in JSON)."""
    return np.asarray(array, dtype=np.float64).tolist()


def class_descriptors(labels: np.ndarray, spec: ClassSpec, geometry: Geometry) -> dict[str, Any]:
    """The JSON object of one class (or region) of a label map.

    Descriptors come from :func:`nnunet_shape.core.descriptors.compute_descriptors` in float64 on
    the binary mask cropped to its bounding box plus one voxel (so every inside/outside face
    pair of the full image is kept; the centroid is shifted back by the crop offset).
    An absent class gives ``voxels: 0``, volume and surface 0 and null geometry.
    """
    import torch

    from nnunet_shape.core import descriptors as core

    mask = np.isin(labels, spec.labels) if spec.region_labels is not None else labels == spec.label
    voxels = int(np.count_nonzero(mask))
    entry: dict[str, Any] = {"label": spec.label}
    if spec.region_labels is not None:
        entry["region_labels"] = list(spec.region_labels)
    entry["voxels"] = voxels
    if voxels == 0:
        entry.update({"volume_mm3": 0.0, "surface_mm2": 0.0})
        entry.update({name: None for name in GEOMETRY_FIELDS})
        return entry

    dim = labels.ndim
    low, high = [], []
    for axis in range(dim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(dim) if a != axis)))
        low.append(max(int(occupied[0]) - 1, 0))
        high.append(min(int(occupied[-1]) + 2, labels.shape[axis]))
    crop = mask[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
    probs = torch.from_numpy(crop.astype(np.float64))[None, None]
    spacing = torch.tensor(geometry.spacing_mm, dtype=torch.float64)
    values = core.compute_descriptors(probs, spacing, names=("volume", "centroid", "covariance", "spread", "surface"))
    covariance = values["covariance"][0, 0]
    offset_mm = np.asarray(low, dtype=np.float64) * np.asarray(geometry.spacing_mm)
    centroid_mm = values["centroid"][0, 0].numpy() + offset_mm
    lengths, vectors = core.principal_axes(covariance)
    axes_rows = vectors.numpy().T  # row i = unit axis i (the core returns columns)
    entry.update({
        "volume_mm3": float(values["volume"][0, 0]),
        "surface_mm2": float(values["surface"][0, 0]),
        "centroid_mm": _floats(centroid_mm),
        "centroid_world_mm": _floats(geometry.world_point(centroid_mm)),
        "centroid_voxel": _floats(centroid_mm / np.asarray(geometry.spacing_mm)),
        "spread_mm": _floats(values["spread"][0, 0]),
        "covariance_mm2": _floats(covariance),
        "principal_axes_mm": {
            "lengths": _floats(lengths),
            "vectors": _floats(axes_rows),
            "vectors_world": _floats([geometry.world_vector(v) for v in axes_rows]),
        },
        "elongation": float(core.elongation(covariance)),
        "flatness": float(core.flatness(covariance)) if dim == 3 else None,
    })
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
) -> dict[str, Any]:
    """The complete v1 JSON object of one case (``kind: "measured"``)."""
    return {
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
        "classes": {spec.name: class_descriptors(labels, spec, geometry) for spec in specs},
    }


# ---------------------------------------------------------------------------------------
# one case on disk, idempotent
# ---------------------------------------------------------------------------------------


def export_settings(specs: Sequence[ClassSpec], reader_class: type) -> dict[str, Any]:
    """Everything besides the source file that determines a case file's content."""
    return {
        "exporter_version": EXPORTER_VERSION,
        "schema": SCHEMA_ID,
        "reader": f"{reader_class.__module__}.{reader_class.__qualname__}",
        "classes": [[s.name, s.label, list(s.region_labels) if s.region_labels is not None else None] for s in specs],
    }


def _settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _source_record(path: Path, reader_class: type) -> dict[str, Any]:
    stat = path.stat()
    return {"file": str(path.resolve()), "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "reader": reader_class.__name__}


def is_up_to_date(output_path: Path, source: Mapping[str, Any], settings_hash: str) -> bool:
    """True when ``output_path`` exists and was made from the same file (path, size, mtime) and settings."""
    try:
        with open(output_path, encoding="utf-8") as handle:
            old = json.load(handle)
    except (OSError, ValueError):
        return False
    if not isinstance(old, dict) or old.get("schema") != SCHEMA_ID or old.get("kind") != "measured":
        return False
    old_source = old.get("source") or {}
    same_source = all(old_source.get(k) == source[k] for k in ("file", "size_bytes", "mtime_ns"))
    return same_source and (old.get("export") or {}).get("settings_hash") == settings_hash


@dataclass(frozen=True)
class ExportTask:
    """One case to export (picklable: sent to worker processes)."""

    case_id: str
    source_path: str
    output_path: str
    specs: tuple[ClassSpec, ...]
    reader_class: type
    overwrite: bool = False


def export_case(task: ExportTask) -> str:
    """Export one case; returns "computed" or "skipped" (up to date and no overwrite)."""
    source_path = Path(task.source_path)
    settings = export_settings(task.specs, task.reader_class)
    settings_hash = _settings_hash(settings)
    source = _source_record(source_path, task.reader_class)
    if not task.overwrite and is_up_to_date(Path(task.output_path), source, settings_hash):
        return "skipped"
    labels, geometry = read_label_map(source_path, task.reader_class)
    export = {"tool": f"nnunet-shape {_package_version} (descriptor_export v{EXPORTER_VERSION})",
              "settings_hash": settings_hash, "settings": settings}
    obj = case_descriptors(labels, geometry, task.specs, task.case_id, source, export)
    write_json_atomic(task.output_path, obj)
    return "computed"


def _export_case_in_worker(task: ExportTask) -> tuple[str, str]:
    return task.case_id, export_case(task)


def _init_worker() -> None:
    # worker processes share the machine: one torch thread each, the parallelism is --np
    import torch

    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------
# folder export, summary and CSV
# ---------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What a folder export did. ``computed``/``skipped``: case ids; ``written``: other files rewritten."""

    output_folder: Path
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def _stats(values: list[Any]) -> dict[str, Any] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {"mean": _floats(array.mean(0)), "std": _floats(array.std(0)),
            "min": _floats(array.min(0)), "max": _floats(array.max(0))}


SUMMARY_FIELDS = ("voxels", "volume_mm3", "surface_mm2", "centroid_mm", "centroid_world_mm", "spread_mm",
                  "elongation", "flatness")


def summarize(cases: Sequence[Mapping[str, Any]], specs: Sequence[ClassSpec], dataset_name: str | None = None
              ) -> dict[str, Any]:
    """``summary.json`` content: per class counts and mean/std/min/max of the numeric fields.

    Statistics run over the cases where the class is present (``voxels > 0``); std is the
    population standard deviation (ddof = 0); vectors are summarised per component.
    ``principal_axis_lengths_mm`` summarises ``principal_axes_mm.lengths``.
    """
    classes: dict[str, Any] = {}
    for spec in specs:
        entries = [case["classes"][spec.name] for case in cases]
        present = [e for e in entries if e["voxels"] > 0]
        summary: dict[str, Any] = {"label": spec.label}
        if spec.region_labels is not None:
            summary["region_labels"] = list(spec.region_labels)
        summary.update({"cases": len(entries), "cases_present": len(present),
                        "cases_absent": len(entries) - len(present)})
        for name in SUMMARY_FIELDS:
            summary[name] = _stats([e[name] for e in present if e[name] is not None])
        summary["principal_axis_lengths_mm"] = _stats([e["principal_axes_mm"]["lengths"] for e in present])
        classes[spec.name] = summary
    return {
        "schema": SCHEMA_ID,
        "kind": "summary",
        "dataset": dataset_name,
        "num_cases": len(cases),
        "case_ids": [case["case_id"] for case in cases],
        "statistics": "over cases where the class is present (voxels > 0); std with ddof = 0",
        "classes": classes,
    }


def csv_table(cases: Sequence[Mapping[str, Any]]) -> str:
    """One CSV row per (case, class) with flattened columns; empty cells for null geometry.

    Vector columns are named by axis: ``centroid_world_x_mm`` (world x, y, z),
    ``centroid_z_mm`` / ``centroid_voxel_z`` / ``spread_z_mm`` (array axes), covariance as
    ``covariance_zy_mm2`` (upper triangle), ``principal_axis_1_mm`` (descending lengths).
    """
    if not cases:
        return ""
    axes = cases[0]["axis_order"]
    world_axes = ("x", "y", "z")[: len(cases[0]["origin_mm"])]
    columns = ["case_id", "class", "label", "voxels", "volume_mm3", "surface_mm2"]
    columns += [f"centroid_world_{a}_mm" for a in world_axes]
    columns += [f"centroid_{a}_mm" for a in axes]
    columns += [f"centroid_voxel_{a}" for a in axes]
    columns += [f"spread_{a}_mm" for a in axes]
    pairs = [(i, j) for i in range(len(axes)) for j in range(i, len(axes))]
    columns += [f"covariance_{axes[i]}{axes[j]}_mm2" for i, j in pairs]
    columns += [f"principal_axis_{i + 1}_mm" for i in range(len(axes))]
    columns += ["elongation", "flatness", "source_file"]

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for case in cases:
        for name, entry in case["classes"].items():
            row: dict[str, Any] = {"case_id": case["case_id"], "class": name, "label": entry["label"],
                                   "voxels": entry["voxels"], "volume_mm3": entry["volume_mm3"],
                                   "surface_mm2": entry["surface_mm2"], "elongation": entry["elongation"],
                                   "flatness": entry["flatness"], "source_file": case["source"]["file"]}

            def put(prefix: str, suffix: str, names: Sequence[str], value: Any) -> None:
                for index, axis in enumerate(names):
                    row[f"{prefix}{axis}{suffix}"] = None if value is None else value[index]

            put("centroid_world_", "_mm", world_axes, entry["centroid_world_mm"])
            put("centroid_", "_mm", axes, entry["centroid_mm"])
            put("centroid_voxel_", "", axes, entry["centroid_voxel"])
            put("spread_", "_mm", axes, entry["spread_mm"])
            covariance = entry["covariance_mm2"]
            for i, j in pairs:
                row[f"covariance_{axes[i]}{axes[j]}_mm2"] = None if covariance is None else covariance[i][j]
            lengths = None if entry["principal_axes_mm"] is None else entry["principal_axes_mm"]["lengths"]
            put("principal_axis_", "_mm", [str(i + 1) for i in range(len(axes))], lengths)
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    write_text_atomic(path, text)
    return True


def default_num_processes() -> int:
    """nnU-Net's default worker count (``nnUNet_def_n_proc``, else 8), read at call time."""
    from nnunetv2.configuration import default_num_processes as nnunet_default

    return int(os.environ.get("nnUNet_def_n_proc", nnunet_default))


def export_files(
    files: Mapping[str, str | os.PathLike],
    output_folder: str | os.PathLike,
    dataset_json: Mapping[str, Any],
    num_processes: int | None = None,
    overwrite: bool = False,
    write_csv: bool = False,
    dataset_name: str | None = None,
) -> ExportReport:
    """Export ``{case_id: label map}`` to ``output_folder``, then summary.json (and descriptors.csv).

    Cases whose file (path, size, mtime) and export settings are unchanged are skipped
    unless ``overwrite``. summary.json / descriptors.csv cover exactly ``files`` and are only
    rewritten when their content changes, so a repeated run touches no file.
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    output = Path(output_folder)
    output.mkdir(parents=True, exist_ok=True)
    report = ExportReport(output_folder=output)
    specs = tuple(class_specs_from_dataset_json(dataset_json))
    case_ids = sorted(files)
    if case_ids:
        example = str(files[case_ids[0]])
        reader_class = determine_reader_writer_from_dataset_json(dict(dataset_json), example, verbose=False)
        tasks = [ExportTask(case_id, str(files[case_id]), str(output / f"{case_id}.json"), specs, reader_class,
                            overwrite) for case_id in case_ids]
        if num_processes is None:
            num_processes = default_num_processes()
        num_processes = max(1, min(int(num_processes), len(tasks)))
        if num_processes == 1:
            results = [_export_case_in_worker(task) for task in tasks]
        else:
            # spawn: no fork of a parent that may hold torch threads / CUDA state
            context = multiprocessing.get_context("spawn")
            with context.Pool(num_processes, initializer=_init_worker) as pool:
                results = list(pool.imap_unordered(_export_case_in_worker, tasks))
        for case_id, status in sorted(results):
            (report.computed if status == "computed" else report.skipped).append(case_id)

    cases = []
    for case_id in case_ids:
        with open(output / f"{case_id}.json", encoding="utf-8") as handle:
            cases.append(json.load(handle))
    summary = summarize(cases, specs, dataset_name)
    if _write_if_changed(output / SUMMARY_FILE_NAME, json.dumps(summary, indent=2, allow_nan=False) + "\n"):
        report.written.append(SUMMARY_FILE_NAME)
    if write_csv and _write_if_changed(output / CSV_FILE_NAME, csv_table(cases)):
        report.written.append(CSV_FILE_NAME)
    return report


# ---------------------------------------------------------------------------------------
# nnU-Net dataset layout
# ---------------------------------------------------------------------------------------


def find_raw_dataset(dataset: str | int, raw_root: str | os.PathLike | None = None) -> Path:
    """``$nnUNet_raw/DatasetXXX_Name`` for an id (``701``, ``"701"``) or a full name.

    Reads ``nnUNet_raw`` at call time (nnunetv2.paths freezes it at import).
    """
    root = raw_root if raw_root is not None else os.environ.get("nnUNet_raw")
    if not root:
        raise FileNotFoundError("find_raw_dataset: nnUNet_raw is not set; export it or pass -i")
    root = Path(root)
    text = str(dataset)
    if re.fullmatch(r"\d+", text):
        matches = sorted(root.glob(f"Dataset{int(text):03d}_*"))
        if len(matches) != 1:
            found = [m.name for m in matches]
            raise FileNotFoundError(f"find_raw_dataset: expected one Dataset{int(text):03d}_* in {root}, "
                                    f"found {found}")
        return matches[0]
    candidate = root / text
    if not candidate.is_dir():
        raise FileNotFoundError(f"find_raw_dataset: {candidate} does not exist")
    return candidate


def list_label_files(folder: str | os.PathLike, file_ending: str) -> dict[str, Path]:
    """``{case_id: path}`` of the label maps in a folder (files ending in ``file_ending``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"list_label_files: {folder} does not exist")
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")}


def _training_label_files(raw_folder: Path, dataset_json: Mapping[str, Any]) -> dict[str, Path]:
    if "dataset" in dataset_json:  # nnU-Net's explicit file list variant of dataset.json
        out = {}
        for case_id, entry in dataset_json["dataset"].items():
            label = os.path.expandvars(entry["label"])
            out[case_id] = Path(label) if os.path.isabs(label) else raw_folder / label
        return out
    return list_label_files(raw_folder / "labelsTr", dataset_json["file_ending"])


def export_dataset(
    dataset: str | int | None = None,
    input_folder: str | os.PathLike | None = None,
    output_folder: str | os.PathLike | None = None,
    num_processes: int | None = None,
    overwrite: bool = False,
    write_csv: bool = False,
) -> ExportReport:
    """The CLI's work: labelsTr of a raw dataset (``dataset`` only) or any folder of label maps.

    ``dataset.json`` comes from the raw dataset when ``dataset`` is given, else from
    ``input_folder/dataset.json`` (nnU-Net copies it into prediction folders). The default
    output is ``<raw dataset>/descriptorsTr`` for labelsTr and required for ``input_folder``.
    """
    raw_folder = find_raw_dataset(dataset) if dataset is not None else None
    if raw_folder is not None:
        dataset_json_path = raw_folder / "dataset.json"
    elif input_folder is not None:
        dataset_json_path = Path(input_folder) / "dataset.json"
    else:
        raise ValueError("export_dataset: give a dataset (-d) or an input folder (-i)")
    if not dataset_json_path.is_file():
        raise FileNotFoundError(f"export_dataset: {dataset_json_path} not found; pass -d DATASET")
    with open(dataset_json_path, encoding="utf-8") as handle:
        dataset_json = json.load(handle)
    if input_folder is not None:
        files = list_label_files(input_folder, dataset_json["file_ending"])
        if output_folder is None:
            raise ValueError("export_dataset: -o is required with -i")
    else:
        files = _training_label_files(raw_folder, dataset_json)
        if output_folder is None:
            output_folder = raw_folder / "descriptorsTr"
    name = raw_folder.name if raw_folder is not None else dataset_json.get("name")
    return export_files(files, output_folder, dataset_json, num_processes=num_processes, overwrite=overwrite,
                        write_csv=write_csv, dataset_name=name)
