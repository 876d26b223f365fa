"""SFT stage: chat tuning of the pretrained model with TRL's SFTTrainer, loss on assistant turns only
(all weights, or LoRA adapters with `sft.lora.enabled`: see llmpipe/train/lora.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmpipe.config import Recipe
from llmpipe.core.console import say
from llmpipe.core.errors import UserError


def load_chat_tokenizer(parent_dir: Path) -> Any:
    """The parent's tokenizer, refusing one whose chat template cannot mark assistant turns."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    template = tokenizer.chat_template or ""
    if "{% generation %}" not in template:
        raise UserError(
            "tokenizer has no chat template with {% generation %} markers, so assistant-only loss cannot work"
            if template else "tokenizer has no chat template",
            file=str(parent_dir / "tokenizer_config.json"),
            field="chat_template",
            hint="train the tokenizer with 'llmpipe tokenizer', which writes one",
        )
    return tokenizer


def sft_arguments(recipe: Recipe, writer: Any) -> Any:
    """TRL SFTConfig for the recipe: assistant-only loss and bfd packing of whole conversations."""
    from trl import SFTConfig

    from llmpipe.train.common import training_arguments

    cfg = recipe.sft
    return training_arguments(
        SFTConfig, cfg, recipe, writer,
        assistant_only_loss=True,
        packing=cfg.packing,
        # Whole conversations per row; llmpipe.train.packing gives them dense blocks with
        # per-document attention (see there for why neither of TRL's own layouts fits CPU).
        packing_strategy="bfd",
        max_length=cfg.max_length,
        include_num_input_tokens_seen="non_padding",
        dataset_num_proc=None,
    )


def lean_sft_trainer() -> type:
    """SFTTrainer whose training steps take the model's own loss, as plain Trainer does.

    TRL's SFT loss also computes the full-vocabulary entropy and top-1 accuracy of every token for
    its logs. llmpipe does not use them during training, and they cost about 5% of a step on the
    tiny preset. Evaluations still go through TRL's loss, so `eval_entropy` and
    `eval_mean_token_accuracy` are still logged."""
    from transformers import Trainer
    from trl import SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return LeanSFTTrainer


def run(recipe: Recipe, run_dir: Path, parent: str | Path | None = None, restart: bool = False) -> Path:
    """Fine-tune the parent checkpoint on the recipe's chat data; returns the finished stage folder."""
    from llmpipe.runs import run_stage

    return run_stage("sft", "sft", recipe, run_dir, parent, restart, _train)


def _train(recipe: Recipe, writer: Any, parent_dir: Path) -> Path:
    from datasets import Dataset

    from llmpipe.data.pipeline import heldout_texts, load_rows
    from llmpipe.eval.metrics import answer_accuracy
    from llmpipe.train.common import attach_monitor, build_trainer, complete, fit, last_eval, limit_rows, set_generation_stops, summary
    from llmpipe.train.lora import load_model, peft_config
    from llmpipe.train.packing import use_packed_blocks

    cfg = recipe.sft
    tokenizer = load_chat_tokenizer(parent_dir)
    data = load_rows("chat", cfg, heldout_texts(recipe) if cfg.cleaning.decontaminate else [])
    writer.manifest["data"] = data.report.to_manifest()
    model = load_model(parent_dir)
    set_generation_stops(model, tokenizer)

    train_set = Dataset.from_list([{"messages": r["messages"]} for r in data.train])
    eval_set = Dataset.from_list([{"messages": r["messages"]} for r in limit_rows(data.validation, cfg)])
    trainer = build_trainer(
        lean_sft_trainer(),
        model=model,
        args=sft_arguments(recipe, writer),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora, model, "sft"),  # None: full fine-tuning
    )
    if cfg.packing:
        use_packed_blocks(trainer, tokenizer, cfg.max_length)
    monitor = attach_monitor(trainer, recipe, cfg, writer, tokenizer, chat=True)
    scored = data.validation[: cfg.accuracy_rows]
    before = answer_accuracy(trainer.model, tokenizer, scored, cfg.max_new_tokens) if writer.resume_from is None else {}
    val_before = trainer.evaluate()["eval_loss"] if writer.resume_from is None else None
    result = fit(trainer, writer, tokenizer, monitor)
    val_after = last_eval(trainer, monitor)["eval_loss"]
    after = answer_accuracy(trainer.model, tokenizer, scored, cfg.max_new_tokens)

    writer.manifest["metrics"] = {
        "validation_loss_before": val_before,
        "validation_loss": val_after,
        "answer_accuracy_before": before.get("accuracy"),
        "answer_accuracy": after["accuracy"],
        "answer_rows": after["rows"],
        "samples": after["samples"],
    }
    writer.manifest["evals"] = result.history
    if after["accuracy"] is None:
        metric = {"name": "held-out loss", "before": val_before, "after": val_after}
    else:
        metric = {"name": "held-out answer accuracy", "before": before.get("accuracy"), "after": after["accuracy"]}
        say(f"sft: answer accuracy {before.get('accuracy')} -> {after['accuracy']:.3f} on {after['rows']} held-out rows")
    heldout = [("sft-validation", "chat", limit_rows(data.validation, cfg))]
    return complete(writer, cfg, trainer.model, tokenizer, parent_dir, summary(result, val_after, metric), heldout, monitor)
