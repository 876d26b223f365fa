"""What the offline preference methods (DPO, KTO) share: their data, the policy and its frozen
reference, and the fit with held-out scores before and after.

Each method module reads top to bottom as: `load_data` -> `policy_and_reference` -> its TRL trainer
-> `fit_scored` -> its metrics -> `finish`. With LoRA (`align.lora.enabled`) there is no reference
copy: TRL computes the reference log-probs with the adapters disabled, i.e. with the parent model.
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


def policy_and_reference(parent_dir: Path, tokenizer: Any, cfg: Any, precomputed: bool = False) -> tuple[Any, Any | None, Any | None]:
    """(policy, frozen reference or None, peft LoraConfig or None) from the parent checkpoint, for a
    TRL preference trainer's `model`, `ref_model` and `peft_config`. `precomputed`: the trainer
    computes the reference log-probs before training, from the untrained policy, so no copy is held."""
    from llmpipe.train.common import set_generation_stops
    from llmpipe.train.lora import load_model, peft_config

    policy = load_model(parent_dir)
    set_generation_stops(policy, tokenizer)
    lora = peft_config(cfg.lora, policy, "align")
    # Full fine-tuning gets an explicit reference copy: with ref_model=None TRL re-loads the policy by
    # name, which fails for a model that was built from a config (no hub id). With LoRA, None is
    # right: TRL then disables the adapters for the reference pass, so no second copy is held.
    reference = load_model(parent_dir) if lora is None and not precomputed else None
    return policy, reference, lora


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
