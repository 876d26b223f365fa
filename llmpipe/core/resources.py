"""Where the files that ship with llmpipe are: the embedded datasets and probe suites, and the recipes.

In the repository they live at the top level (data/, recipes/), where `llmpipe data synth` and the
README's commands write and read them; an installed wheel carries the same files inside the package as
llmpipe/_data and llmpipe/_recipes (pyproject.toml maps the folders). One lookup serves both layouts,
so the defaults and the recipes by name work wherever llmpipe is installed or run from.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# What each kind of shipped file is called in the repository (top level) and in the wheel (llmpipe/).
SHIPPED = {"data": "_data", "recipes": "_recipes"}


def shipped_folder(kind: str) -> Path:
    """The folder of the shipped `kind` ("data" or "recipes"): llmpipe/_data (an installed wheel) or the
    repository's top-level data/ (a source checkout, an editable install)."""
    # A wheel is installed unpacked, so the package's Traversable is a real folder that data loaders,
    # tokenizers and `shutil.copyfile` can open by path.
    package = Path(str(files("llmpipe")))
    inside = package / SHIPPED[kind]
    if inside.is_dir():
        return inside
    return package.parent / kind
