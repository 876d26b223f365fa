"""A plain LM head for TRL's trainers on CPU, in place of TRL's chunked one.

TRL 1.x patches every model it trains (SFT, DPO, KTO, RLOO, GRPO) with `add_fused_lm_head`, so that
`model(..., labels=..., fused_lm_head=True)` returns per-token log-probabilities (plus entropy and
the like) without materialising the [batch, length, vocab] logits. That saves a lot of GPU memory at
large vocabularies, and on a GPU it runs as Triton kernels. Without Triton (CPU) it runs a
chunked autograd function that is slower than the full logits: measured on the tiny preset (48 rows
x 72 tokens, bf16, 2 threads), one forward+backward took 1,143 ms against 825 ms for the plain
logits, and the fused head's extra outputs (entropy, top-1) cost nothing more.

No library offers the same outputs from ordinary logits, so this module computes them: same
signature, same `FusedCausalLMOutput` fields (zero where the label is -100), with the log-softmax
in fp32 as TRL does. Only the log-probs (and so the loss) carry a gradient. TRL's kernel can also
differentiate the entropy, but none of the trainers llmpipe uses puts entropy in a loss (TRL 1.16:
SFT, DPO and KTO detach it for their metrics; RLOO logs it; GRPO masks with it), and keeping its
graph cost about 5% of an SFT step.
`plain_lm_head_during` swaps it in while a trainer is built, on CPU only.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def plain_lm_head(model: Any, temperature: float = 1.0, cast_lm_head_to_fp32: bool = False,
                  outputs: tuple[str, ...] = ("log_probs",)) -> None:
    """Give `model` TRL's `fused_lm_head=True` call, computed from the model's full logits.
    (`cast_lm_head_to_fp32` is accepted for TRL's signature: the log-softmax is fp32 anyway.)"""
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    original_forward = model.forward

    # The original signature is kept: generate() checks its keyword arguments against it.
    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, shift_labels: Any = None,
                num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if not fused_lm_head:
            extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
            return original_forward(*args, **kwargs, **{k: v for k, v in extra.items() if v is not None})
        kwargs["use_cache"] = False
        packed = {k: kwargs.pop(k, None) for k in ("packed_input_ids", "packed_position_ids", "packed_index")}
        labels = labels[:, 1:] if shift_labels is None else shift_labels
        mask = labels != -100
        if packed["packed_input_ids"] is None:
            out = original_forward(*args, **kwargs)
            logits = out.logits[:, :-1] if shift_labels is None else out.logits
            scored = logits[mask]
        else:  # llmpipe.train.packing.PackedPairsCollator: the packed blocks, read back per row
            out = original_forward(input_ids=packed["packed_input_ids"], position_ids=packed["packed_position_ids"],
                                   use_cache=False)
            index = packed["packed_index"][:, :-1] if shift_labels is None else packed["packed_index"]
            scored = out.logits.reshape(-1, out.logits.size(-1))[index[mask]]
        # Only the labelled positions (e.g. the replies, not the prompts) go through the softmax.
        scored = scored.float() if temperature == 1.0 else scored.float() / temperature
        targets = labels[mask]
        all_logps = torch.log_softmax(scored, dim=-1)

        def per_token(values: Any) -> Any:  # back to [rows, positions], 0 where the label is -100
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = per_token(all_logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
        extras: dict[str, Any] = {}
        with torch.no_grad():
            if "entropy" in outputs:
                extras["entropy"] = per_token(-(all_logps.exp() * all_logps).sum(-1))
            if "log_sum_sq_probs" in outputs:
                extras["log_sum_sq_probs"] = per_token(torch.logsumexp(2 * all_logps, dim=-1))
            if "mean_logits" in outputs:
                extras["mean_logits"] = per_token(scored.mean(-1))
            if "is_top1" in outputs:
                extras["is_top1"] = per_token(scored.argmax(-1) == targets)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, label_mask=mask,
                                   aux_loss=getattr(out, "aux_loss", None), **extras)

    model.forward = types.MethodType(forward, model)


def plain_head_applies(args: Any) -> bool:
    """Whether trainers built with these TrainingArguments get the plain head: off a GPU."""
    return args.device.type != "cuda"


@contextmanager
def plain_lm_head_during(trainer_class: type, on_cpu: bool) -> Iterator[None]:
    """While a `trainer_class` (or a subclass of a TRL trainer) is built on CPU, the
    `add_fused_lm_head` its TRL module calls is `plain_lm_head`."""
    modules = {sys.modules[c.__module__] for c in trainer_class.__mro__}
    patched = [m for m in modules if hasattr(m, "add_fused_lm_head")] if on_cpu else []
    saved = [m.add_fused_lm_head for m in patched]
    for module in patched:
        module.add_fused_lm_head = plain_lm_head
    try:
        yield
    finally:
        for module, original in zip(patched, saved):
            module.add_fused_lm_head = original
