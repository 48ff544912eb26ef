"""Ellipsoid templates from descriptor targets (nnunet_shape.core.descriptor_templates): label maps
counted by hand, the smallest-wins overlap rule, targets from bounds, the cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_shape.core.bounds import DescriptorBounds, bounds_from_targets
from nnunet_shape.core.descriptor_templates import (
    ellipsoid_template,
    template_cross_entropy,
    template_targets_from_bounds,
    template_volume_from_bounds,
)
from nnunet_shape.core.descriptors import centroid as centroid_of
from nnunet_shape.core.descriptors import one_hot_labels
from nnunet_shape.core.descriptors import spread as spread_of

UNIT_RADIUS_SPREAD = 1.0 / math.sqrt(5.0)  # semi-axis sqrt(5) * sigma = 1 mm


def _one_class(c, sigma, shape=(5, 5, 5), spacing=(1.0, 1.0, 1.0), device="cpu"):
    centroid = torch.tensor([[[0.0, 0.0, 0.0], list(c)]], device=device)
    spread = torch.tensor([[[1.0, 1.0, 1.0], list(sigma)]], device=device)
    present = torch.tensor([[True, True]], device=device)
    return ellipsoid_template(centroid, spread, present, shape, torch.tensor(spacing, device=device))


def test_unit_ball_is_the_centre_voxel_and_its_six_face_neighbours(device):
    template = _one_class((2.0, 2.0, 2.0), (UNIT_RADIUS_SPREAD,) * 3, device=device)
    assert template.shape == (1, 5, 5, 5) and template.dtype == torch.int64 and template.device.type == device.type
    expected = torch.zeros(5, 5, 5, dtype=torch.int64)
    expected[2, 2, 2] = 1
    for axis in range(3):
        for step in (-1, 1):
            index = [2, 2, 2]
            index[axis] += step
            expected[tuple(index)] = 1
    assert torch.equal(template[0].cpu(), expected)


def test_spacing_is_honoured_millimetres_not_voxels():
    # semi-axes 2 mm on a (2, 1, 1) mm grid: one voxel either side along axis 0, two along 1 and 2
    template = _one_class((4.0, 2.0, 2.0), (2 * UNIT_RADIUS_SPREAD,) * 3, spacing=(2.0, 1.0, 1.0))
    assert [int(template[0, 2, 2, k]) for k in range(5)] == [1, 1, 1, 1, 1]
    assert [int(template[0, i, 2, 2]) for i in range(5)] == [0, 1, 1, 1, 0]


def test_a_tiny_spread_still_gives_one_voxel():
    template = _one_class((2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    assert int(template.sum()) == 1 and int(template[0, 2, 2, 2]) == 1


def test_smallest_ellipsoid_wins_overlaps_and_absent_or_unconstrained_classes_get_nothing():
    shape = (7, 7, 7)
    c = [3.0, 3.0, 3.0]
    centroid = torch.tensor([[c, c, c, c, c]])
    spread = torch.tensor([[[9.0] * 3, [3 * UNIT_RADIUS_SPREAD] * 3, [UNIT_RADIUS_SPREAD] * 3, [1.0] * 3,
                            [math.nan, 1.0, 1.0]]])
    present = torch.tensor([[True, True, True, False, True]])
    template = ellipsoid_template(centroid, spread, present, shape, (1.0, 1.0, 1.0))[0]
    assert int(template[3, 3, 3]) == 2  # the small ball inside the large one
    assert int(template[3, 3, 5]) == 1  # radius 2: only the large one (radius 3)
    assert int(template[3, 3, 6]) == 1 and int(template[0, 3, 3]) == 1
    assert int(template[0, 0, 0]) == 0  # outside every ellipsoid: background (class 0 never painted)
    assert set(template.unique().tolist()) == {0, 1, 2}  # class 3 absent, class 4's spread not finite
    assert int((template == 2).sum()) == 7


def test_equal_ellipsoids_go_to_the_smaller_label():
    c, s = [2.0, 2.0, 2.0], [UNIT_RADIUS_SPREAD] * 3
    template = ellipsoid_template(torch.tensor([[c, c, c]]), torch.tensor([[s, s, s]]), torch.ones(1, 3, dtype=bool),
                                  (5, 5, 5), (1.0, 1.0, 1.0))
    assert set(template.unique().tolist()) == {0, 1}


def test_a_large_template_has_the_target_centroid_and_nearly_the_target_spread():
    """The rule a = sqrt(5) sigma: the rasterised solid ellipsoid's moments give the targets back
    (centroid exactly by symmetry, spread within 3 % at ~15 voxels per semi-axis)."""
    shape, spacing = (32, 40, 48), (2.0, 1.5, 1.0)
    c = torch.tensor([31.0, 29.25, 23.5])  # voxel centres: symmetric about c
    sigma = torch.tensor([6.0, 5.0, 7.0])
    template = ellipsoid_template(torch.stack([torch.zeros(3), c])[None], torch.stack([torch.ones(3), sigma])[None],
                                  torch.ones(1, 2, dtype=bool), shape, spacing)
    probs = one_hot_labels(template[:, None], 2, torch.float64, spatial_dims=3)
    torch.testing.assert_close(centroid_of(probs, spacing)[0, 1], c.double(), atol=1e-9, rtol=0)
    torch.testing.assert_close(spread_of(probs, spacing)[0, 1], sigma.double(), rtol=0.03, atol=0)


def test_per_case_spacing_and_batch():
    c, s = [2.0, 2.0, 2.0], [UNIT_RADIUS_SPREAD] * 3
    template = ellipsoid_template(torch.tensor([[c, c], [c, c]]), torch.tensor([[s, s], [s, s]]),
                                  torch.ones(2, 2, dtype=bool), (5, 5, 5), torch.tensor([[1.0] * 3, [2.0] * 3]))
    assert int(template[0].sum()) == 7
    assert int(template[1].sum()) == 1  # 1 mm radius on a 2 mm grid around (1, 1, 1) voxels


@pytest.mark.parametrize("centroid, spread, present, shape, spacing, match", [
    (torch.zeros(1, 2, 3), torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=bool), (4, 4, 4), (1.0,) * 3, "must be"),
    (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=bool), (4, 4), (1.0,) * 3, "D = 3"),
    (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=bool), (4, 4, 4), (1.0, 1.0), "spacing"),
])
def test_shape_errors_name_what_was_given(centroid, spread, present, shape, spacing, match):
    with pytest.raises(ValueError, match=match):
        ellipsoid_template(centroid, spread, present, shape, spacing)


def test_targets_from_bounds_are_the_midpoints_and_need_centroid_and_spread():
    centroid = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 20.0, 30.0]]])
    spread = torch.tensor([[[1.0, 1.0, 1.0], [2.0, 3.0, 4.0]]])
    volume = torch.tensor([[0.0, 100.0]])
    bounds = bounds_from_targets({"volume": volume, "centroid": centroid, "spread": spread})
    c, s, present = template_targets_from_bounds(bounds)
    torch.testing.assert_close(c[:, 1], centroid[:, 1])
    torch.testing.assert_close(s[:, 1], spread[:, 1])
    assert present.tolist() == [[False, True]]  # volume upper 0: absent (its centroid is unconstrained)
    one_sided = DescriptorBounds(lower={"centroid": centroid, "spread": spread},
                                 upper={"centroid": torch.full_like(centroid, math.inf), "spread": spread})
    c, _, present = template_targets_from_bounds(one_sided)
    assert torch.isnan(c).all() and present.all()
    assert template_targets_from_bounds(bounds_from_targets({"volume": volume})) is None
    torch.testing.assert_close(template_volume_from_bounds(bounds), volume)  # +-10 %: the midpoint
    assert template_volume_from_bounds(bounds_from_targets({"centroid": centroid})) is None


def test_template_cross_entropy_is_the_mean_negative_log_softmax_of_the_template_class():
    logits = torch.tensor([[[[0.0, 1.0]], [[2.0, 0.0]]]])  # (1, 2, 1, 2)
    template = torch.tensor([[[1, 0]]])
    first, second = torch.log_softmax(torch.tensor([0.0, 2.0]), 0), torch.log_softmax(torch.tensor([1.0, 0.0]), 0)
    expected = -(first[1] + second[0]) / 2
    torch.testing.assert_close(template_cross_entropy(logits, template), expected)
    assert torch.autograd.gradcheck(lambda x: template_cross_entropy(x, template), logits.double().requires_grad_())
    with pytest.raises(ValueError, match="do not match"):
        template_cross_entropy(logits, template[..., :1])


def test_volume_target_flattens_the_shortest_semi_axis_never_lengthens():
    """Moment semi-axes 2 mm (a ball); volume target 4/3 pi 2 2 1: the first (shortest, ties: the
    first) semi-axis becomes 1 mm. Counted by hand: 13 voxels in the plane x = 0 (y^2 + z^2 <= 4)
    and one either side: 15. A larger or unknown volume leaves the ball (33 voxels)."""
    c = [3.0, 3.0, 3.0]
    sigma = [2 * UNIT_RADIUS_SPREAD] * 3
    args = (torch.tensor([[c, c]]), torch.tensor([[[1.0] * 3, sigma]]), torch.ones(1, 2, dtype=bool), (7, 7, 7),
            (1.0, 1.0, 1.0))
    ball = ellipsoid_template(*args)
    assert int(ball.sum()) == 33
    flat = ellipsoid_template(*args, volume=torch.tensor([[0.0, 4 / 3 * math.pi * 4.0]]))
    assert int(flat.sum()) == 15
    assert int(flat[0, 2, 3, 3]) == 1 and int(flat[0, 2, 3, 4]) == 0 and int(flat[0, 3, 3, 5]) == 1
    for volume in (4 / 3 * math.pi * 100.0, math.nan, 0.0):
        assert torch.equal(ellipsoid_template(*args, volume=torch.tensor([[1.0, volume]])), ball), volume
    # never thinner than one voxel: a tiny volume keeps a one-voxel-thick disc
    thin = ellipsoid_template(*args, volume=torch.tensor([[1.0, 1e-6]]))
    assert int((thin[0] == 1).sum()) == 13 and int(thin[0, 3].sum()) == 13
    with pytest.raises(ValueError, match="volume must be"):
        ellipsoid_template(*args, volume=torch.ones(1, 3))
