"""Scaling-law fits of an IsoFLOP sweep (`llmpipe scale`): loss against model size at fixed compute, and the
parametric law L(N, D) = E + A / N^alpha + B / D^beta of Hoffmann et al. 2022 ("Chinchilla", approaches 2
and 3), fitted with scipy.

A point is one finished pretraining run: parameters N, training tokens D, compute C (FLOPs, llmpipe's
count: 6 per matmul weight per token plus attention) and its held-out loss in nats per token.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmpipe.core.errors import UserError

# Hoffmann et al. fit the law to log-loss with a Huber loss of this delta, robust to the odd bad run.
HUBER_DELTA = 1e-3
# The exponents' starting grid. For fixed exponents the law is linear in E, A and B, so each grid point is one
# non-negative least-squares solve; the best one starts the full Huber fit. Hoffmann et al. start a general
# optimiser from a grid over all five constants instead: ~400 starts took 30 s here, this takes well under one.
EXPONENT_GRID = np.linspace(0.05, 1.5, 30)


@dataclass
class Point:
    """One run of the sweep."""

    parameters: int
    tokens: int
    flops: float
    loss: float  # held-out, nats per token


def law(fit: dict[str, float], parameters: float, tokens: float) -> float:
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    return fit["E"] + fit["A"] / parameters ** fit["alpha"] + fit["B"] / tokens ** fit["beta"]


def fit_law(points: Sequence[Point]) -> dict[str, float]:
    """The law's five constants fitted to the points: least squares on log L with a Huber loss, from a grid of
    starting points (scipy.optimize.least_squares), the best fit kept. Needs at least five points."""
    from scipy.optimize import least_squares, nnls

    if len(points) < 5:
        raise ValueError(f"a five-constant law needs at least 5 points, got {len(points)}")
    log_n = np.log([p.parameters for p in points])
    log_d = np.log([p.tokens for p in points])
    log_l = np.log([p.loss for p in points])

    def residuals(x: np.ndarray) -> np.ndarray:
        log_a, log_b, log_e, alpha, beta = x
        terms = np.stack([log_a - alpha * log_n, log_b - beta * log_d, np.full_like(log_n, log_e)])
        peak = terms.max(axis=0)
        return peak + np.log(np.exp(terms - peak).sum(axis=0)) - log_l

    losses = np.exp(log_l)
    start, start_error = None, math.inf
    for alpha, beta in itertools.product(EXPONENT_GRID, EXPONENT_GRID):
        # Rows divided by the loss: relative errors, as the log-space fit weighs them.
        design = np.stack([np.ones_like(log_n), np.exp(-alpha * log_n), np.exp(-beta * log_d)], axis=1) / losses[:, None]
        coefficients, error = nnls(design, np.ones_like(losses))
        if error < start_error and coefficients.min() > 0:
            start_error, start = error, (math.log(coefficients[1]), math.log(coefficients[2]), math.log(coefficients[0]), alpha, beta)
    if start is None:  # no grid point with all three terms positive: start from the middle of the usual range
        start = (5.0, 5.0, 0.0, 0.3, 0.3)
    best = least_squares(residuals, np.array(start, dtype=float), loss="huber", f_scale=HUBER_DELTA,
                         bounds=([-30, -30, -10, 0.0, 0.0], [60, 60, 5, 3.0, 3.0]))
    log_a, log_b, log_e, alpha, beta = best.x
    fitted = {"E": math.exp(log_e), "A": math.exp(log_a), "alpha": float(alpha), "B": math.exp(log_b), "beta": float(beta)}
    predicted = np.array([law(fitted, p.parameters, p.tokens) for p in points])
    actual = np.array([p.loss for p in points])
    fitted["rmse_relative"] = float(np.sqrt(np.mean(((predicted - actual) / actual) ** 2)))
    return fitted


def optimal_allocation(fit: dict[str, float], flops: float) -> tuple[float, float]:
    """(N, D) minimising the law at compute C = 6 N D: N = G (C/6)^(beta/(alpha+beta)), G = (alpha A / beta B)^(1/(alpha+beta))."""
    alpha, beta = fit["alpha"], fit["beta"]
    g = (alpha * fit["A"] / (beta * fit["B"])) ** (1.0 / (alpha + beta))
    n = g * (flops / 6.0) ** (beta / (alpha + beta))
    return n, flops / 6.0 / n


def isoflop_minimum(points: Sequence[Point]) -> dict[str, Any]:
    """Approach 2 of Hoffmann et al. for the points of one compute budget: a parabola of loss against log N; its
    vertex is the budget's optimal size (the best point itself when the parabola opens downwards or its vertex
    falls outside the sizes tried)."""
    log_n = np.log([p.parameters for p in points])
    losses = np.array([p.loss for p in points])
    best = int(np.argmin(losses))
    out = {"flops": float(np.mean([p.flops for p in points])), "best_parameters": points[best].parameters,
           "best_loss": float(losses[best])}
    if len(points) >= 3:
        a, b, c = np.polyfit(log_n, losses, 2)
        vertex = -b / (2 * a) if a > 0 else None
        if vertex is not None and log_n.min() <= vertex <= log_n.max():
            out.update(optimal_parameters=float(math.exp(vertex)), optimal_loss=float(c - b * b / (4 * a)), curvature=float(a))
            return out
    out.update(optimal_parameters=float(points[best].parameters), optimal_loss=float(losses[best]),
               note="no interior minimum: the best size tried")
    return out


def power_law(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """y = k x^a by least squares in log-log: {exponent, coefficient}."""
    a, log_k = np.polyfit(np.log(xs), np.log(ys), 1)
    return {"exponent": float(a), "coefficient": float(math.exp(log_k))}


def read_fit(path: str | Path) -> dict[str, float]:
    """The law of a scale.json that `llmpipe scale` wrote (for `pretrain.scaling_fit`), or a one-line UserError."""
    path = Path(path)
    try:
        fit = json.loads(path.read_text(encoding="utf-8"))["law"]
        return {key: float(fit[key]) for key in ("E", "A", "alpha", "B", "beta")}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"not a scale.json with a fitted law ({type(error).__name__})", file=str(path),
                        field="pretrain.scaling_fit", hint="pass the runs/<run>/scale/scale.json that 'llmpipe scale' wrote") from None
