"""Search traces as training sets, in the formats TRL documents.

    thinkscale export RUN_DIR --as sft          # prompt / completion: verified solutions
    thinkscale export RUN_DIR --as preference   # prompt / chosen / rejected
    thinkscale export RUN_DIR --as steps        # prompt / completions / labels: step supervision

    rows = training_set(run_dir, "preference", max_per_problem=4)   # the same rows, as dicts

If an answer is right, the whole search behind it is training data:
- **sft**: each verified solution, as `prompt`/`completion` (or chat `messages`),
  deduplicated per problem and capped at `max_per_problem`;
- **preference**: a verified solution against a wrong one of the same problem
  (`kind: "solution"`), and from step search a step whose subtree reached a
  verified answer against a sibling whose subtree did not (`kind: "step"`,
  the prompt then holds the path before the two steps);
- **steps**: each path from the root to a finished solution as `completions`
  (its steps) and `labels` (whether each step's subtree reached a verified
  answer). The search tree is the Monte-Carlo estimate: no extra rollouts.

Every row carries its provenance (`run`, `strategy` label, `seed`,
`problem_id`). Only graded traces count (the runner grades each one). No
problem of a held-out split ever enters a training set: each trace's prompt
is checked by its content against the task's test split (`Task.held_out`),
whatever its id says, and the export refuses a run that holds one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from thinkscale.export import export_format, write_rows
from thinkscale.store import RunStore
from thinkscale.tasks.base import Task
from thinkscale.trace import Node, Trace

KINDS = ("sft", "preference", "steps")


class HeldOutProblemError(ValueError):
    """A run holds problems of a held-out split, which no training set may contain."""


def subtree_success(trace: Trace) -> dict[int, bool]:
    """Whether each node's subtree (itself included) holds a finished solution the verifier accepted."""
    success = {n.id: bool(n.terminal and n.finished and n.correct) for n in trace.nodes}
    for node in reversed(trace.nodes):  # children come after their parents
        if success[node.id] and node.parent is not None:
            success[node.parent] = True
    return success


def sft_rows(trace: Trace, max_per_problem: int, chat: bool = False) -> Iterator[dict]:
    """Verified solutions of one trace, distinct, at most `max_per_problem`."""
    seen: set[str] = set()
    prompt = trace.root.text
    for node in trace.terminals():
        if not (node.finished and node.correct) or len(seen) >= max_per_problem:
            continue
        completion = trace.solution(node.id)
        if completion in seen:
            continue
        seen.add(completion)
        if chat:
            yield {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}
        else:
            yield {"prompt": prompt, "completion": completion}


def preference_rows(trace: Trace, max_per_problem: int) -> Iterator[dict]:
    """Verified solutions against wrong ones, then good steps against failed siblings; at most
    `max_per_problem` pairs of each kind, every text used once.

    Every side closes a whole finished solution, since DPO trainers end each
    `chosen` and `rejected` with the end-of-sequence token (TRL's DPOTrainer
    does, with no option): a side that stopped mid-solution would teach the
    model to stop there. A step pair is therefore the two siblings each with a
    finished path beneath it (verified below the good step, wrong below the
    failed one), the prompt holding the path before them; siblings without
    one (a pruned step) make no pair.
    """
    right, wrong = [], []
    for node in trace.terminals():
        if not node.finished:
            continue  # cut off by the length limit: not a solution, right or wrong
        text = trace.solution(node.id)
        if node.correct:
            if text not in right:
                right.append(text)
        elif text not in wrong and text.strip():
            wrong.append(text)
    for chosen, rejected in list(zip(right, wrong))[:max_per_problem]:
        yield {"prompt": trace.root.text, "chosen": chosen, "rejected": rejected, "kind": "solution"}
    success = subtree_success(trace)
    children: dict[int, list[Node]] = {}
    for node in trace.nodes[1:]:
        children.setdefault(node.parent, []).append(node)
    finished = _finished_below(trace, children)
    pairs = 0
    for parent_id, kids in children.items():
        if parent_id == trace.root.id and all(k.terminal for k in kids):
            continue  # whole samples under the root: already paired as solutions
        good = [finished[k.id][True] for k in kids if success[k.id]]
        bad = [finished[k.id][False] for k in kids if not success[k.id] and finished[k.id][False] is not None]
        prefix = trace.solution(parent_id) if parent_id != trace.root.id else ""
        for chosen_id, rejected_id in zip(good, bad):
            chosen = trace.solution(chosen_id)[len(prefix):]
            rejected = trace.solution(rejected_id)[len(prefix):]
            if pairs >= max_per_problem or chosen == rejected:
                continue
            pairs += 1
            yield {"prompt": trace.root.text + prefix, "chosen": chosen, "rejected": rejected, "kind": "step"}


def _finished_below(trace: Trace, children: dict[int, list[Node]]) -> dict[int, dict[bool, int | None]]:
    """For each node, the first finished terminal beneath it (itself included) that verified, and one that did not."""
    below: dict[int, dict[bool, int | None]] = {}
    for node in reversed(trace.nodes):  # children come after their parents
        found: dict[bool, int | None] = {True: None, False: None}
        if node.terminal and node.finished:
            found[bool(node.correct)] = node.id
        for kid in children.get(node.id, []):
            for verdict in (True, False):
                if found[verdict] is None:
                    found[verdict] = below[kid.id][verdict]
        below[node.id] = found
    return below


def step_rows(trace: Trace, max_per_problem: int) -> Iterator[dict]:
    """Each path to a finished solution, its steps labelled by whether their subtrees reached a verified answer."""
    success = subtree_success(trace)
    seen: set[tuple[str, ...]] = set()
    for node in trace.terminals():
        if not node.finished or len(seen) >= max_per_problem:
            continue
        path = trace.path(node.id)
        steps = tuple(n.text for n in path)
        if steps in seen:
            continue
        seen.add(steps)
        yield {"prompt": trace.root.text, "completions": list(steps), "labels": [success[n.id] for n in path]}


def training_rows(store: RunStore, task: Task, kind: str, max_per_problem: int = 4, chat: bool = False,
                  run: str = "") -> Iterator[dict]:
    """The rows of one training set from every graded trace in `store`, with their provenance.

    Raises HeldOutProblemError (before yielding anything) if any trace's
    problem belongs to the task's held-out split.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown training set {kind!r}: expected one of {', '.join(KINDS)}")
    held_out = [key for key, trace in store.iter_keyed() if trace.nodes and task.held_out(trace.root.text)]
    if held_out:
        raise HeldOutProblemError(
            f"{len(held_out)} trace(s) in {store.path.parent} are of problems in {task.name}'s held-out test split "
            f"(by their content), e.g. {held_out[0]!r}; no training set may contain them. Export from a run "
            f"on the train split (`split: train` in its config).")
    for key, trace in store.iter_keyed(by_key=True):  # the same rows in the same order, however the run went
        if not trace.nodes or not any(n.correct is not None for n in trace.terminals()):
            continue  # ungraded
        label = key.split("/", 1)[0]
        provenance = {"run": run, "strategy": label, "seed": trace.seed, "problem_id": trace.problem_id}
        if kind == "sft":
            rows = sft_rows(trace, max_per_problem, chat)
        elif kind == "preference":
            rows = preference_rows(trace, max_per_problem)
        else:
            rows = step_rows(trace, max_per_problem)
        for row in rows:
            yield {**row, **provenance}


def export_training_set(run_dir: str | os.PathLike, out_path: str | os.PathLike, kind: str,
                        format: str | None = None, max_per_problem: int = 4, chat: bool = False) -> int:
    """Write one training set of the run in `run_dir` to `out_path` (JSONL or Parquet); returns its rows."""
    from thinkscale.config import RunConfig
    from thinkscale.tasks import get_task

    format = export_format(out_path, format)
    with RunStore.read(run_dir) as store:
        config = RunConfig.from_dict(store.config, source=str(store.path))
        task = get_task(config.task)
        rows = training_rows(store, task, kind, max_per_problem, chat, run=str(Path(run_dir)))
        return write_rows(rows, out_path, format)
