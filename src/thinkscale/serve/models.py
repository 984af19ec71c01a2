"""What the server holds while it runs: each served model's task, policy and reward models, loaded once.

Built at start-up, inside the server's event loop (a policy serves the event
loop it was first used from), and closed at shutdown. No request state lives
here: requests share the models, as the runner's problems do, and the policy
batches what they send together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thinkscale.policies.base import Policy
from thinkscale.serve.config import ModelConfig, ServeConfig
from thinkscale.tasks import Task, get_task


@dataclass
class ServedModel:
    name: str
    task: Task
    policy: Policy
    scorers: dict[str, Any] = field(default_factory=dict)
    example: str = ""  # one problem as the task writes it, for error messages

    @classmethod
    def load(cls, config: ModelConfig) -> ServedModel:
        from thinkscale.config import ScorerConfig

        task = get_task(config.task)
        policy = config.policy.build(task.name)
        scorers = {name: ScorerConfig(name).build(task.name) for name in config.scorers}
        example = task.examples("test", 1)[0].problem.prompt.strip()
        return cls(config.name, task, policy, scorers, example)

    async def close(self) -> None:
        await self.policy.close()


def load_models(config: ServeConfig) -> dict[str, ServedModel]:
    """Every model of the config, by name (loading reads the shipped checkpoints: well under a second each)."""
    return {m.name: ServedModel.load(m) for m in config.models}
