"""KTO, `llmpipe align --method kto`: TRL's KTOTrainer on unpaired good / bad completions, against the
frozen SFT model (Ethayarajh et al. 2024, Kahneman-Tversky Optimization).

Rows are {"prompt": [messages], "completion": [messages], "label": true|false}, TRL's unpaired
preference format; preference pairs are read too, each as one desirable and one undesirable row. The
stage folder is runs/<run>/kto.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from trl import KTOConfig, KTOTrainer

from llmpipe.core.console import fmt_number, say
from llmpipe.data.formats import unpair
from llmpipe.eval.metrics import unpaired_accuracy
from llmpipe.runs.context import StageContext
from llmpipe.train.args import limit_rows
from llmpipe.train.fit import finish, fit
from llmpipe.train.preference import HeldoutPreferences, implicit_reward_headline, load_data, preference_trainer


def train(ctx: StageContext) -> Path:
    """Train KTO from the parent checkpoint into the work folder; returns the stage folder."""
    recipe, cfg = ctx.recipe, ctx.cfg
    tokenizer, data = load_data(ctx)
    train_rows = _shuffled(unpair(data.train), recipe.seed)
    ctx.manifest.data["kto_train_rows"] = {"desirable": sum(r["label"] for r in train_rows),
                                                 "undesirable": sum(not r["label"] for r in train_rows)}
    eval_rows = _shuffled(unpair(limit_rows(data.validation, cfg)), recipe.seed)
    trainer = preference_trainer(ctx, KTOTrainer, KTOConfig, tokenizer, train_rows, eval_rows,
                                 desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)

    # Held-out scores: pairs against the parent (llmpipe.eval.pairs), unpaired rows by how many
    # desirable completions beat the undesirable ones' mean log-likelihood per token.
    scored = data.validation[: cfg.preference_rows]
    singles = [r for r in scored if "chosen" not in r]
    prefs = HeldoutPreferences(tokenizer, [r for r in scored if "chosen" in r], cfg.beta,
                               notes={"reward_model_win_rate": "no reward model: KTO trains without one"})

    def score(model: Any) -> dict[str, Any]:
        return {**prefs.raw(model), "unpaired": unpaired_accuracy(model, tokenizer, singles)}

    # MFU: besides the policy's forward + backward (6 FLOPs per parameter), a gradient-free forward of
    # the policy on the KL completions (2); the reference ran before training.
    fitted = fit(ctx, trainer, tokenizer, measure=score, flops_scale=8 / 6)
    before, after, final_eval = fitted.before, fitted.after, fitted.final_eval
    ctx.manifest.metrics = {
        "validation_loss": final_eval.get("eval_loss"),
        "reward_margin": final_eval.get("eval_rewards/margins"),
        "reward_chosen": final_eval.get("eval_rewards/chosen"),
        "reward_rejected": final_eval.get("eval_rewards/rejected"),
        "kl": final_eval.get("eval_kl"),
        **prefs.metrics(before, after),
        "unpaired_accuracy_before": before.get("unpaired", {}).get("accuracy"),
        "unpaired_accuracy": after["unpaired"]["accuracy"],
        "unpaired_rows": after["unpaired"]["rows"],
    }
    # The headline: the implicit reward on pairs where there are any (comparable with DPO), else the
    # unpaired measure.
    if prefs.pairs:
        metric = implicit_reward_headline(ctx.manifest.metrics)
    else:
        metric = {"name": "held-out desirable-above-undesirable share", "before": before.get("unpaired", {}).get("accuracy"),
                  "after": after["unpaired"]["accuracy"],
                  "why": "there are no held-out pairs, so the held-out rows are scored one by one: the share of "
                  "desirable completions whose log-likelihood per token is above the undesirable ones' mean."}
    name = metric["name"]
    say(f"kto: {name} {fmt_number(metric['before'])} -> {fmt_number(metric['after'])}; reward margin "
        f"{fmt_number(final_eval.get('eval_rewards/margins'))}, kl {fmt_number(final_eval.get('eval_kl'))}")
    heldout = [("preference-validation", "preference", limit_rows([r for r in data.validation if "chosen" in r], cfg)),
               ("unpaired-validation", "unpaired", limit_rows([r for r in data.validation if "chosen" not in r], cfg))]
    return finish(ctx, fitted, tokenizer, metric, heldout)


def _shuffled(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    # KTOTrainer reads batches in order (its KL term pairs each prompt with a batch neighbour's
    # completion), so mix them once here: an unpaired pair's halves would sit side by side, sharing
    # a prompt, and a file sorted by label would give one-sided batches.
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows
