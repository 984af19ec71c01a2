"""The label file behind a reward model: made once, reused while its settings match.

`thinkscale train prm|orm` labels the policy's own solutions to train-split
problems (slow: rollouts), writes them to a JSONL file and its settings to a
`.meta.json` beside it. A later run with the same settings reuses the file;
one with other settings is refused by name, so a reward model is never
trained on labels made some other way without saying so.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from thinkscale.tasks.base import Task
from thinkscale.training.step_labels import (
    StepLabels,
    label_outcomes,
    label_steps,
    read_jsonl,
    write_jsonl,
)


def label_settings(kind: str, problems: int, samples: int, rollouts: int, policy: str, completer: str | None,
                   seed: int) -> dict[str, Any]:
    """What a label file is made with; a file is reused only when these match."""
    if rollouts < 0:
        raise ValueError(f"rollouts must be 0 (each step valued by its solution's verdict) or more, not {rollouts}")
    info = {"kind": kind, "problems": problems, "samples": samples, "rollouts": rollouts, "split": "train",
            "policy": policy, "seed": seed}
    if kind == "prm":
        info["completer"] = completer or policy
    return info


def reward_labels(task: Task, labels_path: Path, info: dict[str, Any], threads: int = 1,
                  relabel: bool = False) -> tuple[list[StepLabels], dict[str, Any]]:
    """The label records for `info` (see `label_settings`): reused from `labels_path`, or made and written there.

    Returns the records and the settings to record with the model (with the
    labelling time when they were made now). Raises ValueError if the file was
    made with other settings.
    """
    from tqdm import tqdm

    from thinkscale.policies.tiny import TinyPolicy

    meta_path = labels_path.with_name(labels_path.name + ".meta.json")
    if labels_path.exists() and not relabel:
        made_with = json.loads(meta_path.read_text()) if meta_path.exists() else None
        if made_with and info["kind"] == "prm":  # label files from before --completer were made by the policy
            made_with.setdefault("completer", made_with.get("policy"))
        if made_with is None:
            print(f"warning: {meta_path} is missing, so {labels_path} cannot be checked against these settings")
        differ = {k: (made_with.get(k), v) for k, v in info.items() if made_with.get(k) != v} if made_with else {}
        if differ:
            raise ValueError(f"{labels_path} was made with other settings ("
                             + ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in differ.items())
                             + "); pass --relabel to redo it or --labels for another file")
        records = read_jsonl(labels_path)
        print(f"reusing {len(records)} label records from {labels_path} (--relabel to redo them)")
        return records, info
    started = time.perf_counter()
    # Labels come from the train split only: the reward model is judged on the test split.
    examples = task.examples("train", info["problems"], seed=info["seed"])
    policy = TinyPolicy(info["policy"], threads=threads)
    kind, rollouts = info["kind"], info["rollouts"]
    desc = f"step labels ({rollouts} rollouts a step)" if kind == "prm" else "outcome labels"
    with tqdm(total=len(examples), desc=desc, unit="problem") as bar:
        if kind == "prm":
            completer = None if info["completer"] == info["policy"] else TinyPolicy(info["completer"], threads=threads)
            job = label_steps(task, policy, examples, samples=info["samples"], rollouts=rollouts, seed=info["seed"],
                              on_done=lambda _: bar.update(1), completer=completer)
        else:
            job = label_outcomes(task, policy, examples, samples=info["samples"], seed=info["seed"],
                                 on_done=lambda _: bar.update(1))
        records = asyncio.run(job)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(records, labels_path)
    meta_path.write_text(json.dumps(info, indent=1))
    info = {**info, "seconds": round(time.perf_counter() - started, 1)}
    print(f"wrote {len(records)} label records to {labels_path} in {info['seconds']:.0f} s")
    return records, info
