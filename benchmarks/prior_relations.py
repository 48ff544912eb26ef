"""Relations of a population prior in the loss: evaluated kind by kind for the whole batch
versus relation by relation and sample by sample.

Question: what do the relations of a population prior (issue 16: a centroid offset, a volume
ratio and a spread ratio for every pair of the knee phantoms' 4 classes, 18 relations) add to
the descriptor loss of a training step, and how much does evaluating them together save --
each kind of relation in one set of tensor operations over (B, R, M) bounds
(``BatchRelations``, what the trainer uses) -- against evaluating each relation for each sample
on its own (what ``PerSampleRelation`` did until 2026-12-07)? Target: the batched relations add
<= 0.6x what the per-sample ones add.

Timed: forward + backward of ``shape_descriptor_loss`` (V+C+D) on softmax probabilities
(B, 5, 24, 32, 32) -- the suites' grid -- requiring grad, the way the trainer calls it (once on
the soft prediction; the hard prediction's metrics call it again without backward). Variants,
timed interleaved (``benchmarks/common.py``): no relations (the baseline); the relations one
sample at a time; each relation once for the batch (``PerSampleRelation``); all relations kind
by kind (``BatchRelations``). Each sample's relations have other bounds (as after each sample's
own augmentation); every relation variant gives the same loss (checked).

    .venv/bin/python benchmarks/prior_relations.py                # CPU, about 20 s
    .venv/bin/python benchmarks/prior_relations.py --batch-size 4
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_ratio, format_seconds, markdown_table, time_interleaved  # noqa: E402

from nnunet_shape.core.bounds import bounds_from_targets  # noqa: E402
from nnunet_shape.core.descriptors import compute_descriptors  # noqa: E402
from nnunet_shape.core.losses import shape_descriptor_loss  # noqa: E402
from nnunet_shape.core.priors import PriorContext, PriorPenalty  # noqa: E402
from nnunet_shape.core.relations import CentroidOffset, DescriptorRatio, Relation  # noqa: E402
from nnunet_shape.nnunet.training.population_prior import (  # noqa: E402
    BatchRelations,
    PerSampleRelation,
    batch_relations,
)

TARGET_RATIO = 0.6
DEFAULT_SHAPE: tuple[int, int, int] = (24, 32, 32)
SPACING: tuple[float, float, float] = (2.33, 1.24, 1.24)
NUM_CLASSES = 5
DESCRIPTORS = ("volume", "centroid", "spread")
VARIANTS = ("no relations", "relations one sample at a time", "each relation for the batch", "relations batched")


@dataclass(frozen=True)
class OneSampleAtATime:
    """The baseline: each sample's relation evaluated on its own one-sample context, the
    penalties concatenated (the loss's ``priors`` protocol)."""

    relation: PerSampleRelation

    @property
    def name(self) -> str:
        return self.relation.name

    @property
    def required_descriptors(self) -> tuple[str, ...]:
        return self.relation.required_descriptors

    def penalty(self, ctx: PriorContext) -> PriorPenalty:
        parts = []
        for b, relation in enumerate(self.relation.per_sample):
            sub = PriorContext({k: v[b:b + 1] for k, v in ctx.values.items()}, ctx.present[b:b + 1],
                               ctx.spacing if ctx.spacing.shape[0] == 1 else ctx.spacing[b:b + 1],
                               ctx.extent if ctx.extent.shape[0] == 1 else ctx.extent[b:b + 1], ctx.t, ctx.scale_mode)
            parts.append(relation.penalty(sub))
        return PriorPenalty(*(torch.cat([getattr(p, f) for p in parts], 0)
                              for f in ("psi", "active", "satisfied", "involved")))


def knee_like_relations(batch_size: int, generator: torch.Generator) -> BatchRelations:
    """Per sample: for every pair of the 4 foreground classes a centroid offset box, a volume
    ratio and a spread ratio, with bounds jittered per sample (each sample's own augmentation)."""
    per_sample: list[list[Relation]] = []
    for _ in range(batch_size):
        relations: list[Relation] = []
        for a, b in itertools.combinations(range(1, NUM_CLASSES), 2):
            centre = (torch.randn(3, generator=generator) * 10).tolist()
            relations.append(CentroidOffset(a, b, tuple(c - 8 for c in centre), tuple(c + 8 for c in centre)))
            ratio = float(torch.rand(1, generator=generator)) + 0.5
            relations.append(DescriptorRatio("volume", b, a, (0.5 * ratio,), (2.0 * ratio,)))
            relations.append(DescriptorRatio("spread", b, a, (0.5,) * 3, (2.0 * ratio,) * 3))
        per_sample.append(relations)
    return batch_relations(per_sample)


def run(shape: Sequence[int] = DEFAULT_SHAPE, repeats: int = 15, warmup: int = 3, batch_size: int = 2,
        seed: int = 0, device: str = "cpu") -> list[dict[str, Any]]:
    """Time the loss's forward + backward per variant; one row per variant (``variant``,
    ``seconds`` median, ``added`` = seconds over the no-relation loss, ``ratio`` of the added
    time to the per-sample relations' (batched row: with ``target`` and ``met``), ``loss``)."""
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(int(s) for s in shape)
    logits = torch.randn(batch_size, NUM_CLASSES, *shape, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch_size, *shape), generator=generator).to(device)
    spacing = torch.tensor([SPACING] * batch_size, device=device)
    onehot = torch.nn.functional.one_hot(labels, NUM_CLASSES).movedim(-1, 1).float()
    targets = compute_descriptors(onehot, spacing, DESCRIPTORS)
    bounds = bounds_from_targets({name: targets[name] for name in DESCRIPTORS})
    batched = knee_like_relations(batch_size, generator)
    priors = {VARIANTS[0]: (), VARIANTS[1]: tuple(OneSampleAtATime(r) for r in batched.relations),
              VARIANTS[2]: batched.relations, VARIANTS[3]: (batched,)}
    losses: dict[str, float] = {}

    def step(variant: str):
        def call() -> None:
            leaf = logits.clone().requires_grad_()
            loss = shape_descriptor_loss(torch.softmax(leaf, 1), bounds, spacing, descriptors=DESCRIPTORS,
                                         priors=priors[variant]).loss
            loss.backward()
            losses[variant] = float(loss.detach())
        return call

    timings = time_interleaved({v: step(v) for v in VARIANTS}, repeats=repeats, warmup=warmup, device=device)
    base = timings[VARIANTS[0]].median
    per_sample_added = timings[VARIANTS[1]].median - base
    rows = []
    for variant in VARIANTS:
        seconds = timings[variant].median
        row: dict[str, Any] = {"variant": variant, "batch_size": batch_size, "shape": shape,
                               "relations": len(batched.relations),
                               "seconds": seconds, "added": seconds - base, "loss": losses[variant]}
        if variant != VARIANTS[0]:
            row["ratio"] = (seconds - base) / per_sample_added if per_sample_added > 0 else float("nan")
        if variant == VARIANTS[-1]:
            row.update(target=TARGET_RATIO, met=row["ratio"] <= TARGET_RATIO)
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    return markdown_table(
        ["variant", "loss fwd+bwd (median)", "added by the relations", "added / per-sample's", "loss"],
        [[r["variant"], format_seconds(r["seconds"]), format_seconds(r["added"]) if r["added"] else "–",
          format_ratio(r["ratio"]) if "ratio" in r else "–", f"{r['loss']:.6f}"] for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE, metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    rows = run(args.shape, repeats=args.repeats, batch_size=args.batch_size)
    print(f"{rows[0]['relations']} relations, batch {args.batch_size}, probabilities {tuple(args.shape)}")
    print(format_table(rows))
    ours = rows[-1]
    print(f"batched relations add {ours['ratio']:.2f}x what the per-sample ones add (target <= {TARGET_RATIO}): "
          f"{'met' if ours['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
