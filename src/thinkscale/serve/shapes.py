"""OpenAI's response shapes, filled from a search: chat and text completions, whole or as stream chunks.

The content is the chosen solution: the text of the path of the node whose
answer the strategy chose (its steps and its final answer). The reasoning is
every step or sample the search generated, in the order generated, under the
field names the server is configured with (`reasoning_content` and
`reasoning` by default). Usage counts the whole search: `completion_tokens` and
`completion_tokens_details.reasoning_tokens` are every token it generated (the
chosen solution is one of them), `prompt_tokens` every prompt token it sent
(once per sample), of which `prompt_tokens_details.cached_tokens` a prefix
cache could reuse. A `thinkscale` field says what ran, so it can be rerun offline.
"""

from __future__ import annotations

import time
from typing import Any

from thinkscale.serve.events import SearchEvent
from thinkscale.serve.plan import Plan
from thinkscale.trace import Trace


def chosen_solution(trace: Trace) -> str | None:
    """The text of the solution whose answer was chosen (the first such, where only an answer was chosen)."""
    if trace.chosen_node is not None:
        return trace.solution(trace.chosen_node)
    if trace.chosen_answer is None:
        return None
    node = next(n for n in trace.terminals() if n.finished and n.answer == trace.chosen_answer)
    return trace.solution(node.id)


def finish_reason(trace: Trace) -> str:
    """"stop" when an answer was chosen; "length" when the budget ended the search without one."""
    return "stop" if trace.chosen_answer is not None or trace.stopped_by is None else "length"


def usage(trace: Trace) -> dict[str, Any]:
    u = trace.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.generated_tokens,
            "total_tokens": u.prompt_tokens + u.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.generated_tokens}}


def about(plan: Plan, trace: Trace) -> dict[str, Any]:
    """The response's `thinkscale` field: the plan, the chosen answer, what stopped the search, its Usage."""
    return {**plan.describe(), "answer": trace.chosen_answer, "stopped_by": trace.stopped_by,
            "usage": trace.usage.to_dict()}


class Shaper:
    """Bodies and chunks of one response: a chat completion or a text completion."""

    def __init__(self, kind: str, response_id: str, model: str, reasoning_fields: list[str]) -> None:
        self.kind, self.id, self.model, self.fields = kind, response_id, model, reasoning_fields
        self.created = int(time.time())

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def _reasoning(self, text: str) -> dict[str, str]:
        return {name: text for name in self.fields}

    # -- whole -------------------------------------------------------------------
    def body(self, plan: Plan, trace: Trace, reasoning: str) -> dict[str, Any]:
        content = chosen_solution(trace) or ""
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": content, **self._reasoning(reasoning)},
                      "finish_reason": finish_reason(trace), "logprobs": None}
        else:
            choice = {"index": 0, "text": content, **self._reasoning(reasoning), "finish_reason": finish_reason(trace),
                      "logprobs": None}
        return {**self._envelope([choice], chunk=False), "usage": usage(trace), "thinkscale": about(plan, trace)}

    # -- streamed ----------------------------------------------------------------
    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            text = delta.pop("content", "")
            choice = {"index": 0, "text": text, **delta, "finish_reason": finish, "logprobs": None}
        return self._envelope([choice], chunk=True)

    def role(self) -> dict[str, Any]:
        """The delta that opens a chat stream (a text completion has none); it rides on the first chunk."""
        return {"role": "assistant", "content": ""} if self.kind == "chat" else {}

    def reasoning(self, events: list[SearchEvent], opening: bool = False) -> dict[str, Any]:
        """One chunk for events that happened together: their texts joined, each event's fields in order."""
        delta = self.role() if opening else {}
        return self._chunk({**delta, **self._reasoning("".join(event.text for event in events)),
                            "thinkscale": {"events": [event.extra() for event in events]}})

    def content(self, trace: Trace, events: list[SearchEvent], opening: bool = False) -> dict[str, Any]:
        """The chosen solution, whole, with the finish reason (it is all known at once), and `events` that came
        with the end and add no reasoning text (the chosen)."""
        delta = {**(self.role() if opening else {}), "content": chosen_solution(trace) or ""}
        if events:
            delta["thinkscale"] = {"events": [event.extra() for event in events]}
        return self._chunk(delta, finish_reason(trace))

    def usage_chunk(self, plan: Plan, trace: Trace) -> dict[str, Any]:
        """The last chunk: no choices, the whole search's usage, and what ran."""
        return {**self._envelope([], chunk=True), "usage": usage(trace), "thinkscale": about(plan, trace)}
