"""Shape-descriptor loss: extended log-barriers on descriptor bounds (pure torch, no nnU-Net).

Every constrained component ``f`` of a descriptor (one class, one axis) with bounds
``[lower, upper]`` contributes the two constraints::

    z_low = (lower - f) / scale <= 0        z_up = (f - upper) / scale <= 0

each through :func:`~nnunet_shape.core.barrier.extended_log_barrier`. ``scale`` makes the
constraints comparable across descriptors.

Default ``scale_mode="half_width"``: ``scale`` is the half-width of the feasible interval,
``(upper - lower) / 2``, so for every descriptor the interval is ``z in [-2, 0]``, its
midpoint (the target) has ``psi(z_low) + psi(z_up) = 0`` and a violation of one interval
width costs the same whatever the descriptor. One-sided bounds use 10 % of the finite
bound, absent classes' ``volume <= 0`` uses ``1e-3 x image volume``, ratio priors
``(high - low) / 2``, equal-centroid priors the tolerance; all floored at half a voxel
(length ``s_a / 2``, volume ``prod(s) / 2``, covariance ``s_a s_b / 4``, surface half the
smallest face) so equality constraints stay finite. With the floor, an interval narrower
than a voxel is ``z in [-2h/floor, 0]`` and its midpoint costs a little more than 0.

Why not magnitude-based units (``scale_mode="natural"``: volume/surface by the midpoint,
floored at ``1e-3 x image volume`` (resp. ``x image volume ** ((D-1)/D)``), centroid/spread
by the image extent ``n_a * s_a``, covariance by ``extent_a * extent_b``, ratio priors by
the midpoint, equal centroids by the extent)? Near ``z = 0`` the barrier is linear with
slope ``t`` on ``z > -1/t**2``. When the whole interval is narrower than ``1/t**2`` in ``z``
units -- a 3 mm spread +-10 % in a 200 mm image is 0.003 wide against 0.04 at ``t = 5``,
and paper 001 starts at ``t = 1`` -- the two linear pieces cancel and the loss is exactly
flat in and around the interval: zero gradient, the constraint is never enforced
(tests/test_losses.py demonstrates it). Half-width units keep the log branch inside the
interval for every ``t >= 1/sqrt(2)``. "natural" is kept for comparison.

Other rules:

* NaN (or infinite) bounds leave that component unconstrained.
* Lower bounds ``<= 0`` of non-negative descriptors (volume, surface, spread) are skipped:
  ``f >= 0`` holds anyway and its barrier term would only push mass in (at ``z = 0`` the
  linear branch has slope ``t``).
* Absent classes (``DescriptorBounds.present`` False, or inferred: volume upper bound 0)
  only get ``volume <= 0``; all their other descriptors are unconstrained.
* Covariance: only the upper triangle (a <= b) is constrained, the matrix is symmetric.
* ``include_background=False`` drops class 0 from the descriptor constraints (priors may
  still name it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nnunet_shape.core.barrier import extended_log_barrier
from nnunet_shape.core.bounds import (
    DEFAULT_RELATIVE_MARGIN,
    NON_NEGATIVE_DESCRIPTORS,
    RESOLUTION_FLOOR,
    DescriptorBounds,
    bounds_from_targets,
    descriptor_shape,
    interval_half_width,
    interval_midpoint,
)
from nnunet_shape.core.descriptors import (
    DESCRIPTOR_NAMES,
    SpacingLike,
    check_descriptor_names,
    compute_descriptors,
    descriptors_from_labels,
    spacing_tensor,
)
from nnunet_shape.core.priors import EqualCentroidPrior, Prior, PriorContext, RatioPrior

__all__ = [
    "ShapeLossResult",
    "shape_descriptor_loss",
    "ShapeDescriptorLoss",
    # re-exported so that ``from nnunet_shape.core.losses import DescriptorBounds`` keeps working
    "DescriptorBounds",
    "RatioPrior",
    "EqualCentroidPrior",
    "bounds_from_targets",
]

ABSENT_VOLUME_FRACTION = 1e-3  # volume scale floor and "absent" tolerance, x image volume
SURFACE_SCALE_FRACTION = 1e-3  # surface scale floor, x image volume ** ((D-1)/D)
REDUCTIONS = ("mean", "sum", "none")
SCALE_MODES = ("half_width", "natural")


# ----------------------------------------------------------------------------------------
# results and priors
# ----------------------------------------------------------------------------------------


@dataclass
class ShapeLossResult:
    """Output of :func:`shape_descriptor_loss`.

    loss: scalar (reduction "mean"/"sum") or (B,) ("none").
    terms: {descriptor or prior name: its penalty}, reduced like ``loss``;
        ``loss == sum(terms.values())``.
    satisfied: {name: (B, K) bool} -- every active constraint of that class lies within its
        bounds (no active constraint counts as satisfied). For priors the prior's status
        is written on the classes it involves and True elsewhere.
    active: {name: (B, K) bool} -- the class had at least one active constraint; the
        fraction of satisfied constraints is ``satisfied[n][active[n]].float().mean()``.
    values: {descriptor name: its value on the prediction} (for logging).
    """

    loss: Tensor
    terms: dict[str, Tensor]
    satisfied: dict[str, Tensor]
    active: dict[str, Tensor] = field(default_factory=dict)
    values: dict[str, Tensor] = field(default_factory=dict)

    def detach(self) -> ShapeLossResult:
        def det(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.detach() for k, v in d.items()}

        return ShapeLossResult(
            loss=self.loss.detach(),
            terms=det(self.terms),
            satisfied=det(self.satisfied),
            active=det(self.active),
            values=det(self.values),
        )

    def satisfaction_fraction(self, name: str | None = None) -> Tensor:
        """Fraction (0-d tensor, on device) of active (case, class) pairs that are satisfied,
        for one name or pooled over all names; 1 when nothing is active."""
        names = [name] if name is not None else list(self.satisfied)
        sat = torch.cat([self.satisfied[n][self.active[n]].reshape(-1) for n in names])
        if sat.numel() == 0:
            return torch.ones((), device=self.loss.device)
        return sat.float().mean()


# ----------------------------------------------------------------------------------------
# the loss
# ----------------------------------------------------------------------------------------


def _expand_like(x: Tensor, ref: Tensor) -> Tensor:
    """Broadcast a per-case tensor with trailing singleton dims to ``ref``'s shape."""
    return torch.broadcast_to(x.view(*x.shape, *([1] * (ref.ndim - x.ndim))), ref.shape)


def _natural_scale(name: str, lower: Tensor, upper: Tensor, extent: Tensor, ndim: int) -> Tensor:
    """``scale_mode="natural"``: magnitude-based units, broadcastable to the descriptor."""
    if name in ("centroid", "spread"):
        return extent.unsqueeze(1)  # (B|1, 1, D)
    if name == "covariance":
        return (extent.unsqueeze(-1) * extent.unsqueeze(-2)).unsqueeze(1)  # (B|1, 1, D, D)
    image_volume = extent.prod(dim=-1, keepdim=True)  # (B|1, 1)
    if name == "volume":
        floor = ABSENT_VOLUME_FRACTION * image_volume
    else:  # surface
        floor = SURFACE_SCALE_FRACTION * image_volume ** ((ndim - 1) / ndim)
    return torch.maximum(interval_midpoint(lower, upper).abs(), floor)


def _resolution_floor(name: str, spacing: Tensor, ndim: int) -> Tensor:
    """Smallest scale of a component: half a voxel in the descriptor's units."""
    if name in ("centroid", "spread"):
        return RESOLUTION_FLOOR * spacing.unsqueeze(1)  # (B|1, 1, D)
    if name == "covariance":
        step = RESOLUTION_FLOOR * spacing
        return (step.unsqueeze(-1) * step.unsqueeze(-2)).unsqueeze(1)
    voxel = spacing.prod(dim=-1, keepdim=True)  # (B|1, 1)
    if name == "volume":
        return RESOLUTION_FLOOR * voxel
    return RESOLUTION_FLOOR * (voxel / spacing).min(dim=-1, keepdim=True).values  # a face


def _half_width_scale(
    name: str,
    lower: Tensor,
    upper: Tensor,
    present: Tensor,
    spacing: Tensor,
    extent: Tensor,
    ndim: int,
) -> Tensor:
    """``scale_mode="half_width"``: the half-width of the feasible interval
    (:func:`~nnunet_shape.core.bounds.interval_half_width`: ``(upper - lower) / 2``, 10 % of a
    one-sided bound), floored at half a voxel (:func:`_resolution_floor`). Absent classes'
    volume (``<= 0``): ``1e-3 x image volume``.
    """
    half = interval_half_width(lower, upper, _resolution_floor(name, spacing, ndim))
    if name == "volume":
        image_volume = extent.prod(dim=-1, keepdim=True)  # (B|1, 1)
        absent_scale = (ABSENT_VOLUME_FRACTION * image_volume).expand_as(half)
        half = torch.where(present, half, absent_scale)
    return half


def _check_bounds_shapes(
    bounds: DescriptorBounds, descriptors: Sequence[str], batch: int, num_classes: int, ndim: int
) -> None:
    """Every bound (and ``present``) must broadcast to its descriptor's (B, K, ...) shape: a
    bound made for another batch or class count would otherwise fail deep inside torch (or,
    with a batch of 1, broadcast silently over a batch it was not made for)."""
    shapes = {name: descriptor_shape(name, batch, num_classes, ndim) for name in descriptors}
    given = {name: tuple(bounds.lower[name].shape) for name in descriptors}
    if bounds.present is not None:
        shapes["present"] = (batch, num_classes)
        given["present"] = tuple(bounds.present.shape)
    for name, expected in shapes.items():
        shape = given[name]
        try:
            ok = torch.broadcast_shapes(shape, expected) == expected
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"shape_descriptor_loss: bounds for {name!r} have shape {shape}, expected "
                f"{expected} (B={batch} cases or 1, K={num_classes} classes, D={ndim} axes)"
            )


def shape_descriptor_loss(
    probs: Tensor,
    bounds: DescriptorBounds,
    spacing: SpacingLike = None,
    t: float | Tensor = 5.0,
    descriptors: Sequence[str] = ("volume", "centroid", "spread"),
    include_background: bool = False,
    priors: Sequence[Prior] = (),
    reduction: str = "mean",
    *,
    values: Mapping[str, Tensor] | None = None,
    scale_mode: str = "half_width",
) -> ShapeLossResult:
    """Extended log-barrier penalty of the descriptor bounds (see the module docstring).

    Args:
        probs: (B, K, *S) softmax probabilities.
        bounds: DescriptorBounds; every name in ``descriptors`` must be present in it.
        spacing: None, D floats, (D,) or (B, D) tensor.
        t: barrier parameter (float or 0-d tensor).
        descriptors: the descriptors to constrain.
        include_background: constrain class 0 too.
        priors: RatioPrior / EqualCentroidPrior / relation instances (``name``,
            ``required_descriptors``, ``penalty(ctx)``), or groups of them whose
            ``penalties(ctx)`` returns ``{name: PriorPenalty}`` (evaluated together).
        reduction: "mean" -- per case, every descriptor (and prior) contributes the mean of
            its active barrier terms, these are summed, then averaged over the batch (adding
            a descriptor does not rescale the others); "sum" -- plain sum of all active terms
            over constraints and batch; "none" -- the per-case values of "mean", shape (B,).
        values: precomputed descriptor values of ``probs`` (skip recomputation).
        scale_mode: "half_width" (default) or "natural" -- how violations are normalised,
            see the module docstring.
    Returns:
        ShapeLossResult (descriptor values are computed in float32 at least).
    """
    descriptors = check_descriptor_names(descriptors, "shape_descriptor_loss")
    if scale_mode not in SCALE_MODES:
        raise ValueError(
            f"shape_descriptor_loss: scale_mode must be one of {SCALE_MODES}, got "
            f"{scale_mode!r}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"shape_descriptor_loss: reduction must be one of {REDUCTIONS}, got "
            f"{reduction!r}"
        )
    missing = [d for d in descriptors if d not in bounds.lower]
    if missing:
        raise ValueError(
            f"shape_descriptor_loss: no bounds for descriptor(s) {missing}; bounds "
            f"have {bounds.names} (use NaN bounds for unconstrained components)"
        )
    batch, num_classes, *sizes = probs.shape
    ndim = len(sizes)
    _check_bounds_shapes(bounds, descriptors, batch, num_classes, ndim)
    compute_dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    needed = list(descriptors)
    for prior in priors:
        needed += [d for d in prior.required_descriptors if d not in needed]
    # spacing is normalised once, here; compute_descriptors gets the (B|1, D) tensor as it is
    s = spacing_tensor(spacing, batch, ndim, probs.device, compute_dtype, "shape_descriptor_loss")
    vals: dict[str, Tensor] = dict(values) if values is not None else {}
    todo = [n for n in needed if n not in vals]
    if todo:
        vals.update(compute_descriptors(probs, s, todo, dtype=compute_dtype))
    vals = {k: v.to(compute_dtype) for k, v in vals.items()}

    extent = s * torch.tensor(sizes, device=probs.device, dtype=compute_dtype)  # (B|1, D)

    presence = bounds.presence()
    if presence is None:
        present = torch.ones(batch, num_classes, dtype=torch.bool, device=probs.device)
    else:
        present = torch.broadcast_to(presence.to(probs.device).bool(), (batch, num_classes))
    class_used = torch.ones(batch, num_classes, dtype=torch.bool, device=probs.device)
    if not include_background:
        class_used[:, 0] = False

    per_case: dict[str, Tensor] = {}
    raw_sum: dict[str, Tensor] = {}
    satisfied: dict[str, Tensor] = {}
    active_classes: dict[str, Tensor] = {}
    for name in descriptors:
        f = vals[name]
        lower = torch.broadcast_to(bounds.lower[name].to(f.device, compute_dtype), f.shape)
        upper = torch.broadcast_to(bounds.upper[name].to(f.device, compute_dtype), f.shape)
        usable = _expand_like(class_used, f)
        present_c = _expand_like(present, f)
        if name == "volume":
            # absent classes: only volume <= 0 (whatever hand-written bounds said)
            upper = torch.where(present_c, upper, torch.zeros_like(upper))
            lower = torch.where(present_c, lower, torch.full_like(lower, math.nan))
        lower_ok = torch.isfinite(lower) & present_c
        upper_ok = torch.isfinite(upper) & (present_c | (name == "volume"))
        if name in NON_NEGATIVE_DESCRIPTORS:
            lower_ok = lower_ok & (lower > 0)
        if name == "covariance":
            triu = torch.ones(ndim, ndim, dtype=torch.bool, device=f.device).triu()
            lower_ok, upper_ok = lower_ok & triu, upper_ok & triu
        lower_ok, upper_ok = lower_ok & usable, upper_ok & usable

        if scale_mode == "half_width":
            scale = _half_width_scale(name, lower, upper, present_c, s, extent, ndim)
        else:
            scale = _natural_scale(name, lower, upper, extent, ndim)
        scale = torch.broadcast_to(scale, f.shape)
        lower_f = torch.where(lower_ok, lower, torch.zeros_like(lower))
        upper_f = torch.where(upper_ok, upper, torch.zeros_like(upper))
        z_low = (lower_f - f) / scale
        z_up = (f - upper_f) / scale
        psi_low = torch.where(lower_ok, extended_log_barrier(z_low, t), torch.zeros_like(z_low))
        psi_up = torch.where(upper_ok, extended_log_barrier(z_up, t), torch.zeros_like(z_up))

        # satisfaction: absent classes tolerate a residual soft volume (probabilities are
        # never exactly 0) up to the volume scale floor, i.e. z_up <= 1
        upper_tol = torch.zeros_like(upper)
        if name == "volume":
            upper_tol = torch.where(present_c, upper_tol, scale)
        ok = (~lower_ok | (f >= lower_f)) & (~upper_ok | (f <= upper_f + upper_tol))
        any_active = lower_ok | upper_ok
        reduce_dims = tuple(range(2, f.ndim))
        if reduce_dims:
            ok = ok.all(dim=reduce_dims)
            any_active_class = any_active.any(dim=reduce_dims)
        else:
            any_active_class = any_active
        satisfied[name] = ok
        active_classes[name] = any_active_class

        case_dims = tuple(range(1, f.ndim))
        total = (psi_low + psi_up).sum(dim=case_dims)  # (B,)
        count = (lower_ok.sum(dim=case_dims) + upper_ok.sum(dim=case_dims)).to(total.dtype)
        raw_sum[name] = total
        per_case[name] = total / count.clamp_min(1.0)

    ctx = PriorContext(vals, present, s, extent, t, scale_mode)
    for prior in priors:
        # a group of priors (a population prior's relations) evaluates its members together
        named = prior.penalties(ctx) if hasattr(prior, "penalties") else {prior.name: prior.penalty(ctx)}
        for key, pen in named.items():
            psi = torch.where(pen.active, pen.psi, torch.zeros_like(pen.psi))
            total = psi.sum(dim=1)
            count = pen.active.sum(dim=1).to(total.dtype)
            raw_sum[key] = total
            per_case[key] = total / count.clamp_min(1.0)
            satisfied[key] = pen.satisfied
            active_classes[key] = pen.involved

    if reduction == "mean":
        terms = {k: v.mean() for k, v in per_case.items()}
    elif reduction == "sum":
        terms = {k: v.sum() for k, v in raw_sum.items()}
    else:
        terms = dict(per_case)
    if terms:
        loss = torch.stack(list(terms.values())).sum(dim=0)
    else:
        loss = probs.new_zeros(() if reduction != "none" else (batch,), dtype=compute_dtype)
    return ShapeLossResult(
        loss=loss,
        terms=terms,
        satisfied=satisfied,
        active=active_classes,
        values={k: vals[k] for k in needed},
    )


class LabelRangeCheck:
    """"Every label of the target map is < K", without a host sync in the training step.

    :meth:`observe` takes one ``amax`` of the label map on its device. Host tensors are checked
    at once. On CUDA the maximum is copied to pinned host memory asynchronously with an event
    behind it; :meth:`poll` raises for every observation whose event has completed (a
    non-blocking query: the next forward therefore raises, one step late at most once the device
    has caught up) and :meth:`flush` waits for all of them (the trainers call it after each
    step, where ``loss.cpu()`` has synchronised anyway). Other accelerators are checked at once.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._pending: list[tuple[Tensor, object, int]] = []

    def _raise_if_bad(self, top: float, num_classes: int) -> None:
        if top >= num_classes:
            raise ValueError(
                f"{self.owner}: the target label map holds label {top:g}, but the prediction has "
                f"K={num_classes} classes (labels 0..{num_classes - 1}); the labels in dataset.json "
                f"and the label files disagree"
            )

    def observe(self, labels: Tensor, num_classes: int) -> None:
        if labels.numel() == 0:
            return
        top = labels.detach().amax()
        if top.device.type != "cuda":
            self._raise_if_bad(float(top), num_classes)
            return
        host = torch.empty((), dtype=top.dtype, pin_memory=True)
        host.copy_(top, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((host, event, num_classes))

    def poll(self, block: bool = False) -> None:
        pending, self._pending = self._pending, []
        for index, (host, event, num_classes) in enumerate(pending):
            if not block and not event.query():
                self._pending = pending[index:]  # events complete in order
                return
            event.synchronize()
            self._raise_if_bad(float(host), num_classes)

    def flush(self) -> None:
        self.poll(block=True)


class ShapeDescriptorLoss(nn.Module):
    """Module form of :func:`shape_descriptor_loss` with bounds made on the fly.

    ``forward(probs, target, spacing=None)`` accepts as ``target``:

    * an integer (or integer-valued float, as nnU-Net's loader gives) label map
      (B, 1, *S) -- its descriptors are computed under no_grad, then
      :func:`bounds_from_targets` with this module's margins;
    * a (B, K, *S) float tensor of the same shape as ``probs`` (soft / one-hot target, or
      nnU-Net region masks for sigmoid outputs; with K == 1 a float (B, 1, *S) is read as
      such a mask, not as a label map);
    * a dict of target descriptor values {name: tau};
    * a :class:`DescriptorBounds`.

    The attribute ``t`` may be changed between steps (e.g. from a BarrierSchedule).
    ``self.last_result`` holds the detached :class:`ShapeLossResult` of the last forward.

    Checked per call (shapes only, nothing per voxel): probs and target have the same batch
    size; a label map holds no label >= K (one ``amax`` on the device; on CUDA the answer is
    read without a host sync, see :class:`LabelRangeCheck`, and ``self.label_check.flush()``
    raises for every step seen so far).
    """

    def __init__(
        self,
        descriptors: Sequence[str] = ("volume", "centroid", "spread"),
        t: float = 5.0,
        relative_margin: float | Mapping[str, float] = DEFAULT_RELATIVE_MARGIN,
        absolute_margin: Mapping[str, float] | None = None,
        include_background: bool = False,
        priors: Sequence[Prior] = (),
        reduction: str = "mean",
        *,
        apply_softmax: bool = False,
        scale_mode: str = "half_width",
    ) -> None:
        super().__init__()
        self.descriptors = check_descriptor_names(descriptors, "ShapeDescriptorLoss")
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"ShapeDescriptorLoss: reduction must be one of {REDUCTIONS}, got "
                f"{reduction!r}"
            )
        self.t = float(t)
        self.relative_margin = relative_margin
        self.absolute_margin = absolute_margin
        self.include_background = include_background
        self.priors = tuple(priors)
        self.reduction = reduction
        self.apply_softmax = apply_softmax
        if scale_mode not in SCALE_MODES:
            raise ValueError(
                f"ShapeDescriptorLoss: scale_mode must be one of {SCALE_MODES}, got "
                f"{scale_mode!r}"
            )
        self.scale_mode = scale_mode
        self.last_result: ShapeLossResult | None = None
        self.label_check = LabelRangeCheck("ShapeDescriptorLoss")

    def target_names(self) -> tuple[str, ...]:
        """Descriptors needed from a target: the constrained ones, the priors', and volume
        (which decides absent classes)."""
        names = ["volume", *self.descriptors]
        for prior in self.priors:
            names += list(prior.required_descriptors)
        return tuple(n for n in DESCRIPTOR_NAMES if n in names)

    def make_bounds(
        self,
        target: Tensor | Mapping[str, Tensor] | DescriptorBounds,
        num_classes: int,
        spatial_shape: Sequence[int],
        spacing: SpacingLike = None,
    ) -> DescriptorBounds:
        """Bounds from any accepted target form (see the class docstring)."""
        if isinstance(target, DescriptorBounds):
            return target
        if isinstance(target, Mapping):
            return bounds_from_targets(target, self.relative_margin, self.absolute_margin)
        if not isinstance(target, Tensor):
            raise TypeError(
                f"ShapeDescriptorLoss: target must be a label map tensor, a dict of "
                f"descriptor values or DescriptorBounds, got {type(target).__name__}"
            )
        ndim = len(spatial_shape)
        names = self.target_names()
        with torch.no_grad():
            same_grid = tuple(target.shape[2:]) == tuple(spatial_shape)
            soft = target.ndim == ndim + 2 and target.is_floating_point() and same_grid
            # (B, K, *S) floats are soft targets / region masks; with K == 1 a label map
            # would be meaningless (every voxel class 0), so a (B, 1, *S) float is a mask too
            if soft and target.shape[1] == num_classes:
                wide = torch.float64 if target.dtype == torch.float64 else torch.float32
                values = compute_descriptors(target, spacing, names, dtype=wide)
            elif target.ndim in (ndim + 1, ndim + 2) and tuple(target.shape[-ndim:]) == tuple(
                spatial_shape
            ):
                # labels >= K would silently count as background: one amax on the device
                self.label_check.observe(target, num_classes)
                values = descriptors_from_labels(
                    target, num_classes, spacing, names, spatial_dims=ndim, validate=False
                )
            else:
                raise ValueError(
                    f"ShapeDescriptorLoss: target of shape {tuple(target.shape)} is "
                    f"neither a (B, 1, *S) label map nor (B, K, *S) probabilities for "
                    f"K={num_classes}, S={tuple(spatial_shape)}"
                )
        return bounds_from_targets(values, self.relative_margin, self.absolute_margin)

    def forward(
        self,
        probs: Tensor,
        target: Tensor | Mapping[str, Tensor] | DescriptorBounds,
        spacing: SpacingLike = None,
        *,
        return_result: bool = False,
        values: Mapping[str, Tensor] | None = None,
    ) -> Tensor | ShapeLossResult:
        """``values``: passed to :func:`shape_descriptor_loss` (e.g. the intensity statistics that
        intensity relations among ``priors`` read, :func:`nnunet_shape.core.intensity.intensity_values`)."""
        self.label_check.poll()
        if isinstance(target, Tensor) and target.ndim >= 1 and target.shape[0] != probs.shape[0]:
            raise ValueError(
                f"ShapeDescriptorLoss: probs have batch size {probs.shape[0]} "
                f"(shape {tuple(probs.shape)}) but the target has {target.shape[0]} "
                f"(shape {tuple(target.shape)})"
            )
        if self.apply_softmax:
            probs = torch.softmax(probs, dim=1)
        bounds = self.make_bounds(target, probs.shape[1], probs.shape[2:], spacing)
        result = shape_descriptor_loss(
            probs,
            bounds,
            spacing=spacing,
            t=self.t,
            descriptors=self.descriptors,
            include_background=self.include_background,
            priors=self.priors,
            reduction=self.reduction,
            values=values,
            scale_mode=self.scale_mode,
        )
        self.last_result = result.detach()
        return result if return_result else result.loss

    def extra_repr(self) -> str:
        return (
            f"descriptors={self.descriptors}, t={self.t}, relative_margin={self.relative_margin}, "
            f"absolute_margin={self.absolute_margin}, "
            f"include_background={self.include_background}, "
            f"priors={self.priors}, reduction={self.reduction!r}"
        )
