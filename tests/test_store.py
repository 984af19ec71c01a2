"""The run ledger: exact round trips, resumption, refusals, atomic puts, a full disk, exports."""

from __future__ import annotations

import errno
import inspect
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

import thinkscale.store as store_module
from thinkscale.budget import Usage
from thinkscale.export import export
from thinkscale.store import _SELECT, ConfigMismatchError, DuplicateTraceError, RunStore, StoreFullError
from thinkscale.trace import FINISH_LENGTH, FINISH_STOP, Trace

CONFIG = {"task": "arithmetic", "strategy": "repeated_sampling", "samples": 4, "seed": 0}


def flat_trace(problem_id: str, samples: int = 4, strategy: str = "repeated_sampling") -> Trace:
    """Repeated sampling: a root and `samples` terminal children, with every kind of field value."""
    trace = Trace(problem_id=problem_id, strategy=strategy, settings={"n": samples, "temperature": 0.7,
                                                                      "stop": ["\n\n"]},
                  seed=1234, difficulty=3, chosen_answer="42", correct=True, stopped_by="max_flops",
                  usage=Usage(generated_tokens=321, prompt_tokens=40, policy_calls=1, samples=samples,
                              flops=1.5e9, wall_s=0.031))
    trace.add(None, f"Q{problem_id}: 6*7=?", num_tokens=9)
    for i in range(samples):
        last = i == samples - 1
        trace.add(0, f"6*7={40 + i}", num_tokens=5 + i, logprob=None if i == 1 else -1.25 * (i + 1),
                  scores={} if i % 2 else {"prm": 0.1 * i, "orm": 1 / 3}, terminal=True,
                  finish_reason=FINISH_LENGTH if last else FINISH_STOP,
                  answer=None if last else str(40 + i), correct=(i == 2) if i != 0 else None)
    return trace


def deep_trace(problem_id: str, depth: int = 6) -> Trace:
    """Step-level search: a chain with a branch at every step, terminals at the leaves."""
    trace = Trace(problem_id=problem_id, strategy="beam", settings={"width": 2, "nested": {"a": [1, None]}},
                  seed=7, difficulty=None)
    trace.add(None, "prompt", num_tokens=3)
    parent = 0
    for d in range(depth):
        side = trace.add(parent, f"side{d} ", num_tokens=2, scores={"prm": -0.5}, terminal=d == depth - 1,
                         finish_reason=FINISH_STOP if d == depth - 1 else None, answer="s" if d == depth - 1 else None)
        main = trace.add(parent, f"step{d} ", num_tokens=3, logprob=-0.5, scores={"prm": 0.9})
        assert side.id < main.id
        parent = main.id
    trace.add(parent, "= 5", num_tokens=2, logprob=-0.25, terminal=True, finish_reason=FINISH_STOP,
              answer="5", correct=True)
    return trace


def test_round_trip_is_exact(tmp_path):
    traces = {"rs/0/p0": flat_trace("p0"), "beam/0/p1": deep_trace("p1"), "rs/0/p2": flat_trace("p2", samples=9),
              "empty/0/p3": Trace(problem_id="p3", strategy="none", settings={}, seed=0)}
    with RunStore.open(tmp_path, CONFIG) as store:
        for key, trace in traces.items():
            store.put_trace(key, trace)
        assert store.count_traces() == 4
        assert store.count_traces("beam") == 1
        back = list(store.iter_keyed())
        assert [k for k, _ in back] == list(traces)  # insertion order
        for key, trace in back:
            assert trace == traces[key]
            assert trace.to_dict() == traces[key].to_dict()
        assert store.get_trace("beam/0/p1") == traces["beam/0/p1"]
        assert store.get_trace("nope") is None
    # and again from a fresh connection, through the public iter_traces
    with RunStore.open(tmp_path, CONFIG) as store:
        assert list(store.iter_traces()) == list(traces.values())
        assert list(store.iter_traces(strategy="beam")) == [traces["beam/0/p1"]]
        assert store.config == CONFIG
        assert store.info["code_version"]


def test_a_ledger_of_schema_1_is_read_as_it_is_and_migrated_when_a_run_resumes(tmp_path):
    with RunStore.open(tmp_path, CONFIG) as store:
        store.put_trace("k1", flat_trace("p1"))
    conn = sqlite3.connect(tmp_path / "run.sqlite")  # as thinkscale 0.1 wrote it: no stopped_by column
    conn.execute("ALTER TABLE traces DROP COLUMN stopped_by")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with RunStore.read(tmp_path) as store:
        old = store.get_trace("k1")
    assert old.stopped_by is None and old.chosen_answer == "42" and len(old.nodes) == 5
    with RunStore.open(tmp_path, CONFIG) as store:  # resuming migrates it
        store.put_trace("k2", flat_trace("p2"))
        assert store.get_trace("k2").stopped_by == "max_flops" and store.get_trace("k1").stopped_by is None
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION


def test_iter_traces_streams_in_insertion_order(tmp_path):
    with RunStore.open(tmp_path, CONFIG) as store:
        for i in (3, 1, 2):
            store.put_trace(f"k{i}", flat_trace(f"p{i}"))
        stream = store.iter_traces()
        assert inspect.isgenerator(stream)
        assert next(stream).problem_id == "p3"
        assert [t.problem_id for t in stream] == ["p1", "p2"]
        for where in ("", "WHERE t.strategy = ?"):  # ordered by the b-trees themselves: no sort to materialise
            query = _SELECT.format(where=where, stopped_by="t.stopped_by", order="t.id")
            plan = store._conn.execute("EXPLAIN QUERY PLAN " + query, ("x",) if where else ()).fetchall()
            assert not any("TEMP B-TREE" in row[-1] for row in plan), plan
        assert [k for k, _ in store.iter_keyed(by_key=True)] == ["k1", "k2", "k3"]


def test_resume_by_done_keys_and_duplicates_refused(tmp_path):
    with RunStore.open(tmp_path, CONFIG) as store:
        store.put_trace("rs/0/p0", flat_trace("p0"))
        store.put_trace("rs/0/p1", flat_trace("p1"))
    with RunStore.open(tmp_path, dict(CONFIG)) as store:  # same config: resumes
        assert store.done_keys() == {"rs/0/p0", "rs/0/p1"}
        with pytest.raises(DuplicateTraceError, match="rs/0/p1") as caught:
            store.put_trace("rs/0/p1", flat_trace("p1"))
        assert isinstance(caught.value, sqlite3.IntegrityError)
        store.put_trace("rs/0/p2", flat_trace("p2"))  # still usable
        assert store.count_traces() == 3
        assert [t.problem_id for t in store.iter_traces()] == ["p0", "p1", "p2"]


def test_nodes_out_of_id_order_refused(tmp_path):
    trace = flat_trace("p0")
    trace.nodes[1], trace.nodes[2] = trace.nodes[2], trace.nodes[1]
    with RunStore.open(tmp_path, CONFIG) as store:
        with pytest.raises(ValueError, match="increasing"):
            store.put_trace("k", trace)
        assert store.count_traces() == 0


def test_config_mismatch_names_the_keys_and_fresh_starts_afresh(tmp_path):
    with RunStore.open(tmp_path, CONFIG) as store:
        store.put_trace("k0", flat_trace("p0"))
    changed = {**CONFIG, "samples": 64, "extra": True}
    with pytest.raises(ConfigMismatchError) as caught:
        RunStore.open(tmp_path, changed)
    message = str(caught.value)
    assert str(tmp_path) in message and "samples" in message and "extra" in message and "--fresh" in message
    assert "task" not in message  # unchanged keys are not listed
    with RunStore.open(tmp_path, CONFIG) as store:  # the refusal touched nothing
        assert store.done_keys() == {"k0"}

    with RunStore.open(tmp_path, changed, fresh=True) as store:
        assert store.count_traces() == 0
        assert store.config == changed
        store.put_trace("k0", flat_trace("p0"))  # the old key is free again
    old = [p for p in tmp_path.iterdir() if p.name.startswith("run.sqlite.old-")]
    assert len(old) == 1  # moved aside, not deleted, its WAL folded in: one file holds the old run
    with sqlite3.connect(old[0]) as conn:
        assert conn.execute("SELECT key FROM traces").fetchall() == [("k0",)]
        assert json.loads(conn.execute("SELECT config FROM runs").fetchone()[0]) == CONFIG


def test_put_is_atomic_when_it_fails_midway(tmp_path, monkeypatch):
    with RunStore.open(tmp_path, CONFIG) as store:
        store.put_trace("k0", flat_trace("p0"))
        real_row, calls = store_module._node_row, []

        def failing_row(trace_id, node):
            calls.append(node.id)
            if len(calls) == 3:  # the trace row and two nodes are already written
                raise RuntimeError("crash between node writes")
            return real_row(trace_id, node)

        monkeypatch.setattr(store_module, "_node_row", failing_row)
        with pytest.raises(RuntimeError, match="crash"):
            store.put_trace("k1", flat_trace("p1"))
        assert calls == [0, 1, 2]
        monkeypatch.setattr(store_module, "_node_row", real_row)

        assert store.done_keys() == {"k0"}
        counts = store._conn.execute("SELECT (SELECT count(*) FROM traces), (SELECT count(*) FROM nodes)").fetchone()
        assert counts == (1, 5)
        store.put_trace("k1", flat_trace("p1"))  # the same put now succeeds
        assert [t.problem_id for t in store.iter_traces()] == ["p0", "p1"]


def test_full_disk_leaves_the_store_intact_and_resumable(tmp_path):
    with RunStore.open(tmp_path, CONFIG) as store:
        for i in range(3):
            store.put_trace(f"k{i}", flat_trace(f"p{i}"))
        conn = store._conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")  # the "disk" holds not one page more
        big = flat_trace("big", samples=200)
        for node in big.nodes:
            node.text *= 20
        with pytest.raises(StoreFullError) as caught:
            store.put_trace("big", big)
        error = caught.value
        assert isinstance(error, OSError) and error.errno == errno.ENOSPC
        assert str(store.path) in str(error) and "resumed" in str(error)

        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert store.done_keys() == {"k0", "k1", "k2"}
        assert [t.problem_id for t in store.iter_traces()] == ["p0", "p1", "p2"]
        conn.execute("PRAGMA max_page_count=1073741823")  # space freed
        store.put_trace("big", big)
        assert store.get_trace("big") == big


@pytest.fixture
def small_run(tmp_path):
    run_dir = tmp_path / "run"
    with RunStore.open(run_dir, CONFIG) as store:
        store.put_trace("rs/0/p0", flat_trace("p0"))
        store.put_trace("beam/0/p1", deep_trace("p1", depth=2))
    return run_dir


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_jsonl_export(run_dir, tmp_path, rows):
    out = tmp_path / f"check-{rows}.jsonl"
    export(run_dir, out, format="jsonl", rows=rows)
    return read_jsonl(out)


def test_export_jsonl_node_rows(small_run, tmp_path):
    out = tmp_path / "nodes.jsonl"
    assert export(small_run, out, format="jsonl", rows="node") == 5 + 6
    rows = read_jsonl(out)
    assert len(rows) == 11
    first = rows[1]
    assert first["key"] == "rs/0/p0" and first["problem_id"] == "p0" and first["seed"] == 1234
    assert first["difficulty"] == 3 and first["node_id"] == 1 and first["parent"] == 0
    assert first["text"] == "6*7=40" and first["scores"] == {"prm": 0.0, "orm": 1 / 3} and first["correct"] is None
    assert rows[2]["logprob"] is None and rows[2]["scores"] == {}
    assert rows[5]["difficulty"] is None and rows[5]["strategy"] == "beam"


def test_export_jsonl_solution_rows(small_run, tmp_path):
    out = tmp_path / "solutions.jsonl"
    with RunStore.read(small_run) as store:  # an open store works as well as a run dir
        assert export(store, out, format="jsonl", rows="solution") == 4 + 2
    rows = read_jsonl(out)
    assert [r["answer"] for r in rows[:4]] == ["40", "41", "42", None]
    assert rows[3]["finish_reason"] == FINISH_LENGTH and rows[2]["correct"] is True
    assert rows[0]["prompt"] == "Qp0: 6*7=?" and rows[0]["text"] == "6*7=40" and rows[0]["num_tokens"] == 5
    side, main = rows[4], rows[5]  # deep trace: side branch at the last step, then the main leaf
    assert side["text"] == "step0 side1 " and side["num_tokens"] == 5 and side["logprob"] is None
    assert main["text"] == "step0 step1 = 5" and main["num_tokens"] == 8 and main["logprob"] == -1.25
    assert main["depth"] == 3 and main["correct"] is True and main["key"] == "beam/0/p1"


def test_export_parquet_loads_in_pandas_and_datasets(small_run, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    nodes, solutions = tmp_path / "nodes.parquet", tmp_path / "solutions.parquet"
    assert export(small_run, nodes, rows="node", batch_rows=4) == 11  # several row groups
    assert export(small_run, solutions, format="parquet", rows="solution") == 6
    frame = pd.read_parquet(nodes)
    assert len(frame) == 11 and frame["key"].tolist()[:2] == ["rs/0/p0", "rs/0/p0"]
    assert json.loads(frame["scores"][1]) == {"prm": 0.0, "orm": 1 / 3}
    assert frame["text"].tolist() == [r["text"] for r in read_jsonl_export(small_run, tmp_path, "node")]
    sol = pd.read_parquet(solutions)
    assert sol["text"].tolist()[-1] == "step0 step1 = 5"

    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_files=str(solutions), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert loaded.num_rows == 6 and loaded[5]["text"] == "step0 step1 = 5" and loaded[3]["answer"] is None


def test_export_refusals(small_run, tmp_path):
    with pytest.raises(ValueError, match="format"):
        export(small_run, tmp_path / "out.csv")
    with pytest.raises(ValueError, match="rows"):
        export(small_run, tmp_path / "out.jsonl", rows="trace")
    with pytest.raises(FileNotFoundError):
        export(tmp_path / "no-such-run", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


KILLED_WRITER = """
import sys
from thinkscale.store import RunStore
from thinkscale.trace import Trace

with RunStore.open(sys.argv[1], {"run": "killed"}) as store:
    for i in range(1_000_000):
        trace = Trace(problem_id=f"p{i}", strategy="rs", settings={}, seed=i)
        trace.add(None, "prompt")
        for j in range(64):
            trace.add(0, f"sample {j} of problem {i}", num_tokens=j, terminal=True, answer=str(j))
        store.put_trace(f"k{i}", trace)
        print(f"k{i}", flush=True)
"""


def test_kill_9_mid_run_loses_and_duplicates_nothing(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    committed = [child.stdout.readline().strip() for _ in range(20)]
    os.kill(child.pid, signal.SIGKILL)  # somewhere in the middle of a later put
    child.wait()
    child.stdout.close()
    with RunStore.open(tmp_path, {"run": "killed"}) as store:
        assert store._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        done = store.done_keys()
        assert set(committed) <= done
        traces = list(store.iter_keyed())
        assert sorted(int(k[1:]) for k, _ in traces) == list(range(len(done)))  # no gap, no duplicate
        assert all(len(t.nodes) == 65 and t.nodes[-1].text.endswith(f"problem {k[1:]}") for k, t in traces)
