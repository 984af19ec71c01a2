"""The tiny core served by vLLM's CPU build, sampled through the `openai` policy.

Opt-in (`pytest -m vllm`, or `make test-vllm`, which first creates the vLLM
environment). vLLM brings its own torch, so it lives in a virtual environment
of its own, never in the project's: `.venv-vllm/` in the repository root by
default, or the interpreter named by $THINKSCALE_VLLM_PYTHON. The module is
skipped when that interpreter is missing or cannot import vllm.

The server runs on 127.0.0.1 on a free port, started here from the shipped
checkpoint directory as it is (config.json, model.safetensors, tokenizer.json):
float32, eager mode, a 256-token context and 1 GiB of KV cache. It is stopped
at the end of the module (its whole process group: API server, engine core
and worker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from served import check_step_generation, check_votes_grade_like_tiny, generate, texts

from thinkscale.budget import Budget
from thinkscale.net import free_port, wait_until_serving
from thinkscale.policies import GenerationRequest, get_policy
from thinkscale.runner import run
from thinkscale.strategies import get_strategy
from thinkscale.tiny import checkpoint

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("THINKSCALE_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
STARTUP_S = 600.0  # about 40 s on 2 busy cores; the first start after an install compiles bytecode


def _vllm_version() -> str | None:
    if not os.access(VLLM_PYTHON, os.X_OK):
        return None
    probe = subprocess.run([str(VLLM_PYTHON), "-c", "import vllm; print(vllm.__version__)"],
                           capture_output=True, text=True, timeout=300)
    return probe.stdout.strip() if probe.returncode == 0 else None


VLLM_VERSION = _vllm_version()
if VLLM_VERSION is None:
    pytest.skip(f"needs vLLM's CPU build at {VLLM_PYTHON} (or $THINKSCALE_VLLM_PYTHON): run `make test-vllm`",
                allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    port = free_port()
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(checkpoint.resolve("arithmetic")), "--served-model-name", "tiny",
               "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32",        # the checkpoint's own precision: logits equal the tiny core's
               "--max-model-len", "256",    # the tiny core's positions
               "--enforce-eager",           # no torch.compile: starts in seconds, not minutes
               "--seed", "0", "--disable-log-stats", "--uvicorn-log-level", "warning"]
    env = {**os.environ,
           "VLLM_CPU_KVCACHE_SPACE": "1",           # GiB of KV cache (the default is sized for real models)
           "VLLM_CPU_OMP_THREADS_BIND": "nobind",   # do not pin threads to cores other work shares
           "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)  # its own process group, stopped as one
        try:
            url = f"http://127.0.0.1:{port}/v1"
            wait_until_serving(url, process, STARTUP_S, "vLLM's server", log)
            print(f"vLLM {VLLM_VERSION} ready on {url} after {time.monotonic() - started:.1f}s")
            yield url
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # the API server has exited; end whatever of its group is left (engine core, worker)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


@pytest.fixture(scope="module")
def tiny():
    return get_policy("tiny", checkpoint_name="arithmetic")


def served_policy(url, **options):
    return get_policy("openai", base_url=url, **options)


def post(url, path, body):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def test_vllm_reads_our_tokenizer_and_computes_our_logits(server, arithmetic_checkpoint):
    """vLLM's prompt log-probabilities (top 5 at each position) against the tiny core's own."""
    tokenizer, model = arithmetic_checkpoint.tokenizer, arithmetic_checkpoint.model
    worst = 0.0
    for text in ["(3+5)*(7-2)=\n8*(7-2)\n8*5\n40\n", "3,7,5,9>24\n7-5=2\n", "1 + 2 =\n"]:
        ids = tokenizer.encode(text)
        answer = post(server, "/completions", {"model": "tiny", "prompt": text, "max_tokens": 1,
                                               "temperature": 0, "prompt_logprobs": 5})
        assert answer["usage"]["prompt_tokens"] == len(ids)  # the BOS, then one token per character
        served = answer["choices"][0]["prompt_logprobs"]
        assert served[0] is None and len(served) == len(ids)
        with torch.no_grad():
            ours = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)  # (T, vocab)
        for position in range(1, len(ids)):  # what position - 1 predicted
            top = {int(token): entry["logprob"] for token, entry in served[position].items()}
            assert ids[position] in top
            for token, logprob in top.items():
                worst = max(worst, abs(logprob - ours[position - 1, token].item()))
    print(f"largest |logprob difference| over the top 5 at each position: {worst:.2e}")
    assert worst < 1e-4, worst


def test_greedy_completions_equal_the_tiny_policy(server, tiny, arithmetic):
    requests = [GenerationRequest(prompt=e.problem.prompt, temperature=0, max_tokens=96)
                for e in arithmetic.examples("test", 24)]
    policy = served_policy(server)
    served = generate(policy, requests)
    assert texts(served) == texts(generate(tiny, requests))
    assert [r.prompt_tokens for r in served] == [len(tiny.tokenizer.encode(r.prompt)) for r in requests]
    assert all(g.ended for r in served for g in r.generations)  # each solution ends with the end token
    assert policy.requests_sent == len(requests) + 1  # one per request, and GET /models once


def test_native_n_one_request_for_all_samples(server, arithmetic):
    prompt = arithmetic.examples("test", 1)[0].problem.prompt
    request = GenerationRequest(prompt=prompt, n=6, temperature=1.0, max_tokens=96, seed=5)
    policy = served_policy(server, model="tiny")
    first = generate(policy, [request])
    assert policy.native_n is True and policy.requests_sent == 1 and first[0].backend_calls == 1
    assert len(first[0].generations) == 6 and len({g.text for g in first[0].generations}) > 1
    assert first[0].prompt_tokens == len(prompt) + 1
    assert texts(generate(served_policy(server, model="tiny"), [request])) == texts(first)  # seeded: repeatable


def test_step_generation_stops_at_the_delimiter(server, tiny, arithmetic):
    check_step_generation(served_policy(server), tiny, arithmetic)  # vLLM says why it stopped: stop_reason, null at the end


@pytest.mark.parametrize("n", [1, 4])
def test_repeated_sampling_and_majority_vote_at_temperature_0_grade_the_same_as_the_tiny_policy(
        n, server, tiny, arithmetic):
    check_votes_grade_like_tiny(served_policy(server, concurrency=4), tiny, arithmetic, problems=12, n=n)


def test_majority_vote_samples_natively(server, arithmetic):
    """At temperature > 0 each problem's n samples come from one request (vLLM honours `n`)."""
    examples = arithmetic.examples("test", 12)
    policy = served_policy(server, concurrency=4)
    traces = run(examples, arithmetic, get_strategy("majority_vote", n=4, temperature=0.7, max_tokens=96),
                 policy, Budget(), seed=0)
    assert policy.native_n is True
    assert all(t.usage.samples == 4 and t.usage.policy_calls == 1 for t in traces)
    assert policy.requests_sent == len(examples) + 1  # and GET /models once
    assert sum(bool(t.correct) for t in traces) >= len(examples) // 2  # sampled answers still solve many of them
