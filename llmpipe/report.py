"""The run report card: `<run>/report/report.md`, a self-contained `report.html` and PNG plots.

Everything is read from the stages' manifests (no torch import). Both documents are rendered from
one list of blocks, so the Markdown and the HTML always say the same thing. Every manifest field
beyond `stage`/`status` is optional here: a section without its data says so or is left out.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from llmpipe.config.presets import model_label
from llmpipe.core.errors import UserError
from llmpipe.eval.verdict import release_stage, verdict
from llmpipe.report_plots import number, probe_scores, scaling_figure, training_curves
from llmpipe.runs import MANIFEST, Manifest, StageRef, manifest_sha
from llmpipe.runs.lineage import complete_stages

REPORT_DIR = "report"
MAX_SAMPLES = 3
SHORT_SHA = 12
MAX_SETTINGS = 10
# Config keys shown in their own columns, or that describe data handling and bookkeeping rather than
# the method; whatever else a stage's section holds (beta, loss_type, packing, …) is a method setting.
COLUMN_KEYS = {"model", "max_steps", "batch_size", "grad_accum", "learning_rate", "max_length"}
NOT_SETTINGS = COLUMN_KEYS | {
    "train_files", "validation_files", "mixture_weights", "columns", "bad_rows", "validation_fraction", "cleaning",
    "min_lr_ratio", "decay_fraction", "weight_decay", "max_grad_norm", "warmup_steps", "eval_every", "eval_batches", "save_every",
    "log_every", "max_train_bytes", "accuracy_rows", "preference_rows", "max_new_tokens",
    "probes", "probe_every", "sample_prompts", "gate", "gradient_checkpointing",
}

# A block is one piece of the report: ("h1" | "h2" | "h3" | "p", text), ("table", headers, rows),
# or ("img", png_path, alt_text).
Block = tuple[Any, ...]


def fmt(value: Any, digits: int = 4) -> str:
    """A manifest value as short text: '-' for None, grouped integers, `digits` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) < 1000:
            return f"{value:.{digits}g}"
        return f"{value:,.0f}" if abs(value) < 1e9 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _change(before: Any, after: Any) -> str:
    before, after = number(before), number(after)
    if before is None or after is None:
        return "-"
    return f"{after - before:+.4g}"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ---- which stages, in which order -------------------------------------------------------------

# ---- sections of one stage --------------------------------------------------------------------

def _lineage(run_dir: Path, stages: list[tuple[str, Manifest]]) -> list[Block]:
    rows = []
    for name, manifest in stages:
        parent = manifest.parent or StageRef()
        recorded = str(parent.manifest_sha256 or "")
        parent_path = Path(parent.path) if parent.path else None
        state = "-"
        if parent_path is not None:
            # The sha a child recorded must still be its parent's, or the child was trained on something else.
            # A moved or copied run's recorded path may be gone: then the same-named stage of this run is checked.
            found = next((p for p in (parent_path, Path(run_dir) / parent_path.name) if (p / MANIFEST).is_file()), None)
            current = manifest_sha(found) if found is not None else None
            state = "parent missing" if current is None else "matches" if current == recorded else "parent changed"
        rows.append([name, str(parent_path) if parent_path else "-", recorded[:SHORT_SHA] or "-", state,
                     manifest_sha(Path(run_dir) / name)[:SHORT_SHA]])
    return [
        ("h2", "Lineage"),
        ("p", " → ".join(name for name, _ in stages)),
        ("table", ["stage", "parent", "parent manifest sha", "parent check", "own manifest sha"], rows),
    ]


def _config_section(manifest: Manifest, inherited_model: str | None) -> list[Block]:
    # The stage's own section ({seed, precision, monitor: {...}, sft: {...}}: the one that is not monitor).
    merged = {**manifest.config, **manifest.section()}
    # Only pretraining names the preset; later stages continue from their parent's model.
    model = model_label(merged["model"]) if merged.get("model") else f"{inherited_model} (parent's)" if inherited_model else "-"
    batch = fmt(merged.get("batch_size"))
    if (number(merged.get("grad_accum")) or 1) > 1:
        batch += f" × {fmt(merged['grad_accum'])} accum"
    settings = [f"{key}={fmt(value)}" for key, value in merged.items()
                if key not in NOT_SETTINGS and isinstance(value, str | int | float | bool)]
    return [
        ("h3", "Config"),
        ("table", ["model", "steps", "batch", "lr", "max length", "settings"],
         [[model, fmt(merged.get("max_steps")), batch, fmt(merged.get("learning_rate")),
           fmt(merged.get("max_length")), ", ".join(settings[:MAX_SETTINGS]) or "-"]]),
    ]


def _data_section(manifest: Manifest) -> list[Block]:
    data = manifest.data
    if not data:
        return [("h3", "Data"), ("p", "no data record")]
    rows = [[fmt(source.get("source")), fmt(source.get("split")), fmt(source.get("rows"))]
            for source in map(_as_dict, _as_list(data.get("sources")))]
    kept = [f"{fmt(data[key])} {label}" for key, label in
            (("train_rows", "train rows"), ("validation_rows", "validation rows"), ("train_tokens", "train tokens"))
            if data.get(key) is not None]
    dropped = _as_dict(data.get("dropped"))
    dropped_text = ", ".join(f"{reason} {fmt(n)}" for reason, n in dropped.items()) or "none"
    blocks: list[Block] = [("h3", "Data")]
    if rows:
        blocks.append(("table", ["source", "split", "rows read"], rows))
    blocks.append(("p", f"kept: {', '.join(kept) or '-'}; dropped: {dropped_text}"))
    return blocks


# Metrics shown with a label that says what they are (llmpipe.eval.pairs says why).
METRIC_LABELS = {
    "summed_logp_accuracy": "summed_logp_accuracy (extra: mostly says which reply is shorter)",
    "summed_logp_margin": "summed_logp_margin (extra)",
    "per_token_logp_accuracy": "per_token_logp_accuracy (length-normalised)",
    "reward_accuracy": "reward_accuracy (TRL's eval: rewards/accuracies on max_length-cut rows)",
}


def _metrics_section(manifest: Manifest) -> list[Block]:
    metrics = manifest.metrics
    headline = manifest.headline()
    rows = []
    if headline:
        before, after = headline.get("before"), headline.get("after")
        rows.append([f"{headline.get('name', 'metric')} (headline)", fmt(before), fmt(after), _change(before, after)])
    paired = set()
    for key, before in metrics.items():
        base = key.removesuffix("_before")
        if key != base and base in metrics:
            paired.update((key, base))
            rows.append([METRIC_LABELS.get(base, base), fmt(before), fmt(metrics[base]), _change(before, metrics[base])])
    for key, value in metrics.items():
        if key in paired or not isinstance(value, str | int | float | bool):
            continue
        if key.endswith("_note"):  # why a measure is missing: shown in its place
            rows.append([key.removesuffix("_note"), "-", f"- ({value})", "-"])
        else:
            rows.append([METRIC_LABELS.get(key, key), "-", fmt(value), "-"])
    if not rows:
        return [("h3", "Metrics"), ("p", "no metrics recorded")]
    blocks: list[Block] = [("h3", "Metrics"), ("table", ["metric", "before", "after", "change"], rows)]
    if headline.get("why"):
        blocks.append(("p", f"Why {headline.get('name')} is the headline: {headline['why']}"))
    return blocks


def _gate_section(manifest: Manifest) -> list[Block]:
    gate = manifest.gate
    if gate is None:
        return [("h3", "Gate"), ("p", "no gate")]
    verdict = "passed" if gate.get("passed") else "FAILED"
    against = gate.get("parent_stage") or gate.get("against") or "parent"
    line = f"against {against}: {verdict}" + (f" (action: {gate['action']})" if gate.get("action") else "")
    rows = [[fmt(check.get("name")), fmt(check.get("kind")), fmt(check.get("parent")), fmt(check.get("child")),
             fmt(check.get("change")), fmt(check.get("tolerance")), "pass" if check.get("passed") else "FAIL"]
            for check in map(_as_dict, _as_list(gate.get("checks")))]
    blocks: list[Block] = [("h3", "Gate"), ("p", line)]
    if rows:
        blocks.append(("table", ["check", "kind", "parent", "child", "change", "tolerance", "result"], rows))
    return blocks


def _percent(value: Any) -> str:
    value = number(value)
    if value is None:
        return "-"
    # MFU is recorded as a fraction; a value above 1 can only already be a percentage.
    return f"{value:.1%}" if value <= 1 else f"{value:.1f}%"


def _monitor_section(manifest: Manifest) -> list[Block]:
    monitor = manifest.monitor
    if monitor is None:
        return []
    peak = f"{number(monitor.get('peak_flops')):.3g} FLOP/s" if number(monitor.get("peak_flops")) else "unknown"
    peak += f" ({monitor['peak_source']})" if monitor.get("peak_source") else ""
    rollbacks = monitor.get("rollbacks")
    rollback_count = len(rollbacks) if isinstance(rollbacks, list) else rollbacks
    anomalies = [[fmt(a.get("step")), fmt(a.get("kind")), fmt(a.get("loss")), fmt(a.get("reference")), fmt(a.get("action"))]
                 for a in map(_as_dict, _as_list(monitor.get("anomalies")))]
    blocks: list[Block] = [
        ("h3", "Monitor"),
        ("p", f"MFU {_percent(monitor.get('mfu'))} of peak {peak}; rollbacks: {fmt(rollback_count or 0)}; "
              f"anomalies: {len(anomalies) or 'none'}"),
    ]
    if anomalies:
        blocks.append(("table", ["step", "kind", "loss", "reference", "action"], anomalies))
    return blocks


def _throughput_section(manifest: Manifest) -> list[Block]:
    summary = manifest.summary or {}
    parts = [f"{fmt(summary[key])} {label}" for key, label in
             (("steps", "steps"), ("tokens", "tokens"), ("tokens_per_second", "tokens/s")) if summary.get(key) is not None]
    if summary.get("wall_seconds") is not None:
        parts.append(f"training {fmt(summary['wall_seconds'])} s")
    if manifest.wall_seconds is not None:
        parts.append(f"stage wall {fmt(manifest.wall_seconds)} s")
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        if summary.get(key) is not None:
            parts.append(f"{label} {fmt(summary[key])}")
    return [("h3", "Throughput"), ("p", " · ".join(parts) or "not recorded")]


def _probes_section(manifest: Manifest) -> list[Block]:
    records = [r for r in map(_as_dict, manifest.probes) if number(r.get("step")) is not None]
    if not records:
        return []
    rows = []
    for suite in sorted({str(r.get("suite", "probe")) for r in records}):
        runs = sorted((r for r in records if str(r.get("suite", "probe")) == suite), key=lambda r: number(r["step"]))
        before = next((r.get("score") for r in runs if number(r["step"]) == 0), None)
        last = runs[-1]
        rows.append([suite, fmt(before), fmt(last.get("score")), _change(before, last.get("score")),
                     fmt(last.get("step")), fmt(last.get("n"))])
    return [("h3", "Probes"), ("table", ["suite", "before (step 0)", "last", "change", "at step", "n"], rows)]


def _generation_section(manifest: Manifest) -> list[Block]:
    """The data a stage generated before training (cai): what from, how much changed, a few examples."""
    generated = manifest.generation
    if not isinstance(generated, dict):
        return []
    prompts = _as_dict(generated.get("prompts"))
    constitution = _as_dict(generated.get("constitution"))
    judge = _as_dict(generated.get("judge"))
    line = (f"{fmt(prompts.get('train'))} training and {fmt(prompts.get('validation'))} held-out prompts drafted, critiqued "
            f"and revised in {fmt(generated.get('file'))}; revisions that differ from their drafts: {fmt(generated.get('revised'))} "
            f"({_percent(generated.get('revised_share'))}); empty: {fmt(generated.get('empty'))}; trained on "
            f"{fmt(generated.get('trained_rows'))} rows; constitution {fmt(constitution.get('name'))} "
            f"({len(_as_list(constitution.get('principles')))} principles, sha256 {str(constitution.get('sha256') or '-')[:SHORT_SHA]}); "
            f"critic: {fmt(judge.get('path')) if judge else 'the policy'}; reused from an interrupted run: "
            f"{fmt(generated.get('reused_prompts'))}")
    rows = []
    for example in map(_as_dict, _as_list(generated.get("examples"))[:MAX_SAMPLES]):
        prompt = _as_list(example.get("prompt"))
        asked = _as_dict(prompt[-1]).get("content") if prompt else example.get("prompt")
        rows.append([fmt(asked), fmt(example.get("principle")), fmt(example.get("draft")), fmt(example.get("critique")),
                     fmt(example.get("revision"))])
    blocks: list[Block] = [("h3", "Generated data"), ("p", line)]
    if rows:
        blocks.append(("table", ["prompt", "principle", "draft", "critique", "revision"], rows))
    return blocks


def _samples_section(manifest: Manifest) -> list[Block]:
    during = [s for s in map(_as_dict, manifest.samples) if s]
    if during:
        last_step = max((number(s.get("step")) for s in during if number(s.get("step")) is not None), default=None)
        samples = [s for s in during if number(s.get("step")) == last_step] if last_step is not None else during
    else:
        samples = [s for s in map(_as_dict, _as_list(manifest.metrics.get("samples"))) if s]
    samples = samples[:MAX_SAMPLES]
    if not samples:
        return []
    columns = [key for key in ("step", "prompt", "reply", "answer") if any(key in s for s in samples)]
    headers = ["expected" if key == "answer" else key for key in columns]
    return [("h3", "Samples"), ("table", headers, [[fmt(s.get(key)) for key in columns] for s in samples])]


def _suites_section(manifest: Manifest) -> list[Block]:
    scored = manifest.suites or {}
    before, after = scored.get("before") or {}, scored.get("after") or {}
    rows = []
    for suite, key, label in (("instructions", "prompt_accuracy", "instruction following, prompt-level"),
                              ("instructions", "constraint_accuracy", "instruction following, constraint-level"),
                              ("safety", "harmful_compliance_rate", "harmful compliance"),
                              ("safety", "over_refusal_rate", "over-refusal")):
        mine, was = _as_dict(after.get(suite)), _as_dict(before.get(suite))
        if mine:
            rows.append([label, fmt(was.get(key)), fmt(mine.get(key)), _change(was.get(key), mine.get(key)),
                         fmt(mine.get("prompts") or ((mine.get("harmful") or 0) + (mine.get("benign") or 0)))])
    if not rows:
        return []
    kinds = _as_dict(_as_dict(after.get("instructions")).get("by_kind"))
    blocks: list[Block] = [("h3", "Suites"), ("table", ["measure", "before", "after", "change", "prompts"], rows)]
    if kinds:
        blocks.append(("p", "instruction accuracy by constraint kind: "
                       + ", ".join(f"{kind} {fmt(_as_dict(v).get('accuracy'), 2)}" for kind, v in kinds.items())))
    return blocks


def _verdict_blocks(run_dir: Path, thresholds: dict[str, Any] | None) -> list[Block]:
    """The release verdict of the run's last chat stage, from the manifests (llmpipe/eval/verdict.py)."""
    try:
        result = verdict(release_stage(run_dir), thresholds)
    except UserError as e:
        return [("h2", "Release verdict"), ("p", f"no verdict: {e.one_line()}")]
    failed = [a["question"] for a in result["answers"] if a["answer"] == "no"]
    line = ("ready: every answer is yes" if not failed else f"not ready: no on {', '.join(failed)}")
    return [
        ("h2", f"Release verdict: {Path(result['folder']).name}"),
        ("p", f"{line} (`llmpipe verdict {run_dir}` says the same and exits 3 when an answer is no; thresholds: the "
              "recipe's verdict section)"),
        ("table", ["question", "answer", "numbers"], [[a["question"], a["answer"], a["numbers"]] for a in result["answers"]]),
    ]


def _stage_blocks(run_dir: Path, name: str, manifest: Manifest, out_dir: Path,
                  inherited_model: str | None) -> tuple[list[Block], dict[str, Path]]:
    plots = {}
    for kind, draw, field in (("training", training_curves, "evals"), ("probes", probe_scores, "probes")):
        path = draw(name, getattr(manifest, field), out_dir / f"{name}-{kind}.png")
        if path is not None:
            plots[path.stem] = path
    blocks: list[Block] = [("h2", f"{name}"), ("p", f"folder: {Path(run_dir) / name}; finished {fmt(manifest.finished)}")]
    blocks += _config_section(manifest, inherited_model)
    if manifest.budget:
        budget = manifest.budget
        blocks.append(("p", f"budget: {budget.get('kind')} {fmt(budget.get('value'))}: {budget.get('why', '')}"))
    for section in (_data_section, _generation_section, _metrics_section, _suites_section, _gate_section, _monitor_section,
                    _throughput_section, _probes_section, _samples_section):
        blocks += section(manifest)
    if plots:
        blocks.append(("h3", "Plots"))
        blocks += [("img", path, f"{name} {path.stem.removeprefix(name + '-')}") for path in plots.values()]
    return blocks, plots


def _scale_section(run_dir: Path, out_dir: Path) -> tuple[list[Block], dict[str, Path]]:
    """`llmpipe scale`'s sweep (runs/<run>/scale/scale.json, where there is one): the points, the law and the check."""
    path = run_dir / "scale" / "scale.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        law, check = result["law"], result["check"]
    except (OSError, ValueError, KeyError, TypeError):
        return [], {}
    blocks: list[Block] = [
        ("h2", "Scaling-law check (llmpipe scale)"),
        ("p", f"L(N, D) = {law['E']:.3f} + {law['A']:.3g} / N^{law['alpha']:.3f} + {law['B']:.3g} / D^{law['beta']:.3f} "
              f"(nats/token; {len(result['points'])} points, relative RMS error {law.get('rmse_relative', 0):.2%}). "
              f"Check run {check['layers']} x {check['width']} ({check['parameters']:,} parameters, {check['tokens']:,} "
              f"tokens): {check['loss']:.4f} measured against {check['predicted_loss']:.4f} predicted, "
              f"{check['relative_error']:.1%} off."
              + "".join(f" Caution: {note}." for note in result.get("cautions", []))),
        ("table", ["budget (FLOPs)", "shape", "parameters", "tokens", "loss", "bits/byte"],
         [[f"{p['budget']:.2g}", f"{p['layers']} x {p['width']}", f"{p['parameters']:,}", f"{p['tokens']:,}",
           fmt(p["loss"]), fmt(p["bpb"])] for p in result["points"]]),
    ]
    plot = scaling_figure(result, out_dir / "scale.png")
    blocks.append(("img", plot, "scaling sweep"))
    return blocks, {plot.stem: plot}


# ---- rendering --------------------------------------------------------------------------------

def _md_text(text: str) -> str:
    # Replies can hold chat tokens such as <|im_end|>, which a Markdown viewer would swallow as HTML.
    return str(text).replace("<", "&lt;")


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def render_markdown(blocks: list[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown; images link to the PNG files next to the report."""
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {_md_text(rest[0])}")
        elif kind == "p":
            out.append(_md_text(rest[0]))
        elif kind == "table":
            headers, rows = rest
            lines = ["| " + " | ".join(_md_cell(c) for c in line) + " |" for line in (headers, *rows)]
            lines.insert(1, "|" + " --- |" * len(headers))
            out.append("\n".join(lines))
        elif kind == "img":
            path, alt = rest
            out.append(f"![{alt}]({Path(path).name})")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; white-space: pre-wrap; }
th { background: #f4f4f4; }
td.FAIL, td.no { color: #b00; font-weight: bold; } td.pass, td.yes { color: #070; font-weight: bold; }
img { max-width: 100%; display: block; margin: .5em 0; }
"""


# Cells coloured by their class: a gate check's result and a verdict's answer.
MARKED = ("pass", "FAIL", "yes", "no")


def render_html(blocks: list[Block], title: str) -> str:
    """The blocks as one self-contained HTML page: inline CSS, PNGs embedded as base64 data URIs."""
    esc = html.escape
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{esc(str(rest[0]))}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{esc(str(rest[0]))}</p>")
        elif kind == "table":
            headers, rows = rest
            head = "".join(f"<th>{esc(str(h))}</th>" for h in headers)
            body = "".join(
                "<tr>" + "".join(f'<td class="{esc(str(c))}">{esc(str(c))}</td>' if c in MARKED else f"<td>{esc(str(c))}</td>"
                                 for c in row) + "</tr>"
                for row in rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            path, alt = rest
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            out.append(f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">')
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(out) + "\n</body>\n</html>\n"
    )


def write_report(run_dir: Path, thresholds: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the run's report card into `<run_dir>/report/`: report.md, report.html and one PNG per plot. It
    opens with the release verdict of the run's last chat stage (`thresholds`: the recipe's verdict section;
    default: those the stage recorded).

    Returns every file written, keyed `markdown`, `html` and the plots' file stems (e.g. `pretrain-training`).
    Raises UserError when the run folder is missing or holds no complete stage.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError("run folder not found", file=str(run_dir))
    stages = complete_stages(run_dir)
    if not stages:
        raise UserError("no complete stage in this run folder", file=str(run_dir), hint="train one first, e.g. llmpipe run RECIPE")
    out_dir = run_dir / REPORT_DIR
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()  # plots of a stage that is gone or lost its data must not linger

    finished = max(str(manifest.finished or manifest.created or "") for _, manifest in stages)
    title = f"Run report: {run_dir.resolve().name}"
    blocks: list[Block] = [
        ("h1", f"{title} ({finished[:10] or 'undated'})"),
        ("p", f"run folder: {run_dir.resolve()}; stages: {len(stages)}; report written {time.strftime('%Y-%m-%d %H:%M:%S')}"),
        *_verdict_blocks(run_dir, thresholds),
        *_lineage(run_dir, stages),
    ]
    written: dict[str, Path] = {}
    model = None
    for name, manifest in stages:
        stage_blocks, plots = _stage_blocks(run_dir, name, manifest, out_dir, model)
        model = model_label(manifest.config["model"]) if manifest.config.get("model") else model
        blocks += stage_blocks
        written.update(plots)

    scale_blocks, scale_plot = _scale_section(run_dir, out_dir)
    blocks += scale_blocks
    written.update(scale_plot)

    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(render_markdown(blocks), encoding="utf-8")
    page.write_text(render_html(blocks, title), encoding="utf-8")
    return {"markdown": markdown, "html": page, **written}
