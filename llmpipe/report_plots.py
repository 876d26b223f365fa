"""The report's PNG figures: training curves and probe scores of one stage, drawn from its manifest.

matplotlib is imported inside the functions, so importing this module (and `llmpipe --help`) stays
light. Figures are drawn on the Agg canvas directly, without pyplot, so no global backend is changed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

DPI = 100
PANEL_WIDTH_IN = 4.0
ROW_HEIGHT_IN = 2.5
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def number(value: Any) -> float | None:
    """`value` as a finite float, or None when it is missing, not a number, a bool, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(evals: list[Any], *keys: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the log entries carrying the first of `keys` that any entry has."""
    entries = [e for e in evals if isinstance(e, dict) and number(e.get("step")) is not None]
    for key in keys:
        points = [(number(e["step"]), number(e.get(key))) for e in entries]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            return [s for s, _ in points], [v for _, v in points]
    return [], []


def _figure(panels: int, title: str) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # Two panels a row: four side by side at report width squeeze the tick labels unreadably.
    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(PANEL_WIDTH_IN * columns, ROW_HEIGHT_IN * rows + 0.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=13, fontweight="bold")
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(panels)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure, axes


def _plot(ax: Any, steps: list[float], values: list[float], label: str, colour: str) -> None:
    # Small runs log only a handful of points: markers keep each one visible.
    ax.plot(steps, values, marker="o", markersize=3.5, linewidth=1.6, label=label, color=colour)


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def training_curves(stage: str, evals: list[Any], path: Path) -> Path | None:
    """Loss (train and validation), learning rate, grad norm and tokens/s against step, one panel each;
    a panel without data is left out, and no file is written when none has data. Returns the PNG's path."""
    train = series(evals, "loss")
    val = series(evals, "eval_loss")
    panels = [
        ("loss", "loss", [("train", train, COLOURS[0]), ("validation", val, COLOURS[1])]),
        ("learning rate", "learning rate", [("lr", series(evals, "learning_rate"), COLOURS[2])]),
        ("grad norm", "grad norm", [("grad norm", series(evals, "grad_norm"), COLOURS[3])]),
        ("throughput", "tokens/s", [("tokens/s", series(evals, "tokens_per_second", "train_tokens_per_second"), COLOURS[4])]),
    ]
    panels = [(title, ylabel, [line for line in lines if line[1][0]]) for title, ylabel, lines in panels]
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        return None
    figure, axes = _figure(len(panels), f"{stage}: training curves")
    for ax, (title, ylabel, lines) in zip(axes, panels):
        for label, (steps, values), colour in lines:
            _plot(ax, steps, values, label, colour)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("step", fontsize=10)
        ax.set_ylabel(ylabel, fontsize=10)
        if len(lines) > 1:
            ax.legend(fontsize=9)
        # Learning rates are small numbers: the offset/scientific notation keeps their ticks short.
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    return _save(figure, path)


def probe_scores(stage: str, probes: list[Any], path: Path) -> Path | None:
    """One line per probe suite: score against step (step 0 is before training). Returns the PNG's path,
    or None when there are no usable probe records."""
    suites: dict[str, tuple[list[float], list[float]]] = {}
    for record in probes:
        if not isinstance(record, dict):
            continue
        step, score = number(record.get("step")), number(record.get("score"))
        if step is None or score is None:
            continue
        steps, scores = suites.setdefault(str(record.get("suite", "probe")), ([], []))
        steps.append(step)
        scores.append(score)
    if not suites:
        return None
    figure, (ax,) = _figure(1, f"{stage}: probe scores")
    figure.set_size_inches(2 * PANEL_WIDTH_IN, ROW_HEIGHT_IN + 0.4)
    for i, (suite, (steps, scores)) in enumerate(sorted(suites.items())):
        order = sorted(range(len(steps)), key=steps.__getitem__)
        _plot(ax, [steps[j] for j in order], [scores[j] for j in order], suite, COLOURS[i % len(COLOURS)])
    ax.set_xlabel("step", fontsize=10)
    ax.set_ylabel("score", fontsize=10)
    ax.legend(fontsize=9, loc="best")
    return _save(figure, path)


def scaling_figure(result: dict[str, Any], path: Path) -> Path:
    """`llmpipe scale`'s figure: held-out loss against parameters for each compute budget with its parabola and
    the law's curve, and the check run against its prediction; loss against compute for every point."""
    import numpy as np

    figure, (by_size, by_compute) = _figure(2, "Scaling: IsoFLOP sweep and check run")
    law = result["law"]
    for index, budget in enumerate(result["budgets"]):
        colour = COLOURS[index % len(COLOURS)]
        points = sorted((p for p in result["points"] if p["budget"] == budget["budget"]), key=lambda p: p["parameters"])
        sizes = [p["parameters"] for p in points]
        by_size.plot(sizes, [p["loss"] for p in points], "o", color=colour, label=f"C = {budget['budget']:.2g}")
        grid = np.geomspace(min(sizes), max(sizes), 50)
        # The law along this budget: D = C / (6 N), as the fit counts compute.
        by_size.plot(grid, [law["E"] + law["A"] / n ** law["alpha"] + law["B"] / (budget["budget"] / 6 / n) ** law["beta"]
                            for n in grid], "-", color=colour, linewidth=1.2, alpha=0.7)
        by_size.axvline(budget["optimal_parameters"], color=colour, linestyle=":", linewidth=1)
    check = result["check"]
    by_size.plot([check["parameters"]], [check["loss"]], "*", color="black", markersize=12, label="check run")
    by_size.plot([check["parameters"]], [check["predicted_loss"]], "x", color="black", markersize=9, label="predicted")
    by_size.set_xscale("log")
    by_size.set_xlabel("parameters")
    by_size.set_ylabel("held-out loss (nats/token)")
    by_size.legend(fontsize=8)
    every = result["points"] + [check]
    by_compute.plot([p["flops"] for p in every], [p["loss"] for p in every], "o", color=COLOURS[0])
    by_compute.plot([check["flops"]], [check["loss"]], "*", color="black", markersize=12)
    by_compute.set_xscale("log")
    by_compute.set_xlabel("training FLOPs")
    by_compute.set_ylabel("held-out loss (nats/token)")
    by_compute.set_title(f"check: {check['relative_error']:.1%} from the prediction", fontsize=10)
    return _save(figure, path)
