"""The demo's comparison suites: weak supervision against annotation effort, and anatomical priors.

``python -m nnunet_shape.demo --suite weak`` (``make demo-weak``; issue 15, paper 003's comparison)
and ``--suite priors`` (``make demo-priors``; issue 16) run, on the same knee phantoms as
``make demo`` and with nnU-Net's console scripts and nnunet-shape's commands as a user would:

* **weak**: full supervision; sparse slices (``nnunet-shape simulate-slices``, K = 1 and 3 slices per
  plane, the rest nnU-Net's ignore label); Weak-Net (``simulate-points`` + ``fit-templates``,
  N = 25 and 125 points per class, ``nnUNetTrainerWeakNetWholeScan``: paper 003's loss on the
  whole-scan network); V+C+D descriptors; with ``--recon-row`` also V+C+D + reconstruction;
* **priors**: per-case V+C+D; per-case bounds from N = 10 and 25 clicks (``click-bounds`` →
  ``…FromFile``); one population prior for the whole dataset (``population-prior``) at two looseness
  levels, with the image-aware terms, and learnt on phantoms of another seed;

both next to the no-image baselines (atlas, descriptor ellipsoids, chance;
:mod:`nnunet_shape.nnunet.baselines`). Every trained row is on the same network: the whole scan
as one patch with the STD/EXP network (``nnUNetTrainerWholeScan``; for Weak-Net
``nnUNetTrainerWeakNetWholeScan``, not the paper-faithful ``nnUNetTrainerWeakNet`` on nnU-Net's
PlainConvUNet, which is slower on a CPU and would make the rows differ in network as well as in
supervision). Every trained row has the ``_demo`` schedule of ``make demo`` (the same epochs and
iterations), its own ``nnUNet_results`` folder (two rows may share a trainer class: Weak-Net at
N = 25 and 125) and is predicted on the same test cases.
Predictions are evaluated **raw** (no postprocessing): most rows have no labelled validation
cases to decide a postprocessing step with, and the same rule for every row keeps the
comparison fair. ``OUTPUT/report.md`` holds IoU and Dice per class (mean ± std over the test
cases), the annotation effort per case and, for the weak suite, ``iou_vs_effort.png`` (paper 003,
Fig. 6 style); ``OUTPUT/table.csv`` the same numbers.

Annotation effort per case, as paper 003 counts it (the number of points an annotator gives; a
traced contour counts its length): Weak-Net the points of the case; sparse slices the summed
contour length of the annotated slices (``sparse_slices.json``); full supervision the contours of
every slice of the first array axis (slice-by-slice manual contouring); both contour lengths in
pixels, per case in that case's own spacing, then averaged over the cases (full supervision: mm
divided by the mean in-plane spacing; sparse slices, whose slices lie in all three planes: by the
mean voxel spacing), so that one traced pixel counts like one click. Descriptor rows count the
values a human supplies (V+C+D: 7 per class); the population prior supplies none per case.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_shape.demo.console import (
    StageFailed,
    Stages,
    console_script,
    line_handler,
    nnunet_environment,
    stream_command,
)
from nnunet_shape.demo.settings import (
    CONFIGURATION,
    DemoOptions,
    anatomical_mirror_axes,
    dataset_folder_name,
    descriptor_value_count,
)

__all__ = ["SUITES", "SuiteRow", "SuiteResult", "chance_iou", "format_suite_table", "run_suite"]

SUITES: tuple[str, ...] = ("weak", "priors")
#: points (weak suite) and clicks (priors suite) per class and case
WEAK_POINTS: tuple[int, ...] = (25, 125)
WEAK_SLICES: tuple[int, ...] = (1, 3)
CLICK_POINTS: tuple[int, ...] = (10, 25)
#: (slug, title words, --quantiles, --margin) of the population priors of the priors suite
PRIOR_LOOSENESS: tuple[tuple[str, str, tuple[int, int], float], ...] = (
    ("prior_tight", "5-95 % quantiles, margin 0.1", (5, 95), 0.1),
    ("prior_loose", "0-100 % quantiles, margin 0.5", (0, 100), 0.5),
)
#: the seed offset of the phantoms the cross-dataset prior is learnt on
OTHER_SEED_OFFSET = 1000


@dataclass(frozen=True)
class SuiteRow:
    """One row: a trained model (``trainer`` with its length suffix) or a baseline (``baseline``).

    ``dataset_id`` is the dataset it trains on (the sparse-slice rows train on derived datasets);
    ``env`` the extra environment of training and prediction (template, descriptor or prior
    paths); ``effort`` the annotation effort per case in ``effort_unit`` (None: not applicable).
    """

    title: str
    slug: str
    supervision: str
    trainer: str | None = None
    dataset_id: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    baseline: str | None = None
    effort: float | None = None
    effort_unit: str = ""


@dataclass
class SuiteResult:
    output: Path
    rows: list[SuiteRow]
    summaries: dict[str, dict]
    report: Path
    table_csv: Path
    plot: Path | None
    total_seconds: float


def chance_iou(chance_dice: float) -> float:
    """IoU of the chance labelling from its Dice (``J = D / (2 - D)``, which holds for any one
    prediction and reference)."""
    return chance_dice / (2.0 - chance_dice) if math.isfinite(chance_dice) else math.nan


# ------------------------------------------------------------------------------------------------
# effort
# ------------------------------------------------------------------------------------------------

def full_contour_points(label_files: Sequence[Path], labels: Sequence[int]) -> float:
    """Mean over cases of the summed contour length (in in-plane pixels) of every class in every
    slice of the first array axis: what contouring the whole volume slice by slice costs."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_shape.nnunet.sparse_slices import contour_length_mm

    totals = []
    for path in label_files:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        spacing = tuple(reversed(image.GetSpacing()))
        in_plane = spacing[1:]
        length = 0.0
        for index in range(array.shape[0]):
            plane = array[index]
            for label in labels:
                mask = plane == label
                if mask.any():
                    length += contour_length_mm(mask, in_plane)
        totals.append(length / float(np.mean(in_plane)))
    return float(np.mean(totals)) if totals else math.nan


def sparse_contour_pixels(effort_file: Path, ending: str) -> float:
    """Mean over cases of the summed contour length of a sparse-slice dataset in pixels.

    ``effort_file`` is the derived dataset's ``sparse_slices.json`` (per case ``contour_length_mm``);
    each case's length is divided by the mean voxel spacing of that case (the annotated slices lie
    in all three planes), read from its label file beside the effort file,
    ``labelsTr/<case><ending>``, so that cases of different spacing are each counted in their own
    pixels."""
    import SimpleITK as sitk

    summary = json.loads(effort_file.read_text())
    per_case = []
    for case, entry in summary["cases"].items():
        path = effort_file.parent / "labelsTr" / f"{case}{ending}"
        if not path.is_file():
            raise StageFailed(f"{effort_file}: case {case!r} has no label file {path} to read its spacing from")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        spacing = reader.GetSpacing()
        per_case.append(float(entry["contour_length_mm"]) / (sum(spacing) / len(spacing)))
    return float(sum(per_case) / len(per_case)) if per_case else math.nan


def mean_points_per_case(points_folder: Path, dataset_json: Mapping[str, Any]) -> float:
    from nnunet_shape.point_files.format import load_points_folder

    cases = load_points_folder(points_folder, dataset_json)
    return float(sum(c.num_points for c in cases.values()) / len(cases)) if cases else math.nan


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------

class _Runner:
    """Shared state of one suite run: folders, environments, stages."""

    def __init__(self, options: DemoOptions, suite: str, n_stages: int):
        from nnunet_shape.demo.run import _prepare_output, training_environment

        self.options = options
        self.suite = suite
        self.output = Path(options.output).resolve()
        _prepare_output(self.output, options.skip_training)
        self.work = self.output / "work"
        self.logs = self.output / "logs"
        self.raw_root = self.work / "nnUNet_raw"
        self.raw_dataset = self.raw_root / dataset_folder_name(options.dataset_id)
        self.env_plan = nnunet_environment(self.work)
        self.env_train = training_environment(self.work, options)
        self.stages = Stages(n_stages, fancy=options.progress and sys.stdout.isatty())
        self.echo = self.stages.echo
        self.predictions = self.output / "predictions"

    def command(self, name: str, args: Sequence[str], log: str, env: Mapping[str, str] | None = None) -> None:
        with self.stages.stage(name, None, "line") as bar:
            stream_command(list(args), env or self.env_plan, self.logs / log, line_handler(bar, self.echo, "plan"),
                           name)

    def nnunet_shape(self, name: str, args: Sequence[str], log: str) -> None:
        self.command(name, [console_script("nnunet-shape"), *args], log)

    def simulate_points(self, n: int, folder: Path) -> None:
        """``nnunet-shape simulate-points``: N points per class and training case into ``folder``."""
        self.nnunet_shape(f"simulate-points N={n}", ["simulate-points", "-d", str(self.options.dataset_id), "-n",
                                                    str(n), "--seed", str(self.options.seed), "-o", str(folder)],
                          f"simulate_points_{n}.log")

    def plan(self, dataset_id: int, log: str) -> None:
        n = self.options.num_processes
        self.command(f"nnUNetv2_plan_and_preprocess -d {dataset_id}",
                     [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", CONFIGURATION,
                      "-npfp", str(n), "-np", str(n), "--verify_dataset_integrity"], log)

    def results_folder(self, row: SuiteRow) -> Path:
        return self.work / "results" / row.slug

    def row_env(self, row: SuiteRow, training: bool) -> dict[str, str]:
        env = dict(self.env_train if training else self.env_plan)
        env["nnUNet_results"] = str(self.results_folder(row))
        env.update(row.env)
        if training and self.mirror_axes is not None:
            from nnunet_shape.nnunet.training.whole_scan import MIRROR_AXES_ENV

            env[MIRROR_AXES_ENV] = self.mirror_axes
        return env

    mirror_axes: str | None = None

    def fold_folder(self, row: SuiteRow) -> Path:
        dataset = self.raw_root.glob(f"Dataset{row.dataset_id:03d}_*")
        name = next(iter(dataset)).name
        return self.results_folder(row) / name / f"{row.trainer}__nnUNetPlans__{CONFIGURATION}" / \
            f"fold_{self.options.fold}"

    def train_and_predict(self, row: SuiteRow) -> Path:
        assert row.trainer is not None and row.dataset_id is not None
        prediction = self.predictions / row.slug
        if self.options.skip_training and (self.fold_folder(row) / "checkpoint_final.pth").is_file():
            self.stages.skipped(f"nnUNetv2_train {row.title}", "reused")
        else:
            from nnunet_shape.demo.settings import _trainer_schedule

            epochs = _trainer_schedule(row.trainer)[0]
            with self.stages.stage(f"nnUNetv2_train {row.title}", epochs, "epoch") as bar:
                stream_command([console_script("nnUNetv2_train"), str(row.dataset_id), CONFIGURATION,
                                self.options.fold, "-tr", row.trainer, "-device", self.options.device],
                               self.row_env(row, True), self.logs / f"train_{row.slug}.log",
                               line_handler(bar, self.echo, "train"), f"nnUNetv2_train {row.title}")
        test_images = sorted((self.raw_dataset / "imagesTs").glob("*_0000.*"))
        with self.stages.stage(f"nnUNetv2_predict {row.title}", len(test_images), "case") as bar:
            shutil.rmtree(prediction, ignore_errors=True)
            # -npp 0 -nps 0: nnU-Net's sequential mode, no worker processes to spawn (5 s less per call)
            args = [console_script("nnUNetv2_predict"), "-i", str(self.raw_dataset / "imagesTs"), "-o",
                    str(prediction), "-d", str(row.dataset_id), "-c", CONFIGURATION, "-f", self.options.fold,
                    "-tr", row.trainer, "-device", self.options.device, "-npp", "0", "-nps", "0"]
            if not self.options.tta:
                args.append("--disable_tta")
            stream_command(args, self.row_env(row, False), self.logs / f"predict_{row.slug}.log",
                           line_handler(bar, self.echo, "predict"), f"nnUNetv2_predict {row.title}")
        return prediction


def _phantoms_and_plan(runner: _Runner) -> None:
    from nnunet_shape.demo.run import make_phantoms_and_plan

    make_phantoms_and_plan(runner.options, runner.work, runner.logs, runner.stages)
    plans = json.loads((runner.work / "nnUNet_preprocessed" / dataset_folder_name(runner.options.dataset_id)
                        / "nnUNetPlans.json").read_text())
    if not runner.options.mirror_si:
        runner.mirror_axes = ",".join(str(a) for a in anatomical_mirror_axes(plans["transpose_forward"]))


def _labels(dataset_json: Mapping[str, Any]) -> list[int]:
    return sorted(int(v) for k, v in dataset_json["labels"].items() if k not in ("background", "ignore"))


def _weak_rows(runner: _Runner, dataset_json: Mapping[str, Any]) -> list[SuiteRow]:
    """Prepare the weak suite's annotations (points, templates, sparse-slice datasets) and its rows."""
    options, suffix, did = runner.options, runner.options.trainer_suffix, runner.options.dataset_id
    labels = _labels(dataset_json)
    n_classes = len(labels)
    ending = dataset_json["file_ending"]
    label_files = sorted((runner.raw_dataset / "labelsTr").glob(f"*{ending}"))
    vcd_values = descriptor_value_count(("volume", "centroid", "spread"), n_classes)
    rows = [SuiteRow("Full supervision", "full", "every voxel", f"nnUNetTrainerShapeFullSupervision{suffix}", did,
                     effort=full_contour_points(label_files, labels), effort_unit="contour pixels")]
    for k in WEAK_SLICES:
        target = did + k
        if not options.skip_training:
            runner.nnunet_shape(f"simulate-slices K={k}", ["simulate-slices", "-d", str(did), "--slices", str(k),
                                                          "--seed", str(options.seed), "--target-id", str(target)],
                                f"simulate_slices_{k}.log")
            runner.plan(target, f"plan_and_preprocess_{target}.log")
        effort_file = next(runner.raw_root.glob(f"Dataset{target:03d}_*")) / "sparse_slices.json"
        rows.append(SuiteRow(f"Sparse slices K={k}", f"slices{k}", f"{k} slice(s) per plane, rest ignore",
                             f"nnUNetTrainerShapeFullSupervision{suffix}", target,
                             effort=sparse_contour_pixels(effort_file, ending),
                             effort_unit="contour pixels"))
    for n in WEAK_POINTS:
        points, templates = runner.work / f"points_{n}", runner.work / f"templates_{n}"
        if not options.skip_training:
            runner.simulate_points(n, points)
            runner.nnunet_shape(f"fit-templates N={n}", ["fit-templates", "-d", str(did), "-p", str(points), "-o",
                                                        str(templates)], f"fit_templates_{n}.log")
        from nnunet_shape.nnunet.training.weaknet import TEMPLATES_ENV

        rows.append(SuiteRow(f"Weak-Net N={n}", f"weaknet{n}", f"{n} surface points per class",
                             f"nnUNetTrainerWeakNetWholeScan{suffix}", did, env={TEMPLATES_ENV: str(templates)},
                             effort=mean_points_per_case(points, dataset_json), effort_unit="points"))
    rows.append(SuiteRow("V+C+D", "vcd", "volume, centroid, spread per class", f"nnUNetTrainerShapeDescriptors{suffix}",
                         did, effort=vcd_values, effort_unit="values"))
    if options.recon_row:
        rows.append(SuiteRow("V+C+D + reconstruction", "vcd_recon", "V+C+D, plus reconstructing the image",
                             f"nnUNetTrainerShapeDescriptorsRecon{suffix}", did, effort=vcd_values,
                             effort_unit="values"))
    return rows + _baseline_rows(full_effort=rows[0].effort, vcd_values=vcd_values)


def _baseline_rows(full_effort: float | None, vcd_values: float) -> list[SuiteRow]:
    return [
        SuiteRow("Atlas (no image)", "atlas", "majority of the training label maps", baseline="atlas",
                 effort=full_effort, effort_unit="contour pixels"),
        SuiteRow("Descriptor ellipsoids (no image)", "descriptor_ellipsoids",
                 "mean training centroid and covariance per class", baseline="descriptor_ellipsoids",
                 effort=vcd_values, effort_unit="values"),
        SuiteRow("Chance", "chance", "random labels with the true class frequencies", baseline="chance"),
    ]


def _priors_rows(runner: _Runner, dataset_json: Mapping[str, Any]) -> list[SuiteRow]:
    """Prepare the priors suite's clicks, bounds and prior files, and its rows."""
    from nnunet_shape.nnunet.training.from_file import DESCRIPTORS_ENV
    from nnunet_shape.nnunet.training.population_prior import POPULATION_PRIOR_ENV

    options, suffix, did = runner.options, runner.options.trainer_suffix, runner.options.dataset_id
    n_classes = len(_labels(dataset_json))
    vcd_values = descriptor_value_count(("volume", "centroid", "spread"), n_classes)
    rows = [SuiteRow("Per-case V+C+D", "vcd", "descriptor values per case", f"nnUNetTrainerShapeDescriptors{suffix}",
                     did, effort=vcd_values, effort_unit="values")]
    for n in CLICK_POINTS:
        points, bounds = runner.work / f"clicks_{n}", runner.work / f"click_bounds_{n}"
        if not options.skip_training:
            runner.simulate_points(n, points)
            runner.nnunet_shape(f"click-bounds N={n}", ["click-bounds", "-d", str(did), "-p", str(points),
                                                       "-o", str(bounds)], f"click_bounds_{n}.log")
        rows.append(SuiteRow(f"Bounds from {n} clicks", f"clicks{n}", f"{n} surface points per class → bounds",
                             f"nnUNetTrainerShapeDescriptorsFromFile{suffix}", did, env={DESCRIPTORS_ENV: str(bounds)},
                             effort=mean_points_per_case(points, dataset_json), effort_unit="points"))
    priors = runner.work / "priors"
    for slug, words, quantiles, margin in PRIOR_LOOSENESS:
        path = priors / f"{slug}.json"
        if not options.skip_training:
            runner.nnunet_shape(f"population-prior ({words})",
                                ["population-prior", "-d", str(did), "-o", str(path), "--quantiles",
                                 str(quantiles[0]), str(quantiles[1]), "--margin", str(margin)],
                                f"population_prior_{slug}.log")
        rows.append(SuiteRow(f"Population prior, {words}", slug, "one file for the dataset, no per-case value",
                             f"nnUNetTrainerShapePopulationPrior{suffix}", did, env={POPULATION_PRIOR_ENV: str(path)},
                             effort=0.0, effort_unit="values"))
    tight = priors / f"{PRIOR_LOOSENESS[0][0]}.json"
    rows.append(SuiteRow(f"Population prior, {PRIOR_LOOSENESS[0][1]}, + image terms", "prior_image_aware",
                         "the tight prior, plus homogeneity, edge and entropy terms",
                         f"nnUNetTrainerShapePopulationPriorImageAware{suffix}", did,
                         env={POPULATION_PRIOR_ENV: str(tight)}, effort=0.0, effort_unit="values"))
    other = priors / "prior_other_seed.json"
    if not options.skip_training:
        _other_seed_prior(runner, other)
    rows.append(SuiteRow(f"Population prior learnt on phantom seed {options.seed + OTHER_SEED_OFFSET}",
                         "prior_other_seed", f"{PRIOR_LOOSENESS[0][1]}, from other phantoms",
                         f"nnUNetTrainerShapePopulationPrior{suffix}", did, env={POPULATION_PRIOR_ENV: str(other)},
                         effort=0.0, effort_unit="values"))
    return rows + _baseline_rows(full_effort=None, vcd_values=vcd_values)


def _other_seed_prior(runner: _Runner, path: Path) -> None:
    """Phantoms of another seed as their own dataset; the tight prior learnt on them."""
    from nnunet_shape.demo.phantoms import write_phantom_dataset
    from nnunet_shape.demo.settings import DATASET_NAME, phantom_spacing

    options = runner.options
    other_id = options.dataset_id + 9
    with runner.stages.stage(f"phantoms of seed {options.seed + OTHER_SEED_OFFSET}", 1, "dataset") as bar:
        write_phantom_dataset(runner.raw_root, n_train=options.n_train, n_test=1,
                              seed=options.seed + OTHER_SEED_OFFSET, dataset_id=other_id, name=f"{DATASET_NAME}Other",
                              shape=options.shape, spacing=phantom_spacing(options.shape),
                              num_processes=max(1, options.num_processes))
        bar.update(1)
    _, words, quantiles, margin = PRIOR_LOOSENESS[0]
    runner.nnunet_shape(f"population-prior of seed {options.seed + OTHER_SEED_OFFSET}",
                        ["population-prior", "-d", str(other_id), "-o", str(path), "--quantiles", str(quantiles[0]),
                         str(quantiles[1]), "--margin", str(margin)], "population_prior_other_seed.log")


# ------------------------------------------------------------------------------------------------
# tables, plot, report
# ------------------------------------------------------------------------------------------------

def _class_names(summary: Mapping[str, Any]) -> list[tuple[Any, str]]:
    names = summary.get("class_names", {})
    return [(key, str(names.get(key, key))) for key in summary["mean"]]


def _row_numbers(summary: Mapping[str, Any], metric: str) -> tuple[float, dict[str, tuple[float, float]]]:
    per_class = {}
    for key, name in _class_names(summary):
        per_class[name] = (float(summary["mean"][key][metric]), float(summary.get("std", {}).get(key, {}).get(
            metric, math.nan)))
    return float(summary["foreground_mean"][metric]), per_class


def _fmt(value: float, std: float | None = None) -> str:
    if not math.isfinite(value):
        return "–"
    text = f"{100 * value:.1f}"
    if std is not None and math.isfinite(std):
        text += f" ± {100 * std:.1f}"
    return text


def _effort_text(row: SuiteRow) -> str:
    if row.effort is None or not math.isfinite(row.effort):
        return "–"
    return f"{row.effort:,.0f} {row.effort_unit}"


def format_suite_table(rows: Sequence[SuiteRow], summaries: Mapping[str, Mapping[str, Any]], metric: str,
                       chance: Mapping[str, float]) -> str:
    """A Markdown table of ``metric`` (``"Dice"`` or ``"IoU"``) per class, % mean ± std over the
    test cases, with the effort per case; the chance row from ``chance`` (class name -> Dice)."""
    first = next(iter(summaries.values()))
    names = [name for _, name in _class_names(first)]
    lines = [f"| Row | Effort per case | mean {metric} | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for row in rows:
        if row.baseline == "chance":
            values = {n: chance[n] if metric == "Dice" else chance_iou(chance[n]) for n in names}
            mean = sum(values.values()) / len(values)
            lines.append(f"| {row.title} | – | {_fmt(mean)} | " + " | ".join(_fmt(values[n]) for n in names) + " |")
            continue
        mean, per_class = _row_numbers(summaries[row.slug], metric)
        lines.append(f"| {row.title} | {_effort_text(row)} | {_fmt(mean)} | "
                     + " | ".join(_fmt(*per_class[n]) for n in names) + " |")
    return "\n".join(lines)


def write_suite_csv(rows: Sequence[SuiteRow], summaries: Mapping[str, Mapping[str, Any]],
                    chance: Mapping[str, float], path: Path) -> Path:
    import csv

    first = next(iter(summaries.values()))
    names = [name for _, name in _class_names(first)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "trainer", "effort_per_case", "effort_unit", "metric", "mean"]
                        + [f"{n}_mean" for n in names] + [f"{n}_std" for n in names])
        for row in rows:
            for metric in ("Dice", "IoU"):
                if row.baseline == "chance":
                    values = [chance[n] if metric == "Dice" else chance_iou(chance[n]) for n in names]
                    writer.writerow([row.slug, "", "", "", metric, sum(values) / len(values)] + values
                                    + [""] * len(names))
                    continue
                mean, per_class = _row_numbers(summaries[row.slug], metric)
                writer.writerow([row.slug, row.trainer or row.baseline, row.effort, row.effort_unit, metric, mean]
                                + [per_class[n][0] for n in names] + [per_class[n][1] for n in names])
    return path


def plot_iou_against_effort(rows: Sequence[SuiteRow], summaries: Mapping[str, Mapping[str, Any]],
                            chance: Mapping[str, float], path: Path) -> Path:
    """Mean IoU against annotation effort per case (log axis), one marker per row; full
    supervision and chance as horizontal lines (paper 003, Fig. 6 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    markers = {"contour pixels": "s", "points": "o", "values": "^"}
    for index, row in enumerate(rows):
        colour = f"C{index % 10}"
        if row.baseline == "chance":
            value = sum(chance_iou(v) for v in chance.values()) / len(chance)
            axis.axhline(100 * value, color="grey", linestyle=":", label=f"{row.title} ({100 * value:.1f})")
            continue
        mean = 100 * float(summaries[row.slug]["foreground_mean"]["IoU"])
        if row.slug == "full":
            axis.axhline(mean, color="black", linestyle="--", linewidth=0.8)
        if row.effort is None or not math.isfinite(row.effort) or row.effort <= 0:
            continue
        # baselines hollow (they use no test image), models filled
        axis.scatter([row.effort], [mean], marker=markers.get(row.effort_unit, "x"), s=60, edgecolors=colour,
                     facecolors="none" if row.baseline else colour, linewidths=1.5, label=f"{row.title} ({mean:.1f})")
    axis.set_xscale("log")
    axis.set_xlabel("annotation effort per case (points; contour length in pixels; descriptor values)")
    axis.set_ylabel("mean IoU over classes (%)")
    axis.set_title("IoU against annotation effort (test phantoms)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _write_report(runner: _Runner, rows: Sequence[SuiteRow], summaries: Mapping[str, Mapping[str, Any]],
                  chance: Mapping[str, float], plot: Path | None, total: float) -> Path:
    from nnunet_shape.demo.report import command_line

    options = runner.options
    title = {"weak": "Weak supervision against annotation effort (paper 003's comparison)",
             "priors": "Anatomical knowledge instead of per-case annotation (population priors, clicks)"}[runner.suite]
    lines = [f"# {title}", "",
             f"Command: `{' '.join(command_line(options))} --suite {runner.suite}`; "
             f"{options.n_train} training and {options.n_test} test phantoms of seed {options.seed}, grid "
             f"{tuple(options.shape)}, every trained row with the `{options.trainer_suffix}` schedule, fold "
             f"{options.fold}, device {options.device}; {time.strftime('%Y-%m-%d')}, {total / 60:.1f} min.", "",
             "Test-set scores in % (mean ± std over the test cases), **raw predictions** (no postprocessing for "
             "any row: most rows have no labelled validation cases to choose one with). Every trained row is on the "
             "same network, the whole scan as one patch with the STD/EXP network (`nnUNetTrainerWholeScan`)"
             + ("; Weak-Net is `nnUNetTrainerWeakNetWholeScan`, paper 003's loss on that network (the paper-faithful "
                "`nnUNetTrainerWeakNet` trains nnU-Net's PlainConvUNet instead)" if runner.suite == "weak" else "")
             + ".", "",
             "## IoU per class", "", format_suite_table(rows, summaries, "IoU", chance), "",
             "## Dice per class", "", format_suite_table(rows, summaries, "Dice", chance), ""]
    if plot is not None:
        lines += ["## IoU against effort", "", f"![IoU against effort]({plot.relative_to(runner.output)})", ""]
    lines += ["## Rows", "", "| Row | Supervision | Trainer / baseline |", "|---|---|---|"]
    lines += [f"| {r.title} | {r.supervision} | `{r.trainer or r.baseline}` |" for r in rows]
    lines += ["", "Effort per case: points an annotator clicks (Weak-Net, clicks); contour length in pixels, each "
              "case in its own spacing (sparse slices: the annotated slices, mm divided by the case's mean voxel "
              "spacing; full supervision: every slice of the first array axis, i.e. slice-by-slice manual "
              "contouring, mm divided by the mean in-plane spacing; the atlas uses the full training labels); "
              "descriptor values (V+C+D: volume, 3 centroid and 3 spread values per class). Population priors: none "
              "per case.", "",
              "## Timings", "", "| Stage | Wall time |", "|---|---|"]
    lines += [f"| {r.name} | {r.seconds:.0f} s{' (' + r.note + ')' if r.note else ''} |" for r in runner.stages.records]
    report = runner.output / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _n_stages(suite: str, recon_row: bool = False) -> int:
    if suite == "weak":
        trained = 1 + len(WEAK_SLICES) + len(WEAK_POINTS) + 1 + int(recon_row)
        preparation = 2 * len(WEAK_SLICES) + 2 * len(WEAK_POINTS)
    else:
        trained = 1 + len(CLICK_POINTS) + len(PRIOR_LOOSENESS) + 2
        preparation = 2 * len(CLICK_POINTS) + len(PRIOR_LOOSENESS) + 2
    return 2 + preparation + 2 * trained + 2


def run_suite(options: DemoOptions, suite: str) -> SuiteResult:
    """Run one comparison suite (see the module doc) and write its report; returns its numbers."""
    from nnunet_shape.nnunet.baselines import write_baseline_predictions
    from nnunet_shape.nnunet.evaluate import chance_dice, evaluate_folder

    if suite not in SUITES:
        raise StageFailed(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    runner = _Runner(options, suite, _n_stages(suite, options.recon_row))
    if options.skip_training:
        if not (runner.raw_dataset / "dataset.json").is_file():
            raise StageFailed(f"--skip-training: nothing to reuse in {runner.raw_dataset}")
        plans = json.loads((runner.work / "nnUNet_preprocessed" / dataset_folder_name(options.dataset_id)
                            / "nnUNetPlans.json").read_text())
        if not options.mirror_si:
            runner.mirror_axes = ",".join(str(a) for a in anatomical_mirror_axes(plans["transpose_forward"]))
    else:
        _phantoms_and_plan(runner)
    dataset_json = json.loads((runner.raw_dataset / "dataset.json").read_text())
    rows = (_weak_rows if suite == "weak" else _priors_rows)(runner, dataset_json)
    folders: dict[str, Path] = {}
    for row in rows:
        if row.trainer is not None:
            folders[row.slug] = runner.train_and_predict(row)
    ending = dataset_json["file_ending"]
    with runner.stages.stage("no-image baselines", None, "baseline"):
        written = write_baseline_predictions(
            dataset_json, sorted((runner.raw_dataset / "labelsTr").glob(f"*{ending}")),
            sorted((runner.raw_dataset / "imagesTs").glob(f"*_0000{ending}")), runner.predictions / "baselines")
        for row in rows:
            if row.baseline in written:
                folders[row.slug] = written[row.baseline]
    summaries: dict[str, dict] = {}
    with runner.stages.stage("evaluation", len(folders), "folder") as bar:
        for slug, folder in folders.items():
            summaries[slug] = evaluate_folder(runner.raw_dataset / "labelsTs", folder, dataset_json,
                                              output_dir=runner.output / "evaluation" / slug, num_processes=1)
            bar.update(1)
    chance = chance_dice(next(iter(summaries.values())))
    plot = plot_iou_against_effort(rows, summaries, chance, runner.output / "iou_vs_effort.png") \
        if suite == "weak" else None
    table_csv = write_suite_csv(rows, summaries, chance, runner.output / "table.csv")
    total = time.monotonic() - runner.stages.start
    report = _write_report(runner, rows, summaries, chance, plot, total)
    runner.echo("")
    runner.echo(format_suite_table(rows, summaries, "IoU", chance))
    runner.echo(f"suite {suite} finished in {total / 60:.1f} min; report: {report}")
    return SuiteResult(runner.output, list(rows), summaries, report, table_csv, plot, total)


def default_output(suite: str) -> Path:
    """``demo_weak_output`` / ``demo_priors_output``: a suite never shares the Table-1 demo's folder."""
    return Path(f"demo_{suite}_output")

