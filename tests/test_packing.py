"""Packed SFT blocks keep conversations apart: a document's logits do not depend on its neighbours."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Config

from llmpipe.speed.attention import SHORT_ROWS
from llmpipe.speed.packing import ROW_MULTIPLE, PackedBlockCollator, narrow_blocks


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


def test_narrow_blocks_hold_every_sequence_once_at_the_cheapest_width():
    lengths = [17, 35, 22, 22, 30, 19, 25, 21, 28, 18] * 8
    width, bins = narrow_blocks(lengths, hidden_size=256)
    assert width % 16 == 0 and max(lengths) <= width <= SHORT_ROWS
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert len(bins) % ROW_MULTIPLE == 0
    assert all(sum(lengths[i] for i in b) <= width for b in bins)
    assert sum(lengths) / (len(bins) * width) > 0.9  # little padding
    # A larger model spends relatively less on attention, so wider blocks (fuller ones) win.
    assert narrow_blocks(lengths, hidden_size=4096)[0] >= width
    assert narrow_blocks([SHORT_ROWS + 1, 3], hidden_size=256) is None


def test_narrow_repacking_keeps_each_conversation_whole_with_its_labels():
    rows = [
        {"input_ids": [1, 2, 3, 4, 5, 6, 7, 8], "labels": [-100, 2, 3, 4, -100, 6, 7, 8], "seq_lengths": [5, 3]},
        {"input_ids": [9, 10, 11, 12], "labels": [-100, -100, 11, 12], "seq_lengths": [4]},
    ]
    wide = PackedBlockCollator(pad_token_id=0, max_length=8)(rows)
    narrow = PackedBlockCollator(pad_token_id=0, max_length=8, hidden_size=256)(rows)
    assert wide["input_ids"].shape == (2, 8)  # TRL's bfd rows as they are
    assert narrow["input_ids"].shape == (ROW_MULTIPLE, 16)  # the 12 tokens in one row of the narrowest width, rows in fours

    def documents(batch):
        found = []
        for ids, labels, positions in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["position_ids"].tolist()):
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
            found += [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:]) if any(t != 0 for t in ids[a:b])]
        return sorted(found)

    assert documents(narrow) == documents(wide) == sorted(
        [([1, 2, 3, 4, 5], [-100, 2, 3, 4, -100]), ([6, 7, 8], [6, 7, 8]), ([9, 10, 11, 12], [-100, -100, 11, 12])])
