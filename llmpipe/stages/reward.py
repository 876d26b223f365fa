"""Reward stage (the first half of method rlhf): the SFT model with a scalar head
(AutoModelForSequenceClassification, num_labels=1) trained with TRL's RewardTrainer to score the
chosen reply of each preference pair above the rejected one. Settings: the recipe's `reward` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import RewardConfig, RewardTrainer

from llmpipe.chat_format import load_chat_tokenizer
from llmpipe.core.console import fmt_number, say
from llmpipe.data.pipeline import heldout_texts, load_rows
from llmpipe.eval.rl import pairwise_accuracy
from llmpipe.runs.context import StageContext
from llmpipe.train.args import limit_rows, training_arguments
from llmpipe.train.fit import build_trainer, finish, fit

# Said under the headline in the summary and the report: a policy's win rate under this model is only as good
# as this accuracy (on hh-helpful the tiny chain's reward model stayed near chance: README, Preference measures).
REWARD_WHY = ("it is what the reward model is trained for: scoring the chosen reply of a held-out pair above the "
              "rejected one (0.5 is chance). The RL policy's win rate is judged by this model, so it means something "
              "only as far as this accuracy is above chance.")


def load_reward_model(folder: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a finished reward stage folder, ready to score conversations."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    # The score is read at the last non-padding token, found through the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def train(ctx: StageContext) -> Path:
    """Train the reward model on the recipe's preference data; returns the stage folder runs/<run>/reward."""
    recipe, writer, parent_dir, cfg = ctx.recipe, ctx.writer, ctx.parent_dir, ctx.cfg
    tokenizer = load_chat_tokenizer(parent_dir)
    data = load_rows(ctx.spec.data, cfg, heldout_texts(recipe) if cfg.cleaning.decontaminate else [])
    ctx.manifest.data = data.report.to_manifest()
    set_seed(recipe.seed)  # the new score head starts from random weights
    model = AutoModelForSequenceClassification.from_pretrained(parent_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id

    args = training_arguments(
        RewardConfig, cfg, recipe, writer,
        max_length=cfg.max_length,
        include_num_input_tokens_seen="non_padding",
        dataset_num_proc=None,
    )
    trainer = build_trainer(
        RewardTrainer,
        "plain",
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(limit_rows(data.validation, cfg)),
        processing_class=tokenizer,
    )
    scored = data.validation[: cfg.preference_rows]
    fitted = fit(ctx, trainer, tokenizer, measure=lambda model: pairwise_accuracy(model, tokenizer, scored))
    before, after, final_eval = fitted.before, fitted.after, fitted.final_eval

    ctx.manifest.metrics = {
        "validation_loss": final_eval.get("eval_loss"),
        "pairwise_accuracy_before": before.get("accuracy"),
        "pairwise_accuracy": after["accuracy"],
        "reward_margin_before": before.get("mean_margin"),
        "reward_margin": after["mean_margin"],
        "preference_rows": after["rows"],
    }
    say(f"reward: held-out pairwise accuracy {fmt_number(before.get('accuracy'))} -> {fmt_number(after['accuracy'])} "
        f"on {after['rows']} pairs")
    metric = {"name": "held-out pairwise accuracy", "before": before.get("accuracy"), "after": after["accuracy"],
              "why": REWARD_WHY}
    heldout = [("reward-validation", ctx.spec.data, limit_rows(data.validation, cfg))]
    # Not gated against the SFT model (registry: gated=False): the gate compares likelihoods and
    # generations, and a reward model has neither; its pairwise accuracy above is what it is judged by.
    return finish(ctx, fitted, tokenizer, metric, heldout)
