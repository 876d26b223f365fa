"""Process helpers for `accelerate launch`: is this a distributed run, wait for the others, first-process-first."""

from __future__ import annotations

import os
from typing import Any

from llmpipe.core.console import is_main_process


def distributed() -> bool:
    """Whether this process is one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def barrier() -> None:
    """Wait until every process of a distributed launch gets here; no-op in a single process."""
    if distributed():
        import torch
        from accelerate import PartialState

        # Without cpu=True accelerate treats a CPU-only launch as one process and never waits.
        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


class main_process_first:
    """Context manager: the first process runs the block, then the others do."""

    def __enter__(self) -> None:
        if not is_main_process():
            barrier()

    def __exit__(self, *exc: Any) -> None:
        if is_main_process():
            barrier()
