"""DPO, `llmpipe align --method dpo`: TRL's DPOTrainer on preference pairs against the frozen parent
(any of config.DPO_LOSS_TYPES). With `align.lora.enabled` the policy trains LoRA adapters and the
reference is the adapter-free model."""

from __future__ import annotations

from pathlib import Path

from trl import DPOConfig, DPOTrainer

from llmpipe.config.constants import SFT_LOSS
from llmpipe.core.console import fmt_number, say
from llmpipe.runs.context import StageContext
from llmpipe.train.args import limit_rows
from llmpipe.train.fit import finish, fit
from llmpipe.train.preference import HeldoutPreferences, implicit_reward_headline, load_data, preference_trainer


def train(ctx: StageContext) -> Path:
    """Train DPO from the parent checkpoint into the work folder; returns the stage folder."""
    cfg = ctx.cfg
    tokenizer, data = load_data(ctx)
    # Off a GPU the forward passes run on packed pairs, not padded ones (llmpipe.speed).
    # RPO: an NLL term on the chosen replies beside the DPO loss, TRL's way of combining losses.
    losses, weights = [cfg.loss_type], [1.0]
    if cfg.rpo_alpha > 0:
        losses, weights = [cfg.loss_type, SFT_LOSS], [1.0, cfg.rpo_alpha]
    trainer = preference_trainer(ctx, DPOTrainer, DPOConfig, tokenizer, data.train, limit_rows(data.validation, cfg),
                                 layout="pairs", loss_type=losses, loss_weights=weights, label_smoothing=cfg.label_smoothing)
    # Held-out pairs, compared with the parent (the reference). DPO has no reward model to judge
    # generated replies by, so no win rate (align.reward_model is for the online methods).
    prefs = HeldoutPreferences(tokenizer, data.validation[: cfg.preference_rows], cfg.beta,
                               notes={"reward_model_win_rate": "no reward model: DPO trains without one"})
    # MFU counts the policy's forward and backward only: the reference ran before training. The
    # robust loss goes below 0 and hinge's sits at exactly 0 once pairs clear the margin, so "3x the
    # recent median" flags ordinary steps there (measured: robust stopped at step 31 of the tiny demo).
    fitted = fit(ctx, trainer, tokenizer, measure=prefs.raw, spikes=cfg.loss_type not in ("robust", "hinge"))
    before, after, final_eval = fitted.before, fitted.after, fitted.final_eval

    ctx.manifest.metrics = {
        "validation_loss": final_eval.get("eval_loss"),
        "reward_accuracy": final_eval.get("eval_rewards/accuracies"),
        "reward_margin": final_eval.get("eval_rewards/margins"),
        **prefs.metrics(before, after),
    }
    metric = implicit_reward_headline(ctx.manifest.metrics)
    m = ctx.manifest.metrics
    say(
        f"dpo ({cfg.loss_type}): {metric['name']} {fmt_number(metric['before'])} -> {fmt_number(metric['after'])}; "
        f"per-token log-likelihood accuracy {fmt_number(m.get('per_token_logp_accuracy_before'))} -> "
        f"{fmt_number(m.get('per_token_logp_accuracy'))} on {m.get('preference_rows')} held-out pairs; "
        f"trainer's eval reward accuracy {fmt_number(final_eval.get('eval_rewards/accuracies'))}"
    )
    heldout = [("preference-validation", ctx.spec.data, limit_rows(data.validation, cfg))]
    return finish(ctx, fitted, tokenizer, metric, heldout)
