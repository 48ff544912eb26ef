"""The reconstruction term of Weak-Net (paper 003): a boundary weight map and a weighted MSE.

Weak-Net trains its core network with ``L = L_ce(Y_hat, Y) + lambda * L_mse`` where a second
network reconstructs the image ``X`` from the segmentation ``Y_hat`` and

    L_mse = sum_x W(x) (X(x) - X_hat(x))^2,    W(x) = w_high if x lies within d of a boundary of Y, else w_low,

``Y`` being the rasterised template. Here:

* :func:`distance_to_other_label_mm` -- per voxel, the Euclidean distance (mm, between voxel
  centres, spacing honoured) to the nearest voxel holding a *different* label of the template;
  voxels on both sides of every boundary are near it (a face neighbour across the boundary is
  one spacing away). A map holding one label only has no boundary: ``inf`` everywhere.
* :func:`boundary_weight_map` -- ``W`` from that distance (``distance <= d`` is "within d").
* :func:`weighted_mse` / :class:`WeightedMSELoss` -- ``mean(W (X - X_hat)^2)`` over batch,
  channels and voxels. The paper sums over voxels; with its cross-entropy also summed, dividing
  both terms by the voxel count (nnU-Net's CE is a mean) keeps the paper's ratio between them.

Shapes follow nnU-Net: images ``(B, C, X, Y, Z)`` (or 2-D ``(B, C, X, Y)``), label maps
``(B, X, Y, Z)``. Pure numpy/scipy (the weight map is data, not differentiated) and torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["distance_to_other_label_mm", "boundary_weight_map", "weighted_mse", "WeightedMSELoss"]


def _check_spacing(spacing_mm: Sequence[float], ndim: int, function: str) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != ndim:
        raise ValueError(f"{function}: spacing {spacing} has {len(spacing)} entries for a label map with {ndim} "
                         f"spatial axes")
    if not all(s > 0 for s in spacing):
        raise ValueError(f"{function}: spacing {spacing} must be positive")
    return spacing


def distance_to_other_label_mm(labels: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Distance (mm) from each voxel of an integer label map ``(*S)`` to the nearest voxel of another label.

    Exact Euclidean distance transform (``scipy.ndimage.distance_transform_edt`` with the spacing as
    sampling), one per label present. ``inf`` everywhere when only one label is present.
    """
    from scipy.ndimage import distance_transform_edt

    labels = np.asarray(labels)
    spacing = _check_spacing(spacing_mm, labels.ndim, "distance_to_other_label_mm")
    present = np.unique(labels)
    distance = np.full(labels.shape, np.inf, dtype=np.float64)
    if len(present) < 2:
        return distance
    for label in present:
        inside = labels == label
        # distance of every voxel of `label` to the nearest voxel that is not `label`
        distance[inside] = distance_transform_edt(inside, sampling=spacing)[inside]
    return distance


def boundary_weight_map(labels: np.ndarray, spacing_mm: Sequence[float], distance_mm: float,
                        high: float = 1.0, low: float = 0.1) -> np.ndarray:
    """Paper 003's ``W_mse``: ``high`` within ``distance_mm`` of a label boundary, ``low`` elsewhere.

    ``labels``: ``(*lead, *S)`` integer label maps, ``len(spacing_mm)`` spatial axes last (e.g. a
    batch ``(B, X, Y, Z)``); each map is treated on its own. Returns float32 of the same shape.
    """
    labels = np.asarray(labels)
    ndim = len(spacing_mm)
    if labels.ndim < ndim:
        raise ValueError(f"boundary_weight_map: label map of shape {labels.shape} has fewer axes than the spacing "
                         f"{tuple(spacing_mm)}")
    if distance_mm < 0:
        raise ValueError(f"boundary_weight_map: distance_mm must be >= 0, got {distance_mm}")
    flat = labels.reshape((-1,) + labels.shape[labels.ndim - ndim:])
    out = np.empty(flat.shape, dtype=np.float32)
    for i, one in enumerate(flat):
        out[i] = np.where(distance_to_other_label_mm(one, spacing_mm) <= distance_mm, high, low)
    return out.reshape(labels.shape)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``mean(weight * (prediction - target)^2)``: ``prediction``, ``target`` ``(B, C, *S)``, ``weight``
    broadcastable to them (``(B, 1, *S)``: one weight per voxel for every channel). Scalar."""
    if prediction.shape != target.shape:
        raise ValueError(f"weighted_mse: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} "
                         f"differ in shape")
    squared = (prediction - target) ** 2
    return (torch.broadcast_to(weight, squared.shape) * squared).mean()


class WeightedMSELoss(nn.Module):
    """Module form of :func:`weighted_mse` (``forward(prediction, target, weight)``)."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weighted_mse(prediction, target, weight)
