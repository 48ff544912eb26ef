"""Descriptor bounds: the feasible interval of every descriptor component (pure torch).

:class:`DescriptorBounds` holds lower/upper bounds per descriptor (NaN = unconstrained);
:func:`bounds_from_targets` makes them from target values with the papers' +-10 % margins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nnunet_shape.core.descriptors import DESCRIPTOR_NAMES

__all__ = [
    "DescriptorBounds",
    "bounds_from_targets",
    "descriptor_shape",
    "NON_NEGATIVE_DESCRIPTORS",
    "DEFAULT_RELATIVE_MARGIN",
    "DEFAULT_ABSOLUTE_MARGIN",
    "RESOLUTION_FLOOR",
    "interval_half_width",
    "interval_midpoint",
]

NON_NEGATIVE_DESCRIPTORS = frozenset({"volume", "surface", "spread"})
DEFAULT_RELATIVE_MARGIN = 0.1
# relative +-10 % is meaningless for coordinates near the origin: centroids get +-2 mm
DEFAULT_ABSOLUTE_MARGIN: dict[str, float] = {"centroid": 2.0}
# smallest half-width, in voxels (lengths) / voxel volumes / faces: finer intervals are at
# the resolution limit, and a steeper scale lets a tight spread dominate the centroid (the
# optimisation test converges ~2x slower with 0.05)
RESOLUTION_FLOOR = 0.5


def interval_half_width(
    lower: Tensor,
    upper: Tensor,
    floor: Tensor | float,
    lower_ok: Tensor | None = None,
    upper_ok: Tensor | None = None,
) -> Tensor:
    """The barrier scale of ``lower <= f <= upper``, the one rule of every bounded quantity
    (descriptors, relations, intensity statistics): half the interval when both sides are
    bounded (so the interval is ``z in [-2, 0]`` and its midpoint has ``psi = 0``), 10 % of the
    bound when one-sided, at least ``floor`` (so equality constraints stay finite).

    A side is bounded where it is finite (or where ``lower_ok`` / ``upper_ok`` says so, for
    callers that skip finite bounds too); ``floor`` broadcasts against the bounds.
    """
    lo_ok = torch.isfinite(lower) if lower_ok is None else lower_ok
    up_ok = torch.isfinite(upper) if upper_ok is None else upper_ok
    lo = torch.where(lo_ok, lower, torch.zeros_like(lower))
    up = torch.where(up_ok, upper, torch.zeros_like(upper))
    half = torch.where(lo_ok & up_ok, (up - lo).abs() / 2, DEFAULT_RELATIVE_MARGIN * (lo + up).abs())
    return torch.maximum(half, torch.as_tensor(floor, dtype=half.dtype, device=half.device))


def interval_midpoint(lower: Tensor, upper: Tensor) -> Tensor:
    """The middle of ``[lower, upper]``, the finite bound when one-sided, 0 when unbounded (the
    magnitude of ``scale_mode="natural"``)."""
    lo_ok, up_ok = torch.isfinite(lower), torch.isfinite(upper)
    lo = torch.where(lo_ok, lower, torch.zeros_like(lower))
    up = torch.where(up_ok, upper, torch.zeros_like(upper))
    return torch.where(lo_ok & up_ok, (lo + up) / 2, lo + up)


def descriptor_shape(name: str, batch: int, classes: int, ndim: int) -> tuple[int, ...]:
    if name in ("volume", "surface"):
        return (batch, classes)
    if name in ("centroid", "spread"):
        return (batch, classes, ndim)
    if name == "covariance":
        return (batch, classes, ndim, ndim)
    raise ValueError(f"unknown descriptor {name!r}; known: {DESCRIPTOR_NAMES}")


@dataclass
class DescriptorBounds:
    """Lower/upper bounds per descriptor; NaN = that component is unconstrained.

    ``lower[name]`` / ``upper[name]`` have the descriptor's shape (volume/surface (B, K),
    centroid/spread (B, K, D), covariance (B, K, D, D)); a leading batch size of 1
    broadcasts over the batch. ``present`` (B, K) bool marks the classes in the image;
    None infers it: a class is absent iff its volume upper bound is 0.
    """

    lower: dict[str, Tensor]
    upper: dict[str, Tensor]
    present: Tensor | None = None

    def __post_init__(self) -> None:
        for name in set(self.lower) | set(self.upper):
            if name not in DESCRIPTOR_NAMES:
                raise ValueError(
                    f"DescriptorBounds: unknown descriptor {name!r}; known: "
                    f"{DESCRIPTOR_NAMES}"
                )
            if (name in self.lower) != (name in self.upper):
                raise ValueError(
                    f"DescriptorBounds: {name!r} has only one of lower/upper; give "
                    f"both (NaN for an unconstrained side)"
                )
            if self.lower[name].shape != self.upper[name].shape:
                raise ValueError(
                    f"DescriptorBounds: {name!r} lower {tuple(self.lower[name].shape)}"
                    f" and upper {tuple(self.upper[name].shape)} differ in shape"
                )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in DESCRIPTOR_NAMES if n in self.lower)

    def presence(self) -> Tensor | None:
        """(B|1, K) bool: ``present`` if given, else ``volume upper != 0``; None if unknown."""
        if self.present is not None:
            return self.present.bool()
        if "volume" in self.upper:
            return ~(self.upper["volume"] == 0)
        return None

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> DescriptorBounds:
        return DescriptorBounds(
            lower={k: v.to(device=device, dtype=dtype) for k, v in self.lower.items()},
            upper={k: v.to(device=device, dtype=dtype) for k, v in self.upper.items()},
            present=None if self.present is None else self.present.to(device=device),
        )

    @classmethod
    def unconstrained(
        cls,
        batch: int,
        num_classes: int,
        ndim: int,
        names: Sequence[str] = ("volume", "centroid", "spread"),
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> DescriptorBounds:
        """All-NaN bounds of the right shapes, to fill in from hand-written priors."""
        lower, upper = {}, {}
        for name in names:
            shape = descriptor_shape(name, batch, num_classes, ndim)
            lower[name] = torch.full(shape, math.nan, device=device, dtype=dtype)
            upper[name] = torch.full(shape, math.nan, device=device, dtype=dtype)
        return cls(lower=lower, upper=upper)


def _per_name(value: float | Mapping[str, float] | None, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, Mapping):
        return float(value.get(name, default))
    return float(value)


def bounds_from_targets(
    targets: Mapping[str, Tensor],
    relative_margin: float | Mapping[str, float] = DEFAULT_RELATIVE_MARGIN,
    absolute_margin: Mapping[str, float] | None = None,
) -> DescriptorBounds:
    """Bounds ``tau +- max(relative * |tau|, absolute)`` around target descriptor values.

    Args:
        targets: {name: tau} with the descriptor shapes ((B, K), (B, K, D), (B, K, D, D)).
        relative_margin: one fraction for all descriptors, or {name: fraction}
            (missing names: 0.1, the papers' +-10 %).
        absolute_margin: {name: half-width in physical units}, merged over the defaults
            (centroid 2.0 mm, others 0).
    Returns:
        DescriptorBounds with ``present = volume > 0`` when ``volume`` is given. Absent
        classes (target volume 0) get volume bounds [0, 0] and NaN (unconstrained) for every
        other descriptor.

    For the covariance the relative half-width of component (a, b) is
    ``relative * sqrt(tau_aa * tau_bb)`` -- off-diagonal terms near 0 would otherwise get
    zero-width bounds.
    """
    absolute = dict(DEFAULT_ABSOLUTE_MARGIN)
    if absolute_margin is not None:
        absolute.update({k: float(v) for k, v in absolute_margin.items()})
    present = None
    if "volume" in targets:
        present = targets["volume"].detach() > 0
    lower: dict[str, Tensor] = {}
    upper: dict[str, Tensor] = {}
    for name, tau in targets.items():
        if name not in DESCRIPTOR_NAMES:
            raise ValueError(
                f"bounds_from_targets: unknown descriptor {name!r}; known: "
                f"{DESCRIPTOR_NAMES}"
            )
        tau = tau.detach()
        if not tau.is_floating_point():
            tau = tau.float()
        if name == "covariance":
            diagonal = torch.diagonal(tau, dim1=-2, dim2=-1).clamp_min(0.0)
            reference = torch.sqrt(diagonal.unsqueeze(-1) * diagonal.unsqueeze(-2))
        else:
            reference = tau.abs()
        half_width = torch.clamp(
            _per_name(relative_margin, name, DEFAULT_RELATIVE_MARGIN) * reference,
            min=absolute.get(name, 0.0),
        )
        lo, up = tau - half_width, tau + half_width
        if present is not None:
            absent = ~present.view(*present.shape, *([1] * (tau.ndim - 2)))
            absent = absent.expand_as(tau)
            fill = 0.0 if name == "volume" else math.nan
            lo = torch.where(absent, torch.full_like(lo, fill), lo)
            up = torch.where(absent, torch.full_like(up, fill), up)
        lower[name], upper[name] = lo, up
    return DescriptorBounds(lower=lower, upper=upper, present=present)
