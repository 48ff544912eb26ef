"""benchmarks/prior_relations.py at a small size (so the script cannot rot): its rows, and that
both ways of evaluating the relations give the same loss. No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import prior_relations  # noqa: E402


def test_small_run_times_every_variant_with_one_loss():
    rows = prior_relations.run(shape=(6, 8, 8), repeats=1, warmup=0)
    assert [r["variant"] for r in rows] == list(prior_relations.VARIANTS)
    assert rows[1]["relations"] == 18 and rows[1]["ratio"] == 1.0
    # the per-sample baseline and the batched relations are the same loss; relations add to it
    assert rows[1]["loss"] > rows[0]["loss"]
    assert all(r["loss"] == pytest.approx(rows[1]["loss"], rel=1e-6) for r in rows[2:])
    assert rows[-1]["met"] == (rows[-1]["ratio"] <= prior_relations.TARGET_RATIO)
    assert "| relations batched |" in prior_relations.format_table(rows)
