"""Keep-the-largest-connected-component postprocessing on numpy arrays and torch tensors (any device).

nnU-Net's only postprocessing is "remove all but the largest connected component" (of the whole
foreground, then per label or region). Its implementation
(``nnunetv2.postprocessing.remove_connected_components``) labels with ``skimage.measure.label`` on
the CPU. This module gives the *same result, voxel for voxel*, with three labelling backends:

- ``"cc3d"``: connected-components-3d on the host (already an nnU-Net dependency), the CPU path;
- ``"torch"``: pure torch label propagation that runs on the tensor's device and never copies the
  volume to the host (the GPU path; it also runs on CPU tensors, which is how it is tested);
- ``"cucim"``: ``cucim.skimage.measure.label`` on CUDA tensors when the optional extra
  ``nnunet-shape[gpu]`` is installed (zero-copy through DLPack).

nnU-Net's rules, reproduced here (read from acvl_utils' ``remove_all_but_largest_component``):

- connectivity: skimage's default ``connectivity=None`` = full connectivity, i.e. 26 in 3D and 8
  in 2D (a (1, X, Y) volume from a 2D configuration therefore behaves like 8-connectivity);
- ties: *every* component whose size equals the maximum is kept (``j == max(y)``), so the result
  does not depend on how components are numbered;
- an empty mask leaves the segmentation unchanged; removed voxels become ``background_label``.

Keeping the *N* largest components (``components=N``, for a class with N parts such as the
phantoms' two tibial cartilage compartments) extends the tie rule the same way: a component is
removed only when at least N components are *strictly larger*; equivalently, every component at
least as large as the N-th largest is kept. With N = 1 this is nnU-Net's rule above. On a tie at
the N-th place more than N components survive (all of the tied ones, never an arbitrary pick), so
the result depends on component sizes only, never on the labelling order, and every backend
gives the same voxels. Fewer than N components: nothing is removed.

No nnU-Net import here: this is a core module. The folder-level commands live in
``nnunet_shape.nnunet.postprocessing``.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

Connectivity = Literal[4, 8, 6, 18, 26]
Backend = Literal["auto", "torch", "cc3d", "cucim"]
LabelOrRegion = int | Sequence[int]
LabelsOrRegions = LabelOrRegion | list
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)

_VALID_CONNECTIVITY: dict[int, tuple[int, ...]] = {2: (4, 8), 3: (6, 18, 26)}
_FULL_CONNECTIVITY: dict[int, int] = {2: 8, 3: 26}
_BACKENDS: tuple[str, ...] = ("auto", "torch", "cc3d", "cucim")

_NNUNET_LCC_MODULE = "nnunetv2.postprocessing.remove_connected_components"
_LCC_FUNCTION_NAME = "remove_all_but_largest_component_from_segmentation"


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------

def resolve_connectivity(ndim: int, connectivity: int | None) -> int:
    """nnU-Net's default (full connectivity) when ``connectivity`` is None, else a checked value.

    2D: 4 (edges) or 8 (edges and corners); 3D: 6 (faces), 18 (faces, edges) or 26 (all).
    """
    if ndim not in _VALID_CONNECTIVITY:
        raise ValueError(f"connected components need a 2D or 3D array, "
                         f"got {ndim} dimensions")
    if connectivity is None:
        return _FULL_CONNECTIVITY[ndim]
    if connectivity not in _VALID_CONNECTIVITY[ndim]:
        raise ValueError(f"connectivity {connectivity} is not valid for a "
                         f"{ndim}D array; use one of {_VALID_CONNECTIVITY[ndim]}")
    return int(connectivity)


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {_BACKENDS}")


def check_components(components: object) -> int:
    """``components`` as an int >= 1 (the number of largest components to keep); else ValueError."""
    if isinstance(components, bool) or not isinstance(components, numbers.Integral) or int(components) < 1:
        raise ValueError(f"components must be an integer >= 1 (the number of largest connected components "
                         f"to keep), got {components!r}")
    return int(components)


def cucim_available() -> bool:
    """True when ``cucim.skimage`` and ``cupy`` import (the optional ``nnunet-shape[gpu]`` extra)."""
    try:
        import cucim.skimage.measure  # noqa: F401
        import cupy  # noqa: F401
    except Exception:  # ImportError, or a CUDA runtime error raised while importing
        return False
    return True


def _resolve_backend(backend: str, device: torch.device | None) -> str:
    """``auto``: cucim (if installed) or torch on CUDA tensors, cc3d on the host."""
    _check_backend(backend)
    if backend != "auto":
        return backend
    if device is not None and device.type == "cuda":
        return "cucim" if cucim_available() else "torch"
    if device is not None and device.type != "cpu":
        return "torch"  # mps, xpu, ...: torch is the only backend that stays on the device
    return "cc3d"


# ----------------------------------------------------------------------------------------------
# torch labelling: label propagation with root hooking and pointer jumping
# ----------------------------------------------------------------------------------------------

def _max_with_both_neighbours_(out: Tensor, source: Tensor, dim: int) -> None:
    """out[i] = max(out[i], source[i-1], source[i+1]) along ``dim``, in place (missing neighbours skipped)."""
    n = source.shape[dim]
    if n < 2:
        return
    upper = out.narrow(dim, 1, n - 1)
    torch.maximum(upper, source.narrow(dim, 0, n - 1), out=upper)
    lower = out.narrow(dim, 0, n - 1)
    torch.maximum(lower, source.narrow(dim, 1, n - 1), out=lower)


def _box_max(labels: Tensor, dims: Sequence[int]) -> Tensor:
    """Max over the 3-wide box spanned by ``dims`` (separable: one pass per axis)."""
    result = labels
    for dim in dims:
        source = result
        result = source.clone()
        _max_with_both_neighbours_(result, source, dim)
    return result


def neighbourhood_max(labels: Tensor, connectivity: int) -> Tensor:
    """Max of each voxel and its neighbours under ``connectivity``, for (X, Y) or (X, Y, Z) labels.

    Background holds 0 and labels are positive, so the max over the whole neighbourhood equals the
    max over its *foreground* neighbours; masking afterwards is the caller's job.
    """
    ndim = labels.ndim
    if connectivity == _FULL_CONNECTIVITY[ndim]:  # 8 / 26: the full 3^d box
        return _box_max(labels, range(ndim))
    if connectivity in (4, 6):  # the cross: neighbours along one axis only
        result = labels.clone()
        for dim in range(ndim):
            _max_with_both_neighbours_(result, labels, dim)
        return result
    # 18: offsets with at least one zero coordinate = union of the three axis-aligned 3x3 planes
    along_0 = _box_max(labels, (0,))
    along_1 = _box_max(labels, (1,))
    result = _box_max(along_0, (1,))
    torch.maximum(result, _box_max(along_0, (2,)), out=result)
    torch.maximum(result, _box_max(along_1, (2,)), out=result)
    return result


def label_components_torch(mask: Tensor, connectivity: int | None = None, *,
                           label_dtype: torch.dtype | None = None) -> tuple[Tensor, int]:
    """Connected components of a boolean (X, Y) or (X, Y, Z) mask, computed on the mask's device.

    Returns ``(labels, iterations)``: ``labels`` has the mask's shape, 0 on background and, on
    each component, ``1 + the largest flat (C-order) index of its voxels`` — not consecutive, but
    a one-to-one naming of components. ``iterations`` is the number of propagation rounds.

    Algorithm (every step keeps each voxel's label the label of a voxel of its own component, and
    labels only grow):

    1. ``label = flat index + 1`` on foreground, 0 elsewhere;
    2. ``m = max of the label over the connectivity neighbourhood``, masked to the foreground;
    3. hook: the voxel a label points to (``label - 1``, its current "root") takes the max of the
       ``m`` of all voxels pointing to it (scatter amax) — information reaches a whole tree at once;
    4. pointer jumping ``label <- label[label - 1]`` (twice), which spreads a root's value;
    5. repeat until nothing changed. Then no foreground neighbour holds a larger label, so labels
       are constant per component and equal to its largest index + 1. There is no iteration cap:
       convergence is checked, once per round, by ``torch.equal`` — one host sync per round (a
       boolean, never the volume). Compact blobs converge in a handful of rounds.

    ``label_dtype`` defaults to int32 on CPU when the volume has fewer than 2**31 - 1 voxels
    (half the memory traffic) and int64 elsewhere (CUDA index kernels are only documented for
    int64); both are tested on CPU.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"label_components_torch needs a bool mask, "
                        f"got {mask.dtype}")
    connectivity = resolve_connectivity(mask.ndim, connectivity)
    n_voxels = mask.numel()
    if label_dtype is None:
        fits_int32 = n_voxels < torch.iinfo(torch.int32).max
        label_dtype = torch.int32 if (mask.device.type == "cpu" and fits_int32) else torch.int64
    if label_dtype == torch.int32 and n_voxels >= torch.iinfo(torch.int32).max:
        raise ValueError(f"{n_voxels} voxels do not fit int32 labels")

    mask = mask.contiguous()
    flat_mask = mask.view(-1)
    zero = torch.zeros((), dtype=label_dtype, device=mask.device)
    labels = torch.where(flat_mask, torch.arange(1, n_voxels + 1, dtype=label_dtype, device=mask.device), zero)
    iterations = 0
    while True:
        iterations += 1
        previous = labels
        neighbour_max = neighbourhood_max(previous.view(mask.shape), connectivity).view(-1)
        neighbour_max.mul_(flat_mask)
        # hook every voxel's root: background points at index 0 with value 0, a no-op for amax
        roots = (previous - 1).clamp_min_(0)
        labels = neighbour_max.scatter_reduce(0, roots, neighbour_max, reduce="amax")
        for _ in range(2):
            labels = torch.where(flat_mask, labels.index_select(0, (labels - 1).clamp_min_(0)), zero)
        if torch.equal(labels, previous):  # the one host sync per round
            return labels.view(mask.shape), iterations


# ----------------------------------------------------------------------------------------------
# largest component of a binary mask, per backend
# ----------------------------------------------------------------------------------------------

Box = tuple[slice, ...]


def _bounding_box(mask: ArrayOrTensor) -> Box | None:
    """Slices of the mask's bounding box, None when the mask is empty.

    Labelling only the box makes single labels (usually compact) much cheaper. On a tensor this
    costs one small host sync per axis (the box bounds), never the volume.
    """
    box: list[slice] = []
    cropped = mask
    for dim in range(mask.ndim):
        other = tuple(d for d in range(mask.ndim) if d != dim)
        if isinstance(mask, Tensor):
            occupied = torch.nonzero(cropped.any(dim=other)).view(-1)
            if occupied.numel() == 0:
                return None
            first, last = int(occupied[0]), int(occupied[-1])
        else:
            occupied = np.flatnonzero(cropped.any(axis=other))
            if occupied.size == 0:
                return None
            first, last = int(occupied[0]), int(occupied[-1])
        box.append(slice(first, last + 1))
        # shrink as we go: later axes reduce a smaller array
        cropped = cropped[(slice(None),) * dim + (box[-1],)]
    return tuple(box)


def _removed_by_size_torch(cropped: Tensor, flat_labels: Tensor, components: int) -> Tensor:
    """Voxels of ``cropped`` whose component (``flat_labels``: component id per voxel, 0 on
    background, ids < numel + 1) is smaller than the ``components``-th largest, on the device."""
    # sizes on the device; scatter_add (not bincount) because CUDA bincount syncs to size its output
    sizes = torch.zeros(flat_labels.numel() + 1, dtype=torch.int64, device=cropped.device)
    sizes.scatter_add_(0, flat_labels, torch.ones_like(flat_labels, dtype=torch.int64))
    sizes[0] = 0
    if components == 1:
        threshold = sizes.max()
    else:
        # the N-th largest size (0 when there are fewer than N components: nothing removed); a
        # 0-d tensor, no host sync
        threshold = torch.topk(sizes, min(components, sizes.numel()), sorted=True).values[-1]
    return cropped & (sizes.index_select(0, flat_labels).view(cropped.shape) < threshold)


def _removed_in_box_torch(cropped: Tensor, connectivity: int, components: int = 1) -> Tensor:
    """Voxels of a (cropped, non-empty) bool mask outside the ``components`` largest components."""
    labels, _ = label_components_torch(cropped, connectivity)
    return _removed_by_size_torch(cropped, labels.view(-1), components)


def _removed_in_box_cc3d(cropped: np.ndarray, connectivity: int, components: int = 1) -> np.ndarray:
    import cc3d

    # uint8, not bool: cc3d 4.1.1 mislabels 2D bool masks under 8-connectivity (its binary-image
    # fast path, also taken with binary_image=True; tests/test_postprocessing.py catches it). The
    # uint8 view is zero-copy and as fast.
    labels, n_components = cc3d.connected_components(cropped.view(np.uint8), connectivity=connectivity,
                                                     return_N=True)
    if n_components <= components:
        return np.zeros(cropped.shape, dtype=bool)
    sizes = np.bincount(labels.reshape(-1), minlength=n_components + 1)
    sizes[0] = 0
    if components == 1:
        largest_ids = np.flatnonzero(sizes == sizes.max())
        if len(largest_ids) == 1:  # the common case: two cheap passes instead of a table lookup
            return cropped & (labels != largest_ids[0])
        threshold = sizes.max()
    else:  # the N-th largest of the n_components sizes
        threshold = np.partition(sizes[1:], n_components - components)[n_components - components]
    is_removed = sizes < threshold
    is_removed[0] = False
    return is_removed[labels]


def _removed_in_box_cucim(cropped: Tensor, connectivity: int, components: int = 1) -> Tensor:
    import cupy
    from cucim.skimage.measure import label as cucim_label

    # skimage counts connectivity in orthogonal hops: 4/6 -> 1, 18 -> 2, 8 -> 2 (2D), 26 -> 3
    hops = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[connectivity]
    with cupy.cuda.ExternalStream(torch.cuda.current_stream(cropped.device).cuda_stream):
        labels_cupy = cucim_label(cupy.from_dlpack(cropped.to(torch.uint8).contiguous()), connectivity=hops)
    flat = torch.from_dlpack(labels_cupy).view(-1).long()  # consecutive ids 0..n <= numel
    return _removed_by_size_torch(cropped, flat, components)


def _removal(mask: ArrayOrTensor, connectivity: int | None, backend: str,
             components: int = 1) -> tuple[Box, ArrayOrTensor] | None:
    """Where the voxels to remove are: ``(box, removed_in_box)``, or None when there are none to
    look for (empty mask). ``removed_in_box`` has the box's shape and the mask's type and device."""
    connectivity = resolve_connectivity(mask.ndim, connectivity)
    components = check_components(components)
    if isinstance(mask, np.ndarray):
        backend = _resolve_backend(backend, None)
        if backend == "cucim":
            raise ValueError("backend 'cucim' needs a CUDA tensor, "
                             "got a numpy array")
    elif isinstance(mask, Tensor):
        backend = _resolve_backend(backend, mask.device)
        if backend == "cucim":
            if mask.device.type != "cuda":
                raise ValueError(f"backend 'cucim' needs a CUDA tensor, "
                                 f"got one on {mask.device}")
            if not cucim_available():
                raise ImportError("backend 'cucim' needs the optional extra: "
                                  "pip install 'nnunet-shape[gpu]' (cucim-cu12 and cupy)")
    else:
        raise TypeError(f"expected a numpy array or a torch tensor, "
                        f"got {type(mask).__name__}")
    box = _bounding_box(mask)
    if box is None:
        return None
    cropped = mask[box]
    if isinstance(mask, np.ndarray):
        if backend == "cc3d":
            return box, _removed_in_box_cc3d(cropped, connectivity, components)
        return box, _removed_in_box_torch(torch.from_numpy(np.ascontiguousarray(cropped)), connectivity,
                                          components).numpy()
    if backend == "torch":
        return box, _removed_in_box_torch(cropped.contiguous(), connectivity, components)
    if backend == "cucim":
        return box, _removed_in_box_cucim(cropped, connectivity, components)
    # cc3d on a CUDA tensor: the round trip through the host, because the caller asked for this
    # backend explicitly ("auto" never does that)
    removed = _removed_in_box_cc3d(np.ascontiguousarray(cropped.detach().cpu().numpy()), connectivity, components)
    return box, torch.from_numpy(removed).to(mask.device)


def largest_component_mask(mask: ArrayOrTensor, connectivity: Connectivity | None = None,
                           backend: Backend = "auto", *, components: int = 1) -> ArrayOrTensor:
    """Keep only the largest connected component(s) of a boolean (X, Y) or (X, Y, Z) mask.

    ``components``: how many of the largest to keep (default 1). Ties keep every component at
    least as large as the ``components``-th largest (nnU-Net's rule for 1, see the module
    docstring); an empty mask stays empty.
    Returns a new mask of the input's type (numpy array, or tensor on the input's device).
    """
    _check_backend(backend)
    if mask.dtype not in (np.bool_, torch.bool):
        raise TypeError(f"largest_component_mask needs a bool mask, "
                        f"got {mask.dtype}")
    kept = mask.clone() if isinstance(mask, Tensor) else np.copy(mask)
    removal = _removal(mask, connectivity, backend, components)
    if removal is not None:
        box, removed = removal
        kept[box][removed] = False
    return kept


# ----------------------------------------------------------------------------------------------
# nnU-Net's function, on arrays and tensors
# ----------------------------------------------------------------------------------------------

def _entries(labels_or_regions: LabelsOrRegions) -> list:
    """nnU-Net's normalisation: anything that is not a list is one label or one region."""
    return labels_or_regions if isinstance(labels_or_regions, list) else [labels_or_regions]


def _is_scalar_label(label_or_region: object) -> bool:
    if isinstance(label_or_region, Tensor):
        return label_or_region.ndim == 0
    return bool(np.isscalar(label_or_region)) or isinstance(label_or_region, numbers.Number)


def region_or_label_mask(segmentation: ArrayOrTensor, label_or_region: LabelOrRegion) -> ArrayOrTensor:
    """``segmentation == label`` for a label, the union over its labels for a region (tuple/list)."""
    if _is_scalar_label(label_or_region):
        return segmentation == label_or_region
    members = [int(value) for value in label_or_region]
    if isinstance(segmentation, Tensor):
        mask = torch.zeros(segmentation.shape, dtype=torch.bool, device=segmentation.device)
        for value in members:
            mask |= segmentation == value
        return mask
    mask = np.zeros(segmentation.shape, dtype=bool)
    for value in members:
        mask |= segmentation == value
    return mask


def remove_all_but_largest_component_from_segmentation(
        segmentation: ArrayOrTensor,
        labels_or_regions: LabelsOrRegions,
        background_label: int = 0,
        *,
        components: int = 1,
        connectivity: Connectivity | None = None,
        backend: Backend = "auto") -> ArrayOrTensor:
    """nnU-Net's function of the same name, voxel for voxel, on numpy arrays or torch tensors.

    ``segmentation``: label map (X, Y) or (X, Y, Z), any integer or float dtype, any device.
    ``labels_or_regions``: a label, a region (tuple of labels) or a list of them; their union is
    one mask, of which only the largest connected component(s) survive — the other voxels of the
    union become ``background_label``.
    ``components``: keep the N largest components instead of one (an int >= 1; ties: every
    component at least as large as the N-th largest survives, see the module docstring). nnU-Net's
    own function has no such argument: a ``postprocessing.pkl`` step with ``components`` must name
    this function. Returns a new array/tensor of the input's type, dtype and
    device; the input is never modified.
    ``connectivity``: None = nnU-Net's full connectivity (26 in 3D, 8 in 2D); 4/8 or 6/18/26.
    ``backend``: ``"auto"`` (cucim or torch on CUDA, cc3d on the host), ``"torch"``, ``"cc3d"``,
    ``"cucim"``; all give identical output.
    """
    _check_backend(backend)
    components = check_components(components)
    entries = _entries(labels_or_regions)
    if (isinstance(segmentation, Tensor) and segmentation.device.type == "cpu"
            and segmentation.dtype != torch.bfloat16
            and _resolve_backend(backend, segmentation.device) == "cc3d"):
        # host tensor, host backend: run the numpy path on a zero-copy view. numpy's small
        # single-threaded kernels beat torch's parallel ones here (no thread wake-ups), and the
        # result is wrapped back as a tensor of the same dtype. numpy has no bfloat16: such a
        # tensor takes the tensor path below (masks in torch, the bool mask through cc3d).
        result = remove_all_but_largest_component_from_segmentation(
            segmentation.detach().numpy(), labels_or_regions, background_label,
            components=components, connectivity=connectivity, backend="cc3d")
        return torch.from_numpy(result)
    if isinstance(segmentation, Tensor):
        mask = torch.zeros(segmentation.shape, dtype=torch.bool, device=segmentation.device)
        for entry in entries:
            mask |= region_or_label_mask(segmentation, entry)
        result = segmentation.clone()  # never modify the input
        removal = _removal(mask, connectivity, backend, components)
        if removal is not None:
            box, removed = removal
            result[box].masked_fill_(removed, background_label)
        return result
    if isinstance(segmentation, np.ndarray):
        mask = np.zeros(segmentation.shape, dtype=bool)
        for entry in entries:
            mask |= region_or_label_mask(segmentation, entry)
        result = np.copy(segmentation)  # never modify the input
        removal = _removal(mask, connectivity, backend, components)
        if removal is not None:
            box, removed = removal
            result[box][removed] = background_label
        return result
    raise TypeError(f"segmentation must be a numpy array or a torch tensor, "
                    f"got {type(segmentation).__name__}")


class RemoveAllButLargestComponent(nn.Module):
    """Module wrapper of :func:`remove_all_but_largest_component_from_segmentation` (fixed arguments)."""

    def __init__(self, labels_or_regions: LabelsOrRegions, background_label: int = 0,
                 connectivity: Connectivity | None = None, backend: Backend = "auto", components: int = 1) -> None:
        super().__init__()
        _check_backend(backend)
        self.components = check_components(components)
        self.labels_or_regions = labels_or_regions
        self.background_label = background_label
        self.connectivity = connectivity
        self.backend = backend

    def forward(self, segmentation: Tensor) -> Tensor:
        """(X, Y[, Z]) label map -> same shape, dtype and device."""
        return remove_all_but_largest_component_from_segmentation(
            segmentation, self.labels_or_regions, self.background_label,
            components=self.components, connectivity=self.connectivity, backend=self.backend)


# ----------------------------------------------------------------------------------------------
# applying a postprocessing.pkl to a tensor
# ----------------------------------------------------------------------------------------------

def is_largest_component_function(function: Callable) -> bool:
    """True for nnU-Net's ``remove_all_but_largest_component_from_segmentation`` and for ours."""
    return (getattr(function, "__name__", None) == _LCC_FUNCTION_NAME
            and getattr(function, "__module__", None) in (_NNUNET_LCC_MODULE, __name__))


def postprocess_logits_argmax(segmentation_tensor: Tensor, pp_fns: Sequence[Callable],
                              pp_fn_kwargs: Sequence[dict], *, connectivity: Connectivity | None = None,
                              backend: Backend = "auto") -> Tensor:
    """Apply the functions of a ``postprocessing.pkl`` to a label tensor, on the tensor's device.

    ``segmentation_tensor``: (X, Y, Z) (or (X, Y)) label map, e.g. ``logits.argmax(0)`` still on
    the GPU; ``pp_fns, pp_fn_kwargs = load_pickle(".../postprocessing.pkl")``. Every function that
    is nnU-Net's (or our) ``remove_all_but_largest_component_from_segmentation`` runs as ours on
    the device. Any other function gets nnU-Net's calling convention (a numpy array) — the volume
    then makes a host round trip, with a warning. Returns a new tensor (same dtype and device).
    """
    if len(pp_fns) != len(pp_fn_kwargs):
        raise ValueError(f"{len(pp_fns)} postprocessing functions but "
                         f"{len(pp_fn_kwargs)} keyword dicts")
    segmentation = segmentation_tensor
    for function, kwargs in zip(pp_fns, pp_fn_kwargs):
        if is_largest_component_function(function):
            segmentation = remove_all_but_largest_component_from_segmentation(
                segmentation, **kwargs, connectivity=connectivity, backend=backend)
        else:
            warnings.warn(f"{getattr(function, '__qualname__', function)!r} "
                          f"has no device implementation; running it on a host copy", stacklevel=2)
            result = function(segmentation.detach().cpu().numpy(), **kwargs)
            segmentation = torch.as_tensor(np.asarray(result)).to(device=segmentation.device,
                                                                  dtype=segmentation.dtype)
    if segmentation is segmentation_tensor:  # no functions: still return a new tensor
        segmentation = segmentation.clone()
    return segmentation
