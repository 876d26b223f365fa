"""Plumbing shared by the command-line modules (llmpipe.cli, llmpipe.cli_tools): the recipe argument and
common options, recipe loading with the checks that must fail before any stage runs, and the guard that turns a
UserError into one line and exit code 2.

Heavy libraries are imported inside functions, as in llmpipe.cli, so `llmpipe --help` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from llmpipe.core.console import is_main_process
from llmpipe.core.errors import EXIT_USER_ERROR, UserError, os_error_line
from llmpipe.registry import RUN_ORDER, stage_for, stage_spec

RecipeArg = Annotated[
    list[str] | None,
    typer.Argument(help="A recipe (optional): a built-in name (llmpipe recipes) or a YAML file; then key=value overrides, "
                   "e.g. tiny max_steps=50", show_default=False),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<recipe name>).")]
FromOpt = Annotated[Path | None, typer.Option("--from", help="Parent checkpoint folder (default: the parent stage of the same run), "
                                               "or a model to import as the run's base: a Hugging Face folder, "
                                               "hf:ORG/NAME[@REVISION] or a .gguf file.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Let an imported model run its own Python code "
                                        "(config.json auto_map); read that code first.")]
RestartOpt = Annotated[bool, typer.Option("--restart", help="Retrain from scratch and replace a finished stage.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or mps (default: the recipe's, auto).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")]


def guard(debug: bool, action: Callable[[], Any]) -> Any:
    """Run a command; a UserError becomes one line on stderr and exit code 2 (traceback with --debug)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        return action()
    except UserError as e:
        if debug:
            raise
        typer.echo(f"error: {e.one_line()}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the stage's work folder keeps its last checkpoint; rerun to resume", err=True)
        raise typer.Exit(130) from None
    except OSError as e:
        # A full disk or a read-only folder is the machine's state, not a bug: one line. Any other
        # OSError (a file llmpipe itself should have written, say) keeps its traceback.
        line = os_error_line(e)
        if debug or line is None:
            raise
        typer.echo(f"error: {line}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None



def split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def load(args: list[str] | None, stage: str | None, device: str | None, training: bool = True) -> Any:
    from llmpipe.config import STAGE_SECTIONS, load_recipe

    recipe_path, overrides = split_args(args)
    if device:
        overrides.append(f"device={device}")
    for extra in overrides:
        if "=" not in extra:
            raise UserError(f"'{extra}' is not key=value (only the first argument can be a recipe)",
                            hint="write overrides like pretrain.max_steps=10")
    recipe = load_recipe(recipe_path, overrides, stage=stage)
    sections = [stage] if stage else list(STAGE_SECTIONS)
    quantized = [s for s in sections if getattr(getattr(getattr(recipe, s, None), "lora", None), "quantize", "none") != "none"]
    if recipe.device != "auto" or recipe.precision != "auto" or (quantized and training):
        # Checked before any stage runs, so `run --device cuda` (or QLoRA) on a CPU box fails in a second.
        from llmpipe.train.args import check_quantization, placement

        placement(recipe)
        for section in quantized if training else []:
            check_quantization(recipe, section)
    if training and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # A DeepSpeed JSON that disagrees with the recipe fails here, not when a later stage builds its trainer.
        from llmpipe.train.args import placement
        from llmpipe.train.launch import check_deepspeed

        check_deepspeed(recipe, trained_sections(recipe, stage), placement(recipe)["bf16"])
    return recipe


def trained_sections(recipe: Any, stage: str | None) -> list[str]:
    """The recipe sections a command trains: its own (align: with what its method trains first), or `run`'s."""
    sections = [stage] if stage else list(RUN_ORDER)
    if "align" in sections:
        sections += [stage_spec(first).section for first in stage_for("align", recipe.align.method).trains_first]
    return sections


def echo(text: str) -> None:
    # Under a distributed launch every process runs the command; one copy of the output is enough.
    if is_main_process():
        typer.echo(text)


def run_dir_for(recipe: Any, out: Path | None) -> Path:
    if out is not None and out.exists() and not out.is_dir():
        raise UserError("is a file; --out takes a run folder", file=str(out), field="--out", hint="give a folder (new or a run folder)")
    return out if out is not None else Path("runs") / recipe.name
