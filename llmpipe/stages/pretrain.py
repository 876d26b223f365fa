"""Pretrain stage: next-token prediction on packed text blocks, from random initialisation (the recipe's
model preset, with the tokenizer stage's tokenizer) or continued from an imported base model (with its own
tokenizer)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator, set_seed

from llmpipe.config.presets import AUTO, auto_shape, model_label
from llmpipe.core.console import fmt_number, say
from llmpipe.core.errors import UserError
from llmpipe.data.blocks import BlockDataset, pack_blocks, token_blocks
from llmpipe.data.pipeline import heldout_texts, stream_text
from llmpipe.eval.scaling import read_fit
from llmpipe.models import build_config, count_parameters, flops_per_token, model_context
from llmpipe.runs.context import StageContext
from llmpipe.train.args import placement, training_arguments
from llmpipe.train.budget import Plan, apply_plan, budget_kind, few_steps_warning, plan_budget, read_plan
from llmpipe.train.fit import build_trainer, finish, fit
from llmpipe.train.lora import load_model


def train(ctx: StageContext) -> Path:
    """Pretrain the recipe's model (its `model` section) from random initialisation on its text; returns the
    stage folder."""
    recipe, writer, parent_dir, cfg = ctx.recipe, ctx.writer, ctx.parent_dir, ctx.cfg
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    references = heldout_texts(recipe) if cfg.cleaning.decontaminate else []
    stream = stream_text(cfg, references)

    set_seed(recipe.seed)
    # Continued pretraining starts from the parent's model (a base stage); from scratch, from the model section.
    continued = (parent_dir / "config.json").is_file()
    # model: auto with no shape yet: the budget's plan chooses one (a sweep point of `llmpipe scale` names its own).
    auto = not continued and recipe.model.preset == AUTO and not recipe.model.layers
    if continued:
        model = load_model(parent_dir)
        context, label = model_context(model.config), f"{model.config.model_type} model from {parent_dir}"
        hint = f"set pretrain.max_length <= {context}"
    else:
        shape = recipe.model.resolved()
        context = shape["context"] if auto else model_context(build_config(shape, tokenizer))
        label = f"'{shape['preset']}' model"
        hint = f"set pretrain.max_length <= {context} or raise model.context"
    if cfg.max_length > context:
        raise UserError(
            f"is {cfg.max_length} but the {label} has a context of {context}",
            file=recipe.source, field="pretrain.max_length", hint=hint,
        )
    train_blocks, ctx.manifest.data = token_blocks(cfg, tokenizer, parent_dir, stream, references)
    val_texts = [r["text"] for r in stream.validation]
    val_blocks, val_tokens = pack_blocks(tokenizer, val_texts, cfg.max_length)
    for name, blocks in (("train", train_blocks), ("validation", val_blocks)):
        if len(blocks) == 0:
            raise UserError(
                f"{name} text is shorter than one block of {cfg.max_length} tokens",
                field="pretrain.max_length", hint="give more text or lower pretrain.max_length",
            )
    val_blocks = val_blocks[: cfg.eval_batches * cfg.batch_size]
    # Bits per byte makes validation loss comparable across tokenizers: nats/token × tokens/byte / ln 2.
    tokens_per_byte = val_tokens / sum(len(t.encode("utf-8")) for t in val_texts)

    if not continued and not auto:
        model = AutoModelForCausalLM.from_config(build_config(shape, tokenizer))
    if budget_kind(cfg) is not None:
        plan = _plan(ctx, tokenizer, None if auto else model, train_blocks, len(val_blocks))
        cfg = ctx.planned = apply_plan(cfg, plan)
        if auto:
            shape = plan.shape
            set_seed(recipe.seed)  # the chosen shape initialised as if it had been named: measuring drew numbers
            model = AutoModelForCausalLM.from_config(build_config(shape, tokenizer))
    n_params = count_parameters(model)
    say(f"pretrain: {label if continued else model_label(shape)}, {n_params / 1e6:.2f}M parameters, {len(train_blocks)} train blocks "
        f"of {cfg.max_length} tokens, {len(val_blocks)} validation blocks")

    args = training_arguments(TrainingArguments, cfg, recipe, writer, include_num_input_tokens_seen="all")
    trainer = build_trainer(
        Trainer,
        "plain",
        model=model,
        args=args,
        train_dataset=train_blocks,
        eval_dataset=BlockDataset(val_blocks),
        processing_class=tokenizer,
        # Blocks are all max_length long: stacking them is all a batch needs. The default collator
        # for a tokenizer pads through Python lists (measured: 8 ms a step, about 1% of a tiny step).
        data_collator=default_data_collator,
    )
    fitted = fit(ctx, trainer, tokenizer, evaluate_before=True, chat=False, bits_per_byte_factor=tokens_per_byte / math.log(2))
    before, after = fitted.before.get("eval_loss"), fitted.final_eval["eval_loss"]

    def bpb(loss: float | None) -> float | None:
        return None if loss is None else round(loss * tokens_per_byte / math.log(2), 4)

    ctx.manifest.metrics = {
        "parameters": n_params,
        "validation_loss_before": before,
        "validation_loss": after,
        "validation_bpb_before": bpb(before),
        "validation_bpb": bpb(after),
        "flops_per_token": flops_per_token(model, cfg.max_length),
    }
    metric = {"name": "held-out bits/byte", "before": bpb(before), "after": bpb(after)}
    say(f"pretrain: validation loss {fmt_number(before)} -> {fmt_number(after)}, "
        f"{fmt_number(bpb(before))} -> {fmt_number(bpb(after))} bits/byte")
    # Children are gated on the documents behind the validation blocks (about as many bytes).
    budget = len(val_blocks) * cfg.max_length / tokens_per_byte
    kept, size = [], 0
    for text in val_texts:
        if size >= budget:
            break
        kept.append({"text": text})
        size += len(text.encode("utf-8"))
    heldout = [("pretrain-validation", "text", kept)]
    return finish(ctx, fitted, tokenizer, metric, heldout)


def _plan(ctx: StageContext, tokenizer: Any, model: Any, train_blocks: Any, val_blocks: int) -> Plan:
    """The budget's plan: the first run's when resuming (recorded in the manifest), else made now by measuring
    this machine (and, under model: auto, choosing the shape); printed and recorded either way."""
    recipe, cfg = ctx.recipe, ctx.cfg
    if ctx.resumed and ctx.manifest.budget:
        plan = read_plan(ctx.manifest.budget)
        say(f"pretrain: budget plan of the interrupted run kept: {plan.steps} steps")
        return plan
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.time_budget and processes > 1:
        # Each process would time its own steps and could plan a different step count, and the processes of one
        # launch must take the same steps; a token budget plans the same everywhere.
        raise UserError("a time budget is measured by one process; this launch has several", file=recipe.source,
                        field="pretrain.time_budget", hint="use pretrain.tokens (the same steps on every process)")
    bf16 = placement(recipe)["bf16"]

    def shape_for(layers: int, width: int, heads: int) -> dict[str, Any]:
        return auto_shape(recipe.model, layers, width, heads)

    def build(shape: dict[str, Any]) -> Any:
        return AutoModelForCausalLM.from_config(build_config(shape, tokenizer))

    eval_batches = math.ceil(val_blocks / cfg.batch_size)
    plan = plan_budget(cfg, given=recipe.given, section=ctx.spec.section, model=model, build=build, shape_for=shape_for,
                       blocks=train_blocks, eval_batches=eval_batches, bf16=bf16,
                       scaling_fit=read_fit(cfg.scaling_fit) if cfg.scaling_fit else None,
                       processes=processes)
    say(f"pretrain: {plan.why} (measured in {plan.measure_seconds:.1f} s)")
    warning = few_steps_warning(plan)
    if warning:
        say(f"pretrain: warning: {warning}")
    ctx.manifest.budget = plan.record()
    ctx.writer.save_manifest()
    return plan
