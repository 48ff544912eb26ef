"""``make demo``: paper 000's Table 1 in miniature, on knee phantoms, on a CPU.

``python -m nnunet_shape.demo --output demo_output`` runs, with nnU-Net's own console scripts:

1. ``nnunet-shape phantoms``-style knee phantoms (training cases with labelsTr, test cases with
   labelsTs) in ``OUTPUT/work/nnUNet_raw``;
2. ``nnUNetv2_plan_and_preprocess`` (3d_fullres);
3. ``nnUNetv2_train`` of the three settings of Table 1 -- full supervision
   (``nnUNetTrainerShapeFullSupervision``), V+C (``nnUNetTrainerShapeDescriptorsVC``) and V+C+D
   (``nnUNetTrainerShapeDescriptors``) -- all with the same CPU-sized schedule (the trainers'
   ``_demo`` length variant: same epochs, iterations and batch size for every row);
4. ``nnUNetv2_predict`` of the test cases with each model;
5. largest-connected-component postprocessing per label on every prediction
   (:func:`nnunet_shape.core.connected_components.remove_all_but_largest_component_from_segmentation`);
6. evaluation (:func:`nnunet_shape.nnunet.evaluate.evaluate_folder`): Dice per class, relative volume
   error and centroid distance, before and after postprocessing;
7. ``OUTPUT/report.md`` (Table 1, descriptor errors, schedule, timings, figures),
   ``OUTPUT/table.csv``, ``OUTPUT/descriptor_errors.csv``, the training curves and one overlay PNG
   per test case.

Every stage shows a progress bar (``[k/N] stage``, with elapsed time); nnU-Net's own lines
(epoch, losses, pseudo Dice, descriptor satisfaction) stream through. Full logs of every command
are kept in ``OUTPUT/logs``.

Why the default phantom grid is ``32 x 48 x 48`` (not the generator's ``40 x 64 x 64``): the
whole scan is one patch, and a training iteration on ``40 x 64 x 64`` costs ~2.6x one on
``32 x 48 x 48`` on 2 CPU cores. The demo keeps the generator's field of view (so the same knee
anatomy in millimetres) and coarsens the voxels (0.93 mm in-plane instead of 0.7 mm), which buys
the descriptor-only models the iterations they need within the 20-minute budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "Setting",
    "SETTINGS",
    "DemoOptions",
    "DemoResult",
    "TableRow",
    "descriptor_value_count",
    "voxel_annotation_count",
    "phantom_spacing",
    "chance_dice",
    "table_rows",
    "format_dice_table",
    "format_descriptor_error_table",
    "ordering_verdict",
    "write_table_csv",
    "write_descriptor_errors_csv",
    "keep_largest_component_per_label",
    "postprocess_folder",
    "parse_progress",
    "is_console_line",
    "nnunet_environment",
    "run_demo",
    "build_parser",
    "main",
]

CONFIGURATION = "3d_fullres"
DATASET_NAME = "KneePhantom"
DEFAULT_DATASET_ID = 701
DEFAULT_SHAPE: tuple[int, int, int] = (32, 48, 48)
DEFAULT_TRAINER_SUFFIX = "_demo"
DEFAULT_FOLD = "0"
TIME_BUDGET_SECONDS = 20 * 60
#: a descriptor-only setting is "clearly above chance" when its mean Dice beats chance by this
CLEARLY_ABOVE_CHANCE = 0.10
POSTPROCESSING_VARIANTS: tuple[str, ...] = ("raw", "largest_component")
MARKER_FILE = ".nnunet_shape_demo"


# ------------------------------------------------------------------------------------------------
# the three rows of paper 000's Table 1
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One row of Table 1: the trainer (without length suffix) and what supervises it.

    ``descriptors`` is None for voxel supervision, else the descriptors the trainer constrains
    (they must equal the trainer class's ``descriptors``; tests/test_demo.py checks it).
    """

    title: str
    slug: str
    trainer: str
    descriptors: tuple[str, ...] | None


SETTINGS: tuple[Setting, ...] = (
    Setting("Full supervision", "full_supervision", "nnUNetTrainerShapeFullSupervision", None),
    Setting("V+C", "vc", "nnUNetTrainerShapeDescriptorsVC", ("volume", "centroid")),
    Setting("V+C+D", "vcd", "nnUNetTrainerShapeDescriptors", ("volume", "centroid", "spread")),
)

#: values one descriptor contributes per class in D dimensions (what the loss constrains)
_VALUES_PER_CLASS: dict[str, Callable[[int], int]] = {
    "volume": lambda d: 1,
    "surface": lambda d: 1,
    "centroid": lambda d: d,
    "spread": lambda d: d,  # one per axis: sqrt(diag covariance)
    "covariance": lambda d: d * (d + 1) // 2,  # symmetric: upper triangle only
}


def descriptor_value_count(descriptors: Sequence[str], n_classes: int, ndim: int = 3) -> int:
    """Number of target values a descriptor trainer needs per case.

    ``volume`` 1, ``centroid`` D, ``spread`` D, ``surface`` 1, ``covariance`` D(D+1)/2 values per
    foreground class. Paper 000 counts V+C with 4 classes as 16 (= 4 x (1 + 3)) and V+C+D as 20,
    i.e. 𝔇 as one descriptor per class although it is a 3-vector; here every constrained value
    counts, so V+C+D is 28.
    """
    unknown = [d for d in descriptors if d not in _VALUES_PER_CLASS]
    if unknown:
        raise ValueError(f"descriptor_value_count: unknown descriptors {unknown}; "
                         f"known: {sorted(_VALUES_PER_CLASS)}")
    if n_classes < 0 or ndim < 1:
        raise ValueError(f"descriptor_value_count: need n_classes >= 0 and ndim >= 1, "
                         f"got {n_classes}, {ndim}")
    return int(n_classes * sum(_VALUES_PER_CLASS[d](ndim) for d in descriptors))


def voxel_annotation_count(shape: Sequence[int]) -> int:
    """Labelled voxels of one case under full supervision: every voxel of the volume (paper 000's
    "24 million of voxels" = 384 x 384 x 160)."""
    return int(math.prod(int(s) for s in shape))


def phantom_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Voxel spacing (mm) that keeps the phantom generator's default field of view on ``shape``,
    so the anatomy keeps its size in millimetres whatever the grid."""
    from nnunet_shape.demo.phantoms import DEFAULT_FOV_MM

    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"phantom_spacing: need three positive sizes, got {tuple(shape)}")
    return tuple(float(f) / int(n) for f, n in zip(DEFAULT_FOV_MM, shape))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# tables (pure functions of evaluate_folder summaries)
# ------------------------------------------------------------------------------------------------

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


def chance_dice(summary: Mapping[str, Any]) -> dict[str, float]:
    """Expected Dice of a prediction that labels voxels at random with the true class frequencies.

    For a class covering a fraction ``f`` of the volume, a random labelling with that frequency
    has ``E[TP] = N f^2`` and Dice ``2 N f^2 / (2 N f) = f``: the chance Dice of a class is its
    volume fraction, averaged here over the cases of ``summary`` (per class name).
    """
    result = {}
    for key, name in _class_order(summary):
        fractions = []
        for case in summary["metric_per_case"]:
            m = case["metrics"][key]
            total = m["TP"] + m["FP"] + m["FN"] + m["TN"]
            fractions.append(m["n_ref"] / total if total > 0 else math.nan)
        result[name] = float(sum(fractions) / len(fractions)) if fractions else math.nan
    return result


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
                annotations, unit = descriptor_value_count(setting.descriptors, n_classes, ndim), "descriptor values"
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
                      chance: Mapping[str, float] | None = None) -> str:
    """Markdown Table 1 (Dice in %, mean ± std over test cases) for one postprocessing variant;
    ``chance`` adds a last row with :func:`chance_dice`."""
    selected = [r for r in rows if r.postprocessing == postprocessing]
    if not selected:
        raise ValueError(f"format_dice_table: no row with postprocessing {postprocessing!r}")
    classes = list(selected[0].dice_mean)
    header = ["Setting", "Avg"] + classes + ["# annotations per case"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in selected:
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


def ordering_verdict(avg_dice: Mapping[str, float], chance: float,
                     margin: float = CLEARLY_ABOVE_CHANCE) -> tuple[bool, bool, str]:
    """Check paper 000's ordering on mean Dice: full supervision > V+C+D > V+C, and both
    descriptor-only settings above ``chance + margin``.

    ``avg_dice``: setting slug (``full_supervision``, ``vcd``, ``vc``) -> mean Dice (0..1).
    Returns ``(ordering holds, descriptor-only clearly above chance, one-line text)``.
    """
    full, vcd, vc = avg_dice["full_supervision"], avg_dice["vcd"], avg_dice["vc"]
    ordering = full > vcd > vc
    above = min(vcd, vc) > chance + margin
    bar = chance + margin

    def versus_chance(title: str, dice: float) -> str:
        return f"{title} {'clearly above' if dice > bar else 'NOT clearly above'} ({100 * dice:.1f} %)"

    text = (f"ordering full supervision > V+C+D > V+C: {'holds' if ordering else 'does NOT hold'} "
            f"({100 * full:.1f} / {100 * vcd:.1f} / {100 * vc:.1f} % mean Dice); descriptor-only "
            f"training against chance ({100 * chance:.1f} % + {100 * margin:.0f} points = {100 * bar:.1f} %): "
            f"{versus_chance('V+C+D', vcd)}, {versus_chance('V+C', vc)}")
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
# postprocessing
# ------------------------------------------------------------------------------------------------

def keep_largest_component_per_label(segmentation: Any, labels: Sequence[int]) -> Any:
    """Keep only the largest connected component of every label in ``labels`` (nnU-Net's rule:
    full connectivity, ties keep all maximal components); removed voxels become background."""
    from nnunet_shape.core.connected_components import remove_all_but_largest_component_from_segmentation

    for label in labels:
        segmentation = remove_all_but_largest_component_from_segmentation(segmentation, int(label), 0)
    return segmentation


def postprocess_folder(input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                       labels: Sequence[int], file_ending: str = ".nii.gz",
                       on_case: Callable[[str], None] | None = None) -> list[Path]:
    """:func:`keep_largest_component_per_label` on every ``*file_ending`` of ``input_folder``,
    written with the same geometry to ``output_folder``. Returns the written files."""
    import numpy as np
    import SimpleITK as sitk

    input_folder, output_folder = Path(input_folder), Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in input_folder.iterdir() if p.name.endswith(file_ending))
    if not files:
        raise FileNotFoundError(f"postprocess_folder: no '*{file_ending}' in {input_folder}")
    written = []
    for path in files:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        kept = keep_largest_component_per_label(np.ascontiguousarray(array), labels)
        result = sitk.GetImageFromArray(kept.astype(array.dtype, copy=False))
        result.CopyInformation(image)
        target = output_folder / path.name
        temporary = output_folder / (".tmp_" + path.name)
        sitk.WriteImage(result, str(temporary), True)
        os.replace(temporary, target)
        written.append(target)
        if on_case is not None:
            on_case(path.name)
    return written


# ------------------------------------------------------------------------------------------------
# running nnU-Net's console scripts with progress
# ------------------------------------------------------------------------------------------------

_TQDM = re.compile(r"^(?P<desc>[^|]*?):?\s*\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)")
_EPOCH_START = re.compile(r": Epoch (?P<epoch>\d+)\s*$")
_EPOCH_END = re.compile(r": Epoch time: ")
_PREDICT_DONE = re.compile(r"^done with (?P<case>\S+)")
_VALIDATION_CASE = re.compile(r": predicting (?P<case>\S+)")
#: longer lines (configuration dumps) go to the log only
MAX_CONSOLE_LINE = 240


def parse_progress(line: str) -> tuple[str, Any] | None:
    """Recognise the progress signals in nnU-Net's output.

    Returns ``("tqdm", (description, done, total))`` for a tqdm bar update,
    ``("epoch_start", epoch)``, ``("epoch_end", None)``, ``("predicted", case)`` (nnUNetv2_predict)
    or ``("validating", case)`` (final validation of nnUNetv2_train); None otherwise.
    """
    text = line.strip()
    match = _TQDM.match(text)
    if match:
        return "tqdm", (match["desc"].strip(), int(match["done"]), int(match["total"]))
    match = _EPOCH_START.search(text)
    if match:
        return "epoch_start", int(match["epoch"])
    if _EPOCH_END.search(text):
        return "epoch_end", None
    match = _PREDICT_DONE.match(text)
    if match:
        return "predicted", match["case"]
    match = _VALIDATION_CASE.search(text)
    if match:
        return "validating", match["case"]
    return None


#: nnU-Net's boilerplate (citation banner, trainer lookup, deprecation warnings): log file only
_NOISE = re.compile(
    r"^(#+|Please cite|Isensee, F\.|INFO: You are using the old nnU-Net|Trainer '.*' not found in|"
    r"Searching (in|for)|Inspecting module|Found class|Using trainer|.*FutureWarning|warnings\.warn|"
    r"Unable to plot network|No module named 'hiddenlayer'|perform_everything_on_device|"
    r"I am process \d+ out of|sending off prediction|.*: $)")


def is_console_line(line: str) -> bool:
    """Lines worth echoing: not blank, not a tqdm bar (the stage bar shows progress), not
    nnU-Net's boilerplate, not a configuration dump longer than :data:`MAX_CONSOLE_LINE`
    characters. Everything goes to the stage's log file anyway."""
    text = line.strip()
    if not text or len(text) > MAX_CONSOLE_LINE or _TQDM.match(text) is not None:
        return False
    # nnU-Net prefixes its log lines with a timestamp: judge the message
    message = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ?", "", text)
    return bool(message) and _NOISE.match(message) is None


def nnunet_environment(work: str | os.PathLike, n_proc_da: int | None = None) -> dict[str, str]:
    """Environment for nnU-Net's console scripts: data folders under ``work``, nnunet-shape's
    trainers (``nnUNet_extTrainer``), no torch.compile, one export worker, unbuffered output.

    ``n_proc_da`` sets ``nnUNet_n_proc_DA`` -- for training only: the planner crashes with 0.
    """
    from nnunet_shape.cli import trainers_directory

    work = Path(work).resolve()
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
        "nnUNet_extTrainer": trainers_directory(),
        "nnUNet_compile": "false",
        "nnUNet_def_n_proc": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    env.pop("nnUNet_n_proc_DA", None)
    if n_proc_da is not None:
        env["nnUNet_n_proc_DA"] = str(int(n_proc_da))
    return env


class StageFailed(RuntimeError):
    """A demo stage failed; the message names the stage, the command and its log."""


def _console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def stream_command(args: Sequence[str], env: Mapping[str, str], log_file: Path,
                   on_line: Callable[[str], None], stage: str) -> None:
    """Run a console script, write all its output to ``log_file`` and hand every line (tqdm's
    carriage-return updates included: text mode splits on ``\\r``) to ``on_line``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(args) + "\n")
        process = subprocess.Popen(list(args), env=dict(env), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                on_line(line.rstrip("\n"))
        finally:
            process.stdout.close()
            code = process.wait()
    if code != 0:
        raise StageFailed(f"demo stage '{stage}' failed: {' '.join(args)} exited with code {code}; "
                          f"full log: {log_file}\n--- last lines ---\n" + "\n".join(tail[-25:]))


@dataclass
class StageRecord:
    name: str
    seconds: float
    note: str = ""


class PlainBar:
    """Progress for a non-terminal (CI logs, pipes): one line per update instead of tqdm's
    carriage-return redraws. Implements the subset of tqdm's API the demo uses."""

    def __init__(self, total: int | None, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self.started = time.monotonic()
        self._shown = -1
        print(f"{desc}: started", flush=True)

    def _line(self) -> str:
        of = f"/{self.total}" if self.total else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        return f"{self.desc}: {self.n}{of} {self.unit}{extra}, {time.monotonic() - self.started:.0f} s"

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def refresh(self) -> None:
        if self.n != self._shown:
            self._shown = self.n
            print(self._line(), flush=True)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        pass


class Stages:
    """``[k/N] name`` progress bars with elapsed time; records the wall time of every stage.

    ``fancy`` uses tqdm bars (a terminal); otherwise :class:`PlainBar` lines.
    """

    def __init__(self, total: int, fancy: bool = True):
        self.total = total
        self.index = 0
        self.records: list[StageRecord] = []
        self.fancy = fancy
        self.start = time.monotonic()

    @contextmanager
    def stage(self, name: str, total: int | None, unit: str = "step") -> Iterator[Any]:
        from tqdm import tqdm

        self.index += 1
        description = f"[{self.index}/{self.total}] {name}"
        if self.fancy:
            bar: Any = tqdm(total=total, desc=description, unit=unit, leave=True, dynamic_ncols=True,
                            file=sys.stdout, mininterval=0.5)
        else:
            bar = PlainBar(total, description, unit)
        started = time.monotonic()
        try:
            yield bar
        finally:
            bar.close()
        seconds = time.monotonic() - started
        self.records.append(StageRecord(name, seconds))
        self.echo(f"{description}: {seconds:.0f} s (total {time.monotonic() - self.start:.0f} s)")

    def skipped(self, name: str, note: str) -> None:
        self.index += 1
        self.records.append(StageRecord(name, 0.0, note))
        self.echo(f"[{self.index}/{self.total}] {name}: {note}")

    def echo(self, text: str) -> None:
        from tqdm import tqdm

        if self.fancy:
            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)


def _line_handler(bar: Any, echo: Callable[[str], None], kind: str) -> Callable[[str], None]:
    """Progress and echo for one command: ``kind`` is "plan", "train" or "predict".

    For "plan", nnU-Net's consecutive tqdm bars (fingerprint, then preprocessing) fill one stage
    bar one after the other.
    """
    phases: dict[str, int] = {}  # tqdm description -> its total, in order of appearance

    def handle(line: str) -> None:
        event = parse_progress(line)
        if event is not None:
            name, value = event
            if name == "tqdm" and kind == "plan":
                description, done, total = value
                phases.setdefault(description, total)
                order = list(phases)
                offset = sum(phases[d] for d in order[: order.index(description)])
                bar.n = min(offset + done, bar.total) if bar.total else offset + done
                bar.set_postfix_str(description, refresh=False)
                bar.refresh()
            elif name == "epoch_start" and kind == "train":
                bar.set_postfix_str(f"epoch {value}", refresh=True)
            elif name == "epoch_end" and kind == "train":
                bar.update(1)
            elif name == "validating" and kind == "train":
                bar.set_postfix_str(f"final validation: {value}", refresh=True)
            elif name == "predicted" and kind == "predict":
                bar.update(1)
        if is_console_line(line):
            echo(line.rstrip())

    return handle


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------

@dataclass
class DemoOptions:
    """Everything ``run_demo`` needs (the command-line options)."""

    output: Path
    n_train: int = 20
    n_test: int = 5
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    seed: int = 0
    trainer_suffix: str = DEFAULT_TRAINER_SUFFIX
    device: str = "cpu"
    skip_training: bool = False
    fold: str = DEFAULT_FOLD
    dataset_id: int = DEFAULT_DATASET_ID
    tta: bool = False
    n_proc_da: int = 0
    num_processes: int = 2
    progress: bool = True
    mirror_si: bool = False


@dataclass
class DemoResult:
    """Paths and numbers of one demo run."""

    output: Path
    rows: list[TableRow]
    avg_dice: dict[str, float]
    chance_avg: float
    ordering_holds: bool
    above_chance: bool
    verdict: str
    stages: list[StageRecord]
    total_seconds: float
    report: Path
    table_csv: Path
    overlays: list[Path] = field(default_factory=list)


def _dataset_folder_name(dataset_id: int) -> str:
    return f"Dataset{dataset_id:03d}_{DATASET_NAME}"


def _trainer_class(trainer: str) -> type:
    """A nnunet-shape trainer class by name (with its length suffix)."""
    import nnunet_shape.nnunet.training.shape_trainers as shape_trainers

    cls = getattr(shape_trainers, trainer, None)
    if cls is None:
        suffixes = sorted({v[0] for v in shape_trainers.LENGTH_VARIANTS})
        raise StageFailed(f"no trainer {trainer} in nnunet_shape/nnunet/training/shape_trainers.py "
                          f"(length suffixes there: {suffixes})")
    return cls


def _trainer_schedule(trainer: str) -> tuple[int, int, int]:
    """(epochs, iterations per epoch, validation iterations) of a nnunet-shape trainer class."""
    cls = _trainer_class(trainer)
    return int(cls.training_epochs), int(cls.iterations_per_epoch), int(cls.val_iterations_per_epoch)


def optimizer_description(trainer: str) -> str:
    """How a trainer optimises, for the report: the descriptor trainers use Adam, the
    full-supervision reference keeps nnU-Net's SGD (both with nnU-Net's poly decay)."""
    cls = _trainer_class(trainer)
    if getattr(cls, "optimizer_name", "sgd") == "adam":
        return f"Adam (lr {cls.initial_learning_rate:g}, betas {tuple(cls.adam_betas)}, poly decay)"
    return "nnU-Net's SGD (lr 0.01, momentum 0.99, Nesterov, poly decay)"


def superior_inferior_patch_axis(transpose_forward: Sequence[int]) -> int:
    """The patch axis that nnU-Net's ``transpose_forward`` makes of the phantoms' superior-inferior
    raw axis (patch axis ``i`` is raw axis ``transpose_forward[i]``)."""
    from nnunet_shape.demo.phantoms import SUPERIOR_INFERIOR_AXIS

    return [int(raw_axis) for raw_axis in transpose_forward].index(SUPERIOR_INFERIOR_AXIS)


def anatomical_mirror_axes(transpose_forward: Sequence[int]) -> tuple[int, ...]:
    """Patch axes that training may mirror: every axis but the superior-inferior one.

    Mirroring along it would put the tibia above the femur: same intensities, similar volume and
    spread, so a descriptor-only model can only tell them apart by position (docs/method.md,
    "Mirroring"). Medial-lateral mirroring (a left knee from a right one) stays.
    """
    fixed = superior_inferior_patch_axis(transpose_forward)
    return tuple(i for i in range(len(transpose_forward)) if i != fixed)


def trained_mirror_axes(fold_folder: Path) -> tuple[int, ...] | None:
    """The mirror axes a trained model used (stored by nnU-Net in the checkpoint; None: none)."""
    import torch

    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return None if axes is None else tuple(int(a) for a in axes)


def _mirror_axes_text(mirror_axes: Mapping[str, tuple[int, ...] | None], plans: Mapping[str, Any]) -> str:
    per_setting = "; ".join(f"{s.title}: {mirror_axes[s.slug] if mirror_axes[s.slug] else 'none'}" for s in SETTINGS)
    return (f"{per_setting} (patch axes, read from the checkpoints; superior-inferior is patch axis "
            f"{superior_inferior_patch_axis(plans['transpose_forward'])})")


def _prepare_output(output: Path, skip_training: bool) -> None:
    """Refuse to write into a non-empty folder that an earlier demo did not create; on a fresh
    run remove the previous run's work folder (nnU-Net would mix old and new results)."""
    if output.exists() and any(output.iterdir()) and not (output / MARKER_FILE).exists():
        raise StageFailed(f"{output} is not empty and was not written by the demo "
                          f"(no {MARKER_FILE}); choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER_FILE).write_text("written by python -m nnunet_shape.demo\n")
    if not skip_training:
        for name in ("work", "predictions", "evaluation", "curves", "overlays", "logs"):
            shutil.rmtree(output / name, ignore_errors=True)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_demo(options: DemoOptions) -> DemoResult:
    """Run every stage (see the module docstring) and write the report; returns its numbers."""
    output = Path(options.output).resolve()
    _prepare_output(output, options.skip_training)
    work = output / "work"
    logs = output / "logs"
    raw_dataset = work / "nnUNet_raw" / _dataset_folder_name(options.dataset_id)
    results_dataset = work / "nnUNet_results" / _dataset_folder_name(options.dataset_id)
    env_plan = nnunet_environment(work)
    env_train = nnunet_environment(work, options.n_proc_da)
    trainers = {s.slug: s.trainer + options.trainer_suffix for s in SETTINGS}
    schedules = {slug: _trainer_schedule(trainer) for slug, trainer in trainers.items()}
    spacing = phantom_spacing(options.shape)
    n_stages = 2 + 2 * len(SETTINGS) + 3
    stages = Stages(n_stages, fancy=options.progress and sys.stdout.isatty())
    echo = stages.echo

    def trained_folder(slug: str) -> Path:
        return results_dataset / f"{trainers[slug]}__nnUNetPlans__{CONFIGURATION}" / f"fold_{options.fold}"

    # 1 + 2: data and nnU-Net planning
    if options.skip_training:
        missing = [str(trained_folder(s.slug) / "checkpoint_final.pth") for s in SETTINGS
                   if not (trained_folder(s.slug) / "checkpoint_final.pth").is_file()]
        if missing or not (raw_dataset / "dataset.json").is_file():
            raise StageFailed("--skip-training: nothing to reuse; missing "
                              + ", ".join(missing or [str(raw_dataset / "dataset.json")]))
        stages.skipped("phantoms", f"reused {raw_dataset}")
        stages.skipped("nnUNetv2_plan_and_preprocess", "reused")
    else:
        from nnunet_shape.demo.phantoms import write_phantom_dataset

        with stages.stage("phantoms", 1, "dataset") as bar:
            bar.set_postfix_str(f"{options.n_train} train + {options.n_test} test, {options.shape}")
            write_phantom_dataset(work / "nnUNet_raw", n_train=options.n_train, n_test=options.n_test,
                                  seed=options.seed, dataset_id=options.dataset_id, name=DATASET_NAME,
                                  shape=options.shape, spacing=spacing,
                                  num_processes=max(1, options.num_processes))
            bar.update(1)
        with stages.stage("nnUNetv2_plan_and_preprocess", 2 * options.n_train, "case") as bar:
            stream_command(
                [_console_script("nnUNetv2_plan_and_preprocess"), "-d", str(options.dataset_id),
                 "-c", CONFIGURATION, "-npfp", str(options.num_processes), "-np", str(options.num_processes),
                 "--verify_dataset_integrity"],
                env_plan, logs / "plan_and_preprocess.log", _line_handler(bar, echo, "plan"),
                "nnUNetv2_plan_and_preprocess")

    # 3: training, mirrored only along anatomically possible axes (unless --mirror-si)
    if not options.mirror_si:
        from nnunet_shape.nnunet.training.whole_scan import MIRROR_AXES_ENV

        plans = _read_json(work / "nnUNet_preprocessed" / _dataset_folder_name(options.dataset_id) / "nnUNetPlans.json")
        env_train[MIRROR_AXES_ENV] = ",".join(str(a) for a in anatomical_mirror_axes(plans["transpose_forward"]))
    for setting in SETTINGS:
        trainer = trainers[setting.slug]
        name = f"nnUNetv2_train {setting.title}"
        if options.skip_training:
            stages.skipped(name, f"reused {trained_folder(setting.slug)}")
            continue
        epochs = schedules[setting.slug][0]
        with stages.stage(name, epochs, "epoch") as bar:
            stream_command(
                [_console_script("nnUNetv2_train"), str(options.dataset_id), CONFIGURATION, options.fold,
                 "-tr", trainer, "-device", options.device],
                env_train, logs / f"train_{setting.slug}.log", _line_handler(bar, echo, "train"), name)

    # 4: prediction of the test cases
    predictions = output / "predictions"
    test_images = sorted((raw_dataset / "imagesTs").glob("*_0000.*"))
    for setting in SETTINGS:
        name = f"nnUNetv2_predict {setting.title}"
        with stages.stage(name, len(test_images), "case") as bar:
            command = [_console_script("nnUNetv2_predict"), "-i", str(raw_dataset / "imagesTs"),
                       "-o", str(predictions / setting.slug / "raw"), "-d", str(options.dataset_id),
                       "-c", CONFIGURATION, "-f", options.fold, "-tr", trainers[setting.slug],
                       "-device", options.device, "-npp", "1", "-nps", "1"]
            if not options.tta:
                command.append("--disable_tta")
            shutil.rmtree(predictions / setting.slug / "raw", ignore_errors=True)
            stream_command(command, env_plan, logs / f"predict_{setting.slug}.log",
                           _line_handler(bar, echo, "predict"), name)

    dataset_json = _read_json(raw_dataset / "dataset.json")
    labels = sorted(int(v) for k, v in dataset_json["labels"].items() if k not in ("background", "ignore"))
    class_names = {int(v): k for k, v in dataset_json["labels"].items() if int(v) in labels}
    file_ending = dataset_json["file_ending"]

    # 5: largest component per label
    test_cases = sorted(p.name[: -len(file_ending)] for p in (raw_dataset / "labelsTs").iterdir()
                        if p.name.endswith(file_ending))
    with stages.stage("largest-component postprocessing", len(SETTINGS) * len(test_cases), "case") as bar:
        for setting in SETTINGS:
            postprocess_folder(predictions / setting.slug / "raw", predictions / setting.slug / "largest_component",
                               labels, file_ending, on_case=lambda _: bar.update(1))

    # 6: evaluation
    from nnunet_shape.nnunet.evaluate import evaluate_folder

    summaries: dict[tuple[str, str], dict] = {}
    with stages.stage("evaluation", len(SETTINGS) * len(POSTPROCESSING_VARIANTS), "folder") as bar:
        for setting in SETTINGS:
            for variant in POSTPROCESSING_VARIANTS:
                summaries[(setting.slug, variant)] = evaluate_folder(
                    raw_dataset / "labelsTs", predictions / setting.slug / variant, dataset_json,
                    output_dir=output / "evaluation" / setting.slug / variant, num_processes=1)
                bar.update(1)

    # 7: report
    with stages.stage("curves and overlays", len(test_cases) + 1, "file") as bar:
        curves = _copy_curves(output, {s.slug: trained_folder(s.slug) for s in SETTINGS})
        bar.update(1)
        overlays = []
        for case in test_cases:
            overlays.append(_case_overlay(output, raw_dataset, predictions, case, file_ending, class_names))
            bar.update(1)
    case_shape = _case_shape(raw_dataset / "labelsTs" / (test_cases[0] + file_ending))
    rows = table_rows(summaries, SETTINGS, options.trainer_suffix, case_shape, len(labels))
    table_csv = write_table_csv(rows, output / "table.csv")
    write_descriptor_errors_csv(summaries, SETTINGS, output / "descriptor_errors.csv")
    chance = chance_dice(summaries[(SETTINGS[0].slug, "raw")])
    chance_avg = sum(chance.values()) / len(chance)
    final = "largest_component"
    avg = {slug: float(summaries[(slug, final)]["foreground_mean"]["Dice"]) for slug in trainers}
    ordering, above, verdict = ordering_verdict(avg, chance_avg)
    total = time.monotonic() - stages.start
    plans = _read_json(trained_folder(SETTINGS[0].slug).parent / "plans.json")
    phantom_parameters = _read_json(raw_dataset / "phantom_parameters.json")
    mirror_axes = {s.slug: trained_mirror_axes(trained_folder(s.slug)) for s in SETTINGS}
    report = _write_report(output, options, rows, summaries, chance, verdict, stages.records, total, schedules,
                           trainers, plans, curves, overlays, case_shape, phantom_parameters, labels, mirror_axes)
    echo("")
    echo(format_dice_table(rows, final, chance))
    echo(verdict)
    echo(f"demo finished in {total / 60:.1f} min (budget {TIME_BUDGET_SECONDS / 60:.0f} min); report: {report}")
    return DemoResult(output=output, rows=rows, avg_dice=avg, chance_avg=chance_avg, ordering_holds=ordering,
                      above_chance=above, verdict=verdict, stages=stages.records, total_seconds=total,
                      report=report, table_csv=table_csv, overlays=overlays)


def _case_shape(path: Path) -> tuple[int, ...]:
    import SimpleITK as sitk

    return tuple(int(s) for s in reversed(sitk.ReadImage(str(path)).GetSize()))


def _copy_curves(output: Path, folders: Mapping[str, Path]) -> dict[str, list[Path]]:
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


def _case_overlay(output: Path, raw_dataset: Path, predictions: Path, case: str, file_ending: str,
                  class_names: Mapping[int, str]) -> Path:
    """Mid sagittal slice and the slice with the most cartilage: image, ground truth and every
    model's (postprocessed) prediction."""
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
    for setting in SETTINGS:
        segmentations[setting.title] = read(predictions / setting.slug / "largest_component" / f"{case}{file_ending}")
    cartilage = [label for label, name in class_names.items() if "cartilage" in name] or list(class_names)
    middle = mid_slice(image.shape, 0)
    detail = most_labelled_slice(reference, cartilage, 0)
    indices = [middle] if detail == middle else [middle, detail]
    row_texts = [f"mid sagittal (z={middle})"] + ([] if detail == middle else [f"most cartilage (z={detail})"])
    return save_overlay_figure(image, segmentations, class_names, output / "overlays" / f"{case}.png",
                               indices, axis=0, spacing=spacing, title=f"{case} (test)",
                               slice_labels=row_texts)


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _write_report(output: Path, options: DemoOptions, rows: Sequence[TableRow],
                  summaries: Mapping[tuple[str, str], Mapping[str, Any]], chance: Mapping[str, float],
                  verdict: str, records: Sequence[StageRecord], total_seconds: float,
                  schedules: Mapping[str, tuple[int, int, int]], trainers: Mapping[str, str], plans: dict,
                  curves: Mapping[str, list[Path]], overlays: Sequence[Path], case_shape: Sequence[int],
                  phantom_parameters: Mapping[str, Any], labels: Sequence[int],
                  mirror_axes: Mapping[str, tuple[int, ...] | None]) -> Path:
    splits = [case["split"] for case in phantom_parameters["cases"].values()]
    grid = [int(s) for s in phantom_parameters["shape_zyx"]]
    spacing = [float(s) for s in phantom_parameters["spacing_zyx_mm"]]
    configuration = plans["configurations"][CONFIGURATION]
    epochs, iterations, val_iterations = schedules[SETTINGS[0].slug]
    lines = [
        "# nnunet-shape demo: paper 000's Table 1 on knee phantoms",
        "",
        f"Run {datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'unknown host'} "
        f"({os.cpu_count()} CPU cores, device `{options.device}`): **{total_seconds / 60:.1f} min** in all "
        f"(budget {TIME_BUDGET_SECONDS / 60:.0f} min"
        f"{'' if total_seconds <= TIME_BUDGET_SECONDS else ' -- EXCEEDED'}).",
        "",
        f"Command: `python -m nnunet_shape.demo {' '.join(_command_line(options))}`",
        "",
        "## Table 1 (test set, after largest-component postprocessing)",
        "",
        "Dice in %, mean ± std over the test cases; *Avg* is the mean of the four class means "
        "(nnU-Net's foreground mean).",
        "",
        format_dice_table(rows, "largest_component", chance),
        f"**Expected result** (paper 000: full supervision > V+C+D > V+C, descriptor-only clearly above "
        f"chance): {verdict}.",
        "",
        f"Scale of this run: {epochs * iterations:,} training iterations per model (batch size "
        f"{configuration['batch_size']}), against nnU-Net's default schedule of 1000 × 250 = 250,000. "
        "Voxel supervision gets a gradient for every voxel from the first iteration; descriptor "
        "supervision only gets a handful of numbers per class, and its first iterations mostly fit "
        "the volumes while the centroids are still far off (see the satisfaction curves in "
        "`curves/*_progress_descriptors.png`), so the descriptor rows are the ones a CPU-sized "
        "schedule hurts most.",
        "",
        "### Before postprocessing",
        "",
        format_dice_table(rows, "raw"),
        "Postprocessing keeps the largest connected component of every label (nnU-Net's "
        "`remove_all_but_largest_component_from_segmentation`, full connectivity). The phantoms' "
        "tibial cartilage has two compartments (medial and lateral) under one label, so this step "
        "removes the smaller compartment even from a perfect prediction; paper 000 instead applies "
        "nnU-Net's postprocessing as chosen on cross-validation (`nnunet-shape "
        "determine-postprocessing`).",
        "",
        "### How annotations are counted",
        "",
        f"* Full supervision: every voxel of a case is labelled: {' × '.join(str(s) for s in case_shape)} = "
        f"{voxel_annotation_count(case_shape):,} voxels (paper 000: 384 × 384 × 160 ≈ 24 million).",
    ]
    for setting in SETTINGS:
        if setting.descriptors is None:
            continue
        parts = " + ".join(f"{d} {_VALUES_PER_CLASS[d](len(case_shape))}" for d in setting.descriptors)
        lines.append(f"* {setting.title}: {len(labels)} classes × ({parts}) = "
                     f"{descriptor_value_count(setting.descriptors, len(labels), len(case_shape))} values per case.")
    lines += [
        "* Paper 000 reports 16 (V+C) and 20 (V+C+D) shape descriptors: it counts the centroid as 3 "
        "values but 𝔇 as one descriptor per class, although the loss constrains one 𝔇 value per axis.",
        "",
        "## Descriptor errors (test set, after postprocessing)",
        "",
        "Relative volume error |V_pred − V_ref| / V_ref and distance between predicted and reference "
        "centroids (mm), from `nnunet-shape evaluate`; all variants in `descriptor_errors.csv`.",
        "",
        format_descriptor_error_table({s.slug: summaries[(s.slug, "largest_component")] for s in SETTINGS}, SETTINGS),
        "## Schedule",
        "",
        f"* Phantoms: {splits.count('train')} training + {splits.count('test')} test cases, seed "
        f"{phantom_parameters['seed']}, grid {' × '.join(str(s) for s in grid)} (z, y, x), spacing "
        f"{' × '.join(f'{s:.3g}' for s in spacing)} mm (the generator's default field of view).",
        f"* nnU-Net: `{CONFIGURATION}`, fold `{options.fold}`, whole scan as one patch "
        f"{configuration['patch_size']}, batch size {configuration['batch_size']}, network "
        f"`{configuration['architecture']['network_class_name']}`.",
        f"* Every setting: trainer suffix `{options.trainer_suffix}` = {epochs} epochs × {iterations} "
        f"iterations ({epochs * iterations} training iterations, {val_iterations} validation iterations "
        f"per epoch), `nnUNet_n_proc_DA={options.n_proc_da}`.",
        f"* Mirroring (augmentation and test-time axes): {_mirror_axes_text(mirror_axes, plans)}.",
        "* Optimiser: " + "; ".join(f"{s.title}: {optimizer_description(trainers[s.slug])}" for s in SETTINGS) + ".",
        "* Trainers: " + ", ".join(f"`{trainers[s.slug]}` ({s.title})" for s in SETTINGS) + ".",
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
    for setting in SETTINGS:
        for path in curves.get(setting.slug, []):
            relative = path.relative_to(output).as_posix()
            lines += [f"**{setting.title}** — `{path.name}`", "", f"![{setting.title} {path.name}]({relative})", ""]
    lines += ["## Test cases", "",
              "Mid sagittal slice and the slice with the most cartilage: image, ground truth, each model "
              "(after postprocessing).", ""]
    for path in overlays:
        relative = path.relative_to(output).as_posix()
        lines += [f"[{path.stem}]({relative})", "", f"![{path.stem}]({relative})", ""]
    lines += ["## Files", "",
              "* `table.csv` — Table 1 (both postprocessing variants, Dice 0..1)",
              "* `descriptor_errors.csv` — relative volume error, centroid distance, volumes per class",
              "* `evaluation/<setting>/<raw|largest_component>/` — nnU-Net's summary.json and "
              "`summary_shape.json`/`.md`",
              "* `predictions/<setting>/<raw|largest_component>/` — predicted test segmentations",
              "* `work/` — nnUNet_raw, nnUNet_preprocessed, nnUNet_results (checkpoints, training logs)",
              "* `logs/` — full output of every nnU-Net command", ""]
    report = output / "report.md"
    temporary = output / ".tmp_report.md"
    temporary.write_text("\n".join(lines))
    os.replace(temporary, report)
    return report


def _command_line(options: DemoOptions) -> list[str]:
    args = ["--output", str(options.output), "--n-train", str(options.n_train), "--n-test", str(options.n_test),
            "--shape", *[str(s) for s in options.shape], "--seed", str(options.seed),
            "--trainer-suffix", options.trainer_suffix, "--device", options.device, "--fold", options.fold]
    if options.skip_training:
        args.append("--skip-training")
    if options.tta:
        args.append("--tta")
    if options.mirror_si:
        args.append("--mirror-si")
    return args


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_shape.demo",
        description="Paper 000's Table 1 in miniature on knee phantoms: full supervision vs V+C vs "
                    "V+C+D, trained, predicted and evaluated with nnU-Net's console scripts on a CPU.")
    parser.add_argument("--output", "-o", type=Path, default=Path("demo_output"),
                        help="output folder (default demo_output); its work/ subfolder holds nnU-Net's data")
    parser.add_argument("--n-train", type=int, default=20, help="training phantoms (default 20)")
    parser.add_argument("--n-test", type=int, default=5, help="test phantoms (default 5)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(DEFAULT_SHAPE),
                        help="phantom grid; the spacing keeps the default field of view "
                             f"(default {' '.join(map(str, DEFAULT_SHAPE))})")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    parser.add_argument("--trainer-suffix", default=DEFAULT_TRAINER_SUFFIX,
                        help="training-length variant of all three trainers (default _demo; _debug for a "
                             "smoke run)")
    parser.add_argument("--device", default="cpu", help="nnU-Net -device: cpu, cuda or mps (default cpu)")
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse OUTPUT/work (phantoms, plans, trained models); predict, evaluate, report")
    parser.add_argument("--fold", default=DEFAULT_FOLD,
                        help="nnU-Net fold (default 0: 4/5 of the training cases, validation on the rest; "
                             "'all' trains on every case but validates on all of them, 8x mirrored)")
    parser.add_argument("--dataset-id", type=int, default=DEFAULT_DATASET_ID, help="dataset id (default 701)")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation in nnUNetv2_predict")
    parser.add_argument("--mirror-si", action="store_true",
                        help="also mirror along the superior-inferior axis, as nnU-Net does by default (puts the "
                             "tibia above the femur; default: medial-lateral and anterior-posterior only)")
    parser.add_argument("--n-proc-da", type=int, default=0,
                        help="nnUNet_n_proc_DA for training (default 0: augmentation in the training process)")
    parser.add_argument("--num-processes", type=int, default=2,
                        help="worker processes for phantoms and planning (default 2)")
    parser.add_argument("--no-progress", action="store_true",
                        help="plain progress lines instead of tqdm bars (the default when stdout is not a terminal)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.n_train < 1 or args.n_test < 1:
        print("need --n-train >= 1 and --n-test >= 1", file=sys.stderr)
        return 2
    if args.fold != "all" and args.n_train < 5:
        print(f"fold {args.fold} needs nnU-Net's 5-fold split, i.e. --n-train >= 5 (or --fold all)",
              file=sys.stderr)
        return 2
    options = DemoOptions(
        output=args.output, n_train=args.n_train, n_test=args.n_test, shape=tuple(args.shape), seed=args.seed,
        trainer_suffix=args.trainer_suffix, device=args.device, skip_training=args.skip_training, fold=args.fold,
        dataset_id=args.dataset_id, tta=args.tta, n_proc_da=args.n_proc_da,
        num_processes=max(1, args.num_processes), progress=not args.no_progress, mirror_si=args.mirror_si)
    try:
        run_demo(options)
    except StageFailed as error:
        print(f"\n{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
