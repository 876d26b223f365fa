"""The built-in recipes (recipes/*.yaml, shipped as llmpipe/_recipes) and finding a recipe by name.

A command's recipe argument is a file when one exists at that path; otherwise a bare name (`tiny`, no
folder and no .yaml) is the built-in recipe of that name, from wherever llmpipe runs. A recipe's
description, for `llmpipe recipes`, is the first line of its leading comment.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from llmpipe.core.errors import UserError
from llmpipe.core.resources import shipped_folder

SUFFIXES = (".yaml", ".yml")


def builtin_recipes() -> dict[str, Path]:
    """Every built-in recipe by name, sorted (the launch configs in recipes/accelerate/ are not recipes)."""
    return {path.stem: path for path in sorted(shipped_folder("recipes").glob("*.yaml"))}


def describe(path: Path) -> str:
    """The first line of a recipe's leading comment, or '' when it has none."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def _is_name(arg: str) -> bool:
    return "/" not in arg and "\\" not in arg and not arg.lower().endswith(SUFFIXES)


def find_recipe(arg: str) -> Path:
    """The recipe file an argument names: an existing path, else a built-in recipe's name.

    An unknown name is a UserError listing the built-in recipes, the nearest first; a path that does
    not exist is one too, pointing at the built-in recipe of the same name if there is one."""
    path = Path(arg)
    if path.is_file():
        return path
    known = builtin_recipes()
    if _is_name(arg) and arg in known:
        return known[arg]
    if path.is_dir():
        raise UserError("is a folder, not a recipe file", file=arg, hint="give a recipe's name (llmpipe recipes) or a YAML recipe file")
    if not _is_name(arg):
        hint = "give the path of a YAML recipe, or a built-in recipe's name (llmpipe recipes)"
        if path.stem in known:
            hint = f"the built-in recipe of that name runs from anywhere: give its name, {path.stem}"
        raise UserError("recipe file not found", file=arg, hint=hint)
    close = difflib.get_close_matches(arg, list(known), n=1, cutoff=0.5)
    guess = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown recipe '{arg}'",
                    hint=f"{guess}built-in recipes: {', '.join(known)} (llmpipe recipes); or give a YAML recipe file")
