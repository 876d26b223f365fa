"""The stages of a run folder in lineage order: what the report, the summary's readers and the verdict walk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmpipe.registry import STAGE_ORDER
from llmpipe.runs.manifest import Manifest, StageRef, read_manifest


def complete_stages(run_dir: Path) -> list[tuple[str, Manifest]]:
    """(folder name, manifest) of every complete stage in a run folder, parents before children."""
    found = {}
    for folder in sorted(Path(run_dir).iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            manifest = read_manifest(folder)
            if manifest is not None and manifest.status == "complete":
                found[folder.name] = manifest

    def parent_of(name: str) -> str | None:
        parent = found[name].parent or StageRef()
        # A copied or moved run still records its parents' old absolute paths: fall back to the stage name.
        for candidate in (Path(parent.path).name, parent.stage):
            if candidate in found and candidate != name:
                return candidate
        return None

    def depth(name: str) -> int:
        seen = {name}
        while (name := parent_of(name)) is not None and name not in seen:
            seen.add(name)
        return len(seen) - 1

    def order(name: str) -> tuple[Any, ...]:
        known = STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER)
        return depth(name), known, str(found[name].created or ""), name

    return [(name, found[name]) for name in sorted(found, key=order)]
