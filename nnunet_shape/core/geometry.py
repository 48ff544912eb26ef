"""Analytic transforms of descriptor targets: label-free training under nnU-Net's augmentation.

A trainer that reads descriptor targets from files never sees voxel labels, yet the image it
feeds to the network has been moved twice: by nnU-Net's preprocessing (raw array frame ->
preprocessed frame) and by the data augmentation (preprocessed case -> training patch). The
targets must follow the image through the same maps. Every one of those maps is affine in
voxel-index coordinates, so the descriptors transform in closed form; this module holds that
maths (pure numpy, no nnU-Net / batchgenerators import; tests/test_geometry.py proves it
against nnU-Net's real code).

Conventions
-----------
* A frame is an array: its axes in array order, voxel centres at index ``i``, physical
  coordinates ``x_a = i_a * s_a`` with the frame's spacing ``s`` (origin at the first voxel;
  the convention of :mod:`nnunet_shape.core.descriptors`).
* :class:`IndexAffine` maps content in voxel-INDEX units, ``q = M i + o``: the voxel of the
  input frame at index ``i`` appears at index ``q`` of the output frame.
* Targets: ``dict[str, (lower, upper)]`` of float64 arrays for K classes, ``"volume"`` (K,),
  ``"centroid"`` (K, D), ``"spread"`` (K, D), ``"covariance"`` (K, D, D), ``"surface"`` (K,)
  (any subset). NaN = unconstrained, ``lower == upper`` = exact value, volume ``[0, 0]`` =
  absent class (the format of :func:`nnunet_shape.descriptor_files.targets.case_targets_array_frame`).

In physical units the map is ``Y = A X + b`` with ``A = S_out M S_in^{-1}`` and
``b = S_out o`` (``S = diag(spacing)``). Moments transform exactly (volume x |det A|,
centroid A c + b, covariance A Σ Aᵀ); the voxel-face surface (an anisotropic total variation)
is only invariant under signed axis permutations and scales uniformly, so it is NaN after a
rotation or an anisotropic scaling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Targets",
    "IndexAffine",
    "physical_affine",
    "transform_targets",
    "spatial_transform_affine",
    "spatial_transform_affine_dummy_2d",
    "centred_crop_affine",
    "training_patch_affine",
    "preprocessed_spacing",
    "raw_to_preprocessed_affine",
    "raw_to_preprocessed_targets",
    "clean_round_off",
    "monomial_parts",
    "interval_linear",
]

Targets = dict[str, tuple[np.ndarray, np.ndarray]]

_KNOWN = ("volume", "centroid", "spread", "covariance", "surface")
#: entries of A smaller than this fraction of max|A| count as structural zeros (round-off of
#: cos(90°), of spacing ratios): they decide whether A is axis-aligned and whether a NaN axis
#: leaks into another one.
_ZERO_TOLERANCE = 1e-12
#: relative tolerance for "all |a_i| equal" (uniform scale) in the surface rule.
_EQUAL_TOLERANCE = 1e-9


def _error(function: str, message: str) -> ValueError:
    return ValueError(f"{function}: {message}")


# ---------------------------------------------------------------------------------------
# index affine maps
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexAffine:
    """Content map in voxel-index units: input index ``i`` lands at output index ``q = matrix @ i + offset``.

    Attributes:
        matrix: (D, D) float64.
        offset: (D,) float64.
    """

    matrix: np.ndarray
    offset: np.ndarray

    def __post_init__(self) -> None:
        matrix = np.array(self.matrix, dtype=np.float64)
        offset = np.array(self.offset, dtype=np.float64).reshape(-1)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != offset.shape[0]:
            raise _error("IndexAffine", f"matrix must be (D, D) and offset (D,), got {matrix.shape} "
                                        f"and {offset.shape}")
        matrix.setflags(write=False)
        offset.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "offset", offset)

    @property
    def dim(self) -> int:
        return int(self.offset.shape[0])

    def __call__(self, index: np.ndarray) -> np.ndarray:
        """Map index points (..., D) of the input frame to the output frame."""
        return np.asarray(index, dtype=np.float64) @ self.matrix.T + self.offset

    def compose(self, after: IndexAffine) -> IndexAffine:
        """``after ∘ self``: first this map, then ``after``."""
        if after.dim != self.dim:
            raise _error("IndexAffine.compose", f"cannot compose a {self.dim}-D map with a {after.dim}-D map")
        return IndexAffine(after.matrix @ self.matrix, after.matrix @ self.offset + after.offset)

    def inverse(self) -> IndexAffine:
        """The map from the output frame back to the input frame."""
        inverse = np.linalg.inv(self.matrix)
        return IndexAffine(inverse, -inverse @ self.offset)

    @staticmethod
    def identity(dim: int) -> IndexAffine:
        return IndexAffine(np.eye(dim), np.zeros(dim))

    @staticmethod
    def translation(offset: Sequence[float]) -> IndexAffine:
        """``q = i + offset``."""
        offset = np.asarray(offset, dtype=np.float64).reshape(-1)
        return IndexAffine(np.eye(offset.shape[0]), offset)

    @staticmethod
    def scaling(factors: Sequence[float], offset: Sequence[float] | None = None) -> IndexAffine:
        """``q = diag(factors) i + offset``."""
        factors = np.asarray(factors, dtype=np.float64).reshape(-1)
        if offset is None:
            offset = np.zeros_like(factors)
        return IndexAffine(np.diag(factors), offset)

    @staticmethod
    def permutation(order: Sequence[int]) -> IndexAffine:
        """Axis transpose as numpy's ``array.transpose(order)``: output axis a is input axis ``order[a]``."""
        order = [int(a) for a in order]
        if sorted(order) != list(range(len(order))):
            raise _error("IndexAffine.permutation", f"{order} is not a permutation of 0..{len(order) - 1}")
        matrix = np.zeros((len(order), len(order)))
        matrix[np.arange(len(order)), order] = 1.0
        return IndexAffine(matrix, np.zeros(len(order)))

    @staticmethod
    def mirror(patch_size: Sequence[int], axes: Sequence[int]) -> IndexAffine:
        """``q_a = P_a - 1 - i_a`` on ``axes`` (torch.flip of a patch of ``patch_size``), identity elsewhere."""
        patch = np.asarray(patch_size, dtype=np.float64).reshape(-1)
        diagonal = np.ones_like(patch)
        offset = np.zeros_like(patch)
        for axis in axes:
            if not 0 <= int(axis) < patch.shape[0]:
                raise _error("IndexAffine.mirror", f"axis {axis} out of range for patch {tuple(patch_size)}")
            diagonal[int(axis)] = -1.0
            offset[int(axis)] = patch[int(axis)] - 1.0
        return IndexAffine(np.diag(diagonal), offset)


def physical_affine(affine: IndexAffine, spacing_in: Sequence[float],
                    spacing_out: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` of the physical map ``Y = A X + b``: ``A = S_out M S_in^{-1}``, ``b = S_out o``."""
    s_in = np.asarray(spacing_in, dtype=np.float64).reshape(-1)
    s_out = np.asarray(spacing_out, dtype=np.float64).reshape(-1)
    if s_in.shape[0] != affine.dim or s_out.shape[0] != affine.dim:
        raise _error("physical_affine", f"spacings {tuple(s_in)} / {tuple(s_out)} do not match a "
                                        f"{affine.dim}-D map")
    if np.any(s_in <= 0) or np.any(s_out <= 0):
        raise _error("physical_affine", f"spacings must be positive, got {tuple(s_in)} / {tuple(s_out)}")
    matrix = s_out[:, None] * affine.matrix / s_in[None, :]
    return matrix, s_out * affine.offset


# ---------------------------------------------------------------------------------------
# descriptor targets under Y = A X + b
# ---------------------------------------------------------------------------------------


def clean_round_off(matrix: np.ndarray) -> np.ndarray:
    """A with round-off entries (|a| <= 1e-12 max|A|) set to exactly 0."""
    scale = np.abs(matrix).max()
    return np.where(np.abs(matrix) <= _ZERO_TOLERANCE * scale, 0.0, matrix)


def monomial_parts(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For a scaled signed permutation (one nonzero per row and column): ``(source, factor)``
    with ``Y_i = factor_i X_{source_i}``; None otherwise. Diagonal matrices are the common case."""
    nonzero = matrix != 0
    if not (np.all(nonzero.sum(axis=0) == 1) and np.all(nonzero.sum(axis=1) == 1)):
        return None
    source = nonzero.argmax(axis=1)
    return source, matrix[np.arange(matrix.shape[0]), source]


def interval_linear(matrix: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                     shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval image of ``Y = A X + b`` for boxes ``lower <= X <= upper`` of shape (K, D).

    Exact values (lower == upper) give exactly ``A x + b`` on both sides (the same sums).
    The box is the bounding box of the transformed box (centre A c + b, half-width |A| h).
    Components with ``A_ij == 0`` never contribute, so a NaN (unbounded) side only spreads to
    the output axes that actually mix it in; a one-sided bound stays one-sided under a
    signed permutation.
    """
    positive = matrix > 0
    used = matrix != 0
    # terms (K, D_out, D_in); unused terms are 0 even where the input bound is NaN
    low_terms = np.where(positive[None], matrix[None] * lower[:, None, :], matrix[None] * upper[:, None, :])
    high_terms = np.where(positive[None], matrix[None] * upper[:, None, :], matrix[None] * lower[:, None, :])
    low_terms = np.where(used[None], low_terms, 0.0)
    high_terms = np.where(used[None], high_terms, 0.0)
    return low_terms.sum(axis=-1) + shift, high_terms.sum(axis=-1) + shift


def _pair(targets: Mapping[str, tuple[np.ndarray, np.ndarray]], name: str,
          shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    lower, upper = targets[name]
    lower = np.array(lower, dtype=np.float64)
    upper = np.array(upper, dtype=np.float64)
    if lower.shape != shape or upper.shape != shape:
        raise _error("transform_targets", f"targets[{name!r}] bounds have shapes {lower.shape} / "
                                          f"{upper.shape}, expected {shape}")
    return lower, upper


def _class_count(targets: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> int:
    for name in _KNOWN:
        if name in targets:
            return int(np.shape(targets[name][0])[0])
    raise _error("transform_targets", f"targets hold none of the descriptors {_KNOWN}: {sorted(targets)}")


def _exact_rows(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(K,) True where a class's value is fully known (all finite and lower == upper)."""
    axes = tuple(range(1, lower.ndim))
    return np.all(np.isfinite(lower) & (lower == upper), axis=axes)


def transform_targets(targets: Mapping[str, tuple[np.ndarray, np.ndarray]], affine: IndexAffine,
                      spacing_in: Sequence[float], spacing_out: Sequence[float]) -> Targets:
    """Descriptor targets of the content after the index map ``affine``.

    Args:
        targets: ``{name: (lower, upper)}`` in the input frame (see module docstring), any
            subset of volume (K,), centroid (K, D), spread (K, D), covariance (K, D, D),
            surface (K,); NaN = unconstrained.
        affine: index map input frame -> output frame.
        spacing_in, spacing_out: (D,) spacings of both frames, in their own axis order.
    Returns:
        New targets with the same names and shapes, in the output frame. With
        ``Y = A X + b`` (see :func:`physical_affine`):

        * volume: both bounds x |det A|.
        * centroid: exact -> ``A c + b``; bounds -> bounding box of the transformed box
          (centre ``A c + b``, half-width ``|A| h``); an output axis that mixes in an
          unbounded input axis becomes unbounded.
        * covariance: exact -> ``A Σ Aᵀ``; bounds -> ``a_i a_j Σ_{π(i)π(j)}`` (sides swapped
          where negative) when A is a scaled signed permutation (diagonal: π = identity);
          otherwise NaN.
        * spread: ``sqrt(diag(A Σ Aᵀ))`` where the covariance is exact (the exact transform,
          used even when spread is given), except that spread *bounds* under a scaled signed
          permutation keep their margins as ``|a_i| spread_{π(i)}``; a signed permutation
          also handles exact spreads without covariance; otherwise NaN.
        * surface (voxel-face area, not rotation invariant): ``A = a · signed permutation``
          -> x ``|a|^(D-1)`` (a² in 3-D; unchanged under mirrors/translations/transposes);
          otherwise NaN (rotation, anisotropic scaling: the per-axis face split is unknown).
        * absent classes (volume [0, 0]) stay absent: volume [0, 0], everything else NaN.
    """
    unknown = sorted(set(targets) - set(_KNOWN))
    if unknown:
        raise _error("transform_targets", f"unknown descriptor name(s) {unknown}; known: {_KNOWN}")
    k = _class_count(targets)
    d = affine.dim
    matrix, shift = physical_affine(affine, spacing_in, spacing_out)
    matrix = clean_round_off(matrix)
    monomial = monomial_parts(matrix)
    determinant = abs(float(np.linalg.det(matrix)))
    out: Targets = {}

    if "volume" in targets:
        lower, upper = _pair(targets, "volume", (k,))
        out["volume"] = (lower * determinant, upper * determinant)
        absent = (lower == 0) & (upper == 0)
    else:
        absent = np.zeros(k, dtype=bool)

    if "centroid" in targets:
        lower, upper = _pair(targets, "centroid", (k, d))
        out["centroid"] = interval_linear(matrix, lower, upper, shift)

    covariance_exact = np.zeros(k, dtype=bool)
    covariance_value = np.full((k, d, d), np.nan)
    if "covariance" in targets:
        lower, upper = _pair(targets, "covariance", (k, d, d))
        covariance_exact = _exact_rows(lower, upper)
        new_lower = np.full((k, d, d), np.nan)
        new_upper = np.full((k, d, d), np.nan)
        if monomial is not None:
            source, factor = monomial
            product = factor[:, None] * factor[None, :]  # a_i a_j
            lo = product * lower[:, source][:, :, source]
            hi = product * upper[:, source][:, :, source]
            new_lower, new_upper = np.where(product >= 0, lo, hi), np.where(product >= 0, hi, lo)
        exact = matrix[None] @ np.where(covariance_exact[:, None, None], lower, 0.0) @ matrix.T[None]
        covariance_value = np.where(covariance_exact[:, None, None], exact, np.nan)
        new_lower = np.where(covariance_exact[:, None, None], exact, new_lower)
        new_upper = np.where(covariance_exact[:, None, None], exact, new_upper)
        out["covariance"] = (new_lower, new_upper)

    if "spread" in targets:
        lower, upper = _pair(targets, "spread", (k, d))
        spread_is_range = ~_exact_rows(lower, upper) & ~np.all(np.isnan(lower) & np.isnan(upper), axis=1)
        new_lower = np.full((k, d), np.nan)
        new_upper = np.full((k, d), np.nan)
        if monomial is not None:
            source, factor = monomial
            new_lower = np.abs(factor)[None] * lower[:, source]
            new_upper = np.abs(factor)[None] * upper[:, source]
        variance = np.diagonal(covariance_value, axis1=1, axis2=2)
        from_covariance = np.sqrt(np.clip(variance, 0.0, None))
        # the covariance is exact; under a signed permutation a spread RANGE keeps its margins
        use_covariance = covariance_exact & ~(spread_is_range & (monomial is not None))
        new_lower = np.where(use_covariance[:, None], from_covariance, new_lower)
        new_upper = np.where(use_covariance[:, None], from_covariance, new_upper)
        out["spread"] = (new_lower, new_upper)

    if "surface" in targets:
        lower, upper = _pair(targets, "surface", (k,))
        factor = np.nan
        if monomial is not None:
            magnitudes = np.abs(monomial[1])
            if np.allclose(magnitudes, magnitudes[0], rtol=_EQUAL_TOLERANCE, atol=0.0):
                factor = float(magnitudes[0]) ** (d - 1)
        out["surface"] = (lower * factor, upper * factor)

    if np.any(absent):
        for name, (lower, upper) in out.items():
            if name == "volume":
                continue
            lower[absent] = np.nan
            upper[absent] = np.nan
    return out


# ---------------------------------------------------------------------------------------
# nnU-Net's training pipeline: loader placement, SpatialTransform, MirrorTransform
# ---------------------------------------------------------------------------------------


def _int_shape(shape: Sequence[int], function: str, name: str) -> np.ndarray:
    array = np.asarray([int(s) for s in shape], dtype=np.int64)
    if np.any(array <= 0):
        raise _error(function, f"{name} must be positive, got {tuple(shape)}")
    return array


def spatial_transform_affine(affine: np.ndarray | None, input_shape: Sequence[int],
                             patch_size: Sequence[int]) -> IndexAffine:
    """Index map of batchgeneratorsv2's ``SpatialTransform`` with ``random_crop=False``, no
    elastic deformation (nnU-Net's setting).

    Args:
        affine: the (D, D) ``'affine'`` that ``SpatialTransform.get_parameters`` returned
            (rotation·scaling, acting on output-patch coordinates), or None (no rotation and
            no scaling drawn).
        input_shape: (D,) spatial shape P0 of the transform's input (the loader's patch).
        patch_size: (D,) the transform's ``patch_size`` P.
    Returns:
        With an affine: output voxel q samples the input at
        ``u = A (q - (P-1)/2) + (P0-1)/2`` (the centred identity grid, multiplied by A,
        normalised by P0/2 and read by grid_sample with align_corners=False), so content
        moves by ``q = A^{-1} (u - (P0-1)/2) + (P-1)/2``. Without: ``crop_tensor`` around
        ``floor(P0/2)``, i.e. ``q = u - (floor(P0/2) - floor(P/2))``.
    """
    p0 = _int_shape(input_shape, "spatial_transform_affine", "input_shape")
    p = _int_shape(patch_size, "spatial_transform_affine", "patch_size")
    if p0.shape != p.shape:
        raise _error("spatial_transform_affine", f"input_shape {tuple(p0)} and patch_size {tuple(p)} differ "
                                                 f"in dimension")
    if affine is None:
        return IndexAffine.translation(-(p0 // 2 - p // 2).astype(np.float64))
    sampling = np.asarray(affine, dtype=np.float64)
    if sampling.shape != (p.shape[0], p.shape[0]):
        raise _error("spatial_transform_affine", f"affine must be ({p.shape[0]}, {p.shape[0]}), got "
                                                 f"{sampling.shape}")
    inverse = np.linalg.inv(sampling)
    return IndexAffine(inverse, (p - 1) / 2.0 - inverse @ ((p0 - 1) / 2.0))


def spatial_transform_affine_dummy_2d(affine: np.ndarray | None, input_shape: Sequence[int],
                                      patch_size: Sequence[int]) -> IndexAffine:
    """3-D index map of nnU-Net's dummy-2D augmentation (``do_dummy_2d_data_aug``).

    ``Convert3DTo2DTransform`` folds the first spatial axis into the channels, the 2-D
    ``SpatialTransform`` (patch ``patch_size[1:]``, a 2x2 ``affine``) moves the last two axes,
    and ``Convert2DTo3DTransform`` unfolds: axis 0 is untouched, which needs
    ``input_shape[0] == patch_size[0]`` (nnU-Net sets the initial patch so).
    """
    p0 = _int_shape(input_shape, "spatial_transform_affine_dummy_2d", "input_shape")
    p = _int_shape(patch_size, "spatial_transform_affine_dummy_2d", "patch_size")
    if p0.shape[0] != 3 or p.shape[0] != 3:
        raise _error("spatial_transform_affine_dummy_2d", f"needs 3-D shapes, got {tuple(p0)} / {tuple(p)}")
    if p0[0] != p[0]:
        raise _error("spatial_transform_affine_dummy_2d",
                     f"axis 0 must keep its size under dummy-2D augmentation, got input {tuple(p0)} and "
                     f"patch {tuple(p)}")
    in_plane = spatial_transform_affine(affine, p0[1:], p[1:])
    matrix = np.eye(3)
    matrix[1:, 1:] = in_plane.matrix
    offset = np.zeros(3)
    offset[1:] = in_plane.offset
    return IndexAffine(matrix, offset)


def centred_crop_affine(case_shape: Sequence[int], patch_size: Sequence[int]) -> IndexAffine:
    """The whole-case loader's placement of a case in its patch.

    ``WholeCaseDataLoader`` (nnunet_shape/training/whole_scan.py, ``centred_lower_bound``)
    crops ``[lb, lb + P)`` with ``lb_a = -((P_a - n_a) // 2)`` (negative = padding) through
    acvl_utils' ``crop_and_pad_nd``, so ``q = i - lb``.
    """
    n = _int_shape(case_shape, "centred_crop_affine", "case_shape")
    p = _int_shape(patch_size, "centred_crop_affine", "patch_size")
    if n.shape != p.shape:
        raise _error("centred_crop_affine", f"case_shape {tuple(n)} and patch_size {tuple(p)} differ in dimension")
    lower_bound = -((p - n) // 2)
    return IndexAffine.translation(-lower_bound.astype(np.float64))


def training_patch_affine(case_shape: Sequence[int], initial_patch_size: Sequence[int],
                          patch_size: Sequence[int], spatial_affine: np.ndarray | None,
                          mirror_axes: Sequence[int], do_dummy_2d_data_aug: bool = False) -> IndexAffine:
    """Preprocessed case -> training patch, as nnU-Net's pipeline builds it.

    The loader places the case centrally in ``initial_patch_size`` (:func:`centred_crop_affine`),
    ``SpatialTransform`` resamples it to ``patch_size`` with the drawn ``spatial_affine``
    ((D, D), or (2, 2) in dummy-2D mode, or None), ``MirrorTransform`` flips ``mirror_axes``.
    """
    placement = centred_crop_affine(case_shape, initial_patch_size)
    if do_dummy_2d_data_aug:
        spatial = spatial_transform_affine_dummy_2d(spatial_affine, initial_patch_size, patch_size)
    else:
        spatial = spatial_transform_affine(spatial_affine, initial_patch_size, patch_size)
    return placement.compose(spatial).compose(IndexAffine.mirror(patch_size, mirror_axes))


# ---------------------------------------------------------------------------------------
# nnU-Net's preprocessing: raw array frame -> preprocessed frame
# ---------------------------------------------------------------------------------------


def preprocessed_spacing(raw_spacing: Sequence[float], transpose_forward: Sequence[int],
                         shape_after_cropping: Sequence[int], preprocessed_shape: Sequence[int]) -> np.ndarray:
    """(D,) effective voxel spacing of nnU-Net's preprocessed array, in its (transposed) axis order.

    nnU-Net resamples the cropped case to the plans' target spacing but rounds the shape, so
    the exact spacing is the cropped extent over the preprocessed shape: ``s_t n_old / n_new``
    with ``s_t`` the raw spacing (``properties['spacing']``, raw axis order) permuted by
    ``transpose_forward`` and ``n_old`` = ``properties['shape_after_cropping_and_before_resampling']``
    (already in transposed order: nnU-Net transposes, then crops).
    """
    order = [int(a) for a in transpose_forward]
    spacing = np.asarray(raw_spacing, dtype=np.float64).reshape(-1)
    n_old = _int_shape(shape_after_cropping, "preprocessed_spacing", "shape_after_cropping")
    n_new = _int_shape(preprocessed_shape, "preprocessed_spacing", "preprocessed_shape")
    if spacing.shape[0] != len(order) or n_old.shape[0] != len(order) or n_new.shape[0] != len(order):
        raise _error("preprocessed_spacing",
                     f"inconsistent dimensions: raw_spacing {tuple(spacing)}, transpose_forward {order}, "
                     f"shape_after_cropping {tuple(n_old)}, preprocessed_shape {tuple(n_new)}")
    return spacing[order] * n_old / n_new


def raw_to_preprocessed_affine(raw_spacing: Sequence[float], transpose_forward: Sequence[int],
                               bbox: Sequence[Sequence[int]], shape_after_cropping: Sequence[int],
                               preprocessed_shape: Sequence[int]) -> tuple[IndexAffine, np.ndarray]:
    """Index map raw array -> preprocessed array, and the effective preprocessed spacing.

    ``DefaultPreprocessor.run_case_npy`` transposes (``transpose_forward``, spacing too),
    crops to the nonzero bounding box (``properties['bbox_used_for_cropping']``, computed
    AFTER the transpose, so in transposed axis order, half-open ``[lo, hi)``), then resamples
    ``n_old -> n_new`` voxels per axis. Both of its resamplers (skimage ``resize`` in plane,
    ``map_coordinates`` on the ``(i + 0.5) n_old / n_new - 0.5`` grid across slices) use the
    align_corners=False convention ``i_new = (i_old + 0.5) n_new / n_old - 0.5``; the
    effective spacing is :func:`preprocessed_spacing`, ``s_t n_old / n_new`` (close to, not
    equal to, the plans' target spacing because n_new is rounded).
    """
    order = [int(a) for a in transpose_forward]
    dim = len(order)
    spacing = np.asarray(raw_spacing, dtype=np.float64).reshape(-1)
    n_old = _int_shape(shape_after_cropping, "raw_to_preprocessed_affine", "shape_after_cropping")
    n_new = _int_shape(preprocessed_shape, "raw_to_preprocessed_affine", "preprocessed_shape")
    bbox = np.asarray(bbox, dtype=np.float64)
    if spacing.shape[0] != dim or n_old.shape[0] != dim or n_new.shape[0] != dim or bbox.shape != (dim, 2):
        raise _error("raw_to_preprocessed_affine",
                     f"inconsistent dimensions: raw_spacing {tuple(spacing)}, transpose_forward {order}, bbox "
                     f"{bbox.tolist()}, shape_after_cropping {tuple(n_old)}, preprocessed_shape {tuple(n_new)}")
    if np.any(bbox[:, 1] - bbox[:, 0] != n_old):
        raise _error("raw_to_preprocessed_affine",
                     f"bbox {bbox.astype(int).tolist()} (transposed axis order) does not have the size "
                     f"shape_after_cropping {tuple(n_old)}")
    ratio = n_new / n_old
    transpose = IndexAffine.permutation(order)
    crop = IndexAffine.translation(-bbox[:, 0])
    resample = IndexAffine.scaling(ratio, 0.5 * ratio - 0.5)
    spacing_out = preprocessed_spacing(spacing, order, n_old, n_new)
    return transpose.compose(crop).compose(resample), spacing_out


def raw_to_preprocessed_targets(targets_raw: Mapping[str, tuple[np.ndarray, np.ndarray]],
                                raw_spacing: Sequence[float], transpose_forward: Sequence[int],
                                bbox: Sequence[Sequence[int]], shape_after_cropping: Sequence[int],
                                preprocessed_shape: Sequence[int]) -> tuple[Targets, np.ndarray]:
    """Targets of the raw array frame (SimpleITK order, ``raw_spacing`` = nnU-Net's
    ``properties['spacing']``) in nnU-Net's preprocessed frame.

    Args:
        targets_raw: see :func:`transform_targets`.
        raw_spacing: (D,) spacing in raw array order.
        transpose_forward: the plans' ``transpose_forward``.
        bbox: ``properties['bbox_used_for_cropping']`` (transposed axis order).
        shape_after_cropping: ``properties['shape_after_cropping_and_before_resampling']``.
        preprocessed_shape: spatial shape of the preprocessed case.
    Returns:
        ``(targets, spacing)``: the targets in the preprocessed frame and the effective
        spacing ``s_t n_old / n_new`` that must be used to measure descriptors there. The
        physical part of the map is a pure axis permutation (resampling keeps physical
        positions up to a half-voxel shift), so surfaces are kept.
    """
    affine, spacing_out = raw_to_preprocessed_affine(raw_spacing, transpose_forward, bbox,
                                                     shape_after_cropping, preprocessed_shape)
    return transform_targets(targets_raw, affine, raw_spacing, spacing_out), spacing_out
