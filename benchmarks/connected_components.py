"""Largest-connected-component postprocessing: ours (cc3d, torch, cucim) versus nnU-Net's skimage path.

One "case" is the worst-case ``postprocessing.pkl``: keep the largest foreground component, then
the largest component of every label in turn — exactly what ``nnUNetv2_apply_postprocessing``
runs per file when every step was accepted. Each backend processes the same synthetic label map
(a few large blobs plus small islands per class) and must give nnU-Net's output voxel for voxel;
the table reports the median time per case and the speed-up over nnU-Net in the same run.

    .venv/bin/python benchmarks/connected_components.py                       # CPU, 64³, 128³, 160x384x384
    .venv/bin/python benchmarks/connected_components.py --device cuda --sizes 128 160x384x384

The GPU rows time a tensor that is already on the device (as after the network's argmax) and
synchronise before stopping the clock.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_ratio, format_seconds, machine_info, machine_markdown, markdown_table, time_interleaved  # noqa: E402

from nnunet_shape.core.connected_components import cucim_available  # noqa: E402
from nnunet_shape.core.connected_components import remove_all_but_largest_component_from_segmentation as ours

TARGET_SPEEDUP = 5.0  # issue 5: the CPU path at least 5x faster than nnU-Net's
DEFAULT_SIZES: tuple[tuple[int, int, int], ...] = ((64, 64, 64), (128, 128, 128), (160, 384, 384))


def realistic_label_map(shape: Sequence[int], n_classes: int = 4, seed: int = 0) -> np.ndarray:
    """A (X, Y, Z) uint8 label map that looks like a raw network prediction.

    Per class: 2-3 overlapping ellipsoids around a class-specific centre (one or two large
    components, like an organ), ~25 small islands (radius 0-2 voxels) near it and ~5 anywhere in
    the volume (scattered false positives). Later classes overwrite earlier ones.
    """
    rng = np.random.default_rng(seed)
    shape_array = np.asarray(shape)
    segmentation = np.zeros(tuple(shape), dtype=np.uint8)

    def paint(centre: np.ndarray, radii: np.ndarray, value: int) -> None:
        low = np.maximum(0, np.floor(centre - radii).astype(int))
        high = np.minimum(shape_array, np.ceil(centre + radii).astype(int) + 1)
        if np.any(high <= low):
            return
        grids = np.ogrid[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
        segmentation[tuple(slice(lo, hi) for lo, hi in zip(low, high))][inside] = value

    for value in range(1, n_classes + 1):
        organ_centre = rng.uniform(0.25, 0.75, size=3) * shape_array
        organ_radii = rng.uniform(0.06, 0.14, size=3) * shape_array
        for _ in range(int(rng.integers(2, 4))):
            paint(organ_centre + rng.normal(0, 0.5, size=3) * organ_radii,
                  organ_radii * rng.uniform(0.6, 1.0, size=3), value)
        for _ in range(25):
            paint(organ_centre + rng.uniform(-2.5, 2.5, size=3) * organ_radii,
                  np.full(3, float(rng.integers(0, 3))) + 0.5, value)
        for _ in range(5):
            paint(rng.uniform(0, 1, size=3) * shape_array, np.full(3, float(rng.integers(0, 3))) + 0.5, value)
    return segmentation


def _case_steps(n_classes: int) -> list[list[int] | int]:
    """All foreground first, then each label (the order nnU-Net decides and applies them in)."""
    return [list(range(1, n_classes + 1))] + list(range(1, n_classes + 1))


def run(sizes: Sequence[Sequence[int]] = DEFAULT_SIZES, device: str = "cpu", n_classes: int = 4,
        repeats: int | None = None, backends: Sequence[str] | None = None, seed: int = 0) -> list[dict]:
    """Time one case per size and backend; one dict per (size, variant) row.

    Protocol of ``benchmarks/common.py``: nnU-Net and cc3d timed interleaved (torch/cucim right
    after them, see below), median reported, ratios to nnU-Net's time in the same run.
    ``repeats`` None: 3 timed runs (after 1 warm-up) below 10 M
    voxels, 1 (no warm-up: the smaller sizes already warmed everything up) above. ``backends``
    None: cc3d and torch on CPU; torch (and cucim when installed) on CUDA. Each row: ``size``,
    ``variant``, ``device``, ``seconds`` (median), ``spread``, ``speedup`` (nnU-Net / this),
    ``identical`` (output equals nnU-Net's, voxel for voxel), ``target`` / ``met`` on the cc3d row.
    """
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as nnunet_function,
    )

    torch_device = torch.device(device)
    if backends is None:
        backends = ["torch"] + (["cucim"] if cucim_available() else []) if torch_device.type == "cuda" \
            else ["cc3d", "torch"]
    steps = _case_steps(n_classes)
    rows: list[dict] = []
    for size in sizes:
        shape = tuple(int(s) for s in size)
        segmentation = realistic_label_map(shape, n_classes, seed)
        on_device = torch.from_numpy(segmentation).to(torch_device)
        large = int(np.prod(shape)) >= 10_000_000
        n_repeats = repeats if repeats is not None else (1 if large else 3)
        outputs: dict[str, np.ndarray | torch.Tensor] = {}

        def nnunet_case() -> None:
            result = segmentation
            for step in steps:
                result = nnunet_function(result, step)
            outputs["nnU-Net (skimage)"] = result

        def our_case(backend: str) -> None:
            result = on_device
            for step in steps:
                result = ours(result, step, backend=backend)
            outputs[backend] = result

        # host variants interleaved with nnU-Net; the torch labeller on CPU timed apart, after
        # them: its parallel kernels leave OpenMP threads spinning for a while after each op,
        # which slows whichever host variant runs next on a 2-core machine
        host = {"nnU-Net (skimage)": nnunet_case}
        host.update({b: (lambda b=b: our_case(b)) for b in backends if b == "cc3d"})
        apart = {b: (lambda b=b: our_case(b)) for b in backends if b != "cc3d"}
        warmup = 0 if large else 1
        timings = time_interleaved(host, repeats=n_repeats, warmup=warmup, device=torch_device)
        if apart:
            timings.update(time_interleaved(apart, repeats=n_repeats, warmup=warmup, device=torch_device))
        baseline = timings["nnU-Net (skimage)"]
        reference = outputs["nnU-Net (skimage)"]
        for name, timing in timings.items():
            output = outputs[name]
            output = output.cpu().numpy() if isinstance(output, torch.Tensor) else output
            row = {"size": "x".join(map(str, shape)), "variant": name,
                   "device": "cpu" if name.startswith("nnU-Net") else str(torch_device),
                   "seconds": timing.median, "spread": timing.spread, "repeats": n_repeats,
                   "speedup": baseline.median / timing.median,
                   "identical": bool(np.array_equal(output, reference)), "target": None, "met": None}
            if name == "cc3d":
                row.update(target=TARGET_SPEEDUP, met=bool(row["speedup"] >= TARGET_SPEEDUP))
            rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    return markdown_table(
        ["size", "variant", "device", "time per case", "speed-up vs nnU-Net", "identical", "spread",
         f"target >= {TARGET_SPEEDUP:g}x (cc3d)"],
        [[r["size"], r["variant"], r["device"], format_seconds(r["seconds"]), format_ratio(r["speedup"]),
          "yes" if r["identical"] else "NO", f"{100 * r['spread']:.0f} %",
          "-" if r["met"] is None else ("met" if r["met"] else "MISSED")] for r in rows],
        align=["l", "l", "l", "r", "r", "l", "r", "l"])


def _parse_size(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        return (parts[0],) * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"size {text!r}: use N (a cube) or XxYxZ")
    return parts[0], parts[1], parts[2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--sizes", nargs="+", type=_parse_size, default=list(DEFAULT_SIZES),
                        help="N (cube) or XxYxZ, default 64 128 160x384x384")
    parser.add_argument("--backends", nargs="+", choices=["cc3d", "torch", "cucim"], default=None)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 from 10 M voxels on)")
    parser.add_argument("--classes", type=int, default=4)
    args = parser.parse_args(argv)
    rows = run(args.sizes, args.device, args.classes, args.repeats, args.backends)
    print("## Largest-connected-component postprocessing\n")
    print(machine_markdown(machine_info(args.device)))
    print(f"\nOne case = keep the largest foreground component, then the largest component of each of "
          f"{args.classes} labels (a postprocessing.pkl with every step accepted); median of interleaved "
          f"runs:\n")
    print(format_table(rows))
    return 0 if all(row["identical"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
