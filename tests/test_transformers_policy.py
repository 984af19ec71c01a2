"""The transformers policy on a shipped tiny checkpoint: the same model, the same samples.

Greedy decoding through Hugging Face's `generate` must give exactly what the
tiny engine gives, batched or not; stop strings and finish reasons follow the
contract on both.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from thinkscale.policies import GenerationRequest, get_policy

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny():
    return get_policy("tiny", checkpoint_name="arithmetic")


@pytest.fixture(scope="module")
def hf():
    return get_policy("transformers", model="arithmetic", threads=1)


def generate(policy, requests):
    return asyncio.run(policy.generate(requests))


def samples(results):
    return [[(g.text, g.finish_reason, g.stop_string, g.num_tokens) for g in r.generations] for r in results]


def test_greedy_equals_the_tiny_policy_in_one_batch(tiny, hf, arithmetic):
    requests = [GenerationRequest(prompt=e.problem.prompt, temperature=0, max_tokens=96)
                for e in arithmetic.examples("test", 16)]
    mine, theirs = generate(hf, requests), generate(tiny, requests)
    assert samples(mine) == samples(theirs)
    assert [r.prompt_tokens for r in mine] == [r.prompt_tokens for r in theirs]
    assert sum(g.finish_reason == "stop" for r in mine for g in r.generations) >= 12  # whole solutions


def test_step_generation_stops_at_the_delimiter_and_keeps_the_finish_reason(tiny, hf, arithmetic):
    requests = []
    for e in arithmetic.examples("test", 6):
        (whole,) = generate(tiny, [GenerationRequest(prompt=e.problem.prompt, temperature=0, max_tokens=96)])
        steps = arithmetic.split_steps(whole.generations[0].text)
        partial = e.problem.prompt + steps[0] + arithmetic.step_delimiter
        requests.append(GenerationRequest(prompt=partial, temperature=0, max_tokens=64, stop=("\n",)))
        requests.append(GenerationRequest(prompt=partial, temperature=0, max_tokens=1, stop=("\n",)))
        requests.append(GenerationRequest(prompt=partial, temperature=0, max_tokens=64, stop=("=", "*")))
        requests.append(GenerationRequest(prompt=e.problem.prompt + whole.generations[0].text, temperature=0,
                                          max_tokens=8, stop=("\n",)))  # a finished solution: it just ends
    mine, theirs = generate(hf, requests), generate(tiny, requests)
    assert samples(mine) == samples(theirs)
    steps, cut, ends = mine[0::4], mine[1::4], mine[3::4]
    assert all(g.stop_string == "\n" and not g.ended and "\n" not in g.text for r in steps for g in r.generations)
    assert all(g.finish_reason == "length" and g.num_tokens == 1 for r in cut for g in r.generations)
    assert all(g.ended and g.text == "" for r in ends for g in r.generations)


def test_sampling_gives_n_distinct_reproducible_samples(hf, arithmetic):
    prompt = arithmetic.examples("test", 1)[0].problem.prompt
    request = GenerationRequest(prompt=prompt, n=6, temperature=1.0, max_tokens=64, seed=3)
    (first,), (again,) = generate(hf, [request]), generate(hf, [request])
    assert len(first.generations) == 6 and samples([first]) == samples([again])
    assert len({g.text for g in first.generations}) > 1


def test_the_chat_template_is_used_where_the_model_has_one(tiny, arithmetic, arithmetic_checkpoint, tmp_path):
    target = tmp_path / "with-template"
    shutil.copytree(arithmetic_checkpoint.path, target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{{ messages[0]['content'] }}"  # what the tiny core was trained on
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    templated = get_policy("transformers", model=str(target))
    assert templated.chat_template and get_policy("transformers", model=str(target), chat_template=False)
    prompt = arithmetic.examples("test", 1)[0].problem.prompt
    assert templated.prompt_ids(prompt) == arithmetic_checkpoint.tokenizer.encode(prompt)  # one BOS, not two
    request = GenerationRequest(prompt=prompt, temperature=0, max_tokens=96)
    assert samples(generate(templated, [request])) == samples(generate(tiny, [request]))
    with pytest.raises(ValueError, match="has no chat template"):
        get_policy("transformers", model="arithmetic", chat_template=True)


def test_the_context_limit_is_the_tiny_policys(tiny, hf):
    with pytest.raises(ValueError, match="does not fit the model's 256 positions"):
        generate(hf, [GenerationRequest(prompt="1+" * 128, max_tokens=64)])
    near_the_end = [GenerationRequest(prompt="1+" * 120 + "1=\n", temperature=0, max_tokens=64)]
    (mine,), (theirs,) = generate(hf, near_the_end), generate(tiny, near_the_end)
    assert samples([mine]) == samples([theirs]) and mine.generations[0].finish_reason == "length"


def test_a_caller_that_gives_up_stops_its_rows_in_a_running_generate(hf, arithmetic):
    """A wall-time cut (or a client gone) marks the rows of its requests done at the next step of the running
    `generate`; the policy serves the next call at once."""
    import time

    prompt = arithmetic.examples("test", 1)[0].problem.prompt
    long = GenerationRequest(prompt=prompt, n=1024, max_tokens=120, seed=1)
    short = GenerationRequest(prompt=prompt, n=2, max_tokens=20, seed=2)

    async def whole():
        started = time.perf_counter()
        await hf.generate([long])
        return time.perf_counter() - started

    async def cut(timeout):
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(hf.generate([long]), timeout=timeout)
        (after,) = await hf.generate([short])
        return time.perf_counter() - started, after

    alone = asyncio.run(whole())
    seconds, after = asyncio.run(cut(0.15 * alone))  # a share of the whole, on a fast machine or a slow one
    assert len(after.generations) == 2
    assert seconds < 0.6 * alone, (seconds, alone)  # the cut generate did not run its rows to their end
