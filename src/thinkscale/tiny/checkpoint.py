"""Load and save tiny-core checkpoints in the Hugging Face layout.

A checkpoint is a directory holding `config.json`, `model.safetensors`,
`tokenizer.json` (and `tokenizer_config.json`, `training.json`). The shipped
ones live in `tiny/checkpoints/<name>/` and are found by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from thinkscale.registry import unknown_name_error
from thinkscale.tiny.model import TinyConfig, TinyLlama
from thinkscale.tiny.tokenizer import CharTokenizer

SHIPPED = Path(__file__).parent / "checkpoints"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass
class Checkpoint:
    model: TinyLlama
    tokenizer: CharTokenizer
    path: Path
    summary: dict


def shipped_names() -> list[str]:
    return sorted(p.name for p in SHIPPED.iterdir() if (p / "config.json").exists()) if SHIPPED.exists() else []


def resolve(name_or_path: str | Path) -> Path:
    """A shipped checkpoint's name, or a directory; errors name the closest choices."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in shipped_names():
        return SHIPPED / str(name_or_path)
    if path.exists():
        raise ValueError(f"checkpoint {str(path)!r} is a file; expected a directory holding {', '.join(REQUIRED_FILES)}")
    raise unknown_name_error("checkpoint (a shipped name or a directory)", str(name_or_path), shipped_names())


def load(name_or_path: str | Path) -> Checkpoint:
    path = resolve(name_or_path)
    for name in REQUIRED_FILES:
        if not (path / name).exists():
            raise FileNotFoundError(f"checkpoint {path} is missing {name} (a checkpoint needs {', '.join(REQUIRED_FILES)})")
    config = TinyConfig.from_hf(json.loads((path / "config.json").read_text()))
    model = TinyLlama(config)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / 'model.safetensors'} does not fit config.json: missing {missing}, unexpected {unexpected}")
    model.eval()
    tokenizer = CharTokenizer.load(path / "tokenizer.json")
    if len(tokenizer) != config.vocab_size:
        raise ValueError(f"{path / 'tokenizer.json'} has {len(tokenizer)} tokens but config.json says {config.vocab_size}")
    summary_path = path / "training.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return Checkpoint(model=model, tokenizer=tokenizer, path=path, summary=summary)


def save(model: TinyLlama, tokenizer: CharTokenizer, directory: str | Path, summary: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().to(torch.float32) for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(model.config.to_hf(), indent=1))
    tokenizer.save(directory)
    (directory / "generation_config.json").write_text(json.dumps({
        "bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
        "pad_token_id": model.config.pad_token_id}, indent=1))
    if summary is not None:
        (directory / "training.json").write_text(json.dumps(summary, indent=1))
    return directory
