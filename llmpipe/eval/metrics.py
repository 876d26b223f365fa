"""Held-out quality measures that show what a stage did: answer accuracy and preference accuracy.

Written here rather than taken from a library because they must use the checkpoint's own chat
template exactly as training did, and run in seconds on CPU inside a stage.
"""

from __future__ import annotations

import copy
import re
from typing import Any


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def answer_matches(reply: str, answer: str) -> bool:
    """True when the answer appears in the reply as whole words (case and punctuation ignored)."""
    want = _normalise(answer)
    return bool(want) and f" {want} " in f" {_normalise(reply)} "


def _prompt_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def generate_replies(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy replies to chat prompts, rendered with the tokenizer's chat template."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    # The model's own generation config carries the end-of-turn stop; greedy for reproducibility.
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.do_sample = max_new_tokens, False
    replies = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**batch, generation_config=config)
            new = out[:, batch["input_ids"].shape[1] :]
            replies += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return replies


def answer_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Share of chat rows whose greedy reply contains the row's `answer`; with a few samples."""
    rows = [r for r in rows if r.get("answer")]
    if not rows:
        return {"accuracy": None, "rows": 0, "samples": []}
    prompts = [_prompt_messages(r) for r in rows]
    replies = generate_replies(model, tokenizer, prompts, max_new_tokens)
    hits = [answer_matches(reply, str(r["answer"])) for reply, r in zip(replies, rows)]
    samples = [{"prompt": p[-1]["content"], "reply": reply, "answer": str(r["answer"])}
               for p, reply, r in list(zip(prompts, replies, rows))[:3]]
    return {"accuracy": sum(hits) / len(hits), "rows": len(rows), "samples": samples}


def _completion_logps(model: Any, tokenizer: Any, prompts: list[list[dict]], completions: list[list[dict]], batch_size: int) -> list[float]:
    import torch

    device = next(model.parameters()).device
    sequences, starts = [], []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False)
        full_ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False)
        limit = model.config.n_positions
        sequences.append(full_ids[-limit:])
        starts.append(max(len(prompt_ids) - max(len(full_ids) - limit, 0), 1))
    totals = []
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(sequences), batch_size):
            chunk = sequences[b : b + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for i, s in enumerate(chunk):
                start = starts[b + i]
                totals.append(logps[i, start - 1 : len(s) - 1].sum().item())
    finally:
        model.train(was_training)
    return totals


def preference_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 16) -> dict[str, Any]:
    """Share of preference pairs where the model gives the chosen reply the higher log-likelihood."""
    if not rows:
        return {"accuracy": None, "rows": 0, "mean_margin": None}
    prompts = [r["prompt"] for r in rows]
    chosen = _completion_logps(model, tokenizer, prompts, [r["chosen"] for r in rows], batch_size)
    rejected = _completion_logps(model, tokenizer, prompts, [r["rejected"] for r in rows], batch_size)
    wins = [c > r for c, r in zip(chosen, rejected)]
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": sum(wins) / len(wins), "rows": len(rows), "mean_margin": sum(margins) / len(margins)}
