"""Held-out preference measures that mean what they say, for DPO, KTO and the RL stages.

A held-out pair (prompt, chosen, rejected) can be scored three ways, and they answer different questions:

- **Implicit-reward accuracy and margin.** DPO's own reward, r(x, y) = β · (log π(y|x) − log π_ref(y|x))
  (Rafailov et al. 2023, eq. 5; what TRL logs as `rewards/accuracies` and `rewards/margins`). The share
  of pairs whose chosen reply gets the higher reward says whether the stage moved probability towards
  the chosen replies relative to its parent, the frozen reference. The parent's own preferences, and
  the lengths of the replies, cancel in the difference. Before training π is π_ref, every reward is 0,
  and the accuracy is 0.5 by definition (ties count half).
- **Per-token log-likelihood accuracy** (length-normalised): whether the model itself gives the chosen
  reply the higher mean log-probability per token. Parent and stage are measured alike, so its
  before → after says how the model's own ranking changed.
- **Summed log-likelihood accuracy**, kept as a labelled extra: what llmpipe reported before. Every token
  adds a negative log-probability, so the sum mostly says which reply is shorter; `chosen_longer_share`
  says how often the chosen reply is the longer one.

With a reward model (rlhf; grpo / rloo with `align.reward_model`), the stage's greedy replies to held-out
prompts are also set against its parent's: the win rate is the share of prompts where the reward model
scores the stage's reply higher (ties half), 0.5 before training by definition (the same replies).

The raw scores are plain lists, so that a stage keeps its parent's in the manifest's `before` and a
resumed stage compares against the same numbers.
"""

from __future__ import annotations

from typing import Any

from llmpipe.eval.metrics import completion_scores, generate_replies
from llmpipe.eval.rl import score_conversations


def pair_scores(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 16) -> dict[str, list]:
    """Per pair, the summed log-probability and token count of the chosen and of the rejected reply
    after its prompt: what `pair_measures` compares."""
    prompts = [r["prompt"] for r in rows]
    chosen = completion_scores(model, tokenizer, prompts, [r["chosen"] for r in rows], batch_size)
    rejected = completion_scores(model, tokenizer, prompts, [r["rejected"] for r in rows], batch_size)
    return {"chosen_logp": [c for c, _ in chosen], "chosen_tokens": [n for _, n in chosen],
            "rejected_logp": [r for r, _ in rejected], "rejected_tokens": [n for _, n in rejected]}


def win_share(margins: list[float]) -> float | None:
    """Share of positive margins, a tie counting half; None for no margins."""
    if not margins:
        return None
    return (sum(m > 0 for m in margins) + 0.5 * sum(m == 0 for m in margins)) / len(margins)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pair_measures(scores: dict[str, list], reference: dict[str, list], beta: float) -> dict[str, Any]:
    """The pair measures of a model's `scores` (pair_scores) against its reference's scores on the same
    pairs (the parent's; a model against itself gives the implicit reward's 0.5 and 0):
    implicit-reward accuracy and margin (β · log-ratio, nats), per-token log-likelihood accuracy and
    margin (nats per token), summed log-likelihood accuracy and margin, and the share of pairs whose
    chosen reply has more tokens."""
    c, r = scores["chosen_logp"], scores["rejected_logp"]
    nc, nr = scores["chosen_tokens"], scores["rejected_tokens"]
    c_ref, r_ref = reference["chosen_logp"], reference["rejected_logp"]
    implicit = [beta * ((a - a_ref) - (b - b_ref)) for a, b, a_ref, b_ref in zip(c, r, c_ref, r_ref, strict=True)]
    per_token = [a / max(m, 1) - b / max(n, 1) for a, b, m, n in zip(c, r, nc, nr, strict=True)]
    summed = [a - b for a, b in zip(c, r, strict=True)]
    return {
        "implicit_reward_accuracy": win_share(implicit),
        "implicit_reward_margin": _mean(implicit),
        "per_token_accuracy": win_share(per_token),
        "per_token_margin": _mean(per_token),
        "summed_accuracy": win_share(summed),
        "summed_margin": _mean(summed),
        "chosen_longer_share": _mean([float(m > n) for m, n in zip(nc, nr)]),
        "rows": len(c),
    }


def reply_rewards(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int,
                  reward_model: Any, reward_tokenizer: Any) -> list[float]:
    """The reward model's score of the model's greedy reply to each chat prompt."""
    if not prompts:
        return []
    replies = generate_replies(model, tokenizer, prompts, max_new_tokens)
    conversations = [p + [{"role": "assistant", "content": reply}] for p, reply in zip(prompts, replies)]
    return score_conversations(reward_model, reward_tokenizer, conversations)
