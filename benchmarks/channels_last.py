"""Training step of the STD/EXP network on a CPU: weights in channels-last layout versus the default.

Question: does ``nnUNetTrainerWholeScan.channels_last_on_cpu`` (the networks' weights in
``torch.channels_last_3d``, so oneDNN runs its convolutions channels-last) make a training step
faster on a CPU, and by how much? Target: the channels-last step <= 0.95x the default one.

One descriptor-trainer step (``zero_grad -> forward -> softmax -> V+C+D descriptor loss ->
backward -> clip_grad_norm_(12) -> Adam step``, as ``nnUNetTrainerShapeDescriptors.train_step``
on a CPU) of the STD/EXP network built from the plans the demo's suites train (4 stages, strides
1, 2, 2, (1, 2, 2), 3x3x3 kernels, features 32..256, std_features 16; 1 input channel, 5
classes), batch 2 on the suites' whole-scan patch 24 x 40 x 40. Both layouts start from the same
weights and are timed interleaved (``benchmarks/common.py``), the ratio paired per round. The
outputs of the two layouts are compared too (they differ by float rounding only).

    .venv/bin/python benchmarks/channels_last.py                   # CPU, about a minute
    .venv/bin/python benchmarks/channels_last.py --shape 32 48 48  # the make demo patch
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_ratio, format_seconds, markdown_table, paired_ratio, plain_conv_unet_kwargs, time_interleaved  # noqa: E402

from nnunet_shape.core.losses import ShapeDescriptorLoss  # noqa: E402
from nnunet_shape.network.std_exp import STDEXPNet  # noqa: E402

TARGET_RATIO = 0.95
DEFAULT_SHAPE: tuple[int, int, int] = (24, 40, 40)
SPACING: tuple[float, float, float] = (2.33, 1.24, 1.24)
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
NUM_CLASSES = 5
LAYOUTS = ("default", "channels_last")


def _step_function(network: STDEXPNet, data: torch.Tensor, labels: torch.Tensor, spacing: torch.Tensor):
    loss_function = ShapeDescriptorLoss(descriptors=("volume", "centroid", "spread"))
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3, betas=(0.9, 0.99))

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(torch.softmax(network(data).float(), 1), labels, spacing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
        return float(loss.detach())

    return step


def run(shape: Sequence[int] = DEFAULT_SHAPE, repeats: int = 7, warmup: int = 2, batch_size: int = 2,
        seed: int = 0, device: str = "cpu") -> list[dict[str, Any]]:
    """Time the step in both layouts; one row per layout (``layout``, ``seconds`` median,
    ``spread``, ``ratio`` to the default layout paired per round, ``target``, ``met`` for the
    channels-last row, ``max_output_difference`` of one forward pass from the same weights)."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"benchmarks/channels_last.py: a CPU question (channels_last_on_cpu); got device {device}")
    torch.manual_seed(seed)
    reference = STDEXPNet(input_channels=1, num_classes=NUM_CLASSES, deep_supervision=False,
                          **plain_conv_unet_kwargs(STRIDES))
    reference.apply(reference.initialize)
    shape = tuple(int(s) for s in shape)
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(batch_size, 1, *shape, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size, 1, *shape), generator=generator)
    spacing = torch.tensor([SPACING] * batch_size)
    networks = {layout: copy.deepcopy(reference).train() for layout in LAYOUTS}
    networks["channels_last"].to(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        difference = float((networks["channels_last"](data) - networks["default"](data)).abs().max())
    steps = {layout: _step_function(network, data, labels, spacing) for layout, network in networks.items()}
    timings = time_interleaved(steps, repeats=repeats, warmup=warmup)
    rows = []
    for layout in LAYOUTS:
        timing = timings[layout]
        row: dict[str, Any] = {"layout": layout, "shape": shape, "batch_size": batch_size, "seconds": timing.median,
                               "spread": timing.spread, "ratio": paired_ratio(timing, timings["default"])}
        if layout == "channels_last":
            row.update(target=TARGET_RATIO, met=row["ratio"] <= TARGET_RATIO, max_output_difference=difference)
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    return markdown_table(
        ["layout", "step (median)", "spread", "ratio to default", "max abs output difference"],
        [[r["layout"], format_seconds(r["seconds"]), f"{100 * r['spread']:.0f} %", format_ratio(r["ratio"]),
          f"{r['max_output_difference']:.1e}" if "max_output_difference" in r else "–"] for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE, metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    rows = run(args.shape, repeats=args.repeats, batch_size=args.batch_size)
    print(format_table(rows))
    ours = rows[-1]
    print(f"channels-last step {ours['ratio']:.3f}x the default layout's (target <= {TARGET_RATIO}): "
          f"{'met' if ours['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
