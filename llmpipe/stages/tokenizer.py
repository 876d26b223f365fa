"""Tokenizer stage: train a byte-level BPE on the pretraining text and save it as an HF fast tokenizer.

The tokenizer carries the chat template every later stage uses. Assistant turns are wrapped in
`{% generation %}` ... `{% endgeneration %}` (with the end-of-turn token inside) so that TRL's
assistant-only loss can find them and the model learns to stop.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llmpipe.chat_format import BOS, CHAT_TEMPLATE, END_OF_TURN, EOS, PAD, ROLE_TOKENS, SPECIAL_TOKENS
from llmpipe.core.console import is_main_process, say
from llmpipe.data.pipeline import stream_text
from llmpipe.runs.context import StageContext


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int) -> Any:
    """Train byte-level BPE on `texts` and wrap it as a transformers fast tokenizer with our template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is in the vocabulary, so any text encodes, even characters never seen in training.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TURN, *ROLE_TOKENS],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def bytes_per_token(tokenizer: Any, texts: list[str]) -> float:
    """UTF-8 bytes per token over `texts`: the tokenizer's compression on that text."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return n_bytes / max(n_tokens, 1)


def _sample(texts: Iterable[str], max_bytes: int) -> list[str]:
    kept, total = [], 0
    for text in texts:
        kept.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    return kept


def train(ctx: StageContext) -> Path:
    """Train the run's tokenizer into the work folder and finish the stage; returns its folder."""
    recipe, writer, cfg = ctx.recipe, ctx.writer, ctx.cfg
    # The tokenizer learns from the text pretraining will see: the same checks and cleaning.
    data_cfg = dataclasses.replace(recipe.pretrain, train_files=cfg.train_files, validation_files=cfg.validation_files)
    stream = stream_text(data_cfg)
    started = time.time()
    texts = _sample((r["text"] for r in stream.train()), cfg.max_train_bytes)
    ctx.manifest.data = stream.report.to_manifest()
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.min_frequency)
    bpt = bytes_per_token(tokenizer, [r["text"] for r in stream.validation])
    wall = time.time() - started
    if is_main_process():
        tokenizer.save_pretrained(writer.work_dir)
    summary = {
        "steps": None,
        "tokens": None,
        "wall_seconds": round(wall, 2),
        "vocab_size": len(tokenizer),
        "train_bytes": sum(len(t.encode("utf-8")) for t in texts),
        # Byte-level BPE starts from single bytes: 1 byte per token is the "before".
        "metric": {"name": "held-out bytes/token", "before": 1.0, "after": round(bpt, 3)},
    }
    ctx.manifest.metrics = {"validation_bytes_per_token": bpt, "vocab_size": len(tokenizer)}
    say(f"tokenizer: vocab {len(tokenizer)}, {bpt:.2f} bytes/token on held-out text ({wall:.1f}s)")
    return writer.finish(summary)
