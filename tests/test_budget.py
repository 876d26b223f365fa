"""Pretraining sized by a budget (llmpipe/train/budget.py), Muon + AdamW and the WSD schedule
(llmpipe/train/optim.py): unit tests of the logic, and the pretrain stage through the CLI."""

from __future__ import annotations

import copy
import signal
from pathlib import Path

import pytest
import torch
from conftest import MICRO, invoke, read_manifest
from test_resume import _run_until_checkpoint

from llmpipe.config import ModelConfig, load_recipe
from llmpipe.config.presets import AUTO, auto_shape
from llmpipe.config.schema import PretrainConfig
from llmpipe.core.errors import UserError
from llmpipe.train.budget import (
    CHINCHILLA_TOKENS_PER_PARAM,
    FEW_BUDGET_STEPS,
    FULL_VALUE_EPOCHS,
    Speed,
    cadence,
    effective_tokens,
    few_steps_warning,
    predicted_loss,
    read_plan,
    steps_in_time,
)
from llmpipe.train.optim import MuonWithAdamW, muon_parameters, schedule_arguments

QUICK = ["precision=fp32", "device=cpu", "pretrain.probes=[]", "pretrain.sample_prompts=[]"]


def _gpt2(width: int = 32):
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=97, n_positions=16, n_embd=width, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return AutoModelForCausalLM.from_config(config)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = _gpt2()
    matrices, rest = muon_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert matrices and all(p.ndim == 2 for p in matrices)
    # Token and position tables (the head is tied to wte) and every 1-D norm / bias go to AdamW.
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= {names[id(p)] for p in rest}
    assert not any("wte" in names[id(p)] or "wpe" in names[id(p)] for p in matrices)
    assert all(p.ndim == 1 for p in rest if names[id(p)] not in ("transformer.wte.weight", "transformer.wpe.weight"))
    assert len(matrices) + len(rest) == len(list(model.parameters()))


def _steps(model, optimizer, batch, n):
    for _ in range(n):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_muon_with_adamw_resumes_from_its_state_dict_and_follows_the_scheduler():
    torch.manual_seed(0)
    batch = torch.randint(0, 97, (4, 16))
    model = _gpt2()
    optimizer = MuonWithAdamW(*muon_parameters(model), lr=1e-2, weight_decay=0.1)
    _steps(model, optimizer, batch, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    saved = copy.deepcopy(optimizer.state_dict())  # as a checkpoint saves it: the live state moves on
    assert set(saved) == {"muon", "adamw"} and saved["muon"]["state"] and saved["adamw"]["state"]
    _steps(model, optimizer, batch, 2)
    straight = model.state_dict()

    again = _gpt2()
    again.load_state_dict(state)
    resumed = MuonWithAdamW(*muon_parameters(again), lr=1e-2, weight_decay=0.1)
    resumed.load_state_dict(saved)
    _steps(again, resumed, batch, 2)
    for key, value in straight.items():
        assert torch.equal(value, again.state_dict()[key]), key
    # A scheduler's learning rate reaches both inner optimisers (their very group dicts).
    torch.optim.lr_scheduler.LambdaLR(resumed, lambda step: 0.5)  # sets every group's lr to 0.5 x its initial one
    assert {g["lr"] for g in resumed.muon.param_groups} == {g["lr"] for g in resumed.adamw.param_groups} == {5e-3}


def test_wsd_schedule_is_flat_then_decays_linearly_to_zero():
    from transformers.optimization import get_scheduler

    cfg = PretrainConfig(schedule="wsd", warmup_steps=10, decay_fraction=0.2, learning_rate=1e-3)
    args = schedule_arguments(cfg, 100)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = get_scheduler(args["lr_scheduler_type"], optimizer, num_warmup_steps=args["warmup_steps"],
                              num_training_steps=100, scheduler_specific_kwargs=args["lr_scheduler_kwargs"])
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[5] < 1e-3 and rates[10:80] == [pytest.approx(1e-3)] * 70
    assert rates[90] == pytest.approx(0.5e-3, rel=0.01) and optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    cosine = schedule_arguments(PretrainConfig(schedule="cosine"), 100)
    assert cosine["lr_scheduler_type"] == "cosine_with_min_lr"


def test_steps_and_cadence_follow_the_budget():
    speed = Speed(step_seconds=0.1, eval_batch_seconds=0.05)
    # 60 s less 4 evaluations of 10 batches (2 s) at 0.1 s a step.
    assert steps_in_time(60, speed, 10) == 580
    cfg = PretrainConfig()
    times = cadence(cfg, 580, (), "pretrain")
    assert times == {"warmup_steps": 12, "eval_every": 145, "save_every": 145, "log_every": 10}
    # A key the recipe gives is kept.
    assert cadence(cfg, 580, ("pretrain.eval_every",), "pretrain")["eval_every"] == cfg.eval_every


def test_repeated_tokens_count_less_after_four_epochs():
    unique = 1000
    assert effective_tokens(3000, unique) == 3000
    assert effective_tokens(FULL_VALUE_EPOCHS * unique, unique) == FULL_VALUE_EPOCHS * unique
    more = effective_tokens(20 * unique, unique)
    assert FULL_VALUE_EPOCHS * unique < more < 20 * unique


def test_candidates_rank_by_chinchilla_ratio_or_by_the_users_law():
    n = 100_000
    assert predicted_loss(None, n, CHINCHILLA_TOKENS_PER_PARAM * n) == pytest.approx(0.0)
    assert predicted_loss(None, n, 40 * n) == pytest.approx(predicted_loss(None, n, 10 * n))
    fit = {"E": 1.0, "A": 10.0, "alpha": 0.5, "B": 10.0, "beta": 0.5}
    assert predicted_loss(fit, 100, 10_000) == pytest.approx(1.0 + 1.0 + 0.1)


def test_auto_shape_records_no_size_until_chosen():
    section = ModelConfig(preset=AUTO, family="llama")
    assert section.resolved()["layers"] == 0
    shape = auto_shape(section, 4, 128, 4)
    assert (shape["layers"], shape["width"], shape["heads"], shape["kv_heads"]) == (4, 128, 4, 2)
    assert shape["intermediate"] == 336  # 8/3 x 128, to a multiple of 16


@pytest.mark.parametrize("overrides, field", [
    (["pretrain.time_budget=60", "pretrain.tokens=1000"], "pretrain.tokens"),
    (["model=auto"], "model.preset"),
    (["model=auto", "pretrain.tokens=1000", "model.layers=4"], "model.layers"),
])
def test_budget_settings_that_do_not_fit_together_are_refused(overrides, field):
    with pytest.raises(UserError) as caught:
        load_recipe(MICRO, overrides)
    assert caught.value.field == field


def test_a_token_budget_sets_the_steps_and_is_recorded(micro_run: Path, tmp_path: Path):
    # micro: 4 x 64 tokens a step; 2,600 tokens -> 11 steps.
    result = invoke("pretrain", MICRO, *QUICK, "pretrain.tokens=2600", "--from", str(micro_run / "tokenizer"),
                    "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "run" / "pretrain")
    budget = manifest["budget"]
    assert budget["kind"] == "tokens" and budget["steps"] == 11 and budget["tokens"] == 11 * 256
    assert manifest["summary"]["steps"] == 11
    # The recipe's own cadence keys win (micro sets eval_every 4); warmup follows the budget.
    assert budget["eval_every"] == 4 and budget["warmup_steps"] == 2
    assert "2,600 tokens" in result.output


def test_model_auto_chooses_a_shape_and_says_why(micro_run: Path, tmp_path: Path):
    result = invoke("pretrain", MICRO, *QUICK, "model=auto", "pretrain.tokens=400000", "--from",
                    str(micro_run / "tokenizer"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "run" / "pretrain")
    budget = manifest["budget"]
    chosen = budget["shape"]
    assert chosen["layers"] > 0 and "model: auto chose" in budget["why"] and "model: auto chose" in result.output
    # The candidate nearest 20 tokens per parameter won.
    best = min(budget["candidates"], key=lambda c: c["score"])
    assert (best["layers"], best["width"]) == (chosen["layers"], chosen["width"])
    assert manifest["metrics"]["parameters"] == best["parameters"]
    assert manifest["config"]["model"]["preset"] == "auto" and manifest["config"]["model"]["layers"] == 0


def test_a_time_budget_is_measured_and_a_resumed_run_keeps_its_plan(micro_run: Path, tmp_path: Path):
    out = tmp_path / "run"
    args = ["pretrain", MICRO, *QUICK, "pretrain.time_budget=8", "pretrain.batch_size=16", "pretrain.save_every=4",
            "--from", str(micro_run / "tokenizer"), "--out", str(out)]
    work = out / ".pretrain.partial"
    process = _run_until_checkpoint(args, work / "checkpoints", 4, signal.SIGKILL)
    process.wait()
    plan = read_manifest(work)["budget"]
    assert plan["kind"] == "time_budget" and plan["step_seconds"] > 0 and plan["steps"] > 8
    assert "measured" in plan["why"]

    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "budget plan of the interrupted run kept" in resumed.output
    manifest = read_manifest(out / "pretrain")
    # The same plan, not a new measurement (which would differ in its timings), and its steps trained.
    assert manifest["budget"] == plan
    assert manifest["summary"]["steps"] == plan["steps"]


def test_a_time_budget_that_buys_few_steps_is_warned_about():
    plan = read_plan({"kind": "time_budget", "value": 160, "steps": 51, "tokens_per_step": 4096, "warmup_steps": 5,
                      "eval_every": 13, "save_every": 13, "log_every": 5, "learning_rate": 8e-3, "step_seconds": 2.6})
    assert "only 51 steps fit in 160 s on this machine now (2.60 s a step)" in few_steps_warning(plan)
    plenty = read_plan({**plan.record(), "steps": FEW_BUDGET_STEPS})
    tokens = read_plan({**plan.record(), "kind": "tokens", "value": 51 * 4096})
    assert few_steps_warning(plenty) is None and few_steps_warning(tokens) is None
