"""The run ledger: every Trace of a run in one SQLite file, crash-safe and resumable.

A sampling run over many problems can take hours. The ledger lets it survive a
crash, a `kill -9` or a full disk without losing or duplicating a sample:

    with RunStore.open("runs/arith", config) as store:
        done = store.done_keys()
        for key, problem in work:              # key e.g. "strategy/seed/problem_id"
            if key not in done:
                store.put_trace(key, solve(problem))
    export("runs/arith", "arith.parquet", format="parquet", rows="solution")   # export.py

Each `put_trace` is one transaction holding the trace and all its nodes, so a
trace is either wholly in the ledger or not at all; a resumed run skips
`done_keys()` and redoes the rest with the same seeds. The ledger remembers the
config it was started with and refuses to mix in traces from another one.

Layout of `RUN_DIR/run.sqlite` (WAL mode):

    runs    one row: config JSON, its sha256 fingerprint, code version, git commit, created
    traces  one row per trace, under a unique caller-chosen `key`
    nodes   one row per node, clustered by (trace, node id) so that reading a run
            back in order is a single sequential scan
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import thinkscale
from thinkscale.budget import Usage
from thinkscale.trace import Node, Trace

__all__ = ["DB_NAME", "ConfigMismatchError", "DuplicateTraceError", "RunStore", "StoreFullError",
           "config_fingerprint"]

DB_NAME = "run.sqlite"
SCHEMA_VERSION = 2  # kept in PRAGMA user_version; bump with a migration (_MIGRATIONS) when the tables change

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY,
        config TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        code_version TEXT NOT NULL,
        git_commit TEXT,
        created TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS traces (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        problem_id TEXT NOT NULL,
        strategy TEXT NOT NULL,
        settings TEXT NOT NULL,
        seed INTEGER NOT NULL,
        difficulty INTEGER,
        chosen_answer TEXT,
        correct INTEGER,
        usage TEXT NOT NULL,
        chosen_node INTEGER,
        stopped_by TEXT
    )""",
    # iter_traces(strategy=...) walks this index; its implicit rowid keeps trace order.
    "CREATE INDEX IF NOT EXISTS traces_strategy ON traces (strategy)",
    # WITHOUT ROWID: the primary key is the table's own b-tree, so nodes sit in
    # (trace, node id) order on disk, a trace's nodes are one range lookup, and no
    # second index has to be kept up to date on every insert.
    """CREATE TABLE IF NOT EXISTS nodes (
        trace_id INTEGER NOT NULL REFERENCES traces (id),
        node_id INTEGER NOT NULL,
        parent INTEGER,
        text TEXT NOT NULL,
        num_tokens INTEGER NOT NULL,
        logprob REAL,
        scores TEXT,
        terminal INTEGER NOT NULL,
        finish_reason TEXT,
        answer TEXT,
        correct INTEGER,
        PRIMARY KEY (trace_id, node_id)
    ) WITHOUT ROWID""",
]

# From schema N - 1 to N: version 2 records the budget limit that cut a search short.
_MIGRATIONS = {2: ["ALTER TABLE traces ADD COLUMN stopped_by TEXT"]}

_INSERT_TRACE = ("INSERT INTO traces (key, problem_id, strategy, settings, seed, difficulty, chosen_answer, "
                 "correct, usage, chosen_node, stopped_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_NODE = ("INSERT INTO nodes (trace_id, node_id, parent, text, num_tokens, logprob, scores, terminal, "
                "finish_reason, answer, correct) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# LEFT JOIN so that a trace without nodes still comes back; ORDER BY is served by
# the traces rowid (or the strategy index) and the nodes primary key: no sort,
# no temporary b-tree, rows stream straight off the cursor.
_SELECT = ("SELECT t.id, t.key, t.problem_id, t.strategy, t.settings, t.seed, t.difficulty, t.chosen_answer, "
           "t.correct, t.usage, n.node_id, n.parent, n.text, n.num_tokens, n.logprob, n.scores, n.terminal, "
           "n.finish_reason, n.answer, n.correct, t.chosen_node, {stopped_by} "
           "FROM traces t LEFT JOIN nodes n ON n.trace_id = t.id {where} ORDER BY {order}, n.node_id")


class ConfigMismatchError(ValueError):
    """The run dir already holds a run started with a different config."""


class DuplicateTraceError(sqlite3.IntegrityError):
    """A trace with this key is already in the ledger (a resumed run skips done_keys())."""


class StoreFullError(OSError):
    """The disk (or a size limit) is full; the ledger is intact and the run can be resumed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


def canonical_json(config: dict) -> str:
    """The one JSON text of `config`: sorted keys, no spaces, so equal configs fingerprint equal."""
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"a run config must be plain JSON (dicts, lists, str, numbers, bool, None): {e}") from e


def config_fingerprint(config: dict) -> str:
    """sha256 of the config's canonical JSON."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def _git_commit() -> str | None:
    """The commit checked out where thinkscale's source lives, or None if that is not a git checkout.

    Only trusted when thinkscale's own files are tracked by that repository: an
    installed copy inside some other project's checkout would otherwise report
    that project's commit.
    """
    package_dir = Path(thinkscale.__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "-C", str(package_dir), "ls-files", "--error-unmatch", "trace.py"],
                                 capture_output=True, timeout=5)
        if tracked.returncode != 0:
            return None
        head = subprocess.run(["git", "-C", str(package_dir), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return commit if head.returncode == 0 and commit else None


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; put_trace opens and closes its own.
    # timeout: wait up to 30 s for a lock held by another process (an export reading
    # while the run writes) instead of failing at once with "database is locked".
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # synchronous=NORMAL: in WAL mode a commit is appended to the WAL but not
        # fsynced; the WAL is fsynced at each checkpoint. A crash or kill -9 of the
        # process loses nothing (the OS holds the written pages). A power failure
        # may roll back the last few committed traces, but never corrupts the
        # database: WAL frames are checksummed and a torn tail is discarded. A lost
        # trace is simply not in done_keys() and is redone on resume with the same
        # seed, so the final results are unchanged. FULL would fsync every commit,
        # which costs a disk flush per trace for no difference in the results.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        # Checkpoint (copy the WAL into the database, with an fsync) every 16000 pages,
        # about 64 MB, rather than the default 1000: per-trace commits then spend a
        # third of the time, and recovering a 64 MB WAL after a crash takes a moment.
        conn.execute("PRAGMA wal_autocheckpoint=16000")
        conn.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL back to 64 MB after a checkpoint
    except sqlite3.DatabaseError as e:
        conn.close()
        raise sqlite3.DatabaseError(f"{path} is not a usable thinkscale run ledger: {e}") from e
    return conn


def _move_aside(path: Path) -> Path:
    """Rename an old ledger (and its WAL) to run.sqlite.old-<timestamp>; returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    try:  # fold the WAL into the main file so that one file holds the whole old run
        conn = sqlite3.connect(path, timeout=30.0)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    except sqlite3.DatabaseError:
        pass
    # Side files first: a stale -wal left beside a new run.sqlite could be replayed into it.
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    os.replace(path, target)
    return target


def _config_diff(stored: Any, given: Any, path: str = "") -> list[str]:
    """One line per setting (at its full key path) that differs between two configs."""
    def show(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."

    if isinstance(stored, dict) and isinstance(given, dict):
        lines = []
        for key in sorted(set(stored) | set(given), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in given:
                lines.append(f"  {where}: stored {show(stored[key])}, not in the new config")
            elif key not in stored:
                lines.append(f"  {where}: not in the stored config, new {show(given[key])}")
            else:
                lines += _config_diff(stored[key], given[key], where)
        return lines
    if isinstance(stored, list) and isinstance(given, list) and len(stored) == len(given):
        return [line for i, (a, b) in enumerate(zip(stored, given)) for line in _config_diff(a, b, f"{path}[{i}]")]
    if canonical_json({"v": stored}) != canonical_json({"v": given}):
        return [f"  {path}: stored {show(stored)}, new {show(given)}"]
    return []


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL if code is not None else "full" in str(error)
    return isinstance(error, OSError) and error.errno == errno.ENOSPC


def _node_row(trace_id: int, node: Node) -> tuple:
    # bool and None go in as they are: sqlite3 stores True/False as 1/0 and None as NULL.
    return (trace_id, node.id, node.parent, node.text, node.num_tokens, node.logprob,
            json.dumps(node.scores) if node.scores else None, node.terminal, node.finish_reason,
            node.answer, node.correct)


def _check_node_order(key: str, nodes: list[Node]) -> None:
    """Nodes come back ordered by id, so ids must rise along the list for a faithful round trip."""
    for before, after in zip(nodes, nodes[1:]):
        if after.id <= before.id:
            raise ValueError(f"trace {key!r}: node ids must be unique and increasing in list order "
                             f"(as Trace.add makes them), got node {after.id} after node {before.id}")


class RunStore:
    """One run's ledger of Traces. Open it with `RunStore.open` (to write) or `RunStore.read`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        row = conn.execute("SELECT config, fingerprint, code_version, git_commit, created FROM runs "
                           "ORDER BY id LIMIT 1").fetchone()
        self._config = json.loads(row[0])
        self.info = {"fingerprint": row[1], "code_version": row[2], "git_commit": row[3], "created": row[4]}

    @classmethod
    def open(cls, run_dir: str | os.PathLike, config: dict, fresh: bool = False) -> "RunStore":
        """Open the ledger in `run_dir` to write, creating it if needed.

        Args:
            run_dir: The run's directory; created if missing. The ledger is `run_dir/run.sqlite`.
            config: The run's settings, plain JSON. A ledger that already holds a run
                remembers the fingerprint of its config; only the same config resumes it.
            fresh: Start afresh: an existing ledger is not deleted but moved aside to
                `run.sqlite.old-<YYYYmmdd-HHMMSS>` (with its WAL, if any), and a new one is
                created. Nothing of the old run is mixed into the new one.

        Raises:
            ConfigMismatchError: The ledger holds a run with a different config (and not fresh).
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / DB_NAME
        config_json = canonical_json(config)
        fingerprint = hashlib.sha256(config_json.encode()).hexdigest()
        if fresh and path.exists():
            _move_aside(path)
        conn = _connect(path)
        try:
            # One IMMEDIATE transaction: two processes opening a new run dir at once
            # cannot both create it, and a crash here leaves no half-made schema.
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{path} was written by a newer thinkscale (ledger schema {version}, "
                                   f"this one reads up to {SCHEMA_VERSION})")
            fresh_file = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
            for statement in _SCHEMA:
                conn.execute(statement)
            if not fresh_file and version < SCHEMA_VERSION:
                for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            stored = conn.execute("SELECT config, fingerprint FROM runs ORDER BY id LIMIT 1").fetchone()
            if stored is None:
                conn.execute("INSERT INTO runs (config, fingerprint, code_version, git_commit, created) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (config_json, fingerprint, thinkscale.__version__, _git_commit(),
                              datetime.now(timezone.utc).isoformat(timespec="seconds")))
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        if stored is not None and stored[1] != fingerprint:
            conn.close()
            differing = _config_diff(json.loads(stored[0]), config)
            raise ConfigMismatchError(
                f"{run_dir} already holds a run started with a different config; "
                f"differing settings:\n" + "\n".join(differing) + "\n"
                f"Resume it with the same config, or pass --fresh (fresh=True) to start afresh "
                f"(the old ledger is moved aside to {DB_NAME}.old-<timestamp>, not deleted)."
            )
        return cls(conn, path)

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "RunStore":
        """Open an existing run's ledger to read it (exports, reports), whatever its config."""
        path = Path(run_dir) / DB_NAME
        if not path.exists():
            raise FileNotFoundError(f"no run ledger at {path}")
        conn = _connect(path)
        try:
            return cls(conn, path)
        except sqlite3.OperationalError as e:
            conn.close()
            raise FileNotFoundError(f"{path} holds no thinkscale run: {e}") from e

    @property
    def config(self) -> dict:
        """The config the run was started with."""
        return json.loads(json.dumps(self._config))  # a copy: the caller cannot edit the record

    def put_trace(self, key: str, trace: Trace) -> None:
        """Store a trace and all its nodes in one transaction: all of it or none of it.

        Raises:
            DuplicateTraceError: `key` is already stored; a resumed run skips `done_keys()`.
            StoreFullError: The disk is full. Nothing of this trace was written, the
                ledger is intact, and the run can be resumed once space is freed.
            ValueError: The trace's node ids do not rise along its node list.
        """
        _check_node_order(key, trace.nodes)
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # vars(usage), not usage.to_dict(): asdict deep-copies, a tenth of the put's time
                trace_id = conn.execute(_INSERT_TRACE, (
                    key, trace.problem_id, trace.strategy, json.dumps(trace.settings), trace.seed,
                    trace.difficulty, trace.chosen_answer, trace.correct, json.dumps(vars(trace.usage)),
                    trace.chosen_node, trace.stopped_by,
                )).lastrowid
                conn.executemany(_INSERT_NODE, (_node_row(trace_id, node) for node in trace.nodes))
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back by itself (it does on SQLITE_FULL).
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except sqlite3.IntegrityError as e:
            if "traces.key" in str(e):
                raise DuplicateTraceError(f"trace key {key!r} is already stored in {self.path}; "
                                          f"a resumed run skips RunStore.done_keys()") from e
            raise
        except (sqlite3.OperationalError, OSError) as e:
            if _is_disk_full(e):
                raise StoreFullError(f"the disk holding {self.path} is full (or its size limit is reached); "
                                     f"trace {key!r} was not written, the ledger is intact, and the run "
                                     f"can be resumed once space is freed ({e})") from e
            raise

    def done_keys(self) -> set[str]:
        """Keys of every trace stored, to skip on resume."""
        return {key for (key,) in self._conn.execute("SELECT key FROM traces")}

    def count_traces(self, strategy: str | None = None) -> int:
        if strategy is None:
            return self._conn.execute("SELECT count(*) FROM traces").fetchone()[0]
        return self._conn.execute("SELECT count(*) FROM traces WHERE strategy = ?", (strategy,)).fetchone()[0]

    def get_trace(self, key: str) -> Trace | None:
        """The trace stored under `key`, or None."""
        for _, trace in self._iter("WHERE t.key = ?", (key,)):
            return trace
        return None

    def iter_traces(self, strategy: str | None = None) -> Iterator[Trace]:
        """Stream the stored Traces in the order they were put, one trace in memory at a time."""
        for _, trace in self.iter_keyed(strategy):
            yield trace

    def iter_keyed(self, strategy: str | None = None, by_key: bool = False) -> Iterator[tuple[str, Trace]]:
        """Like `iter_traces`, with each trace's key; `by_key`: in the order of their keys, which does not
        depend on which search of a run happened to finish first (training sets are built in this order)."""
        if strategy is None:
            return self._iter("", (), by_key)
        return self._iter("WHERE t.strategy = ?", (strategy,), by_key)

    def _iter(self, where: str, params: tuple, by_key: bool = False) -> Iterator[tuple[str, Trace]]:
        old = self._conn.execute("PRAGMA user_version").fetchone()[0] < 2  # a ledger read as it was written
        query = _SELECT.format(where=where, stopped_by="NULL" if old else "t.stopped_by",
                               order="t.key" if by_key else "t.id")
        cursor = self._conn.execute(query, params)
        try:
            current, key, trace = None, None, None
            for row in cursor:
                if row[0] != current:
                    if trace is not None:
                        yield key, trace
                    current, key = row[0], row[1]
                    trace = Trace(problem_id=row[2], strategy=row[3], settings=json.loads(row[4]), seed=row[5],
                                  difficulty=row[6], chosen_answer=row[7],
                                  correct=None if row[8] is None else bool(row[8]),
                                  usage=Usage.from_dict(json.loads(row[9])), chosen_node=row[20], stopped_by=row[21])
                if row[10] is not None:  # NULL node columns: a trace with no nodes
                    trace.nodes.append(Node(
                        id=row[10], parent=row[11], text=row[12], num_tokens=row[13], logprob=row[14],
                        scores=json.loads(row[15]) if row[15] is not None else {}, terminal=bool(row[16]),
                        finish_reason=row[17], answer=row[18], correct=None if row[19] is None else bool(row[19]),
                    ))
            if trace is not None:
                yield key, trace
        finally:
            cursor.close()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"
