"""Chains that start from a model llmpipe did not train: small random Llama- and Qwen3-style models with
ChatML or Llama 3 templates, on CPU, through the CLI. Every stage's checkpoint loads with the Auto classes
and keeps the base's template; the label masks themselves are pinned per family in test_chat_templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MICRO, invoke, read_manifest
from hf_models import make_model_folder

# Short stages: this file is about the hand-off, not about learning.
FAST = ["sft.max_steps=3", "sft.max_length=128", "align.max_length=128", "reward.max_length=128", "sft.eval_every=3",
        "sft.save_every=3", "sft.accuracy_rows=4",
        "align.max_steps=2", "align.eval_every=2", "align.save_every=2", "align.preference_rows=8", "align.heldout_prompts=4",
        "reward.max_steps=2", "reward.eval_every=2", "reward.save_every=2", "reward.preference_rows=8"]


def _loads_with_auto_classes(stage_dir: Path, base: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stage_dir)
    tokenizer = AutoTokenizer.from_pretrained(stage_dir)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(base).chat_template
    assert model.config.model_type == AutoModelForCausalLM.from_pretrained(base).config.model_type
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {"llama-llama3": make_model_folder(root / "llama", "llama", "llama3"),
            "qwen3-chatml": make_model_folder(root / "qwen3", "qwen3", "chatml")}


def test_base_sft_dpo(models, tmp_path):
    base, run = models["llama-llama3"], tmp_path / "run"
    result = invoke("run", MICRO, f"base={base}", *FAST, "--out", str(run))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["base", "dpo", "report", "sft"]
    for stage, parent in (("sft", "base"), ("dpo", "sft")):
        manifest = read_manifest(run / stage)
        assert manifest["parent"]["stage"] == parent and manifest["base"]["path"] == str((run / "base").resolve())
        _loads_with_auto_classes(run / stage, base)
    assert read_manifest(run / "sft")["metrics"]["validation_loss"] is not None


def test_base_continued_pretrain_sft(models, tmp_path):
    base, run = models["qwen3-chatml"], tmp_path / "run"
    result = invoke("run", MICRO, f"base={base}", "pretrain.train_files=[data/pretrain.train.jsonl]", "pretrain.max_steps=3",
                    "pretrain.eval_every=3", *FAST, "--out", str(run))
    assert result.exit_code == 0, result.output
    assert read_manifest(run / "pretrain")["parent"]["stage"] == "base"
    assert read_manifest(run / "sft")["parent"]["stage"] == "pretrain"
    _loads_with_auto_classes(run / "sft", base)


def test_base_lora_sft_then_kto(models, tmp_path):
    base, run = models["qwen3-chatml"], tmp_path / "run"
    sft = invoke("sft", MICRO, "lora.enabled=true", "learning_rate=1e-3", *FAST, "--from", str(base), "--out", str(run))
    assert sft.exit_code == 0, sft.output
    lora = read_manifest(run / "sft")["lora"]
    # Every linear layer of the family but the LM head carries an adapter.
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(lora["target_modules"])
    kto = invoke("align", MICRO, "--method", "kto", *FAST, "--out", str(run))
    assert kto.exit_code == 0, kto.output
    assert read_manifest(run / "kto")["parent"]["stage"] == "sft"
    _loads_with_auto_classes(run / "kto", base)


def test_base_rlhf_reward_model_and_rloo(models, tmp_path):
    base, run = models["llama-llama3"], tmp_path / "run"
    result = invoke("align", MICRO, "--method", "rlhf", "--rl", "rloo", "align.batch_size=4", *FAST,
                    "--from", str(base), "--out", str(run))
    assert result.exit_code == 0, result.output
    assert read_manifest(run / "reward")["parent"]["stage"] == "base"
    assert read_manifest(run / "rlhf")["parent"]["stage"] == "base"
    _loads_with_auto_classes(run / "rlhf", base)


def test_base_export_loads_with_auto_classes(models, tmp_path):
    base, run = models["llama-llama3"], tmp_path / "run"
    assert invoke("base", "--from", str(base), "--out", str(run)).exit_code == 0
    result = invoke("export", str(run / "base"), "--out", str(tmp_path / "exported"))
    assert result.exit_code == 0, result.output
    assert not any(p.is_symlink() for p in (tmp_path / "exported").iterdir())  # a copy that stands alone
    _loads_with_auto_classes(tmp_path / "exported", base)
