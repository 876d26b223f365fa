"""Model size presets (GPT-2 family) as plain dicts: the recipe's `model` choices.

Here, in the config layer, so that checking a recipe's `model` needs neither torch nor llmpipe.models;
llmpipe.models turns a preset into a transformers config.
"""

from __future__ import annotations

# Layers, width, heads and context of each preset; the vocabulary is the trained tokenizer's.
PRESETS: dict[str, dict[str, int]] = {
    # 2 layers x 64 wide: a whole chain trains in seconds; for tests.
    "micro": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256},
    # ~5.8M parameters with a 4096 vocabulary: learns the embedded data in minutes on 2 CPU cores.
    "tiny": {"n_layer": 6, "n_embd": 256, "n_head": 8, "n_positions": 256},
    # A few times larger, for a laptop with time to spare or a small GPU.
    "small": {"n_layer": 8, "n_embd": 512, "n_head": 8, "n_positions": 512},
    # GPT-2 small's shape (124M with GPT-2's 50257 vocabulary); for one GPU.
    "gpt2-124m": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024},
}
