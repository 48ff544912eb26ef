"""Throughput and memory of the shape descriptors (forward + backward).

All descriptors (volume, centroid, covariance/spread, surface) for K classes on float32
probabilities, forward + backward, compared in the same run with

* ``grid``: a straightforward full-coordinate-grid implementation (meshgrid + einsum, as
  the papers' reference 2-D code does it; surface by ``diff().abs()``), and
* ``softmax``: one ``torch.softmax`` forward over the same tensor -- a memory-bandwidth
  yardstick for "one pass over the data".

Timing: median (and minimum, the less load-sensitive figure on a shared machine) of
``repeats`` runs after one warm-up (``torch.cuda.synchronize`` on CUDA).

Peak extra memory (beyond the input tensor and its gradient buffer):

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
  memory allocated before the run.
* CPU: the process's peak resident set size (``VmHWM`` in ``/proc/self/status``, reset by
  writing 5 to ``/proc/self/clear_refs``; Linux only), minus the resident size before the run,
  measured after a warm-up so one-off initialisations are excluded. This is a process-level
  measure: it includes allocator slack and the gradient buffer, hence "grad" is subtracted.
  Where ``clear_refs`` is unavailable the column is empty.
* Both devices also report ``saved MiB``: the bytes of distinct storages that autograd saves
  for backward (``torch.autograd.graph.saved_tensors_hooks``), excluding the input itself.

Usage::

    python benchmarks/descriptor_throughput.py                # 1x5x96x192x192 on CPU
    python benchmarks/descriptor_throughput.py --shape 48 96 96 --repeats 3
    python benchmarks/descriptor_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from nnunet_shape.core.descriptors import DESCRIPTOR_NAMES, compute_descriptors

DEFAULT_SHAPE = (96, 192, 192)
DEFAULT_SPACING = (0.7, 0.36, 0.36)


# ----------------------------------------------------------------------------------------
# the implementations under test
# ----------------------------------------------------------------------------------------


def ours(probs: torch.Tensor, spacing: Sequence[float]) -> dict[str, torch.Tensor]:
    return compute_descriptors(probs, spacing, DESCRIPTOR_NAMES)


def grid_baseline(probs: torch.Tensor, spacing: Sequence[float]) -> dict[str, torch.Tensor]:
    """Full coordinate grids (the straightforward way; memory ~ (2 + D) x probs)."""
    spatial = tuple(range(2, probs.ndim))
    ndim = len(spatial)
    axes = [
        torch.arange(n, device=probs.device, dtype=probs.dtype) * s
        for n, s in zip(probs.shape[2:], spacing)
    ]
    grids = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (D, *S)
    mass = probs.sum(dim=spatial)  # (B, K)
    volume = mass * float(torch.tensor(spacing).prod())
    centroid = torch.einsum("bk...,d...->bkd", probs, grids) / mass[..., None]
    centred = grids[None, None] - centroid.view(*centroid.shape, *([1] * ndim))  # (B, K, D, *S)
    covariance = torch.einsum("bkd...,bke...,bk...->bkde", centred, centred, probs)
    covariance = covariance / mass[..., None, None]
    spread = torch.sqrt(torch.diagonal(covariance, dim1=-2, dim2=-1))
    prod = float(torch.tensor(spacing).prod())
    surface = sum(
        probs.diff(dim=2 + a).abs().sum(dim=spatial) * (prod / spacing[a]) for a in range(ndim)
    )
    return {
        "volume": volume,
        "centroid": centroid,
        "spread": spread,
        "covariance": covariance,
        "surface": surface,
    }


# ----------------------------------------------------------------------------------------
# measurement helpers
# ----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _rss_available() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return Path("/proc/self/status").exists()
    except OSError:
        return False


def _rss_bytes() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024
    current = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024
    return peak, current


def _peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    fn()  # warm-up: lazy initialisations, thread pools
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    if not _rss_available():
        return None
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    _, before = _rss_bytes()
    fn()
    peak, _ = _rss_bytes()
    return max(0, peak - before)


def _saved_bytes(forward: Callable[[], object], exclude: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() != exclude.untyped_storage().data_ptr():
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())


# ----------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------


def run(
    device: str = "cpu",
    shape: Sequence[int] = DEFAULT_SHAPE,
    repeats: int = 5,
    classes: int = 5,
    batch: int = 1,
    check: bool = True,
) -> list[dict]:
    """Measure ours / grid / softmax; returns one dict per method.

    Keys: method, what, median_s, min_s, vs_softmax / vs_softmax_min (time / softmax
    time, by median / by minimum), speedup_vs_grid (grid / ours median; ours only),
    peak_extra_mib, saved_mib, shape, device.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    logits = torch.randn(batch, classes, *shape, device=dev)
    probs = torch.softmax(logits, dim=1).requires_grad_()
    spacing = DEFAULT_SPACING[-len(shape):] if len(shape) <= 3 else (1.0,) * len(shape)
    weights = {  # random cotangents so the backward is not trivially structured
        name: torch.rand_like(value)
        for name, value in ours(probs.detach(), spacing).items()
    }

    if check:  # the two implementations agree (sanity, not a test)
        a = ours(probs.detach().double(), spacing)
        b = grid_baseline(probs.detach().double(), spacing)
        for name in DESCRIPTOR_NAMES:
            torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-6)

    def fwd_bwd(impl: Callable) -> Callable[[], None]:
        def step() -> None:
            out = impl(probs, spacing)
            loss = sum((out[n] * weights[n]).sum() for n in DESCRIPTOR_NAMES)
            loss.backward()
            probs.grad = None

        return step

    def softmax_forward() -> None:
        torch.softmax(logits, dim=1)

    def ours_forward() -> None:
        with torch.no_grad():
            ours(probs, spacing)

    grad_bytes = probs.numel() * probs.element_size()
    rows = []
    for method, what, fn, forward, has_grad in [
        ("ours", "all descriptors, fwd + bwd", fwd_bwd(ours), lambda: ours(probs, spacing), True),
        ("ours (forward)", "all descriptors, fwd, no_grad", ours_forward, None, False),
        (
            "grid",
            "all descriptors, fwd + bwd",
            fwd_bwd(grid_baseline),
            lambda: grid_baseline(probs, spacing),
            True,
        ),
        ("softmax", "one torch.softmax fwd", softmax_forward, None, False),
    ]:
        times = _times(fn, dev, repeats)
        peak = _peak_extra_bytes(fn, dev)
        if peak is not None and has_grad and dev.type != "cuda":
            peak = max(0, peak - grad_bytes)  # RSS includes the .grad buffer
        saved = _saved_bytes(forward, probs) if forward is not None else 0
        rows.append(
            {
                "method": method,
                "what": what,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "peak_extra_mib": None if peak is None else peak / 2**20,
                "saved_mib": saved / 2**20,
                "shape": (batch, classes, *shape),
                "device": device,
            }
        )
    by_name = {r["method"]: r for r in rows}
    for r in rows:
        r["vs_softmax"] = r["median_s"] / by_name["softmax"]["median_s"]
        r["vs_softmax_min"] = r["min_s"] / by_name["softmax"]["min_s"]
    by_name["ours"]["speedup_vs_grid"] = by_name["grid"]["median_s"] / by_name["ours"]["median_s"]
    return rows


def format_table(rows: list[dict]) -> str:
    first = rows[0]
    input_mib = torch.Size(first["shape"]).numel() * 4 / 2**20
    lines = [
        f"Descriptor throughput, probs {tuple(first['shape'])} float32 ({input_mib:.0f} MiB) on "
        f"{first['device']}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "",
        "| method | what | median s | x softmax | min s | x softmax (min) | peak extra MiB "
        "| saved MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        peak = "n/a" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.0f}"
        lines.append(
            f"| {r['method']} | {r['what']} | {r['median_s']:.4f} | {r['vs_softmax']:.2f} | "
            f"{r['min_s']:.4f} | {r['vs_softmax_min']:.2f} | {peak} | {r['saved_mib']:.2f} |"
        )
    ours_row = next(r for r in rows if r["method"] == "ours")
    lines += [
        "",
        f"ours vs grid: {ours_row['speedup_vs_grid']:.1f}x faster (target >= 20x); "
        f"ours vs one softmax: {ours_row['vs_softmax']:.2f}x (target <= 3x).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs="+", default=list(DEFAULT_SHAPE))
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-check", action="store_true", help="skip the float64 agreement check")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run(
        device=args.device,
        shape=tuple(args.shape),
        repeats=args.repeats,
        classes=args.classes,
        batch=args.batch,
        check=not args.no_check,
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
