"""The tiny core for llama.cpp: convert a checkpoint to GGUF, and serve it.

    python -m thinkscale.tiny.gguf arithmetic out.gguf

llama.cpp's own converter (`convert_hf_to_gguf.py`) refuses the tiny core:
its character vocabulary is a WordLevel tokenizer, and the converter knows
only SentencePiece and BPE vocabularies that it recognises by hashing their
output on a test text. So this writes the GGUF itself, with the `gguf`
package (pip install gguf):

- architecture `llama`, F32 tensors, q and k rows permuted to llama.cpp's
  rotary layout exactly as the stock converter does for Llama checkpoints;
- the vocabulary as a byte-level BPE ("gpt2") tokenizer with no merges that
  apply: every character is its own token, written in GPT-2's byte-to-unicode
  alphabet (" " is "Ġ", "\\n" is "Ċ"), so llama.cpp encodes and decodes text
  exactly as the tiny tokenizer does; <pad>, <bos>, <eos> are control tokens,
  and a BOS is added in front of every prompt, as the tiny core was trained.

`serve_llamacpp` runs llama-cpp-python's OpenAI-compatible server on such a
file (pip install 'llama-cpp-python[server]'), for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from thinkscale.net import free_port, stop_server, wait_until_serving
from thinkscale.tiny import checkpoint as checkpoints
from thinkscale.tiny.tokenizer import BOS, PAD

FORMAT_VERSION = 1  # bump when the written file changes, so cached conversions are redone
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # llama.cpp's token types
NO_MERGE = f"{PAD} {BOS}"  # GGUF arrays cannot be empty; a pair of control tokens never occurs in text


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which llama.cpp's BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rotary halves (Hugging Face's layout) to interleaved pairs (llama.cpp's), per head."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def export_gguf(name_or_path: str | Path, out: str | Path) -> Path:
    """Write the checkpoint as a llama-architecture GGUF file at `out`."""
    import gguf

    ck = checkpoints.load(name_or_path)
    c = ck.model.config
    out = Path(out)
    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_name(f"thinkscale tiny {ck.path.name}")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_attention_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tok, alphabet = ck.tokenizer, byte_to_unicode()
    tokens, types = [], []
    for i, text in enumerate(tok.vocab):
        special = i in tok.specials
        tokens.append(text if special else "".join(alphabet[b] for b in text.encode("utf-8")))
        types.append(TOKEN_CONTROL if special else TOKEN_NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([NO_MERGE])
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    state = {k: v.detach().float().numpy() for k, v in ck.model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for layer in range(c.num_hidden_layers):
        for hf, ours in per_layer.items():
            names[f"model.layers.{layer}.{hf}.weight"] = f"blk.{layer}.{ours}.weight"
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise ValueError(f"{ck.path}: tensors with no GGUF name: {unknown}")
    for hf, ours in names.items():
        weight = state[hf]
        if ours.endswith(("attn_q.weight", "attn_k.weight")):
            weight = _permute(weight, c.num_attention_heads)
        writer.add_tensor(ours, np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def cached_gguf(name_or_path: str | Path, cache_dir: str | Path = ".cache/gguf") -> Path:
    """The checkpoint's GGUF under `cache_dir`, converted once per content of the checkpoint."""
    path = checkpoints.resolve(name_or_path)
    digest = hashlib.sha256(f"thinkscale-gguf-{FORMAT_VERSION}".encode())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        digest.update((path / name).read_bytes())
    target = Path(cache_dir) / f"{path.name}-{digest.hexdigest()[:12]}.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # a crash never leaves half a file
            os.replace(export_gguf(path, Path(tmp) / target.name), target)
    return target


@contextlib.contextmanager
def serve_llamacpp(model: str | Path, threads: int = 1, context: int = 256, alias: str = "tiny",
                   startup_s: float = 120.0) -> Iterator[str]:
    """Run llama-cpp-python's OpenAI-compatible server on a GGUF file; yields its base URL (…/v1).

    The server listens on 127.0.0.1 on a free port and is stopped on exit.
    """
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(context),
               "--n_threads", str(threads), "--n_threads_batch", str(threads),
               # keys and values in F32 (llama.cpp keeps F16 by default), so the served model's logits
               # equal the tiny core's to 1e-5, not 1e-2, and greedy decoding picks the same tokens
               "--type_k", "0", "--type_v", "0"]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            wait_until_serving(url, server, startup_s, "llama_cpp.server", log)
            yield url
        finally:
            stop_server(server)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m thinkscale.tiny.gguf",
                                     description="Convert a tiny-core checkpoint to a llama.cpp GGUF file.")
    parser.add_argument("checkpoint", help="a shipped checkpoint's name (arithmetic, countdown) or a directory")
    parser.add_argument("out", help="the .gguf file to write")
    args = parser.parse_args(argv)
    print(export_gguf(args.checkpoint, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
