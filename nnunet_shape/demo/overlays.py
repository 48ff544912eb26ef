"""PNG overlays of label maps on an image slice (``make demo``'s per-case figures).

One figure per case: columns = the image, the ground truth and each model's prediction; rows =
the chosen slices along one array axis. Every class keeps one fixed colour in every panel (and in
every figure), with a legend, so that panels compare at a glance.

Arrays are in nnU-Net's order; for the knee phantoms that is ``(z, y, x)`` = (medial-lateral,
superior-inferior, anterior-posterior), so slices along axis 0 are sagittal, like the DESS scans
of paper 000. No nnU-Net import here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

__all__ = ["CLASS_COLOURS", "class_colours", "colourise", "mid_slice", "most_labelled_slice",
           "save_overlay_figure"]

#: RGB colours of labels 1, 2, 3, ... (cycled beyond 8): femur orange, femoral cartilage green,
#: tibia red, tibial cartilage violet for the knee phantoms; distinguishable on grey images.
CLASS_COLOURS: tuple[tuple[float, float, float], ...] = (
    (1.00, 0.55, 0.00),
    (0.10, 0.80, 0.25),
    (0.90, 0.10, 0.15),
    (0.60, 0.35, 0.95),
    (0.10, 0.60, 1.00),
    (1.00, 0.90, 0.10),
    (0.95, 0.35, 0.75),
    (0.40, 0.90, 0.90),
)


def class_colours(labels: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """Fixed colour of every foreground label: label ``l`` gets ``CLASS_COLOURS[(l - 1) % 8]``.

    The colour depends on the label value only (not on which labels are present), so a class
    has the same colour in every figure.
    """
    colours = {}
    for label in labels:
        if int(label) < 1:
            raise ValueError(f"class_colours: label {label} is not a foreground label (>= 1)")
        colours[int(label)] = CLASS_COLOURS[(int(label) - 1) % len(CLASS_COLOURS)]
    return colours


def colourise(labels_2d: np.ndarray, colours: Mapping[int, tuple[float, float, float]],
              alpha: float = 0.6) -> np.ndarray:
    """(H, W) label slice -> (H, W, 4) RGBA float image: class colours with ``alpha``, background
    (and labels without a colour) fully transparent."""
    if labels_2d.ndim != 2:
        raise ValueError(f"colourise: need a 2-D label slice, got shape {labels_2d.shape}")
    rgba = np.zeros(labels_2d.shape + (4,), dtype=np.float32)
    for label, colour in colours.items():
        mask = labels_2d == label
        rgba[mask, :3] = colour
        rgba[mask, 3] = alpha
    return rgba


def mid_slice(shape: Sequence[int], axis: int = 0) -> int:
    """Index of the middle slice along ``axis`` (``n // 2``)."""
    return int(shape[axis]) // 2


def most_labelled_slice(labels: np.ndarray, classes: Sequence[int], axis: int = 0) -> int:
    """Slice along ``axis`` holding the most voxels of ``classes`` (first one on ties; the middle
    slice if none of them is present) -- e.g. the slice through the cartilage of a condyle."""
    mask = np.isin(labels, np.asarray(list(classes)))
    other_axes = tuple(a for a in range(labels.ndim) if a != axis)
    counts = mask.sum(axis=other_axes)
    if counts.max(initial=0) == 0:
        return mid_slice(labels.shape, axis)
    return int(np.argmax(counts))


def _take(array: np.ndarray, index: int, axis: int) -> np.ndarray:
    return np.take(array, index, axis=axis)


def save_overlay_figure(image: np.ndarray, segmentations: Mapping[str, np.ndarray],
                        class_names: Mapping[int, str], output_file: str | os.PathLike,
                        slice_indices: Sequence[int], axis: int = 0,
                        spacing: Sequence[float] | None = None, title: str | None = None,
                        slice_labels: Sequence[str] | None = None, dpi: int = 100) -> Path:
    """Write one PNG: rows = ``slice_indices`` along ``axis``; columns = the image alone, then
    every entry of ``segmentations`` (e.g. ground truth, then each model) over the image.

    Args:
        image: (X, Y, Z) intensities (any float/int dtype).
        segmentations: column title -> (X, Y, Z) label map of the image's shape (insertion order
            is the column order).
        class_names: foreground label -> name (legend); labels not listed are not drawn.
        output_file: the PNG to write (parent folders are created).
        slice_indices: slices to show, one row each.
        axis: the array axis the slices are taken along.
        spacing: voxel spacing in the array's axis order; makes the pixels physically square.
        title: figure title; slice_labels: one text per row (default ``"slice i"``).
    Returns:
        The written path.
    """
    if image.ndim != 3:
        raise ValueError(f"save_overlay_figure: need a 3-D image, got shape {image.shape}")
    for name, segmentation in segmentations.items():
        if segmentation.shape != image.shape:
            raise ValueError(f"save_overlay_figure: segmentation {name!r} has shape "
                             f"{segmentation.shape}, the image {image.shape}")
    if not slice_indices:
        raise ValueError("save_overlay_figure: no slice to show")
    in_plane = [a for a in range(3) if a != axis]
    # rows of a slice run along in_plane[0], columns along in_plane[1]
    aspect = 1.0 if spacing is None else float(spacing[in_plane[0]]) / float(spacing[in_plane[1]])
    colours = class_colours(sorted(class_names))
    low, high = np.percentile(image, [0.5, 99.5])
    columns = ["image"] + list(segmentations)
    rows = len(slice_indices)
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.6 * len(columns), 2.6 * rows + 0.9),
                             squeeze=False)
    for row, index in enumerate(slice_indices):
        grey = _take(image, index, axis)
        for column, name in enumerate(columns):
            ax = axes[row, column]
            ax.imshow(grey, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            if name != "image":
                ax.imshow(colourise(_take(segmentations[name], index, axis), colours), aspect=aspect,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
        row_text = slice_labels[row] if slice_labels is not None else f"slice {index}"
        axes[row, 0].set_ylabel(row_text, fontsize=8)
    handles = [Patch(facecolor=colours[label], label=class_names[label]) for label in sorted(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1))
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_file.with_name(".tmp_" + output_file.name)
    fig.savefig(temporary, dpi=dpi, format="png")
    plt.close(fig)
    os.replace(temporary, output_file)
    return output_file
