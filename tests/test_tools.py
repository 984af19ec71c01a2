"""Tools in the reasoning loop: calc and python behind one interface, run by the search, counted and bounded.

The search stops a generation at a call, runs the tool, appends the result
and lets the policy go on; tool calls, their CPU and wall time go into Usage
and the Budget bounds them. A failing tool is a result the policy reads, never
an exception in the search. The tool-calling tiny core (`arithmetic-large-tool`)
makes real calls here: no mock stands in for the policy or the tools.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from thinkscale.budget import Budget, Prices, Usage
from thinkscale.config import ConfigError, parse_config
from thinkscale.policies import get_policy
from thinkscale.policies.base import tool_exchanges
from thinkscale.runner import solve_all
from thinkscale.strategies import get_strategy
from thinkscale.tasks import get_task
from thinkscale.tasks.arithmetic import evaluate, parse
from thinkscale.tasks.base import Example, Problem
from thinkscale.tools import FENCED, TAG, TOOL_CALLS, Toolbox, ToolResult, get_tool
from tiny_openai_server import TinyOpenAIServer

CALL = re.compile(r"\[([^\]]*)\]=(-?\d*)")


def run(coroutine):
    return asyncio.run(coroutine)


# -- the tools themselves -------------------------------------------------------------------------------

def test_calc_is_exact_and_answers_bad_input_with_an_error():
    calc = get_tool("calc")
    result = run(calc.run("347*28+1204"))
    assert (result.text, result.ok) == ("10920", True) and 0 <= result.cpu_s < 0.01
    assert run(calc.run("-(3-10)*2")).text == "14"
    assert run(calc.run("2**64")).text == str(2 ** 64)
    for bad, why in [("1//0", "division by zero"), ("9**9**9", "exponent"), ("__import__('os')", "only integers"),
                     ("1.5*2", "only integers"), ("3*", "not an expression"), ("(" * 500 + "1" + ")" * 500, ""),
                     ("9999**64", "output too long"), ("*".join(["10**60"] * 17), "digits")]:
        result = run(calc.run(bad))
        assert not result.ok and result.text.startswith("error: ") and why in result.text, (bad, result)


def test_python_runs_in_the_sandbox_and_every_failure_is_a_clear_result():
    python = get_tool("python", timeout_s=1.0, max_output_chars=40)
    try:
        ok = run(python.run("print(347*28)\nprint('done')"))
        assert ok.ok and ok.text == "9716\ndone\n" and ok.cpu_s > 0 and ok.wall_s > 0
        cases = {"while True: print('spam')": "output too long",
                 "while True: pass": "timed out",
                 "raise ValueError('bad input')": "ValueError: bad input",
                 "import socket; socket.socket().connect(('127.0.0.1', 1))": "error",
                 "print(": "SyntaxError"}
        for code, why in cases.items():
            result = run(python.run(code))
            assert not result.ok and why in result.text, (code, result)
        busy = run(python.run("while True: pass"))
        assert busy.cpu_s >= 0.3, busy  # the kernel's count of the sample's CPU, not a guess
        assert run(get_tool("python", expression=True).run("12345*6789")).text.strip() == str(12345 * 6789)
    finally:
        python.close()


def test_the_syntaxes_find_a_call_and_write_its_result_back():
    assert TAG.argument("9+(49+5346-7)\n[49+5346") == "49+5346"
    assert TAG.argument("no call here") is None and TAG.argument("[1+1]=2\n3") is None
    assert TAG.render(ToolResult("5395", True)) == "]=5395"
    assert TAG.render(ToolResult("error: division by zero", False)) == "]="
    assert not TAG.accepts(ToolResult("hello", True)).ok  # the tiny core cannot read letters
    text = "Let me compute.\n```python\nprint(6*7)"
    assert FENCED.argument(text) == "print(6*7)"
    assert FENCED.render(ToolResult("42\n", True)) == "\n```\n```output\n42\n```\n"
    with pytest.raises(ValueError, match="exactly one"):
        Toolbox.build(["calc", "python"], syntax="tag")


def test_an_api_call_is_checked_against_the_toolbox_and_answered_with_what_is_wrong():
    box = Toolbox.build(["calc", "python"], syntax="tool_calls")
    assert [(t.name, t.argument) for t in box.specs()] == [("calc", "expression"), ("python", "code")]
    tool, argument = box.tool_for('{"name": "calc", "arguments": {"expression": "6*7"}}')
    assert (tool.name, argument) == ("calc", "6*7")
    for call, said in [('{"name": "shell", "arguments": {}}', "no tool 'shell' here; the tools are calc, python"),
                       ('{"name": "calc", "arguments": {"code": "1"}}', "calc takes one string argument, 'expression'"),
                       ('{"name": "calc"', "the call is not")]:
        tool, why = box.tool_for(call)
        assert tool is None and said in why
    rendered = TOOL_CALLS.render(ToolResult("42\n", True))
    assert rendered == "\n</tool_call>\n<tool_response>\n42\n</tool_response>\n"


def test_the_large_number_task_draws_the_same_problems_with_and_without_tool_solutions():
    by_hand, with_tool = get_task("arithmetic-large"), get_task("arithmetic-large", tool_calls=True)
    assert [e.problem for e in by_hand.examples("test", 30)] == [e.problem for e in with_tool.examples("test", 30)]
    stream = with_tool.training_stream(0)
    for _ in range(50):
        prompt, solution = next(stream)
        example = Example(Problem("x", prompt, 2), reference=evaluate(parse(prompt.rstrip("=\n"))))
        assert with_tool.verify(example, solution).correct and with_tool.first_invalid_step(example, solution) is None
        calls = CALL.findall(solution)
        assert all(max(map(int, re.findall(r"\d+", c + " " + r))) > 99 for c, r in calls)  # only the hard ones
        if calls:  # a wrong tool result is the first bad step
            wrong = solution.replace(f"]={calls[0][1]}", f"]={int(calls[0][1]) + 1}", 1)
            assert with_tool.first_invalid_step(example, wrong) == with_tool.split_steps(solution).index(
                f"[{calls[0][0]}]={calls[0][1]}")


# -- the search runs them -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tool_policy():
    return get_policy("tiny", checkpoint_name="arithmetic-large-tool", threads=1)


@pytest.fixture(scope="module")
def large():
    return get_task("arithmetic-large")


def solve(examples, task, policy, strategy, budget=Budget(), tools=None, prices=None, seed=0):
    return run(solve_all(examples, task, strategy, policy, budget, seed=seed, tools=tools, prices=prices))





def test_the_search_runs_each_call_and_the_policy_goes_on_after_its_result(tool_policy, large):
    examples = large.examples("test", 12)
    strategy = get_strategy("majority_vote", n=4, max_tokens=200)
    traces = solve(examples, large, tool_policy, strategy, tools=Toolbox.build(["calc"]))
    calls = [(c, r) for t in traces for n in t.terminals() for c, r in CALL.findall(n.text)]
    assert sum(t.usage.tool_calls for t in traces) == len(calls) > 20
    for argument, result in calls:  # every result in the text is the tool's exact value of its call
        try:
            value = str(evaluate(parse(argument)))
        except ValueError:
            assert result == ""  # a malformed call: the tiny core reads an empty result
            continue
        assert result.startswith(value), (argument, result)  # (the model may write on after the result)
    for t in traces:
        assert t.usage.samples == 4  # continuations after a result are the same samples, not new ones
        assert t.usage.policy_calls == 1 + sum(1 for n in t.terminals() for _ in CALL.finditer(n.text))
        assert t.usage.tool_cpu_s > 0 or t.usage.tool_calls == 0
        assert all(n.num_tokens <= 200 for n in t.terminals())
    # without the tools the same model writes each `]=` and a result itself, learned, and mostly wrong
    bare = solve(examples, large, tool_policy, strategy)
    assert sum(t.usage.tool_calls for t in bare) == 0
    assert sum(bool(t.correct) for t in traces) > sum(bool(t.correct) for t in bare)


def test_step_search_runs_calls_inside_steps(tool_policy, large):
    from thinkscale.scorers import get_scorer

    examples = large.examples("test", 4)
    strategy = get_strategy("beam_search", n=4, width=2, max_depth=12, max_step_tokens=48)
    scorer = get_scorer("confidence", checkpoint_name="arithmetic-large-tool")
    traces = run(solve_all(examples, large, strategy, tool_policy, Budget(), scorer=scorer,
                           tools=Toolbox.build(["calc"])))
    steps = [n.text for t in traces for n in t.nodes[1:]]
    assert any(CALL.fullmatch(s.rstrip("\n")) for s in steps)  # a step is the call and its result, one line
    assert sum(t.usage.tool_calls for t in traces) > 0


def test_a_chat_api_makes_the_calls_as_openai_tool_calls_and_the_samples_equal_the_tag_syntax(tool_policy, large):
    """The same model behind an OpenAI-compatible server that parses its calls into `tool_calls` (as vLLM's
    tool parsers do): the search declares the tools, runs each call the API returns, sends the result back
    as a `tool` message, and gets the very samples the tag syntax gets in process."""
    from thinkscale.policies.openai import OpenAIPolicy

    examples, strategy = large.examples("test", 8), get_strategy("majority_vote", n=4, max_tokens=200)
    direct = solve(examples, large, tool_policy, strategy, tools=Toolbox.build(["calc"]))
    served = get_policy("tiny", checkpoint_name="arithmetic-large-tool", threads=1)
    with TinyOpenAIServer(served, model="tiny-tool") as server:
        chat = OpenAIPolicy(server.base_url, api="chat", model="tiny-tool")
        traces = solve(examples, large, chat, strategy, tools=Toolbox.build(["calc"], syntax="tool_calls"))
        bodies = list(server.bodies)
    assert sum(t.usage.tool_calls for t in traces) == sum(t.usage.tool_calls for t in direct) > 5
    for mine, theirs in zip(traces, direct):
        assert (mine.chosen_answer, mine.correct) == (theirs.chosen_answer, theirs.correct)
        assert mine.usage.generated_tokens == theirs.usage.generated_tokens
        assert mine.usage.policy_calls == theirs.usage.policy_calls
        # the trace records each call as the API made it, and its result: written as tags, the same text
        for node, twin in zip(mine.terminals(), theirs.terminals()):
            exchanges, rest = tool_exchanges(node.text)
            as_tags = "".join(f"{e.before}[{e.arguments['expression']}]={e.result}" for e in exchanges) + rest
            assert as_tags == twin.text
    assert all(b["tools"][0]["function"]["name"] == "calc" for b in bodies)
    answered = [b["messages"] for b in bodies if b["messages"][-1]["role"] != "user"]
    assert answered, "no sample was continued after a tool result"
    for messages in answered:
        assert messages[0]["role"] == "user"
        for call, result in zip(messages[1:], messages[2:]):
            if call["role"] == "assistant" and call.get("tool_calls"):
                arguments = json.loads(call["tool_calls"][0]["function"]["arguments"])
                assert result == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"],
                                  "content": str(evaluate(parse(arguments["expression"])))}
    # a policy that reads text cannot take the API's calls: refused before anything is spent
    with pytest.raises(ValueError, match="tool_calls tool syntax needs a policy whose API takes tools"):
        solve(examples[:1], large, tool_policy, strategy, tools=Toolbox.build(["calc"], syntax="tool_calls"))


def test_the_budget_bounds_tool_calls_and_tool_cpu(tool_policy, large):
    examples = large.examples("test", 6)
    strategy = get_strategy("majority_vote", n=8, max_tokens=200)
    for budget, counter in [(Budget(max_tool_calls=3), "tool_calls"), (Budget(max_tool_cpu_s=0.02), "tool_cpu_s")]:
        traces = solve(examples, large, tool_policy, strategy, budget, Toolbox.build(["calc"]))
        for t in traces:
            assert not budget.exceeded_by(t.usage), (budget, t.usage)
        assert any(t.stopped_by == f"max_{counter}" for t in traces)
    # the python tool reserves its worst case (a whole second of CPU) before each call
    python = Toolbox.build(["python"], timeout_s=1.0)
    try:
        traces = solve(examples[1:3], large, tool_policy, strategy, Budget(max_tool_cpu_s=2.5), python)
    finally:
        python.close()
    # 8 samples call at once, and 2.5 s affords 2 calls at 1.1 s each: the rest are cut, however cheap the 2 were
    assert all(not Budget(max_tool_cpu_s=2.5).exceeded_by(t.usage) for t in traces)
    assert traces[0].stopped_by == "max_tool_cpu_s" and sum(not n.finished for n in traces[0].terminals()) >= 6


def test_python_and_calc_give_the_same_answers_and_python_costs_more_cpu(tool_policy, large):
    examples = large.examples("test", 6)
    strategy = get_strategy("majority_vote", n=4, max_tokens=200)
    calc = solve(examples, large, tool_policy, strategy, tools=Toolbox.build(["calc"]))
    python = Toolbox.build(["python"])
    try:
        sandboxed = solve(examples, large, tool_policy, strategy, tools=python)
    finally:
        python.close()
    assert [n.text for t in calc for n in t.terminals()] == [n.text for t in sandboxed for n in t.terminals()]
    cpu = lambda traces: sum(t.usage.tool_cpu_s for t in traces) / sum(t.usage.tool_calls for t in traces)
    assert cpu(sandboxed) > 10 * cpu(calc)


def test_prices_fill_dollars_from_the_counters(tool_policy, large):
    usage = Usage(prompt_tokens=1_000_000, cached_prompt_tokens=400_000, generated_tokens=2_000_000,
                  scored_tokens=1_000_000, tool_cpu_s=1800)
    prices = Prices(prompt=1.0, cached_prompt=0.5, generated=4.0, scored=0.1, tool_cpu_hour=2.0)
    assert prices.dollars(usage) == pytest.approx(0.6 + 0.2 + 8.0 + 0.1 + 1.0)
    with pytest.raises(ValueError, match="price"):
        Prices(prompt=-1.0, generated=1.0)
    traces = solve(large.examples("test", 3), large, tool_policy, get_strategy("majority_vote", n=2),
                   tools=Toolbox.build(["calc"]), prices=prices)
    assert all(t.usage.dollars > 0 and t.usage.dollars == pytest.approx(prices.dollars(t.usage)) for t in traces)


# -- the config ------------------------------------------------------------------------------------------

BASE = """task: arithmetic-large
output: runs/x
policy: {name: tiny, options: {checkpoint_name: arithmetic-large-tool}}
strategies:
  - name: majority_vote
    settings: {n: 4}
"""


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "exp.yaml")
    return str(e.value)


def test_config_refuses_unknown_tools_and_bad_price_tables():
    good = parse_config(BASE + "    tools: {use: [calc]}\n    budget: {max_tool_cpu_s: 1.5}\n"
                        "prices:\n  policy: {prompt: 0.1, generated: 0.4}\n  tool_cpu_hour: 0.05\n", "exp.yaml")
    assert good.strategies[0].tools.use == ["calc"] and good.prices.to_prices().tool_cpu_hour == 0.05
    message = config_error(BASE + "    tools: {use: [calk]}\n")
    assert message.startswith("exp.yaml:7:") and "unknown tool 'calk'" in message and "'calc'" in message
    assert "exactly one" in config_error(BASE + "    tools: {use: [calc, python]}\n")
    assert "missing price" in config_error(BASE + "prices:\n  policy: {prompt: 0.1}\n")
    assert "missing price" in config_error(BASE + "    tools: {use: [calc]}\nprices:\n  policy: {prompt: 0.1, generated: 1}\n")
    negative = config_error(BASE + "prices:\n  policy: {prompt: -0.1, generated: 1}\n")
    assert negative.startswith("exp.yaml:8:") and "must be a price >= 0" in negative
    hourly = parse_config(BASE + "prices:\n  policy: {per_hour: 0.36, tokens_per_s: 10000}\n", "exp.yaml")
    assert hourly.prices.to_prices().generated == pytest.approx(0.01)  # $0.36/h at 10k tokens/s: $0.01 per million
    # a config without tools or prices keeps the fingerprint it had before they existed
    assert "prices" not in parse_config(BASE, "x").to_dict() and "tools" not in parse_config(BASE, "x").to_dict()["strategies"][0]


def test_a_run_with_tools_and_prices_is_compared_in_dollars(tmp_path, capsys):
    from thinkscale.cli import main

    config = tmp_path / "exp.yaml"
    config.write_text(f"""task: arithmetic-large
problems: 6
output: {tmp_path / 'run'}
policy: {{name: tiny, options: {{checkpoint_name: arithmetic-large-tool, threads: 1}}}}
strategies:
  - name: majority_vote
    label: bare
    settings: {{n: 2, max_tokens: 200}}
  - name: majority_vote
    label: calc
    settings: {{n: 2, max_tokens: 200}}
    tools: {{use: [calc]}}
prices:
  policy: {{per_hour: 0.05, tokens_per_s: 5000}}
  tool_cpu_hour: 0.05
""")
    assert main(["compare", str(config)]) == 0
    out = capsys.readouterr().out
    assert "$/solved" in out and "tool calls" in out
    result = __import__("json").loads((tmp_path / "run" / "compare.json").read_text())
    calc, bare = result["strategies"]["calc"], result["strategies"]["bare"]
    assert calc["tool_calls"] > 0 and bare["tool_calls"] == 0 and calc["dollars"] > 0
    assert calc["accuracy"] > bare["accuracy"] and calc["dollars_per_solved"] > 0
    # the same ledger priced under another table, without running anything again
    table = tmp_path / "prices.yaml"
    table.write_text("policy: {prompt: 1.0, generated: 2.0}\ntool_cpu_hour: 100.0\n")
    assert main(["compare", str(tmp_path / "run"), "--prices", str(table)]) == 0
    again = __import__("json").loads((tmp_path / "run" / "compare.json").read_text())["strategies"]["calc"]
    assert again["dollars"] != calc["dollars"] and again["accuracy"] == calc["accuracy"]
    table.write_text("policy: {prompt: 1.0, generated: -2.0}\n")
    assert main(["compare", str(tmp_path / "run"), "--prices", str(table)]) != 0
    assert "prices.yaml:1: policy.generated: must be a price >= 0" in capsys.readouterr().err
