"""Typed YAML with line numbers: a YAML file read into checked dataclasses, every error naming its line.

    where = Source("exp.yaml", {})
    config = build_dataclass(RunConfig, read_yaml(text, where), (), where)
    # exp.yaml:5: strategies[0].settings: unknown key 'samples' (did you mean ...?); valid keys: ...

The reader keeps the line of every key and list item; the builder checks
values against the dataclasses' field types (int, float, str, bool, Literal,
Optional, list, dict[str, Any], nested dataclasses) and a `check` in a
field's metadata, and names the file, the line and the key of the first
value that does not fit. config.py holds the experiment schema built on it.

Why not pydantic: its errors name a key path but not the file's line, and
its coercions (the string "3" accepted as an int) are what a config should
refuse; this module is the part of pydantic a config needs, with lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

KeyPath = tuple[str | int, ...]  # where a value sits: ("strategies", 1, "settings", "n")


class ConfigError(ValueError):
    """A config that cannot be run; the message starts with `FILE:LINE: key:`."""


# -- YAML that remembers where each value was ----------------------------------

class Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e9` as a float (YAML 1.1 wants `1.0e9`, which nobody writes)."""


Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


@dataclass
class Source:
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
        return ConfigError(f"{where}: {dotted(path)}: {message}" if path else f"{where}: {message}")


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def read_config_file(path: str | Path) -> str:
    """A config file's text; an error names the file and what is wrong with it (missing, a folder, not UTF-8)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def read_yaml(text: str, source: Source) -> Any:
    """Plain dicts, lists and scalars, with each key's line recorded in `source.lines`."""
    loader = Loader(text)
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
                    raise source.error(path, f"keys must be text, got {show(key)}", line)
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

def show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "nothing (null)"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def quote_hint(value: Any) -> str:
    """Why a value meant as text arrived as something else."""
    if isinstance(value, bool):
        return "; YAML reads yes/no/on/off as true/false, so quote it to mean the text"
    if isinstance(value, (int, float)) or value is None:
        return "; quote it to use it as text"
    return ""


def describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return str(hint)


def unknown_key(source: Source, path: KeyPath, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return source.error(path, f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(valid)) or '(none)'}",
                        source.lines.get(path + (key,)))


def plain(value: Any, path: KeyPath, source: Source) -> Any:
    """Refuse values that are not plain YAML data (dates, for one), so settings stay JSON-able."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise source.error(path, f"keys must be text, got {show(k)}")
            plain(v, path + (k,), source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            plain(v, path + (i,), source)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise source.error(path, f"expected a number, string, true/false, list or mapping, got {value!r}; "
                                 f"quote it to use it as text")
    return value


def convert(hint: Any, value: Any, path: KeyPath, source: Source) -> Any:
    """`value` checked (and, int -> float, converted) against the type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return plain(value, path, source)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if value is None and len(others) < len(args):
            return None
        if len(others) == 1:
            return convert(others[0], value, path, source)
        for other in others:  # X | Y: the first alternative the value fits
            try:
                return convert(other, value, path, source)
            except ConfigError:
                continue
        raise source.error(path, f"expected {' or '.join(describe(o) for o in others)}, got {show(value)}")
    if origin is Literal:
        if value not in args:
            raise source.error(path, f"expected one of {', '.join(map(repr, args))}, got {show(value)}"
                                     f"{quote_hint(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise source.error(path, f"expected a list, got {show(value)}")
        return [convert(args[0], item, path + (i,), source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise source.error(path, f"expected a mapping, got {show(value)}")
        return {k: convert(args[1], v, path + (k,), source) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, path, source)
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          bool: lambda v: isinstance(v, bool)}[hint](value)
    if not ok:
        quote = quote_hint(value) if hint is str else ""
        raise source.error(path, f"expected {describe(hint)}, got {show(value)}{quote}")
    return float(value) if hint is float else value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """`typing.get_type_hints(cls)`, evaluated once a class (it compiles every string annotation each call)."""
    return typing.get_type_hints(cls)


def build_dataclass(cls: type, data: Any, path: KeyPath, source: Source, keep_given: bool = False) -> Any:
    """An instance of dataclass `cls` from a mapping, every key and value checked.

    With `keep_given`, return the checked mapping (only the keys given) instead
    of the instance, once the instance has been built successfully.
    """
    if not isinstance(data, dict):
        raise source.error(path, f"expected a mapping, got {show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _type_hints(cls)
    for key in data:
        if key not in fields:
            raise unknown_key(source, path, key, list(fields))
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise source.error(path, f"missing required key{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
    values = {}
    for key, value in data.items():
        values[key] = convert(hints[key], value, path + (key,), source)
        check = fields[key].metadata.get("check")
        problem = check(values[key]) if check else None
        if problem:
            raise source.error(path + (key,), problem)
    try:
        built = cls(**values)
    except (TypeError, ValueError) as e:  # a settings class's own __post_init__ checks
        raise source.error(path, str(e)) from None
    return values if keep_given else built
