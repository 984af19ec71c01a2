"""Tools by name, and the Toolbox a search calls them through (see tools/base.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from thinkscale.policies.base import ToolSpec

from thinkscale.registry import Registry, unknown_name_error
from thinkscale.tools.base import FENCED, SYNTAXES, TAG, TOOL_CALLS, Tool, ToolResult, ToolSyntax

TOOLS: Registry[Tool] = Registry("tool")
TOOLS.register_class("calc", "thinkscale.tools.calc:Calc")
TOOLS.register_class("python", "thinkscale.tools.python:Python")


def get_tool(name: str, **options: Any) -> Tool:
    return TOOLS.get(name)(**options)


@dataclass
class Toolbox:
    """The tools one search may call, in one syntax, at most `max_calls` times per sample.

    With the tag syntax a call does not name its tool, so the toolbox holds
    one; a fenced block is always a `python` program; an API's tool call names
    its tool and passes its argument by name (JSON). A call to a tool that is
    not in the box is answered with an error naming the ones that are.
    """

    tools: dict[str, Tool]
    syntax: ToolSyntax = TAG
    max_calls: int = 8  # per sample; a sample that calls again is cut off there (never an answer)

    def __post_init__(self) -> None:
        if not self.tools:
            raise ValueError("a toolbox needs at least one tool")
        if self.max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {self.max_calls}")
        if self.syntax is TAG and len(self.tools) != 1:
            raise ValueError(f"the tag syntax's calls do not name a tool, so it takes exactly one; got "
                             f"{', '.join(self.tools)}")

    @classmethod
    def build(cls, names: list[str], syntax: str = "tag", max_calls: int = 8, timeout_s: float = 2.0,
              max_output_chars: int = 200) -> "Toolbox":
        if syntax not in SYNTAXES:
            raise unknown_name_error("tool syntax", syntax, SYNTAXES)
        tools = {}
        for name in names:
            options: dict[str, Any] = {"timeout_s": timeout_s, "max_output_chars": max_output_chars}
            if name == "python" and syntax == "tag":
                options["expression"] = True
            tools[name] = get_tool(name, **options)
        return cls(tools, SYNTAXES[syntax], max_calls)

    def tool_for(self, argument: str) -> tuple[Tool | None, str]:
        """The tool a call's argument goes to and the argument it gets; or None and why there is none."""
        if self.syntax is TAG:
            return next(iter(self.tools.values())), argument
        if self.syntax is TOOL_CALLS:
            return self._named_call(argument)
        return self._named("python", argument)

    def _named(self, name: str, argument: str) -> tuple[Tool | None, str]:
        if name in self.tools:
            return self.tools[name], argument
        return None, f"no tool {name!r} here; the tools are {', '.join(self.tools)}"

    def _named_call(self, text: str) -> tuple[Tool | None, str]:
        """An API's call, written as {"name": ..., "arguments": {...}} (policies/base.py: tool_call_text)."""
        try:
            call = json.loads(text)
            name, arguments = call["name"], call["arguments"]
        except (ValueError, KeyError, TypeError):
            return None, f"the call is not {{\"name\": ..., \"arguments\": {{...}}}}: {text[:60]!r}"
        tool, why = self._named(str(name), "")
        if tool is None:
            return None, why
        if not isinstance(arguments, dict) or not isinstance(arguments.get(tool.argument), str):
            return None, f"{tool.name} takes one string argument, {tool.argument!r}; got {json.dumps(arguments)[:60]}"
        return tool, arguments[tool.argument]

    def specs(self) -> tuple[ToolSpec, ...]:
        """The tools as a request declares them to an API that takes tools."""
        return tuple(tool.spec() for tool in self.tools.values())

    def worst_cpu_s(self) -> float:
        return max(tool.worst_cpu_s() for tool in self.tools.values())

    def close(self) -> None:
        for tool in self.tools.values():
            tool.close()


__all__ = ["FENCED", "TAG", "TOOL_CALLS", "TOOLS", "Tool", "ToolResult", "ToolSyntax", "Toolbox", "get_tool"]
