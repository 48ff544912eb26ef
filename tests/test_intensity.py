"""Intensity descriptors (nnunet_shape.core.intensity) and the intensity-order relation: values by hand,
pyradiomics' first-order Mean / StandardDeviation on binary masks, nnU-Net's z-score units, bounds,
barrier terms through the loss, gradients (gradcheck in float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_shape.core.barrier import extended_log_barrier
from nnunet_shape.core.bounds import DescriptorBounds
from nnunet_shape.core.intensity import (
    INTENSITY_SCALE_FLOOR,
    IntensityBounds,
    IntensityBoundsTerm,
    class_intensity,
    intensity_bounds_from_targets,
    intensity_values,
    zscore_intensity_targets,
)
from nnunet_shape.core.losses import shape_descriptor_loss
from nnunet_shape.core.relations import IntensityOrder


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def psi(z: float, barrier_t: float = 5.0) -> float:
    """The extended log-barrier written out (docs/method.md, section 4)."""
    if z <= -1 / barrier_t**2:
        return -math.log(-z) / barrier_t
    return barrier_t * z - math.log(1 / barrier_t**2) / barrier_t + 1 / barrier_t


def dpsi(z: float, barrier_t: float = 5.0) -> float:
    return -1 / (barrier_t * z) if z <= -1 / barrier_t**2 else barrier_t


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("probs, image, mean, std", [
    # two hard classes of a 4-voxel 1-D image: (0, 0 | 2, 4)
    ([[1, 1, 0, 0], [0, 0, 1, 1]], [[0, 0, 2, 4]], [[0.0], [3.0]], [[0.0], [1.0]]),
    # a second channel: (1, 3 | 5, 5) -> means 2 and 5, standard deviations 1 and 0
    ([[1, 1, 0, 0], [0, 0, 1, 1]], [[0, 0, 2, 4], [1, 3, 5, 5]], [[0.0, 2.0], [3.0, 5.0]],
     [[0.0, 1.0], [1.0, 0.0]]),
    # soft: weights (1, 0.5, 0, 0) on (0, 3, 5, 7): mass 1.5, mean 1.5 / 1.5 = 1,
    # variance (1 (0 - 1)^2 + 0.5 (3 - 1)^2) / 1.5 = 2; the rest (0, 0.5, 1, 1): mass 2.5,
    # mean (1.5 + 5 + 7) / 2.5 = 5.4, variance (0.5 * 2.4^2 + 0.4^2 + 1.6^2) / 2.5 = 2.24
    ([[1, 0.5, 0, 0], [0, 0.5, 1, 1]], [[0, 3, 5, 7]], [[1.0], [5.4]], [[math.sqrt(2.0)], [math.sqrt(2.24)]]),
    # everything half: both classes see the whole image (mean 1, std 1)
    ([[0.5] * 4, [0.5] * 4], [[0, 2, 0, 2]], [[1.0], [1.0]], [[1.0], [1.0]]),
])
def test_class_intensity_by_hand(probs, image, mean, std):
    stats = class_intensity(t([probs]), t([image]))
    torch.testing.assert_close(stats.mean, t([mean]))
    torch.testing.assert_close(stats.std, t([std]))


def test_binary_mask_gives_pyradiomics_first_order_mean_and_population_standard_deviation():
    # pyradiomics: Mean = 1/Np sum X(i); StandardDeviation = sqrt(1/Np sum (X(i) - Mean)^2) (Np, not Np - 1).
    # mask voxels hold 1, 2, 3, 6: Mean 3, squared deviations 4 + 1 + 0 + 9 = 14, StandardDeviation sqrt(14 / 4)
    image = t([[[[1, 9], [2, 9]], [[3, 9], [6, 9]]]])[None]  # (B=1, C=1, 2, 2, 2)
    mask = (image < 9).double()
    probs = torch.cat([1 - mask, mask], dim=1)
    stats = class_intensity(probs, image)
    assert stats.mean[0, 1, 0].item() == pytest.approx(3.0, abs=1e-12)
    assert stats.std[0, 1, 0].item() == pytest.approx(math.sqrt(3.5), abs=1e-12)
    assert stats.std[0, 1, 0].item() != pytest.approx(math.sqrt(14 / 3))  # not the sample (N - 1) estimate
    assert stats.mean[0, 0, 0].item() == pytest.approx(9.0) and stats.std[0, 0, 0].item() == pytest.approx(0.0)


def test_binary_masks_of_a_random_image_equal_numpy_over_the_masked_voxels():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(5, 6, 7))
    image = rng.normal(100.0, 15.0, size=(2, 5, 6, 7))
    probs = torch.nn.functional.one_hot(torch.from_numpy(labels), 3).permute(3, 0, 1, 2)[None].double()
    stats = class_intensity(probs, torch.from_numpy(image)[None])
    for k in range(3):
        for c in range(2):
            voxels = image[c][labels == k]
            assert stats.mean[0, k, c].item() == pytest.approx(voxels.mean(), rel=1e-12)
            assert stats.std[0, k, c].item() == pytest.approx(voxels.std(), rel=1e-10)  # numpy: ddof = 0


def test_raw_intensities_in_float32_keep_their_small_spread():
    # 10000 + (0, 1, 2, 3): E[I^2] - E[I]^2 uncentred in float32 is ~1e8 +- 12, i.e. noise; centred it is exact
    image = torch.tensor([[[10000.0, 10001.0, 10002.0, 10003.0]]])
    probs = torch.ones(1, 1, 4)
    stats = class_intensity(probs, image)
    assert stats.mean.dtype == torch.float32
    assert stats.mean.item() == pytest.approx(10001.5, abs=1e-3)
    assert stats.std.item() == pytest.approx(math.sqrt(1.25), abs=1e-4)


def test_offset_and_scale_of_the_image():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64), 1)
    image = torch.randn(2, 2, 4, 5, generator=generator, dtype=torch.float64)
    base = class_intensity(probs, image)
    moved = class_intensity(probs, 3.0 * image - 7.0)
    torch.testing.assert_close(moved.mean, 3.0 * base.mean - 7.0)
    torch.testing.assert_close(moved.std, 3.0 * base.std)


def test_empty_class_is_a_finite_placeholder_with_finite_gradients():
    probs = t([[[1, 1, 1, 1], [0, 0, 0, 0]]]).requires_grad_()
    image = t([[[0, 2, 4, 6]]])
    stats = class_intensity(probs, image)
    assert stats.mean[0, 1, 0].item() == pytest.approx(3.0)  # the image mean
    assert stats.std[0, 1, 0].item() == 0.0
    (stats.mean.sum() + stats.std.sum()).backward()
    assert torch.isfinite(probs.grad).all()


def test_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 3, 4, generator=generator, dtype=torch.float64)
    logits[:, 2] -= 30.0  # an almost empty class
    image = (torch.randn(2, 2, 3, 4, generator=generator, dtype=torch.float64) * 5 + 40).requires_grad_()
    logits.requires_grad_()

    def mean_and_std(lg, img):
        stats = class_intensity(torch.softmax(lg, 1), img)
        return stats.mean, stats.std

    assert torch.autograd.gradcheck(mean_and_std, (logits, image))


@pytest.mark.parametrize("probs, image", [
    (torch.ones(1, 2, 4), torch.ones(1, 1, 5)),
    (torch.ones(1, 2, 4), torch.ones(2, 1, 4)),
    (torch.ones(2, 4), torch.ones(2, 4)),
])
def test_shape_errors_name_both_shapes(probs, image):
    with pytest.raises(ValueError, match="class_intensity"):
        class_intensity(probs, image)


# -------------------------------------------------------------------------------- z-score units


def test_zscore_targets_by_hand():
    targets = {"mean": (np.array([[np.nan], [90.0]]), np.array([[np.nan], [130.0]])),
               "std": (np.array([[np.nan], [5.0]]), np.array([[np.nan], [10.0]]))}
    out = zscore_intensity_targets(targets, np.array([100.0]), np.array([20.0]))
    np.testing.assert_allclose(out["mean"][0], [[np.nan], [-0.5]])
    np.testing.assert_allclose(out["mean"][1], [[np.nan], [1.5]])
    np.testing.assert_allclose(out["std"][0], [[np.nan], [0.25]])
    np.testing.assert_allclose(out["std"][1], [[np.nan], [0.5]])


def test_zscore_targets_are_what_nnunets_zscore_normalization_produces():
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    rng = np.random.default_rng(7)
    raw = rng.normal(300.0, 40.0, size=(6, 7, 8))
    labels = rng.integers(0, 3, size=raw.shape)
    raw[labels == 2] += 150.0
    normalised = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={},
                                     target_dtype=np.float64).run(raw.copy())
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), 3).permute(3, 0, 1, 2)[None].double()
    raw_stats = class_intensity(one_hot, torch.from_numpy(raw)[None, None])
    seen = class_intensity(one_hot, torch.from_numpy(normalised)[None, None])
    pairs = {s: (v[0].numpy(), v[0].numpy()) for s, v in (("mean", raw_stats.mean), ("std", raw_stats.std))}
    converted = zscore_intensity_targets(pairs, np.array([raw.mean()]), np.array([raw.std()]))
    np.testing.assert_allclose(converted["mean"][0], seen.mean[0].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(converted["std"][0], seen.std[0].numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------------------ bounds


def test_bounds_from_targets_by_hand():
    tau = t([[[0.0], [2.0], [0.5], [-3.0]]])  # (B=1, K=4, C=1)
    std = t([[[0.0], [0.05], [1.0], [2.0]]])
    bounds = intensity_bounds_from_targets({"mean": tau, "std": std})
    # half-width max(0.1 |tau|, 0.1)
    torch.testing.assert_close(bounds.lower["mean"], t([[[-0.1], [1.8], [0.4], [-3.3]]]))
    torch.testing.assert_close(bounds.upper["mean"], t([[[0.1], [2.2], [0.6], [-2.7]]]))
    # a standard deviation's lower bound never goes below 0
    torch.testing.assert_close(bounds.lower["std"], t([[[0.0], [0.0], [0.9], [1.8]]]))
    torch.testing.assert_close(bounds.upper["std"], t([[[0.1], [0.15], [1.1], [2.2]]]))


def test_bounds_keep_ranges_widen_exact_values_and_drop_absent_classes():
    lower = t([[[1.0], [1.0], [math.nan]]])
    upper = t([[[1.0], [4.0], [2.0]]])
    present = torch.tensor([[True, True, False]])
    bounds = intensity_bounds_from_targets({"mean": (lower, upper)}, present, relative_margin=0.5,
                                           absolute_margin=0.0)
    torch.testing.assert_close(bounds.lower["mean"][0, :2], t([[0.5], [1.0]]))
    torch.testing.assert_close(bounds.upper["mean"][0, :2], t([[1.5], [4.0]]))
    assert torch.isnan(bounds.lower["mean"][0, 2]).all() and torch.isnan(bounds.upper["mean"][0, 2]).all()


def test_intensity_bounds_reject_unknown_statistics_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown statistic 'median'"):
        IntensityBounds({"median": torch.zeros(1, 2, 1)}, {"median": torch.zeros(1, 2, 1)})
    with pytest.raises(ValueError, match="must both be"):
        IntensityBounds({"mean": torch.zeros(2, 1)}, {"mean": torch.zeros(2, 1)})
    with pytest.raises(ValueError, match="only one of lower/upper"):
        IntensityBounds({"mean": torch.zeros(1, 2, 1)}, {})


# ------------------------------------------------------------------------- barrier term in the loss

SPLIT = t([[[1, 1, 0, 0], [0, 0, 1, 1]]])  # class 1 covers (2, 4): mean 3, std 1
IMAGE = t([[[0, 0, 2, 4]]])
NO_SHAPE = DescriptorBounds(lower={}, upper={})


def loss_with(terms, probs=SPLIT, image=IMAGE, reduction="mean", shape_bounds=NO_SHAPE):
    return shape_descriptor_loss(probs, shape_bounds, descriptors=(), priors=terms, reduction=reduction,
                                 values=intensity_values(probs, image))


def test_bounds_term_value_by_hand():
    # class 1: mean 3 against [1, 2]: scale 0.5, z_low = (1 - 3) / 0.5 = -4, z_up = (3 - 2) / 0.5 = 2
    bounds = IntensityBounds({"mean": t([[[math.nan], [1.0]]])}, {"mean": t([[[math.nan], [2.0]]])})
    result = loss_with([IntensityBoundsTerm(bounds)])
    expected = (psi(-4.0) + psi(2.0)) / 2  # "mean": the mean of the two active terms
    assert result.terms["intensity_mean"].item() == pytest.approx(expected, rel=1e-12)
    assert result.loss.item() == pytest.approx(expected, rel=1e-12)
    assert result.satisfied["intensity_mean"].tolist() == [[True, False]]
    assert result.active["intensity_mean"].tolist() == [[False, True]]
    assert loss_with([IntensityBoundsTerm(bounds)], reduction="sum").loss.item() == pytest.approx(2 * expected)


def test_bounds_term_on_the_standard_deviation_and_its_satisfaction():
    # std 1 inside [0.5, 1.5]: z = (0.5 - 1) / 0.5 = -1 on both sides, psi(-1) = 0
    bounds = IntensityBounds({"std": t([[[math.nan], [0.5]]])}, {"std": t([[[math.nan], [1.5]]])})
    result = loss_with([IntensityBoundsTerm(bounds, "std")])
    assert result.terms["intensity_std"].item() == pytest.approx(0.0, abs=1e-12)
    assert result.satisfied["intensity_std"].tolist() == [[True, True]]
    # a lower bound of 0 is skipped, the upper one alone is active: one-sided scale 10 % of 0.8, floored at 0.1
    bounds = IntensityBounds({"std": t([[[math.nan], [0.0]]])}, {"std": t([[[math.nan], [0.8]]])})
    result = loss_with([IntensityBoundsTerm(bounds, "std")])
    assert result.terms["intensity_std"].item() == pytest.approx(psi((1.0 - 0.8) / INTENSITY_SCALE_FLOOR), rel=1e-12)
    assert result.satisfied["intensity_std"].tolist() == [[True, False]]


def test_bounds_term_skips_background_and_absent_classes():
    bounds = IntensityBounds({"mean": t([[[5.0], [5.0]]])}, {"mean": t([[[6.0], [6.0]]])})
    result = loss_with([IntensityBoundsTerm(bounds)])
    assert result.active["intensity_mean"].tolist() == [[False, True]]
    result = loss_with([IntensityBoundsTerm(bounds, include_background=True)])
    assert result.active["intensity_mean"].tolist() == [[True, True]]
    absent = IntensityBounds(bounds.lower, bounds.upper, present=torch.tensor([[True, False]]))
    result = loss_with([IntensityBoundsTerm(absent)])
    assert result.active["intensity_mean"].tolist() == [[False, False]]
    assert result.loss.item() == 0.0
    # the shape bounds' presence (volume upper bound 0) switches it off too
    shape = DescriptorBounds(lower={"volume": t([[0.0, 0.0]])}, upper={"volume": t([[10.0, 0.0]])})
    result = loss_with([IntensityBoundsTerm(bounds)], shape_bounds=shape)
    assert result.active["intensity_mean"].tolist() == [[False, False]]


def test_bounds_term_needs_the_values():
    bounds = IntensityBounds({"mean": t([[[1.0], [1.0]]])}, {"mean": t([[[2.0], [2.0]]])})
    with pytest.raises(ValueError, match="values=intensity_values"):
        shape_descriptor_loss(SPLIT, NO_SHAPE, descriptors=(), priors=[IntensityBoundsTerm(bounds)])
    with pytest.raises(ValueError, match="bounds have no 'std'"):
        IntensityBoundsTerm(bounds, "std")


def test_bounds_term_pulls_the_class_mean_into_its_band():
    # gradient descent on the logits moves class 1's soft mean from 3 into [0.5, 1.5]
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 6, 6, generator=generator, dtype=torch.float64) * 4
    logits = torch.zeros(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    bounds = IntensityBounds({"mean": t([[[math.nan], [0.5]]])}, {"mean": t([[[math.nan], [1.5]]])})
    optimiser = torch.optim.Adam([logits], lr=0.1)
    for _ in range(200):
        optimiser.zero_grad()
        probs = torch.softmax(logits, 1)
        loss_with([IntensityBoundsTerm(bounds)], probs, image).loss.backward()
        optimiser.step()
    mean = class_intensity(torch.softmax(logits, 1), image).mean[0, 1, 0].item()
    assert 0.5 <= mean <= 1.5


# --------------------------------------------------------------------------------- intensity order


def test_intensity_order_value_and_gradient_by_hand():
    # means (0 | 3): "class 0 brighter than class 1 by 0.5": difference -3, z = (0.5 - (-3)) / 0.1 = 35
    mean = t([[[0.0], [3.0]]]).requires_grad_()
    relation = IntensityOrder(brighter=0, darker=1, min_difference=0.5)
    result = shape_descriptor_loss(SPLIT, NO_SHAPE, descriptors=(), priors=[relation],
                                   values={"intensity_mean": mean})
    assert result.terms[relation.name].item() == pytest.approx(psi(35.0), rel=1e-12)
    assert result.satisfied[relation.name].tolist() == [[False, False]]
    result.loss.backward()
    # d psi / d diff = psi'(z) * (-1 / 0.1); d diff / d mean = (+1 brighter, -1 darker)
    expected = dpsi(35.0) / 0.1
    torch.testing.assert_close(mean.grad, t([[[-expected], [expected]]]))


def test_intensity_order_satisfied_and_its_scale():
    relation = IntensityOrder(brighter=1, darker=0)  # 3 - 0 = 3 >= 0: scale 0.1 (floor), z = -30
    result = loss_with([relation])
    assert result.terms[relation.name].item() == pytest.approx(psi(-30.0), rel=1e-12)
    assert result.satisfied[relation.name].tolist() == [[True, True]]
    tight = IntensityOrder(brighter=1, darker=0, min_difference=2.5)  # scale 10 % of 2.5 = 0.25
    assert tight.name == "relation_intensity_order_1_0_c0"
    result = loss_with([tight])
    assert result.terms[tight.name].item() == pytest.approx(psi((2.5 - 3.0) / 0.25), rel=1e-12)
    assert extended_log_barrier(torch.tensor(-2.0), 5.0).item() == pytest.approx(psi(-2.0))


def test_intensity_order_on_a_second_channel_and_inactive_for_absent_classes():
    image = t([[[0, 0, 2, 4], [9, 9, 1, 1]]])  # channel 1: class 0 mean 9, class 1 mean 1
    relation = IntensityOrder(brighter=0, darker=1, channel=1, min_difference=1.0)
    result = loss_with([relation], image=image)
    assert result.satisfied[relation.name].tolist() == [[True, True]]
    assert loss_with([IntensityOrder(1, 0, channel=1)], image=image).satisfied[
        "relation_intensity_order_1_0_c1"].tolist() == [[False, False]]
    shape = DescriptorBounds(lower={"volume": t([[0.0, 0.0]])}, upper={"volume": t([[10.0, 0.0]])})
    result = loss_with([IntensityOrder(1, 0, channel=1)], image=image, shape_bounds=shape)
    assert result.active["relation_intensity_order_1_0_c1"].tolist() == [[False, False]]
    assert result.loss.item() == 0.0
    with pytest.raises(ValueError, match="channel 2, but the image has 2 channel"):
        loss_with([IntensityOrder(1, 0, channel=2)], image=image)


@pytest.mark.parametrize("kwargs, match", [
    ({"brighter": 1, "darker": 1}, "must differ"),
    ({"brighter": 1, "darker": 2, "min_difference": -0.5}, "min_difference must be finite and >= 0"),
    ({"brighter": 1, "darker": 2, "min_difference": math.inf}, "min_difference must be finite and >= 0"),
    ({"brighter": 1, "darker": 2, "channel": -1}, "channel must be >= 0"),
])
def test_intensity_order_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IntensityOrder(**kwargs)


def test_intensity_order_needs_the_values():
    with pytest.raises(ValueError, match="values=intensity_values"):
        shape_descriptor_loss(SPLIT, NO_SHAPE, descriptors=(), priors=[IntensityOrder(1, 0)])


def test_gradcheck_of_the_loss_with_intensity_terms_in_float64():
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(2, 2, 3, 4, generator=generator, dtype=torch.float64)
    bounds = intensity_bounds_from_targets({"mean": torch.randn(2, 3, 2, generator=generator, dtype=torch.float64),
                                            "std": torch.rand(2, 3, 2, generator=generator, dtype=torch.float64)})
    terms = [IntensityBoundsTerm(bounds), IntensityBoundsTerm(bounds, "std"),
             IntensityOrder(1, 2, channel=1, min_difference=0.3)]
    logits = torch.randn(2, 3, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)

    def loss(lg):
        probs = torch.softmax(lg, 1)
        return loss_with(terms, probs, image).loss

    assert torch.autograd.gradcheck(loss, (logits,))
