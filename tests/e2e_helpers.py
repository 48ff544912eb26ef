"""Tiny nnU-Net raw datasets, a runner for nnU-Net's real console scripts, in-process trainers and
their batches (end-to-end tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def ellipsoid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def write_tiny_dataset(raw_root: Path, dataset_id: int = 701, name: str = "Tiny", n_train: int = 5,
                       n_test: int = 1, seed: int = 0, shape: Sequence[int] = (12, 24, 20),
                       spacing_zyx: Sequence[float] = (2.0, 1.0, 1.0)) -> Path:
    """Two ellipsoid classes in noise, slightly different shapes per case (array order z, y, x)."""
    rng = np.random.default_rng(seed)
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)

    def case(index: int, images: str, labels: str) -> None:
        case_shape = tuple(int(s + rng.integers(-1, 2)) for s in shape)  # cases differ in size
        labels_array = np.zeros(case_shape, dtype=np.uint8)
        centre = np.array(case_shape) / 2 + rng.uniform(-1.5, 1.5, size=3)
        labels_array[ellipsoid(case_shape, centre - [0, 4, 0], (3, 4, 4))] = 1
        labels_array[ellipsoid(case_shape, centre + [0, 5, 0], (2.5, 3, 5))] = 2
        image = rng.normal(0.0, 0.3, size=case_shape) + np.array([0.0, 2.0, -1.5])[labels_array]
        for array, path in ((image.astype(np.float32), folder / images / f"case_{index:03d}_0000.nii.gz"),
                            (labels_array, folder / labels / f"case_{index:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
            itk.SetOrigin((10.0, -5.0, 3.0))
            sitk.WriteImage(itk, str(path))

    for i in range(n_train):
        case(i, "imagesTr", "labelsTr")
    for i in range(n_train, n_train + n_test):
        case(i, "imagesTs", "labelsTs")
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob_a": 1, "blob_b": 2},
                    "numTraining": n_train, "file_ending": ".nii.gz", "name": name}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def nnunet_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for nnU-Net's console scripts: paths in ``root``, our trainers, CPU-sized workers."""
    from nnunet_shape.demo.run import nnunet_environment

    env = nnunet_environment(root)
    env["OMP_NUM_THREADS"] = "2"
    env.update(extra)
    return env


def run_cli(args: Sequence[str], env: Mapping[str, str], log: Path | None = None, timeout: float = 900
            ) -> subprocess.CompletedProcess:
    """Run a console script; on failure raise with its output (the test log then shows why)."""
    completed = subprocess.run(list(args), env=dict(env), capture_output=True, text=True, timeout=timeout)
    if log is not None:
        log.write_text(completed.stdout + "\n--- stderr ---\n" + completed.stderr)
    if completed.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed with exit code {completed.returncode}\n"
                             f"--- stdout ---\n{completed.stdout[-6000:]}\n--- stderr ---\n{completed.stderr[-6000:]}")
    return completed


def train_env(env: Mapping[str, str]) -> dict[str, str]:
    """Training only: nnUNet_n_proc_DA=0 gives a single-threaded augmenter (it breaks planning)."""
    return {**env, "nnUNet_n_proc_DA": "0"}


def make_trainer(root: Path, cls: type, monkeypatch, configuration: str = "3d_fullres",
                 dataset: str = "Dataset701_Tiny", device: str = "cpu"):
    """Construct trainer ``cls`` in-process on a planned dataset under ``root`` (on ``device``, CPU by default)."""
    import torch

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(root / name))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "false")
    preprocessed = root / "nnUNet_preprocessed" / dataset
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    return cls(plans, configuration, 0, dataset_json, torch.device(device))


def first_batch(trainer, loader_class: type, batch_size: int) -> dict:
    """The first batch of an initialised ``trainer``'s training split through ``loader_class``
    (``WholeCaseDataLoader`` or one of its subclasses), without augmentation."""
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    patch = trainer.configuration_manager.patch_size
    return next(loader_class(dataset_tr, batch_size, patch, patch, trainer.label_manager, transforms=None))


def results_fold(root: Path, dataset: str, trainer: str, configuration: str = "3d_fullres", fold: int = 0) -> Path:
    """nnU-Net's output folder of ``trainer`` (with nnUNetPlans) on ``dataset`` under ``root``."""
    return root / "nnUNet_results" / dataset / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


def newest_training_log(fold: Path) -> str:
    """The newest ``training_log_*.txt`` in ``fold`` (in-process trainers of other tests may have
    written older ones into the same folder)."""
    return max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()


def train_without_label_arrays(root: Path, dataset: str, trainer: str, env: Mapping[str, str], log: Path,
                               moved_to: Path) -> Path:
    """``nnUNetv2_train`` of ``trainer`` (3d_fullres, fold 0, CPU) with every preprocessed label array
    of ``dataset`` moved to the new folder ``moved_to`` during the run and put back afterwards (a
    trainer that read voxel labels would fail). Returns the fold's results folder."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    folder = root / "nnUNet_preprocessed" / dataset / "nnUNetPlans_3d_fullres"
    moved_to.mkdir()
    for seg in folder.glob("*_seg.*"):
        shutil.move(str(seg), moved_to / seg.name)
    try:
        run_cli(["nnUNetv2_train", str(convert_dataset_name_to_id(dataset)), "3d_fullres", "0", "-tr", trainer,
                 "-device", "cpu"], train_env(env), log=log)
    finally:
        for seg in moved_to.iterdir():
            shutil.move(str(seg), folder / seg.name)
    return results_fold(root, dataset, trainer)


def predict_test_cases(root: Path, dataset: str, trainer: str, env: Mapping[str, str], output: Path) -> list[Path]:
    """``nnUNetv2_predict`` of ``trainer`` (3d_fullres, fold 0, CPU, no test-time mirroring) on
    ``dataset``'s imagesTs into ``output``. Returns the predicted files, sorted."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    run_cli(["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / dataset / "imagesTs"), "-o", str(output),
             "-d", str(convert_dataset_name_to_id(dataset)), "-c", "3d_fullres", "-f", "0", "-tr", trainer,
             "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"], env)
    return sorted(output.glob("*.nii.gz"))
