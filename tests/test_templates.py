"""Sphere templates deformed to surface points (paper 003) and the simulate-points / fit-templates commands."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage
from test_point_files import ellipsoid

from nnunet_shape.core.surface_sampling import boundary_mask, sample_surface_points
from nnunet_shape.point_files.templates import (
    MIN_RADIUS_VOXELS,
    combine_templates,
    dice,
    fit_template,
    icosphere,
    is_closed_mesh,
    mean_surface_distance,
    rasterise_mesh,
)


def _fit_and_rasterise(mask, spacing, n, seed=0):
    points = sample_surface_points(mask, spacing, n, seed)
    fit = fit_template(points[:, ::-1], MIN_RADIUS_VOXELS * max(spacing))
    return fit, rasterise_mesh(fit.vertices, fit.faces, mask.shape, spacing)


def test_icosphere_is_a_closed_unit_sphere():
    vertices, faces = icosphere(3)
    assert vertices.shape == (642, 3) and faces.shape == (1280, 3)
    assert np.allclose(np.linalg.norm(vertices, axis=1), 1.0)
    assert is_closed_mesh(vertices, faces)
    assert not is_closed_mesh(vertices, faces[:-1])


def test_rasterisation_honours_spacing_and_axis_order():
    """A ball of radius 6 mm on a (z, y, x) grid of spacing (2, 1, 0.5): the analytic mask, nearly."""
    shape, spacing = (12, 20, 40), (2.0, 1.0, 0.5)
    vertices, faces = icosphere(4)
    centre_xyz = np.array([9.5, 9.5, 11.0])  # (x, y, z) mm
    mask = rasterise_mesh(6.0 * vertices + centre_xyz, faces, shape, spacing)
    truth = ellipsoid(shape, spacing, (6.0, 6.0, 6.0), centre=centre_xyz[::-1])
    assert dice(mask, truth) > 0.97
    # stretched along x (VTK's first axis) = the last array axis, not the middle one
    stretched = rasterise_mesh(vertices * [8.0, 3.0, 3.0] + centre_xyz, faces, shape, spacing)
    assert dice(stretched, ellipsoid(shape, spacing, (3.0, 3.0, 8.0), centre=centre_xyz[::-1])) > 0.95
    assert dice(stretched, ellipsoid(shape, spacing, (3.0, 8.0, 3.0), centre=centre_xyz[::-1])) < 0.6


@pytest.mark.parametrize("shape, spacing, radii_fraction", [
    ((40, 40, 40), (1.0, 1.0, 1.0), (0.3, 0.22, 0.4)),
    ((14, 48, 52), (3.0, 0.8, 0.7), (0.35, 0.25, 0.4)),   # anisotropic: 3 mm slices
])
def test_sphere_fitted_to_50_points_recovers_the_ellipsoid(shape, spacing, radii_fraction):
    extent = np.array(shape) * np.array(spacing)
    truth = ellipsoid(shape, spacing, np.array(radii_fraction) * extent)
    fit, mask = _fit_and_rasterise(truth, spacing, 50)
    assert dice(mask, truth) >= 0.9
    assert mean_surface_distance(mask, truth, spacing) < max(spacing)
    assert fit.residual_mm < 0.5 * max(spacing)  # the surface passes (nearly) through the points
    assert is_closed_mesh(fit.vertices, fit.faces)


def test_more_points_give_a_better_template():
    shape, spacing = (40, 40, 40), (1.0, 1.0, 1.0)
    truth = ellipsoid(shape, spacing, (8.0, 14.0, 11.0))
    scores = [dice(_fit_and_rasterise(truth, spacing, n)[1], truth) for n in (5, 25, 125)]
    assert scores[0] < scores[2] and scores[1] < scores[2]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_few_points_still_give_a_valid_closed_template(n):
    shape, spacing = (20, 40, 40), (2.0, 1.0, 1.0)
    truth = ellipsoid(shape, spacing, (10.0, 12.0, 9.0))
    fit, mask = _fit_and_rasterise(truth, spacing, n, seed=1)
    assert is_closed_mesh(fit.vertices, fit.faces)
    assert mask.any()
    _, components = ndimage.label(mask)
    assert components == 1
    assert np.array_equal(ndimage.binary_fill_holes(mask), mask)  # a solid, no cavities
    assert fit.residual_mm < max(spacing)
    if n >= 2:  # one point says where, not how big: a small ball on the point (MIN_RADIUS_VOXELS)
        assert dice(mask, truth) > 0.5  # rough but in the right place


def test_combine_templates_lets_the_smaller_one_win():
    big = np.zeros((1, 1, 6), bool)
    big[..., 0:5] = True
    small = np.zeros((1, 1, 6), bool)
    small[..., 3:6] = True
    assert combine_templates({1: big, 2: small}, (1, 1, 6))[0, 0].tolist() == [1, 1, 1, 2, 2, 2]
    assert combine_templates({2: big, 1: small}, (1, 1, 6))[0, 0].tolist() == [2, 2, 2, 1, 1, 1]


def test_dice_and_mean_surface_distance_by_hand():
    a = np.zeros((1, 1, 8), bool)
    b = np.zeros((1, 1, 8), bool)
    a[0, 0, 1] = True
    b[0, 0, 4] = True
    assert dice(a, b) == 0.0
    assert mean_surface_distance(a, b, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    a[0, 0, 4] = True  # boundary {1, 4} vs {4}: distances 6, 0 and 0 -> mean 2
    assert dice(a, b) == pytest.approx(2 / 3)
    assert mean_surface_distance(a, b, (1.0, 1.0, 2.0)) == pytest.approx(2.0)
    assert np.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))
    assert np.isnan(mean_surface_distance(a, np.zeros_like(a), (1.0, 1.0, 1.0)))


# ---------------------------------------------------------------------------------------
# the nnU-Net commands, end to end on a tiny raw dataset
# ---------------------------------------------------------------------------------------

SHAPE, SPACING = (14, 36, 40), (3.0, 1.0, 0.9)  # (z, y, x)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated 90 degrees in plane
ORIGIN = (-20.0, 35.5, 100.0)


def _write_dataset(raw, dataset_id=812):
    import SimpleITK as sitk

    folder = raw / f"Dataset{dataset_id}_WeakPoints"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (ball_centre, pill_centre) in enumerate([((20.0, 18.0, 12.0), (20.0, 15.0, 26.0)),
                                                     ((18.0, 20.0, 14.0), (22.0, 17.0, 27.0))]):
        labels = np.zeros(SHAPE, np.uint8)
        labels[ellipsoid(SHAPE, SPACING, (12.0, 9.0, 8.0), centre=ball_centre)] = 1
        labels[ellipsoid(SHAPE, SPACING, (9.0, 6.0, 5.0), centre=pill_centre)] = 2
        image = labels * 100.0 + rng.normal(0, 10, SHAPE)
        for array, path in ((image.astype(np.float32), folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz"),
                            (labels, folder / "labelsTr" / f"case_{i:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(SPACING[::-1])
            itk.SetOrigin(ORIGIN)
            itk.SetDirection(DIRECTION)
            sitk.WriteImage(itk, str(path))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "ball": 1, "pill": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return folder


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_simulate_points_and_fit_templates_end_to_end(tmp_path, monkeypatch, capsys):
    import SimpleITK as sitk

    from nnunet_shape.cli import main
    from nnunet_shape.point_files.format import load_case_points

    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    folder = _write_dataset(tmp_path)
    labels_before = _digest(folder / "labelsTr")

    assert main(["simulate-points", "-d", "812", "-n", "40", "--seed", "0"]) == 0
    first = (folder / "pointsTr" / "case_000.json").read_bytes()
    case = load_case_points(folder / "pointsTr" / "case_000.json")
    assert case.source["kind"] == "simulated" and case.num_points == 80
    # the points are world LPS: mapped back with the image geometry they land on the label surface
    reference = sitk.ReadImage(str(folder / "labelsTr" / "case_000.nii.gz"))
    for name, label in (("ball", 1), ("pill", 2)):
        index = np.array([reference.TransformPhysicalPointToContinuousIndex(p.tolist())
                          for p in case.classes[name].points_world_mm])[:, ::-1]  # (z, y, x)
        edge = np.argwhere(boundary_mask(sitk.GetArrayFromImage(reference) == label))
        # on the voxelised surface: within half a voxel, per axis, of a boundary voxel of the class
        assert np.all(np.min(np.max(np.abs(index[:, None] - edge[None]), axis=2), axis=1) <= 0.5 + 1e-6)
    assert main(["simulate-points", "-d", "812", "-n", "40", "--seed", "0"]) == 0
    assert (folder / "pointsTr" / "case_000.json").read_bytes() == first  # deterministic per seed

    capsys.readouterr()
    assert main(["fit-templates", "-d", "812"]) == 0
    printed = capsys.readouterr().out
    assert "case_000" in printed and "ball" in printed and "2 templates" in printed
    template = sitk.ReadImage(str(folder / "templatesTr" / "case_000.nii.gz"))
    assert template.GetSpacing() == pytest.approx(reference.GetSpacing())
    assert template.GetOrigin() == pytest.approx(reference.GetOrigin())
    assert template.GetDirection() == pytest.approx(reference.GetDirection())
    quality = json.loads((folder / "templatesTr" / "template_quality.json").read_text())
    for name in ("ball", "pill"):
        entry = quality["cases"]["case_001"]["classes"][name]
        assert entry["points"] == 40 and entry["dice"] >= 0.8, entry
        assert 0 <= entry["mean_surface_distance_mm"] < 3.0
    measured = dice(sitk.GetArrayFromImage(template) == 1,
                    sitk.GetArrayFromImage(reference) == 1)
    assert measured == pytest.approx(quality["cases"]["case_000"]["classes"]["ball"]["dice"])
    assert _digest(folder / "labelsTr") == labels_before  # the real labels stay for evaluation


def test_fit_templates_refuses_points_outside_the_image(tmp_path, monkeypatch, capsys):
    """A Slicer RAS file that does not say so: the x, y signs are wrong and the points leave the image."""
    from nnunet_shape.cli import main
    from nnunet_shape.point_files.format import load_case_points
    from nnunet_shape.point_files.slicer import write_slicer_markups

    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    folder = _write_dataset(tmp_path)
    assert main(["simulate-points", "-d", "812", "-n", "10", "-o", str(tmp_path / "simulated")]) == 0
    points = load_case_points(tmp_path / "simulated" / "case_000.json").classes["ball"].points_world_mm
    (folder / "pointsTr" / "case_000").mkdir(parents=True)
    markups = folder / "pointsTr" / "case_000" / "ball.mrk.json"
    write_slicer_markups(markups, points * [-1.0, -1.0, 1.0], "ball", "LPS")  # RAS values labelled LPS
    capsys.readouterr()
    assert main(["fit-templates", "-d", "812"]) == 2
    error = capsys.readouterr().err
    assert f"{markups}: case 'case_000': class 'ball': point 0: " in error and "outside the image" in error
    # declared as it is, the same file works
    write_slicer_markups(markups, points, "ball", "RAS")
    raw = json.loads(markups.read_text())
    assert raw["markups"][0]["coordinateSystem"] == "RAS"
    assert main(["fit-templates", "-d", "812"]) == 0
    assert (folder / "templatesTr" / "case_000.nii.gz").is_file()
    # simulate-points does not overwrite hand-made annotations
    assert main(["simulate-points", "-d", "812", "-n", "10"]) == 2
    assert "holds 3D Slicer markups" in capsys.readouterr().err
