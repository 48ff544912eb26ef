"""Specification of the real-anatomy dataset (nnunet_shape/demo/brains.py): nilearn's MNI ICBM152
template deformed into cases, with gray/white matter (and hemisphere) labels."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_shape import cli
from nnunet_shape.demo import brains
from nnunet_shape.demo.brains import (
    HEMISPHERE_LABELS,
    TISSUE_LABELS,
    UNDEFORMED,
    BrainSubject,
    generate_case,
    render_brain,
    sample_subject,
    tissue_labels,
    write_brain_dataset,
)
from nnunet_shape.demo.phantoms import case_seed
from nnunet_shape.errors import UserError

if importlib.util.find_spec("nilearn") is None:  # located, not imported (its top level is heavy)
    pytest.skip("the brain dataset needs nilearn (pip install nilearn)", allow_module_level=True)

SPACING = 8.0  # mm: 25 x 30 x 24 voxels, fast
GM, WM = 1, 2
LEFT, RIGHT = (1, 2), (3, 4)


def _maps() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """The template's T1 image and its probability maps, read here independently of the module."""
    files = brains.template_files()
    t1 = sitk.ReadImage(str(files["t1"]))
    gm = sitk.GetArrayFromImage(sitk.ReadImage(str(files["gm"]))).astype(np.float64)
    wm = sitk.GetArrayFromImage(sitk.ReadImage(str(files["wm"]))).astype(np.float64)
    return t1, gm / gm.max(), wm / wm.max()


def _world_points(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """(N, 3) world LPS points of the voxels of ``mask`` (array order z, y, x)."""
    z, y, x = np.nonzero(mask)
    index = np.stack([x, y, z], axis=1).astype(np.float64)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ direction.T


def _world_x(image: sitk.Image) -> np.ndarray:
    """World LPS x (mm) of every voxel, broadcastable to the (z, y, x) array."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    size, spacing = image.GetSize(), image.GetSpacing()
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in size], indexing="ij", sparse=True)
    world = image.GetOrigin()[0] + sum(direction[0, k] * spacing[k] * i for k, i in enumerate((x, y, z)))
    return np.transpose(world, (2, 1, 0))


def _arrays(folder: Path, sub: str, case: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / sub / case)))


# ------------------------------------------------------------------------------------------
# the template: files, label rule, volumes, hemispheres
# ------------------------------------------------------------------------------------------


def test_template_files_are_found_without_importing_nilearn() -> None:
    code = ("import sys; from nnunet_shape.demo import brains; files = brains.template_files(); "
            "print(sorted(files), all(p.is_file() for p in files.values()), 'nilearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["['gm',", "'t1',", "'wm']", "True", "False"]


def test_missing_nilearn_is_a_user_error_with_the_install_command(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "nilearn", None)  # find_spec answers None: not installed
    with pytest.raises(UserError, match=r"'nilearn'.*not installed: pip install nilearn"):
        brains.template_files()
    with pytest.raises(UserError, match="nilearn"):
        write_brain_dataset(tmp_path / "raw", n_train=1, n_test=0, seed=0, dataset_id=990)
    assert not (tmp_path / "raw").exists()  # refused before writing anything


def test_missing_template_file_is_a_user_error_naming_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(brains, "_nilearn_data_folder", lambda: tmp_path)
    with pytest.raises(UserError, match=r"mni_icbm152_t1_tal_nlin_sym_09a_converted\.nii\.gz \(t1\) is missing.*"
                                         r"pip install nilearn"):
        brains.template_files()


@pytest.mark.parametrize("p_gm, p_wm, expected", [
    (0.0, 0.0, 0),
    (0.5, 0.0, GM),    # the threshold itself counts
    (0.49, 0.3, 0),    # below 0.5 everywhere: background (CSF / partial volume)
    (0.45, 0.45, 0),
    (0.3, 0.5, WM),
    (0.2, 0.8, WM),
    (0.6, 0.4, GM),
    (0.5, 0.5, GM),    # a tie goes to gray matter
    (1.0, 0.0, GM),
])
def test_tissue_rule(p_gm: float, p_wm: float, expected: int) -> None:
    assert tissue_labels(np.array([p_gm]), np.array([p_wm])).tolist() == [expected]


def test_undeformed_template_at_1mm_is_the_rule_applied_to_the_maps() -> None:
    t1, p_gm, p_wm = _maps()
    image, labels = render_brain(UNDEFORMED, spacing_mm=1.0)
    for item in (image, labels):  # the template's own grid
        assert item.GetSize() == t1.GetSize()
        assert item.GetOrigin() == pytest.approx(t1.GetOrigin(), abs=1e-6)
        assert item.GetDirection() == pytest.approx(t1.GetDirection())
    array = sitk.GetArrayFromImage(labels)
    expected = np.where((p_gm >= 0.5) & (p_gm >= p_wm), GM, np.where((p_wm >= 0.5) & (p_wm > p_gm), WM, 0))
    assert np.array_equal(array, expected)
    t1_array = sitk.GetArrayFromImage(t1).astype(np.float64)
    assert np.allclose(sitk.GetArrayFromImage(image), t1_array / t1_array.max(), atol=1e-5)
    # thresholding keeps the tissue volumes close to the probability sums (measured: GM +7.1 %,
    # WM -5.7 %: GM's side of the GM/WM boundary is the steeper one)
    assert np.count_nonzero(array == GM) == pytest.approx(p_gm.sum(), rel=0.08)
    assert np.count_nonzero(array == WM) == pytest.approx(p_wm.sum(), rel=0.08)
    assert np.count_nonzero(array > 0) == pytest.approx(p_gm.sum() + p_wm.sum(), rel=0.03)


def test_hemisphere_split_puts_left_classes_on_the_patients_left() -> None:
    """World check at 1 mm: left classes exactly at LPS x > 0 (RAS x < 0), right at x <= 0."""
    _, tissue = render_brain(UNDEFORMED, spacing_mm=1.0)
    image, labels = render_brain(UNDEFORMED, spacing_mm=1.0, hemispheres=True)
    tissue, array = sitk.GetArrayFromImage(tissue), sitk.GetArrayFromImage(labels)
    assert set(np.unique(array)) == set(HEMISPHERE_LABELS.values())
    # the split only renames tissue: left GM/WM 1/2, right GM/WM 3/4
    assert np.array_equal(np.where(array > 2, array - 2, array), tissue)
    x = _world_x(labels)
    assert np.all(x[np.isin(array, LEFT)] > 0) and np.all(x[np.isin(array, RIGHT)] <= 0)
    assert np.any(x[np.isin(array, RIGHT)] == 0)  # the plane x = 0 holds tissue, counted right
    # a symmetric template: the hemispheres' volumes differ by the midline plane only
    plane = (x == 0) & (tissue > 0)
    for left, right in ((1, 3), (2, 4)):
        assert np.count_nonzero(array == right) - np.count_nonzero(array == left) == np.count_nonzero(
            plane & (array == right))


# ------------------------------------------------------------------------------------------
# the random subject and its transform
# ------------------------------------------------------------------------------------------


def test_subjects_are_drawn_within_the_documented_ranges() -> None:
    np.random.seed(11)
    state = np.random.get_state()[1].copy()
    subjects = [sample_subject(np.random.default_rng(s)) for s in range(60)]
    assert np.array_equal(np.random.get_state()[1], state)  # the global RNG is never used
    assert subjects[3] == sample_subject(np.random.default_rng(3))
    assert len({s.field_seed for s in subjects}) == 60
    for s in subjects:
        assert all(0.92 <= v <= 1.08 for v in s.scale)
        assert all(-6 <= v <= 6 for v in s.rotation_deg)
        assert all(-3 <= v <= 3 for v in s.translation_mm)
        assert 2 <= s.elastic_mm <= 4 and 0.05 <= s.bias_amplitude <= 0.2 and 0.01 <= s.noise_sigma <= 0.03
        assert BrainSubject.from_dict(json.loads(json.dumps(dataclasses.asdict(s)))) == s


def test_affine_is_the_documented_forward_map() -> None:
    """rotation 90 deg about z maps template point c + (10, 0, 0) to c + (0, 10, 0) (+ t); the
    pull-back answers the template point for the subject point."""
    centre = np.array([0.0, 18.0, 22.0])  # the template's field-of-view centre (LPS)
    subject = dataclasses.replace(UNDEFORMED, rotation_deg=(0.0, 0.0, 90.0), translation_mm=(1.0, 2.0, 3.0),
                                  scale=(2.0, 1.0, 1.0))
    pull_back = brains.subject_transform(subject, np.random.default_rng(0))
    # F(c + (5, 0, 0)) = c + R (10, 0, 0) + t = c + (0, 10, 0) + (1, 2, 3)
    assert pull_back.TransformPoint(tuple(centre + [1.0, 12.0, 3.0])) == pytest.approx(tuple(centre + [5, 0, 0]))


@pytest.mark.parametrize("amplitude", [1.0, 3.0])
def test_elastic_displacement_is_bounded_by_its_amplitude(amplitude: float) -> None:
    pull_back = brains.subject_transform(dataclasses.replace(UNDEFORMED, elastic_mm=amplitude),
                                         np.random.default_rng(4))
    points = np.random.default_rng(1).uniform([-90, -100, -60], [90, 120, 100], size=(400, 3))
    shift = np.array([pull_back.TransformPoint(tuple(p)) for p in points]) - points
    assert np.abs(shift).max() <= amplitude + 1e-9
    assert np.abs(shift).max() > 0.3 * amplitude  # it does deform


def test_translation_and_scale_move_and_grow_the_brain() -> None:
    spacing = 2.0
    _, reference = render_brain(UNDEFORMED, spacing)
    _, moved = render_brain(dataclasses.replace(UNDEFORMED, translation_mm=(6.0, -4.0, 0.0)), spacing)
    _, grown = render_brain(dataclasses.replace(UNDEFORMED, scale=(1.08, 1.0, 1.0)), spacing)
    centroid = {name: _world_points(image, sitk.GetArrayFromImage(image) > 0).mean(axis=0)
                for name, image in (("reference", reference), ("moved", moved))}
    assert centroid["moved"] - centroid["reference"] == pytest.approx([6.0, -4.0, 0.0], abs=0.3)
    tissue = [np.count_nonzero(sitk.GetArrayFromImage(image)) for image in (reference, grown)]
    assert tissue[1] / tissue[0] == pytest.approx(1.08, abs=0.01)


def _contrast(image: sitk.Image, labels: sitk.Image) -> float:
    """(mean T1 in WM - mean T1 in GM) / std of T1 in the brain."""
    a, l = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
    return float((a[l == WM].mean() - a[l == GM].mean()) / a[l > 0].std())


@pytest.mark.parametrize("seed", [5, 6])
def test_image_and_labels_share_one_deformation(seed: int) -> None:
    """Deformed labels still sit on the deformed image: the WM/GM contrast of the undeformed
    template is kept (labels warped by another elastic draw lose 8-15 % of it)."""
    spacing = 3.0
    subject = dataclasses.replace(sample_subject(np.random.default_rng(seed)), elastic_mm=4.0, bias_amplitude=0.0,
                                  noise_sigma=0.0)
    reference = _contrast(*render_brain(UNDEFORMED, spacing))
    image, labels = render_brain(subject, spacing)
    assert _contrast(image, labels) >= 0.95 * reference
    other_image, _ = render_brain(dataclasses.replace(subject, field_seed=subject.field_seed + 1), spacing)
    assert _contrast(other_image, labels) < 0.95 * reference  # the same bound fails a mismatch


def test_bias_field_and_noise_have_their_amplitudes() -> None:
    clean = sitk.GetArrayFromImage(render_brain(UNDEFORMED, SPACING)[0]).astype(np.float64)
    biased = sitk.GetArrayFromImage(render_brain(dataclasses.replace(UNDEFORMED, bias_amplitude=0.2), SPACING)[0])
    brain = clean > 0.05
    log_ratio = np.log(biased[brain] / clean[brain])
    assert np.abs(log_ratio).max() <= 0.2 + 1e-5
    assert log_ratio.max() - log_ratio.min() > 0.1  # smooth but not constant
    # the field itself: exp(b f) with max |f| = 1 on the grid, f quadratic (third differences vanish)
    log_field = np.log(brains._bias_field(np.random.default_rng(2), (9, 12, 10), 0.2).astype(np.float64))
    assert np.abs(log_field).max() == pytest.approx(0.2, rel=1e-5)
    for axis in range(3):
        assert np.abs(np.diff(log_field, n=3, axis=axis)).max() < 1e-5
    noisy = sitk.GetArrayFromImage(render_brain(dataclasses.replace(UNDEFORMED, noise_sigma=0.02, gain=100.0),
                                                SPACING)[0])
    assert np.std(noisy - 100.0 * clean) == pytest.approx(2.0, rel=0.05)


def test_cases_are_deterministic_and_differ() -> None:
    image_a, labels_a = generate_case(7, SPACING)
    image_b, labels_b = generate_case(7, SPACING)
    image_c, labels_c = generate_case(8, SPACING)
    assert np.array_equal(image_a, image_b) and np.array_equal(labels_a, labels_b)
    assert not np.array_equal(labels_a, labels_c) and not np.allclose(image_a, image_c)
    assert image_a.dtype == np.float32 and labels_a.dtype == np.uint8
    assert image_a.shape == labels_a.shape == (24, 30, 25)  # ceil((189, 233, 197) / 8)
    assert set(np.unique(labels_a)) == {0, GM, WM}


def test_array_axes_are_the_grids_anatomical_axes() -> None:
    """ARRAY_AXES (what the demo mirrors by) names the LPS axis each array axis (z, y, x) runs along
    in the written files, read from the grid's direction (SimpleITK index k is array axis 2 - k)."""
    direction = np.asarray(brains.output_grid(5.0).GetDirection()).reshape(3, 3)
    along = [("LR", "AP", "SI")[int(np.argmax(np.abs(direction[:, k])))] for k in range(3)]
    assert tuple(reversed(along)) == brains.ARRAY_AXES == ("SI", "AP", "LR")


@pytest.mark.parametrize("spacing, shape", [(5.0, (38, 47, 40)), (8.0, (24, 30, 25)), (1.0, (189, 233, 197))])
def test_output_grid_covers_the_template(spacing: float, shape: tuple[int, int, int]) -> None:
    grid = brains.output_grid(spacing)
    assert grid.GetSize()[::-1] == shape and grid.GetSpacing() == (spacing,) * 3
    # centred on the template's field-of-view centre
    centre = grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()])
    assert centre == pytest.approx((0.0, 18.0, 22.0))


# ------------------------------------------------------------------------------------------
# the nnU-Net raw dataset and the command
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    raw = tmp_path_factory.mktemp("raw")
    return {
        "three": write_brain_dataset(raw / "a", n_train=3, n_test=1, seed=4, dataset_id=990, spacing_mm=SPACING),
        "five": write_brain_dataset(raw / "b", n_train=5, n_test=1, seed=4, dataset_id=990, spacing_mm=SPACING,
                                    num_processes=2),
        "hemispheres": write_brain_dataset(raw / "c", n_train=2, n_test=0, seed=4, dataset_id=991,
                                           name="BrainHemispheres", spacing_mm=SPACING, hemispheres=True),
    }


def test_dataset_is_valid_for_nnunet(datasets: dict[str, Path]) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = datasets["three"]
    assert folder.name == "Dataset990_BrainMNI"
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem
    content = json.loads((folder / "dataset.json").read_text())
    assert content["channel_names"] == {"0": "T1"} and content["labels"] == TISSUE_LABELS
    assert content["numTraining"] == 3 and content["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"brain_00{i}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["brain_003_0000.nii.gz"]
    for case in ("brain_000", "brain_001", "brain_002"):
        assert set(np.unique(_arrays(folder, "labelsTr", f"{case}.nii.gz"))) == {0, GM, WM}
    images = [_arrays(folder, "imagesTr", f"brain_00{i}_0000.nii.gz") for i in range(3)]
    assert not np.allclose(images[0], images[1]) and not np.allclose(images[1], images[2])

    parameters = json.loads((folder / "brain_parameters.json").read_text())
    assert parameters["shape_zyx"] == [24, 30, 25] and parameters["hemispheres"] is False
    assert parameters["cases"]["brain_003"]["split"] == "test"
    assert parameters["cases"]["brain_003"]["seed"] == case_seed(4, 0, "test")
    stored = BrainSubject.from_dict(parameters["cases"]["brain_001"]["subject"])
    assert stored == sample_subject(np.random.default_rng(case_seed(4, 1, "train")))
    # the file holds exactly what the generator makes from the stored subject
    image, labels = render_brain(stored, SPACING)
    assert np.array_equal(_arrays(folder, "labelsTr", "brain_001.nii.gz"), sitk.GetArrayFromImage(labels))
    assert np.array_equal(images[1], sitk.GetArrayFromImage(image))


def test_a_case_does_not_change_with_the_number_of_cases(datasets: dict[str, Path]) -> None:
    """Case i is the same with n_train = 3 and 5 (the latter written by two processes); so is the
    test case, numbered after the training cases."""
    three, five = datasets["three"], datasets["five"]
    for i in range(3):
        for sub, name in (("imagesTr", f"brain_00{i}_0000.nii.gz"), ("labelsTr", f"brain_00{i}.nii.gz")):
            assert np.array_equal(_arrays(three, sub, name), _arrays(five, sub, name))
    assert np.array_equal(_arrays(three, "imagesTs", "brain_003_0000.nii.gz"),
                          _arrays(five, "imagesTs", "brain_005_0000.nii.gz"))
    assert not np.array_equal(_arrays(five, "labelsTr", "brain_003.nii.gz"), _arrays(five, "labelsTr",
                                                                                     "brain_004.nii.gz"))


def test_hemisphere_dataset_left_is_left_in_ras_coordinates(datasets: dict[str, Path]) -> None:
    """Read back with nibabel (RAS world): the patient's left classes lie at RAS x < 0."""
    import nibabel
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = datasets["hemispheres"]
    verify_dataset_integrity(str(folder), num_processes=1)
    assert json.loads((folder / "dataset.json").read_text())["labels"] == HEMISPHERE_LABELS
    for case in ("brain_000", "brain_001"):
        nifti = nibabel.load(str(folder / "labelsTr" / f"{case}.nii.gz"))
        array = np.asarray(nifti.dataobj)  # (i, j, k) = SimpleITK's (x, y, z)
        assert set(np.unique(array)) == set(HEMISPHERE_LABELS.values())
        ras_x = nibabel.affines.apply_affine(nifti.affine, np.argwhere(array > 0))[:, 0]
        values = array[array > 0]
        left, right = ras_x[np.isin(values, LEFT)], ras_x[np.isin(values, RIGHT)]
        # deformed (rotation <= 6 deg, translation <= 3 mm): the hemispheres stay on their sides
        assert left.mean() < -20 and right.mean() > 20
        # few voxels on the wrong side of the plane (the plane x = 0 itself is a voxel layer at 8 mm)
        assert np.mean(left > 0) < 0.05 and np.mean(right < 0) < 0.05


def test_cli_writes_the_dataset_and_reports_bad_input(tmp_path: Path, capsys) -> None:
    argv = ["brains", "-o", str(tmp_path), "-d", "992", "--n-train", "1", "--n-test", "1", "--seed", "2",
            "--spacing", "10", "--hemispheres"]
    assert cli.main(argv) == 0
    folder = tmp_path / "Dataset992_BrainMNI"
    assert capsys.readouterr().out.strip() == str(folder)
    labels = _arrays(folder, "labelsTr", "brain_000.nii.gz")
    assert labels.shape == (19, 24, 20) and set(np.unique(labels)) <= set(HEMISPHERE_LABELS.values())
    assert math.isclose(json.loads((folder / "brain_parameters.json").read_text())["spacing_mm"], 10.0)

    assert cli.main(["brains", "-o", str(tmp_path), "-d", "993", "--n-train", "0", "--n-test", "0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nnunet-shape brains: error:" in error and "n_train=0" in error
    assert cli.main(["brains", "-o", str(tmp_path), "-d", "993", "--n-train", "1", "--n-test", "0",
                     "--spacing", "0.5"]) == 2
    assert "spacing_mm must be 1..20 mm" in capsys.readouterr().err
    assert not (tmp_path / "Dataset993_BrainMNI").exists()
