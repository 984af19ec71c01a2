"""The built-in tiny reasoning core: model, tokenizer, engine, training, checkpoints."""

from typing import Literal

DtypeName = Literal["float32", "bfloat16"]  # what the tiny engine computes in, by name (torch-free: configs check it)
