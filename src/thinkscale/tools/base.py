"""The Tool contract, and how a call is written in a model's text.

A tool takes the argument of one call and returns a `ToolResult`: the text the
policy reads next, whether it worked, and the CPU and wall time it took. A tool
never raises into the search: an error, a time-out, output that is too long or
a malformed argument comes back as a failed result with a clear message.

A `ToolSyntax` says how a call appears in generated text and how its result is
written back. The search stops a generation at the syntax's closing marker,
finds the opening marker before it, runs the tool on what lies between, appends
the rendered result and lets the policy go on (strategies/base.py).

    TAG     the tiny core's own vocabulary: `[347*28` stops at `]`, and
            `]=9716` is appended; an error appends `]=` and nothing (the core
            cannot spell an error), and the error is counted in Usage.
    FENCED  chat models: a ```python block, stopped at its closing fence (a
            fence on a line of its own); the fence is put back and an
            ```output block follows with the printed text or the error.
    TOOL_CALLS  chat APIs that take tools (OpenAI's `tools` / `tool_calls`):
            the API carries the call as data, the policy writes it into the
            sample's text as `<tool_call>` JSON (policies/base.py), and the
            result follows in `<tool_response>`; the policy turns both back
            into the assistant's call and a `tool` message when it continues.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

from thinkscale.policies.base import (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN,
                                      ToolSpec)


@dataclass(frozen=True)
class ToolResult:
    text: str  # what the tool printed or returned, or the error message when it failed
    ok: bool
    cpu_s: float = 0.0  # CPU seconds, of every process the call used
    wall_s: float = 0.0

    @classmethod
    def error(cls, message: str, cpu_s: float = 0.0, wall_s: float = 0.0) -> "ToolResult":
        return cls(f"error: {message}", False, cpu_s, wall_s)


class Tool(ABC):
    """Something a step may call: `await run(argument)` never raises."""

    name: str = "tool"
    description: str = ""  # what a model reads about it where an API declares tools
    argument: str = "argument"  # the name of its one argument there

    def __init__(self, timeout_s: float = 2.0, max_output_chars: int = 200) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be greater than 0, got {timeout_s}")
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars must be at least 1, got {max_output_chars}")
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars

    @abstractmethod
    async def run(self, argument: str) -> ToolResult:
        """Run one call; a failure is a result, never an exception."""

    def worst_cpu_s(self) -> float:
        """The most CPU seconds one call may take (a budget on tool CPU reserves this before a call)."""
        return self.timeout_s

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.argument)

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class ToolSyntax:
    """How a call is written in a model's text, and how its result is written back."""

    name: str
    open: str  # what starts a call; the argument runs from here to the closing marker
    close: str  # what ends a call: a stop string, so the policy halts there
    written: str  # what is appended after the argument; {result} is the tool's text, stripped
    result_pattern: str = r"[\s\S]*"  # what a successful result may look like to be written back at all
    shows_errors: bool = True  # False: a failed call writes an empty result (a vocabulary that cannot spell one)
    native: bool = False  # the policy's API makes the call (tools declared with each request), not a stop string

    def argument(self, text: str) -> str | None:
        """The argument of the call that `text` (a generation stopped at `close`) ends with; None if no
        call was opened since the last one closed."""
        start = text.rfind(self.open)
        if start < 0 or self.close in text[start:]:
            return None
        return text[start + len(self.open):]

    def render(self, result: ToolResult) -> str:
        """What is appended after the argument: the closing marker and the result."""
        shown = result.text.strip() if result.ok or self.shows_errors else ""
        return self.written.format(result=shown)

    def accepts(self, result: ToolResult) -> ToolResult:
        """`result`, or a failure if its text is not what this syntax can write back."""
        if result.ok and not re.fullmatch(self.result_pattern, result.text.strip()):
            shown = result.text.strip()[:40]
            return ToolResult.error(f"the result {shown!r} cannot be written in this syntax", result.cpu_s,
                                    result.wall_s)
        return result


TAG = ToolSyntax("tag", open="[", close="]", written="]={result}", result_pattern=r"-?\d+", shows_errors=False)
# The closing fence on a line of its own: "\n```" alone would stop at the opening fence too.
FENCED = ToolSyntax("fenced", open="```python\n", close="\n```\n", written="\n```\n```output\n{result}\n```\n")
TOOL_CALLS = ToolSyntax("tool_calls", open=TOOL_CALL_OPEN, close=TOOL_CALL_CLOSE,
                        written=TOOL_CALL_CLOSE + TOOL_RESPONSE_OPEN + "{result}" + TOOL_RESPONSE_CLOSE, native=True)
SYNTAXES = {s.name: s for s in (TAG, FENCED, TOOL_CALLS)}
