"""The whole-scan trainers in-process: plans edits, whole-case loading, t-schedule resume."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_helpers import first_batch, make_trainer, newest_training_log, results_fold

import nnunet_shape.nnunet.training.from_file as from_file
import nnunet_shape.nnunet.training.population_prior as population_prior
import nnunet_shape.nnunet.training.shape_reconstruction as shape_reconstruction
import nnunet_shape.nnunet.training.shape_trainers as shape_trainers
from nnunet_shape.core.anatomical_frame import AnatomicalFrame
from nnunet_shape.core.bounds import DescriptorBounds
from nnunet_shape.core.geometry import preprocessed_spacing
from nnunet_shape.nnunet.training.from_file import _walk as walk_transforms
from nnunet_shape.nnunet.training.shape_trainers import (
    TRAINER_NAMES,
    nnUNetTrainerShapeDescriptors,
    nnUNetTrainerShapeDescriptorsGrowingT,
)
from nnunet_shape.nnunet.training.whole_scan import (
    MIRROR_AXES_ENV,
    WholeCaseDataLoader,
    adapt_plans_for_whole_scan,
    anatomical_mirror_axes,
    anatomical_mirror_names,
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
    spacing = preprocessed_spacing(properties["spacing"], (2, 0, 1),
                                   properties["shape_after_cropping_and_before_resampling"], (40, 15, 40))
    assert tuple(spacing) == pytest.approx((1.0, 2.0, 1.0))
    with pytest.raises(ValueError, match="preprocessed_spacing: inconsistent dimensions"):
        preprocessed_spacing([3.0, 1.0], (2, 0, 1), [80, 10, 40], (40, 15, 40))


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


#: every trainer nnunet-shape ships: base classes (nnU-Net's schedule, 1000 epochs of 250
#: iterations, 50 validation iterations) and their length variants (epochs, iterations, val iterations)
BASE_TRAINER_MODULES = {
    "nnUNetTrainerShapeDescriptors": shape_trainers,
    "nnUNetTrainerShapeDescriptorsVC": shape_trainers,
    "nnUNetTrainerShapeDescriptorsVCDS": shape_trainers,
    "nnUNetTrainerShapeDescriptorsGrowingT": shape_trainers,
    "nnUNetTrainerShapeDescriptorsImageAware": shape_trainers,
    "nnUNetTrainerShapeDescriptorsIntensity": shape_trainers,
    "nnUNetTrainerShapeDescriptorsTemplate": shape_trainers,
    "nnUNetTrainerShapeFullSupervision": shape_trainers,
    "nnUNetTrainerShapeDescriptorsFromFile": from_file,
    "nnUNetTrainerShapePopulationPrior": population_prior,
    "nnUNetTrainerShapePopulationPriorImageAware": population_prior,
    "nnUNetTrainerShapeDescriptorsRecon": shape_reconstruction,
}
SCHEDULES = {"": (1000, 250, 50), "_5epochs": (5, 250, 50), "_50epochs": (50, 250, 50),
             "_250epochs": (250, 250, 50), "_demo": (12, 50, 2), "_suite": (10, 50, 2), "_debug": (1, 3, 1)}
ALL_TRAINERS = {base + suffix: (base, schedule)
                for base in BASE_TRAINER_MODULES for suffix, schedule in SCHEDULES.items()}
#: class attributes a length variant may change; every other one is its base's
SCHEDULE_ATTRIBUTES = ("training_epochs", "iterations_per_epoch", "val_iterations_per_epoch", "progress_plot_every")


def test_every_trainer_name_is_an_explicit_class_that_nnunet_finds_with_its_schedule(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    assert len(ALL_TRAINERS) == 84
    # exported by the library modules (the trainers folder re-exports exactly these)
    assert (set(shape_trainers.TRAINER_NAMES) | set(from_file.TRAINER_NAMES)
            | set(population_prior.TRAINER_NAMES) | set(shape_reconstruction.TRAINER_NAMES)) == set(ALL_TRAINERS)
    folder = subprocess.run([str(Path(sys.executable).parent / "nnunet-shape"), "trainers-dir"], check=True,
                            capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("nnUNet_extTrainer", folder)
    for name, (base_name, schedule) in ALL_TRAINERS.items():
        module = BASE_TRAINER_MODULES[base_name]
        cls = recursive_find_trainer_class_by_name(name)
        # the library's class (picklable), not a copy from the trainers folder
        assert cls is getattr(module, name) and cls.__module__ == module.__name__, name
        assert (cls.training_epochs, cls.iterations_per_epoch, cls.val_iterations_per_epoch) == schedule, name
        if name == base_name:
            continue
        # written as a class statement (greppable), not generated
        assert re.search(rf"^class {name}\(", inspect.getsource(module), re.MULTILINE), name
        base = getattr(module, base_name)
        assert issubclass(cls, base)
        for attribute in dir(base):
            if attribute.startswith("__") or attribute in SCHEDULE_ATTRIBUTES:
                continue
            # static lookup: a classmethod bound to the variant is still the base's
            assert inspect.getattr_static(cls, attribute) == inspect.getattr_static(base, attribute), (name, attribute)


def test_trainer_names_are_the_nnunet_trainers_a_module_defines_in_order():
    import types

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_shape.nnunet.training.variants import DebugSchedule, trainer_names

    module = types.ModuleType("some_trainers")

    def define(name: str, *bases: type) -> None:
        setattr(module, name, type(name, bases, {"__module__": module.__name__}))

    # imported: nnU-Net's trainer, a trainer built on, a schedule; defined: trainers and non-trainers
    module.nnUNetTrainer = nnUNetTrainer
    module.nnUNetTrainerShapeDescriptors = nnUNetTrainerShapeDescriptors
    module.DebugSchedule = DebugSchedule
    module.LIMIT = 3
    define("SomeLoader")
    define("nnUNetTrainerB", nnUNetTrainerShapeDescriptors)
    define("SomeMixin", DebugSchedule)
    define("nnUNetTrainerA", nnUNetTrainer)
    define("nnUNetTrainerB_debug", DebugSchedule, module.nnUNetTrainerB)
    assert trainer_names(vars(module)) == ("nnUNetTrainerB", "nnUNetTrainerA", "nnUNetTrainerB_debug")
    # a real module: its trainer and the six lengths, not the imported nnUNetTrainerShapeDescriptors
    recon = "nnUNetTrainerShapeDescriptorsRecon"
    assert trainer_names(vars(shape_reconstruction)) == shape_reconstruction.TRAINER_NAMES == (
        recon, f"{recon}_5epochs", f"{recon}_50epochs", f"{recon}_250epochs", f"{recon}_demo", f"{recon}_suite",
        f"{recon}_debug")
    assert shape_reconstruction.nnUNetTrainerShapeDescriptors is nnUNetTrainerShapeDescriptors


def test_label_trainer_hands_the_loss_bounds_from_the_label_map(planned, monkeypatch):
    """The one target path of the label trainers: the augmented label map -> descriptor bounds
    (+-10 % volume) in the case's preprocessed spacing -> the loss, always as DescriptorBounds."""
    root, _ = planned
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch)
    trainer.initialize()
    batch = first_batch(trainer, WholeCaseDataLoader, 2)
    bounds, spacing = trainer._loss_targets(batch)
    assert isinstance(bounds, DescriptorBounds)
    # Dataset701_Tiny: (z, y, x) spacing (2, 1, 1) everywhere, so nothing is resampled
    assert spacing.tolist() == [[2.0, 1.0, 1.0], [2.0, 1.0, 1.0]]
    seg = batch["target"].numpy()
    for case in range(2):
        for label in (1, 2):
            volume = float((seg[case, 0] == label).sum()) * 2.0
            assert volume > 0
            assert bounds.lower["volume"][case, label].item() == pytest.approx(0.9 * volume)
            assert bounds.upper["volume"][case, label].item() == pytest.approx(1.1 * volume)

    targets = []
    forward = trainer.loss.forward
    monkeypatch.setattr(trainer.loss, "forward", lambda probs, target, *args, **kwargs: (
        targets.append(target), forward(probs, target, *args, **kwargs))[1])
    trainer.network.train()
    trainer.train_step(batch)
    assert len(targets) == 1 and isinstance(targets[0], DescriptorBounds)
    assert torch.equal(targets[0].lower["volume"], bounds.lower["volume"])


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
    best = max(trainer.logger.get_value("ema_val_descriptor_satisfaction_hard", step=None))

    resumed = make_trainer(root, _ThreeEpochsGrowingT, monkeypatch)
    assert resumed.barrier_schedule.t == pytest.approx(1.0)
    resumed.load_checkpoint(str(final))
    # t of epoch 2 = 1.0 * 1.1 ** 2, as if training had never stopped
    assert resumed.barrier_schedule.t == pytest.approx(1.21)
    assert resumed.current_epoch == 2
    assert resumed._best_satisfaction == pytest.approx(best)


def test_checkpoint_best_follows_hard_descriptor_satisfaction_not_soft_nor_dice(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, _TwoEpochsGrowingT, monkeypatch)
    trainer.initialize()
    saved = []
    monkeypatch.setattr(trainer, "save_checkpoint", lambda filename: saved.append(Path(filename).name))
    monkeypatch.setattr(trainer.logger, "plot_progress_png", lambda folder: None)
    # (EMA hard-prediction descriptor satisfaction, pseudo Dice) per epoch: Dice and the soft
    # output's satisfaction (1 - hard) move opposite to the hard prediction's satisfaction
    for epoch, (satisfaction, dice) in enumerate([(0.2, 0.9), (0.5, 0.1), (0.4, 1.0)]):
        soft = 1.0 - satisfaction
        log = trainer.logger.log
        for key, value in [("epoch_start_timestamps", 0.0), ("barrier_t", 1.0), ("lrs", 0.01),
                           ("train_losses", 1.0), ("val_losses", 1.0), ("mean_fg_dice", dice),
                           ("dice_per_class_or_region", [dice, dice]),
                           ("train_descriptor_satisfaction", soft),
                           ("val_descriptor_satisfaction", soft),
                           ("ema_val_descriptor_satisfaction", soft),
                           ("train_descriptor_satisfaction_hard", satisfaction),
                           ("val_descriptor_satisfaction_hard", satisfaction),
                           ("ema_val_descriptor_satisfaction_hard", satisfaction)]:
            log(key, value, epoch)
        for name in trainer.descriptors:
            log(f"val_satisfied_{name}", [soft, soft], epoch)
            log(f"val_hard_satisfied_{name}", [satisfaction, satisfaction], epoch)
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


class _VolumeOnly(nnUNetTrainerShapeDescriptors):
    descriptors = ("volume",)


def test_hard_prediction_is_the_argmax_one_hot_and_thresholds_regions():
    from nnunet_shape.nnunet.training.shape_trainers import hard_prediction

    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]]).T.reshape(1, 3, 3, 1, 1)
    assert hard_prediction(p, regions=False)[0, :, :, 0, 0].T.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert hard_prediction(p, regions=True)[0, :, :, 0, 0].T.tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_soft_satisfaction_1_and_hard_satisfaction_0_are_both_measured_and_logged(planned, monkeypatch):
    """p = (0.5, 0.25, 0.25) everywhere: the soft volumes of blob_a and blob_b are exactly the
    labels' (a quarter of the voxels each), but background wins the argmax everywhere, so the
    prediction the user gets has neither class."""
    root, _ = planned
    trainer = make_trainer(root, _VolumeOnly, monkeypatch)
    trainer.initialize()
    shape = (2, 4, 4)
    labels = torch.zeros(1, 1, *shape)
    labels[:, :, 0, :2] = 1
    labels[:, :, 1, :2] = 2
    spacing = torch.ones(1, 3)
    bounds = trainer.loss.make_bounds(labels, 3, shape, spacing)
    monkeypatch.setattr(trainer, "_loss_targets", lambda batch: (bounds, spacing))
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).view(1, 3, 1, 1, 1).expand(1, 3, *shape)
    trainer.network = lambda data: logits.clone()
    _, _, codes = trainer._descriptor_step({"data": torch.zeros(1, 1, *shape)})
    codes = trainer._host_codes(codes)
    assert codes["satisfied_volume"].tolist() == [[-1, 1, 1]]  # background is not constrained
    assert codes["hard_satisfied_volume"].tolist() == [[-1, 0, 0]]
    assert trainer._satisfaction_per_class(codes)["volume"].tolist() == [1.0, 1.0]
    assert trainer._satisfaction_per_class(codes, "hard_satisfied_")["volume"].tolist() == [0.0, 0.0]
    # the per-class soft-hard gap in the training log
    for key, value in [("train_losses", 1.0), ("val_losses", 1.0), ("barrier_t", 5.0),
                       ("train_descriptor_satisfaction", 1.0), ("val_descriptor_satisfaction", 1.0),
                       ("ema_val_descriptor_satisfaction", 1.0), ("train_descriptor_satisfaction_hard", 0.0),
                       ("val_descriptor_satisfaction_hard", 0.0), ("ema_val_descriptor_satisfaction_hard", 0.0),
                       ("val_satisfied_volume", [1.0, 1.0]), ("val_hard_satisfied_volume", [0.0, 0.0])]:
        trainer.logger.log(key, value, 0)
    trainer._print_descriptor_report()
    log = Path(trainer.log_file).read_text()
    assert ("hard-prediction satisfied (val) volume     blob_a: 0.00 (soft-hard gap +1.00), "
            "blob_b: 0.00 (soft-hard gap +1.00)") in log
    assert "hard-prediction satisfaction (train/val/val EMA, selects checkpoint_best): 0.000 / 0.000 / 0.000" in log


def test_image_aware_terms_are_off_in_paper_000s_trainer_and_weighted_in_the_image_aware_one(planned, monkeypatch):
    from nnunet_shape.core.image_terms import edge_aware_boundary, prediction_entropy, region_homogeneity

    root, _ = planned
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 6, 5, 4, generator=generator), 1)
    image = torch.randn(2, 1, 6, 5, 4, generator=generator)
    spacing = torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 1.5]])
    paper = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch)
    assert (paper.homogeneity_weight, paper.edge_weight, paper.entropy_weight) == (0.0, 0.0, 0.0)
    assert paper._extra_loss(image, probs, spacing).item() == 0.0
    aware = make_trainer(root, shape_trainers.nnUNetTrainerShapeDescriptorsImageAware, monkeypatch)
    assert aware.descriptors == ("volume", "centroid", "spread")
    expected = (aware.homogeneity_weight * region_homogeneity(probs, image, normalize=True)
                + aware.edge_weight * edge_aware_boundary(probs, image, aware.edge_sigma, spacing, normalize=True)
                + aware.entropy_weight * prediction_entropy(probs, normalize=True))
    assert aware._extra_loss(image, probs, spacing).item() == pytest.approx(expected.item(), rel=1e-6)
    assert min(aware.homogeneity_weight, aware.edge_weight, aware.entropy_weight) > 0


def test_image_aware_trainer_end_to_end_through_nnunetv2_train(planned):
    from e2e_helpers import run_cli, train_env

    root, env = planned
    trainer = "nnUNetTrainerShapeDescriptorsImageAware_debug"
    run_cli(["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
            {**train_env(env), "nnUNetShape_seed": "0"}, log=root / f"train_{trainer}.log")
    fold = results_fold(root, DATASET, trainer)
    log = newest_training_log(fold)
    assert "seed: 0 (from nnUNetShape_seed)" in log
    assert "hard-prediction satisfied (val) volume" in log and "soft-hard gap" in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer and checkpoint["logging"]["seed"] == [0]
    assert len(checkpoint["logging"]["ema_val_descriptor_satisfaction_hard"]) == 1
    assert (fold / "progress_descriptors.png").is_file()


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



#: tensor methods that copy to the host (on CUDA: wait for the device); ``float(t)``, ``if t:``
#: and ``int(t)`` go through the dunder methods
HOST_ROUND_TRIPS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
#: (function, file) that read a tensor on the host in their CPU branch only; on CUDA they do not
#: (checked with --device cuda, where this list does not apply)
HOST_ONLY_BRANCHES = {
    ("_check_spacing_values", "descriptors.py"),  # spacing_tensor checks host tensors only
    ("observe", "losses.py"),  # LabelRangeCheck: on CUDA an asynchronous copy behind an event
}


def test_descriptor_train_step_queues_forward_loss_and_backward_without_host_round_trips(device, planned,
                                                                                         monkeypatch):
    """From the start of ``train_step`` until ``backward`` returns, no tensor is read on the host,
    so on a GPU the step's forward, loss and backward are queued without waiting for the device."""
    root, _ = planned
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch, device=str(device))
    trainer.initialize()
    batch = first_batch(trainer, WholeCaseDataLoader, 2)
    trainer.train_step(batch)  # the first step reads each case's spacing from disk once (cached after)

    calls: list[str] = []
    watching = [False]

    def spy_on(name: str):
        original = getattr(torch.Tensor, name)

        def spy(tensor, *args, **kwargs):
            if watching[0]:
                caller = traceback.extract_stack(limit=2)[0]
                where = (caller.name, Path(caller.filename).name)
                if not (tensor.device.type == "cpu" and where in HOST_ONLY_BRANCHES):
                    calls.append(f"Tensor.{name} in {where[0]} ({where[1]}:{caller.lineno})")
            return original(tensor, *args, **kwargs)

        return spy

    for name in HOST_ROUND_TRIPS:
        monkeypatch.setattr(torch.Tensor, name, spy_on(name))
    backward = torch.Tensor.backward

    def backward_then_stop_watching(tensor, *args, **kwargs):
        backward(tensor, *args, **kwargs)
        watching[0] = False

    monkeypatch.setattr(torch.Tensor, "backward", backward_then_stop_watching)
    watching[0] = True
    result = trainer.train_step(batch)
    assert not watching[0], "train_step never called backward"
    assert calls == [], "host round trips before backward returned:\n" + "\n".join(calls)
    # what the epoch end needs still comes back as host arrays, made after the step
    assert isinstance(result["loss"], np.ndarray)
    for name in trainer.descriptors:
        codes = result[f"satisfied_{name}"]
        assert isinstance(codes, np.ndarray) and codes.dtype == np.int8 and codes.shape[0] == 2


IDENTITY = np.eye(3)
SWAP_X_Z = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # ITK i runs superior, k runs left


@pytest.mark.parametrize("value, expected", [
    ("LR", ("LR",)), (" lr, Si ", ("LR", "SI")), ("RL,PA,IS", ("LR", "AP", "SI")), (("AP",), ("AP",)),
    ("0,2", None), ("none", None), ("", None), ((0, 2), None),
])
def test_anatomical_mirror_names(value, expected):
    assert anatomical_mirror_names(value) == expected


@pytest.mark.parametrize("value", ["LR,0", "XY", "LR,up"])
def test_anatomical_mirror_names_refuse_mixtures_and_unknown_names(value):
    with pytest.raises(ValueError, match="LR, AP, SI") as error:
        anatomical_mirror_names(value)
    assert MIRROR_AXES_ENV in str(error.value)


@pytest.mark.parametrize("names, direction, transpose_forward, ndim, expected", [
    # raw array axes are ITK (k, j, i): identity direction -> SI, AP, LR
    (("LR",), IDENTITY, (0, 1, 2), 3, (2,)),
    (("SI", "AP"), IDENTITY, (0, 1, 2), 3, (0, 1)),
    # preprocessed axis p is raw axis transpose_forward[p]
    (("LR",), IDENTITY, (2, 0, 1), 3, (0,)),
    (("AP",), IDENTITY, (2, 0, 1), 3, (2,)),
    (("LR",), SWAP_X_Z, (0, 1, 2), 3, (0,)),
    # 2D: the patch axes are the array's last two
    (("LR",), IDENTITY, (0, 1, 2), 2, (1,)),
    (("AP", "LR"), IDENTITY, (0, 1, 2), 2, (0, 1)),
])
def test_anatomical_mirror_axes_follow_direction_and_transpose(names, direction, transpose_forward, ndim, expected):
    frames = {"a": AnatomicalFrame.from_direction(direction, transpose_forward),
              "b": AnatomicalFrame.from_direction(-direction, transpose_forward)}  # flipped axes: same array axes
    assert anatomical_mirror_axes(names, frames, ndim, MIRROR_AXES_ENV) == expected


def test_anatomical_mirror_axes_refuse_disagreeing_cases_oblique_directions_and_the_2d_slice_axis():
    frames = {"case_a": AnatomicalFrame.from_direction(IDENTITY), "case_b": AnatomicalFrame.from_direction(SWAP_X_Z)}
    with pytest.raises(ValueError, match=r"disagree on which array axis is LR \(array axis 0 in case_b; "
                                         r"array axis 2 in case_a\)"):
        anatomical_mirror_axes(("LR",), frames, 3, MIRROR_AXES_ENV)
    # AP is array axis 1 in both: accepted
    assert anatomical_mirror_axes(("AP",), frames, 3, MIRROR_AXES_ENV) == (1,)
    angle = np.radians(30)
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="oblique"):
        anatomical_mirror_axes(("LR",), {"c": AnatomicalFrame.from_direction(oblique)}, 3, MIRROR_AXES_ENV)
    with pytest.raises(ValueError, match="SI is the slice axis of this 2D configuration"):
        anatomical_mirror_axes(("SI",), {"c": AnatomicalFrame.from_direction(IDENTITY)}, 2, MIRROR_AXES_ENV)


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_anatomical_mirror_axes_reach_augmentation_and_are_logged(planned, monkeypatch, configuration):
    root, _ = planned
    monkeypatch.setenv(MIRROR_AXES_ENV, "LR")
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch, configuration=configuration)
    # the tiny dataset has the identity direction: LR is raw array axis 2 (ITK i)
    axis = list(trainer.plans_manager.transpose_forward).index(2)
    expected = (axis,) if configuration == "3d_fullres" else (axis - 1,)
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == expected and trainer.inference_allowed_mirroring_axes == expected
    log = Path(trainer.log_file).read_text()
    ndim = 3 if configuration == "3d_fullres" else 2
    assert f"mirror axes LR (from {MIRROR_AXES_ENV}) are array axes {expected} of the {ndim}D patch" in log


class _FiveEpochsPlotEveryTwo(nnUNetTrainerShapeDescriptors):
    training_epochs = 5
    iterations_per_epoch = 1
    val_iterations_per_epoch = 1
    progress_plot_every = 2


class _FiveEpochsFullSupervisionPlotEveryTwo(shape_trainers.nnUNetTrainerShapeFullSupervision):
    training_epochs = 5
    iterations_per_epoch = 1
    val_iterations_per_epoch = 1
    progress_plot_every = 2


@pytest.mark.parametrize("trainer_class", [_FiveEpochsPlotEveryTwo, _FiveEpochsFullSupervisionPlotEveryTwo])
def test_progress_plots_after_every_nth_and_the_last_epoch(planned, monkeypatch, trainer_class):
    """progress_plot_every = 2 over 5 epochs: nnU-Net's progress.png (and the descriptor trainers'
    own plot) after epochs 2, 4 and 5 (1-based), never in between; the other epoch-end work (the
    epoch counter, checkpoint_best) is done every epoch."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    root, _ = planned
    trainer = make_trainer(root, trainer_class, monkeypatch)
    nnunet_plots, descriptor_plots = [], []
    monkeypatch.setattr(MetaLogger, "plot_progress_png",
                        lambda self, folder: nnunet_plots.append(trainer.current_epoch))
    monkeypatch.setattr(shape_trainers, "plot_descriptor_progress",
                        lambda *args, **kwargs: descriptor_plots.append(trainer.current_epoch))
    ends = []
    original_end = trainer_class.on_epoch_end
    monkeypatch.setattr(trainer_class, "on_epoch_end", lambda self: (ends.append(self.current_epoch),
                                                                     original_end(self))[1])
    trainer.run_training()
    assert ends == [0, 1, 2, 3, 4]
    assert nnunet_plots == [1, 3, 4]
    assert descriptor_plots == ([1, 3, 4] if trainer_class is _FiveEpochsPlotEveryTwo else [])
    # the logger's own method is back after the skipped epochs
    assert "plot_progress_png" not in vars(trainer.logger)
    assert (Path(trainer.output_folder) / "checkpoint_best.pth").is_file()


def test_progress_plot_every_must_be_positive(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, _FiveEpochsPlotEveryTwo, monkeypatch)
    trainer.progress_plot_every = 0
    with pytest.raises(ValueError, match="_FiveEpochsPlotEveryTwo.progress_plot_every must be >= 1, not 0"):
        trainer._plots_progress_now()


def test_the_demo_schedule_plots_every_fourth_epoch_and_nnunets_lengths_every_epoch():
    assert shape_trainers.nnUNetTrainerShapeDescriptors_demo.progress_plot_every == 4
    for suffix in ("", "_5epochs", "_50epochs", "_250epochs", "_debug"):
        assert getattr(shape_trainers, f"nnUNetTrainerShapeDescriptors{suffix}").progress_plot_every == 1, suffix


@pytest.mark.parametrize("channels_last", [True, False])
def test_cpu_training_keeps_weights_channels_last_with_the_same_outputs(planned, monkeypatch, channels_last):
    """channels_last_on_cpu: after initialize every 5-D weight is channels-last (oneDNN's faster
    layout on a CPU), the parameters are the optimiser's own objects, and the network computes
    what the same weights compute in the default layout; off, the layout stays the default."""
    root, _ = planned
    trainer_class = type("_Layout", (nnUNetTrainerShapeDescriptors,), {"channels_last_on_cpu": channels_last})
    trainer = make_trainer(root, trainer_class, monkeypatch)
    trainer.initialize()
    weights = [p for p in trainer.network.parameters() if p.ndim == 5]
    assert weights
    # (a weight with one input channel or a 1x1x1 kernel is both; the 3x3x3 convs are one or the other)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) if channels_last else p.is_contiguous()
               for p in weights)
    assert any(not p.is_contiguous() for p in weights) == channels_last
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.network.parameters() if p.requires_grad} <= optimised
    batch = first_batch(trainer, WholeCaseDataLoader, 2)
    data = torch.as_tensor(batch["data"]).float()
    import copy

    default_layout = copy.deepcopy(trainer.network).to(memory_format=torch.contiguous_format)
    assert all(p.is_contiguous() for p in default_layout.parameters())
    trainer.network.eval()
    default_layout.eval()
    with torch.no_grad():
        torch.testing.assert_close(trainer.network(data), default_layout(data), rtol=1e-4, atol=1e-4)
    # a training step runs in this layout
    trainer.network.train()
    trainer.train_step(batch)
    assert any(not p.is_contiguous() for p in weights) == channels_last


def test_reconstruction_network_is_channels_last_on_cpu_too(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, shape_reconstruction.nnUNetTrainerShapeDescriptorsRecon, monkeypatch)
    trainer.initialize()
    weights = [p for p in trainer.reconstruction_network.parameters() if p.ndim == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)


def test_template_weight_decays_linearly_to_zero_at_its_fraction_of_the_epochs(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, shape_trainers.nnUNetTrainerShapeDescriptorsTemplate_demo, monkeypatch)
    assert (trainer.template_weight, trainer.template_decay_fraction, trainer.num_epochs) == (1.0, 0.5, 12)
    weights = []
    for epoch in range(trainer.num_epochs):
        trainer.current_epoch = epoch
        weights.append(trainer._template_weight_now())
    assert weights == pytest.approx([1 - e / 6 for e in range(6)] + [0.0] * 6)
    paper = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch)
    assert paper.template_weight == 0.0 and paper._template_weight_now() == 0.0


def test_template_term_is_the_cross_entropy_to_the_ellipsoids_of_the_batch_targets(planned, monkeypatch):
    """The step's loss = V+C+D barrier loss + w * CE(logits, ellipsoid template of the targets),
    recomputed here from the batch's label-derived bounds; w = 0 (paper 000's trainer) leaves the
    barrier loss alone."""
    from nnunet_shape.core.descriptor_templates import (
        ellipsoid_template,
        template_cross_entropy,
        template_targets_from_bounds,
    )

    root, _ = planned
    losses = {}
    for cls in (nnUNetTrainerShapeDescriptors, shape_trainers.nnUNetTrainerShapeDescriptorsTemplate):
        trainer = make_trainer(root, cls, monkeypatch)
        trainer.initialize()
        batch = first_batch(trainer, WholeCaseDataLoader, 2)
        torch.manual_seed(0)
        logits = torch.randn(2, trainer.label_manager.num_segmentation_heads, *batch["data"].shape[2:])
        trainer.network = lambda data: logits.clone()
        trainer.num_epochs, trainer.current_epoch = 12, 3  # weight 1 - 3 / 6 = 0.5 for the template trainer
        loss, _, _ = trainer._descriptor_step(batch)
        bounds, spacing = trainer._loss_targets(batch)
        barrier = trainer.loss(torch.softmax(logits, 1), bounds, spacing)
        centroid, spread, present = template_targets_from_bounds(bounds)
        template = ellipsoid_template(centroid, spread, present, logits.shape[2:], spacing)
        losses[cls] = (float(loss), float(barrier), float(template_cross_entropy(logits, template)))
        # every foreground class of the batch has an ellipsoid
        assert set(template.unique().tolist()) == set(range(trainer.label_manager.num_segmentation_heads))
    loss, barrier, _ = losses[nnUNetTrainerShapeDescriptors]
    assert loss == pytest.approx(barrier, rel=1e-6)
    loss, barrier, cross_entropy = losses[shape_trainers.nnUNetTrainerShapeDescriptorsTemplate]
    assert cross_entropy > 0 and loss == pytest.approx(barrier + 0.5 * cross_entropy, rel=1e-6)


@pytest.mark.parametrize("attributes, match", [
    ({"template_weight": -1.0}, "template_weight must be >= 0"),
    ({"template_weight": 1.0, "template_decay_fraction": 0.0}, "template_decay_fraction in"),
    ({"template_weight": 1.0, "descriptors": ("volume", "centroid")}, "needs centroid and spread targets"),
])
def test_template_settings_are_checked_when_the_trainer_is_built(planned, monkeypatch, attributes, match):
    root, _ = planned
    with pytest.raises(ValueError, match=match):
        make_trainer(root, type("_BadTemplate", (nnUNetTrainerShapeDescriptors,), attributes), monkeypatch)
