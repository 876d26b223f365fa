"""Reward stage (the first half of method rlhf): the SFT model with a scalar head
(AutoModelForSequenceClassification, num_labels=1) trained with TRL's RewardTrainer to score the
chosen reply of each preference pair above the rejected one. Settings: the recipe's `reward` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmpipe.config import Recipe
from llmpipe.core.console import say
from llmpipe.core.errors import UserError


def run(recipe: Recipe, run_dir: Path, parent: str | Path | None = None, restart: bool = False) -> Path:
    """Train the reward model on the recipe's preference data; returns the stage folder runs/<run>/reward."""
    from llmpipe.runs import run_stage

    return run_stage("reward", "reward", recipe, run_dir, parent, restart, _train)


def check_reward_folder(folder: str | Path) -> Path:
    """A finished reward stage folder, or a one-line UserError saying what the folder is instead."""
    from llmpipe.runs import MANIFEST, read_manifest

    folder = Path(folder)
    hint = "pass a runs/<run>/reward folder written by 'llmpipe align --method rlhf'"
    if not folder.is_dir():
        raise UserError("reward model folder not found", file=str(folder), field="align.reward_model", hint=hint)
    manifest = read_manifest(folder)
    if manifest is None:
        raise UserError("no readable manifest.json: not an llmpipe stage folder", file=str(folder), field="align.reward_model", hint=hint)
    if manifest.get("stage") != "reward":
        raise UserError(f"holds a '{manifest.get('stage')}' stage, not a reward model", file=str(folder / MANIFEST),
                        field="align.reward_model", hint=hint)
    if manifest.get("status") != "complete":
        raise UserError(f"reward stage is '{manifest.get('status')}', not complete", file=str(folder / MANIFEST),
                        field="align.reward_model", hint="finish it first ('llmpipe align --method rlhf' resumes it)")
    return folder


def load_reward_model(folder: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a finished reward stage folder, ready to score conversations."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    # The score is read at the last non-padding token, found through the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _train(recipe: Recipe, writer: Any, parent_dir: Path) -> Path:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    from llmpipe.data.pipeline import heldout_texts, load_rows
    from llmpipe.eval.rl import pairwise_accuracy
    from llmpipe.stages.sft import load_chat_tokenizer
    from llmpipe.train.common import build_trainer, complete, fit_measured, limit_rows, summary, training_arguments

    cfg = recipe.reward
    tokenizer = load_chat_tokenizer(parent_dir)
    data = load_rows("preference", cfg, heldout_texts(recipe) if cfg.cleaning.decontaminate else [])
    writer.manifest["data"] = data.report.to_manifest()
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
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(limit_rows(data.validation, cfg)),
        processing_class=tokenizer,
    )
    scored = data.validation[: cfg.preference_rows]
    run = fit_measured(trainer, recipe, cfg, writer, tokenizer, lambda model: pairwise_accuracy(model, tokenizer, scored))
    before, after, final_eval = run.before, run.after, run.final_eval

    writer.manifest["metrics"] = {
        "validation_loss": final_eval.get("eval_loss"),
        "pairwise_accuracy_before": before.get("accuracy"),
        "pairwise_accuracy": after["accuracy"],
        "reward_margin_before": before.get("mean_margin"),
        "reward_margin": after["mean_margin"],
        "preference_rows": after["rows"],
    }
    shown = " -> ".join("-" if v is None else f"{v:.3f}" for v in (before.get("accuracy"), after["accuracy"]))
    say(f"reward: held-out pairwise accuracy {shown} on {after['rows']} pairs")
    metric = {"name": "held-out pairwise accuracy", "before": before.get("accuracy"), "after": after["accuracy"]}
    heldout = [("reward-validation", "preference", limit_rows(data.validation, cfg))]
    # Not gated against the SFT model: the gate compares likelihoods and generations, and a reward
    # model has neither; its pairwise accuracy above is what it is judged by.
    return complete(writer, cfg, trainer.model, tokenizer, parent_dir, summary(run.result, final_eval.get("eval_loss"), metric),
                    heldout, run.monitor, gate=False)
