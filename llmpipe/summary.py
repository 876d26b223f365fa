"""The end-of-run table: one row per finished stage, read from the manifests (no torch import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmpipe.registry import STAGE_ORDER
from llmpipe.runs import read_manifest


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def stage_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The summary of every complete stage in a run folder, in pipeline order."""
    rows = []
    for stage in STAGE_ORDER:
        manifest = read_manifest(Path(run_dir) / stage)
        if manifest is not None and manifest.status == "complete":
            rows.append({"stage": stage, "folder": str(Path(run_dir) / stage), **(manifest.summary or {})})
    return rows


def render_table(run_dir: Path) -> str:
    """A plain-text table of the run's stages: steps, tokens, time, throughput, losses, quality metric."""
    header = ("stage", "steps", "tokens", "wall s", "tok/s", "train loss", "val loss", "metric", "before → after", "checkpoint")
    lines = []
    for row in stage_rows(run_dir):
        metric = row.get("metric") or {}
        lines.append((
            row["stage"], _fmt(row.get("steps")), _fmt(row.get("tokens")), _fmt(row.get("wall_seconds"), 3),
            _fmt(row.get("tokens_per_second"), 4), _fmt(row.get("train_loss")), _fmt(row.get("val_loss")),
            metric.get("name", "-"), f"{_fmt(metric.get('before'))} → {_fmt(metric.get('after'))}", row["folder"],
        ))
    if not lines:
        return f"no finished stages in {run_dir}"
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])
