"""llmpipe's own terse console output (no torch import), quiet on every process but the first."""

from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    """True on the first process of a distributed launch, and when not distributed."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def say(message: str) -> None:
    """Print one progress line to stderr (main process only), flushed at once."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)
