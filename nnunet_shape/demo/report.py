"""The demo's report: Table 1 and the descriptor errors as markdown and CSV, figures, ``report.md``.

The table functions are pure functions of ``evaluate_folder`` summaries (tests/test_demo.py
checks them by hand-computed values); :func:`write_report` assembles ``OUTPUT/report.md``.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nnunet_shape.demo.console import StageRecord
from nnunet_shape.demo.settings import (
    CLEARLY_ABOVE_CHANCE,
    CONFIGURATION,
    HEADLINE_POSTPROCESSING,
    KNEE,
    POSTPROCESSING_VARIANTS,
    SETTINGS,
    TIME_BUDGET_SECONDS,
    VALUES_PER_CLASS,
    DemoData,
    DemoOptions,
    Setting,
    descriptor_value_count,
    optimizer_description,
    ordered_settings,
    superior_inferior_patch_axis,
    voxel_annotation_count,
)

# the chance rule lives with the evaluation (one rule in one place); re-exported for the demo's callers
from nnunet_shape.nnunet.evaluate import chance_dice

__all__ = [
    "TableRow", "chance_dice", "table_rows", "format_dice_table", "BASELINE_TITLES", "baseline_rows",
    "baseline_verdict", "format_descriptor_error_table",
    "ordering_text", "ordering_verdict", "write_table_csv", "write_descriptor_errors_csv", "copy_curves",
    "case_overlay",
    "format_postprocessing_decisions", "compartments_found", "format_compartment_table",
    "write_report", "command_line", "format_multi_seed_table",
]

@dataclass
class TableRow:
    """One row of Table 1: Dice (0..1) per class name, mean and std over the test cases."""

    setting: str
    trainer: str
    postprocessing: str
    avg_dice: float
    dice_mean: dict[str, float]
    dice_std: dict[str, float]
    annotations: int
    annotation_unit: str


def _class_order(summary: Mapping[str, Any]) -> list[tuple[Any, str]]:
    names = summary.get("class_names", {})
    return [(key, str(names.get(key, key))) for key in summary["mean"]]


def table_rows(summaries: Mapping[tuple[str, str], Mapping[str, Any]], settings: Sequence[Setting],
               trainer_suffix: str, case_shape: Sequence[int], n_classes: int, ndim: int = 3
               ) -> list[TableRow]:
    """Rows of Table 1 from ``{(setting slug, postprocessing variant): evaluate_folder summary}``,
    in settings order, then postprocessing order."""
    rows = []
    for setting in settings:
        for variant in POSTPROCESSING_VARIANTS:
            summary = summaries.get((setting.slug, variant))
            if summary is None:
                continue
            classes = _class_order(summary)
            if setting.descriptors is None:
                annotations, unit = voxel_annotation_count(case_shape), "voxels"
            else:
                annotations, unit = descriptor_value_count(setting.value_names, n_classes, ndim), "descriptor values"
            rows.append(TableRow(
                setting=setting.title, trainer=setting.trainer + trainer_suffix, postprocessing=variant,
                avg_dice=float(summary["foreground_mean"]["Dice"]),
                dice_mean={name: float(summary["mean"][key]["Dice"]) for key, name in classes},
                dice_std={name: float(summary.get("std", {}).get(key, {}).get("Dice", math.nan))
                          for key, name in classes},
                annotations=annotations, annotation_unit=unit))
    return rows


def _percent(value: float, std: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if std is None or not math.isfinite(std):
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} ± {100 * std:.1f}"


def format_dice_table(rows: Sequence[TableRow], postprocessing: str,
                      chance: Mapping[str, float] | None = None, baselines: Sequence[TableRow] = ()) -> str:
    """Markdown Table 1 (Dice in %, mean ± std over test cases) for one postprocessing variant;
    ``baselines`` (:func:`baseline_rows`, no postprocessing) and ``chance`` (:func:`chance_dice`)
    add the rows of what needs no test image."""
    selected = [r for r in rows if r.postprocessing == postprocessing]
    if not selected:
        raise ValueError(f"format_dice_table: no row with postprocessing {postprocessing!r}")
    classes = list(selected[0].dice_mean)
    header = ["Setting", "Avg"] + classes + ["# annotations per case"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in [*selected, *baselines]:
        cells = [row.setting, _percent(row.avg_dice)]
        cells += [_percent(row.dice_mean[c], row.dice_std.get(c)) for c in classes]
        cells.append(f"{row.annotations:,} {row.annotation_unit}")
        lines.append("| " + " | ".join(cells) + " |")
    if chance is not None:
        values = [chance.get(c, math.nan) for c in classes]
        average = sum(values) / len(values) if values else math.nan
        cells = ["Chance (random voxels at the true class frequencies)", _percent(average)]
        cells += [_percent(v) for v in values] + ["-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: the no-image baselines of every demo report (nnunet_shape.nnunet.baselines), by name
BASELINE_TITLES: dict[str, str] = {
    "atlas": "Atlas: majority of the training label maps (no image)",
    "descriptor_ellipsoids": "Descriptor ellipsoids: mean training centroid and covariance (no image)",
}


def baseline_rows(summaries: Mapping[str, Mapping[str, Any]], case_shape: Sequence[int], n_classes: int,
                  ndim: int = 3) -> list[TableRow]:
    """Table rows of the no-image baselines from ``{baseline name: evaluate_folder summary}``.

    Their annotation is what they are built from: the atlas every voxel of the training labels,
    the descriptor ellipsoids the V+C+D values of the training cases (no postprocessing: ``none``).
    """
    rows = []
    for name, summary in summaries.items():
        classes = _class_order(summary)
        if name == "atlas":
            annotations, unit = voxel_annotation_count(case_shape), "voxels (training labels)"
        else:
            annotations = descriptor_value_count(("volume", "centroid", "spread"), n_classes, ndim)
            unit = "descriptor values"
        rows.append(TableRow(
            setting=BASELINE_TITLES.get(name, name), trainer=name, postprocessing="none",
            avg_dice=float(summary["foreground_mean"]["Dice"]),
            dice_mean={c: float(summary["mean"][key]["Dice"]) for key, c in classes},
            dice_std={c: float(summary.get("std", {}).get(key, {}).get("Dice", math.nan)) for key, c in classes},
            annotations=annotations, annotation_unit=unit))
    return rows


def baseline_verdict(avg_dice: Mapping[str, float], baselines: Sequence[TableRow]) -> str:
    """Whether each descriptor-only row beats each no-image baseline on mean Dice (issue 14's bar:
    a descriptor model that does not beat the descriptor ellipsoids has learned nothing from the
    image; the atlas is the stronger bar)."""
    parts = []
    for setting in ordered_settings(list(avg_dice)):
        if setting.descriptors is None:
            continue
        dice = avg_dice[setting.slug]
        against = [f"{'beats' if dice > b.avg_dice else 'does NOT beat'} the "
                   f"{b.trainer.replace('_', ' ')} ({100 * dice:.1f} vs {100 * b.avg_dice:.1f} %)"
                   for b in baselines]
        parts.append(f"{setting.title} " + ", ".join(against))
    return "; ".join(parts)


def _mean_std(summary: Mapping[str, Any], key: Any, metric: str) -> tuple[float, float]:
    mean = float(summary["mean"][key].get(metric, math.nan))
    std = float(summary.get("std", {}).get(key, {}).get(metric, math.nan))
    return mean, std


def _plain(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_descriptor_error_table(summaries: Mapping[str, Mapping[str, Any]],
                                  settings: Sequence[Setting]) -> str:
    """Markdown table: per setting and class, relative volume error (%) and centroid distance (mm),
    mean ± std over the test cases. ``summaries``: setting slug -> evaluate_folder summary."""
    header = ["Setting", "Class", "Relative volume error (%)", "Centroid distance (mm)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in settings:
        summary = summaries.get(setting.slug)
        if summary is None:
            continue
        for key, name in _class_order(summary):
            volume_mean, volume_std = _mean_std(summary, key, "RelativeVolumeError")
            distance_mean, distance_std = _mean_std(summary, key, "CentroidDistance_mm")
            lines.append("| " + " | ".join([
                setting.title, name, _plain(100 * volume_mean, 100 * volume_std, 1),
                _plain(distance_mean, distance_std, 2)]) + " |")
    return "\n".join(lines) + "\n"


def _ordering_name(setting: Setting) -> str:
    return "full supervision" if setting.descriptors is None else setting.title


def ordering_text(slugs: Sequence[str]) -> str:
    """The expected ordering of the rows ``slugs`` in words, best first: ``"full supervision >
    V+C+D > V+C"`` (:data:`~nnunet_shape.demo.settings.EXPECTED_ORDER`)."""
    return " > ".join(_ordering_name(s) for s in ordered_settings(slugs))


def ordering_verdict(avg_dice: Mapping[str, float], chance: float,
                     margin: float = CLEARLY_ABOVE_CHANCE) -> tuple[bool, bool, str]:
    """Check the expected ordering on mean Dice -- paper 000's full supervision > V+C+D > V+C, with
    the image-aware row full supervision > V+C+D + image terms > V+C+D > V+C (strictly, every
    neighbouring pair) -- and every descriptor-only setting above ``chance + margin``.

    ``avg_dice``: setting slug (``full_supervision``, ``vcd``, ``vc``, optionally ``image_aware``)
    -> mean Dice (0..1). Returns ``(ordering holds, descriptor-only clearly above chance, one-line
    text)``.
    """
    missing = [slug for slug in ("full_supervision", "vcd", "vc") if slug not in avg_dice]
    if missing:
        raise ValueError(f"ordering_verdict: no mean Dice for {missing}; got {sorted(avg_dice)}")
    ranked = ordered_settings(list(avg_dice))
    values = [avg_dice[s.slug] for s in ranked]
    ordering = all(better > worse for better, worse in zip(values, values[1:]))
    descriptor_rows = [s for s in ranked if s.descriptors is not None]
    bar = chance + margin
    above = min(avg_dice[s.slug] for s in descriptor_rows) > bar

    def versus_chance(title: str, dice: float) -> str:
        return f"{title} {'clearly above' if dice > bar else 'NOT clearly above'} ({100 * dice:.1f} %)"

    text = (f"ordering {ordering_text(list(avg_dice))}: {'holds' if ordering else 'does NOT hold'} "
            f"({' / '.join(f'{100 * v:.1f}' for v in values)} % mean Dice); descriptor-only "
            f"training against chance ({100 * chance:.1f} % + {100 * margin:.0f} points = {100 * bar:.1f} %): "
            + ", ".join(versus_chance(s.title, avg_dice[s.slug]) for s in descriptor_rows))
    return ordering, above, text


def write_table_csv(rows: Sequence[TableRow], path: str | os.PathLike) -> Path:
    """Table 1 as CSV: one line per setting and postprocessing variant, Dice in 0..1."""
    path = Path(path)
    classes = list(rows[0].dice_mean) if rows else []
    header = ["setting", "trainer", "postprocessing", "avg_dice"]
    for c in classes:
        header += [f"dice_{c}_mean", f"dice_{c}_std"]
    header += ["annotations_per_case", "annotation_unit"]
    temporary = path.with_name(".tmp_" + path.name)
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            line: list[Any] = [row.setting, row.trainer, row.postprocessing, f"{row.avg_dice:.6f}"]
            for c in classes:
                line += [f"{row.dice_mean[c]:.6f}", f"{row.dice_std[c]:.6f}"]
            line += [row.annotations, row.annotation_unit]
            writer.writerow(line)
    os.replace(temporary, path)
    return path


def write_descriptor_errors_csv(summaries: Mapping[tuple[str, str], Mapping[str, Any]],
                                settings: Sequence[Setting], path: str | os.PathLike) -> Path:
    """Descriptor errors per setting, postprocessing variant and class (mean and std over cases)."""
    path = Path(path)
    temporary = path.with_name(".tmp_" + path.name)
    metrics = ("RelativeVolumeError", "CentroidDistance_mm", "Volume_ref_mm3", "Volume_pred_mm3")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "postprocessing", "class", "label"]
                        + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
        for setting in settings:
            for variant in POSTPROCESSING_VARIANTS:
                summary = summaries.get((setting.slug, variant))
                if summary is None:
                    continue
                for key, name in _class_order(summary):
                    values = []
                    for metric in metrics:
                        mean, std = _mean_std(summary, key, metric)
                        values += [f"{mean:.6g}", f"{std:.6g}"]
                    writer.writerow([setting.title, variant, name, key] + values)
    os.replace(temporary, path)
    return path

# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------

def copy_curves(output: Path, folders: Mapping[str, Path]) -> dict[str, list[Path]]:
    """nnU-Net's progress.png (and progress_descriptors.png) of every model -> OUTPUT/curves."""
    curves_folder = output / "curves"
    curves_folder.mkdir(parents=True, exist_ok=True)
    copied: dict[str, list[Path]] = {}
    for slug, folder in folders.items():
        copied[slug] = []
        for name in ("progress.png", "progress_descriptors.png"):
            if (folder / name).is_file():
                target = curves_folder / f"{slug}_{name}"
                shutil.copyfile(folder / name, target)
                copied[slug].append(target)
    return copied


def case_overlay(output: Path, raw_dataset: Path, predictions: Path, case: str, file_ending: str,
                 class_names: Mapping[int, str], settings: Sequence[Setting] = SETTINGS, data: DemoData = KNEE) -> Path:
    """The middle slice across array axis 0 and the slice with the most voxels of the data's detail
    classes (knee: mid sagittal and most cartilage; brains: mid axial and most white matter): image,
    ground truth and every model's (postprocessed) prediction."""
    import SimpleITK as sitk

    from nnunet_shape.demo.overlays import mid_slice, most_labelled_slice, save_overlay_figure

    def read(path: Path):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    image_file = raw_dataset / "imagesTs" / f"{case}_0000{file_ending}"
    itk_image = sitk.ReadImage(str(image_file))
    image = sitk.GetArrayFromImage(itk_image)
    spacing = tuple(reversed(itk_image.GetSpacing()))
    reference = read(raw_dataset / "labelsTs" / f"{case}{file_ending}")
    segmentations = {"ground truth": reference}
    for setting in settings:
        segmentations[setting.title] = read(predictions / setting.slug / HEADLINE_POSTPROCESSING
                                            / f"{case}{file_ending}")
    details = [label for label, name in class_names.items() if data.detail_class in name] or list(class_names)
    middle = mid_slice(image.shape, 0)
    detail = most_labelled_slice(reference, details, 0)
    indices = [middle] if detail == middle else [middle, detail]
    row_texts = [f"mid {data.overlay_plane} (z={middle})"] + (
        [] if detail == middle else [f"most {data.detail_class.replace('_', ' ')} (z={detail})"])
    return save_overlay_figure(image, segmentations, class_names, output / "overlays" / f"{case}.png",
                               indices, axis=0, spacing=spacing, title=f"{case} (test)",
                               slice_labels=row_texts)

# ------------------------------------------------------------------------------------------------
# postprocessing: what was chosen, and whether the models find every compartment
# ------------------------------------------------------------------------------------------------

def format_postprocessing_decisions(decisions: Mapping[str, Sequence[Mapping[str, Any]]],
                                    settings: Sequence[Setting]) -> str:
    """Markdown table: per setting (row) and decision step (column: all foreground, then each
    label), whether the step was applied and the validation Dice (%) before -> after.
    ``decisions``: setting slug -> ``postprocessing.json``'s ``decisions``."""
    columns: list[tuple[Any, str]] = []
    for setting in settings:
        for entry in decisions.get(setting.slug, []):
            key = (str(entry["label"]), entry["class"])
            if key not in columns:
                columns.append(key)
    header = ["Setting"] + [name if label != "foreground" else "all foreground" for label, name in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in settings:
        by_key = {(str(e["label"]), e["class"]): e for e in decisions.get(setting.slug, [])}
        cells = [setting.title]
        for key in columns:
            entry = by_key.get(key)
            if entry is None:
                cells.append("-")
                continue
            step = entry["step"].removeprefix("keep the ")
            verdict = f"**{step}**" if entry["applied"] else f"not applied ({step})"
            if entry.get("before") is not None and entry.get("after") is not None:
                verdict += f", {100 * entry['before']:.2f} → {100 * entry['after']:.2f}"
            cells.append(verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compartments_found(reference: Any, prediction: Any, min_fraction: float = 0.1) -> tuple[int, int]:
    """``(found, total)``: how many of the reference mask's connected components (26-connected)
    the prediction covers to at least ``min_fraction`` of their voxels, and how many there are."""
    import cc3d
    import numpy as np

    components, total = cc3d.connected_components(np.asarray(reference, dtype=np.uint8), connectivity=26,
                                                  return_N=True)
    if total == 0:
        return 0, 0
    sizes = np.bincount(components.ravel(), minlength=total + 1)
    covered = np.bincount(components[np.asarray(prediction, dtype=bool)].ravel(), minlength=total + 1)
    return int(np.sum(covered[1:] >= min_fraction * sizes[1:])), int(total)


def format_compartment_table(counts: Mapping[str, Mapping[int, Sequence[tuple[int, int]]]],
                             settings: Sequence[Setting], class_names: Mapping[int, str]) -> str:
    """Markdown table: per setting and class with several reference compartments, the test cases
    whose raw prediction finds every compartment (:func:`compartments_found`), and the per-case
    found/total counts. ``counts``: setting slug -> label -> per-case ``(found, total)``."""
    labels = sorted({label for per_label in counts.values() for label in per_label})
    header = ["Setting"] + [class_names.get(label, str(label)) for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in settings:
        cells = [setting.title]
        for label in labels:
            cases = counts.get(setting.slug, {}).get(label, [])
            complete = sum(found == total for found, total in cases)
            cells.append(f"{complete}/{len(cases)} cases ({', '.join(f'{f}/{t}' for f, t in cases)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------------

def _mirror_axes_text(mirror_axes: Mapping[str, tuple[int, ...] | None], plans: Mapping[str, Any],
                      settings: Sequence[Setting] = SETTINGS, data: DemoData = KNEE) -> str:
    per_setting = "; ".join(f"{s.title}: {mirror_axes[s.slug] if mirror_axes[s.slug] else 'none'}" for s in settings)
    return (f"{per_setting} (patch axes, read from the checkpoints; superior-inferior is patch axis "
            f"{superior_inferior_patch_axis(plans['transpose_forward'], data)})")


_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
#: where the place of the image-aware row in the expected ordering comes from
_IMAGE_TERMS_SOURCE = " and, for the image terms, issue 14"


def _class_names_of(summaries: Mapping[Any, Mapping[str, Any]]) -> dict[int, str]:
    """label -> class name, from the ``class_names`` of an evaluate_folder summary."""
    for summary in summaries.values():
        return {int(key): str(name) for key, name in summary.get("class_names", {}).items()}
    return {}


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def write_report(output: Path, options: DemoOptions, rows: Sequence[TableRow],
                 summaries: Mapping[tuple[str, str], Mapping[str, Any]], chance: Mapping[str, float],
                 verdict: str, records: Sequence[StageRecord], total_seconds: float,
                 schedules: Mapping[str, tuple[int, int, int]], trainers: Mapping[str, str], plans: dict,
                 curves: Mapping[str, list[Path]], overlays: Sequence[Path], case_shape: Sequence[int],
                 dataset_parameters: Mapping[str, Any], labels: Sequence[int],
                 mirror_axes: Mapping[str, tuple[int, ...] | None],
                 decisions: Mapping[str, Sequence[Mapping[str, Any]]],
                 compartments: Mapping[str, Mapping[int, Sequence[tuple[int, int]]]],
                 baselines: Sequence[TableRow] = (), baselines_text: str = "",
                 settings: Sequence[Setting] = SETTINGS, data: DemoData = KNEE) -> Path:
    """``OUTPUT/report.md`` of one run on ``data`` with the rows ``settings``.

    ``dataset_parameters``: the generator's record (``data.parameters_file``: ``cases`` with their
    ``split``, ``seed``, ``shape_zyx`` and the spacing, ``spacing_zyx_mm`` or isotropic ``spacing_mm``).
    """
    splits = [case["split"] for case in dataset_parameters["cases"].values()]
    grid = [int(s) for s in dataset_parameters["shape_zyx"]]
    spacing = [float(s) for s in dataset_parameters.get("spacing_zyx_mm") or [dataset_parameters["spacing_mm"]] * 3]
    configuration = plans["configurations"][CONFIGURATION]
    epochs, iterations, val_iterations = schedules[settings[0].slug]
    lines = [
        f"# nnunet-shape demo: paper 000's Table 1 on {data.title}",
        "",
        f"Run {datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'unknown host'} "
        f"({os.cpu_count()} CPU cores, device `{options.device}`): **{total_seconds / 60:.1f} min** in all "
        f"(budget {TIME_BUDGET_SECONDS / 60:.0f} min"
        f"{'' if total_seconds <= TIME_BUDGET_SECONDS else ' -- EXCEEDED'}).",
        "",
        f"Command: `python -m nnunet_shape.demo {' '.join(command_line(options))}`",
        "",
        "## Table 1 (test set, postprocessing chosen on the validation cases)",
        "",
        f"Dice in %, mean ± std over the test cases; *Avg* is the mean of the "
        f"{_COUNT_WORDS.get(len(labels), str(len(labels)))} class means "
        "(nnU-Net's foreground mean). Each model's postprocessing is the one nnU-Net's decision "
        f"chooses on its fold's validation predictions (`nnunet-shape determine-postprocessing`, fold "
        f"`{options.fold}`), as paper 000 reports it: a step is kept only where it improves the validation "
        "Dice (see the next table).",
        "",
        format_dice_table(rows, HEADLINE_POSTPROCESSING, chance, baselines),
        f"**Expected result** (paper 000{_IMAGE_TERMS_SOURCE if len(settings) > len(SETTINGS) else ''}: "
        f"{ordering_text([s.slug for s in settings])}, descriptor-only clearly above chance): {verdict}.",
        "",
        *([f"**Against the no-image baselines** (the atlas and the descriptor ellipsoids use no test image: a "
           f"descriptor model that does not beat the ellipsoids has learned nothing from the image): "
           f"{baselines_text}.", ""] if baselines_text else []),
        f"Scale of this run: {epochs * iterations:,} training iterations per model (batch size "
        f"{configuration['batch_size']}), against nnU-Net's default schedule of 1000 × 250 = 250,000. "
        "Voxel supervision gets a gradient for every voxel from the first iteration; descriptor "
        "supervision only gets a handful of numbers per class, and its first iterations mostly fit "
        "the volumes while the centroids are still far off (see the satisfaction curves in "
        "`curves/*_progress_descriptors.png`), so the descriptor rows are the ones a CPU-sized "
        "schedule hurts most.",
        "",
        "### The postprocessing chosen per label",
        "",
        "Per model and step of nnU-Net's decision (keep the largest component of the whole foreground, "
        "then of each label): **applied** or not, with the mean validation Dice (%) before → after the "
        "step (the whole foreground: the mean over labels). `postprocessing/<setting>/postprocessing.json` "
        "holds the same, `postprocessing.pkl` the steps (nnU-Net's format). The decision compares with "
        "the validation cases' voxel labels for every row, as nnU-Net does (the descriptor trainers here "
        "compute their targets from those labels); a label-free run (`…FromFile`, placeholder labels) "
        "is decided from its descriptor files instead (docs/usage.md, \"Largest-component postprocessing\").",
        "",
        format_postprocessing_decisions(decisions, settings),
        "### After the largest component of every label, unconditionally",
        "",
        format_dice_table(rows, "largest_component"),
        "Keeping the largest connected component of every label (nnU-Net's "
        "`remove_all_but_largest_component_from_segmentation`, full connectivity) whether it helps or "
        f"not. {data.largest_component_note}",
        "",
        "### Before postprocessing",
        "",
        format_dice_table(rows, "raw", baselines=baselines),
    ]
    if any(compartments.values()):
        lines += [
            "### Do the models find every compartment?",
            "",
            "Classes whose reference has several connected components: the test cases in which the raw "
            "prediction covers at least 10 % of every compartment, and per case the compartments found / "
            "present. The descriptor rows constrain one volume, centroid and spread per class, not per "
            "compartment (docs/method.md, \"Classes with several components\").",
            "",
            format_compartment_table(compartments, settings, _class_names_of(summaries)),
        ]
    lines += [

        "### How annotations are counted",
        "",
        f"* Full supervision: every voxel of a case is labelled: {' × '.join(str(s) for s in case_shape)} = "
        f"{voxel_annotation_count(case_shape):,} voxels (paper 000: 384 × 384 × 160 ≈ 24 million).",
    ]
    for setting in settings:
        if setting.descriptors is None:
            continue
        parts = " + ".join(f"{d} {VALUES_PER_CLASS[d](len(case_shape))}" for d in setting.value_names)
        lines.append(f"* {setting.title}: {len(labels)} classes × ({parts}) = "
                     f"{descriptor_value_count(setting.value_names, len(labels), len(case_shape))} values per case.")
    lines += [
        "* Paper 000 reports 16 (V+C) and 20 (V+C+D) shape descriptors: it counts the centroid as 3 "
        "values but 𝔇 as one descriptor per class, although the loss constrains one 𝔇 value per axis.",
        "",
        "## Descriptor errors (test set, postprocessing chosen on the validation cases)",
        "",
        "Relative volume error |V_pred − V_ref| / V_ref and distance between predicted and reference "
        "centroids (mm), from `nnunet-shape evaluate`; all variants in `descriptor_errors.csv`.",
        "",
        format_descriptor_error_table({s.slug: summaries[(s.slug, HEADLINE_POSTPROCESSING)] for s in settings},
                                      settings),
        "## Schedule",
        "",
        f"* {data.cases_title}: {splits.count('train')} training + {splits.count('test')} test cases, seed "
        f"{dataset_parameters['seed']}, grid {' × '.join(str(s) for s in grid)} (z, y, x), spacing "
        f"{' × '.join(f'{s:.3g}' for s in spacing)} mm ({data.grid_note}).",
        f"* nnU-Net: `{CONFIGURATION}`, fold `{options.fold}`, whole scan as one patch "
        f"{configuration['patch_size']}, batch size {configuration['batch_size']}, network "
        f"`{configuration['architecture']['network_class_name']}`.",
        f"* Every setting: trainer suffix `{options.trainer_suffix}` = {epochs} epochs × {iterations} "
        f"iterations ({epochs * iterations} training iterations, {val_iterations} validation iterations "
        f"per epoch), `nnUNet_n_proc_DA={options.n_proc_da}`.",
        f"* Mirroring (augmentation and test-time axes): {_mirror_axes_text(mirror_axes, plans, settings, data)}.",
        "* Optimiser: " + "; ".join(f"{s.title}: {optimizer_description(trainers[s.slug])}" for s in settings) + ".",
        "* Trainers: " + ", ".join(f"`{trainers[s.slug]}` ({s.title})" for s in settings) + ".",
        f"* Prediction: `nnUNetv2_predict` with checkpoint_final.pth, "
        f"{'mirroring test-time augmentation' if options.tta else 'no test-time augmentation (`--disable_tta`)'}.",
        "",
        "## Timings",
        "",
        "| Stage | Wall time |",
        "|---|---|",
    ]
    for record in records:
        lines.append(f"| {record.name} | {record.note or _format_seconds(record.seconds)} |")
    lines.append(f"| **total** | **{_format_seconds(total_seconds)}** |")
    lines += ["", "## Training curves", ""]
    for setting in settings:
        for path in curves.get(setting.slug, []):
            relative = path.relative_to(output).as_posix()
            lines += [f"**{setting.title}** — `{path.name}`", "", f"![{setting.title} {path.name}]({relative})", ""]
    lines += ["## Test cases", "",
              f"Mid {data.overlay_plane} slice and the slice with the most {data.detail_class.replace('_', ' ')}: "
              "image, ground truth, each model (postprocessing chosen on the validation cases).", ""]
    for path in overlays:
        relative = path.relative_to(output).as_posix()
        lines += [f"[{path.stem}]({relative})", "", f"![{path.stem}]({relative})", ""]
    lines += ["## Files", "",
              "* `table.csv` — Table 1 (every postprocessing variant: raw, largest_component, chosen; "
              "Dice 0..1)",
              "* `descriptor_errors.csv` — relative volume error, centroid distance, volumes per class",
              "* `evaluation/<setting>/<raw|largest_component|chosen>/` — nnU-Net's summary.json and "
              "`summary_shape.json`/`.md`",
              "* `predictions/<setting>/<raw|largest_component|chosen>/` — predicted test segmentations",
              "* `postprocessing/<setting>/` — the decision on the validation cases: `postprocessing.pkl` "
              "and `postprocessing.json` (the rule and numbers per label); its log in "
              "`logs/postprocessing_<setting>.log`",
              "* `work/` — nnUNet_raw, nnUNet_preprocessed, nnUNet_results (checkpoints, training logs)",
              "* `logs/` — full output of every nnU-Net command", ""]
    report = output / "report.md"
    temporary = output / ".tmp_report.md"
    temporary.write_text("\n".join(lines))
    os.replace(temporary, report)
    return report


def command_line(options: DemoOptions) -> list[str]:
    """The arguments of ``python -m nnunet_shape.demo`` that repeat the run of ``options`` (the
    report's *Command*); the data set's own grid option: ``--shape`` for the knee phantoms,
    ``--data brain --spacing`` (and ``--hemispheres``) for the brains."""
    args = ["--output", str(options.output), "--n-train", str(options.n_train), "--n-test", str(options.n_test)]
    if options.data == "knee":
        args += ["--shape", *[str(s) for s in options.shape]]
    else:
        args += ["--data", options.data, "--spacing", f"{options.spacing_mm:g}"]
        args += ["--hemispheres"] if options.hemispheres else []
    if options.image_aware:
        args.append("--image-aware")
    if options.recon_row:
        args.append("--recon-row")
    args += ["--seed", str(options.seed), "--trainer-suffix", options.trainer_suffix, "--device", options.device,
             "--fold", options.fold]
    if options.skip_training:
        args.append("--skip-training")
    if options.tta:
        args.append("--tta")
    if options.mirror_si:
        args.append("--mirror-si")
    args += ["--training-seed", str(options.training_seed)]
    if options.seeds != 1:
        args += ["--seeds", str(options.seeds)]
    return args


def format_multi_seed_table(rows_by_seed: Mapping[int, Sequence[TableRow]], postprocessing: str) -> str:
    """Table 1 over training seeds: per setting the mean ± std *across seeds* of each seed's mean
    Dice over the test cases (%), and every seed's own average."""
    import numpy as np

    seeds = sorted(rows_by_seed)
    if not seeds:
        raise ValueError("format_multi_seed_table: no seed")
    first = [r for r in rows_by_seed[seeds[0]] if r.postprocessing == postprocessing]
    classes = list(first[0].dice_mean)
    header = ["Setting", f"Avg (mean ± std over {len(seeds)} seeds)"] + classes + \
        [f"Avg, seed {s}" for s in seeds]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in [r.setting for r in first]:
        per_seed = {s: next(r for r in rows_by_seed[s] if r.setting == setting and r.postprocessing == postprocessing)
                    for s in seeds}

        def across(values: list[float]) -> str:
            array = np.asarray(values, dtype=float)
            finite = array[np.isfinite(array)]
            if finite.size == 0:
                return "n/a"
            return _percent(float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else None)

        cells = [setting, across([per_seed[s].avg_dice for s in seeds])]
        cells += [across([per_seed[s].dice_mean[c] for s in seeds]) for c in classes]
        cells += [_percent(per_seed[s].avg_dice) for s in seeds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
