"""Image-aware loss terms that need no voxel label (pure torch).

Descriptors alone under-determine a segmentation: a smooth blob and the true shape share
volume, centroid and spread. These terms make the prediction depend on the image:

* :func:`region_homogeneity` -- the piecewise-constant Mumford-Shah / Chan-Vese energy
  ``sum_k sum_x p_k(x) ||I(x) - mu_k||^2`` with ``mu_k`` the soft mean intensity of class k
  (one mean per channel): low when each class covers a region of uniform intensity.
* :func:`edge_aware_boundary` -- the soft surface of :func:`nnunet_shape.core.descriptors.surface`
  with each neighbour pair weighted by ``exp(-||I(x + e_a) - I(x)||^2 / (2 sigma^2))``: class
  boundaries are cheap across image edges and expensive inside flat regions (a CRF-style
  pairwise term, contrast-sensitive Potts).
* :func:`prediction_entropy` -- the mean entropy of the per-voxel class distribution: low when the
  soft output is confident, i.e. when the soft prediction and its argmax agree.

Shapes: ``probs`` (B, K, X, Y, Z) (any number >= 1 of spatial axes), softmax probabilities
(or, for ``prediction_entropy(..., multilabel=True)``, independent sigmoid probabilities);
``image`` (B, C, X, Y, Z), same spatial shape, C channels (nnU-Net's normalised image).
``spacing``: None (unit), D floats, (D,) or (B, D) in mm.

``reduction``: ``"none"`` returns the per-case values ((B, K) per class for the homogeneity and
the boundary term, (B,) for the entropy); ``"sum"`` sums them over the batch (and classes);
``"mean"`` averages the per-case totals (summed over classes) over the batch.
``normalize=True`` makes each value scale-free (see each function), which the trainers use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nnunet_shape.core.descriptors import SpacingLike, spacing_tensor

__all__ = [
    "EdgeAwareBoundaryLoss",
    "PredictionEntropyLoss",
    "RegionHomogeneityLoss",
    "edge_aware_boundary",
    "prediction_entropy",
    "region_homogeneity",
]

_REDUCTIONS = ("none", "mean", "sum")


def _check(probs: Tensor, image: Tensor | None, function: str) -> int:
    """Number of spatial axes, after checking the shapes of ``probs`` and ``image``."""
    if probs.ndim < 3:
        raise ValueError(f"{function}: probs must be (B, K, *spatial) with at least one spatial axis, "
                         f"got shape {tuple(probs.shape)}")
    if image is not None and (image.ndim != probs.ndim or image.shape[0] != probs.shape[0]
                              or image.shape[2:] != probs.shape[2:]):
        raise ValueError(f"{function}: image must be (B, C, *spatial) with the batch size and spatial shape of "
                         f"probs {tuple(probs.shape)}, got {tuple(image.shape)}")
    return probs.ndim - 2


def _reduce(values: Tensor, reduction: str, function: str) -> Tensor:
    """(B, ...) per-case values -> reduced as documented in the module."""
    if reduction == "none":
        return values
    totals = values.reshape(values.shape[0], -1).sum(1)
    if reduction == "sum":
        return totals.sum()
    if reduction == "mean":
        return totals.mean()
    raise ValueError(f"{function}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def region_homogeneity(probs: Tensor, image: Tensor, *, reduction: str = "mean", normalize: bool = False,
                       eps: float = 1e-6) -> Tensor:
    """Piecewise-constant Mumford-Shah (Chan-Vese) energy of the soft partition ``probs`` of ``image``.

    Per case and class ``E_k = sum_x p_k(x) sum_c (I_c(x) - mu_kc)^2`` with the soft class mean
    ``mu_kc = sum_x p_k(x) I_c(x) / (sum_x p_k(x) + eps)`` (gradients flow through ``mu`` too;
    at the exact mean the energy is stationary in ``mu``, so this equals alternating
    minimisation). 0 for a piecewise-constant image partitioned along its pieces.

    Args:
        probs: (B, K, *S) class probabilities.
        image: (B, C, *S) intensities (multi-channel: squared distances summed over channels).
        normalize: divide by the number of voxels (the energy is then the mean within-class
            squared deviation per voxel, in squared image units; for nnU-Net's z-scored images
            at most about C).
    Returns:
        see the module docstring (``"none"``: (B, K)).
    """
    _check(probs, image, "region_homogeneity")
    p = probs.flatten(2)  # (B, K, N)
    x = image.flatten(2).to(p.dtype)  # (B, C, N)
    mass = p.sum(2)  # (B, K)
    mu = torch.einsum("bkn,bcn->bkc", p, x) / (mass[..., None] + eps)  # (B, K, C)
    # sum_x p (x - mu)^2 = sum_x p x^2 - 2 mu sum_x p x + mu^2 sum_x p, without a (B, K, C, N) temporary
    second = torch.einsum("bkn,bcn->bkc", p, x * x)
    first = torch.einsum("bkn,bcn->bkc", p, x)
    energy = (second - 2 * mu * first + mu * mu * mass[..., None]).sum(2)  # (B, K)
    if normalize:
        energy = energy / p.shape[2]
    return _reduce(energy, reduction, "region_homogeneity")


def edge_aware_boundary(probs: Tensor, image: Tensor, sigma: float, spacing: SpacingLike = None, *,
                        reduction: str = "mean", normalize: bool = False) -> Tensor:
    """Image-weighted soft surface: ``sum_a A_a sum_x w_a(x) |p_k(x + e_a) - p_k(x)|`` per class.

    ``A_a = prod_{b != a} s_b`` is the area (mm^2) of a voxel face normal to axis ``a`` and
    ``w_a(x) = exp(-sum_c (I_c(x + e_a) - I_c(x))^2 / (2 sigma^2))`` the contrast weight of that
    face. With ``sigma -> inf`` (every weight 1) this is :func:`nnunet_shape.core.descriptors.surface`.
    Only neighbour pairs inside the image count. The subgradient of ``|.|`` at 0 is 0.

    Args:
        probs: (B, K, *S) class probabilities.
        image: (B, C, *S) intensities.
        sigma: contrast scale in image units (> 0): an intensity step of ``sigma`` keeps
            ``exp(-1/2) = 0.61`` of the face's cost, one of ``3 sigma`` 1 %.
        spacing: voxel spacing (mm) per spatial axis.
        normalize: divide by the total face area ``sum_a A_a * (number of neighbour pairs along a)``
            (for a one-hot partition: the fraction of the weighted face area that is boundary,
            counted once per class on each side).
    Returns:
        see the module docstring (``"none"``: (B, K), mm^2 unless normalised).
    """
    ndim = _check(probs, image, "edge_aware_boundary")
    if not sigma > 0:
        raise ValueError(f"edge_aware_boundary: sigma must be > 0, got {sigma!r}")
    s = spacing_tensor(spacing, probs.shape[0], ndim, probs.device, probs.dtype, "edge_aware_boundary")
    s = s.expand(probs.shape[0], ndim)
    x = image.to(probs.dtype)
    total = probs.new_zeros(probs.shape[:2])
    faces = probs.new_zeros(probs.shape[0])
    for a in range(ndim):
        n = probs.shape[2 + a]
        if n < 2:
            continue
        area = torch.prod(torch.cat([s[:, :a], s[:, a + 1:]], dim=1), dim=1)  # (B,)
        dp = probs.narrow(2 + a, 1, n - 1) - probs.narrow(2 + a, 0, n - 1)  # (B, K, ...)
        di2 = (x.narrow(2 + a, 1, n - 1) - x.narrow(2 + a, 0, n - 1)).pow(2).sum(1, keepdim=True)  # (B, 1, ...)
        weight = torch.exp(-di2 / (2.0 * sigma * sigma))
        total = total + area[:, None] * (weight * dp.abs()).flatten(2).sum(2)
        faces = faces + area * dp[0, 0].numel()
    if normalize:
        total = total / faces[:, None].clamp_min(torch.finfo(total.dtype).tiny)
    return _reduce(total, reduction, "edge_aware_boundary")


def prediction_entropy(probs: Tensor, *, reduction: str = "mean", normalize: bool = False,
                       multilabel: bool = False, eps: float = 1e-12) -> Tensor:
    """Summed per-voxel entropy (nats) of the prediction, per case.

    ``H(x) = -sum_k p_k(x) log p_k(x)`` (softmax outputs), or with ``multilabel=True``
    (independent sigmoid outputs, nnU-Net's regions) the sum over channels of the binary
    entropies ``-p log p - (1 - p) log(1 - p)``. 0 for a one-hot prediction.

    Args:
        probs: (B, K, *S) probabilities.
        normalize: divide by the number of voxels and by the largest entropy (``log K``;
            multilabel: ``K log 2``), so the value lies in [0, 1].
    Returns:
        see the module docstring (``"none"``: (B,)).
    """
    _check(probs, None, "prediction_entropy")
    p = probs.clamp(eps, 1.0)
    h = -(probs * p.log())
    if multilabel:
        q = (1.0 - probs).clamp(eps, 1.0)
        h = h - (1.0 - probs) * q.log()
    per_case = h.flatten(1).sum(1)  # (B,)
    if normalize:
        k = probs.shape[1]
        largest = k * math.log(2.0) if multilabel else math.log(k) if k > 1 else 1.0
        per_case = per_case / (probs[0, 0].numel() * largest)
    return _reduce(per_case, reduction, "prediction_entropy")


class RegionHomogeneityLoss(nn.Module):
    """:func:`region_homogeneity` as a module: ``forward(probs, image)``."""

    def __init__(self, reduction: str = "mean", normalize: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.reduction, self.normalize, self.eps = reduction, normalize, eps

    def forward(self, probs: Tensor, image: Tensor) -> Tensor:
        return region_homogeneity(probs, image, reduction=self.reduction, normalize=self.normalize, eps=self.eps)


class EdgeAwareBoundaryLoss(nn.Module):
    """:func:`edge_aware_boundary` as a module: ``forward(probs, image, spacing=None)``."""

    def __init__(self, sigma: float = 0.5, reduction: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        self.sigma, self.reduction, self.normalize = float(sigma), reduction, normalize

    def forward(self, probs: Tensor, image: Tensor, spacing: SpacingLike = None) -> Tensor:
        return edge_aware_boundary(probs, image, self.sigma, spacing, reduction=self.reduction,
                                   normalize=self.normalize)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, reduction={self.reduction!r}, normalize={self.normalize}"


class PredictionEntropyLoss(nn.Module):
    """:func:`prediction_entropy` as a module: ``forward(probs)``."""

    def __init__(self, reduction: str = "mean", normalize: bool = True, multilabel: bool = False) -> None:
        super().__init__()
        self.reduction, self.normalize, self.multilabel = reduction, normalize, multilabel

    def forward(self, probs: Tensor) -> Tensor:
        return prediction_entropy(probs, reduction=self.reduction, normalize=self.normalize,
                                  multilabel=self.multilabel)
