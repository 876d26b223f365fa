"""The chat template renders as intended and SFT's labels cover assistant tokens only."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmpipe.chat_format import CHAT_TEMPLATE
from llmpipe.stages.tokenizer import bytes_per_token, train_tokenizer

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What colour is the kettle?"},
    {"role": "assistant", "content": "The kettle is blue."},
    {"role": "user", "content": "And the lamp?"},
    {"role": "assistant", "content": "The lamp is red."},
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["The kettle is blue. The lamp is red. What colour is it? Be brief and say so."] * 50
    return train_tokenizer(texts, vocab_size=400, min_frequency=2)


def test_template_renders_roles_and_generation_prompt(tokenizer):
    text = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nWhat colour is the kettle?<|end|>\n<|assistant|>\n"
    )
    full = tokenizer.apply_chat_template(CHAT[:3], tokenize=False)
    assert full == text + "The kettle is blue.<|end|>\n"


def test_assistant_mask_covers_replies_and_end_of_turn_only(tokenizer):
    out = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    learned = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "The kettle is blue.<|end|>The lamp is red.<|end|>"
    hidden = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert "What colour" in hidden and "<|assistant|>" in hidden and "blue" not in hidden


def test_sft_trainer_labels_mask_everything_but_assistant_turns(tokenizer, tmp_path: Path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from llmpipe.config import load_recipe
    from llmpipe.models import build_config
    from llmpipe.runs import StageWriter
    from llmpipe.stages.sft import sft_arguments

    recipe = load_recipe(None, ["model=micro", "device=cpu", "sft.packing=false", "sft.max_length=128"])
    writer = StageWriter(tmp_path, "sft", recipe.stage_config("sft"))
    model = AutoModelForCausalLM.from_config(build_config("micro", tokenizer))
    trainer = SFTTrainer(model=model, args=sft_arguments(recipe, writer),
                         train_dataset=Dataset.from_list([{"messages": CHAT}]),
                         eval_dataset=Dataset.from_list([{"messages": CHAT}]), processing_class=tokenizer)
    row = trainer.train_dataset[0]
    learned = [token for token, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert tokenizer.decode(learned) == "The kettle is blue.<|end|>The lamp is red.<|end|>"
    assert all(label in (-100, token) for token, label in zip(row["input_ids"], row["labels"]))


def test_saved_tokenizer_round_trips_with_template(tokenizer, tmp_path: Path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == CHAT_TEMPLATE
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert loaded("The kettle")["input_ids"] == tokenizer("The kettle")["input_ids"]
    # Any byte sequence encodes (byte-level alphabet) and decodes back.
    text = "naïve 漢字 🙂"
    assert loaded.decode(loaded(text)["input_ids"]) == text


def test_bytes_per_token(tokenizer):
    text = "The kettle is blue. The lamp is red."
    assert bytes_per_token(tokenizer, [text]) == pytest.approx(len(text) / len(tokenizer(text)["input_ids"]))
    assert bytes_per_token(tokenizer, [text]) > 2.0


def test_packed_sft_rows_keep_whole_conversations_and_assistant_only_labels(tokenizer, tmp_path: Path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from llmpipe.config import load_recipe
    from llmpipe.models import build_config
    from llmpipe.runs import StageWriter
    from llmpipe.speed.packing import use_packed_blocks
    from llmpipe.stages.sft import sft_arguments

    other = [{"role": "user", "content": "Is it red?"}, {"role": "assistant", "content": "It is red."}]
    recipe = load_recipe(None, ["model=micro", "device=cpu", "sft.max_length=128"])
    writer = StageWriter(tmp_path, "sft", recipe.stage_config("sft"))
    model = AutoModelForCausalLM.from_config(build_config("micro", tokenizer))
    rows = Dataset.from_list([{"messages": CHAT}, {"messages": other}])
    trainer = SFTTrainer(model=model, args=sft_arguments(recipe, writer), train_dataset=rows,
                         eval_dataset=rows, processing_class=tokenizer)
    use_packed_blocks(trainer, tokenizer, 128)
    packed = trainer.train_dataset
    assert len(packed) == 1 and sorted(packed[0]["seq_lengths"]) == sorted(
        len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=False)) for m in (CHAT, other))
    batch = trainer.data_collator([packed[0]])  # on CPU, re-packed into narrow rows: read them all
    learned = tokenizer.decode([t for t, label in zip(batch["input_ids"].flatten(), batch["labels"].flatten()) if label != -100])
    assert sorted(learned.split("<|end|>")) == sorted(["", "The kettle is blue.", "The lamp is red.", "It is red."])
    starts = (batch["position_ids"] == 0) & (batch["input_ids"] != tokenizer.pad_token_id)
    assert starts.sum() == 2  # two conversations, each starting at position 0
