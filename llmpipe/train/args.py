"""Trainer arguments every stage shares: device and precision checked against the hardware, the
recipe section's optimisation settings, and the fixed held-out sample.

Precision: `precision: auto` trains with bf16 autocast wherever the device runs bf16 natively (CUDA
with `torch.cuda.is_bf16_supported()`: Ampere and newer; CPUs with AVX-512 BF16 or AMX), else fp32.
The weights and AdamW's state stay fp32 (the Trainer's `bf16=True` is autocast, not bf16 weights):
matmuls run in bf16, the updates keep fp32's precision. On the 2-core Zen 4 CI machine this is ~1.3x
faster than fp32 (docs/STACK-NOTES: HF Trainer 2133-2207 -> 2901 tokens/s on tiny). Pure bf16 weights
would halve weight memory but lose small updates at these learning rates; only QLoRA's frozen 4-bit
base computes in bf16 (llmpipe/train/lora.py), its adapters stay fp32.
"""

from __future__ import annotations

import importlib.util
import random
from typing import Any

import torch

from llmpipe.config import Recipe, TrainConfig
from llmpipe.core.errors import UserError
from llmpipe.runs import StageWriter
from llmpipe.train.optim import schedule_arguments


def bf16_supported(device_type: str) -> bool:
    """Whether bf16 autocast runs natively (and so faster than fp32) on this device."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        # Without AVX-512 BF16 or AMX, CPU bf16 is emulated and slower than fp32.
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def device_of(recipe: Recipe) -> str:
    """The device type a recipe trains on (`auto`: cuda, else mps, else cpu), checked to be there."""
    device = recipe.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for but no GPU is visible", field="device", hint="use device=auto or device=cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("MPS was asked for but is not available", field="device", hint="use device=auto or device=cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return device


def check_quantization(recipe: Recipe, section: str) -> None:
    """A section's `lora.quantize` can run here: 4-bit QLoRA needs a CUDA GPU and bitsandbytes (not a
    dependency of llmpipe). Checked before anything trains (the CLI) and again when the stage loads."""
    lora = getattr(getattr(recipe, section), "lora", None)
    if lora is None or lora.quantize == "none":
        return
    key = f"{section}.lora.quantize"
    device_type = device_of(recipe)
    if device_type != "cuda":
        raise UserError(f"4-bit QLoRA needs a CUDA GPU (bitsandbytes' kernels); this run trains on {device_type}",
                        file=recipe.source, field=key, hint=f"set {key}=none for plain LoRA")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("4-bit QLoRA needs bitsandbytes, which is not installed", file=recipe.source, field=key,
                        hint=f"pip install bitsandbytes, or set {key}=none")


def placement(recipe: Recipe) -> dict[str, Any]:
    """TrainingArguments fields for the recipe's device and precision, checked against the hardware."""
    device_type = device_of(recipe)
    if recipe.precision == "bf16" and not bf16_supported(device_type):
        raise UserError(f"bf16 is not supported natively on this {device_type}", field="precision", hint="use precision=auto or fp32")
    bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and bf16_supported(device_type))
    return {"use_cpu": device_type == "cpu", "bf16": bf16, "fp16": False}


def training_arguments(args_class: type, cfg: TrainConfig, recipe: Recipe, writer: StageWriter, **extra: Any) -> Any:
    """Build `args_class` (TrainingArguments or a TRL config) from the stage's settings."""
    return args_class(
        output_dir=str(writer.checkpoints_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        # A run shorter than its warmup warms up over the whole run (sft.max_steps=5 with the default warmup of 10).
        **schedule_arguments(cfg, cfg.max_steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=cfg.eval_every,
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=2,
        logging_steps=cfg.log_every,
        # TensorBoard is attached by the monitor (its files must live in the stage folder).
        report_to=["wandb"] if "wandb" in recipe.monitor.report_to else "none",
        disable_tqdm=True,
        seed=recipe.seed,
        data_seed=recipe.seed,
        # TRL configs default to gradient checkpointing, which only costs time at these sizes: the
        # recipe's model.gradient_checkpointing (off by default) decides, for every stage.
        gradient_checkpointing=recipe.model.gradient_checkpointing,
        dataloader_num_workers=0,
        torch_compile=recipe.compile,
        **placement(recipe),
        **extra,
    )


def rows_for_steps(rows: list[Any], cfg: TrainConfig, seed: int, processes: int = 1) -> list[Any]:
    """The training rows `max_steps` will draw: all of them when the steps go through the data at least
    once, else a seeded random sample of as many rows as the steps take (in the data's order).

    For trainers that do work per dataset row before the first step: DPO and KTO score the frozen
    reference on every training row up front. On 1,853 hh-rlhf pairs and SmolLM2-135M on 2 CPU cores that
    took more than 12 minutes (stopped there) before a 1-step run that reads 4 of them."""
    needed = cfg.max_steps * cfg.batch_size * cfg.grad_accum * processes
    if len(rows) <= needed:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), needed))
    return [rows[i] for i in keep]


def limit_rows(rows: list[Any], cfg: TrainConfig) -> list[Any]:
    """The first `eval_batches` batches of a validation set: a bounded, fixed held-out sample."""
    return rows[: cfg.eval_batches * cfg.batch_size]
