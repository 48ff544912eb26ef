"""What the dataset-level commands share: an nnU-Net raw dataset, a 3-D case read with its reader,
and the command-line options that mean the same in every command.

Used by ``simulate-points`` / ``fit-templates`` (:mod:`nnunet_shape.nnunet.weak_annotations`),
``click-bounds`` (:mod:`nnunet_shape.nnunet.click_bounds`) and ``simulate-slices``
(:mod:`nnunet_shape.nnunet.sparse_slices`). Images and labels are read with nnU-Net's reader for the
dataset, so arrays, spacing and world frame are what nnU-Net and the descriptor files use.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nnunet_shape.errors import UserError, load_json_file

if TYPE_CHECKING:
    from nnunet_shape.descriptor_files.measure import Geometry

__all__ = [
    "RawDataset",
    "open_raw_dataset",
    "image_reader_class",
    "refuse_2d_image",
    "read_3d_case",
    "add_dataset_argument",
    "add_seed_argument",
    "add_output_folder_argument",
]

#: why the weak-annotation commands refuse a 2-D image (the default reason of :func:`refuse_2d_image`)
POINTS_ARE_3D = "surface points and sphere templates (paper 003) are 3-D only"


@dataclass
class RawDataset:
    folder: Path
    dataset_json: dict
    ending: str
    placeholder_labels: bool


def open_raw_dataset(dataset: str | int) -> RawDataset:
    from nnunet_shape.descriptor_files.export import find_raw_dataset
    from nnunet_shape.nnunet.label_free import PLACEHOLDER_FLAG

    folder = find_raw_dataset(dataset)
    dataset_json = load_json_file(folder / "dataset.json", "dataset.json")
    placeholders = bool(dataset_json.get(PLACEHOLDER_FLAG, False))
    return RawDataset(folder, dataset_json, dataset_json["file_ending"], placeholders)


def image_reader_class(dataset_json: Mapping[str, Any], example: Path) -> type:
    """nnU-Net's reader/writer class for the dataset's files (as nnU-Net chooses it)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    return determine_reader_writer_from_dataset_json(dict(dataset_json), str(example), verbose=False)


def refuse_2d_image(is_2d: bool, path: Path, what: str = "image", reason: str = POINTS_ARE_3D) -> None:
    """A clear error for a 2-D ``what`` (``"image"``, ``"label map"``) where the command is 3-D only:
    ``"<path>: a 2-D <what>; <reason>"``."""
    if is_2d:
        raise UserError(f"{path}: a 2-D {what}; {reason}")


def read_3d_case(reader: type, path: Path, label_map: bool = False, reason: str = POINTS_ARE_3D
                 ) -> tuple[np.ndarray, dict, Geometry]:
    """``(array, properties, geometry)`` of one 3-D file read with nnU-Net's ``reader`` class.

    ``array`` is the reader's ``(c, Z, Y, X)`` array (``read_images`` of an image, or ``read_seg``
    of a label map with ``label_map``), ``properties`` its properties (for ``write_seg``),
    ``geometry`` the :class:`~nnunet_shape.descriptor_files.measure.Geometry` of
    :func:`~nnunet_shape.descriptor_files.measure.geometry_from_properties`. A 2-D file (nnU-Net's
    dummy-axis layout: a geometry without three axes) is a UserError naming ``path`` and ``reason``
    (:func:`refuse_2d_image`).
    """
    from nnunet_shape.descriptor_files.measure import geometry_from_properties

    array, properties = reader().read_seg(str(path)) if label_map else reader().read_images([str(path)])
    _, geometry = geometry_from_properties(properties, array.shape)  # a 2-D image's geometry has 2 axes
    refuse_2d_image(len(geometry.shape) != 3, path, "label map" if label_map else "image", reason)
    return array, properties, geometry


# ---------------------------------------------------------------------------------------
# command-line options with one meaning in every dataset-level command
# ---------------------------------------------------------------------------------------


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    """``-d/--dataset`` (required): the raw dataset, as :func:`open_raw_dataset` takes it."""
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or DatasetXXX_Name in nnUNet_raw")


def add_seed_argument(parser: argparse.ArgumentParser) -> None:
    """``--seed`` (int, default 0)."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_output_folder_argument(parser: argparse.ArgumentParser, default_folder: str) -> None:
    """``-o/--output`` (default None): the output folder, ``<raw dataset>/<default_folder>`` when not given."""
    parser.add_argument("-o", "--output", default=None, help=f"output folder (default <raw dataset>/{default_folder})")
