"""The tiny core in llama.cpp: converted to GGUF, served by llama-cpp-python, sampled through `openai`.

Opt-in (`pytest -m llamacpp`, or `make test-llamacpp`, which installs
llama-cpp-python[server] and gguf first). The server runs on 127.0.0.1,
started here; the GGUF is converted once and cached under .cache/gguf/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from thinkscale.budget import Budget
from thinkscale.policies import GenerationRequest, get_policy
from thinkscale.policies.openai import LLAMACPP_PLAIN_SAMPLING, OpenAIPolicy
from thinkscale.runner import run
from thinkscale.strategies import get_strategy

pytestmark = pytest.mark.llamacpp
llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python[server]: run `make test-llamacpp`")
pytest.importorskip("gguf", reason="needs gguf: run `make test-llamacpp`")

from thinkscale.tiny.gguf import cached_gguf, serve_llamacpp  # noqa: E402
from served import check_step_generation, check_votes_grade_like_tiny, generate, running, texts

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "gguf"


@pytest.fixture(scope="module")
def gguf_file():
    return cached_gguf("arithmetic", CACHE)


@pytest.fixture(scope="module")
def server(gguf_file):
    with serve_llamacpp(gguf_file) as url:
        yield url


@pytest.fixture(scope="module")
def tiny():
    return get_policy("tiny", checkpoint_name="arithmetic")


def served_policy(url, **options):
    return OpenAIPolicy(url, extra_body=LLAMACPP_PLAIN_SAMPLING, **options)


def test_llamacpp_reads_our_tokenizer_and_computes_our_logits(gguf_file, arithmetic_checkpoint):
    model = llama_cpp.Llama(str(gguf_file), n_ctx=256, n_threads=1, logits_all=True, verbose=False,
                            type_k=0, type_v=0)  # an F32 KV cache, as the server gets
    tokenizer = arithmetic_checkpoint.tokenizer
    for text in ["(3+5)*(7-2)=\n8*(7-2)\n8*5\n40\n", "3,7,5,9>24\n7-5=2\n", "1 + 2 =\n"]:
        ids = tokenizer.encode(text)
        assert model.tokenize(text.encode(), add_bos=True) == ids
        assert model.detokenize(ids).decode() == text  # the BOS is a control token: no text
        model.reset()
        model.eval(ids)
        theirs = torch.tensor(model.scores[: len(ids)])  # (T, vocab)
        with torch.no_grad():
            ours = arithmetic_checkpoint.model(torch.tensor([ids]))[0]
        assert (theirs - ours).abs().max().item() < 1e-4
    assert model.token_eos() == tokenizer.eos_id and model.token_bos() == tokenizer.bos_id


def test_greedy_completions_equal_the_tiny_policy(server, tiny, arithmetic):
    requests = [GenerationRequest(prompt=e.problem.prompt, temperature=0, max_tokens=96)
                for e in arithmetic.examples("test", 24)]
    served = generate(served_policy(server), requests)
    assert texts(served) == texts(generate(tiny, requests))
    assert [r.prompt_tokens for r in served] == [len(arithmetic_checkpoint_ids(tiny, r.prompt)) for r in requests]


def test_repeated_sampling_and_majority_vote_grade_the_same_as_the_tiny_policy(server, tiny, arithmetic):
    served = check_votes_grade_like_tiny(served_policy(server, concurrency=4), tiny, arithmetic, problems=24)
    assert all(t.usage.samples == 4 and t.usage.policy_calls == 1 for t in served)  # greedy: asked once


def test_step_generation_stops_at_the_delimiter(server, tiny, arithmetic):
    check_step_generation(served_policy(server), tiny, arithmetic)  # llama.cpp does not say why it stopped; its tokens do


def test_beam_search_through_llamacpp_grades_the_same_as_the_tiny_policy(server, tiny, arithmetic):
    from thinkscale.scorers import get_scorer

    examples, scorer = arithmetic.examples("test", 8), get_scorer("confidence", checkpoint_name="arithmetic")
    strategy = get_strategy("beam_search", n=4, width=2, temperature=0)
    served = run(examples, arithmetic, strategy, served_policy(server), Budget(), seed=0, scorer=scorer)
    direct = run(examples, arithmetic, strategy, tiny, Budget(), seed=0, scorer=scorer)
    assert [(t.chosen_answer, t.correct) for t in served] == [(t.chosen_answer, t.correct) for t in direct]
    assert [[n.text for n in t.nodes] for t in served] == [[n.text for n in t.nodes] for t in direct]


def test_seeded_sampling_gives_distinct_samples(server, arithmetic):
    prompt = arithmetic.examples("test", 1)[0].problem.prompt
    request = GenerationRequest(prompt=prompt, n=6, temperature=1.0, max_tokens=96, seed=5)
    policy = served_policy(server)
    first, again = generate(policy, [request]), generate(served_policy(server), [request])
    assert len(first[0].generations) == 6 and texts(first) == texts(again)
    assert len({g.text for g in first[0].generations}) > 1
    assert policy.native_n is False  # llama-cpp-python's server ignores `n`; learnt from its answer
    assert first[0].backend_calls == 6

def arithmetic_checkpoint_ids(tiny, prompt):
    return tiny.tokenizer.encode(prompt)


def test_thinkscale_serve_in_front_of_llamacpp_answers_as_the_tiny_core(server, tiny, arithmetic):
    """thinkscale serve with llama.cpp as its upstream: beam search over llama.cpp's completions, greedy, gives
    the answer the same search gives on the tiny core in process."""
    import asyncio
    import dataclasses

    import openai

    from thinkscale.config import PolicyConfig
    from thinkscale.scorers import get_scorer
    from thinkscale.serve.config import ModelConfig, load_serve_config
    from thinkscale.tasks import Problem

    upstream = ModelConfig("llamacpp", "arithmetic", PolicyConfig("openai", {
        "base_url": server, "extra_body": LLAMACPP_PLAIN_SAMPLING}), ["prm"])
    config = dataclasses.replace(load_serve_config(None), models=[upstream])
    settings = {"n": 4, "width": 2, "temperature": 0}
    problems = [e.problem.prompt.strip() for e in arithmetic.examples("test", 4)]
    with running(config, []) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        answers = [client.chat.completions.create(model="beam_search:llamacpp", seed=0, extra_body={
            "settings": settings}, messages=[{"role": "user", "content": p}]) for p in problems]
    prm = get_scorer("prm", checkpoint_name="arithmetic-prm")
    for problem, answer in zip(problems, answers):
        plan = answer.model_extra["thinkscale"]
        trace = asyncio.run(get_strategy("beam_search", **settings).solve(
            Problem("offline", problem + "\n", 0), arithmetic, tiny, prm, Budget(**plan["budget"]), 0))
        assert plan["answer"] == trace.chosen_answer
        assert answer.choices[0].message.content == trace.solution(trace.chosen_node)
