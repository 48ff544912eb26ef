"""Loss overhead per training step: shape-descriptor loss versus nnU-Net's DC+CE.

Question: how much does supervising with shape descriptors (volume + centroid + spread +
surface, extended log-barrier) cost per training step compared with nnU-Net's own loss, on the
same STD/EXP network and the same whole (small) volume? Target: descriptor step time <= 1.05x
the DC+CE step.

One nnU-Net-style training step (``nnUNetTrainer.train_step`` on CPU: no autocast, no grad
scaler; on CUDA autocast + GradScaler as nnU-Net does) is timed end to end:
``zero_grad -> forward -> loss -> backward -> clip_grad_norm_(12) -> SGD step`` (lr 1e-2,
momentum 0.99, Nesterov, weight decay 3e-5, nnU-Net's optimiser).

Variants, all on ``nnunet_shape.network.std_exp.STDEXPNet`` built from PlainConvUNet-style plans
kwargs (4 stages, features 32, 64, 128, 256, strides 1, 2, 2, 2, kernels 3, InstanceNorm,
LeakyReLU, 2 convs per stage; 1 input channel, 5 classes), input 1 x 1 x 48 x 96 x 96:

* ``DC+CE``: nnU-Net's ``DC_and_CE_loss`` with the settings of ``nnUNetTrainer._build_loss``
  (``MemoryEfficientSoftDiceLoss``, ``batch_dice`` as the 3d_fullres plans, ``do_bg=False``,
  ``smooth=1e-5``, CE and Dice weight 1), deep supervision off (like for like);
* ``DC+CE + DS``: the same wrapped in nnU-Net's ``DeepSupervisionWrapper`` (weights
  1, 1/2, ..., last 0, normalised) on the network's deep-supervision outputs, targets
  downsampled beforehand (nnU-Net does that in the data loader, outside the step) - what
  ``nnUNetTrainerShapeFullSupervision`` trains;
* ``descriptors``: ``nnunet_shape.core.losses.ShapeDescriptorLoss(descriptors=("volume",
  "centroid", "spread", "surface"))`` on ``softmax(logits.float())`` with the label map as
  target (target descriptors under ``no_grad`` inside the loss, as the trainer does) and the
  case spacing, deep supervision off - what ``nnUNetTrainerShapeDescriptorsVCDS`` trains;
Also timed: the loss alone (forward + backward of the loss on fixed logits that require grad),
to show where the time goes; the network's share of a step, N, is the DC+CE step minus the DC+CE
loss alone. The verdict uses ``(N + descriptor loss) / (N + DC+CE loss)``: the network's forward,
backward and SGD step do the same work whatever the loss, so the step difference is the loss
difference, and the short loss-only passes can be repeated often. The whole-step ratios (paired
per round, and in process CPU time) are printed too; on an idle machine they agree, on a shared
one their run-to-run spread (tens of %) is far larger than the 5 % target. Variants are
timed interleaved, median of ``repeats`` after
``warmup`` (see ``benchmarks/common.py``); ``--profile`` prints a torch.profiler table of one
descriptor-loss forward + backward.

    .venv/bin/python benchmarks/loss_overhead.py                  # CPU, about a minute
    .venv/bin/python benchmarks/loss_overhead.py --device cuda --shape 96 192 192
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_ratio, format_seconds, markdown_table, paired_ratio, plain_conv_unet_kwargs, time_interleaved  # noqa: E402

from nnunet_shape.core.losses import ShapeDescriptorLoss  # noqa: E402
from nnunet_shape.network.std_exp import STDEXPNet  # noqa: E402

TARGET_RATIO = 1.05
DEFAULT_SHAPE: tuple[int, int, int] = (48, 96, 96)
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 0.5, 0.5)
NUM_CLASSES = 5
FEATURES = (32, 64, 128, 256)
DESCRIPTORS = ("volume", "centroid", "spread", "surface")
#: the timed variants; "DC+CE" is the like-for-like baseline
VARIANTS = ("DC+CE", "DC+CE + DS", "descriptors")


def network_kwargs(features: Sequence[int] = FEATURES) -> dict[str, Any]:
    """PlainConvUNet-style 3d_fullres ``arch_kwargs`` (ops as classes), as nnU-Net 2.8 plans them."""
    return plain_conv_unet_kwargs([[1, 1, 1]] + [[2, 2, 2]] * (len(features) - 1), features=features)


def build_network(deep_supervision: bool, device: torch.device, seed: int = 0) -> STDEXPNet:
    """The STD/EXP network with nnU-Net's He initialisation (same weights for the same seed)."""
    torch.manual_seed(seed)
    network = STDEXPNet(input_channels=1, num_classes=NUM_CLASSES, deep_supervision=deep_supervision,
                        **network_kwargs())
    network.apply(network.initialize)
    return network.to(device).train()


def synthetic_case(shape: Sequence[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, *shape) image and (1, 1, *shape) float label map: 4 ellipsoid classes in noise."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    labels = np.zeros(shape, dtype=np.uint8)
    size = np.asarray(shape, dtype=np.float32)
    for label in range(1, NUM_CLASSES):
        centre = rng.uniform(0.3, 0.7, size=3) * size
        radii = rng.uniform(0.08, 0.2, size=3) * size
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
        labels[inside] = label
    image = rng.normal(0.0, 0.5, size=shape).astype(np.float32) + labels.astype(np.float32)
    return (torch.from_numpy(image)[None, None], torch.from_numpy(labels.astype(np.float32))[None, None])


def dc_and_ce_loss(deep_supervision: bool, n_outputs: int, batch_dice: bool = False) -> nn.Module:
    """nnU-Net's loss exactly as ``nnUNetTrainer._build_loss`` builds it for label (not region) training."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss: nn.Module = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                     weight_ce=1, weight_dice=1, ignore_label=None,
                                     dice_class=MemoryEfficientSoftDiceLoss)
    if deep_supervision:
        weights = np.array([1 / (2**i) for i in range(n_outputs)])
        weights[-1] = 0
        loss = DeepSupervisionWrapper(loss, weights / weights.sum())
    return loss


def deep_supervision_targets(target: torch.Tensor, network: STDEXPNet) -> list[torch.Tensor]:
    """Target at every deep-supervision scale (nearest neighbour, as nnU-Net's loader transform)."""
    targets = [target]
    scale = np.ones(3, dtype=np.int64)
    for stride in network.strides[1:-1]:
        scale = scale * np.asarray(stride)
        size = [int(s) // int(f) for s, f in zip(target.shape[2:], scale)]
        targets.append(torch.nn.functional.interpolate(target, size=size, mode="nearest-exact"))
    return targets


class TrainingStep:
    """One nnU-Net ``train_step`` (zero_grad, forward, loss, backward, clip 12, SGD step)."""

    def __init__(self, network: nn.Module, loss: Callable[[Any], torch.Tensor], device: torch.device) -> None:
        self.network = network
        self.loss = loss
        self.device = device
        # nnU-Net's optimizer (nnUNetTrainer.configure_optimizers)
        self.optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, weight_decay=3e-5, momentum=0.99,
                                         nesterov=True)
        self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

    def __call__(self, data: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            with torch.autocast("cuda", enabled=True):
                output = self.network(data)
                value = self.loss(output)
            self.scaler.scale(value).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            output = self.network(data)
            value = self.loss(output)
            value.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return float(value.detach())


def _descriptor_loss_function(loss: ShapeDescriptorLoss, target: torch.Tensor, spacing: torch.Tensor
                              ) -> Callable[[torch.Tensor], torch.Tensor]:
    # as nnUNetTrainerShapeDescriptors: probabilities in float32 even under autocast
    return lambda logits: loss(torch.softmax(logits.float(), 1), target, spacing)


def run(
    device: str = "cpu",
    shape: Sequence[int] = DEFAULT_SHAPE,
    repeats: int = 5,
    warmup: int = 1,
    loss_repeats: int = 20,
    batch_dice: bool = False,
    seed: int = 0,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Time training steps and loss-only passes; one dict per row.

    Rows have ``kind``: "step" (one per variant: ``variant``, ``seconds`` median,
    ``spread`` = (max - min) / median of the timed runs, ``repeats``), "comparison" (the
    descriptor step against each DC+CE variant: ``baseline``, ``seconds``,
    ``baseline_seconds``, ``ratio`` = median of the per-round ratios (see
    ``common.paired_ratio``), ``ratio_of_medians``, ``ratio_cpu_time`` (paired, process CPU
    time), ``ratio_from_parts`` = (N + descriptor loss alone) / (N + baseline loss alone) with
    N = DC+CE step - DC+CE loss alone, ``ratio_from_parts_fastest`` (the same from the fastest
    loss-only passes), ``target``, ``met`` judged on ``ratio_from_parts``, see the comment in
    the code) or "loss only" (``variant``, ``seconds``, ``fastest``, ``spread``, ``repeats``,
    ``fraction_of_step`` = loss-only time / the matching step time, ``network_seconds`` = N).
    Every row also has ``device`` and ``shape``. ``threads``: torch intra-op threads for this
    run (restored afterwards); None keeps the current setting.
    """
    if threads is not None:  # for this run only: the caller's setting is restored
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run(device, shape, repeats, warmup, loss_repeats, batch_dice, seed, None)
        finally:
            torch.set_num_threads(previous)
    torch_device = torch.device(device)
    image, labels = synthetic_case(shape, seed)
    image, labels = image.to(torch_device), labels.to(torch_device)
    spacing = torch.tensor([DEFAULT_SPACING], dtype=torch.float32, device=torch_device)

    # one network (same initial weights) per variant: the steps update the weights, and
    # sharing one network would let one loss's updates (or a divergence) change another's timing
    networks = {name: build_network(name == "DC+CE + DS", torch_device, seed) for name in VARIANTS}
    ds_targets = deep_supervision_targets(labels, networks["DC+CE + DS"])
    n_outputs = len(ds_targets)
    dc_ce = dc_and_ce_loss(False, n_outputs, batch_dice).to(torch_device)
    dc_ce_ds = dc_and_ce_loss(True, n_outputs, batch_dice).to(torch_device)
    descriptor_loss = ShapeDescriptorLoss(descriptors=DESCRIPTORS).to(torch_device)
    descriptor_function = _descriptor_loss_function(descriptor_loss, labels, spacing)
    loss_functions: dict[str, Callable[[Any], torch.Tensor]] = {
        "DC+CE": lambda out: dc_ce(out, labels),
        "DC+CE + DS": lambda out: dc_ce_ds(out, ds_targets),
        "descriptors": descriptor_function,
    }
    steps = {name: TrainingStep(networks[name], loss_functions[name], torch_device) for name in VARIANTS}
    step_times = time_interleaved({name: (lambda s=step: s(image)) for name, step in steps.items()},
                                  repeats=repeats, warmup=warmup, device=torch_device)

    # the loss alone on fixed logits: what each loss adds on top of the network
    with torch.no_grad():
        logits = networks["DC+CE"](image).detach()
        logits_ds = [o.detach() for o in networks["DC+CE + DS"](image)]

    def loss_pass(function: Callable[[Any], torch.Tensor], inputs: Any) -> Callable[[], None]:
        def once() -> None:
            leaves = [t.clone().requires_grad_(True) for t in inputs] if isinstance(inputs, list) \
                else inputs.clone().requires_grad_(True)
            function(leaves).backward()
        return once

    loss_times = time_interleaved(
        {name: loss_pass(loss_functions[name], logits_ds if name == "DC+CE + DS" else logits) for name in VARIANTS},
        repeats=loss_repeats, warmup=warmup, device=torch_device)

    rows: list[dict[str, Any]] = []
    for name, timing in step_times.items():
        rows.append(dict(kind="step", variant=name, seconds=timing.median, spread=timing.spread, repeats=repeats))
    # the network's share of a step (forward + backward + optimiser), estimated as the DC+CE step
    # minus the DC+CE loss alone
    network_seconds = step_times["DC+CE"].median - loss_times["DC+CE"].median
    for baseline in ("DC+CE", "DC+CE + DS"):
        descriptor, reference = step_times["descriptors"], step_times[baseline]
        # The verdict uses the decomposition: the network's forward, backward and SGD step cost
        # the same whatever the loss (the work does not depend on the gradient values), so the
        # step difference *is* the loss difference, and short loss-only passes can be repeated
        # often. Whole-step ratios are reported too, but on a shared CPU their run-to-run spread
        # (tens of %) dwarfs a 5 % target; on an idle machine the two agree.
        ratio_parts = (network_seconds + loss_times["descriptors"].median) / (
            network_seconds + loss_times[baseline].median)
        # the same from the fastest loss-only passes: the uncontended cost (on a busy CPU the
        # descriptor loss's many small multi-threaded ops stall on descheduled OpenMP threads)
        network_fastest = step_times["DC+CE"].median - loss_times["DC+CE"].minimum
        ratio_parts_fastest = (network_fastest + loss_times["descriptors"].minimum) / (
            network_fastest + loss_times[baseline].minimum)
        rows.append(dict(
            kind="comparison", variant="descriptors", baseline=baseline, seconds=descriptor.median,
            baseline_seconds=reference.median, ratio=paired_ratio(descriptor, reference),
            ratio_of_medians=descriptor.ratio_to(reference),
            ratio_cpu_time=paired_ratio(descriptor.cpu(), reference.cpu()), ratio_from_parts=ratio_parts,
            ratio_from_parts_fastest=ratio_parts_fastest,
            target=TARGET_RATIO, met=bool(ratio_parts <= TARGET_RATIO)))
    for name, timing in loss_times.items():
        rows.append(dict(kind="loss only", variant=name, seconds=timing.median, fastest=timing.minimum,
                         spread=timing.spread,
                         repeats=loss_repeats, fraction_of_step=timing.median / step_times[name].median,
                         network_seconds=network_seconds))
    for row in rows:
        row.update(device=str(torch_device), shape=tuple(int(s) for s in shape))
    return rows


def format_tables(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: the step comparison (with target) and the where-the-time-goes table."""
    comparisons = [r for r in rows if r["kind"] == "comparison"]
    steps = {r["variant"]: r for r in rows if r["kind"] == "step"}
    losses = {r["variant"]: r for r in rows if r["kind"] == "loss only"}
    shape = "x".join(str(s) for s in rows[0]["shape"])
    first = markdown_table(
        ["comparison (one training step)", "DC+CE step", "descriptor step", "ratio from parts",
         f"target <= {TARGET_RATIO}x", "from parts, fastest passes", "step ratio (paired)", "step ratio of medians",
         "step ratio (paired, CPU time)"],
        [[f"descriptors vs {r['baseline']}", format_seconds(r["baseline_seconds"]), format_seconds(r["seconds"]),
          format_ratio(r["ratio_from_parts"], 3), "met" if r["met"] else "MISSED",
          format_ratio(r["ratio_from_parts_fastest"], 3), format_ratio(r["ratio"], 3),
          format_ratio(r["ratio_of_medians"], 3), format_ratio(r["ratio_cpu_time"], 3)] for r in comparisons],
        align=["l", "r", "r", "r", "l", "r", "r", "r", "r"],
    )
    network_seconds = next(iter(losses.values()))["network_seconds"]
    second = markdown_table(
        ["variant", "training step", "run-to-run spread", "loss fwd+bwd alone", "fastest loss pass",
         "loss share of step", "step - loss alone"],
        [[name, format_seconds(r["seconds"]), f"{100 * r['spread']:.0f} %", format_seconds(losses[name]["seconds"]),
          format_seconds(losses[name]["fastest"]), f"{100 * losses[name]['fraction_of_step']:.1f} %",
          format_seconds(r["seconds"] - losses[name]["seconds"])]
         for name, r in steps.items()],
        align=["l", "r", "r", "r", "r", "r", "r"],
    )
    return (f"Training step on 1x1x{shape}, STD/EXP features {FEATURES}, {NUM_CLASSES} classes, "
            f"{rows[0]['device']}, medians of {steps['DC+CE']['repeats']} interleaved rounds after warm-up:\n\n"
            f"{first}\n\n"
            f"'ratio from parts' (the verdict) = (N + descriptor loss alone) / (N + DC+CE loss alone) with "
            f"N = DC+CE step - DC+CE loss alone = {format_seconds(network_seconds)} (network forward + backward + "
            f"SGD; its cost does not depend on the loss); 'fastest passes' = the same with the fastest loss-only "
            f"passes (uncontended cost). 'step ratio (paired)' = median over rounds of the "
            f"descriptor step / the DC+CE step timed in the same round, 'CPU time' the same with process CPU "
            f"time: direct, but as noisy as the run-to-run spread below on a shared machine.\n\n"
            f"Where the time goes (loss alone = forward + backward of the loss on fixed logits, median of "
            f"{next(iter(losses.values()))['repeats']}):\n\n{second}")


def profile_descriptor_loss(device: str = "cpu", shape: Sequence[int] = DEFAULT_SHAPE, row_limit: int = 20) -> str:
    """torch.profiler table (self CPU time) of one descriptor-loss forward + backward on fixed logits."""
    from torch.profiler import ProfilerActivity, profile

    torch_device = torch.device(device)
    image, labels = synthetic_case(shape)
    labels = labels.to(torch_device)
    logits = torch.randn(1, NUM_CLASSES, *shape, device=torch_device)
    spacing = torch.tensor([DEFAULT_SPACING], dtype=torch.float32, device=torch_device)
    function = _descriptor_loss_function(ShapeDescriptorLoss(descriptors=DESCRIPTORS), labels, spacing)
    for _ in range(2):  # warm-up
        function(logits.clone().requires_grad_(True)).backward()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch_device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        function(logits.clone().requires_grad_(True)).backward()
    sort_by = "self_cuda_time_total" if torch_device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=row_limit)


def descriptor_loss_breakdown(device: str = "cpu", shape: Sequence[int] = DEFAULT_SHAPE, repeats: int = 7
                              ) -> list[dict[str, Any]]:
    """Time the parts of one descriptor-loss forward + backward on fixed logits (interleaved).

    Parts: the whole loss (softmax + loss + backward, as in the step); the target descriptors
    from the label map (no_grad); softmax forward + backward; softmax + moments (volume,
    centroid, covariance/spread) forward + backward; softmax + surface forward + backward; and
    nnU-Net's DC+CE forward + backward for scale. Rows: ``part``, ``seconds`` (median),
    ``spread``.
    """
    from nnunet_shape.core.descriptors import compute_descriptors, descriptors_from_labels

    torch_device = torch.device(device)
    _, labels = synthetic_case(shape)
    labels = labels.to(torch_device)
    logits = torch.randn(1, NUM_CLASSES, *shape, device=torch_device)
    spacing = torch.tensor([DEFAULT_SPACING], dtype=torch.float32, device=torch_device)
    loss = ShapeDescriptorLoss(descriptors=DESCRIPTORS)
    whole = _descriptor_loss_function(loss, labels, spacing)
    dc_ce = dc_and_ce_loss(False, 1)

    def backward_of(function: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def once() -> None:
            function(logits.clone().requires_grad_(True)).backward()
        return once

    def descriptors_sum(names: tuple[str, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
        def function(x: torch.Tensor) -> torch.Tensor:
            values = compute_descriptors(torch.softmax(x, 1), spacing, names)
            return sum(v.sum() for v in values.values())
        return function

    parts = {
        "whole descriptor loss (fwd+bwd)": backward_of(whole),
        "target descriptors from labels (no_grad)": lambda: descriptors_from_labels(
            labels, NUM_CLASSES, spacing, loss.target_names(), spatial_dims=len(shape), validate=False),
        "softmax (fwd+bwd)": backward_of(lambda x: torch.softmax(x, 1).sum()),
        "softmax + moments V/C/spread (fwd+bwd)": backward_of(descriptors_sum(("volume", "centroid", "spread"))),
        "softmax + surface (fwd+bwd)": backward_of(descriptors_sum(("surface",))),
        "nnU-Net DC+CE (fwd+bwd), for scale": backward_of(lambda x: dc_ce(x, labels)),
    }
    times = time_interleaved(parts, repeats=repeats, warmup=1, device=torch_device)
    return [dict(part=name, seconds=t.median, spread=t.spread) for name, t in times.items()]


def target_met(rows: Sequence[dict[str, Any]]) -> bool:
    """Both comparisons within the target ratio."""
    return all(r["met"] for r in rows if r["kind"] == "comparison")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--shape", nargs=3, type=int, default=list(DEFAULT_SHAPE), metavar=("X", "Y", "Z"),
                        help="spatial size, divisible by 8 (default 48 96 96)")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps per variant (default 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 avoids OpenMP stalls on a busy CPU")
    parser.add_argument("--profile", action="store_true",
                        help="also time the descriptor loss part by part and print a torch.profiler table")
    args = parser.parse_args(argv)
    if args.threads is not None:  # this script's process only (run() and the profile below)
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.shape, repeats=args.repeats, warmup=args.warmup)
    print("## Loss overhead per training step\n")
    print(format_tables(rows))
    print(f"\nTarget: descriptor step <= {TARGET_RATIO}x the DC+CE step (ratio from parts): "
          f"{'met' if target_met(rows) else 'MISSED'}")
    if args.profile:
        parts = descriptor_loss_breakdown(args.device, args.shape)
        print("\n### Descriptor loss, part by part (median, interleaved)\n")
        print(markdown_table(["part", "time", "run-to-run spread"],
                             [[p["part"], format_seconds(p["seconds"]), f"{100 * p['spread']:.0f} %"] for p in parts],
                             align=["l", "r", "r"]))
        print("\n### torch.profiler: descriptor loss forward + backward\n")
        print(profile_descriptor_loss(args.device, args.shape))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
