"""Intensity blocks of descriptor files: export (--intensity) with values computed by hand, nnU-Net's
z-score units (its crop and ZScoreNormalization), reading and validation, targets, idempotency, old files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_shape.descriptor_files import export as exporter
from nnunet_shape.descriptor_files import measure
from nnunet_shape.descriptor_files.cli import main as cli_main
from nnunet_shape.descriptor_files.model import DescriptorFileError
from nnunet_shape.descriptor_files.read import load_case_descriptors
from nnunet_shape.descriptor_files.targets import case_intensity_targets, case_intensity_targets_zscore

LABELS = {"background": 0, "bone": 1, "cartilage": 2, "meniscus": 3}
SPACING_XYZ = (0.5, 0.8, 2.0)
ORIGIN_XYZ = (1.0, 2.0, 3.0)

# (z, y, x) = (2, 3, 4). bone: (0,1,1) (0,1,2) (1,1,1); cartilage: (1,1,2) (1,1,3); meniscus absent
CASE_LABELS = np.array([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]],
                        [[0, 0, 0, 0], [0, 1, 2, 2], [0, 0, 0, 0]]], dtype=np.uint8)
# channel 0; row y = 0 and column x = 0 are zero, so nnU-Net crops to y 1..2, x 1..3 (12 voxels)
CHANNEL_0 = np.array([[[0, 0, 0, 0], [0, 10, 20, 5], [0, 5, 5, 5]],
                      [[0, 0, 0, 0], [0, 30, 40, 60], [0, 5, 5, 5]]], dtype=np.float32)
CHANNEL_1 = 2 * CHANNEL_0  # same non-zero voxels, every value doubled

# by hand, channel 0. bone: 10, 20, 30 -> mean 20, std sqrt((100 + 0 + 100) / 3);
# cartilage: 40, 60 -> mean 50, std 10.
# image over the crop: 10 20 5 5 5 5 30 40 60 5 5 5: sum 195, sum of squares 6775,
# mean 195 / 12 = 16.25, variance 6775 / 12 - 16.25^2 = 43275 / 144, std sqrt(43275) / 12
BONE = (20.0, math.sqrt(200 / 3))
CARTILAGE = (50.0, 10.0)
IMAGE = (16.25, math.sqrt(43275) / 12)


def write(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN_XYZ)
    sitk.WriteImage(image, str(path))


def make_dataset(root: Path, channels: int = 2, cases=("knee_000",)) -> Path:
    folder = root / "nnUNet_raw" / "Dataset701_Intensity"
    (folder / "labelsTr").mkdir(parents=True)
    (folder / "imagesTr").mkdir()
    names = {str(c): f"MR{c}" for c in range(channels)}
    dataset_json = {"channel_names": names, "labels": LABELS, "numTraining": len(cases), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    for case_id in cases:
        write(folder / "labelsTr" / f"{case_id}.nii.gz", CASE_LABELS)
        for c, array in enumerate((CHANNEL_0, CHANNEL_1)[:channels]):
            write(folder / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", array)
    return folder


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    folder = make_dataset(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(folder.parent))
    return folder


def dataset_json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def test_export_writes_the_intensities_computed_by_hand(dataset):
    assert cli_main(["-d", "701", "--intensity", "--np", "1"]) == 0
    path = dataset / "descriptorsTr" / "knee_000.json"
    written = json.loads(path.read_text())
    block = written["image_intensity"]
    np.testing.assert_allclose(block["mean"], [IMAGE[0], 2 * IMAGE[0]], rtol=1e-12)
    np.testing.assert_allclose(block["std"], [IMAGE[1], 2 * IMAGE[1]], rtol=1e-12)
    assert block["region"] == "nonzero_bounding_box"
    assert [f["file"] for f in block["files"]] == [str((dataset / "imagesTr" / f"knee_000_000{c}.nii.gz").resolve())
                                                   for c in (0, 1)]
    classes = written["classes"]
    np.testing.assert_allclose(classes["bone"]["intensity"]["mean"], [BONE[0], 2 * BONE[0]], rtol=1e-12)
    np.testing.assert_allclose(classes["bone"]["intensity"]["std"], [BONE[1], 2 * BONE[1]], rtol=1e-12)
    np.testing.assert_allclose(classes["cartilage"]["intensity"]["mean"], [50.0, 100.0], rtol=1e-12)
    np.testing.assert_allclose(classes["cartilage"]["intensity"]["std"], [10.0, 20.0], rtol=1e-12)
    assert classes["meniscus"]["voxels"] == 0 and classes["meniscus"]["intensity"] is None
    assert written["export"]["settings"]["intensity"] is True
    # the shape descriptors are those of an export without --intensity
    plain = exporter.export_dataset("701", output_folder=dataset / "plain", num_processes=1)
    assert plain.computed == ["knee_000"]
    without = json.loads((dataset / "plain" / "knee_000.json").read_text())
    assert "image_intensity" not in without and "intensity" not in without["export"]["settings"]
    for name, entry in without["classes"].items():
        assert {k: v for k, v in classes[name].items() if k != "intensity"} == entry

    # read back: raw bounds (exact values), then nnU-Net's z-score units
    case = load_case_descriptors(path, dataset_json(dataset))
    np.testing.assert_allclose(case.image_intensity.mean, [IMAGE[0], 2 * IMAGE[0]])
    lower, upper = case.classes["bone"].intensity["mean"]
    np.testing.assert_array_equal(lower, upper)
    np.testing.assert_allclose(lower, [20.0, 40.0])
    raw = case_intensity_targets(case, [0, 1, 2, 3], 2)
    assert np.isnan(raw["mean"][0][0]).all() and np.isnan(raw["mean"][0][3]).all()  # background, absent
    np.testing.assert_allclose(raw["std"][1][2], [10.0, 20.0])
    z = case_intensity_targets_zscore(case, ["background", "bone", "cartilage", "meniscus"], 2)
    expected_bone = (BONE[0] - IMAGE[0]) / IMAGE[1]  # the same in both channels: z-scores ignore the factor 2
    np.testing.assert_allclose(z["mean"][0][1], [expected_bone, expected_bone], rtol=1e-12)
    np.testing.assert_allclose(z["mean"][1][2], [(50.0 - IMAGE[0]) / IMAGE[1]] * 2, rtol=1e-12)
    np.testing.assert_allclose(z["std"][0][2], [10.0 / IMAGE[1]] * 2, rtol=1e-12)


def test_zscore_targets_equal_the_class_means_of_nnunets_preprocessed_image(dataset):
    """What nnU-Net's preprocessing does to the image (read, transpose, crop_to_nonzero,
    ZScoreNormalization without mask): the class means of its result are the file's z-score targets."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    exporter.export_dataset("701", num_processes=1, intensity=True)
    case = load_case_descriptors(dataset / "descriptorsTr" / "knee_000.json", dataset_json(dataset))
    z = case_intensity_targets_zscore(case, [0, 1, 2, 3], 2)
    images = [str(dataset / "imagesTr" / f"knee_000_000{c}.nii.gz") for c in (0, 1)]
    data, _ = SimpleITKIO().read_images(images)
    seg, _ = SimpleITKIO().read_seg(str(dataset / "labelsTr" / "knee_000.nii.gz"))
    data, seg, _ = crop_to_nonzero(data.astype(np.float32), seg.copy())
    for c in range(2):
        normalised = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(data[c].copy())
        for label, name in ((1, "bone"), (2, "cartilage")):
            voxels = normalised[seg[0] == label]
            assert voxels.mean() == pytest.approx(z["mean"][0][label][c], rel=1e-5), name
            assert voxels.std() == pytest.approx(z["std"][0][label][c], rel=1e-5), name


def test_nonzero_bounding_box_is_nnunets_crop():
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    rng = np.random.default_rng(0)
    image = np.zeros((2, 9, 10, 11))
    image[0, 2:7, 3:8, 1:9] = rng.normal(5, 1, size=(5, 5, 8))
    image[0, 4, 5, 4] = 0.0  # a hole (nnU-Net fills it; the box is the same)
    image[1, 8, 4, 2] = 3.0  # another channel widens the box (any channel non-zero)
    cropped, _, bbox = crop_to_nonzero(image.copy())
    box = measure.nonzero_bounding_box(image)
    assert [[b.start, b.stop] for b in box] == [list(b) for b in bbox]
    np.testing.assert_array_equal(image[(slice(None), *box)], cropped)
    assert measure.nonzero_bounding_box(np.zeros((1, 3, 4))) == (slice(0, 3), slice(0, 4))


def test_export_with_intensity_is_idempotent_and_follows_the_images(dataset, monkeypatch):
    assert exporter.export_dataset("701", num_processes=1, intensity=True).computed == ["knee_000"]

    def no_reading(*args, **kwargs):
        raise AssertionError("an up-to-date case was read again")

    with monkeypatch.context() as patch:
        patch.setattr(exporter, "read_label_map", no_reading)
        again = exporter.export_dataset("701", num_processes=1, intensity=True)
    assert again.skipped == ["knee_000"] and again.written == []
    # a changed image (not the label map) makes the case stale
    write(dataset / "imagesTr" / "knee_000_0001.nii.gz", 3 * CHANNEL_0)
    changed = exporter.export_dataset("701", num_processes=1, intensity=True)
    assert changed.computed == ["knee_000"]
    written = json.loads((dataset / "descriptorsTr" / "knee_000.json").read_text())
    assert written["classes"]["cartilage"]["intensity"]["mean"][1] == pytest.approx(150.0)
    # without --intensity the settings differ: recomputed, without the blocks
    plain = exporter.export_dataset("701", num_processes=1)
    assert plain.computed == ["knee_000"]
    assert "image_intensity" not in json.loads((dataset / "descriptorsTr" / "knee_000.json").read_text())


def test_summary_and_csv_carry_the_intensities(dataset):
    assert cli_main(["-d", "701", "--intensity", "--format", "csv", "--np", "1"]) == 0
    out = dataset / "descriptorsTr"
    summary = json.loads((out / "summary.json").read_text())
    np.testing.assert_allclose(summary["classes"]["bone"]["intensity_mean"]["mean"], [20.0, 40.0])
    assert "intensity_mean" not in summary["classes"]["meniscus"]
    with open(out / "descriptors.csv", newline="") as handle:
        rows = {r["class"]: r for r in csv.DictReader(handle)}
    assert float(rows["cartilage"]["intensity_std_1"]) == pytest.approx(20.0)
    assert float(rows["bone"]["intensity_mean_0"]) == pytest.approx(20.0)
    assert rows["meniscus"]["intensity_mean_0"] == ""


def test_prediction_folder_needs_images(dataset, tmp_path, capsys):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / "knee_000.nii.gz").write_bytes((dataset / "labelsTr" / "knee_000.nii.gz").read_bytes())
    assert cli_main(["-i", str(predictions), "-o", str(tmp_path / "o"), "-d", "701", "--intensity"]) == 2
    assert "needs --images FOLDER" in capsys.readouterr().err
    assert cli_main(["-i", str(predictions), "-o", str(tmp_path / "o"), "-d", "701", "--intensity",
                     "--images", str(dataset / "imagesTr"), "--np", "1"]) == 0
    written = json.loads((tmp_path / "o" / "knee_000.json").read_text())
    assert written["classes"]["bone"]["intensity"]["mean"] == pytest.approx([20.0, 40.0])
    with pytest.raises(SystemExit):
        cli_main(["-d", "701", "--images", str(dataset / "imagesTr")])


def test_missing_or_mismatched_images_name_the_case_and_file(dataset, capsys):
    (dataset / "imagesTr" / "knee_000_0001.nii.gz").unlink()
    assert cli_main(["-d", "701", "--intensity", "--np", "1"]) == 2
    err = capsys.readouterr().err
    assert "'knee_000'" in err and "knee_000_0001.nii.gz" in err and "does not exist" in err
    image = sitk.GetImageFromArray(CHANNEL_0)
    image.SetSpacing((0.5, 0.8, 3.0))  # another spacing than channel 0 (and the label map)
    image.SetOrigin(ORIGIN_XYZ)
    sitk.WriteImage(image, str(dataset / "imagesTr" / "knee_000_0001.nii.gz"))
    assert cli_main(["-d", "701", "--intensity", "--np", "1"]) == 2
    err = capsys.readouterr().err
    assert "case 'knee_000': cannot read its image" in err and "knee_000_0001.nii.gz" in err and "spacing" in err
    sitk.WriteImage(image, str(dataset / "imagesTr" / "knee_000_0000.nii.gz"))  # both channels: the label map differs
    assert cli_main(["-d", "701", "--intensity", "--np", "1"]) == 2
    err = capsys.readouterr().err
    assert "case 'knee_000'" in err and "does not match its image" in err and "knee_000_0000.nii.gz" in err
    assert "spacing_mm" in err


# ----------------------------------------------------------------------------- reading and validation


def prior(**extra) -> dict:
    return {"schema": "nnunet-shape/descriptors/v1", "kind": "prior", "case_id": "knee_000", **extra}


def load(tmp_path: Path, obj: dict, with_dataset: bool = True):
    path = tmp_path / f"{obj['case_id']}.json"
    path.write_text(json.dumps(obj))
    names = {"0": "MR0", "1": "MR1"}
    return load_case_descriptors(path, {"labels": LABELS, "channel_names": names} if with_dataset else None)


def test_prior_intensity_values_and_bounds_round_trip(tmp_path):
    case = load(tmp_path, prior(image_intensity={"mean": [100.0, 10.0], "std": [20.0, 2.0]},
                                classes={"bone": {"intensity": {"mean": {"min": [120, None], "max": 160},
                                                                "std": [5.0, None]}},
                                         "cartilage": {"volume_mm3": 10.0}}))
    lower, upper = case.classes["bone"].intensity["mean"]
    np.testing.assert_array_equal(lower, [120.0, np.nan])
    np.testing.assert_array_equal(upper, [160.0, 160.0])  # a scalar bound applies to every channel
    assert case.classes["cartilage"].intensity == {}
    z = case_intensity_targets_zscore(case, [0, 1, 2, 3], 2)
    np.testing.assert_allclose(z["mean"][0][1], [1.0, np.nan])  # (120 - 100) / 20
    np.testing.assert_allclose(z["mean"][1][1], [3.0, 75.0])    # (160 - 100) / 20, (160 - 10) / 2
    np.testing.assert_allclose(z["std"][0][1], [0.25, np.nan])
    assert np.isnan(z["mean"][0][2]).all()


def test_prior_with_intensities_but_no_image_intensity_cannot_be_converted(tmp_path):
    case = load(tmp_path, prior(classes={"bone": {"intensity": {"mean": [120.0, 30.0]}}}))
    assert case.image_intensity is None
    np.testing.assert_allclose(case_intensity_targets(case, [0, 1], 2)["mean"][0][1], [120.0, 30.0])
    with pytest.raises(DescriptorFileError, match=r"knee_000.json: case 'knee_000': field \$.image_intensity: "
                                                  r"missing: the classes give raw intensities"):
        case_intensity_targets_zscore(case, [0, 1], 2)
    with pytest.raises(DescriptorFileError, match=r"\$.classes.bone.intensity.mean: wrong number of channels: "
                                                  r"2 entries, the images have 1"):
        case_intensity_targets(case, [0, 1], 1)


def test_old_files_without_intensity_still_load(dataset):
    exporter.export_dataset("701", num_processes=1)
    case = load_case_descriptors(dataset / "descriptorsTr" / "knee_000.json", dataset_json(dataset))
    assert case.image_intensity is None and all(c.intensity == {} for c in case.classes.values())
    z = case_intensity_targets_zscore(case, [0, 1, 2, 3], 2)  # nothing to convert: all unconstrained
    assert all(np.isnan(lo).all() and np.isnan(hi).all() for lo, hi in z.values())


@pytest.mark.parametrize("obj, field, problem", [
    (prior(image_intensity={"mean": [1.0, 2.0], "std": [1.0]}, classes={}),
     r"\$.image_intensity.std", "wrong number of channels: 1 entries, expected 2"),
    (prior(image_intensity={"mean": [1.0, 2.0], "std": [1.0, 1.0]}, classes={"bone": {"intensity": {"mean": [1.0]}}}),
     r"\$.classes.bone.intensity.mean", r"wrong number of channels: 1 entries, expected 2 \(from \$.image_intensity"),
    (prior(image_intensity={"mean": [1.0], "std": [1.0]}, classes={}),
     r"\$.image_intensity.mean", "wrong number of channels: 1, but dataset.json has 2 channel_names"),
    (prior(classes={"bone": {"intensity": {"mean": {"min": [5, 5], "max": [4, 6]}}}}),
     r"\$.classes.bone.intensity.mean", r"min > max"),
    (prior(classes={"bone": {"intensity": {"std": [-1.0, 1.0]}}}),
     r"\$.classes.bone.intensity.std\[0\]", "less than the minimum of 0"),
    (prior(classes={"bone": {"intensity": {"median": [1.0, 1.0]}}}),
     r"\$.classes.bone.intensity", "median"),
    (prior(image_intensity={"mean": [1.0, 1.0], "std": [1.0, 1.0], "scale": 2}, classes={}),
     r"\$.image_intensity", "scale"),
])
def test_invalid_intensity_blocks_name_file_case_and_field(tmp_path, obj, field, problem):
    with pytest.raises(DescriptorFileError, match=rf"knee_000.json: case 'knee_000': field {field}: .*{problem}"):
        load(tmp_path, obj)


def measured(dataset: Path) -> dict:
    exporter.export_dataset("701", num_processes=1, intensity=True)
    return json.loads((dataset / "descriptorsTr" / "knee_000.json").read_text())


@pytest.mark.parametrize("change, field, problem", [
    (lambda o: o["classes"]["bone"].pop("intensity"), r"\$.classes.bone", "missing 'intensity'"),
    (lambda o: o.pop("image_intensity"), r"\$.image_intensity", "missing: class 'bone' has an 'intensity' block"),
    (lambda o: o["classes"]["meniscus"].update(intensity={"mean": [1.0, 1.0], "std": [0.0, 0.0]}),
     r"\$.classes.meniscus.intensity", r"absent class \(voxels == 0\) must have null intensity"),
    (lambda o: o["classes"]["bone"].update(intensity=None), r"\$.classes.bone.intensity",
     "null intensity for a present class"),
    (lambda o: o["classes"]["bone"].update(intensity={"mean": {"min": [1, 1]}, "std": [0.0, 0.0]}),
     r"\$.classes.bone.intensity.mean", "is not of type 'array'"),
])
def test_measured_intensity_rules(dataset, tmp_path, change, field, problem):
    obj = measured(dataset)
    change(obj)
    path = tmp_path / "knee_000.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(DescriptorFileError, match=rf"case 'knee_000': field {field}: .*{problem}"):
        load_case_descriptors(path, dataset_json(dataset))
