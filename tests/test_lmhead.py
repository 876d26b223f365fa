"""The plain LM head (llmpipe.train.lmhead) and packed preference pairs (llmpipe.train.packing) give
what TRL's fused head gives on the padded batch: every output field and the gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from trl.trainer.utils import add_fused_lm_head

from llmpipe.speed.attention import use_length_dispatched_attention
from llmpipe.speed.lmhead import plain_lm_head
from llmpipe.speed.packing import PackedPairsCollator

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


def _models():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    fused, plain = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    plain.load_state_dict(fused.state_dict())
    add_fused_lm_head(fused, outputs=OUTPUTS)
    plain_lm_head(plain, outputs=OUTPUTS)
    return fused, plain


def _batch():
    """Right-padded rows of unequal length; the first two tokens of each are 'prompt' (no label)."""
    lengths = [5, 9, 3, 7]
    ids = torch.zeros(4, 9, dtype=torch.long)
    attention, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, 64, (n,))
        attention[row, :n] = 1
        completion[row, 2:n] = 1
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


@pytest.mark.parametrize("packed", [None, "wide", "narrow"])
def test_plain_head_matches_trls_fused_head(packed):
    fused, plain = _models()
    batch = _batch()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    extra = {}
    if packed:
        # wide: the 24 tokens first-fit into one block of 32, not 4 x 9. narrow (CPU): the cheapest
        # width for hidden size 32 is 16, two blocks and two empty ones (rows come in fours), and the
        # model runs the short-row attention of the CPU path.
        narrow = packed == "narrow"
        collated = PackedPairsCollator(lambda examples: batch, max_length=32, hidden_size=32 if narrow else None)([])
        extra = {k: collated[k] for k in ("packed_input_ids", "packed_position_ids", "packed_index")}
        assert collated["packed_input_ids"].shape == ((4, 16) if narrow else (1, 24))
        if narrow:
            use_length_dispatched_attention(plain)
    want = fused(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
    got = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True, **extra)
    for field in OUTPUTS:
        assert torch.allclose(getattr(got, field).float(), getattr(want, field).float(), atol=1e-5), field
    assert torch.equal(got.label_mask, want.label_mask)
    want.loss.backward()
    got.loss.backward()
    for a, b in zip(fused.parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_without_the_flag_the_model_is_unchanged():
    fused, plain = _models()
    ids = _batch()["input_ids"]
    assert torch.allclose(plain(input_ids=ids, labels=ids).loss, fused(input_ids=ids, labels=ids).loss)
    assert plain.generate(ids[:1, :3], max_new_tokens=3, do_sample=False).shape == (1, 6)
