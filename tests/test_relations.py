"""Relation constraints (nnunet_shape.core.relations): values by hand, gradients, loss plug-in."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from nnunet_shape.core.barrier import extended_log_barrier
from nnunet_shape.core.bounds import DescriptorBounds
from nnunet_shape.core.losses import shape_descriptor_loss
from nnunet_shape.core.priors import PriorContext
from nnunet_shape.core.relations import CentroidOffset, DescriptorRatio, NestedCentroid, relation_penalties

T = 5.0


def _ctx(values, present=None, spacing=(1.0, 1.0), extent=(10.0, 20.0), scale_mode="half_width"):
    batch, classes = values["centroid"].shape[:2] if "centroid" in values else values["volume"].shape[:2]
    if present is None:
        present = torch.ones(batch, classes, dtype=torch.bool)
    return PriorContext(values, present, torch.tensor([spacing], dtype=torch.float64),
                        torch.tensor([extent], dtype=torch.float64), T, scale_mode)


def psi(z):
    return float(extended_log_barrier(torch.tensor(z, dtype=torch.float64), T))


def test_centroid_offset_values_by_hand():
    # class 1 at (2, 3), class 2 at (7, 1): offset 2 - 1 = (5, -2)
    c = torch.tensor([[[0.0, 0.0], [2.0, 3.0], [7.0, 1.0]]], dtype=torch.float64)
    rel = CentroidOffset(1, 2, (4.0, math.nan), (8.0, -1.0))
    pen = rel.penalty(_ctx({"centroid": c}))
    # axis 0: [4, 8], half-width 2 -> z_low = (4 - 5) / 2, z_up = (5 - 8) / 2
    # axis 1: only high = -1, one-sided scale 0.1 * 1 floored at 0.5 -> z_up = (-2 + 1) / 0.5
    assert pen.active.tolist() == [[True, False, True, True]]
    active_psi = pen.psi[pen.active].tolist()
    assert active_psi == pytest.approx([psi(-0.5), psi(-1.5), psi(-2.0)])
    assert pen.satisfied.tolist() == [[True, True, True]]
    assert pen.involved.tolist() == [[False, True, True]]


def test_centroid_offset_violated_and_absent():
    c = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [9.0, 0.0]], [[0.0, 0.0], [0.0, 0.0], [9.0, 0.0]]],
                     dtype=torch.float64)
    rel = CentroidOffset(1, 2, (4.0, -1.0), (8.0, 1.0))
    present = torch.tensor([[True, True, True], [True, True, False]])
    pen = rel.penalty(_ctx({"centroid": c}, present))
    # case 0: axis 0 offset 9 > 8 -> z_up = (9 - 8) / 2 = 0.5
    assert float(pen.psi[0, 2]) == pytest.approx(psi(0.5))
    assert pen.satisfied[0].tolist() == [True, False, False]
    # case 1: class 2 absent -> nothing active, satisfied
    assert not pen.active[1].any() and pen.satisfied[1].all() and not pen.involved[1].any()


def test_volume_and_spread_ratio_values_by_hand():
    v = torch.tensor([[5.0, 10.0, 25.0]], dtype=torch.float64)
    s = torch.tensor([[[1.0, 1.0], [2.0, 4.0], [3.0, 2.0]]], dtype=torch.float64)
    vol = DescriptorRatio("volume", 2, 1, (2.0,), (3.0,))  # 25 / 10 = 2.5, half-width 0.5
    pen = vol.penalty(_ctx({"volume": v}))
    assert pen.psi[0].tolist() == pytest.approx([psi(-1.0), psi(-1.0)])
    spr = DescriptorRatio("spread", 2, 1, (1.0, math.nan), (1.2, 0.4))  # (1.5, 0.5)
    pen = spr.penalty(_ctx({"spread": s, "centroid": s}))
    # axis 0: [1, 1.2] half 0.1: z_low = (1 - 1.5)/0.1 = -5, z_up = (1.5 - 1.2)/0.1 = 3
    # axis 1: high 0.4 one-sided: scale 0.04 -> z_up = (0.5 - 0.4)/0.04 = 2.5
    assert pen.active.tolist() == [[True, False, True, True]]
    assert pen.psi[pen.active].tolist() == pytest.approx([psi(-5.0), psi(3.0), psi(2.5)])
    assert pen.satisfied.tolist() == [[True, False, False]]


def test_nested_centroid_values_by_hand():
    c = torch.tensor([[[0.0, 0.0], [4.0, 4.0], [5.0, 7.0]]], dtype=torch.float64)
    s = torch.tensor([[[0.0, 0.0], [2.0, 2.0], [1.0, 1.0]]], dtype=torch.float64)
    rel = NestedCentroid(inner=2, outer=1, factor=1.5)  # |d| = (1, 3) vs reach (3, 3)
    pen = rel.penalty(_ctx({"centroid": c, "spread": s}))
    # scale = max(0.1 * extent, 0.5 * spacing) = (1, 2)
    assert pen.psi[0].tolist() == pytest.approx([psi(-2.0), psi(0.0), psi(-4.0), psi(-3.0)])
    assert pen.satisfied.tolist() == [[True, True, True]]  # |3| <= 3 on the boundary
    rel = NestedCentroid(inner=2, outer=1, factor=1.0)
    assert rel.penalty(_ctx({"centroid": c, "spread": s})).satisfied.tolist() == [[True, False, False]]


@pytest.mark.parametrize("bad", [
    lambda: CentroidOffset(1, 1, (0.0,), (1.0,)),
    lambda: CentroidOffset(1, 2, (2.0, 0.0), (1.0, 1.0)),
    lambda: CentroidOffset(1, 2, (0.0,), (1.0, 2.0)),
    lambda: DescriptorRatio("centroid", 1, 2, (0.0,), (1.0,)),
    lambda: DescriptorRatio("volume", 1, 2, (0.0, 0.0), (1.0, 1.0)),
    lambda: NestedCentroid(1, 2, 0.0),
])
def test_invalid_relations_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


def _probs(seed=0, shape=(2, 3, 6, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64), 1).requires_grad_(True)


@pytest.mark.parametrize("relation", [
    CentroidOffset(1, 2, (-1.0, math.nan), (1.5, 0.5)),
    DescriptorRatio("volume", 2, 1, (0.5,), (1.5,)),
    DescriptorRatio("spread", 1, 2, (0.9, 0.8), (1.1, math.inf)),
    NestedCentroid(1, 2, 0.5),
])
def test_gradcheck_through_the_loss(relation):
    probs = _probs()
    spacing = torch.tensor([1.0, 1.5], dtype=torch.float64)
    bounds = DescriptorBounds.unconstrained(1, 3, 2, ("volume",), dtype=torch.float64)

    def f(p):
        return shape_descriptor_loss(p, bounds, spacing, t=T, descriptors=("volume",), priors=(relation,)).loss

    assert f(probs).abs() > 0  # the relation contributes
    assert torch.autograd.gradcheck(f, (probs,), eps=1e-6, atol=1e-5)


def test_relations_plug_into_the_loss_terms():
    probs = _probs(1).detach()
    bounds = DescriptorBounds.unconstrained(1, 3, 2, ("volume",), dtype=torch.float64)
    relations = (CentroidOffset(1, 2, (-100.0, -100.0), (100.0, 100.0)), DescriptorRatio("volume", 2, 1, (50.0,),
                                                                                         (60.0,)))
    result = shape_descriptor_loss(probs, bounds, descriptors=("volume",), priors=relations)
    assert set(result.terms) >= {r.name for r in relations}
    assert result.satisfied[relations[0].name].all()
    assert not result.satisfied[relations[1].name][:, 1:].any()
    assert result.active[relations[1].name][:, 1:].all()


def test_relations_of_one_kind_together_equal_each_alone():
    """relation_penalties evaluates R relations of one kind in one pass: each result is that
    relation's own penalty; kinds do not mix; only offsets and ratios take per-sample bounds."""
    torch.manual_seed(1)
    values = {"centroid": torch.randn(2, 4, 2, dtype=torch.float64) * 5,
              "spread": torch.rand(2, 4, 2, dtype=torch.float64) + 1,
              "volume": torch.rand(2, 4, dtype=torch.float64) * 50 + 5}
    present = torch.tensor([[True, True, True, True], [True, True, False, True]])
    ctx = _ctx(values, present)
    for relations in (
        [CentroidOffset(1, 2, (-3.0, math.nan), (3.0, 1.0)), CentroidOffset(3, 1, (0.0, -2.0), (math.inf, 2.0))],
        [DescriptorRatio("spread", 2, 1, (0.5, 0.5), (2.0, 2.0)),
         DescriptorRatio("spread", 1, 3, (1.0, 0.1), (1.5, 9.0))],
        [DescriptorRatio("volume", 2, 1, (0.5,), (2.0,)), DescriptorRatio("volume", 3, 2, (1.0,), (4.0,))],
        [NestedCentroid(2, 1, 0.5), NestedCentroid(3, 1, 2.0)],
    ):
        together = relation_penalties(relations, ctx)
        for relation, pen in zip(relations, together):
            alone = relation.penalty(ctx)
            torch.testing.assert_close(pen.psi, alone.psi)
            for field in ("active", "satisfied", "involved"):
                assert torch.equal(getattr(pen, field), getattr(alone, field)), (relation, field)
    with pytest.raises(ValueError, match="one kind only"):
        relation_penalties([DescriptorRatio("volume", 2, 1, (0.5,), (2.0,)),
                            DescriptorRatio("spread", 2, 1, (0.5, 0.5), (2.0, 2.0))], ctx)
    with pytest.raises(ValueError, match="no bounds to replace"):
        relation_penalties([NestedCentroid(2, 1)], ctx, (torch.zeros(2, 1, 2), torch.ones(2, 1, 2)))
    with pytest.raises(ValueError, match=r"per-sample bounds must be \(B, 1, 2\)"):
        CentroidOffset(1, 2, (0.0, 0.0), (1.0, 1.0)).penalty(ctx, (torch.zeros(2, 3), torch.ones(2, 3)))


@pytest.mark.parametrize("make", [
    lambda: CentroidOffset(1, 2, (-1.0, 0.0), (1.0, 3.0)),
    lambda: DescriptorRatio("spread", 2, 1, (0.5, 0.8), (2.0, 1.5)),
])
def test_per_sample_bounds_are_each_samples_own(make):
    relation = make()
    values = {"centroid": torch.randn(2, 3, 2, dtype=torch.float64) * 3,
              "spread": torch.rand(2, 3, 2, dtype=torch.float64) + 1}
    ctx = _ctx(values)
    low = torch.tensor([relation.low, [v - 1 for v in relation.low]], dtype=torch.float64)
    high = torch.tensor([relation.high, [v + 2 for v in relation.high]], dtype=torch.float64)
    pen = relation.penalty(ctx, (low, high))
    for b in range(2):
        own = dataclasses.replace(relation, low=tuple(low[b].tolist()), high=tuple(high[b].tolist()))
        sub = _ctx({k: v[b:b + 1] for k, v in values.items()})
        torch.testing.assert_close(pen.psi[b:b + 1], own.penalty(sub).psi)
