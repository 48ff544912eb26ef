"""Specification of the no-image baselines (nnunet_shape/core/baselines.py, nnunet_shape/nnunet/baselines.py).

Hand-made tiny maps with values worked out by hand (resampling indices, votes, ties, moments,
ellipsoid extents), an ellipsoid recovered from its own rasterisation, and an end-to-end run on a
tiny nnUNet_raw layout read back with SimpleITK.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from e2e_helpers import write_tiny_dataset

from nnunet_shape.cli import main as cli_main
from nnunet_shape.core.baselines import (
    atlas_majority,
    class_moments,
    descriptor_ellipsoids,
    fractional_indices,
    mean_class_moments,
)
from nnunet_shape.errors import UserError
from nnunet_shape.nnunet.baselines import BASELINES, case_id_of_target, write_baseline_predictions

# ------------------------------------------------------------------------------------------
# atlas
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, target, expected", [
    (3, 6, [0, 0, 1, 1, 2, 2]),  # (j + 0.5) / 6 * 3 = 0.25, 0.75, 1.25, ...
    (6, 3, [1, 3, 5]),  # 1/6 * 6 = 1, 0.5 * 6 = 3, 5/6 * 6 = 5
    (5, 2, [1, 3]),  # 1.25, 3.75
    (4, 4, [0, 1, 2, 3]),
    (1, 3, [0, 0, 0]),
    (3, 1, [1]),
])
def test_fractional_indices(source, target, expected) -> None:
    assert fractional_indices(source, target).tolist() == expected


def test_atlas_majority_votes_and_ties_go_to_the_smallest_label() -> None:
    a = np.array([[0, 1], [1, 1]])
    b = np.array([[0, 0], [2, 1]])
    c = np.array([[2, 0], [2, 1]])
    # votes: (0,0) 0,0,2 -> 0; (0,1) 1,0,0 -> 0; (1,0) 1,2,2 -> 2; (1,1) 1,1,1 -> 1
    assert atlas_majority([a, b, c], (2, 2), [0, 1, 2]).tolist() == [[0, 0], [2, 1]]
    # two maps: (0,1) 1 vs 0 -> 0 and (1,0) 1 vs 2 -> 1 are ties
    assert atlas_majority([a, b], (2, 2), [0, 1, 2]).tolist() == [[0, 0], [1, 1]]
    # the label order given does not matter; a generator is fine
    assert atlas_majority((m for m in [a, b]), (2, 2), [2, 1, 0]).tolist() == [[0, 0], [1, 1]]
    assert atlas_majority([a], (2, 2), [0, 1, 2]).dtype == np.uint8


def test_atlas_majority_on_a_target_of_another_shape() -> None:
    m1 = np.array([[1, 0], [0, 2]])  # (2, 2) -> rows [0, 0, 1, 1], columns [0, 1]
    m2 = np.array([[2, 1, 2, 0],  # (4, 4) -> rows [0, 1, 2, 3], columns [1, 3] (columns 0, 2 never read)
                   [2, 0, 2, 0],
                   [2, 0, 2, 2],
                   [2, 0, 2, 2]])
    m3 = np.array([[1]])  # (1, 1) -> 1 everywhere
    # resampled: m1 [[1,0],[1,0],[0,2],[0,2]], m2 [[1,0],[0,0],[0,2],[0,2]], m3 all 1
    expected = [[1, 0], [1, 0], [0, 2], [0, 2]]
    assert atlas_majority([m1, m2, m3], (4, 2), [0, 1, 2]).tolist() == expected
    assert atlas_majority([np.array([0, 1, 2])], (6,), [0, 1, 2]).tolist() == [0, 0, 1, 1, 2, 2]


def test_atlas_ignore_label_does_not_vote_and_bad_maps_are_named() -> None:
    # (0,0): only map 2 votes (0); (0,1): only map 1 votes (1); (0,2): nobody votes -> smallest label 0
    maps = [np.array([[4, 1, 4]]), np.array([[0, 4, 4]])]
    assert atlas_majority(maps, (1, 3), [0, 1], ignore_label=4).tolist() == [[0, 1, 0]]
    with pytest.raises(UserError, match=r"training label map 1 holds label\(s\) \[4\], expected one of \[0, 1\]"):
        atlas_majority([np.array([[0, 1, 1]]), maps[1]], (1, 3), [0, 1])
    with pytest.raises(UserError, match="training label map 0 has 1 axes"):
        atlas_majority([np.zeros(3)], (2, 2), [0, 1])
    with pytest.raises(UserError, match="no training label map"):
        atlas_majority([], (2, 2), [0, 1])


# ------------------------------------------------------------------------------------------
# moments
# ------------------------------------------------------------------------------------------


def test_class_moments_by_hand() -> None:
    label_map = np.zeros((4, 6), dtype=np.uint8)
    label_map[1:3, 0:2] = 1  # centre (1.5, 0.5) voxels
    label_map[3, 5] = 2  # one voxel in the corner
    result = class_moments(label_map, (2.0, 3.0), [1, 2, 3])
    assert result.present.tolist() == [True, True, False]
    np.testing.assert_allclose(result.centroid_fraction[0], [(1.5 + 0.5) / 4, (0.5 + 0.5) / 6])
    np.testing.assert_allclose(result.centroid_fraction[1], [3.5 / 4, 5.5 / 6])
    # voxel-centre variances 0.25 voxel^2 -> 0.25 * 4 and 0.25 * 9 mm^2
    np.testing.assert_allclose(result.covariance_mm2[0], [[1.0, 0.0], [0.0, 2.25]], atol=1e-12)
    np.testing.assert_allclose(result.covariance_mm2[1], np.zeros((2, 2)), atol=1e-12)
    assert np.isnan(result.centroid_fraction[2]).all() and np.isnan(result.covariance_mm2[2]).all()


def test_mean_class_moments_over_the_maps_that_hold_the_class() -> None:
    first = np.zeros((4, 4), dtype=np.uint8)
    first[0, 0] = 1
    first[2, 2] = 2
    second = np.zeros((8, 8), dtype=np.uint8)
    second[6:8, 6:8] = 1  # centre (6.5, 6.5) of 8: fraction 7 / 8; class 2 absent
    mean = mean_class_moments([class_moments(m, (1.0, 1.0), [1, 2, 3]) for m in (first, second)])
    assert mean.count.tolist() == [2, 1, 0] and mean.present.tolist() == [True, True, False]
    np.testing.assert_allclose(mean.centroid_fraction[0], [(0.125 + 0.875) / 2] * 2)
    np.testing.assert_allclose(mean.centroid_fraction[1], [2.5 / 4] * 2)  # not pulled towards the absent map
    # voxel-centre variance: 0 in the first map, 0.25 in the second
    np.testing.assert_allclose(mean.covariance_mm2[0], np.diag([0.125, 0.125]), atol=1e-12)
    assert np.isnan(mean.centroid_fraction[2]).all()


# ------------------------------------------------------------------------------------------
# ellipsoids
# ------------------------------------------------------------------------------------------


def _rotation(angle_z: float, angle_x: float) -> np.ndarray:
    cz, sz, cx, sx = math.cos(angle_z), math.sin(angle_z), math.cos(angle_x), math.sin(angle_x)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


def _true_ellipsoid(shape, spacing, centre_mm, rotation, semi_axes) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    offsets = np.stack([g - c for g, c in zip(grids, centre_mm)], axis=-1)
    local = offsets @ rotation  # coordinates along the columns of ``rotation``
    return (local ** 2 / np.asarray(semi_axes) ** 2).sum(-1) <= 1.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_ellipsoid_is_recovered_from_its_rasterisation_on_an_anisotropic_grid() -> None:
    shape, spacing = (24, 40, 30), (2.0, 1.0, 1.5)
    rotation = _rotation(0.5, 0.3)
    centre, semi_axes = np.array([23.0, 19.5, 21.0]), (14.0, 9.0, 6.0)
    truth = _true_ellipsoid(shape, spacing, centre, rotation, semi_axes)
    label_map = truth.astype(np.uint8) * 3
    moments = class_moments(label_map, spacing, [3])
    recovered = descriptor_ellipsoids(moments.centroid_fraction, moments.covariance_mm2, shape, spacing, [3])
    assert set(np.unique(recovered)) == {0, 3}
    assert _dice(recovered == 3, truth) >= 0.95
    # the semi-axes: sqrt(5 lambda) of the covariance
    lengths = np.sqrt(5 * np.linalg.eigvalsh(moments.covariance_mm2[0]))
    np.testing.assert_allclose(sorted(lengths), sorted(semi_axes), rtol=0.05)

    # the same field of view on a finer grid (half the spacing, twice the voxels): placed by fraction
    fine_shape, fine_spacing = tuple(2 * n for n in shape), tuple(s / 2 for s in spacing)
    fine_centre = centre + 0.5 * np.asarray(spacing) - 0.5 * np.asarray(fine_spacing)  # same physical point
    fine_truth = _true_ellipsoid(fine_shape, fine_spacing, fine_centre, rotation, semi_axes)
    fine = descriptor_ellipsoids(moments.centroid_fraction, moments.covariance_mm2, fine_shape,
                                 fine_spacing, [3])
    assert _dice(fine == 3, fine_truth) >= 0.95


def _row(values: dict[int, tuple[float, float]], n: int = 11) -> list[int]:
    """Ellipses on a (1, n) grid of spacing 1: label -> (centre index, semi-axis) along axis 1."""
    labels = sorted(values)
    fraction = np.array([[0.5, (values[k][0] + 0.5) / n] for k in labels])
    covariance = np.array([np.diag([0.2, values[k][1] ** 2 / 5]) for k in labels])  # semi-axes 1 and a
    return descriptor_ellipsoids(fraction, covariance, (1, n), (1.0, 1.0), labels)[0].tolist()


def test_overlaps_go_to_the_smaller_ellipsoid() -> None:
    # a big class 1 (indices 1..9) around a small class 2 (4..6): the small one survives
    assert _row({1: (5, 4.5), 2: (5, 1.5)}) == [0, 1, 1, 1, 2, 2, 2, 1, 1, 1, 0]
    # the same with the labels swapped: the rule is volume, not label order
    assert _row({2: (5, 4.5), 1: (5, 1.5)}) == [0, 2, 2, 2, 1, 1, 1, 2, 2, 2, 0]
    # equal volumes (2..6 and 4..8): the smaller label id wins the overlap
    assert _row({1: (4, 2.0), 2: (6, 2.0)}) == [0, 0, 1, 1, 1, 1, 1, 2, 2, 0, 0]
    assert _row({2: (4, 2.0), 1: (6, 2.0)}) == [0, 0, 2, 2, 1, 1, 1, 1, 1, 0, 0]


def test_absent_classes_get_nothing_and_thin_classes_survive() -> None:
    fraction = np.array([[0.5, 0.5], [np.nan, np.nan]])
    covariance = np.array([np.diag([0.2, 0.2]), np.full((2, 2), np.nan)])
    out = descriptor_ellipsoids(fraction, covariance, (3, 3), (1.0, 1.0), [1, 2])
    assert out.tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # semi-axes 1 voxel: the diagonal is outside
    # a plate one voxel thick: zero variance across it, but never thinner than one voxel: it survives
    plate = np.zeros((5, 7, 7), dtype=np.uint8)
    plate[2, 1:6, 1:6] = 1
    moments = class_moments(plate, (3.0, 1.0, 1.0), [1])
    assert moments.covariance_mm2[0][0, 0] == 0.0
    out = descriptor_ellipsoids(moments.centroid_fraction, moments.covariance_mm2, plate.shape,
                                (3.0, 1.0, 1.0), [1])
    assert out[2].sum() > 0 and out[[0, 1, 3, 4]].sum() == 0 and _dice(out == 1, plate == 1) > 0.7
    # on 4 slices the centre falls between slices 1 and 2 (1.5 mm from each): the semi-axis across the plate
    # is one voxel's, sqrt(5 * 3^2 / 12) = 1.94 mm, so both slices hold the same disc
    out = descriptor_ellipsoids(moments.centroid_fraction, moments.covariance_mm2, (4, 7, 7), (3.0, 1.0, 1.0), [1])
    assert out[0].sum() == out[3].sum() == 0 and out[1].sum() >= 9 and np.array_equal(out[1], out[2])


def test_ellipsoid_inputs_are_checked() -> None:
    with pytest.raises(UserError, match="include the background 0"):
        descriptor_ellipsoids(np.zeros((1, 2)), np.zeros((1, 2, 2)), (2, 2), (1.0, 1.0), [0])
    with pytest.raises(UserError, match=r"expected centroids \(2, 2\)"):
        descriptor_ellipsoids(np.zeros((1, 2)), np.zeros((1, 2, 2)), (2, 2), (1.0, 1.0), [1, 2])


# ------------------------------------------------------------------------------------------
# files: a tiny nnUNet_raw layout
# ------------------------------------------------------------------------------------------


def _extra_target(folder: Path) -> Path:
    """A test image of another shape, spacing, origin and direction than the training cases."""
    image = sitk.GetImageFromArray(np.zeros((9, 14, 13), dtype=np.float32))
    image.SetSpacing((0.8, 1.1, 1.7))
    image.SetOrigin((-4.0, 2.5, 11.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = folder / "imagesTs" / "odd_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baselines_raw")
    folder = write_tiny_dataset(root, dataset_id=977, name="Baselines", n_train=4, n_test=2, shape=(8, 14, 12))
    _extra_target(folder)
    return folder


def _same_geometry(a: Path, b: Path) -> bool:
    first, second = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    return first.GetSize() == second.GetSize() and all(
        np.allclose(getattr(first, name)(), getattr(second, name)(), rtol=0, atol=1e-6)
        for name in ("GetSpacing", "GetOrigin", "GetDirection"))


def test_written_baselines_have_the_targets_geometry_and_the_core_values(raw: Path, tmp_path: Path) -> None:
    training = sorted((raw / "labelsTr").glob("*.nii.gz"))
    targets = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    folders = write_baseline_predictions(raw / "dataset.json", training, targets, tmp_path / "out")
    assert folders == {b: tmp_path / "out" / b for b in BASELINES}
    arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in training]
    spacings = [sitk.ReadImage(str(p)).GetSpacing()[::-1] for p in training]
    mean = mean_class_moments([class_moments(a, s, [1, 2]) for a, s in zip(arrays, spacings)])
    for target in targets:
        case = target.name[: -len("_0000.nii.gz")]
        for baseline in BASELINES:
            written = folders[baseline] / f"{case}.nii.gz"
            assert _same_geometry(written, target), (baseline, case)
        shape = sitk.GetArrayFromImage(sitk.ReadImage(str(target))).shape
        spacing = sitk.ReadImage(str(target)).GetSpacing()[::-1]
        atlas = sitk.GetArrayFromImage(sitk.ReadImage(str(folders["atlas"] / f"{case}.nii.gz")))
        np.testing.assert_array_equal(atlas, atlas_majority(arrays, shape, [0, 1, 2]))
        ellipsoids = sitk.GetArrayFromImage(sitk.ReadImage(str(folders["descriptor_ellipsoids"] / f"{case}.nii.gz")))
        np.testing.assert_array_equal(ellipsoids, descriptor_ellipsoids(
            mean.centroid_fraction, mean.covariance_mm2, shape, spacing, [1, 2]))
        assert set(np.unique(ellipsoids)) == {0, 1, 2} and set(np.unique(atlas)) == {0, 1, 2}
    record = json.loads((tmp_path / "out" / "baselines.json").read_text())
    assert record["training_cases"] == [p.name[:-7] for p in training] and record["left_out_target_cases"] == []
    assert record["classes"]["1"]["name"] == "blob_a" and record["classes"]["2"]["training_maps_with_class"] == 4


def test_label_map_targets_and_left_out_training_cases(raw: Path, tmp_path: Path) -> None:
    training = sorted((raw / "labelsTr").glob("*.nii.gz"))
    # targets are label maps of two training cases: those cases are left out of the baselines
    folders = write_baseline_predictions(raw / "dataset.json", training, training[:2], tmp_path / "out",
                                         baselines=["atlas"], num_processes=2)
    assert set(folders) == {"atlas"} and not (tmp_path / "out" / "descriptor_ellipsoids").exists()
    record = json.loads((tmp_path / "out" / "baselines.json").read_text())
    assert record["left_out_target_cases"] == [p.name[:-7] for p in training[:2]]
    rest = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in training[2:]]
    for target in training[:2]:
        written = folders["atlas"] / target.name
        assert _same_geometry(written, target)
        shape = sitk.GetArrayFromImage(sitk.ReadImage(str(target))).shape
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written))),
                                      atlas_majority(rest, shape, [0, 1, 2]))


def test_two_dimensional_images(tmp_path: Path) -> None:
    dataset = {"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz", "channel_names": {"0": "x"}}
    train = np.zeros((6, 8), dtype=np.uint8)
    train[2:4, 2:6] = 1
    paths = []
    for name, array, spacing in (("tr", train, (0.5, 2.0)), ("ts_0000", np.zeros((12, 4), np.float32), (0.25, 4.0))):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        paths.append(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(image, str(paths[-1]))
    folders = write_baseline_predictions(dataset, [paths[0]], [paths[1]], tmp_path / "out")
    for baseline in BASELINES:
        written = sitk.ReadImage(str(folders[baseline] / "ts.nii.gz"))
        assert written.GetDimension() == 2 and written.GetSize() == (4, 12)
    # the same field of view on a grid 2 x finer along y and 2 x coarser along x: rows 4..7, columns 1..2
    expected = np.zeros((12, 4), dtype=np.uint8)
    expected[4:8, 1:3] = 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(folders["atlas"] / "ts.nii.gz"))),
                                  expected)
    # the ellipse keeps its size in mm. Along y the variance 1 mm^2 is below one target voxel's 16/12 mm^2:
    # semi-axis sqrt(5 * 16/12) = 2.58 mm, the two rows at 2 mm from the centre row 5.5 (column term <= 0.09).
    # Along x sqrt(5 * 0.3125) = 1.25 mm: all four columns (at most 0.375 mm from the centre)
    expected = np.zeros((12, 4), dtype=np.uint8)
    expected[5:7, :] = 1
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(folders["descriptor_ellipsoids"] / "ts.nii.gz"))), expected)


def test_bad_inputs_are_user_errors_naming_what_was_given(raw: Path, tmp_path: Path) -> None:
    dataset = json.loads((raw / "dataset.json").read_text())
    training = sorted((raw / "labelsTr").glob("*.nii.gz"))
    targets = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    with pytest.raises(UserError, match="placeholder labels"):
        write_baseline_predictions({**dataset, "nnunet_shape_placeholder_labels": True}, training, targets,
                                   tmp_path / "out")
    with pytest.raises(UserError, match="expected a non-empty subset"):
        write_baseline_predictions(dataset, training, targets, tmp_path / "out", baselines=["mean"])
    with pytest.raises(UserError, match="no training label map left"):
        write_baseline_predictions(dataset, training[:1], training[:1], tmp_path / "out")
    bad = tmp_path / "bad.nii.gz"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(training[0])))
    array[0, 0, 0] = 7
    sitk.WriteImage(sitk.GetImageFromArray(array), str(bad))
    with pytest.raises(UserError, match=r"bad.nii.gz \(case 'bad'\) holds label value\(s\) \[7\]"):
        write_baseline_predictions(dataset, [bad], targets, tmp_path / "out")
    with pytest.raises(UserError, match="two targets for case 'x'"):
        write_baseline_predictions(dataset, training, [tmp_path / "x_0000.nii.gz", tmp_path / "x.nii.gz"],
                                   tmp_path / "out")
    assert case_id_of_target("a/case_7_0000.nii.gz", ".nii.gz") == ("case_7", True)
    assert case_id_of_target("case_7.nii.gz", ".nii.gz") == ("case_7", False)


def test_cli_writes_the_baselines_of_imagests(raw: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("nnUNet_raw", str(raw.parent))
    assert cli_main(["baselines", "-d", "977", "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "baselines from 4 training label maps of Dataset977_Baselines" in printed
    for baseline in BASELINES:
        assert sorted(p.name for p in (tmp_path / "out" / baseline).iterdir()) == [
            "case_004.nii.gz", "case_005.nii.gz", "odd.nii.gz"]
    # a placeholder-labelled dataset is refused: one line, exit code 2
    flagged = raw.parent / "Dataset978_Flagged"
    flagged.mkdir()
    (flagged / "dataset.json").write_text(json.dumps({**json.loads((raw / "dataset.json").read_text()),
                                                      "nnunet_shape_placeholder_labels": True}))
    assert cli_main(["baselines", "-d", "978", "-o", str(tmp_path / "out2")]) == 2
    assert "placeholder labels" in capsys.readouterr().err
