"""What a stage's `train(ctx)` receives: the recipe, its section, the stage folders and the parent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.config import Recipe
from llmpipe.registry import StageSpec
from llmpipe.runs.folders import StageWriter


@dataclass
class StageContext:
    """One stage being trained: `train(ctx)` reads settings from `ctx.cfg`, writes into `ctx.writer.work_dir`
    and records into `ctx.manifest`; the pipeline built it after checking the parent."""

    spec: StageSpec
    recipe: Recipe
    writer: StageWriter
    parent_dir: Path | None
    # Inputs besides the parent that decide the result (an RL policy's reward model folder).
    inputs: dict[str, Any] = field(default_factory=dict)
    # The section as the stage trains it when that differs from the recipe's: a budgeted pretraining run's
    # steps and cadence (llmpipe/train/budget.py). The recipe's own section stays the stage's identity.
    planned: Any = None

    @property
    def cfg(self) -> Any:
        """The stage's settings: its recipe section (recipe.sft, recipe.align, ...), as planned where a plan
        replaced some of them."""
        return self.planned if self.planned is not None else getattr(self.recipe, self.spec.section)

    @property
    def manifest(self) -> Any:
        """The stage's typed manifest (llmpipe.runs.manifest.Manifest), saved by the writer."""
        return self.writer.manifest

    @property
    def resumed(self) -> bool:
        """Whether this run continues an interrupted one from a trainer checkpoint."""
        return self.writer.resume_from is not None
