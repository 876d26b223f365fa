"""The one fit every training stage goes through, and the one way a trained stage finishes.

Stages sit on HF Trainer / TRL trainers (checkpointing, resume, `accelerate launch` for free). A stage
module builds its trainer (`build_trainer`), then calls `fit(ctx, trainer, tokenizer, measure=...)`:
attach the monitor, measure held-out rows before, train (resuming an interrupted run, rolling back a
diverged one), evaluate, measure after; then records its metrics and calls `finish`: protect its
held-out sets, run the regression gate, swap the stage folder into place.

A resumed stage's record equals an uninterrupted one's apart from timings: the "before" measures, the
log history and the probe records live in the work folder's manifest from the moment they exist, and
a resumed run carries them over (`StageWriter` reads them back) instead of measuring a part-trained
model as "before"; tokens are the trainer state's total, which its checkpoint restores.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.core.console import say
from llmpipe.eval.gate import protect, regression_error, run_gate
from llmpipe.eval.probes import load_suite, suite_name
from llmpipe.eval.suites import load_suites, score_model, scores_before
from llmpipe.models import flops_per_token
from llmpipe.runs.context import StageContext
from llmpipe.runs.seals import newest_valid_checkpoint
from llmpipe.speed import fast_trainer
from llmpipe.train.checkpoints import Interrupted
from llmpipe.train.lora import parameter_counts, save_trained
from llmpipe.train.monitor import Monitor, MonitorSetup, TrainingDiverged, attach_monitor


def build_trainer(trainer_class: type, layout: str = "plain", tokenizer: Any = None, max_length: int | None = None,
                  **kwargs: Any) -> Any:
    """Every stage's trainer (transformers' Trainer or a TRL one), with the speed layer's patches
    where they apply (llmpipe.speed.fast_trainer: `layout` is plain, packed_chat or pairs)."""
    return fast_trainer(trainer_class, layout, tokenizer, max_length, **kwargs)


@dataclass
class FitResult:
    """What the training of one stage produced, for the manifest and the summary table."""

    steps: int
    tokens: int  # the whole stage's, over every resumed segment
    wall_seconds: float  # this process's training
    train_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    segment_tokens: int = 0  # trained by this process

    @property
    def tokens_per_second(self) -> float:
        """Training tokens per wall-clock second of this process's training."""
        return self.segment_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class Fitted:
    """One fit with held-out measures before and after: what a stage's metrics and summary are made of."""

    result: FitResult
    final_eval: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    monitor: Monitor
    model: Any
    suites: dict[str, Any] | None = None  # the suites' {before, after} scores (chat stages)


def unmark_evaluation_preparation(trainer: Any) -> None:
    """Let train() wrap the model for data parallelism after an evaluate() (the stages measure first).

    transformers 5.23's evaluate() prepares the bare model through accelerate, which marks it
    prepared; train() then takes it as already wrapped and skips DistributedDataParallel, so under a
    multi-process launch every process trained alone on its own shard (measured: the replicas' weights
    differed after the first step). Found by tests/test_scaleout.py."""
    if trainer.model_wrapped is trainer.model and getattr(trainer.model, "_is_accelerate_prepared", False):
        trainer.model._is_accelerate_prepared = False


def last_eval(trainer: Any, monitor: Monitor) -> dict[str, Any]:
    """Metrics of an evaluation at the final step: the trainer's own if it just ran one, else a new one."""
    evals = [h for h in monitor.history if "eval_loss" in h]
    if evals and evals[-1]["step"] == trainer.state.global_step:
        return evals[-1]
    return trainer.evaluate()


def fit(ctx: StageContext, trainer: Any, tokenizer: Any, *, measure: Callable[[Any], dict[str, Any]] | None = None,
        evaluate_before: bool = False, chat: bool = True, flops_scale: float = 1.0, bits_per_byte_factor: float | None = None,
        spikes: bool = True) -> Fitted:
    """Attach the monitor, measure held-out rows before (`measure(model)`, and the trainer's eval loss
    as `eval_loss` with `evaluate_before`), train, evaluate, measure again; the model and tokenizer go
    to the work folder and the log history to the manifest.

    `flops_scale` counts extra forward passes per trained token (DPO's reference) in MFU; with
    `bits_per_byte_factor` every evaluation also reports `eval_bpb`; `spikes=False` keeps only the NaN
    guard (a policy-gradient loss hovers around 0 and changes sign, so "3x the recent median" says
    nothing about it)."""
    cfg = ctx.cfg
    setup = MonitorSetup(
        stage=ctx.spec.name,
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
    monitor = attach_monitor(trainer, setup, ctx.recipe, tokenizer, ctx.writer.work_dir)
    monitor.carry(ctx.manifest)
    suites_cfg = ctx.recipe.suites
    # The instruction-following and safety suites, before -> after, on every chat stage (llmpipe.eval.suites).
    suites = load_suites(suites_cfg, ctx.recipe.source) if ctx.spec.answers_chats and suites_cfg.score_stages else {}
    if not ctx.resumed:
        # Saved at once: a run killed after this point resumes with the same "before".
        ctx.manifest.before = {**(measure(trainer.model) if measure else {}),
                               **({"eval_loss": trainer.evaluate()["eval_loss"]} if evaluate_before else {})}
        if suites:
            ctx.manifest.before["suites"] = scores_before(trainer.model, tokenizer, suites_cfg, ctx.parent_dir)
        ctx.writer.save_manifest()
    result = _train(ctx, trainer, tokenizer, monitor)
    final_eval = last_eval(trainer, monitor)
    after = measure(trainer.model) if measure else {}
    ctx.manifest.evals = result.history
    before = dict(ctx.manifest.before)
    scored = None
    if suites:
        scored = {"before": before.pop("suites", None), "after": score_model(trainer.model, tokenizer, suites_cfg, suites=suites)}
        _say_suites(ctx.spec.name, scored)
    return Fitted(result, final_eval, before, after, monitor, trainer.model, scored)


def _say_suites(stage: str, scored: dict[str, Any]) -> None:
    before, after = scored.get("before") or {}, scored["after"]
    parts = []
    for suite, key, label in (("instructions", "prompt_accuracy", "instruction following"),
                              ("safety", "harmful_compliance_rate", "harmful compliance"),
                              ("safety", "over_refusal_rate", "over-refusal")):
        if after.get(suite):
            was = (before.get(suite) or {}).get(key)
            parts.append(f"{label} {'-' if was is None else f'{was:.2f}'} -> {after[suite][key]:.2f}")
    if parts:
        say(f"{stage:9s} suites: {'; '.join(parts)} ({after['seconds']:.0f} s)")


def _train(ctx: StageContext, trainer: Any, tokenizer: Any, monitor: Monitor) -> FitResult:
    """trainer.train() under the anomaly policy: `rollback` resumes from the last checkpoint with a lower
    learning rate; `stop`, or no checkpoint to go back to, raises TrainingDiverged with the last good
    checkpoint left in the work folder. Ctrl-C / SIGTERM save a checkpoint and raise Interrupted."""
    writer = ctx.writer
    resume, guard, policy = writer.resume_from, monitor.guard, ctx.recipe.monitor
    if resume is not None:
        say(f"{writer.stage:9s} resuming from {resume}")
    started = time.time()
    segment = {"from_step": int(resume.name.rsplit("-", 1)[-1]) if resume else 0, "to_step": None, "wall_seconds": None}
    ctx.manifest.segments.append(segment)

    def record() -> None:
        # At every checkpoint save: the record so far goes into the work folder's manifest, so that a
        # run killed after this checkpoint resumes with it (StageWriter carries it over).
        segment.update(to_step=trainer.state.global_step, wall_seconds=round(time.time() - started, 2))
        ctx.manifest.evals = monitor.history
        ctx.manifest.monitor = {"anomalies": guard.anomalies}
        if monitor.prober is not None:
            ctx.manifest.probes, ctx.manifest.samples = monitor.prober.records, monitor.prober.samples
        writer.save_manifest()

    monitor.at_checkpoint(record)
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
        if guard.pending == "rollback" and last_good is not None and guard.rollbacks < policy.max_rollbacks:
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
    segment.update(to_step=trainer.state.global_step, wall_seconds=round(wall, 2))
    if monitor.compiled:
        say(f"{writer.stage:9s} torch.compile took about {monitor.progress.compile_seconds():.1f} s of the fit's {wall:.0f} s")
    state = trainer.state
    history = monitor.history
    # The loss of the last logging window says where training ended; the trainer's own
    # `training_loss` averages over the whole run, early high losses included.
    logged = [h["loss"] for h in history if "loss" in h]
    loss = logged[-1] if logged else (output.training_loss if output is not None else None)
    ctx.manifest.parameters = parameter_counts(trainer.model)
    save_trained(trainer, writer, tokenizer)  # a LoRA model: adapter/ plus the merged model
    return FitResult(
        steps=state.global_step,
        # The trainer state's count is the whole stage's: a checkpoint restores it on resume.
        tokens=int(state.num_input_tokens_seen or 0),
        wall_seconds=wall,
        train_loss=loss,
        history=history,
        segment_tokens=int(state.num_input_tokens_seen or 0) - int(monitor.progress.tokens_at_start),
    )


def finish(ctx: StageContext, fitted: Fitted, tokenizer: Any, metric: dict[str, Any],
           heldout: list[tuple[str, str, list[dict[str, Any]]]], val_loss: float | None = None) -> Path:
    """Finish a trained stage: keep its protected sets, record the monitor's findings and the summary,
    run the regression gate against the parent (stages the registry marks gated), and swap the
    checkpoint into place.

    `metric` is the summary's headline {name, before, after}; `val_loss` defaults to the final
    evaluation's. A failed gate with action `stop` raises RegressionError after the swap: the
    checkpoint is kept (its manifest says what regressed) and the run stops before the next stage."""
    cfg, writer, manifest, monitor = ctx.cfg, ctx.writer, ctx.manifest, fitted.monitor
    model = fitted.model
    manifest.protected = protect(writer.work_dir, heldout, cfg.probes, cfg.max_length)
    manifest.monitor = monitor.manifest()
    if fitted.suites is not None:
        manifest.suites = fitted.suites
    manifest.verdict = {"thresholds": dataclasses.asdict(ctx.recipe.verdict)}
    if monitor.prober is not None:
        manifest.probes = monitor.prober.records
        manifest.samples = monitor.prober.samples
    gated = ctx.parent_dir is not None and ctx.spec.gated
    checked = run_gate(ctx.parent_dir, model, tokenizer, cfg.gate, cfg.batch_size) if gated else None
    if checked is not None:
        manifest.gate = checked
    val = fitted.final_eval.get("eval_loss") if val_loss is None else val_loss
    result = fitted.result
    # Training time over every segment (a killed one's up to its last checkpoint).
    fit_seconds = sum(seg.get("wall_seconds") or 0 for seg in manifest.segments)
    final = writer.finish({
        "steps": result.steps,
        "tokens": result.tokens,
        "wall_seconds": round(fit_seconds, 2),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "train_loss": None if result.train_loss is None else round(result.train_loss, 4),
        "val_loss": None if val is None else round(val, 4),
        "metric": metric,
    })
    if checked is not None and not checked["passed"]:
        if cfg.gate.action == "stop":
            raise regression_error(writer.stage, ctx.spec.section, final, checked)
        say(f"{writer.stage:9s} regressed against {checked['parent_stage']}, going on (gate.action={cfg.gate.action})")
    return final
