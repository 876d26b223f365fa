"""Run folders, stage folders and their manifests: the hand-off between stages.

Layout of a run:

    runs/<run>/<stage>/            a finished stage: HF model + tokenizer files, manifest.json
    runs/<run>/.<stage>.partial/   a stage being trained: trainer checkpoints, manifest (running/failed)

A stage trains in its `.partial` folder and is renamed into place only once complete, so a failing
or killed run never touches the previous checkpoint of that stage. The next stage finds its parent
through the run folder and trusts it only if the parent's manifest says `complete`.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.config import same_settings, stage_identity
from llmpipe.core.console import is_main_process
from llmpipe.core.dist import barrier, main_process_first
from llmpipe.core.errors import UserError, writing
from llmpipe.core.files import sha256_file
from llmpipe.registry import BASE, command_for, stage_spec
from llmpipe.registry import STAGES as STAGE_NAMES
from llmpipe.runs.manifest import MANIFEST, Manifest, StageRef, manifest_sha, read_manifest, write_manifest
from llmpipe.runs.seals import newest_valid_checkpoint


def resolve_parent(stage: str, run_dir: Path, from_path: str | Path | None) -> Path:
    """Find and check the parent checkpoint of `stage`: `--from` if given, else the run's own.

    Raises a UserError when the folder is missing, has no manifest, is not complete, or is of a
    stage this one cannot start from.
    """
    allowed = stage_spec(stage).parents
    if from_path is not None:
        parent = Path(from_path)
    else:
        # The run's own parent: the first of the allowed stages the run has (never the stage itself, which
        # only `--from` can name), so a run from a base model finds its base where pretrain would be.
        present = [name for name in allowed if name != stage and (Path(run_dir) / name).exists()]
        parent = Path(run_dir) / (present[0] if present else allowed[0])
    _restore_interrupted_swap(parent)
    if parent.is_file():
        raise UserError("is a file; --from takes a stage folder", file=str(parent), field="--from",
                        hint=f"pass the folder that holds it, e.g. {parent.parent}")
    if not parent.is_dir():
        hint = f"run 'llmpipe {command_for(allowed[0])}' first, or pass --from PATH to a finished {allowed[0]} folder"
        raise UserError(f"parent checkpoint folder not found (needed by {stage})", file=str(parent), hint=hint)
    manifest = read_manifest(parent)
    if manifest is None:
        raise UserError(
            "no readable manifest.json: not an llmpipe stage folder",
            file=str(parent),
            hint=f"pass --from a folder written by 'llmpipe {command_for(allowed[0])}'"
            + (", or a Hugging Face model folder (config.json with model_type, weights, tokenizer)" if BASE in allowed else ""),
        )
    if manifest.status != "complete":
        resumes = command_for(manifest.stage) if manifest.stage in STAGE_NAMES else command_for(allowed[0])
        raise UserError(
            f"parent stage is '{manifest.status}', not complete",
            file=str(parent / MANIFEST),
            field="status",
            hint=f"finish it first ('llmpipe {resumes}' resumes it)",
        )
    if manifest.stage not in allowed:
        raise UserError(
            f"parent is a '{manifest.stage}' checkpoint; {stage} starts from {' or '.join(allowed)}",
            file=str(parent / MANIFEST),
            field="stage",
            hint=f"pass --from a {allowed[0]} folder",
        )
    return parent


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
    # The work folder's manifest of the interrupted run this one resumes (None for a fresh start).
    previous: Manifest | None = None
    manifest: Manifest = field(default_factory=Manifest)
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
            if self.resume_from is not None:
                self.previous = read_manifest(self.work_dir)
        parent_manifest = read_manifest(self.parent) if self.parent is not None else None
        parent_ref = None if self.parent is None else StageRef(
            path=str(self.parent.resolve()),
            stage=parent_manifest.stage if parent_manifest is not None else None,
            manifest_sha256=parent_sha,
        )
        self.manifest = Manifest(
            stage=self.stage,
            status="running",
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            versions=versions(),
            git_commit=git_commit(),
            config=self.config,
            seed=self.config.get("seed"),
            parent=parent_ref,
            # The imported model the chain starts from, named by every stage after it.
            base=parent_ref if parent_manifest is not None and parent_manifest.stage in STAGE_NAMES
            and stage_spec(parent_manifest.stage).imports
            else (parent_manifest.base if parent_manifest is not None else None),
        )
        if self.previous is not None:
            self.manifest.created = self.previous.created or self.manifest.created
            carry_record(self.manifest, self.previous, self.resume_from)
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
        if old.stage != self.stage:
            raise UserError(
                f"output folder holds a '{old.stage}' stage, not {self.stage}",
                file=str(self.final_dir / MANIFEST),
                hint="choose another run folder with --out",
            )
        same_parent = (old.parent.manifest_sha256 if old.parent is not None else None) == parent_sha
        if same_settings(old.config, self.config) and same_parent and not self.restart:
            self.skip = True
            return
        if self.restart or not same_parent:
            # A new parent makes the old result stale; it is replaced only when this run succeeds.
            return
        diff = config_diff(stage_identity(old.config), stage_identity(self.config))
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
        if self.work_dir.exists() and not self.restart and old is not None and same_settings(old.config, self.config):
            self._find_resume_checkpoint()
            return
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)

    def _find_resume_checkpoint(self) -> None:
        self.resume_from = newest_valid_checkpoint(self.checkpoints_dir)

    @property
    def checkpoints_dir(self) -> Path:
        """Where the trainer keeps its periodic (resumable) checkpoints."""
        return self.work_dir / "checkpoints"

    def save_manifest(self) -> None:
        """Write the current manifest into the work folder (atomically; first process only)."""
        if is_main_process():
            with writing(self.work_dir / MANIFEST):
                write_manifest(self.work_dir, self.manifest)

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
        m = self.manifest
        m.status, m.finished, m.files, m.summary = "complete", time.strftime("%Y-%m-%dT%H:%M:%S%z"), files, summary
        # This process's stage time plus the training time of the segments before it (a killed one could not
        # record its set-up).
        earlier = sum(seg.get("wall_seconds") or 0 for seg in m.segments[:-1])
        m.wall_seconds = round(earlier + time.time() - self.started, 2)
        m.before = {}  # kept for a resume only: the metrics hold the *_before values by now
        m.tokenizer_sha256, m.chat_template_sha256 = files.get("tokenizer.json"), files.get("chat_template.jinja")
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
        self.manifest.status, self.manifest.error = "failed", f"{type(error).__name__}: {error}"
        try:
            self.save_manifest()
        except OSError:
            pass  # a full disk cannot take the note either; the original error is what to report


def carry_record(manifest: Manifest, previous: Manifest, checkpoint: Path) -> None:
    """Continue an interrupted run's record in `manifest`: its before-training measures, and its log
    history, probe scores, samples, anomalies and training segments up to the checkpoint resumed from
    (`checkpoint-N`); what it logged after step N is logged again by the resumed run."""
    step = int(Path(checkpoint).name.rsplit("-", 1)[-1])

    def upto(entries: Any, key: str = "step") -> list[dict[str, Any]]:
        return [e for e in entries or [] if isinstance(e, dict) and isinstance(e.get(key), int) and e[key] <= step]

    manifest.before = dict(previous.before)
    manifest.budget = previous.budget
    manifest.evals, manifest.probes, manifest.samples = upto(previous.evals), upto(previous.probes), upto(previous.samples)
    anomalies = upto((previous.monitor or {}).get("anomalies"))
    manifest.monitor = {"anomalies": anomalies} if anomalies else None
    # A kill during a later save can leave a segment recorded past the checkpoint that is resumed.
    manifest.segments = [{**seg, "to_step": min(seg.get("to_step", step), step)}
                         for seg in upto(previous.segments, "from_step") if seg["from_step"] < step]
