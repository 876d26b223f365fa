"""Held-out measures of reward models and RL policies: pairwise accuracy of a reward model, and a
policy's mean reward, KL to its reference and exact-match accuracy on prompts it never trained on.

KL(policy || reference) per reply is estimated by Monte Carlo: sample replies from the policy, then
average log pi(y|x) - log pi_ref(y|x) over them (both at the sampling temperature). Sampling runs
under a forked, seeded RNG so that measuring never changes what training draws.
"""

from __future__ import annotations

import copy
from typing import Any

from llmpipe.chat_format import stop_token_ids
from llmpipe.eval.metrics import chat_ids, generate_replies, padded
from llmpipe.eval.rewards import exact_match, reply_text, score
from llmpipe.models import model_context


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def score_conversations(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], batch_size: int = 32) -> list[float]:
    """A reward model's scalar score of each whole conversation, rendered by the chat template as the
    RewardTrainer saw its pairs (the score is read at the last non-padding token)."""
    import torch

    ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=False) for c in conversations]
    limit = model_context(model.config)
    ids = [row[-limit:] for row in ids]
    scores: list[float] = []
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(ids), batch_size):
            x, mask = padded(ids[b : b + batch_size], tokenizer.pad_token_id)
            with torch.no_grad():
                logits = model(input_ids=x.to(_device(model)), attention_mask=mask.to(_device(model))).logits
            scores += logits[:, 0].float().tolist()
    finally:
        model.train(was_training)
    return scores


def pairwise_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    """Share of preference pairs whose chosen reply the reward model scores above the rejected one."""
    if not rows:
        return {"accuracy": None, "rows": 0, "mean_margin": None}
    chosen = score_conversations(model, tokenizer, [r["prompt"] + r["chosen"] for r in rows], batch_size)
    rejected = score_conversations(model, tokenizer, [r["prompt"] + r["rejected"] for r in rows], batch_size)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": sum(m > 0 for m in margins) / len(margins), "rows": len(rows), "mean_margin": sum(margins) / len(margins)}


def sample_replies(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int,
                   batch_size: int = 64) -> list[list[int]]:
    """One sampled reply (token ids, cut after the first stop token) per tokenized prompt; the model's
    generation config carries the stop tokens. Seeded, without touching the global RNG stream."""
    import torch


    device = _device(model)
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.do_sample, config.temperature, config.top_p, config.top_k = max_new_tokens, True, temperature, 1.0, 0
    stops, pad = set(stop_token_ids(model)), tokenizer.pad_token_id
    replies: list[list[int]] = []
    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                ids, mask = padded(prompts[start : start + batch_size], pad, left=True)
                width = ids.shape[1]
                with torch.no_grad():
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
                for row in out[:, width:].tolist():
                    end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
                    replies.append(row[:end])
    finally:
        model.train(was_training)
    return replies


def reply_logps(model: Any, prompts: list[list[int]], replies: list[list[int]], pad: int, temperature: float = 1.0,
                batch_size: int = 32) -> list[float]:
    """Summed log-probability of each reply's tokens after its prompt, with logits divided by `temperature`."""
    import torch

    totals: list[float] = []
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(prompts), batch_size):
            rows = [p + r for p, r in zip(prompts[b : b + batch_size], replies[b : b + batch_size])]
            ids, mask = padded(rows, pad)
            ids, mask = ids.to(_device(model)), mask.to(_device(model))
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits.float() / temperature
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for i, p in enumerate(prompts[b : b + batch_size]):
                n = len(replies[b + i])
                totals.append(logps[i, len(p) - 1 : len(p) - 1 + n].sum().item() if n else 0.0)
    finally:
        model.train(was_training)
    return totals


def prompt_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Share of prompt rows with an `answer` whose greedy reply matches it (the exact_match rule)."""
    rows = [r for r in rows if r.get("answer") not in (None, "")]
    if not rows:
        return {"accuracy": None, "rows": 0, "samples": []}
    replies = generate_replies(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens)
    hits = [exact_match(reply, r["answer"]) for reply, r in zip(replies, rows)]
    samples = [{"prompt": r["prompt"][-1]["content"], "reply": reply, "answer": r["answer"]} for r, reply in list(zip(rows, replies))[:3]]
    return {"accuracy": sum(hits) / len(hits), "rows": len(rows), "samples": samples}


def policy_metrics(policy: Any, reference: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: Any, rules: list[str],
                   reward_model: Any = None, reward_tokenizer: Any = None, seed: int = 0) -> dict[str, Any]:
    """What an RL policy scores on held-out prompt rows: `cfg.num_generations` sampled replies per
    prompt give the mean reward (reward model and each rule, summed as in training), the mean KL to
    `reference` per reply and per token, and the reply length; greedy replies give exact-match accuracy."""
    prompts = [r["prompt"] for r in rows for _ in range(cfg.num_generations)]
    answers = [r.get("answer") for r in rows for _ in range(cfg.num_generations)]
    prompt_ids = [chat_ids(tokenizer, p) for p in prompts]
    replies = sample_replies(policy, tokenizer, prompt_ids, cfg.max_new_tokens, cfg.temperature, seed)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in replies]
    pad = tokenizer.pad_token_id
    kl = [a - b for a, b in zip(reply_logps(policy, prompt_ids, replies, pad, cfg.temperature),
                                reply_logps(reference, prompt_ids, replies, pad, cfg.temperature))]
    tokens = sum(len(r) for r in replies)
    stops = set(stop_token_ids(policy))
    out: dict[str, Any] = {
        "kl": sum(kl) / len(kl),
        "kl_per_token": sum(kl) / max(tokens, 1),
        "reply_tokens": tokens / len(replies),
        "stopped_share": sum(bool(r) and r[-1] in stops for r in replies) / len(replies),
    }
    total = [0.0] * len(replies)
    if reward_model is not None:
        conversations = [p + [{"role": "assistant", "content": t}] for p, t in zip(prompts, texts)]
        scores = score_conversations(reward_model, reward_tokenizer, conversations)
        out["reward_model_score"] = sum(scores) / len(scores)
        total = [a + b for a, b in zip(total, scores)]
    for name in rules:
        values = [score(name, reply_text(t), a, bool(r) and r[-1] in stops) for t, a, r in zip(texts, answers, replies)]
        known = [v for v in values if v is not None]
        out[f"{name}_reward"] = sum(known) / len(known) if known else None
        total = [a + (b or 0.0) for a, b in zip(total, values)]
    out["mean_reward"] = sum(total) / len(total)
    if "exact_match" in rules:
        greedy = prompt_accuracy(policy, tokenizer, rows, cfg.max_new_tokens)
        out["exact_match_accuracy"], out["samples"] = greedy["accuracy"], greedy["samples"]
    return out
