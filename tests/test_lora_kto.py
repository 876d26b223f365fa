"""Preference breadth and LoRA through the CLI on the micro preset: DPO loss variants, KTO on unpaired
and paired rows, a LoRA SFT -> DPO chain with no manual merging, `llmpipe export`, and the one-line
errors of their bad inputs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import MICRO, invoke, read_manifest

from llmpipe.core.files import sha256_file

# Two steps, one small evaluation, no probes or gate: these tests are about the methods, and the
# chain tests cover probes and the gate.
FAST = ["max_steps=2", "save_every=2", "eval_every=2", "log_every=1", "eval_batches=1", "probes=[]", "sample_prompts=[]",
        "gate.action=off"]
PLAIN_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja"}


def _logits(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is the kettle?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids=ids).logits


def _one_line_error(result, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_dpo_loss_variants_train(micro_run: Path, tmp_path: Path, loss_type: str):
    extra = ["label_smoothing=0.1"] if loss_type == "robust" else []
    result = invoke("align", MICRO, "--from", str(micro_run / "sft"), "--out", str(tmp_path), f"loss_type={loss_type}",
                    "preference_rows=8", *FAST, *extra)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "dpo")
    assert manifest["config"]["align"]["loss_type"] == loss_type and manifest["summary"]["steps"] == 2
    losses = [h["loss"] for h in manifest["evals"] if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    metrics = manifest["metrics"]
    assert metrics["preference_rows"] == 8 and metrics["per_token_logp_accuracy_before"] is not None
    assert metrics["implicit_reward_accuracy_before"] == 0.5 and metrics["implicit_reward_accuracy"] is not None
    assert manifest["parameters"]["trainable"] == manifest["parameters"]["total"]  # full fine-tuning


def test_rpo_alpha_adds_the_chosen_replies_nll_to_the_dpo_loss(micro_run: Path, tmp_path: Path):
    # At the first step the policy is its reference, so DPO's sigmoid loss is log 2 exactly; with rpo_alpha the
    # NLL of the chosen replies (nats per token, ~6 for the micro model) is added on top, times rpo_alpha.
    first = {}
    for alpha in (0, 1):
        out = tmp_path / f"rpo{alpha}"
        result = invoke("align", MICRO, "--from", str(micro_run / "sft"), "--out", str(out), f"rpo_alpha={alpha}",
                        "preference_rows=4", *FAST)
        assert result.exit_code == 0, result.output
        manifest = read_manifest(out / "dpo")
        assert manifest["config"]["align"]["rpo_alpha"] == alpha
        first[alpha] = next(h["loss"] for h in manifest["evals"] if "loss" in h)
    assert first[0] == pytest.approx(math.log(2), abs=1e-3)
    assert first[1] - first[0] > 3


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _kto_files(tmp_path: Path) -> tuple[Path, Path]:
    """Train: pairs and unpaired rows mixed; validation: 8 pairs and 8 unpaired rows."""
    from conftest import ROOT

    pairs = [json.loads(line) for line in (ROOT / "data" / "prefs.train.jsonl").read_text().splitlines()[:120]]
    held = [json.loads(line) for line in (ROOT / "data" / "prefs.validation.jsonl").read_text().splitlines()[:16]]

    def unpaired(row: dict, good: bool) -> dict:
        return {"prompt": row["prompt"], "completion": row["chosen" if good else "rejected"], "label": good}

    train = pairs[:60] + [unpaired(r, i % 2 == 0) for i, r in enumerate(pairs[60:])]
    validation = held[:8] + [unpaired(r, i % 2 == 0) for i, r in enumerate(held[8:])]
    return _write_jsonl(tmp_path / "kto.train.jsonl", train), _write_jsonl(tmp_path / "kto.validation.jsonl", validation)


def test_kto_end_to_end_on_unpaired_and_paired_rows(micro_run: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmpipe.eval.heldout import measure

    train, validation = _kto_files(tmp_path)
    run = tmp_path / "run"
    result = invoke("align", MICRO, "--method", "kto", "--from", str(micro_run / "sft"), "--out", str(run),
                    f"train_files=[{train}]", f"validation_files=[{validation}]", *FAST)
    assert result.exit_code == 0, result.output
    assert "kto: held-out implicit-reward accuracy" in result.output
    manifest = read_manifest(run / "kto")
    assert manifest["stage"] == "kto" and manifest["status"] == "complete" and manifest["parent"]["stage"] == "sft"
    # 60 pairs give 60 desirable + 60 undesirable rows, the 60 unpaired rows alternate.
    assert manifest["data"]["kto_train_rows"] == {"desirable": 90, "undesirable": 90}
    metrics = manifest["metrics"]
    for key in ("implicit_reward_accuracy_before", "implicit_reward_accuracy", "per_token_logp_accuracy_before",
                "per_token_logp_accuracy", "summed_logp_accuracy", "unpaired_accuracy_before", "unpaired_accuracy",
                "reward_margin", "kl", "validation_loss"):
        assert metrics[key] is not None, key
    assert metrics["preference_rows"] == 8 and metrics["unpaired_rows"] == 8
    assert manifest["summary"]["metric"]["name"] == "held-out implicit-reward accuracy"
    assert metrics["reward_model_win_rate_note"] == "no reward model: KTO trains without one"
    kinds = {h["name"]: h["kind"] for h in manifest["protected"]["heldout"]}
    assert kinds == {"preference-validation": "preference", "unpaired-validation": "unpaired"}
    # The protected unpaired rows measure as the gate of a child stage would measure them.
    rows = [json.loads(x) for x in (run / "kto" / "protected" / "unpaired-validation.jsonl").read_text().splitlines()]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(run / "kto"), AutoTokenizer.from_pretrained(run / "kto")
    assert measure(model, tokenizer, "unpaired", rows, 64)["value"] is not None


@pytest.fixture(scope="module")
def lora_run(micro_run: Path, tmp_path_factory) -> Path:
    """The micro run with sft and dpo retrained as LoRA stages through the CLI (nothing merged by hand)."""
    run = tmp_path_factory.mktemp("lora") / "run"
    shutil.copytree(micro_run, run)
    sft = invoke("sft", MICRO, "--out", str(run), "--restart", "lora.enabled=true", "lora.r=4", "learning_rate=5e-3",
                 "accuracy_rows=4", *FAST)
    assert sft.exit_code == 0, sft.output
    # The gate stays on here: it measures the LoRA-wrapped model against the merged SFT parent.
    dpo = invoke("align", MICRO, "--out", str(run), "--restart", "lora.enabled=true", "preference_rows=8",
                 *[o for o in FAST if o != "gate.action=off"])
    assert dpo.exit_code == 0, dpo.output
    return run


def test_lora_sft_feeds_dpo_without_manual_merging(lora_run: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for stage, parent in (("sft", "pretrain"), ("dpo", "sft")):
        folder = lora_run / stage
        manifest = read_manifest(folder)
        assert manifest["config"][stage if stage == "sft" else "align"]["lora"]["enabled"] is True
        assert manifest["parent"]["path"] == str((lora_run / parent).resolve())
        counts = manifest["parameters"]
        assert 0 < counts["trainable"] < counts["total"] / 5
        lora = manifest["lora"]
        assert lora["base"] == str((lora_run / parent).resolve()) and lora["target_modules"] == ["c_attn", "c_fc", "c_proj"]
        adapter = folder / "adapter"
        assert (adapter / "adapter_config.json").is_file()
        assert sha256_file(adapter / "adapter_model.safetensors") == lora["adapter_sha256"]
        assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == lora["base"]
        # The stage checkpoint is a plain, merged model: no adapter weights, end-of-turn stop kept.
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert type(model).__name__ == "GPT2LMHeadModel" and not any("lora" in k for k in model.state_dict())
        end = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|end|>")
        assert end in model.generation_config.eos_token_id
    assert read_manifest(lora_run / "dpo")["gate"]["passed"] is True


def test_export_plain_and_merged_give_the_stage_logits(lora_run: Path, micro_run: Path, tmp_path: Path):
    import torch

    stage = lora_run / "dpo"
    cases = [(micro_run / "dpo", [], micro_run / "dpo"), (stage, [], stage), (stage, ["--merge"], stage),
             (stage / "adapter", ["--merge"], stage)]
    for number, (source, flags, expected) in enumerate(cases):
        out = tmp_path / f"export{number}"
        result = invoke("export", str(source), "--out", str(out), *flags)
        assert result.exit_code == 0, result.output
        assert {p.name for p in out.iterdir()} == PLAIN_FILES
        assert torch.allclose(_logits(out), _logits(expected), atol=1e-5)
        if flags:
            assert f"adapter merged into {(lora_run / 'sft').resolve()}" in result.stdout


def test_bad_inputs_are_one_line_errors(micro_run: Path, lora_run: Path, tmp_path: Path):
    sft = str(micro_run / "sft")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "Hi", "completion": "Hello.", "label": True},
        {"prompt": "Hi", "completion": "Go away.", "label": "no"},
    ])
    result = invoke("align", MICRO, "--method", "kto", "--from", sft, "--out", str(tmp_path / "a"), f"train_files=[{bad}]")
    _one_line_error(result, f'{bad}:2: "label" must be true or false')

    result = invoke("sft", MICRO, "--from", str(micro_run / "pretrain"), "--out", str(tmp_path / "b"), "lora.r=0")
    _one_line_error(result, '"sft.lora.r" must be >= 1')
    result = invoke("align", MICRO, "--from", sft, "--out", str(tmp_path / "c"), "loss_type=robust")
    _one_line_error(result, '"align.label_smoothing" loss_type robust needs label_smoothing > 0')
    result = invoke("align", MICRO, "--method", "kto", "--from", sft, "--out", str(tmp_path / "d"), "batch_size=1")
    _one_line_error(result, '"align.batch_size" KTO needs >= 2 rows per batch')
    result = invoke("align", MICRO, "--from", sft, "--out", str(tmp_path / "e"), "lora.enabled=true", "lora.target_modules=[q_proj]")
    _one_line_error(result, '"align.lora.target_modules" this gpt2 model has no module named q_proj')

    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep me")
    result = invoke("export", str(micro_run / "dpo"), "--out", str(full))
    _one_line_error(result, "output folder exists and is not empty")
    assert (full / "notes.txt").read_text() == "keep me"
    result = invoke("export", str(lora_run / "dpo" / "adapter"), "--out", str(tmp_path / "f"))
    _one_line_error(result, "is a LoRA adapter, not a model — pass --merge")
    result = invoke("export", str(micro_run / "dpo"), "--out", str(tmp_path / "g"), "--merge")
    _one_line_error(result, "has no LoRA adapter to merge")
