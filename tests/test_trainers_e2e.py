"""End to end through nnU-Net's real console scripts: plan, train on the whole scan, predict.

One tiny dataset (5 training cases of two classes, cases of different sizes) is planned once per
session; each test trains a ``_debug`` trainer on CPU and predicts the test case.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from e2e_helpers import run_cli, train_env

DATASET = "Dataset701_Tiny"


def preprocessed_shapes(root: Path, identifier: str) -> list[tuple[int, ...]]:
    import blosc2

    folder = root / "nnUNet_preprocessed" / DATASET / identifier
    images = [f for f in sorted(folder.glob("*.b2nd")) if not f.name.endswith("_seg.b2nd")]
    return [tuple(blosc2.open(str(f)).shape[1:]) for f in images]


def train_and_predict(root: Path, env: dict, configuration: str, trainer: str) -> tuple[Path, str]:
    train = run_cli(["nnUNetv2_train", "701", configuration, "0", "-tr", trainer, "-device", "cpu"],
                    train_env(env), log=root / f"train_{trainer}_{configuration}.log")
    predictions = root / f"pred_{trainer}_{configuration}"
    run_cli(["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / DATASET / "imagesTs"), "-o", str(predictions),
             "-d", "701", "-c", configuration, "-f", "0", "-tr", trainer, "-device", "cpu",
             "-npp", "1", "-nps", "1", "--disable_tta"], env)
    return predictions, train.stdout


def results_folder(root: Path, trainer: str, configuration: str) -> Path:
    return root / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__{configuration}"


def assert_same_geometry(predictions: Path, images: Path) -> None:
    predicted = sorted(predictions.glob("*.nii.gz"))
    assert len(predicted) == len(list(images.glob("*_0000.nii.gz"))) > 0
    for prediction in predicted:
        image = sitk.ReadImage(str(images / prediction.name.replace(".nii.gz", "_0000.nii.gz")))
        seg = sitk.ReadImage(str(prediction))
        assert seg.GetSize() == image.GetSize()
        assert np.allclose(seg.GetSpacing(), image.GetSpacing())
        assert np.allclose(seg.GetOrigin(), image.GetOrigin())
        assert np.allclose(seg.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}


def test_descriptor_trainer_end_to_end(planned):
    root, env = planned
    trainer = "nnUNetTrainerShapeDescriptors_debug"
    configuration = "3d_fullres"
    predictions, stdout = train_and_predict(root, env, configuration, trainer)
    results = results_folder(root, trainer, configuration)
    plans = json.loads((results / "plans.json").read_text())
    config = plans["configurations"][configuration]
    # the whole scan is one patch: the saved patch covers every preprocessed case
    for shape in preprocessed_shapes(root, config["data_identifier"]):
        assert all(p >= s for p, s in zip(config["patch_size"], shape)), (config["patch_size"], shape)
    assert config["architecture"]["network_class_name"] == "nnunet_shape.network.std_exp.STDEXPNet"
    assert 1 <= config["batch_size"] <= 2
    log = next((results / "fold_0").glob("training_log_*.txt")).read_text()
    assert "descriptor satisfied (val) volume" in log and "barrier t: 5" in log
    assert (results / "fold_0" / "progress_descriptors.png").is_file()
    assert (results / "fold_0" / "checkpoint_final.pth").is_file()
    assert_same_geometry(predictions, root / "nnUNet_raw" / DATASET / "imagesTs")


def test_descriptor_trainer_end_to_end_2d(planned):
    root, env = planned
    trainer = "nnUNetTrainerShapeDescriptors_debug"
    predictions, _ = train_and_predict(root, env, "2d", trainer)
    plans = json.loads((results_folder(root, trainer, "2d") / "plans.json").read_text())
    config = plans["configurations"]["2d"]
    assert len(config["patch_size"]) == 2
    for shape in preprocessed_shapes(root, config["data_identifier"]):
        assert all(p >= s for p, s in zip(config["patch_size"], shape[1:]))
    assert_same_geometry(predictions, root / "nnUNet_raw" / DATASET / "imagesTs")


def test_resume_with_c_restores_the_barrier_t(planned):
    """``nnUNetv2_train … --c`` goes through our ``load_checkpoint``: paper 001's growing t
    continues from the checkpoint (1.0 in epoch 0, so 1.1 at epoch 1), not from t0 again."""
    root, env = planned
    trainer = "nnUNetTrainerShapeDescriptorsGrowingT_debug"
    command = ["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"]
    run_cli(command, train_env(env), log=root / f"train_{trainer}.log")
    fold = results_folder(root, trainer, "3d_fullres") / "fold_0"
    first_logs = set(fold.glob("training_log_*.txt"))
    assert any("barrier t: 1 " in log.read_text() for log in first_logs)  # print_to_log_file ends args with " "
    # as after an interruption: only the best checkpoint (end of epoch 0) is left
    (fold / "checkpoint_final.pth").unlink()
    resumed = run_cli(command + ["--c"], train_env(env), log=root / f"train_{trainer}_c.log")
    assert "resumed at epoch 1: barrier t = 1.1," in resumed.stdout
    resumed_logs = set(fold.glob("training_log_*.txt")) - first_logs
    assert any("resumed at epoch 1: barrier t = 1.1," in log.read_text() for log in resumed_logs)
    assert (fold / "checkpoint_final.pth").is_file()


KILL_TEST_TRAINER_MODULE = '''
from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptorsGrowingT


class nnUNetTrainerShapeDescriptorsGrowingT_killtest(nnUNetTrainerShapeDescriptorsGrowingT):
    """Six short epochs, a checkpoint_latest after every one: something to kill in the middle."""

    training_epochs = 6
    iterations_per_epoch = 3
    val_iterations_per_epoch = 1

    def on_train_start(self):
        super().on_train_start()
        self.save_every = 1
'''


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_training_killed_mid_run_resumes_with_c(planned, tmp_path, signal_number):
    """A training stopped by SIGKILL (out of memory, a cluster's pre-emption) or SIGINT (Ctrl-C)
    after some epochs resumes with ``nnUNetv2_train … --c`` from its latest checkpoint: the
    barrier t continues (not from t0) and the run finishes with checkpoint_final."""
    root, env = planned
    extra = tmp_path / "ext_trainers"
    extra.mkdir()
    (extra / "kill_test_trainer.py").write_text(KILL_TEST_TRAINER_MODULE)
    env = {**train_env(env), "nnUNet_extTrainer": env["nnUNet_extTrainer"] + os.pathsep + str(extra)}
    trainer = "nnUNetTrainerShapeDescriptorsGrowingT_killtest"
    command = ["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"]
    fold = results_folder(root, trainer, "3d_fullres") / "fold_0"
    shutil.rmtree(fold, ignore_errors=True)
    with open(tmp_path / "first_run.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while not (fold / "checkpoint_latest.pth").is_file():
                assert process.poll() is None, (tmp_path / "first_run.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint_latest.pth within 600 s"
                time.sleep(0.5)
            time.sleep(1.0)  # let the save finish: the kill is meant to land between epochs
            process.send_signal(signal_number)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode != 0, "the training ended by itself before it could be stopped"
    assert not (fold / "checkpoint_final.pth").exists()
    resumed = run_cli(command + ["--c"], env, log=tmp_path / "resumed.log")
    match = re.search(r"resumed at epoch (\d+): barrier t = ([0-9.]+),", resumed.stdout)
    assert match is not None, resumed.stdout[-3000:]
    epoch, t = int(match.group(1)), float(match.group(2))
    assert 1 <= epoch < 6
    assert t == pytest.approx(1.1 ** epoch, rel=1e-3)  # GrowingT: t0 = 1, x1.1 per epoch
    assert (fold / "checkpoint_final.pth").is_file()
