"""Token blocks for causal-LM training and held-out scoring: documents as <bos> text <eos>, cut into
fixed-length blocks; the training corpus tokenized once per content into cached, memory-mapped shards."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from llmpipe.core.console import say
from llmpipe.core.dist import main_process_first
from llmpipe.core.files import sha256_file, sha256_text, write_json_atomic
from llmpipe.data.io import file_record
from llmpipe.data.shards import TokenBlockDataset, bos_prefix, cached_token_shards


def pack_blocks(tokenizer: Any, texts: list[str], block_size: int) -> tuple[Any, int]:
    """Tokenize held-out documents (in memory: they are few) as <bos> text <eos>, cut into full blocks.

    Returns (LongTensor [n_blocks, block_size], number of tokens before cutting). The tail shorter
    than a block is dropped.
    """
    ids: list[int] = []
    for start in range(0, len(texts), 256):
        for doc in tokenizer(texts[start : start + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(bos_prefix(tokenizer))
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
