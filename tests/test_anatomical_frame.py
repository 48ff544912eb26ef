"""Anatomical frame (nnunet_shape.core.anatomical_frame) against array-frame computations on
real SimpleITK images with permuted / flipped directions, read by nnU-Net's reader."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_shape.core.anatomical_frame import AnatomicalFrame, ObliqueDirectionError, direction_matrix

sitk = pytest.importorskip("SimpleITK")


def _blobs(shape=(7, 9, 11)):
    """Label map (z, y, x) with two asymmetric boxes, identity direction."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:3, 2:7, 1:4] = 1
    labels[4:7, 5:8, 6:11] = 2
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((0.5, 1.5, 2.0))  # x, y, z
    image.SetOrigin((3.0, -2.0, 7.0))
    return image


def _centroids_mm(labels, spacing):
    idx = np.indices(labels.shape).reshape(labels.ndim, -1).T.astype(np.float64)
    flat = labels.reshape(-1)
    return {k: (idx[flat == k] * spacing).mean(axis=0) for k in (1, 2)}


def _covariance_mm2(labels, spacing, k):
    idx = np.indices(labels.shape).reshape(labels.ndim, -1).T.astype(np.float64) * spacing
    return np.cov(idx[labels.reshape(-1) == k].T, bias=True)


REORIENTATIONS = [
    ("identity", lambda im: im),
    ("flip x", lambda im: sitk.Flip(im, [True, False, False])),
    ("flip y z", lambda im: sitk.Flip(im, [False, True, True])),
    ("permute zxy", lambda im: sitk.PermuteAxes(im, [2, 0, 1])),
    ("permute + flip", lambda im: sitk.Flip(sitk.PermuteAxes(im, [1, 2, 0]), [True, False, True])),
]


def _read_with_nnunet(image, tmp_path, name):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    path = tmp_path / f"{name.replace(' ', '_')}.nii.gz"
    sitk.WriteImage(image, str(path))
    seg, props = SimpleITKIO().read_seg(str(path))
    return seg[0].astype(np.int64), props


@pytest.mark.parametrize("name, reorient", REORIENTATIONS)
@pytest.mark.parametrize("transpose_forward", [None, (0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_offsets_and_spreads_match_the_array_frame(tmp_path, name, reorient, transpose_forward):
    reference = _blobs()
    ref_labels = sitk.GetArrayFromImage(reference)
    ref_spacing = np.array(reference.GetSpacing())[::-1]
    ref = _centroids_mm(ref_labels, ref_spacing)
    # identity direction: LPS = (x, y, z) = array axes reversed
    ref_offset_lps = (ref[2] - ref[1])[::-1]
    ref_spread_lps = np.sqrt(np.diag(_covariance_mm2(ref_labels, ref_spacing, 2)))[::-1]

    labels, props = _read_with_nnunet(reorient(reference), tmp_path, name)
    spacing = np.array(props["spacing"], dtype=np.float64)
    direction = props["sitk_stuff"]["direction"]
    if name != "identity":
        assert not np.allclose(direction_matrix(direction), np.eye(3))
    if transpose_forward is not None:  # what nnU-Net's preprocessing does to data and spacing
        labels = labels.transpose(transpose_forward)
        spacing = spacing[list(transpose_forward)]
    frame = AnatomicalFrame.from_direction(direction, transpose_forward)
    c = _centroids_mm(labels, spacing)
    offset_array = c[2] - c[1]
    np.testing.assert_allclose(frame.vector_to_anatomical(offset_array), ref_offset_lps, atol=1e-9)
    np.testing.assert_allclose(frame.vector_to_array(ref_offset_lps), offset_array, atol=1e-9)
    # a box of offsets stated in LPS becomes the array-frame box of the same offsets
    lo, hi = frame.box_to_array(ref_offset_lps - [1.0, 2.0, 3.0], ref_offset_lps + [4.0, 5.0, 6.0])
    assert np.all(lo <= offset_array + 1e-9) and np.all(offset_array <= hi + 1e-9)
    np.testing.assert_allclose(hi - lo, frame.vector_to_array([5.0, 7.0, 9.0]).__abs__(), atol=1e-12)
    point_lo, point_hi = frame.box_to_array(ref_offset_lps, ref_offset_lps)
    np.testing.assert_allclose(point_lo, offset_array, atol=1e-9)
    np.testing.assert_allclose(point_hi, offset_array, atol=1e-9)
    # spreads: LPS spread -> array axes, and the covariance route back
    cov = _covariance_mm2(labels, spacing, 2)
    spread_array = np.sqrt(np.diag(cov))
    s_lo, s_hi = frame.spread_to_array(ref_spread_lps, ref_spread_lps)
    np.testing.assert_allclose(s_lo, spread_array, atol=1e-9)
    np.testing.assert_allclose(frame.spread_to_anatomical(cov), ref_spread_lps, atol=1e-9)
    # field-of-view fraction: the anatomical fraction does not depend on the orientation
    fraction_array = (c[2] + spacing / 2) / (np.array(labels.shape) * spacing)
    ref_fraction = ((ref[2] + ref_spacing / 2) / (np.array(ref_labels.shape) * ref_spacing))[::-1]
    np.testing.assert_allclose(frame.fraction_to_anatomical(fraction_array), ref_fraction, atol=1e-12)
    f_lo, f_hi = frame.fraction_to_array(ref_fraction - 0.01, ref_fraction + 0.02)
    assert np.all(f_lo < fraction_array) and np.all(fraction_array < f_hi)


def test_raw_frame_agrees_with_the_exported_geometry():
    from nnunet_shape.descriptor_files.measure import Geometry

    image = sitk.Flip(sitk.PermuteAxes(_blobs(), [1, 2, 0]), [True, False, True])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    geometry = Geometry(shape=(1, 1, 1), spacing_mm=(1.0, 1.0, 1.0), axis_order=("z", "y", "x"),
                        origin_mm=(0.0, 0.0, 0.0), direction=tuple(map(tuple, direction)), world_frame="ITK-LPS")
    frame = AnatomicalFrame.from_direction(image.GetDirection())
    v = np.array([1.0, -2.0, 5.0])
    np.testing.assert_allclose(frame.vector_to_anatomical(v), geometry.world_vector(v))


def _rotation_z(degrees):
    a = math.radians(degrees)
    return [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]]


def test_oblique_direction_boxes_are_bounding_boxes_and_spreads_are_refused():
    frame = AnatomicalFrame.from_direction(_rotation_z(30.0))
    assert frame.obliqueness_degrees == pytest.approx(30.0)
    rng = np.random.default_rng(0)
    lo, hi = np.array([-1.0, 2.0, -3.0]), np.array([4.0, 3.0, 0.0])
    out_lo, out_hi = frame.box_to_array(lo, hi)
    for v in rng.uniform(lo, hi, size=(200, 3)):
        w = frame.vector_to_array(v)
        assert np.all(out_lo - 1e-12 <= w) and np.all(w <= out_hi + 1e-12)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    mapped = frame.vector_to_array(corners)
    np.testing.assert_allclose(out_lo, mapped.min(0), atol=1e-12)  # tight: reached at corners
    np.testing.assert_allclose(out_hi, mapped.max(0), atol=1e-12)
    with pytest.raises(ObliqueDirectionError, match="30.00 degrees"):
        frame.spread_to_array(np.ones(3), np.ones(3))
    # small obliqueness is within the default tolerance, exactly like the nearest permutation
    slight = AnatomicalFrame.from_direction(_rotation_z(3.0))
    np.testing.assert_allclose(slight.spread_to_array([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])[0], [3.0, 2.0, 1.0])


def test_unbounded_sides_stay_on_their_axes():
    frame = AnatomicalFrame.from_direction(sitk.PermuteAxes(_blobs(), [2, 0, 1]).GetDirection())
    lo, hi = frame.box_to_array(np.array([np.nan, 1.0, 2.0]), np.array([5.0, np.nan, 3.0]))
    source = frame.axis_source
    a_left = source.index(0)
    a_post = source.index(1)
    assert np.isnan(lo[a_left]) and np.isfinite(hi[a_left])
    assert np.isfinite(lo[a_post]) and np.isnan(hi[a_post])
    assert np.isfinite(lo[source.index(2)]) and np.isfinite(hi[source.index(2)])


@pytest.mark.parametrize("direction, match", [
    ([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "9 floats or 3x3"),
    ([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], "not orthonormal"),
    ([[math.nan, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], "non-finite"),
])
def test_invalid_directions(direction, match):
    with pytest.raises(ValueError, match=match):
        direction_matrix(direction)


def test_invalid_transpose():
    with pytest.raises(ValueError, match="permutation"):
        AnatomicalFrame.from_direction(np.eye(3), (0, 0, 1))
