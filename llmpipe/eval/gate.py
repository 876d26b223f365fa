"""Protected sets and the regression gate between a stage and its parent.

A finished stage keeps, inside its own folder, what its children must not break: a sample of its
held-out rows and copies of its probe suites (`protected/`, listed in the manifest's `protected`).
When a child stage finishes, the gate measures parent and child on those same rows and suites with
the same code and compares them against the child's `gate` tolerances.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmpipe.core.console import is_main_process, say
from llmpipe.core.errors import EXIT_CHECK_FAILED, UserError
from llmpipe.eval.heldout import measure
from llmpipe.eval.probes import load_suite, score_suite, suite_name
from llmpipe.runs import read_manifest

PROTECTED = "protected"


class RegressionError(UserError):
    """A stage's checkpoint regressed against its parent beyond the recipe's tolerances."""

    exit_code = EXIT_CHECK_FAILED


def protect(work_dir: Path, heldout: list[tuple[str, str, list[dict[str, Any]]]], probe_files: list[str],
            max_length: int) -> dict[str, Any]:
    """Copy held-out rows (name, kind, rows) and probe suites into `work_dir/protected`; returns the
    manifest's `protected` entry (paths relative to the stage folder)."""
    folder = Path(work_dir) / PROTECTED
    entry: dict[str, Any] = {"heldout": [], "probes": []}
    for name, kind, rows in heldout:
        if not rows:
            continue
        file = f"{PROTECTED}/{name}.jsonl"
        entry["heldout"].append({"name": name, "kind": kind, "file": file, "rows": len(rows), "max_length": max_length})
        if is_main_process():
            folder.mkdir(parents=True, exist_ok=True)
            with open(Path(work_dir) / file, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    for path in probe_files:
        file = f"{PROTECTED}/{suite_name(path)}.jsonl"
        entry["probes"].append({"name": suite_name(path), "file": file})
        if is_main_process():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(work_dir) / file)
    return entry


def measure_protected(model: Any, tokenizer: Any, stage_dir: Path, protected: dict[str, Any], batch_size: int = 16) -> dict[str, Any]:
    """Measure `model` on the protected sets of `stage_dir`: {name: {kind: loss|score, value, ...}}."""
    results = {}
    for item in protected.get("heldout", []):
        path = Path(stage_dir) / item["file"]
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        measured = measure(model, tokenizer, item["kind"], rows, item["max_length"], batch_size, max_rows=len(rows))
        results[item["name"]] = {"dataset_kind": item["kind"], **measured}
    for item in protected.get("probes", []):
        scored = score_suite(model, tokenizer, load_suite(Path(stage_dir) / item["file"]), batch_size)
        results[item["name"]] = {"dataset_kind": "probes", "kind": "score", "value": scored["score"], "n": scored["n"]}
    return results


def compare(parent: dict[str, Any], child: dict[str, Any], max_loss_increase: float, max_probe_drop: float) -> list[dict[str, Any]]:
    """One check per measure both sides have: a loss may rise by a relative share, a score fall by an
    absolute amount."""
    checks = []
    for name, before in parent.items():
        after = child.get(name)
        if after is None or before.get("value") is None or after.get("value") is None:
            continue
        p, c = before["value"], after["value"]
        if before["kind"] == "loss":
            change = (c - p) / p if p > 0 else 0.0
            tolerance, passed = max_loss_increase, change <= max_loss_increase
        else:
            change = c - p
            tolerance, passed = max_probe_drop, -change <= max_probe_drop
        checks.append({"name": name, "kind": before["kind"], "parent": round(p, 4), "child": round(c, 4),
                       "change": round(change, 4), "tolerance": tolerance, "passed": passed})
    return checks


def run_gate(parent_dir: Path, model: Any, tokenizer: Any, gate_cfg: Any, batch_size: int = 16) -> dict[str, Any] | None:
    """Compare `model` with the parent checkpoint on the parent's protected sets; None when the parent
    protects nothing (a tokenizer) or the gate is off."""
    manifest = read_manifest(parent_dir)
    protected = manifest.protected if manifest is not None else None
    if gate_cfg.action == "off" or not protected or not (protected.get("heldout") or protected.get("probes")):
        return None
    device = next(model.parameters()).device
    parent_model = AutoModelForCausalLM.from_pretrained(parent_dir).to(device)
    parent_tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    before = measure_protected(parent_model, parent_tokenizer, parent_dir, protected, batch_size)
    del parent_model
    after = measure_protected(model, tokenizer, parent_dir, protected, batch_size)
    checks = compare(before, after, gate_cfg.max_loss_increase, gate_cfg.max_probe_drop)
    result = {
        "against": str(Path(parent_dir).resolve()),
        "parent_stage": manifest.stage,
        "passed": all(c["passed"] for c in checks),
        "action": gate_cfg.action,
        "checks": checks,
    }
    for c in checks:
        say(f"gate      {c['name']:24s} {c['kind']:5s} parent {c['parent']:.4f} -> {c['child']:.4f} "
            f"({c['change']:+.3f}, tolerance {c['tolerance']}) {'ok' if c['passed'] else 'REGRESSED'}")
    return result


def regression_error(stage: str, section: str, stage_dir: Path, gate: dict[str, Any]) -> RegressionError:
    """The one-line error for a failed gate of `stage` (settings in recipe section `section`), naming the
    checks that regressed and how to go on."""
    failed = [c for c in gate["checks"] if not c["passed"]]
    what = "; ".join(
        f"{c['name']} {c['kind']} {c['parent']:.4f} -> {c['child']:.4f} "
        + (f"(+{c['change']:.0%} > +{c['tolerance']:.0%})" if c["kind"] == "loss" else f"(drop {-c['change']:.3f} > {c['tolerance']})")
        for c in failed
    )
    return RegressionError(
        f"{stage} regressed against its parent {gate['parent_stage']}: {what}",
        file=str(stage_dir),
        hint=f"the checkpoint is kept; go on with {section}.gate.action=warn, loosen {section}.gate tolerances, "
        "or change the stage's settings and retrain with --restart",
    )
