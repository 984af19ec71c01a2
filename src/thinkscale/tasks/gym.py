"""Any reasoning-gym procedural dataset as a task: `reasoning_gym:<name>`.

    task = get_task("reasoning_gym:basic_arithmetic")
    task = get_task("reasoning_gym:basic_arithmetic", min_terms=3, max_terms=5)  # the dataset's config

Problems come from `reasoning_gym.create_dataset(name, size=..., seed=...)`
and are graded by that dataset's own `score_answer` (a score of 1.0 is
correct; partial credit is reported in the verdict's reason but is not a
pass). The answer is the last `<answer>...</answer>` of the completion, the
convention reasoning-gym's own prompts use.

reasoning-gym seeds item i with seed + i, so seeds 0 and 1 would give nearly
the same problems; thinkscale hashes (task, seed) into reasoning-gym's seed.
Train and test are kept disjoint the way the synthetic tasks keep them: by a
hash of the question (`split_of`), skipping repeats.
"""

from __future__ import annotations

import random
from typing import Any

from thinkscale.registry import unknown_name_error
from thinkscale.seeds import derive_seed
from thinkscale.tasks.base import Example, Problem, Task, Verdict, split_of

PREFIX = "reasoning_gym:"
_DRAW_FACTOR = 8  # items drawn per problem asked for: a quarter land in 'test', some repeat


def dataset_names() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class ReasoningGymTask(Task):
    difficulties = (0,)
    step_delimiter = "\n\n"
    template = ("{question}\n\nThink step by step, with a blank line between steps, "
                "then give the final answer inside <answer></answer>.")

    def __init__(self, dataset: str, template: str | None = None, **config: Any) -> None:
        try:
            import reasoning_gym
        except ImportError:
            raise ValueError("reasoning_gym tasks need reasoning-gym: pip install 'thinkscale[datasets]'") from None
        names = dataset_names()
        if dataset not in names:
            raise unknown_name_error("reasoning_gym dataset", dataset, names)
        self.dataset = dataset
        self.name = PREFIX + dataset
        self.config = config
        if template is not None:
            self.template = template
        if "{question}" not in self.template:
            raise ValueError(f"{self.name}: the prompt template has no '{{question}}': {self.template!r}")
        # Scoring needs a dataset object with this config, not any of its items.
        self._scorer = reasoning_gym.create_dataset(dataset, size=1, seed=0, **config)

    def _draw(self, size: int, seed: int) -> Any:
        import reasoning_gym

        return reasoning_gym.create_dataset(self.dataset, size=size, seed=derive_seed(self.name, seed, bits=32),
                                            **self.config)

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """`n` distinct problems of `split` (reasoning-gym datasets are endless: n is required)."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; valid splits: train, test")
        if n is None:
            raise ValueError(f"{self.name} is procedural: say how many problems (n)")
        size = _DRAW_FACTOR * n + 64
        data = self._draw(size, seed)
        out: list[Example] = []
        seen: set[str] = set()
        for i in range(size):
            if len(out) == n:
                break
            entry = data[i]
            question = entry["question"]
            if question in seen or split_of(question) != split:
                continue
            seen.add(question)
            problem = Problem(id=f"{self.name}/{split}/{seed}/{i}", prompt=self.prompt(question), difficulty=0)
            out.append(Example(problem, entry))
        if len(out) < n:
            raise RuntimeError(f"{self.name}: only {len(out)} distinct {split} problems among {size} drawn; "
                               "ask for fewer or widen the dataset's config")
        return out

    def prompt(self, question: str) -> str:
        return self.template.replace("{question}", question)

    def held_out(self, prompt: str) -> bool:
        """The split of the question inside `prompt` (the template around it removed), as `examples` draws it."""
        before, _, after = self.template.partition("{question}")
        question = prompt.removeprefix(before).removesuffix(after)
        return split_of(question) == "test"

    def generate(self, rng: random.Random, difficulty: int) -> tuple[str, Any, str]:
        raise ValueError(f"{self.name} has answers but no reference solutions to train a policy on")

    def extract_answer(self, completion: str) -> str | None:
        from reasoning_gym.utils import extract_answer

        return extract_answer(completion)

    def score(self, example: Example, answer: str | None) -> float:
        """The dataset's own score of `answer` (1.0 is correct)."""
        return float(self._scorer.score_answer(answer, example.reference))

    def answer_is_correct(self, example: Example, answer: str) -> bool:
        return answer is not None and self.score(example, answer) >= 1.0

    def verify(self, example: Example, completion: str) -> Verdict:
        answer = self.extract_answer(completion)
        if answer is None:
            return Verdict(False, "no <answer></answer>")
        score = self.score(example, answer)
        return Verdict(score >= 1.0, f"{answer!r} scored {score:.3g}")
