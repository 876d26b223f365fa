"""Architectures at equal wall time: GPT-2 against the modern layouts (llama, qwen3) of the same size,
pretrained from scratch by llmpipe's own pretrain stage for the same budget of training seconds.

Each family first runs a few calibration steps; its step count is then the budget over its measured
step time, so that every family trains for about the same seconds with a whole cosine schedule (a
time-based stop would cut one family's schedule short). Then, on each dataset, the tokenizer stage
runs once (every family reads the same tokens) and each family pretrains from it. Validation is the
stage's own bits per byte, on every full block of the dataset's whole validation file (only the tail
under one block, < 1.5% of it, is left out).

Datasets: `embedded` (the default recipe's pretraining text, data/pretrain.*) and `shakespeare`
(../shared/data/tinyshakespeare.*, when present). Prints a table and writes
bench/results/architectures.json. Run: `python bench/architectures.py` (`--budget 90`,
`--families gpt2,llama,qwen3`, `--datasets embedded,shakespeare`). `--steps N` trains every family for
N steps instead (equal steps, not equal time): what each learns per step, whatever the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

NEVER = 10**9
# Each family at tiny's size: the same weight matrices per layer (llmpipe/config/presets.py).
PRESETS = {"gpt2": "tiny", "llama": "tiny-llama", "qwen3": "tiny-qwen3"}
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "embedded": None,  # the defaults: data/pretrain.train.jsonl and .validation.jsonl
    "shakespeare": (SHARED / "tinyshakespeare.train.jsonl", SHARED / "tinyshakespeare.validation.jsonl"),
}


def overrides(family: str, dataset: str, steps: int, args: argparse.Namespace) -> list[str]:
    """The recipe of one run: the family's tiny preset, only training inside the timed steps, and the
    evaluation (before and after) over the whole validation file."""
    keys = [f"model={PRESETS[family]}", f"precision={args.precision}", f"pretrain.max_steps={steps}",
            f"pretrain.warmup_steps={max(1, steps // 10)}", f"pretrain.batch_size={args.batch_size}",
            f"pretrain.max_length={args.max_length}", f"pretrain.eval_every={NEVER}", f"pretrain.save_every={NEVER}",
            f"pretrain.log_every={max(1, steps // 4)}", "pretrain.eval_batches=100000", "pretrain.probes=[]",
            "pretrain.sample_prompts=[]"]
    files = DATASETS[dataset]
    if files is not None:
        train, validation = files
        keys += [f"{section}.train_files=[{train}]" for section in ("tokenizer", "pretrain")]
        keys += [f"{section}.validation_files=[{validation}]" for section in ("tokenizer", "pretrain")]
    return keys


def pretrain(run_dir: Path, family: str, dataset: str, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """Pretrain `family` for `steps` from the tokenizer in `run_dir`; the manifest's figures."""
    from llmpipe.config import load_recipe
    from llmpipe.pipeline import train_section
    from llmpipe.runs import read_manifest_json

    manifest = read_manifest_json(train_section("pretrain", load_recipe(None, overrides(family, dataset, steps, args)),
                                                run_dir, restart=True))
    seconds = manifest["monitor"]["train_seconds"]
    metrics, summary = manifest["metrics"], manifest["summary"]
    return {"preset": PRESETS[family], "steps": summary["steps"], "tokens": summary["tokens"], "train_seconds": seconds,
            "fit_seconds": summary["wall_seconds"], "tokens_per_second": summary["tokens"] / seconds,
            "parameters": metrics["parameters"], "flops_per_token": metrics["flops_per_token"],
            "validation_loss": metrics["validation_loss"], "validation_bpb": metrics["validation_bpb"],
            "validation_bpb_before": metrics["validation_bpb_before"]}


def tokenizer(run_dir: Path, dataset: str, args: argparse.Namespace) -> None:
    """The tokenizer stage of `dataset` (the default recipe's tokenizer settings) into `run_dir`."""
    from llmpipe.config import load_recipe
    from llmpipe.pipeline import train_section

    train_section("tokenizer", load_recipe(None, overrides("gpt2", dataset, 1, args)), run_dir)


def main() -> None:
    """Calibrate each family's step time, train every family on every dataset, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0, help="training seconds per run (the steps, not start-up)")
    parser.add_argument("--families", default="gpt2,llama,qwen3")
    parser.add_argument("--datasets", default="embedded,shakespeare")
    parser.add_argument("--calibration-steps", type=int, default=12)
    parser.add_argument("--steps", type=int, default=0, help="equal steps instead of equal time (no calibration)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--note", default="", help="conditions of the run, kept in the JSON (e.g. 'other jobs on the CPU')")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "architectures.json")
    args = parser.parse_args()
    os.chdir(ROOT)
    families = [f for f in args.families.split(",") if f]
    datasets = [d for d in args.datasets.split(",") if d]
    for name, known in (("family", PRESETS), ("dataset", DATASETS)):
        for value in families if name == "family" else datasets:
            if value not in known:
                raise SystemExit(f"unknown {name} {value!r}; choose from {', '.join(known)}")
    if "shakespeare" in datasets and not DATASETS["shakespeare"][0].is_file():
        raise SystemExit(f"{DATASETS['shakespeare'][0]} not found: run with --datasets embedded")

    import torch

    from llmpipe.config import load_recipe
    from llmpipe.core.console import quiet_libraries
    from llmpipe.train.args import placement

    quiet_libraries()
    bf16 = placement(load_recipe(None, [f"precision={args.precision}"]))["bf16"]
    started = time.time()
    runs: dict[str, dict[str, Any]] = {}
    calibration: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in datasets:
            base = Path(tmp) / dataset / "tokenizer-run"
            tokenizer(base, dataset, args)
            for family in families:
                run_dir = Path(tmp) / dataset / family
                shutil.copytree(base, run_dir)
                if family not in calibration and not args.steps:  # step time does not depend on the text: blocks are all max_length long
                    calibration[family] = pretrain(run_dir, family, dataset, args.calibration_steps, args)
                    calibration[family]["step_seconds"] = calibration[family]["train_seconds"] / args.calibration_steps
                steps = args.steps or max(1, int(args.budget / calibration[family]["step_seconds"]))
                runs.setdefault(dataset, {})[family] = pretrain(run_dir, family, dataset, steps, args)
                row = runs[dataset][family]
                print(f"{dataset:12s} {family:6s} {row['steps']:4d} steps {row['train_seconds']:6.1f} s "
                      f"{row['tokens_per_second']:7,.0f} tok/s  bpb {row['validation_bpb']:.4f}", flush=True)
    result = {
        "benchmark": "architectures", "budget_seconds": None if args.steps else args.budget, "steps": args.steps or None,
        "precision": "bf16" if bf16 else "fp32",
        "tokens_per_step": args.batch_size * args.max_length, "device": platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "note": args.note,
        "calibration": {f: {"step_seconds": c["step_seconds"], "tokens_per_second": c["tokens_per_second"]}
                        for f, c in calibration.items()},
        "runs": runs, "seconds": round(time.time() - started, 1), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def print_table(result: dict[str, Any]) -> None:
    """One row per dataset and family: size, steps, speed, wall time and held-out bits per byte."""
    budget = f"equal steps: {result['steps']}" if result.get("steps") else \
        f"equal wall time: {result['budget_seconds']:.0f} s of training steps per run"
    print(f"{budget}, {result['precision']}, "
          f"{result['tokens_per_step']} tokens/step, {result['device']} ({result['threads']} threads)")
    print(f"{'dataset':12s} {'family':7s} {'preset':11s} {'params':>7s} {'steps':>6s} {'tok/s':>7s} {'train s':>8s} "
          f"{'bits/byte':>10s} {'before':>7s}")
    for dataset, families in result["runs"].items():
        for family, row in families.items():
            print(f"{dataset:12s} {family:7s} {row['preset']:11s} {row['parameters'] / 1e6:6.2f}M {row['steps']:>6d} "
                  f"{row['tokens_per_second']:>7,.0f} {row['train_seconds']:>8.1f} {row['validation_bpb']:>10.4f} "
                  f"{row['validation_bpb_before']:>7.3f}")


if __name__ == "__main__":
    main()
