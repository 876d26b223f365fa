"""Held-out quality measures that show what a stage did: answer accuracy, and the log-likelihood
scoring the preference measures (llmpipe.eval.pairs) are built on.

Written here rather than taken from a library because they must use the checkpoint's own chat
template exactly as training did, and run in seconds on CPU inside a stage.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from llmpipe.data.shards import bos_prefix
from llmpipe.models import model_context


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
    ids = [chat_ids(tokenizer, p) for p in prompts]
    return generate_from_ids(model, tokenizer, ids, max_new_tokens, batch_size)


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], completion: list[dict[str, str]] | None = None) -> list[int]:
    """Token ids of a conversation rendered by the chat template; without `completion`, ends with the
    assistant's generation prompt, with it, ends after the completion's turns."""
    if completion is None:
        return tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    return tokenizer.apply_chat_template(messages + completion, tokenize=True, return_dict=False)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of plain text as pretraining saw the start of a document: <bos> then the text."""
    return [*bos_prefix(tokenizer), *tokenizer(text, add_special_tokens=False)["input_ids"]]


def padded(rows: list[list[int]], pad_id: int, left: bool = False) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of token-id rows padded to one width: on the right for scoring, on
    the left (`left=True`) for batched generation, where every row continues from the right edge."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def generate_from_ids(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy continuations of tokenized prompts (left-padded in batches, cut to fit the context)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # The model's own generation config carries the end-of-turn stop; greedy for reproducibility.
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.do_sample = max_new_tokens, False
    config.temperature = config.top_p = config.top_k = None
    room = max(model_context(model.config) - max_new_tokens, 1)
    pad = tokenizer.pad_token_id
    replies = []
    try:
        for start in range(0, len(prompts), batch_size):
            ids, mask = padded([p[-room:] for p in prompts[start : start + batch_size]], pad, left=True)
            width = ids.shape[1]
            with torch.no_grad():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            replies += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
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


def continuation_logps(model: Any, pad_id: int, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16) -> list[float]:
    """Summed log-probability of each `full` sequence's tokens after its `prefix` (pairs of id lists).

    Sequences longer than the context keep their end; at least the last token is always scored."""
    return [total for total, _ in continuation_scores(model, pad_id, pairs, batch_size)]


def continuation_scores(model: Any, pad_id: int, pairs: list[tuple[list[int], list[int]]],
                        batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed log-probability, tokens scored) of each `full` sequence after its `prefix`, as
    continuation_logps scores them: the count is what a per-token measure divides by."""
    import torch

    device = next(model.parameters()).device
    limit = model_context(model.config)
    sequences, starts = [], []
    for prefix, full in pairs:
        common = 0
        while common < min(len(prefix), len(full)) and prefix[common] == full[common]:
            common += 1  # BPE may merge across the boundary: score from where the two differ
        cut = max(len(full) - limit, 0)
        sequences.append(full[cut:])
        starts.append(min(max(common - cut, 1), len(full) - cut - 1))
    totals: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    try:
        for b, chunk in _token_budget_batches(sequences, batch_size):
            ids, mask = padded(chunk, pad_id)
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                # log p(token) = its logit - logsumexp(logits): one [rows, length] tensor more, not a second
                # [rows, length, vocab] one as log_softmax makes.
                logps = logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            del logits
            for i, s in enumerate(chunk):
                scored = logps[i, starts[b + i] - 1 : len(s) - 1]
                totals.append((scored.sum().item(), scored.numel()))
    finally:
        model.train(was_training)
    return totals


# Tokens (rows x padded length) scored per forward pass: the fp32 logits of a batch hold this many times
# the vocabulary. Rows of 16 at a real model's context were measured at 13 GB peak on SmolLM2's 49,152-token
# vocabulary (hh-rlhf pairs); 4,096 tokens is 0.8 GB of logits there.
SCORE_TOKENS = 4096


def _token_budget_batches(sequences: list[list[int]], batch_size: int) -> Any:
    """(start index, rows) batches in order: at most `batch_size` rows and SCORE_TOKENS padded tokens each
    (a longer row goes alone)."""
    start, chunk, longest = 0, [], 0
    for index, sequence in enumerate(sequences):
        wider = max(longest, len(sequence))
        if chunk and (len(chunk) >= batch_size or (len(chunk) + 1) * wider > SCORE_TOKENS):
            yield start, chunk
            start, chunk, wider = index, [], len(sequence)
        chunk.append(sequence)
        longest = wider
    if chunk:
        yield start, chunk


def completion_scores(model: Any, tokenizer: Any, prompts: list[list[dict]], completions: list[list[dict]],
                      batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed log-probability, tokens) of each chat completion after its prompt, both rendered by the
    checkpoint's chat template as training renders them."""
    pairs = [(chat_ids(tokenizer, p), chat_ids(tokenizer, p, c)) for p, c in zip(prompts, completions)]
    return continuation_scores(model, tokenizer.pad_token_id, pairs, batch_size)


def _completion_logps(model: Any, tokenizer: Any, prompts: list[list[dict]], completions: list[list[dict]], batch_size: int) -> list[float]:
    pairs = [(chat_ids(tokenizer, p), chat_ids(tokenizer, p, c)) for p, c in zip(prompts, completions)]
    return continuation_logps(model, tokenizer.pad_token_id, pairs, batch_size)


def unpaired_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 16) -> dict[str, Any]:
    """For unpaired rows ({prompt, completion, label}, KTO's format): the share of desirable completions
    whose log-likelihood per token is above the mean of the undesirable ones'; `mean_margin` is the gap
    between the two means (nats per token). Per token, not summed, for the reason llmpipe.eval.pairs
    gives: a summed log-likelihood mostly says which completion is shorter. None when either kind is
    missing."""
    good = [r for r in rows if r["label"]]
    bad = [r for r in rows if not r["label"]]
    if not good or not bad:
        return {"accuracy": None, "rows": len(rows), "mean_margin": None}
    good_scores = completion_scores(model, tokenizer, [r["prompt"] for r in good], [r["completion"] for r in good], batch_size)
    bad_scores = completion_scores(model, tokenizer, [r["prompt"] for r in bad], [r["completion"] for r in bad], batch_size)
    good_means = [total / max(n, 1) for total, n in good_scores]
    threshold = sum(total / max(n, 1) for total, n in bad_scores) / len(bad_scores)
    return {"accuracy": sum(g > threshold for g in good_means) / len(good_means), "rows": len(rows),
            "mean_margin": sum(good_means) / len(good_means) - threshold}
