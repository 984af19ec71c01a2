"""Exports of a run's traces: one row per node or one per solution, as Parquet or JSONL.

    thinkscale export runs/arith --format parquet --rows solution
    export("runs/arith", "arith.parquet", format="parquet", rows="solution")

Rows stream from the ledger (store.py) one trace at a time, so a run of
millions of samples exports in flat memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from thinkscale.store import RunStore
from thinkscale.trace import Trace

__all__ = ["export", "export_format", "write_rows"]


_TRACE_FIELDS = ("key", "problem_id", "strategy", "seed", "difficulty")


def _trace_fields(key: str, trace: Trace) -> dict:
    return {"key": key, "problem_id": trace.problem_id, "strategy": trace.strategy, "seed": trace.seed,
            "difficulty": trace.difficulty}


def _node_rows(key: str, trace: Trace) -> Iterator[dict]:
    base = _trace_fields(key, trace)
    for n in trace.nodes:
        yield {**base, "node_id": n.id, "parent": n.parent, "text": n.text, "num_tokens": n.num_tokens,
               "logprob": n.logprob, "scores": n.scores, "terminal": n.terminal,
               "finish_reason": n.finish_reason, "answer": n.answer, "correct": n.correct}


def _solution_rows(key: str, trace: Trace) -> Iterator[dict]:
    """Each terminal node with its whole solution: the texts from the root's child down to it."""
    base = _trace_fields(key, trace)
    for node in trace.nodes:
        if not node.terminal:
            continue
        path = trace.path(node.id)  # the root holds the prompt, not a step
        logprobs = [p.logprob for p in path]
        yield {**base, "node_id": node.id, "depth": len(path), "prompt": trace.root.text,
               "text": "".join(p.text for p in path), "answer": node.answer, "correct": node.correct,
               "finish_reason": node.finish_reason, "num_tokens": sum(p.num_tokens for p in path),
               "logprob": None if None in logprobs else float(sum(logprobs)), "scores": node.scores,
               "chosen": node.id == trace.chosen_node}


def _arrow_schema(rows: str):
    import pyarrow as pa

    head = [("key", pa.string()), ("problem_id", pa.string()), ("strategy", pa.string()),
            ("seed", pa.int64()), ("difficulty", pa.int64()), ("node_id", pa.int64())]
    if rows == "node":
        tail = [("parent", pa.int64()), ("text", pa.string()), ("num_tokens", pa.int64()),
                ("logprob", pa.float64()), ("scores", pa.string()), ("terminal", pa.bool_()),
                ("finish_reason", pa.string()), ("answer", pa.string()), ("correct", pa.bool_())]
    else:
        tail = [("depth", pa.int64()), ("prompt", pa.string()), ("text", pa.string()), ("answer", pa.string()),
                ("correct", pa.bool_()), ("finish_reason", pa.string()), ("num_tokens", pa.int64()),
                ("logprob", pa.float64()), ("scores", pa.string()), ("chosen", pa.bool_())]
    return pa.schema(head + tail)


def export(run_dir_or_store: str | os.PathLike | RunStore, out_path: str | os.PathLike,
           format: str | None = None, rows: str = "node", strategy: str | None = None,
           batch_rows: int = 10_000) -> int:
    """Write a run's traces as Parquet or JSONL, streaming; returns the number of rows written.

    Args:
        run_dir_or_store: A run directory, or an open RunStore.
        out_path: The file to write; it appears whole (written beside it, then renamed).
        format: "parquet" or "jsonl"; None picks it from out_path's suffix.
        rows: "node": one row per node, with its trace's key, problem_id, strategy,
            seed and difficulty. "solution": one row per terminal node, with `text` the
            concatenated texts of its path from the root's child down, `prompt` the
            root's text, `num_tokens` summed along the path, `logprob` summed (None if
            any step lacks one), and the trace fields.
        strategy: Export only this strategy's traces.
        batch_rows: Rows per Parquet row group.

    `scores` is a JSON object in JSONL and its JSON text in Parquet (a string
    column loads everywhere; scorer names differ between runs).
    """
    if rows not in ("node", "solution"):
        raise ValueError(f"unknown export rows {rows!r}: expected 'node' or 'solution'")
    make_rows = _node_rows if rows == "node" else _solution_rows
    format = export_format(out_path, format)
    owned = not isinstance(run_dir_or_store, RunStore)
    store = RunStore.read(run_dir_or_store) if owned else run_dir_or_store

    def stream() -> Iterator[dict]:
        for key, trace in store.iter_keyed(strategy):
            for row in make_rows(key, trace):
                if format == "parquet":
                    row["scores"] = json.dumps(row["scores"])
                yield row

    try:
        return write_rows(stream(), out_path, format, _arrow_schema(rows) if format == "parquet" else None,
                          batch_rows)
    finally:
        if owned:
            store.close()


def export_format(out_path: str | os.PathLike, format: str | None) -> str:
    """'parquet' or 'jsonl': as given, or from the file's suffix."""
    if format is None:
        format = {".parquet": "parquet", ".jsonl": "jsonl"}.get(Path(out_path).suffix)
        if format is None:
            raise ValueError(f"cannot tell the export format from {Path(out_path).name!r}: "
                             f"pass format='parquet' or 'jsonl'")
    if format not in ("parquet", "jsonl"):
        raise ValueError(f"unknown export format {format!r}: expected 'parquet' or 'jsonl'")
    return format


def write_rows(rows: Iterable[dict], out_path: str | os.PathLike, format: str, schema: Any = None,
               batch_rows: int = 10_000) -> int:
    """Stream `rows` into a JSONL or Parquet file that appears whole (written beside it, then renamed).

    Parquet takes `schema` (a pyarrow schema), or the schema of the first batch.
    Returns the number of rows written.
    """
    out_path = Path(out_path)
    if format == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("exporting Parquet needs pyarrow: pip install pyarrow") from e
    partial = out_path.with_name(out_path.name + ".partial")
    written = 0
    try:
        if format == "jsonl":
            with open(partial, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False))
                    f.write("\n")
                    written += 1
        else:
            writer = None
            try:
                for batch in _batches(rows, batch_rows):
                    table = pa.Table.from_pylist(batch, schema=schema)
                    if writer is None:
                        schema = table.schema
                        writer = pq.ParquetWriter(partial, schema)
                    writer.write_table(table)
                    written += len(batch)
                if writer is None:
                    if schema is None:
                        raise ValueError(f"nothing to write to {out_path}: no rows, so no Parquet schema")
                    writer = pq.ParquetWriter(partial, schema)
                    writer.write_table(pa.Table.from_pylist([], schema=schema))
            finally:
                if writer is not None:
                    writer.close()
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    return written


def _batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
