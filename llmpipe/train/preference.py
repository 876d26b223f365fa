"""What the offline preference methods (DPO, KTO) share: their data, the policy and its frozen
reference, and the fit with held-out scores before and after.

Each method module reads top to bottom as: `load_data` -> `preference_trainer` -> `fit_scored` ->
its metrics -> `finish`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmpipe.config import Recipe


def load_data(recipe: Recipe, writer: Any, parent_dir: Path, kind: str) -> tuple[Any, Any]:
    """The parent's chat tokenizer and the align section's rows of `kind` (checked, split, cleaned,
    decontaminated against the run's held-out rows); records the data report in the manifest."""
    from llmpipe.data.pipeline import heldout_texts, load_rows
    from llmpipe.stages.sft import load_chat_tokenizer

    cfg = recipe.align
    tokenizer = load_chat_tokenizer(parent_dir)
    data = load_rows(kind, cfg, heldout_texts(recipe) if cfg.cleaning.decontaminate else [])
    writer.manifest["data"] = data.report.to_manifest()
    return tokenizer, data


def preference_trainer(trainer_class: type, config_class: type, recipe: Recipe, writer: Any, parent_dir: Path,
                       tokenizer: Any, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], **settings: Any) -> Any:
    """A TRL offline preference trainer (DPOTrainer, KTOTrainer) on the parent checkpoint and the align
    section; `settings`: the method's own config fields.

    The reference is frozen, so its log-probs are computed once for every row before training (TRL's
    `precompute_ref_log_probs`), not again at every step, and no reference copy is held: TRL takes
    them from the untrained policy, or with LoRA from the policy with its adapters disabled."""
    from llmpipe.train.common import build_trainer, set_generation_stops, training_arguments
    from llmpipe.train.lora import load_model, peft_config

    cfg = recipe.align
    policy = load_model(parent_dir)
    set_generation_stops(policy, tokenizer)
    args = training_arguments(config_class, cfg, recipe, writer, beta=cfg.beta, max_length=cfg.max_length,
                              include_num_input_tokens_seen="non_padding", precompute_ref_log_probs=True, **settings)
    folder = writer.checkpoints_dir / "datasets"
    return build_trainer(
        trainer_class,
        model=policy,
        ref_model=None,
        args=args,
        train_dataset=disk_dataset(train_rows, folder / "train"),
        eval_dataset=disk_dataset(eval_rows, folder / "validation"),
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora, policy, "align"),
    )


def disk_dataset(rows: list[dict[str, Any]], folder: Path) -> Any:
    """`rows` as a Dataset saved in `folder` (the stage's checkpoints folder, removed when it completes).

    TRL caches what it derives from a dataset (tokenized rows, precomputed reference log-probs) next
    to the dataset's files, and the first process writes what the others read. An in-memory dataset
    caches in a temporary folder of each process's own, so under a multi-process launch the others
    would not find the file."""
    import shutil

    from accelerate import PartialState
    from datasets import Dataset, load_from_disk

    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
            Dataset.from_list(rows).save_to_disk(str(folder))
    return load_from_disk(str(folder))


def fit_scored(trainer: Any, recipe: Recipe, writer: Any, tokenizer: Any, score: Callable[[Any], dict[str, Any]],
               flops_scale: float, spikes: bool = True) -> Any:
    """`common.fit_measured` on the align section: `score(model)` on held-out rows before and after
    training. `flops_scale`: forward passes besides the policy's own, for MFU; `spikes=False` keeps only
    the NaN guard, for a loss that can sit at 0 or go below it (see attach_monitor)."""
    from llmpipe.train.common import fit_measured

    return fit_measured(trainer, recipe, recipe.align, writer, tokenizer, score, flops_scale=flops_scale, spikes=spikes)


def finish(trainer: Any, recipe: Recipe, writer: Any, tokenizer: Any, parent_dir: Path, scored: Any,
           metric: dict[str, Any], heldout: list[tuple[str, str, list[dict[str, Any]]]]) -> Path:
    """Protect the held-out rows, run the regression gate and swap the stage into place (see
    llmpipe.train.common.complete); `metric` is the summary's headline {name, before, after}."""
    from llmpipe.train.common import complete, summary

    stage_summary = summary(scored.result, scored.final_eval.get("eval_loss"), metric)
    return complete(writer, recipe.align, trainer.model, tokenizer, parent_dir, stage_summary, heldout, scored.monitor)
