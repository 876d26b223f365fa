"""llmpipe's own terse console output (no torch import), quiet on every process but the first."""

from __future__ import annotations

import numbers
import os
import sys
from typing import Any


def is_main_process() -> bool:
    """True on the first process of a distributed launch, and when not distributed."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def say(message: str) -> None:
    """Print one progress line to stderr (main process only), flushed at once."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Silence the libraries' progress bars, info logs and rename warnings: llmpipe prints its own."""
    import os
    import warnings

    import datasets
    import transformers

    # TRL's own bars (e.g. DPO's "Computing reference log probs") read this.
    os.environ.setdefault("TQDM_DISABLE", "1")
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # transformers 5 renamed gradient_checkpointing, which TRL configs still set; nothing to act on.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)


def fmt_number(value: Any, places: int = 3) -> str:
    """A number for a stage's result line: a float to `places` decimals, an integer as it is, '-' for
    None (a measure not taken, e.g. "before" with no held-out rows); anything else as its text."""
    if value is None:
        return "-"
    if isinstance(value, numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return f"{value:.{places}f}"
    return str(value)
