"""Descriptors + reconstruction (nnUNetTrainerShapeDescriptorsRecon), the population prior with the
image-aware terms (nnUNetTrainerShapePopulationPriorImageAware), and the one atomic checkpoint
write that every trainer (Weak-Net included) goes through."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from e2e_helpers import make_trainer, run_cli, train_env

# the population-prior tests' dataset (oriented, placeholder labels), planned once for this module
from test_population_prior_trainer import DATASET as PRIOR_DATASET
from test_population_prior_trainer import DATASET_ID as PRIOR_DATASET_ID
from test_population_prior_trainer import oriented  # noqa: F401 (a fixture)

from nnunet_shape.core.image_terms import edge_aware_boundary, prediction_entropy, region_homogeneity
from nnunet_shape.nnunet.training.checkpoints import partial_checkpoint_path, save_checkpoint_atomically
from nnunet_shape.nnunet.training.from_file import FromFileDataLoader
from nnunet_shape.nnunet.training.population_prior import (
    nnUNetTrainerShapePopulationPrior,
    nnUNetTrainerShapePopulationPriorImageAware,
)
from nnunet_shape.nnunet.training.reconstruction_branch import RECONSTRUCTION_KEY
from nnunet_shape.nnunet.training.shape_reconstruction import (
    nnUNetTrainerShapeDescriptorsRecon,
    nnUNetTrainerShapeDescriptorsRecon_debug,
)
from nnunet_shape.nnunet.training.shape_trainers import (
    nnUNetTrainerShapeDescriptors,
    nnUNetTrainerShapeDescriptorsImageAware,
)
from nnunet_shape.nnunet.training.whole_scan import WholeCaseDataLoader

DATASET = "Dataset701_Tiny"


# --- one atomic write with the extra entries ----------------------------------------------------

def _nnunet_like_save(calls: list):
    """Stands in for nnUNetTrainer.save_checkpoint: builds its dict and torch.saves it to the path."""
    def save(path: str) -> None:
        calls.append(path)
        torch.save({"network_weights": {"w": torch.ones(2)}, "current_epoch": 3}, path)
    return save


def test_checkpoint_is_written_once_to_partial_then_renamed_with_the_extras(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"the previous checkpoint")
    writes, loads, calls = [], [], []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (writes.append(os.fspath(f)), real_save(obj, f))[1])
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    wrapped_save = torch.save
    extras = {RECONSTRUCTION_KEY: {"r": torch.zeros(1)}}
    save_checkpoint_atomically(_nnunet_like_save(calls), str(target), lambda: extras)
    assert calls == [partial_checkpoint_path(str(target))] == [f"{target}.partial"]
    # one write, to the partial file; nothing read back; torch.save is the one from before again
    assert writes == [f"{target}.partial"] and loads == [] and torch.save is wrapped_save
    assert not Path(f"{target}.partial").exists()
    monkeypatch.undo()
    checkpoint = torch.load(target, weights_only=False)
    assert set(checkpoint) == {"network_weights", "current_epoch", RECONSTRUCTION_KEY}
    assert checkpoint["current_epoch"] == 3 and torch.equal(checkpoint[RECONSTRUCTION_KEY]["r"], torch.zeros(1))


def test_checkpoint_save_leaves_other_files_alone_and_the_old_checkpoint_when_it_fails(tmp_path):
    target = tmp_path / "checkpoint_best.pth"
    other = tmp_path / "other.pth"
    extras_called = []

    def save_and_another(path: str) -> None:
        torch.save({"x": 1}, str(other))  # a torch.save for another path: untouched
        torch.save({"network_weights": {}}, path)

    save_checkpoint_atomically(save_and_another, str(target), lambda: (extras_called.append(1), {"extra": 2})[1])
    assert torch.load(other, weights_only=False) == {"x": 1}
    assert torch.load(target, weights_only=False) == {"network_weights": {}, "extra": 2} and extras_called == [1]
    # nothing written (nnU-Net on rank > 0, or checkpointing disabled): no file, extras not even built
    save_checkpoint_atomically(lambda path: None, str(tmp_path / "none.pth"), lambda: extras_called.append(2))
    assert not (tmp_path / "none.pth").exists() and extras_called == [1]
    # an extra entry may not replace one of nnU-Net's; the previous checkpoint stays as it was
    with pytest.raises(KeyError, match="would replace nnU-Net's own"):
        save_checkpoint_atomically(_nnunet_like_save([]), str(target), lambda: {"current_epoch": 0})
    assert torch.load(target, weights_only=False) == {"network_weights": {}, "extra": 2}

    def killed(path: str) -> None:
        Path(path).write_bytes(b"trunc")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomically(killed, str(target), None)
    assert torch.load(target, weights_only=False) == {"network_weights": {}, "extra": 2}


# --- nnUNetTrainerShapeDescriptorsRecon in-process ------------------------------------------------

def test_recon_defaults_are_weak_nets_lambda_and_uniform_weights():
    from nnunet_shape.nnunet.training.weaknet import nnUNetTrainerWeakNet

    assert nnUNetTrainerShapeDescriptorsRecon.reconstruction_weight == nnUNetTrainerWeakNet.reconstruction_weight == 0.1
    assert nnUNetTrainerShapeDescriptorsRecon.reconstruction_weight_map == "uniform"
    assert nnUNetTrainerShapeDescriptorsRecon.descriptors == nnUNetTrainerShapeDescriptors.descriptors
    assert (nnUNetTrainerShapeDescriptorsRecon.optimizer_name, nnUNetTrainerShapeDescriptorsRecon.reads_voxel_labels) \
        == ("adam", True)


class _ReconHalf(nnUNetTrainerShapeDescriptorsRecon_debug):
    reconstruction_weight = 0.5


class _ReconOff(nnUNetTrainerShapeDescriptorsRecon_debug):
    reconstruction_weight = 0.0


def _batch(trainer, loader_class=WholeCaseDataLoader, batch_size: int = 2) -> dict:
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    patch = trainer.configuration_manager.patch_size
    return next(loader_class(dataset_tr, batch_size, patch, patch, trainer.label_manager, transforms=None))


@pytest.mark.parametrize("cls, lam", [(nnUNetTrainerShapeDescriptorsRecon_debug, 0.1), (_ReconHalf, 0.5)])
def test_recon_loss_is_descriptor_loss_plus_lambda_mse_by_hand(planned, monkeypatch, cls, lam):
    root, _ = planned
    trainer = make_trainer(root, cls, monkeypatch)
    trainer.initialize()
    assert trainer.reconstruction_weight == lam and trainer.reconstruction_weight_map == "uniform"
    batch = _batch(trainer)
    loss, output, _ = trainer._descriptor_step(batch)
    # recomputed by hand: the same network output, the descriptor loss on its softmax, plain MSE
    data = batch["data"]
    probabilities = torch.softmax(output.float(), 1)
    bounds, spacing = trainer._loss_targets(batch)
    descriptor = trainer.loss(probabilities, bounds, spacing)
    reconstruction = trainer.reconstruction_network(probabilities)
    assert reconstruction.shape == data.shape
    mse = ((reconstruction - data) ** 2).sum() / data.numel()
    assert mse.item() > 0
    assert loss.item() == pytest.approx(descriptor.item() + lam * mse.item(), rel=1e-5)
    # R trains in the descriptor trainer's Adam, in its one parameter group, clipped with the network
    assert type(trainer.optimizer) is torch.optim.Adam and len(trainer.optimizer.param_groups) == 1
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == nnUNetTrainerShapeDescriptors.adam_betas
    assert [id(p) for p in group["params"]] == [id(p) for p in trainer.network.parameters()] + [
        id(p) for p in trainer.reconstruction_network.parameters()]
    clipped = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda parameters, norm: (clipped.append(([id(p) for p in parameters], norm)),
                                                  clip(parameters, norm))[1])
    before = [p.detach().clone() for p in trainer.reconstruction_network.parameters()]
    out = trainer.train_step(batch)
    # every trainable parameter of R got a gradient (DDP waits for each); the frozen ones are exactly the
    # lower-resolution heads that PlainConvUNet without deep supervision never evaluates
    frozen = {n for n, p in trainer.reconstruction_network.named_parameters() if not p.requires_grad}
    heads = trainer.reconstruction_network.decoder.seg_layers
    assert frozen == {f"decoder.seg_layers.{i}.{w}" for i in range(len(heads) - 1) for w in ("weight", "bias")}
    assert all(p.grad is not None for p in trainer.reconstruction_network.parameters() if p.requires_grad)
    assert clipped == [(list(map(id, group["params"])), 12)]
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.reconstruction_network.parameters()))
    assert np.isfinite(out["loss"]) and out["reconstruction_mse"] > 0
    # the STD/EXP network is what nnUNetv2_predict rebuilds; R is not part of it
    assert type(trainer.network).__name__ == "STDEXPNet"
    assert not any("reconstruction" in name for name in trainer.network.state_dict())


def test_recon_with_lambda_zero_builds_no_reconstruction_network(planned, monkeypatch, tmp_path):
    root, _ = planned
    trainer = make_trainer(root, _ReconOff, monkeypatch)
    trainer.initialize()
    assert trainer.reconstruction_network is None
    assert [id(p) for g in trainer.optimizer.param_groups for p in g["params"]] == [
        id(p) for p in trainer.network.parameters()]
    batch = _batch(trainer)
    loss, output, _ = trainer._descriptor_step(batch)
    bounds, spacing = trainer._loss_targets(batch)
    assert loss.item() == pytest.approx(trainer.loss(torch.softmax(output.float(), 1), bounds, spacing).item(),
                                        rel=1e-6)
    assert "reconstruction_mse" not in trainer.train_step(batch)
    trainer.save_checkpoint(str(tmp_path / "off.pth"))
    assert RECONSTRUCTION_KEY not in torch.load(tmp_path / "off.pth", weights_only=False)


class _ReconSGD(nnUNetTrainerShapeDescriptorsRecon_debug):
    optimizer_name = "sgd"


def test_recon_with_sgd_adds_r_to_nnunets_sgd_with_its_settings(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, _ReconSGD, monkeypatch)
    trainer.initialize()
    assert type(trainer.optimizer) is torch.optim.SGD and len(trainer.optimizer.param_groups) == 2
    network_group, reconstruction_group = trainer.optimizer.param_groups
    assert [id(p) for p in network_group["params"]] == [id(p) for p in trainer.network.parameters()]
    assert [id(p) for p in reconstruction_group["params"]] == [
        id(p) for p in trainer.reconstruction_network.parameters()]
    for setting in ("lr", "momentum", "nesterov", "weight_decay"):
        assert reconstruction_group[setting] == network_group[setting], setting
    assert (network_group["momentum"], network_group["nesterov"]) == (0.99, True)  # nnU-Net's SGD
    # nnU-Net's poly schedule moves both groups
    trainer.lr_scheduler.step(1)
    assert reconstruction_group["lr"] == network_group["lr"] < trainer.initial_lr


def test_recon_rejects_unknown_weight_map_and_negative_lambda(planned, monkeypatch):
    root, _ = planned

    class _Boundary(nnUNetTrainerShapeDescriptorsRecon_debug):
        reconstruction_weight_map = "boundary"

    class _Negative(nnUNetTrainerShapeDescriptorsRecon_debug):
        reconstruction_weight = -0.1

    with pytest.raises(ValueError, match=r"_Boundary.reconstruction_weight_map is 'boundary'; expected one of "
                                         r"\['uniform'\]"):
        make_trainer(root, _Boundary, monkeypatch)
    with pytest.raises(ValueError, match=r"_Negative.reconstruction_weight must be >= 0.*not -0.1"):
        make_trainer(root, _Negative, monkeypatch).initialize()


def test_recon_checkpoint_holds_the_reconstruction_network_and_resumes_it(planned, monkeypatch, tmp_path):
    root, _ = planned
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptorsRecon_debug, monkeypatch)
    trainer.initialize()
    trainer.train_step(_batch(trainer))
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    assert not Path(f"{path}.partial").exists()
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    weights = trainer.reconstruction_network.state_dict()
    assert set(checkpoint[RECONSTRUCTION_KEY]) == set(weights)
    assert not any("reconstruction" in k for k in checkpoint["network_weights"])
    assert set(checkpoint["network_weights"]) == set(trainer.network.state_dict())
    resumed = make_trainer(root, nnUNetTrainerShapeDescriptorsRecon_debug, monkeypatch)
    resumed.initialize()
    assert not all(torch.equal(v, resumed.reconstruction_network.state_dict()[k]) for k, v in weights.items())
    resumed.load_checkpoint(str(path))
    assert all(torch.equal(v, resumed.reconstruction_network.state_dict()[k]) for k, v in weights.items())
    # Adam's moments of R came back with the optimiser state (one group: R's parameters follow the
    # network's; every trainable one of R got a gradient in the step, so it has a state)
    n_network = len(list(trainer.network.parameters()))
    trainable = [n_network + i for i, p in enumerate(trainer.reconstruction_network.parameters()) if p.requires_grad]
    saved, loaded = trainer.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert trainable and set(trainable) <= set(saved) == set(loaded)
    assert all(torch.equal(saved[i]["exp_avg"], loaded[i]["exp_avg"]) for i in saved)


def test_recon_end_to_end_train_and_predict(planned):
    root, env = planned
    trainer = "nnUNetTrainerShapeDescriptorsRecon_debug"
    run_cli(["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], train_env(env),
            log=root / f"train_{trainer}.log")
    fold = root / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    log = max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()
    assert "reconstruction MSE (uniform weights)" in log and "(lambda 0.1)" in log
    assert "descriptor satisfied (val) volume" in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer and RECONSTRUCTION_KEY in checkpoint
    assert not any("reconstruction" in k for k in checkpoint["network_weights"])
    assert not list(fold.glob("*.partial"))
    predictions = root / f"pred_{trainer}"
    run_cli(["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / DATASET / "imagesTs"), "-o", str(predictions),
             "-d", "701", "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu",
             "-npp", "1", "-nps", "1", "--disable_tta"], env)
    predicted = sorted(predictions.glob("*.nii.gz"))
    assert [p.name for p in predicted] == ["case_005.nii.gz"]
    image = sitk.ReadImage(str(root / "nnUNet_raw" / DATASET / "imagesTs" / "case_005_0000.nii.gz"))
    seg = sitk.ReadImage(str(predicted[0]))
    assert seg.GetSize() == image.GetSize() and np.allclose(seg.GetOrigin(), image.GetOrigin())
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}


# --- nnUNetTrainerShapePopulationPriorImageAware ----------------------------------------------------

def test_population_prior_image_aware_has_the_image_aware_weights():
    aware, composed = nnUNetTrainerShapeDescriptorsImageAware, nnUNetTrainerShapePopulationPriorImageAware
    names = ("homogeneity_weight", "edge_weight", "edge_sigma", "entropy_weight")
    assert [getattr(composed, n) for n in names] == [getattr(aware, n) for n in names]
    assert min(composed.homogeneity_weight, composed.edge_weight, composed.entropy_weight) > 0
    # the population prior's trainer without them has none
    assert [getattr(nnUNetTrainerShapePopulationPrior, n) for n in names if n != "edge_sigma"] == [0.0, 0.0, 0.0]
    assert issubclass(composed, nnUNetTrainerShapePopulationPrior) and composed.reads_voxel_labels is False


def test_population_prior_image_aware_loss_adds_the_image_terms_by_hand(oriented, monkeypatch):  # noqa: F811
    root, _ = oriented
    trainer = make_trainer(root, nnUNetTrainerShapePopulationPriorImageAware, monkeypatch, dataset=PRIOR_DATASET)
    trainer.initialize()
    batch = _batch(trainer, FromFileDataLoader, batch_size=1)
    loss, output, satisfied = trainer._descriptor_step(batch)
    assert "satisfied_relations" in satisfied  # the prior's relations are still there
    prior_loss = trainer.loss.last_result.loss  # the soft output's descriptor + relation loss
    probabilities = torch.softmax(output.float(), 1)
    data = batch["data"].float()
    _, spacing = trainer._loss_targets(batch)
    expected = (1.0 * region_homogeneity(probabilities, data, normalize=True)
                + 0.5 * edge_aware_boundary(probabilities, data, 0.5, spacing, normalize=True)
                + 0.1 * prediction_entropy(probabilities, normalize=True))
    assert expected.item() > 0
    assert loss.item() == pytest.approx(prior_loss.item() + expected.item(), rel=1e-5)


def test_population_prior_image_aware_end_to_end(oriented, tmp_path):  # noqa: F811
    """The real CLIs with every preprocessed label array moved away (the raw labels are placeholders)."""
    root, env = oriented
    folder = root / "nnUNet_preprocessed" / PRIOR_DATASET / "nnUNetPlans_3d_fullres"
    moved = tmp_path / "segs"
    moved.mkdir()
    for seg in folder.glob("*_seg.*"):
        shutil.move(str(seg), moved / seg.name)
    trainer = "nnUNetTrainerShapePopulationPriorImageAware_debug"
    try:
        run_cli(["nnUNetv2_train", str(PRIOR_DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
                train_env(env), log=root / "train_prior_image_aware.log")
    finally:
        for seg in moved.iterdir():
            shutil.move(str(seg), folder / seg.name)
    results = root / "nnUNet_results" / PRIOR_DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (results / "checkpoint_best.pth").is_file() and (results / "checkpoint_final.pth").is_file()
    assert (results / "validation" / "prior_satisfaction.json").is_file()
    log = next(results.glob("training_log_*.txt")).read_text()
    assert "population prior:" in log and "prior relations satisfied (val)" in log
    predictions = root / "pred_prior_image_aware"
    run_cli(["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / PRIOR_DATASET / "imagesTs"), "-o",
             str(predictions), "-d", str(PRIOR_DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", trainer,
             "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"], env)
    assert len(list(predictions.glob("*.nii.gz"))) == 1
