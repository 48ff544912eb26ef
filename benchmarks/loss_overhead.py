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
* ``descriptors``: ``nnunet_shape.losses.ShapeDescriptorLoss(descriptors=("volume",
  "centroid", "spread", "surface"))`` on ``softmax(logits.float())`` with the label map as
  target (target descriptors under ``no_grad`` inside the loss, as the trainer does) and the
  case spacing, deep supervision off - what ``nnUNetTrainerShapeDescriptorsVCDS`` trains;
* ``network only``: ``logits.sum()`` as the loss, the floor every loss adds to.

Also timed: the loss alone (forward + backward of the loss on fixed logits that require grad),
to show where the time goes. Variants are timed interleaved, median of ``repeats`` after
``warmup`` (see ``benchmarks/common.py``); ``--profile`` prints a torch.profiler table of one
descriptor-loss forward + backward.

    .venv/bin/python benchmarks/loss_overhead.py                  # CPU, about a minute
    .venv/bin/python benchmarks/loss_overhead.py --device cuda --shape 96 192 192
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, format_ratio, format_seconds, markdown_table, time_interleaved  # noqa: E402

from nnunet_shape.losses import ShapeDescriptorLoss  # noqa: E402
from nnunet_shape.network.std_exp import STDEXPNet  # noqa: E402

TARGET_RATIO = 1.05
DEFAULT_SHAPE: tuple[int, int, int] = (48, 96, 96)
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 0.5, 0.5)
NUM_CLASSES = 5
FEATURES = (32, 64, 128, 256)
DESCRIPTORS = ("volume", "centroid", "spread", "surface")


def network_kwargs(features: Sequence[int] = FEATURES) -> dict[str, Any]:
    """PlainConvUNet-style 3d_fullres ``arch_kwargs`` (ops as classes), as nnU-Net 2.8 plans them."""
    n_stages = len(features)
    return dict(
        n_stages=n_stages,
        features_per_stage=list(features),
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n_stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
        n_conv_per_stage=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


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
    loss_repeats: int = 10,
    batch_dice: bool = False,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time training steps and loss-only passes; one dict per row.

    Rows have ``kind`` ("step" or "loss only"), ``variant``, ``seconds`` (median),
    ``spread`` ((max - min) / median of the timed runs), ``repeats``; step rows also
    ``baseline`` (the DC+CE variant they are compared with, for the descriptor rows),
    ``ratio`` (median / the baseline's median in the same run), ``target`` and ``met``;
    loss-only rows ``fraction_of_step`` (loss-only time / the matching step time).
    """
    torch_device = torch.device(device)
    image, labels = synthetic_case(shape, seed)
    image, labels = image.to(torch_device), labels.to(torch_device)
    spacing = torch.tensor([DEFAULT_SPACING], dtype=torch.float32, device=torch_device)

    # one network (same initial weights) per variant: the steps update the weights, and
    # sharing one network would let one loss's updates (or a divergence) change another's timing
    networks = {name: build_network(name == "DC+CE + DS", torch_device, seed)
                for name in ("DC+CE", "DC+CE + DS", "descriptors", "network only")}
    ds_targets = deep_supervision_targets(labels, networks["DC+CE + DS"])
    n_outputs = len(ds_targets)
    dc_ce = dc_and_ce_loss(False, n_outputs, batch_dice).to(torch_device)
    dc_ce_ds = dc_and_ce_loss(True, n_outputs, batch_dice).to(torch_device)
    descriptor_loss = ShapeDescriptorLoss(descriptors=DESCRIPTORS).to(torch_device)
    descriptor_function = _descriptor_loss_function(descriptor_loss, labels, spacing)

    steps: dict[str, TrainingStep] = {
        "DC+CE": TrainingStep(networks["DC+CE"], lambda out: dc_ce(out, labels), torch_device),
        "DC+CE + DS": TrainingStep(networks["DC+CE + DS"], lambda out: dc_ce_ds(out, ds_targets), torch_device),
        "descriptors": TrainingStep(networks["descriptors"], descriptor_function, torch_device),
        "network only": TrainingStep(networks["network only"], lambda out: out.float().sum() * 1e-9,
                                     torch_device),
    }
    step_times = time_interleaved({name: (lambda s=step: s(image)) for name, step in steps.items()},
                                  repeats=repeats, warmup=warmup, device=torch_device)

    # loss alone on fixed logits (what the loss adds on top of the network)
    with torch.no_grad():
        logits = networks["DC+CE"](image).detach()
        logits_ds = [o.detach() for o in networks["DC+CE + DS"](image)]

    def loss_pass(function: Callable[[Any], torch.Tensor], inputs: Any) -> Callable[[], None]:
        def once() -> None:
            leaves = [t.clone().requires_grad_(True) for t in inputs] if isinstance(inputs, list) \
                else inputs.clone().requires_grad_(True)
            function(leaves).backward()
        return once

    loss_times = time_interleaved({
        "DC+CE": loss_pass(lambda x: dc_ce(x, labels), logits),
        "DC+CE + DS": loss_pass(lambda x: dc_ce_ds(x, ds_targets), logits_ds),
        "descriptors": loss_pass(descriptor_function, logits),
    }, repeats=loss_repeats, warmup=warmup, device=torch_device)

    rows: list[dict[str, Any]] = []
    for name, timing in step_times.items():
        row: dict[str, Any] = dict(kind="step", variant=name, seconds=timing.median, spread=timing.spread,
                                   repeats=repeats, baseline=None, ratio=None, target=None, met=None)
        rows.append(row)
    for baseline in ("DC+CE", "DC+CE + DS"):
        ratio = step_times["descriptors"].ratio_to(step_times[baseline])
        rows.append(dict(kind="comparison", variant="descriptors", baseline=baseline,
                         seconds=step_times["descriptors"].median, baseline_seconds=step_times[baseline].median,
                         ratio=ratio, target=TARGET_RATIO, met=bool(ratio <= TARGET_RATIO)))
    for name, timing in loss_times.items():
        rows.append(dict(kind="loss only", variant=name, seconds=timing.median, spread=timing.spread,
                         repeats=loss_repeats, fraction_of_step=timing.median / step_times[name].median))
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
        ["comparison (one training step)", "DC+CE step", "descriptor step", "ratio", f"target <= {TARGET_RATIO}x"],
        [[f"descriptors vs {r['baseline']}", format_seconds(r["baseline_seconds"]), format_seconds(r["seconds"]),
          format_ratio(r["ratio"], 3), "met" if r["met"] else "MISSED"] for r in comparisons],
        align=["l", "r", "r", "r", "l"],
    )
    network_only = steps["network only"]["seconds"]
    second = markdown_table(
        ["variant", "training step", "step vs network only", "loss fwd+bwd alone", "loss share of step",
         "run-to-run spread"],
        [[name, format_seconds(r["seconds"]), format_ratio(r["seconds"] / network_only, 3),
          format_seconds(losses[name]["seconds"]) if name in losses else "-",
          f"{100 * losses[name]['fraction_of_step']:.1f} %" if name in losses else "-",
          f"{100 * r['spread']:.0f} %"] for name, r in steps.items()],
        align=["l", "r", "r", "r", "r", "r"],
    )
    return (f"Training step on 1x1x{shape}, STD/EXP features {FEATURES}, {NUM_CLASSES} classes, "
            f"{rows[0]['device']}, median of {steps['DC+CE']['repeats']} interleaved runs:\n\n{first}\n\n"
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
    parser.add_argument("--profile", action="store_true",
                        help="also print a torch.profiler table of the descriptor loss")
    args = parser.parse_args(argv)
    rows = run(args.device, args.shape, repeats=args.repeats, warmup=args.warmup)
    print("## Loss overhead per training step\n")
    print(format_tables(rows))
    print(f"\nTarget: descriptor step <= {TARGET_RATIO}x the DC+CE step: "
          f"{'met' if target_met(rows) else 'MISSED'}")
    if args.profile:
        print("\n### torch.profiler: descriptor loss forward + backward\n")
        print(profile_descriptor_loss(args.device, args.shape))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
