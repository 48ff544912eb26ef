"""Which postprocessing is chosen, and why: classes with several components in nnU-Net's
label-based decision, and the label-free decision from descriptor files (no voxel label opened)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing as nnunet_apply_postprocessing
from nnunetv2.postprocessing.remove_connected_components import (
    remove_all_but_largest_component_from_segmentation as nnunet_lcc,
)

from nnunet_shape.core.connected_components import remove_all_but_largest_component_from_segmentation as ours
from nnunet_shape.nnunet.label_free import PLACEHOLDER_FLAG
from nnunet_shape.nnunet.postprocessing import (
    RULE_DESCRIPTORS,
    RULE_DICE,
    RULE_NO_DESCRIPTORS,
    RULE_STATED,
    bounds_violation,
    class_disagreement,
    components_from_dataset_json,
    decision_lines,
    determine_postprocessing_from_descriptors,
    determine_postprocessing_on_device,
    label_free_reason,
    largest_component_steps,
    trainer_from_path,
    trainer_reads_voxel_labels,
    volume_scale,
)

LABELS = {"background": 0, "organ": 1, "two_parts": 2, "block": 3}
SPACING_XYZ = (1.0, 1.0, 2.0)  # array order (z, y, x): (2, 1, 1)
TRAINER_FOLDER = "nnUNetTrainerShapeDescriptorsFromFile_debug__nnUNetPlans__3d_fullres"


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((3.0, -2.0, 5.0))
    sitk.WriteImage(image, str(path))


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def write_cases(predictions: Path, references: Path, n_cases: int = 4, extra_dataset_json: dict | None = None
                ) -> dict:
    """Per case: label 1 (organ) a block, predicted with a far-away false island; label 2 two true
    parts (64 and 18 voxels), both predicted, plus a stray voxel; label 3 a perfect single block.

    Keeping the largest component helps label 1, hurts label 2 (its smaller part goes), changes
    nothing for label 3; keeping label 2's *two* largest removes only its stray voxel; keeping
    the largest foreground component deletes labels 2 and 3 (they do not touch label 1).
    """
    predictions.mkdir(parents=True)
    references.mkdir(parents=True)
    for case in range(n_cases):
        reference = np.zeros((10, 24, 22), dtype=np.uint8)
        reference[2:7, 3 + case % 2:11 + case % 2, 3:10] = 1  # 5 x 8 x 7
        reference[2:6, 3:7, 15:19] = 2  # 64 voxels
        reference[7:9, 17:20, 15:18] = 2  # 18 voxels
        reference[0:2, 14:17, 8:11] = 3
        prediction = reference.copy()
        prediction[8:10, 20:22, 2 + case % 3] = 1  # false island of label 1
        prediction[9, 0, 21] = 2  # stray voxel of label 2
        _write(prediction, predictions / f"case_{case:02d}.nii.gz")
        _write(reference, references / f"case_{case:02d}.nii.gz")
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": n_cases,
                    "file_ending": ".nii.gz", **(extra_dataset_json or {})}
    (predictions / "dataset.json").write_text(json.dumps(dataset_json))
    (predictions / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO",
                                                        "label_manager": "LabelManager",
                                                        "dataset_name": "Dataset999_Decision"}))
    return dataset_json


def _decisions(folder: Path) -> list[tuple]:
    record = json.loads((folder / "postprocessing.json").read_text())
    return [(d["label"], d["components"], d["rule"], d["applied"]) for d in record["decisions"]]


# ----------------------------------------------------------------------------------------------
# small pieces by hand
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, lower, upper, expected", [
    ([1.0, 5.0], [2.0, math.nan], [3.0, 4.0], math.sqrt(2.0)),  # 1 below, 1 above
    ([2.5, 0.0], [2.0, math.nan], [3.0, math.nan], 0.0),  # inside / unbounded
    (7.0, 4.0, 4.0, 3.0),  # exact target: the distance to it
    ([0.0, 0.0, 0.0], [3.0, 4.0, math.nan], [math.nan] * 3, 5.0),
])
def test_bounds_violation(value, lower, upper, expected):
    assert bounds_violation(np.array(value), np.array(lower), np.array(upper)) == pytest.approx(expected)


def test_class_disagreement_by_hand():
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels of 2 x 1 x 1 mm: 16 mm^3, centroid (1, 0.5, 0.5) mm
    nan3 = np.full(3, np.nan)
    bounds = {"volume": (np.array(20.0), np.array(20.0)),
              "centroid": (np.array([1.0, 0.5, 3.5]), np.array([1.0, 0.5, 3.5])),
              "spread": (nan3, nan3)}
    scale = volume_scale(bounds, fallback_mm3=16.0, voxel_mm3=2.0)
    assert scale == 20.0
    expected = 4.0 / 20.0 + 3.0 / 20.0 ** (1 / 3)
    assert class_disagreement(mask, (2.0, 1.0, 1.0), bounds, scale) == pytest.approx(expected)
    # an empty prediction has no position: only the volume counts
    assert class_disagreement(np.zeros_like(mask), (2.0, 1.0, 1.0), bounds, scale) == pytest.approx(1.0)
    # nothing constrained: no verdict
    assert class_disagreement(mask, (2.0, 1.0, 1.0), {"volume": (np.array(np.nan), np.array(np.nan))}, 1.0) is None


@pytest.mark.parametrize("bounds, fallback, expected", [
    ({"volume": (np.array(10.0), np.array(30.0))}, 5.0, 20.0),
    ({"volume": (np.array(np.nan), np.array(30.0))}, 5.0, 30.0),
    ({"volume": (np.array(np.nan), np.array(np.nan))}, 5.0, 5.0),
    ({}, 0.0, 2.0),  # never below one voxel
    ({"volume": (np.array(0.0), np.array(0.0))}, 9.0, 2.0),  # a class declared absent
])
def test_volume_scale(bounds, fallback, expected):
    assert volume_scale(bounds, fallback, voxel_mm3=2.0) == expected


def test_components_from_dataset_json():
    assert components_from_dataset_json({"labels": LABELS}) == {}
    assert components_from_dataset_json({"labels": LABELS, "nnunet_shape_components": {"two_parts": 2}}) == {2: 2}
    with pytest.raises(ValueError, match="'kidney' is not a foreground class"):
        components_from_dataset_json({"labels": LABELS, "nnunet_shape_components": {"kidney": 2}})
    with pytest.raises(ValueError, match="class 'two_parts': components must be an integer >= 1, got 0"):
        components_from_dataset_json({"labels": LABELS, "nnunet_shape_components": {"two_parts": 0}})


def test_largest_component_steps_name_nnunets_function_for_one_component():
    fns, kwargs = largest_component_steps([1, 2, 3], {2: 2})
    assert fns == [nnunet_lcc, ours, nnunet_lcc]
    assert kwargs == [{"labels_or_regions": 1}, {"labels_or_regions": 2, "components": 2}, {"labels_or_regions": 3}]


def test_trainer_lookup():
    folder = f"/results/Dataset1_X/{TRAINER_FOLDER}/fold_0/validation"
    assert trainer_from_path(folder) == "nnUNetTrainerShapeDescriptorsFromFile_debug"
    assert trainer_from_path("/results/Dataset1_X/somewhere/fold_0") is None
    assert trainer_reads_voxel_labels("nnUNetTrainerShapeDescriptorsFromFile") is False
    assert trainer_reads_voxel_labels("nnUNetTrainerShapeDescriptorsFromFile_debug") is False
    assert trainer_reads_voxel_labels("nnUNetTrainerShapePopulationPrior_demo") is False  # a FromFile subclass
    assert trainer_reads_voxel_labels("nnUNetTrainerShapeDescriptors_debug") is True
    assert trainer_reads_voxel_labels("nnUNetTrainer") is True  # not ours: nnU-Net's learn from labels


def test_label_free_reason():
    assert label_free_reason({"labels": LABELS}, "/r/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0") is None
    assert "placeholders" in label_free_reason({"labels": LABELS, PLACEHOLDER_FLAG: True})
    assert "never reads voxel labels" in label_free_reason({"labels": LABELS}, f"/r/{TRAINER_FOLDER}/fold_0")
    assert "never reads voxel labels" in label_free_reason({"labels": LABELS}, "/r/x",
                                                           trainer="nnUNetTrainerShapeDescriptorsFromFile")


def test_decision_lines():
    lines = decision_lines([
        {"label": 4, "class": "tibial_cartilage", "step": "keep the 2 largest components", "rule": RULE_STATED,
         "applied": True, "criterion": "c", "before": None, "after": None, "detail": "2 stated in the dataset.json"},
        {"label": "foreground", "class": "all foreground labels", "step": "keep the largest component",
         "rule": RULE_DICE, "applied": False, "criterion": "mean foreground Dice", "before": 0.5, "after": 0.25,
         "detail": ""}])
    assert lines == [
        "postprocessing label 4 (tibial_cartilage): keep the 2 largest components: APPLIED "
        "(rule: stated components; 2 stated in the dataset.json)",
        "postprocessing all foreground (all foreground labels): keep the largest component: not applied "
        "(rule: dice; mean foreground Dice 0.5 -> 0.25)"]


# ----------------------------------------------------------------------------------------------
# nnU-Net's label-based decision with a class of two components
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_label_decision_keeps_two_components_where_stated(tmp_path, backend):
    predictions, references = tmp_path / "predictions", tmp_path / "references"
    write_cases(predictions, references, extra_dataset_json={"nnunet_shape_components": {"two_parts": 2}})
    lines = []
    fns, kwargs = determine_postprocessing_on_device(str(predictions), str(references), device="cpu",
                                                     backend=backend, keep_postprocessed_files=True, log=lines.append)
    assert fns == [nnunet_lcc, ours]
    assert kwargs == [{"labels_or_regions": 1}, {"labels_or_regions": 2, "components": 2}]
    assert _decisions(predictions) == [("foreground", 1, RULE_DICE, False), (1, 1, RULE_DICE, True),
                                       (2, 2, RULE_DICE, True), (3, 1, RULE_DICE, False)]
    assert any(line.startswith("postprocessing label 2 (two_parts): keep the 2 largest components: APPLIED")
               for line in lines)
    # the pkl works with nnU-Net's own apply loop, and removes exactly the false island and stray voxel
    pp_fns, pp_kwargs = load_pickle(str(predictions / "postprocessing.pkl"))
    for name in ("case_00.nii.gz", "case_03.nii.gz"):
        result = nnunet_apply_postprocessing(_read(predictions / name), pp_fns, pp_kwargs)
        np.testing.assert_array_equal(result, _read(references / name))
        np.testing.assert_array_equal(_read(predictions / "postprocessed" / name), _read(references / name))
    # ... and with nnunet-shape apply-postprocessing's code, on this backend
    from nnunet_shape.nnunet.postprocessing import apply_postprocessing_to_folder_on_device

    apply_postprocessing_to_folder_on_device(str(predictions), str(tmp_path / "applied"), pp_fns, pp_kwargs,
                                             device="cpu", backend=backend)
    for name in sorted(p.name for p in references.glob("*.nii.gz")):
        np.testing.assert_array_equal(_read(tmp_path / "applied" / name), _read(references / name))


def test_label_decision_without_components_is_nnunets(tmp_path):
    """Without a stated count, keeping the largest component of label 2 cuts its second part: rejected."""
    predictions, references = tmp_path / "predictions", tmp_path / "references"
    write_cases(predictions, references)
    fns, kwargs = determine_postprocessing_on_device(str(predictions), str(references), device="cpu",
                                                     keep_postprocessed_files=False, verbose=False)
    assert fns == [nnunet_lcc] and kwargs == [{"labels_or_regions": 1}]
    assert _decisions(predictions) == [("foreground", 1, RULE_DICE, False), (1, 1, RULE_DICE, True),
                                       (2, 1, RULE_DICE, False), (3, 1, RULE_DICE, False)]


# ----------------------------------------------------------------------------------------------
# the label-free decision: descriptor files only, labels deleted first
# ----------------------------------------------------------------------------------------------

def _label_free_run(tmp_path: Path, extra_dataset_json: dict | None = None) -> tuple[Path, Path, Path]:
    """nnU-Net's layout of a label-free run: raw dataset with descriptorsTr (exported from the
    labels, which are then deleted) and a FromFile trainer's validation folder."""
    from nnunet_shape.descriptor_files.export import export_files

    raw = tmp_path / "raw" / "Dataset999_Decision"
    validation = tmp_path / "results" / "Dataset999_Decision" / TRAINER_FOLDER / "fold_0" / "validation"
    labels = raw / "labelsTr"
    dataset_json = write_cases(validation, labels, extra_dataset_json=extra_dataset_json)
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    export_files({p.name[: -len(".nii.gz")]: p for p in sorted(labels.glob("*.nii.gz"))}, raw / "descriptorsTr",
                 dataset_json, num_processes=1)
    shutil.rmtree(labels)  # from here on there is no voxel label anywhere
    return raw, validation, raw / "descriptorsTr"


def _setup_reads_forgotten(reads: list[str]) -> None:
    """The export above read the labels (to write the descriptor files): not the decision's reads."""
    assert any("labelsTr" in p for p in reads)
    reads.clear()


@pytest.fixture
def reads(monkeypatch):
    """Every file nnU-Net's SimpleITK reader opens."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    opened: list[str] = []
    original = SimpleITKIO.read_seg

    def recording(self, seg_fname):
        opened.append(str(seg_fname))
        return original(self, seg_fname)

    monkeypatch.setattr(SimpleITKIO, "read_seg", recording)
    return opened


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_label_free_decision_opens_no_label(tmp_path, reads, backend):
    raw, validation, descriptors = _label_free_run(tmp_path)
    _setup_reads_forgotten(reads)
    lines = []
    fns, kwargs = determine_postprocessing_from_descriptors(str(validation), str(descriptors), device="cpu",
                                                            backend=backend, reason="test", log=lines.append)
    assert fns == [nnunet_lcc] and kwargs == [{"labels_or_regions": 1}]
    assert _decisions(validation) == [("foreground", 1, RULE_DESCRIPTORS, False), (1, 1, RULE_DESCRIPTORS, True),
                                      (2, 1, RULE_DESCRIPTORS, False), (3, 1, RULE_DESCRIPTORS, False)]
    assert reads and all(Path(p).parent == validation for p in reads)
    record = json.loads((validation / "postprocessing.json").read_text())
    assert record["decision"] == "descriptors" and record["reason"] == "test"
    assert record["cases"] == [f"case_{i:02d}" for i in range(4)]
    # label 1: the island's volume and its pull on the centroid are gone; label 3 was perfect
    assert record["disagreement_input_folder"]["organ"] > 0
    assert record["disagreement_postprocessed"]["organ"] == pytest.approx(0.0, abs=1e-9)
    assert record["disagreement_postprocessed"]["block"] == pytest.approx(0.0, abs=1e-9)
    entry = next(d for d in record["decisions"] if d["label"] == 2)
    assert entry["after"] > entry["before"] > 0  # cutting the 18-voxel part is worse than a stray voxel
    assert lines[0].startswith("postprocessing decided without voxel labels (test): 4 validation cases")
    assert "postprocessing label 1 (organ): keep the largest component: APPLIED (rule: descriptor agreement" \
        in lines[2]
    # the postprocessed cases: island removed, everything else as predicted
    after = _read(validation / "postprocessed" / "case_01.nii.gz")
    before = _read(validation / "case_01.nii.gz")
    assert after[8:, 20:, :].max() == 0 and np.array_equal(after == 2, before == 2)


def test_label_free_decision_keeps_stated_components(tmp_path, reads):
    _, validation, descriptors = _label_free_run(tmp_path, {"nnunet_shape_components": {"two_parts": 2}})
    _setup_reads_forgotten(reads)
    fns, kwargs = determine_postprocessing_from_descriptors(str(validation), str(descriptors), device="cpu",
                                                            verbose=False)
    assert kwargs == [{"labels_or_regions": 1}, {"labels_or_regions": 2, "components": 2}]
    assert fns == [nnunet_lcc, ours]
    decisions = json.loads((validation / "postprocessing.json").read_text())["decisions"]
    assert [(d["label"], d["rule"], d["applied"]) for d in decisions] == [
        ("foreground", RULE_DESCRIPTORS, False), (1, RULE_DESCRIPTORS, True), (2, RULE_STATED, True),
        (3, RULE_DESCRIPTORS, False)]
    assert decisions[2]["detail"] == "2 stated in the dataset.json"
    assert all(Path(p).parent == validation for p in reads)


def test_label_free_decision_without_constraints_leaves_a_class_alone(tmp_path):
    """A hand-written prior that says nothing about label 3: rule 'no descriptors', not applied."""
    _, validation, descriptors = _label_free_run(tmp_path)
    for path in descriptors.glob("case_*.json"):
        prior = {"schema": "nnunet-shape/descriptors/v1", "kind": "prior", "case_id": path.stem,
                 "classes": {name: {"volume_mm3": entry["volume_mm3"]}
                             for name, entry in json.loads(path.read_text())["classes"].items() if name != "block"}}
        path.write_text(json.dumps(prior))
    determine_postprocessing_from_descriptors(str(validation), str(descriptors), device="cpu", verbose=False,
                                              keep_postprocessed_files=False)
    assert _decisions(validation) == [("foreground", 1, RULE_DESCRIPTORS, False), (1, 1, RULE_DESCRIPTORS, True),
                                      (2, 1, RULE_DESCRIPTORS, False), (3, 1, RULE_NO_DESCRIPTORS, False)]


def test_cli_decides_a_from_file_run_without_references(tmp_path, monkeypatch, reads, capsys):
    """``nnunet-shape determine-postprocessing -i <FromFile trainer>/fold_0/validation``: recognised as
    label-free from the trainer folder, descriptor files found where the trainer reads them."""
    from nnunet_shape.cli import main as nnunet_shape_main

    raw, validation, _ = _label_free_run(tmp_path)
    _setup_reads_forgotten(reads)
    monkeypatch.setenv("nnUNet_raw", str(raw.parent))
    monkeypatch.delenv("nnUNetShape_descriptors", raising=False)
    assert nnunet_shape_main(["determine-postprocessing", "-i", str(validation), "-ref", str(tmp_path / "nowhere"),
                              "-device", "cpu", "--remove_postprocessed", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert f"-ref {tmp_path / 'nowhere'} is not opened" in out
    assert "trainer nnUNetTrainerShapeDescriptorsFromFile_debug never reads voxel labels" in out
    assert load_pickle(str(validation / "postprocessing.pkl")) == ([nnunet_lcc], [{"labels_or_regions": 1}])
    assert all(Path(p).parent == validation for p in reads)


def test_cli_needs_references_for_a_labelled_run(tmp_path, capsys):
    from nnunet_shape.cli import main as nnunet_shape_main

    predictions = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0" / "validation"
    write_cases(predictions, tmp_path / "references")
    with pytest.raises(SystemExit):
        nnunet_shape_main(["determine-postprocessing", "-i", str(predictions), "-device", "cpu"])
    assert "-ref is required" in capsys.readouterr().err


def test_cli_placeholder_dataset_is_label_free(tmp_path, reads, capsys):
    from nnunet_shape.cli import main as nnunet_shape_main

    raw, validation, descriptors = _label_free_run(tmp_path, {PLACEHOLDER_FLAG: True})
    _setup_reads_forgotten(reads)
    renamed = validation.parent.parent.parent / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0" / "validation"
    renamed.parent.mkdir(parents=True)
    shutil.move(str(validation), str(renamed))
    assert nnunet_shape_main(["determine-postprocessing", "-i", str(renamed), "--descriptors", str(descriptors),
                              "-device", "cpu", "--remove_postprocessed"]) == 0
    assert "its labels are placeholders" in capsys.readouterr().out
    assert json.loads((renamed / "postprocessing.json").read_text())["decision"] == "descriptors"
    assert all(Path(p).parent == renamed for p in reads)


# ----------------------------------------------------------------------------------------------
# ``components`` in descriptor files
# ----------------------------------------------------------------------------------------------

def _with_components(descriptors: Path, value, cases: str = "case_*.json") -> None:
    for path in descriptors.glob(cases):
        content = json.loads(path.read_text())
        content["classes"]["two_parts"]["components"] = value
        path.write_text(json.dumps(content))


def test_descriptor_files_read_components(tmp_path):
    from nnunet_shape.descriptor_files.read import load_case_descriptors

    _, _, descriptors = _label_free_run(tmp_path)
    _with_components(descriptors, 2, "case_00.json")
    case = load_case_descriptors(descriptors / "case_00.json", json.loads((descriptors.parent / "dataset.json")
                                                                          .read_text()))
    assert case.classes["two_parts"].components == 2
    assert case.classes["organ"].components is None  # optional: not stated
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"schema": "nnunet-shape/descriptors/v1", "kind": "prior", "case_id": "p",
                                 "classes": {"two_parts": {"components": 3}}}))
    assert load_case_descriptors(prior).classes["two_parts"].components == 3


@pytest.mark.parametrize("value", [0, -2, 1.5, "2", None])
def test_descriptor_files_reject_bad_components(tmp_path, value):
    from nnunet_shape.descriptor_files.model import DescriptorFileError
    from nnunet_shape.descriptor_files.read import load_case_descriptors

    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"schema": "nnunet-shape/descriptors/v1", "kind": "prior", "case_id": "p",
                                 "classes": {"two_parts": {"components": value}}}))
    with pytest.raises(DescriptorFileError, match=r"prior\.json: case 'p': field \$\.classes\.two_parts\.components"):
        load_case_descriptors(prior)


def test_label_free_decision_keeps_components_stated_in_the_files(tmp_path, reads):
    _, validation, descriptors = _label_free_run(tmp_path)
    _setup_reads_forgotten(reads)
    _with_components(descriptors, 2)
    fns, kwargs = determine_postprocessing_from_descriptors(str(validation), str(descriptors), device="cpu",
                                                            verbose=False, keep_postprocessed_files=False)
    assert kwargs == [{"labels_or_regions": 1}, {"labels_or_regions": 2, "components": 2}]
    decisions = json.loads((validation / "postprocessing.json").read_text())["decisions"]
    assert (decisions[2]["rule"], decisions[2]["applied"]) == (RULE_STATED, True)
    assert decisions[2]["detail"] == "2 stated in the descriptor file of case case_00"
    assert all(Path(p).parent == validation for p in reads)


def test_label_free_decision_refuses_contradicting_counts(tmp_path):
    _, validation, descriptors = _label_free_run(tmp_path)
    _with_components(descriptors, 2)
    _with_components(descriptors, 3, "case_02.json")
    with pytest.raises(ValueError, match="class 'two_parts': descriptor file of case case_02 states 3 components, "
                                         "the descriptor file of case case_00 2"):
        determine_postprocessing_from_descriptors(str(validation), str(descriptors), device="cpu", verbose=False)
