"""Image-aware terms (nnunet_shape.core.image_terms): hand-computed values, invariances, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_shape.core.descriptors import surface
from nnunet_shape.core.image_terms import (
    EdgeAwareBoundaryLoss,
    PredictionEntropyLoss,
    RegionHomogeneityLoss,
    edge_aware_boundary,
    prediction_entropy,
    region_homogeneity,
)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# one case, a 1-D image of 4 voxels, two classes: (B, K, X) / (B, C, X)
SPLIT = t([[[1, 1, 0, 0], [0, 0, 1, 1]]])
HALF = t([[[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]])


@pytest.mark.parametrize("probs, image, expected", [
    # class means 0 and 3: deviations 0, 0 | -1, +1
    (SPLIT, t([[[0, 0, 2, 4]]]), [[0.0, 2.0]]),
    # a constant second channel adds nothing
    (SPLIT, t([[[0, 0, 2, 4], [1, 1, 1, 1]]]), [[0.0, 2.0]]),
    # second channel (0, 2 | 0, 2): means 1 and 1, deviations 1 each, summed over channels
    (SPLIT, t([[[0, 0, 2, 4], [0, 2, 0, 2]]]), [[2.0, 4.0]]),
    # soft: both means are 1 (the image mean), each class 0.5 * (1 + 1 + 1 + 1)
    (HALF, t([[[0, 2, 0, 2]]]), [[2.0, 2.0]]),
])
def test_region_homogeneity_hand_computed(probs, image, expected):
    value = region_homogeneity(probs, image, reduction="none", eps=0.0)
    torch.testing.assert_close(value, t(expected))
    torch.testing.assert_close(region_homogeneity(probs, image, reduction="none", normalize=True, eps=0.0),
                               t(expected) / 4)
    assert region_homogeneity(probs, image, reduction="sum", eps=0.0).item() == pytest.approx(sum(expected[0]))


def test_region_homogeneity_is_zero_on_a_piecewise_constant_image_with_its_partition():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 6, 5, 4), generator=generator)
    probs = torch.nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).double()
    levels = t([[-1.0, 0.5, 2.0], [3.0, 3.0, -2.0]])  # two channels, a value per class
    image = torch.stack([levels[c][labels] for c in range(2)], dim=1)
    assert region_homogeneity(probs, image, reduction="none").abs().max().item() < 1e-9
    # renaming the classes keeps the partition (and the energy); another partition costs more
    assert region_homogeneity(probs[:, [1, 2, 0]], image).item() < 1e-9
    assert region_homogeneity(probs.roll(1, dims=2), image).item() > 1.0


def test_region_homogeneity_ignores_an_intensity_offset():
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 3, 4, 5, 3, generator=generator, dtype=torch.float64), 1)
    image = torch.randn(2, 2, 4, 5, 3, generator=generator, dtype=torch.float64)
    assert region_homogeneity(probs, image + 7.0, eps=0.0).item() == \
        pytest.approx(region_homogeneity(probs, image, eps=0.0).item(), rel=1e-9)


def test_edge_aware_boundary_hand_computed_1d():
    # the class boundary lies on the intensity step 0 -> 2: weight exp(-2^2 / 2) per class
    image = t([[[0, 0, 2, 2]]])
    value = edge_aware_boundary(SPLIT, image, sigma=1.0, reduction="none")
    torch.testing.assert_close(value, t([[math.exp(-2.0), math.exp(-2.0)]]))
    # boundary inside a flat region costs the full face
    flat = edge_aware_boundary(SPLIT, t([[[0, 0, 0, 0]]]), sigma=1.0, reduction="none")
    torch.testing.assert_close(flat, t([[1.0, 1.0]]))
    # normalised by the 3 neighbour pairs
    torch.testing.assert_close(edge_aware_boundary(SPLIT, image, 1.0, reduction="none", normalize=True),
                               t([[math.exp(-2.0) / 3, math.exp(-2.0) / 3]]))


def test_edge_aware_boundary_counts_face_areas_in_mm2():
    # (B, K, 2, 1, 1): one face normal to axis 0, area 3 mm x 5 mm; axes of size 1 have no faces
    probs = t([[[[[1.0]], [[0.0]]], [[[0.0]], [[1.0]]]]])
    image = torch.zeros(1, 1, 2, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(edge_aware_boundary(probs, image, 1.0, (2.0, 3.0, 5.0), reduction="none"),
                               t([[15.0, 15.0]]))
    # two cases with their own spacing
    value = edge_aware_boundary(probs.expand(2, -1, -1, -1, -1), image.expand(2, -1, -1, -1, -1), 1.0,
                                t([[2.0, 3.0, 5.0], [1.0, 1.0, 2.0]]), reduction="none")
    torch.testing.assert_close(value, t([[15.0, 15.0], [2.0, 2.0]]))


def test_edge_aware_boundary_on_a_constant_image_is_the_soft_surface():
    generator = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(2, 3, 5, 4, 6, generator=generator, dtype=torch.float64), 1)
    image = torch.full((2, 1, 5, 4, 6), 3.0, dtype=torch.float64)
    spacing = (1.5, 0.7, 2.0)
    assert edge_aware_boundary(probs, image, 0.5, spacing, reduction="none") == \
        pytest.approx(surface(probs, spacing), rel=1e-9)
    # and a contrast anywhere only lowers it
    assert (edge_aware_boundary(probs, torch.randn(2, 1, 5, 4, 6, generator=generator, dtype=torch.float64), 0.5,
                                spacing, reduction="none") < surface(probs, spacing)).all()


@pytest.mark.parametrize("probs, multilabel, expected", [
    (t([[[0.5], [0.5]]]), False, math.log(2.0)),
    (t([[[1.0], [0.0]]]), False, 0.0),
    (t([[[0.25, 1.0], [0.25, 0.0], [0.5, 0.0]]]), False, -2 * 0.25 * math.log(0.25) - 0.5 * math.log(0.5)),
    (t([[[0.5]]]), True, math.log(2.0)),
    (t([[[0.5], [1.0]]]), True, math.log(2.0)),
])
def test_prediction_entropy_hand_computed(probs, multilabel, expected):
    assert prediction_entropy(probs, reduction="none", multilabel=multilabel).tolist() == pytest.approx([expected])


def test_prediction_entropy_normalised_is_1_for_uniform_and_0_for_one_hot():
    uniform = torch.full((2, 4, 3, 3, 3), 0.25, dtype=torch.float64)
    assert prediction_entropy(uniform, normalize=True, reduction="none").tolist() == pytest.approx([1.0, 1.0])
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 3, 3, 3)), 4).permute(0, 4, 1, 2, 3).double()
    assert prediction_entropy(one_hot, normalize=True).item() == pytest.approx(0.0, abs=1e-9)


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 3, 4, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    image = torch.randn(2, 2, 3, 4, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    spacing = t([[1.0, 2.0, 0.5], [1.5, 1.0, 1.0]])
    assert torch.autograd.gradcheck(lambda z, i: region_homogeneity(torch.softmax(z, 1), i, normalize=True),
                                    (logits, image))
    assert torch.autograd.gradcheck(
        lambda z, i: edge_aware_boundary(torch.softmax(z, 1), i, 0.7, spacing, normalize=True), (logits, image))
    assert torch.autograd.gradcheck(lambda z: prediction_entropy(torch.softmax(z, 1), normalize=True), (logits,))
    assert torch.autograd.gradcheck(lambda z: prediction_entropy(torch.sigmoid(z), multilabel=True), (logits,))


def test_modules_call_the_functions():
    generator = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(2, 3, 4, 4, 4, generator=generator), 1)
    image = torch.randn(2, 1, 4, 4, 4, generator=generator)
    assert RegionHomogeneityLoss()(probs, image) == region_homogeneity(probs, image, normalize=True)
    assert EdgeAwareBoundaryLoss(0.3)(probs, image, (1, 2, 3)) == \
        edge_aware_boundary(probs, image, 0.3, (1, 2, 3), normalize=True)
    assert PredictionEntropyLoss()(probs) == prediction_entropy(probs, normalize=True)


@pytest.mark.parametrize("call, match", [
    (lambda: region_homogeneity(torch.rand(1, 2, 4, 4), torch.rand(1, 1, 4, 5)), "spatial shape"),
    (lambda: region_homogeneity(torch.rand(1, 2), torch.rand(1, 1)), "at least one spatial axis"),
    (lambda: region_homogeneity(torch.rand(1, 2, 4), torch.rand(1, 1, 4), reduction="avg"), "reduction"),
    (lambda: edge_aware_boundary(torch.rand(1, 2, 4), torch.rand(1, 1, 4), sigma=0.0), "sigma must be > 0"),
    (lambda: edge_aware_boundary(torch.rand(2, 2, 4), torch.rand(1, 1, 4), sigma=1.0), "batch size"),
])
def test_errors_name_the_function_and_the_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()
