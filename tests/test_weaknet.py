"""Weak-Net (paper 003): the reconstruction loss pieces, the trainer on templates, end to end through nnU-Net."""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_helpers import make_trainer, run_cli, train_env
from weaknet_helpers import (  # noqa: F401 (with_templates_fixture: the fixture with_templates)
    DATASET,
    labels_replaced,
    predict_test_case,
    template_array,
    with_templates_fixture,
    zero_image_like,
)

from nnunet_shape.core.reconstruction import (
    WeightedMSELoss,
    boundary_weight_map,
    distance_to_other_label_mm,
    weighted_mse,
)

# --- the loss pieces, by hand ------------------------------------------------------------------

def test_distance_to_other_label_by_hand_anisotropic_row():
    # one row of 6 voxels, 2 mm apart along the row: [0 0 1 1 1 0]
    labels = np.array([[0, 0, 1, 1, 1, 0]])
    distance = distance_to_other_label_mm(labels, (1.0, 2.0))
    assert distance.tolist() == [[4.0, 2.0, 2.0, 4.0, 2.0, 2.0]]


def test_distance_to_other_label_by_hand_diagonal_and_two_classes():
    labels = np.zeros((3, 3), int)
    labels[1, 1] = 1
    distance = distance_to_other_label_mm(labels, (1.0, 1.0))
    s = math.sqrt(2)
    assert np.allclose(distance, [[s, 1, s], [1, 1, 1], [s, 1, s]])
    # adjacent foreground classes have a boundary between them too
    assert distance_to_other_label_mm(np.array([1, 1, 2, 2, 2]), (0.5,)).tolist() == [1.0, 0.5, 0.5, 1.0, 1.5]
    # one label only: no boundary anywhere
    assert np.all(np.isinf(distance_to_other_label_mm(np.ones((2, 3, 4), int), (1.0, 1.0, 1.0))))


def test_boundary_weight_map_by_hand_batched():
    labels = np.array([[[0, 0, 1, 1, 1, 0]], [[1, 1, 1, 1, 1, 1]]])  # (B=2, 1, 6)
    weight = boundary_weight_map(labels, (1.0, 2.0), distance_mm=2.0, high=1.0, low=0.25)
    assert weight.dtype == np.float32 and weight.shape == (2, 1, 6)
    assert weight[0, 0].tolist() == [0.25, 1.0, 1.0, 0.25, 1.0, 1.0]
    assert weight[1, 0].tolist() == [0.25] * 6  # no boundary in this map
    # d below one voxel spacing: nothing is within d; d = 4 mm: everything
    assert boundary_weight_map(labels[:1], (1.0, 2.0), 1.9, 3.0, 0.5)[0, 0].tolist() == [0.5] * 6
    assert boundary_weight_map(labels[:1], (1.0, 2.0), 4.0, 3.0, 0.5)[0, 0].tolist() == [3.0] * 6
    with pytest.raises(ValueError, match="spacing"):
        distance_to_other_label_mm(labels[0], (1.0,))


def test_weighted_mse_by_hand():
    prediction = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]).reshape(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    weight = torch.tensor([[1.0, 0.5], [0.0, 2.0]]).reshape(1, 1, 2, 2)  # one weight per voxel, both channels
    # channel 0: 1*1 + 0.5*4 + 0*9 + 2*16 = 35; channel 1: 1*0 + 0.5*1 + 0*1 + 2*0 = 0.5; mean over 8 = 35.5/8
    assert weighted_mse(prediction, target, weight).item() == pytest.approx(35.5 / 8)
    assert WeightedMSELoss()(prediction, target, weight).item() == pytest.approx(35.5 / 8)
    with pytest.raises(ValueError, match="differ in shape"):
        weighted_mse(prediction, target[:, :1], weight)


def test_weighted_mse_gradcheck():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(2, 2, 3, 4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.randn(2, 2, 3, 4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.rand(2, 1, 3, 4, 3, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(lambda p, t: weighted_mse(p, t, weight), (prediction, target))


def _configuration_manager():
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    return ConfigurationManager({
        "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 1,
        "patch_size": [4, 8, 8], "median_image_size_in_voxels": [4, 8, 8], "spacing": [2.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities":
            "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {}, "batch_dice": False,
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                                         "conv_op": "torch.nn.modules.conv.Conv3d",
                                         "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                                         "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                                         "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d"},
                         "_kw_requires_import": ["conv_op", "norm_op"]}})


def test_reconstruction_network_shapes_and_gradcheck_through_softmax_and_loss():
    from nnunet_shape.nnunet.training.weaknet import build_reconstruction_network

    torch.manual_seed(0)
    network = build_reconstruction_network(_configuration_manager(), 3, 2, stages=3, base_features=2, max_features=4)
    # the first 3 stages of the plans, features 2, 4, 4 (capped)
    assert [list(s) for s in network.encoder.strides] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert network.encoder.output_channels == [2, 4, 4]
    assert network(torch.softmax(torch.randn(1, 3, 4, 8, 8), 1)).shape == (1, 2, 4, 8, 8)
    # gradients of the reconstruction term reach the core network's logits (float64, tiny case)
    network = network.double()
    image = torch.randn(1, 2, 4, 8, 8, dtype=torch.float64)
    weight = torch.from_numpy(boundary_weight_map(np.pad(np.ones((1, 2, 4, 4), int), ((0, 0), (1, 1), (2, 2), (2, 2))),
                                                  (2.0, 1.0, 1.0), 1.5).astype(np.float64))[:, None]
    logits = torch.randn(1, 3, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: weighted_mse(network(torch.softmax(y, 1)), image, weight), (logits,),
                                    eps=1e-6, atol=1e-5)


# --- the trainer classes -----------------------------------------------------------------------

SCHEDULES = {"": (1000, 250, 50), "_5epochs": (5, 250, 50), "_50epochs": (50, 250, 50),
             "_250epochs": (250, 250, 50), "_demo": (12, 50, 2), "_suite": (10, 50, 2), "_debug": (1, 3, 1)}


def test_every_weaknet_variant_is_an_explicit_class_that_nnunet_finds(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunet_shape.nnunet.training.weaknet as weaknet
    from nnunet_shape.cli import trainers_directory

    monkeypatch.setenv("nnUNet_extTrainer", trainers_directory())
    bases = ("nnUNetTrainerWeakNet", "nnUNetTrainerWeakNetNoRecon", "nnUNetTrainerWeakNetWholeScan",
             "nnUNetTrainerWeakNetWholeScanNoRecon")
    names = {f"{base}{suffix}": (base, schedule) for base in bases for suffix, schedule in SCHEDULES.items()}
    assert set(weaknet.TRAINER_NAMES) == set(names)
    for name, (base_name, schedule) in names.items():
        cls = recursive_find_trainer_class_by_name(name)
        assert cls is getattr(weaknet, name) and cls.__module__ == weaknet.__name__, name
        assert (cls.training_epochs, cls.iterations_per_epoch, cls.val_iterations_per_epoch) == schedule, name
        if name != base_name:
            assert re.search(rf"^class {name}\(", inspect.getsource(weaknet), re.MULTILINE), name
            assert cls.reconstruction_weight == getattr(weaknet, base_name).reconstruction_weight
    assert weaknet.nnUNetTrainerWeakNetNoRecon.reconstruction_weight == 0.0
    assert weaknet.nnUNetTrainerWeakNet.reconstruction_weight > 0
    assert weaknet.nnUNetTrainerWeakNetWholeScanNoRecon.reconstruction_weight == 0.0
    assert weaknet.nnUNetTrainerWeakNetWholeScan.reconstruction_weight > 0


# --- on the tiny planned dataset: templates, not labels ---------------------------------------------

# the fixture with_templates (the session's Dataset701_Tiny with fitted templates) is in weaknet_helpers

def test_trainer_trains_on_templates_and_labels_do_not_matter(with_templates, monkeypatch, tmp_path):
    import blosc2

    from nnunet_shape.nnunet.training.weaknet import nnUNetTrainerWeakNet_debug

    root, _ = with_templates
    monkeypatch.setenv("nnUNet_raw", str(root / "nnUNet_raw"))
    trainer = make_trainer(root, nnUNetTrainerWeakNet_debug, monkeypatch)
    cases = trainer.prepare_templates()
    assert cases == [f"case_{i:03d}" for i in range(5)]
    folder = Path(trainer.preprocessed_dataset_folder)
    assert folder.name.startswith("nnUNetPlans_3d_fullres__templates_")
    original = Path(trainer.original_preprocessed_folder)

    def seg(where: Path, case: str) -> np.ndarray:
        return np.asarray(blosc2.open(str(where / f"{case}_seg.b2nd"), mode="r")[:])

    for case in cases:
        # the tiny dataset is neither cropped nor resampled: the trainer's targets are the template itself
        assert np.array_equal(seg(folder, case)[0], template_array(root, case)), case
        assert not np.array_equal(seg(folder, case), seg(original, case)), case  # and not the labels
        assert np.array_equal(np.asarray(blosc2.open(str(folder / f"{case}.b2nd"), mode="r")[:]),
                              np.asarray(blosc2.open(str(original / f"{case}.b2nd"), mode="r")[:]))
    # the split is nnU-Net's over all cases; training and validation read only the templates folder
    trainer.initialize()
    tr_keys, val_keys = trainer.do_split()
    assert sorted(tr_keys + val_keys) == cases and len(val_keys) == 1
    assert trainer.dataset_class.__name__ == "nnUNetDatasetBlosc2"
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    assert Path(dataset_tr.source_folder) == folder
    _, loaded_seg, _, _ = dataset_tr.load_case(tr_keys[0])
    assert np.array_equal(np.asarray(loaded_seg)[0], template_array(root, tr_keys[0]))

    # labels changed (raw labelsTr and the preprocessed labels of nnU-Net): the training data is the same
    before = {case: seg(folder, case) for case in cases}
    with labels_replaced(root, cases, original):
        # also with every prepared case dropped: they are rebuilt from the templates alone
        for stale in folder.glob("*"):
            stale.unlink()
        again = make_trainer(root, nnUNetTrainerWeakNet_debug, monkeypatch)
        assert again.prepare_templates() == cases
        for case in cases:
            assert np.array_equal(seg(folder, case), before[case]), case

    # a changed template is preprocessed again; unchanged ones are kept
    template_path = root / "nnUNet_raw" / DATASET / "templatesTr" / "case_000.nii.gz"
    saved = template_path.read_bytes()
    try:
        zero_image_like(template_path)
        kept = (folder / "case_001_seg.b2nd").stat().st_mtime_ns
        make_trainer(root, nnUNetTrainerWeakNet_debug, monkeypatch).prepare_templates()
        assert not seg(folder, "case_000").any()
        assert (folder / "case_001_seg.b2nd").stat().st_mtime_ns == kept
    finally:
        template_path.write_bytes(saved)
        make_trainer(root, nnUNetTrainerWeakNet_debug, monkeypatch).prepare_templates()


def test_weak_net_loss_is_ce_plus_lambda_weighted_mse(with_templates, monkeypatch):
    from nnunet_shape.nnunet.training.weaknet import nnUNetTrainerWeakNet_debug

    root, _ = with_templates
    monkeypatch.setenv("nnUNet_raw", str(root / "nnUNet_raw"))
    trainer = make_trainer(root, nnUNetTrainerWeakNet_debug, monkeypatch)
    trainer.initialize()
    torch.manual_seed(0)
    patch = tuple(trainer.configuration_manager.patch_size)
    data = torch.randn(1, 1, *patch)
    template = torch.zeros(1, 1, *patch)
    template[:, :, 3:8, 5:15, 4:14] = 1
    output = trainer.network(data)
    targets = [torch.nn.functional.interpolate(template, size=o.shape[2:], mode="nearest") for o in output]
    loss, ce, mse = trainer.weak_net_loss(data, output, targets)
    weight = boundary_weight_map(template[:, 0].numpy().astype(int), trainer.configuration_manager.spacing, 5.0, 1.0,
                                 0.1)
    reconstruction = trainer.reconstruction_network(torch.softmax(output[0], 1))
    expected_mse = (torch.from_numpy(weight[:, None]) * (reconstruction - data) ** 2).mean()
    assert mse.item() == pytest.approx(expected_mse.item(), rel=1e-5)
    assert ce.item() == pytest.approx(trainer.loss(output, targets).item(), rel=1e-6)
    assert loss.item() == pytest.approx(ce.item() + 0.1 * expected_mse.item(), rel=1e-5)
    # the reconstruction network's parameters are trained too, and the network stays nnU-Net's own
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in trainer.reconstruction_network.parameters())
    assert type(trainer.network).__name__ == "PlainConvUNet"


def test_weaknet_checkpoint_is_one_atomic_write_and_resumes_the_reconstruction_network(with_templates, monkeypatch,
                                                                                          tmp_path):
    import os

    from nnunet_shape.nnunet.training.weaknet import RECONSTRUCTION_KEY, nnUNetTrainerWeakNet_debug

    root, _ = with_templates
    monkeypatch.setenv("nnUNet_raw", str(root / "nnUNet_raw"))
    trainer = make_trainer(root, nnUNetTrainerWeakNet_debug, monkeypatch)
    trainer.initialize()
    path = tmp_path / "checkpoint_latest.pth"
    writes, loads = [], []
    real_save, real_load = torch.save, torch.load
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (writes.append(os.fspath(f)),
                                                                real_save(obj, f, *a, **k))[1])
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(a), real_load(*a, **k))[1])
    trainer.save_checkpoint(str(path))
    # nnU-Net's dict and R's weights in one write, to <file>.partial renamed onto <file>; nothing read back
    assert writes == [f"{path}.partial"] and loads == []
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(torch, "load", real_load)
    assert path.is_file() and not Path(f"{path}.partial").exists()
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    weights = trainer.reconstruction_network.state_dict()
    assert set(checkpoint[RECONSTRUCTION_KEY]) == set(weights)
    assert set(checkpoint["network_weights"]) == set(trainer.network.state_dict())
    assert {"optimizer_state", "logging", "current_epoch", "init_args", "trainer_name"} <= set(checkpoint)
    # what nnUNetv2_train --c does: a fresh trainer loads the file; R gets its weights back
    resumed = make_trainer(root, nnUNetTrainerWeakNet_debug, monkeypatch)
    resumed.initialize()
    assert not all(torch.equal(v, resumed.reconstruction_network.state_dict()[k]) for k, v in weights.items())
    resumed.load_checkpoint(str(path))
    assert all(torch.equal(v, resumed.reconstruction_network.state_dict()[k]) for k, v in weights.items())
    # one SGD parameter group over both networks, as before
    assert len(resumed.optimizer.param_groups) == 1
    assert [id(p) for p in resumed.optimizer.param_groups[0]["params"]] == [
        id(p) for p in [*resumed.network.parameters(), *resumed.reconstruction_network.parameters()]]


def test_weaknet_end_to_end_train_and_predict(with_templates):
    root, env = with_templates
    trainer = "nnUNetTrainerWeakNet_debug"
    train = run_cli(["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
                    train_env(env), log=root / f"train_{trainer}.log")
    fold = root / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    # the newest log: the in-process trainers of the tests above wrote logs into the same fold folder
    log = max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()
    assert "training on the templates of" in log and "weighted reconstruction MSE" in log, train.stdout[-2000:]
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # the core network alone in network_weights; the reconstruction network beside it
    assert not any("reconstruction" in k for k in checkpoint["network_weights"])
    assert "reconstruction_network_weights" in checkpoint
    assert checkpoint["trainer_name"] == trainer
    predict_test_case(root, env, trainer)
    assert json.loads((fold.parent / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"][
        "network_class_name"].endswith("PlainConvUNet")
