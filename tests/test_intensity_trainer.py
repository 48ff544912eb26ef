"""Intensity descriptors in the trainers: off in paper 000's trainer, per-case bounds from the labels in
nnUNetTrainerShapeDescriptorsIntensity (recomputed by hand), from descriptor files in z-score units
(FromFile, against nnU-Net's own preprocessed image), intensity_order relations of a population prior,
the refusal of other normalisation schemes, and nnUNetv2_train end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from e2e_helpers import make_trainer, run_cli, train_env

from nnunet_shape.core.bounds import DescriptorBounds
from nnunet_shape.core.intensity import IntensityBounds, IntensityBoundsTerm, intensity_values
from nnunet_shape.core.losses import shape_descriptor_loss
from nnunet_shape.core.relations import IntensityOrder
from nnunet_shape.errors import UserError
from nnunet_shape.nnunet.training.from_file import FromFileDataLoader, nnUNetTrainerShapeDescriptorsFromFile
from nnunet_shape.nnunet.training.population_prior import (
    nnUNetTrainerShapePopulationPrior,
    relations_after_affine,
)
from nnunet_shape.nnunet.training.shape_trainers import (
    nnUNetTrainerShapeDescriptors,
    nnUNetTrainerShapeDescriptorsIntensity,
)
from nnunet_shape.nnunet.training.whole_scan import WholeCaseDataLoader


def _batch(trainer, loader_class=WholeCaseDataLoader, batch_size: int = 2) -> dict:
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    patch = trainer.configuration_manager.patch_size
    return next(loader_class(dataset_tr, batch_size, patch, patch, trainer.label_manager, transforms=None))


def test_paper_000s_trainer_has_intensity_off_and_the_intensity_trainer_on(planned, monkeypatch):
    root, _ = planned
    paper = make_trainer(root, nnUNetTrainerShapeDescriptors, monkeypatch)
    assert paper.intensity_weight == 0.0 and not paper._uses_intensity()
    assert paper._satisfaction_names() == ("volume", "centroid", "spread")
    assert not any("intensity" in key for key in paper._descriptor_log_keys())
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptorsIntensity, monkeypatch)
    assert trainer.descriptors == paper.descriptors and trainer.intensity_weight == 1.0
    assert trainer._satisfaction_names() == ("volume", "centroid", "spread", "intensity_mean")
    assert {"val_satisfied_intensity_mean", "val_hard_satisfied_intensity_mean"} <= set(trainer._descriptor_log_keys())


class _Median(nnUNetTrainerShapeDescriptorsIntensity):
    intensity_statistics = ("mean", "median")


def test_unknown_intensity_statistic_is_refused(planned, monkeypatch):
    root, _ = planned
    with pytest.raises(ValueError, match=r"_Median.intensity_statistics: unknown \['median'\]"):
        make_trainer(root, _Median, monkeypatch)


def hand_bounds(data: np.ndarray, seg: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, 1) lower/upper: each class's mean of the image over its voxels +- max(0.1 |mean|, 0.1);
    the loader's padding (label -1) counts as background, as for the descriptor targets."""
    seg = np.where(seg < 0, 0, seg)
    lower = np.full((data.shape[0], classes, 1), np.nan)
    upper = np.full((data.shape[0], classes, 1), np.nan)
    for b in range(data.shape[0]):
        for k in range(classes):
            voxels = data[b, 0][seg[b, 0] == k]
            if voxels.size:
                tau = voxels.astype(np.float64).mean()
                half = max(0.1 * abs(tau), 0.1)
                lower[b, k, 0], upper[b, k, 0] = tau - half, tau + half
    return lower, upper


def test_intensity_trainer_step_adds_the_weighted_bounds_of_the_label_means_by_hand(planned, monkeypatch):
    root, _ = planned
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptorsIntensity, monkeypatch)
    trainer.initialize()
    batch = _batch(trainer)
    data, seg = batch["data"].numpy(), batch["target"].numpy()
    lower, upper = hand_bounds(data, seg, 3)
    assert np.isfinite(lower[:, 1:]).all() and lower[0, 1, 0] > lower[0, 2, 0]  # blob_a is the brighter
    bounds = trainer._intensity_bounds(batch, batch["data"].float())
    np.testing.assert_allclose(bounds.lower["mean"].numpy(), lower, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bounds.upper["mean"].numpy(), upper, rtol=1e-5, atol=1e-6)

    loss, output, satisfied = trainer._descriptor_step(batch)
    descriptor_loss = trainer.loss.last_result.loss
    probabilities = torch.softmax(output.float(), 1)
    image = batch["data"].float()
    limits = IntensityBounds({"mean": torch.from_numpy(lower).float()}, {"mean": torch.from_numpy(upper).float()})
    shape_bounds, _ = trainer._loss_targets(batch)
    term = shape_descriptor_loss(probabilities, DescriptorBounds({}, {}, present=shape_bounds.presence()),
                                 descriptors=(), priors=[IntensityBoundsTerm(limits)],
                                 values=intensity_values(probabilities, image), t=trainer.loss.t)
    assert term.loss.item() > 0  # an untrained network is far from the class means
    assert loss.item() == pytest.approx(descriptor_loss.item() + 1.0 * term.loss.item(), rel=1e-5)
    codes = trainer._host_codes(satisfied)
    assert codes["satisfied_intensity_mean"].shape == (2, 3) and (codes["satisfied_intensity_mean"][:, 0] == -1).all()
    assert set(codes["hard_satisfied_intensity_mean"][:, 1:].ravel().tolist()) <= {0, 1}
    fractions = trainer._satisfaction_per_class(codes)
    assert set(fractions) == {"volume", "centroid", "spread", "intensity_mean"}
    # the gradient reaches the network through the intensity term too
    trainer.network.zero_grad()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in trainer.network.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------- FromFile


class _FromFileIntensity(nnUNetTrainerShapeDescriptorsFromFile):
    intensity_weight = 1.0
    intensity_statistics = ("mean", "std")


def _exported(root, tmp_path, monkeypatch):
    from nnunet_shape.descriptor_files.export import export_dataset

    monkeypatch.setenv("nnUNet_raw", str(root / "nnUNet_raw"))
    export_dataset("701", output_folder=tmp_path / "descriptors", num_processes=1, intensity=True)
    monkeypatch.setenv("nnUNetShape_descriptors", str(tmp_path / "descriptors"))


def test_from_file_converts_the_files_to_the_preprocessed_images_units(planned, monkeypatch, tmp_path):
    """The file's raw class intensities, converted with its image_intensity, are the class means and
    standard deviations of the image nnU-Net preprocessed (Dataset701_Tiny: noise everywhere, so no
    crop, one spacing, so no resampling: the z-scored raw image)."""
    root, _ = planned
    _exported(root, tmp_path, monkeypatch)
    trainer = make_trainer(root, _FromFileIntensity, monkeypatch)
    trainer.initialize()
    trainer.check_descriptor_files()
    folder = trainer.preprocessed_dataset_folder
    dataset = trainer.dataset_class(folder, ["case_000"])
    data, seg, _, _ = dataset.load_case("case_000")
    data, seg = np.asarray(data[:], dtype=np.float64), np.asarray(seg[:])
    targets = trainer._intensity_targets_for_case("case_000", 1)
    for label in (1, 2):
        voxels = data[0][seg[0] == label]
        assert targets["mean"][0][label, 0] == targets["mean"][1][label, 0]
        assert targets["mean"][0][label, 0] == pytest.approx(voxels.mean(), rel=1e-4)
        assert targets["std"][0][label, 0] == pytest.approx(voxels.std(), rel=1e-4)
    assert np.isnan(targets["mean"][0][0]).all()  # background
    # in a batch: exact values widened by the intensity margins, through the loss as one more entry
    batch = _batch(trainer, FromFileDataLoader, batch_size=1)
    key = batch["keys"][0]
    tau = trainer._intensity_targets_for_case(key, 1)["mean"][0]
    bounds = trainer._intensity_bounds(batch, batch["data"].float())
    half = np.maximum(0.1 * np.abs(tau[1:]), 0.1)
    np.testing.assert_allclose(bounds.lower["mean"][0, 1:].numpy(), tau[1:] - half, rtol=1e-6)
    _, _, satisfied = trainer._descriptor_step(batch)
    assert {"satisfied_intensity_mean", "satisfied_intensity_std", "hard_satisfied_intensity_std"} <= set(satisfied)


def test_from_file_refuses_other_normalisation_schemes_naming_the_channel(planned, monkeypatch, tmp_path):
    root, _ = planned
    _exported(root, tmp_path, monkeypatch)
    trainer = make_trainer(root, _FromFileIntensity, monkeypatch)
    trainer.configuration_manager.configuration["normalization_schemes"] = ["CTNormalization"]
    with pytest.raises(UserError, match=r"image channel 0 \(MRI\) of configuration 3d_fullres is normalised with "
                                        r"CTNormalization"):
        trainer.check_descriptor_files()
    trainer.configuration_manager.configuration["normalization_schemes"] = ["ZScoreNormalization"]
    trainer.configuration_manager.configuration["use_mask_for_norm"] = [True]
    with pytest.raises(UserError, match="ZScoreNormalization with use_mask_for_norm"):
        trainer._intensity_targets_for_case("case_000", 1)


# ------------------------------------------------------------------------------ population prior

PRIOR = {"schema": "nnunet-shape/population-prior/v1", "frame": "LPS",
         "classes": {"blob_a": {"label": 1}, "blob_b": {"label": 2}},
         "relations": [{"type": "intensity_order", "brighter": "blob_a", "darker": "blob_b",
                        "min_difference_std": 1.0}]}


def test_intensity_order_survives_every_augmentation():
    relation = IntensityOrder(1, 2, 0, 1.0)
    c, s = math.cos(0.3), math.sin(0.3)
    rotation = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    assert relations_after_affine([relation], rotation) == (relation,)
    assert relations_after_affine([relation], np.diag([-1.0, 2.0, 1.0])) == (relation,)


def test_population_prior_trainer_enforces_intensity_orders(planned, monkeypatch, tmp_path):
    root, _ = planned
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps(PRIOR))
    monkeypatch.setenv("nnUNetShape_population_prior", str(prior))
    trainer = make_trainer(root, nnUNetTrainerShapePopulationPrior, monkeypatch)
    trainer.initialize()
    assert trainer._uses_intensity()
    trainer.check_descriptor_files()
    batch = _batch(trainer, FromFileDataLoader, batch_size=1)
    loss, output, satisfied = trainer._descriptor_step(batch)
    name = "relation_intensity_order_1_2_c0"
    term = trainer.loss.last_result.terms[name]
    # recomputed by hand: the soft class means of the network's output on the batch's image
    probabilities = torch.softmax(output.float(), 1)
    mean = intensity_values(probabilities, batch["data"].float())["intensity_mean"][0, :, 0]
    difference = (mean[1] - mean[2]).item()
    z = (1.0 - difference) / 0.1  # one-sided: 10 % of the minimum difference, floor 0.1
    t = trainer.loss.t
    expected = -math.log(-z) / t if z <= -1 / t**2 else t * z - math.log(1 / t**2) / t + 1 / t
    assert term.item() == pytest.approx(expected, rel=1e-5)
    assert satisfied["satisfied_relations"].shape == (1, 3)
    # soft and hard are measured apart: a nearly uniform soft output whose argmax thresholds the image
    # (blob_a where it is bright, blob_b where it is dark) violates the order softly, satisfies it hard
    data = batch["data"].float()
    logits = 0.01 * torch.cat([torch.zeros_like(data), (data > 1).float(), (data < -1).float()], dim=1)
    monkeypatch.setattr(trainer, "network", lambda x: logits.clone())
    _, _, codes = trainer._descriptor_step(batch)
    codes = trainer._host_codes(codes)
    assert codes["satisfied_relations"].tolist() == [[-1, 0, 0]]
    assert codes["hard_satisfied_relations"].tolist() == [[-1, 1, 1]]
    # a scheme other than z-score without mask is refused before training
    trainer.configuration_manager.configuration["normalization_schemes"] = ["RescaleTo01Normalization"]
    with pytest.raises(UserError, match=r"intensity_order relations of .*prior.json are in nnU-Net's z-score units, "
                                        r"but image channel 0 \(MRI\)"):
        trainer.check_descriptor_files()


class _PriorWithIntensityWeight(nnUNetTrainerShapePopulationPrior):
    intensity_weight = 1.0


def test_population_prior_trainer_has_no_per_case_intensities(planned, monkeypatch):
    root, _ = planned
    with pytest.raises(ValueError, match="intensity_weight must be 0"):
        make_trainer(root, _PriorWithIntensityWeight, monkeypatch)


# ------------------------------------------------------------------------------------ end to end


def test_intensity_trainer_end_to_end_through_nnunetv2_train(planned):
    root, env = planned
    trainer = "nnUNetTrainerShapeDescriptorsIntensity_debug"
    run_cli(["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
            {**train_env(env), "nnUNetShape_seed": "0"}, log=root / f"train_{trainer}.log")
    fold = root / "nnUNet_results" / "Dataset701_Tiny" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "descriptor satisfied (val) intensity_mean" in log
    assert "hard-prediction satisfied (val) intensity_mean" in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    assert len(checkpoint["logging"]["val_satisfied_intensity_mean"]) == 1
    assert len(checkpoint["logging"]["val_satisfied_intensity_mean"][0]) == 2  # blob_a, blob_b
    assert (fold / "progress_descriptors.png").is_file()
