"""Online RL through the CLI on the micro preset: rlhf (reward model, then RLOO/GRPO against it),
grpo / rloo with rule rewards on the verifiable data, the rule rewards themselves, and bad inputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import MICRO, invoke, read_manifest

from llmpipe.config import load_recipe
from llmpipe.core.errors import UserError
from llmpipe.eval.rewards import as_number, exact_match, format_score, length_score, reward_functions
from llmpipe.runs import manifest_sha

VERIFIABLE = ["align.train_files=[data/verifiable.train.jsonl]", "align.validation_files=[data/verifiable.validation.jsonl]"]


# ---- rule rewards ------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, answer, expected", [
    ("3 plus 4 is 7.", "7", 1.0),
    ("The answer is 7.0", "7", 1.0),
    ("Let me think. 3 + 4 = 7\n#### 7", "7", 1.0),
    ("#### 1,000", "1000", 1.0),
    ("It costs 1,000 dollars.", "1,000", 1.0),
    ("Three plus four is seven.", "7", 1.0),
    ("7 is not it, the answer is 8.", "7", 0.0),  # the final number counts, not any number
    ("#### 72", "72.0", 1.0),
    ("3 plus 4 is 17.", "7", 0.0),
    ("I don't know.", "7", 0.0),
    ("The kettle is Blue!", "blue", 1.0),
    ("Blue.", "blue", 1.0),
    ("The kettle is bluegreen.", "blue", 0.0),  # whole words only
    ("Mira lives in Ashford.", "Ashford", 1.0),
])
def test_exact_match_normalises_numbers_and_words(reply, answer, expected):
    assert exact_match(reply, answer) == expected


def test_number_normalisation():
    assert as_number("1,000") == as_number("1000.00") == as_number("1000.") == "1000"
    assert as_number("seven") == "7" and as_number("-3") == "-3" and as_number("0.50") == "0.5"
    assert as_number("blue") is None and as_number("") is None


def test_format_and_length_rewards():
    assert format_score("The kettle is blue.", stopped=True) == 1.0
    assert format_score("The kettle is blue.", stopped=False) == 0.5  # cut off at max_new_tokens
    assert format_score("The kettle is blue. It is old.", stopped=True) == 0.5  # two sentences
    assert format_score("the kettle is blue", stopped=True) == 0.5  # no full stop
    assert format_score("Blue.", stopped=True) == 0.5  # a bare answer is not a sentence
    assert format_score("It is 7.5 metres long.", stopped=True) == 1.0  # a decimal point ends nothing
    assert length_score("one two three") == 0.0
    assert length_score(" ".join(["word"] * 18)) == -0.5
    assert length_score(" ".join(["word"] * 100)) == -1.0


def test_reward_functions_have_trl_shape():
    exact, fmt = reward_functions(["exact_match", "format"], stop_ids=[9])
    assert exact.__name__ == "exact_match" and fmt.__name__ == "format"
    completions = [[{"role": "assistant", "content": "3 plus 4 is 7."}], [{"role": "assistant", "content": "It is 8"}]]
    kwargs = {"prompts": [[], []], "completions": completions, "completion_ids": [[5, 9], [5, 6]], "trainer_state": None}
    assert exact(**kwargs, answer=["7", "7"]) == [1.0, 0.0]
    assert exact(**kwargs) == [None, None]  # no answer column: unscorable, not wrong
    assert fmt(**kwargs) == [1.0, 0.0]


# ---- configuration errors --------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["align.method=rlhf", "align.rl=ppo"], '"align.rl" must be one of rloo, grpo'),
    (["align.method=rloo", "align.rl=grpo"], "only method rlhf takes an RL algorithm"),
    (["align.method=grpo", "align.rewards=[exact_match,bogus]"], "unknown reward 'bogus'"),
    (["align.method=grpo", "align.batch_size=6", "align.num_generations=4"], "multiple of align.num_generations (4)"),
    (["align.method=grpo", "align.num_generations=1"], '"align.num_generations" must be >= 2'),
    (["align.method=dpo", "align.reward_model=runs/x/reward"], "method dpo uses no reward model"),
    (["reward.probes=[data/probes.chat.jsonl]"], "a reward model does not generate"),
])
def test_bad_rl_settings_name_the_key(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_recipe(MICRO, overrides)


@pytest.mark.parametrize("name, method", [("rlhf", "rlhf"), ("grpo", "grpo")])
def test_rl_recipes_load_and_validate(name, method):
    recipe = load_recipe(f"recipes/{name}.yaml")
    assert recipe.name == name and recipe.model.preset == "tiny" and recipe.align.method == method


def test_unknown_rl_and_wrong_reward_folder_are_one_line_errors(micro_run: Path, tmp_path: Path):
    result = invoke("align", MICRO, "--method", "rlhf", "--rl", "ppo", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert '"align.rl" must be one of rloo, grpo' in result.stderr
    for folder, what in ((micro_run / "sft", "holds a 'sft' stage, not a reward model"), (tmp_path / "nowhere", "not found")):
        result = invoke("align", MICRO, "--method", "rlhf", "--reward-model", str(folder), "--out", str(tmp_path / "run"))
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert what in result.stderr and "align.reward_model" in result.stderr
    # Rule rewards that need answers, on preference prompts that have none.
    result = invoke("align", MICRO, "--method", "grpo", "--from", str(micro_run / "sft"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "exact_match needs an 'answer'" in result.stderr, result.output


# ---- training through the CLI -----------------------------------------------------------------

@pytest.fixture(scope="module")
def rlhf_run(micro_run: Path, tmp_path_factory) -> Path:
    """A copy of the micro run with method rlhf trained on top: runs/<run>/reward and runs/<run>/rlhf."""
    run_dir = tmp_path_factory.mktemp("rlhf") / "run"
    shutil.copytree(micro_run, run_dir)
    result = invoke("align", MICRO, "--method", "rlhf", "--out", str(run_dir))
    assert result.exit_code == 0, result.output
    return run_dir


def test_rlhf_trains_a_reward_model_then_the_policy(rlhf_run: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    reward, policy = read_manifest(rlhf_run / "reward"), read_manifest(rlhf_run / "rlhf")
    sft_sha = manifest_sha(rlhf_run / "sft")
    assert reward["status"] == policy["status"] == "complete"
    assert reward["parent"]["stage"] == policy["parent"]["stage"] == "sft"
    assert reward["parent"]["manifest_sha256"] == policy["parent"]["manifest_sha256"] == sft_sha
    # The policy names the reward model it was trained against, by path and manifest hash.
    assert policy["reward_model"]["path"] == str((rlhf_run / "reward").resolve())
    assert policy["reward_model"]["manifest_sha256"] == manifest_sha(rlhf_run / "reward")
    assert policy["config"]["reward_model_sha256"] == manifest_sha(rlhf_run / "reward")

    rm = reward["metrics"]
    assert rm["preference_rows"] == 16 and 0 <= rm["pairwise_accuracy_before"] <= 1 and 0 <= rm["pairwise_accuracy"] <= 1
    assert reward["summary"]["metric"]["name"] == "held-out pairwise accuracy" and reward["summary"]["steps"] == 4
    assert "only as far as this accuracy is above chance" in reward["summary"]["metric"]["why"]
    # The prompts leave room for the reply's end (`<|end|>` and a newline) as the reward model scores it.
    assert policy["data"]["prompts_fitted"]["budget_tokens"] == 256 - 8 - 2
    assert reward["gate"] is None  # a classifier is not gated on likelihoods
    pm = policy["metrics"]
    assert pm["algorithm"] == "rloo" and pm["rewards"] == ["reward_model"] and pm["heldout_prompts"] == 8
    for key in ("reward_model_score", "mean_reward", "kl", "kl_per_token", "reply_tokens"):
        assert isinstance(pm[key], float) and isinstance(pm[f"{key}_before"], float), key
    assert abs(pm["kl_before"]) < 1e-3  # the policy starts as its reference
    assert pm["max_kl"] == 2.0 and pm["kl_within_bound"] == (pm["kl"] <= 2.0)
    assert policy["summary"]["metric"]["name"] == "held-out reward-model win rate over the parent"
    # Against the parent: greedy replies under the reward model, and the held-out pairs (prefs.validation).
    assert pm["reward_model_win_rate_before"] == 0.5 and 0 <= pm["reward_model_win_rate"] <= 1 and pm["win_rate_prompts"] == 8
    assert pm["implicit_reward_accuracy_before"] == 0.5 and 0 <= pm["implicit_reward_accuracy"] <= 1
    assert pm["preference_rows"] == 16 and 0 <= pm["per_token_logp_accuracy"] <= 1
    assert "pair_scores" not in pm and "reply_rewards" not in pm
    assert policy["gate"]["parent_stage"] == "sft" and policy["gate"]["checks"]
    assert {p["name"] for p in policy["protected"]["heldout"]} == {"rlhf-prompts"}
    assert [h for h in policy["evals"] if "loss" in h] and (rlhf_run / "rlhf" / "tensorboard").is_dir()

    scorer = AutoModelForSequenceClassification.from_pretrained(rlhf_run / "reward")
    assert scorer.config.num_labels == 1 and scorer.config.pad_token_id is not None
    model = AutoModelForCausalLM.from_pretrained(rlhf_run / "rlhf")
    tokenizer = AutoTokenizer.from_pretrained(rlhf_run / "rlhf")
    assert tokenizer.convert_tokens_to_ids("<|end|>") in model.generation_config.eos_token_id
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert scorer(**ids).logits.shape == (1, 1)
        assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]

    table = invoke("summary", str(rlhf_run))
    assert table.exit_code == 0 and "reward" in table.stdout and "held-out reward-model win rate over the parent" in table.stdout
    assert invoke("report", str(rlhf_run)).exit_code == 0


def test_rlhf_reuses_a_given_reward_model_with_grpo(rlhf_run: Path, micro_copy: Path):
    reward_dir = rlhf_run / "reward"
    result = invoke("align", MICRO, "--method", "rlhf", "--rl", "grpo", "--reward-model", str(reward_dir),
                    "--out", str(micro_copy))
    assert result.exit_code == 0, result.output
    assert not (micro_copy / "reward").exists()  # nothing trained: the given one is used
    policy = read_manifest(micro_copy / "rlhf")
    assert policy["metrics"]["algorithm"] == "grpo"
    assert policy["reward_model"] == {"path": str(reward_dir.resolve()), "stage": "reward",
                                      "manifest_sha256": manifest_sha(reward_dir)}
    # The same command again finds the stage complete and skips it.
    again = invoke("align", MICRO, "--method", "rlhf", "--rl", "grpo", "--reward-model", str(reward_dir), "--out", str(micro_copy))
    assert again.exit_code == 0 and "rlhf: complete" in again.output


def test_run_with_grpo_trains_on_verifiable_answers(micro_copy: Path):
    # `llmpipe run` skips the finished stages and runs the recipe's align method.
    result = invoke("run", MICRO, "--out", str(micro_copy), "align.method=grpo", *VERIFIABLE)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(micro_copy / "grpo")
    metrics = manifest["metrics"]
    assert metrics["algorithm"] == "grpo" and metrics["rewards"] == ["exact_match"]
    assert 0 <= metrics["exact_match_accuracy_before"] <= 1 and 0 <= metrics["exact_match_accuracy"] <= 1
    assert manifest["summary"]["metric"]["name"] == "held-out exact-match accuracy"
    assert manifest["data"]["train_rows"] == 521 and manifest["reward_model"] is None
    # Verifiable questions are prompts, not pairs, and there is no reward model: each missing measure says why.
    assert metrics["implicit_reward_accuracy_note"].startswith("no held-out pairs")
    assert metrics["reward_model_win_rate_note"].startswith("no reward model")
    protected = micro_copy / "grpo" / manifest["protected"]["heldout"][0]["file"]
    assert all("answer" in json.loads(line) for line in protected.read_text().splitlines())
    assert "grpo" in result.stdout  # in the summary table
    evaluated = invoke("eval", str(micro_copy / "grpo"))  # its protected prompts are scored by exact match
    assert evaluated.exit_code == 0 and "grpo-prompts" in evaluated.stdout, evaluated.output


def test_rloo_with_several_rule_rewards_and_lora(micro_copy: Path):
    result = invoke("align", MICRO, "--method", "rloo", "--out", str(micro_copy), "align.rewards=[exact_match,format,length]",
                    "align.lora.enabled=true", *VERIFIABLE)
    assert result.exit_code == 0, result.output
    assert (micro_copy / "rloo" / "adapter").is_dir()  # the adapter, next to the merged checkpoint
    metrics = read_manifest(micro_copy / "rloo")["metrics"]
    assert metrics["algorithm"] == "rloo" and metrics["rewards"] == ["exact_match", "format", "length"]
    for key in ("exact_match_reward", "format_reward", "length_reward", "exact_match_accuracy", "kl"):
        assert metrics[key] is not None and f"{key}_before" in metrics, key
    checked = invoke("data", "check", MICRO, "--stage", "align", "align.method=rloo", *VERIFIABLE, "--out", str(micro_copy))
    assert checked.exit_code == 0 and "[answer: " in checked.stdout, checked.output


# ---- prompts longer than the context ---------------------------------------------------------

def _long_prompt_rows(words: list[str], seed: int) -> list[dict]:
    """Multi-turn prompts of ~300 tokens at the micro tokenizer (context 256), short ones, and one whose last
    message alone is longer than the context."""
    import random

    rng = random.Random(seed)

    def said(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    rows = []
    for _ in range(6):  # a long history before a short question: shortened
        turns = [m for _ in range(3) for m in ({"role": "user", "content": said(60)}, {"role": "assistant", "content": said(60)})]
        rows.append({"prompt": [*turns, {"role": "user", "content": said(5)}]})
    rows += [{"prompt": [{"role": "user", "content": said(5)}]} for _ in range(4)]  # short: as they are
    rows.append({"prompt": [{"role": "user", "content": said(400)}]})  # the last message alone is too long: left out
    return rows


def test_rl_prompts_longer_than_the_context_lose_their_oldest_turns(micro_copy: Path, tmp_path: Path):
    # TRL 1.16's RLOO/GRPO do not truncate prompts: before llmpipe fitted them, hh-rlhf's long conversations
    # failed in the forward pass ("IndexError: index out of range", past GPT-2's position table).
    for name, seed in (("train", 0), ("validation", 1)):
        rows = _long_prompt_rows(["kettle", "blue", "Mira", "lives", "sheep", "baa", "plus", "three"], seed)
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = invoke("align", MICRO, "--method", "rloo", "--out", str(micro_copy), "align.rewards=[length]",
                    f"align.train_files=[{tmp_path / 'train.jsonl'}]", f"align.validation_files=[{tmp_path / 'validation.jsonl'}]")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(micro_copy / "rloo")
    fitted = manifest["data"]["prompts_fitted"]
    assert fitted["budget_tokens"] == 256 - 8  # micro's context less its align.max_new_tokens
    assert fitted["train"] == fitted["validation"] == {"rows": 11, "shortened": 6, "dropped": 1}
    assert "6 of 11 training prompts lost their oldest turns and 1 were left out" in result.output
    # The held-out prompts the stage measured and protected are the fitted ones: they end with the question.
    from transformers import AutoTokenizer

    from llmpipe.chat_format import prompt_length

    tokenizer = AutoTokenizer.from_pretrained(micro_copy / "sft")
    protected = micro_copy / "rloo" / manifest["protected"]["heldout"][0]["file"]
    prompts = [json.loads(line)["prompt"] for line in protected.read_text().splitlines()]
    assert len(prompts) == 8 and all(prompt_length(tokenizer, p) <= 248 for p in prompts)
    assert sum(len(p) < 7 and p[0]["role"] == "user" for p in prompts) >= 4



def test_reply_suffix_length_is_what_the_template_adds_after_a_reply(micro_run: Path):
    # TRL renders prompt + completion again for the reward model, without truncating: these tokens come on top
    # of the prompt and the generated reply (hh-helpful from the own-data SFT failed at 258 of 256 positions).
    from transformers import AutoTokenizer

    from llmpipe.chat_format import prompt_length, reply_suffix_length

    tokenizer = AutoTokenizer.from_pretrained(micro_run / "sft")
    prompt, reply = [{"role": "user", "content": "What colour is the kettle?"}], "The kettle is blue."
    whole = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reply}], tokenize=True, return_dict=False)
    assert reply_suffix_length(tokenizer) == 2
    assert len(whole) == prompt_length(tokenizer, prompt) + len(tokenizer.encode(reply, add_special_tokens=False)) + 2
