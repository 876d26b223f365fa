"""Pretraining on a time budget, and the optimisers and schedules at equal wall time.

Default: issue 15's acceptance run. `llmpipe tokenizer` then `llmpipe pretrain` with only the tiny
shakespeare data paths and `pretrain.time_budget=120` (everything else the defaults), exactly as a user
would type them; prints the held-out bits per byte on the whole validation file (every full block: the
stage's validation reads up to eval_batches x batch_size = 320 blocks, tinyshakespeare's has 112), the size
the stage chose or was given, its steps, the training and wall seconds. For reference, the issue measured
nanoGPT's README CPU recipe on the same machine and data at 2.72 bits/byte in 125 s.

`--optimizers`: AdamW and Muon, each with the cosine and the warmup-stable-decay schedule, at the same time
budget on the same data, each on the model `model: auto` picks for the budget (or `--model`), for the README's
table. Writes bench/results/budget.json or bench/results/optimizers.json.

Run: `python bench/budget.py [--budget 120] [--model auto] [--optimizers]`. Needs ../shared/data. Timing
figures need a quiet machine: anything else running on the cores shortens the steps that fit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
TRAIN, VALIDATION = SHARED / "tinyshakespeare.train.jsonl", SHARED / "tinyshakespeare.validation.jsonl"
LLMPIPE = [sys.executable, "-m", "llmpipe.cli"]
NANOGPT = {"bpb": 2.72, "seconds": 125, "what": "nanoGPT README CPU recipe (0.8M parameters, char-level, 2000 iterations)"}
CONFIGS = {"adamw + cosine": ("adamw", "cosine"), "adamw + wsd": ("adamw", "wsd"),
           "muon + cosine": ("muon", "cosine"), "muon + wsd": ("muon", "wsd")}


def llmpipe(*args: str) -> float:
    """Run one llmpipe command; its wall seconds (exit code checked)."""
    started = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*LLMPIPE, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llmpipe {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.time() - started


def pretrain(run: Path, extra: list[str]) -> dict[str, Any]:
    """Tokenizer (once per run folder) and a budgeted pretrain; the figures of the finished stage."""
    data = [f"pretrain.train_files={TRAIN}", f"pretrain.validation_files={VALIDATION}"]
    tokenizer_seconds = llmpipe("tokenizer", *data, "--out", str(run)) if not (run / "tokenizer").is_dir() else 0.0
    wall = llmpipe("pretrain", *data, *extra, "--out", str(run))
    manifest = json.loads((run / "pretrain" / "manifest.json").read_text())
    budget, summary, model = manifest.get("budget") or {}, manifest["summary"], manifest["config"]["model"]
    shape = budget.get("shape") or model
    return {
        "bpb": manifest["metrics"]["validation_bpb"], "bpb_before": manifest["metrics"]["validation_bpb_before"],
        "parameters": manifest["metrics"]["parameters"], "shape": f"{shape['family']} {shape['layers']} x {shape['width']}",
        "steps": summary["steps"], "train_seconds": summary["wall_seconds"], "stage_wall_seconds": round(wall, 1),
        "tokenizer_seconds": round(tokenizer_seconds, 1), "why": budget.get("why"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=120.0, help="pretrain.time_budget in seconds")
    parser.add_argument("--model", default="", help="model preset (default: the recipe default; auto sizes it)")
    parser.add_argument("--optimizers", action="store_true", help="compare optimisers and schedules instead")
    args = parser.parse_args()
    if not TRAIN.is_file():
        raise SystemExit(f"needs {TRAIN} (../shared/data)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmpipe-budget-") as tmp:
        run = Path(tmp) / "run"
        model = [f"model={args.model}"] if args.model else []
        if args.optimizers:
            for label, (optimizer, schedule) in CONFIGS.items():
                # --restart: each configuration replaces the last one's pretrain stage (one tokenizer for all).
                row = pretrain(run, [f"pretrain.time_budget={args.budget:g}", *model, f"pretrain.optimizer={optimizer}",
                                     f"pretrain.schedule={schedule}", "--restart"])
                rows.append({"config": label, **row})
                print(json.dumps(rows[-1]), flush=True)
        else:
            row = pretrain(run, [f"pretrain.time_budget={args.budget:g}", *model])
            rows.append({"config": f"defaults, time_budget={args.budget:g}", **row})
    print(f"\n{'config':28s} {'shape':18s} {'params':>9s} {'steps':>6s} {'train s':>8s} {'wall s':>7s} {'bits/byte':>10s}")
    for row in rows:
        print(f"{row['config']:28s} {row['shape']:18s} {row['parameters']:9,d} {row['steps']:6d} {row['train_seconds']:8.1f} "
              f"{row['stage_wall_seconds']:7.1f} {row['bpb']:10.4f}")
    if not args.optimizers:
        print(f"{'reference: ' + NANOGPT['what']}: {NANOGPT['bpb']} bits/byte in {NANOGPT['seconds']} s")
        print(f"why: {rows[0]['why']}")
    out = ROOT / "bench" / "results" / ("optimizers.json" if args.optimizers else "budget.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "budget": args.budget,
                               "nanogpt_reference": NANOGPT, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
