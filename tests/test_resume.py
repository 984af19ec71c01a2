"""Runs that survive: SIGKILL at several points and a full disk, then resume.

Each scenario runs the real `thinkscale run` in a subprocess. A small wrapper
(written to tmp_path) injects the fault from outside the product code: it
kills the process from inside a trace's transaction, or caps the database's
size with SQLite's max_page_count, which fails the next write as a full disk
would (SQLITE_FULL). tests/test_disk_full.py fills a real filesystem instead.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thinkscale.store import RunStore

CONFIG = """\
task: arithmetic
problems: 12
seeds: [0, 1]
output: {output}
policy:
  name: tiny
  options: {{threads: 1, max_rows: 64}}
strategies:
  - name: repeated_sampling
    label: rs
    settings: {{n: 6}}
  - name: majority_vote
    label: mv
    settings: {{n: 4, max_tokens: 120}}
"""
TOTAL = 12 * 2 * 2

WRAPPER = """\
import os, signal, sys
import thinkscale.store as store

kill_after_nodes = int(os.environ.get("KILL_AFTER_NODES", "0"))
full_after_traces = int(os.environ.get("FULL_AFTER_TRACES", "0"))
nodes = traces = 0
node_row, put_trace = store._node_row, store.RunStore.put_trace

def counting_node_row(*args):
    global nodes
    nodes += 1
    if nodes == kill_after_nodes:  # inside put_trace's transaction, some nodes written
        os.kill(os.getpid(), signal.SIGKILL)
    return node_row(*args)

sleep_per_trace = float(os.environ.get("SLEEP_PER_TRACE", "0"))

def capped_put_trace(self, key, trace):
    global traces
    traces += 1
    if sleep_per_trace:  # a slow disk: keeps the run going long enough to interrupt it
        import time
        time.sleep(sleep_per_trace)
    if traces == full_after_traces:  # the disk fills up: not one page more
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count={pages}")
    return put_trace(self, key, trace)

store._node_row = counting_node_row
store.RunStore.put_trace = capped_put_trace
from thinkscale.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_config(tmp_path: Path, name: str) -> tuple[Path, Path]:
    run_dir = tmp_path / name
    config = tmp_path / f"{name}.yaml"
    config.write_text(CONFIG.format(output=run_dir))
    return config, run_dir


def start(tmp_path: Path, config: Path, **faults: float) -> subprocess.Popen:
    wrapper = tmp_path / "faulty_thinkscale.py"
    wrapper.write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in faults.items()}}
    # A shell that runs tests in the background hands its children SIGINT ignored;
    # give the child the default, as a terminal would, so that Ctrl-C can be tested.
    return subprocess.Popen([sys.executable, str(wrapper), "run", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stored(run_dir: Path) -> int:
    db = run_dir / "run.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            return conn.execute("SELECT count(*) FROM traces").fetchone()[0]
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def comparable(run_dir: Path) -> dict:
    """Every trace by key, minus wall time; log-probabilities rounded (batch shapes move the last bits)."""
    out = {}
    with RunStore.read(run_dir) as store:
        for key, trace in store.iter_keyed():
            data = trace.to_dict()
            data["usage"].pop("wall_s")
            for node in data["nodes"]:
                if node["logprob"] is not None:
                    node["logprob"] = round(node["logprob"], 3)
            assert key not in out
            out[key] = data
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    config, run_dir = write_config(tmp_path, "clean")
    proc = start(tmp_path, config)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return comparable(run_dir)


def test_sigkill_at_several_points_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    config, run_dir = write_config(tmp_path, "killed")

    # 1. killed while starting up, before any trace is written
    proc = start(tmp_path, config)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert stored(run_dir) == 0

    # 2. killed between the writes of one trace: its 4th trace has some nodes written
    proc = start(tmp_path, config, KILL_AFTER_NODES=3 * 7 + 3)
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert stored(run_dir) == 3  # the half-written 4th trace left nothing behind

    # 3. killed from outside once some traces are in
    proc = start(tmp_path, config)
    deadline = time.time() + 300
    while stored(run_dir) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    partial = stored(run_dir)
    assert 3 < partial < TOTAL

    # 4. Ctrl-C: a clean stop that keeps what is finished
    proc = start(tmp_path, config, SLEEP_PER_TRACE=0.3)
    while stored(run_dir) <= partial and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    partial = stored(run_dir)

    # 5. killed mid-trace again, in a later strategy's group
    proc = start(tmp_path, config, KILL_AFTER_NODES=2 * 5 + 2)
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL

    # 6. resumed to the end
    proc = start(tmp_path, config)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "resuming" in out
    resumed = comparable(run_dir)
    assert len(resumed) == TOTAL
    assert resumed.keys() == uninterrupted.keys()
    for key in uninterrupted:
        for a, b in zip(resumed[key]["nodes"], uninterrupted[key]["nodes"]):
            assert a == b, (key, a, b)
        assert resumed[key] == uninterrupted[key], key


def test_full_disk_gives_a_clear_error_and_an_intact_store_that_resumes(tmp_path, uninterrupted):
    config, run_dir = write_config(tmp_path, "full")
    proc = start(tmp_path, config, FULL_AFTER_TRACES=5)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2
    assert "full" in err and "resumed once space is freed" in err
    assert "Traceback" not in err
    with sqlite3.connect(run_dir / "run.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert 0 < stored(run_dir) < TOTAL

    proc = start(tmp_path, config)  # space is back
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert comparable(run_dir) == uninterrupted


def test_bad_config_writes_nothing(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG.format(output=tmp_path / "never").replace("problems: 12", "problems: twelve"))
    result = subprocess.run([sys.executable, "-m", "thinkscale.cli", "run", str(config)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert f"{config}:2: problems: expected an integer" in result.stderr
    assert not (tmp_path / "never").exists()
    missing = subprocess.run([sys.executable, "-m", "thinkscale.cli", "run", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
