"""`llmpipe scale RECIPE`: scaling-law checks on the recipe's own pretraining data.

An IsoFLOP sweep (Hoffmann et al. 2022): at each of a few compute budgets, several model sizes each
pretrained for exactly that compute; per budget, the loss-optimal size (a parabola in log N); over all
points, the law L(N, D) = E + A / N^alpha + B / D^beta (llmpipe/eval/scaling.py). The law then predicts
the loss of one larger run at its compute-optimal size, which is trained and compared with the prediction.

Every point is an ordinary pretrain stage in runs/<run>/scale/<point>/pretrain (manifest, resume: a killed
sweep reruns only the unfinished points), all on the run's tokenizer. The sweep sizes itself to a wall-time
target: the speed of each candidate shape is measured first, then the smallest budget is chosen so that the
sweep and the check run together take about `minutes`. The result is runs/<run>/scale/scale.json, which the
report shows and `pretrain.scaling_fit` feeds to `model: auto`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmpipe.config import ModelConfig, Recipe
from llmpipe.config.presets import AUTO, AUTO_SHAPES, auto_shape
from llmpipe.core.console import say
from llmpipe.core.errors import UserError
from llmpipe.core.files import write_json_atomic
from llmpipe.data.blocks import token_blocks
from llmpipe.data.pipeline import heldout_texts, stream_text
from llmpipe.eval.scaling import Point, fit_law, isoflop_minimum, law, optimal_allocation, power_law
from llmpipe.models import build_config, count_parameters, flops_per_token
from llmpipe.pipeline import train_section, train_stage
from llmpipe.registry import STAGES, TOKENIZER
from llmpipe.runs import read_manifest
from llmpipe.train.args import placement
from llmpipe.train.budget import REFERENCE_WIDTH, cadence, measure_speed

SCALE_DIR = "scale"
RESULT = "scale.json"
PLAN = "plan.json"
FIGURE = "scale.png"
# Three budgets, each twice the last, four sizes at each; the check run spends twice the largest budget.
BUDGETS, BUDGET_RATIO, SIZES, CHECK_RATIO = 3, 2.0, 4, 2.0
# A point shorter than this many steps says more about warmup and the first steep fall of the loss than about its
# size: such sizes are left out. On the embedded data the three points under 100 steps (47-90) lay off the law the
# others follow: with them its RMS error was 5.2% and the check run landed 18.5% from its prediction, without them
# 1.7% and 7.5% (40 steps before).
MIN_STEPS = 100
# sweep_batch halves the batch until the smallest check shape makes this many steps at the first budget: the
# embedded data's 0.15M tokens then train at batch 2 (more steps per token would double the sweep's wall time).
SHORT_RUN_STEPS = 80
# Passes over the training data a point (or the check run) may make: repeated tokens are nearly as good as new up
# to ~4 epochs (Muennighoff et al. 2023), the regime the law describes.
MAX_EPOCHS = 4
# Seconds a point costs besides its steps (building the model, the evaluations before and after, saving),
# measured on the embedded data on 2 CPU cores: 3-5 s.
POINT_OVERHEAD = 4.0
# Shapes below model: auto's smallest (AUTO_SHAPES[0], 2 x 32) that the sweep may also try, two layers as there and
# one head each. On a small corpus the compute-optimal size lies below 2 x 32 (Chinchilla's sqrt(C / 120) is 19-37k
# parameters at the embedded data's budgets, 2 x 32 has 57k): without these, every budget's best point was its
# smallest size and the law, fitted without an optimum between the sizes, missed its check run by 20%.
SUB_SHAPES: tuple[tuple[int, int, int], ...] = ((2, 16, 1), (2, 24, 1))
SWEEP_SHAPES = SUB_SHAPES + AUTO_SHAPES
# The pretrain stage (the one stage that builds a model from the recipe), found in the registry.
PRETRAIN = next(spec for spec in STAGES.values() if spec.builds_model)


def point_recipe(recipe: Recipe, shape: tuple[int, int, int], steps: int) -> Recipe:
    """The recipe of one sweep point: the shape as a `model: auto` section with its size named, `steps` steps, no
    budget, the learning rate model: auto would use, one evaluation at the end, no probes (the loss is what the
    sweep reads)."""
    layers, width, heads = shape
    model = ModelConfig(preset=AUTO, family=recipe.model.family, layers=layers, width=width, heads=heads,
                        context=recipe.model.context, tie_embeddings=recipe.model.tie_embeddings)
    cfg = recipe.pretrain
    times = cadence(cfg, steps, (), PRETRAIN.section)
    # Each size at its own learning rate, as model: auto trains it (lr ~ 1/width), unless the recipe gives one.
    rate = cfg.learning_rate if f"{PRETRAIN.section}.learning_rate" in recipe.given else cfg.learning_rate * REFERENCE_WIDTH / width
    pretrain = dataclasses.replace(cfg, max_steps=steps, time_budget=0.0, tokens=0, tokens_per_param=0.0, probes=[],
                                   learning_rate=rate,
                                   sample_prompts=[], warmup_steps=times["warmup_steps"], eval_every=steps,
                                   save_every=max(1, steps // 2), log_every=times["log_every"])
    return dataclasses.replace(recipe, model=model, pretrain=pretrain)


def measure_shapes(recipe: Recipe, tokenizer: Any, limit_seconds: float) -> list[dict[str, Any]]:
    """Parameters, FLOPs per token and measured step time of each candidate shape, smallest first, until one
    step takes more than `limit_seconds`."""
    cfg = recipe.pretrain
    bf16 = placement(recipe)["bf16"]
    generator = torch.Generator().manual_seed(recipe.seed)
    blocks = [{"input_ids": torch.randint(0, len(tokenizer), (cfg.max_length,), generator=generator)} for _ in range(cfg.batch_size)]
    shapes = []
    for layers, width, heads in SWEEP_SHAPES:
        model = AutoModelForCausalLM.from_config(build_config(auto_shape(recipe.model, layers, width, heads), tokenizer))
        speed = measure_speed(model, blocks, cfg, bf16, seconds=0.5)
        shapes.append({"shape": (layers, width, heads), "parameters": count_parameters(model),
                       "flops_per_token": flops_per_token(model, cfg.max_length), "step_seconds": speed.step_seconds})
        if speed.step_seconds > limit_seconds:
            break
    return shapes


def layout(shapes: list[dict[str, Any]], first_budget: float, tokens_per_step: int,
           max_tokens: float = math.inf) -> list[tuple[float, list[dict[str, Any]]]]:
    """The sweep's budgets and, for each, the SIZES shapes around its Chinchilla-optimal size (N ~ sqrt(C / 120),
    20 tokens per parameter) with at least MIN_STEPS steps and at most `max_tokens` training tokens (a small shape
    at a large budget would pass over the data more than MAX_EPOCHS times), each with its step count."""
    sweep = []
    for k in range(BUDGETS):
        flops = first_budget * BUDGET_RATIO ** k
        usable = [dict(s, steps=round(flops / (s["flops_per_token"] * tokens_per_step))) for s in shapes]
        usable = [s for s in usable if s["steps"] >= MIN_STEPS and s["steps"] * tokens_per_step <= max_tokens * 1.0001]
        if not usable:
            continue
        target = math.log(math.sqrt(flops / 120.0))
        centre = min(range(len(usable)), key=lambda i: abs(math.log(usable[i]["parameters"]) - target))
        start = max(0, min(centre - SIZES // 2 + 1, len(usable) - SIZES))
        sweep.append((flops, usable[start:start + SIZES]))
    return sweep


def estimated_seconds(sweep: list[tuple[float, list[dict[str, Any]]]], check_flops: float, shapes: list[dict[str, Any]],
                      tokens_per_step: int) -> float:
    """Wall seconds of a sweep plus its check run (at the fastest shape's cost per FLOP as a stand-in)."""
    total = sum(s["steps"] * s["step_seconds"] + POINT_OVERHEAD for _, points in sweep for s in points)
    per_flop = min(s["step_seconds"] / (s["flops_per_token"] * tokens_per_step) for s in shapes)
    return total + check_flops * per_flop + POINT_OVERHEAD


def check_shapes(shapes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shapes a check run may take: model: auto's (AUTO_SHAPES), whose sizes the law is meant to choose among;
    the smaller SUB_SHAPES only help the sweep bracket its optima."""
    return [s for s in shapes if tuple(s["shape"]) in AUTO_SHAPES] or shapes


def data_limit(shapes: list[dict[str, Any]], max_tokens: float) -> float:
    """The largest first budget whose check run (the sweep's largest compute) keeps every shape it may take
    (check_shapes) within `max_tokens` training tokens; sweep points over it are left out (layout). Past ~4
    passes over the data, repeated tokens are worth less and small models start to overfit, which the law
    L(N, D) does not describe (on the embedded data, 24 passes made the held-out loss rise with compute and
    the check run land 35% from its prediction)."""
    smallest = min(s["flops_per_token"] for s in check_shapes(shapes))
    return max_tokens * smallest / (BUDGET_RATIO ** (BUDGETS - 1) * CHECK_RATIO)


def plan_sweep(shapes: list[dict[str, Any]], seconds: float, tokens_per_step: int,
               max_tokens: float = math.inf) -> list[tuple[float, list[dict[str, Any]]]]:
    """The sweep whose estimated wall time, check run included, is nearest `seconds` (bisection on the first budget),
    or the largest the data allows (`data_limit`) when that is smaller."""
    low, high = 1e5, min(1e20, data_limit(shapes, max_tokens))
    for _ in range(60):
        middle = math.sqrt(low * high)
        sweep = layout(shapes, middle, tokens_per_step, max_tokens)
        check = middle * BUDGET_RATIO ** (BUDGETS - 1) * CHECK_RATIO
        if sweep and estimated_seconds(sweep, check, shapes, tokens_per_step) > seconds:
            high = middle
        else:
            low = middle
    return layout(shapes, low, tokens_per_step, max_tokens)


def sweep_batch(shapes: list[dict[str, Any]], batch_size: int, max_length: int, max_tokens: float) -> int:
    """The batch of the sweep's points: the recipe's, halved while the smallest check shape at the data-limited
    first budget would train fewer than SHORT_RUN_STEPS steps (a small corpus makes short runs; more, smaller steps keep
    them past their warmup)."""
    first = data_limit(shapes, max_tokens)
    smallest = min(s["flops_per_token"] for s in check_shapes(shapes))
    while batch_size > 1 and first / (smallest * batch_size * max_length) < SHORT_RUN_STEPS:
        batch_size //= 2
    return batch_size


# A law whose relative RMS error over its own points is above this describes them too loosely to extrapolate from.
LOOSE_FIT = 0.03


def cautions(law_fit: dict[str, float], budgets: list[dict[str, Any]], check_error: float | None = None) -> list[str]:
    """What makes this sweep's law untrustworthy, one sentence each (empty when nothing does): a loose fit, no
    budget with its best size between the sizes tried (the optimum was extrapolated), a check run over 5% off."""
    notes = []
    if law_fit["rmse_relative"] > LOOSE_FIT:
        notes.append(f"the law fits its own points only to {law_fit['rmse_relative']:.1%} RMS: the corpus may be too "
                     "small or the points too short for a law")
    if budgets and all("note" in b for b in budgets):
        notes.append("no budget had its best size between the sizes tried: the optimum lies outside them")
    if check_error is not None and check_error > 0.05:
        notes.append(f"the check run landed {check_error:.0%} from its prediction: do not size a run with this law")
    return notes


def _train_point(recipe: Recipe, folder: Path, tokenizer_dir: Path, shape: tuple[int, int, int], steps: int,
                 restart: bool) -> dict[str, Any]:
    """Train (or find finished) one point; its size, tokens, compute and held-out loss."""
    stage_dir = train_stage(PRETRAIN, point_recipe(recipe, shape, steps), folder, parent=tokenizer_dir, restart=restart)
    manifest = read_manifest(stage_dir)
    assert manifest is not None
    metrics, summary = manifest.metrics, manifest.summary or {}
    return {"point": folder.name, "layers": shape[0], "width": shape[1], "heads": shape[2],
            "parameters": metrics["parameters"], "tokens": summary["tokens"], "steps": summary["steps"],
            "flops": metrics["flops_per_token"] * summary["tokens"], "loss": metrics["validation_loss"],
            "bpb": metrics["validation_bpb"], "seconds": summary.get("wall_seconds")}


def run_scale(recipe: Recipe, run_dir: Path, minutes: float = 15.0, restart: bool = False) -> dict[str, Any]:
    """The whole sweep, the fits and the check run; writes and returns runs/<run>/scale/scale.json's content."""
    if recipe.base.source:
        raise UserError("scale sweeps models pretrained from scratch; this recipe starts from a base model",
                        file=recipe.source, field="base.source", hint="run it with a recipe without base")
    tokenizer_dir = train_section(TOKENIZER, recipe, run_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = run_dir / SCALE_DIR
    # The corpus' size bounds the sweep (data_limit): its training tokens, tokenized (and cached) as pretraining does.
    references = heldout_texts(recipe) if recipe.pretrain.cleaning.decontaminate else []
    blocks, _ = token_blocks(recipe.pretrain, tokenizer, tokenizer_dir, stream_text(recipe.pretrain, references), references)
    unique = len(blocks) * recipe.pretrain.max_length
    max_tokens = MAX_EPOCHS * unique
    seconds = minutes * 60.0
    # The plan is measured once and kept: a rerun (after a kill) must ask for the same points to find them finished.
    plan_path = out / PLAN
    out.mkdir(parents=True, exist_ok=True)
    if plan_path.is_file() and not restart:
        kept = json.loads(plan_path.read_text(encoding="utf-8"))
        shapes = [{**s, "shape": tuple(s["shape"])} for s in kept["shapes"]]
        sweep = [(flops, [{**s, "shape": tuple(s["shape"])} for s in chosen]) for flops, chosen in kept["sweep"]]
        say(f"scale: the sweep planned in {plan_path} is kept (--restart plans it again)")
        batch = kept.get("batch_size", recipe.pretrain.batch_size)
    else:
        shapes = measure_shapes(recipe, tokenizer, limit_seconds=seconds / 400)
        batch = sweep_batch(shapes, recipe.pretrain.batch_size, recipe.pretrain.max_length, max_tokens)
        if batch != recipe.pretrain.batch_size:  # step times scale about with the batch at these sizes
            shapes = [{**s, "step_seconds": s["step_seconds"] * batch / recipe.pretrain.batch_size} for s in shapes]
        sweep = plan_sweep(shapes, seconds, batch * recipe.pretrain.grad_accum * recipe.pretrain.max_length, max_tokens)
        write_json_atomic(plan_path, {"minutes": minutes, "batch_size": batch, "unique_tokens": unique,
                                      "shapes": [{**s, "shape": list(s["shape"])} for s in shapes],
                                      "sweep": [[flops, [{**s, "shape": list(s["shape"])} for s in chosen]]
                                                for flops, chosen in sweep]})
    recipe = dataclasses.replace(recipe, pretrain=dataclasses.replace(recipe.pretrain, batch_size=batch))
    cfg = recipe.pretrain
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.max_length
    if len(sweep) < 2 or sum(len(p) for _, p in sweep) < 6:
        raise UserError(f"{minutes:g} minutes fit too few sweep points on this machine", field="--minutes",
                        hint="give the sweep more minutes")
    say(f"scale: {sum(len(p) for _, p in sweep)} points at {len(sweep)} budgets "
        f"({', '.join(f'{c:.2g}' for c, _ in sweep)} FLOPs), then a check run; about {minutes:g} min")
    points = []
    for flops, chosen in sweep:
        for s in chosen:
            layers, width, _ = s["shape"]
            name = f"c{flops:.2g}-{layers}x{width}".replace("+", "")
            points.append({**_train_point(recipe, out / name, tokenizer_dir, s["shape"], s["steps"], restart), "budget": flops})
    fitted = [Point(p["parameters"], p["tokens"], p["flops"], p["loss"]) for p in points]
    law_fit = fit_law(fitted)
    budgets = []
    for flops, _ in sweep:
        group = [Point(p["parameters"], p["tokens"], p["flops"], p["loss"]) for p in points if p["budget"] == flops]
        budgets.append({"budget": flops, **isoflop_minimum(group)})
    optima = [b for b in budgets if "note" not in b] or budgets
    trend = {}
    if len(optima) >= 2:
        trend = {"parameters": power_law([b["flops"] for b in optima], [b["optimal_parameters"] for b in optima]),
                 "tokens": power_law([b["flops"] for b in optima], [b["flops"] / 6 / b["optimal_parameters"] for b in optima])}
    check_flops = sweep[-1][0] * CHECK_RATIO
    n_opt, d_opt = optimal_allocation(law_fit, check_flops)
    # The shape nearest the law's optimum among those the check budget keeps within the data (data_limit).
    allowed = [s for s in check_shapes(shapes) if check_flops / s["flops_per_token"] <= max_tokens * 1.0001] or check_shapes(shapes)
    nearest = min(allowed, key=lambda s: abs(math.log(s["parameters"]) - math.log(n_opt)))
    steps = max(MIN_STEPS, round(check_flops / (nearest["flops_per_token"] * tokens_per_step)))
    predicted = law(law_fit, nearest["parameters"], steps * tokens_per_step)
    layers, width, _ = nearest["shape"]
    say(f"scale: the law predicts {predicted:.4f} nats/token for {layers} x {width} ({nearest['parameters'] / 1e6:.2f}M "
        f"parameters) on {steps * tokens_per_step / 1e6:.2f}M tokens; training it to check")
    check = _train_point(recipe, out / f"check-{layers}x{width}", tokenizer_dir, nearest["shape"], steps, restart)
    error = abs(predicted - check["loss"]) / check["loss"]
    result = {
        "data": list(cfg.train_files), "tokens_per_step": tokens_per_step, "minutes": minutes,
        "unique_tokens": unique, "max_epochs": MAX_EPOCHS, "batch_size": cfg.batch_size,
        "shapes": [{**s, "shape": list(s["shape"])} for s in shapes], "points": points, "budgets": budgets,
        "law": law_fit, "optimal_trend": trend,
        "check": {**check, "budget": check_flops, "optimal_parameters": n_opt, "optimal_tokens": d_opt,
                  "predicted_loss": predicted, "relative_error": error},
        "cautions": cautions(law_fit, budgets, error),
    }
    write_json_atomic(out / RESULT, result)
    say(f"scale: L(N, D) = {law_fit['E']:.3f} + {law_fit['A']:.3g} / N^{law_fit['alpha']:.3f} + "
        f"{law_fit['B']:.3g} / D^{law_fit['beta']:.3f}; check run {check['loss']:.4f} against {predicted:.4f} predicted "
        f"({error:.1%} off); {out / RESULT}")
    for note in result["cautions"]:
        say(f"scale: caution: {note}")
    return result
