"""Replay of pretraining text in SFT (llmpipe.train.replay): the rows enter training at the asked share,
and a share of 0 leaves the training set as it was."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import MICRO, invoke, read_manifest
from datasets import Dataset

from llmpipe.train.replay import add_replay, mix_in_replay, pretraining_stage


class Blocks:
    """Pretraining blocks in miniature: block i is ten tokens 100 + i."""

    block_size = 10

    def __len__(self) -> int:
        return 50

    def __getitem__(self, index: int) -> dict:
        block = torch.full((self.block_size,), 100 + index)
        return {"input_ids": block, "labels": block}


def _packed_chat() -> Dataset:
    # Three packed rows of 100 tokens (two conversations each), labels masked on the prompts.
    rows = [{"input_ids": list(range(100)), "labels": [-100] * 50 + list(range(50, 100)), "seq_lengths": [60, 40]}
            for _ in range(3)]
    return Dataset.from_list(rows)


def test_replay_rows_enter_training_at_the_share_with_loss_on_every_token():
    trainer = SimpleNamespace(train_dataset=_packed_chat())
    record = add_replay(trainer, Blocks(), 0.25, seed=0)
    # 300 chat tokens; a quarter of the mix is 100 replay tokens: ten blocks of ten.
    assert record["blocks"] == 10 and record["tokens"] == 100 and record["share"] == 0.25
    assert len(trainer.train_dataset) == 3 + 10
    replayed = trainer.train_dataset.select(range(3, 13))
    assert all(row["labels"] == row["input_ids"] and row["seq_lengths"] == [10] for row in replayed)
    assert len({row["input_ids"][0] for row in replayed}) == 10  # ten different blocks
    # The same seed draws the same blocks (a resumed stage trains on the same set).
    again = SimpleNamespace(train_dataset=_packed_chat())
    add_replay(again, Blocks(), 0.25, seed=0)
    assert again.train_dataset["input_ids"] == trainer.train_dataset["input_ids"]


def test_replay_without_packing_adds_plain_rows():
    trainer = SimpleNamespace(train_dataset=_packed_chat().remove_columns("seq_lengths"))
    add_replay(trainer, Blocks(), 0.5, seed=0)
    assert trainer.train_dataset.column_names == ["input_ids", "labels"] and len(trainer.train_dataset) == 3 + 30


def test_replay_fraction_zero_leaves_the_training_set_unchanged():
    chat = _packed_chat()
    trainer = SimpleNamespace(train_dataset=chat)
    ctx = SimpleNamespace(cfg=SimpleNamespace(replay_fraction=0.0))
    assert mix_in_replay(ctx, trainer, tokenizer=None) == {"fraction": 0.0}
    assert trainer.train_dataset is chat


def test_pretraining_stage_is_found_up_the_lineage(micro_run: Path):
    assert pretraining_stage(micro_run / "dpo")[0] == (micro_run / "pretrain").resolve()
    assert pretraining_stage(micro_run / "tokenizer") is None


@pytest.mark.parametrize("fraction", [0.25])
def test_sft_replays_the_lineage_pretraining_text(micro_copy: Path, fraction: float):
    result = invoke("sft", MICRO, "--out", str(micro_copy), "--restart", f"replay_fraction={fraction}")
    assert result.exit_code == 0, result.output
    replay = read_manifest(micro_copy / "sft")["data"]["replay"]
    pretrain = read_manifest(micro_copy / "pretrain")["data"]
    assert replay["fraction"] == fraction and replay["blocks"] > 0 and replay["block_tokens"] == 64
    assert replay["token_cache"] == pretrain["token_cache"] and replay["rebuilt"] is False
    assert abs(replay["share"] - fraction) < 0.02
    assert "replaying" in result.output


def test_a_gone_token_cache_is_found_again_from_the_recorded_pretrain_settings(micro_copy: Path):
    import json

    from llmpipe.chat_format import load_chat_tokenizer
    from llmpipe.config import load_recipe
    from llmpipe.train.replay import replay_blocks

    def edit(stage: str, change) -> None:
        path = micro_copy / stage / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    # The copy's sft names the original run's pretrain as its parent: point it at the copy's.
    edit("sft", lambda m: m["parent"].update(path=str((micro_copy / "pretrain").resolve())))
    cache = read_manifest(micro_copy / "pretrain")["data"]["token_cache"]
    edit("pretrain", lambda m: m["data"].update(token_cache=str(micro_copy / "gone")))
    blocks, source = replay_blocks(load_recipe(MICRO), micro_copy / "sft", load_chat_tokenizer(micro_copy / "sft"), 64)
    # The recorded data settings and the tokenizer give the same content key, so the same cache.
    assert source["rebuilt"] is True and source["token_cache"] == cache and len(blocks) > 0
