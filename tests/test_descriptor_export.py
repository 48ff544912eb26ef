"""nnUNetv2_export_descriptors: values against the descriptor core and SimpleITK, CLI forms,
summary/CSV, idempotency, absent classes, regions, atomic writes; measure's mask descriptors,
nnU-Net's 2-D layout and the errors of a prediction."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_shape.core import descriptors as core
from nnunet_shape.descriptor_files import export as exporter
from nnunet_shape.descriptor_files import measure
from nnunet_shape.descriptor_files.cli import main as cli_main
from nnunet_shape.descriptor_files.read import load_case_descriptors, load_descriptor_folder

LABELS = {"background": 0, "femur": 1, "tibia": 2, "patella": 3}
ROTATION = sitk.VersorTransform((0.2, 0.3, 0.5), 0.7).GetMatrix()  # non-axis-aligned direction
AXIS_FLIP = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)        # signed permutation


def knee_labels(shape=(8, 10, 12), seed: int = 0, patella: bool = True) -> np.ndarray:
    """(z, y, x) uint8 label map: a blob touching the border, a box, an optional single voxel."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    blob = ((z - 2.5) / 3.0) ** 2 + ((y - 4.0) / 3.5) ** 2 + ((x - 5.0) / 4.5) ** 2 <= 1.0
    labels[blob] = 1
    labels[0, 3:6, 2:9] = 1  # femur touches the image border (z = 0)
    labels[5:8, 0:4, 6 + seed % 2:11] = 2
    labels[(rng.random(shape) < 0.03) & (labels == 0)] = 2  # scattered voxels: surface stress
    if patella:
        labels[6, 8, 1] = 3
    return labels


def write_label_map(path: Path, labels: np.ndarray, spacing_xyz, origin_xyz, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(tuple(spacing_xyz))
    image.SetOrigin(tuple(origin_xyz))
    image.SetDirection(tuple(direction))
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))  # what is on disk (float32 header round trip)


def make_raw_dataset(root: Path, cases: dict[str, np.ndarray], labels=LABELS, spacing_xyz=(0.7, 1.1, 2.5),
                     origin_xyz=(3.0, -4.0, 5.0), direction=ROTATION, extra_json=None) -> Path:
    """nnUNet_raw/Dataset701_Test/{dataset.json, labelsTr/*.nii.gz}; returns the dataset folder."""
    folder = root / "nnUNet_raw" / "Dataset701_Test"
    (folder / "labelsTr").mkdir(parents=True)
    dataset_json = {"channel_names": {"0": "MR"}, "labels": labels, "numTraining": len(cases),
                    "file_ending": ".nii.gz", **(extra_json or {})}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    for case_id, array in cases.items():
        write_label_map(folder / "labelsTr" / f"{case_id}.nii.gz", array, spacing_xyz, origin_xyz, direction)
    return folder


@pytest.fixture
def raw_dataset(tmp_path, monkeypatch):
    cases = {"knee_000": knee_labels(seed=0), "knee_001": knee_labels(seed=1, patella=False)}
    folder = make_raw_dataset(tmp_path, cases)
    monkeypatch.setenv("nnUNet_raw", str(folder.parent))
    return folder


def full_face_area(mask: np.ndarray, spacing_zyx) -> float:
    """Voxel-face area of a mask including faces on the image border (zero padding)."""
    padded = np.pad(mask.astype(np.int64), 1)
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    return float(sum(np.abs(np.diff(padded, axis=a)).sum() * np.prod(np.delete(spacing, a))
                     for a in range(mask.ndim)))


GEOMETRIES = {
    "rotated-anisotropic": dict(spacing_xyz=(0.7, 1.1, 2.5), origin_xyz=(3.0, -4.0, 5.0), direction=ROTATION),
    "flipped-axes": dict(spacing_xyz=(1.5, 0.5, 1.0), origin_xyz=(-10.0, 2.0, 0.5), direction=AXIS_FLIP),
    "identity": dict(spacing_xyz=(1.0, 1.0, 1.0), origin_xyz=(0.0, 0.0, 0.0), direction=np.eye(3).ravel()),
}


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_export_equals_core_and_simpleitk(tmp_path, monkeypatch, geometry):
    labels = knee_labels(seed=3)
    folder = make_raw_dataset(tmp_path, {"knee_000": labels}, **geometry)
    monkeypatch.setenv("nnUNet_raw", str(folder.parent))
    exporter.export_dataset("701", num_processes=1)
    data = json.loads((folder / "descriptorsTr" / "knee_000.json").read_text())
    image = sitk.ReadImage(str(folder / "labelsTr" / "knee_000.nii.gz"))
    spacing_zyx = np.asarray(image.GetSpacing())[::-1].copy()

    assert data["shape"] == list(labels.shape)
    assert data["axis_order"] == ["z", "y", "x"]
    np.testing.assert_array_equal(data["spacing_mm"], spacing_zyx)
    np.testing.assert_array_equal(data["origin_mm"], image.GetOrigin())
    np.testing.assert_array_equal(np.ravel(data["direction"]), image.GetDirection())

    # the descriptor core on the whole label map (no crop), float64
    one_hot = core.one_hot_labels(torch.from_numpy(labels.astype(np.int64))[None], 4, dtype=torch.float64)
    ref = core.compute_descriptors(one_hot, torch.tensor(spacing_zyx), names=core.DESCRIPTOR_NAMES)
    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.Execute(image)

    for name, label in (("femur", 1), ("tibia", 2), ("patella", 3)):
        entry = data["classes"][name]
        assert entry["label"] == label
        # SimpleITK: voxel count, physical size, world centroid, principal moments, border faces
        assert entry["voxels"] == shape_stats.GetNumberOfPixels(label) == int((labels == label).sum())
        assert entry["volume_mm3"] == pytest.approx(shape_stats.GetPhysicalSize(label), rel=1e-12)
        np.testing.assert_allclose(entry["centroid_world_mm"], shape_stats.GetCentroid(label), rtol=0, atol=1e-9)
        continuous_index = tuple(np.asarray(entry["centroid_voxel"])[::-1])
        np.testing.assert_allclose(entry["centroid_world_mm"],
                                   image.TransformContinuousIndexToPhysicalPoint(continuous_index), atol=1e-9)
        np.testing.assert_allclose(np.square(entry["principal_axes_mm"]["lengths"]),
                                   sorted(shape_stats.GetPrincipalMoments(label), reverse=True), atol=1e-9)
        assert entry["surface_mm2"] + shape_stats.GetPerimeterOnBorder(label) == pytest.approx(
            full_face_area(labels == label, spacing_zyx), rel=1e-12)
        # the core: same values as on the full map
        k = label
        assert entry["volume_mm3"] == pytest.approx(float(ref["volume"][0, k]), rel=1e-12)
        np.testing.assert_allclose(entry["centroid_mm"], ref["centroid"][0, k].numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(entry["spread_mm"], ref["spread"][0, k].numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(entry["covariance_mm2"], ref["covariance"][0, k].numpy(), rtol=0, atol=1e-10)
        assert entry["surface_mm2"] == pytest.approx(float(ref["surface"][0, k]), rel=1e-12)
        np.testing.assert_allclose(entry["centroid_mm"], np.asarray(entry["centroid_voxel"]) * spacing_zyx,
                                   atol=1e-12)
        # principal axes: rows are unit eigenvectors of the covariance; world rows = direction @ reversed
        cov = np.asarray(entry["covariance_mm2"])
        for length, vector, world in zip(entry["principal_axes_mm"]["lengths"], entry["principal_axes_mm"]["vectors"],
                                         entry["principal_axes_mm"]["vectors_world"]):
            np.testing.assert_allclose(cov @ np.asarray(vector), length ** 2 * np.asarray(vector), atol=1e-9)
            np.testing.assert_allclose(world, np.reshape(image.GetDirection(), (3, 3)) @ np.asarray(vector)[::-1],
                                       atol=1e-12)
    femur = data["classes"]["femur"]
    # SimpleITK's elongation is the inverse of the exported (pyradiomics) one
    assert femur["elongation"] == pytest.approx(1.0 / shape_stats.GetElongation(1), rel=1e-9)
    lam = np.square(femur["principal_axes_mm"]["lengths"])
    assert femur["flatness"] == pytest.approx(np.sqrt(lam[2] / lam[0]), rel=1e-9)
    # ... and its flatness is sqrt(lambda_minor / lambda_least) = elongation / flatness here
    assert shape_stats.GetFlatness(1) == pytest.approx(femur["elongation"] / femur["flatness"], rel=1e-9)
    # the exported file passes the reader
    load_case_descriptors(folder / "descriptorsTr" / "knee_000.json", json.loads((folder / "dataset.json").read_text()))


def test_native_2d_image_is_exported_with_two_axes(tmp_path, monkeypatch):
    labels = np.zeros((9, 13), np.uint8)
    labels[2:6, 3:11] = 1
    labels[7, 0] = 2
    folder = tmp_path / "nnUNet_raw" / "Dataset702_Flat"
    (folder / "labelsTr").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "X"}, "numTraining": 1,
                                                     "labels": {"background": 0, "a": 1, "b": 2},
                                                     "file_ending": ".nii.gz"}))
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((0.5, 2.0))
    image.SetOrigin((1.0, 2.0))
    image.SetDirection((0.0, 1.0, -1.0, 0.0))
    sitk.WriteImage(image, str(folder / "labelsTr" / "c.nii.gz"))
    monkeypatch.setenv("nnUNet_raw", str(folder.parent))
    assert cli_main(["-d", "702", "--np", "1"]) == 0
    data = json.loads((folder / "descriptorsTr" / "c.json").read_text())
    assert data["dimension"] == 2 and data["shape"] == [9, 13] and data["axis_order"] == ["y", "x"]
    assert data["spacing_mm"] == [2.0, 0.5]
    a = data["classes"]["a"]
    assert a["voxels"] == 32 and a["volume_mm3"] == pytest.approx(32 * 1.0)
    np.testing.assert_allclose(a["centroid_mm"], [3.5 * 2.0, 6.5 * 0.5])
    # boundary length of a 4 x 8 pixel rectangle (rows 2 mm, columns 0.5 mm): 2*(8*0.5) + 2*(4*2)
    assert a["surface_mm2"] == pytest.approx(2 * 8 * 0.5 + 2 * 4 * 2.0)
    assert a["flatness"] is None and data["units"]["surface_mm2"] == "mm (boundary length)"
    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.Execute(image)
    np.testing.assert_allclose(a["centroid_world_mm"], shape_stats.GetCentroid(1), atol=1e-12)


def test_cli_dataset_form_writes_default_folder_summary_and_csv(raw_dataset):
    assert cli_main(["-d", "701", "--format", "csv", "--np", "1"]) == 0
    out = raw_dataset / "descriptorsTr"
    assert sorted(p.name for p in out.iterdir()) == ["descriptors.csv", "knee_000.json", "knee_001.json",
                                                     "summary.json"]
    cases = [json.loads((out / f"{c}.json").read_text()) for c in ("knee_000", "knee_001")]
    for case in cases:
        assert case["schema"] == "nnunet-shape/descriptors/v1"
        assert case["source"]["file"] == str((raw_dataset / "labelsTr" / f"{case['case_id']}.nii.gz").resolve())

    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "nnunet-shape/descriptors/v1" and summary["num_cases"] == 2
    volumes = [c["classes"]["femur"]["volume_mm3"] for c in cases]
    femur = summary["classes"]["femur"]
    assert femur["volume_mm3"]["mean"] == pytest.approx(np.mean(volumes))
    assert femur["volume_mm3"]["std"] == pytest.approx(np.std(volumes))
    assert (femur["volume_mm3"]["min"], femur["volume_mm3"]["max"]) == (min(volumes), max(volumes))
    np.testing.assert_allclose(femur["centroid_mm"]["mean"],
                               np.mean([c["classes"]["femur"]["centroid_mm"] for c in cases], axis=0))
    patella = summary["classes"]["patella"]  # only in knee_000
    assert (patella["cases_present"], patella["cases_absent"]) == (1, 1)
    assert patella["volume_mm3"]["std"] == 0.0

    with open(out / "descriptors.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 3  # one row per case and class
    row = next(r for r in rows if r["case_id"] == "knee_001" and r["class"] == "tibia")
    tibia = cases[1]["classes"]["tibia"]
    assert float(row["volume_mm3"]) == tibia["volume_mm3"]
    assert [float(row[f"centroid_world_{a}_mm"]) for a in "xyz"] == tibia["centroid_world_mm"]
    assert [float(row[f"centroid_{a}_mm"]) for a in "zyx"] == tibia["centroid_mm"]
    assert float(row["covariance_zx_mm2"]) == tibia["covariance_mm2"][0][2]
    absent = next(r for r in rows if r["case_id"] == "knee_001" and r["class"] == "patella")
    assert absent["voxels"] == "0" and absent["centroid_world_x_mm"] == "" and absent["spread_z_mm"] == ""


def test_cli_input_folder_form_uses_dataset_labels(raw_dataset, tmp_path):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for case_id in ("knee_000", "knee_001"):
        (predictions / f"{case_id}.nii.gz").write_bytes((raw_dataset / "labelsTr" / f"{case_id}.nii.gz").read_bytes())
    (predictions / "plans.json").write_text("{}")  # nnU-Net leaves these next to predictions
    out = tmp_path / "biomarkers"
    assert cli_main(["-i", str(predictions), "-o", str(out), "-d", "Dataset701_Test", "--np", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["knee_000.json", "knee_001.json", "summary.json"]
    # same labels, same values as the labelsTr export; the source is the prediction file
    exporter.export_dataset("701", num_processes=1)
    a = json.loads((out / "knee_000.json").read_text())
    b = json.loads((raw_dataset / "descriptorsTr" / "knee_000.json").read_text())
    assert a["classes"] == b["classes"]
    assert a["source"]["file"] == str((predictions / "knee_000.nii.gz").resolve())
    # -i without -d: dataset.json from the folder (nnU-Net copies it into prediction folders)
    (predictions / "dataset.json").write_text((raw_dataset / "dataset.json").read_text())
    assert cli_main(["-i", str(predictions), "-o", str(tmp_path / "again"), "--np", "1"]) == 0
    assert json.loads((tmp_path / "again" / "knee_000.json").read_text())["classes"] == a["classes"]


@pytest.mark.parametrize("argv", [[], ["-i", "somewhere"], ["-d", "701", "--np", "0"]])
def test_cli_rejects_incomplete_arguments(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2


def test_cli_unknown_dataset_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert cli_main(["-d", "999"]) == 2  # every console script: bad input is exit code 2
    assert "Dataset999_*" in capsys.readouterr().err


def test_second_run_recomputes_nothing_and_overwrite_forces(raw_dataset, monkeypatch):
    first = exporter.export_dataset("701", num_processes=1, write_csv=True)
    assert first.computed == ["knee_000", "knee_001"] and first.skipped == []
    out = raw_dataset / "descriptorsTr"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_reading(*args, **kwargs):
        raise AssertionError("an up-to-date case was read again")

    with monkeypatch.context() as patch:
        patch.setattr(exporter, "read_label_map", no_reading)
        second = exporter.export_dataset("701", num_processes=1, write_csv=True)
    assert second.computed == [] and second.skipped == ["knee_000", "knee_001"] and second.written == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    # a changed source file is recomputed, and only it
    source = raw_dataset / "labelsTr" / "knee_001.nii.gz"
    write_label_map(source, knee_labels(seed=5), (0.7, 1.1, 2.5), (3.0, -4.0, 5.0), ROTATION)
    third = exporter.export_dataset("701", num_processes=1, write_csv=True)
    assert third.computed == ["knee_001"] and third.skipped == ["knee_000"]
    assert set(third.written) == {"summary.json", "descriptors.csv"}
    assert (out / "knee_000.json").stat().st_mtime_ns == stamps["knee_000.json"]

    forced = exporter.export_dataset("701", num_processes=1, overwrite=True)
    assert forced.computed == ["knee_000", "knee_001"]


def test_changed_labels_in_dataset_json_invalidate_the_export(raw_dataset):
    exporter.export_dataset("701", num_processes=1)
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    dataset_json["labels"]["meniscus"] = 4
    (raw_dataset / "dataset.json").write_text(json.dumps(dataset_json))
    report = exporter.export_dataset("701", num_processes=1)
    assert report.computed == ["knee_000", "knee_001"]
    written = json.loads((raw_dataset / "descriptorsTr" / "knee_000.json").read_text())
    assert written["classes"]["meniscus"]["voxels"] == 0


def test_worker_processes_give_the_same_files(raw_dataset, tmp_path):
    exporter.export_dataset("701", num_processes=1)
    report = exporter.export_dataset("701", output_folder=tmp_path / "parallel", num_processes=2)
    assert report.computed == ["knee_000", "knee_001"]
    for case_id in report.computed:
        serial = json.loads((raw_dataset / "descriptorsTr" / f"{case_id}.json").read_text())
        parallel = json.loads((tmp_path / "parallel" / f"{case_id}.json").read_text())
        assert serial["classes"] == parallel["classes"]


def test_absent_class_has_zero_voxels_and_null_geometry(raw_dataset):
    exporter.export_dataset("701", num_processes=1)
    entry = json.loads((raw_dataset / "descriptorsTr" / "knee_001.json").read_text())["classes"]["patella"]
    assert entry == {"label": 3, "voxels": 0, "volume_mm3": 0.0, "surface_mm2": 0.0, "centroid_mm": None,
                     "centroid_world_mm": None, "centroid_voxel": None, "spread_mm": None, "covariance_mm2": None,
                     "principal_axes_mm": None, "elongation": None, "flatness": None}


def test_regions_are_exported_as_unions_of_their_labels(tmp_path, monkeypatch):
    labels = knee_labels(seed=2)
    regions = {"background": 0, "whole": [1, 2, 3], "bones": [1, 2], "patella": 3}
    folder = make_raw_dataset(tmp_path, {"knee_000": labels}, labels=regions,
                              extra_json={"regions_class_order": [1, 2, 3]})
    monkeypatch.setenv("nnUNet_raw", str(folder.parent))
    exporter.export_dataset("701", num_processes=1)
    data = json.loads((folder / "descriptorsTr" / "knee_000.json").read_text())
    assert list(data["classes"]) == ["whole", "bones", "patella"]
    spacing_zyx = torch.tensor(data["spacing_mm"], dtype=torch.float64)
    for name, members, label in (("whole", (1, 2, 3), 1), ("bones", (1, 2), 2), ("patella", (3,), 3)):
        entry = data["classes"][name]
        mask = np.isin(labels, members)
        probs = torch.from_numpy(mask.astype(np.float64))[None, None]
        ref = core.compute_descriptors(probs, spacing_zyx, names=("volume", "centroid", "surface"))
        assert entry["label"] == label
        assert entry["voxels"] == int(mask.sum())
        assert entry["volume_mm3"] == pytest.approx(float(ref["volume"][0, 0]), rel=1e-12)
        np.testing.assert_allclose(entry["centroid_mm"], ref["centroid"][0, 0].numpy(), atol=1e-10)
        assert entry["surface_mm2"] == pytest.approx(float(ref["surface"][0, 0]), rel=1e-12)
    assert data["classes"]["whole"]["region_labels"] == [1, 2, 3]
    assert "region_labels" not in data["classes"]["patella"] or data["classes"]["patella"]["region_labels"] == [3]
    cases = load_descriptor_folder(folder / "descriptorsTr", json.loads((folder / "dataset.json").read_text()))
    assert set(cases["knee_000"].classes) == {"whole", "bones", "patella"}


def test_nibabel_reader_gives_the_same_world_frame(tmp_path, monkeypatch):
    labels = knee_labels(seed=4)
    folder = make_raw_dataset(tmp_path, {"knee_000": labels}, direction=AXIS_FLIP,
                              extra_json={"overwrite_image_reader_writer": "NibabelIO"})
    monkeypatch.setenv("nnUNet_raw", str(folder.parent))
    exporter.export_dataset("701", output_folder=tmp_path / "nib", num_processes=1)
    (folder / "dataset.json").write_text(json.dumps({**json.loads((folder / "dataset.json").read_text()),
                                                     "overwrite_image_reader_writer": "SimpleITKIO"}))
    exporter.export_dataset("701", output_folder=tmp_path / "itk", num_processes=1)
    nib = json.loads((tmp_path / "nib" / "knee_000.json").read_text())
    itk = json.loads((tmp_path / "itk" / "knee_000.json").read_text())
    assert nib["source"]["reader"] == "NibabelIO" and itk["source"]["reader"] == "SimpleITKIO"
    assert nib["shape"] == itk["shape"]
    np.testing.assert_allclose(nib["origin_mm"], itk["origin_mm"], atol=1e-5)
    np.testing.assert_allclose(nib["direction"], itk["direction"], atol=1e-6)
    for name in ("femur", "tibia", "patella"):
        np.testing.assert_allclose(nib["classes"][name]["centroid_world_mm"], itk["classes"][name]["centroid_world_mm"],
                                   atol=1e-5)
        np.testing.assert_allclose(nib["classes"][name]["centroid_mm"], itk["classes"][name]["centroid_mm"], atol=1e-5)


@pytest.mark.parametrize("failure, error", [("dump", OSError), ("dump", KeyboardInterrupt), ("replace", OSError)])
def test_interrupted_export_leaves_no_partial_file(raw_dataset, monkeypatch, failure, error):
    import nnunet_shape.descriptor_files.atomic as io_module

    def broken_dump(obj, handle, **kwargs):
        handle.write('{"schema": "nnunet-shape/descriptors/v1", "kind": "meas')  # half a file, then the failure
        raise error("disk full") if error is OSError else error()

    def broken_replace(src, dst):
        raise error("rename failed")

    if failure == "dump":
        monkeypatch.setattr(io_module.json, "dump", broken_dump)
    else:
        monkeypatch.setattr(io_module.os, "replace", broken_replace)
    with pytest.raises(error):
        exporter.export_dataset("701", num_processes=1)
    out = raw_dataset / "descriptorsTr"
    assert sorted(p.name for p in out.iterdir()) == []  # no <case>.json, no temporary file
    monkeypatch.undo()
    monkeypatch.setenv("nnUNet_raw", str(raw_dataset.parent))
    exporter.export_dataset("701", num_processes=1)
    assert sorted(p.name for p in out.iterdir()) == ["knee_000.json", "knee_001.json", "summary.json"]


# ------------------------------------------------------------------------------------------
# measure: one mask, the 2-D layout of nnU-Net's readers, errors of a prediction
# ------------------------------------------------------------------------------------------


def test_mask_descriptors_of_a_box_by_hand():
    mask = np.zeros((6, 9, 7), bool)
    mask[2:4, 1:4, 5] = True  # 2 x 3 x 1 voxels of 2.0 x 0.5 x 1.0 mm (1 mm^3 each)
    values = measure.mask_descriptors(mask, (2.0, 0.5, 1.0))
    assert float(values["volume"]) == 6.0
    np.testing.assert_allclose(values["centroid"], [2.5 * 2.0, 2.0 * 0.5, 5.0 * 1.0], rtol=1e-12)
    # per axis: variance of the indices times spacing^2 ({2, 3}: 1/4, {1, 2, 3}: 2/3, {5}: 0)
    np.testing.assert_allclose(values["covariance"], np.diag([0.25 * 4.0, 2 / 3 * 0.25, 0.0]), atol=1e-12)
    np.testing.assert_allclose(values["spread"], np.sqrt([0.25 * 4.0, 2 / 3 * 0.25, 0.0]), atol=1e-7)
    # faces: 2 * 3 of 0.5 mm^2 (normal z), 2 * 2 of 2.0 mm^2 (normal y), 2 * 6 of 1.0 mm^2 (normal x)
    assert float(values["surface"]) == pytest.approx(6 * 0.5 + 4 * 2.0 + 12 * 1.0, rel=1e-12)


def test_mask_descriptors_crop_equals_the_whole_array():
    labels = knee_labels()
    spacing = (2.5, 1.1, 0.7)
    for label in (1, 2, 3):  # femur touches the border, tibia is scattered, patella is one voxel
        mask = labels == label
        cropped = measure.mask_descriptors(mask, spacing)
        whole = core.compute_descriptors(torch.from_numpy(mask.astype(np.float64))[None, None],
                                         torch.tensor(spacing, dtype=torch.float64),
                                         names=measure.MASK_DESCRIPTOR_NAMES)
        for name in measure.MASK_DESCRIPTOR_NAMES:
            np.testing.assert_allclose(cropped[name], whole[name][0, 0].numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=f"label {label} {name}")


def test_mask_descriptors_of_an_empty_mask():
    values = measure.mask_descriptors(np.zeros((4, 5), bool), (1.0, 2.0), names=("volume", "centroid", "surface"))
    assert float(values["volume"]) == 0.0 and float(values["surface"]) == 0.0
    assert values["centroid"].shape == (2,)


ERRORS_TABLE = {
    "identical": (36.0, 36.0, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), 0.0, 0.0),
    "grown-by-a-third": (36.0, 48.0, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), 1 / 3, 1.0),
    "shrunk-and-shifted": (27.0, 18.0, (0.0, 0.0, 0.0), (2.0, 0.5, -1.0), 1 / 3, 5.25 ** 0.5),
    "no-reference": (0.0, 5.0, None, (1.0, 1.0, 1.0), float("nan"), float("nan")),
    "empty-prediction": (24.0, 0.0, (1.0, 1.0, 1.0), None, 1.0, float("nan")),
}


@pytest.mark.parametrize("v_ref, v_pred, c_ref, c_pred, relative, distance", ERRORS_TABLE.values(),
                         ids=ERRORS_TABLE.keys())
def test_volume_and_centroid_errors(v_ref, v_pred, c_ref, c_pred, relative, distance):
    got = measure.volume_and_centroid_errors(v_ref, v_pred, c_ref, c_pred)
    np.testing.assert_allclose(got, (relative, distance), rtol=1e-12, atol=0)  # NaN == NaN here


IDENTITY_3D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
PROPERTIES_TABLE = {  # reader properties of an array (1, 1, 8, 6) -> native 2-D?, geometry shape, spacing
    "natural-image-2d": ({"spacing": (999.0, 1.0, 1.0)}, True, (8, 6), (1.0, 1.0)),
    "no-geometry-3d": ({"spacing": (1.0, 1.0, 1.0)}, False, (1, 8, 6), (1.0, 1.0, 1.0)),
    "simpleitk-2d": ({"spacing": (999 * 2.0, 2.0, 0.5),
                      "sitk_stuff": {"spacing": (0.5, 2.0), "origin": (1.0, 2.0), "direction": (0.0, 1.0, -1.0, 0.0)}},
                     True, (8, 6), (2.0, 0.5)),
    # a 3-D file of one slice with nnU-Net's dummy spacing keeps its axes: its world frame is 3-D
    "simpleitk-3d-one-slice": ({"spacing": (999.0, 2.0, 0.5),
                                "sitk_stuff": {"spacing": (0.5, 2.0, 999.0), "origin": (0.0, 0.0, 0.0),
                                               "direction": IDENTITY_3D}},
                               False, (1, 8, 6), (999.0, 2.0, 0.5)),
    "nibabel-one-slice": ({"spacing": (999.0, 1.0, 1.0), "nibabel_stuff": {"original_affine": np.eye(4)}},
                          False, (1, 8, 6), (999.0, 1.0, 1.0)),
}


@pytest.mark.parametrize("properties, native_2d, shape, spacing", PROPERTIES_TABLE.values(),
                         ids=PROPERTIES_TABLE.keys())
def test_geometry_from_properties_drops_only_the_dummy_axis_of_2d_images(properties, native_2d, shape, spacing):
    got_2d, geometry = measure.geometry_from_properties(properties, (1, 1, 8, 6))
    assert got_2d is native_2d
    assert geometry.shape == shape and geometry.spacing_mm == spacing
    assert geometry.axis_order == (("y", "x") if len(shape) == 2 else ("z", "y", "x"))
    assert len(geometry.direction) == len(geometry.origin_mm)
