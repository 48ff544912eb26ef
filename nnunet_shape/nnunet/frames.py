"""nnU-Net's array frames: the rules about how nnU-Net holds arrays that several modules apply.

* **The dummy 2-D axis.** nnU-Net's readers hold a 2-D image as ``(c, 1, y, x)`` with a first
  spacing of 999 x the largest in-plane one. The rule that recognises it is
  :func:`is_nnunet_2d_layout`; it lives in :mod:`nnunet_shape.descriptor_files.model` because
  the descriptor export (a lower layer, which may not import this one) needs it too, and is
  re-exported here for the nnU-Net layer. :func:`drop_nnunet_2d_axis` applies it to arrays
  read with an nnU-Net reader (``nnunet-shape evaluate``).
* **The preprocessed spacing.** nnU-Net resamples a cropped case of shape ``n_old`` to
  ``n_new``; the spacing the network sees is ``s * n_old / n_new`` per axis (after
  ``transpose_forward``), :func:`preprocessed_spacing`. Pure arithmetic, so it lives in
  :mod:`nnunet_shape.core.geometry` beside the target maps that use it, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nnunet_shape.core.geometry import preprocessed_spacing
from nnunet_shape.descriptor_files.model import NNUNET_2D_SPACING_FACTOR, is_nnunet_2d_layout

__all__ = ["NNUNET_2D_SPACING_FACTOR", "is_nnunet_2d_layout", "drop_nnunet_2d_axis", "preprocessed_spacing"]


def drop_nnunet_2d_axis(arrays: Sequence[np.ndarray], spacing: Sequence[float]
                        ) -> tuple[tuple[np.ndarray, ...], list[float]]:
    """The arrays and spacing to measure in: nnU-Net's dummy axis of a 2-D image removed.

    Args:
        arrays: spatial arrays of one shape ``(*S)`` (no channel axis), e.g. a reference and a
            prediction read with the same nnU-Net reader.
        spacing: their spacing as the reader reports it, array order (``len(S)`` entries).
    Returns:
        ``(arrays, spacing)``: unchanged when :func:`is_nnunet_2d_layout` is False for
        ``(S, spacing)``, else every array without axis 0 and the spacing without its dummy entry.
    """
    arrays = tuple(arrays)
    spacing = [float(s) for s in spacing]
    if not arrays or not is_nnunet_2d_layout(arrays[0].shape, spacing):
        return arrays, spacing
    return tuple(array[0] for array in arrays), spacing[1:]
