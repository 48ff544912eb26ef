"""benchmarks/gpu_check.py: the whole script at small sizes on the CPU (so the GPU run cannot rot),
and its limits, OOM handling and table in isolation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[dict, str]:
    """``gpu_check.py --small`` as ``make gpu-check`` runs the full one: (JSON written, stdout)."""
    folder = tmp_path_factory.mktemp("gpu_check")
    output = folder / "gpu_check.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--small", "--quiet", "--output", str(output),
         "--cache", str(folder / "cache")], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return json.loads(output.read_text()), completed.stdout


def _rows(result: dict, part: int) -> list[dict]:
    return next(p for p in result["parts"] if p["part"] == part)["rows"]


@pytest.mark.slow  # ~2.5 min on 2 cores: every part of the GPU check at small sizes (CI: make test-slow)
def test_small_run_measures_every_part(small_run):
    result, stdout = small_run
    assert result["settings"] == "small" and result["device"] == "cpu"
    assert [p["part"] for p in result["parts"]] == [1, 2, 3, 4, 5]
    for part in result["parts"]:
        assert part["status"] == "ok", part
        assert part["wall_s"] <= part["limit_s"]
        assert part["rows"] and all(row["status"] == "ok" for row in part["rows"]), part

    for part in (1, 2):
        rows = _rows(result, part)
        assert [r["variant"] for r in rows] == list(gpu_check.TRAINING_VARIANTS)
        assert all(r["seconds"] > 0 and r["parameters_m"] > 0 for r in rows)
        assert all(r["peak_gib"] is None for r in rows)  # no allocator statistics on the CPU
    for row in _rows(result, 2):
        # aot_eager runs dynamo and AOT autograd but no code generation: the same numbers
        assert row["compile_s"] > 0 and row["match"] is True
        assert row["loss_rel_error"] < 1e-6 and row["grad_rel_error"] < 1e-6

    components = _rows(result, 3)
    assert {r["variant"] for r in components} == {"nnU-Net (skimage) (cpu)", "cc3d (cpu)", "torch (cpu)"}
    assert all(r["identical"] for r in components)

    descriptors = {r["variant"]: r for r in _rows(result, 4)}
    assert set(descriptors) == {"ours", "ours (forward)", "grid", "softmax"}
    assert descriptors["softmax"]["vs_softmax"] == pytest.approx(1.0)

    (trainer,) = _rows(result, 5)
    assert trainer["variant"] == "nnUNetTrainerShapeDescriptors" and trainer["iterations"] == 3
    assert trainer["iterations_per_s"] > 0 and trainer["compiled"] is False
    assert trainer["patch_size"] == list(gpu_check.SMALL.phantom_shape)  # the whole phantom is the patch

    # one table, one line per row
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| # | check | variant | status")
    assert len(table) == 2 + sum(len(p["rows"]) for p in result["parts"])


def test_a_part_past_its_limit_is_stopped_and_reported():
    def slow(context, budget, rows):
        rows.append(gpu_check._row(9, "slow", "first"))
        time.sleep(5)
        rows.append(gpu_check._row(9, "slow", "second"))

    part = gpu_check.Part(9, "slow part", slow)
    context = gpu_check.Context(device=torch.device("cpu"), settings=gpu_check.SMALL, cache=Path("."), verbose=False)
    started = time.perf_counter()
    result = gpu_check.run_part(part, context, limit_s=0.3)
    assert time.perf_counter() - started < 3
    assert result["status"] == "timeout" and "0 s limit" in result["note"]
    assert [r["variant"] for r in result["rows"]] == ["first"]  # what ran before the limit is kept


def test_out_of_memory_is_a_result_and_the_other_variants_still_run(monkeypatch):
    built = gpu_check.build_network

    def build_or_run_out(variant, topology, device):
        if variant == "PlainConvUNet":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return built(variant, topology, device)

    monkeypatch.setattr(gpu_check, "build_network", build_or_run_out)
    context = gpu_check.Context(device=torch.device("cpu"), settings=gpu_check.SMALL, cache=Path("."), verbose=False)
    result = gpu_check.run_part(gpu_check.PARTS[0], context, limit_s=120)
    statuses = {r["variant"]: r["status"] for r in result["rows"]}
    assert statuses == {"STD/EXP": "ok", "PlainConvUNet": "OOM", "STD/EXP + checkpoint": "ok"}
    assert result["status"] == "ok"
    oom = next(r for r in result["rows"] if r["status"] == "OOM")
    assert "Tried to allocate 20.00 GiB" in oom["note"]
    assert all("PlainConvUNet ran out of memory" in r["note"] for r in result["rows"] if r["status"] == "ok")
    assert not gpu_check.failed({"parts": [result]})  # OOM is an answer, not a failure


def test_variants_that_would_not_fit_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(gpu_check.Budget, "allows", lambda self, seconds: False)
    context = gpu_check.Context(device=torch.device("cpu"), settings=gpu_check.SMALL, cache=Path("."), verbose=False)
    result = gpu_check.run_part(gpu_check.PARTS[0], context, limit_s=120)
    assert [r["status"] for r in result["rows"]] == ["ok", "skipped", "skipped"]
    assert result["rows"][0]["repeats"] == 1
    assert all("s left of the part's 120 s limit" in r["note"] for r in result["rows"][1:])
    assert "skipped" in result["note"]


def test_errors_are_reported_with_their_message():
    def broken(context, budget, rows):
        raise ValueError("plans file has no 3d_fullres configuration")

    context = gpu_check.Context(device=torch.device("cpu"), settings=gpu_check.SMALL, cache=Path("."), verbose=False)
    result = gpu_check.run_part(gpu_check.Part(9, "broken part", broken), context, limit_s=10)
    assert result["status"] == "error"
    assert result["note"] == "ValueError: plans file has no 3d_fullres configuration"
    assert gpu_check.failed({"parts": [result]})


def test_cpu_estimates_are_read_from_the_results_table(tmp_path):
    results = tmp_path / "results.md"
    results.write_text(
        "## 3. Activation memory per voxel\n\n"
        "| topology | network | measured at | B/voxel (bf16) | estimate B/voxel | GiB at 160x384x384 "
        "| ratio vs PlainConvUNet | fwd+bwd s | time ratio |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| knee_planner | PlainConvUNet | 32x64x128, 32x128x128 | 853.8 | - | 18.84 | 1.000 | 1.49 | 1.00 |\n"
        "| knee_planner | STD/EXP | 32x64x128, 32x128x128 | 343.4 | 343.4 | 7.58 | 0.402 | 0.63 | 0.42 |\n"
        "| knee_aniso | STD/EXP | 32x64x64, 40x96x96 | 428.8 | 428.8 | 9.44 | 0.402 | 0.37 | 0.29 |\n")
    estimates = gpu_check.cpu_estimates(results, "knee_planner")
    assert estimates == {"PlainConvUNet": {"activations_gib": 18.84, "ratio": 1.0},
                         "STD/EXP": {"activations_gib": 7.58, "ratio": 0.402}}
    assert gpu_check.cpu_estimates(tmp_path / "missing.md") == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no GPU")
def test_without_a_gpu_the_full_run_says_so(capsys):
    assert gpu_check.main([]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err
