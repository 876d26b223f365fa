"""Seals of trainer checkpoints: which `checkpoint-N` folder can be trusted on resume.

HF Trainer writes `checkpoint-N/` file by file, so a kill in the middle of a save leaves a folder
that looks like a checkpoint and is not one. Each completed save is therefore sealed: a
`llmpipe-seal.json` with every file's size and sha256, written atomically after the last file.
Resume takes the newest checkpoint whose seal matches its files and skips (with a warning naming it)
any other. HF's keep-last-N rotation runs only after a save completed, so it never removes the last
good checkpoint in favour of a broken one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmpipe.core.console import is_main_process, say
from llmpipe.core.files import sha256_file, write_json_atomic

SEAL = "llmpipe-seal.json"


def seal(folder: Path) -> None:
    """Record the size and sha256 of every file of a finished checkpoint folder."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SEAL}
    write_json_atomic(folder / SEAL, {"files": files})


def check(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (no seal, a file missing, changed or
    truncated), or None when it is whole."""
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
