"""Pretrain stage: next-token prediction on packed text blocks, from random initialisation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from llmpipe.config import Recipe
from llmpipe.core.console import say
from llmpipe.core.errors import UserError


def pack_blocks(tokenizer: Any, texts: list[str], block_size: int) -> tuple[Any, int]:
    """Tokenize held-out documents (in memory: they are few) as <bos> text <eos>, cut into full blocks.

    Returns (LongTensor [n_blocks, block_size], number of tokens before cutting). The tail shorter
    than a block is dropped.
    """
    import torch

    ids: list[int] = []
    for start in range(0, len(texts), 256):
        for doc in tokenizer(texts[start : start + 256], add_special_tokens=False)["input_ids"]:
            ids.append(tokenizer.bos_token_id)
            ids.extend(doc)
            ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // block_size
    return torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size), len(ids)


class BlockDataset:
    """Fixed-length token blocks as causal-LM examples (labels are the inputs; the model shifts)."""

    def __init__(self, blocks: Any) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        block = self.blocks[index]
        return {"input_ids": block, "labels": block}


def cache_root() -> Path:
    """Where tokenized corpora are cached: $LLMPIPE_CACHE, else ~/.cache/llmpipe."""
    return Path(os.environ.get("LLMPIPE_CACHE") or Path.home() / ".cache" / "llmpipe") / "tokens"


def token_blocks(cfg: Any, tokenizer: Any, tokenizer_dir: Path, stream: Any, references: list[str]) -> tuple[Any, dict]:
    """Training blocks memory-mapped from token shards, tokenized once per content and cached.

    The cache key covers everything that decides the tokens: each file's sha256, the tokenizer,
    the split, column mapping, bad-row policy, mixture weights, cleaning settings and the texts the
    rows are decontaminated against. Returns (dataset, the manifest's `data` entry)."""
    from llmpipe.data.io import file_record
    from llmpipe.data.shards import TokenBlockDataset, cached_token_shards
    from llmpipe.core.dist import main_process_first
    from llmpipe.core.files import sha256_file, sha256_text, write_json_atomic

    identity = {
        "format": 1,
        "sources": [file_record(spec) for spec in cfg.train_files],
        "validation": cfg.validation_files or cfg.validation_fraction,
        "columns": cfg.columns,
        "bad_rows": cfg.bad_rows,
        "mixture_weights": cfg.mixture_weights,
        "cleaning": dataclasses.asdict(cfg.cleaning),
        "tokenizer": sha256_file(Path(tokenizer_dir) / "tokenizer.json"),
        "references": sha256_text("\n".join(references)),
    }
    key = sha256_text(json.dumps(identity, sort_keys=True, default=str))
    # Under a distributed launch the first process tokenizes; the others then find the cache.
    with main_process_first():
        folder, meta, cached = cached_token_shards(
            lambda: (row["text"] for row in stream.train()), tokenizer, cache_root(), key
        )
        report_file = folder / "data_report.json"
        if cached and report_file.exists():
            report = json.loads(report_file.read_text(encoding="utf-8"))
        else:
            report = stream.report.to_manifest()
            if not cached:
                write_json_atomic(report_file, report)
    report = {**report, "token_cache": str(folder), "cache_hit": cached, "train_tokens": meta["tokens"]}
    say(f"pretrain: {meta['tokens']:,} training tokens in {folder}" + (" (cached)" if cached else ""))
    return TokenBlockDataset(folder, cfg.max_length), report


def run(recipe: Recipe, run_dir: Path, parent: str | Path | None = None, restart: bool = False) -> Path:
    """Pretrain the recipe's model preset on its text; returns the finished stage folder."""
    from llmpipe.runs import run_stage

    return run_stage("pretrain", "pretrain", recipe, run_dir, parent, restart, _train)


def _train(recipe: Recipe, writer: Any, parent_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator, set_seed

    from llmpipe.data.pipeline import heldout_texts, stream_text
    from llmpipe.models import build_config, count_parameters, flops_per_token
    from llmpipe.train.common import attach_monitor, build_trainer, complete, fit, last_eval, summary, training_arguments

    cfg = recipe.pretrain
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    references = heldout_texts(recipe) if cfg.cleaning.decontaminate else []
    stream = stream_text(cfg, references)

    set_seed(recipe.seed)
    model_config = build_config(recipe.model, tokenizer)
    if cfg.max_length > model_config.n_positions:
        raise UserError(
            f"is {cfg.max_length} but the '{recipe.model}' preset has a context of {model_config.n_positions}",
            file=recipe.source, field="pretrain.max_length", hint=f"set pretrain.max_length <= {model_config.n_positions}",
        )
    train_blocks, writer.manifest["data"] = token_blocks(cfg, tokenizer, parent_dir, stream, references)
    val_texts = [r["text"] for r in stream.validation]
    val_blocks, val_tokens = pack_blocks(tokenizer, val_texts, cfg.max_length)
    for name, blocks in (("train", train_blocks), ("validation", val_blocks)):
        if len(blocks) == 0:
            raise UserError(
                f"{name} text is shorter than one block of {cfg.max_length} tokens",
                field="pretrain.max_length", hint="give more text or lower pretrain.max_length",
            )
    val_blocks = val_blocks[: cfg.eval_batches * cfg.batch_size]
    # Bits per byte makes validation loss comparable across tokenizers: nats/token × tokens/byte / ln 2.
    tokens_per_byte = val_tokens / sum(len(t.encode("utf-8")) for t in val_texts)

    model = AutoModelForCausalLM.from_config(model_config)
    n_params = count_parameters(model)
    say(f"pretrain: {recipe.model} preset, {n_params / 1e6:.2f}M parameters, {len(train_blocks)} train blocks "
        f"of {cfg.max_length} tokens, {len(val_blocks)} validation blocks")

    args = training_arguments(TrainingArguments, cfg, recipe, writer, include_num_input_tokens_seen="all")
    trainer = build_trainer(
        Trainer,
        model=model,
        args=args,
        train_dataset=train_blocks,
        eval_dataset=BlockDataset(val_blocks),
        processing_class=tokenizer,
        # Blocks are all max_length long: stacking them is all a batch needs. The default collator
        # for a tokenizer pads through Python lists (measured: 8 ms a step, about 1% of a tiny step).
        data_collator=default_data_collator,
    )
    monitor = attach_monitor(trainer, recipe, cfg, writer, tokenizer, chat=False, bits_per_byte_factor=tokens_per_byte / math.log(2))
    before = trainer.evaluate()["eval_loss"] if writer.resume_from is None else None
    result = fit(trainer, writer, tokenizer, monitor)
    after = last_eval(trainer, monitor)["eval_loss"]

    def bpb(loss: float | None) -> float | None:
        return None if loss is None else round(loss * tokens_per_byte / math.log(2), 4)

    writer.manifest["metrics"] = {
        "parameters": n_params,
        "validation_loss_before": before,
        "validation_loss": after,
        "validation_bpb_before": bpb(before),
        "validation_bpb": bpb(after),
        "flops_per_token": flops_per_token(model, cfg.max_length),
    }
    writer.manifest["evals"] = result.history
    metric = {"name": "held-out bits/byte", "before": bpb(before), "after": bpb(after)}
    say(f"pretrain: validation loss {after:.4f}, {bpb(after)} bits/byte")
    # Children are gated on the documents behind the validation blocks (about as many bytes).
    budget = len(val_blocks) * cfg.max_length / tokens_per_byte
    kept, size = [], 0
    for text in val_texts:
        if size >= budget:
            break
        kept.append({"text": text})
        size += len(text.encode("utf-8"))
    heldout = [("pretrain-validation", "text", kept)]
    return complete(writer, cfg, trainer.model, tokenizer, None, summary(result, after, metric), heldout, monitor)
