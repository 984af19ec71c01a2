"""benchmarks/serve.py runs end to end at tiny sizes: the server started and stopped, the table, the headline last.

The script runs as a subprocess, as a reader runs it (it starts `thinkscale
serve` as a subprocess of its own). The sizes are the smallest that go through
every phase; the numbers mean nothing, the form does, bar one: every served
answer must equal the in-process one of the same problem and seed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d+(?:\.\d+)?"


def test_serve_benchmark_prints_its_table_and_the_overhead_last():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--problems", "3", "--latency-requests", "3",
         "--throughput-requests", "4", "--concurrency", "1,2", "--requests", "110", "--problem-seed", "2",
         "--threads", "1"],
        check=False, capture_output=True, text=True, timeout=240, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    lines = result.stdout.strip().splitlines()
    out = "\n".join(lines)
    for row in ("in process", "served, streamed, openai", "served, streamed, bare SSE", "served, whole, openai",
                "upstream first token", "in-process first event"):
        assert re.search(rf"^  {row} +{NUMBER} +{NUMBER}", out, re.MULTILINE), row
    assert re.search(r"^  concurrency +1 +2$", out, re.MULTILINE)
    assert re.search(rf"^  served / in process +{NUMBER} +{NUMBER}$", out, re.MULTILINE)
    assert re.search(rf"first reasoning delta, p50: served {NUMBER} ms; the upstream's own first token {NUMBER} ms",
                     out)
    assert re.search(rf"memory growth from request 100 to 110: [+-]{NUMBER} MiB", out)
    assert "answers: all 17 served answers equal the in-process ones" in out  # 3 requests x 3 ways + 2 levels x 4
    pid = int(re.search(r"thinkscale serve \(pid (\d+),", out).group(1))
    assert not Path(f"/proc/{pid}").exists(), "the server outlived the benchmark"
    assert re.search(rf"the median paired difference [+-]{NUMBER} ms, ({NUMBER})% of the in-process p50",
                     lines[-2]), lines[-2]
    assert re.fullmatch(rf"overhead: {NUMBER}%", lines[-1]), lines[-1]
