"""The Policy contract: one async interface in front of every backend.

A request is a prompt, `n`, sampling settings, stop strings and a seed; a
result holds n generations, each with its text, token count, finish reason and
(where the backend gives them) log-probabilities. A policy states what it can
do natively, and callers adapt instead of failing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from thinkscale.trace import FINISH_STOP


@dataclass(frozen=True)
class Capabilities:
    native_n: bool  # one call returns n samples of a prompt
    prefix_caching: bool  # the prompt is computed once for all n samples
    logprobs: bool  # generations carry log-probabilities


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


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int  # generated tokens, the end or stop token included
    finish_reason: str  # FINISH_STOP (ended on its own or at a stop string) or FINISH_LENGTH (cut off)
    logprob: float | None = None  # sum over the generated tokens
    stop_string: str | None = None  # the stop string it ended at; None if it ended on its own or was cut off

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
