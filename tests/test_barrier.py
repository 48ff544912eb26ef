"""Specification of nnunet_shape.core.barrier."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_shape.core.barrier import BarrierSchedule, ExtendedLogBarrier, extended_log_barrier


def by_hand(z: float, t: float) -> float:
    if z <= -1.0 / t**2:
        return -math.log(-z) / t
    return t * z - math.log(1.0 / t**2) / t + 1.0 / t


@pytest.mark.parametrize(
    "z,t,expected",
    [
        (-1.0, 5.0, 0.0),  # log branch: -(1/5) log 1
        (-math.e, 1.0, -1.0),  # log branch: -log e
        (-0.5, 2.0, -math.log(0.5) / 2.0),  # log branch (threshold -0.25)
        (0.0, 5.0, (2 * math.log(5.0) + 1) / 5.0),  # linear branch at 0
        (1.0, 5.0, 5.0 + (2 * math.log(5.0) + 1) / 5.0),  # linear branch, infeasible
        (-0.01, 5.0, -0.05 + (2 * math.log(5.0) + 1) / 5.0),  # linear (threshold -0.04)
        (-0.04, 5.0, -math.log(0.04) / 5.0),  # exactly at the threshold
        (3.0, 1.0, 3.0 + 1.0),  # t = 1: log(1/t^2) = 0
    ],
)
def test_formula_values(z, t, expected):
    got = extended_log_barrier(torch.tensor(z, dtype=torch.float64), t)
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert by_hand(z, t) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("t", [0.5, 1.0, 5.0, 37.0])
def test_continuity_and_slope_at_threshold(t):
    threshold = -1.0 / t**2
    eps = 1e-7 * abs(threshold)
    z = torch.tensor([threshold - eps, threshold, threshold + eps], dtype=torch.float64)
    z.requires_grad_()
    y = extended_log_barrier(z, t)
    assert (y[0] - y[2]).abs().item() < 1e-5 * max(1.0, abs(y[1].item()))
    (g,) = torch.autograd.grad(y.sum(), z)
    # d/dz of the log branch at -1/t^2 is -1/(t z) = t, the linear slope
    torch.testing.assert_close(g, torch.full_like(g, t), rtol=1e-5, atol=0)


@pytest.mark.parametrize("t", [0.5, 5.0, 100.0])
def test_finite_gradient_everywhere(t):
    z = torch.tensor(
        [-1e6, -10.0, -1.0, -1.0 / t**2, -1e-12, 0.0, 1e-12, 1.0, 1e6], dtype=torch.float64
    ).requires_grad_()
    y = extended_log_barrier(z, t)
    (g,) = torch.autograd.grad(y.sum(), z)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    assert (g > 0).all()  # strictly increasing: a barrier always pushes towards z < 0
    assert g[5].item() == pytest.approx(t)  # slope t at z = 0


def test_gradcheck_across_both_branches():
    z = torch.linspace(-2.0, 1.0, 31, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: extended_log_barrier(v, 3.0), (z,))


def test_tensor_t_broadcasts_and_matches_float_t():
    z = torch.linspace(-3.0, 1.0, 9, dtype=torch.float64)
    ts = torch.tensor([[1.0], [5.0]], dtype=torch.float64)
    got = extended_log_barrier(z, ts)
    assert got.shape == (2, 9)
    torch.testing.assert_close(got[0], extended_log_barrier(z, 1.0))
    torch.testing.assert_close(got[1], extended_log_barrier(z, 5.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    z64 = torch.tensor([-5.0, -0.5, -0.04, -0.01, 0.0, 0.3, 20.0], dtype=torch.float64)
    z = z64.to(dtype).requires_grad_()
    y = extended_log_barrier(z, 5.0)
    assert y.dtype == dtype
    (g,) = torch.autograd.grad(y.float().sum(), z)
    assert g.dtype == dtype and torch.isfinite(g).all() and torch.isfinite(y).all()
    expected = extended_log_barrier(z.detach().double(), 5.0)
    torch.testing.assert_close(y.double(), expected, rtol=1e-2, atol=1e-2)


def test_float64_stays_float64():
    assert extended_log_barrier(torch.zeros(3, dtype=torch.float64), 5.0).dtype == torch.float64


@pytest.mark.parametrize("t", [0.0, -1.0, math.inf, math.nan])
def test_invalid_t_raises(t):
    with pytest.raises(ValueError, match="extended_log_barrier: t must be a finite t > 0"):
        extended_log_barrier(torch.zeros(2), t)


def test_module_equals_function_and_t_is_settable():
    z = torch.linspace(-2.0, 1.0, 13)
    module = ExtendedLogBarrier(5.0)
    torch.testing.assert_close(module(z), extended_log_barrier(z, 5.0))
    module.t = 11.0
    torch.testing.assert_close(module(z), extended_log_barrier(z, 11.0))


def test_larger_t_closes_the_barrier():
    # inside the feasible set the penalty shrinks as t grows, outside it grows
    inside = torch.tensor(-0.5)
    outside = torch.tensor(0.5)
    ts = [1.0, 2.0, 5.0, 20.0]
    assert all(
        extended_log_barrier(inside, a) > extended_log_barrier(inside, b)
        for a, b in zip(ts, ts[1:])
    )
    assert all(
        extended_log_barrier(outside, a) < extended_log_barrier(outside, b)
        for a, b in zip(ts, ts[1:])
    )


# ----------------------------------------------------------------------------------------
# schedule
# ----------------------------------------------------------------------------------------


def test_fixed_schedule_paper_000():
    schedule = BarrierSchedule.fixed(5.0)
    assert [schedule.t] + [schedule.step() for _ in range(3)] == [5.0, 5.0, 5.0, 5.0]


def test_growing_schedule_paper_001_and_cap():
    schedule = BarrierSchedule.growing(t0=1.0, factor=1.1, t_max=1.25)
    values = [schedule.t] + [schedule.step() for _ in range(4)]
    assert values == pytest.approx([1.0, 1.1, 1.21, 1.25, 1.25])
    assert schedule.epochs == 4


def test_growing_default_cap_is_finite():
    schedule = BarrierSchedule.growing()
    for _ in range(2000):
        schedule.step()
    assert schedule.t == schedule.t_max and math.isfinite(schedule.t)


def test_default_constructor():
    schedule = BarrierSchedule()
    assert (schedule.t, schedule.factor, schedule.t_max) == (5.0, 1.0, None)


def test_state_round_trip_continues_identically():
    a = BarrierSchedule(t0=2.0, factor=1.5, t_max=10.0)
    for _ in range(2):
        a.step()
    b = BarrierSchedule()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert [a.step() for _ in range(3)] == [b.step() for _ in range(3)]


def test_state_dict_is_plain_python():
    state = BarrierSchedule.growing().state_dict()
    assert all(isinstance(v, (int, float, type(None))) for v in state.values())


def test_load_state_dict_missing_key():
    with pytest.raises(KeyError, match="BarrierSchedule"):
        BarrierSchedule().load_state_dict({"t": 3.0})


@pytest.mark.parametrize("kwargs", [{"t0": 0.0}, {"factor": 0.0}, {"t_max": -1.0}])
def test_invalid_schedule(kwargs):
    with pytest.raises(ValueError, match=f"BarrierSchedule: {next(iter(kwargs))} must be"):
        BarrierSchedule(**kwargs)
