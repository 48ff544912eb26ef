"""Specification of the synthetic knee phantoms (nnunet_shape/phantoms.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

from nnunet_shape.demo import phantoms
from nnunet_shape.demo.phantoms import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    LABELS,
    VOLUME_FRACTION_RANGES,
    case_seed,
    generate_case,
    render_knee,
    sample_anatomy,
    write_phantom_dataset,
)

TINY_SHAPE = (20, 32, 32)
TINY_SPACING = (1.4, 0.7, 0.7)
FEMUR, FEMORAL_CARTILAGE, TIBIA, TIBIAL_CARTILAGE = 1, 2, 3, 4


def _components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    components, count = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    return components, int(count)


def _every_component_touches(part: np.ndarray, body: np.ndarray) -> bool:
    """Each 26-connected component of ``part`` shares a voxel face with ``body``."""
    grown = binary_dilation(body)  # 6-neighbourhood: face adjacency
    components, count = _components(part)
    return count > 0 and all(grown[components == i].any() for i in range(1, count + 1))


# ------------------------------------------------------------------------------------------
# determinism and purity
# ------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays_and_different_seeds_differ() -> None:
    image_a, labels_a, spacing_a = generate_case(7, TINY_SHAPE, TINY_SPACING)
    image_b, labels_b, spacing_b = generate_case(7, TINY_SHAPE, TINY_SPACING)
    image_c, labels_c, _ = generate_case(8, TINY_SHAPE, TINY_SPACING)
    assert np.array_equal(image_a, image_b) and np.array_equal(labels_a, labels_b)
    assert spacing_a == spacing_b == TINY_SPACING
    assert not np.array_equal(labels_a, labels_c)
    assert not np.allclose(image_a, image_c)
    assert image_a.dtype == np.float32 and labels_a.dtype == np.uint8
    assert image_a.shape == labels_a.shape == TINY_SHAPE


def test_sampling_is_separate_from_rendering_and_leaves_global_rng_alone() -> None:
    np.random.seed(123)
    global_state = np.random.get_state()[1].copy()
    anatomy = sample_anatomy(np.random.default_rng(3))
    assert anatomy == sample_anatomy(np.random.default_rng(3))
    first = render_knee(anatomy, TINY_SHAPE, TINY_SPACING)
    second = render_knee(anatomy, TINY_SHAPE, TINY_SPACING)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert np.array_equal(np.random.get_state()[1], global_state)
    # the appearance seed drives noise and texture only: same labels, different image
    reseeded = dataclasses.replace(
        anatomy, appearance=dataclasses.replace(anatomy.appearance, field_seed=1 + anatomy.appearance.field_seed))
    image, labels = render_knee(reseeded, TINY_SHAPE, TINY_SPACING)
    assert np.array_equal(labels, first[1]) and not np.allclose(image, first[0])


def test_case_seeds_are_stable_and_split_specific() -> None:
    seeds = [case_seed(0, i) for i in range(4)]
    assert len(set(seeds)) == 4
    assert seeds == [case_seed(0, i, "train") for i in range(4)]
    assert case_seed(0, 0, "test") != case_seed(0, 0, "train")
    assert case_seed(1, 0) != case_seed(0, 0)
    with pytest.raises(ValueError, match="case_seed"):
        case_seed(0, 0, "validation")


@pytest.mark.parametrize(
    "shape, spacing",
    [((20, 32), (1.4, 0.7)), ((0, 32, 32), TINY_SPACING), (TINY_SHAPE, (1.4, 0.0, 0.7))],
)
def test_render_rejects_bad_grids(shape, spacing) -> None:
    anatomy = sample_anatomy(np.random.default_rng(0))
    with pytest.raises(ValueError, match="render_knee"):
        render_knee(anatomy, shape, spacing)


# ------------------------------------------------------------------------------------------
# anatomy
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_tiny_phantom_anatomy(seed: int) -> None:
    image, labels, spacing = generate_case(seed, TINY_SHAPE, TINY_SPACING)
    assert set(np.unique(labels)) == set(LABELS.values())

    fov_volume = float(np.prod(np.multiply(TINY_SHAPE, TINY_SPACING)))
    for label, (low, high) in VOLUME_FRACTION_RANGES.items():
        fraction = np.count_nonzero(labels == label) * float(np.prod(spacing)) / fov_volume
        assert low <= fraction <= high, (label, fraction)

    # tibial cartilage: exactly two compartments, for face and for corner connectivity,
    # one on each side of the medial-lateral (z) axis
    for connectivity in (6, 26):
        assert _components(labels == TIBIAL_CARTILAGE, connectivity)[1] == 2
    components, _ = _components(labels == TIBIAL_CARTILAGE)
    z_ranges = sorted((np.nonzero(components == i)[0].min(), np.nonzero(components == i)[0].max())
                      for i in (1, 2))
    assert z_ranges[0][1] < z_ranges[1][0], z_ranges

    # cartilage lies on its bone
    assert _every_component_touches(labels == FEMORAL_CARTILAGE, labels == FEMUR)
    assert _every_component_touches(labels == TIBIAL_CARTILAGE, labels == TIBIA)
    # femur above (smaller y = superior) the tibia
    assert np.nonzero(labels == FEMUR)[1].mean() < np.nonzero(labels == TIBIA)[1].mean()

    # DESS-like contrast: cartilage much brighter than bone marrow
    cartilage = image[(labels == FEMORAL_CARTILAGE) | (labels == TIBIAL_CARTILAGE)].mean()
    marrow = image[(labels == FEMUR) | (labels == TIBIA)].mean()
    assert cartilage > 1.3 * marrow


@pytest.mark.parametrize("seed", [0, 1])
def test_default_size_phantom_has_a_joint_gap(seed: int) -> None:
    _, labels, spacing = generate_case(seed)
    assert labels.shape == DEFAULT_SHAPE and spacing == DEFAULT_SPACING
    fov_volume = float(np.prod(np.multiply(DEFAULT_SHAPE, DEFAULT_SPACING)))
    for label, (low, high) in VOLUME_FRACTION_RANGES.items():
        fraction = np.count_nonzero(labels == label) * float(np.prod(spacing)) / fov_volume
        assert low <= fraction <= high, (label, fraction)
    assert _components(labels == TIBIAL_CARTILAGE)[1] == 2
    assert _components(labels == FEMORAL_CARTILAGE)[1] == 1  # condyles joined by the trochlea
    # at the default grid the 1-2 mm joint gap separates the two cartilages
    assert not (binary_dilation(labels == FEMORAL_CARTILAGE) & (labels == TIBIAL_CARTILAGE)).any()


def test_anatomy_scales_with_the_field_of_view() -> None:
    """The same anatomy on a grid with the same field of view (half the voxels per axis)
    occupies the same physical volume per class, up to discretisation."""
    anatomy = sample_anatomy(np.random.default_rng(11))
    coarse_spacing = tuple(2 * s for s in TINY_SPACING)
    _, fine = render_knee(anatomy, (40, 64, 64), TINY_SPACING)
    _, coarse = render_knee(anatomy, TINY_SHAPE, coarse_spacing)
    for label, tolerance in ((FEMUR, 0.05), (TIBIA, 0.05), (FEMORAL_CARTILAGE, 0.25)):
        v_fine = np.count_nonzero(fine == label) * np.prod(TINY_SPACING)
        v_coarse = np.count_nonzero(coarse == label) * np.prod(coarse_spacing)
        assert v_coarse == pytest.approx(v_fine, rel=tolerance), label
    assert phantoms.anatomy_scale((40, 64, 64), TINY_SPACING) == pytest.approx(1.0)
    assert phantoms.anatomy_scale(TINY_SHAPE, TINY_SPACING) == pytest.approx(0.5)


def test_partial_volume_only_changes_boundary_voxels() -> None:
    anatomy = sample_anatomy(np.random.default_rng(4))
    without_noise = dataclasses.replace(
        anatomy, appearance=dataclasses.replace(anatomy.appearance, noise_sigma=0.0))
    image_1, labels_1 = render_knee(without_noise, TINY_SHAPE, TINY_SPACING, supersampling=1)
    image_2, labels_2 = render_knee(without_noise, TINY_SHAPE, TINY_SPACING, supersampling=2)
    changed = ~np.isclose(image_1, image_2)
    assert 0 < changed.mean() < 0.5
    # a voxel can only change where two labels meet (at a 26-neighbourhood boundary)
    from scipy.ndimage import maximum_filter, minimum_filter

    boundary = maximum_filter(labels_1, 3) != minimum_filter(labels_1, 3)
    assert not (labels_1 != labels_2)[~boundary].any()


# ------------------------------------------------------------------------------------------
# nnU-Net raw dataset and CLI
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    return write_phantom_dataset(raw, n_train=2, n_test=1, seed=5, shape=TINY_SHAPE)


def test_dataset_is_valid_for_nnunet(dataset: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    assert dataset.name == "Dataset701_KneePhantom"
    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any problem
    content = json.loads((dataset / "dataset.json").read_text())
    assert content["channel_names"] == {"0": "MRI"}
    assert content["labels"] == LABELS
    assert content["numTraining"] == 2 and content["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [
        "knee_000_0000.nii.gz", "knee_001_0000.nii.gz"]
    assert sorted(p.name for p in (dataset / "labelsTs").iterdir()) == ["knee_002.nii.gz"]
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == ["knee_002_0000.nii.gz"]


def test_files_carry_anisotropic_spacing_and_the_generated_arrays(dataset: Path) -> None:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    image = sitk.ReadImage(str(dataset / "imagesTr" / "knee_001_0000.nii.gz"))
    labels = sitk.ReadImage(str(dataset / "labelsTr" / "knee_001.nii.gz"))
    for item in (image, labels):
        assert item.GetSpacing() == pytest.approx(TINY_SPACING[::-1])  # SimpleITK: x, y, z
        assert item.GetDirection() == pytest.approx(np.eye(3).ravel())
        # world (0, 0, 0) at the centre of the field of view
        centre = item.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in item.GetSize()])
        assert centre == pytest.approx((0.0, 0.0, 0.0), abs=1e-4)
    assert image.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkUInt8
    _, properties = SimpleITKIO().read_seg(str(dataset / "labelsTr" / "knee_001.nii.gz"))
    assert properties["spacing"] == pytest.approx(list(TINY_SPACING))  # nnU-Net: array order

    expected_image, expected_labels, _ = generate_case(case_seed(5, 1, "train"), TINY_SHAPE)
    assert np.array_equal(sitk.GetArrayFromImage(labels), expected_labels)
    assert np.array_equal(sitk.GetArrayFromImage(image), expected_image)

    parameters = json.loads((dataset / "phantom_parameters.json").read_text())
    assert parameters["cases"]["knee_002"]["split"] == "test"
    assert parameters["cases"]["knee_002"]["seed"] == case_seed(5, 0, "test")
    stored = phantoms.KneeAnatomy.from_dict(parameters["cases"]["knee_001"]["anatomy"])
    assert stored == sample_anatomy(np.random.default_rng(case_seed(5, 1, "train")))


def test_cli_writes_the_same_cases_with_several_processes(tmp_path: Path) -> None:
    argv = ["-n", "2", "--n-test", "0", "--seed", "3", "-d", "702", "--shape", "12", "16", "16"]
    assert phantoms.main(["-o", str(tmp_path / "serial"), *argv]) == 0
    assert phantoms.main(["-o", str(tmp_path / "parallel"), *argv, "--np", "2"]) == 0
    for case in ("knee_000", "knee_001"):
        arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(
            tmp_path / run / "Dataset702_KneePhantom" / "labelsTr" / f"{case}.nii.gz")))
            for run in ("serial", "parallel")]
        assert arrays[0].shape == (12, 16, 16) and np.array_equal(arrays[0], arrays[1])
    assert not any((tmp_path / "serial" / "Dataset702_KneePhantom" / "imagesTs").iterdir())


def _record_job(job: tuple) -> dict:
    return {"job": list(job)}


def test_write_cases_numbers_the_test_cases_after_the_training_cases(tmp_path: Path) -> None:
    """The shared case loop of nnunet-shape phantoms and brains: ids, splits, per-case seeds and
    the settings every job carries (serial here; the phantom CLI test above runs it in processes)."""
    from nnunet_shape.demo import dataset_writer

    cases = dataset_writer.write_cases(tmp_path, "case", 2, 1, 5, _record_job, ("a", 7))
    assert cases == {
        "case_000": {"job": [str(tmp_path), "case_000", "train", case_seed(5, 0, "train"), "a", 7]},
        "case_001": {"job": [str(tmp_path), "case_001", "train", case_seed(5, 1, "train"), "a", 7]},
        "case_002": {"job": [str(tmp_path), "case_002", "test", case_seed(5, 0, "test"), "a", 7]},
    }
    assert phantoms.case_seed is dataset_writer.case_seed  # one rule, re-exported where it was


def test_writer_options_are_shared_with_the_brains() -> None:
    """One definition of -o -d -n --n-test --seed --name --np: defaults where given, required otherwise."""
    import argparse

    from nnunet_shape.demo.dataset_writer import add_dataset_writer_arguments, add_name_and_processes_arguments

    with_defaults, required = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_dataset_writer_arguments(with_defaults, dataset_id=701, n_train=20, n_test=5)
    add_name_and_processes_arguments(with_defaults, "KneePhantom")
    add_dataset_writer_arguments(required, dataset_id=None, n_train=None, n_test=None)
    args = with_defaults.parse_args(["-o", "raw"])
    assert vars(args) == {"output": "raw", "dataset_id": 701, "n_train": 20, "n_test": 5, "seed": 0,
                          "name": "KneePhantom", "num_processes": 1}
    assert vars(required.parse_args(["-o", "r", "-d", "3", "-n", "2", "--n-test", "0", "--seed", "4"])) == {
        "output": "r", "dataset_id": 3, "n_train": 2, "n_test": 0, "seed": 4}
    with pytest.raises(SystemExit):
        required.parse_args(["-o", "r", "-d", "3", "-n", "2"])
    assert "dataset id (1..999)" in required.format_help() and "dataset id (default 701)" in with_defaults.format_help()


def test_writer_rejects_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_train"):
        write_phantom_dataset(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="dataset_id"):
        write_phantom_dataset(tmp_path, dataset_id=1000)
