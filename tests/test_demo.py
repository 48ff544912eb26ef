"""``make demo`` (nnunet_shape.demo, nnunet_shape.demo.overlays): the pure parts by hand-computed values,
then one smoke run of the whole pipeline through nnU-Net's console scripts (tiny phantoms,
``_debug`` trainers)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_shape.demo import run as demo
from nnunet_shape.demo.console import is_console_line, parse_progress
from nnunet_shape.demo.overlays import (
    CLASS_COLOURS,
    class_colours,
    colourise,
    mid_slice,
    most_labelled_slice,
    save_overlay_figure,
)
from nnunet_shape.demo.report import (
    BASELINE_TITLES,
    TableRow,
    chance_dice,
    command_line,
    compartments_found,
    format_compartment_table,
    format_descriptor_error_table,
    format_dice_table,
    format_postprocessing_decisions,
    ordering_text,
    ordering_verdict,
    table_rows,
    write_table_csv,
)
from nnunet_shape.demo.run import keep_largest_component_per_label, postprocess_folder
from nnunet_shape.demo.settings import (
    BRAIN,
    BRAIN_HEMISPHERES,
    IMAGE_AWARE_SETTING,
    KNEE,
    SETTINGS,
    DemoOptions,
    dataset_folder_name,
    demo_data,
    demo_settings,
    descriptor_value_count,
    phantom_spacing,
    superior_inferior_patch_axis,
    voxel_annotation_count,
)

# ------------------------------------------------------------------------------------------------
# counting annotations
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("descriptors, n_classes, ndim, expected", [
    (("volume", "centroid"), 4, 3, 16),  # paper 000, Table 1 row 2
    (("volume", "centroid", "spread"), 4, 3, 28),  # 4 x (1 + 3 + 3)
    (("volume",), 4, 3, 4),
    (("covariance",), 1, 3, 6),  # upper triangle of a 3 x 3 matrix
    (("covariance",), 2, 2, 6),  # 2 x 3
    (("volume", "surface"), 2, 2, 4),
    (("centroid", "spread"), 5, 2, 20),
    ((), 4, 3, 0),
])
def test_descriptor_value_count(descriptors, n_classes, ndim, expected):
    assert descriptor_value_count(descriptors, n_classes, ndim) == expected


def test_descriptor_value_count_rejects_unknown_descriptor():
    with pytest.raises(ValueError, match="elongation"):
        descriptor_value_count(("volume", "elongation"), 4)


@pytest.mark.parametrize("shape, expected", [
    ((160, 384, 384), 23_592_960),  # paper 000's "24 million of voxels"
    ((32, 48, 48), 73_728),
    ((1, 1, 7), 7),
])
def test_voxel_annotation_count(shape, expected):
    assert voxel_annotation_count(shape) == expected


@pytest.mark.parametrize("shape", [(40, 64, 64), (32, 48, 48), (16, 32, 32), (7, 11, 13)])
def test_phantom_spacing_keeps_the_default_field_of_view(shape):
    from nnunet_shape.demo.phantoms import DEFAULT_FOV_MM, DEFAULT_SHAPE, DEFAULT_SPACING

    spacing = phantom_spacing(shape)
    assert np.allclose(np.multiply(shape, spacing), DEFAULT_FOV_MM)
    assert np.allclose(phantom_spacing(DEFAULT_SHAPE), DEFAULT_SPACING)


def test_settings_match_the_trainers():
    """The rows name real trainers, constrain what the trainer classes constrain, and every row
    (the image-aware one included) gets the same schedule from the _demo and _debug suffixes."""
    import nnunet_shape.nnunet.training.shape_trainers as shape_trainers

    assert [s.title for s in SETTINGS] == ["Full supervision", "V+C", "V+C+D"]
    assert demo_settings() == SETTINGS == demo_settings(image_aware=False)
    assert [s.title for s in demo_settings(image_aware=True)] == ["Full supervision", "V+C", "V+C+D",
                                                                  "V+C+D + image terms"]
    assert IMAGE_AWARE_SETTING.trainer == "nnUNetTrainerShapeDescriptorsImageAware"
    for setting in demo_settings(image_aware=True):
        cls = getattr(shape_trainers, setting.trainer)
        assert getattr(cls, "descriptors", None) == setting.descriptors
        # the intensity values a row is given are counted in its annotation
        given = tuple(cls.intensity_statistics) if getattr(cls, "intensity_weight", 0.0) else ()
        assert setting.intensity_statistics == given, setting.title
    assert IMAGE_AWARE_SETTING.value_names == ("volume", "centroid", "spread", "intensity_mean")
    assert descriptor_value_count(IMAGE_AWARE_SETTING.value_names, 4) == 32
    assert shape_trainers.nnUNetTrainerShapeDescriptorsImageAware.homogeneity_weight > 0  # it does use the image
    for suffix in ("_demo", "_debug"):
        schedules = {demo._trainer_schedule(s.trainer + suffix) for s in demo_settings(image_aware=True)}
        assert len(schedules) == 1, schedules


def test_optimizer_description_follows_the_trainer_classes():
    """The report names the optimiser each row really uses (descriptor rows: Adam; the
    full-supervision reference: nnU-Net's SGD), read from the classes, not written once."""
    assert demo.optimizer_description("nnUNetTrainerShapeDescriptors_demo") == \
        "Adam (lr 0.003, betas (0.9, 0.99), poly decay)"
    assert demo.optimizer_description("nnUNetTrainerShapeFullSupervision_demo").startswith("nnU-Net's SGD")


@pytest.mark.parametrize("transpose_forward, expected", [
    ((0, 1, 2), (0, 2)),  # the phantoms' plans: superior-inferior stays patch axis 1
    ((1, 0, 2), (1, 2)),  # a planner that moves it first: patch axis 0 is not mirrored
    ((2, 0, 1), (0, 1)),  # ... or last
])
def test_anatomical_mirror_axes_skip_the_superior_inferior_axis(transpose_forward, expected):
    assert demo.anatomical_mirror_axes(transpose_forward) == expected
    assert demo.anatomical_mirror_axes(transpose_forward, KNEE) == expected


@pytest.mark.parametrize("transpose_forward, brain, hemispheres, si", [
    ((0, 1, 2), (2,), (), 0),  # raw (z, y, x) = (SI, AP, LR): only left-right is mirrored
    ((2, 0, 1), (0,), (), 1),  # LR first, SI second
    ((1, 2, 0), (1,), (), 2),
])
def test_brains_are_mirrored_left_right_only(transpose_forward, brain, hemispheres, si):
    """The brains mirror along LR only (a symmetric template); the hemisphere classes never (the
    mirror image of a left class lies on the right); superior-inferior follows the same axes."""
    assert demo.anatomical_mirror_axes(transpose_forward, BRAIN) == brain
    assert demo.anatomical_mirror_axes(transpose_forward, BRAIN_HEMISPHERES) == hemispheres
    assert superior_inferior_patch_axis(transpose_forward, BRAIN) == si
    assert superior_inferior_patch_axis((0, 1, 2), KNEE) == superior_inferior_patch_axis((0, 1, 2)) == 1


def test_demo_data_of_the_options():
    assert demo_data(DemoOptions(output=Path("o"))) is KNEE
    assert demo_data(DemoOptions(output=Path("o"), data="brain")) is BRAIN
    assert demo_data(DemoOptions(output=Path("o"), data="brain", hemispheres=True)) is BRAIN_HEMISPHERES
    with pytest.raises(ValueError, match="'liver'.*knee, brain"):
        demo_data(DemoOptions(output=Path("o"), data="liver"))
    with pytest.raises(ValueError, match="--data knee"):
        demo_data(DemoOptions(output=Path("o"), hemispheres=True))
    assert [dataset_folder_name(701), dataset_folder_name(720, BRAIN), dataset_folder_name(721, BRAIN_HEMISPHERES)] \
        == ["Dataset701_KneePhantom", "Dataset720_BrainMNI", "Dataset721_BrainMNIHemispheres"]
    assert (KNEE.overlay_plane, BRAIN.overlay_plane) == ("sagittal", "axial")


def test_unknown_trainer_suffix_names_the_available_ones():
    with pytest.raises(demo.StageFailed, match="_demo"):
        demo._trainer_schedule("nnUNetTrainerShapeDescriptors_nope")


# ------------------------------------------------------------------------------------------------
# tables from evaluate_folder-like summaries
# ------------------------------------------------------------------------------------------------

def _summary(dice_per_case: dict[int, list[float]], n_ref: dict[int, list[int]], n_voxels: int = 100) -> dict:
    """A summary in evaluate_folder's layout with the given Dice per case and reference sizes."""
    labels = list(dice_per_case)
    n_cases = len(next(iter(dice_per_case.values())))
    cases = []
    for i in range(n_cases):
        metrics = {}
        for label in labels:
            tp = n_ref[label][i]  # only counts matter for chance: n_ref = TP + FN, total = n_voxels
            metrics[label] = {"Dice": dice_per_case[label][i], "TP": tp, "FN": 0, "FP": 0,
                              "TN": n_voxels - tp, "n_ref": n_ref[label][i],
                              "RelativeVolumeError": 0.1 * (i + 1), "CentroidDistance_mm": float(label)}
        cases.append({"metrics": metrics})
    mean = {l: {"Dice": float(np.mean(dice_per_case[l])), "RelativeVolumeError": 0.15,
                "CentroidDistance_mm": float(l)} for l in labels}
    std = {l: {"Dice": float(np.std(dice_per_case[l])), "RelativeVolumeError": 0.05,
               "CentroidDistance_mm": 0.0} for l in labels}
    return {"metric_per_case": cases, "mean": mean, "std": std,
            "foreground_mean": {"Dice": float(np.mean([mean[l]["Dice"] for l in labels]))},
            "class_names": {1: "femur", 2: "femoral_cartilage", 3: "tibia", 4: "tibial_cartilage"}}


def test_chance_dice_is_the_class_volume_fraction():
    summary = _summary({1: [0.9, 0.8], 2: [0.5, 0.7]}, {1: [25, 15], 2: [2, 4]}, n_voxels=100)
    chance = chance_dice(summary)
    assert chance == pytest.approx({"femur": 0.20, "femoral_cartilage": 0.03})


@pytest.mark.parametrize("fraction", [0.05, 0.3])
def test_chance_dice_matches_random_labelling(fraction):
    """The formula Dice = f for random voxels drawn at the true frequency f, by simulation."""
    rng = np.random.default_rng(0)
    reference = rng.random(200_000) < fraction
    prediction = rng.random(200_000) < fraction
    dice = 2 * np.sum(reference & prediction) / (reference.sum() + prediction.sum())
    assert dice == pytest.approx(fraction, rel=0.05)


def _three_summaries() -> dict:
    return {
        ("full_supervision", "largest_component"): _summary(
            {1: [0.983, 0.983], 2: [0.88, 0.88], 3: [0.984, 0.984], 4: [0.846, 0.846]},
            {l: [1, 1] for l in (1, 2, 3, 4)}),
        ("vc", "largest_component"): _summary(
            {1: [0.5, 0.7], 2: [0.4, 0.4], 3: [0.7, 0.7], 4: [0.3, 0.3]}, {l: [1, 1] for l in (1, 2, 3, 4)}),
        ("vcd", "largest_component"): _summary(
            {1: [0.8, 0.9], 2: [0.5, 0.5], 3: [0.8, 0.8], 4: [0.5, 0.5]}, {l: [1, 1] for l in (1, 2, 3, 4)}),
    }


def test_table_rows_and_markdown_table():
    rows = table_rows(_three_summaries(), SETTINGS, "_demo", (32, 48, 48), n_classes=4)
    assert [(r.setting, r.postprocessing) for r in rows] == [
        ("Full supervision", "largest_component"), ("V+C", "largest_component"), ("V+C+D", "largest_component")]
    assert [r.trainer for r in rows] == ["nnUNetTrainerShapeFullSupervision_demo",
                                         "nnUNetTrainerShapeDescriptorsVC_demo", "nnUNetTrainerShapeDescriptors_demo"]
    assert [(r.annotations, r.annotation_unit) for r in rows] == [
        (73_728, "voxels"), (16, "descriptor values"), (28, "descriptor values")]
    assert rows[1].dice_mean["femur"] == pytest.approx(0.6)
    assert rows[1].dice_std["femur"] == pytest.approx(0.1)
    assert rows[0].avg_dice == pytest.approx((0.983 + 0.88 + 0.984 + 0.846) / 4)

    table = format_dice_table(rows, "largest_component", chance={"femur": 0.1, "femoral_cartilage": 0.02,
                                                                  "tibia": 0.1, "tibial_cartilage": 0.0})
    lines = table.strip().splitlines()
    assert lines[0] == ("| Setting | Avg | femur | femoral_cartilage | tibia | tibial_cartilage "
                        "| # annotations per case |")
    assert lines[2] == "| Full supervision | 92.3 | 98.3 ± 0.0 | 88.0 ± 0.0 | 98.4 ± 0.0 | 84.6 ± 0.0 | 73,728 voxels |"
    assert lines[3] == "| V+C | 50.0 | 60.0 ± 10.0 | 40.0 ± 0.0 | 70.0 ± 0.0 | 30.0 ± 0.0 | 16 descriptor values |"
    assert lines[5].startswith("| Chance (random voxels at the true class frequencies) | 5.5 | 10.0 | 2.0 | 10.0 "
                               "| 0.0 |")
    with pytest.raises(ValueError, match="raw"):
        format_dice_table(rows, "raw")


def _baseline_summary(femur: float, tibia: float) -> dict:
    return {"mean": {"1": {"Dice": femur}, "2": {"Dice": tibia}}, "std": {"1": {"Dice": 0.1}, "2": {"Dice": 0.0}},
            "foreground_mean": {"Dice": (femur + tibia) / 2}, "class_names": {"1": "femur", "2": "tibia"}}


def test_baseline_rows_table_and_verdict():
    from nnunet_shape.demo.report import baseline_rows, baseline_verdict

    rows = baseline_rows({"atlas": _baseline_summary(0.6, 0.4), "descriptor_ellipsoids": _baseline_summary(0.3, 0.1)},
                         case_shape=(2, 3, 4), n_classes=2)
    assert [(r.setting, r.postprocessing, r.annotations, r.avg_dice) for r in rows] == [
        (BASELINE_TITLES["atlas"], "none", 24, 0.5), (BASELINE_TITLES["descriptor_ellipsoids"], "none", 14, 0.2)]
    assert rows[0].dice_mean == {"femur": 0.6, "tibia": 0.4} and rows[0].dice_std == {"femur": 0.1, "tibia": 0.0}
    text = baseline_verdict({"vcd": 0.3, "vc": 0.1, "full_supervision": 0.9}, rows)
    assert text == ("V+C+D does NOT beat the atlas (30.0 vs 50.0 %), beats the descriptor ellipsoids (30.0 vs 20.0 %); "
                    "V+C does NOT beat the atlas (10.0 vs 50.0 %), does NOT beat the descriptor ellipsoids "
                    "(10.0 vs 20.0 %)")
    # the image-aware row first (the expected order), judged against the same bars
    assert baseline_verdict({"vc": 0.1, "image_aware": 0.55, "vcd": 0.3}, rows).startswith(
        "V+C+D + image terms beats the atlas (55.0 vs 50.0 %), beats the descriptor ellipsoids (55.0 vs 20.0 %); "
        "V+C+D does NOT beat the atlas")
    model = TableRow("V+C+D", "t", "chosen", 0.3, {"femur": 0.5, "tibia": 0.1}, {"femur": 0.0, "tibia": 0.0}, 14,
                     "descriptor values")
    lines = format_dice_table([model], "chosen", baselines=rows).splitlines()
    assert lines[3] == f"| {BASELINE_TITLES['atlas']} | 50.0 | 60.0 ± 10.0 | 40.0 ± 0.0 | 24 voxels (training labels) |"
    assert len(lines) == 5


def test_descriptor_error_table_in_percent_and_mm():
    summaries = {slug: s for (slug, _), s in _three_summaries().items()}
    table = format_descriptor_error_table(summaries, SETTINGS)
    assert "| V+C+D | tibia | 15.0 ± 5.0 | 3.00 ± 0.00 |" in table
    assert len(table.strip().splitlines()) == 2 + 3 * 4


@pytest.mark.parametrize("full, vcd, vc, chance, ordering, above", [
    (0.92, 0.67, 0.55, 0.05, True, True),  # paper 000's numbers
    (0.92, 0.55, 0.67, 0.05, False, True),  # V+C beats V+C+D
    (0.60, 0.67, 0.55, 0.05, False, True),  # descriptors beat full supervision
    (0.92, 0.20, 0.10, 0.05, True, False),  # 0.10 is not 10 points above 0.05
    (0.92, 0.67, 0.67, 0.05, False, True),  # ties do not order
])
def test_ordering_verdict(full, vcd, vc, chance, ordering, above):
    holds, clearly_above, text = ordering_verdict({"full_supervision": full, "vcd": vcd, "vc": vc}, chance)
    assert (holds, clearly_above) == (ordering, above)
    assert f"{100 * full:.1f} / {100 * vcd:.1f} / {100 * vc:.1f}" in text
    # each descriptor row is judged against chance on its own
    for title, dice in (("V+C+D", vcd), ("V+C", vc)):
        verdict = "clearly above" if dice > chance + 0.10 else "NOT clearly above"
        assert f"{title} {verdict} ({100 * dice:.1f} %)" in text


@pytest.mark.parametrize("full, image, vcd, vc, ordering, above", [
    (0.90, 0.70, 0.60, 0.50, True, True),
    (0.90, 0.55, 0.60, 0.50, False, True),  # the image terms below V+C+D
    (0.65, 0.70, 0.60, 0.50, False, True),  # ... above full supervision
    (0.90, 0.60, 0.60, 0.50, False, True),  # a tie does not order
    (0.90, 0.70, 0.60, 0.65, False, True),  # V+C beats V+C+D: the paper's pair fails, the image row is fine
    (0.90, 0.50, 0.30, 0.10, True, False),  # ordered, but V+C is not 10 points above chance (0.05)
    (0.90, 0.12, 0.11, 0.10, True, False),
])
def test_ordering_verdict_with_the_image_aware_row(full, image, vcd, vc, ordering, above):
    """Four rows: full supervision > V+C+D + image terms > V+C+D > V+C, every neighbouring pair
    strictly, and every descriptor row (the image-aware one too) clearly above chance."""
    avg = {"full_supervision": full, "vc": vc, "vcd": vcd, "image_aware": image}  # any key order
    holds, clearly_above, text = ordering_verdict(avg, 0.05)
    assert (holds, clearly_above) == (ordering, above)
    assert text.startswith("ordering full supervision > V+C+D + image terms > V+C+D > V+C: "
                           + ("holds" if ordering else "does NOT hold")
                           + f" ({100 * full:.1f} / {100 * image:.1f} / {100 * vcd:.1f} / {100 * vc:.1f} % mean Dice)")
    for title, dice in (("V+C+D + image terms", image), ("V+C+D", vcd), ("V+C", vc)):
        assert f"{title} {'clearly above' if dice > 0.15 else 'NOT clearly above'} ({100 * dice:.1f} %)" in text


def test_ordering_verdict_text_in_full():
    _, _, text = ordering_verdict({"full_supervision": 0.9, "image_aware": 0.7, "vcd": 0.6, "vc": 0.1}, 0.04)
    assert text == ("ordering full supervision > V+C+D + image terms > V+C+D > V+C: holds (90.0 / 70.0 / 60.0 / 10.0 % "
                    "mean Dice); descriptor-only training against chance (4.0 % + 10 points = 14.0 %): "
                    "V+C+D + image terms clearly above (70.0 %), V+C+D clearly above (60.0 %), "
                    "V+C NOT clearly above (10.0 %)")
    _, _, text = ordering_verdict({"full_supervision": 0.9, "vcd": 0.6, "vc": 0.5}, 0.04)
    assert text == ("ordering full supervision > V+C+D > V+C: holds (90.0 / 60.0 / 50.0 % mean Dice); descriptor-only "
                    "training against chance (4.0 % + 10 points = 14.0 %): V+C+D clearly above (60.0 %), "
                    "V+C clearly above (50.0 %)")
    assert ordering_text(["vc", "full_supervision", "vcd"]) == "full supervision > V+C+D > V+C"
    with pytest.raises(ValueError, match="'vc'"):
        ordering_verdict({"full_supervision": 0.9, "vcd": 0.6}, 0.04)
    with pytest.raises(ValueError, match="recon"):
        ordering_text(["vc", "recon"])


def test_table_csv_round_trip(tmp_path):
    rows = [TableRow("V+C", "T_demo", "raw", 0.5, {"femur": 0.6, "tibia": 0.4}, {"femur": 0.1, "tibia": 0.0},
                     16, "descriptor values")]
    path = write_table_csv(rows, tmp_path / "table.csv")
    with open(path) as handle:
        (line,) = list(csv.DictReader(handle))
    assert line["setting"] == "V+C" and line["postprocessing"] == "raw"
    assert float(line["dice_femur_mean"]) == 0.6 and float(line["dice_femur_std"]) == 0.1
    assert float(line["avg_dice"]) == 0.5 and line["annotations_per_case"] == "16"


# ------------------------------------------------------------------------------------------------
# postprocessing
# ------------------------------------------------------------------------------------------------

def _two_component_case() -> tuple[np.ndarray, np.ndarray]:
    segmentation = np.zeros((4, 6, 6), dtype=np.uint8)
    segmentation[0, 0:2, 0:2] = 1  # label 1: 4 voxels ...
    segmentation[3, 5, 5] = 1  # ... and a stray voxel
    segmentation[2, 2, 2] = 2  # label 2: two voxels touching only at a corner (26-connected)
    segmentation[3, 3, 3] = 2
    segmentation[1, 4, 0] = 3  # label 3: two single voxels, a tie: both kept
    segmentation[3, 0, 4] = 3
    expected = segmentation.copy()
    expected[3, 5, 5] = 0
    return segmentation, expected


def test_keep_largest_component_per_label():
    segmentation, expected = _two_component_case()
    before = segmentation.copy()
    result = keep_largest_component_per_label(segmentation, [1, 2, 3, 4])
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(segmentation, before)  # input untouched


def test_postprocess_folder_keeps_geometry(tmp_path):
    segmentation, expected = _two_component_case()
    image = sitk.GetImageFromArray(segmentation)
    image.SetSpacing((0.5, 0.7, 1.4))
    image.SetOrigin((1.0, -2.0, 3.0))
    (tmp_path / "in").mkdir()
    sitk.WriteImage(image, str(tmp_path / "in" / "case_000.nii.gz"))
    seen = []
    written = postprocess_folder(tmp_path / "in", tmp_path / "out", [1, 2, 3], on_case=seen.append)
    assert [p.name for p in written] == ["case_000.nii.gz"] and seen == ["case_000.nii.gz"]
    result = sitk.ReadImage(str(written[0]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), expected)
    assert result.GetSpacing() == pytest.approx((0.5, 0.7, 1.4))
    assert result.GetOrigin() == pytest.approx((1.0, -2.0, 3.0))
    with pytest.raises(FileNotFoundError, match="no"):
        postprocess_folder(tmp_path / "out", tmp_path / "x", [1], file_ending=".mha")


def _decision(label, name, applied, before, after, step="keep the largest component") -> dict:
    return {"label": label, "class": name, "step": step, "applied": applied, "before": before, "after": after,
            "rule": "dice", "components": 1, "criterion": "", "detail": ""}


def test_format_postprocessing_decisions():
    decisions = {
        "full_supervision": [_decision("foreground", "all foreground labels", False, 0.9, 0.5),
                             _decision(1, "femur", True, 0.98, 0.99),
                             _decision(4, "tibial_cartilage", False, 0.875, 0.592)],
        "vc": [_decision("foreground", "all foreground labels", False, 0.4, 0.3),
               _decision(1, "femur", False, 0.5, 0.5),
               _decision(4, "tibial_cartilage", True, 0.3, 0.31, "keep the 2 largest components")],
    }
    lines = format_postprocessing_decisions(decisions, SETTINGS).strip().splitlines()
    assert lines[0] == "| Setting | all foreground | femur | tibial_cartilage |"
    assert lines[2] == ("| Full supervision | not applied (largest component), 90.00 → 50.00 "
                        "| **largest component**, 98.00 → 99.00 | not applied (largest component), 87.50 → 59.20 |")
    assert lines[3] == ("| V+C | not applied (largest component), 40.00 → 30.00 | not applied (largest component), "
                        "50.00 → 50.00 | **2 largest components**, 30.00 → 31.00 |")
    assert lines[4] == "| V+C+D | - | - | - |"  # no decision for that setting


def test_compartments_found():
    reference = np.zeros((3, 4, 12), dtype=bool)
    reference[1, 1:3, 0:4] = True  # compartment of 8 voxels
    reference[1, 1:3, 7:12] = True  # compartment of 10 voxels
    prediction = np.zeros_like(reference)
    assert compartments_found(reference, prediction) == (0, 2)
    prediction[1, 1, 0] = True  # 1/8 of the first: found at 10 %
    assert compartments_found(reference, prediction) == (1, 2)
    prediction[1, 1, 11] = True  # 1/10 of the second: found (>= 10 %)
    assert compartments_found(reference, prediction) == (2, 2)
    assert compartments_found(reference, prediction, min_fraction=0.2) == (0, 2)
    prediction[0, 0, 5] = True  # voxels outside the reference change nothing
    assert compartments_found(reference, prediction) == (2, 2)
    assert compartments_found(np.zeros_like(reference), prediction) == (0, 0)


def test_format_compartment_table():
    counts = {"full_supervision": {4: [(2, 2), (2, 2)]}, "vc": {4: [(1, 2), (2, 2)]}, "vcd": {4: [(1, 2), (1, 2)]}}
    lines = format_compartment_table(counts, SETTINGS, {4: "tibial_cartilage"}).strip().splitlines()
    assert lines[0] == "| Setting | tibial_cartilage |"
    assert lines[2:] == ["| Full supervision | 2/2 cases (2/2, 2/2) |", "| V+C | 1/2 cases (1/2, 2/2) |",
                         "| V+C+D | 0/2 cases (1/2, 1/2) |"]


# ------------------------------------------------------------------------------------------------
# console output of nnU-Net's scripts
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, event", [
    ("2026-11-22 08:38:26.090837: Epoch 12 ", ("epoch_start", 12)),
    ("2026-11-22 08:38:49.458001: Epoch time: 23.37 s", ("epoch_end", None)),
    ("done with knee_020", ("predicted", "knee_020")),
    ("perform_everything_on_device: False", ("predicting", None)),
    ("2026-11-22 08:38:54.986635: predicting knee_000", ("validating", "knee_000")),
    ("Preprocessing cases:  50%|█████     | 10/20 [00:10<00:02,  3.75it/s]", ("tqdm", ("Preprocessing cases", 10, 20))),
    ("Extracting dataset fingerprint: 100%|██████████| 20/20 [01:09<00:00,  5.10it/s]",
     ("tqdm", ("Extracting dataset fingerprint", 20, 20))),
    ("2026-11-22 08:38:49.452033: train_loss 266.9927", None),
    ("Epoch time is not at the start", None),
])
def test_parse_progress(line, event):
    assert parse_progress(line) == event


@pytest.mark.parametrize("line, shown", [
    ("2026-11-22 08:38:49.458001: Epoch time: 23.37 s", True),
    ("2026-11-22 08:38:49.457745: Pseudo dice (information only) [0.1, 0.0]", True),
    ("2026-11-22 08:38:49.457515: descriptor satisfaction (train/val/val EMA): 0.014 / 0.000 / 0.000", True),
    ("Predicting knee_005:", True),
    ("Please cite the following paper when using nnU-Net:", False),
    ("#######################################################################", False),
    ("2026-11-22 08:38:26.067074: No module named 'hiddenlayer'", False),
    ("2026-11-22 08:38:26.080045: ", False),
    ("  warnings.warn(", False),
    ("", False),
    ("x" * 300, False),
    ("Preprocessing cases:  50%|█████     | 10/20 [00:10<00:02,  3.75it/s]", False),
])
def test_is_console_line(line, shown):
    assert is_console_line(line) is shown


# ------------------------------------------------------------------------------------------------
# overlays
# ------------------------------------------------------------------------------------------------

def test_class_colours_are_fixed_per_label():
    assert class_colours([1, 4]) == {1: CLASS_COLOURS[0], 4: CLASS_COLOURS[3]}
    assert class_colours([4]) == {4: CLASS_COLOURS[3]}  # independent of the other labels present
    assert class_colours([9]) == {9: CLASS_COLOURS[0]}  # cycles
    with pytest.raises(ValueError, match="0"):
        class_colours([0, 1])


def test_colourise():
    labels = np.array([[0, 1], [2, 5]])
    rgba = colourise(labels, {1: (1.0, 0.0, 0.0), 2: (0.0, 0.0, 1.0)}, alpha=0.5)
    assert rgba.shape == (2, 2, 4)
    np.testing.assert_allclose(rgba[0, 1], [1, 0, 0, 0.5])
    np.testing.assert_allclose(rgba[1, 0], [0, 0, 1, 0.5])
    assert rgba[0, 0, 3] == 0 and rgba[1, 1, 3] == 0  # background and uncoloured labels


def test_slice_choice():
    labels = np.zeros((5, 3, 3), dtype=np.uint8)
    assert mid_slice(labels.shape) == 2
    assert most_labelled_slice(labels, [2, 4]) == 2  # nothing there: the middle
    labels[1, :, :2] = 2
    labels[3, 0, 0] = 4
    labels[4] = 1  # not a requested class
    assert most_labelled_slice(labels, [2, 4]) == 1
    assert most_labelled_slice(labels, [1]) == 4
    assert most_labelled_slice(labels, [2], axis=2) == 0


def test_save_overlay_figure(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 8, 10)).astype(np.float32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[2:4, 2:6, 3:7] = 1
    path = save_overlay_figure(image, {"ground truth": labels, "model": labels[::-1].copy()},
                               {1: "femur"}, tmp_path / "sub" / "case.png", [3, 1], spacing=(1.4, 0.7, 0.7),
                               title="case", dpi=50)
    picture = matplotlib.image.imread(str(path))
    # 3 columns x 2.6 in, 2 rows x 2.6 in + 0.9 in legend, at 50 dpi
    assert picture.shape[:2] == (round((2 * 2.6 + 0.9) * 50), round(3 * 2.6 * 50))
    with pytest.raises(ValueError, match="model"):
        save_overlay_figure(image, {"model": labels[:, :, :5]}, {1: "femur"}, tmp_path / "x.png", [0])


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--output", "--n-train", "--n-test", "--shape", "--seed", "--trainer-suffix", "--device",
                   "--skip-training", "--fold", "--tta", "--data", "--spacing", "--hemispheres", "--image-aware"):
        assert option in text
    assert "demo_brain_output" in text


def test_default_options_are_make_demos():
    """No option: the knee phantoms, Table 1's three rows, the options make demo always had."""
    options, suite = demo.options_from_command_line([])
    assert suite == "table1"
    assert options == DemoOptions(output=Path("demo_output"))
    assert options.data == "knee" and options.dataset_id == 701 and options.shape == (32, 48, 48)
    assert not options.image_aware


@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="the brain data needs nilearn")
@pytest.mark.parametrize("argv, expected", [
    (["--data", "brain"], dict(data="brain", dataset_id=720, output=Path("demo_brain_output"), spacing_mm=5.0)),
    (["--data", "brain", "--hemispheres", "--image-aware", "--spacing", "8", "--seeds", "3"],
     dict(data="brain", hemispheres=True, image_aware=True, dataset_id=721, spacing_mm=8.0, seeds=3,
          output=Path("demo_brain_hemispheres_output"))),
    (["--data", "brain", "-o", "x", "--dataset-id", "730"], dict(data="brain", dataset_id=730, output=Path("x"))),
    (["--image-aware"], dict(image_aware=True)),
])
def test_data_and_image_aware_options(argv, expected):
    options, suite = demo.options_from_command_line(argv)
    assert suite == "table1"
    assert options == replace(DemoOptions(output=Path("demo_output")), **expected)


@pytest.mark.parametrize("argv, message", [
    (["--data", "brain", "--shape", "8", "8", "8"], "--data brain does not take --shape (the brains' grid follows "
                                                      "from --spacing MM"),
    (["--data", "brain", "--mirror-si"], "--data brain does not take --mirror-si (the brains are mirrored left-right "
                                         "only"),
    (["--spacing", "4"], "--data knee does not take --spacing (the phantoms' spacing follows from --shape"),
    (["--hemispheres", "--shape", "8", "8", "8"], "--data knee does not take --hemispheres (the hemispheres split"),
    (["--data", "brain", "--suite", "weak"], "--data brain: for --suite table1 only"),
    (["--image-aware", "--suite", "priors"], "--image-aware: for --suite table1 only"),
    (["--data", "brain", "--spacing", "0.5"], "--spacing: spacing_mm must be 1..20 mm"),
])
def test_options_the_data_refuses(tmp_path, capsys, argv, message):
    assert demo.main(["--output", str(tmp_path / "o"), *argv]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_brain_data_without_nilearn_stops_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # find_spec answers None: not installed
    assert demo.main(["--output", str(tmp_path / "o"), "--data", "brain"]) == 2
    assert "pip install nilearn" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="the brain data needs nilearn")
@pytest.mark.parametrize("options", [
    DemoOptions(output=Path("demo_output")),
    DemoOptions(output=Path("a b"), n_train=7, n_test=2, shape=(16, 32, 32), seed=3, trainer_suffix="_debug",
                fold="all", tta=True, mirror_si=True, training_seed=5, seeds=2, image_aware=True, skip_training=True),
    DemoOptions(output=Path("x"), data="brain", dataset_id=720, spacing_mm=7.5, image_aware=True),
    DemoOptions(output=Path("x"), data="brain", hemispheres=True, dataset_id=721, seeds=3),
])
def test_the_reports_command_line_repeats_the_run(options):
    assert demo.options_from_command_line(command_line(options)) == (options, "table1")


def test_fold_0_needs_five_training_cases(tmp_path, capsys):
    assert demo.main(["--output", str(tmp_path / "o"), "--n-train", "3"]) == 2
    assert "--n-train >= 5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_refuses_a_foreign_output_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("not the demo's")
    with pytest.raises(demo.StageFailed, match="not empty"):
        demo.run_demo(demo.DemoOptions(output=tmp_path))
    assert (tmp_path / "precious.txt").read_text() == "not the demo's"


def test_skip_training_without_a_previous_run_names_what_is_missing(tmp_path):
    with pytest.raises(demo.StageFailed, match="checkpoint_final.pth"):
        demo.run_demo(demo.DemoOptions(output=tmp_path / "o", skip_training=True))


# ------------------------------------------------------------------------------------------------
# the whole pipeline, tiny
# ------------------------------------------------------------------------------------------------

def _component_sizes(mask: np.ndarray) -> set[int]:
    import cc3d

    components = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    return {int(n) for n in np.bincount(components.ravel())[1:]}


@pytest.mark.slow  # ~2.5 min on 2 cores: the whole make demo pipeline at _debug (CI runs it in make test-slow)
def test_demo_smoke_run(tmp_path):
    """Phantoms -> plan -> train (3 x _debug) -> predict -> postprocess -> evaluate -> report."""
    output = tmp_path / "demo_output"
    shape = (16, 32, 32)
    completed = subprocess.run(
        [sys.executable, "-m", "nnunet_shape.demo", "--output", str(output), "--n-train", "5", "--n-test", "2",
         "--shape", *map(str, shape), "--trainer-suffix", "_debug", "--no-progress"],
        capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    # progress: every stage announced and finished, nnU-Net's epoch lines streamed through
    for k in range(1, 13):
        assert re.search(rf"^\[{k}/12\] .*: \d+ s \(total \d+ s\)$", completed.stdout, re.M), k
    assert "Epoch time:" in completed.stdout and "Please cite" not in completed.stdout

    with open(output / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["setting"], r["postprocessing"]) for r in rows] == [
        (s.title, v) for s in SETTINGS for v in ("raw", "largest_component", "chosen")] + [
        (BASELINE_TITLES[b], "none") for b in ("atlas", "descriptor_ellipsoids")]
    assert {r["annotations_per_case"] for r in rows} == {str(math.prod(shape)), "16", "28"}
    for baseline, row in zip(("atlas", "descriptor_ellipsoids"), rows[-2:]):
        summary = json.loads((output / "evaluation" / "baselines" / baseline / "summary_shape.json").read_text())
        assert float(row["avg_dice"]) == pytest.approx(summary["foreground_mean"]["Dice"], abs=1e-6)
        assert len(list((output / "predictions" / "baselines" / baseline).glob("*.nii.gz"))) == 2
    assert "the descriptor ellipsoids (" in completed.stdout
    rows = rows[:-2]
    for row in rows:
        slug = next(s.slug for s in SETTINGS if s.title == row["setting"])
        summary = json.loads((output / "evaluation" / slug / row["postprocessing"] / "summary_shape.json").read_text())
        assert float(row["avg_dice"]) == pytest.approx(summary["foreground_mean"]["Dice"], abs=1e-6)
        assert 0.0 <= float(row["dice_femur_mean"]) <= 1.0
        assert row["trainer"].endswith("_debug")
    with open(output / "descriptor_errors.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 3 * 4

    # postprocessed predictions: at most one component per label, a subset of the raw prediction
    for setting in SETTINGS:
        raw_files = sorted((output / "predictions" / setting.slug / "raw").glob("*.nii.gz"))
        assert len(raw_files) == 2
        for raw_file in raw_files:
            raw = sitk.GetArrayFromImage(sitk.ReadImage(str(raw_file)))
            kept_file = raw_file.parent.parent / "largest_component" / raw_file.name
            kept = sitk.GetArrayFromImage(sitk.ReadImage(str(kept_file)))
            assert raw.shape == shape
            assert np.all((kept == raw) | (kept == 0))
            for label in (1, 2, 3, 4):
                raw_sizes, kept_sizes = _component_sizes(raw == label), _component_sizes(kept == label)
                # only the largest component survives (all of them on a tie: nnU-Net's rule)
                assert kept_sizes == ({max(raw_sizes)} if raw_sizes else set()), (raw_sizes, kept_sizes)

    # the chosen postprocessing: nnU-Net's decision on each model's validation cases, applied to the test cases
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

    for setting in SETTINGS:
        folder = output / "postprocessing" / setting.slug
        record = json.loads((folder / "postprocessing.json").read_text())
        assert [d["label"] for d in record["decisions"]] == ["foreground", 1, 2, 3, 4]
        assert {d["rule"] for d in record["decisions"]} == {"dice"}
        pp_fns, pp_fn_kwargs = load_pickle(str(folder / "postprocessing.pkl"))
        assert [k["labels_or_regions"] for k in pp_fn_kwargs] == (
            [[1, 2, 3, 4]] * record["decisions"][0]["applied"]
            + [d["label"] for d in record["decisions"][1:] if d["applied"]])
        for raw_file in sorted((output / "predictions" / setting.slug / "raw").glob("*.nii.gz")):
            raw = sitk.GetArrayFromImage(sitk.ReadImage(str(raw_file)))
            chosen = sitk.GetArrayFromImage(sitk.ReadImage(str(raw_file.parent.parent / "chosen" / raw_file.name)))
            np.testing.assert_array_equal(chosen, apply_postprocessing(raw, pp_fns, pp_fn_kwargs))
        assert "Results were improved" in (output / "logs" / f"postprocessing_{setting.slug}.log").read_text() or \
            "did not improve" in (output / "logs" / f"postprocessing_{setting.slug}.log").read_text()
    assert "Full supervision: postprocessing all foreground (all foreground labels): keep the largest component" \
        in completed.stdout

    report = (output / "report.md").read_text()
    assert "Table 1" in report and "## Timings" in report and "ordering full supervision" in report
    assert "**Against the no-image baselines**" in report and BASELINE_TITLES["atlas"] in report
    headings = ["## Table 1 (test set, postprocessing chosen on the validation cases)",
                "### The postprocessing chosen per label", "### After the largest component of every label, "
                "unconditionally", "### Before postprocessing"]
    assert all(h in report for h in headings)
    assert [report.index(h) for h in headings] == sorted(report.index(h) for h in headings)
    assert "| Setting | all foreground | femur | femoral_cartilage | tibia | tibial_cartilage |" in report
    # every model was trained (and predicts) without superior-inferior mirroring: read back from
    # the checkpoints nnU-Net wrote, so this fails if the setting did not reach the trainers
    assert ("Mirroring (augmentation and test-time axes): Full supervision: (0, 2); V+C: (0, 2); "
            "V+C+D: (0, 2) (patch axes, read from the checkpoints; superior-inferior is patch axis 1)") in report
    for setting in SETTINGS:
        assert f"| {setting.title} |" in report
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert any(l.startswith("overlays/") for l in links) and any(l.startswith("curves/") for l in links)
    for link in links:
        assert (output / link).is_file(), link
    assert sorted(p.name for p in (output / "overlays").glob("*.png")) == ["knee_005.png", "knee_006.png"]
    curves = {p.name for p in (output / "curves").glob("*.png")}
    assert {"full_supervision_progress.png", "vc_progress_descriptors.png", "vcd_progress_descriptors.png"} <= curves


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="the brain data needs nilearn")
def test_brain_demo_with_the_image_aware_row_smoke_run(tmp_path):
    """--data brain --image-aware end to end: MNI brains -> plan -> train (4 x _debug) -> predict ->
    postprocess -> evaluate -> report, with the same stages and report as the knee run."""
    from nnunet_shape.demo.brains import TISSUE_LABELS

    output = tmp_path / "brain_output"
    completed = subprocess.run(
        [sys.executable, "-m", "nnunet_shape.demo", "--data", "brain", "--image-aware", "--output", str(output),
         "--n-train", "5", "--n-test", "2", "--spacing", "10", "--trainer-suffix", "_debug", "--no-progress"],
        capture_output=True, text=True, timeout=1500)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    for k in range(1, 15):  # 2 + 2 x 4 rows + 4 stages
        assert re.search(rf"^\[{k}/14\] .*: \d+ s \(total \d+ s\)$", completed.stdout, re.M), k
    assert re.search(r"^\[1/14\] brains: \d+ s", completed.stdout, re.M)
    assert "Table 1 on MNI152 brains (gray and white matter): Full supervision, V+C, V+C+D, V+C+D + image terms " \
           "(Dataset720_BrainMNI)" in completed.stdout
    assert "ordering full supervision > V+C+D + image terms > V+C+D > V+C: " in completed.stdout
    assert "against the no-image baselines: V+C+D + image terms " in completed.stdout

    raw = output / "work" / "nnUNet_raw" / "Dataset720_BrainMNI"
    assert json.loads((raw / "dataset.json").read_text())["labels"] == TISSUE_LABELS
    shape = (19, 24, 20)  # 10 mm over the template's 189 x 233 x 197 mm
    with open(output / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    settings = demo_settings(image_aware=True)
    assert [(r["setting"], r["postprocessing"]) for r in rows] == [
        (s.title, v) for s in settings for v in ("raw", "largest_component", "chosen")] + [
        (BASELINE_TITLES[b], "none") for b in ("atlas", "descriptor_ellipsoids")]
    # 2 classes: V+C 2 x (1 + 3), V+C+D 2 x (1 + 3 + 3), the image-aware row adds each class's mean intensity
    # (one channel): 2 x (1 + 3 + 3 + 1)
    assert [r["annotations_per_case"] for r in rows[:12:3]] == [str(math.prod(shape)), "8", "14", "16"]
    assert rows[9]["trainer"] == "nnUNetTrainerShapeDescriptorsImageAware_debug"
    for row in rows[:-2]:
        slug = next(s.slug for s in settings if s.title == row["setting"])
        summary = json.loads((output / "evaluation" / slug / row["postprocessing"] / "summary_shape.json").read_text())
        assert float(row["avg_dice"]) == pytest.approx(summary["foreground_mean"]["Dice"], abs=1e-6)
        assert 0.0 <= float(row["dice_gray_matter_mean"]) <= 1.0
    with open(output / "descriptor_errors.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4 * 3 * 2
    for setting in settings:
        files = sorted((output / "predictions" / setting.slug / "chosen").glob("*.nii.gz"))
        assert [p.name for p in files] == ["brain_005.nii.gz", "brain_006.nii.gz"]
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(files[0]))).shape == shape

    report = (output / "report.md").read_text()
    assert report.startswith("# nnunet-shape demo: paper 000's Table 1 on MNI152 brains (gray and white matter)\n")
    assert "--data brain --spacing 10 --image-aware" in report
    assert "*Avg* is the mean of the two class means" in report
    assert "* Brains: 5 training + 2 test cases, seed 0, grid 19 × 24 × 20 (z, y, x), spacing 10 × 10 × 10 mm" \
        in report
    assert "ordering full supervision > V+C+D + image terms > V+C+D > V+C" in report
    assert "### Do the models find every compartment?" not in report and "tibia" not in report
    # mirrored left-right only: the patch axis of raw axis 2 (LR), read back from every checkpoint
    plans = json.loads((output / "work" / "nnUNet_preprocessed" / "Dataset720_BrainMNI" / "nnUNetPlans.json")
                       .read_text())
    lr, si = plans["transpose_forward"].index(2), plans["transpose_forward"].index(0)
    assert ("Mirroring (augmentation and test-time axes): " + "; ".join(f"{s.title}: ({lr},)" for s in settings)
            + f" (patch axes, read from the checkpoints; superior-inferior is patch axis {si})") in report
    assert "`nnUNetTrainerShapeDescriptorsImageAware_debug` (V+C+D + image terms)" in report
    links = re.findall(r"\]\(([^)]+)\)", report)
    for link in links:
        assert (output / link).is_file(), link
    assert sorted(p.name for p in (output / "overlays").glob("*.png")) == ["brain_005.png", "brain_006.png"]
    assert "Mid axial slice and the slice with the most white matter" in report
    assert (output / "curves" / "image_aware_progress_descriptors.png").is_file()
