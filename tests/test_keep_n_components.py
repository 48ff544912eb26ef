"""Keep-the-N-largest-components postprocessing (``components=N``): against an independent
reference (scipy.ndimage.label and a sort by size) on random label maps, on both backends,
numpy arrays and CPU tensors; the tie rule by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_shape.core.connected_components import (
    RemoveAllButLargestComponent,
    check_components,
    largest_component_mask,
    region_or_label_mask,
    remove_all_but_largest_component_from_segmentation,
)

BACKENDS = ["cc3d", "torch"]


def reference_keep_n(mask: np.ndarray, components: int, connectivity: int | None) -> np.ndarray:
    """The rule written out independently: scipy labels, sizes sorted in decreasing order, every
    component at least as large as the N-th of them kept (all of them when there are <= N)."""
    ndim = mask.ndim
    rank = {None: ndim, 4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[connectivity]
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(ndim, rank))
    if n <= components:
        return mask.copy()
    sizes = [int(np.sum(labels == i)) for i in range(1, n + 1)]
    threshold = sorted(sizes, reverse=True)[components - 1]
    keep = [i + 1 for i, size in enumerate(sizes) if size >= threshold]
    return np.isin(labels, keep)


def random_label_map(shape: tuple[int, ...], n_labels: int, seed: int) -> np.ndarray:
    """Sparse salt of every label, then one dilation step: many components of many sizes, ties
    among the small ones."""
    rng = np.random.default_rng(seed)
    segmentation = np.zeros(shape, dtype=np.int16)
    for value in range(1, n_labels + 1):
        seeds = rng.random(shape) < 0.04
        grown = ndimage.binary_dilation(seeds, iterations=int(rng.integers(0, 2)))
        segmentation[grown & (rng.random(shape) < 0.8)] = value
    return segmentation


def run(segmentation: np.ndarray, labels_or_regions, components: int, backend: str, as_tensor: bool,
        connectivity: int | None = None) -> np.ndarray:
    if as_tensor:
        result = remove_all_but_largest_component_from_segmentation(
            torch.from_numpy(segmentation), labels_or_regions, components=components, connectivity=connectivity,
            backend=backend)
        assert isinstance(result, torch.Tensor)
        return result.numpy()
    result = remove_all_but_largest_component_from_segmentation(
        segmentation, labels_or_regions, components=components, connectivity=connectivity, backend=backend)
    assert isinstance(result, np.ndarray)
    return result


def expected_segmentation(segmentation: np.ndarray, labels_or_regions, components: int,
                          connectivity: int | None) -> np.ndarray:
    entries = labels_or_regions if isinstance(labels_or_regions, list) else [labels_or_regions]
    mask = np.zeros(segmentation.shape, dtype=bool)
    for entry in entries:
        mask |= region_or_label_mask(segmentation, entry)
    expected = segmentation.copy()
    expected[mask & ~reference_keep_n(mask, components, connectivity)] = 0
    return expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("components", [1, 2, 3, 5])
@pytest.mark.parametrize("shape, seed", [((12, 14, 10), 0), ((9, 20, 7), 1), ((1, 16, 16), 2), ((20, 18), 3)])
@pytest.mark.parametrize("labels_or_regions", [1, 2, [1, 3], (2, 3)])
def test_equals_reference_on_random_label_maps(backend, as_tensor, components, shape, seed, labels_or_regions):
    segmentation = random_label_map(shape, 3, seed)
    expected = expected_segmentation(segmentation, labels_or_regions, components, None)
    result = run(segmentation, labels_or_regions, components, backend, as_tensor)
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("components", [2, 4])
@pytest.mark.parametrize("shape, connectivity", [((10, 12, 9), 6), ((10, 12, 9), 18), ((10, 12, 9), 26),
                                                 ((15, 17), 4), ((15, 17), 8)])
def test_equals_reference_with_explicit_connectivity(backend, components, shape, connectivity):
    segmentation = random_label_map(shape, 2, 7)
    expected = expected_segmentation(segmentation, 1, components, connectivity)
    np.testing.assert_array_equal(run(segmentation, 1, components, backend, False, connectivity), expected)


def test_random_maps_have_ties_at_the_nth_place():
    """The random maps exercise the tie rule: some case has more survivors than N."""
    found = 0
    for seed in range(4):
        mask = random_label_map((12, 14, 10), 3, seed) == 1
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        sizes = sorted(np.bincount(labels.ravel())[1:], reverse=True)
        found += sum(n > k and sizes[k - 1] == sizes[k] for k in (2, 3, 5))
    assert found > 0


def _islands() -> np.ndarray:
    """Label 1 as four islands of 5, 3, 3 and 1 voxels (far apart: no two touch)."""
    segmentation = np.zeros((3, 5, 20), dtype=np.uint8)
    segmentation[1, 2, 0:5] = 1  # 5 voxels
    segmentation[1, 2, 7:10] = 1  # 3
    segmentation[1, 2, 12:15] = 1  # 3
    segmentation[1, 2, 18] = 1  # 1
    segmentation[0, 0, 0] = 2  # another label: untouched
    return segmentation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("components, kept_sizes", [
    (1, [5]),
    (2, [5, 3, 3]),  # the tie at the 2nd place keeps both 3-voxel islands
    (3, [5, 3, 3]),
    (4, [5, 3, 3, 1]),
    (9, [5, 3, 3, 1]),  # fewer components than asked for: nothing removed
])
def test_tie_rule_by_hand(backend, as_tensor, components, kept_sizes):
    segmentation = _islands()
    result = run(segmentation, 1, components, backend, as_tensor)
    labels, _ = ndimage.label(result == 1, structure=np.ones((3, 3, 3)))
    assert sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True) == kept_sizes
    assert result[0, 0, 0] == 2
    assert np.all((result == segmentation) | (result == 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_largest_component_mask_and_module(backend):
    mask = _islands() == 1
    kept = largest_component_mask(mask, backend=backend, components=2)
    assert kept.sum() == 11
    tensor = torch.from_numpy(_islands())
    module = RemoveAllButLargestComponent(1, components=4, backend=backend)
    assert torch.equal(module(tensor), tensor)
    assert int((RemoveAllButLargestComponent(1, components=2, backend=backend)(tensor) == 1).sum()) == 11


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_components_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=f"components must be an integer >= 1.*got {value!r}"):
        check_components(value)
    with pytest.raises(ValueError, match="components must be"):
        remove_all_but_largest_component_from_segmentation(_islands(), 1, components=value)


def test_numpy_integers_are_accepted():
    assert check_components(np.int64(2)) == 2
    assert (remove_all_but_largest_component_from_segmentation(_islands(), 1, components=np.int32(2)) == 1).sum() == 11
