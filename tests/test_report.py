"""`llmpipe report`: the run report card (Markdown, self-contained HTML, PNG plots) from the manifests."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from conftest import invoke

from llmpipe.report import fmt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = ("tokenizer", "pretrain", "sft", "dpo")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def _edit_manifest(stage_dir: Path, change) -> None:
    path = stage_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _report(run: Path) -> tuple[str, str]:
    result = invoke("report", str(run))
    assert result.exit_code == 0, result.output
    return (run / "report" / "report.md").read_text(encoding="utf-8"), (run / "report" / "report.html").read_text(encoding="utf-8")


def test_run_writes_the_report(micro_run):
    assert (micro_run / "report" / "report.md").is_file()
    assert (micro_run / "report" / "report.html").is_file()


def test_report_of_the_micro_chain(micro_copy):
    shutil.rmtree(micro_copy / "report")  # `run` already wrote one; this test must see the command's own
    result = invoke("report", str(micro_copy))
    assert result.exit_code == 0, result.output
    printed = result.stdout.split()
    markdown = (micro_copy / "report" / "report.md").read_text(encoding="utf-8")
    page = (micro_copy / "report" / "report.html").read_text(encoding="utf-8")
    assert str(micro_copy / "report" / "report.md") in printed and str(micro_copy / "report" / "report.html") in printed

    assert markdown.startswith(f"# Run report: {micro_copy.name} (")
    assert "tokenizer → pretrain → sft → dpo" in markdown
    for stage in STAGES:
        assert f"\n## {stage}\n" in markdown
    # Stages in lineage order, each with its parent's short manifest sha checked.
    assert [markdown.index(f"\n## {stage}\n") for stage in STAGES] == sorted(markdown.index(f"\n## {s}\n") for s in STAGES)
    assert markdown.count("| matches |") == 3

    headline = json.loads((micro_copy / "pretrain" / "manifest.json").read_text())["summary"]["metric"]
    assert f"| {headline['name']} (headline) | {fmt(headline['before'])} | {fmt(headline['after'])} |" in markdown
    assert "| validation_loss |" in markdown and "no gate" in markdown  # pretrain's parent is a tokenizer
    assert markdown.count("| pass |") >= 4  # sft and dpo each passed their gate checks
    assert "### Samples" in markdown  # sft's answer-accuracy samples

    pngs = sorted(p.name for p in (micro_copy / "report").glob("*.png"))
    assert pngs == sorted(f"{stage}-{kind}.png" for stage in ("pretrain", "sft", "dpo") for kind in ("training", "probes"))
    for name in pngs:
        path = micro_copy / "report" / name
        width, height = _png_size(path)
        assert 600 <= width <= 1200 and 250 <= height <= 800, (name, width, height)
        assert 10_000 < path.stat().st_size < 1_000_000
        assert f"]({name})" in markdown and str(path) in printed

    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == len(pngs)
    assert "<table>" in page and "http://" not in page and "https://" not in page


def test_report_shows_probes_samples_gate_and_monitor(micro_copy):
    def enrich(manifest):
        manifest["probes"] = [{"step": step, "suite": suite, "score": base + step / 20, "n": 10}
                              for suite, base in (("arithmetic", 0.1), ("recall", 0.4)) for step in (0, 3, 6)]
        manifest["samples"] = [{"step": step, "prompt": f"What is {i}+{i}?", "reply": f"It is {2 * i} | done\nbye"}
                               for step in (0, 6) for i in range(5)]
        manifest["gate"] = {"against": "pretrain", "parent_stage": "pretrain", "passed": False, "action": "warn", "checks": [
            {"name": "heldout-text", "kind": "heldout", "parent": 5.7, "child": 5.9, "change": 0.2, "tolerance": 0.05, "passed": False},
            {"name": "arithmetic", "kind": "probe", "parent": 0.2, "child": 0.3, "change": 0.1, "tolerance": 0.02, "passed": True}]}
        manifest["monitor"] = {"peak_flops": 9.89e14, "peak_source": "table", "mfu": 0.0123, "rollbacks": 1,
                               "anomalies": [{"step": 4, "kind": "loss_spike", "loss": 9.5, "reference": 5.9, "action": "rollback"}]}
        for entry in manifest["evals"]:
            if "loss" in entry:
                entry["tokens_per_second"] = 1000.0 + entry["step"]

    _edit_manifest(micro_copy / "sft", enrich)
    markdown, page = _report(micro_copy)
    sft = markdown[markdown.index("\n## sft\n"):markdown.index("\n## dpo\n")]
    assert "against pretrain: FAILED (action: warn)" in sft
    assert "| heldout-text | heldout | 5.7 | 5.9 | 0.2 | 0.05 | FAIL |" in sft and "| pass |" in sft
    assert "MFU 1.2% of peak" in sft and "| 4 | loss_spike | 9.5 | 5.9 | rollback |" in sft
    assert "| arithmetic | 0.1 | 0.4 | +0.3 | 6 | 10 |" in sft and "| recall |" in sft
    # The last step's samples only, at most three, with table-breaking characters escaped.
    assert sft.count("| 6 | What is") == 3 and "| 0 | What is" not in sft
    assert "It is 0 \\| done<br>bye" in sft
    assert (micro_copy / "report" / "sft-probes.png").is_file() and "](sft-probes.png)" in sft
    _png_size(micro_copy / "report" / "sft-probes.png")
    assert '<td class="FAIL">FAIL</td>' in page and page.count("data:image/png;base64,") == len(list((micro_copy / "report").glob("*.png")))


def test_report_with_sparse_manifests_and_unknown_stages(micro_copy):
    # A future method's stage whose manifest lacks every optional field, and one that is not complete.
    shutil.copytree(micro_copy / "dpo", micro_copy / "kto")
    shutil.copytree(micro_copy / "dpo", micro_copy / "grpo")

    def strip(manifest):
        for field in ("evals", "probes", "gate", "monitor", "samples", "data", "metrics", "summary", "config"):
            manifest.pop(field, None)
        manifest["stage"] = "kto"
        manifest["parent"] = {"path": "/gone/dpo", "stage": "dpo", "manifest_sha256": "0" * 64}

    _edit_manifest(micro_copy / "kto", strip)
    _edit_manifest(micro_copy / "grpo", lambda m: m.update(status="running"))
    _edit_manifest(micro_copy / "pretrain", lambda m: [m.pop(f) for f in ("evals", "probes", "gate", "monitor") if f in m])
    markdown, _ = _report(micro_copy)
    assert "tokenizer → pretrain → sft → dpo → kto" in markdown
    kto = markdown[markdown.index("\n## kto\n"):]
    assert "no gate" in kto and "no data record" in kto and "no metrics recorded" in kto
    assert "| kto | /gone/dpo | 000000000000 | parent changed |" in markdown
    assert "## grpo" not in markdown
    pngs = sorted(p.name for p in (micro_copy / "report").glob("*.png"))
    # pretrain lost its log history and probes, kto never had either
    assert pngs == ["dpo-probes.png", "dpo-training.png", "sft-probes.png", "sft-training.png"]


def test_report_of_a_missing_or_empty_folder(tmp_path):
    result = invoke("report", str(tmp_path / "nothing"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nothing'}: run folder not found"]
    (tmp_path / "empty" / ".pretrain.partial").mkdir(parents=True)
    result = invoke("report", str(tmp_path / "empty"))
    assert result.exit_code == 2 and "no complete stage" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def _config_row(markdown: str, stage: str) -> list[str]:
    """The cells of a stage's Config table row (model, steps, batch, lr, max length, settings)."""
    section = markdown[markdown.index(f"\n## {stage}\n"):]
    table = section[section.index("### Config"):section.index("### Data")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| model |", "| --- |"))]
    assert len(rows) == 1, table
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")]


def test_report_config_rows_carry_each_stage_recipe_values(micro_copy):
    markdown, _ = _report(micro_copy)
    # recipes/micro.yaml: steps, batch, max length; the learning rates are the sections' defaults.
    expected = {"pretrain": ("pretrain", "8", "4", "64"), "sft": ("sft", "6", "4", "64"), "dpo": ("align", "4", "4", "64")}
    for stage, (section, steps, batch, max_length) in expected.items():
        recipe = json.loads((micro_copy / stage / "manifest.json").read_text())["config"][section]
        cells = _config_row(markdown, stage)
        assert cells[1:5] == [steps, batch, fmt(recipe["learning_rate"]), max_length], (stage, cells)
        assert cells[3] != "-", (stage, cells)
    # The method's own settings, not the monitor's.
    assert "loss_type=sigmoid" in _config_row(markdown, "dpo")[5]
    assert "on_anomaly" not in markdown
