"""What the Triton tests (`-m triton`) run on: a GPU where there is one, else Triton's interpreter on the CPU
(`make test-triton` installs Triton and sets TRITON_INTERPRET=1). Imported at a test module's top, it skips
the module where neither can run."""

from __future__ import annotations

import copy
import os

import pytest
import torch

pytest.importorskip("triton", reason="needs Triton: run `make test-triton`")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU: Triton runs here only in its interpreter (TRITON_INTERPRET=1, set by make test-triton)",
                allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_static_decode_draws_the_exact_loops_samples(model, requests, setting: str) -> None:
    """Static decode with the engine's `setting` on (float32) draws the exact loop's samples but where two tokens
    were nearly tied; on a GPU, in steps captured in CUDA graphs (not kernel by kernel after a failed capture).
    Both engines run the torch path on a CPU: there the C kernel, every engine's default, would stand in for
    Triton."""
    from thinkscale.tiny.engine import Engine

    exact = Engine(copy.deepcopy(model), max_rows=8, device=DEVICE, static_decode=False,
                   cpu_kernel=False).generate(requests)
    engine = Engine(copy.deepcopy(model), max_rows=8, device=DEVICE, static_decode=True, cpu_kernel=False)
    setattr(engine, setting, True)
    pairs = [(a, b) for x, y in zip(exact, engine.generate(requests)) for a, b in zip(x, y)]
    if DEVICE == "cuda":
        assert engine.cuda_graphs and engine._graphs
    same = [(a, b) for a, b in pairs if a.token_ids == b.token_ids]
    assert len(same) >= 0.75 * len(pairs) and all(abs(a.logprob - b.logprob) < 1e-3 for a, b in same)
