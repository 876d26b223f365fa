"""The one rule for relative paths in a recipe, applied once, when the recipe is loaded.

RULE: a relative path in a recipe file starts at the recipe file's folder, one in a key=value override
at the current folder, and a `data/NAME` not found there is llmpipe's embedded data/NAME (where the
defaults point, wherever llmpipe runs).

So a recipe and its data can move together, the built-in recipes (which name `data/...`) work by
name from any folder, and in the repository every `data/...` still reads the repository's data/ (the
embedded data is that folder there). After loading, a recipe's path settings hold paths that open
from the current folder; `portable` turns an embedded file back into `data/NAME` for what a stage
records as its identity, so that a finished stage does not go stale when llmpipe is installed
elsewhere, and records made before this rule stay valid.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from llmpipe.config.constants import DATA
from llmpipe.core.resources import shipped_folder

# The rule as `llmpipe keys` appends it to every path setting's help (the README says it too).
PATH_RULE = ("Relative paths start at the recipe file's folder (key=value overrides: the current folder); "
             f"a {DATA}/NAME not found there is llmpipe's embedded {DATA}/NAME.")
GLOB_CHARS = "*?["


def embedded_data() -> Path:
    """The embedded datasets' and probe suites' folder (llmpipe/_data installed, data/ in the repository)."""
    return shipped_folder(DATA)


def _local(value: str) -> bool:
    # Hub sources, absolute paths and "" (no reward model) are read as they are.
    return bool(value) and not value.startswith("hf:") and not Path(value).is_absolute()


def _exists(path: str) -> bool:
    if any(ch in path for ch in GLOB_CHARS):
        return bool(glob.glob(path))
    return os.path.exists(path)


def _embedded_name(value: str) -> str | None:
    """NAME of a `data/NAME` path (also written `./data/NAME`), else None."""
    normal = Path(os.path.normpath(value)).as_posix()
    prefix = f"{DATA}/"
    return normal[len(prefix):] if normal.startswith(prefix) and len(normal) > len(prefix) else None


def resolve(value: str, base: str | None) -> str:
    """A path as written in a recipe file (`base`: the file's folder) or an override (`base` None: the
    current folder), as a path that opens from the current folder; `data/NAME` falls back to the
    embedded file when there is no such file there. A path found nowhere is returned as the user's own,
    so the error names what they wrote."""
    if not _local(value):
        return value
    own = value if base is None else os.path.normpath(os.path.join(base, value))
    name = _embedded_name(value)
    if name is None or _exists(own):
        return own
    embedded = str(embedded_data() / name)
    return embedded if _exists(embedded) else own


def resolve_default(value: str) -> str:
    """A default path: `data/NAME` is always the embedded file, never one in the current folder."""
    name = _embedded_name(value) if _local(value) else None
    return str(embedded_data() / name) if name is not None else value


def portable(value: str) -> str:
    """`data/NAME` for a path inside the embedded data folder, any other path unchanged: a stage's
    identity names the embedded data the same way wherever llmpipe is installed."""
    if not Path(value).is_absolute():
        return value
    try:
        return f"{DATA}/{Path(value).relative_to(embedded_data()).as_posix()}"
    except ValueError:
        return value


def map_paths(value: Any, convert: Any) -> Any:
    """`convert` applied to a path setting's value: one path, or each path of a list."""
    if isinstance(value, list):
        return [convert(item) if isinstance(item, str) else item for item in value]
    return convert(value) if isinstance(value, str) else value
