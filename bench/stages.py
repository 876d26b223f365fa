"""Stage throughput: every llmpipe training stage against a minimal hand-written loop (bench/loops.py).

For pretrain, SFT, DPO and RL (RLOO against a reward model) on one preset, at one precision: tokens/s,
peak memory, MFU against a matmul peak measured in the same run, and the ratios the project holds
itself to (issue #7): pretrain >= 1.0x its loop; SFT and DPO >= 0.95x the pretrain stage's tokens/s
on the same tokens per step. Also `llmpipe --help` start-up time (goal <= 0.3 s).

Each measurement runs in its own process, so that peak memory (max RSS; on a GPU, max allocated) is
its own. Prints a table and writes bench/results/stages.json. Run: `make bench`, or
`python bench/stages.py --steps 30 --cases pretrain,sft` (`--compile` adds compiled pretrain rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

NEVER = 10**9
GOALS = {"pretrain": ("loop", 1.0), "sft": ("pretrain", 0.95), "dpo": ("pretrain", 0.95)}


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """One recipe for every measurement: the same tokens per step (batch x length) in pretrain and
    SFT, a DPO batch of about as many tokens, and nothing but training inside the timed fit."""
    quiet = [f"{s}.{k}={v}" for s in ("pretrain", "sft", "align", "reward")
             for k, v in (("eval_every", NEVER), ("save_every", NEVER), ("log_every", NEVER))]
    quiet += [f"{s}.{k}=[]" for s in ("pretrain", "sft", "align") for k in ("probes", "sample_prompts")]
    return [
        f"model={args.preset}", f"precision={args.precision}", f"compile={str(args.compiled).lower()}",
        f"pretrain.max_steps={args.steps}", f"pretrain.batch_size={args.batch_size}", f"pretrain.max_length={args.max_length}",
        f"pretrain.warmup_steps={min(10, args.steps)}",
        f"sft.max_steps={args.steps}", f"sft.batch_size={args.batch_size}", f"sft.max_length={args.max_length}",
        f"sft.warmup_steps={min(5, args.steps)}", "sft.accuracy_rows=8",
        f"align.max_steps={args.steps}", f"align.batch_size={args.dpo_batch_size}", "align.max_length=128",
        f"align.warmup_steps={min(5, args.steps, args.rl_steps)}", "align.preference_rows=16", "align.heldout_prompts=8",
        "reward.max_steps=5", "reward.warmup_steps=1", "reward.preference_rows=16", *quiet,
    ]


def worker(kind: str, case: str, run_dir: Path, steps: int, overrides: list[str]) -> dict:
    """One measurement in this process: the llmpipe stage (`kind=stage`) or its hand-written loop."""
    import loops
    import torch

    from llmpipe.config import load_recipe
    from llmpipe.core.console import quiet_libraries
    from llmpipe.pipeline import train_section, train_stage
    from llmpipe.registry import REWARD_MODEL, TOKENIZER, stage_spec
    from llmpipe.runs import read_manifest_json

    quiet_libraries()
    recipe = load_recipe(None, overrides)
    if case == "rl":
        recipe = load_recipe(None, [*overrides, "align.method=rlhf", "align.rl=rloo", f"align.max_steps={steps}",
                                    "align.batch_size=16", "align.num_generations=4", "align.max_new_tokens=32",
                                    f"align.reward_model={run_dir / 'reward'}"])
    parents = {"pretrain": run_dir / "tokenizer", "sft": run_dir / "pretrain", "dpo": run_dir / "sft", "rl": run_dir / "sft"}
    if kind == "setup":  # what the measured stages stand on, not measured
        train_stage(stage_spec(TOKENIZER if case == "tokenizer" else REWARD_MODEL), recipe, run_dir)
        return {}
    if kind == "loop":
        with tempfile.TemporaryDirectory() as scratch:
            result = {
                "pretrain": lambda: loops.pretrain(recipe, parents["pretrain"], steps),
                "sft": lambda: loops.sft(recipe, parents["sft"], steps, Path(scratch)),
                "dpo": lambda: loops.dpo(recipe, parents["dpo"], steps, Path(scratch)),
                "rl": lambda: loops.rl(recipe, parents["rl"], run_dir / "reward", steps),
            }[case]()
    else:
        section = {"pretrain": "pretrain", "sft": "sft", "dpo": "align", "rl": "align"}[case]
        manifest = read_manifest_json(train_section(section, recipe, run_dir, restart=True))  # a repeat replaces the last
        summary = manifest["summary"]
        # Over the training steps, as the loop is timed; the fit's wall time also holds the set-up
        # before them and the final evaluation and checkpoint after (`fit_seconds`).
        steps_wall = manifest["monitor"]["train_seconds"]
        result = {"tokens": summary["tokens"], "wall_seconds": steps_wall, "tokens_per_second": summary["tokens"] / steps_wall,
                  "fit_seconds": summary["wall_seconds"]}
        result["mean_loss"] = summary["train_loss"]
        result["compile_seconds"] = manifest.get("monitor", {}).get("compile_seconds")
    result["peak_memory_mib"] = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                                 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return result


def measure(kind: str, case: str, run_dir: Path, args: argparse.Namespace, compiled: bool = False) -> dict:
    """Run `worker` in a fresh process and read back its result."""
    out = run_dir / f"{kind}-{case}-{int(compiled)}.json"
    command = [sys.executable, __file__, "--worker", kind, case, "--run-dir", str(run_dir), "--result", str(out),
               *_passthrough(args), *(["--compiled"] if compiled else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {case} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def best_of(repeat: int, pair: Any) -> dict:
    """{loop, llmpipe}: each the fastest of `repeat` runs, loop and stage alternating so that both
    see the same drifts of a shared machine (run to run, tokens/s varies by 5-15% here)."""
    runs = [pair() for _ in range(repeat)]
    return {side: max((run[i] for run in runs), key=lambda r: r["tokens_per_second"])
            for i, side in enumerate(("loop", "llmpipe"))}


def _passthrough(args: argparse.Namespace) -> list[str]:
    return ["--preset", args.preset, "--steps", str(args.steps), "--rl-steps", str(args.rl_steps), "--batch-size",
            str(args.batch_size), "--max-length", str(args.max_length), "--dpo-batch-size", str(args.dpo_batch_size),
            "--precision", args.precision]


def help_seconds() -> float:
    """Best of 5 wall times of `llmpipe --help` (the CLI must not import torch to print its help)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "llmpipe.cli", "--help"], capture_output=True, check=True, cwd=ROOT)
        best = min(best, time.perf_counter() - started)
    return best


def flops_per_token(args: argparse.Namespace, tokenizer_dir: Path) -> float:
    """Training FLOPs per token of the preset's model at the benchmark's length."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmpipe.models import build_config, flops_per_token

    config = build_config(args.preset, AutoTokenizer.from_pretrained(tokenizer_dir))
    return flops_per_token(AutoModelForCausalLM.from_config(config), args.max_length)


def main() -> None:
    """Measure every case, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per pretrain/SFT/DPO measurement")
    parser.add_argument("--rl-steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--dpo-batch-size", type=int, default=96, help="pairs per step (~4096 tokens)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--cases", default="pretrain,sft,dpo,rl")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--compile", action="store_true", help="also measure pretraining with torch.compile")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stages.json")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.worker:
        kind, case = args.worker
        steps = args.rl_steps if case == "rl" else args.steps
        result = worker(kind, case, args.run_dir, steps, recipe_overrides(args))
        args.result.write_text(json.dumps(result))
        return

    import torch

    from llmpipe.config import load_recipe
    from llmpipe.train.args import placement
    from llmpipe.train.flops import measure_matmul_peak

    cases = [c for c in args.cases.split(",") if c]
    needs = {"pretrain": [], "sft": ["pretrain"], "dpo": ["pretrain", "sft"], "rl": ["pretrain", "sft"]}
    for case in cases:
        if case not in needs:
            raise SystemExit(f"--cases: unknown case {case!r}; choose from {', '.join(needs)}")
        if any(n not in cases for n in needs[case]):
            raise SystemExit(f"--cases: {case!r} needs {', '.join(needs[case])} too (each stage trains on the one before)")
    cases = [c for c in needs if c in cases]  # in chain order
    bf16 = placement(load_recipe(None, [f"precision={args.precision}"]))["bf16"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench"
        measure("setup", "tokenizer", run_dir, args)
        fpt = flops_per_token(args, run_dir / "tokenizer")
        for case in cases:
            if case == "rl":
                measure("setup", "reward", run_dir, args)
            def pair(case: str = case) -> tuple[dict, dict]:
                return measure("loop", case, run_dir, args), measure("stage", case, run_dir, args)

            rows[case] = best_of(args.repeat, pair)
        if args.compile:
            compiled_dir = Path(tmp) / "compiled"
            measure("setup", "tokenizer", compiled_dir, args)
            rows["pretrain+compile"] = best_of(1, lambda: (measure("loop", "pretrain", compiled_dir, args, compiled=True),
                                                           measure("stage", "pretrain", compiled_dir, args, compiled=True)))
        # Measured after the runs and best of several, so that it is the machine's real peak.
        peak = max(measure_matmul_peak(device, torch.bfloat16 if bf16 else torch.float32, 1.0) for _ in range(3))
    startup = help_seconds()

    # RL also runs the reference and the reward model forward and generates every token (2 FLOPs per
    # parameter each, as llmpipe's monitor counts it); the other stages train on every token they see.
    scale = {"rl": (6 + 2 * 4) / 6}
    pretrain_rate = rows.get("pretrain", {}).get("llmpipe", {}).get("tokens_per_second")
    for case, row in rows.items():
        for side in ("loop", "llmpipe"):
            row[side]["mfu"] = fpt * scale.get(case, 1.0) * row[side]["tokens_per_second"] / peak
        row["ratio_to_loop"] = row["llmpipe"]["tokens_per_second"] / row["loop"]["tokens_per_second"]
        if pretrain_rate:
            row["ratio_to_pretrain"] = row["llmpipe"]["tokens_per_second"] / pretrain_rate
        if case in GOALS:
            against, goal = GOALS[case]
            value = row["ratio_to_loop"] if against == "loop" else row.get("ratio_to_pretrain")
            row["goal"] = {"against": against, "ratio": goal, "met": value is not None and value >= goal}
    result = {
        "benchmark": "stages", "preset": args.preset, "precision": "bf16" if bf16 else "fp32",
        "tokens_per_step": args.batch_size * args.max_length, "steps": args.steps, "rl_steps": args.rl_steps,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "matmul_peak_tflops": peak / 1e12, "flops_per_token": fpt,
        "help_seconds": startup, "help_goal_met": startup <= 0.3, "cases": rows,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _after_compile(row: dict) -> float:
    """Tokens/s over the wall time left once compiling is taken out."""
    return row["tokens"] / max(1e-9, row["wall_seconds"] - row["compile_seconds"])


def print_table(result: dict) -> None:
    """The benchmark's table: one row per case, llmpipe against its loop, and the goals."""
    print(f"{result['preset']} preset, {result['precision']}, {result['tokens_per_step']} tokens/step, {result['device']} "
          f"({result['threads']} threads), matmul peak {result['matmul_peak_tflops'] * 1000:.0f} GFLOP/s")
    head = f"{'case':17s} {'loop tok/s':>10s} {'llmpipe':>9s} {'vs loop':>8s} {'vs pretr.':>9s} {'goal':>12s} " \
           f"{'MFU loop':>8s} {'MFU':>6s} {'peak MiB loop/llmpipe':>22s}"
    print(head)
    for case, row in result["cases"].items():
        goal = row.get("goal")
        goal_text = f"{'ok' if goal['met'] else 'MISSED'} >={goal['ratio']:.2f}" if goal else "-"
        vs_pretrain = f"{row['ratio_to_pretrain']:.3f}" if "ratio_to_pretrain" in row else "-"
        print(f"{case:17s} {row['loop']['tokens_per_second']:>10,.0f} {row['llmpipe']['tokens_per_second']:>9,.0f} "
              f"{row['ratio_to_loop']:>8.3f} {vs_pretrain:>9s} {goal_text:>12s} {row['loop']['mfu']:>8.1%} "
              f"{row['llmpipe']['mfu']:>6.1%} {row['loop']['peak_memory_mib']:>10,.0f}/{row['llmpipe']['peak_memory_mib']:,.0f}")
        if row["llmpipe"].get("compile_seconds") is not None:
            loop, stage = row["loop"], row["llmpipe"]
            print(f"{'':17s} compile time {loop['compile_seconds']:.1f} s (loop) / {stage['compile_seconds']:.1f} s (llmpipe); "
                  f"tok/s after it {_after_compile(loop):,.0f} / {_after_compile(stage):,.0f}")
    print(f"llmpipe --help: {result['help_seconds']:.3f} s ({'ok' if result['help_goal_met'] else 'MISSED'} <= 0.3 s)")


if __name__ == "__main__":
    main()
