"""From a request to the problem a strategy solves: which text, in the task's prompt format, readable by the model.

The problem is the last user message of a chat (system and assistant messages
are not part of it: a task's prompt format has no place for them), or the
prompt of a completion. Its text, stripped, is written the way the task writes
its prompts: one line ending in the step delimiter, so `(3+5)*(7-2)=` becomes
the arithmetic prompt `(3+5)*(7-2)=\\n` (and `(3+5)*(7-2)` gets its `=` too).
A model that cannot read a character of it is refused here, before anything
is spent, saying which characters it reads.
"""

from __future__ import annotations

from typing import Any

from thinkscale.serve.errors import bad_request
from thinkscale.serve.models import ServedModel

# The end of a problem line in a task's prompt format, where the task's prompts have more than the delimiter.
PROMPT_ENDS = {"arithmetic": "="}


def message_text(content: Any, where: str) -> str:
    """A chat message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content} - {"text"}
        if kinds:
            raise bad_request(f"{where}: only text content is read, got parts of type {', '.join(map(str, kinds))}",
                              "messages")
        return "".join(str(p.get("text", "")) for p in content)
    raise bad_request(f"{where}: content must be a string or a list of text parts", "messages")


def chat_problem(messages: Any) -> str:
    """The problem text of a chat: its last user message."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required: a non-empty list of {role, content}; the last user message is "
                          "the problem", "messages")
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if not isinstance(message, dict) or "role" not in message:
            raise bad_request(f"messages[{i}] must be an object with a 'role'", "messages")
        if message["role"] == "user":
            return message_text(message.get("content"), f"messages[{i}]")
    raise bad_request("'messages' has no user message: the last user message is the problem", "messages")


def completion_problem(prompt: Any) -> str:
    """The problem text of a completion request: its prompt (one string, or a list holding one)."""
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("'prompt' is required: one string (one problem per request)", "prompt")
    return prompt


def problem_prompt(model: ServedModel, text: str, param: str) -> str:
    """`text` written as the task's prompt, checked against what the model can read."""
    text = text.strip()
    if not text:
        raise bad_request(f"the problem is empty; send one as the task writes it, e.g. {model.example!r}", param)
    end = PROMPT_ENDS.get(model.task.name, "")
    if end and not text.endswith(end):
        text += end
    prompt = text + model.task.step_delimiter
    try:
        model.policy.count_tokens(prompt)
    except ValueError as e:  # the tiny core's character vocabulary says which character, and which it reads
        raise bad_request(f"model {model.name!r} cannot read this problem: {e}. Send the problem as the task "
                          f"writes it, e.g. {model.example!r}", param, "unreadable_prompt") from None
    return prompt
