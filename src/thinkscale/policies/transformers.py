"""The `transformers` policy: a local Hugging Face model, on the CPU or a GPU.

    policy:
      name: transformers
      options: {model: /path/to/checkpoint, device: cuda, dtype: bfloat16}

`model` is a local directory or a hub id (loaded as transformers loads it;
thinkscale downloads nothing itself), or the name of a shipped tiny-core
checkpoint. Where the tokenizer has a chat template, the prompt is sent as the
user's message through it (`chat_template: false` sends the raw text instead).

Requests from concurrent callers that arrive together go into one batch: each
request becomes `n` rows, rows with the same sampling settings are generated
together (left-padded), `max_batch_rows` at a time. Sampling is seeded per
group of rows with the same settings and seed, so a sample is reproducible
given the requests it was batched with; greedy decoding always is.

Stop strings follow OpenAI's API: generation stops at one and it is not part
of the text; the tokens counted are those up to and including the one that
completed it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from thinkscale import torch_thread
from thinkscale.budget import forward_flops_per_token
from thinkscale.policies.base import Capabilities, Generation, GenerationRequest, GenerationResult, Policy, first_stop
from thinkscale.policies.batching import CallerBatcher, cut


class TransformersPolicy(Policy):
    name = "transformers"
    capabilities = Capabilities(native_n=True, prefix_caching=False, logprobs=False, reports_cuts=True)

    def __init__(self, model: str = "arithmetic", device: str | None = None, dtype: str = "auto",
                 chat_template: bool | None = None, max_batch_rows: int = 256, threads: int | None = None,
                 trust_remote_code: bool = False) -> None:
        """
        Args:
            model: a local checkpoint directory, a hub id, or a shipped tiny-core checkpoint's name.
            device: "cpu", "cuda", "cuda:1", ...; by default a GPU where there is one.
            dtype: "auto" (float32 on the CPU, bfloat16 on a GPU), "float32", "bfloat16" or "float16".
            chat_template: wrap prompts in the tokenizer's chat template; by default where it has one.
            max_batch_rows: most sequences generated together.
            threads: torch threads on the CPU.
            trust_remote_code: passed to transformers, for models with code of their own.
        """
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be at least 1, got {max_batch_rows}")
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
        self.max_batch_rows = max_batch_rows
        self._batcher = CallerBatcher(self._run_batch)

        def load() -> tuple:
            from thinkscale.tiny.checkpoint import SHIPPED, shipped_names

            if threads is not None:
                torch.set_num_threads(threads)
            source = str(SHIPPED / model) if model in shipped_names() and not Path(model).exists() else model
            where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            kind = dtype if dtype != "auto" else ("float32" if where.type == "cpu" else "bfloat16")
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(
                source, dtype=getattr(torch, kind), trust_remote_code=trust_remote_code).to(where).eval()
            return tokenizer, hf_model, where

        self.tokenizer, self.model, self.device = torch_thread.call(load)  # torch work on one thread: see torch_thread.py
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ValueError(f"{model} has no chat template; leave chat_template unset or false")
        self.chat_template = has_template if chat_template is None else chat_template
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    def flops_per_token(self) -> float:
        """2 x (non-embedding parameters): the usual estimate of a forward pass."""
        embedding = self.model.get_input_embeddings().weight.numel()
        return forward_flops_per_token(sum(p.numel() for p in self.model.parameters()), embedding)

    # -- prompts ---------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        if self.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template holds them
        return self.tokenizer(prompt)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.prompt_ids(text))

    # -- batching across callers ---------------------------------------------------
    async def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        for r in requests:  # fail here, in the caller, not in a batch shared with others
            length = len(self.prompt_ids(r.prompt))
            if self.max_positions and length >= self.max_positions:
                raise ValueError(f"a prompt of {length} tokens does not fit the model's {self.max_positions} "
                                 f"positions")
        return await self._batcher.submit(requests)

    def _run_batch(self, requests: list[GenerationRequest], deliver, cancelled) -> None:
        """One `generate` per group of settings. Requests whose callers gave up before it starts are skipped;
        in a running `generate`, their rows are marked done at the next step (a stopping criterion), and a
        `generate` whose rows are all done returns."""
        gone = set(cancelled())
        live = [i for i in range(len(requests)) if i not in gone]
        for i in gone:  # never started
            cut(requests[i], 0)

        def dropped() -> set[int]:  # positions in `live` whose callers gave up
            now = set(cancelled())
            return {k for k, i in enumerate(live) if i in now}

        for k, result in enumerate(self._generate_batch([requests[i] for i in live], dropped)):
            if live[k] in set(cancelled()):  # stopped, or done after its caller gave up: reported, not delivered
                cut(requests[live[k]], sum(g.num_tokens for g in result.generations))
            else:
                deliver(live[k], result)

    # -- generation (on the torch thread) ------------------------------------------------
    def _generate_batch(self, requests: list[GenerationRequest],
                        dropped: Callable[[], set[int]] = set) -> list[GenerationResult]:
        """All rows of all requests, grouped by sampling settings; results in request order. Rows of the
        requests `dropped()` names stop at the next step."""
        prompts = [self.prompt_ids(r.prompt) for r in requests]
        groups: dict[tuple, list[tuple[int, int]]] = {}  # settings -> (request index, sample index)
        for i, r in enumerate(requests):
            sampling = r.temperature > 0
            room = self.max_positions - len(prompts[i]) if self.max_positions else r.max_tokens
            max_tokens = min(r.max_tokens, room)  # as on the tiny core: a sample cut at the last position is "length"
            key = (r.temperature, r.top_p if sampling else 1.0, max_tokens, r.stop, r.seed if sampling else 0)
            groups.setdefault(key, []).extend((i, j) for j in range(r.n))
        samples: dict[tuple[int, int], Generation] = {}
        for (temperature, top_p, max_tokens, stop, seed), rows in groups.items():
            for start in range(0, len(rows), self.max_batch_rows):
                chunk = rows[start: start + self.max_batch_rows]
                if {i for i, _ in chunk} <= dropped():  # nobody waits for these rows: never started
                    samples.update((row, Generation("", 0, "length")) for row in chunk)
                    continue
                made = self._generate_rows([prompts[i] for i, _ in chunk], temperature, top_p, max_tokens, stop,
                                           seed + start, [i for i, _ in chunk], dropped)
                samples.update(zip(chunk, made))
        return [GenerationResult(generations=tuple(samples[i, j] for j in range(r.n)), prompt_tokens=len(prompts[i]))
                for i, r in enumerate(requests)]

    def _generate_rows(self, prompts: list[list[int]], temperature: float, top_p: float, max_tokens: int,
                       stop: tuple[str, ...], seed: int, owners: list[int] | None = None,
                       dropped: Callable[[], set[int]] = set) -> list[Generation]:
        batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.device)
        options: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                                   "eos_token_id": sorted(self.eos_ids)}
        if temperature > 0:
            torch.manual_seed(seed)
            options.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        criteria: list[transformers.StoppingCriteria] = []
        if stop:  # transformers' own stop_strings cannot read every vocabulary (the tiny core's, for one)
            criteria.append(_StopStrings(self.decode, stop, batch["input_ids"].shape[1]))
        stopper = _Dropped(owners, dropped, batch["input_ids"].shape[1]) if owners is not None else None
        if stopper is not None:
            criteria.append(stopper)
        if criteria:
            options["stopping_criteria"] = transformers.StoppingCriteriaList(criteria)
        with torch.inference_mode():
            out = self.model.generate(**batch, **options)  # (rows, prompt + new)
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        made = [self._finish(ids, stop) for ids in new]
        for row, length in (stopper.stopped_at.items() if stopper is not None else ()):
            # what follows a stopped row is padding, which may be the end token: it generated `length` tokens
            made[row] = dataclasses.replace(made[row], num_tokens=min(made[row].num_tokens, length),
                                            finish_reason="length", stop_string=None)
        return made

    def _finish(self, ids: list[int], stop: tuple[str, ...]) -> Generation:
        """One row's text, token count and finish reason, stop strings cut as in OpenAI's API."""
        end = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        body = ids if end is None else ids[:end]  # after the end token come only pads
        pad = self.tokenizer.pad_token_id
        if end is None and pad not in self.eos_ids and pad in body:  # a row stopped early (a caller gave up)
            body = body[:body.index(pad)]
        text = self.decode(body)
        matched = first_stop(text, stop)
        if matched is not None:
            # the fewest tokens whose text holds a stop string (holding one only grows with length)
            low, high = 1, len(body)
            while low < high:
                mid = (low + high) // 2
                if any(s in self.decode(body[:mid]) for s in stop):
                    high = mid
                else:
                    low = mid + 1
            return Generation(text=text[: text.index(matched)], num_tokens=low, finish_reason="stop",
                              stop_string=matched)
        if end is not None:
            return Generation(text=text, num_tokens=end + 1, finish_reason="stop")
        return Generation(text=text, num_tokens=len(body), finish_reason="length")

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class _Dropped(transformers.StoppingCriteria):
    """Finish the rows of requests whose callers gave up: `owners[row]` is the request of each row."""

    def __init__(self, owners: list[int], dropped: Callable[[], set[int]], prompt_length: int) -> None:
        super().__init__()
        self.owners, self.dropped, self.prompt_length = owners, dropped, prompt_length
        self.stopped_at: dict[int, int] = {}  # row -> tokens it had generated when it was stopped

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        gone = self.dropped()
        done = [owner in gone for owner in self.owners]
        for row, stopped in enumerate(done):
            if stopped:
                self.stopped_at.setdefault(row, input_ids.shape[1] - self.prompt_length)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _StopStrings(transformers.StoppingCriteria):
    """Finish a row once the text of its last few tokens holds a stop string.

    Only the tail is decoded, long enough for the longest stop string; where
    exactly the text is cut is settled afterwards, on the whole row.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...], prompt_length: int) -> None:
        super().__init__()
        self.decode, self.stop, self.prompt_length = decode, stop, prompt_length
        self.window = max(map(len, stop)) + 4  # tokens; a few spare for tokens that decode to nothing alone

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tails = input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.window):].tolist()
        done = [any(s in self.decode(tail) for s in self.stop) for tail in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
