"""Shared helpers for the benchmark scripts: timing, machine description, markdown tables.

Timing protocol (every benchmark that imports this module follows it):

* **warm-up** runs first (allocator, lazy imports, oneDNN kernel selection, CUDA context) and
  are discarded;
* then ``repeats`` timed runs; the reported value is the **median** (robust to the odd slow
  run on a machine shared with other jobs);
* when several variants are compared they are timed **interleaved** (A, B, C, A, B, C, ...)
  rather than one after the other, so that a slow phase of the machine hits every variant
  alike, and results are reported as **ratios** to a baseline measured in the same run;
* on CUDA the device is synchronised before the clock starts and before it stops.

``benchmarks/`` is not a package: scripts import this module after putting their own folder on
``sys.path`` (``sys.path.insert(0, str(Path(__file__).resolve().parent))``).
"""

from __future__ import annotations

import datetime as _datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Timing",
    "synchronizer",
    "time_callable",
    "time_interleaved",
    "paired_ratio",
    "format_seconds",
    "format_ratio",
    "markdown_table",
    "rows_to_markdown",
    "machine_info",
    "machine_markdown",
    "cpu_model",
]


@dataclass(frozen=True)
class Timing:
    """Times (seconds) of the timed runs of one variant; warm-up runs are not included.

    ``samples`` are wall times; ``cpu_samples`` the process CPU time (all threads,
    ``time.process_time``) of the same runs. On a CPU shared with other jobs the CPU time is
    far less sensitive to the others' load (time spent descheduled is not charged), so
    :meth:`cpu` gives a second, steadier figure for CPU benchmarks; it means little for CUDA.
    """

    samples: tuple[float, ...]
    warmup: int = 0
    cpu_samples: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("benchmarks/common.py Timing: at least one timed sample is required")

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def minimum(self) -> float:
        return float(min(self.samples))

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the runs were (0 = identical runs)."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median > 0 else 0.0

    def ratio_to(self, baseline: Timing) -> float:
        """Median of this variant divided by the baseline's median."""
        return self.median / baseline.median

    def cpu(self) -> Timing:
        """The CPU-time samples as a Timing of their own (for :func:`paired_ratio` etc.)."""
        if not self.cpu_samples:
            raise ValueError("benchmarks/common.py Timing.cpu: no CPU-time samples were recorded")
        return Timing(self.cpu_samples, self.warmup)


def plain_conv_unet_kwargs(strides: Sequence[Sequence[int]], kernel_sizes: Sequence[Sequence[int]] | None = None,
                           features: Sequence[int] | None = None) -> dict[str, Any]:
    """3D ``arch_kwargs`` of nnU-Net 2.8's default PlainConvUNet (ops as classes) for a topology.

    ``features`` default to nnU-Net's ``min(32 * 2**stage, 320)``, kernels to 3 everywhere. Both
    the STD/EXP network and PlainConvUNet are built from these, as the trainers build them from plans.
    """
    from torch import nn

    n_stages = len(strides)
    return dict(
        n_stages=n_stages,
        features_per_stage=list(features) if features is not None else [min(32 * 2**i, 320) for i in range(n_stages)],
        conv_op=nn.Conv3d,
        kernel_sizes=[list(k) for k in kernel_sizes] if kernel_sizes is not None else [[3, 3, 3]] * n_stages,
        strides=[list(s) for s in strides],
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


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A no-argument function that waits for queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_callable(
    function: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> Timing:
    """Time ``function()``: ``warmup`` discarded runs, then ``repeats`` timed runs."""
    return time_interleaved({"_": function}, repeats=repeats, warmup=warmup, device=device)["_"]


def time_interleaved(
    functions: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    alternate_order: bool = True,
) -> dict[str, Timing]:
    """Time several variants round-robin: per round, each function once.

    Returns {name: Timing} in the order of ``functions``; ``samples[i]`` of every variant comes
    from the same round ``i``, so they can be paired (:func:`paired_ratio`). Each variant gets
    ``warmup`` discarded runs (also interleaved) and ``repeats`` timed runs. With
    ``alternate_order`` every other round runs the variants in reverse order, so that no
    variant always runs right after the same neighbour (e.g. after one that leaves the caches
    cold or the allocator fragmented).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"benchmarks/common.py time_interleaved: need repeats >= 1 and warmup >= 0, got "
            f"repeats={repeats}, warmup={warmup}"
        )
    sync = synchronizer(device)
    names = list(functions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu_samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        order = names[::-1] if alternate_order and round_index % 2 else names
        for name in order:
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            functions[name]()
            sync()
            elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
            if round_index >= warmup:
                samples[name].append(elapsed)
                cpu_samples[name].append(cpu_elapsed)
    return {name: Timing(tuple(samples[name]), warmup, tuple(cpu_samples[name])) for name in names}


def paired_ratio(timing: Timing, baseline: Timing) -> float:
    """Median over rounds of ``timing.samples[i] / baseline.samples[i]``.

    For variants timed by :func:`time_interleaved`, sample ``i`` of both ran within the same
    round, seconds apart: the per-round ratio cancels slow drifts of a shared machine's load
    that the ratio of the two medians does not.
    """
    if len(timing.samples) != len(baseline.samples):
        raise ValueError(
            f"benchmarks/common.py paired_ratio: {len(timing.samples)} and {len(baseline.samples)} samples; "
            "pair only timings from the same time_interleaved call"
        )
    return float(statistics.median(a / b for a, b in zip(timing.samples, baseline.samples)))


def _three_digits(value: float) -> str:
    """3 significant digits without an exponent: ``812``, ``24.0``, ``1.23``."""
    return f"{value:.0f}" if value >= 100 else f"{value:#.3g}"


def format_seconds(seconds: float | None) -> str:
    """Human-readable duration with 3 significant digits: ``812 µs``, ``12.3 ms``, ``24.0 s``."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{_three_digits(seconds * 1e6)} µs"
    if seconds < 1.0:
        return f"{_three_digits(seconds * 1e3)} ms"
    return f"{_three_digits(seconds)} s"


def format_ratio(value: float | None, digits: int = 2) -> str:
    """``1.03x`` (``-`` for None)."""
    return "-" if value is None else f"{value:.{digits}f}x"


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None
) -> str:
    """A GitHub markdown table. ``align``: one of ``"l"``, ``"r"``, ``"c"`` per column
    (default: left). Cells are converted with ``str``; ``|`` inside a cell is escaped."""
    headers = [str(h) for h in headers]
    align = list(align) if align is not None else ["l"] * len(headers)
    if len(align) != len(headers):
        raise ValueError(
            f"benchmarks/common.py markdown_table: {len(headers)} headers but {len(align)} alignments"
        )
    markers = {"l": "---", "r": "---:", "c": ":---:"}
    if any(a not in markers for a in align):
        raise ValueError(f"benchmarks/common.py markdown_table: alignments must be l, r or c, got {align}")
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(markers[a] for a in align) + " |",
    ]
    for row in rows:
        cells = [str(c).replace("|", "\\|") for c in row]
        if len(cells) != len(headers):
            raise ValueError(
                f"benchmarks/common.py markdown_table: a row has {len(cells)} cells, the header "
                f"{len(headers)}: {cells}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else str(value)
    return "-" if value is None else str(value)


def rows_to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Generic table of a benchmark's ``run()`` rows: one column per key (union, first-seen order)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return markdown_table(keys, ([_cell(row.get(k)) for k in keys] for row in rows))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _nproc() -> int:
    """What ``nproc`` prints: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Date, machine and library versions for a results header."""
    info: dict[str, Any] = {
        "date": _datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": _nproc(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        from importlib.metadata import version

        info["nnunetv2"] = version("nnunetv2")
    except Exception:  # not installed: leave it out
        pass
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_markdown(info: Mapping[str, Any]) -> str:
    """The header lines of results.md from :func:`machine_info`."""
    lines = [
        f"- date: {info['date']}",
        f"- machine: `nproc` = {info['nproc']}, CPU: {info['cpu']}",
        f"- torch {info['torch']} ({info['torch_threads']} intra-op threads), python {info['python']}"
        + (f", nnunetv2 {info['nnunetv2']}" if "nnunetv2" in info else ""),
        f"- platform: {info['platform']}",
    ]
    if "gpu" in info:
        lines.append(f"- GPU: {info['gpu']}")
    return "\n".join(lines)

