"""Whole scan as one patch, on the STD/EXP network: the nnU-Net side of shape supervision.

Shape descriptors only mean something on the whole object, so the trainers here feed every case
to the network in one piece. Everything that decides this lives in the *plans* (patch size,
batch size, network class), edited before ``nnUNetTrainer.__init__`` so that nnU-Net saves it to
the results folder's ``plans.json`` and ``nnUNetv2_predict`` rebuilds exactly the same network and
runs one sliding window per case.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, load_pickle, subfiles
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_shape.network.std_exp import STD_EXP_CLASS_NAME, std_exp_arch_kwargs, total_stride
from nnunet_shape.nnunet.label_free import refuse_placeholder_labels

#: environment variable: activation-memory budget (GiB) used to choose the batch size.
MEMORY_BUDGET_ENV = "nnUNetShape_memory_budget_gb"
#: environment variable: patch axes mirrored in training augmentation and test-time mirroring
#: (e.g. "0,2"; "none" for no mirroring); unset = the trainer's ``mirror_axes`` (nnU-Net: all)
MIRROR_AXES_ENV = "nnUNetShape_mirror_axes"


def parse_mirror_axes(value: str, ndim: int, source: str = MIRROR_AXES_ENV) -> tuple[int, ...]:
    """``"0,2"`` -> ``(0, 2)``; ``"none"`` or ``""`` -> ``()`` (no mirroring).

    Axes are those of the configuration's patch (3d_fullres: the preprocessed array's axes,
    after nnU-Net's ``transpose_forward``; 2d: 0 and 1 are the in-plane axes). ``source`` names
    where the value came from, for the error message.
    """
    text = value.strip().lower()
    if text in ("", "none"):
        return ()
    try:
        axes = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"{source}={value!r}: expected comma-separated axis indices such as '0,2', "
                         "or 'none'") from None
    return validate_mirror_axes(axes, ndim, source)


def validate_mirror_axes(axes: Sequence[int], ndim: int, source: str) -> tuple[int, ...]:
    """``axes`` sorted, after checking that they are distinct patch axes of an ``ndim``-D patch."""
    axes = tuple(int(a) for a in axes)
    if len(set(axes)) != len(axes) or not all(0 <= a < ndim for a in axes):
        raise ValueError(f"{source}={axes}: axes must be distinct and in 0..{ndim - 1} for a {ndim}D patch")
    return tuple(sorted(axes))


def round_up_to_multiple(shape: Sequence[int], divisors: Sequence[int]) -> tuple[int, ...]:
    """Smallest shape >= ``shape`` whose axes are multiples of ``divisors`` (same length)."""
    if len(shape) != len(divisors):
        raise ValueError(f"shape {tuple(shape)} and divisors {tuple(divisors)} differ in length")
    return tuple(int(-(-int(s) // int(d)) * int(d)) for s, d in zip(shape, divisors))


def load_preprocessed_image(preprocessed_folder: str, identifier: str):
    """The image array (lazily, memory-mapped where possible) and properties of one preprocessed
    case. Unlike nnU-Net's ``load_case`` this never opens the case's label file, so label-free
    datasets (and tests that remove the labels) work."""
    blosc2_file = join(preprocessed_folder, identifier + ".b2nd")
    if isfile(blosc2_file):
        import blosc2

        data = blosc2.open(urlpath=blosc2_file, mode="r", mmap_mode="r")
    elif isfile(join(preprocessed_folder, identifier + ".npy")):
        data = np.load(join(preprocessed_folder, identifier + ".npy"), mmap_mode="r")
    else:
        data = np.load(join(preprocessed_folder, identifier + ".npz"))["data"]
    return data, load_pickle(join(preprocessed_folder, identifier + ".pkl"))


def preprocessed_case_shapes(preprocessed_folder: str) -> dict[str, tuple[int, ...]]:
    """Spatial shape of every preprocessed case (``(X, Y, Z)`` array order), read lazily from disk."""
    identifiers = infer_dataset_class(preprocessed_folder).get_identifiers(preprocessed_folder)
    return {identifier: tuple(int(s) for s in load_preprocessed_image(preprocessed_folder, identifier)[0].shape[1:])
            for identifier in identifiers}


def whole_scan_patch_size(case_shapes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                          two_d: bool) -> tuple[int, ...]:
    """The largest case shape rounded up to the network's stride divisibility.

    For 2D configurations the case shapes are 3D and the patch is one slice: the in-plane axes
    (the last two) are used.
    """
    shapes = np.asarray([s[1:] if two_d else s for s in case_shapes], dtype=np.int64)
    largest = shapes.max(axis=0)
    return round_up_to_multiple(largest, total_stride(strides, len(largest)))


def adapt_plans_for_whole_scan(plans: dict, configuration: str, patch_size: Sequence[int],
                               batch_size: int, *, std_features: int = 16, n_fusion_convs: int = 2,
                               checkpoint_full_resolution: bool = False) -> dict:
    """Write the whole-scan patch, the batch size and the STD/EXP network into ``plans`` (in place).

    The configuration is stored fully resolved (``inherits_from`` is dropped) so that the change
    cannot be undone by a parent configuration.
    """
    resolved = copy.deepcopy(PlansManager(plans).get_configuration(configuration).configuration)
    resolved.pop("inherits_from", None)
    architecture = resolved["architecture"]
    if architecture["network_class_name"] != STD_EXP_CLASS_NAME:
        architecture["arch_kwargs"] = std_exp_arch_kwargs(
            architecture["arch_kwargs"], std_features=std_features, n_fusion_convs=n_fusion_convs,
            checkpoint_full_resolution=checkpoint_full_resolution)
        architecture["network_class_name"] = STD_EXP_CLASS_NAME
    resolved["patch_size"] = [int(p) for p in patch_size]
    resolved["batch_size"] = int(batch_size)
    plans["configurations"][configuration] = resolved
    return plans


def build_std_exp_network(configuration_manager: ConfigurationManager, num_input_channels: int,
                          num_output_channels: int, enable_deep_supervision: bool) -> nn.Module:
    """The STD/EXP network from the plans (also when the plans still name another network)."""
    class_name = configuration_manager.network_arch_class_name
    kwargs = configuration_manager.network_arch_init_kwargs
    if class_name != STD_EXP_CLASS_NAME:
        kwargs = std_exp_arch_kwargs(kwargs)
    return get_network_from_plans(STD_EXP_CLASS_NAME, kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import,
                                  num_input_channels, num_output_channels, allow_init=True,
                                  deep_supervision=enable_deep_supervision)


def choose_batch_size(network: nn.Module, patch_size: Sequence[int], budget_gib: float,
                      max_batch_size: int) -> int:
    """Largest batch size in ``[1, max_batch_size]`` whose activation estimate fits the budget."""
    per_case = network.estimate_activation_bytes(tuple(patch_size), batch_size=1, bytes_per_element=2)
    fitting = int(budget_gib * 2 ** 30 // max(per_case, 1))
    return int(min(max(fitting, 1), max_batch_size))


class WholeCaseDataLoader(nnUNetDataLoader):
    """nnU-Net's loader, sampling each case whole: the crop is centred on the case.

    With the patch at least as large as every case, nnU-Net's random crop degenerates to a
    placement jittered by one voxel, and its foreground oversampling would place the patch
    around a foreground voxel, cutting the case. Here the placement is deterministic (centred,
    image padded with 0 and labels with -1 on both sides), so the same case always lands at the
    same offset: descriptor targets read from files can be mapped into the patch exactly.
    For 2D configurations the slice (first axis) is drawn uniformly, as nnU-Net does.
    """

    def get_bbox(self, data_shape: np.ndarray, force_fg: bool, class_locations, overwrite_class=None,
                 verbose: bool = False):
        bbox_lbs = [centred_lower_bound(int(data_shape[d]), int(self.patch_size[d]))
                    for d in range(len(data_shape))]
        if self.patch_size_was_2d:
            bbox_lbs[0] = int(np.random.randint(0, int(data_shape[0])))
        bbox_ubs = [lb + int(p) for lb, p in zip(bbox_lbs, self.patch_size)]
        return bbox_lbs, bbox_ubs


def centred_lower_bound(case_size: int, patch_size: int) -> int:
    """Lower crop bound that centres a case of ``case_size`` voxels in a patch (negative = padding)."""
    return -((patch_size - case_size) // 2)


class nnUNetTrainerWholeScan(nnUNetTrainer):
    """nnU-Net trainer on the whole scan as one patch, with the STD/EXP two-stream network.

    Subclasses change class attributes only (nnU-Net's idiom for trainer variants).
    """

    #: training length (nnU-Net's defaults; the ``_Nepochs`` variants change them)
    training_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    #: STD/EXP network settings written to the plans
    std_features: int = 16
    n_fusion_convs: int = 2
    checkpoint_full_resolution: bool = False
    #: batch size is chosen in [1, max_batch_size] from the network's activation-memory estimate
    max_batch_size: int = 2
    default_memory_budget_gib: float = 10.0
    #: deep supervision on the EXP heads (nnU-Net's default); descriptor trainers switch it off
    use_deep_supervision: bool = True
    #: the loader class (whole cases); label-free training records its augmentations
    data_loader_class: type = WholeCaseDataLoader
    #: trainers that learn from voxel labels refuse datasets whose labels are placeholders
    reads_voxel_labels: bool = True
    #: patch axes mirrored in augmentation and at test time; None = nnU-Net's choice (every axis).
    #: Shape descriptors are anatomical: mirroring the axis along which two look-alike structures
    #: lie (femur above tibia) makes position useless for telling them apart, and a
    #: descriptor-only model then swaps them (docs/method.md, "Mirroring"). The environment
    #: variable nnUNetShape_mirror_axes overrides it per run.
    mirror_axes: tuple[int, ...] | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.reads_voxel_labels:
            refuse_placeholder_labels(dataset_json, type(self).__name__, plans["dataset_name"])
        plans = self._plans_for_whole_scan(plans, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.training_epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        self.enable_deep_supervision = self.use_deep_supervision
        # the whole case is the patch: there is nothing to oversample
        self.oversample_foreground_percent = 0.0
        self.print_to_log_file(
            f"Whole-scan training: patch {self.configuration_manager.patch_size}, batch size "
            f"{self.configuration_manager.batch_size}, network {self.configuration_manager.network_arch_class_name}",
            also_print_to_console=False)

    @classmethod
    def _plans_for_whole_scan(cls, plans: dict, configuration: str) -> dict:
        """Plans with the whole-scan patch, or unchanged when the preprocessed data is not there
        (e.g. the trainer is built only to read a checkpoint)."""
        if not nnUNet_preprocessed.is_set():
            return plans
        configuration_manager = PlansManager(plans).get_configuration(configuration)
        folder = join(nnUNet_preprocessed.get(), plans["dataset_name"], configuration_manager.data_identifier)
        if not isdir(folder) or len(subfiles(folder, suffix=".pkl")) == 0:
            return plans
        two_d = len(configuration_manager.patch_size) == 2
        strides = configuration_manager.pool_op_kernel_sizes
        patch_size = whole_scan_patch_size(list(preprocessed_case_shapes(folder).values()), strides, two_d)
        adapt_plans_for_whole_scan(plans, configuration, patch_size, 1, std_features=cls.std_features,
                                   n_fusion_convs=cls.n_fusion_convs,
                                   checkpoint_full_resolution=cls.checkpoint_full_resolution)
        configuration_manager = PlansManager(plans).get_configuration(configuration)
        dataset_json = load_json(join(nnUNet_preprocessed.get(), plans["dataset_name"], "dataset.json"))
        num_outputs = PlansManager(plans).get_label_manager(dataset_json).num_segmentation_heads
        network = build_std_exp_network(configuration_manager, len(dataset_json["channel_names"]), num_outputs, False)
        budget = float(os.environ.get(MEMORY_BUDGET_ENV, cls.default_memory_budget_gib))
        batch_size = choose_batch_size(network, patch_size, budget, cls.max_batch_size)
        plans["configurations"][configuration]["batch_size"] = batch_size
        return plans

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        ndim = len(self.configuration_manager.patch_size)
        if os.environ.get(MIRROR_AXES_ENV) is not None:
            chosen = parse_mirror_axes(os.environ[MIRROR_AXES_ENV], ndim)
        elif self.mirror_axes is not None:
            chosen = validate_mirror_axes(self.mirror_axes, ndim, f"{type(self).__name__}.mirror_axes")
        else:
            return rotation, dummy_2d, initial_patch_size, mirror_axes
        # the same axes for test-time mirroring (stored in the checkpoint, used by nnUNetv2_predict)
        mirror_axes = chosen if chosen else None
        self.inference_allowed_mirroring_axes = mirror_axes
        self.print_to_log_file(f"mirror axes (augmentation and test time): {mirror_axes}")
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_std_exp_network(configuration_manager, num_input_channels, num_output_channels,
                                     enable_deep_supervision)

    def get_dataloaders(self):
        # nnU-Net's get_dataloaders builds both loaders, wraps them in its augmenters and starts
        # them; rather than copying those 60 lines, the loader class it looks up is rebound to
        # ours for the duration of the call.
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

        original = trainer_module.nnUNetDataLoader
        trainer_module.nnUNetDataLoader = self.data_loader_class
        try:
            return super().get_dataloaders()
        finally:
            trainer_module.nnUNetDataLoader = original
