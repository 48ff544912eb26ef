"""Relation constraints between classes: barrier terms on differences and ratios (pure torch).

The population-prior counterpart of :mod:`nnunet_shape.core.priors`: a relation states how
two classes' predicted descriptors relate, never an absolute value, so one statement holds
for every case of a population. Every relation is a frozen dataclass with ``name``,
``required_descriptors`` and ``penalty(context) -> PriorPenalty`` (the protocol of
:class:`~nnunet_shape.core.priors.RatioPrior`), so it goes straight into the ``priors``
argument of :func:`~nnunet_shape.core.losses.shape_descriptor_loss`.

All relations work in the ARRAY frame of the predicted probabilities ``(B, K, *S)``: axis
``d`` of a box is array axis ``d``, lengths in mm of the spacing given to the loss.
:mod:`nnunet_shape.core.anatomical_frame` maps boxes stated in the patient's anatomical
frame to that frame.

* :class:`CentroidOffset` -- ``low_d <= C_b[d] - C_a[d] <= high_d`` per axis (a box for the
  offset of class b from class a; ``low = -high`` gives "equal centroids within a box").
* :class:`DescriptorRatio` -- ``low_m <= f_num[m] / f_den[m] <= high_m`` per component of
  volume / surface (one component) or spread (one per axis). :class:`RatioPrior` is the
  case of one interval for every component.
* :class:`NestedCentroid` -- ``|C_inner[d] - C_outer[d]| <= factor * spread_outer[d]`` per
  axis: the inner class's centroid lies within ``factor`` standard deviations of the outer
  class's mass.
* :class:`IntensityOrder` -- ``mean_brighter[c] - mean_darker[c] >= min_difference``: class a is
  brighter than class b in image channel c (soft class means of
  :func:`~nnunet_shape.core.intensity.class_intensity`, passed to the loss as
  ``values=intensity_values(probs, image)``; in the image's units, z-score units for nnU-Net's
  normalised image, so ``min_difference`` counts standard deviations of the image).

Bounds given as ``nan`` or ``+-inf`` leave that side unconstrained. A relation is inactive
in cases where one of its classes is absent (``PriorContext.present``).

Scales (``ctx.scale_mode == "half_width"``, the default of the loss): the half-width of the
feasible interval (``(high - low) / 2``), 10 % of the finite bound when one-sided, floored
at half a voxel (offsets) or 1e-3 (ratios) -- the rule of the descriptor bounds in
:mod:`nnunet_shape.core.losses`. ``"natural"``: the image extent per axis (offsets), the
interval midpoint (ratios). :class:`NestedCentroid`'s interval moves with the prediction,
so its scale is fixed: 10 % of the image extent per axis (at least half a voxel).
:class:`IntensityOrder` is one-sided: 10 % of ``min_difference``, at least
:data:`~nnunet_shape.core.intensity.INTENSITY_SCALE_FLOOR` (0.1 normalised units).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nnunet_shape.core.barrier import extended_log_barrier
from nnunet_shape.core.bounds import DEFAULT_RELATIVE_MARGIN, RESOLUTION_FLOOR, interval_half_width, interval_midpoint
from nnunet_shape.core.descriptors import DESCRIPTOR_NAMES, class_ratio
from nnunet_shape.core.intensity import INTENSITY_SCALE_FLOOR, INTENSITY_VALUE_KEYS
from nnunet_shape.core.priors import PriorContext, PriorPenalty

__all__ = ["CentroidOffset", "DescriptorRatio", "IntensityOrder", "NestedCentroid", "Relation", "RATIO_DESCRIPTORS",
           "relation_kind", "relation_penalties"]

RATIO_DESCRIPTORS = ("volume", "surface", "spread")
#: smallest scale of a ratio constraint (ratios are unit-free)
RATIO_SCALE_FLOOR = 1e-3


def _as_bounds(values: Sequence[float] | float, where: str, field: str) -> tuple[float, ...]:
    """Floats (nan and +-inf allowed) as a tuple; one float is one component."""
    if isinstance(values, (int, float)):
        values = (values,)
    out = tuple(float(v) for v in values)
    if not out:
        raise ValueError(f"{where}: {field} is empty; give one bound per component")
    return out


def _check_intervals(low: tuple[float, ...], high: tuple[float, ...], where: str) -> None:
    if len(low) != len(high):
        raise ValueError(f"{where}: low has {len(low)} components, high {len(high)}; give one per component")
    for d, (lo, hi) in enumerate(zip(low, high)):
        if math.isfinite(lo) and math.isfinite(hi) and lo > hi:
            raise ValueError(f"{where}: component {d}: low={lo} > high={hi}")
        if lo == math.inf or hi == -math.inf:
            raise ValueError(f"{where}: component {d}: [{lo}, {hi}] is empty")


def _interval_barrier(
    value: Tensor, low: Tensor, high: Tensor, scale: Tensor, t: float | Tensor, both: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Barrier terms of ``low <= value <= high`` per component, for R relations at once.

    Args:
        value: (B, R, M).
        low, high: broadcastable to (B, R, M) (non-finite = no constraint on that side).
        scale: broadcastable to (B, R, M), positive.
        both: (B, R) bool -- the classes of the relation are present.
    Returns:
        ``psi`` (B, R, 2M), ``active`` (B, R, 2M) and ``ok`` (B, R): every active constraint holds.
    """
    low, high = torch.broadcast_to(low, value.shape), torch.broadcast_to(high, value.shape)
    lo_ok = torch.isfinite(low)
    hi_ok = torch.isfinite(high)
    lo_f = torch.where(lo_ok, low, torch.zeros_like(low))
    hi_f = torch.where(hi_ok, high, torch.zeros_like(high))
    scale = torch.broadcast_to(scale, value.shape)
    z = torch.cat([(lo_f - value) / scale, (value - hi_f) / scale], dim=-1)  # (B, R, 2M)
    used = torch.cat([lo_ok, hi_ok], dim=-1) & both.unsqueeze(-1)  # (B, R, 2M)
    psi = extended_log_barrier(z, t)
    inside = (~lo_ok | (value >= lo_f)) & (~hi_ok | (value <= hi_f))  # (B, R, M)
    ok = inside.all(dim=-1) | ~both
    return psi, used, ok


def _natural_ratio_scale(low: Tensor, high: Tensor) -> Tensor:
    """``scale_mode="natural"`` of a ratio: the interval's midpoint (the finite bound when
    one-sided; 1 when unbounded), at least 1e-6."""
    bounded = torch.isfinite(low) | torch.isfinite(high)
    return torch.where(bounded, interval_midpoint(low, high).abs().clamp_min(1e-6), torch.ones_like(low))


def relation_kind(relation: Relation) -> tuple:
    """Relations of one kind (type, and descriptor for ratios) are evaluated together by
    :func:`relation_penalties`."""
    return (type(relation), getattr(relation, "descriptor", None))


def _stacked_bounds(relations: Sequence[CentroidOffset | DescriptorRatio], like: Tensor,
                    bounds: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """The relations' own bounds as (1, R, M) tensors, or ``bounds`` ((B, R, M) each: other
    bounds per sample, e.g. after each sample's augmentation), checked against the components."""
    m = len(relations[0].low)
    if bounds is None:
        return (like.new_tensor([r.low for r in relations]).unsqueeze(0),
                like.new_tensor([r.high for r in relations]).unsqueeze(0))
    low, high = (b.to(dtype=like.dtype, device=like.device) for b in bounds)
    if low.shape != high.shape or low.ndim != 3 or low.shape[1:] != (len(relations), m):
        raise ValueError(f"{relations[0].name}: per-sample bounds must be (B, {len(relations)}, {m}) each, "
                         f"got {tuple(low.shape)} and {tuple(high.shape)}")
    return low, high


def relation_penalties(
    relations: Sequence[Relation], ctx: PriorContext, bounds: tuple[Tensor, Tensor] | None = None
) -> list[PriorPenalty]:
    """The :class:`~nnunet_shape.core.priors.PriorPenalty` of each of R relations of ONE kind
    (:func:`relation_kind`), computed in one set of tensor operations over (B, R, ...) -- what
    every relation's ``penalty`` is (R = 1), and how a population prior's relations are
    evaluated in a training step (a few dozen small relations would otherwise cost more than the
    descriptors they relate).

    ``bounds``: (B, R, M) low and high replacing the relations' own bounds with one interval per
    sample and relation (:class:`CentroidOffset`, :class:`DescriptorRatio` only).
    """
    if not relations:
        return []
    kind = relation_kind(relations[0])
    if any(relation_kind(r) != kind for r in relations):
        kinds = sorted({f"{type(r).__name__}({getattr(r, 'descriptor', '')})" for r in relations})
        raise ValueError(f"relation_penalties: relations of one kind only, got {kinds}")
    if bounds is not None and kind[0] not in (CentroidOffset, DescriptorRatio):
        raise ValueError(f"relation_penalties: {kind[0].__name__} has no bounds to replace")
    device = ctx.present.device

    def index(field: str) -> Tensor:
        return torch.tensor([getattr(r, field) for r in relations], dtype=torch.long, device=device)

    if kind[0] is CentroidOffset:
        first, second = index("class_from"), index("class_to")
        c = ctx.values["centroid"]
        for r in relations:
            if c.shape[-1] != len(r.low):
                raise ValueError(f"{r.name}: {len(r.low)} bounds per offset, but the centroids have "
                                 f"{c.shape[-1]} axes")
        value = c[:, second] - c[:, first]  # (B, R, D)
        low, high = _stacked_bounds(relations, value, bounds)
        if ctx.scale_mode == "natural":
            scale = ctx.extent.to(value.dtype).unsqueeze(1)
        else:
            scale = interval_half_width(low, high, RESOLUTION_FLOOR * ctx.spacing.to(value.dtype).unsqueeze(1))
        both = ctx.present[:, first] & ctx.present[:, second]  # (B, R)
        psi, active, ok = _interval_barrier(value, low, high, scale, ctx.t, both)
    elif kind[0] is DescriptorRatio:
        first, second = index("numerator"), index("denominator")
        ratio = class_ratio(ctx.values[kind[1]], first, second)  # (B, R, ...)
        value = ratio.reshape(ratio.shape[0], len(relations), -1)  # (B, R, M)
        for r in relations:
            if value.shape[2] != len(r.low):
                raise ValueError(f"{r.name}: {len(r.low)} bounds, but the ratio has {value.shape[2]} components")
        low, high = _stacked_bounds(relations, value, bounds)
        if ctx.scale_mode == "natural":
            scale = _natural_ratio_scale(low, high)
        else:
            scale = interval_half_width(low, high, RATIO_SCALE_FLOOR)
        both = ctx.present[:, first] & ctx.present[:, second]
        psi, active, ok = _interval_barrier(value, low, high, scale, ctx.t, both)
    elif kind[0] is NestedCentroid:
        first, second = index("inner"), index("outer")
        c = ctx.values["centroid"]
        difference = c[:, first] - c[:, second]  # (B, R, D)
        factor = difference.new_tensor([r.factor for r in relations]).view(1, -1, 1)
        reach = factor * ctx.values["spread"][:, second].to(difference.dtype)  # (B, R, D)
        extent, spacing = ctx.extent.to(difference.dtype), ctx.spacing.to(difference.dtype)
        scale = torch.maximum(DEFAULT_RELATIVE_MARGIN * extent, RESOLUTION_FLOOR * spacing).unsqueeze(1)
        z = torch.cat([(difference - reach) / scale, (-difference - reach) / scale], dim=-1)  # (B, R, 2D)
        both = ctx.present[:, first] & ctx.present[:, second]
        psi = extended_log_barrier(z, ctx.t)
        active = both.unsqueeze(-1).expand_as(z)
        ok = (difference.abs() <= reach).all(dim=-1) | ~both
    else:  # IntensityOrder
        key = INTENSITY_VALUE_KEYS["mean"]
        if key not in ctx.values:
            raise ValueError(f"{relations[0].name}: the loss has no {key!r} values; call "
                             f"shape_descriptor_loss(..., values=intensity_values(probs, image))")
        mean = ctx.values[key]  # (B, K, C)
        for r in relations:
            if r.channel >= mean.shape[2]:
                raise ValueError(f"{r.name}: channel {r.channel}, but the image has {mean.shape[2]} channel(s)")
        first, second, channel = index("brighter"), index("darker"), index("channel")
        value = (mean[:, first, channel] - mean[:, second, channel]).unsqueeze(-1)  # (B, R, 1)
        low = value.new_tensor([r.min_difference for r in relations]).view(1, -1, 1)
        high = torch.full_like(low, math.inf)
        scale = interval_half_width(low, high, INTENSITY_SCALE_FLOOR)
        both = ctx.present[:, first] & ctx.present[:, second]
        psi, active, ok = _interval_barrier(value, low, high, scale, ctx.t, both)
    # per class: involved where the relation has an active term and names the class (prior_status)
    batch, num_classes = ctx.present.shape
    names = torch.zeros(len(relations), num_classes, dtype=torch.bool, device=device)
    rows = torch.arange(len(relations), device=device)
    names[rows, first] = True
    names[rows, second] = True
    involved = names.unsqueeze(0) & active.any(dim=-1, keepdim=True)  # (B, R, K)
    satisfied = torch.where(involved, ok.unsqueeze(-1), torch.ones_like(involved))
    return [PriorPenalty(psi[:, r], active[:, r], satisfied[:, r], involved[:, r]) for r in range(len(relations))]


def _one(relation: Relation, ctx: PriorContext, bounds: tuple[Tensor, Tensor] | None = None) -> PriorPenalty:
    """One relation's penalty; ``bounds``: (B, M) low and high per sample."""
    if bounds is not None:
        bounds = (bounds[0].unsqueeze(1), bounds[1].unsqueeze(1))
    return relation_penalties([relation], ctx, bounds)[0]


@dataclass(frozen=True)
class CentroidOffset:
    """``low[d] <= C_to[d] - C_from[d] <= high[d]`` (mm) for every array axis ``d``.

    ``low``/``high`` have one entry per spatial axis; ``nan``/``inf`` = unconstrained.
    """

    class_from: int
    class_to: int
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        where = f"CentroidOffset({self.class_from} -> {self.class_to})"
        object.__setattr__(self, "low", _as_bounds(self.low, where, "low"))
        object.__setattr__(self, "high", _as_bounds(self.high, where, "high"))
        _check_intervals(self.low, self.high, where)
        if self.class_from == self.class_to:
            raise ValueError(f"{where}: the two classes must differ")

    @property
    def name(self) -> str:
        return f"relation_centroid_offset_{self.class_from}_{self.class_to}"

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return ("centroid",)

    def penalty(self, ctx: PriorContext, bounds: tuple[Tensor, Tensor] | None = None) -> PriorPenalty:
        """The barrier terms (:func:`relation_penalties`); ``bounds`` ((B, D) low and high)
        replaces ``low``/``high`` with one box per sample (a batch augmented sample by sample)."""
        return _one(self, ctx, bounds)


@dataclass(frozen=True)
class DescriptorRatio:
    """``low[m] <= f_numerator[m] / f_denominator[m] <= high[m]`` per component.

    ``descriptor``: volume or surface (one component) or spread (one per array axis).
    """

    descriptor: str
    numerator: int
    denominator: int
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        where = f"DescriptorRatio({self.descriptor}, {self.numerator} / {self.denominator})"
        if self.descriptor not in RATIO_DESCRIPTORS:
            known = DESCRIPTOR_NAMES if self.descriptor not in DESCRIPTOR_NAMES else RATIO_DESCRIPTORS
            raise ValueError(f"{where}: descriptor must be one of {RATIO_DESCRIPTORS}, got {self.descriptor!r} "
                             f"(descriptors: {known})")
        object.__setattr__(self, "low", _as_bounds(self.low, where, "low"))
        object.__setattr__(self, "high", _as_bounds(self.high, where, "high"))
        _check_intervals(self.low, self.high, where)
        if self.descriptor != "spread" and len(self.low) != 1:
            raise ValueError(f"{where}: {self.descriptor} is one value per class; give one bound, got {len(self.low)}")
        if self.numerator == self.denominator:
            raise ValueError(f"{where}: the two classes must differ")

    @property
    def name(self) -> str:
        return f"relation_{self.descriptor}_ratio_{self.numerator}_{self.denominator}"

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return (self.descriptor,)

    def penalty(self, ctx: PriorContext, bounds: tuple[Tensor, Tensor] | None = None) -> PriorPenalty:
        """The barrier terms (:func:`relation_penalties`); ``bounds`` ((B, M) low and high)
        replaces ``low``/``high`` with one interval per sample (a batch augmented sample by sample)."""
        return _one(self, ctx, bounds)


@dataclass(frozen=True)
class NestedCentroid:
    """``|C_inner[d] - C_outer[d]| <= factor * spread_outer[d]`` for every array axis ``d``."""

    inner: int
    outer: int
    factor: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"NestedCentroid({self.inner} in {self.outer}): factor must be > 0, got {self.factor}")
        if self.inner == self.outer:
            raise ValueError(f"NestedCentroid({self.inner} in {self.outer}): the two classes must differ")

    @property
    def name(self) -> str:
        return f"relation_nested_centroid_{self.inner}_{self.outer}"

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return ("centroid", "spread")

    def penalty(self, ctx: PriorContext) -> PriorPenalty:
        """The barrier terms (:func:`relation_penalties`)."""
        return _one(self, ctx)


@dataclass(frozen=True)
class IntensityOrder:
    """``mean_brighter[channel] - mean_darker[channel] >= min_difference``: "class a is brighter than b".

    The soft class means come from the loss's ``values["intensity_mean"]`` (B, K, C)
    (:func:`~nnunet_shape.core.intensity.intensity_values`); ``min_difference`` is in the image's
    units (>= 0; for nnU-Net's z-scored image: standard deviations of the image).
    """

    brighter: int
    darker: int
    channel: int = 0
    min_difference: float = 0.0

    def __post_init__(self) -> None:
        where = f"IntensityOrder({self.brighter} brighter than {self.darker}, channel {self.channel})"
        if self.brighter == self.darker:
            raise ValueError(f"{where}: the two classes must differ")
        if not (math.isfinite(self.min_difference) and self.min_difference >= 0):
            raise ValueError(f"{where}: min_difference must be finite and >= 0, got {self.min_difference}")
        if self.channel < 0:
            raise ValueError(f"{where}: channel must be >= 0, got {self.channel}")

    @property
    def name(self) -> str:
        return f"relation_intensity_order_{self.brighter}_{self.darker}_c{self.channel}"

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return ()  # not a shape descriptor: the caller passes the means as values

    def penalty(self, ctx: PriorContext) -> PriorPenalty:
        """The barrier terms (:func:`relation_penalties`)."""
        return _one(self, ctx)


Relation = CentroidOffset | DescriptorRatio | NestedCentroid | IntensityOrder
