"""Run folders, stage folders and their manifests: the hand-off between stages.

Layout of a run:

    runs/<run>/<stage>/            a finished stage: HF model + tokenizer files, manifest.json
    runs/<run>/.<stage>.partial/   a stage being trained: trainer checkpoints, manifest (running/failed)

A stage trains in its `.partial` folder and is renamed into place only once complete, so a failing
or killed run never touches the previous checkpoint of that stage. The next stage finds its parent
through the run folder and trusts it only if the parent's manifest says `complete`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.core.console import is_main_process
from llmpipe.core.dist import barrier, main_process_first
from llmpipe.core.files import sha256_file, sha256_text, write_json_atomic
from llmpipe.core.errors import UserError, writing

MANIFEST = "manifest.json"
# Which stages each stage accepts as its parent; the first is the default.
PARENTS: dict[str, tuple[str, ...]] = {
    "tokenizer": (),
    "pretrain": ("tokenizer",),
    "sft": ("pretrain", "sft"),
    "dpo": ("sft", "dpo"),
    "kto": ("sft", "kto", "dpo"),
    # Method rlhf: a reward model and a policy, both from the SFT model (or a DPO one, with --from).
    "reward": ("sft", "dpo"),
    "rlhf": ("sft", "dpo", "rlhf", "grpo", "rloo"),
    # Methods grpo / rloo: a policy trained on rule rewards (plus an optional reward model).
    "grpo": ("sft", "dpo", "rlhf", "grpo", "rloo"),
    "rloo": ("sft", "dpo", "rlhf", "grpo", "rloo"),
}


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The manifest of a stage folder, or None when there is none or it cannot be parsed."""
    path = Path(stage_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def manifest_sha(stage_dir: Path) -> str:
    """sha256 of a stage's manifest without its `eval` results: the identity a child records for its
    parent, unchanged when the parent is evaluated later."""
    manifest = json.loads((Path(stage_dir) / MANIFEST).read_text(encoding="utf-8"))
    manifest.pop("eval", None)
    return sha256_text(json.dumps(manifest, sort_keys=True, default=str))


def resolve_parent(stage: str, run_dir: Path, from_path: str | Path | None) -> Path:
    """Find and check the parent checkpoint of `stage`: `--from` if given, else the run's own.

    Raises a UserError when the folder is missing, has no manifest, is not complete, or is of a
    stage this one cannot start from.
    """
    allowed = PARENTS[stage]
    if from_path is not None:
        parent = Path(from_path)
    else:
        parent = Path(run_dir) / allowed[0]
        if not parent.exists() and len(allowed) > 1 and (Path(run_dir) / allowed[1]).exists():
            parent = Path(run_dir) / allowed[1]
    _restore_interrupted_swap(parent)
    if parent.is_file():
        raise UserError("is a file; --from takes a stage folder", file=str(parent), field="--from",
                        hint=f"pass the folder that holds it, e.g. {parent.parent}")
    if not parent.is_dir():
        hint = f"run 'llmpipe {_command_for(allowed[0])}' first, or pass --from PATH to a finished {allowed[0]} folder"
        raise UserError(f"parent checkpoint folder not found (needed by {stage})", file=str(parent), hint=hint)
    manifest = read_manifest(parent)
    if manifest is None:
        raise UserError(
            "no readable manifest.json: not an llmpipe stage folder",
            file=str(parent),
            hint=f"pass --from a folder written by 'llmpipe {_command_for(allowed[0])}'",
        )
    if manifest.get("status") != "complete":
        raise UserError(
            f"parent stage is '{manifest.get('status')}', not complete",
            file=str(parent / MANIFEST),
            field="status",
            hint=f"finish it first ('llmpipe {_command_for(manifest.get('stage', allowed[0]))}' resumes it)",
        )
    if manifest.get("stage") not in allowed:
        raise UserError(
            f"parent is a '{manifest.get('stage')}' checkpoint; {stage} starts from {' or '.join(allowed)}",
            file=str(parent / MANIFEST),
            field="stage",
            hint=f"pass --from a {allowed[0]} folder",
        )
    return parent


def _command_for(stage: str) -> str:
    if stage == "reward":
        return "align --method rlhf"
    return f"align --method {stage}" if stage in ("dpo", "kto", "rlhf", "grpo", "rloo") else stage


def _restore_interrupted_swap(final: Path) -> None:
    # A crash between the two renames of `StageWriter.finish` leaves only the `.old` copy.
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.is_dir() and read_manifest(old) is not None:
        os.replace(old, final)


def git_commit() -> str | None:
    """The commit of the llmpipe source tree, when it is a git checkout (fixed arguments, no user input)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of the libraries that decide a checkpoint's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("llmpipe", "torch", "transformers", "trl", "tokenizers", "datasets", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable `key: old → new` lines for the settings that differ between two configs."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} → {b!r}")
    return lines


def _same_settings(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    from llmpipe.config import same_settings

    return same_settings(old, new)


@dataclass
class StageWriter:
    """Owns one stage's folders: decides skip/resume/refuse, writes the manifest, swaps into place.

    Use: `w = StageWriter(...)`; `if w.skip: ...`; then `with w:` train into `w.work_dir` and call
    `w.finish(...)`; an exception inside the `with` marks the work folder's manifest failed.
    """

    run_dir: Path
    stage: str
    config: dict[str, Any]
    parent: Path | None = None
    restart: bool = False
    skip: bool = False
    resume_from: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.final_dir = self.run_dir / self.stage
        self.work_dir = self.run_dir / f".{self.stage}.partial"
        parent_sha = manifest_sha(self.parent) if self.parent is not None else None
        # Under `accelerate launch` every process builds a StageWriter; only the first one touches
        # the folders, the others wait for it and then read the same state.
        with main_process_first():
            if is_main_process():
                _restore_interrupted_swap(self.final_dir)
            self._check_existing(parent_sha)
            if self.skip:
                return
            self._prepare_work_dir()
        self.manifest = {
            "stage": self.stage,
            "status": "running",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(),
            "git_commit": git_commit(),
            "config": self.config,
            "seed": self.config.get("seed"),
            "parent": None
            if self.parent is None
            else {
                "path": str(self.parent.resolve()),
                "stage": (read_manifest(self.parent) or {}).get("stage"),
                "manifest_sha256": parent_sha,
            },
            "data": [],
            "metrics": {},
            "evals": [],
        }
        self.save_manifest()

    def _check_existing(self, parent_sha: str | None) -> None:
        if not self.final_dir.exists():
            return
        old = read_manifest(self.final_dir)
        if old is None:
            raise UserError(
                "output folder exists but is not an llmpipe stage (no manifest.json)",
                file=str(self.final_dir),
                hint="move it away or choose another run folder with --out",
            )
        if old.get("stage") != self.stage:
            raise UserError(
                f"output folder holds a '{old.get('stage')}' stage, not {self.stage}",
                file=str(self.final_dir / MANIFEST),
                hint="choose another run folder with --out",
            )
        same_parent = (old.get("parent") or {}).get("manifest_sha256") == parent_sha
        if _same_settings(old.get("config"), self.config) and same_parent and not self.restart:
            self.skip = True
            return
        if self.restart or not same_parent:
            # A new parent makes the old result stale; it is replaced only when this run succeeds.
            return
        from llmpipe.config import stage_identity

        diff = config_diff(stage_identity(old.get("config") or {}), stage_identity(self.config))
        raise UserError(
            f"already holds a finished {self.stage} trained with other settings ({'; '.join(diff[:3])})",
            file=str(self.final_dir),
            hint="pass --restart to retrain and replace it, or --out another run folder",
        )

    def _prepare_work_dir(self) -> None:
        old = read_manifest(self.work_dir)
        if not is_main_process():
            self._find_resume_checkpoint()
            return
        if self.work_dir.exists() and not self.restart and old is not None and _same_settings(old.get("config"), self.config):
            self._find_resume_checkpoint()
            return
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)

    def _find_resume_checkpoint(self) -> None:
        from llmpipe.train.checkpoints import newest_valid_checkpoint

        self.resume_from = newest_valid_checkpoint(self.checkpoints_dir)

    @property
    def checkpoints_dir(self) -> Path:
        """Where the trainer keeps its periodic (resumable) checkpoints."""
        return self.work_dir / "checkpoints"

    def save_manifest(self) -> None:
        """Write the current manifest into the work folder (atomically; first process only)."""
        if is_main_process():
            with writing(self.work_dir / MANIFEST):
                write_json_atomic(self.work_dir / MANIFEST, self.manifest)

    def finish(self, summary: dict[str, Any]) -> Path:
        """Mark complete, hash the artefacts, and swap the work folder into the stage folder."""
        if not is_main_process():
            barrier()  # wait for the first process to finish the swap
            return self.final_dir
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)
        files = {}
        for path in sorted(self.work_dir.iterdir()):
            if path.is_file() and path.name != MANIFEST:
                files[path.name] = sha256_file(path)
        self.manifest.update(
            status="complete",
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            wall_seconds=round(time.time() - self.started, 2),
            files=files,
            summary=summary,
        )
        for name, key in (("tokenizer.json", "tokenizer_sha256"), ("chat_template.jinja", "chat_template_sha256")):
            if name in files:
                self.manifest[key] = files[name]
        self.save_manifest()
        old = self.final_dir.with_name(f".{self.stage}.old")
        if old.exists():
            shutil.rmtree(old)
        if self.final_dir.exists():
            os.replace(self.final_dir, old)
        os.replace(self.work_dir, self.final_dir)
        shutil.rmtree(old, ignore_errors=True)
        barrier()
        return self.final_dir

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if error is not None:
            self.fail(error)

    def fail(self, error: BaseException) -> None:
        """Record the failure in the work folder's manifest; the previous stage folder is untouched."""
        if not self.work_dir.exists():
            return
        self.manifest.update(status="failed", error=f"{type(error).__name__}: {error}")
        try:
            self.save_manifest()
        except OSError:
            pass  # a full disk cannot take the note either; the original error is what to report


def run_stage(stage: str, section: str, recipe: Any, run_dir: Path, parent: str | Path | None, restart: bool,
              train: Any, inputs: dict[str, Any] | None = None) -> Path:
    """The frame every stage shares: find and check the parent, skip a stage already complete,
    otherwise call `train(recipe, writer, parent_dir)` with failures recorded in the manifest.

    `inputs`: what else decides the result besides the parent and the recipe section (an RL policy's
    reward model, by manifest sha256); kept in the stage's config, so a change retrains or refuses."""
    from llmpipe.core.console import say
    from llmpipe.eval.probes import check_suites

    check_suites(recipe, (section,))
    parent_dir = resolve_parent(stage, run_dir, parent) if PARENTS[stage] else None
    if parent_dir is not None and (read_manifest(parent_dir) or {}).get("stage") != "tokenizer":  # a model parent
        from llmpipe.integrity import check_model_folder

        check_model_folder(parent_dir, max_length=getattr(recipe, section).max_length, max_length_key=f"{section}.max_length",
                           source=recipe.source)
    writer = StageWriter(run_dir, stage, {**recipe.stage_config(section), **(inputs or {})}, parent=parent_dir, restart=restart)
    if writer.skip:
        say(f"{stage}: complete in {writer.final_dir}, skipping")
        gate = (read_manifest(writer.final_dir) or {}).get("gate") or {}
        if gate and not gate.get("passed") and getattr(recipe, section).gate.action == "stop":
            from llmpipe.eval.gate import regression_error

            raise regression_error(stage, writer.final_dir, gate)
        return writer.final_dir
    # An OSError without a file name (a full disk in the middle of a save) names the stage's work folder.
    with writer, writing(writer.work_dir):
        return train(recipe, writer, parent_dir)
