"""Recipes by name, the path rule (llmpipe/config/paths.py) and the version, from any folder.

The rule: a relative path in a recipe file starts at the recipe file's folder, one in a key=value
override at the current folder, and a `data/NAME` not found there is the embedded data/NAME; the
defaults always read the embedded data.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from conftest import ROOT, invoke

import llmpipe
from llmpipe.config import Recipe, load_recipe, same_settings
from llmpipe.config.paths import PATH_RULE, embedded_data, portable, resolve
from llmpipe.config.recipes import builtin_recipes, describe, find_recipe
from llmpipe.core.errors import UserError
from llmpipe.registry import ALIGN_METHODS

BUILT_IN = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """An empty current folder outside the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_version_is_the_package_metadata_and_shown_by_the_cli():
    assert llmpipe.__version__ == importlib.metadata.version("llmpipe")
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"llmpipe {llmpipe.__version__}\n"
    assert f"llmpipe {llmpipe.__version__}" in invoke("--help").stdout


def test_the_embedded_data_and_recipes_are_the_repository_folders_in_a_checkout():
    # In a source checkout (and an editable install) the shipped files are data/ and recipes/ themselves,
    # so `llmpipe data synth --out data` regenerates what llmpipe reads.
    assert embedded_data() == ROOT / "data"
    assert {name: path.parent for name, path in builtin_recipes().items()} == dict.fromkeys(BUILT_IN, ROOT / "recipes")


def test_recipes_command_lists_every_built_in_recipe_with_its_description(elsewhere):
    result = invoke("recipes")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == BUILT_IN
    for line, name in zip(lines, BUILT_IN):
        assert line.split(None, 1)[1] == describe(ROOT / "recipes" / f"{name}.yaml") != ""
    shown = invoke("recipes", "micro")
    assert shown.exit_code == 0 and shown.stdout == (ROOT / "recipes" / "micro.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_recipe_loads_by_name_from_another_folder(name, elsewhere):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.source == str(ROOT / "recipes" / f"{name}.yaml")
    for section in ("tokenizer", "pretrain", "sft", "align", "reward"):
        config = getattr(recipe, section)
        for path in [*config.train_files, *config.validation_files, *getattr(config, "probes", [])]:
            assert Path(path).is_file() and Path(path).parent == embedded_data(), (section, path)


def test_the_demo_recipe_loads_with_every_align_method():
    # tiny.yaml sets DPO's rpo_alpha; the README runs `llmpipe align tiny --method kto` (and cai, rlhf, ...) on it.
    assert load_recipe("tiny").align.rpo_alpha == 0.3
    for method in ALIGN_METHODS:
        assert load_recipe("tiny", [f"align.method={method}"]).align.method == method
    with pytest.raises(UserError, match="loss_type sft leaves no DPO loss"):
        load_recipe("tiny", ["align.loss_type=sft"])


def test_a_recipe_file_by_path_wins_over_a_name(elsewhere):
    (elsewhere / "tiny").write_text("name: mine\n", encoding="utf-8")
    assert find_recipe("tiny") == Path("tiny") and load_recipe("tiny").name == "mine"


def test_unknown_recipe_names_list_the_built_in_ones_nearest_first(elsewhere):
    with pytest.raises(UserError) as error:
        find_recipe("tinny")
    assert error.value.one_line() == ("unknown recipe 'tinny' — did you mean 'tiny'? built-in recipes: "
                                      f"{', '.join(BUILT_IN)} (llmpipe recipes); or give a YAML recipe file")
    with pytest.raises(UserError, match="recipe file not found — the built-in recipe of that name runs from anywhere: give its name, tiny"):
        find_recipe("recipes/tiny.yaml")
    result = invoke("run", "zzz")
    assert result.exit_code == 2 and result.stderr == (f"error: unknown recipe 'zzz' — built-in recipes: {', '.join(BUILT_IN)} "
                                                      "(llmpipe recipes); or give a YAML recipe file\n")


def test_defaults_read_the_embedded_data_even_beside_a_data_folder_of_ones_own(elsewhere):
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "pretrain.train.jsonl").write_text('{"text": "mine"}\n', encoding="utf-8")
    recipe = load_recipe(None)
    assert recipe.pretrain.train_files == [str(embedded_data() / "pretrain.train.jsonl")]
    assert recipe.sft.probes == [str(embedded_data() / "probes.chat.jsonl")]
    # ... while a data/ path one writes reads one's own file first.
    assert load_recipe(None, ["pretrain.train_files=data/pretrain.train.jsonl"]).pretrain.train_files == ["data/pretrain.train.jsonl"]


def test_recipe_file_paths_start_at_its_folder_and_overrides_at_the_current_one(elsewhere):
    folder = elsewhere / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "own.jsonl").write_text('{"text": "mine"}\n', encoding="utf-8")
    (folder / "r.yaml").write_text(
        "sft:\n  train_files: [chat.jsonl, data/own.jsonl, data/sft.train.jsonl, 'hf:org/set@train', /abs/x.jsonl]\n"
        "  probes: [data/probes.chat.jsonl]\nalign:\n  method: grpo\n  reward_model: ../runs/x/reward\n", encoding="utf-8")
    recipe = load_recipe("project/r.yaml", ["pretrain.train_files=[corpus.jsonl, data/pretrain.train.jsonl]"])
    assert recipe.sft.train_files == ["project/chat.jsonl", "project/data/own.jsonl", str(embedded_data() / "sft.train.jsonl"),
                                      "hf:org/set@train", "/abs/x.jsonl"]
    assert recipe.sft.probes == [str(embedded_data() / "probes.chat.jsonl")]
    assert recipe.align.reward_model == "runs/x/reward"
    assert recipe.pretrain.train_files == ["corpus.jsonl", str(embedded_data() / "pretrain.train.jsonl")]
    # A recipe named by its absolute path: its paths are absolute too.
    assert load_recipe(folder / "r.yaml").sft.train_files[0] == str(folder / "chat.jsonl")


def test_a_path_found_nowhere_stays_the_users_own_for_the_error_message(elsewhere):
    assert resolve("data/nope.jsonl", "project") == "project/data/nope.jsonl"
    assert resolve("data/nope.jsonl", None) == "data/nope.jsonl"
    assert resolve("", None) == "" and resolve("hf:a/b", "x") == "hf:a/b"


def test_a_stage_records_the_embedded_data_as_data_names_so_finished_stages_stay_the_same(elsewhere):
    recipe = load_recipe("grpo")
    recorded = recipe.stage_config("align")
    assert recorded["align"]["train_files"] == ["data/verifiable.train.jsonl"]
    assert recorded["align"]["probes"] == ["data/probes.chat.jsonl"]
    # A stage recorded before the path rule (defaults written as data/...) is the same stage now.
    assert same_settings(Recipe().stage_config("pretrain"), load_recipe(None).stage_config("pretrain"))
    assert portable("/elsewhere/data/x.jsonl") == "/elsewhere/data/x.jsonl" and portable("x.jsonl") == "x.jsonl"


def test_path_settings_say_the_rule_in_llmpipe_keys():
    lines = invoke("keys", "--grep", "files").stdout.splitlines()
    assert lines and all(line.endswith(PATH_RULE) for line in lines if "_files = " in line)
    assert invoke("keys", "--grep", "align.reward_model").stdout.rstrip().endswith(PATH_RULE)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert PATH_RULE in readme, "the README states the rule as llmpipe keys does"
