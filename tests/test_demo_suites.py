"""The demo's comparison suites (``--suite weak`` / ``--suite priors``): effort, tables, plot, and
both suites end to end on tiny phantoms (slow)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_shape.demo import run as demo
from nnunet_shape.demo.console import StageFailed
from nnunet_shape.demo.suites import (
    SuiteRow,
    chance_iou,
    format_suite_table,
    full_contour_points,
    plot_iou_against_effort,
    sparse_contour_pixels,
    write_suite_csv,
)


def _summary(dice: dict[str, tuple[float, float]], iou: dict[str, tuple[float, float]]) -> dict:
    """A summary as ``evaluate_folder`` returns it, for classes "1" (femur) and "2" (tibia)."""
    return {
        "mean": {k: {"Dice": dice[k][0], "IoU": iou[k][0]} for k in dice},
        "std": {k: {"Dice": dice[k][1], "IoU": iou[k][1]} for k in dice},
        "foreground_mean": {"Dice": sum(v[0] for v in dice.values()) / len(dice),
                            "IoU": sum(v[0] for v in iou.values()) / len(iou)},
        "class_names": {"1": "femur", "2": "tibia"},
    }


@pytest.mark.parametrize("dice, expected", [(0.5, 1 / 3), (1.0, 1.0), (0.0, 0.0)])
def test_chance_iou_from_dice(dice, expected):
    assert chance_iou(dice) == pytest.approx(expected)


def test_chance_iou_is_the_dice_iou_identity_on_masks():
    rng = np.random.default_rng(0)
    reference, prediction = rng.random((8, 8, 8)) < 0.3, rng.random((8, 8, 8)) < 0.4
    tp = np.sum(reference & prediction)
    dice = 2 * tp / (reference.sum() + prediction.sum())
    iou = tp / np.sum(reference | prediction)
    assert chance_iou(float(dice)) == pytest.approx(float(iou))


def test_full_contour_points_by_hand(tmp_path):
    """A 2 x 2 block of label 1 in the first of two slices, 1 mm pixels: the 0.5 iso-line is
    2 (n - 1)(s_r + s_c) + 4 sqrt(0.5) = 4 + 2.83 pixels; label 2 is a single pixel in the second
    slice (4 sqrt(0.5)). With 2 mm pixels the length in mm doubles and in pixels stays."""
    array = np.zeros((2, 4, 4), dtype=np.uint8)
    array[0, 1:3, 1:3] = 1
    array[1, 0, 0] = 2
    expected = 4 + 4 * math.sqrt(0.5) + 4 * math.sqrt(0.5)
    for spacing in (1.0, 2.0):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((spacing, spacing, 3.0))
        path = tmp_path / f"case_{spacing}.nii.gz"
        sitk.WriteImage(image, str(path))
        assert full_contour_points([path], [1, 2]) == pytest.approx(expected)
    assert full_contour_points([path], [1]) == pytest.approx(4 + 4 * math.sqrt(0.5))


def test_sparse_contour_pixels_counts_each_case_in_its_own_spacing(tmp_path):
    """Case a: 10 mm of contour, voxels 1 x 1 x 2 mm (mean 4/3 mm): 7.5 pixels; case b: 30 mm,
    voxels 2 x 2 x 2 mm: 15 pixels; the mean is 11.25 pixels. (Dividing the mean length, 20 mm,
    by the first case's mean spacing would give 15; by the second's, 10.)"""
    (tmp_path / "labelsTr").mkdir()
    for case, spacing in (("a", (1.0, 1.0, 2.0)), ("b", (2.0, 2.0, 2.0))):
        image = sitk.GetImageFromArray(np.zeros((3, 4, 5), dtype=np.uint8))
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(tmp_path / "labelsTr" / f"{case}.nii.gz"))
    path = tmp_path / "sparse_slices.json"
    path.write_text(json.dumps({"cases": {"a": {"contour_length_mm": 10.0}, "b": {"contour_length_mm": 30.0}}}))
    assert sparse_contour_pixels(path, ".nii.gz") == pytest.approx((7.5 + 15.0) / 2)
    # a case without its label file: the error names the file, the case and the missing label map
    path.write_text(json.dumps({"cases": {"a": {"contour_length_mm": 10.0}, "c": {"contour_length_mm": 1.0}}}))
    with pytest.raises(StageFailed, match=r"sparse_slices.json: case 'c' has no label file .*c\.nii\.gz"):
        sparse_contour_pixels(path, ".nii.gz")


ROWS = [
    SuiteRow("Full supervision", "full", "every voxel", "nnUNetTrainerShapeFullSupervision_demo", 701,
             effort=1234.4, effort_unit="contour pixels"),
    SuiteRow("Weak-Net N=25", "weaknet25", "points", "nnUNetTrainerWeakNetWholeScan_demo", 701, effort=100.0,
             effort_unit="points"),
    SuiteRow("Chance", "chance", "random", baseline="chance"),
]
SUMMARIES = {
    "full": _summary({"1": (0.9, 0.01), "2": (0.8, 0.02)}, {"1": (0.82, 0.01), "2": (0.67, 0.03)}),
    "weaknet25": _summary({"1": (0.5, 0.1), "2": (math.nan, math.nan)}, {"1": (0.33, 0.1), "2": (math.nan, math.nan)}),
}
CHANCE = {"femur": 0.2, "tibia": 0.1}


def test_format_suite_table_iou_and_dice():
    iou = format_suite_table(ROWS, SUMMARIES, "IoU", CHANCE).splitlines()
    assert iou[0] == "| Row | Effort per case | mean IoU | femur | tibia |"
    assert iou[2] == "| Full supervision | 1,234 contour pixels | 74.5 | 82.0 ± 1.0 | 67.0 ± 3.0 |"
    assert iou[3].startswith("| Weak-Net N=25 | 100 points |") and iou[3].endswith("| 33.0 ± 10.0 | – |")
    chance_femur, chance_tibia = 0.2 / 1.8, 0.1 / 1.9
    assert iou[4] == (f"| Chance | – | {100 * (chance_femur + chance_tibia) / 2:.1f} | {100 * chance_femur:.1f} | "
                      f"{100 * chance_tibia:.1f} |")
    dice = format_suite_table(ROWS, SUMMARIES, "Dice", CHANCE).splitlines()
    assert dice[2] == "| Full supervision | 1,234 contour pixels | 85.0 | 90.0 ± 1.0 | 80.0 ± 2.0 |"
    assert dice[4] == "| Chance | – | 15.0 | 20.0 | 10.0 |"


def test_suite_csv_and_plot(tmp_path):
    path = write_suite_csv(ROWS, SUMMARIES, CHANCE, tmp_path / "table.csv")
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["row"], r["metric"]) for r in rows] == [(s, m) for s in ("full", "weaknet25", "chance")
                                                      for m in ("Dice", "IoU")]
    assert float(rows[1]["femur_mean"]) == 0.82 and float(rows[0]["effort_per_case"]) == 1234.4
    plot = plot_iou_against_effort(ROWS, SUMMARIES, CHANCE, tmp_path / "plot.png")
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("argv, shape, suffix, recon_row", [
    (["--suite", "weak"], (24, 32, 32), "_suite", False),
    (["--suite", "priors"], (24, 32, 32), "_suite", False),
    (["--suite", "weak", "--recon-row", "--trainer-suffix", "_demo", "--shape", "16", "32", "32"], (16, 32, 32),
     "_demo", True),
    ([], (32, 48, 48), "_demo", False),
])
def test_suites_default_to_their_grid_and_schedule(argv, shape, suffix, recon_row):
    """The suites train on 24 x 32 x 32 with the _suite schedule (10 x 50 iterations), Table 1 on
    32 x 48 x 48 with _demo; --recon-row adds V+C+D + reconstruction to the weak suite."""
    from nnunet_shape.nnunet.training.variants import LENGTH_SCHEDULES

    options, _ = demo.options_from_command_line(argv)
    assert (options.shape, options.trainer_suffix, options.recon_row) == (shape, suffix, recon_row)
    schedule = LENGTH_SCHEDULES[options.trainer_suffix]
    assert schedule.training_epochs * schedule.iterations_per_epoch == (500 if suffix == "_suite" else 600)
    assert demo.options_from_command_line(command_line_of_suite(options, argv))[0] == options


def command_line_of_suite(options, argv):
    from nnunet_shape.demo.report import command_line

    suite = argv[argv.index("--suite") + 1] if "--suite" in argv else "table1"
    return [*command_line(options), *(["--suite", suite] if suite != "table1" else [])]


def test_recon_row_is_for_the_weak_suite_only(tmp_path, capsys):
    assert demo.main(["--output", str(tmp_path / "o"), "--suite", "priors", "--recon-row"]) == 2
    assert "--recon-row: for --suite weak only, not --suite priors" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_suite_option_and_default_output(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.main(["--suite", "unknown"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    out = capsys.readouterr().out
    assert "--suite" in out and "demo_weak_output" in out


# ------------------------------------------------------------------------------------------------
# end to end, tiny
# ------------------------------------------------------------------------------------------------

def _run_suite(tmp_path, suite: str):
    output = tmp_path / f"demo_{suite}"
    completed = subprocess.run(
        [sys.executable, "-m", "nnunet_shape.demo", "--suite", suite, "--output", str(output), "--n-train", "5",
         "--n-test", "2", "--shape", "16", "32", "32", "--trainer-suffix", "_debug", "--no-progress",
         *(["--recon-row"] if suite == "weak" else [])],
        capture_output=True, text=True, timeout=1500)
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-3000:]
    with open(output / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    return output, rows, completed.stdout


@pytest.mark.slow
def test_weak_suite_end_to_end(tmp_path):
    output, rows, stdout = _run_suite(tmp_path, "weak")
    slugs = ["full", "slices1", "slices3", "weaknet25", "weaknet125", "vcd", "vcd_recon", "atlas",
             "descriptor_ellipsoids", "chance"]
    assert [r["row"] for r in rows if r["metric"] == "IoU"] == slugs
    by_slug = {r["row"]: r for r in rows if r["metric"] == "IoU"}
    # effort: 4 classes x N points; sparse slices cost less contour than contouring every slice
    assert float(by_slug["weaknet25"]["effort_per_case"]) == pytest.approx(4 * 25, rel=0.25)
    assert float(by_slug["weaknet125"]["effort_per_case"]) > float(by_slug["weaknet25"]["effort_per_case"])
    assert 0 < float(by_slug["slices1"]["effort_per_case"]) < float(by_slug["slices3"]["effort_per_case"]) \
        < float(by_slug["full"]["effort_per_case"])
    # every trained row its own nnUNet_results (Weak-Net twice with one trainer class), all on the
    # same whole-scan STD/EXP network
    for slug in slugs[:7]:
        assert list((output / "work" / "results" / slug).rglob("checkpoint_final.pth")), slug
        assert len(list((output / "predictions" / slug).glob("*.nii.gz"))) == 2
        (plans,) = (output / "work" / "results" / slug).rglob("plans.json")
        assert json.loads(plans.read_text())["configurations"]["3d_fullres"]["architecture"][
            "network_class_name"] == "nnunet_shape.network.std_exp.STDEXPNet", slug
    assert {r["trainer"] for r in rows if r["row"].startswith("weaknet")} == {"nnUNetTrainerWeakNetWholeScan_debug"}
    for slug in slugs[:-1]:
        summary = json.loads((output / "evaluation" / slug / "summary_shape.json").read_text())
        assert float(by_slug[slug]["mean"]) == pytest.approx(summary["foreground_mean"]["IoU"], abs=1e-9)
    report = (output / "report.md").read_text()
    assert "## IoU per class" in report and "## Dice per class" in report and "iou_vs_effort.png" in report
    assert (output / "iou_vs_effort.png").stat().st_size > 1000


@pytest.mark.slow
def test_priors_suite_end_to_end(tmp_path):
    output, rows, stdout = _run_suite(tmp_path, "priors")
    slugs = ["vcd", "clicks10", "clicks25", "prior_tight", "prior_loose", "prior_image_aware", "prior_other_seed",
             "atlas", "descriptor_ellipsoids", "chance"]
    assert [r["row"] for r in rows if r["metric"] == "Dice"] == slugs
    by_slug = {r["row"]: r for r in rows if r["metric"] == "Dice"}
    assert float(by_slug["prior_tight"]["effort_per_case"]) == 0.0
    tight = json.loads((output / "work" / "priors" / "prior_tight.json").read_text())
    loose = json.loads((output / "work" / "priors" / "prior_loose.json").read_text())
    assert tight != loose
    assert (output / "work" / "priors" / "prior_other_seed.json").is_file()
    assert "## Dice per class" in (output / "report.md").read_text()


# ------------------------------------------------------------------------------------------------
# --seeds N (Table 1 over training seeds)
# ------------------------------------------------------------------------------------------------

def _table_row(setting: str, avg: float, femur: float):
    from nnunet_shape.demo.report import TableRow

    return TableRow(setting=setting, trainer="t", postprocessing="chosen", avg_dice=avg, dice_mean={"femur": femur},
                    dice_std={"femur": 0.0}, annotations=1, annotation_unit="voxels")


def test_multi_seed_table_is_mean_and_std_across_seeds():
    from nnunet_shape.demo.report import format_multi_seed_table

    rows = {0: [_table_row("Full supervision", 0.8, 0.9), _table_row("V+C+D", 0.4, 0.5)],
            1: [_table_row("Full supervision", 0.6, 0.7), _table_row("V+C+D", 0.5, float("nan"))]}
    lines = format_multi_seed_table(rows, "chosen").splitlines()
    assert lines[0] == "| Setting | Avg (mean ± std over 2 seeds) | femur | Avg, seed 0 | Avg, seed 1 |"
    # sample std (ddof 1) of 0.8 and 0.6 is 0.1414; a NaN seed value leaves one value (no std)
    assert lines[2] == "| Full supervision | 70.0 ± 14.1 | 80.0 ± 14.1 | 80.0 | 60.0 |"
    assert lines[3] == "| V+C+D | 45.0 ± 7.1 | 50.0 | 40.0 | 50.0 |"


def test_training_environment_seeds_every_training(tmp_path):
    from nnunet_shape.demo.run import training_environment
    from nnunet_shape.demo.settings import DemoOptions

    env = training_environment(tmp_path, DemoOptions(output=tmp_path, training_seed=7, n_proc_da=0))
    assert env["nnUNetShape_seed"] == "7" and env["nnUNet_n_proc_DA"] == "0"


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "2", "--suite", "weak"]])
def test_seeds_option_is_checked(tmp_path, capsys, argv):
    assert demo.main(["--output", str(tmp_path / "o"), *argv]) == 2
    assert "--seeds" in capsys.readouterr().err


@pytest.mark.slow
def test_two_seed_demo_end_to_end(tmp_path):
    output = tmp_path / "seeds"
    completed = subprocess.run(
        [sys.executable, "-m", "nnunet_shape.demo", "--output", str(output), "--n-train", "5", "--n-test", "2",
         "--shape", "16", "32", "32", "--trainer-suffix", "_debug", "--no-progress", "--seeds", "2",
         "--training-seed", "3"], capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-3000:]
    for seed in (3, 4):
        log = next((output / f"seed_{seed}" / "work" / "nnUNet_results").rglob("training_log_*.txt")).read_text()
        assert f"seed: {seed}" in log
    report = (output / "report.md").read_text()
    assert "over 2 training seeds" in report and "seeds: seed 3" in report
    with open(output / "table_seeds.csv") as handle:
        assert {r["training_seed"] for r in csv.DictReader(handle)} == {"3", "4"}
