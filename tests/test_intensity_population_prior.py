"""``intensity_order`` relations of population priors: the schema, the derivation from images and labels
(values by hand), ``nnunet-shape population-prior --intensity``, and the relation in the loss."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_shape.core.bounds import DescriptorBounds
from nnunet_shape.core.descriptors import one_hot_labels
from nnunet_shape.core.intensity import intensity_values
from nnunet_shape.core.losses import shape_descriptor_loss
from nnunet_shape.core.relations import IntensityOrder
from nnunet_shape.descriptor_files.population_prior import (
    CaseMeasurement,
    PopulationPriorError,
    case_constraints,
    derive_population_prior,
    validate_population_prior,
)

PRIOR = {
    "schema": "nnunet-shape/population-prior/v1",
    "frame": "LPS",
    "classes": {"bone": {"label": 1}, "cartilage": {"label": 2}},
    "relations": [{"type": "intensity_order", "brighter": "cartilage", "darker": "bone", "min_difference_std": 0.5},
                  {"type": "intensity_order", "brighter": "bone", "darker": "cartilage", "channel": 1}],
}
DATASET_JSON = {"labels": {"background": 0, "bone": 1, "cartilage": 2}, "channel_names": {"0": "T1", "1": "T2"}}


def test_intensity_order_relations_become_core_relations():
    prior = validate_population_prior(copy.deepcopy(PRIOR), "prior.json", DATASET_JSON)
    first, second = prior.relations
    assert (first.type, first.classes, first.value, first.channel) == ("intensity_order", ("cartilage", "bone"),
                                                                      0.5, 0)
    assert (second.classes, second.value, second.channel) == (("bone", "cartilage"), 0.0, 1)
    constraints = case_constraints(prior, (0, 0, 1, 0, 1, 0, 1, 0, 0), (4, 5, 6), (1.0, 1.0, 2.0))
    assert constraints.relations == (IntensityOrder(2, 1, 0, 0.5), IntensityOrder(1, 2, 1, 0.0))
    # the frame does not touch them (a per-channel statement, no axis)
    moved = constraints.preprocessed((2, 0, 1), [[0, 6], [0, 4], [0, 5]], (6, 4, 5), (6, 4, 5))
    assert moved.relations == constraints.relations


@pytest.mark.parametrize("edit, field, problem", [
    (lambda r: r.update(darker="fibula"), r"\$.relations\[0\].darker", "unknown class 'fibula'"),
    (lambda r: r.update(darker="cartilage"), r"\$.relations\[0\].darker", "two different classes"),
    (lambda r: r.update(min_difference_std=-1.0), r"\$.relations\[0\].min_difference_std", "minimum"),
    (lambda r: r.update(channel=2), r"\$.relations\[0\].channel", "channel 2, but dataset.json has 2 image channel"),
    (lambda r: r.update(offset_mm={}), r"\$.relations\[0\]", "offset_mm"),
    (lambda r: r.pop("brighter"), r"\$.relations\[0\]", "'brighter' is a required property"),
])
def test_invalid_intensity_order_names_the_relation_and_field(edit, field, problem):
    raw = copy.deepcopy(PRIOR)
    edit(raw["relations"][0])
    with pytest.raises(PopulationPriorError, match=rf"prior.json: relation 0 \(intensity_order\): field {field}: "
                                                   rf".*{problem}"):
        validate_population_prior(raw, "prior.json", DATASET_JSON)


# ------------------------------------------------------------------------------------ derivation

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def measurement(case_id: str, z_means: dict[str, float], image_mean: float = 100.0, image_std: float = 10.0,
                with_image: bool = True) -> CaseMeasurement:
    """A case whose classes have the given class means in z-score units (one channel)."""
    classes = {}
    for index, (name, z) in enumerate(z_means.items()):
        classes[name] = {"voxels": 8, "volume_mm3": 8.0, "centroid_mm": [2.0 + index, 2.0, 2.0],
                         "covariance_mm2": np.eye(3).tolist(),
                         "intensity": {"mean": [image_mean + image_std * z], "std": [1.0]} if with_image else None}
    block = {"mean": [image_mean], "std": [image_std]} if with_image else None
    return CaseMeasurement(case_id, IDENTITY, (10, 10, 10), (1.0, 1.0, 1.0), classes, block)


LABELS = {"a": 1, "b": 2, "c": 3}
# z-scored means: a - b = 1.5, 0.7 (a brighter in both); a - c = 0.8, -0.1 (no order); c - b = 0.7, 0.8
CASES = [measurement("case_0", {"a": 1.0, "b": -0.5, "c": 0.2}),
         measurement("case_1", {"a": 0.8, "b": 0.1, "c": 0.9}, image_mean=-40.0, image_std=2.0)]


def intensity_relations(prior: dict) -> list[dict]:
    return [r for r in prior["relations"] if r["type"] == "intensity_order"]


def test_derived_orders_hold_in_every_case_by_hand():
    prior = derive_population_prior(CASES, LABELS, (0, 100), 0.0)
    assert intensity_relations(prior) == [
        {"type": "intensity_order", "brighter": "a", "darker": "b", "channel": 0,
         "min_difference_std": pytest.approx(0.7)},
        {"type": "intensity_order", "brighter": "c", "darker": "b", "channel": 0,
         "min_difference_std": pytest.approx(0.7)},
    ]
    # with a margin: the lower end 0.7 moves down by 0.1 x max(width, |midpoint|) = 0.1 x max(0.8, 1.1) for a - b
    widened = intensity_relations(derive_population_prior(CASES, LABELS, (0, 100), 0.1))
    assert widened[0]["min_difference_std"] == pytest.approx(0.7 - 0.11)
    assert widened[1]["min_difference_std"] == pytest.approx(0.7 - 0.1 * 0.75)
    validate_population_prior(prior)


def test_no_intensity_relations_without_images_and_none_for_mixed_cases():
    plain = [measurement(c.case_id, {"a": 0.0, "b": 0.0, "c": 0.0}, with_image=False) for c in CASES]
    assert intensity_relations(derive_population_prior(plain, LABELS)) == []
    with pytest.raises(ValueError, match=r"cases \['case_1'\] were measured without their images"):
        derive_population_prior([CASES[0], plain[1]], LABELS)


def test_an_absent_class_does_not_break_the_order_of_the_others():
    third = measurement("case_2", {"a": 0.3, "b": -0.9})  # no c in this case
    prior = derive_population_prior([*CASES, third], LABELS, (0, 100), 0.0)
    pairs = [(r["brighter"], r["darker"], round(r["min_difference_std"], 6)) for r in intensity_relations(prior)]
    assert pairs == [("a", "b", 0.7), ("c", "b", 0.7)]


# ------------------------------------------------------------- nnunet-shape population-prior --intensity


def write(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


def make_dataset(root: Path, n: int = 3) -> Path:
    """Bone (dark, ~20) and cartilage (bright, ~50) on a background of 5, two channels: channel 1 is the
    negative of channel 0 (so there bone is the brighter class)."""
    folder = root / "Dataset901_Intensity"
    (folder / "labelsTr").mkdir(parents=True)
    (folder / "imagesTr").mkdir()
    for i in range(n):
        labels = np.zeros((6, 7, 8), np.uint8)
        labels[1:3, 2:5, 2:6] = 1
        labels[3:5, 2:5, 2 + i % 2:6] = 2
        image = np.full(labels.shape, 5.0, np.float32)
        image[labels == 1] = 20.0 + i
        image[labels == 2] = 50.0 - 2 * i
        write(folder / "labelsTr" / f"case_{i:03d}.nii.gz", labels)
        write(folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image)
        write(folder / "imagesTr" / f"case_{i:03d}_0001.nii.gz", -image)
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": n, "file_ending": ".nii.gz"}))
    return folder


def z_difference(folder: Path, case: int, channel: int) -> float:
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / f"case_{case:03d}_000{channel}.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"case_{case:03d}.nii.gz")))
    image = image.astype(np.float64)  # no zero voxel: nnU-Net normalises the whole image
    return (image[labels == 2].mean() - image[labels == 1].mean()) / image.std()


def test_cli_derives_the_orders_from_images_and_labels(tmp_path, monkeypatch):
    from nnunet_shape.cli import main as cli_main
    from nnunet_shape.descriptor_files.population_prior import load_population_prior

    folder = make_dataset(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert cli_main(["population-prior", "-d", "901", "--quantiles", "0", "100", "--margin", "0", "--intensity"]) == 0
    written = json.loads((folder / "population_prior.json").read_text())
    relations = intensity_relations(written)
    smallest = min(z_difference(folder, i, 0) for i in range(3))
    assert relations == [
        {"type": "intensity_order", "brighter": "cartilage", "darker": "bone", "channel": 0,
         "min_difference_std": pytest.approx(smallest, rel=1e-9)},
        {"type": "intensity_order", "brighter": "bone", "darker": "cartilage", "channel": 1,
         "min_difference_std": pytest.approx(smallest, rel=1e-9)},
    ]
    assert "intensity" in written["source"]
    load_population_prior(folder / "population_prior.json", json.loads((folder / "dataset.json").read_text()))
    # without --intensity: no image is read, no intensity relation
    assert cli_main(["population-prior", "-d", "901", "-o", str(tmp_path / "plain.json")]) == 0
    assert intensity_relations(json.loads((tmp_path / "plain.json").read_text())) == []


def test_cli_intensity_names_a_missing_image(tmp_path, monkeypatch, capsys):
    from nnunet_shape.cli import main as cli_main

    folder = make_dataset(tmp_path, n=2)
    (folder / "imagesTr" / "case_001_0001.nii.gz").unlink()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert cli_main(["population-prior", "-d", "901", "--intensity"]) == 2
    err = capsys.readouterr().err
    assert "'case_001'" in err and "case_001_0001.nii.gz" in err


def test_derived_relations_hold_on_the_labels_in_the_loss(tmp_path):
    """The prior learnt from the cases, applied to each case: its one-hot labels on the z-scored image
    satisfy every intensity relation; swapping the two classes violates them."""
    from nnunet_shape.nnunet.population_prior import population_prior_from_dataset

    folder = make_dataset(tmp_path)
    prior = validate_population_prior(population_prior_from_dataset(folder, (0, 100), 0.05, intensity=True))
    for i in range(3):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"case_{i:03d}.nii.gz")))
        channels = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / f"case_{i:03d}_000{c}.nii.gz")))
                    for c in (0, 1)]
        image = torch.from_numpy(np.stack([(x - x.mean()) / x.std() for x in channels]).astype(np.float64))[None]
        probs = one_hot_labels(torch.from_numpy(labels.astype(np.int64))[None], 3, torch.float64)
        relations = case_constraints(prior, IDENTITY, labels.shape, (2.0, 1.0, 1.0)).relations
        intensity = [r for r in relations if isinstance(r, IntensityOrder)]
        assert len(intensity) == 2
        for p, expected in ((probs, True), (probs[:, [0, 2, 1]], False)):
            result = shape_descriptor_loss(p, DescriptorBounds({}, {}), descriptors=(), priors=intensity,
                                           values=intensity_values(p, image))
            assert all(result.satisfied[r.name].all().item() is expected for r in intensity), (i, expected)
