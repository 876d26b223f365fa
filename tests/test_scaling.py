"""Scaling-law fits (llmpipe/eval/scaling.py) on points drawn from a known law, and `llmpipe scale` end to end
on a sweep small enough for the suite (the 15-minute default runs in bench/scaling.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MICRO, invoke

from llmpipe.config.presets import AUTO_SHAPES
from llmpipe.core.errors import UserError
from llmpipe.eval.scaling import Point, fit_law, isoflop_minimum, law, optimal_allocation, power_law, read_fit
from llmpipe.scale import (
    BUDGET_RATIO,
    BUDGETS,
    CHECK_RATIO,
    MIN_STEPS,
    SIZES,
    SUB_SHAPES,
    SWEEP_SHAPES,
    cautions,
    check_shapes,
    data_limit,
    estimated_seconds,
    plan_sweep,
)

TRUE = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}


def _isoflop_points(noise: float = 0.0) -> list[Point]:
    rng = np.random.default_rng(0)
    points = []
    for flops in (1e15, 4e15, 1.6e16):
        for n in np.geomspace(2e5, 2e7, 5):
            d = flops / 6 / n
            points.append(Point(int(n), int(d), flops, law(TRUE, n, d) * (1 + noise * rng.standard_normal())))
    return points


def test_the_law_is_recovered_from_exact_points():
    fit = fit_law(_isoflop_points())
    assert fit["alpha"] == pytest.approx(TRUE["alpha"], abs=0.02)
    assert fit["beta"] == pytest.approx(TRUE["beta"], abs=0.02)
    assert fit["E"] == pytest.approx(TRUE["E"], rel=0.02)
    assert fit["rmse_relative"] < 1e-3


def test_noisy_points_still_predict_a_larger_run_within_a_percent():
    fit = fit_law(_isoflop_points(noise=0.003))
    n, d = 3e7, 6.4e16 / 6 / 3e7
    assert law(fit, n, d) == pytest.approx(law(TRUE, n, d), rel=0.01)


def test_optimal_allocation_matches_a_brute_force_search():
    flops = 1e18
    n_opt, d_opt = optimal_allocation(TRUE, flops)
    sizes = np.geomspace(1e6, 1e10, 4000)
    best = sizes[np.argmin([law(TRUE, n, flops / 6 / n) for n in sizes])]
    assert n_opt == pytest.approx(best, rel=0.01)
    assert n_opt * d_opt * 6 == pytest.approx(flops)


def test_isoflop_parabola_finds_the_minimum_between_the_sizes():
    points = [Point(n, 1, 1e15, 2.0 + (np.log(n) - np.log(1e6)) ** 2 * 0.1) for n in (1e5, 3e5, 1e6, 3e6, 1e7)]
    found = isoflop_minimum(points)
    assert found["optimal_parameters"] == pytest.approx(1e6, rel=1e-6) and "note" not in found
    edge = isoflop_minimum(points[:2])
    assert edge["note"] and edge["optimal_parameters"] == 3e5


def test_power_law_and_a_bad_fit_file():
    assert power_law([1, 10, 100], [2, 20, 200])["exponent"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fit_law(_isoflop_points()[:4])


def test_read_fit_refuses_a_file_without_a_law(tmp_path: Path):
    bad = tmp_path / "scale.json"
    bad.write_text(json.dumps({"points": []}))
    with pytest.raises(UserError) as caught:
        read_fit(bad)
    assert caught.value.field == "pretrain.scaling_fit"


def _shapes() -> list[dict]:
    # Synthetic candidates: parameters grow ~2.5x a rung, cost per token with them, steps slower.
    return [{"shape": (layers, width, heads), "parameters": p, "flops_per_token": 6.0 * p, "step_seconds": 0.02 * p / 1e5}
            for (layers, width, heads), p in zip(AUTO_SHAPES, (4e4, 1e5, 2.5e5, 6e5, 1.5e6, 4e6, 1e7, 2.5e7))]


def test_the_sweep_is_sized_to_its_minutes():
    shapes, tokens_per_step = _shapes(), 4096
    sweep = plan_sweep(shapes, 600.0, tokens_per_step)
    assert len(sweep) == BUDGETS
    budgets = [flops for flops, _ in sweep]
    assert budgets[1] == pytest.approx(budgets[0] * BUDGET_RATIO) and budgets[2] == pytest.approx(budgets[0] * BUDGET_RATIO ** 2)
    for flops, points in sweep:
        assert 3 <= len(points) <= SIZES and all(p["steps"] >= MIN_STEPS for p in points)
        # Each point spends the budget: steps x tokens x FLOPs per token.
        for p in points:
            assert p["steps"] * tokens_per_step * p["flops_per_token"] == pytest.approx(flops, rel=0.05)
    check = budgets[-1] * CHECK_RATIO
    assert estimated_seconds(sweep, check, shapes, tokens_per_step) == pytest.approx(600.0, rel=0.05)


def test_a_small_corpus_brackets_its_optimum_with_sizes_below_auto_and_keeps_each_point_within_the_data():
    # Sub-shapes: smaller than model: auto's smallest, valid heads; the sweep tries them first.
    assert SWEEP_SHAPES[:len(SUB_SHAPES)] == SUB_SHAPES and all(w % h == 0 and w < AUTO_SHAPES[0][1] for _, w, h in SUB_SHAPES)
    sub = [{"shape": s, "parameters": p, "flops_per_token": 6.0 * p, "step_seconds": 0.02 * p / 1e5}
           for s, p in zip(SUB_SHAPES, (1.5e4, 2.5e4))]
    shapes, tokens_per_step, max_tokens = sub + _shapes(), 512, 6e5
    # The data limit is the check run's (model: auto's shapes): the sub-shapes do not shrink every budget.
    assert data_limit(shapes, max_tokens) == data_limit(_shapes(), max_tokens)
    assert all(tuple(s["shape"]) in AUTO_SHAPES for s in check_shapes(shapes))
    sweep = plan_sweep(shapes, 1e6, tokens_per_step, max_tokens)
    tried = {tuple(p["shape"]) for _, points in sweep for p in points}
    assert SUB_SHAPES[0] in tried and len(sweep) == BUDGETS
    for _, points in sweep:
        assert all(p["steps"] * tokens_per_step <= max_tokens * 1.0001 for p in points)
    # The smallest shape would pass over the data too often at the largest budget: left out there only.
    assert SUB_SHAPES[0] in {tuple(p["shape"]) for p in sweep[0][1]}
    assert SUB_SHAPES[0] not in {tuple(p["shape"]) for p in sweep[-1][1]}


def test_cautions_name_a_loose_fit_an_optimum_outside_the_sizes_and_a_missed_check():
    tight = {"rmse_relative": 0.01}
    inside = [{"budget": 1e10}, {"budget": 2e10, "note": "no interior minimum: the best size tried"}]
    assert cautions(tight, inside, 0.02) == []
    notes = cautions({"rmse_relative": 0.05}, inside[1:], 0.2)
    assert len(notes) == 3 and "5.0% RMS" in notes[0] and "outside" in notes[1] and "20%" in notes[2]


def test_scale_trains_a_kept_plan_fits_checks_and_resumes(tmp_path: Path):
    out = tmp_path / "run"
    # A plan written by hand (the sizing is tested above): three budgets of three tiny llama shapes, a few seconds.
    sizes = [(2, 32, 1), (2, 48, 2), (2, 64, 2)]
    params = [40_000, 70_000, 110_000]
    plan = {"minutes": 1, "shapes": [{"shape": list(s), "parameters": p, "flops_per_token": 6.0 * p, "step_seconds": 0.01}
                                     for s, p in zip(sizes, params)],
            "sweep": [[flops, [{"shape": list(s), "parameters": p, "flops_per_token": 6.0 * p, "step_seconds": 0.01,
                                "steps": max(12, round(flops / (6.0 * p * 128)))} for s, p in zip(sizes, params)]]
                      for flops in (1.2e9, 2.4e9, 4.8e9)]}
    (out / "scale").mkdir(parents=True)
    (out / "scale" / "plan.json").write_text(json.dumps(plan))
    args = ["scale", MICRO, "precision=fp32", "device=cpu", "pretrain.max_length=32", "pretrain.batch_size=4",
            "--out", str(out)]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "is kept" in result.output
    scale = json.loads((out / "scale" / "scale.json").read_text())
    assert len(scale["budgets"]) == 3 and len(scale["points"]) == 9
    for point in scale["points"]:
        manifest = json.loads((out / "scale" / point["point"] / "pretrain" / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["summary"]["steps"] == point["steps"]
        assert point["flops"] == pytest.approx(manifest["metrics"]["flops_per_token"] * point["tokens"])
    assert {"E", "A", "alpha", "B", "beta"} <= set(scale["law"])
    check = scale["check"]
    assert check["relative_error"] == pytest.approx(abs(check["predicted_loss"] - check["loss"]) / check["loss"])
    assert check["budget"] == pytest.approx(4.8e9 * CHECK_RATIO)
    assert (out / "scale" / "scale.png").stat().st_size > 1000
    assert "Scaling-law check" in (out / "report" / "report.md").read_text()
    # A rerun finds every point finished and trains none.
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert again.output.count("complete in") >= len(scale["points"]) + 1
