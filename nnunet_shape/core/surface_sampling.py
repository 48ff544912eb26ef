"""Points on the surface of a label mask: boundary voxels and seeded farthest-point sampling.

This is how ``nnunet-shape simulate-points`` imitates an annotator who clicks N points spread
over the whole surface of an object (paper 003 simulates its annotators from full labels; its
algorithm is in a supplement we do not have, so this is our choice, see docs/weak-points.md).

Frame: the array frame in millimetres, the descriptor core's convention -- axis ``a`` of the
array, voxel centre ``i`` at ``i * spacing[a]`` (the first voxel's centre is 0). Pure numpy.

* :func:`boundary_mask` -- voxels of the mask with a face-neighbour outside it (outside the
  image counts as outside: an object cut by the image border is closed by its cut face).
* :func:`boundary_points_mm` -- one point per boundary voxel, on the voxelised surface: the
  voxel centre moved half a voxel towards each outside face neighbour along that axis (a face
  centre, an edge midpoint or a corner of the voxel; within half a voxel diagonal of the centre).
* :func:`farthest_point_sampling` -- greedy farthest-point order, first point drawn with the seed.
* :func:`sample_surface_points` -- the two together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["boundary_mask", "boundary_points_mm", "farthest_point_sampling", "sample_surface_points"]


def _check_mask(mask: np.ndarray, spacing: Sequence[float] | None, function: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim < 1:
        raise ValueError(f"{function}: mask must have at least one axis, got a scalar")
    if spacing is not None:
        if len(spacing) != mask.ndim:
            raise ValueError(f"{function}: spacing {tuple(spacing)} has {len(spacing)} entries, the mask "
                             f"{mask.shape} has {mask.ndim} axes")
        if not all(float(s) > 0 for s in spacing):
            raise ValueError(f"{function}: spacing {tuple(spacing)} must be positive")
    return mask.astype(bool)


def _outside_neighbours(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axis, (minus, plus): True where the face neighbour on that side is outside the mask."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    out = []
    for axis in range(mask.ndim):
        minus = list(inner)
        plus = list(inner)
        minus[axis] = slice(0, -2)
        plus[axis] = slice(2, None)
        out.append((mask & ~padded[tuple(minus)], mask & ~padded[tuple(plus)]))
    return out


def boundary_mask(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` (any shape, D axes) with at least one of their 2D face neighbours outside it.

    Neighbours beyond the image border count as outside. Returns a bool array of ``mask``'s shape.
    """
    mask = _check_mask(mask, None, "boundary_mask")
    result = np.zeros_like(mask)
    for minus, plus in _outside_neighbours(mask):
        result |= minus | plus
    return result


def boundary_points_mm(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Surface points of ``mask``, one per boundary voxel, array frame in mm.

    Returns ``(points, voxels)``: ``points`` (M, D) float64 mm, ``voxels`` (M, D) int64 indices of
    the boundary voxels in C order. Each point is the voxel centre ``index * spacing`` moved by
    ``+spacing/2`` along an axis whose plus-side neighbour is outside and by ``-spacing/2`` along
    an axis whose minus-side neighbour is outside (both sides outside: no move along that axis).
    """
    mask = _check_mask(mask, spacing, "boundary_points_mm")
    sides = _outside_neighbours(mask)
    boundary = np.zeros_like(mask)
    for minus, plus in sides:
        boundary |= minus | plus
    voxels = np.argwhere(boundary)
    spacing_array = np.asarray(spacing, dtype=np.float64)
    points = voxels * spacing_array
    index = tuple(voxels.T)
    for axis, (minus, plus) in enumerate(sides):
        shift = plus[index].astype(np.float64) - minus[index].astype(np.float64)
        points[:, axis] += 0.5 * spacing_array[axis] * shift
    return points, voxels.astype(np.int64)


def farthest_point_sampling(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` points of ``points`` (M, D) in greedy farthest-point order.

    The first index is drawn uniformly with ``numpy.random.default_rng(seed)``; each next one is
    the point farthest (Euclidean) from all chosen so far, the lowest index on ties. ``n >= M``
    returns every index (in that order). Deterministic for a given seed.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"farthest_point_sampling: points must be (M, D), got shape {points.shape}")
    if n < 0:
        raise ValueError(f"farthest_point_sampling: n must be >= 0, got {n}")
    count = points.shape[0]
    n = min(int(n), count)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = int(rng.integers(count))
    nearest = np.sum((points - points[chosen[0]]) ** 2, axis=1)
    for k in range(1, n):
        chosen[k] = int(np.argmax(nearest))
        nearest = np.minimum(nearest, np.sum((points - points[chosen[k]]) ** 2, axis=1))
    return chosen


def sample_surface_points(mask: np.ndarray, spacing: Sequence[float], n: int, seed: int) -> np.ndarray:
    """``n`` points spread over the surface of ``mask``: (min(n, M), D) float64, array frame mm.

    :func:`boundary_points_mm` then :func:`farthest_point_sampling` (distances in mm, so an
    anisotropic spacing does not bunch the points along the coarse axis). An empty mask gives (0, D).
    """
    points, _ = boundary_points_mm(mask, spacing)
    return points[farthest_point_sampling(points, n, seed)]
