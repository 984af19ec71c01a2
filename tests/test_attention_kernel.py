"""Static decode's attention as a Triton kernel (tiny/attention_kernel.py), checked where there is no GPU by
Triton's interpreter (`make test-triton` installs Triton and sets TRITON_INTERPRET=1)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytestmark = pytest.mark.triton
# skips the module where Triton cannot run
from triton_device import DEVICE, assert_static_decode_draws_the_exact_loops_samples  # noqa: E402

from thinkscale.tiny import attention_kernel  # noqa: E402
from thinkscale.tiny.engine import CHUNK, Engine  # noqa: E402

from test_engine import _mixed_requests  # noqa: E402


def _cache(chunks, rows, heads, size, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, chunks, rows, heads, CHUNK * size, generator=gen).to(DEVICE, dtype)
    return cache[0].view(chunks, rows, heads, size, CHUNK), cache[1].view(chunks, rows, heads, CHUNK, size), gen


@pytest.mark.parametrize("dtype, size", [(torch.float32, 32), (torch.bfloat16, 32), (torch.float32, 64)])
def test_the_kernel_is_the_engines_attention(dtype, size):
    """Each row attends to its positions 0..pos among the chunks asked for, whichever chunk its position is in
    (chunks past it are never read), in a cache with more rows and chunks than the call reads; a head size
    other than the chunk's too."""
    keys, values, gen = _cache(5, 24, 4, size, dtype)
    rows, chunks = 20, 3
    q = (torch.randn(rows, 4, 1, size, generator=gen) * 0.3).to(DEVICE, dtype)
    pos = torch.randint(0, chunks * CHUNK, (rows,), generator=gen)
    pos[:3] = torch.tensor([0, CHUNK - 1, chunks * CHUNK - 1])  # the first position, a chunk's last, the last
    pos = pos.to(DEVICE)
    hidden = torch.arange(chunks * CHUNK, device=DEVICE).view(chunks, 1, CHUNK) > pos[None, :, None]
    bias = torch.zeros(chunks, rows, 1, 1, CHUNK, device=DEVICE).masked_fill_(hidden[:, :, None, None, :],
                                                                             float("-inf"))
    part = keys[:chunks, :rows], values[:chunks, :rows]
    exact = Engine._attend_all(q.double(), part[0].double(), part[1].double(), bias.double())
    out = attention_kernel.attend(q, keys, values, pos, chunks)
    assert out.shape == q.shape and out.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), exact, rtol=1e-4, atol=1e-5)
    else:  # float32 inside: closer to the exact attention than the bfloat16 matmuls
        one_pass = Engine._attend_all(q, *part, bias.to(dtype))
        assert float((out.double() - exact).abs().mean()) <= float((one_pass.double() - exact).abs().mean())
    nan_keys, nan_values = keys.clone(), values.clone()
    nan_keys[chunks:], nan_values[chunks:] = float("nan"), float("nan")  # chunks past the ones asked for
    for row, last in enumerate(pos.tolist()):  # and, below them, each row's chunks past its position
        nan_keys[last // CHUNK + 1:chunks, row] = float("nan")
        nan_values[last // CHUNK + 1:chunks, row] = float("nan")
    assert torch.equal(attention_kernel.attend(q, nan_keys, nan_values, pos, chunks), out)  # never read
    with pytest.raises(ValueError, match="chunk-major"):
        attention_kernel.attend(q, keys.transpose(-1, -2), values, pos, chunks)
    with pytest.raises(ValueError, match="do not fit"):
        attention_kernel.attend(q, keys, values, pos, keys.shape[0] + 1)


def test_static_decode_with_the_kernel_draws_the_exact_loops_samples(arithmetic_checkpoint, arithmetic):
    """End to end, static decode with the kernel (float32) draws the exact loop's samples but where two tokens
    were nearly tied."""
    reqs = [replace(r, params=replace(r.params, max_tokens=24))
            for r in _mixed_requests(arithmetic_checkpoint, arithmetic, n=2)[:4]]
    assert_static_decode_draws_the_exact_loops_samples(arithmetic_checkpoint.model, reqs, "triton_attention")
