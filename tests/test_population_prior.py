"""Population prior files: schema errors, derivation from labels (nnunet-shape population-prior),
and the prior's constraints satisfied by the labels it was learnt from, in nnU-Net's frames."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from nnunet_shape.core.descriptors import one_hot_labels
from nnunet_shape.core.losses import shape_descriptor_loss
from nnunet_shape.core.relations import CentroidOffset, DescriptorRatio, NestedCentroid
from nnunet_shape.descriptor_files.population_prior import (
    PopulationPriorError,
    case_constraints,
    load_population_prior,
    validate_population_prior,
)

sitk = pytest.importorskip("SimpleITK")

EXAMPLE = {
    "schema": "nnunet-shape/population-prior/v1",
    "frame": "LPS",
    "classes": {
        "femur": {"label": 1, "presence": "required", "volume_mm3": {"min": 100.0, "max": 900.0},
                  "spread_mm": {"superior": {"min": 1.0, "max": 9.0}},
                  "fov_fraction": {"superior": {"min": 0.4, "max": 1.0}}},
        "tibia": {"label": 2, "volume_mm3": {"max": 800.0}},
        "patella": {"label": 3, "presence": "absent"},
    },
    "relations": [
        {"type": "centroid_offset", "from": "femur", "to": "tibia",
         "offset_mm": {"superior": {"min": -60, "max": -25}}},
        {"type": "volume_ratio", "numerator": "tibia", "denominator": "femur", "ratio": {"min": 0.5, "max": 1.2}},
        {"type": "spread_ratio", "numerator": "tibia", "denominator": "femur",
         "ratio": {"left": {"min": 0.5}, "posterior": {"max": 2.0}}},
        {"type": "equal_centroid", "classes": ["femur", "tibia"], "tolerance_mm": 80.0},
        {"type": "nested_centroid", "inner": "tibia", "outer": "femur", "spreads": 3.0},
    ],
}


def _edited(path, value):
    obj = copy.deepcopy(EXAMPLE)
    *head, last = path
    target = obj
    for key in head:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return obj


DELETE = object()

# (edit path, new value, words the message must contain)
SCHEMA_CASES = [
    (("schema",), "nnunet-shape/population-prior/v0", ["field $.schema", "unknown schema"]),
    (("frame",), "RAS", ["field $.frame", "'LPS'"]),
    (("classes", "femur", "label"), 0, ["class 'femur'", "$.classes.femur.label", "minimum"]),
    (("classes", "femur", "presence"), "sometimes", ["class 'femur'", "$.classes.femur.presence"]),
    (("classes", "femur", "volume_mm3"), {"min": 5.0, "max": 1.0},
     ["class 'femur'", "volume_mm3", "min 5.0 > max 1.0"]),
    (("classes", "femur", "volume_mm3"), {"low": 5.0}, ["class 'femur'", "volume_mm3", "'low'"]),
    (("classes", "femur", "spread_mm"), {"lateral": {"min": 1.0}}, ["class 'femur'", "spread_mm", "'lateral'"]),
    (("classes", "femur", "spread_mm", "superior"), {"min": -1.0}, ["class 'femur'", "spread_mm.superior", ">= 0"]),
    (("classes", "femur", "fov_fraction", "superior"), {"max": 1.5},
     ["class 'femur'", "fov_fraction.superior", "<= 1"]),
    (("classes", "tibia", "label"), 1, ["class 'tibia'", "$.classes.tibia.label", "also class 'femur'"]),
    (("relations", 0, "to"), "fibula", ["relation 0 (centroid_offset)", "$.relations[0].to", "unknown class 'fibula'"]),
    (("relations", 0, "offset_mm"), {"superior": {"min": 5, "max": -5}},
     ["relation 0 (centroid_offset)", "offset_mm.superior", "min 5"]),
    (("relations", 0, "offset_mm", "superior", "min"), float("nan"), ["relation 0", "NaN or infinite"]),
    (("relations", 1, "ratio"), {"min": -1.0}, ["relation 1 (volume_ratio)", "$.relations[1].ratio", ">= 0"]),
    (("relations", 1, "denominator"), "tibia", ["relation 1 (volume_ratio)", "two different classes"]),
    (("relations", 2, "ratio"), {"min": 1.0}, ["relation 2 (spread_ratio)", "$.relations[2].ratio"]),
    (("relations", 3, "tolerance_mm"), -1.0, ["relation 3 (equal_centroid)", "tolerance_mm"]),
    (("relations", 3, "classes"), ["femur"], ["relation 3 (equal_centroid)", "$.relations[3].classes"]),
    (("relations", 4, "type"), "bigger_than", ["relation 4", "$.relations[4].type"]),
    (("relations", 4, "spreads"), DELETE, None),  # optional: valid without it
]


@pytest.mark.parametrize("path, value, words", SCHEMA_CASES)
def test_schema_errors_are_clear(tmp_path, path, value, words):
    file = tmp_path / "prior.json"
    file.write_text(json.dumps(_edited(path, value)))
    if words is None:
        load_population_prior(file)
        return
    with pytest.raises(PopulationPriorError) as info:
        load_population_prior(file)
    message = str(info.value)
    assert message.startswith(f"{file}:")
    for word in words:
        assert word in message, message


def test_example_loads_and_maps_to_core_constraints():
    prior = validate_population_prior(EXAMPLE, None, {"labels": {"background": 0, "femur": 1, "tibia": 2,
                                                                 "patella": 3}})
    with pytest.raises(PopulationPriorError, match="not a label of dataset.json"):
        validate_population_prior(EXAMPLE, None, {"labels": {"background": 0, "femur": 1, "tibia": 2}})
    # raw array (z, y, x) of an identity-direction image: array axis 0 = superior, 2 = left
    cc = case_constraints(prior, np.eye(3), (10, 20, 30), (2.0, 1.0, 1.0))
    offset, vol, spread, equal, nested = cc.relations
    assert isinstance(offset, CentroidOffset) and (offset.class_from, offset.class_to) == (1, 2)
    assert offset.low[0] == -60 and offset.high[0] == -25 and np.isnan(offset.low[1:] + offset.high[1:]).all()
    assert isinstance(vol, DescriptorRatio) and vol.low == (0.5,) and vol.high == (1.2,)
    assert spread.low[2] == 0.5 and np.isnan(spread.high[2]) and spread.high[1] == 2.0 and np.isnan(spread.low[0])
    assert equal.low == (-80.0,) * 3 and equal.high == (80.0,) * 3
    assert nested == NestedCentroid(2, 1, 3.0)
    lo, hi = cc.targets["centroid"]
    assert lo[1, 0] == pytest.approx(0.4 * 10 * 2 - 1) and hi[1, 0] == pytest.approx(20 - 1)
    assert np.isnan(lo[1, 1:]).all()
    assert cc.targets["volume"][0].tolist()[1:] == [100.0, pytest.approx(np.nan, nan_ok=True), 0.0]
    assert cc.targets["volume"][1].tolist()[1:] == [900.0, 800.0, 0.0]
    assert cc.present.tolist() == [True, True, True, False]
    # superior flipped (direction z -> -z): the offset box flips sign
    flipped = case_constraints(prior, np.diag([1.0, 1.0, -1.0]), (10, 20, 30), (2.0, 1.0, 1.0))
    assert flipped.relations[0].low[0] == 25 and flipped.relations[0].high[0] == 60
    f_lo, f_hi = flipped.targets["centroid"]
    assert f_lo[1, 0] == pytest.approx(0.0 * 20 - 1) and f_hi[1, 0] == pytest.approx(0.6 * 20 - 1)


# ---------------------------------------------------------------------------------------
# derivation on a small raw dataset in several orientations
# ---------------------------------------------------------------------------------------

ORIENT = [
    lambda im: im,
    lambda im: sitk.Flip(im, [True, False, True]),
    lambda im: sitk.PermuteAxes(im, [2, 0, 1]),
    lambda im: sitk.Flip(sitk.PermuteAxes(im, [1, 2, 0]), [False, True, False]),
]


def _ellipsoids(shape, centre_a, radii_a, centre_b, radii_b):
    grid = np.indices(shape).astype(np.float64)
    labels = np.zeros(shape, dtype=np.uint8)
    for label, centre, radii in ((1, centre_a, radii_a), (2, centre_b, radii_b)):
        r = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
        labels[r <= 1] = label
    return labels


def _write_dataset(root, same_anatomy=False, n=4):
    folder = root / "Dataset901_Rel"
    (folder / "labelsTr").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        jitter = np.zeros(3) if same_anatomy else rng.uniform(-1.5, 1.5, 3)
        grow = 1.0 if same_anatomy else rng.uniform(0.85, 1.15)
        labels = _ellipsoids((16, 18, 20), np.array([5.0, 8, 9]) + jitter, np.array([3.0, 4, 5]) * grow,
                             np.array([11.0, 9, 10]) - jitter, (2.5, 3.0, 3.5))
        image = sitk.GetImageFromArray(labels)
        image.SetSpacing((1.0, 1.25, 2.0))
        image.SetOrigin((10.0 * i, 0.0, -5.0))
        sitk.WriteImage(ORIENT[i % len(ORIENT)](image), str(folder / "labelsTr" / f"case_{i:03d}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "femur": 1, "tibia": 2},
        "numTraining": n, "file_ending": ".nii.gz"}))
    return folder


def test_one_anatomy_in_four_orientations_gives_one_value(tmp_path):
    from nnunet_shape.nnunet.population_prior import population_prior_from_dataset

    folder = _write_dataset(tmp_path, same_anatomy=True)
    prior = population_prior_from_dataset(folder, (0, 100), 0.0)
    validate_population_prior(prior)
    offset = next(r for r in prior["relations"] if r["type"] == "centroid_offset")
    for axis, interval in offset["offset_mm"].items():
        assert interval["max"] - interval["min"] < 1e-9, (axis, interval)
    # ellipsoid centres: femur (z 5, y 8, x 9), tibia (11, 9, 10), spacing (z 2, y 1.25, x 1)
    assert offset["offset_mm"]["superior"]["min"] == pytest.approx(12.0, abs=0.3)
    assert offset["offset_mm"]["posterior"]["min"] == pytest.approx(1.25, abs=0.3)
    assert offset["offset_mm"]["left"]["min"] == pytest.approx(1.0, abs=0.3)
    for name in ("femur", "tibia"):
        cls = prior["classes"][name]
        assert cls["presence"] == "required"
        for key in ("spread_mm", "fov_fraction"):
            assert all(v["max"] - v["min"] < 1e-9 for v in cls[key].values()), (name, key)


@pytest.mark.parametrize("transpose_forward", [(0, 1, 2), (2, 0, 1)])
def test_derived_prior_is_satisfied_by_its_labels(tmp_path, monkeypatch, transpose_forward):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_shape.cli import main as cli_main

    folder = _write_dataset(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert cli_main(["population-prior", "-d", "901", "--quantiles", "0", "100", "--margin", "0.001"]) == 0
    prior = load_population_prior(folder / "population_prior.json",
                                  json.loads((folder / "dataset.json").read_text()))
    assert {r.type for r in prior.relations} == {"centroid_offset", "volume_ratio", "spread_ratio"}
    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        seg, props = SimpleITKIO().read_seg(str(path))
        labels = seg[0].astype(np.int64)
        raw = case_constraints(prior, props["sitk_stuff"]["direction"], labels.shape, props["spacing"])
        moved = labels.transpose(transpose_forward)
        cc = raw.preprocessed(transpose_forward, [[0, n] for n in moved.shape], moved.shape, moved.shape)
        probs = one_hot_labels(torch.from_numpy(moved)[None, None], 3).to(torch.float64)
        result = shape_descriptor_loss(probs, cc.bounds(torch.float64), torch.from_numpy(cc.spacing),
                                       descriptors=("volume", "centroid", "spread"), priors=cc.relations)
        for name, ok in result.satisfied.items():
            assert bool(ok[result.active[name]].all()), (path.name, name, result.values)
        active = {n for n, a in result.active.items() if a.any()}
        assert active >= {"volume", "centroid", "spread"} | {r.name for r in cc.relations}
    # the same prior with a tight margin-free quantile range is violated by some case
    tight = json.loads((folder / "population_prior.json").read_text())
    offset = tight["relations"][0]["offset_mm"]["superior"]
    offset["min"] = offset["max"] = (offset["min"] + offset["max"]) / 2
    violated = validate_population_prior(tight)
    seg, props = SimpleITKIO().read_seg(str(sorted((folder / "labelsTr").glob("*.nii.gz"))[0]))
    cc = case_constraints(violated, props["sitk_stuff"]["direction"], seg.shape[1:], props["spacing"])
    probs = one_hot_labels(torch.from_numpy(seg[0].astype(np.int64))[None, None], 3).to(torch.float64)
    result = shape_descriptor_loss(probs, cc.bounds(torch.float64), torch.from_numpy(cc.spacing),
                                   descriptors=("volume",), priors=cc.relations[:1])
    assert not bool(result.satisfied[cc.relations[0].name][0, 1:].all())
