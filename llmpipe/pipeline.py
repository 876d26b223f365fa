"""The pipeline: the frame every stage trains in, method dispatch, and the run order of `llmpipe run`.

Which stages exist, what they start from and which module trains them is the registry's
(llmpipe/registry.py); this module only walks it. A stage module is imported by the name the registry
gives, when that stage trains, so that the CLI pays for TRL's import only when it trains something.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from llmpipe.config import Recipe
from llmpipe.core.console import say
from llmpipe.core.errors import UserError, writing
from llmpipe.eval.gate import regression_error
from llmpipe.eval.probes import check_suites
from llmpipe.eval.suites import check_settings
from llmpipe.registry import BASE, REWARD_MODEL, RUN_ORDER, STAGES, StageSpec, command_for, stage_for, stage_spec
from llmpipe.runs import MANIFEST, StageWriter, manifest_sha, read_manifest, resolve_parent
from llmpipe.runs.context import StageContext
from llmpipe.runs.integrity import check_model_folder, verify_files
from llmpipe.sources import HUB_PREFIX, fingerprint, is_model_source, locate


def train_stage(spec: StageSpec, recipe: Recipe, run_dir: Path, parent: str | Path | None = None, restart: bool = False,
                inputs: dict[str, Path] | None = None) -> Path:
    """The frame every stage shares: find and check the parent, skip a stage already complete (stopping
    on its failed gate), otherwise call the stage module's `train(ctx)` with failures recorded in the
    manifest. Returns the stage folder.

    `inputs`: folders besides the parent that decide the result (an RL policy's reward model); each one's
    manifest sha256 goes into the stage's config, so a changed one retrains or refuses."""
    cfg = getattr(recipe, spec.section)
    check_suites(recipe, (spec.section,))
    if spec.answers_chats and recipe.suites.score_stages:
        check_settings(recipe.suites, recipe.source)  # a broken suite or judge fails before any training
    parent_dir = resolve_parent(spec.name, run_dir, parent) if spec.parents else None
    parent_manifest = read_manifest(parent_dir) if parent_dir is not None else None
    if parent_manifest is not None and parent_manifest.stage in STAGES and stage_spec(parent_manifest.stage).language_model:
        if stage_spec(parent_manifest.stage).imports:  # its weights are links: the source may have changed since
            verify_files(parent_dir, parent_manifest)
        check_model_folder(parent_dir, max_length=cfg.max_length, max_length_key=f"{spec.section}.max_length", source=recipe.source)
    identity = {f"{name}_sha256": manifest_sha(folder) for name, folder in (inputs or {}).items()}
    extra: dict[str, object] = {}
    if spec.imports:  # the source's files decide an imported model: a changed source is a changed stage
        located = locate(cfg.source, cfg.trust_remote_code)
        identity["source_sha256"] = fingerprint(located)  # type: ignore[assignment]
        extra["located"] = located
    writer = StageWriter(run_dir, spec.name, {**recipe.stage_config(spec.section), **identity}, parent=parent_dir, restart=restart)
    if writer.skip:
        say(f"{spec.name}: complete in {writer.final_dir}, skipping")
        finished = read_manifest(writer.final_dir)
        gate = finished.gate if finished is not None else None
        if gate and not gate.get("passed") and cfg.gate.action == "stop":
            raise regression_error(spec.name, spec.section, writer.final_dir, gate)
        return writer.final_dir
    module: Any = importlib.import_module(spec.module)
    ctx = StageContext(spec=spec, recipe=recipe, writer=writer, parent_dir=parent_dir,
                       inputs={**{f"{name}_dir": folder for name, folder in (inputs or {}).items()}, **extra})
    # An OSError without a file name (a full disk in the middle of a save) names the stage's work folder.
    with writer, writing(writer.work_dir):
        return module.train(ctx)


def train_section(section: str, recipe: Recipe, run_dir: Path, parent: str | Path | None = None, restart: bool = False) -> Path:
    """What a stage command trains: the section's stage, or for `align` the recipe's method, with the
    stages that method trains first (rlhf: its reward model, unless `align.reward_model` names one).

    `parent` may also name a model llmpipe did not train (a Hugging Face folder, hf:ORG/NAME, a .gguf):
    it is imported as the run's base stage first, and the section's stage starts from that."""
    spec = stage_for(section, recipe.align.method)  # the method matters to the align section only
    if spec.imports:
        return import_base(recipe, run_dir, parent, restart)
    if is_model_source(parent):
        parent = import_base(recipe, run_dir, parent, restart)
    inputs: dict[str, Path] = {}
    if spec.online:
        if recipe.align.reward_model:  # checked before anything trains, so a wrong path costs a second
            inputs["reward_model"] = check_reward_folder(recipe.align.reward_model, REWARD_MODEL)
        else:
            for first in spec.trains_first:
                inputs["reward_model"] = train_stage(stage_spec(first), recipe, run_dir, parent, restart)
    return train_stage(spec, recipe, run_dir, parent, restart, inputs)


def check_reward_folder(folder: str | Path, stage: str) -> Path:
    """A finished reward-model stage folder (`stage`: the registry's name for it), or a one-line UserError
    saying what the folder is instead."""
    folder = Path(folder)
    hint = f"pass a runs/<run>/{stage} folder written by 'llmpipe {command_for(stage)}'"
    if not folder.is_dir():
        raise UserError("reward model folder not found", file=str(folder), field="align.reward_model", hint=hint)
    manifest = read_manifest(folder)
    if manifest is None:
        raise UserError("no readable manifest.json: not an llmpipe stage folder", file=str(folder), field="align.reward_model", hint=hint)
    if manifest.stage != stage:
        raise UserError(f"holds a '{manifest.stage}' stage, not a reward model", file=str(folder / MANIFEST),
                        field="align.reward_model", hint=hint)
    if manifest.status != "complete":
        raise UserError(f"reward stage is '{manifest.status}', not complete", file=str(folder / MANIFEST),
                        field="align.reward_model", hint=f"finish it first ('llmpipe {command_for(stage)}' resumes it)")
    return folder




def import_base(recipe: Recipe, run_dir: Path, source: str | Path | None, restart: bool = False) -> Path:
    """The run's base stage from `source` (else the recipe's base.source): imported, or skipped when the
    same source (same files) is already there."""
    source = str(source) if source is not None else recipe.base.source
    if not source:
        raise UserError("no model to import", file=recipe.source, field="base.source",
                        hint="pass --from a Hugging Face model folder, hf:ORG/NAME[@REVISION] or a .gguf file, or set base in the recipe")
    if not source.startswith(HUB_PREFIX):  # one spelling per file (./m, m, /abs/m): the stage's identity names it
        source = str(Path(source).resolve())
    recipe = dataclasses.replace(recipe, base=dataclasses.replace(recipe.base, source=source))
    return train_stage(stage_spec(BASE), recipe, run_dir, restart=restart)


def run_sections(recipe: Recipe) -> tuple[str, ...]:
    """The sections `llmpipe run` trains: all of them from scratch; from a base model, its section and
    then the sections after pretraining, with continued pretraining only when the recipe asks for it."""
    if not recipe.base.source:
        return RUN_ORDER
    # The tokenizer stage (no parents) is replaced by the base; pretraining (the stage that builds a model
    # from scratch) runs only as continued pretraining on text the recipe names (pretrain.train_files).
    kept = (s for s in RUN_ORDER if stage_for(s).parents and (not stage_for(s).builds_model or f"{s}.train_files" in recipe.given))
    return (stage_spec(BASE).section, *kept)


def run_recipe(recipe: Recipe, run_dir: Path, restart: bool = False) -> None:
    """Every section of `llmpipe run` in order, skipping stages already complete."""
    sections = run_sections(recipe)
    check_suites(recipe, tuple(s for s in sections if stage_for(s).language_model and not stage_for(s).imports))
    if recipe.suites.score_stages and any(stage_for(s, recipe.align.method).answers_chats for s in sections):
        check_settings(recipe.suites, recipe.source)
    previous: Path | None = None
    for section in sections:
        # Each stage starts from the one this run just trained: in a run folder that also holds stages of an
        # earlier run from scratch, a run from a base must not pick up that run's pretrain.
        spec = stage_for(section, recipe.align.method)
        chained = previous if previous is not None and previous.name in spec.parents else None
        previous = train_section(section, recipe, run_dir, parent=chained, restart=restart)
