"""Descriptor bounds of one object from N points on its surface (issue 16; papers 000 and 003).

A few clicks on an object's surface do not determine its descriptors, but they bound them.
This module turns N surface points of one class into an interval for each descriptor the
loss uses -- volume, centroid and spread per array axis -- that contains the true (voxel)
value under stated assumptions, and widens as N falls. numpy only; the convex hull's facets
come from Qhull (``scipy.spatial.ConvexHull``) unless given.

Frame: the array frame of the case in mm (voxel centre ``i`` at ``i * spacing``, the
descriptor core's convention); descriptors are those of the object's voxel centres, as
:mod:`nnunet_shape.core.descriptors` and the descriptor files define them.

The reasoning
-------------
* **Sampling radius** ``r``: the largest nearest-neighbour distance among the points, plus
  half a voxel diagonal (a clicked point lies on the voxel-face surface, within that of a
  voxel centre). For points spread by farthest-point sampling (``simulate-points``), every
  surface point lies within the nearest-neighbour distance of a sample; for human clicks this
  is an assumption: the clicks cover the surface without large gaps. Fewer points, larger
  ``r``, wider bounds.
* **Outer set** ``R``: the object lies inside the convex hull of its surface, which lies
  inside the points' hull grown by ``r`` -- the voxel centres with ``n_f . x + c_f <= r`` for
  every hull facet f. Upper volume bound: ``|R|`` voxels.
* **Convexity test**: every point of a convex surface is a vertex of the points' hull; if
  one lies deeper than a quarter of the smallest spacing inside it, the object is non-convex.
  If none does, the object is *taken* as convex (a heuristic: few points on a curved plate can
  all be hull vertices -- the measured coverage shows where this fails), and the **inner
  set** ``I`` -- the voxel centres at least half a voxel diagonal inside the points' hull --
  belongs to it (the hull of points on a convex surface
  lies inside the object). Lower volume bound ``|I|``. A non-convex object (a cartilage plate)
  has no useful lower bound from its surface alone: the lower bound is then one voxel per
  point that no other point shares a voxel with (points more than one voxel apart on some axis).
* **Centroid** per axis: the extremes of the mean of ``I ∪ T`` over every ``T ⊆ R \\ I`` with
  at least the lower-bound number of voxels (add the lowest, resp. highest, coordinates of
  ``R \\ I`` while they pull the mean; exact over all such subsets).
* **Spread** per axis: lower -- the smallest standard deviation of any subset of ``R`` with at
  least ``k`` voxels (``k`` the volume lower bound): a contiguous window of the sorted
  coordinates of size ``k`` (a larger set always holds a ``k``-subset of smaller variance).
  Upper -- the largest standard deviation of the ``j`` lowest and ``size - j`` highest
  coordinates of ``R`` (the optimal subsets of a given size), over 24 sizes from ``k`` to
  ``|R|``, capped by Popoviciu's ``range / 2``.

What the bounds assume is therefore: the points lie on the object's surface and cover it
(sampling radius), and convexity is judged from the points. The coverage measured on the knee
phantoms is in docs/population-priors.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ClickBounds", "sampling_radius", "click_bounds", "hull_equations"]

#: number of subset sizes at which the spread upper bound is evaluated
SPREAD_SIZES = 24
#: a point deeper than this fraction of the smallest spacing inside the points' hull makes the
#: object non-convex (every point of a convex surface is a vertex of the hull, up to round-off)
CONVEX_DEPTH_FRACTION = 0.25
#: grid points per chunk when testing voxel centres against the hull facets
_CHUNK = 65536


@dataclass(frozen=True)
class ClickBounds:
    """Bounds of one object's descriptors (array frame, mm; NaN = unbounded).

    volume: (lower, upper) mm^3. centroid, spread: ((D,), (D,)) lower / upper.
    convex: the convexity test's verdict. radius: the sampling radius (mm). n_points: N.
    """

    volume: tuple[float, float]
    centroid: tuple[np.ndarray, np.ndarray]
    spread: tuple[np.ndarray, np.ndarray]
    convex: bool
    radius: float
    n_points: int


def _check_points(points: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(points, dtype=np.float64)
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if p.ndim != 2 or p.shape[1] != s.shape[0]:
        raise ValueError(f"click_bounds: points must be (N, {s.shape[0]}) for spacing {tuple(s)}, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("click_bounds: points hold NaN or infinite coordinates")
    if np.any(s <= 0):
        raise ValueError(f"click_bounds: spacing {tuple(s)} must be positive")
    return p, s


def sampling_radius(points: np.ndarray, spacing: Sequence[float]) -> float:
    """Largest nearest-neighbour distance among ``points`` (N, D) plus half a voxel diagonal."""
    p, s = _check_points(points, spacing)
    if len(p) < 2:
        raise ValueError(f"sampling_radius: needs at least 2 points, got {len(p)}")
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return float(np.sqrt(d2.min(axis=1).max()) + 0.5 * np.linalg.norm(s))


def hull_equations(points: np.ndarray) -> np.ndarray:
    """(F, D + 1) facets ``[n, c]`` of the points' convex hull, inside ``n . x + c <= 0``, |n| = 1."""
    from scipy.spatial import ConvexHull

    return np.asarray(ConvexHull(np.asarray(points, dtype=np.float64)).equations, dtype=np.float64)


def _separated_count(p: np.ndarray, s: np.ndarray) -> int:
    """Greedy number of points pairwise more than one voxel apart on some axis (distinct voxels)."""
    chosen: list[np.ndarray] = []
    for point in p:
        if all(np.any(np.abs(point - q) > s) for q in chosen):
            chosen.append(point)
    return len(chosen)


def _hull_depth(grid: np.ndarray, equations: np.ndarray) -> np.ndarray:
    """max_f (n_f . x + c_f) per grid point (> 0 outside the hull; -depth inside)."""
    out = np.empty(len(grid))
    for start in range(0, len(grid), _CHUNK):
        chunk = grid[start:start + _CHUNK]
        out[start:start + _CHUNK] = (chunk @ equations[:, :-1].T + equations[:, -1]).max(axis=1)
    return out


def _centroid_range(inner: np.ndarray, rest: np.ndarray, minimum: int) -> tuple[float, float]:
    """Extremes of mean(inner ∪ T), T ⊆ rest, |inner| + |T| >= minimum."""
    rest = np.sort(rest)
    n_i, s_i = len(inner), float(inner.sum())
    t_min = max(0, minimum - n_i)
    if n_i + len(rest) == 0:
        return math.nan, math.nan
    t = np.arange(t_min, len(rest) + 1)
    t = t[n_i + t > 0]
    low_sums = np.concatenate([[0.0], np.cumsum(rest)])[t]
    high_sums = np.concatenate([[0.0], np.cumsum(rest[::-1])])[t]
    return float(((s_i + low_sums) / (n_i + t)).min()), float(((s_i + high_sums) / (n_i + t)).max())


def _spread_range(values: np.ndarray, minimum: int) -> tuple[float, float]:
    """(min, max) standard deviation over subsets of ``values`` with at least ``minimum`` elements."""
    x = np.sort(values)
    m = len(x)
    k = int(min(max(minimum, 1), m))
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    c2 = np.concatenate([[0.0], np.cumsum(x * x)])
    window_mean = (c1[k:] - c1[:-k]) / k
    window_var = (c2[k:] - c2[:-k]) / k - window_mean ** 2
    low = float(np.sqrt(max(window_var.min(), 0.0)))
    high = 0.0
    for size in np.unique(np.geomspace(k, m, SPREAD_SIZES).round().astype(int)):
        j = np.arange(0, size + 1)  # j lowest, size - j highest
        total = c1[j] + (c1[m] - c1[m - (size - j)])
        squares = c2[j] + (c2[m] - c2[m - (size - j)])
        var = squares / size - (total / size) ** 2
        high = max(high, float(var.max()))
    high = min(math.sqrt(max(high, 0.0)), (x[-1] - x[0]) / 2)
    return low, max(high, low)


def click_bounds(points: np.ndarray, spacing: Sequence[float], shape: Sequence[int],
                 equations: np.ndarray | None = None) -> ClickBounds:
    """Bounds of the descriptors of the object whose surface the ``points`` lie on.

    Args:
        points: (N, D) surface points, array frame in mm (N >= D + 1, not all in one plane).
        spacing: (D,) voxel spacing of the case, array order.
        shape: (D,) array shape of the case (the object's voxels lie inside the image).
        equations: the points' hull facets (:func:`hull_equations`), computed if None.
    Returns:
        :class:`ClickBounds` (see the module docstring for the reasoning).
    """
    p, s = _check_points(points, spacing)
    d = s.shape[0]
    n = np.asarray(shape, dtype=np.int64).reshape(-1)
    if n.shape[0] != d or np.any(n <= 0):
        raise ValueError(f"click_bounds: shape {tuple(shape)} must have {d} positive entries")
    if len(p) < d + 1:
        raise ValueError(f"click_bounds: {len(p)} points cannot span a {d}-D object; give at least {d + 1}")
    if equations is None:
        equations = hull_equations(p)
    radius = sampling_radius(p, s)
    voxel = float(np.prod(s))
    half_diagonal = 0.5 * float(np.linalg.norm(s))
    depth = -(p @ equations[:, :-1].T + equations[:, -1]).max(axis=1)
    convex = bool(depth.max() <= CONVEX_DEPTH_FRACTION * float(s.min()))
    # voxel centres in the bounding box of the points grown by the radius, inside the image
    lo_index = np.clip(np.floor((p.min(0) - radius) / s), 0, n - 1).astype(int)
    hi_index = np.clip(np.ceil((p.max(0) + radius) / s), 0, n - 1).astype(int)
    axes = [np.arange(a, b + 1) * step for a, b, step in zip(lo_index, hi_index, s)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    value = _hull_depth(grid, equations)
    outer = value <= radius
    inner = (value <= -half_diagonal) if convex else np.zeros(len(grid), dtype=bool)
    n_outer = int(outer.sum())
    minimum = int(inner.sum()) if convex else _separated_count(p, s)
    minimum = max(1, min(minimum, n_outer))
    volume = (minimum * voxel, n_outer * voxel)
    c_lo, c_hi, s_lo, s_hi = (np.full(d, math.nan) for _ in range(4))
    if n_outer:
        rest_mask = outer & ~inner
        for a in range(d):
            c_lo[a], c_hi[a] = _centroid_range(grid[inner, a], grid[rest_mask, a], minimum)
            s_lo[a], s_hi[a] = _spread_range(grid[outer, a], minimum)
    return ClickBounds(volume, (c_lo, c_hi), (s_lo, s_hi), convex, radius, len(p))
