"""The server's config: what it serves, what any request may spend, and how it behaves.

    thinkscale serve --config serve.yaml

    models:                       # default: the tiny arithmetic core and its reward models
      - name: arithmetic
        task: arithmetic
        policy: {name: tiny, options: {checkpoint_name: arithmetic}}
        scorers: [prm, orm, confidence]
    default_scorer: prm           # for strategies that need a scorer and a request that names none
    cap: {max_generated_tokens: 16384, max_wall_s: 120}
    presets:                      # extra model names, each a strategy with its settings
      careful: {model: arithmetic, strategy: beam_search, settings: {n: 16, width: 4}}
    max_concurrent: 64
    max_tokens_per_minute_per_key: 200000   # optional; 429 with Retry-After past it
    trace_store: runs/served      # optional: every answered request's trace, keyed by the key's id

Read with the same typed checks as experiment configs (typed_yaml.py): an
unknown key, a wrong type or a bad value names the file, the line and the key.
Every budget the server would give a request (each reasoning-effort level, each
preset) must fit the cap, or the config is refused before anything loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from thinkscale.config import BudgetConfig, PolicyConfig, StrategyConfig, check_settings
from thinkscale.registry import unknown_name_error
from thinkscale.scorers import SCORERS
from thinkscale.tasks import TASKS
from thinkscale.typed_yaml import Source, build_dataclass, read_config_file, read_yaml

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


@dataclass(frozen=True)
class ModelConfig:
    """One served model: a task (its prompt format), the policy that generates, the reward models beside it."""

    name: str
    task: str = "arithmetic"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    scorers: list[str] = field(default_factory=lambda: ["prm", "orm", "confidence"])


@dataclass(frozen=True)
class PresetConfig:
    """A named way of thinking, served as a model name of its own."""

    model: str
    strategy: str
    settings: dict[str, Any] = field(default_factory=dict)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    scorer: str | None = None


@dataclass(frozen=True)
class EffortConfig:
    """What one `reasoning_effort` level buys: a budget always; a strategy when the model name names none."""

    strategy: str
    settings: dict[str, Any] = field(default_factory=dict)
    budget: BudgetConfig = field(default_factory=BudgetConfig)


def _effort(strategy: str, tokens: int, **settings: Any) -> EffortConfig:
    return EffortConfig(strategy, settings, BudgetConfig(max_generated_tokens=tokens))


# Sized on the tiny arithmetic core: a 7-step problem costs about 70 generated tokens a sample, and beam
# search with n=16, width=4 spent at most 1,118 tokens on the hardest of 6 test problems (2,224 at n=32).
DEFAULT_EFFORT = {
    "none": _effort("majority_vote", 160, n=1),
    "minimal": _effort("majority_vote", 640, n=8,  # up to 8 samples, stopping once the vote is settled
                       stopping={"rule": "adaptive_consistency", "confidence": 0.9, "wave": 2}),
    "low": _effort("beam_search", 800, n=4, width=2),
    "medium": _effort("beam_search", 1600, n=8, width=2),
    "high": _effort("beam_search", 3200, n=16, width=4),
    "xhigh": _effort("beam_search", 6400, n=32, width=4),
}


@dataclass(frozen=True)
class ServeConfig:
    """Everything `thinkscale serve` reads from its --config file (flags override host and port)."""

    host: str = "127.0.0.1"
    port: int = 8000
    models: list[ModelConfig] = field(default_factory=lambda: [ModelConfig("arithmetic")])
    default_scorer: str = "prm"
    cap: BudgetConfig = field(default_factory=lambda: BudgetConfig(max_generated_tokens=16384, max_wall_s=120.0))
    effort: dict[str, EffortConfig] = field(default_factory=lambda: dict(DEFAULT_EFFORT))
    presets: dict[str, PresetConfig] = field(default_factory=dict)
    # where streamed and returned reasoning goes: vLLM renamed reasoning_content to reasoning, clients read either
    reasoning_fields: list[Literal["reasoning_content", "reasoning"]] = field(
        default_factory=lambda: ["reasoning_content", "reasoning"])
    # a stream sends its first reasoning at once, then at most one chunk per this many ms (the end apart): what
    # the search does within it is gathered into one chunk, and the engine hands its tokens over at the same pace
    # (0: a chunk per burst of events, a hand-over per token). Each chunk costs the client a parse and the server
    # a write.
    stream_interval_ms: float = 50.0
    # which policy calls of a streamed search send their first sample token by token, on backends that stream
    # (the tiny core): "first" (its first call: the stream's first reasoning is the first token; later steps and
    # samples go out whole, each as it is generated), "all" (every call: about 2 ms more a request here, the
    # engine's thread handing tokens over while it computes) or "none" (whole steps and samples only)
    stream_tokens: Literal["first", "all", "none"] = "first"
    max_body_bytes: int = 65536
    max_concurrent: int = 64  # searches in flight at once, over all keys
    max_concurrent_per_key: int = 16
    # prompt and generated tokens one key may spend in any 60 s (None: no limit); a request that finds its key
    # at or over it gets 429 with Retry-After. A search in flight is charged when it ends, so a key can pass
    # the limit by what its requests in flight spend; the next request then waits.
    max_tokens_per_minute_per_key: int | None = None
    # a run directory (store.py) where each answered request's trace is written, keyed "KEY_ID/RESPONSE_ID":
    # the key's id, never the key (opt-in; `thinkscale report` and `export` read it like any run)
    trace_store: str | None = None
    retry_after_s: int = 1  # what a 429 tells the client to wait
    shutdown_timeout_s: float = 30.0  # on SIGTERM, in-flight requests get this long to finish

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def check_serve_config(config: ServeConfig, source: Source) -> ServeConfig:
    """Checks that need more than one field: names resolve, settings build, every budget fits the cap."""
    if not config.models:
        raise source.error(("models",), "must not be empty")
    names = [m.name for m in config.models]
    for i, model in enumerate(config.models):
        if model.task not in TASKS:
            raise source.error(("models", i, "task"), str(unknown_name_error("task", model.task, TASKS.names())))
        for j, scorer in enumerate(model.scorers):
            if scorer not in SCORERS:
                raise source.error(("models", i, "scorers", j), str(unknown_name_error("scorer", scorer,
                                                                                       SCORERS.names())))
        if ":" in model.name or names.count(model.name) > 1:
            raise source.error(("models", i, "name"), f"{model.name!r}: names must be distinct and without ':'")
    if config.default_scorer not in SCORERS:
        raise source.error(("default_scorer",), str(unknown_name_error("scorer", config.default_scorer,
                                                                      SCORERS.names())))
    missing = [level for level in EFFORTS if level not in config.effort]
    unknown = [level for level in config.effort if level not in EFFORTS]
    if missing or unknown:
        raise source.error(("effort",), f"needs exactly the levels {', '.join(EFFORTS)}"
                                        f"{'; missing ' + ', '.join(missing) if missing else ''}"
                                        f"{'; unknown ' + ', '.join(unknown) if unknown else ''}")
    ways: list[tuple[tuple, str, dict, BudgetConfig]] = [
        (("effort", level), e.strategy, e.settings, e.budget) for level, e in config.effort.items()]
    for name, preset in config.presets.items():
        if preset.model not in names:
            raise source.error(("presets", name, "model"), str(unknown_name_error("model", preset.model, names)))
        if name in names or ":" in name:
            raise source.error(("presets", name), f"{name!r}: a preset needs a name of its own, without ':'")
        ways.append((("presets", name), preset.strategy, preset.settings, preset.budget))
    for path, strategy, settings, budget in ways:
        checked = build_dataclass(StrategyConfig, {"name": strategy, "settings": settings}, path, source)
        check_settings(checked, path, source)
        over = over_cap(budget, config.cap)
        if over:
            raise source.error(path + ("budget",), over)
    for key in ("max_body_bytes", "max_concurrent", "max_concurrent_per_key", "retry_after_s",
                "max_tokens_per_minute_per_key"):
        if getattr(config, key) is not None and getattr(config, key) < 1:
            raise source.error((key,), f"must be at least 1, got {getattr(config, key)}")
    if not (math.isfinite(config.stream_interval_ms) and config.stream_interval_ms >= 0):
        raise source.error(("stream_interval_ms",),
                           f"must be a finite number at least 0, got {config.stream_interval_ms:g}")
    return config


def over_cap(budget: BudgetConfig, cap: BudgetConfig) -> str | None:
    """Which limit of `budget` goes past the cap, said as a sentence; None if none does.

    A limit left open is not over the cap: it is given the cap's (`within_cap`).
    """
    for f in dataclasses.fields(BudgetConfig):
        limit, most = getattr(budget, f.name), getattr(cap, f.name)
        if limit is not None and most is not None and limit > most:
            return f"{f.name} {limit:g} is over the server's cap of {most:g}"
    return None


def within_cap(budget: BudgetConfig, cap: BudgetConfig) -> BudgetConfig:
    """`budget` with every limit it leaves open set to the cap's."""
    return dataclasses.replace(budget, **{f.name: getattr(cap, f.name) for f in dataclasses.fields(BudgetConfig)
                                          if getattr(budget, f.name) is None})


def parse_serve_config(data: Any, source: Source) -> ServeConfig:
    return check_serve_config(build_dataclass(ServeConfig, data or {}, (), source), source)


def load_serve_config(path: str | Path | None) -> ServeConfig:
    """The server's config from a YAML file; the defaults (the tiny arithmetic core) without one."""
    if path is None:
        return parse_serve_config({}, Source("defaults", {}))
    source = Source(str(path), {})
    return parse_serve_config(read_yaml(read_config_file(path), source), source)


__all__ = ["DEFAULT_EFFORT", "EFFORTS", "EffortConfig", "ModelConfig", "PresetConfig", "ServeConfig",
           "load_serve_config", "over_cap", "within_cap"]
