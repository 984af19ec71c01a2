"""Slow tier: benchmarks/search.py end to end on a few problems, with the shipped reward models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_search_benchmark_prints_every_strategy_and_the_gap_line_last():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search.py"), "--problems", "6",
                             "--budgets", "4,64", "--threads", "1"],
                            capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in ("prm-best_of_n@64", "prm-weighted_best_of_n@64", "prm-beam@64", "prm-dvts@64", "prm-mcts@64",
                  "orm-best_of_n@64", "== countdown"):
        assert label in out, label
    assert "prm-weighted_best_of_n@4" not in out.split("== countdown")[1]  # countdown has no answer to vote on
    last = out.strip().splitlines()[-1]
    assert last.startswith("gap closed: ") and float(last.split(": ")[1]) <= 1.0
    # arithmetic checks its steps: right answers reached by valid steps are a share of pass@64
    row = next(line.split() for line in out.split("== countdown")[0].splitlines() if line.split()[:1] == ["64"])
    _, _, cover, valid, vote = row
    assert 0 <= float(valid) <= float(cover) and "valid pass@64" in out
    assert "valid pass@k" not in out.split("== countdown")[1]
