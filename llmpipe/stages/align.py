"""Align stage: preference tuning of the SFT model. `dpo`: TRL's DPOTrainer, frozen SFT as reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmpipe.config import Recipe
from llmpipe.console import say


def run(recipe: Recipe, run_dir: Path, parent: str | Path | None = None, restart: bool = False) -> Path:
    """Align the parent SFT checkpoint on the recipe's preference data; returns the stage folder."""
    from llmpipe.runs import run_stage

    # The stage folder is named after the method: runs/<run>/dpo.
    return run_stage(recipe.align.method, "align", recipe, run_dir, parent, restart, _train_dpo)


def _train_dpo(recipe: Recipe, writer: Any, parent_dir: Path) -> Path:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from llmpipe.data.pipeline import heldout_texts, load_rows
    from llmpipe.eval.metrics import preference_accuracy
    from llmpipe.stages.sft import load_chat_tokenizer
    from llmpipe.train.common import (
        attach_monitor,
        complete,
        fit,
        last_eval,
        limit_rows,
        set_generation_stops,
        summary,
        training_arguments,
    )

    cfg = recipe.align
    tokenizer = load_chat_tokenizer(parent_dir)
    data = load_rows("preference", cfg, heldout_texts(recipe) if cfg.cleaning.decontaminate else [])
    writer.manifest["data"] = data.report.to_manifest()
    policy = AutoModelForCausalLM.from_pretrained(parent_dir)
    # An explicit reference copy: with ref_model=None TRL re-loads the policy by name, which fails for
    # a model that was built from a config (no hub id).
    reference = AutoModelForCausalLM.from_pretrained(parent_dir)
    set_generation_stops(policy, tokenizer)

    args = training_arguments(
        DPOConfig, cfg, recipe, writer,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        max_length=cfg.max_length,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(limit_rows(data.validation, cfg)),
        processing_class=tokenizer,
    )
    # MFU counts the frozen reference's forward pass (2 of the policy's 6 FLOPs per parameter).
    monitor = attach_monitor(trainer, recipe, cfg, writer, tokenizer, chat=True, flops_scale=8 / 6)
    scored = data.validation[: cfg.preference_rows]
    before = preference_accuracy(trainer.model, tokenizer, scored) if writer.resume_from is None else {}
    result = fit(trainer, writer, tokenizer, monitor)
    final_eval = last_eval(trainer, monitor)
    after = preference_accuracy(trainer.model, tokenizer, scored)

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
    writer.manifest["evals"] = result.history
    say(
        f"dpo: held-out preference accuracy {before.get('accuracy')} -> {after['accuracy']:.3f}; "
        f"reward accuracy {final_eval.get('eval_rewards/accuracies')}, margin {final_eval.get('eval_rewards/margins')}"
    )
    metric = {"name": "held-out preference accuracy", "before": before.get("accuracy"), "after": after["accuracy"]}
    heldout = [("preference-validation", "preference", limit_rows(data.validation, cfg))]
    return complete(writer, cfg, trainer.model, tokenizer, parent_dir, summary(result, final_eval.get("eval_loss"), metric),
                    heldout, monitor)
