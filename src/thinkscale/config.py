"""Experiment configs: the YAML file that `thinkscale run CONFIG.yaml` reads.

    task: arithmetic
    problems: 100
    seeds: [0, 1]
    output: runs/arith
    policy:
      name: tiny
      options: {checkpoint_name: arithmetic, threads: 4}
    strategies:
      - name: majority_vote
        label: mv64
        settings: {n: 64, temperature: 0.8}
        budget: {max_generated_tokens: 20000}

`load_config(path)` reads it into frozen, typed dataclasses (`RunConfig` and
the classes it holds). Every setting is checked before anything runs: an
unknown key, a wrong type or a bad value raises `ConfigError` naming the file,
the line and the key, and suggesting the closest valid key or name. Loading
reads the file and nothing else; it never creates the output directory.

The checks are driven by the dataclasses' field types (typed_yaml.py reads
the YAML with its lines and checks values against them) plus a `check` in a
field's metadata for values a type cannot rule out (problems >= 1). Strategy
settings are checked against the strategy's own Settings dataclass, and the
options of every policy and scorer against its constructor's typed
arguments, so their keys need no copy here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from thinkscale.budget import Budget, Prices
from thinkscale.policies import POLICIES
from thinkscale.registry import Registry, unknown_name_error
from thinkscale.scorers import SCORERS
from thinkscale.strategies import STRATEGIES, get_strategy
from thinkscale.tasks import TASKS
from thinkscale.tools import TOOLS
from thinkscale.typed_yaml import (
    ConfigError,
    KeyPath,
    Source,
    build_dataclass,
    convert,
    read_config_file,
    read_yaml,
    show,
    unknown_key,
)


# -- value checks, kept in field metadata -------------------------------------

def _at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= low else f"must be at least {low}, got {v}"


def _positive(v: float | None) -> str | None:
    return None if v is None or v > 0 else f"must be greater than 0, got {v}"


def _non_empty(v: list) -> str | None:
    return None if v else "must not be empty"


def _distinct(v: list) -> str | None:
    repeated = sorted({x for x in v if v.count(x) > 1})
    return f"has repeats: {', '.join(map(str, repeated))}" if repeated else None


def _registered(registry: Registry) -> Callable[[str], str | None]:
    def check(name: str) -> str | None:
        return None if name in registry else str(unknown_name_error(registry.kind, name, registry.names()))

    return check


_LABEL = re.compile(r"[A-Za-z0-9_.@+=-]+")


def _label(v: str | None) -> str | None:
    if v is None or _LABEL.fullmatch(v):
        return None
    return f"{v!r} is not a usable label: use letters, digits and _ . - @ + = (it names the strategy's results)"


def _checked(check: Callable[[Any], str | None], **kwargs: Any) -> Any:
    return field(metadata={"check": check}, **kwargs)


# -- the schema ----------------------------------------------------------------

@dataclass(frozen=True)
class BudgetConfig:
    """Limits on one strategy's compute per problem; unset means unlimited. See `thinkscale.budget.Budget`."""

    max_generated_tokens: int | None = _checked(_at_least(1), default=None)
    max_samples: int | None = _checked(_at_least(1), default=None)
    max_policy_calls: int | None = _checked(_at_least(1), default=None)
    max_flops: float | None = _checked(_positive, default=None)
    max_wall_s: float | None = _checked(_positive, default=None)
    max_tool_calls: int | None = _checked(_at_least(1), default=None)
    max_tool_cpu_s: float | None = _checked(_positive, default=None)

    def to_budget(self) -> Budget:
        return Budget(**dataclasses.asdict(self))


def _tool_names(names: list[str]) -> str | None:
    for name in names:
        if name not in TOOLS:
            return str(unknown_name_error(TOOLS.kind, name, TOOLS.names()))
    return _non_empty(names) or _distinct(names)


@dataclass(frozen=True)
class ToolsConfig:
    """The tools a strategy's steps may call (tools/): names, the syntax calls are written in, and limits."""

    use: list[str] = _checked(_tool_names)
    # tag: the tiny core's `[...]`; fenced: a ```python block; tool_calls: a chat API's own tools (openai policy)
    syntax: Literal["tag", "fenced", "tool_calls"] = "tag"
    max_calls: int = _checked(_at_least(1), default=8)  # per sample
    timeout_s: float = _checked(_positive, default=2.0)  # per call
    max_output_chars: int = _checked(_at_least(1), default=200)

    def __post_init__(self) -> None:
        if self.syntax == "tag" and len(self.use) != 1:
            raise ValueError(f"the tag syntax's calls do not name a tool, so `use` takes exactly one; got "
                             f"{', '.join(self.use)}")
        if self.syntax == "fenced" and "python" not in self.use:
            raise ValueError("a fenced ```python block runs the `python` tool: add it to `use`")

    def build(self) -> Any:
        from thinkscale.tools import Toolbox

        return Toolbox.build(self.use, self.syntax, self.max_calls, self.timeout_s, self.max_output_chars)


def _price(v: float | None) -> str | None:
    return None if v is None or (v >= 0 and v == v and v != float("inf")) else f"must be a price >= 0, got {v}"


@dataclass(frozen=True)
class ModelPrice:
    """A model's price: per million tokens (an API's table), or per hour at a stated throughput (a local one)."""

    prompt: float | None = _checked(_price, default=None)  # $ per million prompt tokens (scorer: tokens read)
    generated: float | None = _checked(_price, default=None)  # $ per million generated tokens
    cached_prompt: float | None = _checked(_price, default=None)  # $ per million cached prompt tokens
    per_hour: float | None = _checked(_price, default=None)  # $ per GPU- or CPU-hour of the machine
    tokens_per_s: float | None = _checked(_positive, default=None)  # tokens it computes a second (cached: free)

    def __post_init__(self) -> None:
        hourly = self.per_hour is not None or self.tokens_per_s is not None
        by_token = self.prompt is not None or self.generated is not None or self.cached_prompt is not None
        if hourly and by_token:
            raise ValueError("give either per-token prices (prompt, generated, cached_prompt) or an hourly "
                             "price (per_hour, tokens_per_s), not both")
        if hourly and (self.per_hour is None or self.tokens_per_s is None):
            raise ValueError("an hourly price needs both per_hour and tokens_per_s")
        if not hourly and self.prompt is None:
            raise ValueError("missing price: give prompt (and generated, for a policy), or per_hour and tokens_per_s")

    def per_million(self) -> tuple[float, float | None, float | None]:
        """(prompt, cached prompt, generated) in $ per million tokens."""
        from thinkscale.budget import per_token_from_hour

        if self.per_hour is not None:  # a local engine: a prompt token its cache held is not computed again
            rate = per_token_from_hour(self.per_hour, self.tokens_per_s)
            return rate, 0.0, rate
        return self.prompt, self.cached_prompt, self.generated


@dataclass(frozen=True)
class PricesConfig:
    """The price table that fills `Usage.dollars`: the policy's, the scorers' and the tools' CPU time."""

    policy: ModelPrice
    scorer: ModelPrice | None = None  # needed where a strategy has a scorer
    tool_cpu_hour: float | None = _checked(_price, default=None)  # needed where a strategy has tools

    def __post_init__(self) -> None:
        if self.policy.per_hour is None and self.policy.generated is None:
            raise ValueError("missing price: the policy's table needs `generated` (per million generated tokens)")

    def to_prices(self) -> Prices:
        prompt, cached, generated = self.policy.per_million()
        scored = self.scorer.per_million()[0] if self.scorer is not None else 0.0
        return Prices(prompt=prompt, generated=generated, cached_prompt=cached, scored=scored,
                      tool_cpu_hour=self.tool_cpu_hour or 0.0)


@dataclass(frozen=True)
class ScorerConfig:
    """The reward model a strategy chooses by: a registered name and keyword arguments for it."""

    name: str = _checked(_registered(SCORERS))
    options: dict[str, Any] = field(default_factory=dict)  # checkpoint_name (default: the task's, or TASK-prm/-orm)

    def build(self, task_name: str) -> Any:
        from thinkscale.scorers import get_scorer
        from thinkscale.tiny.checkpoint import shipped_names

        options = dict(self.options)
        default = task_name if self.name == "confidence" else f"{task_name}-{self.name}"
        if default in shipped_names():  # the shipped model for this task, unless the config names one
            options.setdefault("checkpoint_name", default)
        return get_scorer(self.name, **options)


@dataclass(frozen=True)
class StrategyConfig:
    """One strategy to run: a registered name, its settings, its budget and (if it needs one) its scorer."""

    name: str = _checked(_registered(STRATEGIES))
    label: str | None = _checked(_label, default=None)  # names its results; defaults to `name`
    settings: dict[str, Any] = field(default_factory=dict)  # keyword arguments for get_strategy(name, ...)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    scorer: ScorerConfig | None = None
    tools: ToolsConfig | None = None

    @property
    def effective_label(self) -> str:
        return self.label or self.name

    def build(self) -> Any:
        """The strategy object these settings describe."""
        return get_strategy(self.name, **self.settings)


@dataclass(frozen=True)
class PolicyConfig:
    """The policy that generates: a registered name and keyword arguments for it."""

    name: str = _checked(_registered(POLICIES), default="tiny")
    options: dict[str, Any] = field(default_factory=dict)  # the policy's constructor arguments, checked by name

    def build(self, task_name: str) -> Any:
        """The policy; a policy that takes a checkpoint gets the task's shipped one unless the config names one."""
        from thinkscale.policies import get_policy
        from thinkscale.tiny.checkpoint import shipped_names

        options = dict(self.options)
        if "checkpoint_name" in inspect.signature(POLICIES.load_class(self.name).__init__).parameters \
                and task_name in shipped_names():
            options.setdefault("checkpoint_name", task_name)
        return get_policy(self.name, **options)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One experiment: a task, a policy, the strategies to compare and where results go.

    `output` is the run directory. A relative path is taken relative to the
    current working directory when the run starts, not to the config file, so
    `thinkscale run configs/x.yaml` from the repository root writes under it.
    """

    task: str = _checked(_registered(TASKS))
    split: Literal["train", "test"] = "test"
    problems: int = _checked(_at_least(1), default=200)
    problem_seed: int = 0  # which problems of the split are drawn (`Task.examples(split, problems, problem_seed)`)
    seeds: list[int] = _checked(lambda v: _non_empty(v) or _distinct(v), default_factory=lambda: [0])
    output: str = _checked(lambda v: None if v.strip() else "must not be empty")
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    strategies: list[StrategyConfig] = _checked(_non_empty)
    prices: PricesConfig | None = None  # fills Usage.dollars; left out, nothing is priced

    @property
    def output_path(self) -> Path:
        """The run directory; relative paths are relative to the current working directory."""
        return Path(self.output)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, defaults filled in, as plain JSON-able values.

        `problem_seed` is left out at 0, the draw every run used before it was a
        setting, so that ledgers written then keep their fingerprint and resume.
        """
        data = dataclasses.asdict(self)
        if not data["problem_seed"]:
            del data["problem_seed"]
        if data["prices"] is None:  # as problem_seed: ledgers written before prices keep their fingerprint
            del data["prices"]
        for strategy in data["strategies"]:
            if strategy["tools"] is None:
                del strategy["tools"]
            for key in ("max_tool_calls", "max_tool_cpu_s"):
                if strategy["budget"][key] is None:
                    del strategy["budget"][key]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> RunConfig:
        """Check and build a config from plain values (e.g. a stored `to_dict()`); errors name `source`."""
        return _build_run(data, Source(source, {}))


# -- checks that need more than one field, or another module ----------------------

def check_settings(strategy: StrategyConfig, path: KeyPath, source: Source) -> dict[str, Any]:
    """The strategy's settings checked against its Settings dataclass, then by building it."""
    path = path + ("settings",)
    try:
        settings_cls = getattr(get_strategy(strategy.name), "Settings", None)
    except (TypeError, ValueError):  # a strategy with required settings: let building it speak
        settings_cls = None
    settings = strategy.settings
    if settings_cls is not None and dataclasses.is_dataclass(settings_cls):
        settings = build_dataclass(settings_cls, settings, path, source, keep_given=True)
    try:
        get_strategy(strategy.name, **settings)
    except (TypeError, ValueError) as e:
        raise source.error(path, str(e)) from None
    return settings


def check_options(cls: type, given: dict[str, Any], path: KeyPath, source: Source) -> dict[str, Any]:
    """Options for `cls(**options)` checked against its constructor's typed arguments, by name and type.

    Policies and scorers take their settings as typed keyword arguments, so an
    unknown key or a wrong type is refused here, before anything is loaded,
    naming the line; a checkpoint name must resolve, and counts be at least 1.
    """
    from thinkscale.tiny import checkpoint

    params = {name: p for name, p in inspect.signature(cls.__init__).parameters.items()
              if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}
    hints = typing.get_type_hints(cls.__init__)
    options = {}
    for key, value in given.items():
        if key not in params:
            raise unknown_key(source, path, key, list(params))
        options[key] = convert(hints.get(key, Any), value, path + (key,), source)
    if "checkpoint_name" in options:
        try:
            checkpoint.resolve(options["checkpoint_name"])
        except ValueError as e:
            raise source.error(path + ("checkpoint_name",), str(e)) from None
    for key in ("max_rows", "threads", "concurrency", "max_batch_rows"):
        if options.get(key) is not None and options[key] < 1:
            raise source.error(path + (key,), f"must be at least 1, got {options[key]}")
    return options


def _classes(name: str, lookup: Callable[[str], type], path: KeyPath, source: Source) -> type:
    try:
        return lookup(name)
    except ImportError as e:
        raise source.error(path, f"{name!r} needs a package that is not installed ({e.name}); see the README's "
                                 f"extras (pip install 'thinkscale[hf]' for transformers)") from None


def _build_run(data: Any, source: Source) -> RunConfig:
    if not isinstance(data, dict):
        raise source.error((), f"expected a mapping at the top level (task:, output:, strategies:, ...), "
                               f"got {show(data)}")
    config: RunConfig = build_dataclass(RunConfig, data, (), source)
    strategies, seen = [], {}
    for i, strategy in enumerate(config.strategies):
        path = ("strategies", i)
        label = strategy.effective_label
        if label in seen:
            where = path + ("label",) if strategy.label is not None else path
            first = source.line(("strategies", seen[label]))
            at = f" (line {first})" if first else ""
            raise source.error(where, f"label {label!r} is already used by strategies[{seen[label]}]{at}; "
                                      f"give each strategy a distinct `label:`")
        seen[label] = i
        strategies.append(strategy)
    policy_cls = _classes(config.policy.name, POLICIES.load_class, ("policy", "name"), source)
    policy = dataclasses.replace(config.policy, options=check_options(policy_cls, config.policy.options,
                                                                      ("policy", "options"), source))
    strategies = [check_strategy(s, ("strategies", i), source) for i, s in enumerate(strategies)]
    if config.prices is not None:
        for i, s in enumerate(strategies):
            if s.scorer is not None and config.prices.scorer is None:
                raise source.error(("prices",), f"missing price: strategies[{i}] ({s.effective_label}) has a "
                                                f"scorer, so the price table needs `scorer:`")
            if s.tools is not None and config.prices.tool_cpu_hour is None:
                raise source.error(("prices",), f"missing price: strategies[{i}] ({s.effective_label}) calls "
                                                f"tools, so the price table needs `tool_cpu_hour:`")
    return dataclasses.replace(config, policy=policy, strategies=strategies)


def check_strategy(strategy: StrategyConfig, path: KeyPath, source: Source) -> StrategyConfig:
    """A strategy's settings and its scorer's options, checked (see `check_settings`, `check_options`)."""
    strategy = dataclasses.replace(strategy, settings=check_settings(strategy, path, source))
    if strategy.scorer is None:
        return strategy
    path = path + ("scorer",)
    scorer_cls = _classes(strategy.scorer.name, SCORERS.load_class, path + ("name",), source)
    return dataclasses.replace(strategy, scorer=dataclasses.replace(strategy.scorer, options=check_options(
        scorer_cls, strategy.scorer.options, path + ("options",), source)))


def parse_config(text: str, source: str = "<config>") -> RunConfig:
    """A RunConfig from YAML text; errors name `source` as the file."""
    where = Source(str(source), {})
    return _build_run(read_yaml(text, where), where)


def load_prices(path: str | Path) -> PricesConfig:
    """A price table on its own (the `prices:` section of an experiment file), checked; errors name the line."""
    where = Source(str(path), {})
    return build_dataclass(PricesConfig, read_yaml(read_config_file(path), where), (), where)


def load_config(path: str | Path) -> RunConfig:
    """Read and check the YAML config at `path`. Reads only; creates nothing."""
    return parse_config(read_config_file(path), str(path))


__all__ = ["BudgetConfig", "ConfigError", "ModelPrice", "PolicyConfig", "PricesConfig", "RunConfig", "ScorerConfig",
           "StrategyConfig", "ToolsConfig", "check_strategy", "load_config", "load_prices", "parse_config"]
