"""The instruction-following and safety suites on a model: scores beyond pass / fail, for stages, `llmpipe
verdict` and scripts.

Public API (what a stage, the verdict and a script on a real model call):

    from llmpipe.eval.suites import run_suites
    scores = run_suites("runs/smol/sft", sample=0)          # a stage folder or a plain Hugging Face folder
    scores["instructions"]["prompt_accuracy"], scores["instructions"]["constraint_accuracy"]
    scores["safety"]["harmful_compliance_rate"], scores["safety"]["over_refusal_rate"]

    score_model(model, tokenizer, settings)                  # the same on a loaded model (settings: SuitesConfig)

`settings` is the recipe's `suites` section (llmpipe.config.SuitesConfig); keyword overrides of
`run_suites` replace its fields. The result is {settings, instructions, safety, seconds}: `instructions` has
prompt_accuracy, constraint_accuracy, prompts, constraints, by_kind {kind: {passed, n, accuracy}} and a few
samples; `safety` has harmful_compliance_rate, over_refusal_rate, harmful, benign, behaviours, by_category and,
with a judge, judge_harmful_compliance_rate (llmpipe/eval/safety.py). A suite turned off ("") is None.
Replies are greedy, batched, each at most its probe's `max_new_tokens` and `settings.max_new_tokens`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmpipe.chat_format import set_generation_stops
from llmpipe.config import SuitesConfig
from llmpipe.config.paths import embedded_data, portable, resolve_default
from llmpipe.core.errors import UserError
from llmpipe.core.files import sha256_file
from llmpipe.eval.probes import Probe, load_suite, score_suite
from llmpipe.eval.safety import Judge, check_judge, safety_scores
from llmpipe.eval.verdict import EVAL_KEY, own_scores, parent_folder, suite_scores
from llmpipe.loading import load_checkpoint, pick_device
from llmpipe.registry import STAGES, stage_spec
from llmpipe.runs import manifest_sha, read_manifest, write_manifest
from llmpipe.runs.integrity import check_model_folder

# The shipped suites by name (`run_suites(..., instructions="instructions")`), under the embedded data folder.
SHIPPED = {"instructions": "suites/instructions.jsonl", "safety": "suites/safety.jsonl"}
SUITES = ("instructions", "safety")
# The checks each suite is made of.
SUITE_CHECKS = {"instructions": ("constraints",), "safety": ("refuse", "comply")}
SAMPLES = 3


def suite_path(value: str) -> str:
    """A suite setting as a path: a shipped suite's name (instructions, safety) is its embedded file."""
    return str(embedded_data() / SHIPPED[value]) if value in SHIPPED else value


def load_suites(settings: Any, source: str | None = None) -> dict[str, list[Probe]]:
    """Both suites of `settings`, checked (a suite turned off is left out): each must be a probe suite of its
    own checks; a missing or malformed file is a one-line UserError naming the recipe key or file:line."""
    suites = {}
    for name in SUITES:
        value = getattr(settings, name)
        if not value:
            continue
        path = suite_path(value)
        if not Path(path).is_file():
            raise UserError(f"{name} suite {value} not found", file=source, field=f"suites.{name}",
                            hint=f"give a JSONL probe suite, '{name}' for the shipped one, or \"\" for none")
        probes = load_suite(path)
        wrong = next((p for p in probes if p.check not in SUITE_CHECKS[name]), None)
        if wrong is not None:
            raise UserError(f"is {wrong.check!r}, but the {name} suite holds {' / '.join(SUITE_CHECKS[name])} probes only",
                            file=path, line=wrong.line, field="check",
                            hint=f"move other probes to a probes: suite, or point suites.{name} at another file")
        suites[name] = probes
    return suites


def check_settings(settings: Any, source: str | None = None) -> None:
    """Everything about the suites that can fail before a model loads: the files and the judge."""
    load_suites(settings, source)
    if settings.judge:
        check_judge(settings.judge, "suites.judge", source)


def sample_probes(probes: list[Probe], n: int) -> list[Probe]:
    """`n` probes spread over the suite (0: all): groups of (check, category) in turn, each in file order, so a
    small sample still holds harmful and benign prompts of many categories, or many instruction templates."""
    if n <= 0 or n >= len(probes):
        return list(probes)
    groups: dict[tuple[str, str], list[Probe]] = {}
    for probe in probes:
        groups.setdefault((probe.check, probe.category), []).append(probe)
    queues = [list(g) for g in groups.values()]
    chosen: list[Probe] = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    order = {id(p): i for i, p in enumerate(probes)}
    return sorted(chosen, key=lambda p: order[id(p)])


def _judge_identity(path: str) -> str | None:
    folder = Path(path)
    if read_manifest(folder) is not None:
        return manifest_sha(folder)
    config = folder / "config.json"
    return sha256_file(config) if config.is_file() else None


def settings_record(settings: Any) -> dict[str, Any]:
    """What decides a suite score besides the model: the files (by sha256), sample, token cap and judge.
    Two scores are comparable, and a recorded one reusable, only when these are equal."""
    record: dict[str, Any] = {}
    for name in SUITES:
        value = getattr(settings, name)
        path = suite_path(value) if value else ""
        record[name] = portable(path) if path else ""
        record[f"{name}_sha256"] = sha256_file(Path(path)) if path and Path(path).is_file() else None
    record.update(sample=settings.sample, max_new_tokens=settings.max_new_tokens, judge=settings.judge or "",
                  judge_sha256=_judge_identity(settings.judge) if settings.judge else None)
    return record


def same_settings(scores: dict[str, Any] | None, settings: Any) -> bool:
    """Whether recorded scores were taken with these settings (batch size aside: it changes no reply)."""
    return isinstance(scores, dict) and scores.get("settings") == settings_record(settings)


def instruction_scores(probes: list[Probe], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompt-level accuracy (every constraint met), constraint-level accuracy and per-kind accuracy."""
    by_kind: dict[str, dict[str, Any]] = {}
    met = total = 0
    for probe, result in zip(probes, results):
        for constraint, passed in zip(probe.constraints, result["constraints"]):
            entry = by_kind.setdefault(constraint.kind, {"passed": 0, "n": 0})
            entry["passed"] += passed
            entry["n"] += 1
            met, total = met + passed, total + 1
    for entry in by_kind.values():
        entry["accuracy"] = round(entry["passed"] / entry["n"], 4)
    return {
        "prompt_accuracy": round(sum(r["passed"] for r in results) / len(results), 4),
        "constraint_accuracy": round(met / total, 4),
        "prompts": len(results),
        "constraints": total,
        "by_kind": dict(sorted(by_kind.items())),
        "samples": [{"name": p.name, "prompt": p.messages()[-1]["content"], "reply": r["output"], "passed": r["passed"]}
                    for p, r in list(zip(probes, results))[:SAMPLES]],
    }


def score_model(model: Any, tokenizer: Any, settings: Any = None, judge: Judge | None = None,
                suites: dict[str, list[Probe]] | None = None) -> dict[str, Any]:
    """Score both suites on a loaded chat model (see the module doc for the result). `judge`: an already
    loaded Judge (else the settings' judge is loaded here); `suites`: already loaded suites."""
    settings = settings or SuitesConfig()
    started = time.time()
    suites = load_suites(settings) if suites is None else suites
    out: dict[str, Any] = {"settings": settings_record(settings), "instructions": None, "safety": None}
    for name, probes in suites.items():
        chosen = sample_probes(probes, settings.sample)
        results = score_suite(model, tokenizer, chosen, settings.batch_size, settings.max_new_tokens)["results"]
        if name == "instructions":
            out[name] = instruction_scores(chosen, results)
            continue
        rows = [{"check": p.check, "category": p.category, "output": r["output"]} for p, r in zip(chosen, results)]
        judged = None
        if settings.judge:
            judge = judge or Judge(settings.judge, next(model.parameters()).device)
            harmful = [(p, r) for p, r in zip(chosen, results) if p.check == "refuse"]
            judged = judge.unsafe([p.messages() for p, _ in harmful], [r["output"] for _, r in harmful], settings.batch_size)
        out[name] = {**safety_scores(rows, judged), "judge": settings.judge or None,
                     "samples": [{"name": p.name, "prompt": p.messages()[-1]["content"], "reply": r["output"], "check": p.check}
                                 for p, r in list(zip(chosen, results))[:SAMPLES]]}
    out["seconds"] = round(time.time() - started, 2)
    return out


def load_model(folder: str | Path, device: str = "auto") -> tuple[Any, Any]:
    """Model and tokenizer of a chat checkpoint: an llmpipe stage folder (checked against its manifest) or a
    plain Hugging Face folder with a chat template (safetensors weights)."""
    folder = Path(folder)
    if read_manifest(folder) is not None or not folder.is_dir():
        return load_checkpoint(folder, device, need_template=True)
    check_model_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if not tokenizer.chat_template:
        raise UserError("tokenizer has no chat template: the suites ask chat questions", file=str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(pick_device(device))
    set_generation_stops(model, tokenizer)
    model.eval()
    return model, tokenizer


def run_suites(checkpoint: str | Path, settings: Any = None, device: str = "auto", **overrides: Any) -> dict[str, Any]:
    """Score both suites on a checkpoint folder (see the module doc). `overrides` replace fields of `settings`
    (default: the recipe defaults), e.g. run_suites(folder, sample=0, judge="runs/x/reward")."""
    settings = dataclasses.replace(settings or SuitesConfig(), **overrides)
    check_settings(settings)
    model, tokenizer = load_model(checkpoint, device)
    return score_model(model, tokenizer, settings)


def scores_before(model: Any, tokenizer: Any, settings: Any, parent_dir: Path | None) -> dict[str, Any]:
    """A stage's suite scores before training: its parent's recorded scores after training when they were taken
    with the same settings (the starting weights are the parent's), else scored now on `model`."""
    parent = read_manifest(parent_dir) if parent_dir is not None else None
    recorded = (parent.suites or {}).get("after") if parent is not None else None
    if same_settings(recorded, settings):
        return {**recorded, "reused_from": str(Path(parent_dir).resolve())}
    return score_model(model, tokenizer, settings)



def settings_from_record(record: dict[str, Any]) -> SuitesConfig:
    """The suite settings a score record was taken with (its suite files found by the path rule)."""
    return SuitesConfig(instructions=resolve_default(record.get("instructions") or "") if record.get("instructions") else "",
                        safety=resolve_default(record.get("safety") or "") if record.get("safety") else "",
                        sample=int(record.get("sample") or 0), max_new_tokens=int(record.get("max_new_tokens") or 1),
                        judge=record.get("judge") or "")


def ensure_scores(stage_dir: Path, settings: Any = None, device: str = "auto") -> dict[str, Any] | None:
    """Score the suites on a chat stage and on its parent where no score taken with `settings` is recorded
    (default settings: those of the stage's own record, else the recipe defaults), keeping what is scored in
    each checkpoint's manifest `eval` (which no child's identity covers); returns the settings record the
    verdict should compare, or None for a stage that does not chat."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    if manifest is None or (manifest.stage in STAGES and not stage_spec(manifest.stage).answers_chats):
        return None
    if settings is None:
        recorded = own_scores(manifest)
        settings = settings_from_record(recorded[0]["settings"]) if recorded else SuitesConfig()
    check_settings(settings)
    record = settings_record(settings)
    parent_dir = parent_folder(stage_dir, manifest)
    parent = read_manifest(parent_dir) if parent_dir is not None else None
    before, after = suite_scores(manifest, parent, record)
    missing = ([stage_dir] if after is None else []) + ([parent_dir] if before is None and parent is not None else [])
    suites = load_suites(settings)
    for folder in missing:
        model, tokenizer = load_model(folder, device)
        scores = score_model(model, tokenizer, settings, suites=suites)
        target = read_manifest(folder)
        target.eval[EVAL_KEY] = {**scores, "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_manifest(folder, target)
        del model
    return record
