"""From an OpenAI request body to a Plan: which model, strategy, settings, scorer, budget, seed and problem.

The model name picks the strategy: `beam_search:arithmetic` runs beam search on
the model `arithmetic`; a preset's name runs the preset; the plain model name
runs one sample, or, with a `reasoning_effort`, the strategy that level names.
`extra_body` may carry `strategy`, `settings`, `scorer` and `budget`, checked
with the same typed checks as a run config (an unknown key is refused by name).
Budgets are layered: the preset's, then the effort level's, then the request's
own `budget`, then `max_completion_tokens` (or `max_tokens`) as a limit on
generated tokens; what is left open is the server's cap, and an explicit
budget over the cap is refused. The request's `seed` is given to the strategy
as it is (no derivation), so the answer equals `strategy.solve(..., seed=seed)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import secrets
from dataclasses import dataclass
from typing import Any

from thinkscale.config import BudgetConfig, StrategyConfig, check_settings
from thinkscale.serve.config import EFFORTS, ServeConfig, over_cap, within_cap
from thinkscale.serve.errors import bad_request, not_found
from thinkscale.serve.models import ServedModel
from thinkscale.serve.prompts import chat_problem, completion_problem, problem_prompt
from thinkscale.strategies import STRATEGIES, Strategy, get_strategy
from thinkscale.tasks.base import Problem
from thinkscale.typed_yaml import ConfigError, Source, build_dataclass

ONE_SAMPLE = ("majority_vote", {"n": 1})  # what a plain model name runs: one sample, answered as it is
UNSERVED = {"repeated_sampling": "it chooses no answer (it is measured as coverage); use majority_vote"}

COMMON = {"model", "stream", "stream_options", "seed", "max_tokens", "temperature", "top_p", "n", "user",
          "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key", "frequency_penalty",
          "presence_penalty", "stop", "logprobs", "logit_bias",
          "strategy", "settings", "scorer", "budget", "reasoning_effort"}  # the last five: thinkscale's
KNOWN = {"chat": COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "functions",
                           "function_call", "parallel_tool_calls", "response_format", "audio", "modalities",
                           "prediction", "verbosity", "web_search_options"},
         "completion": COMMON | {"prompt", "echo", "suffix", "best_of"}}
# Parameters that would change what the answer means: refused when set, not silently ignored.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "audio", "modalities",
               "prediction", "web_search_options", "stop", "logprobs", "top_logprobs", "logit_bias", "echo",
               "suffix", "best_of")


@dataclass(frozen=True)
class Plan:
    """One request's search, every choice made and checked."""

    model: ServedModel
    strategy_name: str
    settings: dict[str, Any]
    strategy: Strategy
    scorer_name: str | None
    scorer: Any
    budget: BudgetConfig
    seed: int
    problem: Problem
    stream: bool
    effort: str | None

    def describe(self) -> dict[str, Any]:
        """What the response reports of the plan, so that the same search can be run offline."""
        return {"strategy": self.strategy_name, "settings": self.settings, "scorer": self.scorer_name,
                "budget": {k: v for k, v in dataclasses.asdict(self.budget).items() if v is not None},
                "seed": self.seed, "reasoning_effort": self.effort}


def served_strategies() -> list[str]:
    return [name for name in STRATEGIES.names() if name not in UNSERVED]


def model_ids(config: ServeConfig) -> list[str]:
    """Every model name the server answers to: models, STRATEGY:MODEL for each, presets."""
    ids = []
    for model in config.models:
        ids += [model.name] + [f"{s}:{model.name}" for s in served_strategies()]
    return ids + list(config.presets)


def _close(name: str, choices: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5 if n > 1 else 0.6)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""


def resolve_model(config: ServeConfig, models: dict[str, ServedModel], name: Any) -> tuple[ServedModel, str | None,
                                                                                          Any]:
    """(the served model, the strategy the name picks or None, the preset or None)."""
    if not isinstance(name, str) or not name:
        raise bad_request("'model' is required: a served model name (GET /v1/models lists them)", "model")
    if name in config.presets:
        preset = config.presets[name]
        return models[preset.model], preset.strategy, preset
    if name in models:
        return models[name], None, None
    strategy, colon, base = name.partition(":")
    if colon and base in models:
        if strategy in UNSERVED:
            raise bad_request(f"strategy {strategy!r} is not served: {UNSERVED[strategy]}", "model")
        if strategy not in STRATEGIES:
            raise not_found(f"unknown strategy {strategy!r} in model {name!r}.{_close(strategy, served_strategies())}"
                            f" Served strategies: {', '.join(served_strategies())}.", "model", "model_not_found")
        return models[base], strategy, None
    ids = model_ids(config)
    raise not_found(f"unknown model {name!r}.{_close(name, ids)} Served models: {', '.join(models)}, each also as "
                    f"STRATEGY:MODEL (GET /v1/models lists them).", "model", "model_not_found")


def check_keys(body: dict[str, Any], kind: str) -> None:
    """Unknown parameters refused by name; parameters that would change the answer's meaning refused when set."""
    for key in body:
        if key not in KNOWN[kind]:
            raise bad_request(f"unknown parameter {key!r}.{_close(key, sorted(KNOWN[kind]), 1)} thinkscale reads "
                              f"strategy, settings, scorer and budget (extra_body) beside OpenAI's parameters.", key,
                              "unknown_parameter")
    for key in UNSUPPORTED:
        if body.get(key) not in (None, False, [], {}, ""):
            raise bad_request(f"{key!r} is not supported by thinkscale serve", key, "unsupported_parameter")
    if body.get("n", 1) != 1:
        raise bad_request("n must be 1: one answer per request (the search's samples stream as reasoning)", "n")


def _checked(where: str, build: Any) -> Any:
    try:
        return build(Source("request", {}))
    except ConfigError as e:
        raise bad_request(str(e), where) from None


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request(f"{key} must be a positive integer, got {value!r}", key)
    return value


def make_plan(config: ServeConfig, models: dict[str, ServedModel], body: dict[str, Any], kind: str,
              request_id: str = "request") -> Plan:
    """The Plan for a `kind` ("chat" or "completion") request body; APIError naming the parameter if refused."""
    check_keys(body, kind)
    model, strategy, preset = resolve_model(config, models, body.get("model"))
    if kind == "chat":
        prompt = problem_prompt(model, chat_problem(body.get("messages")), "messages")
    else:
        prompt = problem_prompt(model, completion_problem(body.get("prompt")), "prompt")

    effort = body.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        raise bad_request(f"reasoning_effort must be one of {', '.join(EFFORTS)}, got {effort!r}",
                          "reasoning_effort", "invalid_reasoning_effort")
    asked = body.get("strategy")
    if asked is not None:
        if not isinstance(asked, str):
            raise bad_request("strategy must be a strategy name", "strategy")
        if strategy is not None and asked != strategy:
            raise bad_request(f"model {body['model']!r} runs {strategy}; the request's strategy {asked!r} "
                              f"contradicts it (name the plain model to choose the strategy)", "strategy")
        resolve_model(config, models, f"{asked}:{model.name}")  # unknown or unserved: refused by name
        strategy = asked
    settings: dict[str, Any] = dict(preset.settings) if preset else {}
    budget = preset.budget if preset else BudgetConfig()
    if effort is not None:
        level = config.effort[effort]
        if strategy is None:
            strategy, settings = level.strategy, dict(level.settings)
        budget = _merge(budget, level.budget)
    if strategy is None:
        strategy, settings = ONE_SAMPLE[0], dict(ONE_SAMPLE[1])

    given = body.get("settings") or {}
    if not isinstance(given, dict):
        raise bad_request("settings must be an object of the strategy's settings", "settings")
    settings.update(given)
    settings_cls = getattr(get_strategy(strategy), "Settings", None)
    names = {f.name for f in dataclasses.fields(settings_cls)} if dataclasses.is_dataclass(settings_cls) else set()
    for key in ("temperature", "top_p"):  # OpenAI's sampling parameters, where the strategy has them
        if body.get(key) is not None and key in names and key not in given:
            settings[key] = body[key]
    settings = _checked("settings", lambda source: check_settings(
        StrategyConfig(name=strategy, settings=settings), (), source))

    asked_budget = body.get("budget")
    if asked_budget is not None:
        requested = _checked("budget", lambda source: build_dataclass(BudgetConfig, asked_budget, ("budget",),
                                                                      source))
        over = over_cap(requested, config.cap)
        if over:
            raise bad_request(f"budget: {over}", "budget", "budget_over_cap")
        budget = _merge(budget, requested)
    most = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    if most is not None:  # a limit the client sets on what it pays for: held, never over the cap
        current = budget.max_generated_tokens or config.cap.max_generated_tokens
        budget = dataclasses.replace(budget, max_generated_tokens=min(most, current) if current else most)
    budget = within_cap(budget, config.cap)

    scorer_name = body.get("scorer")
    if scorer_name is None:
        scorer_name = preset.scorer if preset and preset.scorer else config.default_scorer
        if scorer_name not in model.scorers:
            scorer_name = None
    elif scorer_name not in model.scorers:
        raise bad_request(f"unknown scorer {scorer_name!r} for model {model.name!r}."
                          f"{_close(str(scorer_name), list(model.scorers))} Loaded: {', '.join(model.scorers)}.",
                          "scorer")

    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbits(31)  # as OpenAI's API: no seed, a fresh draw (the response says which)
    elif not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise bad_request(f"seed must be a non-negative integer, got {seed!r}", "seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    return Plan(model=model, strategy_name=strategy, settings=settings, strategy=get_strategy(strategy, **settings),
                scorer_name=scorer_name, scorer=model.scorers.get(scorer_name) if scorer_name else None,
                budget=budget, seed=seed, problem=Problem(id=request_id, prompt=prompt, difficulty=0),
                stream=stream, effort=effort)


def _merge(base: BudgetConfig, over: BudgetConfig) -> BudgetConfig:
    """`base` with every limit `over` sets replaced by `over`'s."""
    return dataclasses.replace(base, **{k: v for k, v in dataclasses.asdict(over).items() if v is not None})
