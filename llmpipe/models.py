"""Transformers configs of the recipe's `model` section (GPT-2, Llama, Qwen3), plus parameter/FLOP
counts, the context of any checkpoint, and LoRA's default target modules.

The presets and the resolution of a `model` section are plain dicts in the config layer
(llmpipe/config/presets.py), so that checking a recipe never imports torch; `build_config` turns a
resolved section into transformers' own config class, so that a checkpoint loads with the Auto
classes anywhere, llmpipe or not.
"""

from __future__ import annotations

from typing import Any

from llmpipe.config import PRESETS, ModelConfig

__all__ = ["LORA_TARGETS", "PRESETS", "build_config", "count_parameters", "flops_per_token", "lora_targets",
           "model_context"]

# What `lora_targets` finds in each family llmpipe builds: every linear layer but the output layer
# (peft's "all-linear"). GPT-2: the attention's fused q/k/v projection (c_attn), both output
# projections (attn.c_proj, mlp.c_proj) and the MLP's input (c_fc), all Conv1D. Llama and Qwen3: the
# four attention projections and SwiGLU's three matrices. Never lm_head, whose weight TRL's fused
# log-prob loss reads directly, so an adapter there would not train. Listed for the docs and the hint
# of a wrong target name; tests/test_architectures.py checks them against built models.
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_fc", "c_proj"],
    "llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "qwen3": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
}
# LLaMA's and Qwen3's own RMSNorm epsilon.
RMS_NORM_EPS = 1e-6


def build_config(model_cfg: ModelConfig | dict[str, Any] | str, tokenizer: Any) -> Any:
    """transformers' config (GPT2Config, LlamaConfig or Qwen3Config) for a `model` section, a resolved
    section (a dict, as stages record it) or a preset's name, sized to the tokenizer's vocabulary and
    with its special-token ids."""
    from transformers import GPT2Config, LlamaConfig, Qwen3Config

    if isinstance(model_cfg, str):
        model_cfg = ModelConfig(preset=model_cfg)
    shape = model_cfg.resolved() if isinstance(model_cfg, ModelConfig) else dict(model_cfg)
    # The config defaults point at the original models' own ids (GPT-2's 50256, Llama's 1 and 2);
    # ours come from the trained tokenizer.
    tokens = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
              "tie_word_embeddings": shape["tie_embeddings"]}
    # Dropout is 0 everywhere: at these sizes and token budgets it only slows CPU training (15-30%).
    if shape["family"] == "gpt2":
        return GPT2Config(n_positions=shape["context"], n_embd=shape["width"], n_layer=shape["layers"],
                          n_head=shape["heads"], n_inner=shape["intermediate"], resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, **tokens)
    common = {
        "hidden_size": shape["width"],
        "intermediate_size": shape["intermediate"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"],
        # Qwen3Config defaults head_dim to 128 whatever the width; llmpipe's heads split the width.
        "head_dim": shape["width"] // shape["heads"],
        "max_position_embeddings": shape["context"],
        "rope_parameters": {"rope_type": "default", "rope_theta": float(shape["rope_theta"])},
        "rms_norm_eps": RMS_NORM_EPS,
        "attention_dropout": 0.0,
        "attention_bias": False,
        **tokens,
    }
    if shape["family"] == "llama":
        return LlamaConfig(**common, mlp_bias=False)
    if shape["family"] == "qwen3":
        # Qwen3's attention always normalises each head's q and k (the reason to choose it over llama).
        return Qwen3Config(**common, use_sliding_window=False)
    raise ValueError(f"unknown model family {shape['family']!r}")  # pragma: no cover - the recipe check refuses it


def model_context(config: Any) -> int:
    """The most positions a checkpoint's config takes: GPT-2's n_positions, else max_position_embeddings
    (1024 when a config names neither, as GPT-2 does by default)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024)


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter that takes part in a matmul plus attention's
    12 x layers x attention width x sequence length (Kaplan et al. 2020), for any decoder family.

    Lookup tables cost no FLOPs: a position table (GPT-2's wpe) is left out, and so is the input
    embedding unless it is tied to the output layer, whose matmul over the vocabulary it then is."""
    import torch

    cfg = model.config.get_text_config()
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    lookups = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, torch.nn.Embedding) and (m is not embedding or not tied))
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 6.0 * (count_parameters(model) - lookups) + 12.0 * cfg.num_hidden_layers * heads * head_dim * seq_len


def lora_targets(model: Any) -> list[str]:
    """The names of every linear layer of `model` but its output layer (peft's "all-linear" default),
    GPT-2's Conv1D and bitsandbytes' 4-bit linear layers included; sorted, each name once."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head and name})
