"""Transformers configs of the model size presets (GPT-2 family), plus parameter/FLOP counts.

The presets themselves are plain dicts in the config layer (llmpipe/config/presets.py), so that
checking a recipe never imports torch; `build_config` turns one into a `GPT2Config` sized to the
trained tokenizer.
"""

from __future__ import annotations

from typing import Any

from llmpipe.config.presets import PRESETS

__all__ = ["LORA_TARGETS", "PRESETS", "build_config", "count_parameters", "flops_per_token", "model_context"]

# LoRA's default target modules per model family (the checkpoint's `model_type`, so that `--from` any
# GPT-2 works); every preset is GPT-2. GPT-2: the attention's fused q/k/v projection (c_attn),
# both output projections (attn.c_proj, mlp.c_proj) and the MLP's input (c_fc); never lm_head, whose
# weight TRL's fused log-prob loss reads directly, so an adapter there would not train.
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def build_config(preset: str, tokenizer: Any) -> Any:
    """A GPT2Config for `preset` whose vocabulary and special-token ids are the tokenizer's."""
    from transformers import GPT2Config

    shape = PRESETS[preset]
    # Dropout is 0 everywhere: at these sizes and token budgets it only slows CPU training (15-30%).
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=shape["n_positions"],
        n_embd=shape["n_embd"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # GPT2Config's defaults point at GPT-2's own 50256; ours come from the trained tokenizer.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def model_context(config: Any) -> int:
    """The longest sequence a model config allows (GPT-2's n_positions, max_position_embeddings elsewhere)."""
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048)


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 per non-embedding parameter plus attention (Kaplan et al. 2020)."""
    cfg = model.config
    width = getattr(cfg, "n_embd", None) or cfg.hidden_size
    layers = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    positions = getattr(cfg, "n_positions", 0) * width  # learned position embeddings (GPT-2); rotary has none
    return 6.0 * (count_parameters(model) - positions) + 12.0 * layers * width * seq_len
