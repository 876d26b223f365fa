"""`llmpipe eval CKPT`: held-out loss / perplexity / bits per byte, probe suites, per-token preference accuracy
and samples for any checkpoint, optionally side by side with another (`--against`).

With no datasets or suites named, a checkpoint is measured on what its stage protected (its own
held-out sample and probe suites), so `llmpipe eval runs/tiny/sft` works with no other argument.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.data.formats import to_chat, to_preference, to_text
from llmpipe.data.io import read_rows
from llmpipe.eval.gate import measure_protected
from llmpipe.eval.heldout import measure
from llmpipe.eval.metrics import chat_ids, generate_from_ids, text_ids
from llmpipe.eval.probes import load_suite, score_suite, suite_name
from llmpipe.loading import load_checkpoint
from llmpipe.models import model_context
from llmpipe.registry import STAGES, stage_spec
from llmpipe.runs import Manifest, read_manifest, write_manifest


def load_dataset(spec: str, max_rows: int) -> tuple[str, list[dict[str, Any]]]:
    """Rows of a text, chat or preference dataset (any format llmpipe reads), with its kind, judged
    from the first row: preference if it converts as a pair, else chat, else text."""
    converters = {"preference": to_preference, "chat": to_chat, "text": to_text}
    kind, rows = None, []
    for source in read_rows(spec):
        if kind is None:
            for name, convert in converters.items():
                try:
                    convert(source)
                except UserError:
                    continue
                kind = name
                break
            if kind is None:
                to_text(source)  # raises the one-line error that says what a row should look like
        rows.append(converters[kind](source))
        if len(rows) >= max_rows:
            break
    if kind is None:
        raise UserError("dataset has no rows", file=spec)
    return kind, rows


def _measure_all(model: Any, tokenizer: Any, sets: dict[str, tuple[str, list]], suites: dict[str, list], max_length: int,
                 batch_size: int) -> dict[str, Any]:
    results = {}
    for name, (kind, rows) in sets.items():
        results[name] = {"dataset_kind": kind, **measure(model, tokenizer, kind, rows, max_length, batch_size, max_rows=len(rows))}
    for name, probes in suites.items():
        scored = score_suite(model, tokenizer, probes, batch_size)
        results[name] = {"dataset_kind": "probes", "kind": "score", "value": scored["score"], "n": scored["n"],
                         "failed": [r["name"] for r in scored["results"] if not r["passed"]]}
    return results


def _samples(model: Any, tokenizer: Any, sets: dict[str, tuple[str, list]], manifest: Manifest, n: int) -> list[dict[str, str]]:
    # A model trained on plain text (pretraining) continues text; every later stage answers chats.
    text_stage = manifest.stage in STAGES and stage_spec(manifest.stage).data == "text"
    chat = bool(tokenizer.chat_template) and not text_stage
    prompts: list[str] = []
    for kind, rows in sets.values():
        for row in rows:
            if kind == "chat":
                users = [m["content"] for m in row["messages"] if m["role"] == "user"]
                prompts += users[:1]
            elif kind == "preference":
                prompts += [m["content"] for m in row["prompt"] if m["role"] == "user"][-1:]
            else:
                prompts.append(" ".join(row["text"].split()[:8]))
    if not prompts:
        prompts = list(manifest.section().get("sample_prompts", []))
    prompts = prompts[:n]
    if not prompts:
        return []
    ids = [chat_ids(tokenizer, [{"role": "user", "content": p}]) if chat else text_ids(tokenizer, p) for p in prompts]
    replies = generate_from_ids(model, tokenizer, ids, 32)
    return [{"prompt": p, "reply": r} for p, r in zip(prompts, replies)]


def evaluate(checkpoint: Path, data: list[str], probes: list[str], against: Path | None = None, samples: int = 3,
             max_rows: int = 320, batch_size: int = 16, max_length: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Measure a checkpoint (and `against`, when given) on datasets and probe suites; returns
    {checkpoint, against, results, against_results, samples}."""
    checkpoint = Path(checkpoint)
    model, tokenizer = load_checkpoint(checkpoint, device, need_template=False)
    other = load_checkpoint(Path(against), device, need_template=False) if against is not None else None
    manifest = read_manifest(checkpoint) or Manifest()
    if max_length is None:
        max_length = manifest.section().get("max_length") or model_context(model.config)
    max_length = min(max_length, model_context(model.config))
    sets = {Path(spec).name.removesuffix(".jsonl") if not spec.startswith("hf:") else spec: load_dataset(spec, max_rows) for spec in data}
    suites = {suite_name(path): load_suite(path) for path in probes}
    if sets or suites:
        results = _measure_all(model, tokenizer, sets, suites, max_length, batch_size)
        other_results = _measure_all(*other, sets, suites, max_length, batch_size) if other else None
    else:
        protected = manifest.protected or {}
        if not (protected.get("heldout") or protected.get("probes")):
            raise UserError("no datasets given and the checkpoint protects none", file=str(checkpoint),
                            hint="pass --data FILE and/or --probes FILE")
        results = measure_protected(model, tokenizer, checkpoint, protected, batch_size)
        other_results = measure_protected(*other, checkpoint, protected, batch_size) if other else None
    return {
        "checkpoint": str(checkpoint.resolve()),
        "against": str(Path(against).resolve()) if against is not None else None,
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "max_length": max_length,
        "results": results,
        "against_results": other_results,
        "samples": _samples(model, tokenizer, sets, manifest, samples) if samples else [],
    }


def _value(result: dict[str, Any] | None) -> str:
    if result is None or result.get("value") is None:
        return "-"
    return f"{result['value']:.4f}"


def _detail(result: dict[str, Any], key: str) -> str:
    # Scored text says how much of the set it covers: a share well below 1 is not the set's measure.
    if key == "tokens" and result.get("tokens_total"):
        share = result.get("scored_share", result["tokens"] / result["tokens_total"])
        return f"tokens {result['tokens']} of {result['tokens_total']} ({share:.1%})"
    if key == "summed_accuracy":  # labelled: it mostly says which reply is shorter (llmpipe.eval.pairs)
        return f"summed-logp accuracy {result[key]:.4f} (length-biased)"
    return f"{key} {result[key]}"


def render(evaluation: dict[str, Any]) -> str:
    """A plain-text table of an evaluation (with the `--against` column and change when present)."""
    other = evaluation.get("against_results")
    header = ["set", "kind", "measure", "value"] + (["against", "change"] if other else []) + ["details"]
    lines = []
    for name, result in evaluation["results"].items():
        pairs = result.get("dataset_kind") == "preference"
        measure_name = "loss" if result["kind"] == "loss" else ("per-token accuracy" if pairs else "score")
        details = ", ".join(_detail(result, k) for k in ("perplexity", "bpb", "tokens", "rows", "n", "summed_accuracy")
                            if result.get(k) is not None)
        row = [name, result.get("dataset_kind", result["kind"]), measure_name, _value(result)]
        if other:
            theirs = other.get(name)
            known = theirs is not None and theirs.get("value") is not None and result.get("value") is not None
            change = f"{result['value'] - theirs['value']:+.4f}" if known else "-"
            row += [_value(theirs), change]
        lines.append(row + [details])
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, ["-" * w for w in widths], *lines]]
    for sample in evaluation.get("samples", []):
        text.append(f"sample: {sample['prompt']!r} -> {sample['reply']!r}")
    return "\n".join(text)


def record(checkpoint: Path, evaluation: dict[str, Any], json_path: Path | None) -> Path:
    """Store an evaluation in the checkpoint's manifest (`eval`, by set name; children stay valid,
    see runs.manifest_sha) and as JSON (default: <checkpoint>/eval.json); returns the JSON path."""
    manifest = read_manifest(checkpoint)
    if manifest is not None:  # load_checkpoint refused a folder without one; a copy without it keeps only the JSON
        for name, result in evaluation["results"].items():
            manifest.eval[name] = {**result, "evaluated": evaluation["evaluated"], "max_length": evaluation["max_length"]}
        write_manifest(checkpoint, manifest)
    target = Path(json_path) if json_path is not None else Path(checkpoint) / "eval.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(evaluation, indent=2, default=str) + "\n", encoding="utf-8")
    return target
