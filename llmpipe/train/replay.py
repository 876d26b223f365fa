"""Replay of the parent chain's pretraining text in SFT, against forgetting.

Chat tuning moves a small model far from the text it was pretrained on: measured on the tiny preset,
the gate's protected pretraining text loss rose by 152% (demo) and 234% (alpaca), the text probes on
alpaca fell from 0.45 to 0.10. The field's usual remedy is to mix a share of pretraining data back into
fine-tuning (replay; the "pretraining mix" of InstructGPT's PPO-ptx). `sft.replay_fraction` is that
share of SFT's training tokens: at 0.1 the rises were 10% and 7%, with SFT's own measures unchanged
(README, "Forgetting and replay").

The replayed text is the pretraining blocks the lineage's pretrain stage trained on: its token cache
(the manifest's `data.token_cache`, content-hashed), rebuilt from its recorded data settings when the
cache is gone. Each replayed row is one block of `max_length` tokens with loss on every token, laid out
as the SFT trainer's own prepared rows (`input_ids`, `labels`, and with packing `seq_lengths` of one
document), so it goes through TRL's collators and llmpipe's packed-block collator unchanged. They are
added to the prepared training set after the trainer is built, because TRL prepares conversations and
plain text differently and one dataset cannot hold both before preparation. The trainer's sampler
shuffles them among the conversations; SFT's held-out measures stay on chat rows alone.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

from llmpipe.config import Recipe
from llmpipe.config.paths import map_paths, resolve_default
from llmpipe.config.schema import CleaningConfig
from llmpipe.core.console import say
from llmpipe.data.blocks import token_blocks
from llmpipe.data.pipeline import heldout_texts, stream_text
from llmpipe.data.shards import META, TokenBlockDataset
from llmpipe.registry import STAGES, stage_spec
from llmpipe.runs import read_manifest
from llmpipe.runs.context import StageContext

# The data settings of a pretrain section that decide its tokens (what its token cache is keyed by).
DATA_KEYS = ("train_files", "validation_files", "mixture_weights", "columns", "bad_rows", "validation_fraction")


def pretraining_stage(parent_dir: Path | None) -> tuple[Path, Any] | None:
    """The nearest stage up the lineage that pretrained from scratch (folder, manifest), or None (a
    foreign model has no llmpipe pretraining to replay)."""
    folder, seen = parent_dir, set()
    while folder is not None and Path(folder).resolve() not in seen:
        seen.add(Path(folder).resolve())
        manifest = read_manifest(Path(folder))
        if manifest is None or manifest.stage not in STAGES:
            return None
        if stage_spec(manifest.stage).builds_model:
            return Path(folder), manifest
        folder = Path(manifest.parent.path) if manifest.parent is not None and manifest.parent.path else None
    return None


def _pretrain_section(recipe: Recipe, section: str, recorded: dict[str, Any]) -> Any:
    """The recipe's section type with the data settings the pretrain stage recorded (paths resolved)."""
    current = getattr(recipe, section)
    values = {k: recorded[k] for k in DATA_KEYS if k in recorded}
    for key in ("train_files", "validation_files"):
        if key in values:
            values[key] = map_paths(values[key], resolve_default)
    if isinstance(recorded.get("cleaning"), dict):
        values["cleaning"] = CleaningConfig(**recorded["cleaning"])
    return dataclasses.replace(current, **values)


def replay_blocks(recipe: Recipe, parent_dir: Path | None, tokenizer: Any, block_size: int) -> tuple[Any, dict[str, Any]]:
    """The lineage's pretraining blocks of `block_size` tokens and where they came from, or (None, why)."""
    found = pretraining_stage(parent_dir)
    if found is None:
        return None, {"skipped": "no llmpipe pretrain stage in the parent's lineage: no pretraining text to replay"}
    folder, manifest = found
    section = stage_spec(manifest.stage).section
    cache = Path(str(manifest.data.get("token_cache") or "")) if manifest.data.get("token_cache") else None
    if cache is not None and (cache / META).exists():
        source = {"token_cache": str(cache), "rebuilt": False}
    else:  # the cache was cleared or made elsewhere: tokenize the recorded data again
        cfg = _pretrain_section(recipe, section, manifest.config.get(section, {}))
        references = heldout_texts(recipe) if cfg.cleaning.decontaminate else []
        tokenizer_dir = Path(manifest.parent.path) if manifest.parent is not None and manifest.parent.path else folder
        dataset, report = token_blocks(cfg, tokenizer, tokenizer_dir, stream_text(cfg, references), references)
        cache = dataset.shard_dir
        source = {"token_cache": str(cache), "rebuilt": True}
    source.update(pretrain_stage=str(folder.resolve()),
                  train_files=manifest.config.get(section, {}).get("train_files", []))
    return TokenBlockDataset(cache, block_size), source


def add_replay(trainer: Any, blocks: Any, fraction: float, seed: int) -> dict[str, Any]:
    """Add pretraining blocks to the trainer's prepared training set so that they make `fraction` of its
    tokens; returns the manifest's record of what was added. The blocks are drawn without replacement
    by a seeded shuffle (all of them when the text is short of the share)."""
    chat = trainer.train_dataset
    chat_tokens = sum(len(ids) for ids in chat["input_ids"])
    wanted = fraction / (1 - fraction) * chat_tokens
    block_size = blocks.block_size
    count = min(len(blocks), math.ceil(wanted / block_size))
    picked = random.Random(seed).sample(range(len(blocks)), count)
    packed = "seq_lengths" in chat.column_names
    rows = []
    for index in picked:
        ids = blocks[index]["input_ids"].tolist()
        rows.append({"input_ids": ids, "labels": ids, **({"seq_lengths": [len(ids)]} if packed else {})})
    columns = ["input_ids", "labels", *(["seq_lengths"] if packed else [])]
    chat = chat.select_columns(columns)
    trainer.train_dataset = concatenate_datasets([chat, Dataset.from_list(rows, features=chat.features)])
    tokens = count * block_size
    return {"fraction": fraction, "blocks": count, "block_tokens": block_size, "tokens": tokens,
            "chat_tokens": chat_tokens, "share": round(tokens / (tokens + chat_tokens), 4),
            "available_blocks": len(blocks)}


def mix_in_replay(ctx: StageContext, trainer: Any, tokenizer: Any) -> dict[str, Any]:
    """Add `replay_fraction` of pretraining text to the stage's prepared training set (nothing at 0);
    returns the manifest's `data.replay` record."""
    fraction = ctx.cfg.replay_fraction
    if fraction == 0:
        return {"fraction": 0.0}
    blocks, source = replay_blocks(ctx.recipe, ctx.parent_dir, tokenizer, ctx.cfg.max_length)
    if blocks is None:
        say(f"{ctx.spec.name:9s} replay_fraction={fraction:g} skipped: {source['skipped']}")
        return {"fraction": fraction, **source}
    record = {**add_replay(trainer, blocks, fraction, ctx.recipe.seed), **source}
    say(f"{ctx.spec.name:9s} replaying {record['blocks']} blocks of pretraining text ({record['tokens']:,} tokens, "
        f"{record['share']:.0%} of the training tokens)")
    return record
