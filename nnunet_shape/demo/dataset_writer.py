"""What the demo's dataset generators share: ``nnunet-shape phantoms`` (:mod:`nnunet_shape.demo.phantoms`)
and ``nnunet-shape brains`` (:mod:`nnunet_shape.demo.brains`).

* :func:`case_seed`: the seed of case ``i`` of a split (independent of how many cases are written);
* :func:`write_cases`: the case-writing loop -- training cases ``<prefix>_000 ...``, then test cases
  numbered after them -- serial or in spawned worker processes, with one picklable per-case writer;
* :func:`write_image_atomic`: a compressed SimpleITK write that never leaves half a file;
* :func:`add_dataset_writer_arguments` and :func:`add_name_and_processes_arguments`: the options
  with one meaning in both commands (``-o -d -n --n-test --seed``, ``--name --np``).

The dataset-level commands of the nnunet layer share other options (``-d/--dataset`` names an
existing raw dataset there, ``-o`` defaults to a folder inside it:
:mod:`nnunet_shape.nnunet.raw_dataset`); these two write a new dataset, so theirs differ.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SPLIT_FOLDERS",
    "case_seed",
    "make_split_folders",
    "write_image_atomic",
    "write_cases",
    "add_dataset_writer_arguments",
    "add_name_and_processes_arguments",
]

#: split -> (images folder, labels folder) of an nnU-Net raw dataset
SPLIT_FOLDERS: dict[str, tuple[str, str]] = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}


def case_seed(seed: int, index: int, split: str = "train") -> int:
    """Seed of case ``index`` of a dataset (independent of how many cases are written).

    Training and test cases use separate streams, so changing ``n_train`` leaves the test
    cases unchanged.
    """
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"case_seed: split must be 'train' or 'test', got {split!r}")
    stream = 0 if split == "train" else 1
    return int(np.random.SeedSequence([int(seed), stream, int(index)]).generate_state(1)[0])


def make_split_folders(folder: Path) -> None:
    """``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs`` in ``folder`` (kept if present)."""
    for images, labels in SPLIT_FOLDERS.values():
        for sub in (images, labels):
            (folder / sub).mkdir(parents=True, exist_ok=True)


def write_image_atomic(image: Any, path: Path) -> None:
    """Write a SimpleITK image compressed to ``path`` through a temporary file in the same folder
    (a killed writer never leaves a truncated case that nnU-Net would read)."""
    import SimpleITK as sitk

    temporary = path.with_name(".tmp_" + path.name)
    sitk.WriteImage(image, str(temporary), True)
    os.replace(temporary, path)


def write_cases(folder: Path, prefix: str, n_train: int, n_test: int, seed: int,
                write_case: Callable[[tuple], dict], settings: Sequence[Any] = (),
                num_processes: int = 1) -> dict[str, dict]:
    """Write every case of a raw dataset with ``write_case`` and return ``{case id: its record}``.

    Case ``i`` of the training split is ``<prefix>_<i:03d>``, test case ``j`` is
    ``<prefix>_<n_train + j:03d>``; each gets the job ``(str(folder), case id, split,
    case_seed(seed, index, split), *settings)``. ``write_case`` (a module-level function, so that
    spawned workers can unpickle it) writes the case's image and labels into the split's folders
    (:data:`SPLIT_FOLDERS`) and returns what the dataset's parameter file records for it.
    ``num_processes > 1`` runs the jobs in that many spawned processes; the files and records are
    the same either way.
    """
    jobs = [(str(folder), f"{prefix}_{i:03d}", "train", case_seed(seed, i, "train"), *settings)
            for i in range(n_train)]
    jobs += [(str(folder), f"{prefix}_{n_train + j:03d}", "test", case_seed(seed, j, "test"), *settings)
             for j in range(n_test)]
    if num_processes > 1:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            records = pool.map(write_case, jobs, chunksize=1)
    else:
        records = [write_case(job) for job in jobs]
    return {job[1]: record for job, record in zip(jobs, records)}


def _int_option(default: int | None, what: str, required_note: str | None = None) -> dict[str, Any]:
    """argparse keywords of an int option: ``(default N)`` in its help, or required without a default."""
    if default is None:
        return {"type": int, "required": True, "help": f"{what} ({required_note})" if required_note else what}
    return {"type": int, "default": default, "help": f"{what} (default {default})"}


def add_dataset_writer_arguments(parser: argparse.ArgumentParser, dataset_id: int | None,
                                 n_train: int | None, n_test: int | None) -> None:
    """``-o/--output`` (the nnUNet_raw folder, required), ``-d/--dataset-id``, ``-n/--n-train``,
    ``--n-test`` (each required where its default is None) and ``--seed`` (the dataset seed, 0)."""
    parser.add_argument("-o", "--output", required=True, help="nnUNet_raw folder to write into")
    parser.add_argument("-d", "--dataset-id", **_int_option(dataset_id, "dataset id", "1..999"))
    parser.add_argument("-n", "--n-train", **_int_option(n_train, "training cases"))
    parser.add_argument("--n-test", **_int_option(n_test, "test cases"))
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")


def add_name_and_processes_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``--name`` (the dataset name of ``DatasetXXX_NAME``, default ``name``) and ``--np`` (worker
    processes, 1)."""
    parser.add_argument("--name", default=name, help=f"dataset name (default {name})")
    parser.add_argument("--np", dest="num_processes", type=int, default=1, help="worker processes (default 1)")
