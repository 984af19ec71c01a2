"""The outcome reward model scorer: P(+) after the whole solution, from a tiny-family ORM.

Trained by `thinkscale train orm` on whole solutions of train problems and
their verdicts. It reads a solution as one step and gives one score; on a
partial solution (in a step-level search) it scores the text so far.
"""

from __future__ import annotations

from thinkscale.scorers.prm import PRMScorer
from thinkscale.tiny import DtypeName


class ORMScorer(PRMScorer):
    name = "orm"

    def __init__(self, checkpoint_name: str = "arithmetic-orm", prefix_cache_mb: float = 512,
                 dtype: DtypeName = "float32", cpu_kernel: bool | None = None) -> None:
        super().__init__(checkpoint_name, prefix_cache_mb, dtype, cpu_kernel)

    def steps_of(self, solution: str, delimiter: str) -> list[str]:
        return [solution] if solution.strip() else []
