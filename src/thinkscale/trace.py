"""Node and Trace: the one record that every part of thinkscale reads and writes.

A Trace is a tree of Nodes. Repeated sampling is a tree of depth one (the root
holds the prompt, each child one whole completion); step-level search grows
deeper trees. Whatever made a Trace, the store, the analysis and the exports
read it the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from thinkscale.budget import Usage

FINISH_STOP = "stop"  # the generation ended on its own (end token or stop string)
FINISH_LENGTH = "length"  # cut off by the token limit: never counts as an answer
FINISH_CUT = "cut"  # stopped while generating by the search's own rule (a confidence floor): never an answer


@dataclass
class Node:
    """One step of reasoning, or one whole completion.

    `answer` is set on terminal nodes that finished and yielded an answer;
    `correct` only once the verifier has graded it.
    """

    id: int
    parent: int | None
    text: str
    num_tokens: int = 0
    logprob: float | None = None  # sum of the step's token log-probabilities
    scores: dict[str, float] = field(default_factory=dict)
    terminal: bool = False
    finish_reason: str | None = None
    answer: str | None = None
    correct: bool | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason == FINISH_STOP


@dataclass
class Trace:
    """What one strategy did on one problem: its tree, its choice and its cost."""

    problem_id: str
    strategy: str
    settings: dict[str, Any]
    seed: int
    nodes: list[Node] = field(default_factory=list)
    chosen_answer: str | None = None
    correct: bool | None = None  # the verdict on chosen_answer, set by grading
    usage: Usage = field(default_factory=Usage)
    difficulty: int | None = None
    chosen_node: int | None = None  # the terminal node whose answer was chosen, where one node was
    stopped_by: str | None = None  # the budget limit that cut the search short (e.g. "max_flops"), if one did

    def add(self, parent: int | None, text: str, **kwargs: Any) -> Node:
        node = Node(id=len(self.nodes), parent=parent, text=text, **kwargs)
        self.nodes.append(node)
        return node

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def terminals(self) -> Iterator[Node]:
        return (n for n in self.nodes if n.terminal)

    def path(self, node_id: int) -> list[Node]:
        """The nodes from the root's child down to `node_id` (the root holds the prompt)."""
        out, node = [], self.nodes[node_id]
        while node.parent is not None:
            out.append(node)
            node = self.nodes[node.parent]
            if len(out) > len(self.nodes):
                raise ValueError(f"trace {self.problem_id!r}: the parents of node {node_id} form a cycle")
        return out[::-1]

    def solution(self, node_id: int) -> str:
        """The whole solution text up to `node_id`: the texts along its path."""
        return "".join(n.text for n in self.path(node_id))

    def answers(self) -> list[str | None]:
        """The answer of each terminal node in order; None where it has none."""
        return [n.answer if n.finished else None for n in self.terminals()]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["usage"] = self.usage.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> "Trace":
        data = dict(data)
        data["nodes"] = [Node(**n) for n in data["nodes"]]
        data["usage"] = Usage.from_dict(data["usage"])
        return cls(**data)
