"""What the offline preference methods (DPO, KTO) share: their data, and the policy with its frozen reference.

Each method module reads top to bottom as: `load_data` -> `preference_trainer` -> `fit` -> its metrics -> `finish`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset, load_from_disk

from llmpipe.chat_format import load_chat_tokenizer, set_generation_stops
from llmpipe.core.console import say
from llmpipe.data.pipeline import heldout_texts, load_rows
from llmpipe.runs.context import StageContext
from llmpipe.train.args import rows_for_steps, training_arguments
from llmpipe.train.fit import build_trainer
from llmpipe.train.lora import load_model, peft_config


def load_data(ctx: StageContext) -> tuple[Any, Any]:
    """The parent's chat tokenizer and the stage's rows of its registry data kind (checked, split, cleaned,
    decontaminated against the run's held-out rows); records the data report in the manifest."""
    cfg = ctx.cfg
    tokenizer = load_chat_tokenizer(ctx.parent_dir)
    data = load_rows(ctx.spec.data, cfg, heldout_texts(ctx.recipe) if cfg.cleaning.decontaminate else [])
    ctx.manifest.data = data.report.to_manifest()
    return tokenizer, data


def preference_trainer(ctx: StageContext, trainer_class: type, config_class: type, tokenizer: Any,
                       train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], layout: str = "plain",
                       **settings: Any) -> Any:
    """A TRL offline preference trainer (DPOTrainer, KTOTrainer) on the parent checkpoint and the align
    section; `settings`: the method's own config fields.

    The reference is frozen, so its log-probs are computed once for every row before training (TRL's
    `precompute_ref_log_probs`), not again at every step, and no reference copy is held: TRL takes
    them from the untrained policy, or with LoRA from the policy with its adapters disabled."""
    cfg = ctx.cfg
    used = rows_for_steps(train_rows, cfg, ctx.recipe.seed, PartialState().num_processes)
    if len(used) < len(train_rows):
        ctx.manifest.data["rows_for_steps"] = len(used)
        say(f"{ctx.spec.name}: {cfg.max_steps} steps read {len(used)} of the {len(train_rows)} training rows (a seeded sample); "
            "only those are scored by the reference")
    train_rows = used
    policy = load_model(ctx.parent_dir, ctx)
    set_generation_stops(policy, tokenizer)
    args = training_arguments(config_class, cfg, ctx.recipe, ctx.writer, beta=cfg.beta, max_length=cfg.max_length,
                              include_num_input_tokens_seen="non_padding", precompute_ref_log_probs=True, **settings)
    folder = ctx.writer.checkpoints_dir / "datasets"
    return build_trainer(
        trainer_class,
        layout,
        tokenizer,
        cfg.max_length,
        model=policy,
        ref_model=None,
        args=args,
        train_dataset=disk_dataset(train_rows, folder / "train"),
        eval_dataset=disk_dataset(eval_rows, folder / "validation"),
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora, policy, ctx.spec.section),
    )


def disk_dataset(rows: list[dict[str, Any]], folder: Path) -> Any:
    """`rows` as a Dataset saved in `folder` (the stage's checkpoints folder, removed when it completes).

    TRL caches what it derives from a dataset (tokenized rows, precomputed reference log-probs) next
    to the dataset's files, and the first process writes what the others read. An in-memory dataset
    caches in a temporary folder of each process's own, so under a multi-process launch the others
    would not find the file."""
    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
            Dataset.from_list(rows).save_to_disk(str(folder))
    return load_from_disk(str(folder))


def pair_metrics(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The held-out pair measures every offline preference method reports, before → after: preference
    accuracy and log-likelihood margin (eval.metrics.preference_accuracy results; `before` is {} when
    nothing was measured)."""
    return {
        "preference_accuracy_before": before.get("accuracy"),
        "preference_accuracy": after["accuracy"],
        "logp_margin_before": before.get("mean_margin"),
        "logp_margin": after["mean_margin"],
        "preference_rows": after["rows"],
    }
