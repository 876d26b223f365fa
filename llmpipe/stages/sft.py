"""SFT stage: chat tuning of the pretrained model with TRL's SFTTrainer, loss on assistant turns only
(all weights, or LoRA adapters with `sft.lora.enabled`: see llmpipe/train/lora.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from llmpipe.chat_format import assistant_mask, has_generation_markers, load_chat_tokenizer, set_generation_stops
from llmpipe.config import Recipe
from llmpipe.core.console import fmt_number, say
from llmpipe.core.errors import UserError
from llmpipe.data.pipeline import heldout_texts, load_rows
from llmpipe.eval.metrics import answer_accuracy
from llmpipe.runs import StageWriter
from llmpipe.runs.context import StageContext
from llmpipe.train.args import limit_rows, training_arguments
from llmpipe.train.fit import build_trainer, finish, fit
from llmpipe.train.lora import load_model, peft_config
from llmpipe.train.replay import mix_in_replay


def sft_arguments(recipe: Recipe, writer: StageWriter, marked: bool = True, cfg: Any = None) -> Any:
    """TRL SFTConfig for the recipe: assistant-only loss and bfd packing of whole conversations.

    `marked`: the chat template has `{% generation %}` markers, so TRL masks the conversations itself;
    otherwise the rows come tokenized with their masks (`chat_dataset`) and TRL's own assistant-only
    loss, which needs the markers, stays off. `cfg`: the section whose optimisation settings train
    (default `recipe.sft`; align method cai trains this way on its revisions), packed unless it says
    otherwise."""
    cfg = recipe.sft if cfg is None else cfg
    return training_arguments(
        SFTConfig, cfg, recipe, writer,
        assistant_only_loss=marked,
        packing=getattr(cfg, "packing", True),
        # Whole conversations per row; llmpipe.train.packing gives them dense blocks with
        # per-document attention (see there for why neither of TRL's own layouts fits CPU).
        packing_strategy="bfd",
        max_length=cfg.max_length,
        include_num_input_tokens_seen="non_padding",
        dataset_num_proc=None,
    )


def chat_dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[Any, int]:
    """The chat rows as SFTTrainer's dataset, and how many were left out: their `messages` when the
    template has `{% generation %}` markers (TRL renders and masks them), else tokenized here, `input_ids`
    with `assistant_masks` from chat_format.assistant_mask (TRL turns the mask into labels, -100 off the
    replies, before packing).

    A tokenized conversation whose replies all lie beyond `max_length` is left out: cut to max_length it
    trains nothing, and a packed batch of only such rows has no token to average the loss over (NaN).
    Long templates make this common: ChatML's default system turn alone is ~20 tokens."""
    if has_generation_markers(tokenizer.chat_template):
        return Dataset.from_list([{"messages": r["messages"]} for r in rows]), 0
    tokenized = [assistant_mask(tokenizer, r["messages"]) for r in rows]
    kept = [{"input_ids": ids, "assistant_masks": mask} for ids, mask in tokenized if any(mask[:max_length])]
    return Dataset.from_list(kept), len(tokenized) - len(kept)


def train(ctx: StageContext) -> Path:
    """Fine-tune the parent checkpoint on the recipe's chat data; returns the finished stage folder."""
    recipe, writer, parent_dir, cfg = ctx.recipe, ctx.writer, ctx.parent_dir, ctx.cfg
    tokenizer = load_chat_tokenizer(parent_dir)
    data = load_rows(ctx.spec.data, cfg, heldout_texts(recipe) if cfg.cleaning.decontaminate else [])
    ctx.manifest.data = data.report.to_manifest()
    model = load_model(parent_dir, ctx)
    set_generation_stops(model, tokenizer)

    train_set, cut = chat_dataset(tokenizer, data.train, cfg.max_length)
    eval_set, _ = chat_dataset(tokenizer, limit_rows(data.validation, cfg), cfg.max_length)
    if cut:
        ctx.manifest.data["no_reply_within_max_length"] = cut
        say(f"sft: {cut} of {len(data.train)} training conversations left out: no reply starts within max_length "
            f"{cfg.max_length} tokens")
    if len(train_set) == 0 or len(eval_set) == 0:
        raise UserError(f"is {cfg.max_length}: no {'training' if len(train_set) == 0 else 'validation'} conversation has "
                        "a reply within it under this chat template", file=recipe.source, field="sft.max_length",
                        hint="raise sft.max_length")
    trainer = build_trainer(
        SFTTrainer,
        "packed_chat" if cfg.packing else "plain",
        tokenizer,
        cfg.max_length,
        model=model,
        args=sft_arguments(recipe, writer, marked="messages" in train_set.column_names),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora, model, ctx.spec.section),  # None: full fine-tuning
    )
    # Pretraining text mixed back in against forgetting (llmpipe.train.replay; nothing at 0).
    ctx.manifest.data["replay"] = mix_in_replay(ctx, trainer, tokenizer)
    scored = data.validation[: cfg.accuracy_rows]
    fitted = fit(ctx, trainer, tokenizer, measure=lambda m: answer_accuracy(m, tokenizer, scored, cfg.max_new_tokens),
                 evaluate_before=True)
    before, after = fitted.before, fitted.after
    val_before, val_after = before.get("eval_loss"), fitted.final_eval["eval_loss"]

    ctx.manifest.metrics = {
        "validation_loss_before": val_before,
        "validation_loss": val_after,
        "answer_accuracy_before": before.get("accuracy"),
        "answer_accuracy": after["accuracy"],
        "answer_rows": after["rows"],
        "samples": after["samples"],
    }
    if after["accuracy"] is None:
        metric = {"name": "held-out loss", "before": val_before, "after": val_after}
    else:
        metric = {"name": "held-out answer accuracy", "before": before.get("accuracy"), "after": after["accuracy"]}
    say(f"sft: held-out loss {fmt_number(val_before)} -> {fmt_number(val_after)}; answer accuracy {fmt_number(before.get('accuracy'))} -> "
        f"{fmt_number(after['accuracy'])} on {after['rows']} held-out rows")
    heldout = [("sft-validation", ctx.spec.data, limit_rows(data.validation, cfg))]
    return finish(ctx, fitted, tokenizer, metric, heldout, val_loss=val_after)
