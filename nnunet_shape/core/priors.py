"""Priors between classes (paper 001): ratio bounds and shared centroids (pure torch).

A prior is a frozen dataclass with ``name``, ``required_descriptors`` and
``penalty(context) -> PriorPenalty``; :func:`~nnunet_shape.core.losses.shape_descriptor_loss`
adds its barrier terms to the descriptor terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nnunet_shape.core.barrier import extended_log_barrier
from nnunet_shape.core.bounds import DEFAULT_RELATIVE_MARGIN, RESOLUTION_FLOOR
from nnunet_shape.core.descriptors import DESCRIPTOR_NAMES, class_ratio

__all__ = ["RatioPrior", "EqualCentroidPrior", "Prior", "PriorContext", "PriorPenalty", "prior_status"]


@dataclass(frozen=True)
class PriorPenalty:
    psi: Tensor  # (B, M) barrier values
    active: Tensor  # (B, M) bool
    satisfied: Tensor  # (B, K) bool
    involved: Tensor  # (B, K) bool


class PriorContext:
    """What priors need: descriptor values, presence, image extent and t."""

    def __init__(
        self,
        values: dict[str, Tensor],
        present: Tensor,
        spacing: Tensor,
        extent: Tensor,
        t: float | Tensor,
        scale_mode: str,
    ) -> None:
        self.values = values
        self.present = present  # (B, K) bool
        self.spacing = spacing  # (B|1, D)
        self.extent = extent  # (B|1, D)
        self.t = t
        self.scale_mode = scale_mode


@dataclass(frozen=True)
class RatioPrior:
    """``low <= f_numerator / f_denominator <= high`` (paper 001: 2 <= L_myo / L_lv <= 3).

    ``component`` selects one axis of a vector descriptor (centroid/spread); None constrains
    every component. Infinite ``low``/``high`` make the prior one-sided. Inactive in cases
    where either class is absent.
    """

    descriptor: str
    numerator: int
    denominator: int
    low: float
    high: float
    component: int | None = None

    def __post_init__(self) -> None:
        if self.descriptor not in DESCRIPTOR_NAMES:
            raise ValueError(
                f"RatioPrior: unknown descriptor {self.descriptor!r}; known: "
                f"{DESCRIPTOR_NAMES}"
            )
        if not self.low <= self.high:
            raise ValueError(f"RatioPrior: low={self.low} > high={self.high}")
        if self.component is not None and self.descriptor in ("volume", "surface"):
            raise ValueError(
                f"RatioPrior: {self.descriptor!r} is a scalar per class; "
                f"component={self.component} only applies to centroid/spread/covariance"
            )

    @property
    def name(self) -> str:
        comp = "" if self.component is None else f"_{self.component}"
        return f"ratio_{self.descriptor}{comp}_{self.numerator}_{self.denominator}"

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return (self.descriptor,)

    def penalty(self, ctx: PriorContext) -> PriorPenalty:
        values = ctx.values[self.descriptor]
        ratio = class_ratio(values, self.numerator, self.denominator)  # (B, ...)
        if self.component is not None:
            ratio = ratio[:, self.component]
        ratio = ratio.reshape(ratio.shape[0], -1)  # (B, M)
        both = ctx.present[:, self.numerator] & ctx.present[:, self.denominator]  # (B,)
        finite = [v for v in (self.low, self.high) if math.isfinite(v)]
        if not finite:
            scale = 1.0
        elif ctx.scale_mode == "natural":
            scale = max(abs(sum(finite) / len(finite)), 1e-6)
        elif len(finite) == 2:
            scale = max((self.high - self.low) / 2, 1e-3)
        else:
            scale = max(DEFAULT_RELATIVE_MARGIN * abs(finite[0]), 1e-3)
        psi_parts, act_parts = [], []
        for bound, sign in ((self.low, -1.0), (self.high, 1.0)):
            if not math.isfinite(bound):
                continue
            z = sign * (ratio - bound) / scale  # low: (low - r), high: (r - high)
            psi_parts.append(extended_log_barrier(z, ctx.t))
            act_parts.append(both.unsqueeze(1).expand_as(z))
        if not psi_parts:
            psi = ratio.new_zeros(ratio.shape[0], 0)
            active = torch.zeros_like(psi, dtype=torch.bool)
        else:
            psi, active = torch.cat(psi_parts, 1), torch.cat(act_parts, 1)
        inside = (ratio >= self.low) & (ratio <= self.high)
        ok = (inside | ~both.unsqueeze(1)).all(dim=1)  # (B,)
        return prior_status(psi, active, ok, (self.numerator, self.denominator), ctx)


@dataclass(frozen=True)
class EqualCentroidPrior:
    """``|C_a - C_b| <= tolerance_mm`` on every axis (paper 001: C_myo = C_lv).

    Inactive in cases where either class is absent.
    """

    class_a: int
    class_b: int
    tolerance_mm: float

    def __post_init__(self) -> None:
        if not self.tolerance_mm >= 0:
            raise ValueError(
                f"EqualCentroidPrior: tolerance_mm must be >= 0, got {self.tolerance_mm}"
            )

    @property
    def name(self) -> str:
        return f"equal_centroid_{self.class_a}_{self.class_b}"

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return ("centroid",)

    def penalty(self, ctx: PriorContext) -> PriorPenalty:
        c = ctx.values["centroid"]
        difference = c[:, self.class_a] - c[:, self.class_b]  # (B, D)
        if ctx.scale_mode == "natural":
            scale = ctx.extent  # (B|1, D)
        else:
            scale = torch.clamp(RESOLUTION_FLOOR * ctx.spacing, min=self.tolerance_mm)
        z = torch.cat(
            [(difference - self.tolerance_mm) / scale, (-difference - self.tolerance_mm) / scale],
            dim=1,
        )  # (B, 2D)
        both = ctx.present[:, self.class_a] & ctx.present[:, self.class_b]
        psi = extended_log_barrier(z, ctx.t)
        active = both.unsqueeze(1).expand_as(z)
        ok = (difference.abs() <= self.tolerance_mm).all(dim=1) | ~both
        return prior_status(psi, active, ok, (self.class_a, self.class_b), ctx)


Prior = RatioPrior | EqualCentroidPrior


def prior_status(
    psi: Tensor, active: Tensor, ok: Tensor, classes: tuple[int, int], ctx: PriorContext
) -> PriorPenalty:
    """The :class:`PriorPenalty` of a prior on two classes: its (B, M) barrier values and
    active mask, and per class whether the prior holds (``ok``, (B,)) where it is involved."""
    batch, num_classes = ctx.present.shape
    involved = torch.zeros(batch, num_classes, dtype=torch.bool, device=psi.device)
    involved[:, list(classes)] = True
    involved = involved & active.any(dim=1, keepdim=True)
    satisfied = torch.where(involved, ok.unsqueeze(1), torch.ones_like(involved))
    return PriorPenalty(psi=psi, active=active, satisfied=satisfied, involved=involved)
