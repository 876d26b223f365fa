"""The README's own-data block, checked in seconds: it parses, every command is an llmpipe command whose
options the CLI accepts, and its recipe with its overrides loads through the config loader (keys, types,
ranges, the data files it names). bench/own_data.py runs the same commands end to end (minutes); this test
makes a README edit that breaks them fail `make test` without that run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import typer
from conftest import ROOT, SHARED_DATA

from llmpipe.cli import app
from llmpipe.config import STAGE_SECTIONS, load_recipe


def _bench():
    spec = importlib.util.spec_from_file_location("own_data_bench", ROOT / "bench" / "own_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()
COMMANDS = BENCH.readme_commands()


def _parsed(words: list[str]) -> tuple[str, dict]:
    """(the subcommand's name, its parsed parameters) of `llmpipe ...`, parsed by the CLI's own click
    commands without running them: an unknown command or option fails here as it would for a user."""
    assert words[0] == "llmpipe", words
    command, args, name, parent = typer.main.get_command(app), words[1:], "llmpipe", None
    while hasattr(command, "resolve_command"):  # a group (llmpipe, llmpipe data): its subcommand comes first
        parent = command.make_context(name, list(args), parent=parent)
        name, command, args = command.resolve_command(parent, list(args))
    return name, command.make_context(name, list(args), parent=parent).params


def test_block_parses_into_llmpipe_commands():
    block = BENCH.own_data_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "\\\n" in block  # continuation lines are joined, not read as commands of their own
    names = [_parsed(words)[0] for words in COMMANDS]
    assert names.count("run") == 1 and "align" in names, names
    # The bench reads each run's manifests from the --out folders the block names.
    assert all(BENCH.option(words, "--out") for words in COMMANDS if _parsed(words)[0] in ("run", "align", "sft"))


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w[:2]) + f" #{i}" for i, w in enumerate(COMMANDS)])
def test_each_command_resolves(words: list[str], monkeypatch):
    name, params = _parsed(words)
    if name not in (*STAGE_SECTIONS, "run", "check"):
        return  # generate, report, ...: nothing of a recipe to resolve
    args = list(params.get("args") or [])
    recipe_path, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    if params.get("method"):
        overrides.append(f"align.method={params['method']}")
    stage = params.get("stage") if name == "check" else None if name == "run" else name
    # Paths in overrides are read from the current folder: the repository root, as the README's commands run.
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(recipe_path, overrides, stage=stage)
    if SHARED_DATA.is_dir():
        for section in (stage,) if stage else STAGE_SECTIONS:
            for key in ("train_files", "validation_files"):
                for path in getattr(getattr(recipe, section), key, []):
                    assert Path(path).exists(), f"{section}.{key}: {path}"
    if name == "run" and any(key.startswith("pretrain.train_files") for key in recipe.given):
        # The tokenizer learns from the same text as pretraining (llmpipe/config/load.py).
        assert recipe.tokenizer.train_files == recipe.pretrain.train_files


def test_the_gguf_placeholder_is_the_only_substitution():
    swapped = BENCH.readme_commands({BENCH.GGUF_PLACEHOLDER: "/models/smol.gguf"})
    changed = [(a, b) for x, y in zip(COMMANDS, swapped, strict=True) for a, b in zip(x, y, strict=True) if a != b]
    assert all(a == BENCH.GGUF_PLACEHOLDER and b == "/models/smol.gguf" for a, b in changed)
