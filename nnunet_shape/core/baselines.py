"""No-image baselines: segmentations made from the training labels alone (pure numpy/torch, no nnU-Net).

A model trained from shape descriptors must beat what the descriptors -- or the training labels --
say *without looking at the test image*. Two such baselines, both placed in the frame the
whole-scan trainers see, i.e. **normalised field-of-view coordinates**: a voxel ``i`` of an axis
with ``n`` voxels sits at the fraction ``(i + 0.5) / n`` of the field of view, whatever the grid.

* :func:`atlas_majority` -- the voxelwise majority vote of the training label maps. Each map is
  resampled by nearest neighbour onto the target grid through the fractional coordinates (target
  voxel ``j`` of ``n_t`` reads source voxel ``floor((j + 0.5) / n_t * n_s)`` of ``n_s``), and the
  target voxel gets the label most maps vote for. **Ties go to the smallest label id** (so a tie
  between background 0 and a class is background).
* :func:`descriptor_ellipsoids` -- per class the solid ellipsoid of the mean training centroid
  (a fraction of the field of view) and the mean training covariance (mm^2, spacing honoured):
  what the V+C+D descriptors alone say. A uniform solid ellipsoid with semi-axes ``a_i`` has
  covariance eigenvalues ``a_i^2 / 5``, so the semi-axes are ``sqrt(5 lambda_i)`` along the
  eigenvectors. A voxel belongs to the ellipsoid when its centre is inside. An ellipsoid is never
  thinner than one target voxel: each ``lambda_i`` is at least the variance of one voxel cube along
  its eigenvector, ``v_i^T diag(s^2 / 12) v_i`` (a class one voxel thick has ``lambda = 0`` across
  it and would otherwise vanish; nnU-Net's 2-D dummy axis is one such axis). **Where the
  ellipsoids of two classes overlap, the smaller-volume ellipsoid wins** (a nested or small
  structure -- cartilage on a bone -- survives; equal volumes: the smaller label id wins). A class
  absent from every training map gets no voxel.

Moments come from :mod:`nnunet_shape.core.descriptors` (:func:`~nnunet_shape.core.descriptors.moments`
on each class's bounding box, float64): the covariance is the descriptors' own, measured on voxel
centres. That is the right input: the voxel centres inside an ellipsoid of semi-axes ``a_i`` have a
covariance of ``a_i^2 / 5`` up to a small boundary error (radius 3 voxels: recovered as 3.00 on
average over sub-voxel positions; adding each voxel cube's own ``s^2 / 12`` would give 3.06), so
rasterising the ellipsoid of a rasterised ellipsoid gives it back.

Arrays are spatial only, ``(*S)`` with ``D = len(S)`` axes in the array order nnU-Net holds them
(``(X, Y, Z)``; nnU-Net's 2-D layout ``(1, Y, X)`` needs no special case: the dummy axis has one
voxel and every class's centroid sits on it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from nnunet_shape.core.descriptors import moments
from nnunet_shape.errors import UserError

__all__ = [
    "ClassMoments",
    "fractional_indices",
    "atlas_majority",
    "class_moments",
    "mean_class_moments",
    "descriptor_ellipsoids",
    "label_dtype",
]


def label_dtype(labels: Iterable[int]) -> np.dtype:
    """The smallest unsigned integer dtype that holds every label (uint8 up to 255)."""
    top = max([0, *[int(v) for v in labels]])
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _check_labels(labels: Sequence[int], function: str) -> list[int]:
    values = [int(v) for v in labels]
    if not values:
        raise UserError(f"{function}: no labels given")
    if len(set(values)) != len(values):
        raise UserError(f"{function}: labels {values} repeat a value")
    if min(values) < 0:
        raise UserError(f"{function}: labels {values} must be non-negative")
    return values


def fractional_indices(source_size: int, target_size: int) -> np.ndarray:
    """(target_size,) source index of each target voxel by nearest neighbour in field-of-view fractions.

    Target voxel ``j`` sits at ``f = (j + 0.5) / target_size``; it reads the source voxel whose
    interval ``[i / source_size, (i + 1) / source_size)`` holds ``f``: ``i = floor(f * source_size)``.
    """
    if source_size < 1 or target_size < 1:
        raise UserError(f"fractional_indices: sizes must be positive, got {source_size} and {target_size}")
    j = np.arange(target_size, dtype=np.int64)
    # exact integer form of floor((j + 0.5) / n_t * n_s)
    return np.minimum(((2 * j + 1) * source_size) // (2 * target_size), source_size - 1)


def _resample_nearest(label_map: np.ndarray, target_shape: Sequence[int]) -> np.ndarray:
    index = [fractional_indices(n_s, n_t) for n_s, n_t in zip(label_map.shape, target_shape)]
    return label_map[np.ix_(*index)]


def atlas_majority(label_maps: Iterable[np.ndarray], target_shape: Sequence[int], labels: Sequence[int],
                   ignore_label: int | None = None) -> np.ndarray:
    """Voxelwise majority of the training label maps on a target grid of any shape.

    Args:
        label_maps: integer arrays ``(*S_k)``, one per training case, all with ``D`` axes (shapes
            may differ); consumed once (a generator is fine).
        target_shape: ``(*S)`` of the output, ``D`` axes.
        labels: the label ids that vote, background included (e.g. ``[0, 1, 2]``).
        ignore_label: voxels with this value do not vote (nnU-Net's ignore label).
    Returns:
        ``(*S)`` array (:func:`label_dtype` of ``labels``): per voxel the label most resampled maps
        hold there; ties, and voxels where no map votes, get the smallest label id.
    Raises:
        UserError: no map, a map whose number of axes differs from the target's, or a value that is
        neither in ``labels`` nor the ignore label (naming the map's position).
    """
    values = _check_labels(labels, "atlas_majority")
    target_shape = tuple(int(n) for n in target_shape)
    if any(n < 1 for n in target_shape):
        raise UserError(f"atlas_majority: target shape {target_shape} must be positive")
    order = sorted(values)
    lookup_size = max(order) + 1
    count = 0
    votes: np.ndarray | None = None
    for index, label_map in enumerate(label_maps):
        label_map = np.asarray(label_map)
        if label_map.ndim != len(target_shape):
            raise UserError(f"atlas_majority: training label map {index} has {label_map.ndim} axes "
                            f"{label_map.shape}, the target {len(target_shape)} {target_shape}")
        resampled = _resample_nearest(label_map, target_shape)
        if not np.issubdtype(resampled.dtype, np.integer):
            resampled = np.rint(resampled).astype(np.int64)
        allowed = np.isin(resampled, order) | (False if ignore_label is None else resampled == ignore_label)
        if not allowed.all():
            unknown = sorted({int(v) for v in np.unique(resampled[~allowed])})
            raise UserError(f"atlas_majority: training label map {index} holds label(s) {unknown}, "
                            f"expected one of {order}" + ("" if ignore_label is None else f" or {ignore_label}"))
        if votes is None:  # uint16 counts (half of int32's memory), widened should a 65535th map come
            votes = np.zeros((len(order), *target_shape), dtype=np.uint16)
        elif count == np.iinfo(votes.dtype).max:
            votes = votes.astype(np.int64)
        # position of each label in ``order``; -1 for the ignore label (no vote)
        position = np.full(max(lookup_size, int(resampled.max()) + 1), -1, dtype=np.int16)
        position[order] = np.arange(len(order))
        slot = position[resampled]
        for k in range(len(order)):
            votes[k] += slot == k
        count += 1
    if votes is None:
        raise UserError("atlas_majority: no training label map given")
    # argmax returns the first maximum: ``order`` ascends, so a tie goes to the smallest label id
    winner = np.argmax(votes, axis=0)
    return np.asarray(order, dtype=label_dtype(order))[winner]


class ClassMoments(NamedTuple):
    """Moments of ``K`` classes of one label map (or their mean over maps).

    ``labels (K,)``; ``present (K,)`` (bool; for a mean: in at least one map); ``count (K,)`` maps
    the class is present in; ``centroid_fraction (K, D)``: centroid as a fraction of the field of
    view, ``(c_a / s_a + 0.5) / n_a``; ``covariance_mm2 (K, D, D)``: the descriptor covariance
    (voxel centres, mm^2). Absent classes hold NaN.
    """

    labels: tuple[int, ...]
    present: np.ndarray
    count: np.ndarray
    centroid_fraction: np.ndarray
    covariance_mm2: np.ndarray


def class_moments(label_map: np.ndarray, spacing: Sequence[float], labels: Sequence[int]) -> ClassMoments:
    """Centroid (field-of-view fraction) and covariance (mm^2) of each class of one label map.

    Args:
        label_map: integer ``(*S)`` array.
        spacing: ``D`` voxel sizes in mm, array order.
        labels: the ``K`` label ids to measure (usually the foreground).
    Returns:
        :class:`ClassMoments` (``count`` 1 where the class has a voxel, else 0 and NaN moments).
    """
    values = _check_labels(labels, "class_moments")
    label_map = np.asarray(label_map)
    shape = np.asarray(label_map.shape, dtype=np.float64)
    s = np.asarray(spacing, dtype=np.float64)
    if s.shape != (label_map.ndim,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise UserError(f"class_moments: spacing {list(spacing)} must be {label_map.ndim} positive numbers "
                        f"(label map shape {label_map.shape})")
    d = label_map.ndim
    k = len(values)
    fraction = np.full((k, d), np.nan)
    covariance = np.full((k, d, d), np.nan)
    present = np.zeros(k, dtype=bool)
    for i, label in enumerate(values):
        mask = label_map == label
        if not mask.any():
            continue
        # the class's bounding box: moments on the crop, the centroid shifted back
        low = [int(np.flatnonzero(mask.any(axis=tuple(b for b in range(d) if b != a))).min()) for a in range(d)]
        high = [int(np.flatnonzero(mask.any(axis=tuple(b for b in range(d) if b != a))).max()) + 1 for a in range(d)]
        crop = mask[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
        probs = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float64))[None, None]
        result = moments(probs, s.tolist())
        centre_mm = result.centroid[0, 0].numpy() + np.asarray(low, dtype=np.float64) * s
        fraction[i] = (centre_mm / s + 0.5) / shape
        covariance[i] = result.covariance[0, 0].numpy()
        present[i] = True
    return ClassMoments(tuple(values), present, present.astype(np.int64), fraction, covariance)


def mean_class_moments(per_map: Sequence[ClassMoments]) -> ClassMoments:
    """Mean of :func:`class_moments` results over maps, per class over the maps that hold it.

    A class absent from one map does not pull the mean towards anything; a class absent from all
    maps stays absent (NaN). Every entry must measure the same labels in the same number of axes.
    """
    if not per_map:
        raise UserError("mean_class_moments: no label map measured")
    labels = per_map[0].labels
    for index, item in enumerate(per_map):
        if item.labels != labels or item.centroid_fraction.shape != per_map[0].centroid_fraction.shape:
            raise UserError(f"mean_class_moments: map {index} measures labels {list(item.labels)} in "
                            f"{item.centroid_fraction.shape[-1]} axes, map 0 {list(labels)} in "
                            f"{per_map[0].centroid_fraction.shape[-1]}")
    count = np.sum([item.count for item in per_map], axis=0)
    present = count > 0

    def mean(name: str) -> np.ndarray:
        stacked = np.stack([getattr(item, name) for item in per_map])  # (M, K, ...)
        weights = np.stack([item.count for item in per_map]).astype(np.float64)
        weights = weights.reshape(weights.shape + (1,) * (stacked.ndim - 2))
        total = np.where(weights > 0, np.nan_to_num(stacked) * weights, 0.0).sum(axis=0)
        denominator = np.maximum(count, 1).reshape((-1,) + (1,) * (stacked.ndim - 2))
        out = total / denominator
        out[~present] = np.nan
        return out

    return ClassMoments(labels, present, count, mean("centroid_fraction"), mean("covariance_mm2"))


def _ellipsoid_mask(centre_mm: np.ndarray, covariance_mm2: np.ndarray, target_shape: tuple[int, ...],
                    s: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The voxels whose centre ``i * s`` lies in ``{x : (x - c)^T (5 Sigma)^-1 (x - c) <= 1}``, as
    ``(bounding box slices, mask of the box)``; None when the box misses the grid. ``Sigma`` is
    ``covariance_mm2`` with each eigenvalue raised to at least one voxel's variance along it."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariance_mm2)
    voxel_variance = ((eigenvectors ** 2) * (s[:, None] ** 2 / 12.0)).sum(axis=0)  # v_i^T diag(s^2/12) v_i
    eigenvalues = np.maximum(eigenvalues, voxel_variance)
    semi_axes_sq = 5.0 * eigenvalues
    # half-width of the axis-aligned bounding box along axis a: sqrt(M_aa), M = 5 Sigma
    half = np.sqrt((eigenvectors ** 2 * semi_axes_sq[None, :]).sum(axis=1))
    low = np.maximum(np.ceil((centre_mm - half) / s - 1e-9), 0).astype(np.int64)
    high = np.minimum(np.floor((centre_mm + half) / s + 1e-9), np.asarray(target_shape) - 1).astype(np.int64)
    if np.any(high < low):
        return None
    d = len(target_shape)
    offsets = []
    for a in range(d):
        shape = [1] * d
        shape[a] = int(high[a] - low[a] + 1)
        offsets.append(((np.arange(low[a], high[a] + 1) * s[a]) - centre_mm[a]).reshape(shape))
    box_shape = tuple(int(h - lo + 1) for lo, h in zip(low, high))
    total = np.zeros(box_shape, dtype=np.float64)
    tolerance = 1e-9 * float(np.max(s))
    for i in range(d):
        projection = sum(eigenvectors[a, i] * offsets[a] for a in range(d))
        if semi_axes_sq[i] > 0:
            total += projection ** 2 / semi_axes_sq[i]
        else:  # a flat ellipsoid: only points on its plane
            total += np.where(np.abs(projection) <= tolerance, 0.0, np.inf)
    return tuple(slice(int(lo), int(h) + 1) for lo, h in zip(low, high)), total <= 1.0 + 1e-12


def descriptor_ellipsoids(mean_centroid_fraction: np.ndarray, mean_covariance_mm2: np.ndarray,
                          target_shape: Sequence[int], spacing: Sequence[float], labels: Sequence[int]
                          ) -> np.ndarray:
    """Rasterise one solid ellipsoid per class on a target grid; the smaller ellipsoid wins overlaps.

    Args:
        mean_centroid_fraction: ``(K, D)`` centroids as fractions of the field of view
            (:attr:`ClassMoments.centroid_fraction`); a row with a NaN is an absent class (no voxel).
        mean_covariance_mm2: ``(K, D, D)`` covariances in mm^2 (:attr:`ClassMoments.covariance_mm2`,
            the descriptors' covariance).
        target_shape: ``(*S)`` of the output, ``D`` axes.
        spacing: ``D`` voxel sizes of the target in mm.
        labels: ``(K,)`` label id of each row (foreground, > 0).
    Returns:
        ``(*S)`` label map (:func:`label_dtype`), background 0. The ellipsoid of class ``k`` has its
        centre at ``(f_a n_a - 0.5) s_a`` and semi-axes ``sqrt(5 lambda_i)`` along the eigenvectors
        of its covariance, ``lambda_i`` at least ``v_i^T diag(s^2 / 12) v_i`` (one voxel); a voxel
        is inside when its centre ``i_a s_a`` is. Classes are painted from the largest ellipsoid
        volume (``prod a_i``) to the smallest, so the smallest wins; equal volumes: the smaller
        label id wins.
    """
    values = _check_labels(labels, "descriptor_ellipsoids")
    if 0 in values:
        raise UserError(f"descriptor_ellipsoids: labels {values} include the background 0")
    target_shape = tuple(int(n) for n in target_shape)
    d = len(target_shape)
    fraction = np.asarray(mean_centroid_fraction, dtype=np.float64)
    covariance = np.asarray(mean_covariance_mm2, dtype=np.float64)
    s = np.asarray(spacing, dtype=np.float64)
    k = len(values)
    if fraction.shape != (k, d) or covariance.shape != (k, d, d):
        raise UserError(f"descriptor_ellipsoids: expected centroids ({k}, {d}) and covariances ({k}, {d}, {d}) "
                        f"for {k} labels on a {d}-axis grid {target_shape}, got {fraction.shape} and "
                        f"{covariance.shape}")
    if s.shape != (d,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise UserError(f"descriptor_ellipsoids: spacing {list(spacing)} must be {d} positive numbers")
    if any(n < 1 for n in target_shape):
        raise UserError(f"descriptor_ellipsoids: target shape {target_shape} must be positive")
    shape = np.asarray(target_shape, dtype=np.float64)
    classes = []
    for i, label in enumerate(values):
        if not (np.all(np.isfinite(fraction[i])) and np.all(np.isfinite(covariance[i]))):
            continue  # absent from every training map
        sigma = 0.5 * (covariance[i] + covariance[i].T)
        eigenvalues, eigenvectors = np.linalg.eigh(sigma)
        eigenvalues = np.maximum(eigenvalues, ((eigenvectors ** 2) * (s[:, None] ** 2 / 12.0)).sum(axis=0))
        volume = float(np.sqrt(np.prod(5.0 * eigenvalues)))
        classes.append((volume, label, (fraction[i] * shape - 0.5) * s, sigma))
    out = np.zeros(target_shape, dtype=label_dtype(values))
    # largest volume first, and among equal volumes the larger label first: the last painted wins
    for _, label, centre, sigma in sorted(classes, key=lambda c: (-c[0], -c[1])):
        found = _ellipsoid_mask(centre, sigma, target_shape, s)
        if found is not None:
            box, mask = found
            out[box][mask] = label
    return out
