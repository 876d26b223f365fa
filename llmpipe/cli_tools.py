"""The command line's tools beside training: recipe keys and built-in recipes, data checks and the embedded
data's generators, chat and batch generation, and export (a Hugging Face folder or a GGUF file).

llmpipe.cli registers these on its app (`register`); they live apart so that each module stays short.
Heavy libraries are imported inside the commands, so `llmpipe --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmpipe.cli_common import DebugOpt, OutOpt, RecipeArg, echo, guard, load, run_dir_for
from llmpipe.core.console import quiet_libraries
from llmpipe.core.errors import UserError
from llmpipe.registry import RUN_ORDER, stage_for

# `data check`'s default: the section that reads chat rows (sft), the data users most often bring.
CHAT_SECTION = next(section for section in RUN_ORDER if stage_for(section).data == "chat")

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


CheckpointArg = Annotated[Path, typer.Argument(help="A finished stage folder, e.g. runs/tiny/sft.", show_default=False)]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling: keep the smallest set of tokens with this much probability.")]
SeedOpt = Annotated[int, typer.Option(help="Sampling seed.")]
ChatDeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]


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


PromptsOpt = Annotated[Path, typer.Option("--prompts", help="JSONL rows with 'prompt' or 'messages', or a .txt file, one per line.")]
RepliesOpt = Annotated[Path | None, typer.Option("--out", "-o", help="JSONL file to write (default: stdout).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Prompts per generate call.")]
RawOpt = Annotated[bool, typer.Option("--raw", help="Continue plain text, without the chat template (pretrain checkpoints).")]


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


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add the tool commands to the `llmpipe` app and its `data` group."""
    for name, command in (("keys", keys), ("recipes", recipes), ("chat", chat), ("generate", generate),
                          ("export", export_checkpoint)):
        app.command(name)(command)
    for name, command in (("check", data_check), ("synth", data_synth), ("suites", data_suites)):
        data_app.command(name)(command)
