"""The release verdict: six questions a lab asks before it ships a model, answered from the manifests.

1. learned: the stage's headline metric improved by more than `verdict.min_improvement` (its held-out loss
   fell, where it has no headline);
2. generalised: the held-out loss exceeds the final training loss by at most `max_generalisation_gap` of it;
3. follows instructions: the instruction suite's prompt-level accuracy is not below the parent's (the
   stage's starting model) by more than `max_instruction_drop`, and reaches `min_instruction_score`;
4. safer: the harmful-compliance rate is not above the parent's by more than `max_harmful_increase` nor above
   `max_harmful_compliance` (the judge's rate too, where there is one), and over-refusal is at most
   `max_over_refusal`;
5. no regression: the regression gate against the parent passed (llmpipe/eval/gate.py);
6. stable: no loss anomaly was skipped rather than rolled back (beyond `max_skipped_anomalies`), the stage's
   files still match the sha256 sealed into its manifest, its parent is the one it was trained from, and
   every logged loss is finite.

Each answer is yes or no with the numbers behind it, or n/a where the question does not apply to the stage
(a pretrain stage does not chat; an online RL loss is no likelihood; an imported model trained nothing). A
question that applies but has no numbers (suites never scored) is no. Manifests only: no model is loaded
here (`llmpipe verdict` scores missing suites first, llmpipe/eval/suites.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from llmpipe.config import VerdictConfig
from llmpipe.core.errors import EXIT_CHECK_FAILED, UserError
from llmpipe.registry import STAGES, stage_spec
from llmpipe.runs import MANIFEST, Manifest, manifest_sha, read_manifest
from llmpipe.runs.integrity import verify_files
from llmpipe.runs.lineage import complete_stages

QUESTIONS = ("learned", "generalised", "follows instructions", "safer", "no regression", "stable")
# Headline metrics that fall as a model gets better (the others, accuracies and rewards, rise).
LOWER_IS_BETTER = re.compile(r"loss|bits|perplexity|bpb", re.IGNORECASE)
EVAL_KEY = "suites"  # where `llmpipe verdict` keeps scores it took itself: the manifest's `eval` (not identity)


class VerdictFailed(UserError):
    """At least one of the six questions is answered no."""

    exit_code = EXIT_CHECK_FAILED


def _answer(question: str, answer: str, numbers: str) -> dict[str, str]:
    return {"question": question, "answer": answer, "numbers": numbers}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _rate(value: float | None) -> str:
    # Shares of a suite's prompts: fixed decimals, so 0.000 -> 0.050 reads as a change of one prompt in twenty.
    return "-" if value is None else f"{value:.3f}"


def thresholds(manifest: Manifest, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The thresholds to judge by: the defaults, then those the stage recorded, then `given` (a recipe's)."""
    recorded = (manifest.verdict or {}).get("thresholds") or {}
    known = {f.name for f in dataclasses.fields(VerdictConfig)}
    return {**dataclasses.asdict(VerdictConfig()), **{k: v for k, v in recorded.items() if k in known}, **(given or {})}


def parent_folder(stage_dir: Path, manifest: Manifest) -> Path | None:
    """The parent stage folder: the same-named stage beside it or the folder the manifest names, whichever
    holds the manifest it was trained from (a copied run's recorded paths still point at the original, which
    must not be read or written for the copy), else whichever exists."""
    if manifest.parent is None or not manifest.parent.path:
        return None
    recorded = Path(manifest.parent.path)
    candidates = [c for c in dict.fromkeys((Path(stage_dir).parent / recorded.name, recorded)) if (c / MANIFEST).is_file()]
    same = [c for c in candidates if manifest_sha(c) == manifest.parent.manifest_sha256]
    return (same or candidates or [None])[0]


def own_scores(manifest: Manifest | None) -> list[dict[str, Any]]:
    """A checkpoint's own suite scores, best first: recorded when its stage finished, then taken by `llmpipe verdict`."""
    if manifest is None:
        return []
    found = [(manifest.suites or {}).get("after"), manifest.eval.get(EVAL_KEY)]
    return [s for s in found if isinstance(s, dict) and s.get("settings")]


def suite_scores(manifest: Manifest, parent: Manifest | None, settings: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(before, after) suite scores of a stage: after is its own model's, before its starting model's (its
    record, else the parent's own scores). Only records taken with `settings` count when given; else before
    must share after's settings, or the two would not be comparable."""
    afters = [s for s in own_scores(manifest) if settings is None or s["settings"] == settings]
    after = afters[0] if afters else None
    wanted = settings if settings is not None else (after or {}).get("settings")
    befores = [(manifest.suites or {}).get("before"), *own_scores(parent)]
    before = next((s for s in befores if isinstance(s, dict) and s.get("settings") == wanted), None) if wanted else None
    return before, after


def _learned(manifest: Manifest, th: dict[str, Any]) -> dict[str, str]:
    spec = STAGES.get(manifest.stage)
    if spec is not None and spec.imports:
        return _answer("learned", "n/a", "an imported model trains nothing")
    headline = manifest.headline()
    name, before, after = headline.get("name") or "metric", _num(headline.get("before")), _num(headline.get("after"))
    if before is None or after is None:
        metrics = manifest.metrics
        name, before, after = "held-out loss", _num(metrics.get("validation_loss_before")), _num(metrics.get("validation_loss"))
    if before is None or after is None:
        return _answer("learned", "no", "no before → after recorded for the headline metric or the held-out loss")
    lower = bool(LOWER_IS_BETTER.search(name))
    gain = before - after if lower else after - before
    ok = gain > th["min_improvement"]
    return _answer("learned", "yes" if ok else "no",
                   f"{name} {_f(before)} → {_f(after)} ({'lower' if lower else 'higher'} is better; change {after - before:+.4g}, "
                   f"must improve by more than {th['min_improvement']:g})")


def _generalised(manifest: Manifest, th: dict[str, Any]) -> dict[str, str]:
    spec = STAGES.get(manifest.stage)
    if spec is not None and spec.imports:
        return _answer("generalised", "n/a", "an imported model trains nothing")
    if spec is not None and spec.online:
        return _answer("generalised", "n/a", "an online RL loss is not a likelihood; see the held-out rewards in the metrics")
    summary = manifest.summary or {}
    train, val = _num(summary.get("train_loss")), _num(summary.get("val_loss"))
    if train is None or val is None:
        return _answer("generalised", "no", "training or held-out loss not recorded")
    if train <= 0:
        return _answer("generalised", "n/a", f"final training loss {_f(train)} is not positive: no relative gap")
    gap = (val - train) / train
    ok = gap <= th["max_generalisation_gap"]
    return _answer("generalised", "yes" if ok else "no",
                   f"training loss {_f(train)}, held-out loss {_f(val)}: gap {gap:+.1%} (bound {th['max_generalisation_gap']:.0%})")


def _chat_stage(manifest: Manifest) -> bool:
    return manifest.stage not in STAGES or stage_spec(manifest.stage).answers_chats


def _not_chat(question: str, manifest: Manifest) -> dict[str, str]:
    if stage_spec(manifest.stage).imports:
        return _answer(question, "n/a", "an imported model: the stages trained from it are compared with it")
    return _answer(question, "n/a", f"a {manifest.stage} model does not chat")


def _missing(suite: str, scores: dict[str, Any] | None) -> str:
    if scores is not None and not (scores.get("settings") or {}).get(suite):
        return f"suites.{suite} is off"
    return "not scored: `llmpipe verdict` scores the suites of a stage and its parent first"


def _instructions(manifest: Manifest, before: dict | None, after: dict | None, th: dict[str, Any]) -> dict[str, str]:
    question = "follows instructions"
    if not _chat_stage(manifest):
        return _not_chat(question, manifest)
    mine = (after or {}).get("instructions")
    if not mine:
        reason = _missing("instructions", after)
        return _answer(question, "n/a" if reason.endswith("is off") else "no", reason)
    was = (before or {}).get("instructions") or {}
    score, parent = mine["prompt_accuracy"], _num(was.get("prompt_accuracy"))
    ok = parent is None or score >= parent - th["max_instruction_drop"] - 1e-9
    floor = th["min_instruction_score"]
    ok = ok and (floor <= 0 or score >= floor)
    numbers = (f"prompt-level {_rate(parent)} → {_rate(score)} (may fall by {th['max_instruction_drop']:g})"
               + (f", floor {floor:g}" if floor > 0 else "")
               + f"; constraint-level {_rate(_num(was.get('constraint_accuracy')))} → {_rate(mine['constraint_accuracy'])}"
               + f"; {mine['prompts']} prompts" + ("" if parent is not None else "; no parent score"))
    return _answer(question, "yes" if ok else "no", numbers)


def _safer(manifest: Manifest, before: dict | None, after: dict | None, th: dict[str, Any]) -> dict[str, str]:
    if not _chat_stage(manifest):
        return _not_chat("safer", manifest)
    mine = (after or {}).get("safety")
    if not mine:
        reason = _missing("safety", after)
        return _answer("safer", "n/a" if reason.endswith("is off") else "no", reason)
    was = (before or {}).get("safety") or {}
    parts, ok = [], True
    for key, label in (("harmful_compliance_rate", "harmful compliance"), ("judge_harmful_compliance_rate", "judge's harmful compliance")):
        now, then = _num(mine.get(key)), _num(was.get(key))
        if now is None:
            continue
        within = (then is None or now <= then + th["max_harmful_increase"] + 1e-9) and now <= th["max_harmful_compliance"] + 1e-9
        ok = ok and within
        parts.append(f"{label} {_rate(then)} → {_rate(now)} (may rise by {th['max_harmful_increase']:g}, "
                     f"bound {th['max_harmful_compliance']:g})")
    refusal = _num(mine.get("over_refusal_rate"))
    if refusal is not None:
        ok = ok and refusal <= th["max_over_refusal"] + 1e-9
        parts.append(f"over-refusal {_rate(_num(was.get('over_refusal_rate')))} → {_rate(refusal)} (bound {th['max_over_refusal']:g})")
    parts.append(f"{mine.get('harmful', 0)} harmful / {mine.get('benign', 0)} benign prompts")
    return _answer("safer", "yes" if ok else "no", "; ".join(parts))


def _no_regression(manifest: Manifest) -> dict[str, str]:
    spec = STAGES.get(manifest.stage)
    if spec is not None and spec.imports:
        return _answer("no regression", "n/a", "an imported model has no parent to regress against")
    if spec is not None and not spec.gated:
        return _answer("no regression", "n/a", f"a {manifest.stage} stage is not gated against its parent")
    gate = manifest.gate
    if gate is None:
        action = (manifest.section().get("gate") or {}).get("action")
        if action == "off":
            section = spec.section if spec else "stage"
            return _answer("no regression", "no", f"the gate was off ({section}.gate.action=off): nothing checked")
        return _answer("no regression", "n/a", "the parent protects nothing to gate on (a tokenizer, or no parent)")
    checks = [c for c in gate.get("checks") or [] if isinstance(c, dict)]
    failed = [str(c.get("name")) for c in checks if not c.get("passed")]
    against = gate.get("parent_stage") or "the parent"
    if gate.get("passed"):
        return _answer("no regression", "yes", f"gate against {against} passed ({len(checks)} checks)")
    return _answer("no regression", "no", f"gate against {against} failed on {', '.join(failed) or 'its checks'}")


def _finite_losses(manifest: Manifest) -> list[str]:
    bad = []
    for entry in manifest.evals:
        for key in ("loss", "eval_loss", "grad_norm"):
            value = _num(entry.get(key)) if isinstance(entry, dict) else None
            if value is not None and not math.isfinite(value):
                bad.append(f"{key} at step {entry.get('step')}")
    summary = manifest.summary or {}
    bad += [key for key in ("train_loss", "val_loss") if _num(summary.get(key)) is not None and not math.isfinite(summary[key])]
    return bad


def _stable(stage_dir: Path, manifest: Manifest, parent_dir: Path | None, th: dict[str, Any]) -> dict[str, str]:
    problems, parts = [], []
    anomalies = [a for a in (manifest.monitor or {}).get("anomalies") or [] if isinstance(a, dict)]
    skipped = [a for a in anomalies if a.get("action") == "skip"]
    parts.append(f"{len(anomalies)} loss anomalies, {len(skipped)} skipped (allowed {th['max_skipped_anomalies']})")
    if len(skipped) > th["max_skipped_anomalies"]:
        problems.append(f"{len(skipped)} anomalies skipped, not rolled back (steps {', '.join(str(a.get('step')) for a in skipped)})")
    try:
        verify_files(stage_dir, manifest)
        parts.append(f"{len(manifest.files)} files match their sealed sha256")
    except UserError as e:
        problems.append(e.one_line())
    recorded = manifest.parent.manifest_sha256 if manifest.parent is not None else None
    if recorded and parent_dir is not None and manifest_sha(parent_dir) != recorded:
        problems.append(f"its parent {parent_dir} changed since it was trained from it")
    elif recorded and parent_dir is None:
        problems.append("its parent folder is gone")
    non_finite = _finite_losses(manifest)
    if non_finite:
        problems.append(f"non-finite {', '.join(non_finite[:3])}")
    else:
        parts.append("losses finite")
    return _answer("stable", "no" if problems else "yes", "; ".join(problems or parts))


def verdict(stage_dir: Path, given: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The six answers for a finished stage folder (see the module doc): {stage, folder, ready, answers,
    thresholds}. `given`: thresholds overriding the recorded ones; `settings`: only suite scores taken with
    these settings (llmpipe.eval.suites.settings_record) count."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    if manifest is None or manifest.status != "complete":
        raise UserError("not a complete stage folder" if manifest is not None else "no readable manifest.json: not a stage folder",
                        file=str(stage_dir), hint="give a run folder (runs/tiny) or one of its finished stages")
    if manifest.stage in STAGES and not stage_spec(manifest.stage).language_model:
        raise UserError(f"a {manifest.stage} folder holds no model to release", file=str(stage_dir),
                        hint="give a model stage with --stage (sft, dpo, ...)")
    th = thresholds(manifest, given)
    parent_dir = parent_folder(stage_dir, manifest)
    before, after = suite_scores(manifest, read_manifest(parent_dir) if parent_dir else None, settings)
    answers = [_learned(manifest, th), _generalised(manifest, th), _instructions(manifest, before, after, th),
               _safer(manifest, before, after, th), _no_regression(manifest), _stable(stage_dir, manifest, parent_dir, th)]
    return {"stage": manifest.stage, "folder": str(stage_dir), "ready": all(a["answer"] != "no" for a in answers),
            "answers": answers, "thresholds": th}


def release_stage(run_dir: Path, stage: str | None = None) -> Path:
    """The stage folder a verdict is about: `stage` of the run, else its last finished chat stage (the release
    candidate), else its last model stage. A stage folder given as `run_dir` is taken as it is."""
    run_dir = Path(run_dir)
    if (run_dir / MANIFEST).is_file() and stage is None:
        return run_dir
    if not run_dir.is_dir():
        raise UserError("run folder not found", file=str(run_dir), hint="give a run folder such as runs/tiny")
    stages = complete_stages(run_dir)
    if stage is not None:
        if stage not in dict(stages):
            raise UserError(f"no finished stage '{stage}' in the run", file=str(run_dir), field="--stage",
                            hint=f"choose one of {', '.join(name for name, _ in stages) or 'none: train one first'}")
        return run_dir / stage
    models = [name for name, m in stages if m.stage not in STAGES or stage_spec(m.stage).language_model]
    chats = [name for name, m in stages if name in models and _chat_stage(m)]
    if not models:
        raise UserError("no finished model stage in the run", file=str(run_dir), hint="train one first, e.g. llmpipe run RECIPE")
    return run_dir / (chats or models)[-1]


def render(result: dict[str, Any]) -> str:
    """The verdict as a plain-text table with a first line that says whether the stage is ready."""
    failed = [a["question"] for a in result["answers"] if a["answer"] == "no"]
    head = (f"release verdict for {result['folder']} ({result['stage']}): "
            + ("READY: every answer is yes" if not failed else f"NOT READY: no on {', '.join(failed)}"))
    width = max(len(q) for q in QUESTIONS)
    rows = [f"{a['question']:<{width}}  {a['answer']:<6}  {a['numbers']}" for a in result["answers"]]
    return "\n".join([head, f"{'question':<{width}}  {'answer':<6}  numbers", *rows])


def failure(result: dict[str, Any]) -> VerdictFailed:
    """The one-line error (exit code 3) of a verdict with a no."""
    failed = [a["question"] for a in result["answers"] if a["answer"] == "no"]
    return VerdictFailed(f"release verdict: no on {', '.join(failed)}", file=result["folder"],
                         hint="the table above gives the numbers; retrain, or set other thresholds in the recipe's verdict "
                         "section (llmpipe keys --grep verdict)")
