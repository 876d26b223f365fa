"""Tests for the synthetic dataset generator (llmpipe.data.synth)."""
from __future__ import annotations

import json
import pathlib

import pytest

from llmpipe.data import synth

REPO_DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
FILES = [
    "pretrain.train.jsonl", "pretrain.validation.jsonl",
    "sft.train.jsonl", "sft.validation.jsonl",
    "prefs.train.jsonl", "prefs.validation.jsonl", "probes.text.jsonl", "probes.chat.jsonl",
    "verifiable.train.jsonl", "verifiable.validation.jsonl",
]


@pytest.fixture(scope="module")
def seed0(tmp_path_factory) -> pathlib.Path:
    """One seed-0 generation shared by the read-only tests (keeps the suite fast)."""
    out = tmp_path_factory.mktemp("seed0")
    counts = synth.generate(out, seed=0)
    assert sorted(counts) == sorted(FILES)
    return out


def _rows(directory: pathlib.Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (directory / name).read_text("utf-8").splitlines()]


def _last(messages: list[dict], role: str) -> str:
    return [m["content"] for m in messages if m["role"] == role][-1]


def test_counts_match_files(tmp_path):
    counts = synth.generate(tmp_path / "nested" / "out", seed=3)
    for name, n in counts.items():
        assert len(_rows(tmp_path / "nested" / "out", name)) == n > 0


def test_same_seed_identical_bytes(seed0, tmp_path):
    synth.generate(tmp_path, seed=0)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (seed0 / name).read_bytes(), name


def test_different_seed_differs(seed0, tmp_path):
    synth.generate(tmp_path, seed=1)
    for name in FILES:
        assert (tmp_path / name).read_bytes() != (seed0 / name).read_bytes(), name


def test_lf_line_endings(seed0):
    for name in FILES:
        data = (seed0 / name).read_bytes()
        assert b"\r" not in data and data.endswith(b"\n")


def test_pretrain_shape(seed0):
    for name in FILES[:2]:
        rows = _rows(seed0, name)
        assert rows
        for row in rows:
            assert set(row) == {"text"}
            assert isinstance(row["text"], str) and 100 <= len(row["text"]) <= 2000
    text = "\n".join(r["text"] for r in _rows(seed0, FILES[0]))
    # Plain-prose question/answer pairs, so that the knowledge is there to be asked for.
    assert text.count("Question: ") > 1000 and "<|" not in text
    train = sum(len(r["text"]) for r in _rows(seed0, FILES[0]))
    val = sum(len(r["text"]) for r in _rows(seed0, FILES[1]))
    assert 450_000 <= train <= 750_000 and 20_000 <= val <= 50_000


def test_sft_shape(seed0):
    for name in ("sft.train.jsonl", "sft.validation.jsonl"):
        rows = _rows(seed0, name)
        multi = 0
        for row in rows:
            assert set(row) == {"messages", "answer"}
            assert isinstance(row["answer"], str) and row["answer"]
            roles = [m["role"] for m in row["messages"]]
            if roles[0] == "system":
                roles = roles[1:]
            assert roles in (["user", "assistant"], ["user", "assistant"] * 2)
            multi += len(roles) == 4
            for m in row["messages"]:
                assert set(m) == {"role", "content"} and m["content"].strip()
        assert 0 < multi < 0.3 * len(rows)


def test_prefs_shape_and_chosen_differs(seed0):
    for name in ("prefs.train.jsonl", "prefs.validation.jsonl"):
        rows = _rows(seed0, name)
        for row in rows:
            assert set(row) == {"prompt", "chosen", "rejected"}
            assert [m["role"] for m in row["prompt"]] == ["user"]
            assert [m["role"] for m in row["chosen"]] == ["assistant"]
            assert [m["role"] for m in row["rejected"]] == ["assistant"]
            assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        assert len({json.dumps(r) for r in rows}) == len(rows)


def test_row_counts_in_target_ranges(seed0):
    n = {name: len(_rows(seed0, name)) for name in FILES[2:]}
    assert 2000 <= n["sft.train.jsonl"] <= 3000
    assert 150 <= n["sft.validation.jsonl"] <= 300
    assert 1000 <= n["prefs.train.jsonl"] <= 1500
    assert 100 <= n["prefs.validation.jsonl"] <= 200


def test_sft_validation_held_out(seed0):
    train, val = _rows(seed0, "sft.train.jsonl"), _rows(seed0, "sft.validation.jsonl")

    def turns(rows, role):
        return {m["content"] for r in rows for m in r["messages"] if m["role"] == role}

    # Literal questions never repeat, and neither do facts: the assistant
    # reply is the canonical statement of exactly one (entity, family) fact.
    assert not turns(train, "user") & turns(val, "user")
    full = {synth.reply(f) for f in synth.build_world(0)}
    assert not turns(train, "assistant") & turns(val, "assistant") & full
    assert len({json.dumps(r) for r in val}) == len(val)


def test_prefs_validation_held_out(seed0):
    sft_train = _rows(seed0, "sft.train.jsonl")
    train, val = _rows(seed0, "prefs.train.jsonl"), _rows(seed0, "prefs.validation.jsonl")
    val_prompts = {r["prompt"][0]["content"] for r in val}
    val_facts = {r["chosen"][0]["content"] for r in val}
    assert not val_prompts & {r["prompt"][0]["content"] for r in train}
    assert not val_facts & {r["chosen"][0]["content"] for r in train}
    # Also unseen by SFT, so the DPO metric is measured on new questions.
    assert not val_facts & {m["content"] for r in sft_train for m in r["messages"]}


def test_validation_answer_in_reply_not_in_question(seed0):
    for row in _rows(seed0, "sft.validation.jsonl"):
        assert row["answer"].lower() in _last(row["messages"], "assistant").lower()
        # Otherwise echoing the question would count as a correct answer.
        assert row["answer"] not in _last(row["messages"], "user")


def test_validation_facts_stated_in_pretraining(seed0):
    text = "\n".join(r["text"] for r in _rows(seed0, "pretrain.train.jsonl"))
    for row in _rows(seed0, "sft.validation.jsonl"):
        fact = next(f for f in synth.build_world(0) if f[2] == row["answer"] and
                    _last(row["messages"], "assistant") in (synth.reply(f), synth.short_reply(f)) and
                    (str(f[1]) in _last(row["messages"], "user") or f[0] == "sum"))
        assert synth.reply(fact) in text
    for row in _rows(seed0, "prefs.validation.jsonl"):
        assert row["chosen"][0]["content"] in text


def test_every_world_fact_stated_often(seed0):
    text = "\n".join(r["text"] for r in _rows(seed0, "pretrain.train.jsonl"))
    facts = synth.build_world(0)
    assert 120 <= len(facts) <= 300
    for fact in facts:
        assert text.count(synth.reply(fact)) >= 5, fact


def test_world_is_consistent():
    # One answer per (family, entity); no two facts share a canonical reply.
    facts = synth.build_world(0)
    assert len({(f[0], f[1]) for f in facts}) == len(facts)
    assert len({synth.reply(f) for f in facts}) == len(facts)
    assert synth.build_world(0) == facts


def test_rejected_wrong_answers_keep_sentence_form(seed0):
    rows = _rows(seed0, "prefs.train.jsonl")
    same_form = sloppy = short = 0
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        if rejected in synth.SLOPPY_REPLIES:
            sloppy += 1
        elif len(rejected.split()) <= 2 and rejected.rstrip(".").split()[-1].lower() in chosen.lower():
            short += 1  # the style pairs: the bare answer loses to the full sentence
        else:
            # Same words except the answer: identical prefix up to the last word.
            assert chosen.rsplit(" ", 1)[0] == rejected.rsplit(" ", 1)[0]
            same_form += 1
    assert 0.1 < sloppy / len(rows) < 0.25 and same_form > sloppy
    assert 0.3 < short / len(rows) < 0.6


def test_committed_data_matches_generator(seed0):
    assert REPO_DATA.is_dir(), "run `python -m llmpipe.data.synth data` to create data/"
    for name in FILES:
        assert (REPO_DATA / name).read_bytes() == (seed0 / name).read_bytes(), (
            f"data/{name} drifted from its generator; rerun `python -m llmpipe.data.synth data`")
    assert sum((REPO_DATA / n).stat().st_size for n in FILES) < 1_500_000


def test_data_synth_command_writes_the_embedded_files(tmp_path):
    from typer.testing import CliRunner

    from llmpipe.cli import app

    result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'sft.train.jsonl'}: 2400 rows" in result.stdout
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (REPO_DATA / name).read_bytes()
