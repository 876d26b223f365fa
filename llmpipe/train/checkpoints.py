"""Trainer checkpoints that can be trusted on resume, and a graceful stop on Ctrl-C / SIGTERM.

HF Trainer writes `checkpoint-N/` file by file, so a kill in the middle of a save leaves a folder
that looks like a checkpoint and is not one. Each completed save is therefore sealed: a
`llmpipe-seal.json` with every file's size and sha256, written atomically after the last file.
Resume takes the newest checkpoint whose seal matches its files and skips (with a warning naming it)
any other. HF's keep-last-N rotation runs only after a save completed, so it never removes the last
good checkpoint in favour of a broken one.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

from llmpipe.core.console import is_main_process, say
from llmpipe.core.errors import UserError

SEAL = "llmpipe-seal.json"
EXIT_INTERRUPTED = 130


class Interrupted(UserError):
    """Training was stopped by Ctrl-C or SIGTERM after saving a checkpoint."""

    exit_code = EXIT_INTERRUPTED


def seal(folder: Path) -> None:
    """Record the size and sha256 of every file of a finished checkpoint folder."""
    from llmpipe.core.files import sha256_file, write_json_atomic

    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SEAL}
    write_json_atomic(folder / SEAL, {"files": files})


def check(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (no seal, a file missing, changed or
    truncated), or None when it is whole."""
    import json

    from llmpipe.core.files import sha256_file

    try:
        files = json.loads((folder / SEAL).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return "not sealed: the save did not finish"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} is truncated or changed ({path.stat().st_size} bytes, sealed {expected['size']})"
        if sha256_file(path) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def newest_valid_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest sealed, intact `checkpoint-N` folder; broken newer ones are removed with a warning
    (the trainer would otherwise count them in its keep-last-N rotation)."""
    candidates = sorted(
        (p for p in Path(checkpoints_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for folder in candidates:
        problem = check(folder)
        if problem is None:
            return folder
        say(f"warning: {folder} cannot be resumed from ({problem}); skipped and removed")
        if is_main_process():
            shutil.rmtree(folder, ignore_errors=True)
    return None


def checkpoint_callbacks() -> tuple[Any, Any]:
    """(sealer, stopper): TrainerCallbacks that seal each save and turn Ctrl-C / SIGTERM into
    "save a checkpoint at the end of this step, then stop". `stopper.requested` says it happened."""
    from transformers import TrainerCallback

    class Sealer(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                seal(folder)

    class Stopper(TrainerCallback):
        def __init__(self) -> None:
            self.requested: str | None = None
            self.previous: dict[int, Any] = {}

        def _handle(self, signum: int, frame: Any) -> None:
            if self.requested is not None:  # a second Ctrl-C: stop now, the last checkpoint stays
                raise KeyboardInterrupt
            self.requested = signal.Signals(signum).name
            say(f"{self.requested}: saving a checkpoint at the end of this step, then stopping (again to stop at once)")

        def on_train_begin(self, args, state, control, **kwargs):
            import threading

            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGINT, signal.SIGTERM):
                    self.previous[signum] = signal.signal(signum, self._handle)

        def on_step_end(self, args, state, control, **kwargs):
            if self.requested is not None:
                control.should_save = True
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
            self.previous = {}

    return Sealer(), Stopper()
