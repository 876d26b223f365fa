"""The held-out preference measures (llmpipe.eval.pairs, llmpipe.train.preference) on a model whose logits
are known: a bigram table, so every log-probability can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from llmpipe.eval.pairs import pair_measures, pair_scores, win_share
from llmpipe.train.preference import HeldoutPreferences

VOCAB = 16
PAD, USER, ASSISTANT, EOS = 0, 1, 2, 3


class CharTokenizer:
    """A chat tokenizer in miniature: <role> then one token per letter a-l (ids 4-15), then <eos>."""

    pad_token_id = PAD

    def _ids(self, text: str) -> list[int]:
        return [4 + (ord(c) - ord("a")) % 12 for c in text]

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False, return_dict=False):
        ids = []
        for m in messages:
            ids += [USER if m["role"] == "user" else ASSISTANT, *self._ids(m["content"]), EOS]
        return ids + [ASSISTANT] * add_generation_prompt


class Bigram(torch.nn.Module):
    """Next-token logits from the current token alone: logits[t] = table[ids[t]]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())
        self.config = type("Config", (), {"n_positions": 64})()

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


ROWS = [_pair("ab", "cc", "dddd"), _pair("ba", "eeee", "ff")]


def test_pair_scores_of_a_uniform_model_are_minus_log_v_per_token():
    scores = pair_scores(Bigram(torch.zeros(VOCAB, VOCAB)), CharTokenizer(), ROWS)
    # Each reply is scored from its first letter to its <eos>: letters + 1 tokens.
    assert scores["chosen_tokens"] == [3, 5] and scores["rejected_tokens"] == [5, 3]
    for logp, n in zip(scores["chosen_logp"] + scores["rejected_logp"], scores["chosen_tokens"] + scores["rejected_tokens"]):
        assert logp == pytest.approx(-n * math.log(VOCAB), rel=1e-5)


def test_raising_the_chosen_replies_gives_implicit_reward_accuracy_one():
    tokenizer, reference = CharTokenizer(), Bigram(torch.zeros(VOCAB, VOCAB))
    table = torch.zeros(VOCAB, VOCAB)
    table[:, 4 + 2] = 2.0  # 'c' and 'e', the letters of the chosen replies, more likely after any token
    table[:, 4 + 4] = 2.0
    parent, child = pair_scores(reference, tokenizer, ROWS), pair_scores(Bigram(table), tokenizer, ROWS)
    after = pair_measures(child, parent, beta=0.1)
    assert after["implicit_reward_accuracy"] == 1.0 and after["implicit_reward_margin"] > 0
    # Against itself every implicit reward is 0: chance by definition, counted as ties.
    before = pair_measures(parent, parent, beta=0.1)
    assert before["implicit_reward_accuracy"] == 0.5 and before["implicit_reward_margin"] == 0.0
    # The uniform parent's per-token log-likelihoods are equal (a tie each); the summed ones favour
    # the shorter reply: the first pair's chosen, the second's rejected.
    assert before["per_token_accuracy"] == 0.5 and before["summed_accuracy"] == 0.5
    assert pair_measures(child, child, 0.1)["per_token_accuracy"] == 1.0
    assert after["chosen_longer_share"] == 0.5 and after["rows"] == 2


def test_summed_log_likelihood_measures_length_and_per_token_does_not():
    # A model that likes the chosen replies per token (-1.0 vs -1.5 nats) while they are 4x longer.
    scores = {"chosen_logp": [-40.0, -40.0], "chosen_tokens": [40, 40], "rejected_logp": [-15.0, -15.0],
              "rejected_tokens": [10, 10]}
    measured = pair_measures(scores, scores, beta=0.1)
    assert measured["per_token_accuracy"] == 1.0 and measured["per_token_margin"] == pytest.approx(0.5)
    assert measured["summed_accuracy"] == 0.0 and measured["chosen_longer_share"] == 1.0


def test_win_share_counts_ties_half():
    assert win_share([1.0, -1.0, 0.0, 2.0]) == pytest.approx(0.625)
    assert win_share([]) is None


def test_stage_metrics_before_and_after_with_a_reward_model():
    prefs = HeldoutPreferences(tokenizer=None, pairs=ROWS, beta=0.5)
    parent = {"chosen_logp": [-3.0, -5.0], "chosen_tokens": [3, 5], "rejected_logp": [-5.0, -3.0], "rejected_tokens": [5, 3]}
    child = {"chosen_logp": [-2.0, -4.0], "chosen_tokens": [3, 5], "rejected_logp": [-6.0, -3.5], "rejected_tokens": [5, 3]}
    metrics = prefs.metrics({"pair_scores": parent, "reply_rewards": [0.0, 1.0, 2.0]},
                            {"pair_scores": child, "reply_rewards": [1.0, 1.0, 1.0]})
    assert metrics["implicit_reward_accuracy_before"] == 0.5 and metrics["implicit_reward_accuracy"] == 1.0
    # beta x ((-2 - -3) - (-6 - -5)) = 1.0 and beta x ((-4 - -5) - (-3.5 - -3)) = 0.75
    assert metrics["implicit_reward_margin"] == pytest.approx(0.875)
    assert metrics["per_token_logp_accuracy_before"] == 0.5 and metrics["per_token_logp_accuracy"] == 1.0
    assert metrics["summed_logp_accuracy_before"] == 0.5
    assert metrics["reward_model_win_rate_before"] == 0.5 and metrics["reward_model_win_rate"] == 0.5
    assert metrics["preference_rows"] == 2 and metrics["win_rate_prompts"] == 3


def test_a_missing_measure_says_why():
    prefs = HeldoutPreferences(tokenizer=None, pairs=[], beta=0.1, notes={"reward_model_win_rate": "no reward model"})
    assert prefs.metrics({}, {}) == {"reward_model_win_rate_note": "no reward model"}


# ---- prompts fitted to the context (llmpipe.chat_format) ----------------------------------------

def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_fit_prompt_drops_the_oldest_whole_turns_and_keeps_the_system_message():
    from llmpipe.chat_format import fit_prompt, prompt_length

    tok = CharTokenizer()  # a message is its role, its letters and <eos>; the generation prompt one more
    system, history = _msg("system", "ab"), [_msg("user", "abc"), _msg("assistant", "def"), _msg("user", "gh")]
    assert prompt_length(tok, [system, *history]) == 4 + 5 + 5 + 4 + 1
    assert fit_prompt(tok, [system, *history], 19) == [system, *history]  # fits: unchanged
    assert fit_prompt(tok, [system, *history], 18) == [system, history[-1]]  # a user turn goes with its reply
    assert fit_prompt(tok, history, 5) == [history[-1]]
    assert fit_prompt(tok, history, 4) is None  # the last message alone is longer


def test_fit_for_replies_makes_room_for_the_longest_reply():
    from llmpipe.chat_format import fit_for_replies

    tok = CharTokenizer()
    prompt = [_msg("user", "abc"), _msg("assistant", "def"), _msg("user", "gh")]  # 15 tokens with the generation prompt
    pair = {"prompt": prompt, "chosen": [_msg("assistant", "ijkl")], "rejected": [_msg("assistant", "ab")]}  # replies: 5, 3
    assert fit_for_replies(tok, [pair], 20) == ([pair], {"rows": 1, "shortened": 0, "reply_cut": 0})
    rows, counts = fit_for_replies(tok, [pair], 19)
    assert rows[0]["prompt"] == prompt[-1:] and rows[0]["chosen"] == pair["chosen"]
    assert counts == {"rows": 1, "shortened": 1, "reply_cut": 0}
    rows, counts = fit_for_replies(tok, [pair], 9)  # 5 + 5 > 9: the last message is kept, the reply is cut by the trainer
    assert rows[0]["prompt"] == prompt[-1:] and counts == {"rows": 1, "shortened": 1, "reply_cut": 1}
    single = {"prompt": prompt, "completion": [_msg("assistant", "ijkl")], "label": True}  # KTO's unpaired rows too
    assert fit_for_replies(tok, [single], 19)[0][0]["prompt"] == prompt[-1:]
