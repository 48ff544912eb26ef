"""Specification of ``nnunet-shape evaluate`` (nnunet_shape/evaluate.py) on hand-made cases.

Reference: four boxes (labels 1-4) in a (10, 16, 12) grid with spacing (2.0, 0.5, 1.0) mm
(array order z, y, x; voxel volume 1 mm^3). Predictions, one case each:
identical; class 2 shifted by (1, 1, -1) voxels; class 3 removed; class 1 grown by one
z-slice; class 4 absent from both reference and prediction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_shape.nnunet import evaluate
from nnunet_shape.nnunet.evaluate import descriptor_errors_case, evaluate_folder, format_markdown_table

SHAPE = (10, 16, 12)
SPACING = (2.0, 0.5, 1.0)  # array order; voxel volume 1 mm^3
LABELS = {"background": 0, "femur": 1, "femoral_cartilage": 2, "tibia": 3, "tibial_cartilage": 4}
BOXES = {  # label -> slices (z, y, x)
    1: np.s_[1:4, 2:6, 2:5],  # 36 voxels
    2: np.s_[5:8, 2:5, 6:9],  # 27 voxels
    3: np.s_[1:3, 9:13, 1:4],  # 24 voxels
    4: np.s_[6:9, 10:14, 7:10],  # 36 voxels
}


def _reference(with_class_4: bool = True) -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for label, box in BOXES.items():
        if label != 4 or with_class_4:
            labels[box] = label
    return labels


def _write(array: np.ndarray, path: Path, spacing=SPACING) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin((3.0, -2.0, 7.0))
    sitk.WriteImage(image, str(path))


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    reference = _reference()
    shifted = reference.copy()
    shifted[BOXES[2]] = 0
    shifted[6:9, 3:6, 5:8] = 2  # (1, 1, -1) voxels: overlap 2 x 2 x 2 = 8 voxels
    removed = reference.copy()
    removed[BOXES[3]] = 0
    grown = reference.copy()
    grown[4, 2:6, 2:5] = 1  # one more z-slice: 48 voxels instead of 36
    return {
        "case_identical": (reference, reference.copy()),
        "case_shifted": (reference, shifted),
        "case_removed": (reference, removed),
        "case_grown": (reference, grown),
        "case_absent": (_reference(with_class_4=False), _reference(with_class_4=False)),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    ref, pred = root / "ref", root / "pred"
    ref.mkdir()
    pred.mkdir()
    for name, (reference, prediction) in _cases().items():
        _write(reference, ref / f"{name}.nii.gz")
        _write(prediction, pred / f"{name}.nii.gz")
    dataset_json = root / "dataset.json"
    dataset_json.write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": LABELS,
                                        "numTraining": 5, "file_ending": ".nii.gz"}))
    return {"root": root, "ref": ref, "pred": pred, "dataset_json": dataset_json}


@pytest.fixture(scope="module")
def summary(folders) -> dict:
    return evaluate_folder(folders["ref"], folders["pred"], folders["dataset_json"],
                           output_dir=folders["root"] / "out", num_processes=1)


def _case(summary: dict, name: str) -> dict:
    matches = [c for c in summary["metric_per_case"] if c["prediction_file"].endswith(f"{name}.nii.gz")]
    assert len(matches) == 1
    return matches[0]["metrics"]


def test_identical_prediction_has_dice_one_and_no_descriptor_error(summary) -> None:
    metrics = _case(summary, "case_identical")
    for label, volume in ((1, 36.0), (2, 27.0), (3, 24.0), (4, 36.0)):
        assert metrics[label]["Dice"] == 1.0
        assert metrics[label]["RelativeVolumeError"] == 0.0
        assert metrics[label]["CentroidDistance_mm"] == 0.0
        assert metrics[label]["Volume_ref_mm3"] == pytest.approx(volume)
        assert metrics[label]["Volume_pred_mm3"] == pytest.approx(volume)


def test_shifted_class_gives_centroid_distance_of_the_shift(summary) -> None:
    metrics = _case(summary, "case_shifted")
    shift_mm = np.multiply((1, 1, -1), SPACING)
    assert metrics[2]["CentroidDistance_mm"] == pytest.approx(float(np.linalg.norm(shift_mm)))  # sqrt(5.25)
    assert metrics[2]["RelativeVolumeError"] == pytest.approx(0.0, abs=1e-12)
    assert metrics[2]["Dice"] == pytest.approx(2 * 8 / (27 + 27))
    assert metrics[2]["IoU"] == pytest.approx(8 / (27 + 27 - 8))
    for label in (1, 3, 4):  # other classes untouched
        assert metrics[label]["Dice"] == 1.0 and metrics[label]["CentroidDistance_mm"] == 0.0


def test_grown_class_gives_relative_volume_error_and_half_slice_centroid_shift(summary) -> None:
    metrics = _case(summary, "case_grown")
    assert metrics[1]["RelativeVolumeError"] == pytest.approx(12 / 36)
    # z centroid moves from 2.0 to 2.5 voxels: 0.5 * 2.0 mm
    assert metrics[1]["CentroidDistance_mm"] == pytest.approx(1.0)
    assert metrics[1]["Dice"] == pytest.approx(2 * 36 / (36 + 48))


def test_removed_and_absent_classes_follow_nnunet(summary) -> None:
    removed = _case(summary, "case_removed")[3]
    assert removed["Dice"] == 0.0 and removed["IoU"] == 0.0  # reference present, prediction empty
    assert removed["Volume_pred_mm3"] == 0.0 and removed["RelativeVolumeError"] == 1.0
    assert math.isnan(removed["CentroidDistance_mm"])  # no predicted centroid to compare
    absent = _case(summary, "case_absent")[4]
    assert math.isnan(absent["Dice"]) and math.isnan(absent["IoU"])  # nnU-Net: tp + fp + fn == 0
    assert math.isnan(absent["RelativeVolumeError"]) and math.isnan(absent["CentroidDistance_mm"])

    # means ignore NaN (nnU-Net's nanmean); std and counts over the finite values
    assert summary["mean"][3]["Dice"] == pytest.approx(0.8)  # 1, 1, 0, 1, 1
    assert summary["std"][3]["Dice"] == pytest.approx(0.4)
    assert summary["mean"][3]["RelativeVolumeError"] == pytest.approx(0.2)
    assert summary["mean"][3]["CentroidDistance_mm"] == 0.0 and summary["n_cases"][3]["CentroidDistance_mm"] == 4
    assert summary["mean"][4]["Dice"] == 1.0 and summary["n_cases"][4]["Dice"] == 4
    assert summary["mean"][2]["CentroidDistance_mm"] == pytest.approx(math.sqrt(5.25) / 5)
    expected_foreground = np.mean([summary["mean"][k]["Dice"] for k in (1, 2, 3, 4)])
    assert summary["foreground_mean"]["Dice"] == pytest.approx(expected_foreground)
    assert summary["class_names"] == {1: "femur", 2: "femoral_cartilage", 3: "tibia", 4: "tibial_cartilage"}


def test_files_keep_nnunet_summary_and_add_the_merged_one(folders, summary) -> None:
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json

    out = folders["root"] / "out"
    nnunet = load_summary_json(str(out / "summary.json"))
    merged = load_summary_json(str(out / "summary_shape.json"))
    assert "RelativeVolumeError" not in nnunet["mean"][1]  # nnU-Net's file is left as nnU-Net wrote it
    for label in (1, 2, 3, 4):
        assert merged["mean"][label]["Dice"] == pytest.approx(nnunet["mean"][label]["Dice"], nan_ok=True)
        assert merged["mean"][label]["CentroidDistance_mm"] == pytest.approx(
            summary["mean"][label]["CentroidDistance_mm"])
    assert merged["std"]["3"]["Dice"] == pytest.approx(0.4)
    assert (out / "summary_shape.md").read_text() == format_markdown_table(summary)


def test_markdown_table_names_every_class(summary) -> None:
    table = format_markdown_table(summary)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 4 + 1  # header, separator, 4 classes, foreground mean
    for name in ("femur", "femoral_cartilage", "tibia", "tibial_cartilage", "foreground mean"):
        assert any(line.startswith(f"| {name} |") for line in lines), name
    assert "| tibia | 3 | 5 | 0.800 ± 0.400 |" in table
    # the same table from the JSON file (string keys)
    loaded = json.loads(json.dumps({**summary, "mean": {str(k): v for k, v in summary["mean"].items()},
                                    "std": {str(k): v for k, v in summary["std"].items()},
                                    "class_names": {str(k): v for k, v in summary["class_names"].items()}}))
    assert format_markdown_table(loaded) == table


def _run_cli(folders, out: Path, processes: int) -> dict:
    code = evaluate.main(["-ref", str(folders["ref"]), "-pred", str(folders["pred"]),
                          "-djfile", str(folders["dataset_json"]), "-o", str(out),
                          "--np", str(processes)])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"summary.json", "summary_shape.json", "summary_shape.md"}
    return json.loads((out / "summary_shape.json").read_text())


def test_cli_prints_the_table_and_writes_the_files(folders, summary, capsys) -> None:
    written = _run_cli(folders, folders["root"] / "cli_out", processes=1)
    assert capsys.readouterr().out == format_markdown_table(summary)
    serial = json.loads((folders["root"] / "out" / "summary_shape.json").read_text())
    assert json.dumps(written["mean"]) == json.dumps(serial["mean"])  # NaN-safe equality


@pytest.mark.slow  # two spawn pools importing nnU-Net: ~15-40 s on a shared 2-core machine
def test_two_processes_give_the_serial_result(folders, summary) -> None:
    written = _run_cli(folders, folders["root"] / "cli_out_np2", processes=2)
    serial = json.loads((folders["root"] / "out" / "summary_shape.json").read_text())
    assert json.dumps(written["mean"]) == json.dumps(serial["mean"])
    assert json.dumps(written["metric_per_case"]) == json.dumps(serial["metric_per_case"])


# ------------------------------------------------------------------------------------------
# single cases (no worker pool)
# ------------------------------------------------------------------------------------------


def _reader():
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    return SimpleITKIO()


def test_regions_and_ignore_label(tmp_path: Path) -> None:
    reference = _reference()
    reference[0, :, :] = 5  # ignore label on the first slice
    prediction = _reference()
    prediction[0, :4, :] = 2  # predicted inside the ignored slice: must not count
    _write(reference, tmp_path / "ref.nii.gz")
    _write(prediction, tmp_path / "pred.nii.gz")
    result = descriptor_errors_case(str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"),
                                    _reader(), [2, (1, 2)], ignore_label=5)
    assert result["metrics"][2]["Volume_pred_mm3"] == pytest.approx(27.0)
    assert result["metrics"][2]["CentroidDistance_mm"] == 0.0
    assert result["metrics"][(1, 2)]["Volume_ref_mm3"] == pytest.approx(36.0 + 27.0)
    assert result["spacing"] == pytest.approx(list(SPACING))


def test_two_dimensional_images_measure_areas(tmp_path: Path) -> None:
    labels = np.zeros((8, 6), dtype=np.uint8)
    labels[2:5, 1:3] = 1  # 6 pixels of 0.5 x 2.0 mm
    _write(labels, tmp_path / "ref.nii.gz", spacing=(0.5, 2.0))
    shifted = np.roll(labels, 1, axis=0)
    _write(shifted, tmp_path / "pred.nii.gz", spacing=(0.5, 2.0))
    result = descriptor_errors_case(str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"),
                                    _reader(), [1])
    assert result["metrics"][1]["Volume_ref_mm3"] == pytest.approx(6.0)  # mm^2, not x 999
    assert result["metrics"][1]["CentroidDistance_mm"] == pytest.approx(0.5)
    assert result["spacing"] == pytest.approx([0.5, 2.0])


def test_mismatched_geometry_is_an_error_naming_the_files(tmp_path: Path) -> None:
    _write(_reference(), tmp_path / "ref.nii.gz")
    _write(_reference(), tmp_path / "pred.nii.gz", spacing=(2.0, 0.5, 1.5))
    with pytest.raises(ValueError, match="spacing mismatch.*pred.nii.gz"):
        descriptor_errors_case(str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"), _reader(), [1])
    _write(_reference()[:-1], tmp_path / "pred.nii.gz")
    with pytest.raises(ValueError, match="shape mismatch"):
        descriptor_errors_case(str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"), _reader(), [1])


def test_prediction_without_reference_is_reported(folders, tmp_path: Path) -> None:
    _write(_reference(), tmp_path / "orphan.nii.gz")
    with pytest.raises(FileNotFoundError, match="orphan.nii.gz"):
        evaluate_folder(folders["ref"], tmp_path, folders["dataset_json"])


def test_the_dummy_2d_axis_is_dropped_from_every_array_and_the_spacing() -> None:
    from nnunet_shape.nnunet.frames import drop_nnunet_2d_axis

    ref, pred = np.zeros((1, 8, 6)), np.ones((1, 8, 6))
    (ref2, pred2), spacing = drop_nnunet_2d_axis((ref, pred), (999 * 2.0, 2.0, 0.5))
    assert ref2.shape == pred2.shape == (8, 6) and pred2.sum() == 48 and spacing == [2.0, 0.5]
    # a single slice with a real spacing is a 3-D image: measured as it is
    (ref3,), spacing = drop_nnunet_2d_axis((ref,), (2.0, 0.5, 1.0))
    assert ref3.shape == (1, 8, 6) and spacing == [2.0, 0.5, 1.0]
