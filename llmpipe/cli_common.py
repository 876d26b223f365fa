"""The command line's declarations, apart from its commands (llmpipe.cli) so that each file stays short: the
`llmpipe` app and its `data` group, every command's argument and option types with their help, the guard that
turns a UserError into one line and exit code 2, and small helpers. It imports nothing heavy and nothing lazily;
the commands in llmpipe.cli import what they run inside themselves, so `llmpipe --help` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from llmpipe import __version__
from llmpipe.core.console import is_main_process
from llmpipe.core.errors import EXIT_USER_ERROR, UserError, os_error_line
from llmpipe.registry import ALIGN_METHODS, RL_ALGORITHMS, RUN_ORDER, stage_for

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help=f"Train a language model from raw text to an aligned chat model: {' → '.join(RUN_ORDER)}. (llmpipe {__version__})",
)
data_app = typer.Typer(no_args_is_help=True, help="Data tools.")
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"llmpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="Print llmpipe's version and exit.")] = False) -> None:
    # The app's own options; each command does the work.
    pass


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


def echo(text: str) -> None:
    # Under a distributed launch every process runs the command; one copy of the output is enough.
    if is_main_process():
        typer.echo(text)


def run_dir_for(recipe: Any, out: Path | None) -> Path:
    if out is not None and out.exists() and not out.is_dir():
        raise UserError("is a file; --out takes a run folder", file=str(out), field="--out", hint="give a folder (new or a run folder)")
    return out if out is not None else Path("runs") / recipe.name


SourceOpt = Annotated[str | None, typer.Option("--from", help="The model: a Hugging Face folder, hf:ORG/NAME[@REVISION] "
                                               "or a .gguf file (default: the recipe's base).")]
MethodOpt = Annotated[str | None, typer.Option(help=f"Align method: {', '.join(ALIGN_METHODS)} (default: the recipe's).")]
RLOpt = Annotated[str | None, typer.Option("--rl", help=f"RL algorithm of an RL method with a reward model: {' or '.join(RL_ALGORITHMS)} "
                                           "(default: the recipe's).")]
RewardModelOpt = Annotated[str | None, typer.Option("--reward-model", help="A finished reward stage folder (rlhf: not trained then).")]
CheckpointArg = Annotated[Path, typer.Argument(help="A finished stage folder, e.g. runs/tiny/sft.", show_default=False)]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling: keep the smallest set of tokens with this much probability.")]
SeedOpt = Annotated[int, typer.Option(help="Sampling seed.")]
ChatDeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
PromptsOpt = Annotated[Path, typer.Option("--prompts", help="JSONL rows with 'prompt' or 'messages', or a .txt file, one per line.")]
RepliesOpt = Annotated[Path | None, typer.Option("--out", "-o", help="JSONL file to write (default: stdout).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Prompts per generate call.")]
RawOpt = Annotated[bool, typer.Option("--raw", help="Continue plain text, without the chat template (pretrain checkpoints).")]

# `data check`'s default: the section that reads chat rows (sft), the data users most often bring.
CHAT_SECTION = next(section for section in RUN_ORDER if stage_for(section).data == "chat")
