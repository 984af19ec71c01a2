"""The Task contract: problems by split, prompts, steps, answers and verdicts.

A strategy only ever sees a `Problem`: the prompt and its difficulty, never the
reference. The reference travels beside it in an `Example`, and only the
grading step (after the strategy has chosen) looks at it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Iterator

from thinkscale.verify.verdict import Verdict


@dataclass(frozen=True)
class Problem:
    """What a strategy is allowed to see."""

    id: str
    prompt: str
    difficulty: int


@dataclass(frozen=True)
class Example:
    """A problem and the reference that grades it (kept out of the strategy's reach)."""

    problem: Problem
    reference: Any


def split_of(text: str, test_share: int = 4) -> str:
    """Assign a problem to 'test' or 'train' by a hash of its text.

    The split depends on the problem alone, not on the order or seed it was
    generated with, so train and test stay disjoint however they are drawn.
    """
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return "test" if digest % test_share == 0 else "train"


class Task:
    """A family of problems with its prompt format and verifier.

    Subclasses implement `generate` (one random problem of a given difficulty,
    with a reference solution) and the answer/verdict methods.
    """

    name: str = "task"
    difficulties: tuple[int, ...] = ()
    votable: bool = True  # whether majority vote over final answers makes sense
    step_delimiter: str = "\n"
    extra_characters: str = ""  # characters a tiny core trained on this task needs beyond its default vocabulary

    # -- subclasses implement ------------------------------------------------
    def generate(self, rng: random.Random, difficulty: int) -> tuple[str, Any, str]:
        """One random problem: (prompt, reference, one reference solution)."""
        raise NotImplementedError

    def generate_for_training(self, rng: random.Random) -> tuple[str, str]:
        """One random (prompt, solution) pair of any difficulty; tasks may make it cheaper."""
        prompt, _, solution = self.generate(rng, rng.choice(self.difficulties))
        return prompt, solution

    def extract_answer(self, completion: str) -> str | None:
        raise NotImplementedError

    def verify(self, example: Example, completion: str) -> Verdict:
        """Grade a whole completion (its steps and its answer) against the reference."""
        raise NotImplementedError

    def answer_is_correct(self, example: Example, answer: str) -> bool:
        """Grade a bare answer (used by majority vote); tasks that are not votable may refuse."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------
    def split_steps(self, completion: str) -> list[str]:
        return [s for s in completion.split(self.step_delimiter) if s]

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """`n` distinct problems of `split`, spread evenly over the difficulties."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; valid splits: train, test")
        rng = random.Random(f"{self.name}/{split}/{seed}")
        out: list[Example] = []
        seen: set[str] = set()
        for i in range(n):
            difficulty = self.difficulties[i % len(self.difficulties)]
            for _ in range(10_000):
                prompt, reference, _ = self.generate(rng, difficulty)
                if prompt not in seen and split_of(prompt) == split:
                    break
            else:
                raise RuntimeError(f"{self.name}: could not draw {n} distinct {split} problems")
            seen.add(prompt)
            problem = Problem(id=f"{self.name}/{split}/{seed}/{i}", prompt=prompt, difficulty=difficulty)
            out.append(Example(problem=problem, reference=reference))
        return out

    def held_out(self, prompt: str) -> bool:
        """Whether the problem behind `prompt` belongs to a held-out (test) split, judged by its content.

        Training sets refuse such problems whatever their ids say.
        """
        return split_of(prompt) == "test"

    def training_stream(self, seed: int) -> Iterator[tuple[str, str]]:
        """An endless stream of (prompt, reference solution) from the train split."""
        rng = random.Random(f"{self.name}/stream/{seed}")
        while True:
            prompt, solution = self.generate_for_training(rng)
            if split_of(prompt) == "train":
                yield prompt, solution
