"""The fault matrix: every bad input a real dataset produces by accident gets a clear error.

One table (:data:`CASES`) of ``(name, input builder, expected exception type, words the message
must contain)`` for the Python API, one (:data:`CLI_CASES`) for the console scripts (exit code 2,
one stderr line naming the input, no traceback). Builders get a fresh ``tmp_path`` and
``monkeypatch`` and return the call that must fail; an optional ``after`` check proves that a
refused command wrote nothing. Every case failed (wrongly succeeded, or failed with another
type / an unhelpful message) before the checks existed; the cases that already worked, and the
inputs that must now *work* (float16 volumes, bfloat16 postprocessing), are separate tests below.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from e2e_helpers import write_tiny_dataset

from nnunet_shape.errors import UserError

Builder = Callable[[Path, pytest.MonkeyPatch, pytest.FixtureRequest], Callable[[], Any]]


@dataclass(frozen=True)
class Case:
    name: str
    build: Builder
    error: type[BaseException]
    words: tuple[str, ...]
    after: Callable[[Path], None] | None = None  # checks on tmp_path once the call has failed


# ----------------------------------------------------------------------------------------------
# input builders
# ----------------------------------------------------------------------------------------------

def _probs(batch: int = 2, classes: int = 3, shape: tuple[int, ...] = (6, 5, 4)) -> torch.Tensor:
    return torch.softmax(torch.randn(batch, classes, *shape, generator=torch.Generator().manual_seed(0)), 1)


def _labels(batch: int = 2, top: int = 2, shape: tuple[int, ...] = (6, 5, 4)) -> torch.Tensor:
    labels = torch.randint(0, 3, (batch, 1, *shape), generator=torch.Generator().manual_seed(1))
    labels[0, 0, 0, 0, 0] = top
    return labels


def _core(function: str, spacing: Any) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.core import descriptors

        return lambda: getattr(descriptors, function)(_probs(), spacing)
    return build


def _barrier(t: torch.Tensor) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.core.barrier import extended_log_barrier

        return lambda: extended_log_barrier(torch.linspace(-1.0, 1.0, 5), t)
    return build


def _loss(probs: torch.Tensor, target: Any, spacing: Any = None) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.core.losses import ShapeDescriptorLoss

        return lambda: ShapeDescriptorLoss()(probs, target, spacing)
    return build


def _loss_with_bounds(volume_shape: tuple[int, ...], present_shape: tuple[int, ...] | None = None) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.core.bounds import DescriptorBounds
        from nnunet_shape.core.losses import shape_descriptor_loss

        present = None if present_shape is None else torch.ones(present_shape, dtype=torch.bool)
        bounds = DescriptorBounds(lower={"volume": torch.ones(volume_shape)},
                                  upper={"volume": torch.ones(volume_shape)}, present=present)
        return lambda: shape_descriptor_loss(_probs(), bounds, descriptors=("volume",))
    return build


def _write_image(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 2.0), origin=(3.0, -2.0, 5.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path), True)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _raw(tmp: Path, n_train: int = 2) -> Path:
    """A tiny raw nnU-Net dataset (imagesTr, labelsTr, dataset.json) under ``tmp``."""
    return write_tiny_dataset(tmp / "nnUNet_raw", n_train=n_train, n_test=0, shape=(6, 8, 7))


def _edit_dataset_json(folder: Path, **changes: Any) -> None:
    path = folder / "dataset.json"
    content = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    path.write_text(json.dumps(content))


def _label_free(tmp: Path) -> Path:
    """A raw dataset without label files (a label-free dataset before placeholder-labels); the
    real label files are kept in ``tmp/stash``."""
    folder = _raw(tmp)
    (tmp / "stash").mkdir()
    for path in (folder / "labelsTr").iterdir():
        path.rename(tmp / "stash" / path.name)
    return folder


def _placeholders(prepare: Callable[[Path], None], overwrite: bool = False) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.nnunet.label_free import write_placeholder_labels

        folder = _label_free(tmp)
        prepare(folder)
        labels = folder / "labelsTr"
        before = sorted(p.name for p in labels.iterdir()) if labels.is_dir() else None
        (tmp / "labels_before.json").write_text(json.dumps(before))
        return lambda: write_placeholder_labels(folder, overwrite=overwrite)
    return build


def _nothing_written(tmp: Path) -> None:
    """The refusal wrote no label file and left dataset.json without the placeholder flag."""
    from nnunet_shape.nnunet.label_free import PLACEHOLDER_FLAG

    folder = tmp / "nnUNet_raw" / "Dataset701_Tiny"
    before = json.loads((tmp / "labels_before.json").read_text())
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == before
    assert PLACEHOLDER_FLAG not in (folder / "dataset.json").read_text()


def _keep_one_label(folder: Path) -> None:
    """A half-labelled dataset: case_001 has its real label file, case_000 has none."""
    stash = folder.parent.parent / "stash"
    (folder / "labelsTr" / "case_001.nii.gz").write_bytes((stash / "case_001.nii.gz").read_bytes())


def _postprocessing_folders(tmp: Path) -> tuple[Path, Path]:
    predictions, references = tmp / "predictions", tmp / "references"
    predictions.mkdir()
    references.mkdir()
    segmentation = np.zeros((6, 8, 7), np.uint8)
    segmentation[1:3, 2:5, 2:5] = 1
    for folder in (predictions, references):
        _write_image(segmentation, folder / "case_00.nii.gz")
    (predictions / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1},
                                                          "file_ending": ".nii.gz"}))
    (predictions / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO",
                                                        "label_manager": "LabelManager"}))
    return predictions, references


def _apply_postprocessing(prepare: Callable[[Path, Path], Path]) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.nnunet.postprocessing import apply_postprocessing_to_folder_on_device

        predictions, _ = _postprocessing_folders(tmp)
        output = prepare(tmp, predictions)
        return lambda: apply_postprocessing_to_folder_on_device(str(predictions), str(output), [], [])
    return build


def _determine_postprocessing(prepare: Callable[[Path, Path], None]) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.nnunet.postprocessing import determine_postprocessing_on_device

        predictions, references = _postprocessing_folders(tmp)
        prepare(predictions, references)
        return lambda: determine_postprocessing_on_device(str(predictions), str(references), verbose=False)
    return build


def _pkl(content: bytes) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.nnunet.postprocessing import load_postprocessing_pkl

        (tmp / "postprocessing.pkl").write_bytes(content)
        return lambda: load_postprocessing_pkl(tmp / "postprocessing.pkl")
    return build


def _evaluate(prepare: Callable[[Path, Path], dict]) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.nnunet.evaluate import evaluate_folder

        predictions, references = _postprocessing_folders(tmp)
        kwargs = prepare(tmp, predictions)
        kwargs.setdefault("dataset_json", str(predictions / "dataset.json"))
        return lambda: evaluate_folder(references, predictions, **kwargs)
    return build


def _file_at(tmp: Path, name: str = "a_file") -> Path:
    (tmp / name).write_text("not a folder")
    return tmp / name


Change = Callable[[np.ndarray, sitk.Image], 'sitk.Image | np.ndarray']


def _rewrite_label(folder: Path, case: str, change: Change) -> None:
    """Rewrite ``labelsTr/<case>.nii.gz``: ``change(array, image)`` returns a new array (written with
    the old geometry) or a new image."""
    path = folder / "labelsTr" / f"{case}.nii.gz"
    image = sitk.ReadImage(str(path))
    result = change(sitk.GetArrayFromImage(image), image)
    if isinstance(result, np.ndarray):
        new = sitk.GetImageFromArray(result)
        new.CopyInformation(image)
        result = new
    sitk.WriteImage(result, str(path), True)


def _with_value(value: int) -> Callable[[np.ndarray, sitk.Image], np.ndarray]:
    def change(array: np.ndarray, image: sitk.Image) -> np.ndarray:
        array = array.astype(np.int16)
        array[0, 0, 0] = value
        return array
    return change


def _with_spacing(spacing_xyz: tuple[float, ...]) -> Callable[[np.ndarray, sitk.Image], sitk.Image]:
    def change(array: np.ndarray, image: sitk.Image) -> sitk.Image:
        new = sitk.GetImageFromArray(array)
        new.CopyInformation(image)
        new.SetSpacing(spacing_xyz)
        return new
    return change


def _one_more_slice(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    new = sitk.GetImageFromArray(np.pad(array, ((0, 1), (0, 0), (0, 0))))
    new.SetSpacing(image.GetSpacing())
    new.SetOrigin(image.GetOrigin())
    new.SetDirection(image.GetDirection())
    return new


def _export(prepare: Callable[[Path], dict[str, Any]]) -> Builder:
    """``export_dataset(dataset="701", ...)`` on a tiny raw dataset after ``prepare(folder)``, which
    returns extra keyword arguments."""
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.descriptor_files.export import export_dataset

        folder = _raw(tmp)
        mp.setenv("nnUNet_raw", str(tmp / "nnUNet_raw"))
        kwargs = prepare(folder)
        return lambda: export_dataset(dataset="701", num_processes=1, **kwargs)
    return build


def _exported_folder(raw: Path, out: Path) -> Path:
    """The descriptor files of a raw dataset's labelsTr, exported to ``out``."""
    from nnunet_shape.descriptor_files.export import export_files

    dataset_json = json.loads((raw / "dataset.json").read_text())
    files = {path.name[: -len(".nii.gz")]: path for path in sorted((raw / "labelsTr").glob("*.nii.gz"))}
    export_files(files, out, dataset_json, num_processes=1)
    return out


def _edit_descriptor_file(path: Path, **changes: Any) -> None:
    content = json.loads(path.read_text())
    content.update(changes)
    path.write_text(json.dumps(content))


def _copied_descriptor_file(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
    """case_001's file saved as case_002.json (the issue's example): read by its case_id it would be
    used for case_001, silently, while case_002 has no file of its own."""
    from nnunet_shape.descriptor_files.read import load_descriptor_folder

    raw = _raw(tmp)
    folder = _exported_folder(raw, tmp / "descriptors")
    (folder / "case_001.json").rename(folder / "case_002.json")
    return lambda: load_descriptor_folder(folder, json.loads((raw / "dataset.json").read_text()))


def _descriptor_geometry(field: str, value: Any) -> Builder:
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from nnunet_shape.descriptor_files.read import check_case_matches_image, load_case_descriptors

        folder = _exported_folder(_raw(tmp), tmp / "descriptors")
        case = load_case_descriptors(folder / "case_000.json")
        image = {"shape": case.shape, "spacing_mm": case.spacing_mm, "origin_mm": case.origin_mm,
                 "direction": case.direction}
        image[field] = value
        return lambda: check_case_matches_image(case, "imagesTr/case_000_0000.nii.gz", image["shape"],
                                                image["spacing_mm"], image["origin_mm"], image["direction"])
    return build


def _from_file_trainer(change: Callable[[Path], None]) -> Builder:
    """``nnUNetTrainerShapeDescriptorsFromFile.on_train_start`` on the session's planned
    Dataset701_Tiny with its descriptor files exported to ``tmp`` and changed by ``change``."""
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from e2e_helpers import make_trainer

        from nnunet_shape.nnunet.training.from_file import nnUNetTrainerShapeDescriptorsFromFile

        root, _ = request.getfixturevalue("planned")
        folder = _exported_folder(root / "nnUNet_raw" / "Dataset701_Tiny", tmp / "descriptors")
        change(folder)
        mp.setenv("nnUNetShape_descriptors", str(folder))
        trainer = make_trainer(root, nnUNetTrainerShapeDescriptorsFromFile, mp)
        return trainer.on_train_start
    return build


def _label_trainer_step_with_label(value: int) -> Builder:
    """One train_step of the voxel-label descriptor trainer on a batch whose label map holds ``value``."""
    def build(tmp: Path, mp: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Callable[[], Any]:
        from e2e_helpers import make_trainer

        from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors
        from nnunet_shape.nnunet.training.whole_scan import WholeCaseDataLoader

        root, _ = request.getfixturevalue("planned")
        trainer = make_trainer(root, nnUNetTrainerShapeDescriptors, mp)
        trainer.initialize()
        dataset_tr, _ = trainer.get_tr_and_val_datasets()
        patch = trainer.configuration_manager.patch_size
        batch = next(WholeCaseDataLoader(dataset_tr, 1, patch, patch, trainer.label_manager, transforms=None))
        batch["target"][0, 0, 2, 2, 2] = value
        trainer.network.train()
        return lambda: trainer.train_step(batch)
    return build


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf
SPACING = ("spacing must be finite and > 0",)

CASES: list[Case] = [
    # descriptor core: spacing, checked once per call on the host
    Case("core-volume-negative-spacing", _core("volume", (1.0, -1.0, 2.0)), ValueError, ("volume:", *SPACING, "-1.0")),
    Case("core-centroid-zero-spacing", _core("centroid", (0.0, 1.0, 1.0)), ValueError, ("centroid:", *SPACING)),
    Case("core-descriptors-nan-spacing", _core("compute_descriptors", (NAN, 1.0, 1.0)), ValueError,
         ("compute_descriptors:", *SPACING, "nan")),
    Case("core-moments-inf-spacing", _core("moments", (1.0, INF, 1.0)), ValueError, ("moments:", *SPACING, "inf")),
    Case("core-surface-per-case-spacing-zero", _core("surface", torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])),
         ValueError, ("surface:", *SPACING, "[1.0, 0.0, 1.0]")),
    Case("core-spread-negative-tensor-spacing", _core("spread", torch.tensor([-0.5, 1.0, 1.0])), ValueError,
         ("spread:", *SPACING)),
    # barrier: t as a tensor (the float path refused already)
    Case("barrier-tensor-t-zero", _barrier(torch.tensor(0.0)), ValueError, ("t must be a finite t > 0", "0.0")),
    Case("barrier-tensor-t-negative", _barrier(torch.tensor([[1.0], [-2.0]])), ValueError,
         ("t must be a finite t > 0", "-2.0")),
    Case("barrier-tensor-t-nan", _barrier(torch.tensor(NAN)), ValueError, ("t must be a finite t > 0", "nan")),
    # the loss
    Case("loss-label-not-below-K", _loss(_probs(), _labels(top=3)), ValueError,
         ("ShapeDescriptorLoss", "label 3", "K=3", "dataset.json")),
    Case("loss-float-label-map-not-below-K", _loss(_probs(), _labels(top=7).float()), ValueError, ("label 7", "K=3")),
    Case("loss-batch-mismatch-label-map", _loss(_probs(batch=2), _labels(batch=3)), ValueError,
         ("batch size 2", "target has 3")),
    Case("loss-batch-mismatch-soft-target", _loss(_probs(batch=2), _probs(batch=1)), ValueError,
         ("batch size 2", "target has 1")),
    Case("loss-negative-spacing", _loss(_probs(), _labels(), (1.0, 1.0, -2.0)), ValueError, SPACING),
    Case("loss-bounds-of-another-batch", _loss_with_bounds((3, 3)), ValueError,
         ("bounds for 'volume'", "(3, 3)", "expected (2, 3)")),
    Case("loss-bounds-of-another-class-count", _loss_with_bounds((2, 4)), ValueError,
         ("bounds for 'volume'", "K=3 classes")),
    Case("loss-presence-of-another-batch", _loss_with_bounds((1, 3), present_shape=(4, 3)), ValueError,
         ("bounds for 'present'", "(4, 3)")),
    # placeholder labels: checked first, nothing written on refusal
    Case("placeholders-some-labels-present", _placeholders(_keep_one_label), UserError,
         ("labelsTr", "1 of 2 cases already have a label file", "case_001.nii.gz", "--overwrite",
          "nothing was written"), after=_nothing_written),
    Case("placeholders-truncated-image",
         _placeholders(lambda f: _truncate(f / "imagesTr" / "case_001_0000.nii.gz")), UserError,
         ("case_001_0000.nii.gz", "truncated"), after=_nothing_written),
    Case("placeholders-no-image-matches-file-ending",
         _placeholders(lambda f: _edit_dataset_json(f, file_ending=".mha")), UserError,
         ("imagesTr", "*_0000.mha", "file_ending"), after=_nothing_written),
    Case("placeholders-broken-dataset-json",
         _placeholders(lambda f: (f / "dataset.json").write_text('{"labels": {"background": 0,')), UserError,
         ("dataset.json", "not valid JSON", "line 1")),
    Case("placeholders-dataset-json-without-file-ending",
         _placeholders(lambda f: _edit_dataset_json(f, file_ending=None)), UserError,
         ("dataset.json", "'file_ending'"), after=_nothing_written),
    Case("placeholders-no-foreground-label",
         _placeholders(lambda f: _edit_dataset_json(f, labels={"background": 0})), UserError,
         ("dataset.json", "no foreground label"), after=_nothing_written),
    Case("placeholders-labels-folder-is-a-file",
         _placeholders(lambda f: ((f / "labelsTr").rmdir(), (f / "labelsTr").write_text("x"))), UserError,
         ("labelsTr", "is a file")),
    # postprocessing: folders, files and dataset.json named, before any case is processed
    Case("apply-pp-output-is-a-file", _apply_postprocessing(lambda tmp, pred: _file_at(tmp)), UserError,
         ("output folder", "a_file", "is a file")),
    Case("apply-pp-output-not-writable", _apply_postprocessing(lambda tmp, pred: Path("/sys/nnunet-shape-test")),
         UserError, ("/sys/nnunet-shape-test", "cannot be created")),
    Case("apply-pp-no-file-matches-file-ending",
         _apply_postprocessing(lambda tmp, pred: (_edit_dataset_json(pred, file_ending=".mha"), tmp / "out")[1]),
         UserError, ("no '*.mha' files", "predictions", "file_ending")),
    Case("apply-pp-broken-dataset-json",
         _apply_postprocessing(lambda tmp, pred: ((pred / "dataset.json").write_text("{"), tmp / "out")[1]),
         UserError, ("dataset.json", "predictions/dataset.json", "not valid JSON")),
    Case("apply-pp-missing-plans",
         _apply_postprocessing(lambda tmp, pred: ((pred / "plans.json").unlink(), tmp / "out")[1]),
         UserError, ("plans.json", "-plans_json")),
    Case("determine-pp-prediction-without-reference",
         _determine_postprocessing(lambda pred, ref: (ref / "case_00.nii.gz").unlink()), UserError,
         ("have no reference", "case_00.nii.gz")),
    Case("determine-pp-dataset-json-without-labels",
         _determine_postprocessing(lambda pred, ref: _edit_dataset_json(pred, labels=None)), UserError,
         ("dataset.json", "'labels'")),
    Case("determine-pp-truncated-reference",
         _determine_postprocessing(lambda pred, ref: _truncate(ref / "case_00.nii.gz")), UserError,
         ("references/case_00.nii.gz", "truncated")),
    Case("pp-pkl-not-a-pickle", _pkl(b"not a pickle"), UserError,
         ("postprocessing.pkl", "not a readable postprocessing.pkl")),
    Case("pp-pkl-wrong-content", _pkl(pickle.dumps({"functions": []})), UserError,
         ("postprocessing.pkl", "expected (pp_fns, pp_fn_kwargs)")),
    # evaluate
    Case("evaluate-broken-dataset-json",
         _evaluate(lambda tmp, pred: ((pred / "dataset.json").write_text('{"labels": '), {})[1]), UserError,
         ("dataset.json", "not valid JSON")),
    Case("evaluate-truncated-prediction",
         _evaluate(lambda tmp, pred: (_truncate(pred / "case_00.nii.gz"), {})[1]), UserError,
         ("predictions/case_00.nii.gz", "truncated")),
    Case("evaluate-output-is-a-file", _evaluate(lambda tmp, pred: {"output_dir": _file_at(tmp)}), UserError,
         ("a_file", "is a file")),
    # the exporter: label values, image geometry, files and folders, before anything is written
    Case("export-label-value-not-in-dataset-json",
         _export(lambda f: (_rewrite_label(f, "case_001", _with_value(7)), {})[1]), UserError,
         ("case_001.nii.gz", "label value(s) 7", "dataset.json does not name", "--ignore-unknown-labels")),
    Case("export-negative-label-value", _export(lambda f: (_rewrite_label(f, "case_000", _with_value(-1)), {})[1]),
         UserError, ("case_000.nii.gz", "label value(s) -1")),
    Case("export-label-spacing-differs-from-image",
         _export(lambda f: (_rewrite_label(f, "case_001", _with_spacing((1.0, 1.0, 2.5))), {})[1]), UserError,
         ("case_001.nii.gz", "does not match its image", "case_001_0000.nii.gz", "spacing_mm")),
    Case("export-label-shape-differs-from-image",
         _export(lambda f: (_rewrite_label(f, "case_000", _one_more_slice), {})[1]), UserError,
         ("case_000.nii.gz", "does not match its image", "shape")),
    Case("export-truncated-label-map", _export(lambda f: (_truncate(f / "labelsTr" / "case_001.nii.gz"), {})[1]),
         UserError, ("case_001.nii.gz", "truncated")),
    Case("export-non-integer-label-map",
         _export(lambda f: (_rewrite_label(f, "case_000", lambda a, i: a.astype(np.float32) + 0.5), {})[1]),
         UserError, ("case_000.nii.gz", "non-integer")),
    Case("export-output-is-a-file", _export(lambda f: {"output_folder": _file_at(f)}), UserError,
         ("output folder", "a_file", "is a file")),
    Case("export-output-not-writable", _export(lambda f: {"output_folder": Path("/sys/nnunet-shape-export")}),
         UserError, ("/sys/nnunet-shape-export", "cannot be created")),
    Case("export-no-file-matches-file-ending", _export(lambda f: (_edit_dataset_json(f, file_ending=".mha"), {})[1]),
         UserError, ("no '*.mha' label maps", "labelsTr", "file_ending")),
    Case("export-broken-dataset-json",
         _export(lambda f: ((f / "dataset.json").write_text('{"labels": }'), {})[1]), UserError,
         ("dataset.json", "Dataset701_Tiny/dataset.json", "not valid JSON")),
    Case("export-dataset-json-without-file-ending", _export(lambda f: (_edit_dataset_json(f, file_ending=None), {})[1]),
         UserError, ("dataset.json", "'file_ending'")),
    # descriptor files against their name and their image
    Case("descriptor-file-name-is-another-case", _copied_descriptor_file, UserError,
         ("case_002.json", "case_id 'case_001' does not match the file name", "expected 'case_002'")),
    Case("descriptor-file-shape-vs-image", _descriptor_geometry("shape", (6, 8, 8)), UserError,
         ("$.shape", "does not match the image", "case_000_0000.nii.gz", "[6.0, 8.0, 8.0]")),
    Case("descriptor-file-spacing-vs-image", _descriptor_geometry("spacing_mm", (2.0, 1.0, 1.5)), UserError,
         ("$.spacing_mm", "[2.0, 1.0, 1.0]", "[2.0, 1.0, 1.5]")),
    Case("descriptor-file-origin-vs-image", _descriptor_geometry("origin_mm", (10.0, -5.0, 13.0)), UserError,
         ("$.origin_mm", "[10.0, -5.0, 3.0]", "[10.0, -5.0, 13.0]")),
    Case("descriptor-file-direction-vs-image",
         _descriptor_geometry("direction", [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), UserError,
         ("$.direction", "does not match the image")),
    # trainers: every case checked when the label-free trainer starts; labels >= K in a step
    Case("from-file-trainer-file-of-another-shape",
         _from_file_trainer(lambda f: _edit_descriptor_file(f / "case_003.json", shape=[12, 24, 99])), UserError,
         ("case_003.json", "case 'case_003'", "$.shape", "[12.0, 24.0, 99.0]", "of case case_003")),
    Case("from-file-trainer-file-of-another-spacing",
         _from_file_trainer(lambda f: _edit_descriptor_file(f / "case_001.json", spacing_mm=[2.0, 1.0, 0.5])),
         UserError, ("case_001.json", "$.spacing_mm", "[2.0, 1.0, 0.5]", "[2.0, 1.0, 1.0]")),
    Case("from-file-trainer-missing-file", _from_file_trainer(lambda f: (f / "case_004.json").unlink()), UserError,
         ("1 of 5 cases", "Dataset701_Tiny", "no descriptor file", "case_004")),
    Case("label-trainer-label-not-below-K", _label_trainer_step_with_label(5), ValueError,
         ("label 5", "K=3", "dataset.json")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_clearly(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      request: pytest.FixtureRequest) -> None:
    action = case.build(tmp_path, monkeypatch, request)
    with pytest.raises(case.error) as info:
        action()
    message = str(info.value)
    missing = [word for word in case.words if word not in message]
    assert not missing, f"message {message!r} lacks {missing}"
    assert ".py:" not in message  # names the user's input, never our module file
    if case.after is not None:
        case.after(tmp_path)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) + len(CLI_CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


# ----------------------------------------------------------------------------------------------
# console scripts: one line, exit code 2, no traceback
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CliCase:
    name: str
    build: Callable[[Path, pytest.MonkeyPatch], list[str]]  # returns argv of the console script
    words: tuple[str, ...]
    script: str = "nnunet-shape"  # or "nnUNetv2_export_descriptors"


def _cli_placeholders_half_labelled(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    folder = _label_free(tmp)
    _keep_one_label(folder)
    return ["placeholder-labels", "-i", str(folder)]


def _cli_placeholders_unknown_dataset(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    _raw(tmp)
    mp.setenv("nnUNet_raw", str(tmp / "nnUNet_raw"))
    return ["placeholder-labels", "-d", "999"]


def _cli_apply_pp_output_file(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    predictions, _ = _postprocessing_folders(tmp)
    (tmp / "pp.pkl").write_bytes(pickle.dumps(([], [])))
    return ["apply-postprocessing", "-i", str(predictions), "-o", str(_file_at(tmp)), "-pp_pkl_file",
            str(tmp / "pp.pkl"), "-device", "cpu"]


def _cli_apply_pp_missing_pkl(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    predictions, _ = _postprocessing_folders(tmp)
    return ["apply-postprocessing", "-i", str(predictions), "-o", str(tmp / "out"), "-pp_pkl_file",
            str(tmp / "missing.pkl"), "-device", "cpu"]


def _cli_determine_missing_folder(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    _, references = _postprocessing_folders(tmp)
    return ["determine-postprocessing", "-i", str(tmp / "no_such_folder"), "-ref", str(references), "-device", "cpu"]


def _cli_apply_pp_garbage_pkl(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    predictions, _ = _postprocessing_folders(tmp)
    (tmp / "pp.pkl").write_bytes(b"\x80\x04garbage")
    return ["apply-postprocessing", "-i", str(predictions), "-o", str(tmp / "out"), "-pp_pkl_file",
            str(tmp / "pp.pkl"), "-device", "cpu"]


def _cli_export(prepare: Callable[[Path], list[str]]) -> Callable[[Path, pytest.MonkeyPatch], list[str]]:
    def build(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
        folder = _raw(tmp)
        mp.setenv("nnUNet_raw", str(tmp / "nnUNet_raw"))
        return ["-d", "701", "--np", "1", *prepare(folder)]
    return build


def _cli_evaluate_broken_dataset_json(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    predictions, references = _postprocessing_folders(tmp)
    (tmp / "dataset.json").write_text("{'labels': 1}")
    return ["evaluate", "-ref", str(references), "-pred", str(predictions), "-djfile", str(tmp / "dataset.json")]


CLI_CASES: list[CliCase] = [
    CliCase("placeholder-labels-refuses-half-labelled", _cli_placeholders_half_labelled,
            ("nnunet-shape placeholder-labels: error:", "already have a label file", "--overwrite")),
    CliCase("placeholder-labels-unknown-dataset", _cli_placeholders_unknown_dataset,
            ("nnunet-shape placeholder-labels: error:", "Dataset999_*")),
    CliCase("apply-postprocessing-output-is-a-file", _cli_apply_pp_output_file,
            ("nnunet-shape apply-postprocessing: error:", "a_file", "is a file")),
    CliCase("apply-postprocessing-missing-pkl", _cli_apply_pp_missing_pkl,
            ("nnunet-shape apply-postprocessing: error:", "missing.pkl", "No such file")),
    CliCase("determine-postprocessing-missing-folder", _cli_determine_missing_folder,
            ("nnunet-shape determine-postprocessing: error:", "no_such_folder")),
    CliCase("evaluate-broken-dataset-json", _cli_evaluate_broken_dataset_json,
            ("nnunet-shape evaluate: error:", "dataset.json", "not valid JSON", "line 1")),
    CliCase("apply-postprocessing-garbage-pkl", _cli_apply_pp_garbage_pkl,
            ("nnunet-shape apply-postprocessing: error:", "pp.pkl", "not a readable postprocessing.pkl")),
    CliCase("export-unknown-label-value", _cli_export(lambda f: (_rewrite_label(f, "case_000", _with_value(9)), [])[1]),
            ("nnUNetv2_export_descriptors: error:", "case_000.nii.gz", "label value(s) 9", "--ignore-unknown-labels"),
            script="nnUNetv2_export_descriptors"),
    CliCase("export-truncated-label-map",
            _cli_export(lambda f: (_truncate(f / "labelsTr" / "case_000.nii.gz"), [])[1]),
            ("nnUNetv2_export_descriptors: error:", "case_000.nii.gz", "truncated"),
            script="nnUNetv2_export_descriptors"),
    CliCase("export-output-is-a-file", _cli_export(lambda f: ["-o", str(_file_at(f))]),
            ("nnUNetv2_export_descriptors: error:", "a_file", "is a file"), script="nnUNetv2_export_descriptors"),
    CliCase("export-broken-dataset-json", _cli_export(lambda f: ((f / "dataset.json").write_text("{"), [])[1]),
            ("nnUNetv2_export_descriptors: error:", "dataset.json", "not valid JSON"),
            script="nnUNetv2_export_descriptors"),
    CliCase("export-through-nnunet-shape-no-matching-file",
            lambda tmp, mp: ["export-descriptors", *_cli_export(
                lambda f: (_edit_dataset_json(f, file_ending=".nrrd"), [])[1])(tmp, mp)],
            ("nnUNetv2_export_descriptors: error:", "no '*.nrrd' label maps")),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.name for case in CLI_CASES])
def test_console_script_reports_bad_input_in_one_line(case: CliCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    if case.script == "nnunet-shape":
        from nnunet_shape.cli import main
    else:
        from nnunet_shape.descriptor_files.cli import main

    argv = case.build(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    missing = [word for word in case.words if word not in lines[0]]
    assert not missing, f"stderr {err!r} lacks {missing}"


def test_unexpected_exceptions_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug is not the user's fault: it propagates (Python prints its traceback), no exit code 2."""
    from nnunet_shape import cli

    def broken(argv):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "trainers_dir_main", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["trainers-dir"])


# ----------------------------------------------------------------------------------------------
# inputs that must now work
# ----------------------------------------------------------------------------------------------

def test_float16_volume_above_65504_is_exact_not_inf() -> None:
    from nnunet_shape.core.descriptors import compute_descriptors, surface, volume

    big = torch.ones(1, 1, 64, 64, 32, dtype=torch.float16)  # 131072 voxels
    assert volume(big).dtype == torch.float32 and volume(big).item() == 131072
    assert volume(big[:, :, :4]).dtype == torch.float16  # small results keep the input dtype
    # a half-filled grid: 64 * 64 * 16 voxels at the cut, each face 2 x 3 mm
    half = torch.zeros(1, 1, 64, 64, 32, dtype=torch.float16)
    half[..., :16] = 1
    area = surface(half, (2.0, 3.0, 1.0))
    assert torch.isfinite(area).all() and area.item() == 64 * 64 * 6.0
    values = compute_descriptors(big, (1.0, 1.0, 1.0), ("volume", "centroid"))
    assert values["volume"].item() == 131072 and values["centroid"].dtype == torch.float16


def test_bfloat16_segmentation_to_the_largest_component_function() -> None:
    from nnunet_shape.core.connected_components import remove_all_but_largest_component_from_segmentation

    segmentation = torch.zeros(6, 6, 6, dtype=torch.bfloat16)
    segmentation[0:2, 0:2, 0:2] = 1
    segmentation[4, 4, 4] = 1  # a one-voxel island, removed
    result = remove_all_but_largest_component_from_segmentation(segmentation, [1])
    assert result.dtype == torch.bfloat16
    assert result.sum().item() == 8 and result[4, 4, 4].item() == 0


def test_placeholder_flag_is_written_before_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted while writing (here: a failing second write), the dataset is already flagged, so
    no voxel-label trainer can take the placeholders already written for real labels."""
    from nnunet_shape.nnunet import label_free

    folder = _label_free(tmp_path)
    calls = []
    real_write = sitk.WriteImage

    def failing_write(image, path, *args):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(image, path, *args)

    monkeypatch.setattr(label_free.sitk, "WriteImage", failing_write)
    with pytest.raises(KeyboardInterrupt):
        label_free.write_placeholder_labels(folder)
    assert json.loads((folder / "dataset.json").read_text())[label_free.PLACEHOLDER_FLAG] is True
    assert [p.name for p in (folder / "labelsTr").iterdir() if not p.name.startswith(".")] == ["case_000.nii.gz"]
    monkeypatch.setattr(label_free.sitk, "WriteImage", real_write)
    assert len(label_free.write_placeholder_labels(folder)) == 2  # re-running completes it


def test_label_check_costs_no_host_sync_on_cuda() -> None:
    """On CUDA the label check is deferred (pinned copy + event): the call does not raise at once,
    ``flush`` raises; the next forward raises once the device has caught up."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from nnunet_shape.core.losses import ShapeDescriptorLoss

    loss = ShapeDescriptorLoss()
    probs, labels = _probs().cuda(), _labels(top=5).cuda()
    loss(probs, labels)  # no exception yet: no host sync in the step
    with pytest.raises(ValueError, match="label 5"):
        loss.label_check.flush()
    loss(probs, labels)
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match="label 5"):
        loss(probs, _labels().cuda())


def test_ignore_unknown_labels_exports_and_leaves_the_voxels_out(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunet_shape.descriptor_files.export import export_dataset

    folder = _raw(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    label_file = folder / "labelsTr" / "case_000.nii.gz"
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    _rewrite_label(folder, "case_000", lambda a, i: np.where(a == 2, 7, a).astype(np.uint8))  # blob_b -> 7
    report = export_dataset(dataset="701", num_processes=1, ignore_unknown_labels=True)
    assert report.computed == ["case_000", "case_001"]
    case = json.loads((folder / "descriptorsTr" / "case_000.json").read_text())
    assert case["classes"]["blob_b"]["voxels"] == 0  # the value-7 voxels belong to no class
    assert case["classes"]["blob_a"]["voxels"] == int((before == 1).sum())


def test_sigkill_during_an_export_then_a_rerun_completes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Already worked, kept working: a hard kill mid-export leaves only complete case files (atomic
    writes), and the re-run computes the missing cases and skips the written ones."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = _raw(tmp_path, n_train=4)
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "nnUNet_raw")}
    slow_export = ("import sys, time; import nnunet_shape.descriptor_files.export as e; real = e.export_case; "
                   "e.export_case = lambda task: (time.sleep(1.5), real(task))[1]; "
                   "from nnunet_shape.descriptor_files.cli import main; sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", slow_export, "-d", "701", "--np", "1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = folder / "descriptorsTr"
    deadline = time.monotonic() + 60
    while not list(out.glob("case_*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = sorted(p.name for p in out.glob("case_*.json"))
    assert 1 <= len(written) < 4
    for path in out.glob("case_*.json"):
        json.loads(path.read_text())  # complete files only
    from nnunet_shape.descriptor_files.export import export_dataset

    monkeypatch.setenv("nnUNet_raw", env["nnUNet_raw"])
    report = export_dataset(dataset="701", num_processes=1)
    assert report.skipped == [name[:-5] for name in written]  # the complete files are kept
    assert sorted(report.computed + report.skipped) == [f"case_{i:03d}" for i in range(4)]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") and not p.name.startswith(".")]
