"""Optimisers and learning-rate schedules beyond the trainer's AdamW + cosine.

`optimizer: muon` trains the hidden 2-D weights (attention and MLP matrices) with Muon
(`torch.optim.Muon`, torch >= 2.9: momentum orthogonalised by Newton-Schulz iterations) and everything
else (embeddings, the output head, norms, biases) with AdamW, as modded-nanogpt and nanochat do: Muon is
defined for matrices only, and on the embedding table it is measured worse by both. `schedule: wsd` is
warmup-stable-decay with a linear decay to zero over the last `decay_fraction` of the steps (transformers'
own `warmup_stable_decay` scheduler).

torch has Muon and AdamW but no optimiser that runs both on one model, and the HF trainers take one
optimiser (one LR scheduler, one `optimizer.pt` in each checkpoint): `MuonWithAdamW` is that one, written
here. Its parameter groups are the inner optimisers' own group dicts, so the scheduler's learning rate
reaches both, and its state dict holds both inner state dicts, so resume restores both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmpipe.config import TrainConfig
from llmpipe.core.console import say
from llmpipe.core.errors import UserError

# Muon's update scaled to AdamW's typical RMS (0.2 * sqrt(max(rows, cols)), as in Moonshot's Moonlight), so one
# learning rate serves both halves and a recipe tuned for AdamW is a sensible start.
MUON_LR_ADJUST = "match_rms_adamw"


def muon_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices for Muon, everything else for AdamW), trainable parameters only.

    Embedding tables (token and position) and the output head stay with AdamW: each row is a separate
    lookup, not a linear map whose singular values Muon equalises."""
    special = {id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        special.update(id(p) for p in head.parameters())
    matrices, rest = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (matrices if param.ndim == 2 and id(param) not in special else rest).append(param)
    return matrices, rest


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on `matrices`, AdamW on `rest` (weight decay on its 2-D tensors only), as one optimiser."""

    def __init__(self, matrices: list[nn.Parameter], rest: list[nn.Parameter], lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.95) -> None:
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     adjust_lr_fn=MUON_LR_ADJUST) if matrices else None
        decay = [p for p in rest if p.ndim >= 2]
        no_decay = [p for p in rest if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)
        inner = [opt for opt in (self.muon, self.adamw) if opt is not None]
        # The very group dicts of the inner optimisers: a scheduler writing group["lr"] sets theirs.
        super().__init__([group for opt in inner for group in opt.param_groups], {})
        self._inner = inner

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step of both optimisers (a closure, if given, is evaluated once)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self._inner:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter of both optimisers."""
        for opt in self._inner:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Both inner optimisers' state dicts (what a checkpoint's optimizer.pt holds)."""
        return {"muon": self.muon.state_dict() if self.muon is not None else None, "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore both inner optimisers from `state_dict()`'s output."""
        if self.muon is not None:
            self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # torch's load_state_dict gives each inner optimiser new group dicts: link them again, or the scheduler
        # of a resumed run would set learning rates that no optimiser reads (found by tests/test_budget.py).
        self.param_groups = [group for opt in self._inner for group in opt.param_groups]


def _muon_factory(cfg: TrainConfig) -> Any:
    """transformers' optimiser-factory form: a callable whose result builds the optimiser from the model the
    trainer prepared (after any wrapping), so the optimiser holds the parameters that train."""

    def build(model: nn.Module, **_: Any) -> MuonWithAdamW:
        matrices, rest = muon_parameters(model)
        return MuonWithAdamW(matrices, rest, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    return lambda: build


def use_optimizer(trainer: Any, cfg: TrainConfig, key: str, explicit: bool) -> None:
    """Make `trainer` build the section's optimiser (AdamW, the trainer's own, needs nothing).

    Under FSDP or DeepSpeed the sharded checkpoint code (torch.distributed.checkpoint) reads an optimiser's
    state dict in torch's one-optimiser layout, which MuonWithAdamW's two inner state dicts are not (measured:
    KeyError 'state' at the first save): there the default falls back to AdamW, and an explicit muon is refused."""
    if cfg.optimizer != "muon":
        return
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        if explicit:
            raise UserError("muon cannot be checkpointed under FSDP or DeepSpeed (their sharded optimiser state "
                            "takes one torch optimiser)", field=key, hint=f"set {key}=adamw for this launch")
        say(f"{key.split('.')[0]:9s} optimizer muon is not sharded by FSDP/DeepSpeed: training with AdamW")
        return
    # Read by Trainer.create_optimizer, which every TRL trainer inherits.
    trainer.optimizer_cls_and_kwargs = (_muon_factory(cfg), {})


def schedule_arguments(cfg: TrainConfig, max_steps: int) -> dict[str, Any]:
    """TrainingArguments fields of the section's learning-rate schedule over `max_steps` steps."""
    warmup = min(cfg.warmup_steps, max_steps)
    if cfg.schedule == "wsd":
        decay = max(1, round(cfg.decay_fraction * max_steps))
        return {"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": min(warmup, max_steps - decay),
                "lr_scheduler_kwargs": {"num_decay_steps": decay, "decay_type": "linear", "min_lr_ratio": 0.0}}
    return {"lr_scheduler_type": "cosine_with_min_lr", "warmup_steps": warmup,
            "lr_scheduler_kwargs": {"min_lr_rate": cfg.min_lr_ratio}}
