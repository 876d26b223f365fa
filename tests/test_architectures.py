"""The `model` section and the families built from scratch (gpt2, llama, qwen3): configs that load with
the Auto classes, the shorthand `model: NAME`, the section's checks, FLOPs and context of every family,
LoRA's default targets, and a llama micro model through pretrain, SFT, LoRA and export --merge."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MICRO, invoke, read_manifest

from llmpipe.config import ModelConfig, Recipe, load_recipe, same_settings
from llmpipe.core.errors import UserError

FAST = ["max_steps=2", "save_every=2", "eval_every=2", "log_every=1", "eval_batches=1", "probes=[]", "sample_prompts=[]",
        "gate.action=off"]


class Vocabulary:
    """What build_config reads of a tokenizer."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

    def __len__(self) -> int:
        return 512


def _built(model_cfg: ModelConfig, tmp_path: Path):
    """The model of `model_cfg`, saved and loaded back through AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    from llmpipe.models import build_config

    AutoModelForCausalLM.from_config(build_config(model_cfg, Vocabulary())).save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(("preset", "overrides", "cls", "kv_heads", "qk_norm", "tied"), [
    ("micro", {}, "GPT2LMHeadModel", 2, False, True),
    ("micro", {"tie_embeddings": False}, "GPT2LMHeadModel", 2, False, False),
    ("micro-llama", {}, "LlamaForCausalLM", 1, False, True),
    ("micro-llama", {"heads": 4, "kv_heads": 2, "tie_embeddings": False}, "LlamaForCausalLM", 2, False, False),
    ("micro-qwen3", {}, "Qwen3ForCausalLM", 1, True, True),
    ("micro", {"family": "qwen3"}, "Qwen3ForCausalLM", 2, True, True),
])
def test_each_family_builds_a_model_the_auto_classes_load(preset, overrides, cls, kv_heads, qk_norm, tied, tmp_path):
    import torch

    from llmpipe.models import count_parameters, flops_per_token, model_context

    model = _built(ModelConfig(preset=preset, **overrides), tmp_path)
    config = model.config
    assert type(model).__name__ == cls and config.vocab_size == 512
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 2)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert model_context(config) == 256
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert ({"q_norm", "k_norm"} <= names) == qk_norm
    if config.model_type != "gpt2":
        attention = model.model.layers[0].self_attn
        head_dim = config.hidden_size // config.num_attention_heads
        assert config.num_key_value_heads == kv_heads and attention.k_proj.out_features == kv_heads * head_dim
        assert config.head_dim == head_dim and config.rope_parameters["rope_theta"] == 10_000.0
    else:
        assert config.n_inner == 4 * config.n_embd
    # Trains: one step of next-token loss gives finite gradients everywhere.
    ids = torch.randint(3, 512, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert flops_per_token(model, 64) > 6 * (count_parameters(model) - 512 * 64 * (not tied) - 256 * 64 * (cls == "GPT2LMHeadModel"))


def test_modern_presets_match_the_gpt2_sizes_and_flops():
    from transformers import AutoModelForCausalLM

    from llmpipe.models import build_config, count_parameters, flops_per_token

    def sized(preset: str):
        return AutoModelForCausalLM.from_config(build_config(preset, Vocabulary()))

    for size in ("micro", "tiny"):
        gpt2, llama, qwen3 = sized(size), sized(f"{size}-llama"), sized(f"{size}-qwen3")
        # The same weight matrices: the llama lacks only GPT-2's position table (256 x width) and biases
        # (9 x width in each block's linear layers, 2 x width in its LayerNorms, width in the last one);
        # qwen3 adds its q/k norms.
        width, layers = gpt2.config.n_embd, gpt2.config.n_layer
        assert count_parameters(gpt2) - count_parameters(llama) == 256 * width + layers * 11 * width + width
        assert abs(flops_per_token(llama, 256) / flops_per_token(gpt2, 256) - 1) < 0.01
        assert count_parameters(qwen3) > count_parameters(llama)
    # The formula as it was for GPT-2: 6 x (parameters - position table) + 12 x layers x width x length.
    gpt2 = sized("tiny")
    assert flops_per_token(gpt2, 256) == 6.0 * (count_parameters(gpt2) - 256 * 256) + 12.0 * 6 * 256 * 256


def test_lora_targets_are_every_linear_layer_but_the_output_layer():
    from transformers import AutoModelForCausalLM

    from llmpipe.models import LORA_TARGETS, build_config, lora_targets

    for preset in ("micro", "micro-llama", "micro-qwen3"):
        model = AutoModelForCausalLM.from_config(build_config(preset, Vocabulary()))
        assert lora_targets(model) == LORA_TARGETS[model.config.model_type] and "lm_head" not in lora_targets(model)


def test_model_as_a_plain_string_is_the_preset(tmp_path):
    assert load_recipe(MICRO).model == ModelConfig(preset="micro")  # micro.yaml says `model: micro`
    assert load_recipe(None, ["model=micro-llama"]).model.resolved()["family"] == "llama"
    # A key of the section over the shorthand keeps the preset, and the shorthand over a section keeps its keys.
    assert load_recipe(MICRO, ["model.family=llama"]).model == ModelConfig(preset="micro", family="llama")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  preset: micro\n  tie_embeddings: false\n", encoding="utf-8")
    assert load_recipe(str(recipe), ["model=tiny"]).model == ModelConfig(preset="tiny", tie_embeddings=False)
    # What pretraining records is the resolved section; a stage recorded with the old string is the same stage.
    new = load_recipe(MICRO).stage_config("pretrain")
    assert new["model"] == {"preset": "micro", "family": "gpt2", "layers": 2, "width": 64, "heads": 2, "kv_heads": 2,
                            "context": 256, "intermediate": 256, "qk_norm": False, "tie_embeddings": True, "rope_theta": 0.0}
    assert same_settings({**new, "model": "micro"}, new) and not same_settings({**new, "model": "tiny"}, new)
    assert "model" not in Recipe().stage_config("sft")  # later stages take their parent's network


def test_a_family_other_than_the_presets_takes_the_shape_and_the_familys_defaults():
    shape = ModelConfig(preset="tiny", family="llama").resolved()
    assert (shape["layers"], shape["width"], shape["heads"], shape["kv_heads"]) == (6, 256, 8, 8)
    assert shape["intermediate"] == 688 and shape["rope_theta"] == 10_000.0  # 8/3 x 256, to a multiple of 16
    assert ModelConfig(preset="tiny-llama", width=512).resolved()["intermediate"] == 1536  # the preset's 3 x width
    assert ModelConfig(preset="tiny-llama", heads=16).resolved()["kv_heads"] == 16


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=tiny-llama", "model.kv_heads=3"], '"model.kv_heads" must divide model.heads (8), got 3'),
    (["model=tiny", "model.kv_heads=1"], '"model.kv_heads" family gpt2 has one key/value head per query head; use family llama'),
    (["model=micro-llama", "model.qk_norm=true"], '"model.qk_norm" family llama has no QK-norm in transformers; use family qwen3'),
    (["model.family=mamba"], '"model.family" unknown model family; choose one of gpt2, llama, qwen3'),
    (["model=tiny", "model.rope_theta=500000"], '"model.rope_theta" family gpt2 learns its positions'),
    (["model.width=100"], '"model.width" width 100 must be a multiple of heads (8)'),
    (["model=tiny-llama", "model.width=24"], '"model.heads" rotary positions need an even head size'),
    (["model.mlp_ratio=3", "model.intermediate=700"], '"model.intermediate" give model.intermediate or model.mlp_ratio'),
    (["sft.lora.quantize=4bit"], '"sft.lora.quantize" quantizes the base that LoRA adapters train on'),
])
def test_bad_model_sections_are_one_line_errors(overrides, message):
    with pytest.raises(UserError) as error:
        load_recipe(None, overrides)
    assert message in error.value.one_line()


def test_qlora_without_a_gpu_fails_before_anything_trains(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("run", MICRO, "align.lora.enabled=true", "align.lora.quantize=4bit", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip() == (f'error: {MICRO}: "align.lora.quantize" 4-bit QLoRA needs a CUDA GPU '
                                     "(bitsandbytes' kernels); this run trains on cpu — set align.lora.quantize=none "
                                     "for plain LoRA")


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> Path:
    """Tokenizer, then a micro llama pretrained and chat-tuned (with gradient checkpointing) through the CLI."""
    run = tmp_path_factory.mktemp("llama") / "run"
    for stage, extra in (("tokenizer", []), ("pretrain", ["max_steps=4"]),
                         ("sft", ["max_steps=4", "accuracy_rows=4", "model.gradient_checkpointing=true"])):
        result = invoke(stage, MICRO, "model=micro-llama", "--out", str(run), *extra,
                        *([o for o in FAST if not o.startswith("max_steps")] if stage != "tokenizer" else []))
        assert result.exit_code == 0, result.output
    return run


def test_a_llama_micro_model_pretrains_and_chat_tunes(llama_run: Path):
    from transformers import AutoModelForCausalLM

    pretrain = read_manifest(llama_run / "pretrain")
    assert pretrain["config"]["model"]["family"] == "llama" and pretrain["config"]["model"]["kv_heads"] == 1
    assert pretrain["metrics"]["validation_loss"] < pretrain["metrics"]["validation_loss_before"]
    assert pretrain["metrics"]["flops_per_token"] > 0
    sft = read_manifest(llama_run / "sft")
    assert sft["status"] == "complete" and sft["metrics"]["validation_loss"] < sft["metrics"]["validation_loss_before"]
    assert sft["config"]["gradient_checkpointing"] is True
    model = AutoModelForCausalLM.from_pretrained(llama_run / "sft")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 1


def test_lora_on_a_llama_model_trains_and_merges(llama_run: Path, tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    result = invoke("sft", MICRO, "model=micro-llama", "--out", str(llama_run), "--restart", "lora.enabled=true",
                    "lora.r=4", "learning_rate=5e-3", "accuracy_rows=0", *FAST)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(llama_run / "sft")
    assert manifest["lora"]["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert 0 < manifest["parameters"]["trainable"] < manifest["parameters"]["total"] / 5
    out = tmp_path / "merged"
    exported = invoke("export", str(llama_run / "sft"), "--merge", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    ids = torch.arange(3, 40).unsqueeze(0)
    merged, stage = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (out, llama_run / "sft"))
    base = AutoModelForCausalLM.from_pretrained(llama_run / "pretrain").eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, stage(ids).logits, atol=1e-5)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-3)  # the adapter did train
    assert not any("lora" in key for key in merged.state_dict())
