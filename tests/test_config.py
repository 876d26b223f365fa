"""Recipes, overrides and validation: typed, checked up front, with readable one-line errors."""

from __future__ import annotations

import pytest
from conftest import MICRO, invoke

from llmpipe.config import all_keys, load_recipe
from llmpipe.config.paths import embedded_data
from llmpipe.core.errors import UserError


def test_defaults_and_recipe_values():
    defaults = load_recipe(None)
    # The defaults name data/ and read the embedded file (llmpipe/config/paths.py), recorded as data/.
    assert defaults.model.preset == "tiny" and defaults.pretrain.train_files == [str(embedded_data() / "pretrain.train.jsonl")]
    assert defaults.stage_config("pretrain")["pretrain"]["train_files"] == ["data/pretrain.train.jsonl"]
    micro = load_recipe(MICRO)
    assert micro.model.preset == "micro" and micro.pretrain.max_steps == 8 and micro.tokenizer.vocab_size == 512


def test_overrides_are_typed_and_scoped_to_the_stage():
    recipe = load_recipe(MICRO, ["max_steps=3", "learning_rate=1e-3", "sft.packing=false", "seed=7",
                                 "train_files=a.jsonl,b.jsonl"], stage="pretrain")
    assert recipe.pretrain.max_steps == 3
    assert recipe.pretrain.learning_rate == 0.001 and isinstance(recipe.pretrain.learning_rate, float)
    assert recipe.sft.packing is False and recipe.seed == 7
    assert recipe.pretrain.train_files == ["a.jsonl", "b.jsonl"]
    assert load_recipe(None, ["sft.train_files=[x.jsonl, y.jsonl]"]).sft.train_files == ["x.jsonl", "y.jsonl"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain.max_step=3"], "\"pretrain.max_step\" unknown key — did you mean 'pretrain.max_steps'?"),
        (["sft.learnin_rate=3"], "did you mean 'sft.learning_rate'?"),
        (["pretrain.max_steps=many"], "\"pretrain.max_steps\" expected an integer, got 'many'"),
        (["pretrain.max_steps=0"], "\"pretrain.max_steps\" must be >= 1"),
        (["align.beta=-1"], "\"align.beta\" must be > 0"),
        (["align.loss_type=magic"], "\"align.loss_type\" must be one of sigmoid"),
        (["model=huge"], "\"model.preset\" unknown model preset; choose one of micro, tiny"),
        (["sft.packing=maybe"], "expected true or false"),
        (["pretrain.warmup_steps=-1"], "\"pretrain.warmup_steps\" must be >= 0"),
        (["nonsense"], "is not key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(UserError) as error:
        load_recipe(MICRO, overrides)
    assert message in error.value.one_line()


def test_bad_recipe_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\npretrain:\n  max_steps: [1\n")
    with pytest.raises(UserError) as error:
        load_recipe(broken)
    assert error.value.file == str(broken) and error.value.line == 4 and "invalid YAML" in error.value.what
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_recipe(listing)
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    section = tmp_path / "section.yaml"
    section.write_text("pretrain: 5\n")
    with pytest.raises(UserError, match="must be a section of keys"):
        load_recipe(section)


def test_cli_reports_config_errors_in_one_line_with_exit_2():
    result = invoke("pretrain", MICRO, "max_step=3")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {MICRO}: \"pretrain.max_step\" unknown key — did you mean 'pretrain.max_steps'?"
    )
    result = invoke("run", "recipes/nope.yaml")
    assert result.exit_code == 2 and "recipes/nope.yaml: recipe file not found" in result.stderr


def test_keys_command_lists_every_key_with_its_default_limits_and_help():
    result = invoke("keys")
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(all_keys()) and [line.split(" = ")[0] for line in lines] == all_keys()
    assert "sft.learning_rate = 0.0005  (0 < x < 1)  Peak learning rate" in result.stdout
    assert "pretrain.max_steps = 300  (x >= 1)  Optimiser steps" in result.stdout
    assert "align.method = dpo  (one of dpo, kto, rlhf, grpo, rloo, cai)  " in result.stdout
    assert "monitor.report_to = [tensorboard]  (each one of tensorboard, wandb)  " in result.stdout
    assert "sft.packing = true  Pack several" in result.stdout  # no limits: default, then help
    assert 'align.reward_model = ""  ' in result.stdout


def test_keys_command_greps():
    result = invoke("keys", "--grep", "LoRA.R")
    assert result.exit_code == 0
    assert [line.split(" = ")[0] for line in result.stdout.strip().splitlines()] == ["sft.lora.r", "align.lora.r"]
    assert len(invoke("keys", "--grep", "warmup_steps").stdout.strip().splitlines()) == 4  # one per training section
    assert "sft.schedule" in invoke("keys", "--grep", "warmup-stable").stdout  # the help is searched too
    missing = invoke("keys", "--grep", "no such thing")
    assert missing.exit_code == 2 and missing.stderr.strip() == (
        "error: \"--grep\" no key matches 'no such thing' — run 'llmpipe keys' to list them all")


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from llmpipe.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['pretrain', '--help']); assert r.exit_code == 0; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["tiny", "micro", "gpt2-124m"])
def test_shipped_recipes_load_and_validate(name):
    recipe = load_recipe(f"recipes/{name}.yaml")
    assert recipe.name == name and recipe.model.preset == name


def test_gpt2_preset_matches_gpt2_small_shape():
    from transformers import AutoModelForCausalLM

    from llmpipe.models import build_config, count_parameters

    class Gpt2SizedVocabulary:
        bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

        def __len__(self) -> int:
            return 50257

    model = AutoModelForCausalLM.from_config(build_config("gpt2-124m", Gpt2SizedVocabulary()))
    assert round(count_parameters(model) / 1e6) == 124


def test_unavailable_device_fails_before_any_stage_runs(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    result = invoke("run", MICRO, "--out", str(tmp_path / "run"), "--device", "cuda")
    assert result.exit_code == 2
    assert result.stderr.strip() == 'error: "device" CUDA was asked for but no GPU is visible — use device=auto or device=cpu'
    assert not (tmp_path / "run").exists()  # nothing was written


def test_debug_flag_shows_the_full_error():
    from llmpipe.core.errors import UserError

    result = invoke("pretrain", MICRO, "max_step=3", "--debug")
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
    assert "did you mean 'pretrain.max_steps'" in str(result.exception)


def test_rows_for_steps_keeps_all_rows_a_run_goes_through_and_samples_the_rest():
    from llmpipe.config import AlignConfig
    from llmpipe.train.args import rows_for_steps

    cfg = AlignConfig(max_steps=3, batch_size=4, grad_accum=2)
    rows = list(range(100))
    sample = rows_for_steps(rows, cfg, seed=0)
    assert len(sample) == 24 and sample == sorted(sample) and len(set(sample)) == 24
    assert rows_for_steps(rows, cfg, seed=0) == sample and rows_for_steps(rows, cfg, seed=1) != sample
    assert rows_for_steps(rows, cfg, seed=0, processes=2) != sample and len(rows_for_steps(rows, cfg, 0, processes=2)) == 48
    assert rows_for_steps(rows[:20], cfg, seed=0) == rows[:20]
