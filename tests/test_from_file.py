"""Label-free training from descriptor files: the target chain and the real CLIs.

The central check: descriptor targets exported from the RAW label files, moved analytically
through nnU-Net's preprocessing, the whole-case placement and the recorded augmentations, must
agree with the descriptors of the label map that nnU-Net's loader actually produces for the same
sample (read here only to check; the trainer never reads it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_helpers import make_trainer, run_cli, train_env

from nnunet_shape.core.descriptors import descriptors_from_labels
from nnunet_shape.nnunet.label_free import PLACEHOLDER_FLAG, PlaceholderLabelsError, write_placeholder_labels
from nnunet_shape.nnunet.training.from_file import (
    FromFileDataLoader,
    nnUNetTrainerShapeDescriptorsFromFile,
)
from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors

DATASET = "Dataset701_Tiny"


@pytest.fixture(scope="module")
def exported(planned) -> tuple[Path, dict]:
    root, env = planned
    run_cli(["nnUNetv2_export_descriptors", "-d", "701", "--np", "1"], env)
    assert len(list((root / "nnUNet_raw" / DATASET / "descriptorsTr").glob("case_*.json"))) == 5
    return root, env


def _augmenting_loader(trainer, force: dict) -> FromFileDataLoader:
    """A training loader on the REAL dataset (labels included, to check against) with the
    trainer's transforms, where the spatial transform always rotates / scales as ``force`` says."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    from nnunet_shape.nnunet.training.from_file import _walk

    configured = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    (rotation, dummy_2d, initial_patch, mirror_axes) = configured
    transforms = trainer.get_training_transforms(
        trainer.configuration_manager.patch_size, rotation, None, mirror_axes, dummy_2d,
        use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=False,
        foreground_labels=trainer.label_manager.foreground_labels, regions=None, ignore_label=None)
    for transform in _walk(transforms):
        if isinstance(transform, SpatialTransform):
            for key, value in force.items():
                setattr(transform, key, value)
    dataset_tr, _ = nnUNetTrainerShapeDescriptors.get_tr_and_val_datasets(trainer)
    return FromFileDataLoader(dataset_tr, 2, initial_patch, trainer.configuration_manager.patch_size,
                              trainer.label_manager, transforms=transforms)


@pytest.mark.parametrize("force", [
    {"p_rotation": 0.0, "p_scaling": 0.0},   # placement (+ random mirroring) only
    {"p_rotation": 1.0, "p_scaling": 0.0},
    {"p_rotation": 0.0, "p_scaling": 1.0},
    {"p_rotation": 1.0, "p_scaling": 1.0},
], ids=["placement-mirror", "rotation", "scaling", "rotation-scaling"])
def test_file_targets_follow_the_augmented_labels(exported, monkeypatch, force):
    root, _ = exported
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptorsFromFile, monkeypatch)
    trainer.initialize()
    loader = _augmenting_loader(trainer, force)
    for _ in range(3):
        batch = next(loader)
        bounds, spacing = trainer._loss_targets(batch)
        spacing = spacing.double()
        seg = batch["target"].clone()
        seg[seg < 0] = 0
        actual = descriptors_from_labels(seg, 3, spacing, ("volume", "centroid", "spread"))
        for name, relative, absolute in (("volume", 0.15, 0.0), ("centroid", 0.0, 0.75), ("spread", 0.15, 0.5)):
            lower = bounds.lower[name].double().cpu()
            upper = bounds.upper[name].double().cpu()
            value = actual[name].cpu()
            constrained = torch.isfinite(lower) & torch.isfinite(upper)
            assert constrained[:, 1:].any(), name
            # the bounds are the file value +- the trainer's margins; the label map's descriptor
            # must sit inside them up to interpolation of the augmented label map
            midpoint = (lower + upper) / 2
            half = (upper - lower) / 2
            error = (value - midpoint).abs() - half
            tolerance = relative * midpoint.abs() + absolute
            assert (error[constrained] <= tolerance[constrained]).all(), (name, batch["augmentation"], value, lower,
                                                                           upper)


def test_label_free_dataset_never_opens_label_files(exported, monkeypatch, tmp_path):
    """Train one step with every preprocessed label file moved away."""
    root, _ = exported
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptorsFromFile, monkeypatch)
    folder = Path(trainer.preprocessed_dataset_folder)
    moved = tmp_path / "segs"
    moved.mkdir()
    for seg in folder.glob("*_seg.*"):
        shutil.move(str(seg), moved / seg.name)
    try:
        trainer.initialize()
        dataset_tr, _ = trainer.get_tr_and_val_datasets()
        loader = FromFileDataLoader(dataset_tr, 1, trainer.configuration_manager.patch_size,
                                    trainer.configuration_manager.patch_size, trainer.label_manager)
        batch = next(loader)
        assert (batch["target"] <= 0).all()  # no label information reached the batch
        trainer.network.train()
        out = trainer.train_step(batch)
        assert np.isfinite(out["loss"])
    finally:
        for seg in moved.iterdir():
            shutil.move(str(seg), folder / seg.name)


def test_missing_descriptor_file_names_the_case(exported, monkeypatch, tmp_path):
    root, _ = exported
    folder = tmp_path / "descriptors"
    shutil.copytree(root / "nnUNet_raw" / DATASET / "descriptorsTr", folder)
    (folder / "case_002.json").unlink()
    monkeypatch.setenv("nnUNetShape_descriptors", str(folder))
    trainer = make_trainer(root, nnUNetTrainerShapeDescriptorsFromFile, monkeypatch)
    trainer.initialize()
    with pytest.raises(KeyError, match="case_002"):
        trainer._targets_for_case("case_002")


def test_2d_configuration_is_refused(planned, monkeypatch):
    root, _ = planned
    with pytest.raises(ValueError, match="2D"):
        make_trainer(root, nnUNetTrainerShapeDescriptorsFromFile, monkeypatch, configuration="2d")


def test_placeholder_labels_are_refused_by_label_trainers(tmp_path, monkeypatch):
    from e2e_helpers import write_tiny_dataset

    folder = write_tiny_dataset(tmp_path / "nnUNet_raw", n_train=2, n_test=0)
    shutil.rmtree(folder / "labelsTr")
    written = write_placeholder_labels(folder)
    assert len(written) == 2
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json[PLACEHOLDER_FLAG] is True
    import SimpleITK as sitk

    label = sitk.ReadImage(str(written[0]))
    image = sitk.ReadImage(str(folder / "imagesTr" / "case_000_0000.nii.gz"))
    assert label.GetSize() == image.GetSize() and np.allclose(label.GetSpacing(), image.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(label))) == {1}
    with pytest.raises(PlaceholderLabelsError, match="nnUNetTrainerShapeDescriptorsFromFile"):
        nnUNetTrainerShapeDescriptors({"dataset_name": "Dataset701_Tiny", "continue_training": False},
                                      "3d_fullres", 0, dataset_json, torch.device("cpu"))


def test_from_file_trainer_end_to_end(exported, tmp_path):
    """The real CLIs: train from descriptor files with the label arrays moved away, then predict."""
    root, env = exported
    folder = root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    moved = tmp_path / "segs"
    moved.mkdir()
    for seg in folder.glob("*_seg.*"):
        shutil.move(str(seg), moved / seg.name)
    trainer = "nnUNetTrainerShapeDescriptorsFromFile_debug"
    try:
        run_cli(["nnUNetv2_train", "701", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], train_env(env),
                log=root / "train_from_file.log")
    finally:
        for seg in moved.iterdir():
            shutil.move(str(seg), folder / seg.name)
    results = root / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    agreement = json.loads((results / "validation" / "descriptor_agreement.json").read_text())
    assert set(agreement["mean"]) <= {"blob_a", "blob_b"}
    predictions = root / "pred_from_file"
    run_cli(["nnUNetv2_predict", "-i", str(root / "nnUNet_raw" / DATASET / "imagesTs"), "-o", str(predictions),
             "-d", "701", "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_tta"], env)
    assert len(list(predictions.glob("*.nii.gz"))) == 1
