"""nnUNetTrainerShapePopulationPrior: the prior in each case's frame, relations under the
augmentation, and the real CLIs on a dataset whose labels are placeholders.

The dataset has a non-identity direction and anisotropic spacing (x spacing 2 mm, so nnU-Net's
``transpose_forward`` is (2, 0, 1)): array axes (k, j, i) run along (+left, +superior,
-posterior); the preprocessed axes (after the transpose) along (-posterior, +left, +superior).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_helpers import (
    first_batch,
    make_trainer,
    newest_training_log,
    nnunet_env,
    predict_test_cases,
    run_cli,
    train_without_label_arrays,
    write_tiny_dataset,
)

from nnunet_shape.core.priors import PriorContext
from nnunet_shape.core.relations import CentroidOffset, DescriptorRatio, NestedCentroid
from nnunet_shape.nnunet.training.from_file import FromFileDataLoader
from nnunet_shape.nnunet.training.population_prior import (
    PerSampleRelation,
    batch_relations,
    nnUNetTrainerShapePopulationPrior,
    relations_after_affine,
)

sitk = pytest.importorskip("SimpleITK")

DATASET_ID = 716
DATASET = "Dataset716_Tiny"
#: ITK direction, rows = world L, P, S; columns = index i, j, k: i -> -P, j -> +S, k -> +L
DIRECTION = ((0.0, 0.0, 1.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
SPACING_ZYX = (1.0, 1.0, 2.0)

PRIOR = {
    "schema": "nnunet-shape/population-prior/v1",
    "frame": "LPS",
    "classes": {
        "blob_a": {"label": 1, "volume_mm3": {"min": 100.0, "max": 800.0},
                   "spread_mm": {"posterior": {"min": 2.0, "max": 5.0}, "superior": {"min": 3.0, "max": 6.0}},
                   "fov_fraction": {"superior": {"min": 0.1, "max": 0.7}}},
        "blob_b": {"label": 2, "presence": "optional", "volume_mm3": {"max": 900.0}},
    },
    "relations": [
        {"type": "centroid_offset", "from": "blob_a", "to": "blob_b",
         "offset_mm": {"superior": {"min": -3.0, "max": 12.0}, "posterior": {"min": 1.0, "max": 4.0}}},
        {"type": "volume_ratio", "numerator": "blob_b", "denominator": "blob_a", "ratio": {"min": 0.3, "max": 3.0}},
        {"type": "spread_ratio", "numerator": "blob_b", "denominator": "blob_a",
         "ratio": {"left": {"min": 0.5, "max": 2.0}}},
    ],
}


@pytest.fixture(scope="module")
def oriented(tmp_path_factory) -> tuple[Path, dict]:
    """Dataset716: the tiny two-blob dataset with DIRECTION and SPACING_ZYX, its labels replaced by
    placeholders (a prior learnt from the real ones first), planned for 3d_fullres."""
    root = tmp_path_factory.mktemp("prior")
    folder = write_tiny_dataset(root / "nnUNet_raw", dataset_id=DATASET_ID, n_train=5, n_test=1,
                                spacing_zyx=SPACING_ZYX)
    for path in folder.rglob("*.nii.gz"):
        image = sitk.ReadImage(str(path))
        image.SetDirection(tuple(v for row in DIRECTION for v in row))
        sitk.WriteImage(image, str(path))
    env = nnunet_env(root)
    learnt = root / "learnt_prior.json"
    run_cli(["nnunet-shape", "population-prior", "-d", str(DATASET_ID), "-o", str(learnt)], env)
    shutil.rmtree(folder / "labelsTr")
    shutil.rmtree(folder / "labelsTs")
    run_cli(["nnunet-shape", "placeholder-labels", "-d", str(DATASET_ID)], env)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1"], env)
    (folder / "population_prior.json").write_text(json.dumps(PRIOR))
    return root, env


def test_the_dataset_is_oriented_and_transposed(oriented):
    root, _ = oriented
    plans = json.loads((root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    assert plans["transpose_forward"] == [2, 0, 1]


def test_loss_gets_the_prior_mapped_by_hand(oriented, monkeypatch, tmp_path):
    """No augmentation: the bounds handed to the loss are the prior's, mapped by hand through the
    direction, the transpose and the loader's centred placement; the relations likewise."""
    root, _ = oriented
    prior_file = tmp_path / "elsewhere.json"
    prior_file.write_text(json.dumps(PRIOR))
    monkeypatch.setenv("nnUNetShape_population_prior", str(prior_file))
    trainer = make_trainer(root, nnUNetTrainerShapePopulationPrior, monkeypatch, dataset=DATASET)
    trainer.initialize()
    patch = trainer.configuration_manager.patch_size
    batch = first_batch(trainer, FromFileDataLoader, 1)
    bounds, spacing = trainer._loss_targets(batch)
    key = batch["keys"][0]
    raw = sitk.ReadImage(str(root / "nnUNet_raw" / DATASET / "imagesTr" / f"{key}_0000.nii.gz"))
    n_raw = raw.GetSize()[::-1]  # array order (k, j, i)
    # preprocessed axes: raw axes (2, 0, 1) = (-posterior, +left, +superior); spacing (2, 1, 1); the
    # images are noise everywhere (no crop) and share one spacing (no resampling)
    assert spacing[0].tolist() == [2.0, 1.0, 1.0]
    n = (n_raw[2], n_raw[0], n_raw[1])
    shift = np.array([(p - m) // 2 for p, m in zip(patch, n)]) * np.array([2.0, 1.0, 1.0])
    nan = math.nan
    lo, hi = bounds.lower, bounds.upper
    assert lo["volume"][0].tolist()[1:] == [100.0, pytest.approx(nan, nan_ok=True)]
    assert hi["volume"][0].tolist()[1:] == [800.0, 900.0]
    np.testing.assert_allclose(lo["spread"][0, 1].numpy(), [2.0, nan, 3.0])
    np.testing.assert_allclose(hi["spread"][0, 1].numpy(), [5.0, nan, 6.0])
    # fov fraction of the superior axis = raw axis 1 from index 0: f * n * s - s / 2
    expected_lo = np.array([nan, nan, 0.1 * n_raw[1] - 0.5]) + shift
    expected_hi = np.array([nan, nan, 0.7 * n_raw[1] - 0.5]) + shift
    np.testing.assert_allclose(lo["centroid"][0, 1].numpy(), expected_lo, rtol=1e-6)
    np.testing.assert_allclose(hi["centroid"][0, 1].numpy(), expected_hi, rtol=1e-6)
    assert torch.isnan(lo["centroid"][0, 2]).all() and torch.isnan(hi["spread"][0, 2]).all()
    # relations: offset posterior [1, 4] -> axis 0 runs to -posterior: [-4, -1]; superior -> axis 2
    (group,) = trainer.loss.priors
    relations = {r.name: r for r in group.relations}
    assert all(isinstance(r, PerSampleRelation) and len(r.per_sample) == 1 for r in relations.values())
    offset = relations["relation_centroid_offset_1_2"].per_sample[0]
    np.testing.assert_allclose(offset.low, [-4.0, nan, -3.0])
    np.testing.assert_allclose(offset.high, [-1.0, nan, 12.0])
    ratio = relations["relation_volume_ratio_2_1"].per_sample[0]
    assert (ratio.low, ratio.high) == ((0.3,), (3.0,))
    spread_ratio = relations["relation_spread_ratio_2_1"].per_sample[0]
    np.testing.assert_allclose(spread_ratio.low, [nan, 0.5, nan])
    np.testing.assert_allclose(spread_ratio.high, [nan, 2.0, nan])
    # and one training step with them
    trainer.network.train()
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]) and out["satisfied_relations"].shape == (1, 3)
    # both blobs are involved in relations (codes 0/1); background in none (-1)
    assert out["satisfied_relations"][0, 0] == -1 and set(out["satisfied_relations"][0, 1:].tolist()) <= {0, 1}
    assert out["hard_satisfied_relations"].shape == (1, 3)


def _rotation_x(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


OFFSET = CentroidOffset(1, 2, (0.0, 1.0, 2.0), (0.0, 3.0, 4.0))
SPREAD = DescriptorRatio("spread", 2, 1, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
VOLUME = DescriptorRatio("volume", 2, 1, (0.5,), (2.0,))
NESTED = NestedCentroid(2, 1, 2.0)
C30, S30 = math.cos(math.radians(30)), math.sin(math.radians(30))


@pytest.mark.parametrize("matrix, offset_low, offset_high, spread_low, spread_high, nested", [
    (np.eye(3), (0, 1, 2), (0, 3, 4), (1, 2, 3), (4, 5, 6), True),
    # mirror of axis 1, uniform scaling 1.5
    (np.diag([1.5, -1.5, 1.5]), (0, -4.5, 3), (0, -1.5, 6), (1, 2, 3), (4, 5, 6), True),
    # 90 degrees about axis 0: y' = -z, z' = y; the spread ratio's axes swap
    (_rotation_x(90), (0, -4, 1), (0, -2, 3), (1, 3, 2), (4, 6, 5), True),
    # 30 degrees: the bounding box of the rotated box; per-axis relations are dropped
    (_rotation_x(30), (0, C30 * 1 - S30 * 4, S30 * 1 + C30 * 2), (0, C30 * 3 - S30 * 2, S30 * 3 + C30 * 4),
     None, None, False),
], ids=["identity", "mirror-scale", "rot90", "rot30"])
def test_relations_after_affine(matrix, offset_low, offset_high, spread_low, spread_high, nested):
    offset, spread, volume, nest = relations_after_affine((OFFSET, SPREAD, VOLUME, NESTED), matrix)
    np.testing.assert_allclose(offset.low, offset_low, atol=1e-12)
    np.testing.assert_allclose(offset.high, offset_high, atol=1e-12)
    assert volume == VOLUME
    if spread_low is None:
        assert spread is None
    else:
        assert spread.low == tuple(float(v) for v in spread_low) and spread.high == tuple(float(v) for v in spread_high)
    assert (nest == NESTED) if nested else nest is None


COLUMNS = (  # relation r of samples 0, 1, 2 (None: dropped for that sample)
    (CentroidOffset(1, 2, (-1.0, 0.0, 2.0), (1.0, 3.0, 5.0)), None,
     CentroidOffset(1, 2, (-9.0, -9.0, -9.0), (-8.0, -8.0, -8.0))),
    (CentroidOffset(2, 1, (-3.0, math.nan, 0.0), (3.0, math.nan, math.inf)),
     CentroidOffset(2, 1, (-1.0, math.nan, -2.0), (1.0, math.nan, 9.0)),
     CentroidOffset(2, 1, (-5.0, math.nan, 1.0), (5.0, math.nan, 2.0))),
    (DescriptorRatio("spread", 2, 1, (0.5, 1.0, math.nan), (2.0, 3.0, math.nan)), None,
     DescriptorRatio("spread", 2, 1, (1.0, math.nan, 0.5), (3.0, math.nan, 2.0))),
    (DescriptorRatio("volume", 2, 1, (0.5,), (2.0,)), DescriptorRatio("volume", 2, 1, (0.5,), (2.0,)),
     DescriptorRatio("volume", 2, 1, (0.5,), (2.0,))),
    (NestedCentroid(2, 1, 0.5), None, NestedCentroid(2, 1, 0.5)),
)


@pytest.mark.parametrize("columns", [COLUMNS, *((column,) for column in COLUMNS)],
                         ids=["all-kinds-together", "offset", "offset-2", "spread-ratio", "volume-ratio", "nested"])
def test_batch_relations_are_each_samples_relations_alone_and_skip_dropped_samples(columns):
    """The batched penalties (relations of one kind in one evaluation, (B, R, M) bounds) equal
    each sample's relation evaluated alone, values and gradients; dropped samples have no term."""
    torch.manual_seed(0)
    centroid = (torch.randn(3, 3, 3, dtype=torch.float64) * 5).requires_grad_()
    spread = (torch.rand(3, 3, 3, dtype=torch.float64) + 1).requires_grad_()
    volume = (torch.rand(3, 3, dtype=torch.float64) * 100 + 10).requires_grad_()
    present = torch.ones(3, 3, dtype=torch.bool)
    spacing, extent = torch.ones(1, 3, dtype=torch.float64), torch.full((1, 3), 30.0, dtype=torch.float64)
    values = {"centroid": centroid, "spread": spread, "volume": volume}
    group = batch_relations([tuple(column[b] for column in columns) for b in range(3)])
    penalties = group.penalties(PriorContext(values, present, spacing, extent, 5.0, "half_width"))
    assert list(penalties) == list(group.names) and len(group.names) == len(columns)
    batched_total = sum(pen.psi.sum() for pen in penalties.values())
    batched_grads = torch.autograd.grad(batched_total, list(values.values()), allow_unused=True)
    alone_total = torch.zeros((), dtype=torch.float64)
    for name, column in zip(group.names, columns):
        pen = penalties[name]
        for b, relation in enumerate(column):
            if relation is None:
                assert not pen.active[b].any() and pen.satisfied[b].all() and not pen.involved[b].any()
                assert (pen.psi[b] == 0).all()
                continue
            sub = PriorContext({k: v[b:b + 1] for k, v in values.items()}, present[b:b + 1], spacing, extent, 5.0,
                               "half_width")
            alone = relation.penalty(sub)
            torch.testing.assert_close(pen.psi[b:b + 1], alone.psi)
            assert torch.equal(pen.active[b:b + 1], alone.active)
            assert torch.equal(pen.satisfied[b:b + 1], alone.satisfied)
            assert torch.equal(pen.involved[b:b + 1], alone.involved)
            alone_total = alone_total + alone.psi.sum()
    alone_grads = torch.autograd.grad(alone_total, list(values.values()), allow_unused=True)
    for value, batched, expected in zip(values.values(), batched_grads, alone_grads):
        zero = torch.zeros_like(value)
        torch.testing.assert_close(zero if batched is None else batched, zero if expected is None else expected)
    # a member alone (PerSampleRelation.penalty) is the same as in the group
    first = group.relations[0]
    torch.testing.assert_close(first.penalty(PriorContext(values, present, spacing, extent, 5.0, "half_width")).psi,
                               penalties[first.name].psi)


def test_per_sample_relation_dropped_everywhere_and_mismatched_samples():
    present = torch.ones(2, 3, dtype=torch.bool)
    ctx = PriorContext({"centroid": torch.zeros(2, 3, 3)}, present, torch.ones(1, 3), torch.ones(1, 3), 5.0,
                       "half_width")
    (dropped,) = batch_relations([(None,), (None,)]).relations
    pen = dropped.penalty(ctx)
    assert pen.psi.shape == (2, 0) and pen.satisfied.all() and not pen.involved.any()
    with pytest.raises(ValueError, match="same thing"):
        batch_relations([(CentroidOffset(1, 2, (0.0,) * 3, (1.0,) * 3),),
                         (CentroidOffset(2, 1, (0.0,) * 3, (1.0,) * 3),)])
    with pytest.raises(ValueError, match="batch of 3"):
        dropped.penalty(PriorContext({"centroid": torch.zeros(3, 3, 3)}, torch.ones(3, 3, dtype=torch.bool),
                                     torch.ones(1, 3), torch.ones(1, 3), 5.0, "half_width"))


def test_population_prior_trainer_end_to_end(oriented, tmp_path):
    """The real CLIs: train from the one prior file with every preprocessed label array moved
    away (the raw labels are placeholders already), then predict."""
    root, env = oriented
    trainer = "nnUNetTrainerShapePopulationPrior_debug"
    results = train_without_label_arrays(root, DATASET, trainer, env, root / "train_prior.log", tmp_path / "segs")
    assert (results / "checkpoint_best.pth").is_file() and (results / "checkpoint_final.pth").is_file()
    report = json.loads((results / "validation" / "prior_satisfaction.json").read_text())
    assert report["cases"], report
    for row in report["cases"].values():
        assert set(row) >= {"volume", "relation_centroid_offset_1_2"}
        assert set(row["volume"]) <= {"blob_a", "blob_b"}
    log = newest_training_log(results)
    assert "population prior:" in log and "prior relations satisfied (val)" in log
    assert len(predict_test_cases(root, DATASET, trainer, env, root / "pred_prior")) == 1
