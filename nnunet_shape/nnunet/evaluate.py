"""Dice per class (nnU-Net's own evaluation) plus descriptor errors (``nnunet-shape evaluate``).

For a folder of predicted segmentations and the matching reference folder this computes

* nnU-Net's metrics through ``nnunetv2.evaluation.evaluate_predictions.
  compute_metrics_on_folder`` (Dice, IoU, TP/FP/FN/TN, n_pred, n_ref; Dice NaN when a class is
  absent from both reference and prediction, exactly as nnU-Net), and
* shape-descriptor errors per class from :func:`nnunet_shape.descriptor_files.measure.mask_descriptors`
  and :func:`~nnunet_shape.descriptor_files.measure.volume_and_centroid_errors` (the measurement
  of the descriptor export; physical units from the spacing the nnU-Net reader reports for each
  reference file, nnU-Net's dummy axis of 2-D images dropped by :mod:`nnunet_shape.nnunet.frames`):

  ======================== =================================================================
  ``Volume_ref_mm3``        reference volume ``V_ref`` (mm^3)
  ``Volume_pred_mm3``       predicted volume ``V_pred`` (mm^3)
  ``RelativeVolumeError``   ``|V_pred - V_ref| / V_ref``; NaN if ``V_ref = 0``
  ``CentroidDistance_mm``   Euclidean distance of the centroids (mm); NaN if either is empty
  ======================== =================================================================

Results follow nnU-Net's ``summary.json`` layout: ``metric_per_case`` (one entry per
prediction, ``metrics`` keyed by label or region), ``mean`` (NaN-ignoring mean over cases, as
nnU-Net) and ``foreground_mean`` (mean of the class means, as nnU-Net); this module adds
``std`` (NaN-ignoring std over cases), ``n_cases`` (finite values per class and metric) and
``class_names``. With an output folder it writes nnU-Net's ``summary.json`` unchanged,
``summary_shape.json`` (the merged result) and ``summary_shape.md`` (a Markdown table).

:func:`evaluate_with_baselines` (``nnunet-shape evaluate --postprocessing PKL --baselines-from
LABELS``) adds, when asked, two reports beside ``summary_shape.json``:

* ``--postprocessing``: the ``postprocessing.pkl`` of ``nnunet-shape determine-postprocessing``
  applied to the predictions (into ``OUT/chosen/``, evaluated there); the **chosen** result is the
  headline, the raw one below it, with the per-label decisions of the companion
  ``postprocessing.json`` (``summary_postprocessing.json``);
* ``--baselines-from``: the no-image baselines of :mod:`nnunet_shape.nnunet.baselines` made from
  those training label maps for the reference cases (into ``OUT/baselines/<baseline>/``), evaluated
  with the same code and compared with the prediction and with **chance**
  (:func:`chance_dice`): mean Dice per class (``summary_baselines.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.descriptor_files.measure import mask_descriptors, volume_and_centroid_errors
from nnunet_shape.errors import UserError, check_image_file_complete, load_dataset_json, prepare_output_folder
from nnunet_shape.nnunet.frames import drop_nnunet_2d_axis

__all__ = [
    "DESCRIPTOR_METRICS",
    "chance_dice",
    "descriptor_errors_case",
    "evaluate_folder",
    "evaluate_with_baselines",
    "format_comparison_table",
    "format_markdown_table",
    "format_report",
    "save_summary",
    "main",
]

DESCRIPTOR_METRICS: tuple[str, ...] = (
    "Volume_ref_mm3",
    "Volume_pred_mm3",
    "RelativeVolumeError",
    "CentroidDistance_mm",
)

def _load_dataset_json(dataset_json: str | os.PathLike | Mapping[str, Any]) -> dict:
    if isinstance(dataset_json, Mapping):
        return dict(dataset_json)
    return load_dataset_json(dataset_json)


def descriptor_errors_case(
    reference_file: str,
    prediction_file: str,
    image_reader_writer: Any,
    labels_or_regions: Sequence[int | tuple[int, ...]],
    ignore_label: int | None = None,
) -> dict:
    """Descriptor errors of one case, keyed like nnU-Net's ``compute_metrics``.

    Returns ``{"reference_file", "prediction_file", "spacing", "metrics": {label_or_region:
    {metric: value}}}`` with the metrics of :data:`DESCRIPTOR_METRICS`. Voxels carrying the
    ignore label in the reference are left out of both masks (nnU-Net does the same for Dice).
    """
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    seg_ref, properties_ref = image_reader_writer.read_seg(reference_file)
    seg_pred, properties_pred = image_reader_writer.read_seg(prediction_file)
    if seg_ref.shape != seg_pred.shape:
        raise ValueError(
            f"shape mismatch between reference {reference_file} {seg_ref.shape} "
            f"and prediction {prediction_file} {seg_pred.shape}"
        )
    spacing_ref = [float(s) for s in properties_ref["spacing"]]
    if not np.allclose(spacing_ref, properties_pred["spacing"]):
        raise ValueError(
            f"spacing mismatch between reference {reference_file} {spacing_ref} "
            f"and prediction {prediction_file} {list(properties_pred['spacing'])}"
        )
    # drop nnU-Net's channel axis, then the dummy axis of a 2-D image (it would scale every area by ~1000)
    (seg_ref, seg_pred), spacing = drop_nnunet_2d_axis((seg_ref[0], seg_pred[0]), spacing_ref)
    valid = None if ignore_label is None else seg_ref != ignore_label

    metrics: dict = {}
    for region in labels_or_regions:
        mask_ref = region_or_label_to_mask(seg_ref, region)
        mask_pred = region_or_label_to_mask(seg_pred, region)
        if valid is not None:
            mask_ref = mask_ref & valid
            mask_pred = mask_pred & valid
        ref = mask_descriptors(mask_ref, spacing, names=("volume", "centroid"))
        pred = mask_descriptors(mask_pred, spacing, names=("volume", "centroid"))
        volume_ref, volume_pred = float(ref["volume"]), float(pred["volume"])
        # an empty mask's centroid is the core's placeholder 0, not a position
        relative_volume_error, centroid_distance = volume_and_centroid_errors(
            volume_ref, volume_pred, ref["centroid"] if mask_ref.any() else None,
            pred["centroid"] if mask_pred.any() else None)
        metrics[region] = {
            "Volume_ref_mm3": volume_ref,
            "Volume_pred_mm3": volume_pred,
            # NaN without a reference volume; the absolute volumes above stay reported
            "RelativeVolumeError": relative_volume_error,
            "CentroidDistance_mm": centroid_distance,
        }
    return {
        "reference_file": reference_file,
        "prediction_file": prediction_file,
        "spacing": spacing,
        "metrics": metrics,
    }


def _nan_statistic(values: Sequence[float], statistic: str) -> float:
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).any():
        return math.nan
    array = array[np.isfinite(array)]
    return float(array.mean() if statistic == "mean" else array.std())


def _key_to_str(key: Any) -> str:
    # nnU-Net's label_or_region_to_key: str(1) -> "1", str((1, 2)) -> "(1, 2)"
    return str(key)


def save_summary(summary: Mapping[str, Any], output_file: str | os.PathLike) -> None:
    """Write a merged summary as JSON (label/region keys as strings, as nnU-Net's
    ``save_summary_json``; NaN written as ``NaN`` like nnU-Net), atomically."""
    converted = deepcopy(dict(summary))
    for name in ("mean", "std", "n_cases", "class_names"):
        if name in converted:
            converted[name] = {_key_to_str(k): v for k, v in converted[name].items()}
    for case in converted["metric_per_case"]:
        case["metrics"] = {_key_to_str(k): v for k, v in case["metrics"].items()}
    output_file = Path(output_file)
    temporary = output_file.with_name(".tmp_" + output_file.name)
    temporary.write_text(json.dumps(converted, sort_keys=True, indent=4))
    os.replace(temporary, output_file)


def _class_names(labels: Mapping[str, Any], regions: Sequence[Any]) -> dict:
    """label or region -> its name in dataset.json["labels"] (regions are the label values,
    lists turned into tuples, exactly as nnU-Net's LabelManager builds them)."""
    by_value = {tuple(v) if isinstance(v, list) else v: name for name, v in labels.items()}
    return {region: by_value.get(region, str(region)) for region in regions}


def evaluate_folder(
    ref: str | os.PathLike,
    pred: str | os.PathLike,
    dataset_json: str | os.PathLike | Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
    num_processes: int = 1,
    chill: bool = False,
) -> dict:
    """Dice per class (nnU-Net) and descriptor errors of every prediction in ``pred``.

    Args:
        ref: folder of reference segmentations (e.g. ``labelsTs``).
        pred: folder of predictions with the same file names (``dataset.json["file_ending"]``).
        dataset_json: path to ``dataset.json`` or its content (labels, file ending, reader).
        output_dir: if given, write ``summary.json`` (nnU-Net's, unchanged),
            ``summary_shape.json`` and ``summary_shape.md`` there.
        num_processes: worker processes (nnU-Net's pool for Dice; the same for descriptors).
        chill: as nnU-Net's ``--chill``: allow references without a prediction.
    Returns:
        The merged summary (see the module docstring); label keys are ints (tuples for
        regions) as in nnU-Net's in-memory summaries.
    """
    from batchgenerators.utilities.file_and_folder_operations import subfiles
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    ref, pred = str(ref), str(pred)
    dataset = _load_dataset_json(dataset_json)
    file_ending = dataset["file_ending"]
    files_pred = subfiles(pred, suffix=file_ending, join=False)
    if not files_pred:
        raise FileNotFoundError(f"no '*{file_ending}' predictions in {pred}")
    missing = [f for f in files_pred if not os.path.isfile(os.path.join(ref, f))]
    if missing:
        raise FileNotFoundError(f"predictions without a reference in {ref}: {missing}")
    for name in files_pred:  # O(1) each: SimpleITK would read a cut .nii.gz as zeros, i.e. a wrong Dice
        check_image_file_complete(os.path.join(pred, name))
        check_image_file_complete(os.path.join(ref, name))
    reader_writer = determine_reader_writer_from_dataset_json(
        dataset, os.path.join(ref, files_pred[0]), verbose=False)()
    label_manager = LabelManager(dataset["labels"], regions_class_order=dataset.get("regions_class_order"))
    regions = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    # plain ints / tuples of ints (LabelManager may hand out numpy integers): JSON-able keys
    regions = [tuple(int(v) for v in r) if isinstance(r, (tuple, list)) else int(r) for r in regions]
    ignore_label = label_manager.ignore_label

    if output_dir is not None:
        prepare_output_folder(output_dir)
    nnunet_summary = compute_metrics_on_folder(
        ref, pred,
        None if output_dir is None else os.path.join(str(output_dir), "summary.json"),
        reader_writer, file_ending, regions, ignore_label,
        num_processes=max(1, int(num_processes)), chill=chill,
    )

    jobs = [(os.path.join(ref, f), os.path.join(pred, f), reader_writer, regions, ignore_label)
            for f in files_pred]
    if num_processes > 1:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            descriptor_results = pool.starmap(descriptor_errors_case, jobs)
    else:
        descriptor_results = [descriptor_errors_case(*job) for job in jobs]

    summary = deepcopy(nnunet_summary)
    by_prediction = {os.path.basename(r["prediction_file"]): r for r in descriptor_results}
    for case in summary["metric_per_case"]:
        extra = by_prediction[os.path.basename(case["prediction_file"])]
        case["spacing"] = extra["spacing"]
        for region in regions:
            case["metrics"][region].update(extra["metrics"][region])

    metric_names = list(summary["metric_per_case"][0]["metrics"][regions[0]].keys())
    summary["std"], summary["n_cases"] = {}, {}
    for region in regions:
        per_metric = {m: [c["metrics"][region][m] for c in summary["metric_per_case"]]
                      for m in metric_names}
        for m in DESCRIPTOR_METRICS:  # nnU-Net's own means stay untouched
            summary["mean"][region][m] = _nan_statistic(per_metric[m], "mean")
        summary["std"][region] = {m: _nan_statistic(v, "std") for m, v in per_metric.items()}
        summary["n_cases"][region] = {
            m: int(np.isfinite(np.asarray(v, dtype=np.float64)).sum()) for m, v in per_metric.items()}
    for m in DESCRIPTOR_METRICS:
        # as nnU-Net: plain mean of the class means (NaN if a class mean is NaN)
        summary["foreground_mean"][m] = float(np.mean([summary["mean"][r][m] for r in regions]))
    summary["class_names"] = _class_names(dataset["labels"], regions)

    if output_dir is not None:
        save_summary(summary, os.path.join(str(output_dir), "summary_shape.json"))
        markdown = os.path.join(str(output_dir), "summary_shape.md")
        with open(markdown + ".tmp", "w") as handle:
            handle.write(format_markdown_table(summary))
        os.replace(markdown + ".tmp", markdown)
    return summary


def _format(mean: float, std: float | None, digits: int) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


_TABLE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("Dice", "Dice", 3),
    ("IoU", "IoU", 3),
    ("RelativeVolumeError", "rel. volume error", 3),
    ("CentroidDistance_mm", "centroid distance (mm)", 2),
)


def format_markdown_table(summary: Mapping[str, Any]) -> str:
    """Markdown table of mean ± std over cases per class (rows) and a foreground-mean row.

    Accepts the dict of :func:`evaluate_folder` or the same loaded from ``summary_shape.json``
    (string keys). "n/a" marks a metric without any finite value.
    """
    names = summary.get("class_names", {})
    stds = summary.get("std", {})
    cases = len(summary["metric_per_case"])
    header = ["class", "label", "cases"] + [title for _, title, _ in _TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, mean in summary["mean"].items():
        std = stds.get(key, {})
        cells = [str(names.get(key, key)), _key_to_str(key), str(cases)]
        cells += [_format(mean.get(m, math.nan), std.get(m), d) for m, _, d in _TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    foreground = summary["foreground_mean"]
    cells = ["foreground mean", "", str(cases)]
    cells += [_format(foreground.get(m, math.nan), None, d) for m, _, d in _TABLE_COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# chance, the no-image baselines and the chosen postprocessing
# ------------------------------------------------------------------------------------------


def chance_dice(summary: Mapping[str, Any]) -> dict[str, float]:
    """Expected Dice of a prediction that labels voxels at random with the true class frequencies.

    For a class covering a fraction ``f`` of the volume, a random labelling with that frequency
    has ``E[TP] = N f^2`` and Dice ``2 N f^2 / (2 N f) = f``: the chance Dice of a class is its
    volume fraction (``n_ref / (TP + FP + FN + TN)``), averaged here over the cases of ``summary``
    (an :func:`evaluate_folder` summary, or the same loaded from JSON), per class name.
    """
    names = summary.get("class_names", {})
    result = {}
    for key in summary["mean"]:
        fractions = []
        for case in summary["metric_per_case"]:
            m = case["metrics"][key]
            total = m["TP"] + m["FP"] + m["FN"] + m["TN"]
            fractions.append(m["n_ref"] / total if total > 0 else math.nan)
        result[str(names.get(key, key))] = float(sum(fractions) / len(fractions)) if fractions else math.nan
    return result


#: title of each row of the comparison table, by kind
_ROW_TITLES = {
    "chosen": "prediction (chosen postprocessing)",
    "raw": "prediction (raw)",
    "prediction": "prediction",
    "atlas": "atlas (majority of the training labels)",
    "descriptor_ellipsoids": "descriptor ellipsoids (mean centroid and covariance)",
    "chance": "chance (class volume fraction)",
}


def _mean_dice(summary: Mapping[str, Any]) -> dict[str, float]:
    names = summary.get("class_names", {})
    return {str(names.get(key, key)): float(mean.get("Dice", math.nan)) for key, mean in summary["mean"].items()}


def _dice_row(kind: str, per_class: Mapping[str, float], folder: str | None = None,
              foreground: float | None = None) -> dict:
    values = [float(v) for v in per_class.values()]
    if foreground is None:  # as nnU-Net's foreground_mean: the plain mean of the class means
        foreground = float(np.mean(values)) if values else math.nan
    return {"kind": kind, "title": _ROW_TITLES[kind], "folder": folder, "mean_dice": dict(per_class),
            "foreground_mean_dice": float(foreground)}


def _summary_row(kind: str, summary: Mapping[str, Any], folder: str | os.PathLike) -> dict:
    return _dice_row(kind, _mean_dice(summary), str(folder), float(summary["foreground_mean"]["Dice"]))


def format_comparison_table(comparison: Mapping[str, Any]) -> str:
    """Markdown table of mean Dice per class (columns) for each row of ``comparison["rows"]``
    (prediction, atlas, descriptor ellipsoids, chance), with the mean over classes first."""
    classes = list(comparison["classes"])
    header = ["", "mean over classes", *classes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in comparison["rows"]:
        cells = [row["title"], _format(row["foreground_mean_dice"], None, 3)]
        cells += [_format(row["mean_dice"].get(c, math.nan), None, 3) for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_report(result: Mapping[str, Any]) -> str:
    """What ``nnunet-shape evaluate`` prints for an :func:`evaluate_with_baselines` result: the table of
    :func:`format_markdown_table` alone without options; with ``--postprocessing`` the chosen table
    first (the headline), its decisions, then the raw table; with ``--baselines-from`` the comparison."""
    chosen, post = result.get("chosen"), result.get("postprocessing")
    if chosen is None:
        text = format_markdown_table(result["raw"])
    else:
        text = f"## Chosen postprocessing ({post['postprocessing_pkl']})\n\n" + format_markdown_table(chosen)
        if post["decision_lines"]:
            text += "\n" + "".join(f"- {line}\n" for line in post["decision_lines"])
        text += "\n## Raw predictions (no postprocessing)\n\n" + format_markdown_table(result["raw"])
    comparison = result.get("comparison")
    if comparison is not None:
        left_out = comparison["left_out_reference_cases"]
        text += ("\n## Prediction vs no-image baselines (mean Dice per class)\n\n"
                 + format_comparison_table(comparison)
                 + f"\nBaselines from {comparison['training_maps']} training label maps in "
                   f"{comparison['training_label_folder']}"
                 + (f" ({len(left_out)} reference cases left out)" if left_out else "") + ".\n")
    return text


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    temporary = path.with_name(".tmp_" + path.name)
    temporary.write_text(json.dumps(content, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def _remove_stale(folder: Path, keep: Sequence[str], file_ending: str) -> None:
    """Predictions of other cases left in one of our output folders by an earlier run would be
    evaluated too: remove every ``*file_ending`` file not in ``keep``."""
    for path in folder.iterdir():
        if path.is_file() and path.name.endswith(file_ending) and path.name not in keep:
            path.unlink()


def _postprocess(ref: str, pred: str, dataset: dict, names: list[str], postprocessing: str | os.PathLike,
                 folder: Path, num_processes: int, chill: bool, device: str | None) -> tuple[dict, dict]:
    """The pkl applied to the predictions ``names`` into ``folder``, evaluated; the decisions of the
    companion ``postprocessing.json`` (beside the pkl) when it exists."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_shape.errors import load_json_file
    from nnunet_shape.nnunet.postprocessing import (
        apply_postprocessing_to_files,
        decision_lines,
        default_device,
        load_postprocessing_pkl,
    )

    pp_fns, pp_fn_kwargs = load_postprocessing_pkl(postprocessing)
    reader_writer = determine_reader_writer_from_dataset_json(dataset, os.path.join(pred, names[0]), verbose=False)()
    prepare_output_folder(folder)
    _remove_stale(folder, names, dataset["file_ending"])
    apply_postprocessing_to_files(pred, folder, names, reader_writer, pp_fns, pp_fn_kwargs,
                                  device=device or default_device())
    chosen = evaluate_folder(ref, folder, dataset, folder, num_processes, chill)
    companion = Path(postprocessing).with_name("postprocessing.json")
    decisions = None
    if companion.is_file():
        content = load_json_file(companion, "postprocessing.json")
        decisions = content.get("decisions") if isinstance(content, dict) else None
    if decisions:
        lines = decision_lines(decisions)
    else:  # an older or hand-made pkl: at least the steps it applies
        lines = [f"step {i + 1}: {getattr(f, '__name__', str(f))}({kwargs})"
                 for i, (f, kwargs) in enumerate(zip(pp_fns, pp_fn_kwargs))] or ["no step: the predictions unchanged"]
    record = {
        "postprocessing_pkl": str(postprocessing),
        "decisions_file": str(companion) if decisions else None,
        "decisions": decisions or [],
        "decision_lines": lines,
        "steps": [{"function": getattr(f, "__name__", str(f)), "kwargs": kwargs}
                  for f, kwargs in zip(pp_fns, pp_fn_kwargs)],
        "chosen_folder": str(folder),
    }
    return chosen, record


def evaluate_with_baselines(
    ref: str | os.PathLike,
    pred: str | os.PathLike,
    dataset_json: str | os.PathLike | Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
    *,
    baselines_from: str | os.PathLike | None = None,
    postprocessing: str | os.PathLike | None = None,
    work_folder: str | os.PathLike | None = None,
    num_processes: int = 1,
    chill: bool = False,
    device: str | None = None,
) -> dict:
    """:func:`evaluate_folder`, plus the chosen postprocessing and the no-image baselines when asked.

    Args:
        ref, pred, dataset_json, output_dir, num_processes, chill: as :func:`evaluate_folder`
            (the raw predictions are evaluated exactly as there, files included).
        baselines_from: folder of training label maps (e.g. ``labelsTr``): the baselines of
            :func:`nnunet_shape.nnunet.baselines.write_baseline_predictions` for the reference
            cases of the predictions (a training map of a reference case is left out), written to
            ``WORK/baselines/<baseline>/`` and evaluated with the same code; with ``output_dir``,
            ``summary_baselines.json`` there.
        postprocessing: a ``postprocessing.pkl`` (``nnunet-shape determine-postprocessing``),
            applied to the predictions into ``WORK/chosen/`` on ``device`` (default: CUDA when
            available) and evaluated; with ``output_dir``, ``summary_postprocessing.json`` there.
        work_folder: where ``chosen/`` and ``baselines/`` go (each also gets the files of
            :func:`evaluate_folder`); default ``output_dir``, or a temporary folder (removed) when
            both are None.
    Returns:
        ``{"raw", "chosen", "postprocessing", "baselines", "comparison", "report"}``: the summaries
        of the raw and the postprocessed predictions (None without ``postprocessing``), the
        decisions, ``{baseline: summary}``, the comparison (mean Dice per class of the prediction --
        chosen and raw when postprocessed --, each baseline and chance; None without
        ``baselines_from``) and the printed text (:func:`format_report`).
    """
    import contextlib

    dataset = _load_dataset_json(dataset_json)
    ref, pred = str(ref), str(pred)
    raw = evaluate_folder(ref, pred, dataset, output_dir, num_processes, chill)
    result: dict[str, Any] = {"raw": raw, "chosen": None, "postprocessing": None, "baselines": None,
                              "comparison": None}
    if baselines_from is None and postprocessing is None:
        result["report"] = format_report(result)
        return result
    names = [os.path.basename(case["prediction_file"]) for case in raw["metric_per_case"]]
    ending = dataset["file_ending"]
    with contextlib.ExitStack() as stack:
        work = work_folder if work_folder is not None else output_dir
        if work is None:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="nnunet_shape_evaluate_"))
        work = prepare_output_folder(work)
        if postprocessing is not None:
            chosen, record = _postprocess(ref, pred, dataset, names, postprocessing, work / "chosen",
                                          num_processes, chill, device)
            result["chosen"], result["postprocessing"] = chosen, record
            if output_dir is not None:
                _write_json(Path(output_dir) / "summary_postprocessing.json", {
                    **record,
                    "chosen": {"mean_dice": _mean_dice(chosen),
                               "foreground_mean_dice": chosen["foreground_mean"]["Dice"]},
                    "raw": {"mean_dice": _mean_dice(raw), "foreground_mean_dice": raw["foreground_mean"]["Dice"]},
                })
        if baselines_from is not None:
            from nnunet_shape.nnunet.baselines import BASELINES, BASELINES_JSON, write_baseline_predictions

            folder = Path(baselines_from)
            if not folder.is_dir():
                raise UserError(f"--baselines-from {folder}: not a folder of training label maps")
            training = sorted(p for p in folder.iterdir()
                              if p.is_file() and p.name.endswith(ending) and not p.name.startswith("."))
            if not training:
                raise UserError(f"--baselines-from {folder} holds no '*{ending}' label map (the dataset's file_ending)")
            baselines_folder = work / "baselines"
            written = write_baseline_predictions(dataset, training, [Path(ref) / n for n in names], baselines_folder,
                                                 BASELINES, num_processes)
            summaries = {}
            for baseline, baseline_folder in written.items():
                _remove_stale(baseline_folder, names, ending)
                summaries[baseline] = evaluate_folder(ref, baseline_folder, dataset, baseline_folder,
                                                      num_processes, chill)
            record = json.loads((baselines_folder / BASELINES_JSON).read_text())
            headline = result["chosen"] if result["chosen"] is not None else raw
            rows = []
            if result["chosen"] is not None:
                rows.append(_summary_row("chosen", result["chosen"], work / "chosen"))
                rows.append(_summary_row("raw", raw, pred))
            else:
                rows.append(_summary_row("prediction", raw, pred))
            rows += [_summary_row(b, summaries[b], written[b]) for b in BASELINES if b in summaries]
            rows.append(_dice_row("chance", chance_dice(raw)))
            comparison = {
                "classes": list(_mean_dice(headline)),
                "rows": rows,
                "training_label_folder": str(folder),
                "training_maps": len(record["training_cases"]),
                "left_out_reference_cases": record["left_out_target_cases"],
                "baselines_folder": str(baselines_folder),
                "rules": record["rules"],
            }
            result["baselines"], result["comparison"] = summaries, comparison
            if output_dir is not None:
                _write_json(Path(output_dir) / "summary_baselines.json", comparison)
        result["report"] = format_report(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``nnunet-shape evaluate -ref REF -pred PRED -djfile dataset.json [-o OUT] [--np N] [--postprocessing PKL]
    [--baselines-from LABELS_FOLDER]``"""
    parser = argparse.ArgumentParser(
        prog="nnunet-shape evaluate",
        description="Dice per class (nnU-Net's evaluation) and shape-descriptor errors "
        "(relative volume error, centroid distance in mm) of a prediction folder.",
    )
    parser.add_argument("-ref", required=True, help="folder with reference segmentations")
    parser.add_argument("-pred", required=True, help="folder with predicted segmentations")
    parser.add_argument("-djfile", required=True, help="dataset.json of the dataset")
    parser.add_argument("-o", default=None,
                        help="output folder for summary.json, summary_shape.json/.md "
                        "(default: the prediction folder, like nnU-Net)")
    parser.add_argument("--np", dest="num_processes", type=int, default=1,
                        help="worker processes (default 1)")
    parser.add_argument("--chill", action="store_true",
                        help="do not fail if some references have no prediction")
    parser.add_argument("--postprocessing", default=None, metavar="PKL",
                        help="postprocessing.pkl of nnunet-shape determine-postprocessing: applied to the predictions "
                        "into OUT/chosen/ and reported as the headline (the raw table below it, the decisions of the "
                        "postprocessing.json beside the pkl); summary_postprocessing.json")
    parser.add_argument("--baselines-from", default=None, metavar="LABELS_FOLDER",
                        help="training label maps (e.g. labelsTr): the no-image baselines (atlas, descriptor "
                        "ellipsoids) for the reference cases into OUT/baselines/, compared with the prediction and "
                        "chance (mean Dice per class); summary_baselines.json")
    parser.add_argument("-device", "--device", default=None,
                        help="torch device for --postprocessing (default: cuda when available)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    output_dir = args.o if args.o is not None else args.pred
    if args.postprocessing is None and args.baselines_from is None:
        summary = evaluate_folder(args.ref, args.pred, args.djfile, output_dir=output_dir,
                                  num_processes=args.num_processes, chill=args.chill)
        print(format_markdown_table(summary), end="")
        return 0
    # without -o the summaries go to the prediction folder (as nnU-Net's), the written folders to a temporary one
    with tempfile.TemporaryDirectory(prefix="nnunet_shape_evaluate_") as temporary:
        result = evaluate_with_baselines(
            args.ref, args.pred, args.djfile, output_dir, baselines_from=args.baselines_from,
            postprocessing=args.postprocessing, work_folder=args.o if args.o is not None else temporary,
            num_processes=args.num_processes, chill=args.chill, device=args.device)
    print(result["report"], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
