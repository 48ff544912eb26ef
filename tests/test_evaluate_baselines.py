"""Specification of ``nnunet-shape evaluate --postprocessing PKL --baselines-from LABELS`` on hand-made cases.

Grid (10, 16, 12) (1920 voxels), spacing (2.0, 0.5, 1.0) mm. Training maps: three copies of the
box map M (class 1: 36 voxels, class 2: 27 voxels), so the atlas of a target of this shape is M.
References: ``case_a`` = M, ``case_b`` = M with class 2 moved by one voxel along x (overlap 18 of 27).
Predictions: each reference plus a stray class-1 blob (1 voxel in case_a, 2 in case_b), which the
pkl's "keep the largest component of label 1" removes.

Dice by hand:    class 1                         class 2
  raw            (72/73 + 72/74) / 2              1
  chosen         1                                1
  atlas          1                                (1 + 2 * 18 / 54) / 2 = 5/6
  chance         36 / 1920                        27 / 1920
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_shape.cli import main as cli_main
from nnunet_shape.core.baselines import class_moments, descriptor_ellipsoids, mean_class_moments
from nnunet_shape.nnunet.evaluate import chance_dice, evaluate_folder, evaluate_with_baselines, format_markdown_table
from nnunet_shape.nnunet.postprocessing import largest_component_steps

SHAPE = (10, 16, 12)
SPACING = (2.0, 0.5, 1.0)
LABELS = {"background": 0, "femur": 1, "femoral_cartilage": 2}


def _box_map() -> np.ndarray:
    m = np.zeros(SHAPE, dtype=np.uint8)
    m[1:4, 2:6, 2:5] = 1  # 36 voxels
    m[5:8, 2:5, 6:9] = 2  # 27 voxels
    return m


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in SPACING[::-1]))
    image.SetOrigin((3.0, -2.0, 7.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate_baselines")
    for name in ("train", "ref", "pred"):
        (root / name).mkdir()
    m = _box_map()
    for i in range(3):
        _write(m, root / "train" / f"train_{i}.nii.gz")
    moved = m.copy()
    moved[moved == 2] = 0
    moved[5:8, 2:5, 7:10] = 2
    references = {"case_a": m, "case_b": moved}
    strays = {"case_a": np.s_[9, 15, 11], "case_b": np.s_[9, 14:16, 0]}
    for name, reference in references.items():
        _write(reference, root / "ref" / f"{name}.nii.gz")
        prediction = reference.copy()
        prediction[strays[name]] = 1
        _write(prediction, root / "pred" / f"{name}.nii.gz")
    dataset_json = root / "dataset.json"
    dataset_json.write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 3,
                                        "file_ending": ".nii.gz"}))
    pp_folder = root / "crossval"
    pp_folder.mkdir()
    with open(pp_folder / "postprocessing.pkl", "wb") as handle:
        pickle.dump(largest_component_steps([1]), handle)
    (pp_folder / "postprocessing.json").write_text(json.dumps({"decisions": [
        {"label": 1, "class": "femur", "step": "keep the largest component", "components": 1, "rule": "dice",
         "applied": True, "criterion": "mean Dice of the label", "before": 0.9, "after": 0.95, "detail": ""},
        {"label": 2, "class": "femoral_cartilage", "step": "keep the largest component", "components": 1,
         "rule": "dice", "applied": False, "criterion": "mean Dice of the label", "before": 0.8, "after": 0.7,
         "detail": ""}]}))
    return {"root": root, "train": root / "train", "ref": root / "ref", "pred": root / "pred",
            "dataset_json": dataset_json, "pkl": pp_folder / "postprocessing.pkl"}


@pytest.fixture(scope="module")
def result(data) -> dict:
    return evaluate_with_baselines(data["ref"], data["pred"], data["dataset_json"], data["root"] / "out",
                                   baselines_from=data["train"], postprocessing=data["pkl"], device="cpu")


RAW_1 = (72 / 73 + 72 / 74) / 2


def test_chance_is_the_reference_volume_fraction(result) -> None:
    assert chance_dice(result["raw"]) == pytest.approx({"femur": 36 / 1920, "femoral_cartilage": 27 / 1920})


def test_chosen_postprocessing_removes_the_strays(data, result) -> None:
    assert result["raw"]["mean"][1]["Dice"] == pytest.approx(RAW_1)
    assert result["chosen"]["mean"][1]["Dice"] == 1.0 and result["chosen"]["mean"][2]["Dice"] == 1.0
    out = data["root"] / "out"
    assert sorted(p.name for p in (out / "chosen").glob("*.nii.gz")) == ["case_a.nii.gz", "case_b.nii.gz"]
    written = json.loads((out / "summary_postprocessing.json").read_text())
    assert written["chosen"]["mean_dice"] == {"femur": 1.0, "femoral_cartilage": 1.0}
    assert written["raw"]["mean_dice"]["femur"] == pytest.approx(RAW_1)
    assert written["decision_lines"][0].startswith("postprocessing label 1 (femur): keep the largest component: "
                                                   "APPLIED (rule: dice; mean Dice of the label 0.9 -> 0.95")
    assert "not applied" in written["decision_lines"][1]
    # the raw result is evaluate_folder's, files included
    assert json.loads((out / "summary_shape.json").read_text())["mean"]["1"]["Dice"] == pytest.approx(RAW_1)


def test_baselines_are_compared_with_the_prediction_and_chance(data, result) -> None:
    comparison = result["comparison"]
    rows = {row["kind"]: row for row in comparison["rows"]}
    assert [row["kind"] for row in comparison["rows"]] == ["chosen", "raw", "atlas", "descriptor_ellipsoids",
                                                           "chance"]
    assert rows["atlas"]["mean_dice"] == pytest.approx({"femur": 1.0, "femoral_cartilage": 5 / 6})
    assert rows["atlas"]["foreground_mean_dice"] == pytest.approx((1 + 5 / 6) / 2)
    assert rows["chosen"]["mean_dice"] == {"femur": 1.0, "femoral_cartilage": 1.0}
    assert rows["raw"]["mean_dice"]["femur"] == pytest.approx(RAW_1)
    assert rows["chance"]["mean_dice"] == pytest.approx({"femur": 36 / 1920, "femoral_cartilage": 27 / 1920})
    assert rows["chance"]["foreground_mean_dice"] == pytest.approx((36 + 27) / 1920 / 2)
    # the ellipsoids: those of the core functions on the training maps, scored against the references
    m = _box_map()
    mean = mean_class_moments([class_moments(m, SPACING, [1, 2])] * 3)
    ellipsoids = descriptor_ellipsoids(mean.centroid_fraction, mean.covariance_mm2, SHAPE, SPACING, [1, 2])
    references = [sitk.GetArrayFromImage(sitk.ReadImage(str(data["ref"] / f"{case}.nii.gz")))
                  for case in ("case_a", "case_b")]
    for label, name in ((1, "femur"), (2, "femoral_cartilage")):
        dice = [2 * ((ellipsoids == label) & (r == label)).sum() / ((ellipsoids == label).sum() + (r == label).sum())
                for r in references]
        assert rows["descriptor_ellipsoids"]["mean_dice"][name] == pytest.approx(np.mean(dice))
    out = data["root"] / "out"
    assert json.loads((out / "summary_baselines.json").read_text())["rows"][2]["mean_dice"]["femoral_cartilage"] \
        == pytest.approx(5 / 6)
    for baseline in ("atlas", "descriptor_ellipsoids"):
        assert sorted(p.name for p in (out / "baselines" / baseline).glob("*.nii.gz")) == [
            "case_a.nii.gz", "case_b.nii.gz"]
        assert (out / "baselines" / baseline / "summary_shape.json").is_file()
    assert comparison["training_maps"] == 3 and comparison["left_out_reference_cases"] == []


def test_report_puts_the_chosen_table_first(result) -> None:
    report = result["report"]
    chosen = report.index("## Chosen postprocessing")
    raw = report.index("## Raw predictions (no postprocessing)")
    baselines = report.index("## Prediction vs no-image baselines")
    assert chosen < report.index("- postprocessing label 1 (femur)") < raw < baselines
    assert format_markdown_table(result["chosen"]) in report[chosen:raw]
    assert format_markdown_table(result["raw"]) in report[raw:baselines]
    assert "| atlas (majority of the training labels) | 0.917 | 1.000 | 0.833 |" in report
    assert "| chance (class volume fraction) | 0.016 | 0.019 | 0.014 |" in report


def test_cli_with_both_options_and_without_output_folder(data, tmp_path, capsys) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    for p in data["pred"].glob("*.nii.gz"):
        (pred / p.name).write_bytes(p.read_bytes())
    code = cli_main(["evaluate", "-ref", str(data["ref"]), "-pred", str(pred), "-djfile", str(data["dataset_json"]),
                     "--postprocessing", str(data["pkl"]), "--baselines-from", str(data["train"]), "-device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.index("## Chosen postprocessing") < printed.index("## Raw predictions")
    assert "| atlas (majority of the training labels) | 0.917 |" in printed
    # summaries beside summary_shape.json (the prediction folder, as nnU-Net); the written folders were temporary
    assert {"summary_shape.json", "summary_baselines.json", "summary_postprocessing.json"} <= {
        p.name for p in pred.iterdir()}
    assert not (pred / "baselines").exists() and not (pred / "chosen").exists()


def test_reference_cases_are_left_out_of_the_training_maps(data, tmp_path) -> None:
    train = tmp_path / "train"
    train.mkdir()
    for p in data["train"].glob("*.nii.gz"):
        (train / p.name).write_bytes(p.read_bytes())
    # case_b's own (moved) labels among the training maps: they must not vote for case_b
    (train / "case_b.nii.gz").write_bytes((data["ref"] / "case_b.nii.gz").read_bytes())
    (train / "case_b_copy.nii.gz").write_bytes((data["ref"] / "case_b.nii.gz").read_bytes())
    result = evaluate_with_baselines(data["ref"], data["pred"], data["dataset_json"], tmp_path / "out",
                                     baselines_from=train)
    assert result["comparison"]["left_out_reference_cases"] == ["case_b"] and result["chosen"] is None
    rows = {row["kind"]: row for row in result["comparison"]["rows"]}
    assert list(rows) == ["prediction", "atlas", "descriptor_ellipsoids", "chance"]
    # 3 x M against 1 x moved: the atlas is still M
    assert rows["atlas"]["mean_dice"] == pytest.approx({"femur": 1.0, "femoral_cartilage": 5 / 6})
    assert not (tmp_path / "out" / "summary_postprocessing.json").exists()


def test_without_options_nothing_changes(data, tmp_path) -> None:
    result = evaluate_with_baselines(data["ref"], data["pred"], data["dataset_json"], tmp_path / "out")
    plain = evaluate_folder(data["ref"], data["pred"], data["dataset_json"])
    assert result["report"] == format_markdown_table(plain)
    assert result["chosen"] is None and result["comparison"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json", "summary_shape.json",
                                                                     "summary_shape.md"]


def test_a_missing_training_folder_is_a_user_error(data, tmp_path, capsys) -> None:
    code = cli_main(["evaluate", "-ref", str(data["ref"]), "-pred", str(data["pred"]), "-djfile",
                     str(data["dataset_json"]), "-o", str(tmp_path / "out"), "--baselines-from",
                     str(tmp_path / "nowhere")])
    assert code == 2
    assert "--baselines-from" in capsys.readouterr().err
