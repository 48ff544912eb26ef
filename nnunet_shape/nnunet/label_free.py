"""Label-free datasets: placeholder ``labelsTr`` that satisfy nnU-Net's planner and nothing else.

nnU-Net's ``nnUNetv2_plan_and_preprocess`` wants a label file per training case: it verifies the
dataset, samples foreground intensities for its fingerprint (and crashes when there is no
foreground at all) and stores class locations for patch oversampling. A dataset supervised only
by descriptor files has no labels, so ``nnunet-shape placeholder-labels`` writes, for every
training image, a label map that marks *every voxel* with the first foreground label, with the
image's geometry, and records ``"nnunet_shape_placeholder_labels": true`` in ``dataset.json``.

Consequences, on purpose:

* the fingerprint's foreground intensity statistics describe the whole image (they are only
  used by nnU-Net's CT normalisation; MRI z-scoring ignores them);
* every trainer that learns from labels refuses a dataset with this flag
  (:func:`refuse_placeholder_labels`), and ``nnUNetTrainerShapeDescriptorsFromFile`` never
  opens the label arrays at all.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_shape.errors import (
    UserError,
    check_image_file_complete,
    load_dataset_json,
    one_line,
    prepare_output_folder,
)

PLACEHOLDER_FLAG = "nnunet_shape_placeholder_labels"


class PlaceholderLabelsError(UserError):
    """A trainer that needs voxel labels was asked to train on placeholder labels."""


def refuse_placeholder_labels(dataset_json: dict, trainer_name: str, dataset_name: str) -> None:
    """Raise when ``dataset_json`` marks its labels as placeholders."""
    if dataset_json.get(PLACEHOLDER_FLAG, False):
        raise PlaceholderLabelsError(
            f"{trainer_name}: dataset {dataset_name} has placeholder labels ({PLACEHOLDER_FLAG} in its "
            f"dataset.json): they carry no information. Train it with "
            f"nnUNetTrainerShapeDescriptorsFromFile, which reads descriptorsTr/<case>.json instead.")


def _first_foreground_label(dataset_json: dict, where: Path) -> int:
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        raise UserError(f"dataset.json {where} has no 'labels' mapping")
    values = [v for k, v in labels.items() if k not in ("background", "ignore")]
    try:
        flat = sorted(int(v) if not isinstance(v, (list, tuple)) else int(min(v)) for v in values)
    except (TypeError, ValueError):
        raise UserError(f"dataset.json {where}: 'labels' values must be integers (or lists of them), "
                        f"got {labels}") from None
    if not flat:
        raise UserError(f"dataset.json {where}: labels {labels} have no foreground label")
    if not 0 < flat[0] <= 255:
        raise UserError(f"dataset.json {where}: the first foreground label {flat[0]} does not fit a uint8 "
                        f"placeholder (1..255)")
    return flat[0]


def _image_geometry(path: Path) -> tuple[tuple[int, ...], tuple, tuple, tuple]:
    """(size, spacing, origin, direction) of an image, after reading it whole: a truncated or
    unreadable file is found here, before anything is written."""
    check_image_file_complete(path)  # SimpleITK reads a cut .nii.gz silently, the rest as 0
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserError(f"{path}: cannot read this image ({one_line(error)})") from None
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def write_placeholder_labels(dataset_folder: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Write ``labelsTr/<case><file_ending>`` for every ``imagesTr/<case>_0000<file_ending>``.

    Everything is checked before anything is written (UserError otherwise, and no file is
    touched): ``dataset.json`` parses and has ``file_ending`` and a foreground label, at least
    one image matches the file ending, every image reads completely, and no case already has a
    label file -- existing (real) label files are only replaced with ``overwrite``, or when the
    dataset is flagged as placeholder-labelled already. Then ``dataset.json`` gets the
    :data:`PLACEHOLDER_FLAG` (atomically) BEFORE the first placeholder is written, so an
    interruption can leave missing placeholders (re-run the command) but never a placeholder
    file that a voxel-label trainer would take for a real label. Returns the written paths.
    """
    from nnunet_shape.descriptor_files.atomic import write_json_atomic

    folder = Path(dataset_folder)
    dataset_json_path = folder / "dataset.json"
    if not dataset_json_path.is_file():
        raise UserError(f"{dataset_json_path} not found: is {folder} an nnU-Net raw dataset folder?")
    dataset_json = load_dataset_json(dataset_json_path)
    ending = dataset_json["file_ending"]
    if not isinstance(ending, str) or not ending:
        raise UserError(f"dataset.json {dataset_json_path}: 'file_ending' must be a file ending such as \".nii.gz\"")
    label = _first_foreground_label(dataset_json, dataset_json_path)
    images_folder = folder / "imagesTr"
    images = sorted(images_folder.glob(f"*_0000{ending}")) if images_folder.is_dir() else []
    if not images:
        raise UserError(f"no {images_folder}/*_0000{ending} images (file_ending {ending!r} of dataset.json): "
                        f"nothing to write placeholders for")
    labels_folder = folder / "labelsTr"
    if labels_folder.exists() and not labels_folder.is_dir():
        raise UserError(f"{labels_folder} is a file, not a folder")
    cases = [image_path.name[: -len(f"_0000{ending}")] for image_path in images]
    targets = [labels_folder / f"{case}{ending}" for case in cases]
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite and not dataset_json.get(PLACEHOLDER_FLAG, False):
        raise UserError(f"{labels_folder}: {len(existing)} of {len(targets)} cases already have a label file "
                        f"(e.g. {existing[0].name}); nothing was written. Pass --overwrite to replace them by "
                        f"placeholders (their labels are lost), or train a voxel-label trainer on them")
    geometries = [_image_geometry(image_path) for image_path in images]
    prepare_output_folder(labels_folder, "labels folder")  # writable, before the flag is set

    # the flag first: from here on the dataset's labels are declared placeholders
    dataset_json[PLACEHOLDER_FLAG] = True
    dataset_json["numTraining"] = len(cases)
    write_json_atomic(dataset_json_path, dataset_json)
    labels_folder.mkdir(exist_ok=True)
    written = []
    for target, (size, spacing, origin, direction) in zip(targets, geometries):
        placeholder = sitk.GetImageFromArray(np.full(tuple(reversed(size)), label, np.uint8))
        placeholder.SetSpacing(spacing)
        placeholder.SetOrigin(origin)
        placeholder.SetDirection(direction)
        temporary = target.with_name(f".{target.name}.tmp{ending}")
        sitk.WriteImage(placeholder, str(temporary), True)
        os.replace(temporary, target)
        written.append(target)
    return written


def placeholder_labels_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape placeholder-labels",
        description="Write placeholder labelsTr for a label-free dataset (descriptor files only), so that "
                    "nnUNetv2_plan_and_preprocess runs. Train with nnUNetTrainerShapeDescriptorsFromFile.")
    parser.add_argument("-d", "--dataset", help="dataset id or name in nnUNet_raw")
    parser.add_argument("-i", "--input", help="dataset folder (instead of -d)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing (real) label files")
    args = parser.parse_args(list(argv))
    if (args.dataset is None) == (args.input is None):
        parser.error("give exactly one of -d and -i")
    if args.input is not None:
        folder = Path(args.input)
    else:
        from nnunet_shape.descriptor_files.export import find_raw_dataset

        folder = find_raw_dataset(args.dataset)  # nnUNet_raw unset / unknown id: one-line errors
    written = write_placeholder_labels(folder, overwrite=args.overwrite)
    print(f"wrote {len(written)} placeholder label files to {folder / 'labelsTr'}")
    return 0
