"""What every training stage does the same way: device and precision, trainer arguments, the fit
loop around an HF/TRL trainer, and the stage summary.

Stages sit on HF Trainer / TRL trainers (checkpointing, resume, `accelerate launch` for free); this
module keeps their settings in one place so that the stages read as data -> model -> trainer -> fit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from llmpipe.config import Recipe, TrainConfig
from llmpipe.console import say
from llmpipe.errors import UserError
from llmpipe.runs import StageWriter


def bf16_supported(device_type: str) -> bool:
    """Whether bf16 autocast runs natively (and so faster than fp32) on this device."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        # Without AVX-512 BF16 or AMX, CPU bf16 is emulated and slower than fp32.
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def placement(recipe: Recipe) -> dict[str, Any]:
    """TrainingArguments fields for the recipe's device and precision, checked against the hardware."""
    import torch

    device = recipe.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for but no GPU is visible", field="device", hint="use device=auto or device=cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("MPS was asked for but is not available", field="device", hint="use device=auto or device=cpu")
    if device == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    else:
        device_type = device
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
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=cfg.eval_every,
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=2,
        logging_steps=cfg.log_every,
        report_to="none",
        disable_tqdm=True,
        seed=recipe.seed,
        data_seed=recipe.seed,
        # TRL configs default to gradient checkpointing, which only costs time at these sizes.
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        **placement(recipe),
        **extra,
    )


@dataclass
class FitResult:
    """What one trainer.fit produced, for the manifest and the summary table."""

    steps: int
    tokens: int
    wall_seconds: float
    train_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        """Training tokens per wall-clock second of the fit."""
        return self.tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0


def attach_progress(trainer: Any, stage: str, total_steps: int, bits_per_byte_factor: float | None = None) -> Any:
    """Replace the trainer's raw-dict printer with one terse line per log and eval; returns the
    callback, which also keeps the log history for the manifest.

    With `bits_per_byte_factor` (tokens per byte / ln 2), every evaluation also reports `eval_bpb`.
    """
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    progress = _progress_callback(stage, total_steps, bits_per_byte_factor)
    trainer.add_callback(progress)
    return progress


def last_eval(trainer: Any, progress: Any) -> dict[str, Any]:
    """Metrics of an evaluation at the final step: the trainer's own if it just ran one, else a new one."""
    evals = [h for h in progress.history if "eval_loss" in h]
    if evals and evals[-1]["step"] == trainer.state.global_step:
        return evals[-1]
    return trainer.evaluate()


def _progress_callback(stage: str, total_steps: int, bpb_factor: float | None) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []
            self.started = time.time()
            self.tokens_at_start = 0
            self.step_at_start = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            self.tokens_at_start = state.num_input_tokens_seen or 0
            self.step_at_start = state.global_step  # > 0 when resuming

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if bpb_factor is not None and "eval_loss" in logs:
                logs["eval_bpb"] = round(logs["eval_loss"] * bpb_factor, 4)
            self.history.append({"step": state.global_step, **logs})
            if not state.is_world_process_zero:
                return
            elapsed = max(time.time() - self.started, 1e-9)
            if "loss" in logs:
                rate = ((state.num_input_tokens_seen or 0) - self.tokens_at_start) / elapsed
                remaining = (total_steps - state.global_step) * elapsed / max(state.global_step - self.step_at_start, 1)
                say(
                    f"{stage:9s} step {state.global_step:>5}/{total_steps} | loss {logs['loss']:.4f} | "
                    f"lr {logs.get('learning_rate', 0):.2e} | grad {logs.get('grad_norm', float('nan')):.2f} | "
                    f"{rate:,.0f} tok/s | eta {remaining:,.0f}s"
                )
            elif "eval_loss" in logs:
                extra = "".join(
                    f" | {k.removeprefix('eval_')} {v:.4f}" for k, v in logs.items()
                    if (k.startswith("eval_rewards/") or k == "eval_bpb") and isinstance(v, float)
                )
                say(f"{stage:9s} step {state.global_step:>5}/{total_steps} | val loss {logs['eval_loss']:.4f}{extra}")

    return Progress()


def fit(trainer: Any, writer: StageWriter, tokenizer: Any, progress: Any) -> FitResult:
    """Train (resuming from the newest checkpoint of an interrupted run), then save model + tokenizer.

    The checkpoint goes to the work folder; `writer.finish` moves it into place once the stage's
    metrics are written.
    """
    if writer.resume_from is not None:
        say(f"{writer.stage:9s} resuming from {writer.resume_from}")
    started = time.time()
    output = trainer.train(resume_from_checkpoint=str(writer.resume_from) if writer.resume_from else None)
    wall = time.time() - started
    state = trainer.state
    # The loss of the last logging window says where training ended; the trainer's own
    # `training_loss` averages over the whole run, early high losses included.
    logged = [h["loss"] for h in progress.history if "loss" in h]
    loss = logged[-1] if logged else (output.training_loss if output is not None else None)
    if loss is not None and not math.isfinite(loss):
        raise RuntimeError(f"{writer.stage}: training loss became {loss}")
    # Every process calls save_model (it gathers DDP/FSDP shards); only the first one writes.
    trainer.save_model(str(writer.work_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(writer.work_dir))
    return FitResult(
        steps=state.global_step,
        tokens=int(state.num_input_tokens_seen or 0) - int(progress.tokens_at_start),
        wall_seconds=wall,
        train_loss=loss,
        history=progress.history,
    )


def summary(fit_result: FitResult, val_loss: float | None, metric: dict[str, Any]) -> dict[str, Any]:
    """The per-stage line of the final table, as stored in the manifest."""
    return {
        "steps": fit_result.steps,
        "tokens": fit_result.tokens,
        "wall_seconds": round(fit_result.wall_seconds, 2),
        "tokens_per_second": round(fit_result.tokens_per_second, 1),
        "train_loss": None if fit_result.train_loss is None else round(fit_result.train_loss, 4),
        "val_loss": None if val_loss is None else round(val_loss, 4),
        "metric": metric,
    }


def limit_rows(rows: list[Any], cfg: TrainConfig) -> list[Any]:
    """The first `eval_batches` batches of a validation set: a bounded, fixed held-out sample."""
    return rows[: cfg.eval_batches * cfg.batch_size]


def set_generation_stops(model: Any, tokenizer: Any) -> None:
    """Make generate() stop at the end-of-turn token as well as eos, and know the pad id."""
    from llmpipe.tokenizer import END_OF_TURN

    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.eos_token_id = [end, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
