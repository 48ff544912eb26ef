"""benchmarks/channels_last.py at a small size (so the script cannot rot): rows, outputs, refusal of CUDA.
No timing is asserted (performance belongs to benchmarks/, not to tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import channels_last  # noqa: E402


def test_small_run_times_both_layouts_and_compares_their_outputs():
    rows = channels_last.run(shape=(8, 16, 16), repeats=1, warmup=0, batch_size=1)
    assert [r["layout"] for r in rows] == ["default", "channels_last"]
    assert rows[0]["ratio"] == 1.0
    ours = rows[1]
    assert ours["seconds"] > 0 and ours["met"] == (ours["ratio"] <= channels_last.TARGET_RATIO)
    # the same weights in either layout compute the same outputs up to float rounding
    assert ours["max_output_difference"] < 1e-3
    assert "| channels_last |" in channels_last.format_table(rows)


def test_it_is_a_cpu_question():
    with pytest.raises(ValueError, match="a CPU question"):
        channels_last.run(device="cuda")
