"""The patient's anatomical frame and nnU-Net's array frame (pure numpy).

Population priors are stated in the patient's anatomical frame, so that one statement
("the tibia lies 25-60 mm inferior of the femur") serves scans acquired in any orientation.
This module maps vectors, boxes and per-axis spreads between that frame and the array frame
in which nnU-Net holds a case.

Conventions
-----------
* Anatomical frame: ITK's / DICOM's LPS. Axis 0 ``left`` (mm towards the patient's left),
  axis 1 ``posterior``, axis 2 ``superior``. "25-60 mm inferior" is ``superior`` in
  ``[-60, -25]``.
* ``direction``: ITK's direction matrix as SimpleITK gives it (``image.GetDirection()``,
  9 floats row-major, or a 3x3 nested list): row = world (LPS) axis, column = ITK index
  axis ``(i, j, k)``; ``world = origin + direction @ (index_ijk * spacing_ijk)``.
* Raw array frame: the numpy array of ``sitk.GetArrayFromImage`` (and nnU-Net's
  SimpleITKIO / NibabelIO readers, whose geometry is converted to LPS), axes ``(k, j, i)``
  -- the ITK index axes reversed; positions ``x_a = index_a * spacing_a`` (mm).
* nnU-Net's ``transpose_forward`` (plans): preprocessed axis ``p`` is raw axis
  ``transpose_forward[p]``. Cropping and resampling only translate physical positions, so
  mm vectors (offsets) and spreads follow the transpose alone.

In both frames a vector maps by ``anatomical = matrix @ array`` with
``matrix = direction[:, ::-1][:, transpose_forward]`` (orthonormal).

Oblique directions
------------------
* Vectors are mapped exactly for any orthonormal direction; boxes of vectors (offset
  intervals) are mapped to the bounding box of their image (interval arithmetic; exact for
  signed axis permutations).
* Per-axis spreads and field-of-view fractions only have an axis-wise meaning when every
  array axis runs along an anatomical axis: they use the nearest signed permutation and are
  refused (:class:`ObliqueDirectionError`) when an array axis is more than
  ``max_oblique_degrees`` (default 10 degrees) away from its anatomical axis.
* :meth:`AnatomicalFrame.spread_to_anatomical` of a full covariance is exact for any
  direction (``sqrt(diag(R cov R^T))``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ANATOMICAL_AXES",
    "DEFAULT_MAX_OBLIQUE_DEGREES",
    "AnatomicalFrame",
    "ObliqueDirectionError",
    "direction_matrix",
]

ANATOMICAL_AXES: tuple[str, ...] = ("left", "posterior", "superior")
DEFAULT_MAX_OBLIQUE_DEGREES = 10.0
#: largest |R^T R - I| entry accepted as an orthonormal direction (round-off of written headers)
_ORTHONORMAL_TOLERANCE = 1e-4


class ObliqueDirectionError(ValueError):
    """An axis-wise quantity was asked of a direction that is not near a signed permutation."""


def direction_matrix(direction: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(3, 3) float64 ITK direction from 9 row-major floats (SimpleITK) or a nested 3x3."""
    matrix = np.asarray(direction, dtype=np.float64)
    if matrix.size == 9:
        matrix = matrix.reshape(3, 3)
    if matrix.shape != (3, 3):
        raise ValueError(f"direction must be 9 floats or 3x3 (a 3-D image), got shape {np.shape(direction)}; "
                         "population priors need 3-D images")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"direction {matrix.tolist()} has non-finite entries")
    error = np.abs(matrix.T @ matrix - np.eye(3)).max()
    if error > _ORTHONORMAL_TOLERANCE:
        raise ValueError(f"direction {matrix.tolist()} is not orthonormal (|R^T R - I| = {error:.3g}); "
                         "expected an ITK direction matrix")
    return matrix


def _transpose(transpose_forward: Sequence[int] | None) -> list[int]:
    if transpose_forward is None:
        return [0, 1, 2]
    order = [int(a) for a in transpose_forward]
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"transpose_forward must be a permutation of (0, 1, 2), got {list(transpose_forward)}")
    return order


@dataclass(frozen=True)
class AnatomicalFrame:
    """``anatomical = matrix @ array`` for mm vectors of one case's array frame.

    Build it with :meth:`from_direction`. ``matrix`` (3, 3): column ``a`` is the unit vector
    of array axis ``a`` in LPS.
    """

    matrix: np.ndarray
    max_oblique_degrees: float = DEFAULT_MAX_OBLIQUE_DEGREES

    @classmethod
    def from_direction(
        cls,
        direction: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
        transpose_forward: Sequence[int] | None = None,
        max_oblique_degrees: float = DEFAULT_MAX_OBLIQUE_DEGREES,
    ) -> AnatomicalFrame:
        """The frame of the raw array (``transpose_forward=None``) or of nnU-Net's
        preprocessed array (the plans' ``transpose_forward``)."""
        raw = direction_matrix(direction)[:, ::-1]  # columns = raw array axes (k, j, i)
        return cls(np.ascontiguousarray(raw[:, _transpose(transpose_forward)]), float(max_oblique_degrees))

    # -- axis correspondence ------------------------------------------------------------

    @property
    def axis_source(self) -> tuple[int, ...]:
        """For each array axis, the anatomical axis nearest to it."""
        return tuple(int(j) for j in np.abs(self.matrix).argmax(axis=0))

    @property
    def axis_sign(self) -> tuple[float, ...]:
        """+1 where the array axis runs towards its anatomical axis's positive side, else -1."""
        return tuple(float(np.sign(self.matrix[j, a])) for a, j in enumerate(self.axis_source))

    @property
    def obliqueness_degrees(self) -> float:
        """Largest angle between an array axis and its nearest anatomical axis."""
        cosines = np.clip(np.abs(self.matrix).max(axis=0), -1.0, 1.0)
        return float(np.degrees(np.arccos(cosines)).max())

    def signed_permutation(self, what: str = "an axis-wise quantity") -> np.ndarray:
        """The nearest signed permutation matrix (entries 0, +-1), or ObliqueDirectionError."""
        source = self.axis_source
        angle = self.obliqueness_degrees
        if len(set(source)) != 3 or angle > self.max_oblique_degrees:
            raise ObliqueDirectionError(
                f"direction is oblique: array axes at up to {angle:.2f} degrees from the anatomical axes (allowed "
                f"{self.max_oblique_degrees:g}, columns {np.round(self.matrix, 4).tolist()}); {what} needs each array "
                "axis along one anatomical axis (raise max_oblique_degrees, or resample the image)"
            )
        out = np.zeros((3, 3))
        for a, j in enumerate(source):
            out[j, a] = self.axis_sign[a]
        return out

    # -- vectors and boxes ----------------------------------------------------------------

    def vector_to_anatomical(self, vector: np.ndarray) -> np.ndarray:
        """(..., 3) array-frame mm vectors -> LPS (exact for any direction)."""
        return np.asarray(vector, dtype=np.float64) @ self.matrix.T

    def vector_to_array(self, vector: np.ndarray) -> np.ndarray:
        """(..., 3) LPS mm vectors -> array frame (exact for any direction)."""
        return np.asarray(vector, dtype=np.float64) @ self.matrix

    def box_to_array(self, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Box ``lower <= v <= upper`` of LPS vectors (3,) -> box of array vectors.

        The bounding box of the image (interval arithmetic); exact for signed permutations.
        Unbounded sides (nan / inf) only reach the array axes that mix them in.
        """
        return _interval_image(self.matrix.T, lower, upper)

    def box_to_anatomical(self, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Box of array-frame vectors (3,) -> bounding box in LPS."""
        return _interval_image(self.matrix, lower, upper)

    # -- axis-wise quantities (nearest signed permutation) ----------------------------------

    def spread_to_array(self, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-anatomical-axis bounds of a non-negative axis-wise quantity (spread, spread
        ratio) (3,) -> per array axis (permuted, signs dropped)."""
        self.signed_permutation("a per-axis spread")  # refuses oblique directions
        source = list(self.axis_source)
        return _finite_or_nan(lower)[source], _finite_or_nan(upper)[source]

    def spread_to_anatomical(self, covariance: np.ndarray) -> np.ndarray:
        """(3, 3) array-frame covariance (mm^2) -> (3,) standard deviation per LPS axis."""
        rotated = self.matrix @ np.asarray(covariance, dtype=np.float64) @ self.matrix.T
        return np.sqrt(np.clip(np.diag(rotated), 0.0, None))

    def fraction_to_array(self, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of a position in the field of view, as a fraction along each LPS axis from
        the image's right/anterior/inferior edge (3,) -> fraction along each array axis from
        index 0 (a flipped axis maps ``f`` to ``1 - f``)."""
        perm = self.signed_permutation("a field-of-view fraction")
        lo, hi = _finite_or_nan(lower), _finite_or_nan(upper)
        out_lo, out_hi = np.empty(3), np.empty(3)
        for a in range(3):
            j = int(np.abs(perm[:, a]).argmax())
            if perm[j, a] > 0:
                out_lo[a], out_hi[a] = lo[j], hi[j]
            else:
                out_lo[a], out_hi[a] = 1.0 - hi[j], 1.0 - lo[j]
        return out_lo, out_hi

    def fraction_to_anatomical(self, fraction: np.ndarray) -> np.ndarray:
        """(3,) fraction along each array axis -> fraction along each LPS axis."""
        perm = self.signed_permutation("a field-of-view fraction")
        f = np.asarray(fraction, dtype=np.float64)
        out = np.empty(3)
        for a in range(3):
            j = int(np.abs(perm[:, a]).argmax())
            out[j] = f[a] if perm[j, a] > 0 else 1.0 - f[a]
        return out


def _finite_or_nan(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(3)
    return np.where(np.isnan(v), np.nan, v)


def _interval_image(matrix: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of ``{matrix @ v : lower <= v <= upper}``; nan = -inf/+inf on that side."""
    lo = np.asarray(lower, dtype=np.float64).reshape(3)
    hi = np.asarray(upper, dtype=np.float64).reshape(3)
    lo = np.where(np.isnan(lo), -math.inf, lo)
    hi = np.where(np.isnan(hi), math.inf, hi)
    scale = np.abs(matrix).max()
    m = np.where(np.abs(matrix) <= 1e-12 * scale, 0.0, matrix)
    with np.errstate(invalid="ignore"):
        low_terms = np.where(m > 0, m * lo[None, :], m * hi[None, :])
        high_terms = np.where(m > 0, m * hi[None, :], m * lo[None, :])
    low_terms = np.where(m != 0, low_terms, 0.0)
    high_terms = np.where(m != 0, high_terms, 0.0)
    out_lo, out_hi = low_terms.sum(axis=1), high_terms.sum(axis=1)
    return np.where(np.isinf(out_lo), np.nan, out_lo), np.where(np.isinf(out_hi), np.nan, out_hi)
