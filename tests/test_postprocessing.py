"""Largest-component postprocessing: equality with nnU-Net, backends, connectivity, CLI round trips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from multiprocessing.pool import ThreadPool
from pathlib import Path
from types import SimpleNamespace

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.postprocessing.remove_connected_components import (
    apply_postprocessing as nnunet_apply_postprocessing,
)
from nnunetv2.postprocessing.remove_connected_components import (
    determine_postprocessing as nnunet_determine_postprocessing,
)
from nnunetv2.postprocessing.remove_connected_components import (
    remove_all_but_largest_component_from_segmentation as nnunet_lcc,
)

from nnunet_shape.core.connected_components import (
    RemoveAllButLargestComponent,
    is_largest_component_function,
    label_components_torch,
    largest_component_mask,
    neighbourhood_max,
    postprocess_logits_argmax,
)
from nnunet_shape.core.connected_components import (
    remove_all_but_largest_component_from_segmentation as ours,
)

BACKENDS = ["cc3d", "torch"]
VENV_BIN = Path(sys.executable).parent


def random_label_map(shape: tuple[int, ...], n_labels: int, seed: int, density: float = 0.35) -> np.ndarray:
    """Blobby random labels: smoothed noise thresholded per label (many components of many sizes)."""
    rng = np.random.default_rng(seed)
    segmentation = np.zeros(shape, dtype=np.uint8)
    for value in range(1, n_labels + 1):
        noise = rng.random(shape)
        for axis in range(len(shape)):  # a 3-tap box blur per axis makes blobs instead of salt
            noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3
        segmentation[noise > np.quantile(noise, 1 - density / n_labels)] = value
    return segmentation


def run_ours(segmentation: np.ndarray, labels_or_regions, backend: str, as_tensor: bool, **kwargs) -> np.ndarray:
    if as_tensor:
        result = ours(torch.from_numpy(segmentation), labels_or_regions, backend=backend, **kwargs)
        assert isinstance(result, torch.Tensor)
        return result.numpy()
    result = ours(segmentation, labels_or_regions, backend=backend, **kwargs)
    assert isinstance(result, np.ndarray)
    return result


def same_partition(labels_a: np.ndarray, labels_b: np.ndarray) -> bool:
    """Same foreground and a one-to-one correspondence between component ids."""
    if not np.array_equal(labels_a > 0, labels_b > 0):
        return False
    pairs = np.unique(np.stack([labels_a.ravel(), labels_b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


# ----------------------------------------------------------------------------------------------
# equality with nnU-Net's function
# ----------------------------------------------------------------------------------------------

LABELS_OR_REGIONS = [1, [1, 2, 3], (1, 3), [(1, 2), 3], [2]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("shape", [(40, 36), (14, 18, 16), (1, 30, 30)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_nnunet_on_random_blobs(backend, as_tensor, shape, seed):
    segmentation = random_label_map(shape, n_labels=3, seed=seed)
    for labels_or_regions in LABELS_OR_REGIONS:
        expected = nnunet_lcc(segmentation, labels_or_regions)
        assert np.array_equal(run_ours(segmentation, labels_or_regions, backend, as_tensor), expected), \
            (labels_or_regions, shape, seed)


def _single_voxel() -> np.ndarray:
    segmentation = np.zeros((5, 6, 7), dtype=np.uint8)
    segmentation[2, 3, 4] = 1
    return segmentation


def _border_frame() -> np.ndarray:
    """Label 1 touches all six faces (a hollow shell) and has one island inside; label 2 is a
    line through the first and last voxel along every axis."""
    segmentation = np.zeros((8, 9, 10), dtype=np.int16)
    segmentation[[0, -1], :, :] = 1
    segmentation[:, [0, -1], :] = 1
    segmentation[:, :, [0, -1]] = 1
    segmentation[4, 4, 4] = 1
    segmentation[3:5, 3:6, 6] = 2
    return segmentation


def _many_islands() -> np.ndarray:
    """Isolated single voxels (every other voxel on every axis) plus one 2x2x2 cube."""
    segmentation = np.zeros((12, 12, 12), dtype=np.uint8)
    segmentation[::2, ::2, ::2] = 1
    segmentation[8:10, 8:10, 8:10] = 1
    return segmentation


SPECIAL_CASES = {
    "single voxel": (_single_voxel, [1], None),
    "empty label": (_single_voxel, [2], None),
    "empty region": (_single_voxel, (2, 3), None),
    "all empty": (lambda: np.zeros((4, 5, 6), dtype=np.uint8), [1, 2], None),
    "touches every border": (_border_frame, [1], None),
    "border and line": (_border_frame, [1, 2], None),
    "many islands": (_many_islands, 1, None),
    "float segmentation": (lambda: _border_frame().astype(np.float32), [1], None),
    "background label 7": (_many_islands, 1, 7),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("case", list(SPECIAL_CASES))
def test_equals_nnunet_on_special_cases(backend, as_tensor, case):
    make, labels_or_regions, background_label = SPECIAL_CASES[case]
    segmentation = make()
    extra = {} if background_label is None else {"background_label": background_label}
    expected = nnunet_lcc(segmentation, labels_or_regions, **extra)
    assert np.array_equal(run_ours(segmentation, labels_or_regions, backend, as_tensor, **extra), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_many_islands(backend):
    segmentation = _many_islands()
    result = ours(segmentation, 1, backend=backend)
    expected = np.zeros_like(segmentation)
    # the cube 8..9 survives with the 7 lattice voxels in {8, 10}^3 outside it: each touches the
    # cube by a face, an edge or a corner (26-connectivity); the other 209 single voxels go
    expected[8:10, 8:10, 8:10] = 1
    expected[8:11:2, 8:11:2, 8:11:2] = 1
    assert expected.sum() == 15
    assert np.array_equal(result, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_ties_keep_every_largest_component(backend, as_tensor):
    # 2D, 8-connectivity: two 3-pixel components tie, a 1-pixel one goes; label 2 is untouched
    segmentation = np.array([[1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 0, 1, 0],
                             [2, 0, 0, 0, 1, 0],
                             [0, 0, 1, 0, 1, 0]], dtype=np.uint8)
    expected = segmentation.copy()
    expected[3, 2] = 0
    assert np.array_equal(nnunet_lcc(segmentation, 1), expected)  # the rule we reproduce
    assert np.array_equal(run_ours(segmentation, 1, backend, as_tensor), expected)


# ----------------------------------------------------------------------------------------------
# connectivity
# ----------------------------------------------------------------------------------------------

# two voxels of a 2-voxel bar at (0,0,0), (0,1,0) and one more voxel touching the bar by
# a corner, an edge or a face only: kept (same component) when the connectivity includes that contact
CONTACTS_3D = {"corner": (1, 2, 1), "edge": (1, 2, 0), "face": (0, 2, 0)}
CONNECTED_3D = {6: {"face"}, 18: {"face", "edge"}, 26: {"face", "edge", "corner"}}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("contact", list(CONTACTS_3D))
def test_connectivity_3d_by_hand(backend, connectivity, contact):
    segmentation = np.zeros((3, 4, 3), dtype=np.uint8)
    segmentation[0, 0, 0] = segmentation[0, 1, 0] = 1
    segmentation[CONTACTS_3D[contact]] = 1
    result = ours(segmentation, 1, connectivity=connectivity, backend=backend)
    expected = segmentation.copy()
    if contact not in CONNECTED_3D[connectivity]:
        expected[CONTACTS_3D[contact]] = 0
    assert np.array_equal(result, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("connectivity, diagonal_connects", [(4, False), (8, True)])
def test_connectivity_2d_by_hand(backend, connectivity, diagonal_connects):
    segmentation = np.array([[1, 1, 0],
                             [0, 0, 1]], dtype=np.uint8)
    expected = segmentation.copy()
    if not diagonal_connects:
        expected[1, 2] = 0
    assert np.array_equal(ours(segmentation, 1, connectivity=connectivity, backend=backend), expected)


def test_default_connectivity_is_nnunets_full_connectivity():
    segmentation = random_label_map((12, 14, 10), 2, seed=5)
    assert np.array_equal(ours(segmentation, 1), ours(segmentation, 1, connectivity=26))
    flat = segmentation[3]
    assert np.array_equal(ours(flat, 1), ours(flat, 1, connectivity=8))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64])
def test_torch_labeller_equals_cc3d_3d(connectivity, seed, label_dtype, device):
    mask = np.random.default_rng(seed).random((13, 11, 12)) < 0.3
    labels, _ = label_components_torch(torch.from_numpy(mask).to(device), connectivity, label_dtype=label_dtype)
    labels = labels.cpu()
    assert labels.dtype == label_dtype
    assert same_partition(labels.numpy(), cc3d.connected_components(mask, connectivity=connectivity))


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64])
def test_torch_labeller_equals_cc3d_2d(connectivity, seed, label_dtype, device):
    mask = np.random.default_rng(seed).random((30, 27)) < 0.45
    labels, _ = label_components_torch(torch.from_numpy(mask).to(device), connectivity, label_dtype=label_dtype)
    labels = labels.cpu()
    assert same_partition(labels.numpy(), cc3d.connected_components(mask, connectivity=connectivity))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_both_backends_agree_with_explicit_connectivity(connectivity):
    segmentation = random_label_map((16, 15, 14), 3, seed=3, density=0.5)
    for labels_or_regions in LABELS_OR_REGIONS:
        by_cc3d = ours(segmentation, labels_or_regions, connectivity=connectivity, backend="cc3d")
        by_torch = ours(segmentation, labels_or_regions, connectivity=connectivity, backend="torch")
        assert np.array_equal(by_cc3d, by_torch)


def test_torch_labels_name_components_by_largest_index():
    mask = torch.tensor([[1, 1, 0, 1],
                         [0, 0, 0, 1],
                         [1, 0, 0, 0]], dtype=torch.bool)
    labels, _ = label_components_torch(mask, 4)
    # flat indices: {0,1} -> 1+1, {3,7} -> 7+1, {8} -> 8+1
    assert labels.tolist() == [[2, 2, 0, 8], [0, 0, 0, 8], [9, 0, 0, 0]]


def _snake(size: int) -> np.ndarray:
    """One 1-pixel-wide boustrophedon path through a size x size square (~size**2 / 2 pixels long)."""
    mask = np.zeros((size, size), dtype=bool)
    mask[::2, :] = True
    for row in range(1, size, 2):
        mask[row, -1 if (row // 2) % 2 == 0 else 0] = True
    return mask


@pytest.mark.parametrize("connectivity", [4, 8])
def test_torch_labeller_converges_on_a_long_snake(connectivity, device):
    mask = _snake(41)
    mask_with_island = np.pad(mask, ((0, 2), (0, 0)))
    mask_with_island[-1, 5] = True
    labels, iterations = label_components_torch(torch.from_numpy(mask_with_island).to(device), connectivity)
    labels = labels.cpu()
    assert len(np.unique(labels.numpy())) == 3  # background, snake, island
    assert same_partition(labels.numpy(), cc3d.connected_components(mask_with_island, connectivity=connectivity))
    assert iterations >= 2
    snake_label = labels[0, 0]
    assert bool((labels[:41][torch.from_numpy(mask)] == snake_label).all())


@pytest.mark.parametrize("connectivity, offsets", [
    (4, {(0, 1), (1, 0), (0, -1), (-1, 0)}),
    (8, {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)} - {(0, 0)}),
    (6, {(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)}),
    (18, {(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
          if 0 < abs(a) + abs(b) + abs(c) <= 2}),
    (26, {(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)} - {(0, 0, 0)}),
])
def test_neighbourhood_max_reaches_exactly_the_neighbourhood(connectivity, offsets, device):
    ndim = len(next(iter(offsets)))
    centre = (2,) * ndim
    impulse = torch.zeros((5,) * ndim, dtype=torch.int64, device=device)
    impulse[centre] = 7
    spread = neighbourhood_max(impulse, connectivity)
    reached = {tuple(int(i) - 2 for i in index) for index in torch.nonzero(spread)}
    assert reached == offsets | {(0,) * ndim}


# ----------------------------------------------------------------------------------------------
# types, devices, inputs left alone, errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32])
def test_type_dtype_kept_and_input_not_modified(backend, dtype):
    segmentation = random_label_map((10, 12, 9), 2, seed=4).astype(dtype)
    original = segmentation.copy()
    result = ours(segmentation, [1, 2], backend=backend)
    assert isinstance(result, np.ndarray) and result.dtype == dtype
    assert np.array_equal(segmentation, original)
    assert not np.shares_memory(result, segmentation)

    tensor = torch.from_numpy(segmentation.copy())
    tensor_original = tensor.clone()
    tensor_result = ours(tensor, [1, 2], backend=backend)
    assert isinstance(tensor_result, torch.Tensor)
    assert tensor_result.dtype == tensor.dtype and tensor_result.device == tensor.device
    assert torch.equal(tensor, tensor_original)
    tensor_result.fill_(3)  # no aliasing with the input either
    assert torch.equal(tensor, tensor_original)
    assert np.array_equal(ours(segmentation, [1, 2], backend=backend), nnunet_lcc(original, [1, 2]))


def test_non_contiguous_tensor():
    segmentation = torch.from_numpy(random_label_map((12, 10, 14), 2, seed=6)).permute(2, 0, 1)
    expected = nnunet_lcc(np.ascontiguousarray(segmentation.numpy()), 1)
    for backend in BACKENDS:
        assert np.array_equal(ours(segmentation, 1, backend=backend).numpy(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_largest_component_mask(backend):
    mask = _many_islands() > 0
    kept = largest_component_mask(mask, backend=backend)
    assert kept.sum() == 15 and kept[8:10, 8:10, 8:10].all()  # see test_hand_computed_many_islands
    assert mask.sum() == 6 ** 3 + 7  # input untouched
    kept_tensor = largest_component_mask(torch.from_numpy(mask), backend=backend)
    assert np.array_equal(kept_tensor.numpy(), kept)
    with pytest.raises(TypeError, match="bool mask"):
        largest_component_mask(mask.astype(np.uint8))


def test_module_wrapper():
    segmentation = torch.from_numpy(random_label_map((10, 11, 12), 3, seed=7))
    module = RemoveAllButLargestComponent([(1, 2), 3], connectivity=18, backend="torch")
    assert torch.equal(module(segmentation),
                       ours(segmentation, [(1, 2), 3], connectivity=18, backend="cc3d"))


@pytest.mark.parametrize("segmentation, kwargs, error, match", [
    (np.zeros((4, 4), np.uint8), {"connectivity": 6}, ValueError, "connectivity 6 is not valid for a 2D"),
    (np.zeros((4, 4, 4), np.uint8), {"connectivity": 8}, ValueError, "connectivity 8 is not valid for a 3D"),
    (np.ones((2, 2, 2, 2), np.uint8), {}, ValueError, "2D or 3D"),
    (np.ones((4, 4), np.uint8), {"backend": "gpu"}, ValueError, "unknown backend"),
    (np.ones((4, 4), np.uint8), {"backend": "cucim"}, ValueError, "needs a CUDA tensor"),
    (torch.ones((4, 4), dtype=torch.uint8), {"backend": "cucim"}, ValueError, "needs a CUDA tensor"),
    ([[1, 1]], {}, TypeError, "numpy array or a torch tensor"),
])
def test_errors_name_the_case(segmentation, kwargs, error, match):
    with pytest.raises(error, match=match):
        ours(segmentation, 1, **kwargs)


# ----------------------------------------------------------------------------------------------
# postprocess_logits_argmax: a postprocessing.pkl applied to a tensor
# ----------------------------------------------------------------------------------------------

def _relabel_three_to_one(segmentation: np.ndarray) -> np.ndarray:
    result = segmentation.copy()
    result[result == 3] = 1
    return result


@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
def test_postprocess_logits_argmax_equals_nnunet_apply(backend):
    segmentation = random_label_map((14, 12, 13), 3, seed=8)
    pp_fns = [nnunet_lcc, nnunet_lcc, nnunet_lcc]
    pp_fn_kwargs = [{"labels_or_regions": [1, 2, 3]}, {"labels_or_regions": 2}, {"labels_or_regions": (1, 3)}]
    expected = nnunet_apply_postprocessing(segmentation, pp_fns, pp_fn_kwargs)
    tensor = torch.from_numpy(segmentation)
    result = postprocess_logits_argmax(tensor, pp_fns, pp_fn_kwargs, backend=backend)
    assert np.array_equal(result.numpy(), expected)
    assert torch.equal(tensor, torch.from_numpy(segmentation))


def test_postprocess_logits_argmax_other_functions_and_empty_list():
    assert is_largest_component_function(nnunet_lcc) and is_largest_component_function(ours)
    assert not is_largest_component_function(_relabel_three_to_one)
    segmentation = random_label_map((9, 10, 11), 3, seed=9)
    tensor = torch.from_numpy(segmentation)
    with pytest.warns(UserWarning, match="host copy"):
        result = postprocess_logits_argmax(tensor, [_relabel_three_to_one, nnunet_lcc],
                                           [{}, {"labels_or_regions": 1}])
    expected = nnunet_lcc(_relabel_three_to_one(segmentation), 1)
    assert np.array_equal(result.numpy(), expected) and result.dtype == tensor.dtype
    unchanged = postprocess_logits_argmax(tensor, [], [])
    assert torch.equal(unchanged, tensor) and unchanged.data_ptr() != tensor.data_ptr()
    with pytest.raises(ValueError, match="2 postprocessing functions but 1"):
        postprocess_logits_argmax(tensor, [nnunet_lcc, nnunet_lcc], [{}])


# ----------------------------------------------------------------------------------------------
# determine / apply on folders, against nnU-Net's own code and console script
# ----------------------------------------------------------------------------------------------

def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((3.0, -2.0, 5.0))
    sitk.WriteImage(image, str(path))


def write_cross_validation_folders(root: Path, labels: dict, regions_class_order: list | None = None,
                                   n_cases: int = 5) -> tuple[Path, Path]:
    """Predictions where keeping the largest component helps label 1 (a far-away false island
    goes), hurts label 2 (its reference has two separate parts) and changes nothing for label 3
    (one perfect block: equal Dice, so rejected — the rule is strict); keeping the largest
    foreground component hurts (it deletes labels 2 and 3). One case has no label 2 (NaN Dice)."""
    rng = np.random.default_rng(0)
    predictions, references = root / "predictions", root / "references"
    predictions.mkdir(parents=True)
    references.mkdir(parents=True)
    for case in range(n_cases):
        reference = np.zeros((10, 24, 22), dtype=np.uint8)
        shift = rng.integers(0, 3, size=3)
        z, y, x = 2 + shift[0], 3 + shift[1], 3 + shift[2]
        reference[z:z + 5, y:y + 8, x:x + 7] = 1  # the organ
        prediction = reference.copy()
        prediction[z + 4, y:y + 8, x:x + 7] = 0  # under-segmented by one slice
        prediction[8, 20, 2 + case % 3] = 1  # a false island, far away
        prediction[9, 20:22, 2 + case % 3] = 1
        prediction[0:2, 14:17, 8:11] = reference[0:2, 14:17, 8:11] = 3  # label 3: perfect, one part
        if case != n_cases - 1:  # label 2: two true parts, the smaller one predicted too
            reference[2:6, 3:7, 16:20] = 2
            reference[6:8, 17:20, 16:19] = 2
            prediction[2:6, 3:7, 16:20] = 2
            prediction[6:8, 17:20, 16:18] = 2
        _write(prediction, predictions / f"case_{case:02d}.nii.gz")
        _write(reference, references / f"case_{case:02d}.nii.gz")
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": n_cases,
                    "file_ending": ".nii.gz"}
    if regions_class_order is not None:
        dataset_json["regions_class_order"] = regions_class_order
    (predictions / "dataset.json").write_text(json.dumps(dataset_json))
    (predictions / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO",
                                                        "label_manager": "LabelManager"}))
    return predictions, references


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# the data is built so that only label 1's step (region 1 = label 1) helps
@pytest.mark.parametrize("labels, regions_class_order, expected_steps", [
    ({"background": 0, "organ": 1, "two_parts": 2, "block": 3}, None, [1]),
    ({"background": 0, "foreground": [1, 2, 3], "organ": 1, "two_parts": 2}, [3, 1, 2], [1]),
], ids=["labels", "regions"])
@pytest.mark.parametrize("backend", ["auto", "torch"])  # host arrays + cc3d, or tensors + torch labeller
def test_determine_equals_nnunet_determine(tmp_path, monkeypatch, labels, regions_class_order, expected_steps,
                                           backend):
    import nnunetv2.evaluation.evaluate_predictions as nnunet_evaluation
    import nnunetv2.postprocessing.remove_connected_components as nnunet_postprocessing
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json

    from nnunet_shape.nnunet.postprocessing import determine_postprocessing_on_device

    # nnU-Net's own code, but its spawn pools as thread pools: every pool would re-import nnU-Net
    # in fresh processes (~40 s here); the decision logic under test is the same
    threads = SimpleNamespace(get_context=lambda method: SimpleNamespace(Pool=ThreadPool))
    monkeypatch.setattr(nnunet_postprocessing, "multiprocessing", threads)
    monkeypatch.setattr(nnunet_evaluation, "multiprocessing", threads)
    predictions, references = write_cross_validation_folders(tmp_path, labels, regions_class_order)
    theirs_folder = tmp_path / "predictions_nnunet"
    shutil.copytree(predictions, theirs_folder)

    our_fns, our_kwargs = determine_postprocessing_on_device(str(predictions), str(references), device="cpu",
                                                             backend=backend, keep_postprocessed_files=True,
                                                             verbose=False,
                                                             # torch run: no cache, every pass re-reads
                                                             max_cached_bytes=0 if backend == "torch" else 2 ** 30)
    their_fns, their_kwargs = nnunet_determine_postprocessing(
        str(theirs_folder), str(references), str(theirs_folder / "plans.json"), str(theirs_folder / "dataset.json"),
        num_processes=1, keep_postprocessed_files=True)

    assert our_fns == their_fns and all(f is nnunet_lcc for f in our_fns)
    assert our_kwargs == their_kwargs
    assert [k["labels_or_regions"] for k in our_kwargs] == expected_steps
    # same numbers, bit for bit, in postprocessing.json (input and postprocessed means)
    ours_json = json.loads((predictions / "postprocessing.json").read_text())
    theirs_json = json.loads((theirs_folder / "postprocessing.json").read_text())
    for part in ("input_folder", "postprocessed"):
        assert ours_json[part] == theirs_json[part]
    assert ours_json["postprocessing_kwargs"] == theirs_json["postprocessing_kwargs"]
    # the written postprocessed cases and their summary match nnU-Net's
    for name in sorted(p.name for p in references.glob("*.nii.gz")):
        assert np.array_equal(_read(predictions / "postprocessed" / name),
                              _read(theirs_folder / "postprocessed" / name))
    our_summary = load_summary_json(str(predictions / "postprocessed" / "summary.json"))
    their_summary = load_summary_json(str(theirs_folder / "postprocessed" / "summary.json"))
    assert our_summary["mean"] == their_summary["mean"]
    assert our_summary["foreground_mean"] == their_summary["foreground_mean"]


def test_our_pkl_is_applied_by_nnunets_console_script(tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    from nnunet_shape.cli import main as nnunet_shape_main

    predictions, references = write_cross_validation_folders(
        tmp_path, {"background": 0, "organ": 1, "two_parts": 2, "block": 3})
    assert nnunet_shape_main(["determine-postprocessing", "-i", str(predictions), "-ref", str(references),
                              "-device", "cpu", "--remove_postprocessed", "-np", "1"]) == 0
    pkl = predictions / "postprocessing.pkl"
    pp_fns, pp_fn_kwargs = load_pickle(str(pkl))
    assert pp_fns == [nnunet_lcc] and pp_fn_kwargs == [{"labels_or_regions": 1}]
    assert not (predictions / "postprocessed").exists()

    env = dict(os.environ, nnUNet_def_n_proc="1", nnUNet_raw=str(tmp_path / "raw"),
               nnUNet_preprocessed=str(tmp_path / "pre"), nnUNet_results=str(tmp_path / "res"),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    completed = subprocess.run(["nnUNetv2_apply_postprocessing", "-i", str(predictions), "-o",
                                str(tmp_path / "out_nnunet"), "-pp_pkl_file", str(pkl), "-np", "1"],
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    for backend in BACKENDS:
        output = tmp_path / f"out_{backend}"
        assert nnunet_shape_main(["apply-postprocessing", "-i", str(predictions), "-o", str(output),
                                  "-pp_pkl_file", str(pkl), "-device", "cpu", "--backend", backend]) == 0
        names = sorted(p.name for p in predictions.glob("*.nii.gz"))
        assert names == sorted(p.name for p in output.glob("*.nii.gz"))
        for name in names:
            theirs_image = sitk.ReadImage(str(tmp_path / "out_nnunet" / name))
            ours_image = sitk.ReadImage(str(output / name))
            assert np.array_equal(sitk.GetArrayFromImage(ours_image), sitk.GetArrayFromImage(theirs_image))
            assert ours_image.GetSpacing() == theirs_image.GetSpacing()
            assert ours_image.GetOrigin() == theirs_image.GetOrigin()
            # and the island is really gone while label 2 is untouched
            before = _read(predictions / name)
            after = sitk.GetArrayFromImage(ours_image)
            assert after[8:, 20:, :].max() == 0
            assert np.array_equal(after == 2, before == 2) and np.array_equal(after == 3, before == 3)


@pytest.mark.parametrize("missing, message", [
    ("plans.json", "expected plans file missing: {folder}/plans.json (pass -plans_json)"),
    ("dataset.json", "expected dataset.json missing: {folder}/dataset.json (pass -dataset_json)"),
])
def test_load_plans_and_dataset_names_the_missing_file_and_the_option(tmp_path, missing, message):
    from nnunet_shape.errors import UserError
    from nnunet_shape.nnunet.postprocessing import _load_plans_and_dataset

    (tmp_path / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}), encoding="utf-8")
    (tmp_path / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "labels": {"background": 0}}),
                                           encoding="utf-8")
    plans, dataset_json = _load_plans_and_dataset(str(tmp_path), None, None)
    assert plans == {"image_reader_writer": "SimpleITKIO"} and dataset_json["file_ending"] == ".nii.gz"
    given = _load_plans_and_dataset(str(tmp_path / "elsewhere"), {"p": 1}, {"d": 2})  # given: no file is looked for
    assert given == ({"p": 1}, {"d": 2})
    (tmp_path / missing).unlink()
    with pytest.raises(UserError) as error:
        _load_plans_and_dataset(str(tmp_path), None, None)
    assert str(error.value) == message.format(folder=tmp_path)
