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

The checks are driven by the dataclasses' field types (int, float, str, bool,
Literal, Optional, list, dict[str, Any], nested dataclasses) plus a `check`
in a field's metadata for values a type cannot rule out (problems >= 1).
Strategy settings are checked against the strategy's own Settings dataclass
and policy options against the policy's constructor, so their keys need no
copy here.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from thinkscale.budget import Budget
from thinkscale.policies import POLICIES
from thinkscale.scorers import SCORERS
from thinkscale.registry import Registry, unknown_name_error
from thinkscale.strategies import STRATEGIES, get_strategy
from thinkscale.tasks import TASKS

KeyPath = tuple[str | int, ...]  # where a value sits: ("strategies", 1, "settings", "n")


class ConfigError(ValueError):
    """A config that cannot be run; the message starts with `FILE:LINE: key:`."""


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

    def to_budget(self) -> Budget:
        return Budget(**dataclasses.asdict(self))


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
    options: dict[str, Any] = field(default_factory=dict)  # for tiny: checkpoint_name, max_rows, threads


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
    seeds: list[int] = _checked(lambda v: _non_empty(v) or _distinct(v), default_factory=lambda: [0])
    output: str = _checked(lambda v: None if v.strip() else "must not be empty")
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    strategies: list[StrategyConfig] = _checked(_non_empty)

    @property
    def output_path(self) -> Path:
        """The run directory; relative paths are relative to the current working directory."""
        return Path(self.output)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, defaults filled in, as plain JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> RunConfig:
        """Check and build a config from plain values (e.g. a stored `to_dict()`); errors name `source`."""
        return _build_run(data, _Source(source, {}))


# -- YAML that remembers where each value was ----------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e9` as a float (YAML 1.1 wants `1.0e9`, which nobody writes)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


@dataclass
class _Source:
    """A config file's name and the 1-based line of each key (or list item) by its path."""

    name: str
    lines: dict[KeyPath, int]

    def line(self, path: KeyPath) -> int | None:
        while path not in self.lines and path:
            path = path[:-1]  # a default, or a value built here: point at its parent
        return self.lines.get(path)

    def error(self, path: KeyPath, message: str, line: int | None = None) -> ConfigError:
        line = line or self.line(path)
        where = f"{self.name}:{line}" if line else self.name
        return ConfigError(f"{where}: {_dotted(path)}: {message}" if path else f"{where}: {message}")


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def _read_yaml(text: str, source: _Source) -> Any:
    """Plain dicts, lists and scalars, with each key's line recorded in `source.lines`."""
    loader = _Loader(text)
    on_stack: set[int] = set()

    def walk(node: yaml.Node, path: KeyPath) -> Any:
        source.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_object(node, deep=True)
        plain = "tag:yaml.org,2002:seq" if isinstance(node, yaml.SequenceNode) else "tag:yaml.org,2002:map"
        if node.tag != plain:  # SafeLoader would refuse python/... tags; a config has no use for !!set and co.
            raise source.error(path, f"unsupported YAML tag {node.tag!r}", node.start_mark.line + 1)
        if id(node) in on_stack:
            raise source.error(path, "an alias refers to itself; a config must be a tree", node.start_mark.line + 1)
        on_stack.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            value: Any = [walk(item, path + (i,)) for i, item in enumerate(node.value)]
        else:
            loader.flatten_mapping(node)  # resolves `<<: *anchor` merges
            value = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise source.error(path, f"keys must be text, got {_show(key)}", line)
                if key in value:
                    raise source.error(path, f"key {key!r} appears twice (first at line {source.lines[path + (key,)]})",
                                       line)
                source.lines[path + (key,)] = line
                value[key] = walk(value_node, path + (key,))
        on_stack.discard(id(node))
        return value

    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(f"{source.name}: the file is empty; a config is a mapping with task:, output:, "
                              f"strategies: and so on")
        return walk(root, ())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
        raise ConfigError(f"{source.name}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {e.problem}{context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source.name}: invalid YAML: {e}") from None
    finally:
        loader.dispose()


# -- checking values against field types -----------------------------------------

def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "nothing (null)"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _quote_hint(value: Any) -> str:
    """Why a value meant as text arrived as something else."""
    if isinstance(value, bool):
        return "; YAML reads yes/no/on/off as true/false, so quote it to mean the text"
    if isinstance(value, (int, float)) or value is None:
        return "; quote it to use it as text"
    return ""


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return str(hint)


def _unknown_key(source: _Source, path: KeyPath, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return source.error(path, f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid)) or '(none)'}",
                        source.lines.get(path + (key,)))


def _plain(value: Any, path: KeyPath, source: _Source) -> Any:
    """Refuse values that are not plain YAML data (dates, for one), so settings stay JSON-able."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise source.error(path, f"keys must be text, got {_show(k)}")
            _plain(v, path + (k,), source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, path + (i,), source)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise source.error(path, f"expected a number, string, true/false, list or mapping, got {value!r}; "
                                 f"quote it to use it as text")
    return value


def _convert(hint: Any, value: Any, path: KeyPath, source: _Source) -> Any:
    """`value` checked (and, int -> float, converted) against the type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _plain(value, path, source)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if value is None and len(others) < len(args):
            return None
        if len(others) != 1:
            raise TypeError(f"config fields support Optional[X] unions only, not {hint}")
        return _convert(others[0], value, path, source)
    if origin is Literal:
        if value not in args:
            raise source.error(path, f"expected one of {', '.join(map(repr, args))}, got {_show(value)}"
                                     f"{_quote_hint(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise source.error(path, f"expected a list, got {_show(value)}")
        return [_convert(args[0], item, path + (i,), source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise source.error(path, f"expected a mapping, got {_show(value)}")
        return {k: _convert(args[1], v, path + (k,), source) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, source)
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          bool: lambda v: isinstance(v, bool)}[hint](value)
    if not ok:
        quote = _quote_hint(value) if hint is str else ""
        raise source.error(path, f"expected {_describe(hint)}, got {_show(value)}{quote}")
    return float(value) if hint is float else value


def _build(cls: type, data: Any, path: KeyPath, source: _Source, keep_given: bool = False) -> Any:
    """An instance of dataclass `cls` from a mapping, every key and value checked.

    With `keep_given`, return the checked mapping (only the keys given) instead
    of the instance, once the instance has been built successfully.
    """
    if not isinstance(data, dict):
        raise source.error(path, f"expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key(source, path, key, list(fields))
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise source.error(path, f"missing required key{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
    values = {}
    for key, value in data.items():
        values[key] = _convert(hints[key], value, path + (key,), source)
        check = fields[key].metadata.get("check")
        problem = check(values[key]) if check else None
        if problem:
            raise source.error(path + (key,), problem)
    try:
        built = cls(**values)
    except (TypeError, ValueError) as e:  # a settings class's own __post_init__ checks
        raise source.error(path, str(e)) from None
    return values if keep_given else built


# -- checks that need more than one field, or another module ----------------------

def _check_settings(strategy: StrategyConfig, path: KeyPath, source: _Source) -> dict[str, Any]:
    """The strategy's settings checked against its Settings dataclass, then by building it."""
    path = path + ("settings",)
    try:
        settings_cls = getattr(get_strategy(strategy.name), "Settings", None)
    except (TypeError, ValueError):  # a strategy with required settings: let building it speak
        settings_cls = None
    settings = strategy.settings
    if settings_cls is not None and dataclasses.is_dataclass(settings_cls):
        settings = _build(settings_cls, settings, path, source, keep_given=True)
    try:
        get_strategy(strategy.name, **settings)
    except (TypeError, ValueError) as e:
        raise source.error(path, str(e)) from None
    return settings


def _check_policy_options(policy: PolicyConfig, path: KeyPath, source: _Source) -> dict[str, Any]:
    """The tiny policy's options checked against TinyPolicy.__init__, and its checkpoint found."""
    if policy.name != "tiny":
        return policy.options  # other policies check their own options when built
    from thinkscale.policies.tiny import TinyPolicy  # imports torch: only when a tiny policy is asked for
    from thinkscale.tiny import checkpoint

    path = path + ("options",)
    params = {name: p for name, p in inspect.signature(TinyPolicy.__init__).parameters.items() if name != "self"}
    hints = typing.get_type_hints(TinyPolicy.__init__)
    options = {}
    for key, value in policy.options.items():
        if key not in params:
            raise _unknown_key(source, path, key, list(params))
        options[key] = _convert(hints.get(key, Any), value, path + (key,), source)
    if "checkpoint_name" in options:
        try:
            checkpoint.resolve(options["checkpoint_name"])
        except ValueError as e:
            raise source.error(path + ("checkpoint_name",), str(e)) from None
    for key in ("max_rows", "threads"):
        if options.get(key) is not None and options[key] < 1:
            raise source.error(path + (key,), f"must be at least 1, got {options[key]}")
    return options


def _build_run(data: Any, source: _Source) -> RunConfig:
    if not isinstance(data, dict):
        raise source.error((), f"expected a mapping at the top level (task:, output:, strategies:, ...), "
                               f"got {_show(data)}")
    config: RunConfig = _build(RunConfig, data, (), source)
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
        strategies.append(dataclasses.replace(strategy, settings=_check_settings(strategy, path, source)))
    policy = dataclasses.replace(config.policy, options=_check_policy_options(config.policy, ("policy",), source))
    return dataclasses.replace(config, policy=policy, strategies=strategies)


def parse_config(text: str, source: str = "<config>") -> RunConfig:
    """A RunConfig from YAML text; errors name `source` as the file."""
    where = _Source(str(source), {})
    return _build_run(_read_yaml(text, where), where)


def load_config(path: str | Path) -> RunConfig:
    """Read and check the YAML config at `path`. Reads only; creates nothing."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config(text, str(path))


__all__ = ["BudgetConfig", "ConfigError", "PolicyConfig", "RunConfig", "ScorerConfig", "StrategyConfig", "load_config",
           "parse_config"]
