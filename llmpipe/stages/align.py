"""Align stage: preference tuning of the SFT model. `dpo`: TRL's DPOTrainer, frozen SFT as reference
(any of config.DPO_LOSS_TYPES); `kto`: llmpipe/stages/kto.py; rlhf / grpo / rloo: llmpipe/stages/rl.py.
With `align.lora.enabled` the policy trains LoRA adapters and the reference is the adapter-free model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmpipe.config import Recipe
from llmpipe.core.console import say


def run(recipe: Recipe, run_dir: Path, parent: str | Path | None = None, restart: bool = False) -> Path:
    """Align the parent SFT checkpoint on the recipe's preference data; returns the stage folder."""
    from llmpipe.config import RL_METHODS
    from llmpipe.runs import run_stage

    if recipe.align.method in RL_METHODS:  # online RL: llmpipe/stages/rl.py (rlhf trains its reward model first)
        from llmpipe.stages import rl

        return rl.run(recipe, run_dir, parent, restart)
    train = _train_dpo
    if recipe.align.method == "kto":
        from llmpipe.stages.kto import train
    # The stage folder is named after the method: runs/<run>/dpo, runs/<run>/kto.
    return run_stage(recipe.align.method, "align", recipe, run_dir, parent, restart, train)


def _train_dpo(recipe: Recipe, writer: Any, parent_dir: Path) -> Path:
    from trl import DPOConfig, DPOTrainer

    from llmpipe.eval.metrics import preference_accuracy
    from llmpipe.train.common import limit_rows
    from llmpipe.train.lmhead import plain_head_applies
    from llmpipe.train.packing import use_packed_pairs
    from llmpipe.train.preference import finish, fit_scored, load_data, preference_trainer

    cfg = recipe.align
    tokenizer, data = load_data(recipe, writer, parent_dir, "preference")
    trainer = preference_trainer(DPOTrainer, DPOConfig, recipe, writer, parent_dir, tokenizer, data.train,
                                 limit_rows(data.validation, cfg), loss_type=[cfg.loss_type], label_smoothing=cfg.label_smoothing)
    if plain_head_applies(trainer.args):  # off a GPU: forward passes on packed pairs, not padded ones
        use_packed_pairs(trainer, cfg.max_length)
    scored = data.validation[: cfg.preference_rows]
    # MFU counts the policy's forward and backward only: the reference ran before training. The
    # robust loss goes below 0 and hinge's sits at exactly 0 once pairs clear the margin, so "3x the
    # recent median" flags ordinary steps there (measured: robust stopped at step 31 of the tiny demo).
    fitted = fit_scored(trainer, recipe, writer, tokenizer, lambda model: preference_accuracy(model, tokenizer, scored), 1.0,
                        spikes=cfg.loss_type not in ("robust", "hinge"))
    before, after, final_eval = fitted.before, fitted.after, fitted.final_eval

    writer.manifest["metrics"] = {
        "validation_loss": final_eval.get("eval_loss"),
        "reward_accuracy": final_eval.get("eval_rewards/accuracies"),
        "reward_margin": final_eval.get("eval_rewards/margins"),
        "preference_accuracy_before": before.get("accuracy"),
        "preference_accuracy": after["accuracy"],
        "logp_margin_before": before.get("mean_margin"),
        "logp_margin": after["mean_margin"],
        "preference_rows": after["rows"],
    }
    say(
        f"dpo ({cfg.loss_type}): held-out preference accuracy {before.get('accuracy')} -> {after['accuracy']}; "
        f"reward accuracy {final_eval.get('eval_rewards/accuracies')}, margin {final_eval.get('eval_rewards/margins')}"
    )
    metric = {"name": "held-out preference accuracy", "before": before.get("accuracy"), "after": after["accuracy"]}
    heldout = [("preference-validation", "preference", limit_rows(data.validation, cfg))]
    return finish(trainer, recipe, writer, tokenizer, parent_dir, fitted, metric, heldout)
