"""Attention on CPU that picks the faster kernel for each call's sequence length.

transformers runs one attention implementation per model. On CPU its default, `sdpa`, runs
PyTorch's flash-attention kernel, which is the fastest on long rows but pays a large fixed cost
per tile on short ones. Plain matmul-softmax-matmul attention (transformers' "eager") is the other
way round. Measured on the tiny preset (bf16 autocast, 2 threads, forward and backward, token slots
per second):

    row length        256      128     64     24
    sdpa (flash)    7,760    6,870  6,960  6,040
    eager           6,030    9,370 10,530 10,740

Training rows are short whenever sequences are: SFT conversations and preference pairs are packed
into narrow blocks (llmpipe.train.packing), and pretraining rows are as long as the context. No
library dispatches by length, so `length_dispatched_attention` does: eager arithmetic up to
`SHORT_ROWS` tokens, transformers' own sdpa function above it. Both compute the same attention;
only the kernel differs. It is a runtime setting: checkpoints do not record it (config.json keeps
no attention implementation), so a saved model loads anywhere with the default.
"""

from __future__ import annotations

from typing import Any

# Longest row (query and key length) that runs the eager arithmetic; the table above puts the
# crossover between 128 and 256.
SHORT_ROWS = 128
NAME = "llmpipe_length_dispatch"


def length_dispatched_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                                dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function signature: eager arithmetic for short rows, sdpa otherwise.

    `attention_mask` is sdpa's (boolean, True = attend, or None for plain causal attention). Calls
    with anything the plain arithmetic does not cover (a position bias, soft-capping, attention
    sinks, requested attention weights) go to sdpa whatever their length."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    special = any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "s_aux", "sinks")) or kwargs.get("output_attentions")
    if special or query.shape[2] > SHORT_ROWS or key.shape[2] > SHORT_ROWS:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    q_length, kv_length = query.shape[2], key.shape[2]
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    if attention_mask is None and causal and q_length > 1:
        # sdpa leaves a plain causal mask to the kernel (is_causal); build it here. Queries are the
        # last q_length positions of the keys (as with a KV cache).
        attention_mask = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril(kv_length - q_length)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def use_length_dispatched_attention(model: Any) -> None:
    """Switch `model` (a transformers model, or a PEFT model around one) to length_dispatched_attention
    when it is on sdpa; other implementations (flash-attention, flex) are the user's choice and kept.
    The switch is in place: every later forward of `model` uses it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "_attn_implementation", None) != "sdpa":
        return  # also a model given by name, which the trainer loads itself
    AttentionInterface.register(NAME, length_dispatched_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    base.set_attn_implementation(NAME)
