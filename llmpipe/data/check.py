"""`llmpipe data check`: a dry run of one stage's data, without training anything.

Shows what the stage would train on: rows read, dropped rows by reason, token lengths (histogram),
how many rows the configured max_length would cut, and a few rows rendered exactly as trained with
the tokens that carry loss marked [[like this]].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llmpipe.chat_format import assistant_mask
from llmpipe.core.errors import UserError
from llmpipe.data.clean import row_text
from llmpipe.data.pipeline import heldout_texts, load_rows, stream_text
from llmpipe.data.shards import bos_prefix
from llmpipe.registry import TOKENIZER, command_for, stage_for

LOSS_OPEN, LOSS_CLOSE = "[[", "]]"


def _marked(tokenizer: Any, ids: list[int], mask: list[int]) -> str:
    """Decode ids, wrapping every run of loss-carrying tokens in [[ ]]."""
    out, run, in_loss = [], [], False
    for token, m in zip(ids, mask):
        if bool(m) != in_loss and run:
            text = tokenizer.decode(run)
            out.append(f"{LOSS_OPEN}{text}{LOSS_CLOSE}" if in_loss else text)
            run = []
        in_loss = bool(m)
        run.append(token)
    if run:
        text = tokenizer.decode(run)
        out.append(f"{LOSS_OPEN}{text}{LOSS_CLOSE}" if in_loss else text)
    return "".join(out)


def _render(kind: str, row: dict[str, Any], tokenizer: Any) -> tuple[int, str]:
    """(token length, the row as trained with loss tokens marked)."""
    if kind == "text":
        ids = [*bos_prefix(tokenizer), *tokenizer(row["text"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        return len(ids), _marked(tokenizer, ids, [1] * len(ids))
    if kind == "chat":
        ids, mask = assistant_mask(tokenizer, row["messages"])
        return len(ids), _marked(tokenizer, ids, mask)
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False)
    if kind == "prompt":  # online RL: the policy writes the reply, nothing here carries loss
        return len(prompt), tokenizer.decode(prompt) + (f" [answer: {row['answer']}]" if "answer" in row else "")
    lengths, parts = [], []
    for key in [k for k in ("chosen", "rejected", "completion") if k in row]:
        full = tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=True, return_dict=False)
        lengths.append(len(full))
        parts.append(f"{key}: " + _marked(tokenizer, full, [0] * len(prompt) + [1] * (len(full) - len(prompt))))
    return max(lengths), "\n".join(parts)


def histogram(lengths: list[int], bins: int = 10, width: int = 40) -> list[str]:
    """Text histogram lines of token lengths, equal-width bins from 0 to the longest row."""
    if not lengths:
        return []
    top = max(lengths)
    step = max(1, -(-top // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(n // step, bins - 1)] += 1
    peak = max(counts)
    return [f"{i * step:>6}-{(i + 1) * step - 1:<6} {c:>7}  {'#' * round(width * c / peak) if peak else ''}"
            for i, c in enumerate(counts)]


def find_tokenizer(run_dir: Path, given: Path | None) -> Any:
    """The tokenizer to measure with: --tokenizer, else the run's own tokenizer stage, else None."""
    from transformers import AutoTokenizer

    for candidate in ([given] if given else []) + [Path(run_dir) / TOKENIZER]:
        if candidate is not None and (Path(candidate) / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(candidate)
    if given:
        raise UserError("no tokenizer.json here", file=str(given), hint=f"pass a folder written by 'llmpipe {command_for(TOKENIZER)}'")
    return None


def check(recipe: Any, stage: str, run_dir: Path, tokenizer_dir: Path | None, examples: int) -> dict[str, Any]:
    """Load the stage's data as training would, and measure it. Returns the figures; `format_report` prints them."""
    spec = stage_for(stage, recipe.align.method)
    kind = spec.data
    cfg = getattr(recipe, stage)
    if not spec.language_model:  # the tokenizer reads its files with the pretraining text's checks and cleaning
        cfg = dataclasses.replace(recipe.pretrain, train_files=cfg.train_files, validation_files=cfg.validation_files)
    references = heldout_texts(recipe) if cfg.cleaning.decontaminate else []
    if kind == "text":  # streamed: a corpus larger than memory can be checked too
        stream = stream_text(cfg, references)
        rows, report = stream.train(), stream.report
    else:
        data = load_rows(kind, cfg, references)
        rows, report = iter(data.train), data.report
    tokenizer = find_tokenizer(run_dir, tokenizer_dir)
    lengths, shown = [], []
    for row in rows:
        if tokenizer is None:
            length, text = len(row_text(row)), row_text(row)[:400]
        else:
            length, text = _render(kind, row, tokenizer)
        lengths.append(length)
        if len(shown) < examples:
            shown.append(text)
    result: dict[str, Any] = {"stage": stage, "kind": kind, "max_length": cfg.max_length, **report.to_manifest()}
    result["examples"] = shown
    result["lengths_in"] = "tokens" if tokenizer else "characters (no tokenizer yet: run 'llmpipe tokenizer' or pass --tokenizer)"
    result["lengths"] = {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)}
    result["histogram"] = histogram(lengths)
    if tokenizer is not None and kind != "text":
        cut = sum(n > cfg.max_length for n in lengths)
        result["truncated"] = {"rows": cut, "share": round(cut / len(lengths), 4)}
    elif tokenizer is not None:
        total = sum(lengths)
        result["packing"] = {"tokens": total, "blocks": total // cfg.max_length,
                             "tokens_dropped_at_end": total % cfg.max_length}
    return result


def format_report(result: dict[str, Any]) -> str:
    """The dry run as plain text for the terminal."""
    lines = [f"{result['stage']} data ({result['kind']} rows)"]
    for source in result["sources"]:
        lines.append(f"  {source.get('split', ''):10s} {source['source']}: {source['rows']} rows")
    lines.append(f"  train rows after cleaning and mixing: {result['train_rows']}, validation rows: {result['validation_rows']}")
    dropped = result["dropped"] or {"nothing": 0}
    lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    lines.append(f"length in {result['lengths_in']}: min {result['lengths']['min']}, mean {result['lengths']['mean']}, "
                 f"max {result['lengths']['max']}")
    lines += ["  " + line for line in result["histogram"]]
    if "truncated" in result:
        t = result["truncated"]
        lines.append(f"cut at max_length={result['max_length']}: {t['rows']} rows ({t['share']:.1%})")
    if "packing" in result:
        p = result["packing"]
        lines.append(f"packed into {p['blocks']} blocks of {result['max_length']} tokens; {p['tokens_dropped_at_end']} tokens left over")
    lines.append(f"examples (tokens that carry loss are {LOSS_OPEN}marked{LOSS_CLOSE}):")
    for i, text in enumerate(result["examples"], 1):
        lines.append(f"--- {i}\n{text}")
    return "\n".join(lines)
