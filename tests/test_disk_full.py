"""A real full disk: `thinkscale run` into a 2 MiB tmpfs that runs out of space, then resumes.

tests/test_resume.py stands a page limit in for a full disk (SQLite's own
max_page_count). Here nothing is simulated: the run's directory is on a small
tmpfs, a filler file leaves it 160 KiB, and the kernel answers the ledger's
writes with ENOSPC part-way through the run. The test checks that the run stops
with one clear error line, that the ledger is readable while the disk is still
full and holds only whole traces, and that once the filler is deleted the same
command resumes the run and finishes it, keeping what was already written.

The failing run is a subprocess, as a user runs it (exit status, all of its
stderr); the resumed run calls the same `main` in this process, which saves a
second start of torch and keeps the test under 20 s on a busy 2-core machine.

Mounting a tmpfs needs root. Without it the test runs itself again inside an
unprivileged user and mount namespace (`unshare -rm`), where it may mount; where
neither is allowed it skips and says why.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from thinkscale.cli import main
from thinkscale.store import RunStore

SIZE = 2 * 1024 * 1024
LEFT_FREE = 160 * 1024  # room for the schema and some traces, not for the whole run (about 12 KiB a trace)
PROBLEMS, SAMPLES = 12, 4
TOTAL = PROBLEMS * 2  # two seeds
IN_NAMESPACE = "THINKSCALE_TEST_IN_USER_NAMESPACE"

CONFIG = """\
task: arithmetic
problems: {problems}
seeds: [0, 1]
output: {output}
policy:
  name: tiny
  options: {{threads: 1, max_rows: 64}}
strategies:
  - name: repeated_sampling
    label: rs
    settings: {{n: {samples}}}
"""


def mount_tmpfs(mountpoint: Path) -> str | None:
    """Mount a SIZE tmpfs on `mountpoint`; the reason it could not, or None."""
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mountpoint)],
                                capture_output=True, text=True, timeout=30)
    except OSError as e:  # no mount command
        return str(e)
    return None if result.returncode == 0 else (result.stderr.strip() or f"mount exited {result.returncode}")


def unmount(mountpoint: Path) -> None:
    if subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True, timeout=30)


def rerun_in_user_namespace(request: pytest.FixtureRequest, tmp_path: Path, why: str) -> None:
    """Run this test again as root of a new user and mount namespace; pass, fail or skip as it does."""
    if os.environ.get(IN_NAMESPACE):
        pytest.skip(f"cannot mount a tmpfs, even in a user namespace: {why}")
    command = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "pytest", "-q", "-rs",
               "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'in-namespace'}", request.node.nodeid]
    try:
        inner = subprocess.run(command, cwd=request.config.rootpath, env={**os.environ, IN_NAMESPACE: "1"},
                               capture_output=True, text=True, timeout=300)
    except OSError as e:  # no unshare command
        pytest.skip(f"cannot mount a tmpfs ({why}) and cannot run unshare ({e})")
    output = inner.stdout + inner.stderr
    if inner.returncode != 0 and output.startswith("unshare:"):
        pytest.skip(f"cannot mount a tmpfs ({why}) and cannot make a user namespace ({output.strip()})")
    assert inner.returncode == 0, output
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    if skipped:
        pytest.skip(skipped[0].split(": ", 1)[-1])  # the inner run's own reason


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def thinkscale_run_subprocess(config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "thinkscale.cli", "run", str(config)], env=env,
                          capture_output=True, text=True, timeout=300)


def whole_traces(run_dir: Path) -> dict:
    """Every stored trace by key, after checking that each one came back whole."""
    with sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        orphans = conn.execute("SELECT count(*) FROM nodes WHERE trace_id NOT IN (SELECT id FROM traces)")
        assert orphans.fetchone() == (0,)
    traces = {}
    with RunStore.read(run_dir) as store:
        for key, trace in store.iter_keyed():
            terminals = list(trace.terminals())
            assert len(terminals) == trace.usage.samples == SAMPLES, key
            assert sum(n.num_tokens for n in terminals) == trace.usage.generated_tokens, key
            assert all(n.correct is not None for n in terminals), key  # graded before it was stored
            traces[key] = trace.to_dict()
    return traces


def fill_run_and_resume(disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (free_bytes(disk) - LEFT_FREE))
    run_dir = disk / "run"
    config = tmp_path / "exp.yaml"
    config.write_text(CONFIG.format(problems=PROBLEMS, samples=SAMPLES, output=run_dir))

    failed = thinkscale_run_subprocess(config)
    assert failed.returncode == 2, failed.stderr
    assert free_bytes(disk) < 8192  # the filesystem really is full: no other limit stopped the run
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.replace("\r", "\n").strip().splitlines()  # the progress bar's lines, then the error
    messages = [line for line in lines if line.startswith("thinkscale:")]
    assert messages == [lines[-1]]
    assert "is full" in messages[0] and "the ledger is intact" in messages[0]
    assert "resumed once space is freed" in messages[0]

    kept = whole_traces(run_dir)  # read while the disk is still full
    assert 0 < len(kept) < TOTAL

    filler.unlink()
    capsys.readouterr()
    assert main(["run", str(config)]) == 0
    assert f"resuming {run_dir}: {len(kept)} of {TOTAL} traces already done" in capsys.readouterr().out
    finished = whole_traces(run_dir)
    assert len(finished) == TOTAL
    assert {key: finished[key] for key in kept} == kept  # what was written before the disk filled is kept as it was
    assert (run_dir / "report.json").exists()


def test_a_real_full_disk_stops_the_run_cleanly_and_it_resumes_once_space_is_freed(tmp_path, capsys, request):
    disk = tmp_path / "disk"
    disk.mkdir()
    why = mount_tmpfs(disk)
    if why:
        rerun_in_user_namespace(request, tmp_path, why)
        return
    try:
        fill_run_and_resume(disk, tmp_path, capsys)
    finally:
        unmount(disk)
