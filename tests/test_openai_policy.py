"""The openai policy against a real HTTP server on 127.0.0.1 that serves the tiny core.

The server (tests/tiny_openai_server.py) answers with the tiny policy's own
generations, so every sample that comes back through the openai policy can be
checked against the tiny policy directly; its faults are the ways real servers
fail. A fault ends in a retry that gets the right samples, or in a clear
BackendError: never in an empty or wrong sample.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from tiny_openai_server import TinyOpenAIServer

from thinkscale.budget import Budget
from thinkscale.config import parse_config
from thinkscale.policies import GenerationRequest, get_policy
from thinkscale.policies.openai import BackendError, OpenAIPolicy, _share
from thinkscale.runner import run
from thinkscale.strategies import get_strategy

FAST = {"max_retries": 2, "backoff_s": 0.01}


@pytest.fixture(scope="module")
def tiny():
    return get_policy("tiny", checkpoint_name="arithmetic")


@pytest.fixture(scope="module")
def served():
    """The servers' own tiny policy: a policy serves one event loop, and the servers run theirs on a thread."""
    return get_policy("tiny", checkpoint_name="arithmetic")


@pytest.fixture
def server(served):
    with TinyOpenAIServer(served) as s:
        yield s


def generate(policy, *requests):
    async def go():
        try:
            return await policy.generate(list(requests))
        finally:
            await policy.close()

    return asyncio.run(go())


def as_tuples(result):
    """Texts and finish reasons, then the tokens they took in all.

    Per-sample token counts are exact only where the server says them; the
    share of one answer's total among several choices is an estimate.
    """
    return [(g.text, g.finish_reason, g.stop_string) for g in result.generations] + \
        [sum(g.num_tokens for g in result.generations)]


def request_for(arithmetic, i=0, **kwargs):
    return GenerationRequest(prompt=arithmetic.examples("test", i + 1)[i].problem.prompt, **kwargs)


# -- what comes back is what the model generated ------------------------------------

def test_samples_equal_the_tiny_policys_own(tiny, server, arithmetic):
    requests = [request_for(arithmetic, i, n=4, temperature=0.8, max_tokens=48, seed=7 + i) for i in range(3)]
    through_http = generate(OpenAIPolicy(server.base_url), *requests)
    direct = generate(tiny, *requests)
    for mine, theirs in zip(through_http, direct):
        assert as_tuples(mine) == as_tuples(theirs)
        assert mine.prompt_tokens == theirs.prompt_tokens and mine.backend_calls == 1
    assert [b["n"] for b in server.bodies] == [4, 4, 4]
    assert {b["model"] for b in server.bodies} == {"tiny-arithmetic"}  # found by GET /models


def test_greedy_samples_are_asked_for_once(tiny, server, arithmetic):
    """n greedy samples are one sample n times: one request with n=1 (vLLM refuses n > 1 at temperature 0)."""
    request = request_for(arithmetic, 2, n=4, temperature=0, max_tokens=48, seed=3)
    (result,) = generate(OpenAIPolicy(server.base_url), request)
    assert [b["n"] for b in server.bodies] == [1] and result.backend_calls == 1
    (direct,) = generate(tiny, request)
    assert [g.text for g in result.generations] == [g.text for g in direct.generations]
    assert len(result.generations) == 4


def test_a_server_that_ignores_n_gets_concurrent_single_requests(served, tiny, arithmetic):
    request = request_for(arithmetic, 3, n=4, temperature=1.0, max_tokens=48, seed=11)  # a hard problem
    with TinyOpenAIServer(served, honour_n=False) as server:
        policy = OpenAIPolicy(server.base_url)
        assert policy.native_n is None and policy.capabilities.native_n
        (result,) = generate(policy, request)
    assert policy.native_n is False and not policy.capabilities.native_n  # learnt from the answer
    assert sorted((b["n"], b["seed"]) for b in server.bodies) == [(1, 12), (1, 13), (1, 14), (4, 11)]
    singles = [generate(tiny, GenerationRequest(prompt=request.prompt, n=1, temperature=1.0, max_tokens=48,
                                                seed=11 + i))[0] for i in range(4)]
    assert [(g.text, g.finish_reason, g.num_tokens) for g in result.generations] == \
        [(s.generations[0].text, s.generations[0].finish_reason, s.generations[0].num_tokens) for s in singles]
    assert len({g.text for g in result.generations}) > 1  # distinct seeds, distinct samples
    assert result.backend_calls == 4


def step_requests(tiny, arithmetic):
    """Continue a partial solution by one step; the same, cut off; and a finished one, which just ends."""
    example = arithmetic.examples("test", 1)[0]
    (whole,) = generate(tiny, GenerationRequest(prompt=example.problem.prompt, temperature=0, max_tokens=64))
    solution = whole.generations[0].text
    partial = example.problem.prompt + arithmetic.split_steps(solution)[0] + arithmetic.step_delimiter
    stop = (arithmetic.step_delimiter,)
    return solution, [GenerationRequest(prompt=partial, temperature=0, max_tokens=64, stop=stop),
                      GenerationRequest(prompt=partial, temperature=0, max_tokens=1, stop=stop),
                      GenerationRequest(prompt=example.problem.prompt + solution, temperature=0, max_tokens=8,
                                        stop=stop)]


@pytest.mark.parametrize("says_stop_reason", [True, False])
def test_step_generation_continues_a_partial_solution_and_stops_at_the_delimiter(served, tiny, arithmetic,
                                                                                  says_stop_reason):
    solution, requests = step_requests(tiny, arithmetic)
    with TinyOpenAIServer(served, says_stop_reason=says_stop_reason) as server:
        step, cut, end = (r.generations[0] for r in generate(OpenAIPolicy(server.base_url), *requests))
        assert server.bodies[0]["stop"] == ["\n"] and server.bodies[0]["logprobs"] == 1
    assert step.text == arithmetic.split_steps(solution)[1]
    assert (step.finish_reason, step.stop_string, step.ended) == ("stop", "\n", False)
    assert (cut.finish_reason, cut.stop_string) == ("length", None)
    assert (end.text, end.finish_reason, end.stop_string, end.ended) == ("", "stop", None, True)
    direct = generate(tiny, *requests)
    assert [(g.text, g.finish_reason, g.stop_string) for g in (step, cut, end)] == \
           [(r.generations[0].text, r.generations[0].finish_reason, r.generations[0].stop_string) for r in direct]


def test_chat_api_sends_the_prompt_as_the_users_message(tiny, server, arithmetic):
    request = request_for(arithmetic, n=2, temperature=0.7, max_tokens=48, seed=3)
    (result,) = generate(OpenAIPolicy(server.base_url, api="chat", model="tiny-arithmetic"), request)
    assert as_tuples(result) == as_tuples(generate(tiny, request)[0])
    assert server.bodies[0]["messages"] == [{"role": "user", "content": request.prompt}]


def test_majority_vote_grades_the_same_as_the_tiny_policy(tiny, server, arithmetic):
    examples = arithmetic.examples("test", 8)
    strategy = get_strategy("majority_vote", n=3, temperature=0, max_tokens=64)
    through_http = run(examples, arithmetic, strategy, OpenAIPolicy(server.base_url), Budget(), seed=0)
    direct = run(examples, arithmetic, strategy, tiny, Budget(), seed=0)
    assert [(t.chosen_answer, t.correct) for t in through_http] == [(t.chosen_answer, t.correct) for t in direct]
    for mine, theirs in zip(through_http, direct):
        assert mine.usage.generated_tokens == theirs.usage.generated_tokens
        assert mine.usage.samples == 3 and mine.usage.policy_calls == 1


def test_step_search_over_the_chat_api_continues_the_assistants_reply(tiny, server, arithmetic):
    """Each step asks the server to continue the reply so far, as the assistant's own message (vLLM's
    `continue_final_message`): the search is the one it is in process."""
    from thinkscale.scorers import get_scorer

    examples, scorer = arithmetic.examples("test", 6), get_scorer("confidence", checkpoint_name="arithmetic")
    strategy = get_strategy("beam_search", n=4, width=2, temperature=0.8)
    chat = run(examples, arithmetic, strategy, OpenAIPolicy(server.base_url, api="chat", model="m"), Budget(),
               seed=0, scorer=scorer)
    direct = run(examples, arithmetic, strategy, tiny, Budget(), seed=0, scorer=scorer)
    assert [[n.text for n in t.nodes] for t in chat] == [[n.text for n in t.nodes] for t in direct]
    assert [(t.chosen_answer, t.correct) for t in chat] == [(t.chosen_answer, t.correct) for t in direct]
    later = [b for b in server.bodies if len(b["messages"]) > 1]
    assert later and all(b["continue_final_message"] and not b["add_generation_prompt"] for b in later)
    for body in later:
        user, reply = body["messages"]
        assert user["role"] == "user" and user["content"] in {e.problem.prompt for e in examples}
        assert reply["role"] == "assistant" and reply["content"]
    # a server that cannot continue a reply (OpenAI's own API): whole samples work, step search is refused
    strict = OpenAIPolicy(server.base_url, api="chat", model="m", continue_final_message=False)
    assert run(examples[:2], arithmetic, get_strategy("majority_vote", n=2), strict, Budget())
    with pytest.raises(BackendError, match="continue_final_message: false"):
        run(examples[:1], arithmetic, strategy, strict, Budget(), scorer=scorer)


def test_requests_are_spread_over_base_urls_within_the_concurrency_limit(served, tiny, arithmetic):
    requests = [request_for(arithmetic, i, temperature=0, max_tokens=32) for i in range(8)]
    other = get_policy("tiny", checkpoint_name="arithmetic")  # each server's loop needs a policy of its own
    with TinyOpenAIServer(served, delay_s=0.05) as a, TinyOpenAIServer(other, delay_s=0.05) as b:
        policy = OpenAIPolicy([a.base_url, b.base_url], model="tiny-arithmetic", concurrency=2)
        results = generate(policy, *requests)
        assert len(a.bodies) == len(b.bodies) == 4
        assert a.max_in_flight + b.max_in_flight <= 2
    assert [as_tuples(r) for r in results] == [as_tuples(r) for r in generate(tiny, *requests)]
    assert policy.requests_sent == 8 and 0 < policy.clock.busy_s


def test_a_dead_url_among_several_is_retried_on_another(server, arithmetic):
    policy = OpenAIPolicy([f"http://127.0.0.1:{free_port()}/v1", server.base_url], model="tiny-arithmetic", **FAST)
    results = generate(policy, *[request_for(arithmetic, i, temperature=0, max_tokens=32) for i in range(4)])
    assert all(r.generations[0].text for r in results) and len(server.bodies) == 4


def test_registered_and_usable_from_a_run_config(server):
    config = parse_config(f"task: arithmetic\noutput: runs/x\npolicy:\n  name: openai\n"
                          f"  options: {{base_url: '{server.base_url}', concurrency: 4}}\n"
                          f"strategies:\n  - name: majority_vote\n")
    policy = get_policy(config.policy.name, **config.policy.options)
    assert isinstance(policy, OpenAIPolicy) and policy.concurrency == 4
    with pytest.raises(TypeError, match="base_urls"):
        get_policy("openai", base_urls=server.base_url)


# -- faults: a retry with the right samples, or a clear error ------------------------

@pytest.mark.parametrize("faults", [["429"], ["500", "503"], ["drop"], ["drop", "429", "hang"]])
def test_transient_faults_are_retried_and_the_samples_are_right(served, tiny, arithmetic, faults):
    request = request_for(arithmetic, n=2, temperature=0.9, max_tokens=48, seed=5)
    with TinyOpenAIServer(served, hang_s=1.0) as server:
        server.faults.extend(faults)
        policy = OpenAIPolicy(server.base_url, model="m", timeout_s=0.5, max_retries=3, backoff_s=0.01)
        (result,) = generate(policy, request)
    assert policy.retries == len(faults)
    assert as_tuples(result) == as_tuples(generate(tiny, request)[0])


@pytest.mark.parametrize("fault, message", [
    ("malformed", "not JSON"),
    ("no_usage", "no usage.prompt_tokens"),
    ("bad_finish", "finish_reason None"),
    ("no_choices", "no choices"),
    ("401", "401 .*set \\$OPENAI_API_KEY"),
])
def test_answers_that_are_not_completions_raise_at_once(server, arithmetic, monkeypatch, fault, message):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.faults.append(fault)
    policy = OpenAIPolicy(server.base_url, model="m", **FAST)
    with pytest.raises(BackendError, match=message):
        generate(policy, request_for(arithmetic, temperature=0))
    assert len(server.bodies) == 1 and policy.retries == 0


def test_faults_that_persist_end_in_an_error_after_the_retries(server, arithmetic):
    server.faults.extend(["drop"] * 3)
    policy = OpenAIPolicy(server.base_url, model="m", **FAST)
    with pytest.raises(BackendError, match="failed 3 times.*dropped before the answer was complete"):
        generate(policy, request_for(arithmetic, temperature=0))


def test_a_server_that_is_down_is_named(arithmetic):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match=f"{url}: cannot connect.*is the server running"):
        generate(OpenAIPolicy(url, model="m", **FAST), request_for(arithmetic))


def test_a_wrong_url_is_refused_without_retries(server, arithmetic):
    policy = OpenAIPolicy(server.base_url.removesuffix("/v1"), model="m", **FAST)
    with pytest.raises(BackendError, match="404 .*check base_url"):
        generate(policy, request_for(arithmetic))
    assert policy.retries == 0


def test_a_timeout_is_a_clear_error(served, arithmetic):
    with TinyOpenAIServer(served, hang_s=1.0) as server:
        server.faults.append("hang")
        policy = OpenAIPolicy(server.base_url, model="m", timeout_s=0.2, max_retries=0)
        with pytest.raises(BackendError, match="no answer within 0.2s"):
            generate(policy, request_for(arithmetic))


def test_the_api_key_comes_from_the_environment_and_stays_out_of_errors(served, arithmetic, monkeypatch):
    with TinyOpenAIServer(served, api_key="sk-right") as server:
        monkeypatch.setenv("MY_KEY", "sk-right")
        (result,) = generate(OpenAIPolicy(server.base_url, api_key_env="MY_KEY"), request_for(arithmetic))
        assert result.generations[0].text
        monkeypatch.setenv("MY_KEY", "sk-wrong")
        with pytest.raises(BackendError, match="key in \\$MY_KEY was refused") as error:
            generate(OpenAIPolicy(server.base_url, api_key_env="MY_KEY", **FAST), request_for(arithmetic))
        assert "sk-wrong" not in str(error.value)


def test_a_failed_request_never_becomes_a_graded_sample(server, arithmetic):
    server.faults.extend(["500"] * 50)
    policy = OpenAIPolicy(server.base_url, model="m", **FAST)
    with pytest.raises(BackendError, match="failed 3 times.*500"):
        run(arithmetic.examples("test", 4), arithmetic, get_strategy("majority_vote", n=4), policy, Budget())


def test_settings_are_checked():
    for bad, message in [({"base_url": "localhost:8000"}, "http"), ({"api": "responses"}, "api must be"),
                         ({"concurrency": 0}, "concurrency"), ({"timeout_s": 0}, "timeout_s")]:
        with pytest.raises(ValueError, match=message):
            OpenAIPolicy(**bad)


def test_completion_tokens_are_shared_exactly():
    assert _share(10, [1, 1, 1]) == [4, 3, 3] and sum(_share(7, [5, 1, 2])) == 7
    assert _share(0, [3, 4]) == [0, 0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
