"""The spine end to end through the CLI: tokenizer → pretrain → sft → dpo on the micro preset."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import MICRO, RUN_OUTPUT, invoke, read_manifest

from llmpipe.core.console import fmt_number
from llmpipe.runs import manifest_sha

STAGES = ("tokenizer", "pretrain", "sft", "dpo")


def test_chain_writes_complete_manifests_linked_by_parent_hash(micro_run: Path):
    previous = None
    for stage in STAGES:
        manifest = read_manifest(micro_run / stage)
        assert manifest["stage"] == stage
        assert manifest["status"] == "complete"
        assert manifest["versions"]["torch"] and manifest["config"].get("seed", 0) == 0
        if previous is None:
            assert manifest["parent"] is None
        else:
            assert manifest["parent"]["stage"] == previous
            assert manifest["parent"]["manifest_sha256"] == manifest_sha(micro_run / previous)
        # Every recorded artefact hash matches the file on disk.
        from llmpipe.core.files import sha256_file

        for name, digest in manifest["files"].items():
            assert sha256_file(micro_run / stage / name) == digest
        assert not (micro_run / f".{stage}.partial").exists()
        previous = stage
    data = read_manifest(micro_run / "sft")["data"]
    assert data["train_rows"] == 2400 and data["validation_rows"] == 150 and data["dropped"] == {}
    train_source = next(s for s in data["sources"] if s["split"] == "train")
    assert train_source["rows"] == 2400 and train_source["files"][0]["sha256"]
    pretrain = read_manifest(micro_run / "pretrain")["data"]
    assert pretrain["train_tokens"] > 0 and Path(pretrain["token_cache"]).is_dir()


def test_stage_metrics_are_recorded(micro_run: Path):
    pretrain = read_manifest(micro_run / "pretrain")
    metrics = pretrain["metrics"]
    assert metrics["validation_loss"] < metrics["validation_loss_before"]
    assert 0 < metrics["validation_bpb"] < metrics["validation_bpb_before"]
    assert pretrain["summary"]["steps"] == 8 and pretrain["summary"]["tokens"] == 8 * 4 * 64
    sft = read_manifest(micro_run / "sft")["metrics"]
    assert sft["answer_rows"] == 8 and 0.0 <= sft["answer_accuracy"] <= 1.0
    dpo = read_manifest(micro_run / "dpo")["metrics"]
    assert dpo["preference_rows"] == 16
    assert dpo["reward_accuracy"] is not None and dpo["reward_margin"] is not None


def test_dpo_manifest_carries_the_pair_measures_and_its_headline(micro_run: Path):
    manifest = read_manifest(micro_run / "dpo")
    metrics = manifest["metrics"]
    # The implicit reward is measured against the parent: 0.5 and 0 before, by definition.
    assert metrics["implicit_reward_accuracy_before"] == 0.5 and metrics["implicit_reward_margin_before"] == 0.0
    for key in ("implicit_reward_accuracy", "per_token_logp_accuracy", "summed_logp_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0 and f"{key}_before" in metrics, key
    assert 0.0 <= metrics["chosen_longer_share"] <= 1.0
    assert metrics["reward_model_win_rate_note"] == "no reward model: DPO trains without one"
    assert "reward_model_win_rate" not in metrics
    headline = manifest["summary"]["metric"]
    assert headline["name"] == "held-out implicit-reward accuracy" and headline["before"] == 0.5
    assert headline["after"] == metrics["implicit_reward_accuracy"] and "pi_ref" in headline["why"]
    assert manifest["before"] == {}  # the per-pair scores are kept for a resume only


def test_every_checkpoint_loads_with_auto_classes_and_generates(micro_run: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for stage in ("pretrain", "sft", "dpo"):
        tokenizer = AutoTokenizer.from_pretrained(micro_run / stage)
        model = AutoModelForCausalLM.from_pretrained(micro_run / stage)
        assert (micro_run / stage / "model.safetensors").exists()
        assert "{% generation %}" in tokenizer.chat_template
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is the kettle?"}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
        assert out.shape[1] > prompt["input_ids"].shape[1]
    sft = AutoModelForCausalLM.from_pretrained(micro_run / "sft")
    end = AutoTokenizer.from_pretrained(micro_run / "sft").convert_tokens_to_ids("<|end|>")
    assert end in sft.generation_config.eos_token_id


def test_run_again_skips_complete_stages(micro_copy: Path):
    before = {s: manifest_sha(micro_copy / s) for s in STAGES}
    result = invoke("run", MICRO, "--out", str(micro_copy))
    assert result.exit_code == 0, result.output
    assert result.output.count("skipping") == 4
    assert {s: manifest_sha(micro_copy / s) for s in STAGES} == before
    assert "held-out implicit-reward accuracy" in result.stdout


def test_single_stage_commands_and_explicit_parent(micro_run: Path, tmp_path: Path):
    out = tmp_path / "other"
    result = invoke("tokenizer", MICRO, "--out", str(out))
    assert result.exit_code == 0, result.output
    result = invoke("pretrain", MICRO, "max_steps=2", "eval_every=1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert read_manifest(out / "pretrain")["summary"]["steps"] == 2
    # SFT from another run's pretrain checkpoint, then DPO from this run's SFT by default.
    result = invoke("sft", MICRO, "max_steps=2", "--out", str(out), "--from", str(micro_run / "pretrain"))
    assert result.exit_code == 0, result.output
    assert read_manifest(out / "sft")["parent"]["path"] == str((micro_run / "pretrain").resolve())
    result = invoke("align", MICRO, "--method", "dpo", "max_steps=2", "beta=0.2", "loss_type=ipo", "--out", str(out))
    assert result.exit_code == 0, result.output
    config = read_manifest(out / "dpo")["config"]["align"]
    assert (config["beta"], config["loss_type"]) == (0.2, "ipo")


def test_wrong_missing_and_incomplete_parents_are_refused(micro_copy: Path, tmp_path: Path):
    result = invoke("sft", MICRO, "--out", str(tmp_path / "x"), "--from", str(micro_copy / "tokenizer"))
    assert result.exit_code == 2
    assert "parent is a 'tokenizer' checkpoint; sft starts from pretrain or sft" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1

    result = invoke("align", MICRO, "--out", str(tmp_path / "empty"))
    assert result.exit_code == 2 and "parent checkpoint folder not found" in result.stderr

    manifest_path = micro_copy / "pretrain" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "running"
    manifest_path.write_text(json.dumps(manifest))
    result = invoke("sft", MICRO, "--out", str(tmp_path / "y"), "--from", str(micro_copy / "pretrain"))
    assert result.exit_code == 2 and "parent stage is 'running', not complete" in result.stderr

    (micro_copy / "sft" / "manifest.json").unlink()
    result = invoke("align", MICRO, "--out", str(tmp_path / "z"), "--from", str(micro_copy / "sft"))
    assert result.exit_code == 2 and "no readable manifest.json" in result.stderr


def test_changed_settings_need_restart_and_failures_keep_the_old_checkpoint(micro_copy: Path, tmp_path: Path):
    old_sha = manifest_sha(micro_copy / "sft")
    result = invoke("sft", MICRO, "learning_rate=1e-4", "--out", str(micro_copy))
    assert result.exit_code == 2
    assert "already holds a finished sft trained with other settings" in result.stderr
    assert "sft.learning_rate: 0.0005 → 0.0001" in result.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"text": 1}\n')
    result = invoke("sft", MICRO, f"train_files={bad}", "--restart", "--out", str(micro_copy))
    assert result.exit_code == 2
    assert f"{bad}:2: \"messages\" missing" in result.stderr
    assert manifest_sha(micro_copy / "sft") == old_sha  # the finished SFT is untouched

    result = invoke("sft", MICRO, "learning_rate=1e-4", "--restart", "--out", str(micro_copy))
    assert result.exit_code == 0, result.output
    assert read_manifest(micro_copy / "sft")["config"]["sft"]["learning_rate"] == 1e-4
    # The DPO stage was trained on the old SFT: `run` retrains it because its parent changed.
    result = invoke("run", MICRO, "sft.learning_rate=1e-4", "--out", str(micro_copy))
    assert result.exit_code == 0, result.output
    assert read_manifest(micro_copy / "dpo")["parent"]["manifest_sha256"] == manifest_sha(micro_copy / "sft")


def test_stage_result_lines_show_numbers_to_three_decimals(micro_run: Path):
    output = (micro_run.parent / RUN_OUTPUT).read_text(encoding="utf-8")
    starts = ("tokenizer: vocab", "pretrain: validation loss", "sft: held-out loss", "dpo (sigmoid): held-out")
    lines = [line for line in output.splitlines() if line.startswith(starts)]
    assert [next(s for s in starts if line.startswith(s)) for line in lines] == list(starts), output
    for line in lines:
        assert not re.search(r"\d\.\d{4,}", line), line
    # Every measure of the DPO line: 3 decimals, or "-" where there is none.
    dpo = lines[-1].split(": ", 1)[1]
    values = re.findall(r"(?:-?\d+\.\d+|-)(?=[;,]| ->|$)", dpo)
    assert len(values) == 4 and all(v == "-" or re.fullmatch(r"-?\d+\.\d{3}", v) for v in values), lines[-1]


def test_number_helper():
    assert [fmt_number(v) for v in (None, 0.7133333333333334, 0.88, 2, -0.00049, 1234.5)] == \
        ["-", "0.713", "0.880", "2", "-0.000", "1234.500"]
