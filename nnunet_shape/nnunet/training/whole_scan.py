"""Whole scan as one patch, on the STD/EXP network: the nnU-Net side of shape supervision.

Shape descriptors only mean something on the whole object, so the trainers here feed every case
to the network in one piece. Everything that decides this lives in the *plans* (patch size,
batch size, network class), edited before ``nnUNetTrainer.__init__`` so that nnU-Net saves it to
the results folder's ``plans.json`` and ``nnUNetv2_predict`` rebuilds exactly the same network and
runs one sliding window per case.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, load_pickle, subfiles
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_shape.core.anatomical_frame import AnatomicalFrame
from nnunet_shape.network.std_exp import STD_EXP_CLASS_NAME, std_exp_arch_kwargs, total_stride
from nnunet_shape.nnunet.label_free import refuse_placeholder_labels
from nnunet_shape.nnunet.training.checkpoints import AtomicCheckpointMixin

#: environment variable: activation-memory budget (GiB) used to choose the batch size.
MEMORY_BUDGET_ENV = "nnUNetShape_memory_budget_gb"
#: environment variable: patch axes mirrored in training augmentation and test-time mirroring
#: (e.g. "0,2"; "none" for no mirroring); unset = the trainer's ``mirror_axes`` (nnU-Net: all)
MIRROR_AXES_ENV = "nnUNetShape_mirror_axes"
#: environment variable: seed of a training run (a non-negative integer, or "none" for nnU-Net's
#: unseeded behaviour); set, it overrides the trainer's ``seed`` attribute for that run
SEED_ENV = "nnUNetShape_seed"
#: logger key of the seed (one value per epoch, so it is stored in every checkpoint's "logging")
SEED_KEY = "seed"
#: sub-streams derived from one seed: network initialisation, the main process' data stream, and
#: the worker processes of the training and the validation loader
SEED_STREAM_INIT, SEED_STREAM_DATA, SEED_STREAM_TRAIN_WORKERS, SEED_STREAM_VAL_WORKERS = 0, 1, 2, 3


def parse_seed(value: str, source: str = SEED_ENV) -> int | None:
    """``"3"`` -> ``3``; ``"none"`` or ``""`` -> ``None`` (not seeded: nnU-Net's behaviour)."""
    text = str(value).strip().lower()
    if text in ("", "none"):
        return None
    try:
        seed = int(text)
    except ValueError:
        raise ValueError(f"{source}={value!r}: expected a non-negative integer seed such as '0', or 'none'") from None
    return validate_seed(seed, source)


def validate_seed(seed: int, source: str) -> int:
    """``seed`` after checking it is an integer in ``[0, 2**32)`` (numpy's range)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 32:
        raise ValueError(f"{source}={seed!r}: a seed must be an integer in 0..{2 ** 32 - 1}")
    return int(seed)


def derive_seed(seed: int, *stream: int) -> int:
    """A seed in ``[0, 2**32)`` for one sub-stream of ``seed`` (numpy's SeedSequence: streams
    with different keys are independent, and the same key always gives the same seed)."""
    return int(np.random.SeedSequence([int(seed), *[int(s) for s in stream]]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """Deterministic torch kernels where torch has them (a warning, not an error, where it does
    not), cuDNN without autotuning, and the cuBLAS workspace setting that deterministic cuBLAS needs."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


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
        raise ValueError(f"{source}={value!r}: expected comma-separated axis indices such as '0,2', anatomical "
                         "axes such as 'LR,AP' (LR, AP, SI), or 'none'") from None
    return validate_mirror_axes(axes, ndim, source)


#: anatomical axis names accepted as mirror axes -> the LPS axis (0 left, 1 posterior, 2 superior)
ANATOMICAL_MIRROR_NAMES: dict[str, int] = {"LR": 0, "RL": 0, "AP": 1, "PA": 1, "SI": 2, "IS": 2}


def anatomical_mirror_names(value: str | Sequence, source: str = MIRROR_AXES_ENV) -> tuple[str, ...] | None:
    """``"LR, si"`` -> ``("LR", "SI")`` (RL, PA, IS are read as LR, AP, SI); None when ``value``
    names no anatomical axis (indices, "none").

    Raises when it mixes names and indices or names an unknown axis."""
    tokens = [str(t).strip() for t in (value.split(",") if isinstance(value, str) else value)]
    tokens = [t for t in tokens if t]
    named = [t for t in tokens if not t.lstrip("-").isdigit()]
    if not named or [t.lower() for t in tokens] == ["none"]:
        return None
    unknown = [t for t in named if t.upper() not in ANATOMICAL_MIRROR_NAMES]
    if unknown or len(named) != len(tokens):
        raise ValueError(f"{source}={value!r}: give either axis indices ('0,2') or anatomical axes from LR, AP, SI "
                         f"('LR,AP'), not {', '.join(repr(t) for t in (unknown or tokens))}")
    return tuple(("LR", "AP", "SI")[ANATOMICAL_MIRROR_NAMES[t.upper()]] for t in named)


def anatomical_mirror_axes(names: Sequence[str], frames: dict[str, AnatomicalFrame], ndim: int,
                           source: str) -> tuple[int, ...]:
    """The patch axes along the anatomical axes ``names`` (LR, AP, SI), the same in every case.

    ``frames``: case identifier -> the anatomical frame of its preprocessed array
    (:meth:`AnatomicalFrame.from_direction` with the plans' ``transpose_forward``). For a 2D
    configuration (``ndim`` 2) the patch axes are the array's last two. Raises when the cases
    disagree on which array axis runs along a name, when a direction is oblique, or when a
    name is the slice axis of a 2D configuration.
    """
    if not frames:
        raise ValueError(f"{source}={','.join(names)}: no preprocessed case to read the image direction from")
    axes = []
    for name in names:
        lps = ANATOMICAL_MIRROR_NAMES[name]
        by_axis: dict[int, list[str]] = {}
        for case, frame in frames.items():
            frame.signed_permutation(f"mirroring along {name} (case {case})")  # refuses oblique directions
            by_axis.setdefault(frame.axis_source.index(lps), []).append(case)
        if len(by_axis) > 1:
            cases = "; ".join(f"array axis {a} in {', '.join(sorted(c)[:5])}{' ...' if len(c) > 5 else ''}"
                              for a, c in sorted(by_axis.items()))
            raise ValueError(f"{source}={','.join(names)}: the cases disagree on which array axis is {name} ({cases}); "
                             "one axis index cannot mirror them all. Reorient the images to one orientation, or "
                             "give axis indices")
        (axis,) = by_axis
        if ndim == 2:
            if axis == 0:
                raise ValueError(f"{source}={','.join(names)}: {name} is the slice axis of this 2D configuration "
                                 "(array axis 0), which a 2D patch cannot mirror")
            axis -= 1
        axes.append(axis)
    return validate_mirror_axes(axes, ndim, f"{source}={','.join(names)}")


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
    """The STD/EXP network from the plans (also when the plans still name another network).

    Without deep supervision its unused heads are frozen (:func:`freeze_unused_heads`)."""
    class_name = configuration_manager.network_arch_class_name
    kwargs = configuration_manager.network_arch_init_kwargs
    if class_name != STD_EXP_CLASS_NAME:
        kwargs = std_exp_arch_kwargs(kwargs)
    network = get_network_from_plans(STD_EXP_CLASS_NAME, kwargs,
                                     configuration_manager.network_arch_init_kwargs_req_import,
                                     num_input_channels, num_output_channels, allow_init=True,
                                     deep_supervision=enable_deep_supervision)
    if not enable_deep_supervision:
        freeze_unused_heads(network)
    return network


def freeze_unused_heads(network: nn.Module) -> list[str]:
    """Mark the parameters that a forward pass without deep supervision never uses as not trainable.

    Without deep supervision STDEXPNet evaluates none of its EXP decoder's 1x1 heads
    (``decoder.seg_layers``); they still exist, so that checkpoints with and without deep
    supervision load into each other. Left trainable, they never receive a gradient, and
    ``DistributedDataParallel`` as nnU-Net builds it (``find_unused_parameters=False``;
    ``nnUNetv2_train ... -num_gpus N``) stops in the second iteration waiting for them (nnU-Net
    issues #2070, #2571). Frozen (``requires_grad=False``), DDP leaves them out of its gradient
    reduction and the optimizers skip them. Does nothing while ``network.decoder.deep_supervision``
    is on. Returns the names of the frozen parameters (relative to ``network``).
    """
    decoder = network.decoder
    if decoder.deep_supervision:
        return []
    frozen = []
    for name, parameter in decoder.seg_layers.named_parameters():
        parameter.requires_grad_(False)
        frozen.append(f"decoder.seg_layers.{name}")
    return frozen


def ddp_world_size() -> int:
    """Ranks of the DDP run this process belongs to (``nnUNetv2_train ... -num_gpus N``); 1 without DDP."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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

    ``worker_seed`` (set by a seeded trainer): in a worker process of nnU-Net's multi-process
    augmenter, Python, numpy and torch are seeded from it and the worker's thread id, so that
    loading and augmentation (batchgeneratorsv2 draws from numpy and torch) repeat exactly.
    """

    worker_seed: int | None = None

    def set_thread_id(self, thread_id: int) -> None:
        # called once in each worker process before it draws its first batch
        super().set_thread_id(thread_id)
        if self.worker_seed is not None:
            seed_everything(derive_seed(self.worker_seed, thread_id))

    def get_bbox(self, data_shape: np.ndarray, force_fg: bool, class_locations, overwrite_class=None,
                 verbose: bool = False):
        bbox_lbs = [centred_lower_bound(int(data_shape[d]), int(self.patch_size[d]))
                    for d in range(len(data_shape))]
        if self.patch_size_was_2d:
            bbox_lbs[0] = int(np.random.randint(0, int(data_shape[0])))
        bbox_ubs = [lb + int(p) for lb, p in zip(bbox_lbs, self.patch_size)]
        return bbox_lbs, bbox_ubs


def to_channels_last(network: nn.Module) -> nn.Module:
    """``network`` (in place) with its 4-D / 5-D weights in channels-last memory format
    (``torch.channels_last`` / ``torch.channels_last_3d``), which oneDNN's convolutions then use for
    their inputs too. Parameters stay the same objects (an optimizer built on them keeps working)."""
    weights = [p for p in network.parameters() if p.ndim in (4, 5)]
    if weights:
        network.to(memory_format=torch.channels_last_3d if weights[0].ndim == 5 else torch.channels_last)
    return network


def centred_lower_bound(case_size: int, patch_size: int) -> int:
    """Lower crop bound that centres a case of ``case_size`` voxels in a patch (negative = padding)."""
    return -((patch_size - case_size) // 2)


class nnUNetTrainerWholeScan(AtomicCheckpointMixin, nnUNetTrainer):
    """nnU-Net trainer on the whole scan as one patch, with the STD/EXP two-stream network.

    Subclasses change class attributes only (nnU-Net's idiom for trainer variants). Checkpoints
    are written atomically (:mod:`nnunet_shape.nnunet.training.checkpoints`): a kill during the
    save leaves the previous ``checkpoint_latest.pth``, never a truncated one.
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
    #: seed of Python, numpy, torch, network initialisation, loading and augmentation (in the
    #: main process and in nnU-Net's augmentation workers), with deterministic algorithms;
    #: None = nnU-Net's behaviour (not seeded). nnUNetShape_seed overrides it per run.
    seed: int | None = None
    #: progress plots (nnU-Net's progress.png and the descriptor trainers' own) after every n-th
    #: epoch and after the last one; 1 = nnU-Net's behaviour (every epoch). Each plot costs ~1.3 s
    #: on a CPU (nnU-Net's figure is 3000 x 5400 pixels), 12 % of a short CPU epoch of the demo.
    progress_plot_every: int = 1
    #: on a CPU, train with the networks' weights in channels-last memory format (oneDNN's
    #: convolutions then run channels-last, 10-15 % faster for a training step of the demo's
    #: networks: benchmarks/channels_last.py). Values equal the default layout's up to float
    #: rounding; checkpoints and nnUNetv2_predict are unaffected (weights are copied by value).
    #: Not applied on CUDA, where it has not been measured.
    channels_last_on_cpu: bool = True

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
        self.seed_used = self._resolve_seed()
        self.logger.local_logger.my_fantastic_logging[SEED_KEY] = []
        self.print_to_log_file(
            f"Whole-scan training: patch {self.configuration_manager.patch_size}, batch size "
            f"{self.configuration_manager.batch_size}, network {self.configuration_manager.network_arch_class_name}",
            also_print_to_console=False)

    def _resolve_seed(self) -> int | None:
        """The run's seed: nnUNetShape_seed when set (also "none"), else the class attribute."""
        if os.environ.get(SEED_ENV) is not None:
            seed, source = parse_seed(os.environ[SEED_ENV]), SEED_ENV
        elif self.seed is not None:
            seed, source = validate_seed(self.seed, f"{type(self).__name__}.seed"), f"{type(self).__name__}.seed"
        else:
            seed, source = None, None
        if seed is None:
            self.print_to_log_file("seed: none (not seeded, nnU-Net's behaviour; set nnUNetShape_seed to seed a run)")
        else:
            self.print_to_log_file(f"seed: {seed} (from {source}); deterministic algorithms on")
        return seed

    def initialize(self):
        # the network's initial weights are drawn in nnU-Net's initialize
        if not self.was_initialized and self.seed_used is not None:
            use_deterministic_algorithms()
            seed_everything(derive_seed(self.seed_used, SEED_STREAM_INIT))
        super().initialize()
        if self.channels_last_on_cpu and self.device.type == "cpu":
            for network in self._trained_networks():
                to_channels_last(network)

    def _trained_networks(self) -> list[nn.Module]:
        """The networks this trainer optimises: the segmentation network and, in trainers with a
        reconstruction branch, its reconstruction network."""
        extra = getattr(self, "reconstruction_network", None)
        return [self.network] + ([extra] if extra is not None else [])

    def _plots_progress_now(self) -> bool:
        """Whether this epoch's end writes the progress plots (``progress_plot_every``; always after
        the last epoch, so the final plot shows the whole run)."""
        every = int(self.progress_plot_every)
        if every < 1:
            raise ValueError(f"{type(self).__name__}.progress_plot_every must be >= 1, not {self.progress_plot_every}")
        return (self.current_epoch + 1) % every == 0 or self.current_epoch >= self.num_epochs - 1

    def on_epoch_end(self):
        # nnU-Net's on_epoch_end plots progress.png every epoch; between the epochs that plot here,
        # its logger's plot is skipped for this one call
        if self._plots_progress_now():
            return super().on_epoch_end()
        logger = self.logger
        logger.plot_progress_png = lambda output_folder: None
        try:
            return super().on_epoch_end()
        finally:
            del logger.plot_progress_png

    def on_train_start(self):
        super().on_train_start()
        if self.seed_used is not None:
            # nnUNetv2_train switches cuDNN autotuning on after building the trainer
            use_deterministic_algorithms()
        self._check_compiled_network()

    # ------------------------------------------------------------------------- torch.compile
    #: why torch.compile was turned off for the network in this run (None: it was not)
    compile_disabled_reason: str | None = None

    def _do_i_compile(self) -> bool:
        # nnU-Net's decision (on by default on CUDA, nnUNet_compile), unless the check below
        # turned compilation off for this run
        return self.compile_disabled_reason is None and super()._do_i_compile()

    def _compiled_network(self) -> OptimizedModule | None:
        """The compiled network (inside the DDP wrapper, where nnU-Net puts it), or None."""
        network = self.network.module if self.is_ddp else self.network
        return network if isinstance(network, OptimizedModule) else None

    def _trial_passes(self) -> None:
        """One training forward + backward (autocast on CUDA, as in ``train_step``) and one
        validation forward (eval mode, no gradients) of a zero batch of the training shape;
        gradients are discarded. This is where torch.compile compiles (it compiles lazily, on
        the first call of each kind)."""
        shape = (self.batch_size, self.num_input_channels, *self.configuration_manager.patch_size)
        data = torch.zeros(shape, device=self.device)
        precision = torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else \
            contextlib.nullcontext()
        no_sync = self.network.no_sync() if self.is_ddp else contextlib.nullcontext()
        with no_sync:
            with precision:
                output = self.network(data)
            outputs = output if isinstance(output, (list, tuple)) else [output]
            sum(o.float().mean() for o in outputs).backward()
        self.network.zero_grad(set_to_none=True)
        self.network.eval()
        try:
            with torch.no_grad(), precision:
                self.network(data)
        finally:
            self.network.train()

    def _check_compiled_network(self) -> None:
        """Compile the network now, on trial passes, and train without compilation if that fails.

        nnU-Net compiles the network by default on CUDA; a network or backend that cannot be
        compiled (no working triton, an operation the compiler does not support, a compiler
        crash) would otherwise crash the first training step. If the compiled trial passes fail
        but the same passes run eagerly, the compiled wrapper is removed (the parameters are the
        same objects, so the optimizer and DDP keep working), the reason is logged and training
        goes on eagerly. If they fail eagerly too, the eager error is raised: that is not a
        compilation problem.
        """
        compiled = self._compiled_network()
        if compiled is None:
            return
        try:
            self._trial_passes()
            return
        except Exception as error:  # any compile failure: dynamo, inductor, triton, the C compiler
            # dynamo's messages put the backend's own error on the second line
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = f"{type(error).__name__}: {' '.join(lines[:2])[:300]}"
        self.network.zero_grad(set_to_none=True)
        if self.is_ddp:
            self.network.module = compiled._orig_mod
        else:
            self.network = compiled._orig_mod
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._trial_passes()  # raises if the network fails without compilation as well
        self.compile_disabled_reason = reason
        self.print_to_log_file(f"WARNING: torch.compile turned off for the network, which failed to compile "
                               f"({reason}); training continues without compilation. Set nnUNet_compile=false "
                               "to skip the attempt.")

    def on_train_epoch_start(self):
        self.logger.log(SEED_KEY, self.seed_used, self.current_epoch)
        super().on_train_epoch_start()

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        logged = self.logger.local_logger.my_fantastic_logging
        # checkpoints written before seeds were logged: the earlier epochs were not seeded
        logged.setdefault(SEED_KEY, [None] * len(logged.get("epoch_start_timestamps", [])))
        earlier = {s for s in logged[SEED_KEY]}
        if earlier and earlier != {self.seed_used}:
            self.print_to_log_file(f"seed: the checkpoint's epochs ran with seed(s) {sorted(earlier, key=str)}, this "
                                   f"run continues with {self.seed_used}; a resumed run does not repeat an "
                                   "uninterrupted one bit for bit (random states are not stored)")

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
        # the budget is per GPU; under DDP nnU-Net splits the plans' (global) batch over the ranks
        # and refuses fewer cases than ranks, so the global batch is the per-GPU one times N
        plans["configurations"][configuration]["batch_size"] = batch_size * ddp_world_size()
        return plans

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        ndim = len(self.configuration_manager.patch_size)
        if os.environ.get(MIRROR_AXES_ENV) is not None:
            value, source = os.environ[MIRROR_AXES_ENV], MIRROR_AXES_ENV
        elif self.mirror_axes is not None:
            value, source = self.mirror_axes, f"{type(self).__name__}.mirror_axes"
        else:
            return rotation, dummy_2d, initial_patch_size, mirror_axes
        names = anatomical_mirror_names(value, source)
        if names is not None:
            chosen = anatomical_mirror_axes(names, self._case_anatomical_frames(), ndim, source)
            self.print_to_log_file(f"mirror axes {', '.join(names)} (from {source}) are array axes {chosen} of the "
                                   f"{ndim}D patch in every case")
        elif isinstance(value, str):
            chosen = parse_mirror_axes(value, ndim, source)
        else:
            chosen = validate_mirror_axes(value, ndim, source)
        # the same axes for test-time mirroring (stored in the checkpoint, used by nnUNetv2_predict)
        mirror_axes = chosen if chosen else None
        self.inference_allowed_mirroring_axes = mirror_axes
        self.print_to_log_file(f"mirror axes (augmentation and test time): {mirror_axes}")
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def _case_anatomical_frames(self) -> dict[str, AnatomicalFrame]:
        """Case identifier -> anatomical frame of its preprocessed array, from the image direction
        nnU-Net stored in the case's properties and the plans' ``transpose_forward``."""
        from nnunet_shape.descriptor_files.measure import geometry_from_properties

        folder = self.preprocessed_dataset_folder
        frames = {}
        for identifier in infer_dataset_class(folder).get_identifiers(folder):
            data, properties = load_preprocessed_image(folder, identifier)
            _, geometry = geometry_from_properties(properties, data.shape)
            if geometry.world_frame != "ITK-LPS" or len(geometry.direction) != 3:
                raise ValueError(f"mirror axes in anatomical words (LR, AP, SI) need 3-D images with a direction; case "
                                 f"{identifier} of dataset {self.plans_manager.dataset_name} has none (its reader "
                                 "stores no geometry, or the image is 2-D): give axis indices instead")
            frames[identifier] = AnatomicalFrame.from_direction(geometry.direction,
                                                                self.plans_manager.transpose_forward)
        return frames

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
        # A seeded run also gets seeded workers (WholeCaseDataLoader.worker_seed). nnU-Net's
        # NonDetMultiThreadedAugmenter takes whichever worker's batch is ready first, so with
        # workers the batch order is not reproducible (swapping in batchgenerators' ordered
        # MultiThreadedAugmenter hung nnUNetv2_train with 2 workers: not done).
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

        seed = self.seed_used
        streams = iter((SEED_STREAM_TRAIN_WORKERS, SEED_STREAM_VAL_WORKERS))  # nnU-Net builds train, then val
        loader_class = self.data_loader_class

        def make_loader(*args, **kwargs):
            loader = loader_class(*args, **kwargs)
            if seed is not None:
                loader.worker_seed = derive_seed(seed, next(streams))
            return loader

        if seed is not None:
            seed_everything(derive_seed(seed, SEED_STREAM_DATA))
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        if seed is not None and get_allowed_n_proc_DA() > 0:
            self.print_to_log_file(
                "WARNING: seeded run with augmentation workers (nnUNet_n_proc_DA > 0): each worker is "
                "seeded, but nnU-Net's NonDetMultiThreadedAugmenter hands over whichever worker's batch "
                "is ready first, so the batch order (and the weights) can differ between runs; "
                "set nnUNet_n_proc_DA=0 for a bit-identical repeat")
        original = trainer_module.nnUNetDataLoader
        trainer_module.nnUNetDataLoader = make_loader
        try:
            return super().get_dataloaders()
        finally:
            trainer_module.nnUNetDataLoader = original
