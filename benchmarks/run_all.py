"""Run every benchmark with its default (CPU-sized) settings and write ``benchmarks/results.md``.

``make bench`` runs ``benchmarks/run_all.py --output benchmarks/results.md``. Each benchmark is
a script in this folder exposing ``run(...) -> list[dict]`` and a table formatter; they are
imported by path (``benchmarks/`` is not a package), run one after the other, their tables
printed as they finish, and results.md gets a header (date, ``nproc``, CPU model, torch
version), a summary of targets, and one section per question. A script that does not exist yet
is reported as "not available yet"; one that fails is reported with its error and the run
goes on (exit code 1 at the end).

    .venv/bin/python benchmarks/run_all.py --output benchmarks/results.md
    .venv/bin/python benchmarks/run_all.py --only loss_overhead --only inference_time
    .venv/bin/python benchmarks/run_all.py --device cuda --output results_gpu.md

The whole default run is sized for <= 10 minutes on 2 idle cores; on a machine shared with
other jobs wall times grow, the ratios (always measured within one run) much less.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARK_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARK_DIR))

from common import machine_info, machine_markdown, markdown_table, rows_to_markdown  # noqa: E402

Rows = list[dict[str, Any]]
#: (met: True / False / None = not measured here, one-line detail)
Verdict = tuple[bool | None, str]


# ------------------------------------------------------------------------------ target checks
def _throughput_verdict(rows: Rows) -> Verdict:
    ours = next((r for r in rows if r.get("method") == "ours"), None)
    if ours is None or "speedup_vs_grid" not in ours or "vs_softmax" not in ours:
        return None, "no 'ours' row with speedup_vs_grid / vs_softmax"
    speedup, softmax = float(ours["speedup_vs_grid"]), float(ours["vs_softmax"])
    return (speedup >= 20 and softmax <= 3,
            f"ours {speedup:.1f}x faster than the grid baseline, {softmax:.2f}x one softmax")


def _loss_verdict(rows: Rows) -> Verdict:
    comparisons = [r for r in rows if r.get("kind") == "comparison"]
    if not comparisons:
        return None, "no comparison rows"
    detail = "; ".join(f"vs {r['baseline']}: {r.get('ratio_from_parts', r['ratio']):.3f}x from parts "
                       f"({r['ratio']:.3f}x measured step ratio)" for r in comparisons)
    return all(r["met"] for r in comparisons), f"descriptor step {detail}"


def _memory_verdict(rows: Rows) -> Verdict:
    ours = [r for r in rows if r.get("network") == "STD/EXP"]
    if not ours:
        return None, "no STD/EXP row"
    detail = "; ".join(f"{r['topology']}: {r['ratio_vs_plain']:.3f}" for r in ours)
    return all(r["ratio_vs_plain"] <= 0.45 for r in ours), f"STD/EXP / PlainConvUNet bytes per voxel {detail}"


def _components_verdict(rows: Rows) -> Verdict:
    identical = all(r.get("identical", False) for r in rows)
    # rows name the backend "variant" (or "backend" in older versions of the script)
    cpu = [r for r in rows if (r.get("variant") or r.get("backend")) == "cc3d" and r.get("device") == "cpu"]
    if not cpu:
        return None, f"CPU path (cc3d) not run here; outputs identical to nnU-Net: {'yes' if identical else 'NO'}"
    speedups = [float(r.get("speedup", r.get("speedup_vs_nnunet", 0.0))) for r in cpu]
    detail = ", ".join(f"{r['size']}: {v:.1f}x" for r, v in zip(cpu, speedups))
    return (all(v >= 5 for v in speedups) and identical,
            f"cc3d speed-up {detail}; identical to nnU-Net: {'yes' if identical else 'NO'}")


def _inference_verdict(rows: Rows) -> Verdict:
    baseline = rows[0]
    ours = [r for r in rows[1:]]
    if not ours:
        return None, "no whole-scan row"
    detail = "; ".join(
        f"{r['windows']} window(s) vs {baseline['windows']}, predictor {r['predictor_ratio']:.2f}x, "
        f"nnUNetv2_predict {r['cli_ratio']:.2f}x of the sliding-window time" for r in ours)
    return all(r["windows"] == 1 for r in ours), detail


def _export_verdict(rows: Rows) -> Verdict:
    # the script's own rule (it prints the same verdict when run alone)
    script = sys.modules.get("bench_export_under_load") or load_script(BENCHMARK_DIR / "export_under_load.py")
    return script.verdict(rows)


# ------------------------------------------------------------------------------ registry
def _channels_last_verdict(rows: Rows) -> Verdict:
    ours = next((r for r in rows if r.get("layout") == "channels_last"), None)
    if ours is None:
        return None, "no channels_last row"
    return bool(ours["met"]), (f"channels-last step {ours['ratio']:.3f}x the default layout's, outputs within "
                               f"{ours['max_output_difference']:.1e}")


def _prior_relations_verdict(rows: Rows) -> Verdict:
    ours = next((r for r in rows if r.get("variant") == "relations batched"), None)
    if ours is None:
        return None, "no batched row"
    return bool(ours["met"]), (f"{ours['relations']} relations, batch {ours['batch_size']}: batched relations add "
                               f"{ours['ratio']:.2f}x what the per-sample ones add")


@dataclass(frozen=True)
class Benchmark:
    """One question: which script answers it, how to call it and how to judge its rows."""

    name: str
    title: str
    question: str
    target: str
    verdict: Callable[[Rows], Verdict]
    #: keyword arguments for ``run`` besides ``device`` (the defaults of the script otherwise)
    run_kwargs: dict[str, Any] = field(default_factory=dict)
    #: names of the script's table formatter, tried in order (fallback: a generic table)
    formatters: tuple[str, ...] = ("format_table", "format_tables", "markdown_table")

    @property
    def script(self) -> Path:
        return BENCHMARK_DIR / f"{self.name}.py"


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "descriptor_throughput", "1. Descriptor throughput",
        "All descriptors (V, C, covariance/spread, surface), K = 5, forward + backward: ours versus a "
        "full-coordinate-grid implementation and one softmax over the same tensor.",
        "ours >= 20x faster than the grid baseline and <= 3x one softmax",
        _throughput_verdict),
    Benchmark(
        "loss_overhead", "2. Loss overhead per training step",
        "One nnU-Net-style training step of the STD/EXP network on a whole small volume with nnU-Net's "
        "DC+CE loss versus the shape-descriptor loss (V+C+D+surface).",
        "descriptor step <= 1.05x the DC+CE step", _loss_verdict,
        # one intra-op thread: on a busy 2-core machine two OpenMP threads stall on each other
        # (the descriptor loss's many small ops most), which swamps a 5 % comparison
        run_kwargs={"repeats": 5, "threads": 1},
        formatters=("format_tables",)),
    Benchmark(
        "activation_memory", "3. Activation memory per voxel",
        "Bytes kept for backward per voxel (bf16 autocast, batch 1): STD/EXP versus nnU-Net's "
        "PlainConvUNet, extrapolated to the knee whole-scan patch 160x384x384.",
        "STD/EXP / PlainConvUNet <= 0.45 (without checkpointing)", _memory_verdict),
    Benchmark(
        "connected_components", "4. Connected components (largest-component postprocessing)",
        "Per-case time of keep-the-largest-component postprocessing: ours versus nnU-Net's skimage path.",
        "CPU path (cc3d) >= 5x faster than nnU-Net's, identical output", _components_verdict),
    Benchmark(
        "inference_time", "5. Inference time per case",
        "nnUNetv2_predict on the same phantom volume: whole-scan STD/EXP model versus nnU-Net's default "
        "sliding-window PlainConvUNet model.",
        "whole-scan model: exactly 1 window per case (time: reported, no threshold)", _inference_verdict),
    Benchmark(
        "export_under_load", "6. Descriptor export under load",
        "nnUNetv2_export_descriptors on one TotalSegmentator-like label map (117 labels; 256x256x200 here, "
        "512x512x400 without --small): peak memory and time per case versus SimpleITK's "
        "LabelShapeStatisticsImageFilter on the same file, and the same map with 12 labels.",
        "peak <= 16 bytes per voxel whatever the class count, 117 labels <= 1.5x the time of 12 (O(voxels))",
        _export_verdict, run_kwargs={"small": True}),
    Benchmark(
        "channels_last", "7. Channels-last weights on a CPU",
        "One descriptor-trainer training step of the suites' STD/EXP network (batch 2, 24x40x40) with the "
        "weights channels-last (nnUNetTrainerWholeScan.channels_last_on_cpu) versus the default "
        "layout.",
        "channels-last step <= 0.95x the default layout's", _channels_last_verdict),
    Benchmark(
        "prior_relations", "8. Population-prior relations in the loss",
        "Forward + backward of the V+C+D loss with the 18 relations of a knee population prior (batch 2, "
        "24x32x32): relations of one kind evaluated together for the batch (BatchRelations) versus each "
        "relation once per sample.",
        "batched relations add <= 0.6x what the per-sample ones add", _prior_relations_verdict),
)


# ------------------------------------------------------------------------------ running
@dataclass
class Outcome:
    benchmark: Benchmark
    status: str  # "ok", "missing", "failed", "skipped"
    table: str = ""
    met: bool | None = None
    detail: str = ""
    seconds: float = 0.0
    note: str = ""


def load_script(path: Path) -> ModuleType:
    """Import a benchmark script by path under the module name ``bench_<stem>``."""
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"benchmarks/run_all.py: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _format(module: ModuleType, benchmark: Benchmark, rows: Rows) -> str:
    for name in benchmark.formatters:
        formatter = getattr(module, name, None)
        # only the script's own functions: ``markdown_table`` may be common.py's, imported
        if callable(formatter) and getattr(formatter, "__module__", None) == module.__name__:
            return formatter(rows)
    return rows_to_markdown(rows)


def run_benchmark(benchmark: Benchmark, device: str) -> Outcome:
    """Import and run one benchmark; never raises (failures are part of the outcome)."""
    if not benchmark.script.exists():
        return Outcome(benchmark, "missing", detail="not available yet")
    start = time.perf_counter()
    try:
        module = load_script(benchmark.script)
        run = getattr(module, "run")
        kwargs = dict(benchmark.run_kwargs)
        note = ""
        if "device" in inspect.signature(run).parameters:
            kwargs["device"] = device
        elif device != "cpu":
            note = f"runs on CPU only (no device argument); --device {device} ignored"
        rows = run(**kwargs)
        table = _format(module, benchmark, rows)
        met, detail = benchmark.verdict(rows)
        return Outcome(benchmark, "ok", table, met, detail, time.perf_counter() - start, note)
    except Exception as error:  # report and go on with the next benchmark
        traceback.print_exc()
        return Outcome(benchmark, "failed", detail=f"{type(error).__name__}: {error}",
                       seconds=time.perf_counter() - start)


def _met_text(outcome: Outcome) -> str:
    if outcome.status != "ok":
        return outcome.status if outcome.status != "missing" else "not available yet"
    return {True: "met", False: "MISSED", None: "n/a"}[outcome.met]


def results_markdown(outcomes: Sequence[Outcome], info: dict[str, Any], device: str, total_seconds: float) -> str:
    """The whole results.md text."""
    summary = markdown_table(
        ["benchmark", "target", "result", "detail", "wall time"],
        [[o.benchmark.title, o.benchmark.target, _met_text(o), o.detail,
          f"{o.seconds:.0f} s" if o.status in ("ok", "failed") else "-"] for o in outcomes],
        align=["l", "l", "l", "l", "r"],
    )
    parts = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`benchmarks/run_all.py`); methods and discussion in "
        "[docs/performance.md](../docs/performance.md). Every table compares with a baseline measured in "
        "the same run (median after warm-up; ratios rather than absolute times).",
        "",
        machine_markdown(info),
        f"- device: {device}; total wall time {total_seconds / 60:.1f} min",
        "",
        "## Summary",
        "",
        summary,
    ]
    for outcome in outcomes:
        benchmark = outcome.benchmark
        parts += ["", f"## {benchmark.title}", "", benchmark.question, "",
                  f"Script: `benchmarks/{benchmark.script.name}`. Target: {benchmark.target}. "
                  f"Result: **{_met_text(outcome)}**" + (f" ({outcome.detail})." if outcome.detail else ".")]
        if benchmark.run_kwargs:
            settings = ", ".join(f"{k}={v}" for k, v in benchmark.run_kwargs.items())
            parts += ["", f"Run with `run({settings})`."]
        if outcome.note:
            parts += ["", f"Note: {outcome.note}."]
        if outcome.table:
            parts += ["", outcome.table]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="write the results markdown here (e.g. benchmarks/results.md)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda; passed to every benchmark that has it")
    parser.add_argument("--only", action="append", choices=names, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(names)}")
    args = parser.parse_args(argv)
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]

    info = machine_info(args.device)
    print(machine_markdown(info), flush=True)
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    for benchmark in selected:
        print(f"\n## {benchmark.title}\n", flush=True)
        outcome = run_benchmark(benchmark, args.device)
        outcomes.append(outcome)
        if outcome.status == "missing":
            print(f"{benchmark.script.name}: not available yet", flush=True)
            continue
        if outcome.table:
            print(outcome.table)
        print(f"\nTarget: {benchmark.target} -> {_met_text(outcome)}"
              + (f" ({outcome.detail})" if outcome.detail else "")
              + f" [{outcome.seconds:.0f} s]", flush=True)
    total = time.perf_counter() - start
    print(f"\nTotal: {total / 60:.1f} min", flush=True)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        temporary = output.with_name(f".{output.name}.tmp")
        temporary.write_text(results_markdown(outcomes, info, args.device, total))
        temporary.replace(output)
        print(f"wrote {output}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
