"""The sparse-slice baseline of paper 003: a few fully annotated slices, every other voxel ignored.

``nnunet-shape simulate-slices -d ID --slices K --seed S [--target-id ID2]`` writes a derived
nnU-Net raw dataset ``DatasetID2_<Name>Slices<K>Seed<S>`` in which, per training case and per
plane (each of the three array axes), K slices that contain foreground keep their labels and
every other voxel is nnU-Net's ignore label (a label named ``"ignore"`` in ``dataset.json``, one
above the highest real label), which nnU-Net's own trainer masks out of its CE and Dice losses
(design notes §5). Train it with ``nnUNetv2_train ID2 3d_fullres FOLD`` (nnU-Net's default trainer).

Images are hard-linked (copied where the file system refuses links); ``imagesTs``/``labelsTs``
are carried over the same way, for evaluation. The annotation effort as paper 003 counts it,
the summed contour length (mm) of the annotated slices, is written per case to
``sparse_slices.json`` in the derived dataset folder.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_shape.errors import UserError, run_console
from nnunet_shape.nnunet.raw_dataset import (
    add_dataset_argument,
    add_seed_argument,
    image_reader_class,
    open_raw_dataset,
    read_3d_case,
)

__all__ = [
    "EFFORT_FILE",
    "SPARSE_FLAG",
    "contour_length_mm",
    "choose_slices",
    "sparse_slice_labels",
    "simulate_slices_dataset",
    "simulate_slices_main",
]

#: per-case slices and effort, in the derived dataset folder
EFFORT_FILE = "sparse_slices.json"
#: dataset.json key marking a dataset written by simulate-slices (and what it came from)
SPARSE_FLAG = "nnunet_shape_sparse_slices"
MAX_DATASET_ID = 999


# ---------------------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------------------


def contour_length_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Length (mm) of the outline of a 2-D binary ``mask`` (rows, columns) with pixel ``spacing_mm``.

    The outline is the 0.5 iso-line of the mask (marching squares, ``skimage.measure.find_contours``)
    on the mask padded with one background pixel, so objects touching the border are closed: a
    single pixel gives a diamond through its four edge midpoints, ``4 * sqrt((s_r/2)^2 + (s_c/2)^2)``;
    an ``n x n`` block ``2 (n - 1)(s_r + s_c) + 4 * sqrt((s_r/2)^2 + (s_c/2)^2)``. This is what an
    annotator tracing the object's boundary draws, without the staircase of the voxel edges.
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"contour_length_mm: expected a 2-D mask, got shape {mask.shape}")
    if not mask.any():
        return 0.0
    padded = np.pad(mask, 1).astype(np.float64)
    scale = np.asarray(spacing_mm, dtype=np.float64)
    total = 0.0
    for contour in find_contours(padded, 0.5):
        total += float(np.linalg.norm(np.diff(contour, axis=0) * scale, axis=1).sum())
    return total


def choose_slices(foreground: np.ndarray, k: int, seed: int) -> list[list[int]]:
    """Per array axis, up to ``k`` distinct slice indices whose slice holds foreground (a boolean
    mask), drawn without replacement with ``seed``; sorted. Fewer when fewer slices hold foreground."""
    rng = np.random.default_rng(seed)
    chosen = []
    for axis in range(foreground.ndim):
        others = tuple(a for a in range(foreground.ndim) if a != axis)
        candidates = np.flatnonzero(np.any(foreground, axis=others))
        picked = rng.choice(candidates, size=min(k, len(candidates)), replace=False) if len(candidates) else []
        chosen.append(sorted(int(i) for i in picked))
    return chosen


def sparse_slice_labels(labels: np.ndarray, slices: Sequence[Sequence[int]], ignore_label: int,
                        spacing_mm: Sequence[float], class_labels: Sequence[int]) -> tuple[np.ndarray, float]:
    """``labels`` (Z, Y, X) kept on the given slices of each axis, ``ignore_label`` elsewhere,
    and the summed contour length (mm) of ``class_labels`` over those slices (each slice of each
    plane counted once, every class's outline counted in full)."""
    sparse = np.full(labels.shape, ignore_label, dtype=labels.dtype)
    effort = 0.0
    for axis, indices in enumerate(slices):
        in_plane = [s for a, s in enumerate(spacing_mm) if a != axis]
        for index in indices:
            where = [slice(None)] * labels.ndim
            where[axis] = index
            sparse[tuple(where)] = labels[tuple(where)]
            section = labels[tuple(where)]
            effort += sum(contour_length_mm(section == label, in_plane) for label in class_labels)
    return sparse, effort


# ---------------------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------------------


def _real_labels(dataset_json: Mapping[str, Any], where: Path) -> tuple[list[int], int]:
    """(foreground labels, ignore label) for a derived dataset from the source's dataset.json."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        raise UserError(f"{where}: no 'labels' mapping")
    if any(isinstance(v, (list, tuple)) for v in labels.values()) or "regions_class_order" in dataset_json:
        raise UserError(f"{where}: the dataset defines regions; simulate-slices needs one label per class")
    real = {name: int(v) for name, v in labels.items() if name != "ignore"}
    foreground = sorted(v for name, v in real.items() if v != 0)
    if not foreground:
        raise UserError(f"{where}: labels {labels} have no foreground label")
    ignore = int(labels["ignore"]) if "ignore" in labels else max(real.values()) + 1
    return foreground, ignore


def _dataset_id_taken(dataset_id: int) -> str | None:
    """Where an nnU-Net folder of ``dataset_id`` already exists (None: nowhere)."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        root = os.environ.get(variable)
        if root and Path(root).is_dir():
            found = sorted(Path(root).glob(f"Dataset{dataset_id:03d}_*"))
            if found:
                return str(found[0])
    return None


def _choose_target_id(source_id: int, target_id: int | None) -> int:
    if target_id is not None:
        if not 1 <= target_id <= MAX_DATASET_ID:
            raise UserError(f"simulate-slices: --target-id {target_id} is not a dataset id (1..{MAX_DATASET_ID})")
        taken = _dataset_id_taken(target_id)
        if taken:
            raise UserError(f"simulate-slices: --target-id {target_id} is taken by {taken}; choose a free id")
        return target_id
    for candidate in range(source_id + 1, MAX_DATASET_ID + 1):
        if _dataset_id_taken(candidate) is None:
            return candidate
    raise UserError(f"simulate-slices: no free dataset id above {source_id}; pass --target-id")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def simulate_slices_dataset(dataset: str | int, k: int, seed: int = 0, target_id: int | None = None
                            ) -> dict[str, Any]:
    """Write the sparse-slice dataset of ``dataset`` (see the module doc); returns the effort summary
    (also in ``<derived dataset>/sparse_slices.json``) with ``"dataset_id"`` and ``"folder"``."""
    import re

    from nnunet_shape.descriptor_files.export import list_label_files

    if k < 1:
        raise UserError(f"simulate-slices: --slices must be at least 1, got {k}")
    data = open_raw_dataset(dataset)
    folder, dataset_json, ending = data.folder, data.dataset_json, data.ending
    match = re.fullmatch(r"Dataset(\d{3})_(.+)", folder.name)
    if match is None:
        raise UserError(f"{folder}: not an nnU-Net dataset folder name (DatasetXXX_Name)")
    if data.placeholder_labels:
        raise UserError(f"{folder / 'dataset.json'}: labelsTr are placeholders (nnunet-shape placeholder-labels); "
                        f"there are no labels to keep on slices")
    if "dataset" in dataset_json:
        raise UserError(f"{folder / 'dataset.json'}: the explicit 'dataset' file list is not supported by "
                        f"simulate-slices; use the imagesTr/labelsTr layout")
    foreground, ignore = _real_labels(dataset_json, folder / "dataset.json")
    files = list_label_files(folder / "labelsTr", ending)
    if not files:
        raise UserError(f"{folder / 'labelsTr'}: no label file ending in {ending!r}")
    new_id = _choose_target_id(int(match.group(1)), target_id)
    target = folder.parent / f"Dataset{new_id:03d}_{match.group(2)}Slices{k}Seed{seed}"
    reader = image_reader_class(dataset_json, next(iter(files.values())))
    (target / "labelsTr").mkdir(parents=True)
    try:
        return _write_derived(folder, target, new_id, dataset_json, files, reader, foreground, ignore, k, seed)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # a new folder of ours: no half-written dataset stays
        raise


def _write_derived(folder: Path, target: Path, new_id: int, dataset_json: dict, files: Mapping[str, Path],
                   reader: type, foreground: list[int], ignore: int, k: int, seed: int) -> dict[str, Any]:
    from nnunet_shape.descriptor_files.atomic import write_json_atomic
    from nnunet_shape.nnunet.weak_annotations import class_seed

    for sub in ("imagesTr", "imagesTs", "labelsTs"):
        if (folder / sub).is_dir():
            (target / sub).mkdir()
            for path in sorted((folder / sub).iterdir()):
                if path.is_file():
                    _link_or_copy(path, target / sub / path.name)
    cases: dict[str, Any] = {}
    for case_id, path in files.items():
        seg, properties, geometry = read_3d_case(reader, path, label_map=True,
                                                 reason="simulate-slices picks slices of three planes (3-D only)")
        labels = np.rint(seg[0]).astype(np.int32)
        # per-case seed from --seed and the case id only (as simulate-points): adding cases changes nothing
        slices = choose_slices(np.isin(labels, foreground), k, class_seed(seed, case_id, 0))
        sparse, effort = sparse_slice_labels(labels, slices, ignore, geometry.spacing_mm, foreground)
        reader().write_seg(sparse, str(target / "labelsTr" / path.name), properties)
        cases[case_id] = {"slices_per_axis": slices, "axes": list(geometry.axis_order),
                          "contour_length_mm": effort,
                          "annotated_voxels": int(np.count_nonzero(sparse != ignore)),
                          "voxels": int(sparse.size)}
    derived_json = copy.deepcopy(dataset_json)
    derived_json["labels"] = {**{n: v for n, v in dataset_json["labels"].items() if n != "ignore"}, "ignore": ignore}
    derived_json["name"] = target.name.split("_", 1)[1]
    derived_json[SPARSE_FLAG] = {"source": folder.name, "slices_per_axis": k, "seed": seed}
    write_json_atomic(target / "dataset.json", derived_json)
    lengths = [c["contour_length_mm"] for c in cases.values()]
    summary = {"source": folder.name, "dataset": target.name, "slices_per_axis": k, "seed": seed,
               "ignore_label": ignore, "effort": "summed contour length (mm) of every class in the annotated slices",
               "mean_contour_length_mm": float(np.mean(lengths)), "cases": cases}
    write_json_atomic(target / EFFORT_FILE, summary)
    return {**summary, "dataset_id": new_id, "folder": str(target)}


def simulate_slices_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnunet-shape simulate-slices",
        description="The sparse-slice baseline (paper 003): a derived raw dataset in which K slices per case and "
                    "plane (slices with foreground, seeded) keep their labels and every other voxel is nnU-Net's "
                    f"ignore label; the summed contour length of the annotated slices goes to {EFFORT_FILE}.")
    add_dataset_argument(parser)
    parser.add_argument("--slices", type=int, required=True, help="annotated slices per case and plane (K)")
    add_seed_argument(parser)
    parser.add_argument("--target-id", type=int, default=None,
                        help="dataset id of the derived dataset (default: the first free id above the source's)")
    args = parser.parse_args(argv)

    def run() -> int:
        result = simulate_slices_dataset(args.dataset, args.slices, args.seed, args.target_id)
        print(f"simulate-slices: {len(result['cases'])} cases, {args.slices} slices per plane (seed {args.seed}), "
              f"mean contour length {result['mean_contour_length_mm']:.1f} mm per case -> {result['folder']}")
        print(f"simulate-slices: dataset id {result['dataset_id']} (nnUNetv2_plan_and_preprocess -d "
              f"{result['dataset_id']}; train it with nnU-Net's own trainer)")
        return 0

    return run_console("nnunet-shape simulate-slices", run)
