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
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.descriptor_files.measure import mask_descriptors, volume_and_centroid_errors
from nnunet_shape.errors import check_image_file_complete, load_dataset_json, prepare_output_folder
from nnunet_shape.nnunet.frames import drop_nnunet_2d_axis

__all__ = [
    "DESCRIPTOR_METRICS",
    "descriptor_errors_case",
    "evaluate_folder",
    "format_markdown_table",
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


def main(argv: Sequence[str] | None = None) -> int:
    """``nnunet-shape evaluate -ref REF -pred PRED -djfile dataset.json [-o OUT] [--np N]``"""
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
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    summary = evaluate_folder(args.ref, args.pred, args.djfile,
                              output_dir=args.o if args.o is not None else args.pred,
                              num_processes=args.num_processes, chill=args.chill)
    print(format_markdown_table(summary), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
