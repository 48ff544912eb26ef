"""Differentiable shape descriptors of soft segmentations (pure torch, no nnU-Net).

Every function takes probabilities ``probs`` of shape ``(B, K, *S)`` -- batch, classes and
``D = len(S)`` spatial axes in the array order nnU-Net holds them (``(B, K, X, Y, Z)`` in 3-D,
``(B, K, X, Y)`` in 2-D) -- and an optional voxel ``spacing`` in the same axis order:

* ``None``: all ones (results in voxel units);
* a sequence of ``D`` floats, or a tensor of shape ``(D,)``: one spacing for the batch;
* a tensor of shape ``(B, D)``: one spacing per case.

Voxel centres sit at ``x_a = i_a * s_a`` (origin at the first voxel, physical units), so a
centroid is directly comparable with ``i * spacing`` computed from a label map.

Numerics
--------
* float16 / bfloat16 inputs are accumulated in float32 and results are returned in the
  input dtype; float32 and float64 are computed in their own precision. A float16 result
  that would overflow (above 65504: a volume of more voxels than that, a large covariance)
  is returned in float32 instead of as ``inf`` (checking it costs one host sync per result,
  for float16 outputs only). :func:`moments`, :func:`surface` and
  :func:`compute_descriptors` take a keyword ``dtype=torch.float32`` to always return
  float32 (the loss does this).
* Moments use coordinates centred on the image centre internally (``u_a = i_a - (n_a-1)/2``),
  which keeps ``E[u^2] - E[u]^2`` well conditioned in float32, and the shift is undone
  afterwards. The heavy pass is spacing-free (voxel-index units); spacing is applied to the
  tiny ``(B, K, D)`` results, which is how per-case spacing costs nothing extra.
* Empty classes (``sum p = 0``) give volume 0, centroid 0, covariance 0 and spread 0, all
  with finite gradients: the mass is clamped from below by ``finfo(dtype).eps`` in the
  divisions and the spread uses a safe square root (see :func:`spread`).
* No host round trips (no ``.item()``, no numpy): everything runs unchanged on CUDA.

Memory and speed: no coordinate grid is ever built. The moments contract one spatial axis
at a time with the ``(3, n_a)`` power basis ``[1, u_a, u_a**2]``; the first contraction
reads ``probs`` once and yields a tensor ``n_0 / 3`` times smaller, every later step is tiny,
and the result is every raw moment ``sum p * prod_a u_a**q_a`` with ``q_a <= 2`` at once.
The first contraction and the surface share ONE chunked pass over ``probs`` (a custom
autograd Function, :class:`_SinglePass`): chunks along the first spatial axis are read
once (and converted to float32 chunk by chunk for half inputs), and the backward writes the
gradient chunk by chunk. Autograd keeps no full-size intermediate: the moments' backward
needs only shapes, the surface's re-reads ``probs`` itself. The Function is
``once_differentiable`` (no double backward). See benchmarks/descriptor_throughput.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "DESCRIPTOR_NAMES",
    "Moments",
    "moments",
    "volume",
    "centroid",
    "covariance",
    "spread",
    "surface",
    "principal_axes",
    "elongation",
    "flatness",
    "class_ratio",
    "compute_descriptors",
    "one_hot_labels",
    "descriptors_from_labels",
    "safe_sqrt",
    "spacing_tensor",
]

DESCRIPTOR_NAMES: tuple[str, ...] = ("volume", "centroid", "spread", "covariance", "surface")
_MOMENT_NAMES = frozenset({"volume", "centroid", "spread", "covariance"})

SpacingLike = Sequence[float] | Tensor | None


class Moments(NamedTuple):
    """Physical moments of each class: ``volume (B, K)``, ``centroid (B, K, D)``,
    ``covariance (B, K, D, D)`` (units: spacing units cubed / spacing units / squared)."""

    volume: Tensor
    centroid: Tensor
    covariance: Tensor


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types accumulate in float32; float32/float64 keep their own precision."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype in (torch.float32, torch.float64):
        return dtype
    # integer / bool masks: treat as float32 probabilities
    return torch.float32


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.float32


def _narrow(values: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``values`` (accumulated in float32/64) in ``out_dtype``, except a float16 result that would
    overflow (|x| > 65504, e.g. a volume of more than 65504 voxels): that one stays in its
    accumulation dtype instead of becoming inf. Costs one host sync, for float16 outputs only
    (the loss asks for float32 and never pays it)."""
    narrowed = values.to(out_dtype)
    if out_dtype != torch.float16 or values.dtype == torch.float16:
        return narrowed
    overflow = torch.isfinite(values) & ~torch.isfinite(narrowed)
    return values if bool(overflow.any()) else narrowed


def _check_probs(probs: Tensor, function: str) -> int:
    if not isinstance(probs, Tensor):
        raise TypeError(
            f"{function}: probs must be a torch.Tensor (B, K, *spatial), "
            f"got {type(probs).__name__}"
        )
    if probs.ndim < 3:
        raise ValueError(
            f"{function}: probs must have shape (B, K, *spatial) with at least "
            f"one spatial axis, got shape {tuple(probs.shape)}"
        )
    return probs.ndim - 2


def _check_spacing_values(spacing: Tensor, function: str) -> None:
    """Raise unless every spacing value is finite and > 0 (a host tensor: no device sync)."""
    valid = torch.isfinite(spacing) & (spacing > 0)
    if not bool(valid.all()):
        raise ValueError(
            f"{function}: spacing must be finite and > 0 (physical size of a voxel), got "
            f"{spacing.tolist()}"
        )


def spacing_tensor(
    spacing: SpacingLike,
    batch: int,
    ndim: int,
    device: torch.device,
    dtype: torch.dtype,
    function: str,
) -> Tensor:
    """Spacing as a ``(1, D)`` or ``(B, D)`` tensor of ``dtype`` on ``device``.

    The one normalisation of every ``spacing`` argument (None = unit spacing, D floats, a
    ``(D,)`` or a ``(B, D)`` / ``(1, D)`` tensor); ``function`` names the caller in the error
    message. Passing the result on to another function of this module is free (no copy).

    Values must be finite and > 0 (ValueError otherwise). Floats and host tensors are checked
    here; a tensor already on an accelerator is not (that would cost a host sync per call, i.e.
    per training step): the trainers check the spacing once per case, on the host, when they
    read it.
    """
    if spacing is None:
        return torch.ones(1, ndim, device=device, dtype=dtype)
    if isinstance(spacing, Tensor):
        if spacing.device.type == "cpu":
            _check_spacing_values(spacing, function)
        s = spacing.to(device=device, dtype=dtype)
    else:
        values = [float(v) for v in spacing]
        _check_spacing_values(torch.tensor(values, dtype=torch.float64), function)
        s = torch.as_tensor(values, device=device, dtype=dtype)
    if s.ndim == 1:
        if s.shape[0] != ndim:
            raise ValueError(
                f"{function}: spacing has {s.shape[0]} values but probs has "
                f"{ndim} spatial axes"
            )
        return s.unsqueeze(0)
    if s.ndim == 2:
        if s.shape[1] != ndim or s.shape[0] not in (1, batch):
            raise ValueError(
                f"{function}: per-case spacing must have shape (B={batch}, "
                f"D={ndim}) or (1, {ndim}), got {tuple(s.shape)}"
            )
        return s
    raise ValueError(
        f"{function}: spacing must be None, D floats, a (D,) or a (B, D) "
        f"tensor, got a tensor of shape {tuple(s.shape)}"
    )


def _mass_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def safe_sqrt(x: Tensor, eps: float | None = None) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` with a finite value and gradient everywhere.

    Exact ``sqrt(x)`` for ``x > eps``; below it the linear continuation ``x / sqrt(eps)``
    (continuous at ``eps``, 0 at 0, slope ``1/sqrt(eps)`` instead of infinity). Negative
    inputs (round-off in a variance) give small negative values rather than NaN.
    ``eps`` defaults to ``finfo(x.dtype).eps``.
    """
    if eps is None:
        eps = float(torch.finfo(x.dtype).eps) if x.dtype.is_floating_point else 1e-7
    root_eps = eps**0.5
    # sqrt is evaluated on a clamped argument so the unused branch never yields inf/NaN grads
    exact = torch.sqrt(x.clamp_min(eps))
    return torch.where(x > eps, exact, x / root_eps)


def _power_basis(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(3, n)`` rows ``[1, u, u**2]`` with centred index coordinates ``u = i - (n-1)/2``."""
    u = torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2.0
    return torch.stack([torch.ones_like(u), u, u * u])


def _default_chunk_elements(device: torch.device) -> int:
    # CPU: chunks of ~4 MB stay in cache while every descriptor reads them; CUDA: large
    # chunks (few launches) that still bound the temporaries to ~64 MB
    return 1 << 24 if device.type == "cuda" else 1 << 20


def _neighbour_jumps(
    rows: Tensor, out: Tensor, block_shape: Sequence[int], axis: int, signs: bool
) -> Tensor:
    """``p(x + e_axis) - p(x)`` for every voxel of a block, as contiguous rows.

    Args:
        rows: (lead, N) view of a block of shape ``(lead, *block_shape)``, N = prod.
        out: (lead, >= N) scratch buffer.
        block_shape: the block's spatial shape (chunk length first).
        axis: spatial axis of the block (0 = the chunk axis).
        signs: return ``sign(jump)`` instead of the jump.
    Returns:
        (lead, N - stride) view of ``out`` whose column j holds the jump from voxel j to
        voxel j + stride (``stride`` = the axis' step in the flattened block); pairs that
        would wrap to the next row (voxel j on the last plane of the axis) are set to 0.

    Working on flattened rows keeps every subtraction contiguous (vectorised) instead of
    the strided ``narrow`` of the innermost axis, which is several times slower on CPU.
    """
    stride = math.prod(block_shape[axis + 1 :])
    total = rows.shape[1]
    jumps = out[:, : total - stride]
    torch.sub(rows[:, stride:], rows[:, :-stride], out=jumps)
    if signs:
        jumps.sign_()
    n = block_shape[axis]
    if axis > 0:
        # the plane i_axis = n-1 pairs with the next row's i_axis = 0: not a neighbour
        out[:, :total].view(rows.shape[0], *block_shape).narrow(1 + axis, n - 1, 1).zero_()
    return jumps


class _SinglePass(torch.autograd.Function):
    """One chunked pass over ``probs`` for the first moment contraction and the surface.

    Forward reads ``probs`` chunk by chunk along the first spatial axis (each chunk is
    converted to the compute dtype, so half inputs never get a full float32 copy) and
    produces

    * ``first``: (B*K, 3, prod(S[1:])) = sum over axis 0 of ``p * [1, u_0, u_0**2]``;
    * ``counts``: (B, K, D) = sum_x |p(x + e_a) - p(x)| per axis a (pairs inside the image).

    Backward writes the gradient chunk by chunk into one buffer: the basis projection of
    ``grad_first`` plus ``w_a * (sign(p(x) - p(x - e_a)) - sign(p(x + e_a) - p(x)))``.
    Only ``probs`` (the input, alive anyway) is saved: no full-size intermediates.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        probs: Tensor,
        compute_dtype: torch.dtype,
        want_moments: bool,
        want_surface: bool,
        chunk_elements: int,
    ) -> tuple[Tensor, Tensor]:
        batch, classes, n0, *rest = probs.shape
        lead = batch * classes
        plane = math.prod(rest)  # voxels per slice of the first axis
        ndim = 1 + len(rest)
        step = min(n0, max(1, chunk_elements // max(1, lead * plane)))
        basis = _power_basis(n0, probs.device, compute_dtype)
        first = probs.new_zeros((lead, 3, plane), dtype=compute_dtype)
        counts = probs.new_zeros((lead, ndim), dtype=compute_dtype)
        scratch = None
        for start in range(0, n0, step):
            stop = min(n0, start + step)
            length = stop - start
            # one extra slice after the chunk for the axis-0 pair that crosses the cut
            stop_ext = min(n0, stop + 1) if want_surface else stop
            block_ext = probs[:, :, start:stop_ext].to(compute_dtype)
            rows_ext = block_ext.reshape(lead, -1)  # a view: (b, k) rows are contiguous
            rows = rows_ext[:, : length * plane]
            if want_moments:
                first.add_(torch.matmul(basis[:, start:stop], rows.view(lead, length, plane)))
            if want_surface:
                if scratch is None:
                    scratch = rows_ext.new_empty((lead, (step + 1) * plane))
                if stop_ext - start > 1:
                    shape_ext = (stop_ext - start, *rest)
                    jumps = _neighbour_jumps(rows_ext, scratch, shape_ext, 0, signs=False)
                    counts[:, 0] += jumps.abs_().sum(dim=1)
                for a in range(1, ndim):
                    if rest[a - 1] > 1:
                        jumps = _neighbour_jumps(rows, scratch, (length, *rest), a, signs=False)
                        counts[:, a] += jumps.abs_().sum(dim=1)
        # the moments' backward needs only the shape; the surface's needs the values
        ctx.save_for_backward(probs if want_surface else None)
        ctx.probs_meta = (probs.shape, probs.dtype, probs.device)
        ctx.compute_dtype = compute_dtype
        ctx.want_moments = want_moments
        ctx.want_surface = want_surface
        ctx.step = step
        return first, counts.view(batch, classes, ndim)

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_first: Tensor | None, grad_counts: Tensor | None
    ) -> tuple[Tensor, None, None, None, None]:
        (probs,) = ctx.saved_tensors
        shape, probs_dtype, device = ctx.probs_meta
        dtype = ctx.compute_dtype
        batch, classes, n0, *rest = shape
        lead = batch * classes
        plane = math.prod(rest)
        ndim = 1 + len(rest)
        use_moments = ctx.want_moments and grad_first is not None
        use_surface = ctx.want_surface and grad_counts is not None
        grad = torch.empty(shape, dtype=probs_dtype, device=device)
        if not (use_moments or use_surface):
            return grad.zero_(), None, None, None, None
        basis_t = _power_basis(n0, device, dtype).t()  # (n0, 3)
        if use_moments:
            grad_first = grad_first.to(dtype)
        if use_surface:
            weights = grad_counts.to(dtype).reshape(lead, ndim)  # per row and axis
            scratch = torch.empty((lead, (ctx.step + 2) * plane), dtype=dtype, device=device)
        # accumulate straight into the output when no dtype conversion is needed
        direct = probs_dtype == dtype
        for start in range(0, n0, ctx.step):
            stop = min(n0, start + ctx.step)
            length = stop - start
            target = grad[:, :, start:stop].view(lead, length, plane)
            block_grad = target if direct else torch.empty_like(target, dtype=dtype)
            if use_moments:
                projection = basis_t[start:stop].expand(lead, length, 3)
                torch.bmm(projection, grad_first, out=block_grad)
            else:
                block_grad.zero_()
            if use_surface:
                g_rows = block_grad.view(lead, length * plane)
                # axis 0 needs the slices just before and after the chunk
                lo, hi = max(0, start - 1), min(n0, stop + 1)
                offset = start - lo
                rows_ext = probs[:, :, lo:hi].to(dtype).reshape(lead, -1)
                if hi - lo > 1:
                    signs = _neighbour_jumps(rows_ext, scratch, (hi - lo, *rest), 0, signs=True)
                    pairs = hi - lo - 1
                    w0 = weights[:, 0:1]
                    # pair p joins slices lo+p and lo+p+1: minus on the first, plus on the second
                    n_start = min(length, pairs - offset)
                    if n_start > 0:
                        starting = signs[:, offset * plane : (offset + n_start) * plane]
                        g_rows[:, : n_start * plane].addcmul_(starting, w0, value=-1.0)
                    first_end = 1 - offset
                    if length - first_end > 0:
                        first_pair = offset - 1 + first_end
                        ending = signs[:, first_pair * plane : (offset - 1 + length) * plane]
                        g_rows[:, first_end * plane :].addcmul_(ending, w0)
                rows = rows_ext[:, offset * plane : (offset + length) * plane]
                for a in range(1, ndim):
                    if rest[a - 1] > 1:
                        signs = _neighbour_jumps(rows, scratch, (length, *rest), a, signs=True)
                        wa = weights[:, a : a + 1]
                        width = signs.shape[1]
                        g_rows[:, :width].addcmul_(signs, wa, value=-1.0)
                        g_rows[:, length * plane - width :].addcmul_(signs, wa)
            if not direct:
                target.copy_(block_grad)
        return grad, None, None, None, None


def _single_pass(
    probs: Tensor,
    dtype: torch.dtype,
    want_moments: bool,
    want_surface: bool,
    chunk_elements: int | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Raw centred moments (B, K, 3, ..., 3) and surface face counts (B, K, D).

    ``raw[..., q_0, ..., q_{D-1}] = sum_x p(x) prod_a u_a(x)**q_a`` with
    ``u_a = i_a - (n_a - 1)/2`` (voxel-index units centred on the image), in ``dtype``.
    The first spatial axis is contracted by :class:`_SinglePass` together with the surface;
    the remaining contractions act on a tensor ``n_0 / 3`` times smaller.
    """
    batch, classes, *sizes = probs.shape
    if chunk_elements is None:
        chunk_elements = _default_chunk_elements(probs.device)
    first, counts = _SinglePass.apply(probs, dtype, want_moments, want_surface, chunk_elements)
    raw = None
    if want_moments:
        x = first  # (B*K, 3, n_1 * ... )
        lead = batch * classes * 3
        for n in sizes[1:]:
            basis = _power_basis(n, probs.device, dtype)
            x = torch.matmul(basis, x.reshape(lead, n, -1))
            lead = lead * 3
        raw = x.reshape(batch, classes, *([3] * len(sizes)))
    return raw, (counts if want_surface else None)


def _pick(raw: Tensor, powers: Sequence[int]) -> Tensor:
    index = (Ellipsis, *powers)
    return raw[index]


def _resolve_dtypes(probs: Tensor, dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, output dtype) for ``probs`` and an optional requested output."""
    out_dtype = dtype if dtype is not None else _output_dtype(probs.dtype)
    compute = _compute_dtype(probs.dtype)
    if out_dtype == torch.float64:
        compute = torch.float64
    return compute, out_dtype


# ----------------------------------------------------------------------------------------
# moments and wrappers
# ----------------------------------------------------------------------------------------


def _moments_from_raw(
    raw: Tensor, sizes: Sequence[int], s: Tensor, out_dtype: torch.dtype
) -> Moments:
    ndim = len(sizes)
    dtype = raw.dtype
    zero = [0] * ndim
    mass = _pick(raw, zero)  # (B, K) voxel count
    first = []
    for a in range(ndim):
        q = list(zero)
        q[a] = 1
        first.append(_pick(raw, q))
    m1 = torch.stack(first, dim=-1)  # (B, K, D)
    rows = []
    for a in range(ndim):
        row = []
        for b in range(ndim):
            q = list(zero)
            q[a] += 1
            q[b] += 1
            row.append(_pick(raw, q))
        rows.append(torch.stack(row, dim=-1))
    second = torch.stack(rows, dim=-2)  # (B, K, D, D)

    safe_mass = mass.clamp_min(_mass_eps(dtype)).unsqueeze(-1)  # (B, K, 1)
    mean_u = m1 / safe_mass  # centred index units; 0 for empty classes
    cov_u = second / safe_mass.unsqueeze(-1) - mean_u.unsqueeze(-1) * mean_u.unsqueeze(-2)

    centre = torch.tensor([(n - 1) / 2.0 for n in sizes], device=raw.device, dtype=dtype)
    # shift back inside the numerator so an empty class gets centroid 0, not the image centre
    mean_index = (m1 + centre * mass.unsqueeze(-1)) / safe_mass
    s_case = s.unsqueeze(1)  # (B|1, 1, D)
    centroid_phys = mean_index * s_case
    cov_phys = cov_u * s_case.unsqueeze(-1) * s_case.unsqueeze(-2)
    volume_phys = mass * s.prod(dim=-1, keepdim=True)  # (B, K)
    return Moments(
        volume=_narrow(volume_phys, out_dtype),
        centroid=_narrow(centroid_phys, out_dtype),
        covariance=_narrow(cov_phys, out_dtype),
    )


def _surface_from_counts(counts: Tensor, s: Tensor, out_dtype: torch.dtype) -> Tensor:
    # face area normal to axis a = product of the other spacings = prod(s) / s_a
    face_area = s.prod(dim=-1, keepdim=True) / s  # (B|1, D)
    return _narrow((counts * face_area.unsqueeze(1)).sum(dim=-1), out_dtype)


def moments(
    probs: Tensor,
    spacing: SpacingLike = None,
    *,
    dtype: torch.dtype | None = None,
    chunk_elements: int | None = None,
) -> Moments:
    """Volume, centroid and covariance of every class in one pass over ``probs``.

    Args:
        probs: (B, K, *S) probabilities (or any non-negative weights), D = len(S).
        spacing: None, D floats, (D,) or (B, D) tensor (see module docstring).
        dtype: output dtype (default: the input's). Pass float32 for half inputs, whose
            volumes overflow float16 above 65504.
        chunk_elements: elements per chunk of the single pass (default: ~4 MB on CPU,
            ~64 MB on CUDA); only affects speed and temporary memory.
    Returns:
        :class:`Moments` with volume (B, K) = prod(s) * sum p,
        centroid (B, K, D) = sum p x / sum p and
        covariance (B, K, D, D) = sum p (x - C)(x - C)^T / sum p.
        Empty classes give zeros (finite values and gradients).
    """
    return _moments(probs, spacing, dtype, chunk_elements, "moments")


def _moments(probs: Tensor, spacing: SpacingLike, dtype: torch.dtype | None, chunk_elements: int | None,
             function: str) -> Moments:
    """:func:`moments`, with ``function`` (the public function called) named in error messages."""
    ndim = _check_probs(probs, function)
    compute, out_dtype = _resolve_dtypes(probs, dtype)
    s = spacing_tensor(spacing, probs.shape[0], ndim, probs.device, compute, function)
    raw, _ = _single_pass(probs, compute, True, False, chunk_elements)
    return _moments_from_raw(raw, probs.shape[2:], s, out_dtype)


def volume(probs: Tensor, spacing: SpacingLike = None) -> Tensor:
    """(B, K) volume ``prod(s) * sum_x p(x)`` (area in 2-D)."""
    ndim = _check_probs(probs, "volume")
    dtype = _compute_dtype(probs.dtype)
    s = spacing_tensor(spacing, probs.shape[0], ndim, probs.device, dtype, "volume")
    mass = probs.sum(dim=tuple(range(2, probs.ndim)), dtype=dtype)
    return _narrow(mass * s.prod(dim=-1, keepdim=True), _output_dtype(probs.dtype))


def centroid(probs: Tensor, spacing: SpacingLike = None) -> Tensor:
    """(B, K, D) centroid ``sum p x / sum p`` with ``x_a = i_a * s_a``; 0 for empty classes."""
    return _moments(probs, spacing, None, None, "centroid").centroid


def covariance(probs: Tensor, spacing: SpacingLike = None) -> Tensor:
    """(B, K, D, D) weighted covariance ``sum p (x-C)(x-C)^T / sum p``; 0 for empty classes."""
    return _moments(probs, spacing, None, None, "covariance").covariance


def _spread_from_covariance(cov: Tensor) -> Tensor:
    dtype = _compute_dtype(cov.dtype)
    variance = torch.diagonal(cov.to(dtype), dim1=-2, dim2=-1)
    # round-off can make a zero variance slightly negative; where (not clamp) keeps the
    # gradient flowing at exactly 0, e.g. for a single voxel that should spread out
    variance = torch.where(variance >= 0, variance, torch.zeros_like(variance))
    return safe_sqrt(variance).to(cov.dtype)


def spread(probs: Tensor, spacing: SpacingLike = None) -> Tensor:
    """(B, K, D) per-axis weighted standard deviation ``sqrt(diag cov)``.

    This is the papers' "average distance to the centroid" D. The square root is
    :func:`safe_sqrt` (exact above ``finfo.eps`` in squared spacing units, linear below), so
    single-voxel and empty classes give 0 with a finite gradient.
    """
    return _spread_from_covariance(_moments(probs, spacing, None, None, "spread").covariance)


def surface(
    probs: Tensor,
    spacing: SpacingLike = None,
    *,
    dtype: torch.dtype | None = None,
    chunk_elements: int | None = None,
) -> Tensor:
    """(B, K) soft surface ``sum_a (prod_{b != a} s_b) * sum_x |p(x + e_a) - p(x)|``.

    Only pairs of neighbours inside the image count (the image border is not a face), so
    for a binary mask this is exactly the area of the faces between inside and outside
    voxels (the boundary length in 2-D, the perimeter of pixel edges). The subgradient of
    ``|.|`` at 0 is 0 (``sign(0) = 0``), so equal neighbours contribute no gradient.
    Computed chunk-wise with a hand-written backward: no full-size temporaries.
    """
    ndim = _check_probs(probs, "surface")
    compute, out_dtype = _resolve_dtypes(probs, dtype)
    s = spacing_tensor(spacing, probs.shape[0], ndim, probs.device, compute, "surface")
    _, counts = _single_pass(probs, compute, False, True, chunk_elements)
    return _surface_from_counts(counts, s, out_dtype)


# ----------------------------------------------------------------------------------------
# derived shape quantities
# ----------------------------------------------------------------------------------------


def principal_axes(covariance: Tensor) -> tuple[Tensor, Tensor]:
    """Principal standard deviations and axes of covariance matrices.

    Args:
        covariance: (..., D, D) symmetric positive semi-definite.
    Returns:
        lengths (..., D): square roots of the eigenvalues sorted in descending order
        (principal standard deviations, spacing units); vectors (..., D, D): the unit
        eigenvectors as COLUMNS in the same order (``vectors[..., :, i]`` belongs to
        ``lengths[..., i]``), from ``torch.linalg.eigh``.

    Gradient caveat: eigenvector gradients are undefined (infinite) where eigenvalues
    coincide (a sphere, an empty class); the lengths stay differentiable (safe square root)
    but do not back-propagate through ``vectors`` for degenerate shapes.
    """
    dtype = _compute_dtype(covariance.dtype)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.to(dtype))
    eigenvalues = eigenvalues.flip(-1)
    eigenvectors = eigenvectors.flip(-1)
    eigenvalues = torch.where(eigenvalues >= 0, eigenvalues, torch.zeros_like(eigenvalues))
    lengths = safe_sqrt(eigenvalues)
    return lengths.to(covariance.dtype), eigenvectors.to(covariance.dtype)


def _sorted_eigenvalues(covariance: Tensor) -> Tensor:
    dtype = _compute_dtype(covariance.dtype)
    return torch.linalg.eigvalsh(covariance.to(dtype)).flip(-1).clamp_min(0.0)


def elongation(covariance: Tensor) -> Tensor:
    """(...) ``sqrt(lambda_minor / lambda_major)`` in [0, 1] (pyradiomics convention).

    lambda are the covariance eigenvalues in descending order (major, minor, least);
    1 for a circle/sphere, towards 0 for a needle. SimpleITK's ``GetElongation`` is the
    inverse ratio (>= 1). A degenerate (all-zero) covariance gives 0.
    """
    lam = _sorted_eigenvalues(covariance)
    if lam.shape[-1] < 2:
        raise ValueError(
            f"elongation: needs at least 2 spatial axes, got covariance of "
            f"shape {tuple(covariance.shape)}"
        )
    eps = _mass_eps(lam.dtype)
    return safe_sqrt(lam[..., 1] / lam[..., 0].clamp_min(eps)).to(covariance.dtype)


def flatness(covariance: Tensor) -> Tensor:
    """(...) ``sqrt(lambda_least / lambda_major)`` in [0, 1] (pyradiomics convention).

    3-D only (pyradiomics has no 2-D flatness). SimpleITK's ``GetFlatness`` differs
    (``sqrt(lambda_minor / lambda_least)``, >= 1). A degenerate covariance gives 0.
    """
    lam = _sorted_eigenvalues(covariance)
    if lam.shape[-1] < 3:
        raise ValueError(
            f"flatness: defined for 3 spatial axes only, got covariance of "
            f"shape {tuple(covariance.shape)}"
        )
    eps = _mass_eps(lam.dtype)
    return safe_sqrt(lam[..., -1] / lam[..., 0].clamp_min(eps)).to(covariance.dtype)


def class_ratio(
    values: Tensor, numerator: int, denominator: int, eps: float | None = None
) -> Tensor:
    """``values[:, numerator] / values[:, denominator]``, safe for a zero denominator.

    Args:
        values: (B, K, ...) any per-class descriptor (volume (B, K), spread (B, K, D), ...).
        numerator, denominator: class indices k and l.
        eps: denominators with ``|den| < eps`` are replaced by ``eps`` (keeping their sign,
            + for 0); default ``finfo(dtype).eps``.
    Returns:
        (B, ...) ratio, finite with finite gradients.
    """
    dtype = _compute_dtype(values.dtype)
    if eps is None:
        eps = _mass_eps(dtype)
    num = values[:, numerator].to(dtype)
    den = values[:, denominator].to(dtype)
    sign = torch.where(den < 0, -1.0, 1.0).to(dtype)
    safe_den = torch.where(den.abs() < eps, sign * eps, den)
    return (num / safe_den).to(_output_dtype(values.dtype))


# ----------------------------------------------------------------------------------------
# bundles
# ----------------------------------------------------------------------------------------


def check_descriptor_names(names: str | Sequence[str], where: str) -> tuple[str, ...]:
    """``names`` as a tuple of known descriptor names; ``where`` (file and function) starts the
    error message for an unknown one."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    unknown = [n for n in names if n not in DESCRIPTOR_NAMES]
    if unknown:
        raise ValueError(
            f"{where}: unknown descriptor name(s) {unknown}; known: {DESCRIPTOR_NAMES}"
        )
    return names


def compute_descriptors(
    probs: Tensor,
    spacing: SpacingLike = None,
    names: Sequence[str] = ("volume", "centroid", "spread"),
    *,
    dtype: torch.dtype | None = None,
    chunk_elements: int | None = None,
) -> dict[str, Tensor]:
    """The requested descriptors from ONE chunked pass over ``probs`` (moments and surface
    share it).

    Returns ``{name: tensor}`` with volume (B, K), centroid (B, K, D), spread (B, K, D),
    covariance (B, K, D, D), surface (B, K), in the order of ``names``, in the input dtype
    or ``dtype`` if given.
    """
    names = check_descriptor_names(names, "compute_descriptors")
    ndim = _check_probs(probs, "compute_descriptors")
    compute, out_dtype = _resolve_dtypes(probs, dtype)
    s = spacing_tensor(spacing, probs.shape[0], ndim, probs.device, compute, "compute_descriptors")
    want_moments = bool(_MOMENT_NAMES.intersection(names))
    want_surface = "surface" in names
    raw, counts = _single_pass(probs, compute, want_moments, want_surface, chunk_elements)
    mom = _moments_from_raw(raw, probs.shape[2:], s, out_dtype) if want_moments else None
    out: dict[str, Tensor] = {}
    for name in names:
        if name == "surface":
            out[name] = _surface_from_counts(counts, s, out_dtype)
        elif name == "spread":
            out[name] = _spread_from_covariance(mom.covariance)
        else:
            out[name] = getattr(mom, name)
    return out


def one_hot_labels(
    labels: Tensor,
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    *,
    spatial_dims: int | None = None,
    validate: bool = True,
) -> Tensor:
    """One-hot ``(B, K, *S)`` encoding of an integer label map.

    Args:
        labels: (B, 1, *S) or (B, *S) integers. Values < 0 (nnU-Net's -1 padding) count as
            background 0. A 4-D ``(B, 1, X, Y)`` is read as a 2-D map with a channel axis;
            pass ``spatial_dims`` to resolve that ambiguity explicitly.
        num_classes: K.
        dtype: floating dtype of the result.
        spatial_dims: D, if known.
        validate: raise if a label is >= num_classes (needs one host sync on CUDA; pass
            False in a training loop -- such voxels are then all-zero rows).
    """
    if labels.is_floating_point():
        labels = labels.round().long()
    if spatial_dims is None:
        has_channel = labels.ndim >= 4 and labels.shape[1] == 1
    else:
        if labels.ndim == spatial_dims + 2:
            has_channel = True
            if labels.shape[1] != 1:
                raise ValueError(
                    f"one_hot_labels: expected (B, 1, *S) with D={spatial_dims}, "
                    f"got shape {tuple(labels.shape)}"
                )
        elif labels.ndim == spatial_dims + 1:
            has_channel = False
        else:
            raise ValueError(
                f"one_hot_labels: labels of shape {tuple(labels.shape)} do not "
                f"have D={spatial_dims} spatial axes"
            )
    if has_channel:
        labels = labels[:, 0]
    if validate and labels.numel() > 0:
        top = int(labels.max())
        if top >= num_classes:
            raise ValueError(
                f"one_hot_labels: label {top} found but num_classes={num_classes}"
            )
    labels = labels.clamp_min(0)
    classes = torch.arange(num_classes, device=labels.device, dtype=labels.dtype)
    classes = classes.view(1, num_classes, *([1] * (labels.ndim - 1)))
    return (labels.unsqueeze(1) == classes).to(dtype)


def descriptors_from_labels(
    labels: Tensor,
    num_classes: int,
    spacing: SpacingLike = None,
    names: Sequence[str] = ("volume", "centroid", "spread"),
    *,
    dtype: torch.dtype = torch.float32,
    spatial_dims: int | None = None,
    validate: bool = True,
) -> dict[str, Tensor]:
    """Descriptors of an integer label map (see :func:`one_hot_labels`), computed without
    gradient tracking. float32 counts voxels exactly up to 2**24 per class; pass
    ``dtype=torch.float64`` for larger scans."""
    with torch.no_grad():
        one_hot = one_hot_labels(
            labels, num_classes, dtype, spatial_dims=spatial_dims, validate=validate
        )
        return compute_descriptors(one_hot, spacing, names)
