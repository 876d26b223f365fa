"""Held-out measures of a checkpoint on a dataset: loss, perplexity and bits per byte on text,
assistant-token loss on chat, per-token preference accuracy on pairs (llmpipe.eval.pairs).

Computed here (not by a trainer's evaluate) so that `llmpipe eval`, the regression gate and the
stages measure two checkpoints with the same code on the same rows.
"""

from __future__ import annotations

import math
from typing import Any

from llmpipe.chat_format import assistant_mask
from llmpipe.data.blocks import pack_blocks
from llmpipe.eval.metrics import unpaired_accuracy
from llmpipe.eval.pairs import pair_measures, pair_scores
from llmpipe.eval.rl import prompt_accuracy


def _token_losses(model: Any, ids: Any, labels: Any, batch_size: int) -> tuple[float, int]:
    """Summed next-token loss over labelled positions, and their count."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(ids), batch_size):
            x, y = ids[b : b + batch_size].to(device), labels[b : b + batch_size].to(device)
            with torch.no_grad():
                # Rows are right-padded and attention is causal: padding never reaches a scored token.
                logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()
            target = y[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += loss.item()
            count += int((target != -100).sum())
    finally:
        model.train(was_training)
    return total, count


def _summary(total: float, count: int, n_bytes: int | None = None) -> dict[str, Any]:
    loss = total / count if count else float("nan")
    out = {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3), "tokens": count}
    if n_bytes:
        out["bpb"] = round(total / n_bytes / math.log(2), 4)
    return out


def text_loss(model: Any, tokenizer: Any, texts: list[str], block_size: int, batch_size: int = 16) -> dict[str, Any]:
    """Loss, perplexity and bits per byte on documents packed as pretraining packs them: every full
    block of the texts is scored, only the tail shorter than a block is left out.

    `tokens` counts the scored predictions, `tokens_total` the tokens the texts make and
    `scored_share` the one over the other, so a result says how much of the set it stands for. Bits
    per byte divides the summed loss by the bytes the scored tokens stand for (estimated from the
    tokens-per-byte of the whole set), so it compares across tokenizers."""
    blocks, n_tokens = pack_blocks(tokenizer, texts, block_size)
    if len(blocks) == 0:
        return {"loss": None, "perplexity": None, "tokens": 0, "tokens_total": n_tokens, "scored_share": 0.0}
    total, count = _token_losses(model, blocks, blocks, batch_size)
    bytes_per_token = sum(len(t.encode("utf-8")) for t in texts) / n_tokens
    # Each block of n tokens scores n - 1 predictions, standing for that many tokens' bytes.
    return {**_summary(total, count, round(count * bytes_per_token)), "tokens_total": n_tokens,
            "scored_share": round(count / n_tokens, 4)}


def chat_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_length: int, batch_size: int = 16) -> dict[str, Any]:
    """Loss and perplexity on the assistant tokens of chat rows (the tokens SFT trains on, masked by the
    same chat_format.assistant_mask whatever the template)."""
    import torch

    encoded = []
    for row in rows:
        ids, mask = assistant_mask(tokenizer, row["messages"])
        ids, mask = ids[:max_length], mask[:max_length]
        if any(mask[1:]):
            encoded.append((ids, [t if m else -100 for t, m in zip(ids, mask)]))
    if not encoded:
        return {"loss": None, "perplexity": None, "tokens": 0}
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (row_ids, row_labels) in enumerate(encoded):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return _summary(*_token_losses(model, ids, labels, batch_size))


def measure(model: Any, tokenizer: Any, kind: str, rows: list[dict[str, Any]], max_length: int, batch_size: int = 16,
            max_rows: int = 320) -> dict[str, Any]:
    """The headline measures of `kind` (text, chat, preference or prompt) rows; `value` is the one compared."""
    rows = rows[:max_rows]
    if kind == "text":
        # Every block the rows make: `max_rows` limits rows, and a long row makes many blocks.
        result = text_loss(model, tokenizer, [r["text"] for r in rows], max_length, batch_size)
        return {"kind": "loss", "value": result["loss"], **result}
    if kind == "chat":
        result = chat_loss(model, tokenizer, rows, max_length, batch_size)
        return {"kind": "loss", "value": result["loss"], **result}
    if kind == "prompt":  # RL prompts: greedy exact-match accuracy where rows carry an answer, else nothing to compare

        result = prompt_accuracy(model, tokenizer, rows, 24)
        return {"kind": "score", "value": result["accuracy"], **{k: v for k, v in result.items() if k != "samples"}}
    if kind == "unpaired":  # KTO rows: desirable completions above the undesirable ones' mean

        result = unpaired_accuracy(model, tokenizer, rows, batch_size)
        return {"kind": "score", "value": result["accuracy"], **result}
    # One checkpoint alone has no reference, so no implicit reward: its own per-token ranking is the
    # value; the summed comparison, which mostly measures reply length, is kept beside it.
    scores = pair_scores(model, tokenizer, rows, batch_size) if rows else None
    pairs = pair_measures(scores, scores, 1.0) if scores else {}
    return {"kind": "score", "value": pairs.get("per_token_accuracy"), "rows": len(rows),
            "per_token_margin": pairs.get("per_token_margin"), "summed_accuracy": pairs.get("summed_accuracy"),
            "chosen_longer_share": pairs.get("chosen_longer_share")}
