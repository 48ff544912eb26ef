"""No-image baselines as nnU-Net prediction folders (``nnunet-shape baselines``).

:func:`write_baseline_predictions` reads the training label maps with nnU-Net's reader, computes
the baselines of :mod:`nnunet_shape.core.baselines` -- ``atlas`` (voxelwise majority of the
training maps in field-of-view coordinates, ties to the smallest label id) and
``descriptor_ellipsoids`` (per class the solid ellipsoid of the mean training centroid and
covariance; overlaps to the smaller ellipsoid) -- on the grid of every target file, and writes
them with nnU-Net's writer and the target's properties, so that nnU-Net's evaluation and
``nnunet-shape evaluate`` take them as predictions:

    OUT/atlas/<case><file_ending>
    OUT/descriptor_ellipsoids/<case><file_ending>
    OUT/baselines.json          (training cases used, the mean moments, the rules)

A target is an image ``<case>_0000<file_ending>`` (the suffix is stripped) or a label map
``<case><file_ending>``; only its geometry is used, never its voxels. A training case with the
same case id as a target is left out of the baselines (they never see the labels of a case they
predict). nnU-Net's 2-D layout (``(1, 1, y, x)`` with a dummy spacing) is measured in 2-D.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.core.baselines import (
    ClassMoments,
    atlas_majority,
    class_moments,
    descriptor_ellipsoids,
    label_dtype,
    mean_class_moments,
)
from nnunet_shape.descriptor_files.measure import _read_with, geometry_from_properties, index_labels, read_label_map
from nnunet_shape.descriptor_files.model import named_label_values
from nnunet_shape.errors import UserError, load_dataset_json, one_line, prepare_output_folder
from nnunet_shape.nnunet.label_free import PLACEHOLDER_FLAG

__all__ = ["BASELINES", "BASELINES_JSON", "case_id_of_target", "write_baseline_predictions", "main"]

#: the baselines, in the order they are reported
BASELINES: tuple[str, ...] = ("atlas", "descriptor_ellipsoids")
#: the record written beside the baseline folders
BASELINES_JSON = "baselines.json"


def _dataset(dataset_json: Mapping[str, Any] | str | os.PathLike) -> dict:
    dataset = dict(dataset_json) if isinstance(dataset_json, Mapping) else load_dataset_json(dataset_json)
    for key in ("labels", "file_ending"):
        if key not in dataset:
            raise UserError(f"dataset.json has no {key!r} field")
    if dataset.get(PLACEHOLDER_FLAG, False):
        raise UserError(f"the dataset has placeholder labels ({PLACEHOLDER_FLAG} in its dataset.json): "
                        f"its labelsTr carry no information, so no baseline can be made from them")
    return dataset


def case_id_of_target(path: str | os.PathLike, file_ending: str) -> tuple[str, bool]:
    """``(case id, is_image)`` of a target file: ``<case>_0000<ending>`` is an image, any other
    ``<case><ending>`` a label map; a name without the ending is a UserError."""
    name = Path(path).name
    if not name.endswith(file_ending):
        raise UserError(f"target {path} does not end with the dataset's file_ending {file_ending!r}")
    stem = name[: -len(file_ending)]
    if stem.endswith("_0000"):
        return stem[: -len("_0000")], True
    return stem, False


def _reader_class(dataset: dict, example: Path) -> type:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    try:
        return determine_reader_writer_from_dataset_json(dataset, str(example), verbose=False)
    except RuntimeError as error:  # nnU-Net tries every reader on the file
        raise UserError(f"{example}: no nnU-Net reader can read it ({one_line(error)})") from None


def _write_atomic(writer: Any, segmentation: np.ndarray, path: Path, properties: dict) -> None:
    temporary = path.with_name(".tmp_" + path.name)  # keeps the file ending: the writer picks the format
    writer.write_seg(segmentation, str(temporary), properties)
    os.replace(temporary, path)


def write_baseline_predictions(
    dataset_json: Mapping[str, Any] | str | os.PathLike,
    training_label_files: Sequence[str | os.PathLike],
    target_files: Sequence[str | os.PathLike],
    output_folder: str | os.PathLike,
    baselines: Sequence[str] = BASELINES,
    num_processes: int = 1,
) -> dict[str, Path]:
    """Write the no-image baselines for every target; returns ``{baseline: output_folder/<baseline>}``.

    Args:
        dataset_json: path to ``dataset.json`` or its content (labels, file ending, reader).
            A dataset flagged as placeholder-labelled is refused.
        training_label_files: the training label maps (``labelsTr/<case><file_ending>``).
        target_files: images ``<case>_0000<file_ending>`` or label maps ``<case><file_ending>``;
            each output ``<case><file_ending>`` gets the target's grid and properties.
        output_folder: receives one folder per baseline and ``baselines.json``.
        baselines: a subset of :data:`BASELINES`.
        num_processes: reader/writer threads.
    Raises:
        UserError naming the file, case or class: an unknown baseline, no training map (after
        leaving out the targets' cases), a truncated or unreadable file, a label value
        dataset.json does not name, two targets of one case, maps and targets with different
        numbers of axes.
    """
    dataset = _dataset(dataset_json)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown or not baselines:
        raise UserError(f"baselines {list(baselines)}: expected a non-empty subset of {list(BASELINES)}")
    ending = dataset["file_ending"]
    labels = dataset["labels"]
    ignore = labels.get("ignore")
    ignore = None if ignore is None else int(ignore)
    named = sorted(named_label_values(dataset))
    vote_labels = [v for v in named if v != ignore]
    if 0 not in vote_labels:
        vote_labels = [0, *vote_labels]
    foreground = [v for v in vote_labels if v != 0]
    names = {int(v): str(k) for k, v in labels.items() if not isinstance(v, (list, tuple))}
    if not foreground:
        raise UserError(f"dataset.json labels {labels} have no foreground class")

    targets: dict[str, tuple[Path, bool]] = {}
    for target in target_files:
        case, is_image = case_id_of_target(target, ending)
        if case in targets:
            raise UserError(f"two targets for case {case!r}: {targets[case][0]} and {target}")
        targets[case] = (Path(target), is_image)
    if not targets:
        raise UserError("no target file given: nothing to write baselines for")
    training = [Path(p) for p in training_label_files]
    left_out = sorted(p.name[: -len(ending)] for p in training if p.name[: -len(ending)] in targets)
    training = [p for p in training if p.name[: -len(ending)] not in targets]
    if not training:
        raise UserError(f"no training label map left ({len(training_label_files)} given, "
                        f"{len(left_out)} of them are target cases, which the baselines never see)")

    reader_class = _reader_class(dataset, training[0])
    threads = max(1, int(num_processes))

    def read_training(path: Path) -> tuple[np.ndarray, ClassMoments]:
        label_map, geometry = read_label_map(path, reader_class)
        index = index_labels(label_map, named)
        if index.unknown:
            raise UserError(f"training label map {path} (case {path.name[: -len(ending)]!r}) holds label value(s) "
                            f"{list(index.unknown)} that dataset.json does not name (its labels: {named})")
        return label_map.astype(label_dtype(named), copy=False), class_moments(label_map, geometry.spacing_mm,
                                                                                 foreground)

    with ThreadPoolExecutor(threads) as pool:
        measured = list(pool.map(read_training, training))
    maps = [m for m, _ in measured]
    ndim = {m.ndim for m in maps}
    if len(ndim) != 1:
        by_axes = {m.ndim: p for m, p in zip(maps, training)}
        raise UserError(f"training label maps mix numbers of axes: {by_axes[min(ndim)]} has {min(ndim)}, "
                        f"{by_axes[max(ndim)]} has {max(ndim)}")
    (ndim,) = ndim
    mean = mean_class_moments([c for _, c in measured])

    output = prepare_output_folder(output_folder)
    folders = {b: prepare_output_folder(output / b) for b in baselines}
    writer = reader_class()
    atlas_cache: dict[tuple[int, ...], np.ndarray] = {}
    atlas_lock = threading.Lock()

    def write_target(item: tuple[str, tuple[Path, bool]]) -> None:
        case, (path, is_image) = item
        reader = reader_class()
        data, properties = _read_with(path, (lambda p: reader.read_images([p])) if is_image else reader.read_seg,
                                      "image" if is_image else "label map")
        native_2d, geometry = geometry_from_properties(properties, data.shape)
        del data
        shape = tuple(geometry.shape)
        if len(shape) != ndim:
            raise UserError(f"target {path} (case {case!r}) has {len(shape)} axes {list(shape)}, the training "
                            f"label maps {ndim}")
        for baseline in baselines:
            if baseline == "atlas":
                with atlas_lock:  # one vote per grid shape, whichever thread needs it first
                    if shape not in atlas_cache:
                        atlas_cache[shape] = atlas_majority(maps, shape, vote_labels, ignore_label=ignore)
                result = atlas_cache[shape]
            else:
                result = descriptor_ellipsoids(mean.centroid_fraction, mean.covariance_mm2, shape,
                                               geometry.spacing_mm, foreground)
            segmentation = result[None] if native_2d else result  # nnU-Net's (1, y, x) for 2-D
            _write_atomic(writer, segmentation, folders[baseline] / f"{case}{ending}", properties)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write_target, sorted(targets.items())))

    record = {
        "baselines": list(baselines),
        "training_cases": [p.name[: -len(ending)] for p in training],
        "left_out_target_cases": left_out,
        "target_cases": sorted(targets),
        "labels": vote_labels,
        "ignore_label": ignore,
        "rules": {
            "frame": "normalised field-of-view coordinates: voxel i of n at (i + 0.5) / n",
            "atlas": "nearest-neighbour resampling of every training map, voxelwise majority; ties to the "
                     "smallest label id",
            "descriptor_ellipsoids": "per class the solid ellipsoid of the mean centroid (fraction of the field "
                                     "of view) and the mean covariance (mm^2), semi-axes sqrt(5 lambda), lambda at "
                                     "least one target voxel's variance; voxel centre inside; overlaps to the "
                                     "smaller ellipsoid volume (equal: smaller label id); absent classes: none",
        },
        "classes": {
            str(label): {
                "name": names.get(label, str(label)),
                "training_maps_with_class": int(mean.count[i]),
                "mean_centroid_fraction": None if not mean.present[i] else mean.centroid_fraction[i].tolist(),
                "mean_covariance_mm2": None if not mean.present[i] else mean.covariance_mm2[i].tolist(),
            } for i, label in enumerate(foreground)
        },
    }
    temporary = output / (".tmp_" + BASELINES_JSON)
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, output / BASELINES_JSON)
    return folders


def target_files_in(folder: str | os.PathLike, file_ending: str) -> list[Path]:
    """The targets of a folder: its images ``*_0000<ending>`` when it has any, else every ``*<ending>``
    (a folder of label maps such as labelsTs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"target folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith("."))
    images = [p for p in files if p.name.endswith(f"_0000{file_ending}")]
    chosen = images or files
    if not chosen:
        raise UserError(f"target folder {folder} holds no '*{file_ending}' file (the dataset's file_ending)")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """``nnunet-shape baselines -d ID [-i TARGET_FOLDER] -o OUT [--baselines ...] [--np N]``"""
    import sys

    from nnunet_shape.descriptor_files.export import find_raw_dataset, training_label_files

    parser = argparse.ArgumentParser(
        prog="nnunet-shape baselines",
        description="No-image baselines from labelsTr of a raw dataset: 'atlas' (voxelwise majority of the "
                    "training labels in field-of-view coordinates) and 'descriptor_ellipsoids' (per class the "
                    "ellipsoid of the mean training centroid and covariance), one prediction per target, "
                    "written as OUT/<baseline>/<case><file_ending>.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name in nnUNet_raw")
    parser.add_argument("-i", default=None,
                        help="folder of targets: images <case>_0000<ending> or label maps (default: imagesTs)")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES),
                        help="which baselines (default: all)")
    parser.add_argument("--np", dest="num_processes", type=int, default=1, help="reader/writer threads (default 1)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    raw = find_raw_dataset(args.dataset)
    dataset = _dataset(raw / "dataset.json")
    training = training_label_files(raw, dataset)
    if not training:
        raise UserError(f"{raw / 'labelsTr'} holds no '*{dataset['file_ending']}' label map")
    targets = target_files_in(args.i if args.i is not None else raw / "imagesTs", dataset["file_ending"])
    folders = write_baseline_predictions(dataset, list(training.values()), targets, args.o, args.baselines,
                                         args.num_processes)
    record = json.loads((Path(args.o) / BASELINES_JSON).read_text())
    print(f"baselines from {len(record['training_cases'])} training label maps of {raw.name}"
          + (f" ({len(record['left_out_target_cases'])} target cases left out)" if record["left_out_target_cases"]
             else ""))
    for baseline, folder in folders.items():
        print(f"  {baseline}: {len(targets)} cases in {folder}")
    return 0
