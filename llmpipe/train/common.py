"""What every training stage does the same way: device and precision, trainer arguments, the fit
loop around an HF/TRL trainer, and the stage summary.

Stages sit on HF Trainer / TRL trainers (checkpointing, resume, `accelerate launch` for free); this
module keeps their settings in one place so that the stages read as data -> model -> trainer -> fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.config import Recipe, TrainConfig
from llmpipe.core.console import say
from llmpipe.core.errors import UserError
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
        warmup_steps=min(cfg.warmup_steps, cfg.max_steps),  # a short trial run keeps the recipe's warmup
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
        # TRL configs default to gradient checkpointing, which only costs time at these sizes.
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        torch_compile=recipe.compile,
        **placement(recipe),
        **extra,
    )


def build_trainer(trainer_class: type, **kwargs: Any) -> Any:
    """`trainer_class(**kwargs)` for every stage's trainer (transformers' Trainer or a TRL one). Off a
    GPU, TRL's chunked LM head is replaced by the plain one of llmpipe.train.lmhead (1.4x slower
    there, see that module); on CPU the model's attention picks its kernel by row length
    (llmpipe.train.attention), set before the trainer first runs the model."""
    from llmpipe.train.attention import use_length_dispatched_attention
    from llmpipe.train.lmhead import plain_head_applies, plain_lm_head_during

    if kwargs["args"].device.type == "cpu":
        use_length_dispatched_attention(kwargs["model"])
    with plain_lm_head_during(trainer_class, on_cpu=plain_head_applies(kwargs["args"])):
        return trainer_class(**kwargs)


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


def attach_monitor(trainer: Any, recipe: Recipe, cfg: TrainConfig, writer: StageWriter, tokenizer: Any, *, chat: bool,
                   flops_scale: float = 1.0, bits_per_byte_factor: float | None = None, spikes: bool = True) -> Any:
    """Attach the training monitor (progress, TensorBoard, probes, samples, NaN/spike guard) to a
    stage's trainer; returns it. `flops_scale` counts extra forward passes per trained token (DPO's
    reference model) in MFU; with `bits_per_byte_factor` every evaluation also reports `eval_bpb`.
    `spikes=False` keeps only the NaN guard: a policy-gradient loss hovers around 0 and changes sign,
    so "3x the recent median" says nothing about it."""
    from llmpipe.eval.probes import load_suite, suite_name
    from llmpipe.models import flops_per_token
    from llmpipe.train.monitor import MonitorSetup
    from llmpipe.train.monitor import attach_monitor as attach

    setup = MonitorSetup(
        stage=writer.stage,
        total_steps=cfg.max_steps,
        flops_per_token=flops_per_token(trainer.model, cfg.max_length) * flops_scale,
        bits_per_byte_factor=bits_per_byte_factor,
        probe_suites={suite_name(path): load_suite(path) for path in cfg.probes},
        probe_every=cfg.probe_every or cfg.eval_every,
        sample_prompts=cfg.sample_prompts,
        chat=chat,
        max_new_tokens=getattr(cfg, "max_new_tokens", 24),
        spikes=spikes,
    )
    return attach(trainer, setup, recipe, tokenizer, writer.work_dir)


def unmark_evaluation_preparation(trainer: Any) -> None:
    """Let train() wrap the model for data parallelism after an evaluate() (the stages measure first).

    transformers 5.23's evaluate() prepares the bare model through accelerate, which marks it
    prepared; train() then takes it as already wrapped and skips DistributedDataParallel, so under a
    multi-process launch every process trained alone on its own shard (measured: the replicas' weights
    differed after the first step). Found by tests/test_scaleout.py."""
    if trainer.model_wrapped is trainer.model and getattr(trainer.model, "_is_accelerate_prepared", False):
        trainer.model._is_accelerate_prepared = False


def last_eval(trainer: Any, monitor: Any) -> dict[str, Any]:
    """Metrics of an evaluation at the final step: the trainer's own if it just ran one, else a new one."""
    evals = [h for h in monitor.history if "eval_loss" in h]
    if evals and evals[-1]["step"] == trainer.state.global_step:
        return evals[-1]
    return trainer.evaluate()


def fit(trainer: Any, writer: StageWriter, tokenizer: Any, monitor: Any) -> FitResult:
    """Train (resuming from the newest checkpoint of an interrupted run), then save model + tokenizer
    (a LoRA model: its adapter and the merged model, see llmpipe.train.lora) and the parameter counts.

    A NaN or spiking loss is handled by the monitor's policy: `rollback` resumes from the last
    checkpoint with a lower learning rate; `stop`, or no checkpoint to go back to, raises
    TrainingDiverged with the last good checkpoint left in the work folder. The model goes to the
    work folder; `writer.finish` moves it into place once the stage's metrics are written.
    """
    from llmpipe.train.checkpoints import Interrupted, newest_valid_checkpoint
    from llmpipe.train.monitor import TrainingDiverged

    resume, guard, policy = writer.resume_from, monitor.guard, writer.config.get("monitor", {})
    if resume is not None:
        say(f"{writer.stage:9s} resuming from {resume}")
    started = time.time()
    while True:
        unmark_evaluation_preparation(trainer)
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if monitor.stopper.requested is not None:
            raise Interrupted(
                f"{writer.stage}: stopped by {monitor.stopper.requested} at step {trainer.state.global_step}",
                file=str(newest_valid_checkpoint(writer.checkpoints_dir) or writer.work_dir),
                hint="the checkpoint is saved; rerun the same command to resume from it",
            )
        if guard.pending is None:
            break
        last_good = newest_valid_checkpoint(writer.checkpoints_dir)
        bad = guard.anomalies[-1]
        if guard.pending == "rollback" and last_good is not None and guard.rollbacks < policy.get("max_rollbacks", 0):
            guard.prepare_rollback()
            say(f"{writer.stage:9s} rolling back to {last_good.name} with the learning rate x{guard.lr_scale:g}, "
                f"dropping step {bad['step']}'s batch (rollback {guard.rollbacks})")
            resume = last_good
            continue
        why = "no checkpoint to roll back to" if last_good is None else (
            f"after {guard.rollbacks} rollbacks" if guard.pending == "rollback" else "policy stop")
        raise TrainingDiverged(
            f"{writer.stage}: loss {'not finite' if bad['kind'] == 'nan' else 'spiked'} at step {bad['step']} "
            f"({bad['loss']:.4g}); stopped, {why}",
            file=str(last_good or writer.work_dir),
            hint="the last good checkpoint is kept and a rerun resumes from it; lower the learning rate "
            "(a new value retrains from scratch) or set monitor.on_anomaly=rollback",
        )
    wall = time.time() - started
    if monitor.compiled:
        say(f"{writer.stage:9s} torch.compile took about {monitor.progress.compile_seconds():.1f} s of the fit's {wall:.0f} s")
    state = trainer.state
    # The loss of the last logging window says where training ended; the trainer's own
    # `training_loss` averages over the whole run, early high losses included.
    logged = [h["loss"] for h in monitor.history if "loss" in h]
    loss = logged[-1] if logged else (output.training_loss if output is not None else None)
    from llmpipe.train.lora import parameter_counts, save_trained

    writer.manifest["parameters"] = parameter_counts(trainer.model)
    save_trained(trainer, writer, tokenizer)  # a LoRA model: adapter/ plus the merged model
    return FitResult(
        steps=state.global_step,
        tokens=int(state.num_input_tokens_seen or 0) - int(monitor.progress.tokens_at_start),
        wall_seconds=wall,
        train_loss=loss,
        history=monitor.history,
    )


def complete(writer: StageWriter, cfg: TrainConfig, model: Any, tokenizer: Any, parent_dir: Path | None,
             stage_summary: dict[str, Any], heldout: list[tuple[str, str, list[dict[str, Any]]]], monitor: Any,
             gate: bool = True) -> Path:
    """Finish a trained stage: keep its protected sets, record the monitor's findings, run the
    regression gate against the parent, and swap the checkpoint into place.

    A failed gate with action `stop` raises RegressionError after the swap: the checkpoint is kept
    (its manifest says what regressed) and the run stops before the next stage. `gate=False` for a
    model that is not a language model (a reward model): the gate measures likelihood and generation."""
    from llmpipe.eval.gate import protect, regression_error, run_gate

    writer.manifest["protected"] = protect(writer.work_dir, heldout, cfg.probes, cfg.max_length)
    writer.manifest["monitor"] = monitor.manifest()
    if monitor.prober is not None:
        writer.manifest["probes"] = monitor.prober.records
        writer.manifest["samples"] = monitor.prober.samples
    checked = run_gate(parent_dir, model, tokenizer, cfg.gate, cfg.batch_size) if parent_dir is not None and gate else None
    if checked is not None:
        writer.manifest["gate"] = checked
    final = writer.finish(stage_summary)
    if checked is not None and not checked["passed"]:
        if cfg.gate.action == "stop":
            raise regression_error(writer.stage, final, checked)
        say(f"{writer.stage:9s} regressed against {checked['parent_stage']}, going on (gate.action={cfg.gate.action})")
    return final


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


def stop_token_ids(model: Any) -> list[int]:
    """The token ids that end a reply, from the model's generation config (see set_generation_stops)."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


@dataclass
class Measured:
    """One fit with held-out measures before and after: what a stage's metrics and summary are made of."""

    result: FitResult
    final_eval: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    monitor: Any


def fit_measured(trainer: Any, recipe: Recipe, cfg: TrainConfig, writer: StageWriter, tokenizer: Any, measure: Any, *,
                 flops_scale: float = 1.0, spikes: bool = True) -> Measured:
    """Attach the monitor (chat), `measure(model)` on held-out rows, train, evaluate, measure again;
    the log history goes to the manifest. `flops_scale` and `spikes`: see attach_monitor."""
    monitor = attach_monitor(trainer, recipe, cfg, writer, tokenizer, chat=True, flops_scale=flops_scale, spikes=spikes)
    # A resumed run has no "before": the model in memory is already part-trained.
    before = measure(trainer.model) if writer.resume_from is None else {}
    result = fit(trainer, writer, tokenizer, monitor)
    final_eval = last_eval(trainer, monitor)
    after = measure(trainer.model)
    writer.manifest["evals"] = result.history
    return Measured(result, final_eval, before, after, monitor)
