"""Specification of nnunet_shape.core.losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_shape.core.barrier import extended_log_barrier
from nnunet_shape.core.bounds import interval_half_width
from nnunet_shape.core.descriptors import (
    DESCRIPTOR_NAMES,
    compute_descriptors,
    descriptors_from_labels,
    one_hot_labels,
    surface,
)
from nnunet_shape.core.losses import (
    DescriptorBounds,
    EqualCentroidPrior,
    RatioPrior,
    ShapeDescriptorLoss,
    ShapeLossResult,
    bounds_from_targets,
    shape_descriptor_loss,
)

# ----------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------


def ellipsoid(shape, centre, radii) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def two_ellipsoids(shape=(24, 24, 16)) -> torch.Tensor:
    """(1, 1, *shape) label map: background 0, two ellipsoids 1 and 2."""
    labels = torch.zeros(shape, dtype=torch.long)
    labels[ellipsoid(shape, (8, 9, 7), (5, 4, 4))] = 1
    labels[ellipsoid(shape, (16, 15, 9), (4, 6, 3))] = 2
    return labels[None, None]


def cube_probs(shape, lo, hi, num_classes=2, dtype=torch.float64) -> torch.Tensor:
    """One-hot probabilities of a box of class 1 on background."""
    labels = torch.zeros(shape, dtype=torch.long)
    labels[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return one_hot_labels(labels[None, None], num_classes, dtype)


# ----------------------------------------------------------------------------------------
# bounds
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,tau,relative,absolute,expected_half",
    [
        ("volume", [[0.0, 100.0]], 0.1, None, [[0.0, 10.0]]),
        ("volume", [[50.0, 100.0]], 0.2, {"volume": 15.0}, [[15.0, 20.0]]),
        ("surface", [[50.0, 300.0]], {"surface": 0.05}, None, [[2.5, 15.0]]),
        # centroid: default absolute 2 mm beats 10 % of small coordinates
        ("centroid", [[[1.0, 50.0], [0.0, -30.0]]], 0.1, None, [[[2.0, 5.0], [2.0, 3.0]]]),
        ("spread", [[[4.0, 10.0], [1.0, 2.0]]], 0.1, {"spread": 0.5}, [[[0.5, 1.0], [0.5, 0.5]]]),
    ],
)
def test_bounds_half_widths(name, tau, relative, absolute, expected_half):
    tau_t = torch.tensor(tau, dtype=torch.float64)
    bounds = bounds_from_targets({name: tau_t}, relative, absolute)
    half = torch.tensor(expected_half, dtype=torch.float64)
    torch.testing.assert_close(bounds.lower[name], tau_t - half)
    torch.testing.assert_close(bounds.upper[name], tau_t + half)


INF, NAN = math.inf, math.nan


@pytest.mark.parametrize("lower, upper, floor, expected", [
    ([2.0], [6.0], 0.5, [2.0]),  # two-sided: half the interval
    ([2.0], [2.0], 0.5, [0.5]),  # an equality: the floor
    ([-40.0], [INF], 0.5, [4.0]),  # one-sided: 10 % of the bound
    ([NAN], [30.0], 0.5, [3.0]),
    ([NAN], [INF], 0.25, [0.25]),  # unbounded (unused): the floor
    ([1.0, 5.0], [3.0, 5.0], [[0.1, 0.2]], [1.0, 0.2]),  # a floor per component
])
def test_interval_half_width_is_the_one_scale_rule(lower, upper, floor, expected):
    scale = interval_half_width(torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64),
                                torch.tensor(floor, dtype=torch.float64) if isinstance(floor, list) else floor)
    torch.testing.assert_close(scale.reshape(-1), torch.tensor(expected, dtype=torch.float64))


def test_interval_half_width_masks_skip_finite_sides():
    scale = interval_half_width(torch.tensor([2.0]), torch.tensor([6.0]), 0.1, lower_ok=torch.tensor([False]),
                                upper_ok=torch.tensor([True]))
    torch.testing.assert_close(scale, torch.tensor([0.6]))


def test_covariance_bounds_scale_with_the_diagonal():
    cov = torch.tensor([[[[4.0, 0.0], [0.0, 9.0]]]], dtype=torch.float64)
    bounds = bounds_from_targets({"covariance": cov}, 0.1)
    half = 0.1 * torch.tensor([[4.0, 6.0], [6.0, 9.0]], dtype=torch.float64)
    torch.testing.assert_close(bounds.upper["covariance"][0, 0], cov[0, 0] + half)
    torch.testing.assert_close(bounds.lower["covariance"][0, 0], cov[0, 0] - half)


def test_absent_classes_only_keep_volume_zero():
    targets = {
        "volume": torch.tensor([[10.0, 0.0, 5.0]]),
        "centroid": torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]]]),
    }
    bounds = bounds_from_targets(targets)
    assert bounds.present.tolist() == [[True, False, True]]
    assert bounds.lower["volume"][0, 1] == 0 and bounds.upper["volume"][0, 1] == 0
    assert torch.isnan(bounds.lower["centroid"][0, 1]).all()
    assert torch.isnan(bounds.upper["centroid"][0, 1]).all()
    assert torch.isfinite(bounds.upper["centroid"][0, 2]).all()
    # presence is inferred from the volume upper bound when not given
    inferred = DescriptorBounds(lower=bounds.lower, upper=bounds.upper)
    assert inferred.presence().tolist() == [[True, False, True]]


def test_bounds_validation_names_the_problem():
    with pytest.raises(ValueError, match="bounds_from_targets: unknown descriptor"):
        bounds_from_targets({"perimeter": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="only one of lower/upper"):
        DescriptorBounds(lower={"volume": torch.ones(1, 2)}, upper={})


def test_unconstrained_bounds_shapes():
    bounds = DescriptorBounds.unconstrained(2, 3, 3, DESCRIPTOR_NAMES)
    shapes = {n: tuple(bounds.lower[n].shape) for n in DESCRIPTOR_NAMES}
    assert shapes == {
        "volume": (2, 3),
        "centroid": (2, 3, 3),
        "spread": (2, 3, 3),
        "covariance": (2, 3, 3, 3),
        "surface": (2, 3),
    }
    assert all(torch.isnan(v).all() for v in bounds.upper.values())


# ----------------------------------------------------------------------------------------
# loss values
# ----------------------------------------------------------------------------------------

ALL = ("volume", "centroid", "spread", "covariance", "surface")


WIDE = {"centroid": 2.0, "spread": 1.0, "covariance": 2.0}  # every half-width >= half a voxel


@pytest.mark.parametrize(
    "descriptors", [("volume", "centroid"), ("volume", "centroid", "spread"), ALL]
)
def test_loss_is_zero_at_the_target_and_larger_at_a_bound(descriptors):
    labels = two_ellipsoids()
    spacing = (1.0, 1.2, 2.0)
    probs = one_hot_labels(labels, 3, torch.float64)
    loss_fn = ShapeDescriptorLoss(descriptors=descriptors, absolute_margin=WIDE)
    at_target = loss_fn(probs, labels, spacing=spacing)
    # the target is the midpoint of every interval: z_low = z_up = -1, psi(-1) = 0
    assert abs(at_target.item()) < 1e-9
    # move the volume bound onto the prediction: one constraint at z = 0, its twin at -2
    targets = descriptors_from_labels(labels, 3, spacing, descriptors, dtype=torch.float64)
    targets["volume"] = targets["volume"] / 1.1
    at_bound = loss_fn(probs, targets, spacing=spacing)
    psi = extended_log_barrier(torch.tensor([0.0, -2.0], dtype=torch.float64), 5.0).sum()
    # "mean": the volume term is the mean over its 4 active constraints (2 classes x 2 sides)
    assert at_bound.item() == pytest.approx(psi.item() / 2, rel=1e-6)


def test_sub_voxel_intervals_cost_a_little_at_the_target():
    labels = two_ellipsoids()
    probs = one_hot_labels(labels, 3, torch.float64)
    # default margins: spread +-10 % of ~2 voxels is below the half-voxel scale floor
    result = ShapeDescriptorLoss()(probs, labels, spacing=(1.0, 1.2, 2.0), return_result=True)
    assert result.terms["volume"].abs() < 1e-9 and result.terms["centroid"].abs() < 1e-9
    psi_at_bound = extended_log_barrier(torch.tensor([0.0, -2.0], dtype=torch.float64), 5.0).mean()
    assert 0 < result.terms["spread"] < psi_at_bound
    assert all(ok[:, 1:].all() for ok in result.satisfied.values())


def test_loss_increases_monotonically_as_the_blob_moves_away():
    shape = (30, 12, 12)
    target = cube_probs(shape, (4, 4, 4), (9, 8, 8))
    names = ("volume", "centroid", "spread")
    bounds = bounds_from_targets(compute_descriptors(target, (1.0, 1.0, 1.0), names))
    losses = []
    for shift in range(0, 18, 2):
        pred = torch.roll(target, shifts=shift, dims=2)
        losses.append(shape_descriptor_loss(pred, bounds, (1.0, 1.0, 1.0)).loss.item())
    assert all(b > a for a, b in zip(losses, losses[1:])), losses


def test_target_forms_agree():
    labels = two_ellipsoids((12, 12, 8))
    labels = labels.clone()
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1, 3, 12, 12, 8, dtype=torch.float64), 1)
    spacing = (1.0, 0.5, 2.0)
    loss_fn = ShapeDescriptorLoss(descriptors=("volume", "centroid", "spread", "surface"))
    from_labels = loss_fn(probs, labels, spacing)
    from_float_labels = loss_fn(probs, labels.double(), spacing)
    from_one_hot = loss_fn(probs, one_hot_labels(labels, 3, torch.float64), spacing)
    names = loss_fn.target_names()
    values = descriptors_from_labels(labels, 3, spacing, names, dtype=torch.float64)
    from_dict = loss_fn(probs, values, spacing)
    from_bounds = loss_fn(probs, bounds_from_targets(values), spacing)
    for other in (from_float_labels, from_one_hot, from_dict, from_bounds):
        torch.testing.assert_close(other, from_labels)


def test_single_region_float_target_is_a_mask():
    mask = torch.zeros(1, 1, 8, 8, 4, dtype=torch.float64)
    mask[0, 0, 2:5, 3:6, 1:3] = 1.0
    loss_fn = ShapeDescriptorLoss(include_background=True, absolute_margin={"spread": 1.0})
    result = loss_fn(mask, mask, return_result=True)
    assert result.active["volume"].tolist() == [[True]]
    assert abs(result.loss.item()) < 1e-9  # the mask is its own target


def test_module_equals_function_and_keeps_last_result(device):
    labels = two_ellipsoids((12, 12, 8)).to(device)
    probs = torch.softmax(torch.randn(1, 3, 12, 12, 8, dtype=torch.float64, device=device), 1).requires_grad_()
    loss_fn = ShapeDescriptorLoss(t=3.0, priors=(RatioPrior("volume", 2, 1, 0.5, 2.0),))
    module_loss = loss_fn(probs, labels)
    values = descriptors_from_labels(labels, 3, None, loss_fn.target_names(), dtype=torch.float64)
    result = shape_descriptor_loss(
        probs, bounds_from_targets(values), t=3.0, priors=(RatioPrior("volume", 2, 1, 0.5, 2.0),)
    )
    torch.testing.assert_close(module_loss, result.loss)
    last = loss_fn.last_result
    assert isinstance(last, ShapeLossResult) and not last.loss.requires_grad
    assert set(last.terms) == {"volume", "centroid", "spread", "ratio_volume_2_1"}
    torch.testing.assert_close(sum(last.terms.values()), last.loss)
    full = loss_fn(probs, labels, return_result=True)
    assert isinstance(full, ShapeLossResult) and full.loss.requires_grad


def test_t_attribute_changes_the_loss():
    labels = two_ellipsoids((12, 12, 8))
    probs = torch.softmax(torch.randn(1, 3, 12, 12, 8, dtype=torch.float64), 1)
    loss_fn = ShapeDescriptorLoss(t=1.0)
    a = loss_fn(probs, labels)
    loss_fn.t = 20.0
    b = loss_fn(probs, labels)
    assert not torch.isclose(a, b)


@pytest.mark.parametrize("descriptors", [("volume",), ("centroid", "spread"), ALL])
def test_gradcheck_loss(descriptors, device):
    torch.manual_seed(1)
    labels = torch.zeros(1, 1, 4, 5, 3, dtype=torch.long, device=device)
    labels[0, 0, 1:3, 1:4, 0:2] = 1
    labels[0, 0, 3, 0:2, 1:3] = 2
    bounds = bounds_from_targets(
        descriptors_from_labels(labels, 3, (1.0, 2.0, 0.5), ALL, dtype=torch.float64)
    )
    logits = torch.randn(1, 3, 4, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    prior = (EqualCentroidPrior(1, 2, 1.0), RatioPrior("surface", 1, 2, 0.5, 3.0))

    def f(x):
        probs = torch.softmax(x, 1)
        return shape_descriptor_loss(
            probs, bounds, (1.0, 2.0, 0.5), t=5.0, descriptors=descriptors, priors=prior
        ).loss

    assert torch.autograd.gradcheck(f, (logits,), fast_mode=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction, device):
    torch.manual_seed(2)
    empty = torch.zeros(1, 1, 12, 12, 8, dtype=torch.long)
    labels = torch.cat([two_ellipsoids((12, 12, 8)), empty]).to(device)
    labels[1, 0, 2:6, 2:6, 2:5] = 2  # case 1: class 1 absent
    probs = torch.softmax(torch.randn(2, 3, 12, 12, 8, dtype=torch.float64, device=device), 1)
    per_case = [
        ShapeDescriptorLoss(reduction="mean")(probs[b : b + 1], labels[b : b + 1]) for b in range(2)
    ]
    got = ShapeDescriptorLoss(reduction=reduction)(probs, labels)
    if reduction == "none":
        assert got.shape == (2,)
        torch.testing.assert_close(got, torch.stack(per_case))
    elif reduction == "mean":
        torch.testing.assert_close(got, torch.stack(per_case).mean())
    else:
        result = ShapeDescriptorLoss(reduction="sum")(probs, labels, return_result=True)
        assert got.ndim == 0 and got > torch.stack(per_case).sum()  # sums, not means
        torch.testing.assert_close(sum(result.terms.values()), got)


def test_adding_a_descriptor_does_not_rescale_the_others():
    torch.manual_seed(3)
    labels = two_ellipsoids((12, 12, 8))
    probs = torch.softmax(torch.randn(1, 3, 12, 12, 8, dtype=torch.float64), 1)
    few = ShapeDescriptorLoss(descriptors=("volume",))(probs, labels, return_result=True)
    more = ShapeDescriptorLoss(descriptors=("volume", "spread"))(probs, labels, return_result=True)
    torch.testing.assert_close(few.terms["volume"], more.terms["volume"])


def test_satisfied_flags_per_class_and_component(device):
    shape = (16, 16, 16)
    pred = cube_probs(shape, (2, 2, 2), (6, 6, 6), num_classes=3).to(device)
    pred[:, 2, 10:14, 10:14, 10:14] = 1.0
    pred[:, 0, 10:14, 10:14, 10:14] = 0.0
    target_values = compute_descriptors(pred, None, ("volume", "centroid"))
    targets = {k: v.clone() for k, v in target_values.items()}
    targets["centroid"][0, 2, 1] += 5.0  # class 2 misplaced along y only (margin 2 mm)
    result = shape_descriptor_loss(
        pred, bounds_from_targets(targets), descriptors=("volume", "centroid")
    )
    assert result.satisfied["volume"].tolist() == [[True, True, True]]
    assert result.satisfied["centroid"].tolist() == [[True, True, False]]
    assert result.active["centroid"].tolist() == [[False, True, True]]  # background excluded
    assert result.satisfied["centroid"].device == pred.device
    assert result.satisfaction_fraction("centroid").item() == pytest.approx(0.5)


def test_nan_bounds_are_unconstrained_and_give_no_nan_gradient():
    probs = torch.softmax(torch.randn(1, 3, 6, 6, 6, dtype=torch.float64), 1).requires_grad_()
    bounds = DescriptorBounds.unconstrained(1, 3, 3, ("volume", "centroid"), dtype=torch.float64)
    bounds.lower["volume"][0, 1] = 20.0
    bounds.upper["volume"][0, 1] = 30.0  # only class 1's volume is constrained
    result = shape_descriptor_loss(probs, bounds, descriptors=("volume", "centroid"))
    (grad,) = torch.autograd.grad(result.loss, probs)
    assert torch.isfinite(grad).all()
    assert result.active["volume"].tolist() == [[False, True, False]]
    assert result.active["centroid"].tolist() == [[False, False, False]]
    assert result.terms["centroid"].item() == 0.0
    # the gradient only reaches class 1 (volume depends on its own channel only)
    assert grad[:, 1].abs().sum() > 0 and grad[:, 2].abs().sum() == 0


def test_missing_bounds_raise():
    bounds = bounds_from_targets({"volume": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="no bounds for descriptor"):
        shape_descriptor_loss(torch.rand(1, 2, 3, 3), bounds, descriptors=("volume", "spread"))


def test_absent_class_is_pushed_to_zero_volume_only():
    labels = torch.zeros(1, 1, 10, 10, 6, dtype=torch.long)
    labels[0, 0, 2:5, 2:6, 1:4] = 1  # class 2 absent
    probs = torch.full((1, 3, 10, 10, 6), 1.0 / 3.0, dtype=torch.float64, requires_grad=True)
    result = ShapeDescriptorLoss()(probs, labels, return_result=True)
    assert result.active["centroid"].tolist() == [[False, True, False]]
    assert result.active["volume"].tolist() == [[False, True, True]]
    assert not result.satisfied["volume"][0, 2]  # 1/3 of the image is far from absent
    (grad,) = torch.autograd.grad(result.loss, probs)
    assert (grad[:, 2] > 0).all()  # descending the loss lowers class 2 everywhere
    # a small residual soft volume (< 1e-3 of the image) counts as satisfied
    nearly = one_hot_labels(labels, 3, torch.float64) * (1 - 1e-5)
    nearly[:, 2] = 1e-5
    assert ShapeDescriptorLoss()(nearly, labels, return_result=True).satisfied["volume"][0, 2]


def test_skipped_lower_bound_for_non_negative_descriptors():
    # spread target 0 in one axis (a one-voxel-thick slab): lower bound 0 is not enforced
    probs = cube_probs((8, 8, 8), (2, 2, 4), (6, 6, 5))
    values = compute_descriptors(probs, None, ("spread",))
    bounds = bounds_from_targets(values, absolute_margin={"spread": 0.5})
    result = shape_descriptor_loss(probs, bounds, descriptors=("spread",))
    # class 1: 3 upper bounds + 2 lower bounds (the z lower bound -0.5 is skipped)
    z = torch.tensor([-1.0, -1.0, -1.0, -1.0, -0.0 - 1.0], dtype=torch.float64)
    psi = extended_log_barrier(z, 5.0)
    assert result.terms["spread"].item() == pytest.approx(psi.mean().item(), abs=1e-9)


# ----------------------------------------------------------------------------------------
# priors
# ----------------------------------------------------------------------------------------


def _two_boxes(second_size: int) -> torch.Tensor:
    probs = cube_probs((20, 20, 20), (2, 2, 2), (6, 6, 6), num_classes=3)  # class 1: 64 voxels
    lo = 10
    probs[:, 2, lo : lo + second_size, lo : lo + 4, lo : lo + 4] = 1.0
    probs[:, 0, lo : lo + second_size, lo : lo + 4, lo : lo + 4] = 0.0
    return probs


@pytest.mark.parametrize(
    "second_size,low,high,ok",
    [(8, 1.5, 2.5, True), (8, 2.5, 3.0, False), (4, 0.5, 2.0, True), (2, 0.75, 2.0, False)],
)
def test_ratio_prior(second_size, low, high, ok):
    probs = _two_boxes(second_size)  # volume ratio class2/class1 = second_size / 4
    prior = RatioPrior("volume", 2, 1, low, high)
    bounds = DescriptorBounds.unconstrained(1, 3, 3, ("volume",), dtype=torch.float64)
    result = shape_descriptor_loss(probs, bounds, descriptors=("volume",), priors=(prior,))
    assert result.satisfied[prior.name].tolist() == [[True, ok, ok]]
    assert result.active[prior.name].tolist() == [[False, True, True]]
    ratio = second_size / 4
    half = (high - low) / 2
    z = torch.tensor([(low - ratio) / half, (ratio - high) / half], dtype=torch.float64)
    expected = extended_log_barrier(z, 5.0).mean()
    assert result.terms[prior.name].item() == pytest.approx(expected.item(), rel=1e-9)


def test_ratio_prior_component_and_one_sided():
    probs = _two_boxes(8)  # spread ratio along x = (8 voxel std) / (4 voxel std) = sqrt(63/15)
    prior = RatioPrior("spread", 2, 1, -math.inf, 2.0, component=0)
    bounds = DescriptorBounds.unconstrained(1, 3, 3, ("spread",), dtype=torch.float64)
    result = shape_descriptor_loss(probs, bounds, descriptors=("spread",), priors=(prior,))
    assert prior.name == "ratio_spread_0_2_1"
    ratio = math.sqrt((64 - 1) / 12) / math.sqrt((16 - 1) / 12)
    z = (ratio - 2.0) / (0.1 * 2.0)
    expected = extended_log_barrier(torch.tensor(z, dtype=torch.float64), 5.0)
    assert result.terms[prior.name].item() == pytest.approx(expected.item())


def test_ratio_prior_validation():
    with pytest.raises(ValueError, match="low=3.0 > high=2.0"):
        RatioPrior("volume", 1, 2, 3.0, 2.0)
    with pytest.raises(ValueError, match="scalar per class"):
        RatioPrior("volume", 1, 2, 1.0, 2.0, component=0)
    with pytest.raises(ValueError, match="unknown descriptor"):
        RatioPrior("length", 1, 2, 1.0, 2.0)


@pytest.mark.parametrize("offset,tolerance,ok", [(0, 1.0, True), (1, 1.5, True), (3, 2.0, False)])
def test_equal_centroid_prior(offset, tolerance, ok):
    probs = cube_probs((16, 16, 16), (4, 4, 4), (8, 8, 8), num_classes=3)
    probs[:, 2] = torch.roll(probs[:, 1], offset, dims=1)
    probs[:, 0] = (1 - probs[:, 1] - probs[:, 2]).clamp_min(0)
    prior = EqualCentroidPrior(1, 2, tolerance)
    bounds = DescriptorBounds.unconstrained(1, 3, 3, ("volume",), dtype=torch.float64)
    result = shape_descriptor_loss(probs, bounds, descriptors=("volume",), priors=(prior,))
    assert result.satisfied[prior.name][0, 1].item() is ok
    diff = torch.tensor([-offset, 0.0, 0.0], dtype=torch.float64)  # C_1 - C_2
    z = torch.cat([(diff - tolerance) / tolerance, (-diff - tolerance) / tolerance])
    expected = extended_log_barrier(z, 5.0).mean()
    assert result.terms[prior.name].item() == pytest.approx(expected.item())


def test_priors_inactive_when_a_class_is_absent():
    probs = _two_boxes(8)
    volumes = torch.tensor([[1000.0, 64.0, 0.0]], dtype=torch.float64)
    bounds = bounds_from_targets({"volume": volumes})
    prior = RatioPrior("volume", 2, 1, 1.0, 2.0)
    result = shape_descriptor_loss(probs, bounds, descriptors=("volume",), priors=(prior,))
    assert result.terms[prior.name].item() == 0.0
    assert result.satisfied[prior.name].all()


# ----------------------------------------------------------------------------------------
# why scale_mode="half_width": the "natural" units make narrow intervals flat
# ----------------------------------------------------------------------------------------


def test_natural_units_are_flat_for_narrow_intervals_half_width_is_not():
    shape = (40, 40, 40)
    target = cube_probs(shape, (18, 18, 18), (24, 24, 24))
    bounds = bounds_from_targets(compute_descriptors(target, None, ("spread",)))
    pred = cube_probs(shape, (18, 18, 18), (25, 24, 24)).requires_grad_()  # spread_x too large
    grads = {}
    for mode in ("natural", "half_width"):
        result = shape_descriptor_loss(pred, bounds, descriptors=("spread",), scale_mode=mode)
        assert not result.satisfied["spread"][0, 1]
        (grads[mode],) = torch.autograd.grad(result.loss, pred)
    # spread +-10 % of 1.7 voxels in a 40-voxel image: the interval is 0.009 wide in z units,
    # inside the linear zone (1/t^2 = 0.04) of both constraints -> slopes cancel exactly
    assert grads["natural"].abs().max() < 1e-12
    assert grads["half_width"].abs().max() > 1e-3


# ----------------------------------------------------------------------------------------
# precision
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_probs(dtype, device):
    labels = two_ellipsoids((24, 24, 16)).to(device)
    logits = torch.randn(1, 3, 24, 24, 16, device=device).to(dtype).requires_grad_()
    loss_fn = ShapeDescriptorLoss(descriptors=ALL)
    loss = loss_fn(torch.softmax(logits, 1), labels, spacing=(1.0, 1.0, 2.0))
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_float64_loss_stays_float64():
    labels = two_ellipsoids((12, 12, 8))
    probs = torch.softmax(torch.randn(1, 3, 12, 12, 8, dtype=torch.float64), 1)
    assert ShapeDescriptorLoss()(probs, labels).dtype == torch.float64


# ----------------------------------------------------------------------------------------
# optimisation in miniature
# ----------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (badly so on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _optimise(descriptors, steps, seed=0, lr=0.2, labels=None, spacing=(1.0, 1.2, 2.0)):
    torch.manual_seed(seed)
    labels = two_ellipsoids() if labels is None else labels
    loss_fn = ShapeDescriptorLoss(descriptors=descriptors, t=5.0)
    bounds = loss_fn.make_bounds(labels, 3, labels.shape[2:], spacing)  # once, not per step
    logits = (0.01 * torch.randn(1, 3, *labels.shape[2:])).requires_grad_()
    optimiser = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_fn(torch.softmax(logits, 1), bounds, spacing=spacing)
        loss.backward()
        optimiser.step()
    probs = torch.softmax(logits.detach(), 1)
    return probs, loss_fn(probs, labels, spacing=spacing, return_result=True)


def test_free_logits_supervised_by_descriptors_only_satisfy_every_constraint(one_thread):
    _, result = _optimise(("volume", "centroid", "spread"), steps=300)
    for name, ok in result.satisfied.items():
        assert ok[:, 1:].all(), (name, result.values[name])


def _components(mask: np.ndarray) -> int:
    import cc3d

    return int(cc3d.connected_components(mask.astype(np.uint8), connectivity=6).max())


def test_surface_keeps_the_prediction_compact(one_thread):
    labels = two_ellipsoids()
    plain, _ = _optimise(("volume", "centroid", "spread"), steps=250, labels=labels)
    with_surface, _ = _optimise(
        ("volume", "centroid", "spread", "surface"), steps=250, labels=labels
    )
    s_plain = surface(plain, (1.0, 1.2, 2.0))[0, 1:]
    s_surface = surface(with_surface, (1.0, 1.2, 2.0))[0, 1:]
    assert (s_surface < s_plain).all(), (s_surface, s_plain)
    hard_plain = plain.argmax(1)[0].numpy()
    hard_surface = with_surface.argmax(1)[0].numpy()
    for k in (1, 2):
        assert _components(hard_surface == k) <= _components(hard_plain == k)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "descriptors", [("volume", "centroid", "spread"), ("volume", "centroid", "spread", "surface")]
)
def test_optimisation_robust_to_seeds(descriptors, seed, one_thread):
    _, result = _optimise(descriptors, steps=800, seed=seed)
    for name, ok in result.satisfied.items():
        assert ok[:, 1:].all(), (seed, name, result.values[name])
