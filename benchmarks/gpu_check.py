"""GPU check: every GPU claim of docs/performance.md measured in one run of under 8 minutes.

``make gpu-check`` (``benchmarks/gpu_check.py --output benchmarks/gpu_check.json``) on one CUDA GPU
runs five parts, prints one table and writes the results as JSON:

1. **Whole-scan training step** at 160 x 384 x 384 (batch 1, one input channel, 5 classes) on the
   knee plans (``activation_memory.py``'s ``knee_planner``: what nnU-Net's planner returns for that
   patch), bf16 autocast: STD/EXP, STD/EXP with full-resolution checkpointing and nnU-Net's
   PlainConvUNet on the same input. One step = what ``nnUNetTrainerShapeDescriptors.train_step``
   does: zero_grad, forward under autocast, the descriptor loss (V+C+D) on the float32 softmax,
   backward, ``clip_grad_norm_(12)``, Adam; deep supervision off for all three networks (the
   descriptor trainers train without it). Reported: median step time after a warm-up step,
   ``torch.cuda.max_memory_allocated`` over the timed steps ("peak": weights, Adam state, input
   and the step itself) and the peak minus the memory allocated when the step starts ("step":
   activations, gradients, the loss); an out-of-memory error is a result ("OOM"), not a crash.
   The STD/EXP rows give their ratio to PlainConvUNet next to the CPU estimate of
   ``benchmarks/results.md`` (activation bytes extrapolated from small inputs on the CPU).
2. **The same with torch.compile** (inductor, nnU-Net's default on CUDA): compile time (the
   first compiled forward + backward), step time, peak memory, and the compiled loss and
   gradients against the eager ones on the same weights and batch (relative error of the loss
   and of the gradient vector, both under bf16 autocast; "match" below 0.1).
3. **Largest-component postprocessing** of a 160 x 384 x 384 label map (``connected_components.py``'s
   ``realistic_label_map``, all foreground then each of 4 labels): the torch backend on CUDA
   (and cucim when installed) against cc3d on the CPU and nnU-Net's skimage path, outputs
   compared voxel for voxel.
4. **Descriptors forward + backward** on CUDA (``descriptor_throughput.py``) on 1 x 5 x 160 x 384 x
   384 probabilities against one softmax over the same tensor (and the coordinate-grid baseline).
5. **30 training iterations of nnUNetTrainerShapeDescriptors** through the trainer (nnU-Net's
   data loader and augmentation, ``train_step``) on full-resolution knee phantoms (2 cases of
   160 x 384 x 384 at 0.7 x 0.365 x 0.365 mm, planned and preprocessed by nnU-Net; set-up cached
   under ``$TMPDIR/nnunet_shape_bench``): iterations per second and peak memory after two
   warm-up iterations. ``nnUNet_compile`` is off here (part 2 measures compilation) unless
   ``--trainer-compile``.

Each part has its own time limit (``PART_LIMITS_S``, 445 s in all): a variant that would not fit in
what is left of it (judged by the variant before it) is skipped with a note, and a part still
running at its limit is stopped there (SIGALRM) and reported as such; the run goes on.

``--small`` runs the same code at small sizes on the CPU in about a minute (the test suite runs it,
``tests/test_gpu_check.py``), with the ``aot_eager`` compile backend in part 2 (inductor on the CPU
is covered by ``tests/test_compile.py``) and 3 training iterations in part 5.

    .venv/bin/python benchmarks/gpu_check.py --output benchmarks/gpu_check.json     # one CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --small --output /tmp/gpu_check_small.json
    .venv/bin/python benchmarks/gpu_check.py --parts 1 3                             # some parts
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCHMARK_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARK_DIR))

from common import (  # noqa: E402
    format_seconds,
    machine_info,
    machine_markdown,
    markdown_table,
    plain_conv_unet_kwargs,
    synchronizer,
)

GIB = 1024**3
KNEE_SPACING = (0.7, 0.365, 0.365)
NUM_CLASSES = 5
#: seconds per part on the GPU (sum 445 s: under 8 minutes with start-up and imports)
PART_LIMITS_S: dict[int, float] = {1: 75.0, 2: 160.0, 3: 35.0, 4: 25.0, 5: 150.0}
#: --small on a (possibly shared) 2-core CPU: generous, the work itself takes about a minute
SMALL_PART_LIMITS_S: dict[int, float] = {1: 60.0, 2: 90.0, 3: 30.0, 4: 30.0, 5: 150.0}
#: compiled vs eager, both under bf16 autocast: relative error of the loss and of the gradient
#: vector. bf16 keeps ~3 significant digits, so two correct runs that only fuse and order the
#: arithmetic differently already differ by ~1e-3-1e-2; a wrong graph differs by O(1)
COMPILE_MATCH_TOLERANCE = 0.1
#: order of the training-step variants (PlainConvUNet second: the ratio needs it)
TRAINING_VARIANTS = ("STD/EXP", "PlainConvUNet", "STD/EXP + checkpoint")
PHANTOM_DATASET_ID = 791
PHANTOM_DATASET_NAME = "GPUCheckPhantom"
#: bump when the part-5 set-up changes so that stale caches are not reused
CACHE_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: ``full`` for the GPU, ``small`` for the CPU rehearsal."""

    name: str
    patch: tuple[int, int, int]
    #: PlainConvUNet-style kwargs (deep_supervision included) of the training-step networks
    topology: str
    repeats: int
    components_size: tuple[int, int, int]
    descriptor_shape: tuple[int, int, int]
    descriptor_repeats: int
    phantom_shape: tuple[int, int, int]
    phantom_spacing: tuple[float, float, float]
    phantom_cases: int
    iterations: int
    warmup_iterations: int
    limits: dict[int, float] = field(default_factory=dict)
    compile_backend: str = "inductor"


FULL = Settings(
    name="full", patch=(160, 384, 384), topology="knee_planner", repeats=3, components_size=(160, 384, 384),
    descriptor_shape=(160, 384, 384), descriptor_repeats=5, phantom_shape=(160, 384, 384),
    phantom_spacing=KNEE_SPACING, phantom_cases=2, iterations=30, warmup_iterations=2,
    limits=dict(PART_LIMITS_S), compile_backend="inductor")
SMALL = Settings(
    name="small", patch=(16, 32, 32), topology="small", repeats=1, components_size=(32, 32, 32),
    descriptor_shape=(16, 32, 32), descriptor_repeats=2, phantom_shape=(20, 32, 32),
    phantom_spacing=(2.8, 1.4, 1.4), phantom_cases=2, iterations=3, warmup_iterations=1,
    limits=dict(SMALL_PART_LIMITS_S), compile_backend="aot_eager")


def topology_kwargs(topology: str) -> dict[str, Any]:
    """PlainConvUNet kwargs (ops as classes, deep supervision on) of ``knee_planner`` or ``small``."""
    if topology == "small":
        # 4 stages, total stride (4, 8, 8): the smallest net with the knee plans' structure
        strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
        return {**plain_conv_unet_kwargs(strides, [[3, 3, 3]] * 4, [8, 16, 32, 64]), "deep_supervision": True}
    from activation_memory import TOPOLOGIES

    return dict(TOPOLOGIES[topology]["kwargs"])


# ------------------------------------------------------------------------------ limits, OOM
class PartTimeout(Exception):
    """Raised (by SIGALRM) in a part still running at its time limit."""


class Budget:
    """The time limit of one part: what is left, and whether a step of a given length still fits."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = float(limit_s)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.limit_s - self.elapsed()

    def allows(self, seconds: float) -> bool:
        return seconds <= self.left()

    def skip_note(self, what: str, predicted_s: float) -> str:
        return (f"skipped: {what} would take ~{predicted_s:.0f} s, {max(self.left(), 0.0):.0f} s left of "
                f"the part's {self.limit_s:.0f} s limit")


@contextlib.contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`PartTimeout` in the main thread after ``seconds``.

    A no-op off the main thread, where SIGALRM does not exist, or when an outer timer (e.g.
    pytest-timeout's) would fire first; an outer timer is re-armed with its remaining time after.
    """
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0 or not math.isfinite(seconds):
        yield
        return
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < outer_delay <= seconds:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise PartTimeout(f"stopped at its {seconds:.0f} s limit")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - started), 1e-3), outer_interval)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's equivalent."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(error, MemoryError))


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> int:
    """Reset the peak statistics; returns the bytes allocated now (0 on the CPU)."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return int(torch.cuda.memory_allocated(device))


def peak_bytes(device: torch.device) -> int | None:
    """``torch.cuda.max_memory_allocated`` since the last reset (None on the CPU: no allocator statistics)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def gib(value: int | None) -> float | None:
    return None if value is None else value / GIB


def _row(part: int, check: str, variant: str, status: str = "ok", **values: Any) -> dict[str, Any]:
    return {"part": part, "check": check, "variant": variant, "status": status, **values}


def error_row(part: int, check: str, variant: str, error: BaseException) -> dict[str, Any]:
    """A row for a failed variant: ``OOM`` is a result, anything else an error (message kept)."""
    if is_out_of_memory(error):
        return _row(part, check, variant, "OOM", note=f"out of memory: {str(error).splitlines()[0][:160]}")
    return _row(part, check, variant, "error", note=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                if str(error) else type(error).__name__, traceback=traceback.format_exc(limit=8))


# ------------------------------------------------------------------------------ context
@dataclass
class Context:
    device: torch.device
    settings: Settings
    cache: Path
    trainer_compile: bool = False
    compile_backend: str = "inductor"
    seed: int = 0
    verbose: bool = True
    _batches: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"gpu_check: {message}", file=sys.stderr, flush=True)

    def label_map(self, shape: Sequence[int]) -> np.ndarray:
        """A raw-prediction-like (X, Y, Z) uint8 map of 4 classes (``connected_components.py``)."""
        from connected_components import realistic_label_map

        return realistic_label_map(tuple(shape), n_classes=NUM_CLASSES - 1, seed=self.seed)

    def training_batch(self, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (1, 1, *S) float32, labels (1, 1, *S) int16 as nnU-Net's loader gives them, spacing (1, 3))."""
        key = tuple(int(s) for s in shape)
        if key not in self._batches:
            labels = torch.from_numpy(self.label_map(key).astype(np.int16))[None, None]
            generator = torch.Generator().manual_seed(self.seed)
            image = labels.float() + 0.5 * torch.randn(labels.shape, generator=generator)
            spacing = torch.tensor([KNEE_SPACING], dtype=torch.float32)
            self._batches[key] = (image.to(self.device), labels.to(self.device), spacing.to(self.device))
        return self._batches[key]


# ------------------------------------------------------------------------------ parts 1 and 2
def build_network(variant: str, topology: str, device: torch.device) -> torch.nn.Module:
    """One of :data:`TRAINING_VARIANTS` (``activation_memory.VARIANTS``), initialised, deep supervision off."""
    from activation_memory import VARIANTS

    network = VARIANTS[variant](topology_kwargs(topology))
    network.apply(network.initialize)
    network.decoder.deep_supervision = False  # nnUNetTrainer.set_deep_supervision_enabled(False)
    return network.to(device).train()


def descriptor_loss() -> torch.nn.Module:
    """The loss of nnUNetTrainerShapeDescriptors (its class attributes), as its ``_build_loss`` makes it."""
    from nnunet_shape.core.losses import ShapeDescriptorLoss
    from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors as trainer

    return ShapeDescriptorLoss(descriptors=trainer.descriptors, t=trainer.barrier_t0,
                               relative_margin=trainer.relative_margin,
                               absolute_margin=dict(trainer.absolute_margin), include_background=False)


def adam(network: torch.nn.Module) -> torch.optim.Optimizer:
    from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors as trainer

    return torch.optim.Adam(network.parameters(), lr=trainer.initial_learning_rate, betas=trainer.adam_betas,
                            weight_decay=3e-5)


def forward_backward(network: torch.nn.Module, loss_function: torch.nn.Module, batch: tuple, device: torch.device
                     ) -> torch.Tensor:
    """Forward under bf16 autocast, descriptor loss on the float32 softmax, backward; returns the loss."""
    image, labels, spacing = batch
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = network(image)
    logits = logits[0] if isinstance(logits, (list, tuple)) else logits
    loss = loss_function(torch.softmax(logits.float(), 1), labels, spacing)
    loss.backward()
    return loss.detach()


def training_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_function: torch.nn.Module,
                  batch: tuple, device: torch.device) -> torch.Tensor:
    """One step as nnUNetTrainerShapeDescriptors.train_step takes it (bf16 autocast, no GradScaler)."""
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(network, loss_function, batch, device)
    torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
    optimizer.step()
    return loss


def gradient_vector(network: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().float() for p in network.parameters() if p.grad is not None])


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-30))


def cpu_estimates(results_md: Path = BENCHMARK_DIR / "results.md", topology: str = "knee_planner"
                  ) -> dict[str, dict[str, float]]:
    """``{network: {"activations_gib", "ratio"}}`` of results.md's activation-memory table for ``topology``
    (empty when the file or the table is not there)."""
    if not results_md.is_file():
        return {}
    header: list[str] | None = None
    found: dict[str, dict[str, float]] = {}
    for line in results_md.read_text(errors="replace").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| topology | network"):
            header = cells
        elif header is not None and len(cells) == len(header) and cells[0] == topology:
            try:
                gib_column = next(i for i, h in enumerate(header) if h.startswith("GiB at"))
                ratio_column = header.index("ratio vs PlainConvUNet")
                found[cells[1]] = {"activations_gib": float(cells[gib_column]), "ratio": float(cells[ratio_column])}
            except (StopIteration, ValueError):
                continue
    return found


def measure_training_step(context: Context, budget: Budget, variant: str, compiled: bool, batch: tuple,
                          loss_function: torch.nn.Module) -> dict[str, Any]:
    """One variant of parts 1 / 2 (everything it allocates is freed when it returns)."""
    settings, device = context.settings, context.device
    sync = synchronizer(device)
    network = build_network(variant, settings.topology, device)
    optimizer = adam(network)
    values: dict[str, Any] = {"parameters_m": sum(p.numel() for p in network.parameters()) / 1e6}
    stepped: torch.nn.Module = network
    if compiled:
        reference_loss = forward_backward(network, loss_function, batch, device)
        reference_grads = gradient_vector(network)
        network.zero_grad(set_to_none=True)
        stepped = torch.compile(network, backend=context.compile_backend)
        start = time.perf_counter()
        compiled_loss = forward_backward(stepped, loss_function, batch, device)
        sync()
        values["compile_s"] = time.perf_counter() - start
        values["loss_rel_error"] = relative_error(compiled_loss, reference_loss)
        values["grad_rel_error"] = relative_error(gradient_vector(network), reference_grads)
        values["match"] = bool(values["loss_rel_error"] < COMPILE_MATCH_TOLERANCE
                               and values["grad_rel_error"] < COMPILE_MATCH_TOLERANCE)
        del reference_grads
    start = time.perf_counter()
    training_step(stepped, optimizer, loss_function, batch, device)  # warm-up: Adam state, cuDNN autotuning
    sync()
    values["first_step_s"] = time.perf_counter() - start
    repeats = settings.repeats
    while repeats > 1 and not budget.allows(repeats * values["first_step_s"]):
        repeats -= 1
    optimizer.zero_grad(set_to_none=True)
    at_start = reset_peak(device)  # weights, Adam state, the batch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        training_step(stepped, optimizer, loss_function, batch, device)
        sync()
        times.append(time.perf_counter() - start)
    peak = peak_bytes(device)
    values.update(seconds=statistics.median(times), repeats=repeats, peak_gib=gib(peak),
                  step_gib=gib(None if peak is None else peak - at_start))
    return values


def _training_variants(context: Context, budget: Budget, rows: list[dict], *, compiled: bool) -> None:
    part, check = (2, "training step, torch.compile") if compiled else (1, "training step, eager")
    settings, device = context.settings, context.device
    batch = context.training_batch(settings.patch)
    loss_function = descriptor_loss()
    previous_s: float | None = None
    for variant in TRAINING_VARIANTS:
        if previous_s is not None and not budget.allows(1.1 * previous_s):
            rows.append(_row(part, check, variant, "skipped", note=budget.skip_note(variant, 1.1 * previous_s)))
            continue
        context.log(f"part {part}: {variant} at {'x'.join(map(str, settings.patch))}")
        started = time.perf_counter()
        try:
            if compiled:
                torch._dynamo.reset()
            rows.append(_row(part, check, variant,
                             **measure_training_step(context, budget, variant, compiled, batch, loss_function)))
        except PartTimeout:
            raise
        except Exception as error:  # OOM is a result; other errors are reported and the part goes on
            rows.append(error_row(part, check, variant, error))
        finally:
            free_memory(device)
        previous_s = time.perf_counter() - started
    _add_ratios(rows, part, settings)


def _add_ratios(rows: list[dict], part: int, settings: Settings) -> None:
    """STD/EXP rows: peak and step memory relative to PlainConvUNet, next to results.md's CPU estimate."""
    measured = {r["variant"]: r for r in rows if r["part"] == part and r["status"] == "ok"}
    plain = measured.get("PlainConvUNet")
    estimates = cpu_estimates(topology=settings.topology)
    for variant, row in measured.items():
        estimate = estimates.get(variant)
        if estimate is not None:
            row["cpu_estimate_activations_gib"] = estimate["activations_gib"]
            row["cpu_estimate_ratio"] = estimate["ratio"]
        if plain is not None and variant != "PlainConvUNet" and row.get("peak_gib") is not None:
            row["peak_ratio_vs_plain"] = row["peak_gib"] / plain["peak_gib"]
            row["step_ratio_vs_plain"] = row["step_gib"] / plain["step_gib"]
    plain_rows = [r for r in rows if r["part"] == part and r["variant"] == "PlainConvUNet"]
    if plain_rows and plain_rows[0]["status"] == "OOM":
        for row in measured.values():
            row["note"] = (row.get("note", "") + " PlainConvUNet ran out of memory on the same input").strip()


def part_training_step(context: Context, budget: Budget, rows: list[dict]) -> None:
    _training_variants(context, budget, rows, compiled=False)


def part_training_step_compiled(context: Context, budget: Budget, rows: list[dict]) -> None:
    _training_variants(context, budget, rows, compiled=True)


# ------------------------------------------------------------------------------ part 3
def part_connected_components(context: Context, budget: Budget, rows: list[dict]) -> None:
    import connected_components as cc

    from nnunet_shape.core.connected_components import cucim_available

    device, size = context.device, context.settings.components_size
    context.log(f"part 3: largest-component postprocessing at {'x'.join(map(str, size))}")
    if device.type == "cuda":
        # warm-up (discarded): CUDA kernels and the allocator; connected_components.run does not
        # warm up above 10 M voxels
        cc.run([(64, 64, 64)], device=str(device), repeats=1)
        measured = cc.run([size], device="cpu", backends=["cc3d"], repeats=1 if math.prod(size) > 1e7 else 3)
        measured += [r for r in cc.run([size], device=str(device), repeats=3) if r["variant"] != "nnU-Net (skimage)"]
    else:
        measured = cc.run([size], device="cpu", backends=["cc3d", "torch"], repeats=context.settings.repeats)
    cc3d = next(r for r in measured if r["variant"] == "cc3d")
    for r in measured:
        rows.append(_row(3, "largest component", f"{r['variant']} ({r['device']})",
                         "ok" if r["identical"] else "MISMATCH", seconds=r["seconds"], identical=r["identical"],
                         speedup_vs_nnunet=r["speedup"], speedup_vs_cc3d=cc3d["seconds"] / r["seconds"]))
    if device.type == "cuda" and not cucim_available():
        rows[-1]["note"] = "cucim not installed (pip install -e '.[gpu]')"


# ------------------------------------------------------------------------------ part 4
def part_descriptors(context: Context, budget: Budget, rows: list[dict]) -> None:
    import descriptor_throughput

    shape = context.settings.descriptor_shape
    context.log(f"part 4: descriptors forward + backward on 1x{NUM_CLASSES}x{'x'.join(map(str, shape))}")
    for r in descriptor_throughput.run(device=str(context.device), shape=shape,
                                       repeats=context.settings.descriptor_repeats, classes=NUM_CLASSES):
        rows.append(_row(4, "descriptors", r["method"], seconds=r["median_s"], vs_softmax=r["vs_softmax"],
                         peak_extra_mib=r["peak_extra_mib"], what=r["what"],
                         speedup_vs_grid=r.get("speedup_vs_grid")))


# ------------------------------------------------------------------------------ part 5
def phantom_cache(settings: Settings) -> Path:
    tag = "x".join(str(s) for s in settings.phantom_shape)
    return Path(tempfile.gettempdir()) / "nnunet_shape_bench" / f"gpu_check_v{CACHE_VERSION}_{tag}"


def prepare_phantoms(context: Context) -> float:
    """Phantom raw dataset + nnU-Net plans and preprocessed data in ``context.cache`` (cached); returns
    the seconds spent in this call."""
    from inference_time import _run, nnunet_environment

    from nnunet_shape.demo.phantoms import write_phantom_dataset

    settings, cache = context.settings, context.cache
    start = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / ".raw_done").exists():
        shape = "x".join(map(str, settings.phantom_shape))
        context.log(f"part 5: writing {settings.phantom_cases} phantoms of {shape}")
        write_phantom_dataset(cache / "nnUNet_raw", n_train=settings.phantom_cases, n_test=0,
                              dataset_id=PHANTOM_DATASET_ID, name=PHANTOM_DATASET_NAME, shape=settings.phantom_shape,
                              spacing=settings.phantom_spacing,
                              num_processes=min(settings.phantom_cases, os.cpu_count() or 1))
        (cache / ".raw_done").touch()
    if not (cache / ".preprocessed_done").exists():
        context.log("part 5: nnUNetv2_plan_and_preprocess")
        processes = str(max(1, min(settings.phantom_cases, (os.cpu_count() or 2) // 2)))
        (cache / "logs").mkdir(exist_ok=True)
        _run(["nnUNetv2_plan_and_preprocess", "-d", str(PHANTOM_DATASET_ID), "-c", "3d_fullres", "-np", processes],
             nnunet_environment(cache), cache / "logs" / "plan_and_preprocess.log")
        (cache / ".preprocessed_done").touch()
    return time.perf_counter() - start


def part_trainer_iterations(context: Context, budget: Budget, rows: list[dict]) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from inference_time import environment, nnunet_environment

    from nnunet_shape.nnunet.training.shape_trainers import nnUNetTrainerShapeDescriptors

    settings, device, cache = context.settings, context.device, context.cache
    setup_s = prepare_phantoms(context)
    folder = cache / "nnUNet_preprocessed" / f"Dataset{PHANTOM_DATASET_ID:03d}_{PHANTOM_DATASET_NAME}"
    plans = load_json(str(folder / "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(folder / "dataset.json"))
    env = nnunet_environment(cache, nnUNet_compile="true" if context.trainer_compile else "false")
    if device.type == "cpu":
        env["nnUNet_n_proc_DA"] = "0"  # one in-process augmenter on a small CPU
    trainer = None
    log = cache / "logs" / "trainer_stdout.log"
    log.parent.mkdir(exist_ok=True)
    with environment(env), open(log, "w") as stdout, contextlib.redirect_stdout(stdout):
        try:
            trainer = nnUNetTrainerShapeDescriptors(plans, "3d_fullres", "all", dataset_json, device)
            context.log(f"part 5: {type(trainer).__name__}, patch {trainer.configuration_manager.patch_size}, "
                        f"batch {trainer.configuration_manager.batch_size}, {settings.iterations} iterations")
            trainer.on_train_start()
            trainer.on_epoch_start()
            trainer.on_train_epoch_start()
            sync = synchronizer(device)
            start = time.perf_counter()
            outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(settings.warmup_iterations)]
            sync()
            warmup_s = time.perf_counter() - start
            per_iteration = warmup_s / max(settings.warmup_iterations, 1)
            iterations = settings.iterations
            if not budget.allows(1.2 * iterations * per_iteration):
                iterations = max(1, int(budget.left() / (1.2 * per_iteration)))
            reset_peak(device)
            start = time.perf_counter()
            for _ in range(iterations):
                outputs.append(trainer.train_step(next(trainer.dataloader_train)))
            sync()
            seconds = time.perf_counter() - start
            trainer.on_train_epoch_end(outputs)  # nnU-Net's epoch-end path on the step outputs
            note = "" if iterations == settings.iterations else \
                f"{iterations} of {settings.iterations} iterations fit in the part's limit"
            rows.append(_row(5, "trainer iterations", type(trainer).__name__, iterations=iterations,
                             seconds=seconds / iterations, iterations_per_s=iterations / seconds,
                             peak_gib=gib(peak_bytes(device)), warmup_s=warmup_s, setup_s=setup_s,
                             patch_size=[int(p) for p in trainer.configuration_manager.patch_size],
                             batch_size=int(trainer.configuration_manager.batch_size),
                             compiled=bool(trainer._do_i_compile()), note=note,
                             final_loss=float(np.mean(outputs[-1]["loss"]))))
        except PartTimeout:
            raise
        except Exception as error:
            rows.append(error_row(5, "trainer iterations", "nnUNetTrainerShapeDescriptors", error))
        finally:
            if trainer is not None:
                _stop_loaders(trainer)
            del trainer
            free_memory(device)


def _stop_loaders(trainer: Any) -> None:
    """What nnUNetTrainer.on_train_end does to its augmenters (without saving a checkpoint)."""
    for loader in (getattr(trainer, "dataloader_train", None), getattr(trainer, "dataloader_val", None)):
        finish = getattr(loader, "_finish", None)
        if callable(finish):
            with contextlib.suppress(Exception):
                finish()


# ------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class Part:
    number: int
    title: str
    function: Callable[[Context, Budget, list[dict]], None]


PARTS: tuple[Part, ...] = (
    Part(1, "whole-scan training step (eager, bf16)", part_training_step),
    Part(2, "whole-scan training step (torch.compile)", part_training_step_compiled),
    Part(3, "largest-component postprocessing", part_connected_components),
    Part(4, "descriptors forward + backward vs one softmax", part_descriptors),
    Part(5, "nnUNetTrainerShapeDescriptors iterations", part_trainer_iterations),
)


def run_part(part: Part, context: Context, limit_s: float) -> dict[str, Any]:
    """Run one part under its limit; never raises (a failure is the part's status)."""
    budget = Budget(limit_s)
    rows: list[dict] = []
    status, note = "ok", ""
    with hard_limit(limit_s):
        try:
            part.function(context, budget, rows)
        except PartTimeout as stop:
            status, note = "timeout", f"{stop}; rows before it are kept"
        except Exception as error:
            row = error_row(part.number, part.title, "-", error)
            rows.append(row)
            status, note = row["status"], row["note"]
    free_memory(context.device)
    if status == "ok" and any(r["status"] not in ("ok", "skipped", "OOM") for r in rows):
        status = "failed"
    elif status == "ok" and any(r["status"] == "skipped" for r in rows):
        note = "some variants skipped to stay within the limit"
    return {"part": part.number, "title": part.title, "limit_s": limit_s, "wall_s": budget.elapsed(),
            "status": status, "note": note, "rows": rows}


def run(device: str = "cuda", small: bool = False, parts: Sequence[int] = (1, 2, 3, 4, 5),
        cache: str | os.PathLike | None = None, trainer_compile: bool = False, compile_backend: str | None = None,
        limit_scale: float = 1.0, verbose: bool = True) -> dict[str, Any]:
    """Run the selected parts; returns the JSON-ready result (machine, settings, parts with rows)."""
    settings = SMALL if small else FULL
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net's run_training sets it
    context = Context(device=torch_device, settings=settings,
                      cache=Path(cache) if cache is not None else phantom_cache(settings),
                      trainer_compile=trainer_compile,
                      compile_backend=compile_backend or settings.compile_backend, verbose=verbose)
    started = time.perf_counter()
    results = []
    for part in PARTS:
        if part.number in parts:
            results.append(run_part(part, context, settings.limits[part.number] * limit_scale))
    return {"machine": machine_info(torch_device), "device": str(torch_device), "settings": settings.name,
            "compile_backend": context.compile_backend, "patch": list(settings.patch),
            "total_wall_s": time.perf_counter() - started, "parts": results}


# ------------------------------------------------------------------------------ the table
def _number(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def row_summary(row: dict[str, Any]) -> str:
    """The part-specific figures of a row, one cell."""
    part = row["part"]
    if part in (1, 2):
        bits = []
        if "compile_s" in row:
            bits.append(f"compile {format_seconds(row['compile_s'])}; vs eager: loss {_number(row['loss_rel_error'])}, "
                        f"grads {_number(row['grad_rel_error'])} ({'match' if row['match'] else 'MISMATCH'})")
        if row.get("step_gib") is not None:
            bits.append(f"step {row['step_gib']:.2f} GiB")
        if "peak_ratio_vs_plain" in row:
            bits.append(f"{row['peak_ratio_vs_plain']:.2f}x PlainConvUNet peak, {row['step_ratio_vs_plain']:.2f}x step")
        if "cpu_estimate_ratio" in row:
            bits.append(f"CPU estimate (results.md): activations {row['cpu_estimate_activations_gib']:.2f} GiB, "
                        f"{row['cpu_estimate_ratio']:.3f}x")
        return "; ".join(bits)
    if part == 3:
        return (f"identical: {'yes' if row['identical'] else 'NO'}; {row['speedup_vs_cc3d']:.2f}x cc3d speed, "
                f"{row['speedup_vs_nnunet']:.2f}x nnU-Net's")
    if part == 4:
        bits = [f"{row['vs_softmax']:.2f}x one softmax"]
        if row.get("speedup_vs_grid"):
            bits.append(f"{row['speedup_vs_grid']:.1f}x faster than the grid baseline")
        if row.get("peak_extra_mib") is not None:
            bits.append(f"peak extra {row['peak_extra_mib']:.0f} MiB")
        return "; ".join(bits)
    if part == 5:
        return (f"{row['iterations_per_s']:.2f} it/s over {row['iterations']} iterations; patch "
                f"{'x'.join(map(str, row['patch_size']))}, batch {row['batch_size']}, "
                f"compile {'on' if row['compiled'] else 'off'}; set-up {format_seconds(row['setup_s'])}")
    return ""


def format_table(result: dict[str, Any]) -> str:
    lines = []
    for part in result["parts"]:
        if not part["rows"]:
            lines.append([part["part"], part["title"], "-", part["status"], "-", "-", "", part["note"]])
        for row in part["rows"]:
            ok = row["status"] == "ok"
            note = row.get("note", "")
            if row is part["rows"][-1] and part["status"] != "ok":
                note = f"{note} [part {part['status']}: {part['note']}]".strip()
            lines.append([row["part"], row["check"], row["variant"], row["status"],
                          format_seconds(row.get("seconds")) if ok else "-",
                          _number(row.get("peak_gib"), ".2f") if ok else "-",
                          row_summary(row) if ok else "", note])
    return markdown_table(["#", "check", "variant", "status", "time", "peak GiB", "result", "note"], lines,
                          align=["r", "l", "l", "l", "r", "r", "l", "l"])


def failed(result: dict[str, Any]) -> bool:
    """True if a check gave a wrong answer or crashed (OOM, skips and timeouts are results)."""
    for part in result["parts"]:
        for row in part["rows"]:
            if row["status"] in ("error", "MISMATCH") or row.get("match") is False:
                return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default), cuda:1, ...; --small: cpu")
    parser.add_argument("--small", action="store_true", help="the same code at small sizes, on the CPU by default")
    parser.add_argument("--parts", type=int, nargs="+", choices=[p.number for p in PARTS],
                        default=[p.number for p in PARTS])
    parser.add_argument("--output", default=None, help="JSON file to write (default: none)")
    parser.add_argument("--cache", default=None, help="part-5 set-up folder (default under $TMPDIR)")
    parser.add_argument("--trainer-compile", action="store_true", help="part 5 with nnUNet_compile=true")
    parser.add_argument("--compile-backend", default=None, help="part 2 (default inductor; --small: aot_eager)")
    parser.add_argument("--limit-scale", type=float, default=1.0, help="multiply every part's time limit")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device {device} but no CUDA device is visible (torch {torch.__version__}, "
              "torch.cuda.is_available() is False); run on a machine with a GPU, or use --small for the "
              "CPU rehearsal", file=sys.stderr)
        return 2
    result = run(str(device), args.small, args.parts, args.cache, args.trainer_compile, args.compile_backend,
                 args.limit_scale, verbose=not args.quiet)
    print(f"## GPU check ({result['settings']} sizes, {result['device']}, "
          f"{result['total_wall_s']:.0f} s)\n")
    print(machine_markdown(result["machine"]) + "\n")
    print(format_table(result))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1, default=str))
        print(f"\nwritten: {output}")
    return 1 if failed(result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
