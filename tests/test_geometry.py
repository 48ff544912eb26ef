"""Specification of nnunet_shape.core.geometry: analytic descriptor transforms, proven against the
real nnU-Net / batchgeneratorsv2 code.

The core tests push a two-ellipsoid label map through the real augmentation (loader placement
with acvl_utils' crop_and_pad_nd, SpatialTransform configured as nnUNetTrainer does,
MirrorTransform) or the real preprocessing (DefaultPreprocessor.run_case_npy), measure the
descriptors of the result, and compare them with the descriptors of the original map moved
by :func:`transform_targets`.

Tolerances. Pure index shifts and flips (loader placement, no-affine crop, mirroring) move
voxels without interpolation: descriptors must agree to round-off (``EXACT``). Resampled
label maps (rotation, scaling: bilinear one-hot + argmax; preprocessing: linear in plane,
nearest across slices) agree up to interpolation error (``INTERPOLATED``): volume 3 %,
centroid 0.5 voxel per axis (the coarser spacing of the two frames), spread 5 %, covariance
8 % of its Frobenius norm, surface 10 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform

from nnunet_shape.core.descriptors import descriptors_from_labels
from nnunet_shape.core.geometry import (
    IndexAffine,
    centred_crop_affine,
    physical_affine,
    raw_to_preprocessed_affine,
    raw_to_preprocessed_targets,
    spatial_transform_affine,
    spatial_transform_affine_dummy_2d,
    training_patch_affine,
    transform_targets,
)
from nnunet_shape.nnunet.training.whole_scan import centred_lower_bound

NAMES = ("volume", "centroid", "spread", "covariance", "surface")
NUM_CLASSES = 3
SPACING = (2.0, 0.8, 0.8)
CASE_SHAPE = (28, 36, 36)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def rotation(axis_a: int, axis_b: int, degrees: float, dim: int = 3) -> np.ndarray:
    matrix = np.eye(dim)
    t = math.radians(degrees)
    matrix[axis_a, axis_a] = matrix[axis_b, axis_b] = math.cos(t)
    matrix[axis_a, axis_b] = -math.sin(t)
    matrix[axis_b, axis_a] = math.sin(t)
    return matrix


def ellipsoid_mask(shape, spacing, centre_mm, semi_axes_mm, frame: np.ndarray) -> np.ndarray:
    """Voxels whose centre lies in the ellipsoid ``|diag(1/semi) frameᵀ (x - c)| <= 1`` (x in mm)."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    x = np.stack(grids, axis=-1) - np.asarray(centre_mm)
    local = x @ frame  # components along the frame's columns
    return (((local / np.asarray(semi_axes_mm)) ** 2).sum(-1)) <= 1.0


def two_ellipsoids(shape=CASE_SHAPE, spacing=SPACING) -> np.ndarray:
    """Label map (int16): class 1 an ellipsoid tilted in the (0, 1) plane, class 2 one tilted in
    the (1, 2) plane, overlapping class 1 (class 2 wins), so the covariances are not diagonal."""
    extent = np.asarray(shape) * np.asarray(spacing)
    labels = np.zeros(shape, dtype=np.int16)
    # semi-axes >= 6 voxels along the coarse axis 0: thinner objects make the voxelisation error
    # of a resampled spread exceed the tolerance (a 6-slice object has a spread of ~1.3 slices)
    first = ellipsoid_mask(shape, spacing, extent * (0.33, 0.5, 0.52), (14.0, 7.0, 6.0), rotation(0, 1, 25))
    second = ellipsoid_mask(shape, spacing, extent * (0.66, 0.5, 0.45), (12.0, 5.0, 7.0), rotation(1, 2, 40))
    labels[first] = 1
    labels[second] = 2
    return labels


def measure(labels: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """float64 descriptors (K, ...) of an integer label map (-1 padding = background)."""
    tensor = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))[None]
    values = descriptors_from_labels(tensor, NUM_CLASSES, tuple(float(s) for s in spacing), NAMES,
                                     dtype=torch.float64, spatial_dims=labels.ndim)
    return {name: value[0].numpy() for name, value in values.items()}


def as_targets(values: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Exact targets for the foreground classes, background unconstrained (as the trainer has them)."""
    targets = {}
    for name, value in values.items():
        lower = value.astype(np.float64).copy()
        lower[0] = np.nan
        targets[name] = (lower, lower.copy())
    return targets


@dataclass(frozen=True)
class Tolerance:
    volume: float  # relative
    centroid: float  # in voxels of the coarser of both frames' spacing, per axis
    spread: float  # relative
    covariance: float  # relative to the Frobenius norm
    surface: float  # relative


EXACT = Tolerance(1e-9, 1e-9, 1e-9, 1e-9, 1e-9)
INTERPOLATED = Tolerance(0.03, 0.2, 0.05, 0.08, 0.10)


def assert_matches(measured: dict[str, np.ndarray], predicted: dict[str, tuple[np.ndarray, np.ndarray]],
                   tolerance: Tolerance, voxel_mm: np.ndarray, classes=(1, 2), check_surface: bool = True) -> None:
    for name in NAMES:
        lower, upper = predicted[name]
        if name != "surface" or check_surface:
            # the inputs were exact: the transformed targets must be exact too
            np.testing.assert_array_equal(lower[list(classes)], upper[list(classes)], err_msg=name)
    for k in classes:
        got, want = measured, {name: predicted[name][0][k] for name in NAMES}
        np.testing.assert_allclose(got["volume"][k], want["volume"], rtol=tolerance.volume, err_msg=f"volume {k}")
        offset = np.abs(got["centroid"][k] - want["centroid"])
        assert np.all(offset <= tolerance.centroid * voxel_mm + 1e-9), (
            f"centroid {k}: measured {got['centroid'][k]}, predicted {want['centroid']}, "
            f"allowed {tolerance.centroid * voxel_mm} per axis")
        np.testing.assert_allclose(got["spread"][k], want["spread"], rtol=tolerance.spread, atol=1e-9,
                                   err_msg=f"spread {k}")
        error = np.linalg.norm(got["covariance"][k] - want["covariance"])
        assert error <= tolerance.covariance * np.linalg.norm(want["covariance"]) + 1e-9, (
            f"covariance {k}: |Δ| = {error:.4g}, measured {got['covariance'][k]}, predicted {want['covariance']}")
        if check_surface:
            np.testing.assert_allclose(got["surface"][k], want["surface"], rtol=tolerance.surface,
                                       err_msg=f"surface {k}")


def assert_inside(labels: np.ndarray) -> None:
    """Test validity: no object may be cut by the patch border (descriptors would change)."""
    for axis in range(labels.ndim):
        for index in (0, -1):
            face = np.take(labels, index, axis=axis)
            assert not np.any(face > 0), f"an object touches the patch border on axis {axis}"


# ---------------------------------------------------------------------------------------
# the real augmentation pipeline
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    initial_patch: tuple[int, ...]
    patch: tuple[int, ...]
    angles_deg: tuple[float, ...] | None = None  # per axis (3-D) or the in-plane angle (dummy 2-D)
    scale: float | None = None
    mirror_axes: tuple[int, ...] = ()
    dummy_2d: bool = False
    random: bool = False  # draw rotation/scaling/mirroring from nnU-Net's own ranges instead
    mode_seg: str = "bilinear"  # nnU-Net's; 'nearest' only where a test needs exact copies


def spatial_transform_like_nnunet(patch, rotation_range, p_rotation, scaling_range, p_scaling,
                                  mode_seg: str = "bilinear") -> SpatialTransform:
    """SpatialTransform exactly as nnUNetTrainer.get_training_transforms builds it, with the
    probabilities and ranges made explicit."""
    return SpatialTransform(
        patch, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
        p_rotation=p_rotation,
        rotation=rotation_range, p_scaling=p_scaling, scaling=scaling_range, p_synchronize_scaling_across_axes=1,
        bg_style_seg_sampling=False,
        border_mode_seg='constant',
        padding_value_seg=-1,
        mode_seg=mode_seg,
    )


def run_pipeline(labels: np.ndarray, case: Augmentation) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """Labels through loader placement -> SpatialTransform -> MirrorTransform.

    Returns the transformed label map, the affine SpatialTransform drew (captured from its
    get_parameters) and the mirrored axes.
    """
    shape = labels.shape
    bbox_lbs = [centred_lower_bound(int(n), int(p)) for n, p in zip(shape, case.initial_patch)]
    bbox = [[lb, lb + int(p)] for lb, p in zip(bbox_lbs, case.initial_patch)]
    image = (labels > 0).astype(np.float32) + 1.0
    data = {
        "image": torch.from_numpy(crop_and_pad_nd(image[None], bbox, 0)).float(),
        "segmentation": torch.from_numpy(crop_and_pad_nd(labels[None], bbox, -1, cast_cropped_to=np.int16)
                                         ).to(torch.int16),
    }
    if case.random:
        rotation_range = (-30.0 / 360 * 2 * np.pi, 30.0 / 360 * 2 * np.pi)
        scaling_range = (0.7, 1.4)
        p_rotation = p_scaling = 1.0
    else:
        angles = case.angles_deg
        rotation_range = (lambda image, dim: math.radians(angles[dim] if len(angles) > 1 else angles[0])) \
            if angles is not None else (0.0, 0.0)
        p_rotation = 1.0 if angles is not None else 0.0
        scaling_range = (case.scale, case.scale) if case.scale is not None else (1.0, 1.0)
        p_scaling = 1.0 if case.scale is not None else 0.0
    spatial_patch = case.patch[1:] if case.dummy_2d else case.patch
    spatial = spatial_transform_like_nnunet(spatial_patch, rotation_range, p_rotation, scaling_range, p_scaling,
                                            case.mode_seg)
    captured = {}
    draw = spatial.get_parameters

    def capture(**data_dict):
        params = draw(**data_dict)
        captured.update(params)
        return params

    spatial.get_parameters = capture
    if case.dummy_2d:
        data = Convert3DTo2DTransform()(**data)
    data = spatial(**data)
    if case.dummy_2d:
        data = Convert2DTo3DTransform()(**data)
    if case.random:
        mirror = MirrorTransform(allowed_axes=(0, 1, 2))
        mirror_params = mirror.get_parameters(**data)
    else:
        mirror = MirrorTransform(allowed_axes=case.mirror_axes)
        mirror_params = {"axes": list(case.mirror_axes)}
    data = mirror.apply(data, **mirror_params)
    seg = data["segmentation"][0].numpy()
    assert seg.shape == tuple(case.patch)
    return seg, captured["affine"], [int(a) for a in mirror_params["axes"]]


AUGMENTATIONS = {
    # pure index moves: exact
    "mirror-0": (Augmentation((32, 40, 39), (32, 40, 39), mirror_axes=(0,)), EXACT),
    "mirror-1": (Augmentation((32, 40, 39), (32, 40, 39), mirror_axes=(1,)), EXACT),
    "mirror-2": (Augmentation((32, 40, 39), (32, 40, 39), mirror_axes=(2,)), EXACT),
    "mirror-all": (Augmentation((33, 40, 38), (33, 40, 38), mirror_axes=(0, 1, 2)), EXACT),
    "place-odd-even": (Augmentation((35, 44, 41), (35, 44, 41)), EXACT),
    "crop-no-affine-P0>P": (Augmentation((37, 45, 44), (30, 38, 37)), EXACT),
    "crop-no-affine-mirror": (Augmentation((38, 45, 43), (31, 38, 37), mirror_axes=(1, 2)), EXACT),
    # resampled: interpolation tolerances
    "rotate-axis0-+30": (Augmentation((36, 45, 44), (34, 42, 42), angles_deg=(30, 0, 0)), INTERPOLATED),
    "rotate-axis0--30": (Augmentation((36, 45, 44), (34, 42, 42), angles_deg=(-30, 0, 0)), INTERPOLATED),
    "rotate-axis1-+30": (Augmentation((36, 45, 44), (34, 42, 42), angles_deg=(0, 30, 0)), INTERPOLATED),
    "rotate-axis1--30": (Augmentation((36, 45, 44), (34, 42, 42), angles_deg=(0, -30, 0)), INTERPOLATED),
    "rotate-axis2-+30": (Augmentation((36, 45, 44), (34, 42, 42), angles_deg=(0, 0, 30)), INTERPOLATED),
    "rotate-axis2--30": (Augmentation((36, 45, 44), (34, 42, 42), angles_deg=(0, 0, -30)), INTERPOLATED),
    "scale-0.8": (Augmentation((34, 42, 42), (31, 40, 39), scale=0.8), INTERPOLATED),
    "scale-1.25": (Augmentation((30, 37, 38), (26, 32, 33), scale=1.25), INTERPOLATED),
    "rotate-scale-mirror": (Augmentation((42, 49, 48), (40, 46, 47), angles_deg=(12, -20, 25), scale=0.9,
                                         mirror_axes=(0, 2)), INTERPOLATED),
    "nnunet-random-draw": (Augmentation((52, 56, 56), (50, 54, 54), random=True), INTERPOLATED),
    "dummy-2d-rotate-60": (Augmentation((30, 43, 42), (30, 40, 40), angles_deg=(60,), dummy_2d=True),
                           INTERPOLATED),
    "dummy-2d-rotate-scale-mirror": (Augmentation((30, 45, 46), (30, 44, 43), angles_deg=(-140,), scale=0.85,
                                                  mirror_axes=(0, 1), dummy_2d=True), INTERPOLATED),
    "dummy-2d-no-affine": (Augmentation((30, 41, 40), (30, 38, 39), dummy_2d=True), EXACT),
}


@pytest.fixture(scope="module")
def original() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    labels = two_ellipsoids()
    assert np.count_nonzero(labels == 1) > 1000 and np.count_nonzero(labels == 2) > 1000
    return labels, measure(labels, SPACING)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_augmentation_moves_targets_like_the_image(name, original) -> None:
    case, tolerance = AUGMENTATIONS[name]
    np.random.seed(12345)
    torch.manual_seed(12345)
    labels, values = original
    seg, drawn_affine, mirrored = run_pipeline(labels, case)
    assert_inside(seg)
    if tolerance is EXACT or (case.angles_deg is None and case.scale is None and not case.random):
        assert drawn_affine is None, "expected the no-affine crop branch"
    else:
        assert drawn_affine is not None
    affine = training_patch_affine(CASE_SHAPE, case.initial_patch, case.patch, drawn_affine, mirrored,
                                   case.dummy_2d)
    predicted = transform_targets(as_targets(values), affine, SPACING, SPACING)
    measured = measure(seg, SPACING)

    matrix, _ = physical_affine(affine, SPACING, SPACING)
    signed_permutation = np.allclose(np.abs(matrix), np.eye(3), atol=1e-12)
    uniform_scale = case.angles_deg is None and case.scale is not None
    assert_matches(measured, predicted, tolerance, np.asarray(SPACING),
                   check_surface=signed_permutation or uniform_scale)
    if not (signed_permutation or uniform_scale):
        # rotations: the voxel-face surface is not rotation invariant -> unconstrained
        assert np.all(np.isnan(predicted["surface"][0])) and np.all(np.isnan(predicted["surface"][1]))


@pytest.mark.parametrize("dummy_2d", [False, True], ids=["3d", "dummy-2d"])
def test_augmentation_exact_under_upsampling_by_two(dummy_2d, original) -> None:
    """SpatialTransform with scaling 0.5 (content x 2), odd P0 and even P: every sample point
    sits a quarter voxel from an input centre, so each input voxel is copied into exactly
    2 x 2 (x 2) output voxels and the prediction must hold to round-off. This pins the grid
    centring (P-1)/2 and (P0-1)/2: a half-voxel slip would move centroids by 0.5 voxel.
    In 2-D nnU-Net's bilinear + argmax copies exactly (the nearest input pixel has weight
    0.5625); in 3-D the nearest voxel's trilinear weight is only 0.42 (corners get eroded), so
    the 3-D case samples the labels with mode_seg='nearest' -- the same grid."""
    labels, values = original
    case = Augmentation((29, 37, 37), (52, 46, 46), scale=0.5, mode_seg="nearest") if not dummy_2d else \
        Augmentation((30, 37, 37), (30, 62, 60), scale=0.5, dummy_2d=True)
    seg, drawn_affine, mirrored = run_pipeline(labels, case)
    assert_inside(seg)
    affine = training_patch_affine(CASE_SHAPE, case.initial_patch, case.patch, drawn_affine, mirrored, dummy_2d)
    predicted = transform_targets(as_targets(values), affine, SPACING, SPACING)
    measured = measure(seg, SPACING)
    doubled = np.array([1.0, 2.0, 2.0]) if dummy_2d else np.array([2.0, 2.0, 2.0])
    # an input voxel becomes output voxels at ±s/2 around its (doubled) centre on doubled axes
    split_variance = np.diag(np.where(doubled == 2, (np.asarray(SPACING) / 2) ** 2, 0.0))
    for k in (1, 2):
        np.testing.assert_allclose(measured["volume"][k], predicted["volume"][0][k], rtol=1e-12)
        np.testing.assert_allclose(measured["centroid"][k], predicted["centroid"][0][k], rtol=0, atol=1e-9)
        np.testing.assert_allclose(measured["covariance"][k], predicted["covariance"][0][k] + split_variance,
                                   rtol=0, atol=1e-9)
        if not dummy_2d:  # uniform scale: the surface is exactly x 4; in dummy 2-D it is anisotropic
            np.testing.assert_allclose(measured["surface"][k], predicted["surface"][0][k], rtol=1e-12)
        else:
            assert np.isnan(predicted["surface"][0][k])


def test_surface_scales_with_the_square_under_uniform_scaling(original) -> None:
    """content x 1/0.8: surface x 1.5625 (checked against re-measurement in the table above);
    here the analytic factor itself, and unchanged under mirroring."""
    _, values = original
    targets = as_targets(values)
    grow = spatial_transform_affine(np.eye(3) * 0.8, (36, 44, 44), (36, 44, 44))
    out = transform_targets(targets, grow, SPACING, SPACING)
    np.testing.assert_allclose(out["surface"][0][1:], values["surface"][1:] / 0.8 ** 2, rtol=1e-12)
    flip = IndexAffine.mirror((30, 40, 40), (0, 2))
    out = transform_targets(targets, flip, SPACING, SPACING)
    np.testing.assert_array_equal(out["surface"][0][1:], values["surface"][1:])
    turn = spatial_transform_affine(rotation(1, 2, 30), (36, 44, 44), (36, 44, 44))
    out = transform_targets(targets, turn, SPACING, SPACING)
    assert np.all(np.isnan(out["surface"][0])) and np.all(np.isnan(out["surface"][1]))


# ---------------------------------------------------------------------------------------
# the real preprocessing
# ---------------------------------------------------------------------------------------


def minimal_plans(transpose_forward, target_spacing_transposed, patch) -> dict:
    transpose_backward = [int(i) for i in np.argsort(transpose_forward)]
    return {
        "dataset_name": "Dataset999_Geometry",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(target_spacing_transposed),
        "original_median_shape_after_transp": list(patch),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose_forward),
        "transpose_backward": transpose_backward,
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 2.0, "mean": 1.5, "median": 1.5, "min": 1.0, "percentile_00_5": 1.0,
                  "percentile_99_5": 2.0, "std": 0.5}},
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": list(patch),
                "spacing": list(target_spacing_transposed),
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                # nnU-Net's ExperimentPlanner.determine_resampling defaults
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "batch_dice": False,
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {}, "_kw_requires_import": []},
            }
        },
    }


RAW_SPACING = (3.0, 0.9, 0.9)  # raw array (z, y, x) order: anisotropic -> separate-z resampling
RAW_SHAPE = (24, 40, 44)

PREPROCESSING = {
    # transpose_forward, target spacing in TRANSPOSED order. 3.0 -> 2.0 across slices is
    # nnU-Net's nearest neighbour at ratio 2/3 (ties at .5 every third slice: centroids off by
    # up to ~0.25 raw slice), 0.9 -> 1.2 in plane is linear.
    "identity-transpose": ((0, 1, 2), (2.0, 1.2, 1.2)),
    "transposed-201": ((2, 0, 1), (1.2, 2.0, 1.2)),
    "transposed-120": ((1, 2, 0), (1.2, 1.2, 2.0)),
}
#: nearest/linear resampling of a label map by 2 (3.0 -> 1.5, 0.9 -> 0.45) splits every raw voxel
#: into exactly 2 x 2 x 2 (no interpolation ties), so the prediction must hold to round-off:
#: a half-voxel slip in the resampling convention would show as a 0.25-voxel centroid error.
EXACT_DOUBLING = ((2, 0, 1), (0.45, 1.5, 0.45))
#: centroid 0.5 voxel for the nearest-neighbour ties above; the rest as INTERPOLATED
PREPROCESSED = Tolerance(0.03, 0.5, 0.05, 0.08, 0.10)


def raw_case() -> tuple[np.ndarray, np.ndarray]:
    """Image with a zero border (cropping bites), labels inside the nonzero region."""
    image = np.zeros(RAW_SHAPE, dtype=np.float32)
    image[2:22, 4:37, 3:41] = 1.0
    labels = np.zeros(RAW_SHAPE, dtype=np.int16)
    extent = np.asarray(RAW_SHAPE) * np.asarray(RAW_SPACING)
    first = ellipsoid_mask(RAW_SHAPE, RAW_SPACING, extent * (0.45, 0.5, 0.5), (24.0, 9.0, 7.0), rotation(1, 2, 30))
    second = ellipsoid_mask(RAW_SHAPE, RAW_SPACING, extent * (0.55, 0.45, 0.6), (22.0, 8.0, 9.0), rotation(0, 2, 20))
    labels[first] = 1
    labels[second] = 2
    image[labels > 0] = 2.0
    return image, labels


def preprocess(image: np.ndarray, labels: np.ndarray, transpose_forward, target_spacing):
    """nnU-Net's DefaultPreprocessor.run_case_npy on one raw case; returns (seg, properties)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(minimal_plans(transpose_forward, target_spacing, (16, 32, 32)))
    configuration_manager = plans_manager.get_configuration("3d_fullres")
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2}, "channel_names": {"0": "MR"},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    properties = {"spacing": list(RAW_SPACING)}  # SimpleITKIO's spacing: raw array order
    _, seg, properties = DefaultPreprocessor(verbose=False).run_case_npy(
        image[None].copy(), labels[None].copy(), properties, plans_manager, configuration_manager, dataset_json)
    # the test must exercise both cropping and resampling
    shape_after_cropping = properties["shape_after_cropping_and_before_resampling"]
    assert tuple(shape_after_cropping) != tuple(np.asarray(RAW_SHAPE)[list(transpose_forward)])
    assert tuple(seg.shape[1:]) != tuple(shape_after_cropping)
    return seg[0], properties


@pytest.mark.parametrize("name", list(PREPROCESSING))
def test_raw_to_preprocessed_matches_nnunet_preprocessing(name) -> None:
    transpose_forward, target_spacing = PREPROCESSING[name]
    image, labels = raw_case()
    seg, properties = preprocess(image, labels, transpose_forward, target_spacing)
    raw_values = measure(labels, RAW_SPACING)
    predicted, spacing = raw_to_preprocessed_targets(
        as_targets(raw_values), RAW_SPACING, transpose_forward, properties["bbox_used_for_cropping"],
        properties["shape_after_cropping_and_before_resampling"], seg.shape)
    np.testing.assert_allclose(spacing, target_spacing, rtol=0.05)  # rounding of the new shape only
    measured = measure(seg, spacing)
    coarser = np.maximum(np.asarray(RAW_SPACING)[list(transpose_forward)], spacing)
    assert_matches(measured, predicted, PREPROCESSED, coarser)


def test_raw_to_preprocessed_exact_under_voxel_doubling() -> None:
    transpose_forward, target_spacing = EXACT_DOUBLING
    image, labels = raw_case()
    seg, properties = preprocess(image, labels, transpose_forward, target_spacing)
    raw_values = measure(labels, RAW_SPACING)
    predicted, spacing = raw_to_preprocessed_targets(
        as_targets(raw_values), RAW_SPACING, transpose_forward, properties["bbox_used_for_cropping"],
        properties["shape_after_cropping_and_before_resampling"], seg.shape)
    np.testing.assert_allclose(spacing, target_spacing, rtol=1e-12)
    measured = measure(seg, spacing)
    # splitting a voxel of size s into two halves (centres at ±s/4) adds s²/16 to the variance
    # along that axis: the one discrete effect of the refinement, added here by hand
    split_variance = np.diag((np.asarray(RAW_SPACING)[list(transpose_forward)] / 4) ** 2)
    for k in (1, 2):
        np.testing.assert_allclose(measured["volume"][k], predicted["volume"][0][k], rtol=1e-12)
        np.testing.assert_allclose(measured["surface"][k], predicted["surface"][0][k], rtol=1e-12)
        np.testing.assert_allclose(measured["centroid"][k], predicted["centroid"][0][k], rtol=0, atol=1e-9)
        np.testing.assert_allclose(measured["covariance"][k], predicted["covariance"][0][k] + split_variance,
                                   rtol=0, atol=1e-9)
        np.testing.assert_allclose(measured["spread"][k] ** 2, predicted["spread"][0][k] ** 2
                                   + np.diag(split_variance), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# unit tests: exact formulas on hand examples
# ---------------------------------------------------------------------------------------


def random_affine(rng: np.random.Generator, dim: int = 3) -> IndexAffine:
    return IndexAffine(rng.normal(size=(dim, dim)) + 2 * np.eye(dim), rng.normal(size=dim))


def test_compose_applies_self_first_then_after() -> None:
    rng = np.random.default_rng(0)
    first, second = random_affine(rng), random_affine(rng)
    points = rng.normal(size=(5, 3))
    np.testing.assert_allclose(first.compose(second)(points), second(first(points)), rtol=1e-12, atol=1e-12)


def test_inverse_and_identity() -> None:
    rng = np.random.default_rng(1)
    affine = random_affine(rng)
    for composed in (affine.compose(affine.inverse()), affine.inverse().compose(affine)):
        np.testing.assert_allclose(composed.matrix, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(composed.offset, np.zeros(3), atol=1e-12)
    same = IndexAffine.identity(3).compose(affine)
    np.testing.assert_array_equal(same.matrix, affine.matrix)
    np.testing.assert_array_equal(same.offset, affine.offset)


def test_mirror_is_an_involution_and_flips_indices() -> None:
    flip = IndexAffine.mirror((4, 5, 6), (0, 2))
    np.testing.assert_array_equal(flip(np.array([[0, 0, 0], [3, 4, 5]])), [[3, 0, 5], [0, 4, 0]])
    twice = flip.compose(flip)
    np.testing.assert_array_equal(twice.matrix, np.eye(3))
    np.testing.assert_array_equal(twice.offset, np.zeros(3))


@pytest.mark.parametrize("case_size, patch_size, expected_offset", [
    (24, 31, 3), (24, 32, 4), (25, 32, 3), (32, 32, 0), (33, 32, -1), (40, 32, -4), (41, 32, -5),
])
def test_centred_crop_offset(case_size, patch_size, expected_offset) -> None:
    affine = centred_crop_affine((case_size,), (patch_size,))
    assert affine.offset[0] == expected_offset
    assert affine.offset[0] == -centred_lower_bound(case_size, patch_size)


@pytest.mark.parametrize("p0, p, expected_shift", [(33, 22, -5), (32, 22, -5), (41, 28, -6), (40, 29, -6),
                                                   (20, 20, 0), (21, 20, 0), (20, 21, 0), (19, 22, 2)])
def test_no_affine_crop_shift(p0, p, expected_shift) -> None:
    """crop_tensor around floor(P0/2): start = floor(P0/2) - floor(P/2)."""
    assert spatial_transform_affine(None, (p0,), (p,)).offset[0] == expected_shift


def test_spatial_transform_affine_maps_patch_centres() -> None:
    sampling = rotation(0, 2, 17) * 0.9
    affine = spatial_transform_affine(sampling, (30, 41, 40), (28, 36, 37))
    # the input centre (P0-1)/2 lands on the output centre (P-1)/2
    np.testing.assert_allclose(affine(np.array([14.5, 20.0, 19.5])), [13.5, 17.5, 18.0], atol=1e-12)
    # and the sampled location of an output voxel maps back onto it
    q = np.array([3.0, 30.0, 7.0])
    u = sampling @ (q - np.array([13.5, 17.5, 18.0])) + np.array([14.5, 20.0, 19.5])
    np.testing.assert_allclose(affine(u), q, atol=1e-12)


def test_dummy_2d_keeps_axis_0_and_needs_its_size() -> None:
    affine = spatial_transform_affine_dummy_2d(rotation(0, 1, 40, dim=2), (8, 30, 31), (8, 28, 28))
    assert affine.matrix[0, 0] == 1 and np.all(affine.matrix[0, 1:] == 0) and np.all(affine.matrix[1:, 0] == 0)
    assert affine.offset[0] == 0
    with pytest.raises(ValueError, match="axis 0"):
        spatial_transform_affine_dummy_2d(None, (9, 30, 31), (8, 28, 28))


def hand_targets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two 2-D classes: class 0 exact, class 1 ranges with NaN components (K=2, D=2)."""
    nan = np.nan
    return {
        "volume": (np.array([10.0, 4.0]), np.array([10.0, 6.0])),
        "centroid": (np.array([[1.0, 2.0], [0.0, nan]]), np.array([[1.0, 2.0], [2.0, nan]])),
        "spread": (np.array([[2.0, 1.0], [1.0, nan]]), np.array([[2.0, 1.0], [3.0, nan]])),
        "covariance": (np.array([[[4.0, 1.0], [1.0, 1.0]], [[1.0, -1.0], [-1.0, nan]]]),
                       np.array([[[4.0, 1.0], [1.0, 1.0]], [[9.0, 0.5], [0.5, nan]]])),
        "surface": (np.array([12.0, 5.0]), np.array([12.0, 7.0])),
    }


def test_hand_example_diagonal_map_with_mirror() -> None:
    """Index map q = diag(-2, 3) i + (5, 1) at spacing (1, 2) -> (0.5, 1):
    A = diag(0.5·(-2)/1, 1·3/2) = diag(-1, 1.5), b = (2.5, 1)."""
    affine = IndexAffine(np.diag([-2.0, 3.0]), np.array([5.0, 1.0]))
    matrix, shift = physical_affine(affine, (1.0, 2.0), (0.5, 1.0))
    np.testing.assert_array_equal(matrix, np.diag([-1.0, 1.5]))
    np.testing.assert_array_equal(shift, [2.5, 1.0])
    out = transform_targets(hand_targets(), affine, (1.0, 2.0), (0.5, 1.0))
    nan = np.nan
    np.testing.assert_array_equal(out["volume"][0], [15.0, 6.0])
    np.testing.assert_array_equal(out["volume"][1], [15.0, 9.0])
    # exact: (-1·1 + 2.5, 1.5·2 + 1); range [0, 2] on axis 0 flips to [0.5, 2.5]; NaN stays on its axis
    np.testing.assert_array_equal(out["centroid"][0], [[1.5, 4.0], [0.5, nan]])
    np.testing.assert_array_equal(out["centroid"][1], [[1.5, 4.0], [2.5, nan]])
    # class 0 from the exact covariance: sqrt(diag(A Σ Aᵀ)) = (2, 1.5); class 1 |a_i| spread
    np.testing.assert_allclose(out["spread"][0], [[2.0, 1.5], [1.0, nan]])
    np.testing.assert_allclose(out["spread"][1], [[2.0, 1.5], [3.0, nan]])
    # covariance: a_i a_j = [[1, -1.5], [-1.5, 2.25]]; negative products swap the sides
    np.testing.assert_allclose(out["covariance"][0], [[[4.0, -1.5], [-1.5, 2.25]], [[1.0, -0.75], [-0.75, nan]]])
    np.testing.assert_allclose(out["covariance"][1], [[[4.0, -1.5], [-1.5, 2.25]], [[9.0, 1.5], [1.5, nan]]])
    # anisotropic scaling (|a| = 1 and 1.5): the face split is unknown
    assert np.all(np.isnan(out["surface"][0])) and np.all(np.isnan(out["surface"][1]))


def test_hand_example_rotation() -> None:
    """A 90° index rotation at isotropic spacing 1 -> 2: A = [[0, -2], [2, 0]] (a signed
    permutation times 2), b = 2·(3, 0)."""
    affine = IndexAffine(np.array([[0.0, -1.0], [1.0, 0.0]]), np.array([3.0, 0.0]))
    out = transform_targets(hand_targets(), affine, (1.0, 1.0), (2.0, 2.0))
    nan = np.nan
    np.testing.assert_allclose(out["volume"][0], [40.0, 16.0])
    # Y = (-2 x_1 + 6, 2 x_0): class 1's NaN axis 1 moves to output axis 0
    np.testing.assert_allclose(out["centroid"][0], [[2.0, 2.0], [nan, 0.0]])
    np.testing.assert_allclose(out["centroid"][1], [[2.0, 2.0], [nan, 4.0]])
    np.testing.assert_allclose(out["spread"][0], [[2.0, 4.0], [nan, 2.0]])
    np.testing.assert_allclose(out["spread"][1], [[2.0, 4.0], [nan, 6.0]])
    # exact: A Σ Aᵀ = 4·[[Σ11, -Σ10], [-Σ01, Σ00]]
    np.testing.assert_allclose(out["covariance"][0][0], [[4.0, -4.0], [-4.0, 16.0]])
    np.testing.assert_allclose(out["covariance"][0][1], [[nan, -2.0], [-2.0, 4.0]])
    # uniform scale 2 with a rotation by 90°: a signed permutation, surface x 2^(D-1) = 2
    np.testing.assert_allclose(out["surface"][0], [24.0, 10.0])
    np.testing.assert_allclose(out["surface"][1], [24.0, 14.0])


def test_general_rotation_exact_values_and_unknown_ranges() -> None:
    affine = IndexAffine(rotation(0, 1, 30, dim=2), np.array([1.0, -2.0]))
    out = transform_targets(hand_targets(), affine, (1.0, 1.0), (1.0, 1.0))
    a = rotation(0, 1, 30, dim=2)
    sigma = hand_targets()["covariance"][0][0]
    np.testing.assert_allclose(out["covariance"][0][0], a @ sigma @ a.T, rtol=1e-12)
    np.testing.assert_allclose(out["spread"][0][0], np.sqrt(np.diag(a @ sigma @ a.T)), rtol=1e-12)
    np.testing.assert_allclose(out["centroid"][0][0], a @ [1.0, 2.0] + [1.0, -2.0], rtol=1e-12)
    assert out["centroid"][0][0][0] == out["centroid"][1][0][0]  # an exact value stays exact
    # class 1: its NaN axis mixes into both outputs; covariance/spread ranges are not known
    assert np.all(np.isnan(out["centroid"][0][1])) and np.all(np.isnan(out["centroid"][1][1]))
    assert np.all(np.isnan(out["covariance"][0][1])) and np.all(np.isnan(out["spread"][0][1]))
    assert np.all(np.isnan(out["surface"][0]))
    np.testing.assert_allclose(out["volume"][0], [10.0, 4.0])


def test_centroid_box_is_the_bounding_box_of_the_rotated_box() -> None:
    a = rotation(0, 1, 30, dim=2)
    targets = {"centroid": (np.array([[0.0, 0.0]]), np.array([[2.0, 4.0]]))}
    out = transform_targets(targets, IndexAffine(a, np.zeros(2)), (1.0, 1.0), (1.0, 1.0))
    corners = np.array([[x, y] for x in (0.0, 2.0) for y in (0.0, 4.0)]) @ a.T
    np.testing.assert_allclose(out["centroid"][0][0], corners.min(0), atol=1e-12)
    np.testing.assert_allclose(out["centroid"][1][0], corners.max(0), atol=1e-12)


def test_absent_classes_stay_absent() -> None:
    targets = {name: (value[0].copy(), value[1].copy()) for name, value in hand_targets().items()}
    targets["volume"] = (np.array([0.0, 4.0]), np.array([0.0, 6.0]))
    out = transform_targets(targets, IndexAffine.scaling((2.0, 2.0)), (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_array_equal(out["volume"][0], [0.0, 16.0])
    np.testing.assert_array_equal(out["volume"][1], [0.0, 24.0])
    for name in ("centroid", "spread", "covariance", "surface"):
        assert np.all(np.isnan(out[name][0][0])) and np.all(np.isnan(out[name][1][0])), name
        assert not np.all(np.isnan(out[name][0][1])), name


def test_one_sided_bounds_survive_a_signed_permutation() -> None:
    targets = {"centroid": (np.array([[1.0, np.nan]]), np.array([[np.nan, 5.0]]))}
    out = transform_targets(targets, IndexAffine.mirror((10, 10), (0,)), (1.0, 1.0), (1.0, 1.0))
    # axis 0: x >= 1 becomes y <= 8; axis 1: x <= 5 unchanged
    np.testing.assert_array_equal(out["centroid"][0], [[np.nan, np.nan]])
    np.testing.assert_array_equal(out["centroid"][1], [[8.0, 5.0]])


def test_unknown_names_and_wrong_shapes_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown descriptor"):
        transform_targets({"volumes": (np.ones(2), np.ones(2))}, IndexAffine.identity(2), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="centroid"):
        transform_targets({"volume": (np.ones(2), np.ones(2)), "centroid": (np.ones((2, 3)), np.ones((2, 3)))},
                          IndexAffine.identity(2), (1, 1), (1, 1))


def test_raw_to_preprocessed_hand_example() -> None:
    """Raw (z, y, x) = (10, 20, 30) at (3, 1, 1); transpose (2, 0, 1) -> (x, z, y); crop lower
    corner (2, 1, 4) in TRANSPOSED order to (20, 8, 12); resample to (10, 12, 12).
    Raw index (z, y, x) = (5, 10, 12) -> transposed (12, 5, 10) -> cropped (10, 4, 6) ->
    i_new = (i + 0.5)·r - 0.5 with r = (0.5, 1.5, 1) -> (4.75, 6.25, 6)."""
    affine, spacing = raw_to_preprocessed_affine((3.0, 1.0, 1.0), (2, 0, 1), [[2, 22], [1, 9], [4, 16]],
                                                 (20, 8, 12), (10, 12, 12))
    np.testing.assert_allclose(affine(np.array([5.0, 10.0, 12.0])), [4.75, 6.25, 6.0])
    np.testing.assert_allclose(spacing, [2.0, 2.0, 1.0])
    # physically a pure axis permutation plus a shift: volumes and surfaces are kept
    targets = {"volume": (np.array([7.0]), np.array([7.0])), "surface": (np.array([3.0]), np.array([3.0])),
               "centroid": (np.array([[15.0, 10.0, 12.0]]), np.array([[15.0, 10.0, 12.0]]))}
    out, _ = raw_to_preprocessed_targets(targets, (3.0, 1.0, 1.0), (2, 0, 1), [[2, 22], [1, 9], [4, 16]],
                                         (20, 8, 12), (10, 12, 12))
    np.testing.assert_allclose(out["volume"][0], [7.0])
    np.testing.assert_allclose(out["surface"][0], [3.0])
    np.testing.assert_allclose(out["centroid"][0], [[4.75 * 2.0, 6.25 * 2.0, 6.0]])
    with pytest.raises(ValueError, match="bbox"):
        raw_to_preprocessed_affine((3.0, 1.0, 1.0), (2, 0, 1), [[2, 22], [1, 9], [4, 15]], (20, 8, 12),
                                   (10, 12, 12))
