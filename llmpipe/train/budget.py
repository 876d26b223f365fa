"""Pretraining sized by a budget instead of a step count, and `model: auto`.

`pretrain.time_budget` (seconds of training on this machine), `pretrain.tokens` or
`pretrain.tokens_per_param` decide the number of steps; warmup, evaluation and checkpoint cadence follow
from it (unless the recipe gives them). A time budget is turned into steps by measuring, before training,
how long an optimiser step and an evaluation batch take on this machine with this model, batch and
precision; the plan (steps and why) goes into the manifest's `budget`, and a resumed stage takes it from
there instead of measuring again, so an interrupted run trains the same steps as an uninterrupted one.

`model: auto` picks the shape too. For each candidate shape (llmpipe.config.presets.AUTO_SHAPES) the
budget gives a token count D (a time budget through the candidate's measured speed); the stage takes the
candidate whose predicted loss is lowest under a scaling law: the user's own fit from `llmpipe scale`
(`pretrain.scaling_fit`), else the compute-optimal rule of Hoffmann et al. 2022 (Chinchilla), about 20
tokens per parameter, read as "the candidate whose D/N is nearest 20". Tokens beyond four passes over the
data count less (Muennighoff et al. 2023: up to ~4 epochs repeated tokens are worth nearly as much as new
ones, then quickly less), so a small corpus and a long budget move the choice to a larger model.

Written here: transformers' Trainer has max_steps and max_time, but max_time stops a run wherever it is,
mid-schedule, with the learning rate still high; a schedule needs its length before the first step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmpipe.config import TrainConfig
from llmpipe.config.presets import AUTO_SHAPES
from llmpipe.models import count_parameters
from llmpipe.train.optim import MuonWithAdamW, muon_parameters

# Hoffmann et al. 2022: compute-optimal training spends about 20 tokens per parameter.
CHINCHILLA_TOKENS_PER_PARAM = 20.0
# Muennighoff et al. 2023: repeating data up to ~4 epochs is about as good as new data; past that it fades.
FULL_VALUE_EPOCHS = 4.0
# A time budget that buys fewer steps than this gets a warning: on the 2 cores shared with other jobs the demo's
# 160 s fitted 1-51 steps where the quiet machine fits 219 (issue 18's own-data runs).
FEW_BUDGET_STEPS = 100
# Evaluations during a budgeted run (the eval cadence is steps / EVALUATIONS unless the recipe gives eval_every).
EVALUATIONS = 4
# Warmup as a share of a budgeted run's steps (unless the recipe gives warmup_steps), at least MIN_WARMUP.
WARMUP_SHARE, MIN_WARMUP = 0.02, 5
# A measurement runs WARM_STEPS untimed steps (the first ones allocate and are slower), then times single steps
# until it has at least TIMED_STEPS of them and MEASURE_SECONDS of time, and takes their median: four steps timed
# together were off by up to 19% on 2 CPU cores (a 120 s budget trained 100 s), the median of ~1.5 s by under 5%.
TIMED_STEPS, WARM_STEPS, MEASURE_SECONDS = 5, 3, 1.5
# The trainer's own work per step (callbacks, logging, data loading) over a bare loop's, measured on 2 CPU cores
# with 120 s budgets on tinyshakespeare: GPT-2 2 x 64 steps took 1.10-1.15x the bare step, llama 2 x 64 1.20x.
TRAINER_OVERHEAD = 1.15
# Share of a time budget that measuring candidate shapes may take before the largest ones are left out.
MEASURE_SHARE = 0.1
# The width the pretrain learning rate's default (2e-3) was tuned at (the tiny preset). A shape chosen by model:
# auto trains at lr x REFERENCE_WIDTH / width unless the recipe gives the rate: the hidden-layer rule of muP
# (Yang et al. 2022) for Adam-type updates. Measured on tinyshakespeare, 2 x 64, Muon + WSD, 120 s: 2e-3 2.334,
# 4e-3 2.326, 8e-3 (the rule's) 2.279 bits/byte.
REFERENCE_WIDTH = 256


@dataclass
class Speed:
    """Measured seconds of one optimiser step and of one evaluation batch."""

    step_seconds: float
    eval_batch_seconds: float


@dataclass
class Plan:
    """How a budget became a run: recorded as the manifest's `budget`."""

    kind: str  # time_budget, tokens or tokens_per_param
    value: float
    steps: int
    tokens_per_step: int
    warmup_steps: int
    eval_every: int
    save_every: int
    log_every: int
    learning_rate: float
    parameters: int = 0
    step_seconds: float | None = None
    eval_batch_seconds: float | None = None
    measure_seconds: float = 0.0
    shape: dict[str, Any] | None = None  # the chosen shape under model: auto
    candidates: list[dict[str, Any]] = field(default_factory=list)
    why: str = ""

    @property
    def tokens(self) -> int:
        """Training tokens the plan spends."""
        return self.steps * self.tokens_per_step

    def record(self) -> dict[str, Any]:
        """The manifest's `budget` value."""
        return {**dataclasses.asdict(self), "tokens": self.tokens}


def budget_kind(cfg: TrainConfig) -> str | None:
    """The budget the pretrain section gives (the recipe check allows at most one), or None."""
    for name in ("time_budget", "tokens", "tokens_per_param"):
        if getattr(cfg, name, 0):
            return name
    return None


def measure_speed(model: Any, blocks: Any, cfg: TrainConfig, bf16: bool, seconds: float = MEASURE_SECONDS) -> Speed:
    """Time optimiser steps and evaluation batches of a copy of `model` on training blocks, as the trainer
    will run them (batch, gradient accumulation, optimiser, bf16 autocast); the model itself is untouched."""
    work = copy.deepcopy(model).train()
    if cfg.optimizer == "muon":
        optimizer: torch.optim.Optimizer = MuonWithAdamW(*muon_parameters(work), lr=cfg.learning_rate,
                                                         weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(work.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    device = next(model.parameters()).device
    batch = torch.stack([torch.as_tensor(blocks[i % len(blocks)]["input_ids"]) for i in range(cfg.batch_size)]).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        for _ in range(cfg.grad_accum):
            with autocast:
                loss = work(input_ids=batch, labels=batch).loss / cfg.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(work.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def evaluate() -> None:
        with torch.no_grad(), autocast:
            work(input_ids=batch, labels=batch)

    def timed(fn: Callable[[], None], seconds: float) -> float:
        for _ in range(WARM_STEPS):
            fn()
        times: list[float] = []
        while len(times) < TIMED_STEPS or sum(times) < seconds:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    step_seconds = timed(step, seconds) * TRAINER_OVERHEAD
    work.eval()
    return Speed(step_seconds, timed(evaluate, seconds / 3))


def steps_in_time(seconds: float, speed: Speed, eval_batches: int) -> int:
    """Optimiser steps that fit in `seconds` of training with EVALUATIONS evaluations of `eval_batches` batches."""
    evaluations = EVALUATIONS * eval_batches * speed.eval_batch_seconds
    return max(1, int((seconds - evaluations) / speed.step_seconds))


def effective_tokens(tokens: float, unique_tokens: int) -> float:
    """Tokens discounted for repetition: full value up to FULL_VALUE_EPOCHS passes over the data, then each
    further pass worth less (an exponential fade, after Muennighoff et al. 2023's data-constrained law)."""
    limit = FULL_VALUE_EPOCHS * unique_tokens
    if tokens <= limit or unique_tokens <= 0:
        return tokens
    horizon = 15.0 * unique_tokens  # repeated tokens' value decays with a scale of ~15 epochs in their fit
    return limit + horizon * (1.0 - math.exp(-(tokens - limit) / horizon))


def predicted_loss(fit: dict[str, float] | None, parameters: int, tokens: float) -> float:
    """What a candidate is ranked by: the user's law L = E + A/N^alpha + B/D^beta where there is a fit, else the
    distance of D/N from the compute-optimal ratio (log scale; smaller is better)."""
    if fit:
        return fit["E"] + fit["A"] / parameters ** fit["alpha"] + fit["B"] / max(tokens, 1.0) ** fit["beta"]
    return abs(math.log(max(tokens, 1.0) / parameters / CHINCHILLA_TOKENS_PER_PARAM))


def cadence(cfg: TrainConfig, steps: int, given: tuple[str, ...], section: str) -> dict[str, int]:
    """Warmup, evaluation, checkpoint and logging steps for a budgeted run of `steps` steps; a key the
    recipe gives is kept."""
    derived = {
        "warmup_steps": min(max(MIN_WARMUP, round(WARMUP_SHARE * steps)), steps),
        "eval_every": max(1, math.ceil(steps / EVALUATIONS)),
        "save_every": max(1, math.ceil(steps / EVALUATIONS)),
        "log_every": max(1, min(cfg.log_every, steps // 20 or 1)),
    }
    return {key: getattr(cfg, key) if f"{section}.{key}" in given else value for key, value in derived.items()}


def plan_budget(cfg: TrainConfig, *, given: tuple[str, ...], section: str, model: Any | None,
                build: Callable[[dict[str, Any]], Any] | None, shape_for: Callable[[int, int, int], dict[str, Any]] | None,
                blocks: Any, eval_batches: int, bf16: bool, scaling_fit: dict[str, float] | None = None,
                processes: int = 1) -> Plan:
    """The plan of a budgeted pretraining run: `model` is the network when its shape is fixed; under
    `model: auto` it is None and `build(shape)` makes each candidate from `shape_for(layers, width, heads)`
    (the stage then builds the chosen `plan.shape` afresh, from its seed)."""
    kind = budget_kind(cfg)
    assert kind is not None
    value = float(getattr(cfg, kind))
    # Every process of a distributed launch trains its own batch in each step.
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.max_length * processes
    unique = len(blocks) * cfg.max_length
    started = time.perf_counter()
    chosen_shape, candidates = None, []
    if model is None:
        assert build is not None and shape_for is not None
        best = None
        for layers, width, heads in AUTO_SHAPES:
            shape = shape_for(layers, width, heads)
            candidate = build(shape)
            n = count_parameters(candidate)
            row: dict[str, Any] = {"layers": layers, "width": width, "heads": heads, "parameters": n}
            if kind == "time_budget":
                # A quick look at each candidate; the chosen one is measured again, longer.
                speed = measure_speed(candidate, blocks, cfg, bf16, seconds=MEASURE_SECONDS / 3)
                steps = steps_in_time(value, speed, eval_batches)
                row["step_seconds"] = round(speed.step_seconds, 5)
            else:
                steps = math.ceil(value / tokens_per_step)
            tokens = steps * tokens_per_step
            row.update(tokens=tokens, epochs=round(tokens / unique, 2),
                       score=round(predicted_loss(scaling_fit, n, effective_tokens(tokens, unique)), 4))
            candidates.append(row)
            if best is None or row["score"] < best[0]["score"]:
                best = (row, shape, candidate)
            spent = time.perf_counter() - started
            # Bigger candidates only get fewer tokens per parameter: stop once past the optimum by a wide margin,
            # or when measuring would eat into the budget.
            ratio = tokens / n
            if (not scaling_fit and ratio < CHINCHILLA_TOKENS_PER_PARAM / 8) or \
                    (kind == "time_budget" and spent > MEASURE_SHARE * value):
                break
            if scaling_fit and row is not best[0] and row["score"] > best[0]["score"] * 1.05:
                break
        assert best is not None
        row, chosen_shape, model = best
        rule = "the scaling fit's lowest predicted loss" if scaling_fit else \
            f"tokens per parameter nearest {CHINCHILLA_TOKENS_PER_PARAM:g} (Chinchilla)"
        why = (f"model: auto chose {row['layers']} x {row['width']} ({row['parameters'] / 1e6:.2f}M parameters) by "
               f"{rule}: {row['tokens'] / 1e6:.2f}M tokens, {row['tokens'] / row['parameters']:.1f} per parameter, "
               f"{row['epochs']:g} passes over {unique / 1e6:.2f}M training tokens")
    n = count_parameters(model)
    speed = None
    if kind == "time_budget":
        speed = measure_speed(model, blocks, cfg, bf16)
        steps = steps_in_time(value, speed, eval_batches)
        why_steps = (f"{value:g} s at {speed.step_seconds * 1000:.1f} ms a step (measured) and {EVALUATIONS} "
                     f"evaluations of {eval_batches} batches: {steps} steps")
    elif kind == "tokens":
        steps = math.ceil(value / tokens_per_step)
        why_steps = f"{value:,.0f} tokens at {tokens_per_step:,} a step: {steps} steps"
    else:
        steps = math.ceil(value * n / tokens_per_step)
        why_steps = f"{value:g} tokens per parameter x {n:,} parameters at {tokens_per_step:,} tokens a step: {steps} steps"
    learning_rate = cfg.learning_rate
    if f"{section}.max_steps" in given:
        why_steps += f" (in place of {section}.max_steps={cfg.max_steps})"
    if chosen_shape is None:
        why = why_steps
    else:
        why = f"{why}; {why_steps}"
        if f"{section}.learning_rate" not in given:
            learning_rate = cfg.learning_rate * REFERENCE_WIDTH / chosen_shape["width"]
            why += f"; learning rate {learning_rate:.3g} ({cfg.learning_rate:g} x {REFERENCE_WIDTH} / width {chosen_shape['width']})"
    times = cadence(cfg, steps, given, section)
    return Plan(kind=kind, value=value, steps=steps, tokens_per_step=tokens_per_step, warmup_steps=times["warmup_steps"],
                eval_every=times["eval_every"], save_every=times["save_every"], log_every=times["log_every"],
                learning_rate=learning_rate, parameters=n,
                step_seconds=None if speed is None else round(speed.step_seconds, 5),
                eval_batch_seconds=None if speed is None else round(speed.eval_batch_seconds, 5),
                measure_seconds=round(time.perf_counter() - started, 2), shape=chosen_shape, candidates=candidates,
                why=why)


def few_steps_warning(plan: Plan) -> str | None:
    """What to say when a time budget bought so few steps that the run will hardly train, else None."""
    if plan.kind != "time_budget" or plan.steps >= FEW_BUDGET_STEPS:
        return None
    return (f"only {plan.steps} steps fit in {plan.value:g} s on this machine now ({plan.step_seconds or 0:.2f} s a step); "
            "if other jobs share its cores, OMP_NUM_THREADS=1 or a quieter machine fits more, and pretrain.tokens fixes "
            "the amount of training whatever the machine's speed")


def read_plan(recorded: dict[str, Any]) -> Plan:
    """A Plan from the manifest's `budget` (a resumed stage keeps its first run's plan)."""
    names = {f.name for f in dataclasses.fields(Plan)}
    return Plan(**{key: value for key, value in recorded.items() if key in names})


def apply_plan(cfg: TrainConfig, plan: Plan) -> TrainConfig:
    """The section with the plan's steps and cadence in place of its own."""
    return dataclasses.replace(cfg, max_steps=plan.steps, warmup_steps=plan.warmup_steps, eval_every=plan.eval_every,
                               save_every=plan.save_every, log_every=plan.log_every, learning_rate=plan.learning_rate)
