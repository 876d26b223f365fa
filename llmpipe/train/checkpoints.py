"""Trainer callbacks around checkpoints: seal each save (llmpipe.runs.seals says why), and turn
Ctrl-C / SIGTERM into "save a checkpoint at the end of this step, then stop"."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmpipe.core.console import say
from llmpipe.core.errors import UserError
from llmpipe.runs.seals import seal

EXIT_INTERRUPTED = 130


class Interrupted(UserError):
    """Training was stopped by Ctrl-C or SIGTERM after saving a checkpoint."""

    exit_code = EXIT_INTERRUPTED


class Sealer(TrainerCallback):
    """Seals each checkpoint folder once its save completed (llmpipe.runs.seals)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            seal(folder)


class Stopper(TrainerCallback):
    """Turns Ctrl-C / SIGTERM into "save a checkpoint at the end of this step, then stop"; a second one
    stops at once. `requested` names the signal once one came."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # a second Ctrl-C: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        say(f"{self.requested}: saving a checkpoint at the end of this step, then stopping (again to stop at once)")

    def on_train_begin(self, args, state, control, **kwargs):
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


def checkpoint_callbacks() -> tuple[Sealer, Stopper]:
    """(sealer, stopper) for one trainer: seal each save, and stop gracefully on Ctrl-C / SIGTERM."""
    return Sealer(), Stopper()
