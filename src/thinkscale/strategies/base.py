"""What every strategy shares: settings validation, the Search it works in, the Trace.

A strategy is written for one problem as an async function of
(problem, task, policy, scorer, budget, seed) and returns a Trace. It never
sees the reference answer: it gets a `Problem`, and the task only for its
format (prompt, steps, answer extraction), which holds no references.

Every call a strategy makes goes through its `Search`: `afford` asks the
Budget what the next generation may cost (worst case: every sample runs to
its token limit, every backend call is made, the scorer reads every sample
afterwards), `generate` and `score` make the call, add what it cost to the
trace's Usage, and stop waiting when the wall-time budget runs out. So a
strategy cannot overspend on any backend, whatever it does; where the budget
ends a search early, `trace.stopped_by` names the limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from thinkscale.budget import Budget, BudgetExceeded, Work
from thinkscale.policies.base import Confidence, Generation, GenerationRequest, GenerationResult, Policy
from thinkscale.seeds import derive_seed
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import FINISH_LENGTH, FINISH_STOP, Node, Trace

if TYPE_CHECKING:
    from thinkscale.scorers.base import Scorer, Scores
    from thinkscale.tools import Toolbox

# What a search did, as it happens: (event, trace, nodes) with event one of "generated" (new steps or
# samples), "scored", "pruned" (dropped from a beam) and "chosen". Whoever runs a strategy and wants to
# watch it (the server streams these) sets a listener in its context; strategies never see it.
SearchListener = Callable[[str, Trace, "list[Node]"], None]
SEARCH_EVENTS: ContextVar[SearchListener | None] = ContextVar("thinkscale_search_events", default=None)

# Text as it is generated: a listener for the first sample of a search's calls, piece by piece, called on any
# thread (the backend's), where the policy streams (Capabilities.streams). The server sets it to send tokens
# before their step is done; the generated event that follows carries the whole step as ever.
SearchTokens = Callable[[str], None]
SEARCH_TOKENS: ContextVar[SearchTokens | None] = ContextVar("thinkscale_search_tokens", default=None)
# How many of a search's calls stream through SEARCH_TOKENS (None: all that can): the first that can (one at a
# time streams; a call made while another streams does not, and does not count). The server streams the first
# only, by default: that gives its stream the first token at once, and each later hand-over from the engine's
# thread costs the search time (docs/serve.md).
SEARCH_TOKEN_CALLS: ContextVar[int | None] = ContextVar("thinkscale_search_token_calls", default=None)

# The tools a search may run (tools/): whoever runs a strategy sets them in its context (the runner, from a
# strategy's `tools:` in the config). Every generation of the search then stops at a call, the search runs
# the tool, appends its result and lets the policy go on; strategies never see it.
SEARCH_TOOLS: ContextVar["Toolbox | None"] = ContextVar("thinkscale_search_tools", default=None)

# A call is given up this long before the wall-time budget ends, so that the
# time spent noticing and cancelling it still fits inside the budget.
WALL_MARGIN_S = 0.02

# How long a search waits, after giving up a call, for the backend to say what the call had generated
# (Capabilities.reports_cuts; the tiny core says it at its next step), and how much earlier than the
# wall-time deadline such a call is given up, so that the wait usually fits inside the budget.
CUT_REPORT_S = 0.5
CUT_MARGIN_S = 0.03

# Each search gets its own cache scope: a backend's or scorer's prefix cache shares what one search computed
# with that search only, so what a search is charged for does not depend on what ran before it.
_SCOPES = itertools.count()


def settings_from_dict(cls: type, data: dict[str, Any], where: str = "settings") -> Any:
    """Build a settings dataclass, refusing unknown keys by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
                         f"valid keys: {', '.join(sorted(known))}")
    return cls(**data)


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 160

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")


class Strategy(Protocol):
    name: str

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Any,
                    budget: Budget, seed: int) -> Trace: ...


@dataclass
class Search:
    """One strategy's work on one problem: what it works with, and the Budget check before every call."""

    problem: Problem
    task: Task
    policy: Policy
    scorer: "Scorer | None"
    budget: Budget
    seed: int
    trace: Trace
    _shortened_by: str | None = None  # the limit that shortened the generation `afford` last sized
    listener: SearchListener | None = None  # SEARCH_EVENTS of the context the search started in
    tools: "Toolbox | None" = None  # SEARCH_TOOLS of the context the search started in
    tokens: SearchTokens | None = None  # SEARCH_TOKENS of the context the search started in
    token_calls: int | None = None  # SEARCH_TOKEN_CALLS of that context
    _streaming: bool = False  # a call streams its text now (one at a time: the pieces must not interleave)
    _streamed_calls: int = 0  # calls that have streamed so far (against token_calls)
    scope: int = dataclasses.field(default_factory=lambda: next(_SCOPES))  # its prefix caches' scope

    def __post_init__(self) -> None:
        # When the search is over (nothing refers to it any more), the caches forget its scope.
        done = weakref.finalize(self, _release, self.policy, self.scorer, self.scope)
        done.atexit = False

    @classmethod
    def start(cls, name: str, settings: Any, problem: Problem, task: Task, policy: Policy, scorer: "Scorer | None",
              budget: Budget, seed: int, needs_scorer: bool = False) -> "Search":
        """A new Search with an empty trace (its root holds the prompt); refuses a missing or wrong scorer."""
        if needs_scorer:
            if scorer is None:
                raise ValueError(f"{name} needs a scorer (one of the reward models); none was given")
            scorer.check_task(task.name)
        trace = Trace(problem_id=problem.id, strategy=name, settings=dataclasses.asdict(settings), seed=seed,
                      difficulty=problem.difficulty)
        trace.add(None, problem.prompt)
        search = cls(problem, task, policy, scorer, budget, seed, trace, listener=SEARCH_EVENTS.get(),
                     tools=SEARCH_TOOLS.get(), tokens=SEARCH_TOKENS.get(), token_calls=SEARCH_TOKEN_CALLS.get())
        if search.listener is not None:  # "started", no nodes: the listener has the trace from the start
            search.listener("started", trace, [])
        return search

    def emit(self, event: str, nodes: list[Node]) -> None:
        """Tell the listener, if any, what just happened to `nodes`."""
        if self.listener is not None and nodes:
            self.listener(event, self.trace, nodes)

    def choose(self, node: Node) -> None:
        """Answer with `node`'s answer."""
        self.trace.chosen_answer, self.trace.chosen_node = node.answer, node.id
        self.emit("chosen", [node])

    # -- what the budget allows ----------------------------------------------
    def afford(self, requests: list[GenerationRequest], scored: bool = False) -> int:
        """Tokens per sample (up to each request's max_tokens) that these requests may use; 0 if none.

        `scored`: the generations will be read by the scorer afterwards, so its
        cost is reserved too. 0 is recorded as the limit that stopped the search
        (before anything was bought it is an error naming the smallest budget
        that works); a shortened limit is recorded if a sample then runs out of room.
        """
        work = self._work(requests, scored)
        tokens, why = self.budget.afford_why(self.trace.usage, work)
        self._shortened_by = why if tokens else None  # shorter samples: it cut the search if one runs out of room
        if tokens < 1:
            self.stop(why)
            if self.trace.usage.policy_calls == 0:
                raise BudgetExceeded(
                    f"the budget ({self.budget.describe()}) cannot buy the first {work.samples} samples ({why}); "
                    f"the smallest budget that works is {work.samples} generated tokens, {work.samples} samples "
                    f"and {work.calls} policy calls", limit=why)
        return tokens

    def _work(self, requests: list[GenerationRequest], scored: bool) -> Work:
        policy, scorer = self.policy, self.scorer if scored else None
        counting = self.budget.max_flops is not None  # counting prompt tokens costs time: only when it matters
        cached = policy.capabilities.prefix_caching
        prompt = sum(policy.count_tokens(r.prompt) * (1 if cached else r.n) for r in requests) if counting else 0
        prefix = sum(scorer.count_tokens(r.prompt) * scorer.prompt_reads(r.n) for r in requests) if counting and scorer else 0
        return Work(samples=sum(r.n for r in requests), max_tokens=max(r.max_tokens for r in requests),
                    calls=sum(policy.max_calls(r) for r in requests), prompt_tokens=prompt,
                    flops_per_token=policy.flops_per_token(), scored_prefix_tokens=prefix,
                    scorer_flops_per_token=scorer.flops_per_token() if scorer else 0.0)

    def stop(self, why: str | None) -> None:
        """Record the limit that ended the search early (the first one that did)."""
        if why and self.trace.stopped_by is None:
            self.trace.stopped_by = why

    async def _within_wall(self, call: Any, reserve: float = 0.0) -> tuple[Any, float]:
        """Await `call` and time it; (None, 0) when the wall-time budget ran out first.

        The wall-time budget is held as a deadline: the call is given up when
        the time left runs out, and a result that arrives after it (the event
        loop was late to notice) is dropped too. The time counted for a call
        given up stops at the deadline; nothing it generated is kept (what it
        cost is counted by `_policy_call`, where the backend says it). `reserve`:
        seconds more before the deadline at which the call is given up.
        """
        left = self.budget.wall_left(self.trace.usage)
        started = time.perf_counter()
        if left is None:
            return await call, time.perf_counter() - started
        if left <= WALL_MARGIN_S + reserve:
            call.close()
            self.stop("max_wall_s")
            return None, 0.0
        try:
            value = await asyncio.wait_for(call, timeout=left - WALL_MARGIN_S - reserve)
        except asyncio.TimeoutError:
            value = None
        elapsed = time.perf_counter() - started
        if value is None or elapsed > left:
            self.trace.usage.wall_s += min(elapsed, left)
            self.stop("max_wall_s")
            return None, 0.0
        return value, elapsed

    # -- calls ---------------------------------------------------------------
    async def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult] | None:
        """One policy call for `requests` (sized by `afford`), accounted; None if the wall-time budget cut it.

        With tools, a generation that stops at a call goes on after the tool's
        result (`_with_tools`) and comes back whole: one generation, its
        tokens those the policy generated in all its pieces.
        """
        requests = [dataclasses.replace(r, cache_scope=self.scope) for r in requests]
        if self.tools is not None and self.tools.syntax.native:  # the API stops at a call
            requests = [dataclasses.replace(r, tools=self.tools.specs()) for r in requests]
        elif self.tools is not None:  # every generation stops at a call
            close = self.tools.syntax.close
            requests = [r if close in r.stop else dataclasses.replace(r, stop=r.stop + (close,)) for r in requests]
        streams = self.tokens is not None and self.tools is None and not self._streaming and \
            self.policy.capabilities.streams and (self.token_calls is None or self._streamed_calls < self.token_calls)
        if streams:  # the first request's first sample, as it is generated
            requests[0] = dataclasses.replace(requests[0], on_text=self.tokens)
            self._streaming = True
            self._streamed_calls += 1
        try:
            results, elapsed = await self._policy_call(requests)
        finally:
            self._streaming = self._streaming and not streams
        if results is None:
            return None
        shortened_by, self._shortened_by = self._shortened_by, None
        for result in results:
            self.account(result, elapsed)
            elapsed = 0.0  # the call's time is counted once
        if self.tools is not None:
            results = await self._with_tools(requests, results)
        if any(g.finish_reason == FINISH_LENGTH for result in results for g in result.generations):
            self.stop(shortened_by)
        return results

    async def _with_tools(self, requests: list[GenerationRequest],
                          results: list[GenerationResult]) -> list[GenerationResult]:
        """Run the tool calls the generations stopped at, and continue each after its result, until none
        stops at a call. A continuation is one more policy call for the same sample (the prompt is the
        sample so far); its tokens come out of the sample's own token limit, and the budget is asked first.
        A call the budget cannot pay for, or one past `max_calls`, ends the sample as cut off."""
        tools, syntax = self.tools, self.tools.syntax
        pieces = {(i, j): [g] for i, result in enumerate(results) for j, g in enumerate(result.generations)}
        calls = dict.fromkeys(pieces, 0)
        prefix = dict.fromkeys(pieces, "")  # the sample's text so far, tool results included

        def waiting(key: tuple[int, int]) -> bool:
            last = pieces[key][-1]
            return last.finish_reason == FINISH_STOP and last.stop_string == syntax.close

        def cut(key: tuple[int, int]) -> None:
            """End the sample where it stands, cut off (never an answer)."""
            prefix[key] += pieces[key][-1].text
            pieces[key].append(Generation(text="", num_tokens=0, finish_reason=FINISH_LENGTH))

        rounds = 0
        while True:
            todo = [key for key in pieces if waiting(key)]
            if not todo:
                break
            runs = []
            reserved = dataclasses.replace(self.trace.usage)  # the calls granted this round, at their worst
            for key in todo:
                why = "max_calls" if calls[key] >= tools.max_calls else \
                    self.budget.affords_tool(reserved, tools.worst_cpu_s())
                if why is None:
                    runs.append(key)
                    reserved.tool_calls += 1
                    reserved.tool_cpu_s += tools.worst_cpu_s()
                    continue
                if why != "max_calls":
                    self.stop(why)
                cut(key)
            text = {key: prefix[key] + pieces[key][-1].text for key in runs}

            async def run_tools() -> list[str]:
                return list(await asyncio.gather(*(self._call_tool(text[key]) for key in runs)))

            appended, elapsed = await self._within_wall(run_tools())
            if appended is None:  # the wall-time budget ran out while the tools ran
                for key in runs:
                    cut(key)
                break
            self.trace.usage.wall_s += elapsed
            asks = []
            for key, rendered in zip(runs, appended):
                calls[key] += 1
                prefix[key] = text[key] + rendered
                used = sum(g.num_tokens for g in pieces[key])
                left = requests[key[0]].max_tokens - used
                if left < 1:
                    pieces[key].append(Generation(text="", num_tokens=0, finish_reason=FINISH_LENGTH))
                    continue
                request = requests[key[0]]
                asks.append((key, dataclasses.replace(request, prompt=request.prompt + prefix[key], n=1,
                                                      max_tokens=left, reply_start=_reply_start(request),
                                                      seed=derive_seed(request.seed, "tool", *key, rounds))))
            rounds += 1
            if not asks:
                continue
            conts = await self._continue([r for _, r in asks])
            for (key, _), result in zip(asks, conts or [None] * len(asks)):
                if result is None:
                    pieces[key].append(Generation(text="", num_tokens=0, finish_reason=FINISH_LENGTH))
                else:
                    pieces[key].append(result.generations[0])
        return [GenerationResult(generations=tuple(_joined(pieces[(i, j)], prefix[(i, j)])
                                                   for j in range(len(result.generations))),
                                 prompt_tokens=result.prompt_tokens, backend_calls=result.backend_calls,
                                 cached_prompt_tokens=result.cached_prompt_tokens)
                for i, result in enumerate(results)]

    async def _policy_call(self, requests: list[GenerationRequest]) -> tuple[list[GenerationResult] | None, float]:
        """The policy's results for `requests` and the time they took, within the wall-time budget. A call
        given up still counts the tokens it had generated, where the backend says them (reports_cuts)."""
        left = self.budget.wall_left(self.trace.usage)
        if not self.policy.capabilities.reports_cuts or (left is not None and left <= WALL_MARGIN_S + CUT_MARGIN_S):
            return await self._within_wall(self.policy.generate(requests))  # (the latter: it never starts)
        spent = _CutTokens(len(requests))
        requests = [dataclasses.replace(r, on_cut=spent.report) for r in requests]
        arrived: list[list[GenerationResult]] = []  # a result that came after the deadline, dropped

        async def call() -> list[GenerationResult]:
            results = await self.policy.generate(requests)
            arrived.append(results)
            return results

        try:
            results, elapsed = await self._within_wall(call(), reserve=CUT_MARGIN_S)
        except asyncio.CancelledError:  # the whole search is given up (a client gone): what the call spent counts
            await self._count_cut(arrived, spent)
            raise
        if results is None:
            await self._count_cut(arrived, spent)
        return results, elapsed

    async def _count_cut(self, arrived: list[list[GenerationResult]], spent: "_CutTokens") -> None:
        """Add to the usage what a call given up had generated: its results if they came after all, else
        what the backend reports."""
        tokens = sum(g.num_tokens for r in arrived[0] for g in r.generations) if arrived else \
            await spent.total(CUT_REPORT_S)
        self.trace.usage.generated_tokens += tokens
        self.trace.usage.flops += (self.policy.flops_per_token() or 0.0) * tokens

    async def _call_tool(self, text: str) -> str:
        """Run the call that `text` ends with and account for it; the text appended after it."""
        from thinkscale.tools import ToolResult

        tools, syntax = self.tools, self.tools.syntax
        argument = syntax.argument(text)
        if argument is None:
            result = ToolResult.error(f"{syntax.close.strip()!r} without a call opened by {syntax.open.strip()!r}")
        else:
            tool, argument = tools.tool_for(argument)
            result = await tool.run(argument) if tool is not None else ToolResult.error(argument)
        result = syntax.accepts(result)
        usage = self.trace.usage
        usage.tool_calls += 1
        usage.tool_errors += not result.ok
        usage.tool_cpu_s += result.cpu_s
        usage.tool_wall_s += result.wall_s
        return syntax.render(result)

    async def _continue(self, requests: list[GenerationRequest]) -> list[GenerationResult] | None:
        """The policy call that continues samples after their tool results; None if the budget refuses it."""
        work = dataclasses.replace(self._work(requests, scored=False), new_samples=False)
        tokens, why = self.budget.afford_why(self.trace.usage, work)
        if tokens < 1:
            self.stop(why)
            return None
        shortened = tokens < max(r.max_tokens for r in requests)
        requests = [dataclasses.replace(r, max_tokens=min(r.max_tokens, tokens)) for r in requests]
        results, elapsed = await self._policy_call(requests)
        if results is None:
            return None
        for result in results:
            self.account(result, elapsed, new_sample=False)
            elapsed = 0.0
        if shortened and any(g.finish_reason == FINISH_LENGTH for r in results for g in r.generations):
            self.stop(why)
        return results

    def account(self, result: GenerationResult, seconds: float, new_sample: bool = True) -> None:
        """Add one request's cost to the trace's Usage (`new_sample` False: it continues samples counted)."""
        usage, policy = self.trace.usage, self.policy
        n = len(result.generations)
        generated = sum(g.num_tokens for g in result.generations)
        cached = policy.capabilities.prefix_caching
        # The prompt is computed once where the backend shares it across the n samples, else once per
        # sample; the tokens a cache already held (an earlier call computed them) are not computed again.
        computed_prompt = result.prompt_tokens * (1 if cached else n) - result.cached_prompt_tokens
        usage.generated_tokens += generated
        usage.prompt_tokens += result.prompt_tokens * n
        usage.cached_prompt_tokens += result.prompt_tokens * n - computed_prompt
        usage.policy_calls += result.backend_calls
        usage.samples += n if new_sample else 0
        per_token = policy.flops_per_token()
        if per_token:
            usage.flops += per_token * (generated + computed_prompt)
        usage.wall_s += seconds

    async def score(self, solutions: list[str], prompt: str | None = None) -> "Scores | None":
        """Score `solutions` in one scorer call, as many of them (from the first) as the budget affords.

        The Scores cover a prefix of `solutions` (all of them unless the budget
        ran short); None if it affords none.
        """
        scorer = self.scorer
        prompt = self.problem.prompt if prompt is None else prompt
        if not solutions:
            return None
        max_tokens = None  # the tokens the scorer may read: it scores the leading solutions that fit
        if self.budget.max_flops is not None:
            per_token = scorer.flops_per_token()
            if per_token is None:
                raise ValueError(f"a max_flops budget needs the scorer's FLOPs per token; {scorer.name} does not know it")
            max_tokens = max(0, math.floor((self.budget.max_flops - self.trace.usage.flops) / per_token))
            while max_tokens and not self.budget.affords_scoring(self.trace.usage, per_token * max_tokens):
                max_tokens -= 1  # float rounding
        scores, elapsed = await self._within_wall(scorer.score(prompt, solutions, self.task.step_delimiter,
                                                               self.scope, max_tokens))
        if scores is None:
            return None
        if len(scores.per_step) < len(solutions):
            self.stop("max_flops")
        if not scores.per_step:
            return None
        usage = self.trace.usage
        usage.scorer_calls += 1
        usage.scored_tokens += scores.scored_tokens
        usage.flops += scores.flops
        usage.wall_s += elapsed
        return scores


async def sample_whole(search: Search, settings: SamplingSettings, scored: bool = False, wave: int | None = None,
                       after_wave: Callable[[list[Node]], Awaitable[bool]] | None = None) -> None:
    """Draw whole completions under the budget and hang them under the trace's root.

    All `n` in one request, or in waves of `wave` (the first with the trace's
    seed, the next with seeds derived from it); after each wave,
    `after_wave(its nodes)` may say stop (a stopping rule). Within a wave, the
    count shrinks to what the sample and call limits allow, and to what the
    FLOPs limit allows at all (fewer samples, not none); each sample's token
    limit shrinks to what the token and FLOPs limits allow for that count.
    """
    drawn, index = 0, 0
    while drawn < settings.n:
        size = min(wave or settings.n, settings.n - drawn)
        new = await draw_wave(search, settings, size, wave_seed(search, index), scored)
        if not new:
            return  # the budget ended it
        drawn, index = drawn + len(new), index + 1
        if after_wave is not None and await after_wave(new):
            return


def wave_seed(search: Search, index: int) -> int:
    """The seed of a search's wave `index` of whole samples: the trace's own for the first, derived after."""
    return search.seed if index == 0 else derive_seed(search.seed, "wave", index)


async def draw_wave(search: Search, settings: SamplingSettings, n: int, seed: int, scored: bool = False,
                    confidence: Confidence | None = None) -> list[Node]:
    """Up to `n` whole samples in one policy call, as much as the budget affords, hung under the root; their
    nodes (none when the budget ended the search). With `confidence`, each node's `scores["deepconf"]` is
    its generation's lowest group confidence."""
    trace, problem, budget = search.trace, search.problem, search.budget

    def request(n: int, max_tokens: int = settings.max_tokens) -> GenerationRequest:
        return GenerationRequest(prompt=problem.prompt, n=n, temperature=settings.temperature, top_p=settings.top_p,
                                 max_tokens=max_tokens, seed=seed, confidence=confidence)

    if budget.max_samples is not None and n > budget.max_samples - trace.usage.samples > 0:
        n = budget.max_samples - trace.usage.samples
        search.stop("max_samples")
    while n > 1:  # fewer samples, not none, where calls or FLOPs run short (a token limit shortens samples instead)
        tokens, why = budget.afford_why(trace.usage, search._work([request(n)], scored))
        if why != "max_policy_calls" and (tokens or why != "max_flops"):
            break
        n -= 1
        search.stop(why)
    tokens = search.afford([request(n)], scored)
    if tokens < 1:
        return []
    results = await search.generate([request(n, tokens)])
    if results is None:
        return []
    (result,) = results
    trace.root.num_tokens = result.prompt_tokens
    nodes = [trace.add(trace.root.id, g.text, num_tokens=g.num_tokens, logprob=g.logprob, terminal=True,
                       finish_reason=g.finish_reason,
                       answer=search.task.extract_answer(g.text) if g.finish_reason == FINISH_STOP else None,
                       **({"scores": {"deepconf": g.confidence}} if g.confidence is not None else {}))
             for g in result.generations]
    search.emit("generated", nodes)
    return nodes


class _CutTokens:
    """What a call's requests had generated when the search gave them up, as the backend reports them."""

    def __init__(self, requests: int) -> None:
        self.left, self.tokens = requests, 0
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()

    def report(self, tokens: int) -> None:  # any thread
        self._loop.call_soon_threadsafe(self._add, tokens)

    def _add(self, tokens: int) -> None:
        self.tokens += tokens
        self.left -= 1
        if self.left == 0 and not self._done.done():
            self._done.set_result(None)

    async def total(self, timeout: float) -> int:
        """The tokens reported, once every request has been (or `timeout` seconds on, what was by then)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except asyncio.TimeoutError:
            pass
        return self.tokens


def _reply_start(request: GenerationRequest) -> int:
    """Where the model's own text begins in a continuation of `request` (its prompt, then the sample)."""
    return len(request.prompt) if request.reply_start is None else request.reply_start


def _joined(pieces: list[Generation], prefix: str) -> Generation:
    """One generation from a sample's pieces: `prefix` (everything before the last piece, tool results
    included) and the last piece's text; its tokens those the policy generated."""
    last = pieces[-1]
    logprobs = [g.logprob for g in pieces if g.num_tokens]
    confidences = [g.confidence for g in pieces if g.num_tokens]  # the lowest group of any piece is the lowest
    return Generation(text=prefix + last.text if len(pieces) > 1 else last.text,
                      num_tokens=sum(g.num_tokens for g in pieces), finish_reason=last.finish_reason,
                      logprob=sum(logprobs) if logprobs and None not in logprobs else None,
                      stop_string=last.stop_string,
                      confidence=min(confidences) if confidences and None not in confidences else None)


def _release(policy: Policy, scorer: "Scorer | None", scope: int) -> None:
    policy.release(scope)
    if scorer is not None:
        scorer.release(scope)


def answered(trace: Trace) -> list[Node]:
    """Finished terminal nodes with an answer: the solutions a strategy may choose from."""
    return [n for n in trace.terminals() if n.finished and n.answer is not None]


def choose_best(candidates: list[Node], score_name: str) -> Node:
    """The highest-scoring solution (the earliest among equals)."""
    return max(candidates, key=lambda n: (n.scores[score_name], -n.id))


def choose_weighted(candidates: list[Node], score_name: str) -> Node:
    """The answer with the largest summed score (ties to the first seen), via its best solution."""
    totals: dict[str, float] = {}
    for node in candidates:
        totals[node.answer] = totals.get(node.answer, 0.0) + node.scores[score_name]
    first_seen = {a: i for i, a in reversed(list(enumerate(n.answer for n in candidates)))}
    answer = max(totals, key=lambda a: (totals[a], -first_seen[a]))
    return choose_best([n for n in candidates if n.answer == answer], score_name)


CHOOSERS = {"best": choose_best, "weighted": choose_weighted}
