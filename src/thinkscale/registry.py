"""Name -> factory registries whose errors name the closest valid choices.

Tasks, strategies, policies and checkpoints are all looked up by name; a typo
should cost the user one glance, not a trip to the source.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> ValueError:
    """A ValueError saying `name` is not a known `kind`, with the closest choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.4)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Valid choices: {', '.join(choices) or '(none)'}.")


class Registry(Generic[T]):
    """A mapping from names to factories, filled by the `register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._classes: dict[str, str] = {}  # name -> "module:Class", for register_class

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return decorator

    def register_class(self, name: str, where: str) -> None:
        """Register `name` as the class at `where` ("package.module:Class"), imported only when first used."""
        def build(**options: Any) -> T:
            return self.load_class(name)(**options)

        self.register(name)(build)
        self._classes[name] = where

    def load_class(self, name: str) -> type:
        """The class registered (by `register_class`) under `name`, imported now."""
        self.get(name)  # an unknown name fails here, naming the closest
        module, _, attr = self._classes[name].partition(":")
        return getattr(importlib.import_module(module), attr)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name_error(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
