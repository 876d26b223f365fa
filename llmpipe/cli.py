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

from llmpipe.cli_common import (
    CHAT_SECTION,
    BatchSizeOpt,
    ChatDeviceOpt,
    CheckpointArg,
    DebugOpt,
    DeviceOpt,
    FromOpt,
    MaxNewTokensOpt,
    MethodOpt,
    OutOpt,
    PromptsOpt,
    RawOpt,
    RecipeArg,
    RepliesOpt,
    RestartOpt,
    RewardModelOpt,
    RLOpt,
    SeedOpt,
    SourceOpt,
    TemperatureOpt,
    TopPOpt,
    TrustOpt,
    app,
    data_app,
    echo,
    guard,
    run_dir_for,
    split_args,
)
from llmpipe.core.console import is_main_process, quiet_libraries
from llmpipe.core.errors import EXIT_USER_ERROR, UserError
from llmpipe.registry import BASE, RUN_ORDER, stage_for, stage_spec


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



@app.command(stage_spec(BASE).section)
def base(args: RecipeArg = None, source: SourceOpt = None, out: OutOpt = None, restart: RestartOpt = False,
         trust_remote_code: TrustOpt = False, debug: DebugOpt = False) -> None:
    """Import an existing model as the run's base stage (checked, weights linked not copied, sha256
    recorded); every later stage can start from it, and `llmpipe run` on a recipe with `base:` does."""
    _stage_command(stage_spec(BASE).section, args, out, Path(source) if source else None, restart, None, debug,
                   trust=trust_remote_code)


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



def keys(
    grep: Annotated[str | None, typer.Option("--grep", help="Only the keys whose line holds TEXT (any case), e.g. lora.")] = None,
) -> None:
    """List every recipe key, one per line: its default, range or choices, and what it does."""

    def action() -> None:
        from llmpipe.config import key_docs

        docs = key_docs(grep)
        if not docs:
            raise UserError(f"no key matches {grep!r}", field="--grep", hint="run 'llmpipe keys' to list them all")
        for doc in docs:
            typer.echo(doc.line())

    guard(False, action)


def recipes(
    name: Annotated[str | None, typer.Argument(help="A built-in recipe to print, e.g. to copy and edit.", show_default=False)] = None,
) -> None:
    """List the built-in recipes, one line each (run one by name: llmpipe run tiny); with NAME, print it."""

    def action() -> None:
        from llmpipe.config.recipes import builtin_recipes, describe, find_recipe

        known = builtin_recipes()
        if name is not None:
            # find_recipe gives the one-line error (with the nearest name) for one that is not built in.
            path = known[name] if name in known else find_recipe(name)
            typer.echo(path.read_text(encoding="utf-8"), nl=False)
            return
        width = max(map(len, known), default=0)
        for recipe_name, path in known.items():
            typer.echo(f"{recipe_name:<{width}}  {describe(path)}")

    guard(False, action)


def data_check(
    args: RecipeArg = None,
    stage: Annotated[str, typer.Option(help=f"The recipe section whose data to check: {', '.join(RUN_ORDER)}.")] = CHAT_SECTION,
    out: OutOpt = None,
    tokenizer_dir: Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer folder (default: the run's).")] = None,
    examples: Annotated[int, typer.Option(help="Rows to show rendered as trained.")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Dry-run one stage's data: rows, drops by reason, token lengths, truncation, rendered examples."""

    def action() -> None:
        from llmpipe.data.check import check, format_report

        if stage not in RUN_ORDER:
            raise UserError(f"unknown stage '{stage}'", field="--stage", hint=f"use one of {', '.join(RUN_ORDER)}")
        recipe = load(args, stage, None, training=False)
        quiet_libraries()
        result = check(recipe, stage, run_dir_for(recipe, out), tokenizer_dir, examples)
        if json_out is not None:
            import json

            json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        echo(format_report(result))

    guard(debug, action)


def data_synth(out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")] = Path("data"),
               seed: Annotated[int, typer.Option(help="World and sampling seed.")] = 0) -> None:
    """Regenerate the embedded datasets (pretrain/sft/prefs, train and validation) deterministically."""
    from llmpipe.data.synth import generate

    for name, rows in generate(out, seed=seed).items():
        typer.echo(f"{out / name}: {rows} rows")


def data_suites(out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")] = Path("data/suites")) -> None:
    """Regenerate the shipped instruction-following and safety suites and their README (data/suites)."""
    from llmpipe.eval.suite_data import write_suites

    for name, rows in write_suites(out).items():
        typer.echo(f"{out / name}: {rows} prompts")


def chat(checkpoint: CheckpointArg, system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
         max_new_tokens: MaxNewTokensOpt = 128, temperature: TemperatureOpt = 0.7, top_p: TopPOpt = 0.95,
         seed: SeedOpt = 0, device: ChatDeviceOpt = "auto", debug: DebugOpt = False) -> None:
    """Chat with a checkpoint: one user message per line on stdin; /reset clears the history, /exit quits."""

    def action() -> None:
        from llmpipe.chat import ChatSession, Sampling, chat_loop
        from llmpipe.loading import load_checkpoint

        sampling = Sampling(max_new_tokens, temperature, top_p, seed)
        sampling.check()
        quiet_libraries()
        model, tokenizer = load_checkpoint(checkpoint, device, need_template=True)
        session = ChatSession(model, tokenizer, sampling, system)
        interactive = sys.stdin.isatty()
        if interactive:
            typer.echo(f"chatting with {checkpoint}; /reset clears the history, /exit quits", err=True)

        def read_line() -> str:
            if interactive:
                typer.echo("> ", nl=False, err=True)
            return sys.stdin.readline()

        chat_loop(session, read_line, typer.echo, lambda text: typer.echo(text, err=True))

    guard(debug, action)


def generate(checkpoint: CheckpointArg, prompts: PromptsOpt, out: RepliesOpt = None, max_new_tokens: MaxNewTokensOpt = 128,
             temperature: TemperatureOpt = 0.7, top_p: TopPOpt = 0.95, seed: SeedOpt = 0, batch_size: BatchSizeOpt = 16,
             raw: RawOpt = False, device: ChatDeviceOpt = "auto", debug: DebugOpt = False) -> None:
    """Generate a reply to every prompt of a file; writes JSONL rows {prompt, reply}."""

    def action() -> None:
        import json

        from llmpipe.chat import Sampling, generate_rows, read_prompts
        from llmpipe.loading import load_checkpoint

        sampling = Sampling(max_new_tokens, temperature, top_p, seed)
        sampling.check()
        if out is not None and not out.parent.is_dir():
            raise UserError("output folder does not exist", file=str(out.parent))
        rows = read_prompts(prompts, raw)
        quiet_libraries()
        model, tokenizer = load_checkpoint(checkpoint, device, need_template=not raw)
        lines = (json.dumps(row, ensure_ascii=False) for row in generate_rows(model, tokenizer, rows, sampling, batch_size, raw))
        if out is None:
            for line in lines:
                typer.echo(line)
            return
        text = "".join(line + "\n" for line in lines)
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write: {e.strerror}", file=str(out)) from None
        typer.echo(f"{out}: {len(rows)} replies", err=True)

    guard(debug, action)


def export_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="A finished stage folder, or with --merge a LoRA adapter folder.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (new or empty).", show_default=False)],
    merge: Annotated[bool, typer.Option("--merge", help="Merge a LoRA adapter (CHECKPOINT, or its adapter/) into its base.")] = False,
    base: Annotated[Path | None, typer.Option("--base", help="With --merge: the adapter's base model (default: the one it names).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="hf: a Hugging Face folder; gguf: a GGUF file and an Ollama Modelfile.")] = "hf",
    quant: Annotated[str | None, typer.Option("--quant", help="With --format gguf: f16 (default) or q8_0.", show_default=False)] = None,
    debug: DebugOpt = False,
) -> None:
    """Write a plain Hugging Face model folder (safetensors, config, tokenizer, chat template; no llmpipe
    files), or with --format gguf a GGUF file and an Ollama Modelfile; either is checked to give the
    same logits as its source."""

    def action() -> None:
        from llmpipe.export_gguf import check_request

        quant_type = check_request(fmt, quant)
        quiet_libraries()
        if quant_type is not None:
            from llmpipe.export_gguf import export_gguf

            result = export_gguf(checkpoint, out, quant_type, merge, base)
            typer.echo(f"{result['file']}: {result['architecture']} GGUF, {result['quant']}, {result['bytes'] / 1e6:.1f} MB "
                       f"({', '.join(f'{n} {t}' for t, n in sorted(result['tensor_types'].items()))} tensors), "
                       f"pre-tokenizer {result['pre_tokenizer']}; read back through transformers: max logit difference "
                       f"{result['max_logit_diff']:.2g} ({result['relative_logit_diff']:.2g} of the largest logit, "
                       f"tolerance {result['tolerance']}), same token ids and chat rendering")
            typer.echo(f"{result['out']}/Modelfile: {result['modelfile']}")
            return
        from llmpipe.export import export

        result = export(checkpoint, out, merge, base)
        merged = f", adapter merged into {result['merged_into']}" if result["merged_into"] else ""
        typer.echo(f"{result['out']}: {', '.join(result['files'])}{merged}; max logit difference {result['max_logit_diff']:.2g}")

    guard(debug, action)


# The tools beside training, listed after the stages.
for _name, _command in (("keys", keys), ("recipes", recipes), ("chat", chat), ("generate", generate), ("export", export_checkpoint)):
    app.command(_name)(_command)
for _name, _command in (("check", data_check), ("synth", data_synth), ("suites", data_suites)):
    data_app.command(_name)(_command)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="llmpipe")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
