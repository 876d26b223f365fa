"""Starting a run from a model llmpipe did not train: the base stage (a Hugging Face folder, a hub id
through the local hub cache, a GGUF file), what it records, and how a later stage notices a changed source."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import MICRO, invoke, read_manifest
from hf_models import make_model_folder

from llmpipe.core.files import sha256_file


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    """A tiny Llama with a ChatML template, as a hub download looks (read-only for tests)."""
    return make_model_folder(tmp_path_factory.mktemp("hf") / "tiny-llama", "llama", "chatml")


def test_a_folder_is_imported_by_reference_and_recorded(llama_folder, tmp_path):
    run = tmp_path / "run"
    result = invoke("base", "--from", str(llama_folder), "--out", str(run))
    assert result.exit_code == 0, result.output
    base = run / "base"
    manifest = read_manifest(base)
    source = manifest["source"]
    assert manifest["status"] == "complete" and manifest["stage"] == "base"
    assert source["kind"] == "folder" and source["path"] == str(llama_folder.resolve())
    assert source["licence"] == "apache-2.0" and source["model_type"] == "llama" and source["chat_template"] == "own"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    assert source["parameters"] == sum(p.numel() for p in model.parameters())
    assert AutoTokenizer.from_pretrained(base).chat_template == AutoTokenizer.from_pretrained(llama_folder).chat_template
    # The weights are a link to the source, hashed; the small files are copies.
    weights = base / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (llama_folder / "model.safetensors").resolve()
    assert source["linked"] == ["model.safetensors"]
    assert manifest["files"]["model.safetensors"] == sha256_file(llama_folder / "model.safetensors")
    assert manifest["config"]["source_sha256"]["config.json"] == sha256_file(llama_folder / "config.json")
    assert not (base / "config.json").is_symlink()
    # The same source again: nothing to do.
    again = invoke("base", "--from", str(llama_folder), "--out", str(run))
    assert again.exit_code == 0 and "complete" in again.output and "skipping" in again.output


def test_a_changed_source_is_noticed_by_the_next_stage_and_the_next_import(tmp_path):
    source = make_model_folder(tmp_path / "model", "llama", "chatml")
    run = tmp_path / "run"
    assert invoke("base", "--from", str(source), "--out", str(run)).exit_code == 0
    # The user retrains or re-downloads the model in place: other weights under the same name.
    make_model_folder(tmp_path / "other", "llama", "chatml", seed=1)
    shutil.copy(tmp_path / "other" / "model.safetensors", source / "model.safetensors")

    child = invoke("pretrain", MICRO, "max_steps=1", "--out", str(run))
    assert child.exit_code == 2
    assert "model.safetensors: changed at its source" in child.output and "--restart" in child.output
    assert not (run / "pretrain").exists()

    reimport = invoke("base", "--from", str(source), "--out", str(run))
    assert reimport.exit_code == 2 and "already holds a finished base trained with other settings" in reimport.output
    assert invoke("base", "--from", str(source), "--out", str(run), "--restart").exit_code == 0
    assert read_manifest(run / "base")["files"]["model.safetensors"] == sha256_file(source / "model.safetensors")


def test_a_hub_id_is_read_from_the_hub_cache_with_its_commit(llama_folder, tmp_path, monkeypatch):
    # The hub is unreachable here: the code path is the one a download takes, on a cache laid out as
    # huggingface_hub lays it out (models--ORG--NAME/snapshots/COMMIT, refs/REVISION).
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(llama_folder, snapshot)
    (cache / "models--acme--tiny-llama" / "refs").mkdir()
    (cache / "models--acme--tiny-llama" / "refs" / "v1").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    run = tmp_path / "run"
    result = invoke("base", "--from", "hf:acme/tiny-llama@v1", "--out", str(run))
    assert result.exit_code == 0, result.output
    source = read_manifest(run / "base")["source"]
    assert (source["kind"], source["hub_id"], source["revision"], source["commit"]) == ("hf", "acme/tiny-llama", "v1", "0123abcd")

    missing = invoke("base", "--from", "hf:acme/not-there", "--out", str(tmp_path / "run2"))
    assert missing.exit_code == 2
    assert "cannot reach the Hugging Face hub for acme/not-there" in missing.output
    assert not (tmp_path / "run2" / "base").exists()


def test_continued_pretraining_starts_from_the_base_with_its_own_tokenizer(llama_folder, tmp_path):
    run = tmp_path / "run"
    result = invoke("pretrain", MICRO, "max_steps=3", "eval_every=3", "--from", str(llama_folder), "--out", str(run))
    assert result.exit_code == 0, result.output
    assert not (run / "tokenizer").exists()
    manifest = read_manifest(run / "pretrain")
    assert manifest["parent"]["stage"] == "base" and manifest["base"]["path"] == str((run / "base").resolve())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = AutoModelForCausalLM.from_pretrained(run / "pretrain")
    original = AutoModelForCausalLM.from_pretrained(llama_folder)
    assert trained.config.model_type == "llama" and trained.config.num_key_value_heads == 2
    assert manifest["metrics"]["parameters"] == sum(p.numel() for p in original.parameters())
    assert AutoTokenizer.from_pretrained(run / "pretrain").get_vocab() == AutoTokenizer.from_pretrained(llama_folder).get_vocab()
    # It trained: the weights moved, and the held-out loss fell.
    assert any((a - b).abs().max() > 0 for a, b in zip(trained.parameters(), original.parameters(), strict=True))
    assert manifest["metrics"]["validation_loss"] < manifest["metrics"]["validation_loss_before"]


def test_a_base_without_a_chat_template_gets_llmpipes_with_its_tokens(tmp_path):
    source = make_model_folder(tmp_path / "plain", "gpt2", "none")
    run = tmp_path / "run"
    assert invoke("base", "--from", str(source), "--out", str(run)).exit_code == 0
    record = read_manifest(run / "base")["source"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "base")
    model = AutoModelForCausalLM.from_pretrained(run / "base")
    assert record["chat_template"] == "llmpipe (added)" and "<|assistant|>" in record["added_tokens"]
    assert record["embeddings"]["to"] == len(tokenizer) > record["embeddings"]["from"]
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True) \
        .endswith("<|assistant|>\n")
    assert not (run / "base" / "model.safetensors").is_symlink()  # resized: written out in full


def test_a_recipe_names_its_base_relative_to_itself(llama_folder, tmp_path):
    shutil.copytree(llama_folder, tmp_path / "models" / "tiny")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: models/tiny\n", encoding="utf-8")
    from llmpipe.config import load_recipe
    from llmpipe.pipeline import run_sections

    loaded = load_recipe(recipe)
    assert loaded.base.source == os.path.normpath(tmp_path / "models" / "tiny")
    # From a base, run imports it, skips the tokenizer, and pretrains only on text the recipe names.
    assert run_sections(loaded) == ("base", "sft", "align")
    with_text = load_recipe(recipe, ["pretrain.train_files=[data/pretrain.train.jsonl]"])
    assert run_sections(with_text) == ("base", "pretrain", "sft", "align")
    assert run_sections(load_recipe(None)) == ("tokenizer", "pretrain", "sft", "align")


def test_remote_code_needs_consent_and_then_loads_with_transformers_own_classes(tmp_path):
    from hf_models import edit_config

    source = make_model_folder(tmp_path / "model", "llama", "chatml")
    edit_config(source, auto_map={"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    refused = invoke("base", "--from", str(source), "--out", str(tmp_path / "run"))
    assert refused.exit_code == 2 and "--trust-remote-code" in refused.output
    result = invoke("base", "--from", str(source), "--out", str(tmp_path / "run"), "--trust-remote-code")
    assert result.exit_code == 0, result.output
    import json

    assert "auto_map" not in json.loads((tmp_path / "run" / "base" / "config.json").read_text())
    assert read_manifest(tmp_path / "run" / "base")["source"]["remote_code"] == "replaced by transformers' own llama classes"
