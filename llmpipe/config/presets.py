"""Model presets and families as plain dicts, and how a recipe's `model` section resolves against them.

Here, in the config layer, so that checking a recipe's `model` needs neither torch nor llmpipe.models;
llmpipe.models turns a resolved section into a transformers config (GPT2Config, LlamaConfig, Qwen3Config).

A preset fixes a family and a shape. A `model` key left at 0 / empty takes the preset's value; the
family's own keys (kv_heads, intermediate, rope_theta) come from the preset only while the family is
the preset's, else from FAMILY_DEFAULTS (`preset: tiny, family: llama` is tiny's shape as a llama).
"""

from __future__ import annotations

from typing import Any

# transformers' model types llmpipe builds from scratch: gpt2 (learned positions, LayerNorm, GELU MLP,
# fused qkv), llama (RoPE, RMSNorm, SwiGLU, grouped-query attention) and qwen3 (llama's layout plus
# an RMSNorm of each head's queries and keys before attention).
FAMILIES = ("gpt2", "llama", "qwen3")
# The families whose attention has RoPE and a separate number of key/value heads.
ROPE_FAMILIES = ("llama", "qwen3")
# Families with QK-norm built in: Qwen3's attention always normalises q and k; LlamaConfig has no switch for it.
QK_NORM_FAMILIES = ("qwen3",)

# A family's values for what a preset of another family does not say. SwiGLU has three matrices to
# the GELU MLP's two, so 8/3 x width (LLaMA's choice) spends what GPT-2's 4 x width does.
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {
    "gpt2": {"mlp_ratio": 4.0, "rope_theta": 0.0},
    "llama": {"mlp_ratio": 8 / 3, "rope_theta": 10_000.0},
    "qwen3": {"mlp_ratio": 8 / 3, "rope_theta": 10_000.0},
}

# Family, layers, width, heads and context of each preset (kv_heads, intermediate and rope_theta where
# the family has them); the vocabulary is the trained tokenizer's.
PRESETS: dict[str, dict[str, Any]] = {
    # 2 layers x 64 wide: a whole chain trains in seconds; for tests.
    "micro": {"family": "gpt2", "layers": 2, "width": 64, "heads": 2, "context": 256},
    # ~5.8M parameters with a 4096 vocabulary: learns the embedded data in minutes on 2 CPU cores.
    "tiny": {"family": "gpt2", "layers": 6, "width": 256, "heads": 8, "context": 256},
    # A few times larger, for a laptop with time to spare or a small GPU.
    "small": {"family": "gpt2", "layers": 8, "width": 512, "heads": 8, "context": 512},
    # GPT-2 small's shape (124M with GPT-2's 50257 vocabulary); for one GPU.
    "gpt2-124m": {"family": "gpt2", "layers": 12, "width": 768, "heads": 12, "context": 1024},
    # The modern layouts at micro's and tiny's size. Half as many key/value heads as query heads
    # (grouped-query attention) and a SwiGLU of 3 x width: per layer exactly as many weights as the
    # GPT-2 preset of the same size (micro 49k, tiny 786k); no position table, so ~1% fewer in all.
    "micro-llama": {"family": "llama", "layers": 2, "width": 64, "heads": 2, "kv_heads": 1, "intermediate": 192,
                    "context": 256, "rope_theta": 10_000.0},
    "tiny-llama": {"family": "llama", "layers": 6, "width": 256, "heads": 8, "kv_heads": 4, "intermediate": 768,
                   "context": 256, "rope_theta": 10_000.0},
    "micro-qwen3": {"family": "qwen3", "layers": 2, "width": 64, "heads": 2, "kv_heads": 1, "intermediate": 192,
                    "context": 256, "rope_theta": 10_000.0},
    "tiny-qwen3": {"family": "qwen3", "layers": 6, "width": 256, "heads": 8, "kv_heads": 4, "intermediate": 768,
                   "context": 256, "rope_theta": 10_000.0},
}

# `model: auto` (preset auto): pretraining picks one of these shapes (layers, width, heads; head size 32, then 64)
# to fit its budget (llmpipe/train/budget.py), smallest first; the family and the other keys are the section's.
AUTO = "auto"
AUTO_SHAPES: tuple[tuple[int, int, int], ...] = (
    (2, 32, 1), (2, 48, 2), (2, 64, 2), (3, 96, 3), (4, 128, 4), (5, 160, 5), (6, 192, 6), (6, 256, 8), (8, 384, 6), (8, 512, 8),
    (12, 768, 12), (16, 1024, 16), (20, 1280, 20), (24, 1536, 24),
)
# Llama's layout by default: at equal wall time on tinyshakespeare (120 s, Muon + WSD, 2 x 64) it reached 2.210
# bits/byte against GPT-2's 2.279 (bench/budget.py), as at tiny's size (bench/architectures.py).
AUTO_DEFAULTS = {"family": "llama", "context": 256}

# The section's keys that describe the network (what resolve_model fills in), in recipe order.
SHAPE_KEYS = ("family", "layers", "width", "heads", "kv_heads", "context", "intermediate", "qk_norm",
              "tie_embeddings", "rope_theta")


def _multiple(x: float, of: int) -> int:
    """`x` rounded to the nearest multiple of `of` (at least `of`): matmuls on odd sizes run slower."""
    return max(of, int(round(x / of)) * of)


def resolve_model(section: Any) -> dict[str, Any]:
    """The `model` section (a ModelConfig) with every 0 / empty key filled from its preset or family:
    what the stage builds and records. Keys the family lacks are recorded as 0 (no RoPE for gpt2)."""
    if section.preset == AUTO:
        return auto_shape(section)
    preset = PRESETS[section.preset]
    family = section.family or preset["family"]
    own = family == preset["family"]
    defaults = FAMILY_DEFAULTS[family]
    width = section.width or preset["width"]
    heads = section.heads or preset["heads"]
    # A preset's MLP is a ratio of its width, so that `width: 512` on tiny-llama keeps its 3 x width.
    ratio = section.mlp_ratio or (preset["intermediate"] / preset["width"] if own and "intermediate" in preset
                                  else defaults["mlp_ratio"])
    intermediate = section.intermediate or _multiple(width * ratio, 16)
    rope = family in ROPE_FAMILIES
    return {
        "preset": section.preset,
        "family": family,
        "layers": section.layers or preset["layers"],
        "width": width,
        "heads": heads,
        # GPT-2 has one key/value head per query head; a preset's GQA ratio holds only at its own head count.
        "kv_heads": section.kv_heads or (preset.get("kv_heads", heads) if own and not section.heads else heads),
        "context": section.context or preset["context"],
        "intermediate": intermediate,
        "qk_norm": family in QK_NORM_FAMILIES,
        "tie_embeddings": section.tie_embeddings,
        "rope_theta": (section.rope_theta or (preset.get("rope_theta") if own else None) or defaults["rope_theta"])
        if rope else 0.0,
    }


def auto_shape(section: Any, layers: int = 0, width: int = 0, heads: int = 0) -> dict[str, Any]:
    """The resolved shape of a `model: auto` section: layers, width and heads as chosen (0 while not yet
    chosen: the recorded, machine-independent form; a sweep point of `llmpipe scale` sets them in the section),
    the rest from the section or the family."""
    family = section.family or AUTO_DEFAULTS["family"]
    layers, width, heads = layers or section.layers, width or section.width, heads or section.heads
    defaults = FAMILY_DEFAULTS[family]
    rope = family in ROPE_FAMILIES
    intermediate = section.intermediate or (_multiple(width * (section.mlp_ratio or defaults["mlp_ratio"]), 16)
                                            if width else 0)
    # Grouped-query attention at half the heads in the modern families, as their presets have it.
    kv_heads = section.kv_heads or (heads // 2 if rope and heads % 2 == 0 else heads)
    return {
        "preset": AUTO, "family": family, "layers": layers, "width": width, "heads": heads, "kv_heads": kv_heads,
        "context": section.context or AUTO_DEFAULTS["context"], "intermediate": intermediate,
        "qk_norm": family in QK_NORM_FAMILIES, "tie_embeddings": section.tie_embeddings,
        "rope_theta": (section.rope_theta or defaults["rope_theta"]) if rope else 0.0,
    }


def model_label(recorded: Any) -> str:
    """A recorded `model` (a resolved section, or a preset name as stages before the section recorded
    it) as one short phrase for reports: `tiny (gpt2, 6 x 256)`."""
    if isinstance(recorded, dict) and recorded.get("preset") == AUTO and not recorded.get("layers"):
        return f"auto ({recorded.get('family', '?')}, sized to the budget)"
    if isinstance(recorded, dict):
        return f"{recorded.get('preset', '?')} ({recorded.get('family', '?')}, {recorded.get('layers', '?')} x " \
               f"{recorded.get('width', '?')})"
    return str(recorded)
