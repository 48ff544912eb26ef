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
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

PLACEHOLDER_FLAG = "nnunet_shape_placeholder_labels"


class PlaceholderLabelsError(RuntimeError):
    """A trainer that needs voxel labels was asked to train on placeholder labels."""


def refuse_placeholder_labels(dataset_json: dict, trainer_name: str, dataset_name: str) -> None:
    """Raise when ``dataset_json`` marks its labels as placeholders."""
    if dataset_json.get(PLACEHOLDER_FLAG, False):
        raise PlaceholderLabelsError(
            f"{trainer_name}: dataset {dataset_name} has placeholder labels ({PLACEHOLDER_FLAG} in its "
            f"dataset.json): they carry no information. Train it with "
            f"nnUNetTrainerShapeDescriptorsFromFile, which reads descriptorsTr/<case>.json instead.")


def _first_foreground_label(dataset_json: dict) -> int:
    values = [v for k, v in dataset_json["labels"].items() if k not in ("background", "ignore")]
    flat = sorted(int(v) if not isinstance(v, (list, tuple)) else int(min(v)) for v in values)
    if not flat:
        raise ValueError(f"dataset.json labels {dataset_json['labels']} have no foreground label")
    return flat[0]


def write_placeholder_labels(dataset_folder: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Write ``labelsTr/<case><file_ending>`` for every ``imagesTr/<case>_0000<file_ending>``.

    Existing real label files are never replaced unless ``overwrite``. Returns the written paths.
    """
    folder = Path(dataset_folder)
    dataset_json_path = folder / "dataset.json"
    dataset_json = json.loads(dataset_json_path.read_text())
    ending = dataset_json["file_ending"]
    label = _first_foreground_label(dataset_json)
    labels_folder = folder / "labelsTr"
    labels_folder.mkdir(exist_ok=True)
    written = []
    for image_path in sorted((folder / "imagesTr").glob(f"*_0000{ending}")):
        case = image_path.name[: -len(f"_0000{ending}")]
        target = labels_folder / f"{case}{ending}"
        if target.exists() and not overwrite and not dataset_json.get(PLACEHOLDER_FLAG, False):
            raise FileExistsError(f"{target}: a label file exists already; pass --overwrite to replace it "
                                  f"by a placeholder")
        image = sitk.ReadImage(str(image_path))
        placeholder = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(image).shape, label, np.uint8))
        placeholder.CopyInformation(image)
        temporary = target.with_name(f".{target.name}.tmp{ending}")
        sitk.WriteImage(placeholder, str(temporary), True)
        os.replace(temporary, target)
        written.append(target)
    dataset_json[PLACEHOLDER_FLAG] = True
    dataset_json["numTraining"] = len(written)
    temporary = dataset_json_path.with_name(".dataset.json.tmp")
    temporary.write_text(json.dumps(dataset_json, indent=4))
    os.replace(temporary, dataset_json_path)
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
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        folder = Path(nnUNet_raw.require()) / maybe_convert_to_dataset_name(args.dataset)
    written = write_placeholder_labels(folder, overwrite=args.overwrite)
    print(f"wrote {len(written)} placeholder label files to {folder / 'labelsTr'}")
    return 0
