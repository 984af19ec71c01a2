"""Expert iteration: the policy and its PRM learn from their own verified search (the flywheel).

    thinkscale improve examples/improve.yaml     # resumable: kill it in any round, run it again
    rounds = improve(load_improve_config("examples/improve.yaml"))

Each round:
1. **search** a fresh draw of train-split problems with the current policy
   and PRM (`search.strategy`; by default PRM beam search at 16 samples'
   worth) and grade every attempt with the task's verifier. The task's reference solutions are never
   read: only the problems and their verifier;
2. **keep** the verified solutions (distinct, at most `finetune.max_per_problem`
   a problem: `training.sets.sft_rows`) and **fine-tune** the policy on them,
   continuing from the current policy or restarting from the first one
   (`finetune.start`);
3. **refresh the PRM**: the new policy searches another draw of train problems
   (`refresh.strategy`, PRM beam search by default). Every step on a path to a
   finished solution is labelled by whether its subtree reached a verified
   answer (`training.sets.step_rows`: the tree is the Monte-Carlo estimate, no
   extra rollouts), and the PRM continues training on those labels;
4. **evaluate** on the test split: pass@1, majority@N and pass@N of N samples
   at temperature 1, PRM beam search at `evaluate.beam` and PRM best-of-N at
   `evaluate.best_of` (the PRM alone as the verifier). A config whose
   training draws share a problem with the test set is refused. With
   `evaluate.split: train` the evaluation set is a dev set (where recipes are
   chosen), and every training draw leaves its problems out.

Round 0 evaluates the starting policy and PRM. A round that keeps no verified
solution is reported as empty and leaves the policy as it was.

`method: grpo` replaces steps 1 and 2 with reinforcement learning
(training/rl.py): GRPO on a fresh draw of train problems, rewarded by the
verifier or by each group's majority answer (TTRL), with a KL to the round's
starting policy; the PRM refresh and the evaluation are the same.

Everything a round makes stays under OUTPUT/round-R/: the ledgers of its
searches (`search/`, `trees/`, `eval/`), its checkpoints (`policy/`, `prm/`),
what each phase took (`phases.json`) and `metrics.json`. A checkpoint is
trained into `NAME.partial/` and renamed into place, so a killed run never
leaves half of one; a rerun resumes the ledgers and skips every finished phase.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from thinkscale.analysis.plot import plot_rounds
from thinkscale.analysis.report import summarize
from thinkscale.budget import forward_flops_per_token
from thinkscale.config import (
    RunConfig,
    ScorerConfig,
    StrategyConfig,
    _at_least,
    _checked,
    _positive,
    _registered,
    check_strategy,
)
from thinkscale.runner import execute_run
from thinkscale.scorers.reward_head import REWARD_META
from thinkscale.store import RunStore
from thinkscale.tasks import TASKS, get_task
from thinkscale.tasks.base import Task
from thinkscale.tiny import checkpoint
from thinkscale.tiny.model import TinyConfig
from thinkscale.training.policy import TrainSettings, finetune_policy
from thinkscale.training.reward import train_prm
from thinkscale.training.rl import RLSettings, train_grpo
from thinkscale.training.sets import training_rows
from thinkscale.training.step_labels import StepLabels
from thinkscale.typed_yaml import Source, build_dataclass, read_config_file, read_yaml, show

CONFIG_FILE = "improve.json"

# Problem draws of the train split: round R searches draw `seed * 1000 + 10 * R + phase`.
_SEARCH_DRAW, _TREES_DRAW = 1, 2


def _prm_beam() -> StrategyConfig:
    return StrategyConfig(name="beam_search", settings={"n": 16, "width": 4, "aggregation": "min",
                                                        "choose": "weighted"}, scorer=ScorerConfig(name="prm"))


@dataclass(frozen=True)
class SearchPhase:
    """How a round searches the train split for solutions to learn from."""

    problems: int = _checked(_at_least(1), default=2000)
    strategy: StrategyConfig = field(default_factory=_prm_beam)  # a "prm" scorer gets the current PRM


@dataclass(frozen=True)
class FinetunePhase:
    """How the policy learns the kept solutions."""

    steps: int = _checked(_at_least(1), default=150)
    batch_size: int = _checked(_at_least(1), default=64)
    lr: float = _checked(_positive, default=1e-3)
    warmup_steps: int = _checked(_at_least(0), default=20)
    start: Literal["continue", "base"] = "continue"  # from the current policy, or from the first one
    max_per_problem: int = _checked(_at_least(1), default=4)


@dataclass(frozen=True)
class RLPhase:
    """How `method: grpo` learns (training/rl.py): `search.problems` is the draw it cycles through."""

    steps: int = _checked(_at_least(1), default=100)
    prompts: int = _checked(_at_least(1), default=16)  # problems a step
    group: int = _checked(_at_least(2), default=8)  # samples a problem
    lr: float = _checked(_positive, default=1e-4)
    kl: float = _checked(_at_least(0), default=0.02)  # weight of the KL to the round's starting policy
    reward: Literal["verifier", "majority"] = "verifier"  # majority: TTRL, no verifier


@dataclass(frozen=True)
class RefreshPhase:
    """How the PRM learns from the new policy's own search trees."""

    problems: int = _checked(_at_least(1), default=300)
    strategy: StrategyConfig = field(default_factory=_prm_beam)  # a "prm" scorer gets the current PRM
    max_per_problem: int = _checked(_at_least(1), default=8)
    steps: int = _checked(_at_least(1), default=150)  # at most; and at most `epochs` passes over the paths
    epochs: float = _checked(_positive, default=2.0)
    batch_size: int = _checked(_at_least(1), default=64)
    lr: float = _checked(_positive, default=1e-4)
    # which failed steps the PRM unlearns (training/reward.py): hard, the first step valued 0; soft, every step
    # valued below 1/2. A search tree's labels are 0 or 1 (did the step's subtree reach a verified answer), so
    # soft unlearns every step whose subtree did not: the errors after the first one too
    target: Literal["hard", "soft"] = "hard"
    # which tokens of a failed step a likelihood-head PRM pushes down: its weakest, or every one (training/reward.py)
    unlearn: Literal["weakest", "every"] = "weakest"


@dataclass(frozen=True)
class EvaluatePhase:
    """What each round is measured on. `split: train` with its own `problem_seed` is a dev set."""

    split: Literal["train", "test"] = "test"
    problems: int = _checked(_at_least(1), default=200)
    problem_seed: int = 0
    samples: int = _checked(_at_least(1), default=64)
    beam: int = _checked(_at_least(0), default=16)  # PRM beam search at this many samples' worth; 0: none
    best_of: int = _checked(_at_least(0), default=0)  # PRM best-of-N at this N (the PRM as a verifier); 0: none


@dataclass(frozen=True, kw_only=True)
class ImproveConfig:
    """Rounds of expert iteration on one task (see the module's docstring)."""

    task: str = _checked(_registered(TASKS))
    output: str = _checked(lambda v: None if v.strip() else "must not be empty")
    rounds: int = _checked(_at_least(1), default=3)
    method: Literal["expert_iteration", "grpo"] = "expert_iteration"
    policy: str | None = None  # a checkpoint (shipped name or directory); default: the task's shipped policy
    prm: str | None = None  # default: the task's shipped PRM, if any (none: no refresh, no beam search)
    seed: int = 0
    threads: int = _checked(_at_least(1), default=1)
    search: SearchPhase = field(default_factory=SearchPhase)
    finetune: FinetunePhase = field(default_factory=FinetunePhase)
    rl: RLPhase = field(default_factory=RLPhase)  # method: grpo
    refresh: RefreshPhase | None = field(default_factory=RefreshPhase)
    evaluate: EvaluatePhase = field(default_factory=EvaluatePhase)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> ImproveConfig:
        return _build(data, Source(source, {}))


def _build(data: Any, source: Source) -> ImproveConfig:
    if not isinstance(data, dict):
        raise source.error((), f"expected a mapping at the top level (task:, output:, rounds:, ...), got {show(data)}")
    config: ImproveConfig = build_dataclass(ImproveConfig, data, (), source)
    search = dataclasses.replace(config.search, strategy=check_strategy(config.search.strategy,
                                                                        ("search", "strategy"), source))
    refresh = config.refresh
    if refresh is not None:
        refresh = dataclasses.replace(refresh, strategy=check_strategy(refresh.strategy, ("refresh", "strategy"),
                                                                       source))
    task = config.task
    for key, name in (("policy", config.policy or task), ("prm", config.prm)):
        if name is None:
            continue
        try:
            checkpoint.resolve(name)
        except ValueError as e:
            raise source.error((key,), str(e)) from None
    if config.prm is not None:
        meta = _check_reward_model(config.prm, task, lambda message: source.error(("prm",), message))
        if refresh is not None and refresh.unlearn != "weakest" and meta.get("head") == "verdict":
            raise source.error(("refresh", "unlearn"), f"{config.prm!r} has a verdict head, and only a likelihood "
                                                       "head unlearns tokens: leave unlearn out or name another PRM")
    return dataclasses.replace(config, search=search, refresh=refresh)


def _check_reward_model(name: str, task: str, error: Callable[[str], Exception]) -> dict:
    """The reward model's metadata; an error if it is not a PRM made for `task`."""
    path = checkpoint.resolve(name) / REWARD_META
    if not path.exists():
        raise error(f"{name!r} is not a reward model (it has no {REWARD_META}); name a PRM, such as {task}-prm")
    meta = json.loads(path.read_text())
    if meta.get("task") != task or meta.get("kind") != "prm":
        raise error(f"{name!r} is a {meta.get('kind')} made for the task {meta.get('task')!r}, "
                    f"not a PRM for {task!r}")
    return meta


def parse_improve_config(text: str, source: str = "<config>") -> ImproveConfig:
    where = Source(str(source), {})
    return _build(read_yaml(text, where), where)


def load_improve_config(path: str | Path) -> ImproveConfig:
    """Read and check an improve config; every error names the file, the line and the key."""
    return parse_improve_config(read_config_file(path), str(path))


# -- the rounds ------------------------------------------------------------------

class ImproveError(ValueError):
    """An improve run that cannot go on as configured (its message says why and what to do)."""


def _draw(config: ImproveConfig, round_: int, phase: int) -> int:
    return config.seed * 1000 + 10 * round_ + phase


def check_disjoint(task: Task, config: ImproveConfig) -> None:
    """Refuse a config whose training draws share a problem with its test set, judged by content.

    A dev set (`evaluate.split: train`) is drawn from the same split as the
    training problems: it is kept apart by leaving its problems out of every
    training draw instead (`dev_prompts`).
    """
    if config.evaluate.split != "test":
        return
    evaluated = _evaluated(task, config)
    for round_ in range(1, config.rounds + 1):
        draws = [(_SEARCH_DRAW, config.search.problems)]
        if config.refresh is not None:
            draws.append((_TREES_DRAW, config.refresh.problems))
        for phase, count in draws:
            shared = [e for e in task.examples("train", count, seed=_draw(config, round_, phase))
                      if e.problem.prompt in evaluated]
            if shared:
                raise ImproveError(
                    f"round {round_} would train on {len(shared)} problem(s) of {task.name}'s test set "
                    f"(problem_seed {config.evaluate.problem_seed}), e.g. {shared[0].problem.prompt[:60]!r}: "
                    f"the task's train and test splits overlap, and no test problem may enter training")


def _evaluated(task: Task, config: ImproveConfig) -> frozenset[str]:
    e = config.evaluate
    return frozenset(x.problem.prompt for x in task.examples(e.split, e.problems, seed=e.problem_seed))


def dev_prompts(task: Task, config: ImproveConfig) -> frozenset[str]:
    """The problems every training draw leaves out: the dev set, when the evaluation is on the train split."""
    return _evaluated(task, config) if config.evaluate.split == "train" else frozenset()


def _policy(path: str, threads: int) -> dict:
    return {"name": "tiny", "options": {"checkpoint_name": path, "threads": threads}}


def _with_prm(strategy: StrategyConfig, prm: str | None) -> dict:
    """The strategy as config values; a "prm" scorer gets the current PRM."""
    data = dataclasses.asdict(strategy)
    if strategy.scorer is not None and strategy.scorer.name == "prm":
        if prm is None:
            raise ImproveError(f"the {strategy.name} search needs a PRM, and this run has none: set `prm:`")
        data["scorer"]["options"] = {**data["scorer"]["options"], "checkpoint_name": prm}
    return data


def _search(config: ImproveConfig, out: Path, split: str, problems: int, problem_seed: int, policy: str,
            strategies: list[dict], progress: bool, exclude: frozenset[str] = frozenset()) -> Path:
    run = RunConfig.from_dict({"task": config.task, "split": split, "problems": problems,
                               "problem_seed": problem_seed, "seeds": [config.seed], "output": str(out),
                               "policy": _policy(policy, config.threads), "strategies": strategies},
                              source=f"improve: {out}")
    return execute_run(run, progress=progress, exclude=exclude)


def evaluate(config: ImproveConfig, out: Path, policy: str, prm: str | None, progress: bool = True) -> dict:
    """pass@1, majority@N, pass@N, PRM beam-search and PRM best-of-N accuracy of `policy` on the evaluation set."""
    task = get_task(config.task)
    e = config.evaluate
    strategies = [{"name": "repeated_sampling", "label": "sample", "settings": {"n": e.samples, "temperature": 1.0}}]
    beam, best = f"beam@{e.beam}", f"prm-best@{e.best_of}"
    if e.beam and prm is not None:
        strategies.append(_with_prm(StrategyConfig(name="beam_search", label=beam, settings={
            "n": e.beam, "width": min(4, e.beam), "aggregation": "min", "choose": "weighted"},
            scorer=ScorerConfig(name="prm")), prm))
    if e.best_of and prm is not None:
        strategies.append(_with_prm(StrategyConfig(name="best_of_n", label=best, settings={
            "n": e.best_of, "temperature": 1.0, "aggregation": "min"}, scorer=ScorerConfig(name="prm")), prm))
    _search(config, out, e.split, e.problems, e.problem_seed, policy, strategies, progress)
    with RunStore.read(out) as store:
        sampled = summarize((t for k, t in store.iter_keyed() if k.startswith("sample/")), votable=task.votable)
        chosen = {label: [t.correct for k, t in store.iter_keyed() if k.startswith(label + "/")]
                  for label in (beam, best)}
    everything = sampled["groups"]["all"]
    metrics = {"pass@1": everything["pass_at_k"][0], f"pass@{e.samples}": everything["pass_at_k"][-1],
               f"majority@{e.samples}": everything["majority_at_k"][-1] if task.votable else None}
    for label, size in ((beam, e.beam), (best, e.best_of)):
        if size:
            right = chosen[label]
            metrics[label] = round(sum(map(bool, right)) / len(right), 4) if right else None
    return metrics


def training_flops(checkpoint_dir: str | Path) -> float:
    """What training a checkpoint cost: forward and backward, 3x the forward FLOPs of the tokens it trained on."""
    path = Path(checkpoint_dir)
    config = json.loads((path / "config.json").read_text())
    tokens = json.loads((path / "training.json").read_text()).get("tokens", 0)
    shape = TinyConfig.from_hf(config)
    return 3 * forward_flops_per_token(shape.num_parameters(), shape.vocab_size * shape.hidden_size) * tokens


def search_flops(run_dir: str | Path) -> float:
    """The FLOPs every trace of a run spent (policy and scorer)."""
    with RunStore.read(run_dir) as store:
        return sum(t.usage.flops for t in store.iter_traces())


def _timed(phases: dict, name: str, path: Path, work: Callable[[], Any]) -> Any:
    """Run one phase and record its wall time in `path` (phases.json)."""
    t0 = time.perf_counter()
    result = work()
    phases[name] = round(time.perf_counter() - t0, 1)
    path.write_text(json.dumps(phases, indent=1))
    return result


def _train_into(target: Path, train: Callable[[Path], Any]) -> None:
    """Train a checkpoint into TARGET.partial and rename it into place (a killed run leaves no half checkpoint)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    train(partial)
    partial.rename(target)


def _claim(out: Path, config: ImproveConfig, fresh: bool) -> None:
    """Own OUTPUT for this config; another config's run there is refused (or moved aside with `fresh`).

    Only the number of rounds may grow: more rounds continue the run from its last one. A config saved
    before a setting existed is read with that setting's default."""
    saved = out / CONFIG_FILE
    data = config.to_dict()
    if saved.exists():
        before = json.loads(saved.read_text())
        try:
            before = ImproveConfig.from_dict(before, source=str(saved)).to_dict()
        except ValueError:
            pass  # not a config this version reads: it differs, and is reported as it is
        if {**before, "rounds": data["rounds"]} != data or data["rounds"] < before.get("rounds", 0):
            if not fresh:
                changed = sorted(k for k in set(before) | set(data) if before.get(k) != data.get(k))
                raise ImproveError(f"{out} holds an improve run with another config (differing: {', '.join(changed)}); "
                                   f"use the same config to resume it, another output, or --fresh "
                                   f"(the old run is moved aside, not deleted)")
            out.rename(out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(data, indent=1))


def improve(config: ImproveConfig, progress: bool = True, fresh: bool = False,
            log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) every round; returns one metrics row per round, round 0 first."""
    task = get_task(config.task)
    out = Path(config.output)
    check_disjoint(task, config)
    _claim(out, config, fresh)
    first_policy = str(checkpoint.resolve(config.policy or task.name))
    prm_name = config.prm or (f"{task.name}-prm" if f"{task.name}-prm" in checkpoint.shipped_names() else None)
    prm = str(checkpoint.resolve(prm_name)) if prm_name else None
    if prm is not None:
        _check_reward_model(prm, task.name, ImproveError)
    rows = [_round_zero(config, out / "round-0", first_policy, prm, progress, log)]
    for round_ in range(1, config.rounds + 1):
        rows.append(_round(config, task, round_, out / f"round-{round_}", rows[-1]["policy"], rows[-1]["prm"],
                           first_policy, progress, log))
    (out / "rounds.json").write_text(json.dumps(rows, indent=1))
    log(format_rounds(rows, f"{config.method} on {task.name}: {config.evaluate.split} split, "
                            f"{config.evaluate.problems} problems (problem seed {config.evaluate.problem_seed})"))
    metrics = [k for k in rows[0]["eval"] if any(r["eval"].get(k) is not None for r in rows)]
    plot = plot_rounds(out / "improve.png", [r["round"] for r in rows],
                       {k: [r["eval"].get(k) for r in rows] for k in metrics},
                       f"{task.name}: {config.method}, {config.evaluate.split} split")
    log(f"plot: {plot}")
    return rows


def _done(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _round_zero(config: ImproveConfig, rd: Path, policy: str, prm: str | None, progress: bool,
                log: Callable[[str], None]) -> dict:
    row = _done(rd / "metrics.json")
    if row is None:
        log("round 0: evaluating the starting policy")
        t0 = time.perf_counter()
        row = {"round": 0, "policy": policy, "prm": prm, "eval": evaluate(config, rd / "eval", policy, prm, progress),
               "seconds": {"evaluate": round(time.perf_counter() - t0, 1)}}
        (rd / "metrics.json").write_text(json.dumps(row, indent=1))
    return row


def _round(config: ImproveConfig, task: Task, round_: int, rd: Path, policy: str, prm: str | None,
           first_policy: str, progress: bool, log: Callable[[str], None]) -> dict:
    row = _done(rd / "metrics.json")
    if row is not None:
        return row
    rd.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = _done(rd / "phases.json") or {}
    timing = rd / "phases.json"
    learn = _expert_iteration if config.method == "expert_iteration" else _grpo
    row, policy_now = learn(config, task, round_, rd, policy, prm, first_policy, phases, timing, progress, log)
    prm_now = prm
    if config.refresh is not None and prm is not None and policy_now != policy:
        prm_now, row["prm_records"] = _refresh(config, task, round_, rd, policy_now, prm, phases, timing, progress,
                                               log)
    row["flops"].update(trees=search_flops(rd / "trees") if (rd / "trees").exists() else 0.0,
                        refresh=training_flops(rd / "prm") if (rd / "prm").exists() else 0.0)
    log(f"round {round_}: evaluating")
    row["eval"] = _timed(phases, "evaluate", timing, lambda: evaluate(config, rd / "eval", policy_now, prm_now,
                                                                       progress))
    row.update(policy=policy_now, prm=prm_now, seconds=phases)
    (rd / "metrics.json").write_text(json.dumps(row, indent=1))
    return row


def _expert_iteration(config: ImproveConfig, task: Task, round_: int, rd: Path, policy: str, prm: str | None,
                      first_policy: str, phases: dict, timing: Path, progress: bool,
                      log: Callable[[str], None]) -> tuple[dict, str]:
    """Search, keep the verified solutions, fine-tune on them; returns the round's row so far and the policy."""
    log(f"round {round_}: searching {config.search.problems} train problems")
    search = _timed(phases, "search", timing, lambda: _search(
        config, rd / "search", "train", config.search.problems, _draw(config, round_, _SEARCH_DRAW), policy,
        [_with_prm(config.search.strategy, prm)], progress, dev_prompts(task, config)))
    with RunStore.read(search) as store:
        attempts = verified = searched = 0
        for trace in store.iter_traces():
            searched += 1
            for node in trace.terminals():
                attempts += 1
                verified += bool(node.finished and node.correct)
        kept = [(r["prompt"], r["completion"]) for r in training_rows(
            store, task, "sft", config.finetune.max_per_problem, run=str(search))]
    solved = len({p for p, _ in kept})
    row = {"round": round_, "searched": searched, "attempts": attempts, "verified": verified,
           "kept": len(kept), "problems_solved": solved, "empty": not kept, "prm_records": 0}
    new_policy = rd / "policy"
    if not kept:
        log(f"round {round_}: empty: no verified solution among {attempts} attempts; the policy stays as it was")
        row["flops"] = {"search": search_flops(search)}
        return row, policy
    log(f"round {round_}: {verified} of {attempts} attempts verified; fine-tuning on {len(kept)} "
        f"distinct solutions of {solved} problems")
    f = config.finetune
    settings = TrainSettings(steps=f.steps, batch_size=f.batch_size, lr=f.lr, warmup_steps=f.warmup_steps,
                             seed=config.seed + round_, threads=config.threads)
    init = policy if f.start == "continue" else first_policy
    if not new_policy.exists():
        _timed(phases, "finetune", timing, lambda: _train_into(new_policy, lambda to: finetune_policy(
            init, kept, to, settings, progress, about={"round": round_, "from_run": str(search)})))
    row["flops"] = {"search": search_flops(search), "finetune": training_flops(new_policy)}
    return row, str(new_policy)


def _grpo(config: ImproveConfig, task: Task, round_: int, rd: Path, policy: str, prm: str | None,
          first_policy: str, phases: dict, timing: Path, progress: bool,
          log: Callable[[str], None]) -> tuple[dict, str]:
    """GRPO on a fresh draw of train problems (training/rl.py); returns the round's row so far and the policy."""
    r = config.rl
    dev = dev_prompts(task, config)
    new_policy = rd / "policy"
    if not new_policy.exists():
        # drawing the problems is part of the round's time (countdown's 24,000 take over a minute)
        examples = _timed(phases, "draw", timing, lambda: [
            e for e in task.examples("train", config.search.problems, seed=_draw(config, round_, _SEARCH_DRAW))
            if e.problem.prompt not in dev])
        log(f"round {round_}: GRPO, {r.steps} steps of {r.prompts} problems x {r.group} samples "
            f"({r.reward} reward, KL {r.kl})")
        settings = RLSettings(steps=r.steps, prompts=r.prompts, group=r.group, lr=r.lr, kl=r.kl, reward=r.reward,
                              seed=config.seed + round_, threads=config.threads)
        init = policy if config.finetune.start == "continue" else first_policy
        _timed(phases, "grpo", timing, lambda: _train_into(new_policy, lambda to: train_grpo(
            init, task, examples, to, settings, progress, about={"round": round_})))
    summary = json.loads((new_policy / "training.json").read_text())
    rewards = [reward for _, reward in summary["reward_curve"]]
    # the last 5% of steps: the policy's pass rate near the round's end, on train problems it samples fresh (with
    # one pass over the draw, none seen before), tens of thousands of samples wide where a dev set has a few thousand
    end = rewards[-max(1, len(rewards) // 20):]
    row = {"round": round_, "searched": min(summary["problems"], r.steps * r.prompts),
           "attempts": r.steps * r.prompts * r.group, "verified": None, "kept": 0, "problems_solved": 0,
           "empty": False, "prm_records": 0,
           "reward": {"first": rewards[0], "last": rewards[-1], "mean": round(sum(rewards) / len(rewards), 4),
                      "end": round(sum(end) / len(end), 4)},
           "flops": {"grpo": summary["flops"]}}
    return row, str(new_policy)


def _refresh(config: ImproveConfig, task: Task, round_: int, rd: Path, policy: str, prm: str, phases: dict,
             timing: Path, progress: bool, log: Callable[[str], None]) -> tuple[str, int]:
    """Search with the new policy, label its tree's steps, continue training the PRM; returns (PRM, records)."""
    r = config.refresh
    assert r is not None
    log(f"round {round_}: the new policy searches {r.problems} train problems for the PRM's step labels")
    trees = _timed(phases, "trees", timing, lambda: _search(
        config, rd / "trees", "train", r.problems, _draw(config, round_, _TREES_DRAW), policy,
        [_with_prm(r.strategy, prm)], progress, dev_prompts(task, config)))
    with RunStore.read(trees) as store:
        records = [StepLabels(problem_id=row["problem_id"], prompt=row["prompt"], steps=row["completions"],
                              values=[float(x) for x in row["labels"]], labels=[int(x) for x in row["labels"]])
                   for row in training_rows(store, task, "steps", r.max_per_problem, run=str(trees))]
    if len(records) < r.batch_size:
        log(f"round {round_}: only {len(records)} labelled paths (a batch is {r.batch_size}); the PRM stays as it was")
        return prm, len(records)
    target = rd / "prm"
    if not target.exists():
        head = json.loads((Path(prm) / REWARD_META).read_text()).get("head", "likelihood")
        steps = max(1, min(r.steps, math.ceil(r.epochs * len(records) / r.batch_size)))
        settings = TrainSettings(steps=steps, batch_size=r.batch_size, lr=r.lr,
                                 warmup_steps=max(1, steps // 10), seed=config.seed + round_, threads=config.threads)
        info = {"source": "search trees", "run": str(trees), "policy": policy, "records": len(records),
                "strategy": r.strategy.name, "round": round_}
        log(f"round {round_}: refreshing the PRM on {len(records)} labelled paths")
        _timed(phases, "refresh", timing, lambda: _train_into(target, lambda to: train_prm(
            task.name, records, to, settings, init=prm, label_info=info, progress=progress, target=r.target,
            head=head, unlearn=r.unlearn)))
    return str(target), len(records)


def format_rounds(rows: list[dict], title: str) -> str:
    """One line per round: what it kept and what it measured."""
    metrics = [k for k in rows[0]["eval"] if any(r["eval"].get(k) is not None for r in rows)]
    head = f"{'round':>5} {'kept':>6} {'solved':>6} " + " ".join(f"{m:>12}" for m in metrics) + f" {'minutes':>8}"
    lines = [title, head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r['eval'][m]:>12.3f}" if r["eval"].get(m) is not None else f"{'-':>12}" for m in metrics)
        kept = "-" if r["round"] == 0 else str(r["kept"])
        solved = "-" if r["round"] == 0 else str(r["problems_solved"])
        minutes = sum(r.get("seconds", {}).values()) / 60
        lines.append(f"{r['round']:>5} {kept:>6} {solved:>6} {cells} {minutes:>8.1f}")
    return "\n".join(lines)


__all__ = ["EvaluatePhase", "FinetunePhase", "ImproveConfig", "ImproveError", "RLPhase", "RefreshPhase", "SearchPhase",
           "check_disjoint", "dev_prompts", "evaluate", "format_rounds", "improve", "load_improve_config",
           "parse_improve_config", "search_flops", "training_flops"]
