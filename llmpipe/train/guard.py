"""The NaN / loss-spike guard of every training stage: each optimizer step is checked before its update
is applied, and an anomalous step's update is dropped; then the recipe's policy (skip, stop, rollback)."""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

import torch
from transformers import TrainerCallback

from llmpipe.core.console import say
from llmpipe.core.errors import EXIT_CHECK_FAILED, UserError


class TrainingDiverged(UserError):
    """The loss went NaN/inf or spiked and the anomaly policy stopped the stage."""

    exit_code = EXIT_CHECK_FAILED


class AnomalyGuard(TrainerCallback):
    """NaN/inf and spike detection per optimizer step, before the update is applied.

    An anomalous step's update is always dropped (gradients zeroed, learning rate 0 for that step),
    so the weights and every checkpoint stay finite. Then the policy: `skip` goes on; `stop` ends
    the stage with the last good checkpoint kept; `rollback` resumes from the last checkpoint with
    the learning rate scaled down, dropping the offending step's batch when it comes round again.
    """

    def __init__(self, cfg: Any, stage: str, spikes: bool = True) -> None:
        self.cfg, self.stage, self.spikes = cfg, stage, spikes
        self.micro_losses: list[Any] = []
        self.grad_norm: Any = None
        self.recent: deque[float] = deque(maxlen=self.cfg.spike_window)
        self.skip_steps: set[int] = set()
        self.anomalies: list[dict[str, Any]] = []
        self.pending: str | None = None
        self.bad_step = 0
        self.rollbacks = 0
        self.lr_scale = 1.0

    def observe(self, loss: Any) -> None:
        """Keep a micro-batch's loss for the check at the next optimizer step."""
        self.micro_losses.append(loss.detach().float().reshape(()))

    def on_train_begin(self, args, state, control, lr_scheduler=None, optimizer=None, **kwargs):
        self.micro_losses = []
        if self.lr_scale != 1.0 and lr_scheduler is not None:
            inner = getattr(lr_scheduler, "scheduler", lr_scheduler)
            inner.base_lrs = [lr * self.lr_scale for lr in inner.base_lrs]
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_scale

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step + 1
        if not self.micro_losses:
            return
        loss = torch.stack(self.micro_losses).mean()
        # The trainer's own pre-clipping norm (see the _get_grad_norm wrapper below): no second
        # pass over every gradient.
        grad_norm = self.grad_norm
        if grad_norm is None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else 0.0
        grad_norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=loss.device)
        self.grad_norm = None
        self.micro_losses = []
        values = torch.stack([loss.to(grad_norm.device), (~torch.isfinite(grad_norm)).float()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process must take the same decision or the replicas drift apart.
            torch.distributed.all_reduce(values)
            values[0] /= torch.distributed.get_world_size()
        loss_value, bad_grads = values[0].item(), values[1].item() > 0
        reference = statistics.median(self.recent) if len(self.recent) >= min(10, self.cfg.spike_window) else None
        kind = None
        if bad_grads or not torch.isfinite(values[0]):
            kind = "nan"
        # A ratio to the median means nothing for losses that reach 0 or below (hinge, robust DPO).
        elif self.spikes and reference is not None and reference > 0 and loss_value > self.cfg.spike_factor * reference:
            kind = "spike"
        if kind is None and step not in self.skip_steps:
            self.recent.append(loss_value)
            return
        for group in optimizer.param_groups:
            group["lr"] = 0.0  # the scheduler sets it again after this step
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()  # a NaN gradient would poison Adam's moments even at lr 0
        if step in self.skip_steps:
            say(f"{self.stage:9s} step {step}: update dropped (the batch that diverged before)")
            return
        action = self.cfg.on_anomaly
        self.anomalies.append({"step": step, "kind": kind, "loss": loss_value, "reference": reference, "action": action})
        say(f"{self.stage:9s} step {step}: loss {loss_value:.4g} is {'not finite' if kind == 'nan' else 'a spike'}"
            + (f" (median of recent steps {reference:.4g})" if reference else "") + f"; update dropped, policy: {action}")
        if action == "skip":
            return
        self.pending, self.bad_step = action, step
        control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.pending is not None:
            # Nothing from the anomalous step is saved or evaluated.
            control.should_save = control.should_evaluate = False
            control.should_training_stop = True

    def prepare_rollback(self) -> None:
        """Before resuming from the last good checkpoint: skip the bad step's batch, lower the learning rate."""
        self.skip_steps.add(self.bad_step)
        self.rollbacks += 1
        self.lr_scale *= self.cfg.rollback_lr_factor
        self.pending = None


def attach_guard(trainer: Any, cfg: Any, stage: str, spikes: bool = True) -> AnomalyGuard:
    """An AnomalyGuard fed with every micro-batch's loss and the trainer's own pre-clipping gradient norm.

    `trainer.training_step` is wrapped because no callback sees the per-step loss before the optimizer
    applies it; `_get_grad_norm` (transformers 5.23-5.24) so that the guard needs no second pass over
    every gradient."""
    guard = AnomalyGuard(cfg, stage, spikes)
    original = trainer.training_step

    def training_step(*args: Any, **kwargs: Any) -> Any:
        loss = original(*args, **kwargs)
        guard.observe(loss)
        return loss

    trainer.training_step = training_step
    original_norm = getattr(trainer, "_get_grad_norm", None)
    if original_norm is None:  # another transformers version: the guard computes the norm itself
        return guard

    def get_grad_norm(*args: Any, **kwargs: Any) -> Any:
        guard.grad_norm = original_norm(*args, **kwargs)
        return guard.grad_norm

    trainer._get_grad_norm = get_grad_norm
    return guard


