"""Layer speed: llmpipe's patches of TRL / transformers internals, entered through one function, `fast_trainer`.

Each patch exists because a measured path of the libraries is slow on CPU, and each names the
versions it was checked against (CHECKED_WITH here; the modules say what they replace). After a TRL
or transformers upgrade, this package is the one place to look: tests/test_attention.py,
tests/test_lmhead.py and tests/test_packing.py compare every patch with the library's own path.

- attention.py: plain attention for short rows, sdpa above (CPU only).
- lmhead.py: TRL's chunked "fused LM head" replaced by plain logits off a GPU (1.4x faster there).
- packing.py: SFT conversations and DPO pairs re-packed into narrow blocks (CPU only).
- LeanSFTTrainer: SFT training steps take the model's own loss (TRL's per-token entropy and
  accuracy, about 5% of a step, run at evaluations only).
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer
from trl import SFTTrainer

from llmpipe.speed.attention import use_length_dispatched_attention
from llmpipe.speed.lmhead import plain_head_applies, plain_lm_head_during
from llmpipe.speed.packing import use_packed_blocks, use_packed_pairs

# The library versions every patch here was checked against (tests compare each with the library's path).
CHECKED_WITH = {"transformers": "5.23-5.24", "trl": "1.16"}
# How a stage's batches are laid out: plain (the trainer's own), packed_chat (SFT with packing), pairs (DPO).
LAYOUTS = ("plain", "packed_chat", "pairs")


class LeanSFTTrainer(SFTTrainer):
    """SFTTrainer whose training steps take the model's own loss, as plain Trainer does.

    TRL's SFT loss also computes the full-vocabulary entropy and top-1 accuracy of every token for
    its logs. llmpipe does not use them during training, and they cost about 5% of a step on the
    tiny preset. Evaluations still go through TRL's loss, so `eval_entropy` and
    `eval_mean_token_accuracy` are still logged."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss at evaluation; the model's own loss during training steps."""
        if not self.model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def fast_trainer(trainer_class: type, layout: str = "plain", tokenizer: Any = None, max_length: int | None = None,
                 **kwargs: Any) -> Any:
    """`trainer_class(**kwargs)` with llmpipe's speed patches where they apply.

    On CPU the model's attention picks its kernel by row length (set before the trainer first runs the
    model); off a GPU TRL's chunked LM head is swapped for the plain one during construction. Then the
    batch layout: `packed_chat` re-packs SFT's conversations into narrow blocks on CPU, `pairs` packs
    DPO's chosen/rejected sequences where the plain head applies. `SFTTrainer` becomes the lean SFT
    trainer."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    args = kwargs["args"]
    if args.device.type == "cpu":
        use_length_dispatched_attention(kwargs["model"])
    if trainer_class is SFTTrainer:
        trainer_class = LeanSFTTrainer
    plain_head = plain_head_applies(args)
    with plain_lm_head_during(trainer_class, on_cpu=plain_head):
        trainer = trainer_class(**kwargs)
    if layout == "packed_chat":
        use_packed_blocks(trainer, tokenizer, max_length)
    elif layout == "pairs" and plain_head:
        use_packed_pairs(trainer, max_length)
    return trainer
