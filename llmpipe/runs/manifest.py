"""The typed manifest of a stage folder (`manifest.json`): what a stage is, where it came from, what it measured.

Every field is declared here once, with its help text; `docs/manifest.md` is generated from these
declarations (`make docs`; a test checks it is current). Writers set
attributes (`writer.manifest.metrics = {...}`); readers get a `Manifest` from `read_manifest` and use
its attributes, never `.get()` chains. Nested values (metrics, data report, gate checks) stay plain
JSON: their keys differ by stage and are described in each field's help.

Manifests written before the typed manifest (no `version` field) load unchanged: a missing field takes
its default and a field of the wrong JSON type (a hand-edited file) reads as the default, so a report
of an old or damaged run folder still renders. Keys this version does not know are kept and written
back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpipe.core.files import sha256_text, write_json_atomic
from llmpipe.registry import STAGES

MANIFEST = "manifest.json"
# 1: the untyped manifests of llmpipe before the stage registry (no `version` key); 2: this schema.
MANIFEST_VERSION = 2
STATUSES = ("running", "failed", "complete")


def _doc(help_text: str, default: Any = None, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class StageRef:
    """A link to another stage folder: where it was and which manifest it had."""

    path: str = _doc("absolute path of the stage folder when it was used", "")
    stage: str | None = _doc("its stage name")
    manifest_sha256: str | None = _doc("sha256 of its manifest without `eval` (see manifest_sha)")


@dataclass
class Manifest:
    """One stage folder's record. Field order is the order of the JSON file."""

    stage: str = _doc("stage name: the registry's (base, tokenizer, pretrain, sft, dpo, kto, reward, rlhf, grpo, rloo, cai)", "")
    status: str = _doc("running, failed or complete; only a complete stage is used as a parent", "running")
    version: int = _doc("manifest schema version (absent, meaning 1, in folders written before the typed manifest)",
                        MANIFEST_VERSION)
    created: str | None = _doc("when the stage started (ISO 8601)")
    finished: str | None = _doc("when it completed")
    wall_seconds: float | None = _doc("stage wall time over every run that trained it (a resumed stage adds its segments)")
    versions: dict[str, str] = _doc("versions of python, llmpipe and the libraries that decide the numbers", factory=dict)
    git_commit: str | None = _doc("commit of the llmpipe source tree, when it is a git checkout")
    config: dict[str, Any] = _doc("the settings that define the result: the stage's recipe section plus the shared keys it "
                                  "uses (seed, precision, model, monitor, ...); compared before a stage is skipped", factory=dict)
    seed: int | None = _doc("the run's seed")
    parent: StageRef | None = _doc("the checkpoint this stage started from: {path, stage, manifest_sha256}")
    source: dict[str, Any] | None = _doc("an imported base model: where it came from ({path} or {hub_id, revision, commit} "
                                         "or a .gguf path), kind, model_type, architectures, parameters, dtype, licence, "
                                         "chat_template (its own, or llmpipe's added with added_tokens and embeddings "
                                         "resized from → to), linked (files that refer to the source rather than copy it)")
    base: StageRef | None = _doc("the imported base model this stage descends from (every stage after a base stage "
                                 "names it): {path, stage, manifest_sha256}")
    reward_model: StageRef | None = _doc("RL policies trained against a reward model: that reward stage, "
                                         "{path, stage, manifest_sha256}; its sha256 is also in config.reward_model_sha256")
    budget: dict[str, Any] | None = _doc("pretraining sized by a budget (pretrain.time_budget, tokens or tokens_per_param): "
                                         "{kind, value, steps, tokens, tokens_per_step, warmup_steps, eval_every, "
                                         "save_every, log_every, parameters, step_seconds and eval_batch_seconds (measured "
                                         "here), measure_seconds, shape and candidates (model: auto), why}; a resumed "
                                         "stage keeps it")
    data: dict[str, Any] = _doc("the data report: rows read / kept / dropped by reason per file, file hashes, token counts",
                                factory=dict)
    generation: dict[str, Any] | None = _doc("the training data a stage generated before training (cai): {file, "
                                             "constitution {path, sha256, name, principles}, judge ({path, stage, "
                                             "manifest_sha256} or {path, sha256} of a Hugging Face folder; null: the "
                                             "policy), settings, prompts {train, validation}, revised (revisions that differ "
                                             "from their drafts), revised_share, empty, trained_rows, principle_counts, "
                                             "reused_prompts (generated by an earlier, interrupted run), generated_prompts, "
                                             "seconds, examples [{prompt, principle, draft, critique, revision}]}")
    metrics: dict[str, Any] = _doc("stage-specific figures, before → after (validation_loss_before, validation_loss, "
                                   "answer_accuracy, ...). Align stages, on held-out pairs against the parent: "
                                   "implicit_reward_accuracy / _margin (beta x log pi/pi_ref, chosen above rejected; "
                                   "0.5 / 0 before by definition), per_token_logp_accuracy / _margin (length-"
                                   "normalised), summed_logp_accuracy / _margin (an extra: mostly says which reply is "
                                   "shorter), chosen_longer_share, preference_rows; reward_model_win_rate (greedy "
                                   "replies against the parent's, under the reward model; 0.5 before) where there is "
                                   "one; `<name>_note` says why a measure is missing", factory=dict)
    evals: list[dict[str, Any]] = _doc("the trainer's log history, one entry per log or evaluation, each with `step`: "
                                       "loss, learning_rate, grad_norm, tokens_per_second, mfu; eval_loss (eval_bpb in "
                                       "pretraining); kept whole across resumes", factory=list)
    probes: list[dict[str, Any]] = _doc("probe-suite scores during training: [{step, suite, score, n}]; step 0 is before "
                                        "training", factory=list)
    samples: list[dict[str, Any]] = _doc("generations of the sample prompts during training: [{step, prompt, reply}]",
                                         factory=list)
    protected: dict[str, Any] | None = _doc("what children are gated on: {heldout: [{name, kind, file, rows, max_length}], "
                                            "probes: [{name, file}]}, files inside the stage folder")
    gate: dict[str, Any] | None = _doc("the regression check against the parent: {against, parent_stage, passed, action, "
                                       "checks: [{name, kind, parent, child, change, tolerance, passed}]}")
    monitor: dict[str, Any] | None = _doc("{peak_flops, peak_source, mfu, anomalies: [{step, kind, loss, reference, action}], "
                                          "rollbacks, train_seconds, compile_seconds}")
    before: dict[str, Any] = _doc("held-out measures taken before the first training step, kept in the work folder's "
                                  "manifest so that a resumed stage reports the same before → after as an uninterrupted "
                                  "one; emptied when the stage completes (the metrics hold them)", factory=dict)
    segments: list[dict[str, Any]] = _doc("the training segments, one per process run that trained the stage: {from_step, "
                                          "to_step, wall_seconds, processes, engine (single, ddp, fsdp2, deepspeed-zero2/3)}; "
                                          "summary.wall_seconds is their sum", factory=list)
    summary: dict[str, Any] | None = _doc("the stage's line of the final table: steps, tokens, wall_seconds, "
                                          "tokens_per_second, train_loss, val_loss, metric {name, before, after, why}: the "
                                          "headline measure and why it is the one")
    suites: dict[str, Any] | None = _doc("instruction-following and safety suite scores (llmpipe/eval/suites.py) of a chat "
                                         "stage: {before, after}, each {settings, instructions: {prompt_accuracy, "
                                         "constraint_accuracy, by_kind, ...}, safety: {harmful_compliance_rate, "
                                         "over_refusal_rate, by_category, ...}, seconds}; before is the starting model "
                                         "(reused_from: the parent's record when its settings were the same)")
    verdict: dict[str, Any] | None = _doc("the release verdict's thresholds when the stage finished ({thresholds: the "
                                          "recipe's verdict section}); `llmpipe verdict` and the report judge by them "
                                          "unless given others")
    parameters: dict[str, Any] | None = _doc("{trainable, total, trainable_share} of the model as trained (with LoRA: "
                                             "adapter weights against base + adapters)")
    lora: dict[str, Any] | None = _doc("LoRA stages: {base, adapter, target_modules, adapter_sha256, files}; the stage's own "
                                       "model files are the merged model")
    files: dict[str, str] = _doc("sha256 of every artefact file of the stage folder", factory=dict)
    tokenizer_sha256: str | None = _doc("sha256 of tokenizer.json")
    chat_template_sha256: str | None = _doc("sha256 of chat_template.jinja: chat, eval and export refuse a changed template")
    error: str | None = _doc("why a failed stage failed")
    eval: dict[str, Any] = _doc("results of `llmpipe eval` on this checkpoint, by dataset or suite name; not part of the "
                                "identity children record", factory=dict)
    # Keys of other manifest versions, written back as they were.
    extra: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})
    # The keys of a manifest written by an older llmpipe: rewriting it (`llmpipe eval`) must not add this
    # version's empty fields, or its sha256, which its children recorded, would change.
    read_keys: tuple[str, ...] | None = field(default=None, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to manifest.json (unknown keys of other versions kept)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if self.read_keys is not None and f.name not in self.read_keys and (value == default or f.name == "version"):
                continue
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """A Manifest from parsed JSON; missing or mistyped fields take their defaults (see the module doc)."""
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        values: dict[str, Any] = {}
        for name in known:
            if name not in raw:
                continue
            value = _typed(raw[name], hints[name])
            if value is not _WRONG:
                values[name] = value
        manifest = cls(**values)
        if "version" not in raw:
            manifest.version = 1
            manifest.read_keys = tuple(raw)
        manifest.extra = {k: v for k, v in raw.items() if k not in known}
        return manifest

    def section(self) -> dict[str, Any]:
        """The stage's own recipe section as recorded in `config` (`config.sft` for sft, `config.align` for
        dpo): not the first mapping there, which is `monitor`."""
        name = STAGES[self.stage].section if self.stage in STAGES else None
        if name is None:  # a stage this version does not know: the one mapping that is not monitor
            found = [k for k, v in self.config.items() if isinstance(v, dict) and k != "monitor"]
            name = found[0] if len(found) == 1 else None
        section = self.config.get(name) if name is not None else None
        return section if isinstance(section, dict) else {}

    def headline(self) -> dict[str, Any]:
        """The summary's headline metric {name, before, after, why}, or {} when there is none."""
        metric = (self.summary or {}).get("metric")
        return metric if isinstance(metric, dict) else {}


_WRONG = object()


def _typed(value: Any, kind: Any) -> Any:
    """`value` if it fits the declared type, a StageRef built from a dict, else _WRONG."""
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
    if value is None:
        return None if optional and type(None) in typing.get_args(kind) else _WRONG
    base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
    if base is StageRef:
        if not isinstance(value, dict):
            return _WRONG
        return StageRef(**{k: v for k, v in value.items() if k in {"path", "stage", "manifest_sha256"}})
    origin = typing.get_origin(base) or base
    if origin is float:
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else _WRONG
    if origin is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    return value if isinstance(value, origin) else _WRONG


def read_manifest(stage_dir: Path) -> Manifest | None:
    """The manifest of a stage folder, or None when there is none or it is not a JSON object."""
    raw = read_manifest_json(stage_dir)
    return None if raw is None else Manifest.from_dict(raw)


def read_manifest_json(stage_dir: Path) -> dict[str, Any] | None:
    """The raw JSON object of a stage folder's manifest (for hashing), or None."""
    try:
        raw = json.loads((Path(stage_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def write_manifest(stage_dir: Path, manifest: Manifest) -> None:
    """Write `manifest` into `stage_dir` atomically (readers see the old file or the new one)."""
    write_json_atomic(Path(stage_dir) / MANIFEST, manifest.to_dict())


def manifest_sha(stage_dir: Path) -> str:
    """sha256 of a stage's manifest without its `eval` results: the identity a child records for its
    parent, unchanged when the parent is evaluated later. Computed over the JSON as written, so the
    identity of a folder written by an older llmpipe does not change when this one reads it."""
    manifest = json.loads((Path(stage_dir) / MANIFEST).read_text(encoding="utf-8"))
    manifest.pop("eval", None)
    return sha256_text(json.dumps(manifest, sort_keys=True, default=str))


def markdown() -> str:
    """docs/manifest.md, generated from the field declarations above."""
    lines = [
        "# manifest.json",
        "",
        "<!-- Generated from llmpipe/runs/manifest.py by `make docs`; a test checks it is current. -->",
        "",
        f"Every stage folder (`runs/<run>/<stage>/`) holds a `manifest.json` (schema version {MANIFEST_VERSION}). It is the "
        "hand-off between stages and the source of `llmpipe summary`, `llmpipe report`, `llmpipe eval` and the regression gate.",
        "",
        "| field | type | what |",
        "|---|---|---|",
    ]
    hints = typing.get_type_hints(Manifest)
    for f in dataclasses.fields(Manifest):
        if f.metadata.get("internal"):
            continue
        kind = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", str(hints[f.name]))
        # Module paths off class names, and `or` for `|`, which would split the Markdown table's cell.
        kind = re.sub(r"\b(?:[a-z_]\w*\.)+([A-Z]\w*)", r"\1", kind).replace("NoneType", "None").replace(" | ", " or ")
        lines.append(f"| `{f.name}` | `{kind}` | {f.metadata['help']} |")
    lines += [
        "",
        "`StageRef` is `{path, stage, manifest_sha256}`. A child records its parent's `manifest_sha256`, computed over the "
        "manifest without `eval`, so that evaluating a checkpoint later does not make its children stale.",
        "",
        "TensorBoard event files are in `<stage>/tensorboard/` (`tensorboard --logdir runs/<run>`).",
        "",
        "While a stage trains, `.<stage>.partial/checkpoints/checkpoint-N/` are HF Trainer checkpoints, each sealed by "
        "`llmpipe-seal.json` (every file's size and sha256) once its save completed; resume uses the newest checkpoint "
        "whose seal matches its files. The work folder's own manifest keeps `before`, `evals` and `segments`, so that a "
        "resumed stage's record equals an uninterrupted one's apart from timings.",
        "",
    ]
    return "\n".join(lines)
