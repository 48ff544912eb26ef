"""Intensity descriptors: the soft mean and standard deviation of the image inside each class (pure torch).

Shape descriptors say where a class is and how big it is; these say what it looks like. With
``probs`` ``p`` (B, K, *S) and an image ``I`` (B, C, *S) of C channels, per case, class k and
channel c, with the mass ``m_k = sum_x p_k(x)``::

    mean_kc = sum_x p_k(x) I_c(x) / m_k
    std_kc  = sqrt( sum_x p_k(x) (I_c(x) - mean_kc)^2 / m_k )

On a binary mask these are the mean and the **population** standard deviation (divided by the
number of voxels N, not N - 1) of the voxels inside the mask: pyradiomics' first-order ``Mean``
and ``StandardDeviation`` (``tests/test_intensity.py`` checks both by hand).

* :func:`class_intensity` -- the two statistics, (B, K, C) each, differentiable in ``probs``
  (and in ``image``).
* :func:`intensity_values` -- the same as the ``values`` entries ``intensity_mean`` /
  ``intensity_std`` that :func:`~nnunet_shape.core.losses.shape_descriptor_loss` hands to its
  priors (``values=``), where :class:`IntensityBoundsTerm` (per-case bounds) and
  :class:`~nnunet_shape.core.relations.IntensityOrder` ("class a is brighter than class b") read them.
* :func:`intensity_bounds_from_targets` -- bounds ``tau +- max(relative |tau|, absolute)`` (the
  rule of :func:`~nnunet_shape.core.bounds.bounds_from_targets`) around target statistics.
* :func:`zscore_intensity_targets` -- raw-intensity targets in the units of nnU-Net's
  ``ZScoreNormalization`` (``use_mask_for_norm`` False): ``(v - m) / s`` for means, ``v / s``
  for standard deviations, with the image's mean ``m`` and standard deviation ``s``.

Units: those of ``image``. The trainers pass nnU-Net's normalised image, so the default margins
and the scale floor below are in z-score units (1 = one standard deviation of the image).

Numerics: the sums run in float32 (float64 for float64 input) on intensities shifted by the
image's own mean per case and channel (a constant: both statistics are invariant to it, it only
keeps ``E[I^2] - E[I]^2`` well conditioned for raw intensities such as CT's thousands). Empty
classes (``m_k = 0``): the mass is clamped from below by ``finfo(dtype).eps``, so the mean is the
image's mean (a placeholder, not a measurement) and the standard deviation 0, with finite
gradients (:func:`~nnunet_shape.core.descriptors.safe_sqrt`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from nnunet_shape.core.barrier import extended_log_barrier
from nnunet_shape.core.bounds import DEFAULT_RELATIVE_MARGIN, interval_half_width
from nnunet_shape.core.descriptors import safe_sqrt
from nnunet_shape.core.priors import PriorContext, PriorPenalty

__all__ = [
    "INTENSITY_STATISTICS",
    "INTENSITY_VALUE_KEYS",
    "DEFAULT_INTENSITY_ABSOLUTE_MARGIN",
    "INTENSITY_SCALE_FLOOR",
    "ZSCORE_EPS",
    "IntensityStats",
    "IntensityBounds",
    "IntensityBoundsTerm",
    "class_intensity",
    "intensity_values",
    "intensity_bounds_from_targets",
    "zscore_intensity_targets",
]

#: the statistics, and the key under which each is passed in the loss's ``values``
INTENSITY_STATISTICS: tuple[str, ...] = ("mean", "std")
INTENSITY_VALUE_KEYS: dict[str, str] = {"mean": "intensity_mean", "std": "intensity_std"}
#: half-width of a bound around a target, at least this many normalised units (a tenth of the
#: image's standard deviation): relative +-10 % means nothing for a z-scored mean near 0
DEFAULT_INTENSITY_ABSOLUTE_MARGIN = 0.1
#: smallest scale of an intensity constraint (normalised units), so equality bounds stay finite
INTENSITY_SCALE_FLOOR = 0.1
#: nnU-Net's ZScoreNormalization divides by max(std, 1e-8) (float32 targets)
ZSCORE_EPS = 1e-8


class IntensityStats(NamedTuple):
    """Soft class statistics of an image: ``mean`` and ``std``, (B, K, C) each, in image units."""

    mean: Tensor
    std: Tensor


def _check(probs: Tensor, image: Tensor, function: str) -> None:
    if probs.ndim < 3:
        raise ValueError(f"{function}: probs must be (B, K, *spatial) with at least one spatial axis, "
                         f"got shape {tuple(probs.shape)}")
    if image.ndim != probs.ndim or image.shape[0] != probs.shape[0] or image.shape[2:] != probs.shape[2:]:
        raise ValueError(f"{function}: image must be (B, C, *spatial) with the batch size and spatial shape of "
                         f"probs {tuple(probs.shape)}, got {tuple(image.shape)}")


def class_intensity(probs: Tensor, image: Tensor) -> IntensityStats:
    """Soft mean and (population) standard deviation of ``image`` inside each class of ``probs``.

    Args:
        probs: (B, K, *S) class probabilities (softmax; or sigmoid region masks, each its own class).
        image: (B, C, *S) intensities, same batch and spatial shape.
    Returns:
        :class:`IntensityStats` ``(mean, std)``, (B, K, C) each, float64 if either input is
        float64, else float32. See the module docstring for empty classes.
    """
    _check(probs, image, "class_intensity")
    dtype = torch.float64 if torch.float64 in (probs.dtype, image.dtype) else torch.float32
    p = probs.flatten(2).to(dtype)  # (B, K, N)
    x = image.flatten(2).to(dtype)  # (B, C, N)
    shift = x.mean(2, keepdim=True).detach()  # (B, C, 1): a constant, see the module docstring
    xc = x - shift
    mass = p.sum(2).clamp_min(float(torch.finfo(dtype).eps)).unsqueeze(-1)  # (B, K, 1)
    first = torch.einsum("bkn,bcn->bkc", p, xc) / mass
    second = torch.einsum("bkn,bcn->bkc", p, xc * xc) / mass
    variance = second - first * first
    # round-off can make a zero variance slightly negative; where (not clamp) keeps its gradient
    variance = torch.where(variance > 0, variance, torch.zeros_like(variance))
    return IntensityStats(first + shift.transpose(1, 2), safe_sqrt(variance))


def intensity_values(probs: Tensor, image: Tensor) -> dict[str, Tensor]:
    """:func:`class_intensity` as the loss's ``values`` entries ``{"intensity_mean", "intensity_std"}``."""
    stats = class_intensity(probs, image)
    return {INTENSITY_VALUE_KEYS["mean"]: stats.mean, INTENSITY_VALUE_KEYS["std"]: stats.std}


@dataclass
class IntensityBounds:
    """Lower/upper bounds of the class statistics; NaN = unconstrained.

    ``lower[stat]`` / ``upper[stat]`` (stat in ``"mean"``, ``"std"``) have shape (B|1, K, C) (a
    leading 1 broadcasts over the batch); ``present`` (B|1, K) bool or None (every class present).
    """

    lower: dict[str, Tensor]
    upper: dict[str, Tensor]
    present: Tensor | None = None

    def __post_init__(self) -> None:
        for stat in set(self.lower) | set(self.upper):
            if stat not in INTENSITY_STATISTICS:
                raise ValueError(f"IntensityBounds: unknown statistic {stat!r}; known: {INTENSITY_STATISTICS}")
            if (stat in self.lower) != (stat in self.upper):
                raise ValueError(f"IntensityBounds: {stat!r} has only one of lower/upper; give both "
                                 f"(NaN for an unconstrained side)")
            if self.lower[stat].shape != self.upper[stat].shape or self.lower[stat].ndim != 3:
                raise ValueError(f"IntensityBounds: {stat!r} lower {tuple(self.lower[stat].shape)} and upper "
                                 f"{tuple(self.upper[stat].shape)} must both be (B|1, K, C)")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> IntensityBounds:
        return IntensityBounds({k: v.to(device=device, dtype=dtype) for k, v in self.lower.items()},
                               {k: v.to(device=device, dtype=dtype) for k, v in self.upper.items()},
                               None if self.present is None else self.present.to(device=device))


def intensity_bounds_from_targets(
    targets: Mapping[str, Tensor | tuple[Tensor, Tensor]],
    present: Tensor | None = None,
    relative_margin: float = DEFAULT_RELATIVE_MARGIN,
    absolute_margin: float = DEFAULT_INTENSITY_ABSOLUTE_MARGIN,
) -> IntensityBounds:
    """Bounds around target statistics: ``tau +- max(relative |tau|, absolute)``.

    Args:
        targets: {stat: tau} with tau (B, K, C) -- exact targets, e.g. measured on the label
            map -- or {stat: (lower, upper)}: entries with ``lower == upper`` (finite) are exact
            and get the margins, ranges stay as given, NaN stays unconstrained.
        present: (B, K) bool; absent classes get NaN bounds (unconstrained).
        relative_margin, absolute_margin: the half-width rule (defaults 10 % and 0.1 units).
    """
    lower: dict[str, Tensor] = {}
    upper: dict[str, Tensor] = {}
    for stat, value in targets.items():
        lo, hi = (value, value) if isinstance(value, Tensor) else value
        lo, hi = torch.as_tensor(lo).detach(), torch.as_tensor(hi).detach()
        if not lo.is_floating_point():
            lo, hi = lo.double(), hi.double()
        exact = torch.isfinite(lo) & (lo == hi)
        half = torch.clamp(float(relative_margin) * lo.abs(), min=float(absolute_margin))
        new_lo = torch.where(exact, lo - half, lo)
        new_hi = torch.where(exact, hi + half, hi)
        if stat == "std":  # non-negative: a lower bound below 0 says nothing
            new_lo = torch.where(new_lo < 0, torch.zeros_like(new_lo), new_lo)
        if present is not None:
            absent = ~present.bool().to(lo.device).unsqueeze(-1).expand_as(lo)
            new_lo = torch.where(absent, torch.full_like(new_lo, math.nan), new_lo)
            new_hi = torch.where(absent, torch.full_like(new_hi, math.nan), new_hi)
        lower[stat], upper[stat] = new_lo, new_hi
    return IntensityBounds(lower, upper, None if present is None else present.bool())


def zscore_intensity_targets(
    targets: Mapping[str, tuple[np.ndarray, np.ndarray]], image_mean: np.ndarray, image_std: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw-intensity bounds ``{stat: (lower, upper)}`` ((K, C) arrays) in z-score units.

    nnU-Net's ``ZScoreNormalization`` without mask maps the image to ``(I - m) / max(s, 1e-8)``
    with the mean ``m`` and (population) standard deviation ``s`` of the image it normalises
    (per channel, ``image_mean`` / ``image_std`` (C,)): a class mean becomes ``(mean - m) / s``
    and a class standard deviation ``std / s``. Both maps are increasing, so bounds map to bounds.
    """
    m = np.asarray(image_mean, dtype=np.float64)
    s = np.maximum(np.asarray(image_std, dtype=np.float64), ZSCORE_EPS)
    out = {}
    for stat, (lo, hi) in targets.items():
        if stat == "mean":
            out[stat] = ((np.asarray(lo) - m) / s, (np.asarray(hi) - m) / s)
        elif stat == "std":
            out[stat] = (np.asarray(lo) / s, np.asarray(hi) / s)
        else:
            raise ValueError(f"zscore_intensity_targets: unknown statistic {stat!r}; known: {INTENSITY_STATISTICS}")
    return out


@dataclass(frozen=True, eq=False)
class IntensityBoundsTerm:
    """Per-case bounds on one class statistic, as a barrier term of
    :func:`~nnunet_shape.core.losses.shape_descriptor_loss` (its ``priors`` protocol).

    The loss must be given the statistics: ``values=intensity_values(probs, image)``. Each
    bounded component (class, channel) adds ``psi(z_low) + psi(z_up)`` with
    ``z = (lower - f) / scale``, ``(f - upper) / scale`` and the descriptor bounds' scale rule
    (half-width of the interval, 10 % of a one-sided bound, at least
    :data:`INTENSITY_SCALE_FLOOR`). Absent classes (the bounds' ``present`` or the loss's) are
    unconstrained; so is the background unless ``include_background``. Lower bounds ``<= 0`` of
    the standard deviation are skipped (it is never negative).

    Attributes:
        bounds: :class:`IntensityBounds` of the batch.
        statistic: ``"mean"`` or ``"std"``.
        include_background: constrain class 0 too (region training).
    """

    bounds: IntensityBounds
    statistic: str = "mean"
    include_background: bool = False

    def __post_init__(self) -> None:
        if self.statistic not in INTENSITY_STATISTICS:
            raise ValueError(f"IntensityBoundsTerm: statistic must be one of {INTENSITY_STATISTICS}, "
                             f"got {self.statistic!r}")
        if self.statistic not in self.bounds.lower:
            raise ValueError(f"IntensityBoundsTerm: the bounds have no {self.statistic!r} "
                             f"(they have {sorted(self.bounds.lower)})")

    @property
    def name(self) -> str:
        return INTENSITY_VALUE_KEYS[self.statistic]

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return ()

    def penalty(self, ctx: PriorContext) -> PriorPenalty:
        key = self.name
        if key not in ctx.values:
            raise ValueError(f"IntensityBoundsTerm({self.statistic}): the loss has no {key!r} values; call "
                             f"shape_descriptor_loss(..., values=intensity_values(probs, image))")
        f = ctx.values[key]  # (B, K, C)
        batch, classes, channels = f.shape
        lower = torch.broadcast_to(self.bounds.lower[self.statistic].to(f.device, f.dtype), f.shape)
        upper = torch.broadcast_to(self.bounds.upper[self.statistic].to(f.device, f.dtype), f.shape)
        present = ctx.present.to(f.device)
        if self.bounds.present is not None:
            present = present & torch.broadcast_to(self.bounds.present.to(f.device), present.shape)
        if not self.include_background:
            present = present.clone()
            present[:, 0] = False
        used = present.unsqueeze(-1).expand_as(f)
        lo_ok = torch.isfinite(lower) & used
        up_ok = torch.isfinite(upper) & used
        if self.statistic == "std":
            lo_ok = lo_ok & (lower > 0)
        scale = interval_half_width(lower, upper, INTENSITY_SCALE_FLOOR, lo_ok, up_ok)
        lower_f = torch.where(lo_ok, lower, torch.zeros_like(lower))
        upper_f = torch.where(up_ok, upper, torch.zeros_like(upper))
        psi = extended_log_barrier(torch.cat([((lower_f - f) / scale).reshape(batch, -1),
                                              ((f - upper_f) / scale).reshape(batch, -1)], dim=1), ctx.t)
        active = torch.cat([lo_ok.reshape(batch, -1), up_ok.reshape(batch, -1)], dim=1)
        inside = (~lo_ok | (f >= lower_f)) & (~up_ok | (f <= upper_f))  # (B, K, C)
        involved = (lo_ok | up_ok).any(dim=2)  # (B, K)
        satisfied = inside.all(dim=2) | ~involved
        return PriorPenalty(psi=psi, active=active, satisfied=satisfied, involved=involved)
