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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "Timing",
    "synchronizer",
    "time_callable",
    "time_interleaved",
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
    """Wall times (seconds) of the timed runs of one variant; warm-up runs are not included."""

    samples: tuple[float, ...]
    warmup: int = 0

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

    def ratio_to(self, baseline: "Timing") -> float:
        """Median of this variant divided by the baseline's median."""
        return self.median / baseline.median


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
) -> dict[str, Timing]:
    """Time several variants round-robin: per round, each function once, in the given order.

    Returns {name: Timing} in the order of ``functions``. Each variant gets ``warmup`` discarded
    runs (also interleaved) and ``repeats`` timed runs.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"benchmarks/common.py time_interleaved: need repeats >= 1 and warmup >= 0, got "
            f"repeats={repeats}, warmup={warmup}"
        )
    sync = synchronizer(device)
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for round_index in range(warmup + repeats):
        for name, function in functions.items():
            sync()
            start = time.perf_counter()
            function()
            sync()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                samples[name].append(elapsed)
    return {name: Timing(tuple(values), warmup) for name, values in samples.items()}


def format_seconds(seconds: float | None) -> str:
    """Human-readable duration with 3 significant digits: ``812 µs``, ``12.3 ms``, ``4.56 s``."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


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

