"""Descriptors + reconstruction (nnUNetTrainerShapeDescriptorsRecon), the population prior with the
image-aware terms (nnUNetTrainerShapePopulationPriorImageAware), and the one atomic checkpoint
write that every trainer (Weak-Net included) goes through."""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from e2e_helpers import (
    first_batch,
    make_trainer,
    newest_training_log,
    predict_test_cases,
    results_fold,
    run_cli,
    train_env,
    train_without_label_arrays,
)
from nnunetv2.training.logging.nnunet_logger import LocalLogger
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

# the population-prior tests' dataset (oriented, placeholder labels), planned once for this module
from test_population_prior_trainer import DATASET as PRIOR_DATASET
from test_population_prior_trainer import oriented  # noqa: F401 (a fixture)

from nnunet_shape.core.image_terms import edge_aware_boundary, prediction_entropy, region_homogeneity
from nnunet_shape.nnunet.training.checkpoints import (
    AtomicCheckpointMixin,
    partial_checkpoint_path,
    save_checkpoint_atomically,
)
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

def test_checkpoint_is_written_once_to_partial_then_renamed_with_the_extras(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"the previous checkpoint")
    writes, loads = [], []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (writes.append(os.fspath(f)), real_save(obj, f))[1])
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    extras = {RECONSTRUCTION_KEY: {"r": torch.zeros(1)}}
    save_checkpoint_atomically({"network_weights": {"w": torch.ones(2)}, "current_epoch": 3}, str(target), extras)
    # one write, to the partial file; nothing read back
    assert writes == [partial_checkpoint_path(str(target))] == [f"{target}.partial"] and loads == []
    assert not Path(f"{target}.partial").exists()
    monkeypatch.undo()
    checkpoint = torch.load(target, weights_only=False)
    assert set(checkpoint) == {"network_weights", "current_epoch", RECONSTRUCTION_KEY}
    assert checkpoint["current_epoch"] == 3 and torch.equal(checkpoint[RECONSTRUCTION_KEY]["r"], torch.zeros(1))


def test_checkpoint_save_leaves_the_old_checkpoint_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_best.pth"
    save_checkpoint_atomically({"network_weights": {}}, str(target), {"extra": 2})
    assert torch.load(target, weights_only=False) == {"network_weights": {}, "extra": 2}
    # an extra entry may not replace one of nnU-Net's; nothing is written, the previous checkpoint stays
    with pytest.raises(KeyError, match=r"checkpoint .*checkpoint_best.pth: extra entries \['current_epoch'\] "
                                       r"would replace nnU-Net's own"):
        save_checkpoint_atomically({"current_epoch": 3}, str(target), {"current_epoch": 0})
    assert not Path(f"{target}.partial").exists()
    assert torch.load(target, weights_only=False) == {"network_weights": {}, "extra": 2}

    def killed(obj, f, *args, **kwargs) -> None:
        Path(f).write_bytes(b"trunc")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomically({"network_weights": {"w": torch.ones(1)}}, str(target))
    monkeypatch.undo()
    assert torch.load(target, weights_only=False) == {"network_weights": {}, "extra": 2}


class _Scaler:
    def state_dict(self) -> dict:
        return {"scale": 1024.0, "_growth_tracker": 3}


class _CheckpointedTrainer(AtomicCheckpointMixin, nnUNetTrainer):
    """Just what nnUNetTrainer.save_checkpoint reads, without nnU-Net's plans and dataset."""

    def __init__(self, network, is_ddp: bool, grad_scaler, local_rank: int = 0, disable_checkpointing: bool = False):
        torch.manual_seed(0)
        core = network.module if is_ddp else network
        core = getattr(core, "_orig_mod", core)
        self.network, self.is_ddp, self.grad_scaler = network, is_ddp, grad_scaler
        self.local_rank, self.disable_checkpointing = local_rank, disable_checkpointing
        self.optimizer = torch.optim.SGD(core.parameters(), lr=0.1, momentum=0.9)
        core(torch.ones(2, 3)).sum().backward()
        self.optimizer.step()  # a momentum buffer in the optimiser's state
        self.logger = LocalLogger()
        self.logger.log("train_losses", 0.25, 0)
        self._best_ema, self.current_epoch = 0.5, 6
        self.my_init_kwargs = {"plans": {"plans_name": "nnUNetPlans"}, "fold": 0, "device": torch.device("cpu")}
        self.inference_allowed_mirroring_axes = (0, 2)
        self.logged, self.extras_built = [], 0

    def print_to_log_file(self, *args, **kwargs) -> None:
        self.logged.append(" ".join(map(str, args)))

    def checkpoint_extras(self) -> dict[str, object]:
        self.extras_built += 1
        return {**super().checkpoint_extras(), RECONSTRUCTION_KEY: {"r": torch.full((2,), 7.0)}}


def _plain(value):
    """``value`` with tensors as (dtype, shape, values), comparable with ``==``."""
    if isinstance(value, torch.Tensor):
        return str(value.dtype), tuple(value.shape), value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


@pytest.mark.parametrize("wrap", ["plain", "compiled", "ddp", "ddp_compiled"])
@pytest.mark.parametrize("grad_scaler", [None, _Scaler()])
def test_checkpoint_holds_what_the_installed_nnunets_save_checkpoint_writes_and_the_extras(tmp_path, wrap,
                                                                                           grad_scaler):
    network = torch.nn.Linear(3, 2)
    if "compiled" in wrap:
        network = torch.compile(network)  # an OptimizedModule: its state_dict keys start with _orig_mod.
    is_ddp = wrap.startswith("ddp")
    trainer = _CheckpointedTrainer(types.SimpleNamespace(module=network) if is_ddp else network, is_ddp, grad_scaler)
    nnUNetTrainer.save_checkpoint(trainer, str(tmp_path / "nnunet.pth"))
    trainer.save_checkpoint(str(tmp_path / "ours.pth"))
    nnunet = torch.load(tmp_path / "nnunet.pth", weights_only=False)
    ours = torch.load(tmp_path / "ours.pth", weights_only=False)
    assert set(nnunet) == {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                           "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}
    assert set(ours) == set(nnunet) | {RECONSTRUCTION_KEY} and trainer.extras_built == 1
    assert _plain({k: v for k, v in ours.items() if k != RECONSTRUCTION_KEY}) == _plain(nnunet)
    assert set(ours["network_weights"]) == {"weight", "bias"} and ours["current_epoch"] == 7
    assert torch.equal(ours[RECONSTRUCTION_KEY]["r"], torch.full((2,), 7.0))
    assert not list(tmp_path.glob("*.partial"))


def test_checkpoint_is_not_written_on_other_ranks_nor_with_checkpointing_disabled(tmp_path):
    for rank, disabled in ((1, False), (0, True)):
        trainer = _CheckpointedTrainer(torch.nn.Linear(3, 2), False, None, rank, disabled)
        trainer.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
        # nothing written, the extras not even built; nnU-Net's own line when checkpointing is disabled
        assert list(tmp_path.iterdir()) == [] and trainer.extras_built == 0
        assert trainer.logged == (["No checkpoint written, checkpointing is disabled"] if disabled else [])


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


@pytest.mark.parametrize("cls, lam", [(nnUNetTrainerShapeDescriptorsRecon_debug, 0.1), (_ReconHalf, 0.5)])
def test_recon_loss_is_descriptor_loss_plus_lambda_mse_by_hand(planned, monkeypatch, cls, lam):
    root, _ = planned
    trainer = make_trainer(root, cls, monkeypatch)
    trainer.initialize()
    assert trainer.reconstruction_weight == lam and trainer.reconstruction_weight_map == "uniform"
    batch = first_batch(trainer, WholeCaseDataLoader, 2)
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
    batch = first_batch(trainer, WholeCaseDataLoader, 2)
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
    trainer.train_step(first_batch(trainer, WholeCaseDataLoader, 2))
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
    fold = results_fold(root, DATASET, trainer)
    log = newest_training_log(fold)
    assert "reconstruction MSE (uniform weights)" in log and "(lambda 0.1)" in log
    assert "descriptor satisfied (val) volume" in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer and RECONSTRUCTION_KEY in checkpoint
    assert not any("reconstruction" in k for k in checkpoint["network_weights"])
    assert not list(fold.glob("*.partial"))
    predicted = predict_test_cases(root, DATASET, trainer, env, root / f"pred_{trainer}")
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
    batch = first_batch(trainer, FromFileDataLoader, 1)
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
    trainer = "nnUNetTrainerShapePopulationPriorImageAware_debug"
    results = train_without_label_arrays(root, PRIOR_DATASET, trainer, env, root / "train_prior_image_aware.log",
                                         tmp_path / "segs")
    assert (results / "checkpoint_best.pth").is_file() and (results / "checkpoint_final.pth").is_file()
    assert (results / "validation" / "prior_satisfaction.json").is_file()
    log = newest_training_log(results)
    assert "population prior:" in log and "prior relations satisfied (val)" in log
    assert len(predict_test_cases(root, PRIOR_DATASET, trainer, env, root / "pred_prior_image_aware")) == 1
