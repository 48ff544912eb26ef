"""The whole-scan trainers in-process: plans edits, whole-case loading, t-schedule resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_helpers import make_trainer

from nnunet_shape.nnunet.training.from_file import _walk as walk_transforms
from nnunet_shape.nnunet.training.shape_trainers import (
    TRAINER_NAMES,
    nnUNetTrainerShapeDescriptors,
    nnUNetTrainerShapeDescriptorsGrowingT,
    preprocessed_spacing,
)
from nnunet_shape.nnunet.training.whole_scan import (
    MIRROR_AXES_ENV,
    WholeCaseDataLoader,
    adapt_plans_for_whole_scan,
    centred_lower_bound,
    parse_mirror_axes,
    round_up_to_multiple,
    whole_scan_patch_size,
)

DATASET = "Dataset701_Tiny"


@pytest.mark.parametrize("shape, divisors, expected", [
    ((12, 24, 20), (2, 4, 4), (12, 24, 20)),
    ((13, 25, 21), (2, 4, 4), (14, 28, 24)),
    ((1, 1), (8, 8), (8, 8)),
    ((33,), (32,), (64,)),
])
def test_round_up_to_multiple(shape, divisors, expected):
    assert round_up_to_multiple(shape, divisors) == expected


def test_whole_scan_patch_size_3d_and_2d():
    shapes = [(12, 24, 20), (13, 23, 21), (11, 25, 19)]
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert whole_scan_patch_size(shapes, strides, two_d=False) == (14, 28, 24)
    # 2D: one slice of the in-plane axes
    assert whole_scan_patch_size(shapes, [[1, 1], [2, 2], [2, 2]], two_d=True) == (28, 24)


@pytest.mark.parametrize("case, patch, expected", [(10, 10, 0), (10, 14, -2), (11, 14, -1), (9, 14, -2)])
def test_centred_lower_bound(case, patch, expected):
    lower = centred_lower_bound(case, patch)
    assert lower == expected
    # the case fits in the patch, with at most one voxel more padding after than before
    before, after = -lower, patch - case + lower
    assert before >= 0 and after >= 0 and after - before in (0, 1)


def test_adapt_plans_resolves_inheritance_and_sets_network(planned):
    root, _ = planned
    plans = json.loads((root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    plans["configurations"]["3d_child"] = {"inherits_from": "3d_fullres", "batch_size": 7}
    adapt_plans_for_whole_scan(plans, "3d_child", (14, 28, 24), 1)
    child = plans["configurations"]["3d_child"]
    assert "inherits_from" not in child
    assert child["patch_size"] == [14, 28, 24] and child["batch_size"] == 1
    assert child["architecture"]["network_class_name"] == "nnunet_shape.network.std_exp.STDEXPNet"
    assert child["architecture"]["arch_kwargs"]["std_features"] == 16
    # the parent is untouched
    assert plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] != \
        "nnunet_shape.network.std_exp.STDEXPNet"


def test_preprocessed_spacing_is_extent_over_shape():
    # raw spacing (3.0, 1.0, 0.5) transposed by (2, 0, 1) is (0.5, 3.0, 1.0); the cropped shape is
    # stored in the transposed order already
    properties = {"spacing": [3.0, 1.0, 0.5], "shape_after_cropping_and_before_resampling": [80, 10, 40]}
    spacing = preprocessed_spacing(properties, (40, 15, 40), (2, 0, 1))
    assert spacing == pytest.approx((1.0, 2.0, 1.0))


def test_every_trainer_variant_is_exported_from_the_trainers_folder():
    import importlib.util

    from nnunet_shape.cli import trainers_directory

    spec = importlib.util.spec_from_file_location(
        "shape_descriptor_trainers_probe", Path(trainers_directory()) / "shape_descriptor_trainers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("nnUNetTrainerShapeDescriptors", "nnUNetTrainerShapeDescriptorsVC_5epochs",
                 "nnUNetTrainerShapeDescriptorsVCDS_250epochs", "nnUNetTrainerShapeFullSupervision_debug",
                 "nnUNetTrainerShapeDescriptors_50epochs"):
        assert name in TRAINER_NAMES
        cls = getattr(module, name)
        # defined in the library (picklable), not in the trainers folder
        assert cls.__module__ == "nnunet_shape.nnunet.training.shape_trainers"
    assert getattr(module, "nnUNetTrainerShapeDescriptorsVC_5epochs").training_epochs == 5
    assert getattr(module, "nnUNetTrainerShapeDescriptorsVC_5epochs").descriptors == ("volume", "centroid")


class _TwoEpochsGrowingT(nnUNetTrainerShapeDescriptorsGrowingT):
    training_epochs = 2
    iterations_per_epoch = 1
    val_iterations_per_epoch = 1


class _ThreeEpochsGrowingT(_TwoEpochsGrowingT):
    training_epochs = 3


def test_whole_case_loader_centres_every_case(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch)
    trainer.initialize()
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    patch = trainer.configuration_manager.patch_size
    loader = WholeCaseDataLoader(dataset_tr, 1, patch, patch, trainer.label_manager, transforms=None)
    for key in dataset_tr.identifiers:
        data, seg, _, _ = dataset_tr.load_case(key)
        lower, upper = loader.get_bbox(np.array(data.shape[1:]), force_fg=True, class_locations=None)
        assert [u - l for l, u in zip(lower, upper)] == list(patch)
        # the whole case is inside the crop: no foreground voxel is cut off
        assert all(l <= 0 and u >= s for l, u, s in zip(lower, upper, data.shape[1:]))


def test_resume_restores_t_and_best_satisfaction(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, _TwoEpochsGrowingT, monkeypatch)
    trainer.run_training()
    assert trainer.logger.get_value("barrier_t", step=None) == pytest.approx([1.0, 1.1])
    final = Path(trainer.output_folder) / "checkpoint_final.pth"
    assert final.is_file() and (Path(trainer.output_folder) / "progress_descriptors.png").is_file()
    best = max(trainer.logger.get_value("ema_val_descriptor_satisfaction", step=None))

    resumed = make_trainer(root, _ThreeEpochsGrowingT, monkeypatch)
    assert resumed.barrier_schedule.t == pytest.approx(1.0)
    resumed.load_checkpoint(str(final))
    # t of epoch 2 = 1.0 * 1.1 ** 2, as if training had never stopped
    assert resumed.barrier_schedule.t == pytest.approx(1.21)
    assert resumed.current_epoch == 2
    assert resumed._best_satisfaction == pytest.approx(best)


def test_checkpoint_best_follows_descriptor_satisfaction_not_dice(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, _TwoEpochsGrowingT, monkeypatch)
    trainer.initialize()
    saved = []
    monkeypatch.setattr(trainer, "save_checkpoint", lambda filename: saved.append(Path(filename).name))
    monkeypatch.setattr(trainer.logger, "plot_progress_png", lambda folder: None)
    # (EMA descriptor satisfaction, pseudo Dice) per epoch: Dice moves opposite to satisfaction
    for epoch, (satisfaction, dice) in enumerate([(0.2, 0.9), (0.5, 0.1), (0.4, 1.0)]):
        log = trainer.logger.log
        for key, value in [("epoch_start_timestamps", 0.0), ("barrier_t", 1.0), ("lrs", 0.01),
                           ("train_losses", 1.0), ("val_losses", 1.0), ("mean_fg_dice", dice),
                           ("dice_per_class_or_region", [dice, dice]),
                           ("train_descriptor_satisfaction", satisfaction),
                           ("val_descriptor_satisfaction", satisfaction),
                           ("ema_val_descriptor_satisfaction", satisfaction)]:
            log(key, value, epoch)
        for name in trainer.descriptors:
            log(f"val_satisfied_{name}", [satisfaction, satisfaction], epoch)
        saved.clear()
        trainer.on_epoch_end()
        assert ("checkpoint_best.pth" in saved) == (epoch in (0, 1)), (epoch, saved)
    assert trainer._best_satisfaction == pytest.approx(0.5)


def test_satisfaction_counts_only_constrained_cases():
    from types import SimpleNamespace

    fake = SimpleNamespace(descriptors=("volume", "centroid"), label_manager=SimpleNamespace(has_regions=False))
    # 3 cases x (background, a, b); -1 = not constrained (e.g. centroid of an absent class)
    outputs = {"satisfied_volume": np.array([[-1, 1, 0], [-1, 1, 1], [-1, 0, 1]], dtype=np.int8),
               "satisfied_centroid": np.array([[-1, 1, -1], [-1, -1, -1], [-1, 0, -1]], dtype=np.int8)}
    per_class = nnUNetTrainerShapeDescriptors._satisfaction_per_class(fake, outputs)
    assert per_class["volume"] == pytest.approx([2 / 3, 2 / 3])
    assert per_class["centroid"][0] == pytest.approx(0.5) and np.isnan(per_class["centroid"][1])
    overall = nnUNetTrainerShapeDescriptors._overall_satisfaction(per_class)
    assert overall == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3)
    assert nnUNetTrainerShapeDescriptors._overall_satisfaction({"volume": np.array([np.nan])}) == 1.0


class _SGDDescriptors(nnUNetTrainerShapeDescriptors):
    optimizer_name = "sgd"


class _UnknownOptimizer(nnUNetTrainerShapeDescriptors):
    optimizer_name = "lbfgs"


def test_descriptor_trainers_use_adam_with_poly_decay_and_sgd_on_request(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch)
    trainer.initialize()
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(3e-3) and group["betas"] == (0.9, 0.99)
    assert group["weight_decay"] == pytest.approx(trainer.weight_decay)
    trainer.lr_scheduler.step(trainer.num_epochs // 2)
    assert 0 < trainer.optimizer.param_groups[0]["lr"] < 3e-3  # nnU-Net's poly decay

    sgd = make_trainer(root, _SGDDescriptors, monkeypatch)
    sgd.initialize()
    assert isinstance(sgd.optimizer, torch.optim.SGD) and sgd.optimizer.param_groups[0]["momentum"] == 0.99

    with pytest.raises(ValueError, match="_UnknownOptimizer.optimizer_name"):
        make_trainer(root, _UnknownOptimizer, monkeypatch).initialize()


@pytest.mark.parametrize("value, ndim, expected", [
    ("0,2", 3, (0, 2)),
    (" 2, 0 ", 3, (0, 2)),
    ("1", 2, (1,)),
    ("none", 3, ()),
    ("", 3, ()),
])
def test_parse_mirror_axes(value, ndim, expected):
    assert parse_mirror_axes(value, ndim) == expected


@pytest.mark.parametrize("value, ndim, match", [
    ("0,3", 3, "in 0..2 for a 3D patch"),
    ("2", 2, "in 0..1 for a 2D patch"),
    ("0,0", 3, "distinct"),
    ("x", 3, "comma-separated"),
])
def test_parse_mirror_axes_errors_name_the_variable(value, ndim, match):
    with pytest.raises(ValueError, match=match) as error:
        parse_mirror_axes(value, ndim)
    assert MIRROR_AXES_ENV in str(error.value)


class _MirrorOnlyAxis2(nnUNetTrainerShapeDescriptors):
    mirror_axes = (2,)


@pytest.mark.parametrize("trainer_class, env_value, expected", [
    (nnUNetTrainerShapeDescriptors, None, (0, 1, 2)),  # nnU-Net's default
    (nnUNetTrainerShapeDescriptors, "0,2", (0, 2)),
    (nnUNetTrainerShapeDescriptors, "none", None),
    (_MirrorOnlyAxis2, None, (2,)),  # a subclass attribute
    (_MirrorOnlyAxis2, "0", (0,)),  # the environment wins for one run
])
def test_mirror_axes_reach_augmentation_and_test_time(planned, monkeypatch, trainer_class, env_value, expected):
    root, _ = planned
    if env_value is None:
        monkeypatch.delenv(MIRROR_AXES_ENV, raising=False)
    else:
        monkeypatch.setenv(MIRROR_AXES_ENV, env_value)
    trainer = make_trainer(root, trainer_class, monkeypatch)
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == expected
    # nnUNetv2_predict mirrors along what the checkpoint stores: the same axes
    assert trainer.inference_allowed_mirroring_axes == expected
    transforms = trainer.get_training_transforms(trainer.configuration_manager.patch_size, (0, 0), None, mirror_axes,
                                                 False)
    mirrors = [t for t in walk_transforms(transforms) if type(t).__name__ == "MirrorTransform"]
    assert [tuple(m.allowed_axes) for m in mirrors] == ([expected] if expected else [])

