"""The `llmpipe` command line: one command per stage, `run` for a whole recipe, and data tools.

Thin on purpose: it parses arguments, loads the recipe and calls a stage's `run`. Heavy libraries
(torch, transformers, trl) are imported inside the commands, so `llmpipe --help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from llmpipe import __version__
from llmpipe.cli_common import DebugOpt, DeviceOpt, FromOpt, OutOpt, RecipeArg, RestartOpt, TrustOpt, echo, guard, load, run_dir_for
from llmpipe.cli_tools import register
from llmpipe.core.console import is_main_process, quiet_libraries
from llmpipe.core.errors import EXIT_USER_ERROR, UserError
from llmpipe.registry import ALIGN_METHODS, BASE, RL_ALGORITHMS, RUN_ORDER, stage_for, stage_spec

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


def _stage_command(section: str, args: list[str] | None, out: Path | None, parent: Path | None,
                   restart: bool, device: str | None, debug: bool, method: str | None = None, trust: bool = False) -> None:
    def action() -> None:
        overrides = list(args or [])
        if method is not None:
            overrides.append(f"align.method={method}")
        if trust:
            overrides.append(f"{stage_spec(BASE).section}.trust_remote_code=true")
        recipe = load(overrides, section, device)
        run_dir = run_dir_for(recipe, out)
        quiet_libraries()
        from llmpipe.pipeline import train_section

        echo(str(train_section(section, recipe, run_dir, parent=parent, restart=restart)))

    guard(debug, action)


def _section_command(section: str) -> Callable[..., None]:
    """A `llmpipe SECTION` command for a recipe section with one stage (tokenizer, pretrain, sft): the
    registry decides which exist and what their help says."""
    spec = stage_for(section)
    if spec.parents:
        def command(args: RecipeArg = None, out: OutOpt = None, parent: FromOpt = None, restart: RestartOpt = False,
                    device: DeviceOpt = None, trust_remote_code: TrustOpt = False, debug: DebugOpt = False) -> None:
            _stage_command(section, args, out, parent, restart, device, debug, trust=trust_remote_code)
    else:
        def command(args: RecipeArg = None, out: OutOpt = None, restart: RestartOpt = False, debug: DebugOpt = False) -> None:
            _stage_command(section, args, out, None, restart, None, debug)
    command.__doc__ = f"Train the {spec.name} stage: {spec.help}."
    return command


for _section in RUN_ORDER:
    if not stage_for(_section).method:
        app.command(_section)(_section_command(_section))

SourceOpt = Annotated[str | None, typer.Option("--from", help="The model: a Hugging Face folder, hf:ORG/NAME[@REVISION] "
                                               "or a .gguf file (default: the recipe's base).")]


@app.command(stage_spec(BASE).section)
def base(args: RecipeArg = None, source: SourceOpt = None, out: OutOpt = None, restart: RestartOpt = False,
         trust_remote_code: TrustOpt = False, debug: DebugOpt = False) -> None:
    """Import an existing model as the run's base stage (checked, weights linked not copied, sha256
    recorded); every later stage can start from it, and `llmpipe run` on a recipe with `base:` does."""
    _stage_command(stage_spec(BASE).section, args, out, Path(source) if source else None, restart, None, debug,
                   trust=trust_remote_code)


MethodOpt = Annotated[str | None, typer.Option(help=f"Align method: {', '.join(ALIGN_METHODS)} (default: the recipe's).")]
RLOpt = Annotated[str | None, typer.Option("--rl", help=f"RL algorithm of an RL method with a reward model: {' or '.join(RL_ALGORITHMS)} "
                                           "(default: the recipe's).")]
RewardModelOpt = Annotated[str | None, typer.Option("--reward-model", help="A finished reward stage folder (rlhf: not trained then).")]


@app.command()
def align(args: RecipeArg = None, method: MethodOpt = None, rl: RLOpt = None, reward_model: RewardModelOpt = None,
          out: OutOpt = None, parent: FromOpt = None, restart: RestartOpt = False, device: DeviceOpt = None,
          trust_remote_code: TrustOpt = False, debug: DebugOpt = False) -> None:
    """Align the SFT model: DPO (pairs) or KTO (unpaired good / bad replies) against the frozen SFT model,
    or online RL (rlhf: reward model, then RLOO or GRPO against it; grpo / rloo: rule rewards such as exact
    match), with a KL penalty to the SFT model; or Constitutional AI (cai: the model critiques and revises
    its own replies against a constitution, then trains on the revisions)."""
    chosen = [f"align.{key}={value}" for key, value in (("rl", rl), ("reward_model", reward_model)) if value is not None]
    _stage_command("align", [*(args or []), *chosen], out, parent, restart, device, debug, method=method, trust=trust_remote_code)


@app.command()
def run(args: RecipeArg = None, out: OutOpt = None, restart: RestartOpt = False, device: DeviceOpt = None,
        debug: DebugOpt = False) -> None:
    """Run every stage of a recipe in order, skipping stages already complete, then print a summary."""

    def action() -> None:
        recipe = load(args, None, device)
        run_dir = run_dir_for(recipe, out)
        quiet_libraries()
        from llmpipe.eval.gate import RegressionError
        from llmpipe.pipeline import run_recipe
        from llmpipe.summary import render_table

        try:
            run_recipe(recipe, run_dir, restart=restart)
        except RegressionError:
            _write_report(run_dir, recipe)  # the report shows the gate's table of what regressed
            raise
        echo(render_table(run_dir))
        _write_report(run_dir, recipe)

    guard(debug, action)


@app.command()
def scale(args: RecipeArg = None, out: OutOpt = None, minutes: Annotated[float, typer.Option(
              help="Wall-time target of the whole sweep and its check run on this machine.", min=0.1)] = 15.0,
          restart: RestartOpt = False, device: DeviceOpt = None, debug: DebugOpt = False) -> None:
    """Scaling-law checks on the recipe's pretraining data: an IsoFLOP sweep (sizes x compute budgets), the fit of
    L(N, D) = E + A/N^alpha + B/D^beta, and one larger run that checks the law's prediction."""

    def action() -> None:
        recipe = load(args, None, device)
        run_dir = run_dir_for(recipe, out)
        quiet_libraries()
        from llmpipe.report_plots import scaling_figure
        from llmpipe.scale import FIGURE, RESULT, SCALE_DIR, run_scale

        result = run_scale(recipe, run_dir, minutes=minutes, restart=restart)
        if is_main_process():
            figure = scaling_figure(result, run_dir / SCALE_DIR / FIGURE)
            echo(f"scale: {run_dir / SCALE_DIR / RESULT} and {figure}")
            _write_report(run_dir, recipe)

    guard(debug, action)


def _write_report(run_dir: Path, recipe: Any) -> None:
    # Under a distributed launch every process gets here; one of them writes the report. Its verdict uses the
    # recipe's thresholds (a stage skipped as complete recorded those of the run that trained it).
    if is_main_process():
        import dataclasses

        from llmpipe.report import write_report

        written = write_report(run_dir, dataclasses.asdict(recipe.verdict))
        echo(f"report: {written['markdown']} (and {written['html'].name})")


@app.command()
def summary(run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/tiny.")]) -> None:
    """Print the per-stage table of a run folder."""
    from llmpipe.summary import render_table

    if not run_dir.is_dir():
        typer.echo(f"error: {run_dir}: run folder not found — give a run folder such as runs/tiny", err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    typer.echo(render_table(run_dir))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/tiny.")], debug: DebugOpt = False) -> None:
    """Write the run's report card (report.md, report.html, PNG plots) into RUN_DIR/report/."""

    def action() -> None:
        from llmpipe.report import write_report

        for path in write_report(run_dir).values():
            typer.echo(str(path))

    guard(debug, action)


@app.command("eval")
def eval_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="A stage folder, e.g. runs/tiny/sft.")],
    data: Annotated[list[str] | None, typer.Option("--data", help="A text, chat or preference dataset (repeatable).")] = None,
    probes: Annotated[list[Path] | None, typer.Option("--probes", help="A probe suite JSONL (repeatable).")] = None,
    against: Annotated[Path | None, typer.Option("--against", help="Another checkpoint to measure side by side.")] = None,
    samples: Annotated[int, typer.Option(help="Prompts to answer as samples.")] = 3,
    max_rows: Annotated[int, typer.Option(help="Rows read per dataset.")] = 320,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 16,
    max_length: Annotated[int | None, typer.Option(help="Tokens per row/block (default: the stage's).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Where to write the JSON (default: CHECKPOINT/eval.json).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    debug: DebugOpt = False,
) -> None:
    """Held-out loss / perplexity / bits per byte, probe suites, preference accuracy and samples of a
    checkpoint (default: on what its stage protected); results go to its manifest and a JSON file."""

    def action() -> None:
        for name, value in (("--max-rows", max_rows), ("--batch-size", batch_size)):
            if value < 1:
                raise UserError("must be >= 1", field=name)
        quiet_libraries()
        from llmpipe.config.paths import resolve
        from llmpipe.eval.evaluate import evaluate, record, render

        # The recipe rule for paths given on the command line: the current folder, data/NAME falling
        # back to the embedded data.
        evaluation = evaluate(checkpoint, [resolve(d, None) for d in data or []], [resolve(str(p), None) for p in probes or []],
                              against, samples, max_rows, batch_size, max_length, device)
        typer.echo(render(evaluation))
        typer.echo(f"written: {record(checkpoint, evaluation, json_out)}")

    guard(debug, action)


@app.command()
def verdict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (e.g. runs/tiny) or one of its stage folders.", show_default=False)],
    args: RecipeArg = None,
    stage: Annotated[str | None, typer.Option("--stage", help="The stage folder to judge (default: the run's last chat stage).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda, for suites that must be scored first.")] = "auto",
    debug: DebugOpt = False,
) -> None:
    """Release verdict: learned, generalised, follows instructions, safer, no regression, stable; each yes or no
    with its numbers, by the thresholds and suites settings the stage recorded, or a recipe's given after RUN_DIR.
    Scores the suites first where the stage or its parent has none. Exit code 0 when every answer is yes (or
    n/a), 3 otherwise."""

    def action() -> None:
        import dataclasses

        recipe = load(args, None, None, training=False) if args else None
        quiet_libraries()
        from llmpipe.eval.suites import ensure_scores
        from llmpipe.eval.verdict import failure, release_stage, render
        from llmpipe.eval.verdict import verdict as judge

        stage_dir = release_stage(run_dir, stage)
        record = ensure_scores(stage_dir, recipe.suites if recipe else None, device)
        result = judge(stage_dir, dataclasses.asdict(recipe.verdict) if recipe else None, record)
        typer.echo(render(result))
        if not result["ready"]:
            raise failure(result)

    guard(debug, action)



# The tools beside training (keys, recipes, data, chat, generate, export), listed after the stages.
register(app, data_app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="llmpipe")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
