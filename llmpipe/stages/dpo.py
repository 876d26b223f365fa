"""DPO, `llmpipe align --method dpo`: TRL's DPOTrainer on preference pairs against the frozen parent
(any of config.DPO_LOSS_TYPES). With `align.lora.enabled` the policy trains LoRA adapters and the
reference is the adapter-free model."""

from __future__ import annotations

from pathlib import Path

from trl import DPOConfig, DPOTrainer

from llmpipe.core.console import fmt_number, say
from llmpipe.eval.metrics import preference_accuracy
from llmpipe.runs.context import StageContext
from llmpipe.train.args import limit_rows
from llmpipe.train.fit import finish, fit
from llmpipe.train.preference import load_data, pair_metrics, preference_trainer


def train(ctx: StageContext) -> Path:
    """Train DPO from the parent checkpoint into the work folder; returns the stage folder."""
    cfg = ctx.cfg
    tokenizer, data = load_data(ctx)
    # Off a GPU the forward passes run on packed pairs, not padded ones (llmpipe.speed).
    trainer = preference_trainer(ctx, DPOTrainer, DPOConfig, tokenizer, data.train, limit_rows(data.validation, cfg),
                                 layout="pairs", loss_type=[cfg.loss_type], label_smoothing=cfg.label_smoothing)
    scored = data.validation[: cfg.preference_rows]
    # MFU counts the policy's forward and backward only: the reference ran before training. The
    # robust loss goes below 0 and hinge's sits at exactly 0 once pairs clear the margin, so "3x the
    # recent median" flags ordinary steps there (measured: robust stopped at step 31 of the tiny demo).
    fitted = fit(ctx, trainer, tokenizer, measure=lambda model: preference_accuracy(model, tokenizer, scored),
                 spikes=cfg.loss_type not in ("robust", "hinge"))
    before, after, final_eval = fitted.before, fitted.after, fitted.final_eval

    ctx.manifest.metrics = {
        "validation_loss": final_eval.get("eval_loss"),
        "reward_accuracy": final_eval.get("eval_rewards/accuracies"),
        "reward_margin": final_eval.get("eval_rewards/margins"),
        **pair_metrics(before, after),
    }
    say(
        f"dpo ({cfg.loss_type}): held-out preference accuracy {fmt_number(before.get('accuracy'))} -> {fmt_number(after['accuracy'])}; "
        f"reward accuracy {fmt_number(final_eval.get('eval_rewards/accuracies'))}, "
        f"margin {fmt_number(final_eval.get('eval_rewards/margins'))}"
    )
    metric = {"name": "held-out preference accuracy", "before": before.get("accuracy"), "after": after["accuracy"]}
    heldout = [("preference-validation", ctx.spec.data, limit_rows(data.validation, cfg))]
    return finish(ctx, fitted, tokenizer, metric, heldout)
