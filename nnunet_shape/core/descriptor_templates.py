"""Ellipsoid templates from descriptor targets, and the template cross-entropy (pure torch).

Per case, the descriptor targets of class ``k`` (centroid ``c_k`` and per-axis spread ``sigma_k``,
mm) describe a solid, axis-aligned ellipsoid: a uniform solid ellipsoid with semi-axes ``a_i``
has variance ``a_i^2 / 5`` along each of its axes, so ``a_ki = sqrt(5) sigma_ki`` -- the same rule
as the no-image baseline's ellipsoids (:mod:`nnunet_shape.core.baselines`), here per case and from
the targets a descriptor trainer already has, i.e. from **no information beyond the descriptors**.

A descriptor-only model starts from nothing: the barrier must move probability mass from a
random initialisation to the right place before it can shape it, and in a short schedule it
does not finish (``make demo``'s V+C+D rows end with most constraints unmet). A cross-entropy
towards these templates early in training puts the mass where the descriptors say at once; the
barrier and the image terms then take over (the trainers decay its weight; ``docs/method.md``,
"Descriptor templates").

* :func:`ellipsoid_template` -- the ``(B, *S)`` label map: class ``k`` where the voxel centre
  ``i_a s_a`` lies in its ellipsoid, the smallest-volume ellipsoid where several overlap (so a
  thin class nested on a large one survives, as in the baselines), equal volumes the smaller
  label, background (0) elsewhere.
* :func:`template_cross_entropy` -- mean cross-entropy of logits against such a map.

Shapes: ``centroid`` / ``spread`` (B, K, D) in mm (voxel centres at ``i_a * s_a``, the descriptor
convention of :mod:`nnunet_shape.core.descriptors`), ``present`` (B, K) bool, ``spacing`` (B, D) or
(D,) mm; class 0 is the background and never gets an ellipsoid. Everything stays on the
tensors' device (no host round trip).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from nnunet_shape.core.bounds import DescriptorBounds

__all__ = ["ellipsoid_template", "template_cross_entropy", "template_targets_from_bounds",
           "template_volume_from_bounds"]

#: variance of a uniform solid ellipsoid along a semi-axis a is a^2 / 5
SOLID_ELLIPSOID_VARIANCE_FACTOR = 5.0


def _spacing(spacing: Tensor | Sequence[float], batch: int, ndim: int, device: torch.device) -> Tensor:
    s = torch.as_tensor(spacing, dtype=torch.float32, device=device)
    if s.ndim == 1:
        s = s.expand(batch, -1)
    if tuple(s.shape) != (batch, ndim):
        raise ValueError(f"ellipsoid_template: spacing must be (D,) or (B, D) = ({batch}, {ndim}), "
                         f"got shape {tuple(s.shape)}")
    return s


def ellipsoid_template(centroid: Tensor, spread: Tensor, present: Tensor, spatial_shape: Sequence[int],
                       spacing: Tensor | Sequence[float], volume: Tensor | None = None) -> Tensor:
    """The ellipsoid label map of the descriptor targets (see the module doc).

    Args:
        centroid: (B, K, D) target centroids in mm.
        spread: (B, K, D) target per-axis standard deviations in mm; each is raised to at least
            one voxel's, ``s_a / sqrt(12)``, so a class one voxel thick does not vanish.
        present: (B, K) bool; absent classes, class 0 and classes whose centroid or spread is not
            finite get no ellipsoid.
        spatial_shape: ``(*S)``, D axes.
        spacing: (D,) or (B, D) mm.
        volume: optional (B, K) target volumes (mm^3, mm^2 in 2-D): where a class's moment
            ellipsoid is larger, its shortest semi-axis is shortened until the ellipsoid has that
            volume (a thin sheet such as cartilage has a large moment ellipsoid but a small volume:
            the template becomes a flat disc of the right volume instead of a thick lens that the
            volume bound would fight); never lengthened. NaN or non-finite: unchanged.

    Returns:
        (B, *S) int64 label map with values in ``0..K-1``.
    """
    if centroid.ndim != 3 or spread.shape != centroid.shape or present.shape != centroid.shape[:2]:
        raise ValueError(f"ellipsoid_template: centroid and spread must be (B, K, D) and present (B, K), got "
                         f"{tuple(centroid.shape)}, {tuple(spread.shape)}, {tuple(present.shape)}")
    batch, classes, ndim = centroid.shape
    shape = tuple(int(n) for n in spatial_shape)
    if len(shape) != ndim or any(n < 1 for n in shape):
        raise ValueError(f"ellipsoid_template: spatial shape {shape} must have D = {ndim} positive axes")
    device = centroid.device
    s = _spacing(spacing, batch, ndim, device)
    c = centroid.float()
    sigma = torch.maximum(spread.float(), (s / math.sqrt(12.0)).unsqueeze(1))
    semi_axes = math.sqrt(SOLID_ELLIPSOID_VARIANCE_FACTOR) * sigma  # (B, K, D)
    if volume is not None:
        if volume.shape != centroid.shape[:2]:
            raise ValueError(f"ellipsoid_template: volume must be (B, K) = {tuple(centroid.shape[:2])}, got "
                             f"{tuple(volume.shape)}")
        # volume of a D-ball of radius 1: 4/3 pi (3-D), pi (2-D)
        unit_ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
        ellipsoid_volume = unit_ball * semi_axes.prod(-1)
        ratio = torch.where(torch.isfinite(volume) & (volume > 0), volume.float() / ellipsoid_volume,
                            torch.ones_like(ellipsoid_volume)).clamp(max=1.0)
        shortest = semi_axes.argmin(-1, keepdim=True)
        voxel_floor = math.sqrt(SOLID_ELLIPSOID_VARIANCE_FACTOR / 12.0) * s.unsqueeze(1).expand_as(semi_axes)
        floor = voxel_floor.gather(-1, shortest)
        shortened = torch.maximum(semi_axes.gather(-1, shortest) * ratio.unsqueeze(-1), floor)
        semi_axes = semi_axes.scatter(-1, shortest, shortened)
    valid = present.bool() & torch.isfinite(c).all(-1) & torch.isfinite(sigma).all(-1)
    valid[:, 0] = False
    # normalised squared radius, summed axis by axis without a coordinate grid of (B, K, *S)
    radius = torch.zeros((batch, classes, *shape), device=device)
    for axis, n in enumerate(shape):
        coordinate = torch.arange(n, device=device, dtype=torch.float32) * s[:, axis, None]  # (B, n)
        term = ((coordinate[:, None, :] - c[:, :, axis, None]) / semi_axes[:, :, axis, None]) ** 2  # (B, K, n)
        view = [batch, classes] + [1] * ndim
        view[2 + axis] = n
        radius = radius + term.reshape(view)
    inside = (radius <= 1.0) & valid.reshape(batch, classes, *([1] * ndim))
    # the smallest ellipsoid wins; argmin's first index on ties is the smaller label
    volume = torch.where(valid, semi_axes.prod(-1), torch.full_like(semi_axes[..., 0], math.inf))
    score = torch.where(inside, volume.reshape(batch, classes, *([1] * ndim)), torch.full_like(radius, math.inf))
    return torch.where(inside.any(1), score.argmin(1), torch.zeros((), dtype=torch.int64, device=device))


def template_volume_from_bounds(bounds: DescriptorBounds) -> Tensor | None:
    """(B, K) midpoints of the two-sided volume bounds (NaN where a side is missing), or None when
    ``bounds`` constrain no volume."""
    if "volume" not in bounds.lower:
        return None
    lower, upper = bounds.lower["volume"], bounds.upper["volume"]
    return torch.where(torch.isfinite(lower) & torch.isfinite(upper), (lower + upper) / 2,
                       torch.full_like(lower, math.nan))


def template_targets_from_bounds(bounds: DescriptorBounds) -> tuple[Tensor, Tensor, Tensor] | None:
    """(centroid, spread, present) targets of ``bounds``: the midpoints of the two-sided centroid and
    spread intervals (a component with a missing or infinite side is NaN: no ellipsoid for that class),
    and the bounds' presence (all present when unknown). None when ``bounds`` constrain no centroid or no
    spread (e.g. a population prior without per-case positions)."""
    if "centroid" not in bounds.lower or "spread" not in bounds.lower:
        return None

    def midpoint(name: str) -> Tensor:
        lower, upper = bounds.lower[name], bounds.upper[name]
        both = torch.isfinite(lower) & torch.isfinite(upper)
        return torch.where(both, (lower + upper) / 2, torch.full_like(lower, math.nan))

    centroid, spread = midpoint("centroid"), midpoint("spread")
    present = bounds.presence()
    if present is None:
        present = torch.ones(centroid.shape[:2], dtype=torch.bool, device=centroid.device)
    return centroid, spread, present.expand(centroid.shape[:2])


def template_cross_entropy(logits: Tensor, template: Tensor) -> Tensor:
    """Mean over voxels and cases of ``-log softmax(logits)[template]``: ``logits`` (B, K, *S),
    ``template`` (B, *S) int64 labels in ``0..K-1``. Half-precision logits (autocast) are computed in
    float32."""
    if logits.ndim != template.ndim + 1 or logits.shape[0] != template.shape[0] or \
            logits.shape[2:] != template.shape[1:]:
        raise ValueError(f"template_cross_entropy: logits (B, K, *S) {tuple(logits.shape)} and template (B, *S) "
                         f"{tuple(template.shape)} do not match")
    wide = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.nn.functional.cross_entropy(wide, template)
