"""The built-in tiny reasoning core: model, tokenizer, engine, training, checkpoints."""
