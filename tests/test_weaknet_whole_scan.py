"""``nnUNetTrainerWeakNetWholeScan``: paper 003's loss on the whole-scan STD/EXP setup.

The loss of one real batch recomputed by hand; the rules shared with ``nnUNetTrainerWeakNet``
(not copies); placeholder labels accepted; end to end ``nnUNetv2_train`` + ``nnUNetv2_predict``
with ``labelsTr`` zeroed and nnU-Net's preprocessed labels removed while it trains."""

from __future__ import annotations

import json
from pathlib import Path

import blosc2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from e2e_helpers import make_trainer, run_cli, train_env
from scipy.ndimage import distance_transform_edt
from weaknet_helpers import (  # noqa: F401 (with_templates_fixture: the fixture with_templates)
    DATASET,
    labels_replaced,
    predict_test_case,
    template_array,
    with_templates_fixture,
)

TRAINER = "nnUNetTrainerWeakNetWholeScan_debug"


def test_whole_scan_weaknet_shares_the_weaknet_rules_and_the_whole_scan_setup():
    from nnunet_shape.nnunet.training import weaknet
    from nnunet_shape.nnunet.training.whole_scan import nnUNetTrainerWholeScan

    whole, plain = weaknet.nnUNetTrainerWeakNetWholeScan, weaknet.nnUNetTrainerWeakNet
    assert issubclass(whole, nnUNetTrainerWholeScan) and not issubclass(whole, plain)
    # one rule in one place: the same functions, not copies
    for name in ("templates_folder", "prepare_templates", "initialize", "do_split", "weak_net_loss", "train_step",
                 "_build_loss", "configure_optimizers"):
        assert getattr(whole, name) is getattr(plain, name), name
    # whole-scan network and loader
    for name in ("build_network_architecture", "get_dataloaders",
                 "configure_rotation_dummyDA_mirroring_and_inital_patch_size"):
        assert getattr(whole, name) is getattr(nnUNetTrainerWholeScan, name), name
    assert whole.reads_voxel_labels is False and whole.use_deep_supervision is True
    assert (whole.boundary_distance_mm, whole.boundary_weight_high, whole.boundary_weight_low) == (5.0, 1.0, 0.1)
    assert whole.reconstruction_weight == plain.reconstruction_weight == 0.1
    assert weaknet.nnUNetTrainerWeakNetWholeScanNoRecon.reconstruction_weight == 0.0


def _hand_weight(template: np.ndarray, spacing, d: float, high: float, low: float) -> np.ndarray:
    """(B, *S) labels -> (B, *S) weights: ``high`` where the Euclidean distance (mm, between voxel
    centres) to the nearest voxel of another label is <= d, else ``low``."""
    weight = np.full(template.shape, low, dtype=np.float64)
    for b in range(template.shape[0]):
        distance = np.full(template.shape[1:], np.inf)
        for label in np.unique(template[b]):
            inside = template[b] == label
            if inside.all():
                continue
            # distance from each voxel of `label` to the nearest voxel that is not `label`
            distance[inside] = distance_transform_edt(inside, sampling=spacing)[inside]
        weight[b][distance <= d] = high
    return weight


@pytest.mark.parametrize("cls_name, lam", [("nnUNetTrainerWeakNetWholeScan_debug", 0.1),
                                           ("nnUNetTrainerWeakNetWholeScanNoRecon_debug", 0.0)])
def test_loss_of_one_batch_is_template_ce_plus_lambda_weighted_mse_by_hand(with_templates, monkeypatch, cls_name,
                                                                          lam):
    from nnunet_shape.nnunet.training import weaknet

    root, _ = with_templates
    monkeypatch.setenv("nnUNet_raw", str(root / "nnUNet_raw"))
    trainer = make_trainer(root, getattr(weaknet, cls_name), monkeypatch)
    trainer.initialize()
    # the whole-scan setup: STD/EXP network, the whole scan as one patch, trained from the templates
    assert type(trainer.network).__name__ == "STDEXPNet"
    assert trainer.configuration_manager.network_arch_class_name == "nnunet_shape.network.std_exp.STDEXPNet"
    assert Path(trainer.preprocessed_dataset_folder).name.startswith("nnUNetPlans_3d_fullres__templates_")
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    assert Path(dataset_tr.source_folder) == Path(trainer.preprocessed_dataset_folder)
    assert (trainer.reconstruction_network is None) == (lam == 0)
    torch.manual_seed(0)
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    data, targets = batch["data"], batch["target"]
    patch = tuple(trainer.configuration_manager.patch_size)
    assert tuple(data.shape[2:]) == patch and isinstance(targets, list) and len(targets) > 1

    # by hand, with the weights before the step: nnU-Net's deep-supervision weights 1/2^i, the
    # coarsest 0, normalised; CE of each output against the template at its scale
    with torch.no_grad():
        output = trainer.network(data)
        assert len(output) == len(targets)
        ds = np.array([1 / 2 ** i for i in range(len(output))])
        ds[-1] = 0
        ds = ds / ds.sum()
        ce = sum(float(w) * F.cross_entropy(o, t[:, 0].long()).item() for w, o, t in zip(ds, output, targets))
        template = targets[0][:, 0].numpy().round().astype(int)
        assert set(np.unique(template)) <= {0, 1, 2}
        if lam:
            weight = _hand_weight(template, trainer.configuration_manager.spacing, 5.0, 1.0, 0.1)
            assert 0 < (weight == 1.0).mean() < 1  # some voxels near a boundary, some far from every one
            reconstruction = trainer.reconstruction_network(torch.softmax(output[0], 1))
            mse = float((torch.from_numpy(weight[:, None]) * (reconstruction.double() - data.double()) ** 2).mean())
        else:
            mse = 0.0
    step = trainer.train_step(batch)
    assert float(step["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(step["weighted_mse"]) == pytest.approx(mse, rel=1e-4, abs=1e-8)
    assert float(step["loss"]) == pytest.approx(ce + lam * mse, rel=1e-5)
    # this 3-stage network has two outputs, and the coarser one gets weight 0; the rule for more
    # outputs (1, 1/2, 1/4, the coarsest 0, normalised), by hand
    assert trainer.loss.weight_factors == (1.0, 0.0)
    monkeypatch.setattr(trainer, "_get_deep_supervision_scales", lambda: [[1.0, 1.0, 1.0]] * 4)
    assert trainer._build_loss().weight_factors == pytest.approx((4 / 7, 2 / 7, 1 / 7, 0.0))
    # one SGD group over both networks
    assert len(trainer.optimizer.param_groups) == 1 and isinstance(trainer.optimizer, torch.optim.SGD)
    expected = [*trainer.network.parameters(),
                *([] if trainer.reconstruction_network is None else trainer.reconstruction_network.parameters())]
    assert [id(p) for p in trainer.optimizer.param_groups[0]["params"]] == [id(p) for p in expected]


def test_placeholder_labels_are_accepted_unlike_full_supervision(with_templates, monkeypatch):
    from nnunet_shape.nnunet.label_free import PLACEHOLDER_FLAG, PlaceholderLabelsError
    from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeFullSupervision_debug
    from nnunet_shape.nnunet.training.weaknet import nnUNetTrainerWeakNetWholeScan_debug

    root, _ = with_templates
    preprocessed = root / "nnUNet_preprocessed" / DATASET
    plans = {**json.loads((preprocessed / "nnUNetPlans.json").read_text()), "continue_training": False}
    dataset_json = {**json.loads((preprocessed / "dataset.json").read_text()), PLACEHOLDER_FLAG: True}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(root / name))
    with pytest.raises(PlaceholderLabelsError, match="nnUNetTrainerShapeFullSupervision_debug"):
        nnUNetTrainerShapeFullSupervision_debug(json.loads(json.dumps(plans)), "3d_fullres", 0, dataset_json,
                                                torch.device("cpu"))
    trainer = nnUNetTrainerWeakNetWholeScan_debug(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    assert trainer.configuration_manager.network_arch_class_name.endswith("STDEXPNet")


def test_whole_scan_weaknet_end_to_end_without_labels(with_templates):
    """nnUNetv2_train with labelsTr zeroed and nnU-Net's preprocessed labels removed, and the
    prepared template folder emptied: training rebuilds its targets from templatesTr alone."""
    root, env = with_templates
    original = root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    fold = root / "nnUNet_results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    cases = [f"case_{i:03d}" for i in range(5)]
    with labels_replaced(root, cases, original):
        for prepared in (root / "nnUNet_preprocessed" / DATASET).glob("nnUNetPlans_3d_fullres__templates_*"):
            for stale in prepared.glob("*"):
                stale.unlink()
        train = run_cli(["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
                        train_env(env), log=root / f"train_{TRAINER}.log")
        assert not list(original.glob("*_seg.b2nd"))  # nothing wrote nnU-Net's labels back either
    (folder,) = [p for p in (root / "nnUNet_preprocessed" / DATASET).glob("nnUNetPlans_3d_fullres__templates_*")
                 if p.is_dir()]
    for case in cases:
        seg = np.asarray(blosc2.open(str(folder / f"{case}_seg.b2nd"), mode="r")[:])
        assert np.array_equal(seg[0], template_array(root, case)), case
    log = max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()
    assert "training on the templates of" in log and "weighted reconstruction MSE" in log, train.stdout[-2000:]
    assert "Whole-scan training: patch" in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    # the STD/EXP network alone in network_weights; the reconstruction network beside it
    assert not any("reconstruction" in k for k in checkpoint["network_weights"])
    assert checkpoint["reconstruction_network_weights"]
    plans = json.loads((fold.parent / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert plans["architecture"]["network_class_name"] == "nnunet_shape.network.std_exp.STDEXPNet"

    predict_test_case(root, env, TRAINER)
