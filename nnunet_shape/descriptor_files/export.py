"""Export label maps as per-case descriptor files (``nnUNetv2_export_descriptors``).

One case: :func:`export_case` measures the label map (:mod:`.measure`) and writes
``<case>.json`` atomically (:mod:`.atomic`), unless the file is up to date. A folder export
(:func:`export_files`, :func:`export_dataset`) adds ``summary.json`` and, on request,
``descriptors.csv``; unchanged cases are skipped. :func:`find_raw_dataset` and
:func:`list_label_files` locate the label maps of an nnU-Net raw dataset.
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
from nnunet_shape.descriptor_files.atomic import write_json_atomic, write_text_atomic
from nnunet_shape.descriptor_files.measure import (
    LabelIndex,
    case_descriptors,
    geometry_mismatch,
    image_geometry,
    index_labels,
    json_floats,
    read_image_channels,
    read_label_map,
)
from nnunet_shape.descriptor_files.model import (
    SCHEMA_ID,
    SUMMARY_FILE_NAME,
    ClassSpec,
    class_specs_from_dataset_json,
    named_label_values,
)
from nnunet_shape.errors import (
    UserError,
    check_image_file_complete,
    load_dataset_json,
    one_line,
    prepare_output_folder,
)

__all__ = [
    "EXPORTER_VERSION",
    "CSV_FILE_NAME",
    "ExportTask",
    "ExportReport",
    "export_settings",
    "is_up_to_date",
    "export_case",
    "export_files",
    "default_num_processes",
    "summarize",
    "csv_table",
    "find_raw_dataset",
    "list_label_files",
    "training_label_files",
    "training_image_files",
    "training_image_channel_files",
    "image_channel_files",
    "export_dataset",
]

# Bump when the computed values or the file layout change: it is part of the settings hash,
# so existing exports are recomputed instead of being skipped as up to date.
# 2: label values and the image geometry are checked; exports made before are re-checked.
EXPORTER_VERSION = 2
CSV_FILE_NAME = "descriptors.csv"


# ---------------------------------------------------------------------------------------
# one case on disk, idempotent
# ---------------------------------------------------------------------------------------


def export_settings(specs: Sequence[ClassSpec], reader_class: type, intensity: bool = False) -> dict[str, Any]:
    """Everything besides the source file that determines a case file's content. ``intensity``
    (``--intensity``) adds ``"intensity": true``; without it the settings -- and the hash of
    exports made before the option existed -- are unchanged."""
    settings = {
        "exporter_version": EXPORTER_VERSION,
        "schema": SCHEMA_ID,
        "reader": f"{reader_class.__module__}.{reader_class.__qualname__}",
        "classes": [[s.name, s.label, list(s.region_labels) if s.region_labels is not None else None] for s in specs],
    }
    if intensity:
        settings["intensity"] = True
    return settings


def _settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _source_record(path: Path, reader_class: type) -> dict[str, Any]:
    stat = path.stat()
    return {"file": str(path.resolve()), "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "reader": reader_class.__name__}


def _file_record(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": str(path.resolve()), "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_up_to_date(output_path: Path, source: Mapping[str, Any], settings_hash: str,
                  image_files: Sequence[Mapping[str, Any]] | None = None) -> bool:
    """True when ``output_path`` exists and was made from the same file (path, size, mtime) and settings
    (and, with ``image_files``, from the same image files: ``image_intensity.files``)."""
    try:
        with open(output_path, encoding="utf-8") as handle:
            old = json.load(handle)
    except (OSError, ValueError):
        return False
    if not isinstance(old, dict) or old.get("schema") != SCHEMA_ID or old.get("kind") != "measured":
        return False
    old_source = old.get("source") or {}
    same_source = all(old_source.get(k) == source[k] for k in ("file", "size_bytes", "mtime_ns"))
    if image_files is not None and ((old.get("image_intensity") or {}).get("files") != [dict(f) for f in image_files]):
        return False
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
    #: every label value dataset.json names; a map holding another value is refused (None: allowed,
    #: ``--ignore-unknown-labels``; such voxels belong to no class)
    known_labels: tuple[int, ...] | None = None
    #: the case's image (imagesTr/<case>_0000...): the label map's geometry must match it
    image_path: str | None = None
    #: ``--intensity``: every channel's image file (<case>_0000..., <case>_0001...), read together
    #: with nnU-Net's reader; the file then gets ``image_intensity`` and each class's ``intensity``
    intensity_images: tuple[str, ...] | None = None


def _check_labels_and_image(task: ExportTask, labels: np.ndarray, geometry: Any, index: LabelIndex) -> None:
    """The label map against dataset.json (no unnamed value) and against its image (same grid)."""
    if task.known_labels is not None and index.unknown:
        shown = ", ".join(str(v) for v in index.unknown[:10]) + (" ..." if len(index.unknown) > 10 else "")
        raise UserError(f"{task.source_path} (case {task.case_id!r}) holds label value(s) {shown} that "
                        f"dataset.json does not name (its labels: {sorted(task.known_labels)}); their voxels would "
                        f"vanish from every descriptor. Fix the labels or dataset.json, or pass "
                        f"--ignore-unknown-labels")
    if task.image_path is not None:
        difference = geometry_mismatch(geometry, image_geometry(task.image_path, task.reader_class))
        if difference is not None:
            raise UserError(f"{task.source_path} (case {task.case_id!r}) does not match its image {task.image_path}: "
                            f"{difference} (label map vs image); the descriptors would describe another grid")


def export_case(task: ExportTask) -> str:
    """Export one case; returns "computed" or "skipped" (up to date and no overwrite).

    Before anything is written: the label map must read completely (a truncated ``.nii.gz`` is
    refused), hold only label values dataset.json names (unless ``known_labels`` is None) and
    have its image's shape, spacing, origin and direction (when ``image_path`` is given); each
    failure is a UserError naming the file and both values.
    """
    source_path = Path(task.source_path)
    settings = export_settings(task.specs, task.reader_class, intensity=task.intensity_images is not None)
    settings_hash = _settings_hash(settings)
    source = _source_record(source_path, task.reader_class)
    image_files = None
    if task.intensity_images is not None:
        for path in task.intensity_images:
            if not Path(path).is_file():
                raise UserError(f"case {task.case_id!r}: --intensity needs its image {path}, which does not exist")
        image_files = [_file_record(Path(path)) for path in task.intensity_images]
    if not task.overwrite and is_up_to_date(Path(task.output_path), source, settings_hash, image_files):
        return "skipped"
    labels, geometry = read_label_map(source_path, task.reader_class)
    measured = [v for spec in task.specs for v in spec.labels]
    index = index_labels(labels, measured if task.known_labels is None else task.known_labels)
    _check_labels_and_image(task, labels, geometry, index)
    image = None
    if task.intensity_images is not None:
        image, image_grid = read_image_channels(task.intensity_images, task.reader_class, task.case_id)
        difference = geometry_mismatch(geometry, image_grid)
        if difference is not None:
            raise UserError(f"{task.source_path} (case {task.case_id!r}) does not match its image "
                            f"{task.intensity_images[0]}: {difference} (label map vs image); the intensities would "
                            f"be measured on another grid")
    export = {"tool": f"nnunet-shape {_package_version} (descriptor_export v{EXPORTER_VERSION})",
              "settings_hash": settings_hash, "settings": settings}
    obj = case_descriptors(labels, geometry, task.specs, task.case_id, source, export, index, image, image_files)
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
    return {"mean": json_floats(array.mean(0)), "std": json_floats(array.std(0)),
            "min": json_floats(array.min(0)), "max": json_floats(array.max(0))}


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
        with_intensity = [e["intensity"] for e in present if e.get("intensity") is not None]
        if with_intensity:  # --intensity: raw per-channel statistics of the class (exports without it: no key)
            summary["intensity_mean"] = _stats([i["mean"] for i in with_intensity])
            summary["intensity_std"] = _stats([i["std"] for i in with_intensity])
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
    columns += ["elongation", "flatness"]
    channels = len(cases[0]["image_intensity"]["mean"]) if "image_intensity" in cases[0] else 0
    columns += [f"intensity_{stat}_{c}" for c in range(channels) for stat in ("mean", "std")]
    columns += ["source_file"]

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
            for stat in ("mean", "std") if channels else ():
                put(f"intensity_{stat}_", "", [str(c) for c in range(channels)],
                    None if entry.get("intensity") is None else entry["intensity"][stat])
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
    *,
    ignore_unknown_labels: bool = False,
    images: Mapping[str, str | os.PathLike] | None = None,
    intensity_images: Mapping[str, Sequence[str | os.PathLike]] | None = None,
) -> ExportReport:
    """Export ``{case_id: label map}`` to ``output_folder``, then summary.json (and descriptors.csv).

    Cases whose file (path, size, mtime) and export settings are unchanged are skipped
    unless ``overwrite``. summary.json / descriptors.csv cover exactly ``files`` and are only
    rewritten when their content changes, so a repeated run touches no file.

    Checked per case (:func:`export_case`): the file reads completely, its label values are
    named in dataset.json (unless ``ignore_unknown_labels``) and, for the cases in ``images``
    ({case_id: image file}), its geometry is the image's. The output folder must be a writable
    folder (checked before any case is read).

    ``intensity_images`` ({case_id: [channel 0 file, channel 1 file, ...]}, ``--intensity``): every
    case must have an entry; its files add the intensity blocks (docs/descriptor-json.md).
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    output = prepare_output_folder(output_folder)
    report = ExportReport(output_folder=output)
    specs = tuple(class_specs_from_dataset_json(dataset_json))
    known = None if ignore_unknown_labels else tuple(sorted(named_label_values(dataset_json)))
    images = images or {}
    case_ids = sorted(files)
    for case_id in case_ids:  # O(1) per file: a cut copy is refused before any case is computed
        check_image_file_complete(files[case_id])
    if intensity_images is not None:
        missing = [case_id for case_id in case_ids if case_id not in intensity_images]
        if missing:
            raise UserError(f"case {missing[0]!r} ({files[missing[0]]}): --intensity needs its image, but no image "
                            f"file was found for it")
    if case_ids:
        example = str(files[case_ids[0]])
        try:
            reader_class = determine_reader_writer_from_dataset_json(dict(dataset_json), example, verbose=False)
        except RuntimeError as error:  # nnU-Net tries every reader on the file
            raise UserError(f"{example}: no nnU-Net reader can read it ({one_line(error)})") from None
        tasks = [ExportTask(case_id, str(files[case_id]), str(output / f"{case_id}.json"), specs, reader_class,
                            overwrite, known, str(images[case_id]) if case_id in images else None,
                            None if intensity_images is None else tuple(str(p) for p in intensity_images[case_id]))
                 for case_id in case_ids]
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


def training_label_files(raw_folder: Path, dataset_json: Mapping[str, Any]) -> dict[str, Path]:
    """{case id: label file} of a raw dataset: ``labelsTr`` by ``file_ending``, or the explicit
    ``dataset`` file list of nnU-Net's alternative dataset.json layout."""
    if "dataset" in dataset_json:  # nnU-Net's explicit file list variant of dataset.json
        out = {}
        for case_id, entry in dataset_json["dataset"].items():
            label = os.path.expandvars(entry["label"])
            out[case_id] = Path(label) if os.path.isabs(label) else raw_folder / label
        return out
    return list_label_files(raw_folder / "labelsTr", dataset_json["file_ending"])


def training_image_files(raw_folder: Path, dataset_json: Mapping[str, Any]) -> dict[str, Path]:
    """{case id: first channel image} of a raw dataset: ``imagesTr/<case>_0000<file_ending>``, or the
    first of the explicit ``dataset`` entry's images."""
    if "dataset" in dataset_json:
        out = {}
        for case_id, entry in dataset_json["dataset"].items():
            first = os.path.expandvars(entry["images"][0])
            out[case_id] = Path(first) if os.path.isabs(first) else raw_folder / first
        return out
    ending = dataset_json["file_ending"]
    folder = raw_folder / "imagesTr"
    suffix = f"_0000{ending}"
    return {p.name[: -len(suffix)]: p for p in sorted(folder.glob(f"*{suffix}"))} if folder.is_dir() else {}


def _channel_count(dataset_json: Mapping[str, Any]) -> int:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, Mapping) or not names:
        raise UserError("dataset.json has no 'channel_names': --intensity cannot tell how many image channels "
                        "a case has")
    return len(names)


def image_channel_files(folder: str | os.PathLike, case_ids: Sequence[str], dataset_json: Mapping[str, Any]
                        ) -> dict[str, list[Path]]:
    """{case id: [``<folder>/<case>_0000<file_ending>``, ``..._0001...``, ...]}, one file per channel of
    ``dataset.json["channel_names"]`` (nnU-Net's naming); a missing file is a UserError naming the
    case and the file."""
    folder = Path(folder)
    ending = dataset_json["file_ending"]
    out = {}
    for case_id in case_ids:
        paths = [folder / f"{case_id}_{c:04d}{ending}" for c in range(_channel_count(dataset_json))]
        for path in paths:
            if not path.is_file():
                raise UserError(f"case {case_id!r}: --intensity needs its image {path}, which does not exist")
        out[case_id] = paths
    return out


def training_image_channel_files(raw_folder: Path, dataset_json: Mapping[str, Any], case_ids: Sequence[str]
                                 ) -> dict[str, list[Path]]:
    """Every channel's image of each training case: ``imagesTr/<case>_XXXX<file_ending>``, or the
    explicit ``dataset`` entry's ``images`` (nnU-Net's alternative dataset.json layout)."""
    if "dataset" not in dataset_json:
        return image_channel_files(raw_folder / "imagesTr", case_ids, dataset_json)
    out = {}
    for case_id in case_ids:
        entry = dataset_json["dataset"].get(case_id)
        if entry is None:
            raise UserError(f"case {case_id!r}: dataset.json's 'dataset' list has no images for it (--intensity)")
        paths = [Path(os.path.expandvars(p)) for p in entry["images"]]
        paths = [p if p.is_absolute() else raw_folder / p for p in paths]
        for path in paths:
            if not path.is_file():
                raise UserError(f"case {case_id!r}: --intensity needs its image {path}, which does not exist")
        out[case_id] = paths
    return out


def export_dataset(
    dataset: str | int | None = None,
    input_folder: str | os.PathLike | None = None,
    output_folder: str | os.PathLike | None = None,
    num_processes: int | None = None,
    overwrite: bool = False,
    write_csv: bool = False,
    ignore_unknown_labels: bool = False,
    intensity: bool = False,
    images_folder: str | os.PathLike | None = None,
) -> ExportReport:
    """The CLI's work: labelsTr of a raw dataset (``dataset`` only) or any folder of label maps.

    ``intensity`` (``--intensity``): also measure the raw image inside every class and over the
    image (the intensity blocks of docs/descriptor-json.md), from ``imagesTr/<case>_XXXX`` (labelsTr)
    or ``images_folder/<case>_XXXX`` (required with ``input_folder``), every channel of
    ``dataset.json["channel_names"]``.

    A broken dataset.json, a folder without any ``file_ending`` file and, per case, the checks of
    :func:`export_files` (labelsTr: against ``imagesTr/<case>_0000<file_ending>`` when it exists)
    are UserErrors.

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
    dataset_json = load_dataset_json(dataset_json_path)
    images: dict[str, Path] = {}
    if input_folder is not None:
        files = list_label_files(input_folder, dataset_json["file_ending"])
        where = Path(input_folder)
        if output_folder is None:
            raise ValueError("export_dataset: -o is required with -i")
    else:
        files = training_label_files(raw_folder, dataset_json)
        where = raw_folder / "labelsTr"
        images = {case: path for case, path in training_image_files(raw_folder, dataset_json).items()
                  if case in files and path.is_file()}
        if output_folder is None:
            output_folder = raw_folder / "descriptorsTr"
    if not files:
        raise UserError(f"no '*{dataset_json['file_ending']}' label maps in {where} (the file_ending of "
                        f"{dataset_json_path}): nothing to export")
    intensity_images = None
    if intensity and images_folder is not None:
        intensity_images = image_channel_files(images_folder, sorted(files), dataset_json)
    elif intensity and input_folder is not None:
        raise UserError(f"--intensity with -i {input_folder} needs --images FOLDER (the raw images "
                        f"<case>_0000{dataset_json['file_ending']}, ... of these label maps)")
    elif intensity:
        intensity_images = training_image_channel_files(raw_folder, dataset_json, sorted(files))
    name = raw_folder.name if raw_folder is not None else dataset_json.get("name")
    return export_files(files, output_folder, dataset_json, num_processes=num_processes, overwrite=overwrite,
                        write_csv=write_csv, dataset_name=name, ignore_unknown_labels=ignore_unknown_labels,
                        images=images, intensity_images=intensity_images)
