"""The sparse-slice baseline (paper 003): simulate-slices writes an ignore-label dataset nnU-Net plans."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from e2e_helpers import nnunet_env, run_cli, write_tiny_dataset

from nnunet_shape.cli import main
from nnunet_shape.nnunet.sparse_slices import (
    EFFORT_FILE,
    SPARSE_FLAG,
    choose_slices,
    contour_length_mm,
    simulate_slices_dataset,
)

# --- contour length, by hand: marching squares through the edge midpoints -------------------

@pytest.mark.parametrize("mask, spacing, expected", [
    (np.ones((1, 1)), (1.0, 1.0), 4 * math.sqrt(0.5)),                        # one pixel: a diamond
    (np.ones((1, 1)), (2.0, 1.0), 4 * math.sqrt(1.0 + 0.25)),                 # anisotropic diamond
    (np.ones((3, 3)), (1.0, 1.0), 2 * 2 * (1 + 1) + 4 * math.sqrt(0.5)),       # 3x3 block: 8 + corners
    (np.ones((3, 3)), (2.0, 0.5), 2 * 2 * (2 + 0.5) + 4 * math.sqrt(1.0 + 0.0625)),
    (np.ones((2, 4)), (1.0, 1.0), 2 * (1 + 3) + 4 * math.sqrt(0.5)),           # 2x4: sides 1 and 3
    (np.zeros((3, 3)), (1.0, 1.0), 0.0),
])
def test_contour_length_by_hand(mask, spacing, expected):
    # the masks touch the border: the padding closes the outline
    assert contour_length_mm(mask.astype(bool), spacing) == pytest.approx(expected, rel=1e-12)


def test_contour_length_of_two_objects_adds_up():
    mask = np.zeros((6, 9), bool)
    mask[1, 1] = True
    mask[2:5, 4:7] = True
    assert contour_length_mm(mask, (1.0, 1.0)) == pytest.approx(4 * math.sqrt(0.5) + 8 + 4 * math.sqrt(0.5))


def test_choose_slices_only_foreground_and_seeded():
    foreground = np.zeros((10, 12, 14), bool)
    foreground[2:8, 3:9, 4:12] = True
    a = choose_slices(foreground, 3, 5)
    assert a == choose_slices(foreground, 3, 5)
    assert [len(s) for s in a] == [3, 3, 3]
    for axis, (lo, hi) in enumerate(((2, 8), (3, 9), (4, 12))):
        assert all(lo <= i < hi for i in a[axis]) and len(set(a[axis])) == 3
    draws = {tuple(map(tuple, choose_slices(foreground, 3, s))) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    # fewer foreground slices than asked: all of them
    assert choose_slices(foreground, 20, 0)[0] == list(range(2, 8))


# --- the dataset command on a hand-made case ---------------------------------------------------

def _write(path: Path, array: np.ndarray, spacing_zyx=(2.0, 1.0, 1.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(path))


def _hand_made_dataset(raw: Path) -> Path:
    """One case (4, 5, 6), one foreground voxel of label 2 at (1, 2, 3); a second case with a block."""
    folder = raw / "Dataset820_Hand"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3] = 2
    _write(folder / "labelsTr" / "a.nii.gz", labels)
    _write(folder / "imagesTr" / "a_0000.nii.gz", np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32))
    block = np.zeros((8, 9, 10), np.uint8)
    block[2:6, 3:7, 2:8] = 1
    block[3:5, 4:6, 4:6] = 2
    _write(folder / "labelsTr" / "b.nii.gz", block)
    _write(folder / "imagesTr" / "b_0000.nii.gz", block.astype(np.float32))
    _write(folder / "imagesTs" / "c_0000.nii.gz", block.astype(np.float32))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "one": 1, "two": 2},
        "numTraining": 2, "file_ending": ".nii.gz", "name": "Hand"}))
    return folder


def test_simulate_slices_values_ignore_counts_and_effort_exact(tmp_path, monkeypatch):
    raw = tmp_path / "nnUNet_raw"
    source = _hand_made_dataset(raw)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    result = simulate_slices_dataset(820, 2, seed=0)
    assert result["dataset_id"] == 821  # the first free id above the source's
    target = Path(result["folder"])
    assert target.name == "Dataset821_HandSlices2Seed0"
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "one": 1, "two": 2, "ignore": 3}
    assert dataset_json[SPARSE_FLAG] == {"source": "Dataset820_Hand", "slices_per_axis": 2, "seed": 0}
    # images are hard links of the source's (same inode), test images carried over
    linked, original = target / "imagesTr" / "a_0000.nii.gz", source / "imagesTr" / "a_0000.nii.gz"
    assert linked.stat().st_ino == original.stat().st_ino
    assert (target / "imagesTs" / "c_0000.nii.gz").is_file()

    sparse = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "labelsTr" / "a.nii.gz")))
    # one foreground voxel: one slice per plane however many are asked (z=1, y=2, x=3). Kept voxels:
    # 5*6 + 4*6 + 4*5 - (6 + 5 + 4) + 1 = 60 of 120, so 60 are ignored
    assert int(np.count_nonzero(sparse == 3)) == 60
    assert int(np.count_nonzero(sparse == 2)) == 1 and sparse[1, 2, 3] == 2
    assert int(np.count_nonzero(sparse == 0)) == 59
    assert np.all(sparse[1] != 3) and np.all(sparse[:, 2] != 3) and np.all(sparse[:, :, 3] != 3)
    reference = sitk.ReadImage(str(source / "labelsTr" / "a.nii.gz"))
    written = sitk.ReadImage(str(target / "labelsTr" / "a.nii.gz"))
    assert written.GetSpacing() == reference.GetSpacing() and written.GetOrigin() == reference.GetOrigin()

    effort = json.loads((target / EFFORT_FILE).read_text())
    case_a = effort["cases"]["a"]
    assert case_a["slices_per_axis"] == [[1], [2], [3]]
    assert case_a["annotated_voxels"] == 60 and case_a["voxels"] == 120
    # spacing (z, y, x) = (2, 1, 1): the z slice is a 1x1 mm diamond, the y and x slices 2x1 mm diamonds
    assert case_a["contour_length_mm"] == pytest.approx(4 * math.sqrt(0.5) + 2 * 4 * math.sqrt(1.25))
    # case b: every kept slice keeps exactly the source labels; 2 slices per plane
    labels_b = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "labelsTr" / "b.nii.gz")))
    sparse_b = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "labelsTr" / "b.nii.gz")))
    kept = sparse_b != 3
    assert np.array_equal(sparse_b[kept], labels_b[kept])
    slices_b = effort["cases"]["b"]["slices_per_axis"]
    assert [len(s) for s in slices_b] == [2, 2, 2]
    expected_kept = np.zeros_like(kept)
    for axis, indices in enumerate(slices_b):
        for index in indices:
            where = [slice(None)] * 3
            where[axis] = index
            expected_kept[tuple(where)] = True
            assert labels_b[tuple(where)].any()  # slices hold foreground
    assert np.array_equal(kept, expected_kept)
    assert effort["mean_contour_length_mm"] == pytest.approx(
        (case_a["contour_length_mm"] + effort["cases"]["b"]["contour_length_mm"]) / 2)

    # deterministic per seed: the same seed gives the same files, another seed other slices of b
    again = simulate_slices_dataset(820, 2, seed=0, target_id=830)
    assert json.loads((Path(again["folder"]) / EFFORT_FILE).read_text())["cases"] == effort["cases"]
    for name in ("a.nii.gz", "b.nii.gz"):
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(Path(again["folder"]) / "labelsTr" / name))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(target / "labelsTr" / name))))
    others = [simulate_slices_dataset(820, 2, seed=s, target_id=840 + s)["cases"]["b"]["slices_per_axis"]
              for s in (1, 2, 3)]
    assert any(o != slices_b for o in others)

    # the command: a taken id is refused (exit 2), naming it
    assert main(["simulate-slices", "-d", "820", "--slices", "1", "--target-id", "821"]) == 2
    assert main(["simulate-slices", "-d", "820", "--slices", "0"]) == 2


def test_simulate_slices_dataset_passes_nnunet_verify_dataset_integrity(tmp_path):
    root = tmp_path
    write_tiny_dataset(root / "nnUNet_raw", dataset_id=760, n_train=3)
    env = nnunet_env(root)
    env.pop("nnUNet_n_proc_DA", None)  # planning crashes with it
    out = run_cli([str(Path(__import__("sys").executable).parent / "nnunet-shape"), "simulate-slices", "-d", "760",
                   "--slices", "1", "--seed", "0"], env)
    assert "dataset id 761" in out.stdout
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "761", "-c", "3d_fullres", "-np", "1",
             "--verify_dataset_integrity"], env, log=root / "plan.log")
    preprocessed = root / "nnUNet_preprocessed" / "Dataset761_TinySlices1Seed0"
    assert json.loads((preprocessed / "dataset.json").read_text())["labels"]["ignore"] == 3
    assert len(list((preprocessed / "nnUNetPlans_3d_fullres").glob("*.pkl"))) == 3
