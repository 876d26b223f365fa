"""The training monitor every stage attaches to its trainer: progress (a Rich bar on a terminal,
terse lines otherwise) with tokens/s and MFU, TensorBoard / W&B logging, probe suites and sample
generations every N steps, and the NaN / loss-spike guard.

These are TrainerCallbacks on HF's own loop. The guard also wraps `trainer.training_step` because no
callback sees the per-step loss before the optimizer applies it, and a NaN must be caught there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback

from llmpipe.core.console import say
from llmpipe.eval.metrics import chat_ids, generate_from_ids, text_ids
from llmpipe.eval.probes import score_suite
from llmpipe.train.checkpoints import checkpoint_callbacks
from llmpipe.train.flops import peak_flops
from llmpipe.train.guard import TrainingDiverged, attach_guard

__all__ = ["Monitor", "MonitorSetup", "ProbeRunner", "Progress", "TrainingDiverged", "attach_monitor"]


@dataclass
class MonitorSetup:
    """What the monitor of one stage needs to know."""

    stage: str
    total_steps: int
    flops_per_token: float | None = None
    bits_per_byte_factor: float | None = None
    probe_suites: dict[str, list[Any]] = field(default_factory=dict)
    probe_every: int = 0
    sample_prompts: list[str] = field(default_factory=list)
    chat: bool = False
    max_new_tokens: int = 24
    # Loss-spike detection (the NaN/inf guard is always on); off for losses that are not positive.
    spikes: bool = True


class Monitor:
    """The callbacks attached to one trainer and what they recorded, for the manifest."""

    def __init__(self, trainer: Any, setup: MonitorSetup, recipe: Any, tokenizer: Any, work_dir: Path) -> None:
        cfg = recipe.monitor
        self.setup = setup
        self.compiled = bool(trainer.args.torch_compile)
        self.peak, self.peak_source = peak_flops(trainer.args, cfg.peak_tflops)
        self.progress = Progress(setup, self.peak)
        self.guard = attach_guard(trainer, cfg, setup.stage, setup.spikes)
        self.prober = ProbeRunner(trainer, tokenizer, setup) if setup.probe_suites or setup.sample_prompts else None

        sealer, self.stopper = checkpoint_callbacks()
        callbacks = [self.progress, self.guard, sealer, self.stopper] + ([self.prober] if self.prober else [])
        trainer.remove_callback(PrinterCallback)
        if "tensorboard" in cfg.report_to:
            board = TensorBoardCallback()
            # Not under output_dir (the checkpoints folder, removed when the stage completes).
            board.logging_dir = str(work_dir / "tensorboard")
            callbacks.append(board)
        for callback in callbacks:
            trainer.add_callback(callback)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every log and evaluation of the fit, with step, tokens/s and MFU."""
        return self.progress.history

    def carry(self, manifest: Any) -> None:
        """Continue the record of an interrupted run, which the StageWriter carried into `manifest` up to
        the checkpoint resumed from: its entries go before this run's (a fresh run carries none)."""
        self.progress.history[:0] = manifest.evals
        self.guard.anomalies[:0] = (manifest.monitor or {}).get("anomalies") or []
        if self.prober is not None:
            self.prober.records[:0] = manifest.probes
            self.prober.samples[:0] = manifest.samples

    def at_checkpoint(self, callback: Callable[[], None]) -> None:
        """Call `callback()` at every checkpoint save, before the checkpoint is sealed (the progress
        callback is attached before the sealer): what it writes is on disk before there is a checkpoint
        a resumed run could start from."""
        self.progress.at_checkpoint = callback

    def manifest(self) -> dict[str, Any]:
        """The manifest's `monitor` entry."""
        rates = [h["mfu"] for h in self.history if h.get("mfu") is not None]
        return {
            "peak_flops": self.peak,
            "peak_source": self.peak_source,
            "mfu": round(sum(rates) / len(rates), 4) if rates else None,
            "anomalies": self.guard.anomalies,
            "rollbacks": self.guard.rollbacks,
            "compile_seconds": self.progress.compile_seconds() if self.compiled else None,
            "train_seconds": round(self.progress.train_seconds, 3),
        }


class Progress(TrainerCallback):
    """Log history with tokens/s and MFU over pure step time; a Rich bar or terse lines."""

    def __init__(self, setup: MonitorSetup, peak: float | None) -> None:
        self.setup, self.peak = setup, peak
        self.history: list[dict[str, Any]] = []
        self.step_seconds = 0.0
        self.step_started = 0.0
        self.tokens_at_log = 0
        self.seconds_at_log = 0.0
        self.tokens_at_start = 0
        self.step_times: list[float] = []
        # From the first step's start to the last step's end, with whatever ran between steps
        # (data loading, mid-run evaluations); not the set-up before nor the final eval/save.
        self.train_seconds = 0.0
        self.span: list[float] = []
        self.bar: Any = None
        self.at_checkpoint: Callable[[], None] | None = None

    def compile_seconds(self) -> float:
        """Time torch.compile added: what steps of over 3x the median step took beyond the median
        (the first step compiles; a new batch shape can recompile later)."""
        if not self.step_times:
            return 0.0
        median = sorted(self.step_times)[len(self.step_times) // 2]
        return round(sum(t - median for t in self.step_times if t > 3 * median), 2)

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_at_start = self.tokens_at_log = state.num_input_tokens_seen or 0
        self.seconds_at_log = self.step_seconds
        self.span = []
        if state.is_world_process_zero and sys.stderr.isatty() and self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.task = self.bar.add_task(self.setup.stage, total=self.setup.total_steps, completed=state.global_step, info="")
            self.bar.start()

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.perf_counter()
        self.span = self.span or [self.step_started]

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.perf_counter() - self.step_started)
        self.step_seconds += self.step_times[-1]
        self.span[1:] = [time.perf_counter()]
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if self.at_checkpoint is not None:
            self.at_checkpoint()

    def on_train_end(self, args, state, control, **kwargs):
        if len(self.span) == 2:
            self.train_seconds += self.span[1] - self.span[0]
        if self.bar is not None and state.global_step >= self.setup.total_steps:
            self.bar.stop()
            self.bar = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if self.setup.bits_per_byte_factor is not None and "eval_loss" in logs:
            logs["eval_bpb"] = round(logs["eval_loss"] * self.setup.bits_per_byte_factor, 4)
        if "loss" in logs:
            tokens = (state.num_input_tokens_seen or 0) - self.tokens_at_log
            seconds = self.step_seconds - self.seconds_at_log
            rate = tokens / seconds if seconds > 0 else 0.0
            self.tokens_at_log, self.seconds_at_log = state.num_input_tokens_seen or 0, self.step_seconds
            logs["tokens_per_second"] = round(rate, 1)
            world = max(args.world_size, 1)
            known = self.peak and self.setup.flops_per_token
            logs["mfu"] = round(rate * self.setup.flops_per_token / (self.peak * world), 4) if known else None
        self.history.append({"step": state.global_step, **logs})
        if not state.is_world_process_zero:
            return
        if "loss" in logs:
            remaining = (self.setup.total_steps - state.global_step) * self.step_seconds / max(state.global_step, 1)
            mfu = f" | mfu {logs['mfu']:.1%}" if logs.get("mfu") is not None else ""
            line = (f"step {state.global_step:>5}/{self.setup.total_steps} | loss {logs['loss']:.4f} | "
                    f"lr {logs.get('learning_rate', 0):.2e} | grad {logs.get('grad_norm', float('nan')):.2f} | "
                    f"{logs['tokens_per_second']:,.0f} tok/s{mfu}")
            if self.bar is not None:
                self.bar.update(self.task, info=line.split(" | ", 1)[1])
            say(f"{self.setup.stage:9s} {line} | eta {remaining:,.0f}s")
        elif "eval_loss" in logs:
            extra = "".join(
                f" | {k.removeprefix('eval_')} {v:.4f}" for k, v in logs.items()
                if (k.startswith("eval_rewards/") or k == "eval_bpb") and isinstance(v, float)
            )
            say(f"{self.setup.stage:9s} step {state.global_step:>5}/{self.setup.total_steps} | val loss {logs['eval_loss']:.4f}{extra}")


class ProbeRunner(TrainerCallback):
    """Probe suites and sample generations before training, every `probe_every` steps and at the end."""

    def __init__(self, trainer: Any, tokenizer: Any, setup: MonitorSetup) -> None:
        self.trainer, self.tokenizer, self.setup = trainer, tokenizer, setup
        self.records: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.done: set[int] = set()

    def run(self, step: int, model: Any, control: Any) -> None:
        """Score the suites and generate the samples at `step` (once per step), and log the scores."""
        if step in self.done:
            return
        self.done.add(step)
        logs, parts = {}, []
        for name, probes in self.setup.probe_suites.items():
            result = score_suite(model, self.tokenizer, probes)
            self.records.append({"step": step, "suite": name, "score": round(result["score"], 4), "n": result["n"]})
            logs[f"probe/{name}"] = result["score"]
            parts.append(f"{name} {result['score']:.3f}")
        if self.setup.sample_prompts:
            ids = [chat_ids(self.tokenizer, [{"role": "user", "content": p}]) if self.setup.chat else text_ids(self.tokenizer, p)
                   for p in self.setup.sample_prompts]
            replies = generate_from_ids(model, self.tokenizer, ids, self.setup.max_new_tokens)
            self.samples += [{"step": step, "prompt": p, "reply": r} for p, r in zip(self.setup.sample_prompts, replies)]
        if parts:
            say(f"{self.setup.stage:9s} step {step:>5}/{self.setup.total_steps} | probes: {', '.join(parts)}")
        if logs:
            # self.trainer.log clears should_log; the step's own loss log must still happen.
            should_log = control.should_log
            self.trainer.log(logs)
            control.should_log = should_log

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.run(0, model, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        last = state.global_step >= self.setup.total_steps
        if (self.setup.probe_every and state.global_step % self.setup.probe_every == 0) or last:
            if not control.should_training_stop or last:
                self.run(state.global_step, model, control)


def attach_monitor(trainer: Any, setup: MonitorSetup, recipe: Any, tokenizer: Any, work_dir: Path) -> Monitor:
    """Attach progress, logging, probes and the anomaly guard to `trainer`; returns the Monitor."""
    return Monitor(trainer, setup, recipe, tokenizer, work_dir)

