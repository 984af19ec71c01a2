"""The Policy contract: one async interface in front of every backend.

A request is a prompt, `n`, sampling settings, stop strings and a seed; a
result holds n generations, each with its text, token count, finish reason and
(where the backend gives them) log-probabilities. A policy states what it can
do natively, and callers adapt instead of failing.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from thinkscale.trace import FINISH_STOP


@dataclass(frozen=True)
class Capabilities:
    native_n: bool  # one call returns n samples of a prompt
    prefix_caching: bool  # the prompt is computed once for all n samples
    logprobs: bool  # generations carry log-probabilities
    tool_calls: bool = False  # the API declares tools and returns calls as data (OpenAI's tools / tool_calls)
    confidence: bool = False  # generations carry DeepConf confidences, and a confidence floor cuts them in flight
    streams: bool = False  # a request's on_text hears its first sample's text as it is generated
    reports_cuts: bool = False  # a request given up reports what it had generated (on_cut)


@dataclass(frozen=True)
class Confidence:
    """What a request asks of a generation's confidence (DeepConf, arXiv 2508.15260; tiny/engine.py).

    A token's confidence is minus the mean log-probability of the `top_k` most
    likely tokens at its step; a group's is the mean over `window` tokens; a
    generation reports its lowest group's. With a `floor`, a generation whose
    current group falls below it is cut while it is generated (FINISH_CUT).
    """

    window: int = 16
    top_k: int = 5
    floor: float | None = None

    def __post_init__(self) -> None:
        if self.window < 1 or self.top_k < 1:
            raise ValueError(f"confidence window and top_k must be at least 1, got {self.window}, {self.top_k}")


@dataclass(frozen=True)
class ToolSpec:
    """A tool as a request declares it to a model whose API takes tools: one string argument."""

    name: str
    description: str
    argument: str  # the argument's name, e.g. "expression" or "code"

    def as_openai(self) -> dict:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "properties": {self.argument: {"type": "string"}},
                           "required": [self.argument]}}}


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()  # the stop string itself is not part of the text (as in OpenAI's API)
    seed: int = 0
    cache_scope: object = None  # a backend's prefix cache shares computed prefixes within one scope (a search)
    # Where in `prompt` the model's own reply begins (a partial solution, tool results included); None: the
    # prompt is all the user's. Raw-text backends read the prompt whole; a chat API sends the reply as the
    # assistant's message to continue.
    reply_start: int | None = None
    tools: tuple[ToolSpec, ...] = ()  # tools declared to an API that takes them (Capabilities.tool_calls)
    confidence: Confidence | None = None  # confidences wanted (Capabilities.confidence), and a floor
    # Called with the first sample's text as it is generated, piece by piece, on any thread, where the backend
    # streams (Capabilities.streams); the pieces join to that sample's text. Not part of what is asked.
    on_text: Callable[[str], None] | None = field(default=None, compare=False)
    # Called once, on any thread, with the tokens generated for this request if its caller gave up on it
    # (a wall-time cut, a client gone), where the backend reports them (Capabilities.reports_cuts).
    on_cut: Callable[[int], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if any(not s for s in self.stop):
            raise ValueError("an empty stop string would stop every generation at once")
        if self.reply_start is not None and not 0 <= self.reply_start <= len(self.prompt):
            raise ValueError(f"reply_start must be within the prompt (0 to {len(self.prompt)}), got {self.reply_start}")

    @property
    def reply(self) -> str:
        """The part of the prompt the model wrote itself (empty when the prompt is all the user's)."""
        return "" if self.reply_start is None else self.prompt[self.reply_start:]

    @property
    def user_prompt(self) -> str:
        return self.prompt if self.reply_start is None else self.prompt[: self.reply_start]


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int  # generated tokens, the end or stop token included
    finish_reason: str  # FINISH_STOP (ended on its own or at a stop string) or FINISH_LENGTH (cut off)
    logprob: float | None = None  # sum over the generated tokens
    stop_string: str | None = None  # the stop string it ended at; None if it ended on its own or was cut off
    confidence: float | None = None  # its lowest group confidence, where the request asked (Confidence)

    @property
    def ended(self) -> bool:
        """The model ended the whole completion (end token), not at a stop string or the token limit."""
        return self.finish_reason == FINISH_STOP and self.stop_string is None


@dataclass(frozen=True)
class GenerationResult:
    generations: tuple[Generation, ...]
    prompt_tokens: int  # tokens in the prompt (computed once if prefix_caching)
    backend_calls: int = 1
    cached_prompt_tokens: int = 0  # of the prompt's tokens, those a cache already held (not computed for this call)


# How a call made through an API's tool calls is written in a sample's text, so that a trace reads it and
# a chat policy turns the text back into the messages that API expects (the markup chat templates use):
#     <tool_call>\n{"name": "calc", "arguments": {"expression": "347*28"}}\n</tool_call>\n
#     <tool_response>\n9716\n</tool_response>\n
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>\n", "\n</tool_call>\n"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>\n", "\n</tool_response>\n"
_EXCHANGE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE + TOOL_RESPONSE_OPEN)
                       + r"(.*?)" + re.escape(TOOL_RESPONSE_CLOSE), re.S)


@dataclass(frozen=True)
class ToolExchange:
    before: str  # the reply's text before the call
    name: str
    arguments: dict
    result: str


def tool_call_text(name: str, arguments: dict) -> str:
    """A call as a sample's text records it, up to (not including) TOOL_CALL_CLOSE."""
    return TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": arguments})


def tool_exchanges(reply: str) -> tuple[list[ToolExchange], str]:
    """The calls a reply's text records, each with the text before it and its result; and the text after
    the last one."""
    exchanges, start = [], 0
    for match in _EXCHANGE.finditer(reply):
        try:
            call = json.loads(match.group(1))
            name, arguments = call["name"], call["arguments"]
        except (ValueError, KeyError, TypeError):
            continue  # not a call this markup wrote: it stays text
        exchanges.append(ToolExchange(reply[start:match.start()], str(name), arguments, match.group(2)))
        start = match.end()
    return exchanges, reply[start:]


def first_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """The stop string that occurs earliest in `text` (the first listed among equals), if any."""
    found = [(text.index(s), i) for i, s in enumerate(stop) if s in text]
    return stop[min(found)[1]] if found else None


class Policy(ABC):
    """A language model that samples completions."""

    name: str = "policy"
    capabilities: Capabilities

    @abstractmethod
    async def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order."""

    def flops_per_token(self) -> float | None:
        """Estimated FLOPs per token of a forward pass, where the model is known."""
        return None

    def max_calls(self, request: GenerationRequest) -> int:
        """Backend calls that `request` may take at most (a budget on calls holds against this)."""
        return 1

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as a prompt; where the backend's tokenizer is not at hand, a bound (its UTF-8
        bytes, plus room for special tokens)."""
        return len(text.encode()) + 16

    def release(self, cache_scope: object) -> None:
        """The search of `cache_scope` has ended: a backend may forget what it cached for it. Called from
        a garbage collector's finalizer, on any thread, at any moment: it must take no lock."""

    async def close(self) -> None:
        return None
