"""Shared fixtures: the shipped tiny checkpoints, loaded once, on one thread."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def arithmetic_checkpoint():
    from thinkscale.tiny import checkpoint

    return checkpoint.load("arithmetic")


@pytest.fixture(scope="session")
def countdown_checkpoint():
    from thinkscale.tiny import checkpoint

    return checkpoint.load("countdown")


@pytest.fixture(scope="session")
def arithmetic():
    from thinkscale.tasks import get_task

    return get_task("arithmetic")


@pytest.fixture(scope="session")
def countdown():
    from thinkscale.tasks import get_task

    return get_task("countdown")


@pytest.fixture(scope="module")
def policy():
    """The shipped arithmetic policy, one per test module (a tiny policy serves the event loops of its module)."""
    from thinkscale.policies import get_policy

    return get_policy("tiny", checkpoint_name="arithmetic")


@pytest.fixture(scope="module")
def confidence():
    """The confidence scorer on the arithmetic policy's own log-probabilities."""
    from thinkscale.scorers import get_scorer

    return get_scorer("confidence", checkpoint_name="arithmetic")
