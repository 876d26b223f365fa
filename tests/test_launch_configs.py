"""The launch configs of recipes/accelerate/ against the recipes, and llmpipe's launch preflight.

DeepSpeed needs GPUs, so ZeRO-2/3 never run here: what is tested is that their JSON leaves to the
recipe everything the HF Trainer fills from it ("auto"), that it agrees with every built-in recipe's
sections at the process count of its accelerate config, and that a JSON which disagrees is refused
in one line (llmpipe.train.launch). The FSDP configs run in tests/test_scaleout.py; here, that the GPU
config and its CPU twin shard the same way, and the wrap-class and resume checks (llmpipe.train.sharding).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT

from llmpipe.config import TrainConfig, load_recipe
from llmpipe.core.errors import UserError
from llmpipe.train.launch import deepspeed_mismatches
from llmpipe.train.sharding import check_fsdp, check_resumable

CONFIGS = ROOT / "recipes" / "accelerate"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# What the HF Trainer fills from the recipe when the JSON says "auto" (transformers' HfTrainerDeepSpeedConfig).
FILLED = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps", "gradient_clipping", "bf16.enabled")


def _accelerate(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(CONFIGS / name))


def _value(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "fsdp-cpu.yaml", "zero2.yaml", "zero3.yaml"])
def test_accelerate_configs_load(name):
    config = _accelerate(name)
    # Precision is the recipe's (`precision`), never the launch config's.
    assert config.mixed_precision in ("no", None), name


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_leave_to_the_recipe_what_it_decides(stage):
    config = _accelerate(f"zero{stage}.yaml")
    file = config.deepspeed_config["deepspeed_config_file"]
    # The accelerate config points at its own JSON, by a path from the repository root (where the README launches).
    assert file == f"recipes/accelerate/zero{stage}.json"
    ds = json.loads((ROOT / file).read_text(encoding="utf-8"))
    assert ds["zero_optimization"]["stage"] == stage
    assert config.deepspeed_config["zero3_init_flag"] is (stage == 3)
    if stage == 3:  # else no full state dict to gather at the end: the stage would not be a save_pretrained folder
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert all(_value(ds, key) == "auto" for key in FILLED), ds
    # The recipe's AdamW, cosine schedule and precision stay llmpipe's: no DeepSpeed optimizer, scheduler or fp16.
    assert not {"optimizer", "scheduler", "fp16"} & ds.keys()
    for path in RECIPES:
        recipe = load_recipe(str(path))
        for section, cfg in vars(recipe).items():
            if isinstance(cfg, TrainConfig):
                for bf16 in (True, False):
                    assert deepspeed_mismatches(ds, cfg, section, bf16, config.num_processes) == [], (path.name, section)


def test_deepspeed_settings_that_disagree_with_the_recipe_are_named():
    cfg = load_recipe(str(ROOT / "recipes" / "micro.yaml")).sft  # batch 4, grad_accum 1, max_grad_norm 1.0
    ds = {"train_micro_batch_size_per_gpu": 4, "train_batch_size": 12, "gradient_accumulation_steps": 2,
          "gradient_clipping": 0.5, "bf16": {"enabled": True}, "fp16": {"enabled": True}}
    found = {key: what for key, what, _ in deepspeed_mismatches(ds, cfg, "sft", False, 8)}
    assert found == {
        "train_batch_size": "is 12, which the 8 processes of this launch cannot split evenly",
        "gradient_accumulation_steps": "is 2, but sft.grad_accum is 1",
        "gradient_clipping": "is 0.5, but sft.max_grad_norm is 1.0",
        "bf16.enabled": "is true, but the recipe trains in fp32 here",
        "fp16.enabled": "is true, but llmpipe never trains in fp16 (bf16 autocast or fp32)",
    }
    # A global batch the processes divide: the per-process batch that would make it.
    (key, what, fix), = deepspeed_mismatches({"train_batch_size": 64}, cfg, "sft", False, 8)
    assert (key, what, fix) == ("train_batch_size", "is 64, but sft.batch_size 4 x grad_accum 1 x 8 processes = 32",
                                "set it to auto, or set sft.batch_size=8")
    assert deepspeed_mismatches({"train_batch_size": 32, "bf16": {"enabled": False}}, cfg, "sft", False, 8) == []


def test_fsdp_config_and_its_cpu_twin_shard_the_same_way():
    gpu, cpu = _accelerate("fsdp.yaml"), _accelerate("fsdp-cpu.yaml")
    assert (gpu.use_cpu, cpu.use_cpu) == (False, True)
    assert gpu.fsdp_config == cpu.fsdp_config
    assert gpu.fsdp_config["fsdp_version"] == 2 and gpu.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    # The wrap class is the model's own (its _no_split_modules), so one config fits every family.
    assert "fsdp_transformer_layer_cls_to_wrap" not in gpu.fsdp_config


@pytest.fixture
def fsdp_launch(monkeypatch):
    """What `accelerate launch` with fsdp.yaml puts in a process's environment (the parts the checks read)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    monkeypatch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP", raising=False)
    return monkeypatch


def _micro_model(family: str = "gpt2"):
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {"gpt2": dict(n_layer=1, n_embd=16, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0),
             "llama": dict(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2, vocab_size=64)}
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **sizes[family]))


def test_fsdp_wraps_the_model_s_own_blocks_or_refuses(fsdp_launch):
    gpt2, llama = _micro_model("gpt2"), _micro_model("llama")
    check_fsdp(gpt2)
    check_fsdp(llama)
    fsdp_launch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "GPT2Block")
    check_fsdp(gpt2)
    with pytest.raises(UserError, match="asked to wrap GPT2Block, which this llama model does not contain "
                                        r"\(its blocks are LlamaDecoderLayer\)"):
        check_fsdp(llama)
    fsdp_launch.delenv("FSDP_TRANSFORMER_CLS_TO_WRAP")
    fsdp_launch.setattr(llama, "_no_split_modules", [])
    with pytest.raises(UserError, match="declares no transformer block class"):
        check_fsdp(llama)
    with pytest.raises(UserError, match="LoRA is not supported under an FSDP launch"):
        check_fsdp(gpt2, adapters=True)
    fsdp_launch.setenv("ACCELERATE_USE_FSDP", "false")
    check_fsdp(llama, adapters=True)  # not an FSDP launch: nothing to check


def test_a_checkpoint_resumes_only_under_the_engine_that_wrote_it(fsdp_launch, tmp_path: Path):
    sharded, whole = tmp_path / "checkpoint-4", tmp_path / "checkpoint-8"
    (sharded / "pytorch_model_fsdp_0").mkdir(parents=True)
    whole.mkdir()
    (whole / "model.safetensors").write_bytes(b"")
    check_resumable(None)
    check_resumable(sharded)
    with pytest.raises(UserError, match="was saved without FSDP"):
        check_resumable(whole)
    fsdp_launch.setenv("ACCELERATE_USE_FSDP", "false")
    check_resumable(whole)
    with pytest.raises(UserError, match="was saved sharded by FSDP, so only an FSDP launch can resume it"):
        check_resumable(sharded)
