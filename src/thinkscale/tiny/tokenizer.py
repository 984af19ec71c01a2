"""A character-level tokenizer, stored as a Hugging Face `tokenizer.json`.

One character is one token. The same file loads in `transformers`'
`AutoTokenizer` (a test holds the two encodings equal); thinkscale reads only
the vocabulary from it, so encoding here is a dictionary lookup.
"""

from __future__ import annotations

import json
from pathlib import Path

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
CHARACTERS = "0123456789+-*/()=,>\n "
DEFAULT_VOCAB = [PAD, BOS, EOS, *CHARACTERS]


class CharTokenizer:
    def __init__(self, vocab: list[str]) -> None:
        self.vocab = list(vocab)
        self.ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id = self.ids[PAD], self.ids[BOS], self.ids[EOS]
        self.specials = {self.pad_id, self.bos_id, self.eos_id}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        try:
            ids = [self.ids[ch] for ch in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tiny core's vocabulary {CHARACTERS!r}") from None
        return [self.bos_id, *ids] if add_bos else ids

    def encode_steps(self, prompt: str, steps: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of the prompt followed by the steps, and each step's [start, end) token span."""
        ids, spans = self.encode(prompt), []
        for step in steps:
            start = len(ids)
            ids += self.encode(step, add_bos=False)
            spans.append((start, len(ids)))
        return ids, spans

    def pad(self, rows: list[list[int]]) -> "torch.Tensor":
        """(B, T) ids, right-padded (causal attention never looks right, so padding changes nothing)."""
        import torch

        batch = torch.full((len(rows), max(map(len, rows))), self.pad_id, dtype=torch.long)
        for i, ids in enumerate(rows):
            batch[i, : len(ids)] = torch.tensor(ids)
        return batch

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i not in self.specials)

    # -- the Hugging Face file -------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> "CharTokenizer":
        data = json.loads(Path(path).read_text())
        vocab = data["model"]["vocab"]
        return cls(sorted(vocab, key=vocab.get))

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        specials = [
            {"id": self.ids[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t in (PAD, BOS, EOS)
        ]
        tokenizer_json = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": specials,
            "normalizer": None,
            # Every character is its own pre-token, newlines and spaces included.
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": False},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {BOS: {"id": BOS, "ids": [self.bos_id], "tokens": [BOS]}},
            },
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": self.ids, "unk_token": PAD},
        }
        (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json, indent=1))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "model_max_length": 1024,
            "clean_up_tokenization_spaces": False,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
