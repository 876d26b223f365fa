"""The `llmpipe` command line: one command per stage, `run` for a whole recipe, and data tools.

Thin on purpose: it parses arguments, loads the recipe and calls a stage's `run`. Heavy libraries
(torch, transformers, trl) are imported inside the commands, so `llmpipe --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from llmpipe.console import quiet_libraries
from llmpipe.errors import EXIT_USER_ERROR, UserError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Train a language model from raw text to an aligned chat model: tokenizer → pretrain → sft → align.",
)
data_app = typer.Typer(no_args_is_help=True, help="Data tools.")
app.add_typer(data_app, name="data")

RecipeArg = Annotated[
    list[str] | None,
    typer.Argument(help="A recipe YAML (optional), then key=value overrides, e.g. recipes/tiny.yaml max_steps=50", show_default=False),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<recipe name>).")]
FromOpt = Annotated[Path | None, typer.Option("--from", help="Parent checkpoint folder (default: the parent stage of the same run).")]
RestartOpt = Annotated[bool, typer.Option("--restart", help="Retrain from scratch and replace a finished stage.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or mps (default: the recipe's, auto).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")]


def _guard(debug: bool, action: Callable[[], Any]) -> Any:
    """Run a command; a UserError becomes one line on stderr and exit code 2 (traceback with --debug)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        return action()
    except UserError as e:
        if debug:
            raise
        typer.echo(f"error: {e.one_line()}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the stage's work folder keeps its last checkpoint; rerun to resume", err=True)
        raise typer.Exit(130) from None


def _split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _load(args: list[str] | None, stage: str | None, device: str | None) -> Any:
    from llmpipe.config import load_recipe

    recipe_path, overrides = _split_args(args)
    if device:
        overrides.append(f"device={device}")
    for extra in overrides:
        if "=" not in extra:
            raise UserError(f"'{extra}' is not key=value (only the first argument can be a recipe file)")
    recipe = load_recipe(recipe_path, overrides, stage=stage)
    if recipe.device != "auto" or recipe.precision != "auto":
        # Checked before any stage runs, so `run --device cuda` on a CPU box fails in a second.
        from llmpipe.train.common import placement

        placement(recipe)
    return recipe


def _echo(text: str) -> None:
    # Under a distributed launch every process runs the command; one copy of the output is enough.
    from llmpipe.console import is_main_process

    if is_main_process():
        typer.echo(text)


def _run_dir(recipe: Any, out: Path | None) -> Path:
    return out if out is not None else Path("runs") / recipe.name


def _stage_command(stage: str, args: list[str] | None, out: Path | None, parent: Path | None,
                   restart: bool, device: str | None, debug: bool, method: str | None = None) -> None:
    def action() -> None:
        overrides = list(args or [])
        if method is not None:
            overrides.append(f"align.method={method}")
        recipe = _load(overrides, stage, device)
        run_dir = _run_dir(recipe, out)
        quiet_libraries()
        folder = _stage_module(stage).run(recipe, run_dir, parent=parent, restart=restart)
        _echo(str(folder))

    _guard(debug, action)


def _stage_module(stage: str) -> Any:
    import importlib

    return importlib.import_module(f"llmpipe.stages.{stage}")


@app.command()
def tokenizer(args: RecipeArg = None, out: OutOpt = None, restart: RestartOpt = False, debug: DebugOpt = False) -> None:
    """Train the run's byte-level BPE tokenizer (with chat template) on the pretraining text."""

    def action() -> None:
        recipe = _load(args, "tokenizer", None)
        from llmpipe import tokenizer as tokenizer_stage

        _echo(str(tokenizer_stage.run(recipe, _run_dir(recipe, out), restart=restart)))

    _guard(debug, action)


@app.command()
def pretrain(args: RecipeArg = None, out: OutOpt = None, parent: FromOpt = None, restart: RestartOpt = False,
             device: DeviceOpt = None, debug: DebugOpt = False) -> None:
    """Pretrain the model preset from random initialisation on packed text (next-token prediction)."""
    _stage_command("pretrain", args, out, parent, restart, device, debug)


@app.command()
def sft(args: RecipeArg = None, out: OutOpt = None, parent: FromOpt = None, restart: RestartOpt = False,
        device: DeviceOpt = None, debug: DebugOpt = False) -> None:
    """Supervised chat tuning of the pretrained model, loss on assistant turns only."""
    _stage_command("sft", args, out, parent, restart, device, debug)


MethodOpt = Annotated[str | None, typer.Option(help="Preference method: dpo (default: the recipe's).")]


@app.command()
def align(args: RecipeArg = None, method: MethodOpt = None,
          out: OutOpt = None, parent: FromOpt = None, restart: RestartOpt = False, device: DeviceOpt = None,
          debug: DebugOpt = False) -> None:
    """Preference-tune the SFT model (DPO against the frozen SFT model)."""
    _stage_command("align", args, out, parent, restart, device, debug, method=method)


@app.command()
def run(args: RecipeArg = None, out: OutOpt = None, restart: RestartOpt = False, device: DeviceOpt = None,
        debug: DebugOpt = False) -> None:
    """Run every stage of a recipe in order, skipping stages already complete, then print a summary."""

    def action() -> None:
        recipe = _load(args, None, device)
        run_dir = _run_dir(recipe, out)
        quiet_libraries()
        from llmpipe import tokenizer as tokenizer_stage
        from llmpipe.summary import render_table

        tokenizer_stage.run(recipe, run_dir, restart=restart)
        for stage in ("pretrain", "sft", "align"):
            _stage_module(stage).run(recipe, run_dir, restart=restart)
        _echo(render_table(run_dir))

    _guard(debug, action)


@app.command()
def summary(run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/tiny.")]) -> None:
    """Print the per-stage table of a run folder."""
    from llmpipe.summary import render_table

    if not run_dir.is_dir():
        typer.echo(f"error: {run_dir}: run folder not found", err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    typer.echo(render_table(run_dir))


@app.command()
def keys() -> None:
    """List every recipe key with its default value."""
    import dataclasses

    from llmpipe.config import Recipe, all_keys

    defaults = dataclasses.asdict(Recipe())
    for key in all_keys():
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        typer.echo(f"{key} = {value}")


@data_app.command("check")
def data_check(
    args: RecipeArg = None,
    stage: Annotated[str, typer.Option(help="tokenizer, pretrain, sft or align.")] = "sft",
    out: OutOpt = None,
    tokenizer_dir: Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer folder (default: the run's).")] = None,
    examples: Annotated[int, typer.Option(help="Rows to show rendered as trained.")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Dry-run one stage's data: rows, drops by reason, token lengths, truncation, rendered examples."""

    def action() -> None:
        from llmpipe.data.check import KINDS, check, format_report

        if stage not in KINDS:
            raise UserError(f"unknown stage '{stage}'", field="--stage", hint=f"use one of {', '.join(KINDS)}")
        recipe = _load(args, stage, None)
        quiet_libraries()
        result = check(recipe, stage, _run_dir(recipe, out), tokenizer_dir, examples)
        if json_out is not None:
            import json

            json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _echo(format_report(result))

    _guard(debug, action)


@data_app.command("synth")
def data_synth(out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")] = Path("data"),
               seed: Annotated[int, typer.Option(help="World and sampling seed.")] = 0) -> None:
    """Regenerate the embedded datasets (pretrain/sft/prefs, train and validation) deterministically."""
    from llmpipe.data.synth import generate

    for name, rows in generate(out, seed=seed).items():
        typer.echo(f"{out / name}: {rows} rows")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="llmpipe")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
