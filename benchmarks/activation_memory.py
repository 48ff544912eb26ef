"""Activation memory kept for backward: STD/EXP vs nnU-Net's default PlainConvUNet.

What is measured: the bytes of the distinct storages autograd saves during one training
forward pass (``torch.autograd.graph.saved_tensors_hooks``, see
``nnunet_shape.network.memory.saved_activation_bytes``), batch 1, under
``torch.autocast("cpu", torch.bfloat16)`` to mimic nnU-Net's mixed-precision training, deep
supervision on, train mode, module parameters excluded. Memory is exactly affine in the voxel
count when every stage's map scales with the input (all sizes divisible by the total stride),
so two small inputs with the same pooling topology give the per-voxel slope (B/voxel) and a
constant (bf16 weight copies, a few tens of MB); both are extrapolated to the knee whole-scan
patch 160 x 384 x 384. A ratio <= 0.45 (STD/EXP / PlainConvUNet, without checkpointing) is the
target; ``checkpoint_full_resolution`` goes further.

Plans used (one input channel, 5 classes: background + femur, tibia and the two cartilages),
as nnU-Net 2.8's planner builds PlainConvUNet kwargs (InstanceNorm affine, LeakyReLU, conv
bias, 2 convs per stage, features 32 doubling up to 320):

* ``knee_planner``: exactly what ``get_pool_and_conv_props(spacing=(0.7, 0.36, 0.36),
  patch_size=(160, 384, 384), min_feature_map_size=4, max_numpool=999999)`` returns for the
  whole-scan patch: 7 stages, strides ``[1,1,1], 5 x [2,2,2], [1,2,2]``, all kernels 3,
  total stride (32, 64, 64). Measured at 32x64x128 and 32x128x128 (the bottleneck must keep
  more than one voxel for InstanceNorm).
* ``knee_aniso``: the brief's 6-stage variant with an in-plane-only first pooling (as the
  planner gives for a slightly coarser slice spacing): strides ``[1,1,1], [1,2,2], 3 x [2,2,2],
  [1,2,2]``, total stride (8, 32, 32), features (32, 64, 128, 256, 320, 320). Measured at
  32x64x64 and 40x96x96.

Run: ``.venv/bin/python benchmarks/activation_memory.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import plain_conv_unet_kwargs  # noqa: E402

from nnunet_shape.network import STDEXPNet, saved_activation_bytes  # noqa: E402

KNEE_PATCH = (160, 384, 384)
NUM_CLASSES = 5
GIB = 1024**3


def plain_kwargs(strides: Sequence[Sequence[int]], kernel_sizes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """nnU-Net 2.8 default 3d PlainConvUNet kwargs (ops as classes) for the given topology."""
    return {**plain_conv_unet_kwargs(strides, kernel_sizes), "deep_supervision": True}


TOPOLOGIES: dict[str, dict[str, Any]] = {
    "knee_planner": dict(
        kwargs=plain_kwargs([[1, 1, 1]] + [[2, 2, 2]] * 5 + [[1, 2, 2]], [[3, 3, 3]] * 7),
        sizes=[(32, 64, 128), (32, 128, 128)],
    ),
    "knee_aniso": dict(
        kwargs=plain_kwargs([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], [[3, 3, 3]] * 6),
        sizes=[(32, 64, 64), (40, 96, 96)],
    ),
}

VARIANTS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "PlainConvUNet": lambda kw: PlainConvUNet(input_channels=1, num_classes=NUM_CLASSES, **kw),
    "STD/EXP": lambda kw: STDEXPNet(input_channels=1, num_classes=NUM_CLASSES, **kw),
    "STD/EXP + checkpoint": lambda kw: STDEXPNet(
        input_channels=1, num_classes=NUM_CLASSES, checkpoint_full_resolution=True, **kw
    ),
}


def _train_step_seconds(net: nn.Module, x: torch.Tensor) -> float:
    """Wall time of one bf16-autocast forward + backward (sum of all outputs as the loss)."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = net(x)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    sum(o.float().sum() for o in outputs).backward()
    net.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def run(
    topologies: Sequence[str] = tuple(TOPOLOGIES),
    target_size: Sequence[int] = KNEE_PATCH,
    time_steps: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Measure every variant on every topology; one dict per (topology, variant).

    Keys: topology, network, sizes, bytes_per_voxel (bf16 slope), constant_bytes,
    extrapolated_gib (at ``target_size``), ratio_vs_plain (of bytes_per_voxel),
    estimate_bytes_per_voxel (``STDEXPNet.estimate_activation_bytes``, bf16; None for
    PlainConvUNet), dna_feature_map_per_voxel (``compute_conv_feature_map_size`` / voxels),
    step_seconds (one fwd+bwd at the smaller size, None if ``time_steps`` is false),
    step_time_ratio_vs_plain.
    """
    torch.manual_seed(seed)
    rows: list[dict[str, Any]] = []
    target_voxels = int(np.prod(target_size))
    for topology in topologies:
        spec = TOPOLOGIES[topology]
        sizes = spec["sizes"]
        plain_row: dict[str, Any] | None = None
        for name, build in VARIANTS.items():
            net = build(spec["kwargs"])
            net.apply(net.initialize)
            net.train()
            voxels = [int(np.prod(s)) for s in sizes]
            measured = [
                saved_activation_bytes(net, torch.randn(1, 1, *size), autocast_dtype=torch.bfloat16)
                for size in sizes
            ]
            slope = (measured[1] - measured[0]) / (voxels[1] - voxels[0])
            constant = measured[0] - slope * voxels[0]
            estimate = (
                net.estimate_activation_bytes(sizes[0], bytes_per_element=2) / voxels[0]
                if isinstance(net, STDEXPNet)
                else None
            )
            step = _train_step_seconds(net, torch.randn(1, 1, *sizes[0])) if time_steps else None
            row = dict(
                topology=topology,
                network=name,
                sizes=[tuple(s) for s in sizes],
                bytes_per_voxel=slope,
                constant_bytes=constant,
                extrapolated_gib=(slope * target_voxels + constant) / GIB,
                estimate_bytes_per_voxel=estimate,
                dna_feature_map_per_voxel=float(net.compute_conv_feature_map_size(list(sizes[0]))) / voxels[0],
                step_seconds=step,
            )
            if plain_row is None:
                plain_row = row
            row["ratio_vs_plain"] = slope / plain_row["bytes_per_voxel"]
            row["step_time_ratio_vs_plain"] = (
                step / plain_row["step_seconds"] if time_steps and plain_row["step_seconds"] else None
            )
            rows.append(row)
            del net
    return rows


def format_table(rows: list[dict[str, Any]], target_size: Sequence[int] = KNEE_PATCH) -> str:
    """Markdown table of :func:`run`'s rows."""
    target = "x".join(str(s) for s in target_size)

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"| topology | network | measured at | B/voxel (bf16) | estimate B/voxel | GiB at {target} "
        "| ratio vs PlainConvUNet | fwd+bwd s | time ratio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        sizes = ", ".join("x".join(str(v) for v in s) for s in r["sizes"])
        lines.append(
            f"| {r['topology']} | {r['network']} | {sizes} | {r['bytes_per_voxel']:.1f} "
            f"| {fmt(r['estimate_bytes_per_voxel'], '.1f')} | {r['extrapolated_gib']:.2f} "
            f"| {r['ratio_vs_plain']:.3f} | {fmt(r['step_seconds'], '.2f')} "
            f"| {fmt(r['step_time_ratio_vs_plain'], '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), action="append", help="default: all")
    parser.add_argument("--no-timing", action="store_true", help="skip the fwd+bwd wall-time column")
    args = parser.parse_args(argv)
    rows = run(topologies=args.topology or tuple(TOPOLOGIES), time_steps=not args.no_timing)
    print("## Activation memory kept for backward (bf16 autocast, batch 1, deep supervision)\n")
    print(format_table(rows))
    print(
        "\nB/voxel = slope between the two measured sizes; GiB adds the constant (bf16 weight "
        "copies). Target: STD/EXP ratio <= 0.45 without checkpointing."
    )


if __name__ == "__main__":
    main()
