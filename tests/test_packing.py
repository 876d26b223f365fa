"""Packed SFT blocks keep conversations apart: a document's logits do not depend on its neighbours."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Config

from llmpipe.train.packing import PackedBlockCollator


def tiny_model():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return AutoModelForCausalLM.from_config(config).eval()


def test_collator_restarts_positions_and_masks_padding():
    collate = PackedBlockCollator(pad_token_id=0, max_length=8)
    batch = collate([
        {"input_ids": [1, 2, 3, 4, 5, 6, 7, 8], "labels": [-100, 2, 3, 4, -100, 6, 7, 8], "seq_lengths": [5, 3]},
        {"input_ids": [6, 7, 8], "labels": [-100, 7, 8], "seq_lengths": [3]},
    ])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["input_ids"][1].tolist() == [6, 7, 8, 0, 0, 0, 0, 0]
    assert batch["labels"][1].tolist() == [-100, 7, 8, -100, -100, -100, -100, -100]
    assert "attention_mask" not in batch  # the mask comes from the position ids
    assert batch["use_cache"] is False


def test_packed_document_logits_equal_the_document_alone():
    model = tiny_model()
    first, second = [1, 2, 3, 4, 5], [6, 7, 8]
    batch = PackedBlockCollator(0, 8)([{"input_ids": first + second, "labels": first + second, "seq_lengths": [5, 3]}])
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        alone = model(input_ids=torch.tensor([second])).logits
        # Without restarting positions the second document attends to the first: the logits differ.
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits
    torch.testing.assert_close(packed[0, 5:], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[0, 5:], alone[0], atol=1e-3)
