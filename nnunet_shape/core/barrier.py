"""Extended log-barrier penalty (Kervadec et al., EUSIPCO 2022) and its ``t`` schedule.

For a constraint ``z <= 0`` the penalty is::

    psi_t(z) = -(1/t) * log(-z)                        if z <= -1/t**2
               t*z - (1/t) * log(1/t**2) + 1/t          otherwise

i.e. a log barrier inside the feasible set, continued linearly (slope ``t``, matching value
and derivative at ``z = -1/t**2``) so that infeasible starts still get a finite gradient.
Larger ``t`` closes the barrier. Paper 000 keeps ``t = 5``; paper 001 starts at ``t = 1``
and multiplies it by 1.1 after every epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["extended_log_barrier", "ExtendedLogBarrier", "BarrierSchedule"]


def extended_log_barrier(z: Tensor, t: float | Tensor) -> Tensor:
    """Elementwise extended log-barrier ``psi_t(z)`` of the constraint ``z <= 0``.

    Args:
        z: any shape; constraint values (feasible where ``z <= 0``).
        t: positive float or a tensor broadcastable to ``z`` (barrier sharpness). Every value
            must be finite and > 0, else ValueError (a tensor is checked with one reduction;
            on CUDA that is a host sync, so pass a float in a training loop).
    Returns:
        Tensor of ``z``'s shape (broadcast with ``t``) and dtype. float16/bfloat16 inputs are
        evaluated in float32 (``log`` of tiny arguments and ``t*z`` would lose too much) and
        cast back.

    Finite value and gradient everywhere, including ``z = 0`` and ``z = -1/t**2``: the log
    branch is evaluated on ``min(z, -1/t**2)``, so the branch ``torch.where`` discards can
    neither be NaN nor send a NaN/inf gradient.
    """
    out_dtype = z.dtype if z.dtype.is_floating_point else torch.float32
    compute = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    zc = z.to(compute)
    tc = t.to(device=z.device, dtype=compute) if isinstance(t, Tensor) else float(t)
    if isinstance(tc, float):
        if not (tc > 0.0 and math.isfinite(tc)):
            raise ValueError(f"extended_log_barrier: t must be a finite t > 0, got {t}")
        threshold = -1.0 / (tc * tc)
        # -(1/t) log(1/t^2) + 1/t  == (2 log t + 1) / t
        offset = (2.0 * math.log(tc) + 1.0) / tc
    else:
        # one reduction of a (usually 0-d) tensor; a CUDA t costs one host sync per call, which is
        # why the trainers and the loss module pass t as a Python float
        valid = torch.isfinite(tc) & (tc > 0)
        if not bool(valid.all()):
            bad = tc[~valid].flatten()[:4].tolist()
            raise ValueError(f"extended_log_barrier: t must be a finite t > 0, got a tensor t with "
                             f"{int((~valid).sum())} invalid value(s), e.g. {bad}")
        threshold = -1.0 / (tc * tc)
        offset = (2.0 * torch.log(tc) + 1.0) / tc
    in_log_branch = zc <= threshold
    # torch.where rather than clamp/minimum: their gradient masks are strict at the tie
    # z == -1/t**2 and would return a zero derivative exactly there (true value: t)
    log_arg = torch.where(in_log_branch, zc, threshold)
    log_branch = -torch.log(-log_arg) / tc
    linear_branch = tc * zc + offset
    return torch.where(in_log_branch, log_branch, linear_branch).to(out_dtype)


class ExtendedLogBarrier(nn.Module):
    """Module form of :func:`extended_log_barrier` with a settable attribute ``t``."""

    def __init__(self, t: float = 5.0) -> None:
        super().__init__()
        self.t = float(t)

    def forward(self, z: Tensor) -> Tensor:
        return extended_log_barrier(z, self.t)

    def extra_repr(self) -> str:
        return f"t={self.t}"


class BarrierSchedule:
    """Epoch-wise schedule of the barrier parameter ``t``.

    ``t`` starts at ``t0``; :meth:`step` (call it at the end of every epoch) sets
    ``t = min(t * factor, t_max)``. ``factor = 1`` keeps ``t`` fixed.
    """

    def __init__(self, t0: float = 5.0, factor: float = 1.0, t_max: float | None = None) -> None:
        if not (t0 > 0 and math.isfinite(t0)):
            raise ValueError(f"BarrierSchedule: t0 must be finite and > 0, got {t0}")
        if not factor > 0:
            raise ValueError(f"BarrierSchedule: factor must be > 0, got {factor}")
        if t_max is not None and not t_max > 0:
            raise ValueError(f"BarrierSchedule: t_max must be > 0 or None, got {t_max}")
        self.t0 = float(t0)
        self.factor = float(factor)
        self.t_max = None if t_max is None else float(t_max)
        self.t = self._capped(self.t0)
        self.epochs = 0

    def _capped(self, t: float) -> float:
        return t if self.t_max is None else min(t, self.t_max)

    @classmethod
    def fixed(cls, t: float = 5.0) -> BarrierSchedule:
        """Constant ``t`` (paper 000: t = 5)."""
        return cls(t0=t, factor=1.0, t_max=None)

    @classmethod
    def growing(
        cls, t0: float = 1.0, factor: float = 1.1, t_max: float | None = 100.0
    ) -> BarrierSchedule:
        """``t`` multiplied by ``factor`` per epoch (paper 001: t0 = 1, factor = 1.1).

        ``t_max`` defaults to 100: paper 001 trains ~200 epochs without a cap, but nnU-Net's
        1000 epochs would reach 1.1**1000 ~ 1e41; past t ~ 100 the barrier is already
        practically closed for normalised constraints (log branch from z <= -1e-4).
        """
        return cls(t0=t0, factor=factor, t_max=t_max)

    def step(self) -> float:
        """End of an epoch: ``t = min(t * factor, t_max)``; returns the new ``t``."""
        self.epochs += 1
        self.t = self._capped(self.t * self.factor)
        return self.t

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "t0": self.t0,
            "factor": self.factor,
            "t_max": self.t_max,
            "epochs": self.epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"t", "t0", "factor", "t_max"} - set(state)
        if missing:
            raise KeyError(
                f"BarrierSchedule.load_state_dict: missing keys {sorted(missing)}"
            )
        self.t0 = float(state["t0"])
        self.factor = float(state["factor"])
        self.t_max = None if state["t_max"] is None else float(state["t_max"])
        self.t = float(state["t"])
        self.epochs = int(state.get("epochs", 0))

    def __repr__(self) -> str:
        return (
            f"BarrierSchedule(t={self.t}, t0={self.t0}, factor={self.factor}, "
            f"t_max={self.t_max}, epochs={self.epochs})"
        )
