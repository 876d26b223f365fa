"""`llmpipe eval`, probe suites and held-out measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import invoke, read_manifest

from llmpipe.core.errors import UserError
from llmpipe.eval.probes import Probe, load_suite, passes
from llmpipe.runs import manifest_sha


def _suite(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("line", "field", "what"), [
    ('{"prompt": "x", "check": "guess", "answer": "y"}', "check", "must be one of"),
    ('{"prompt": "x", "check": "choice", "choices": ["a"], "answer": "a"}', "choices", "at least 2"),
    ('{"prompt": "x", "check": "choice", "choices": ["a", "b"], "answer": "c"}', "answer", "one of the choices"),
    ('{"prompt": "x", "check": "regex", "answer": "(unclosed"}', "answer", "regular expression"),
    ('{"prompt": "", "check": "exact", "answer": "y"}', "prompt", "missing or empty"),
    ('{"prompt": [{"role": "user"}], "check": "exact", "answer": "y"}', "prompt", "messages"),
    ('{"prompt": "x", "format": "html", "check": "exact", "answer": "y"}', "format", "must be one of"),
    ('{"prompt": "x", "check": "exact"', None, "not valid JSON"),
])
def test_bad_probe_lines_name_file_line_and_field(tmp_path, line, field, what):
    path = _suite(tmp_path, ['{"prompt": "ok", "check": "contains", "answer": "fine"}', line])
    with pytest.raises(UserError) as caught:
        load_suite(path)
    assert caught.value.line == 2 and caught.value.field == field and what in caught.value.what
    assert str(path) in caught.value.one_line()


def test_probe_checks(tmp_path):
    def probe(check: str, answer: str) -> Probe:
        return Probe(name="p", prompt="q", format="text", check=check, answer=answer)

    assert passes(probe("exact", "The kettle is blue."), "  The kettle is  blue. ")
    assert not passes(probe("exact", "blue"), "The kettle is blue.")
    assert passes(probe("contains", "blue"), "The kettle is Blue!")
    assert not passes(probe("contains", "blue"), "The kettle is bluegreen.")
    assert passes(probe("regex", r"\b7\b"), "3 plus 4 is 7.")
    suite = load_suite(_suite(tmp_path, [
        '{"prompt": [{"role": "user", "content": "hi"}], "check": "choice", "choices": ["a", "b"], "answer": 1}']))
    assert suite[0].format == "chat" and suite[0].answer == "b" and suite[0].name == "line 1"


def test_embedded_suites_load():
    for name in ("data/probes.text.jsonl", "data/probes.chat.jsonl"):
        probes = load_suite(name)
        assert len(probes) == 40
    assert {p.format for p in load_suite("data/probes.chat.jsonl")} == {"chat"}


def test_eval_default_uses_protected_sets_and_keeps_children_valid(micro_copy: Path):
    child_parent_sha = read_manifest(micro_copy / "sft")["parent"]["manifest_sha256"]
    result = invoke("eval", str(micro_copy / "pretrain"), "--samples", "2")
    assert result.exit_code == 0, result.output
    assert "pretrain-validation" in result.stdout and "probes.text" in result.stdout and "bpb" in result.stdout
    manifest = read_manifest(micro_copy / "pretrain")
    assert manifest["eval"]["pretrain-validation"]["kind"] == "loss"
    assert 0 <= manifest["eval"]["probes.text"]["value"] <= 1
    written = json.loads((micro_copy / "pretrain" / "eval.json").read_text())
    assert len(written["samples"]) == 2 and written["results"]["pretrain-validation"]["perplexity"] > 1
    # Evaluating a parent does not make its children stale: `run` skips every stage.
    assert manifest_sha(micro_copy / "pretrain") == child_parent_sha
    rerun = invoke("run", "recipes/micro.yaml", "--out", str(micro_copy))
    assert rerun.exit_code == 0, rerun.output
    assert rerun.output.count("skipping") == 4


def test_eval_datasets_of_every_kind_against_another_checkpoint(micro_copy: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    result = invoke("eval", str(micro_copy / "dpo"), "--against", str(micro_copy / "sft"), "--max-rows", "12",
                    "--data", "data/pretrain.validation.jsonl", "--data", "data/sft.validation.jsonl",
                    "--data", "data/prefs.validation.jsonl", "--probes", "data/probes.chat.jsonl", "--json", str(out))
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header[:6] == ["set", "kind", "measure", "value", "against", "change"]
    results = json.loads(out.read_text())
    kinds = {name: r["dataset_kind"] for name, r in results["results"].items()}
    assert kinds == {"pretrain.validation": "text", "sft.validation": "chat", "prefs.validation": "preference",
                     "probes.chat": "probes"}
    assert set(results["against_results"]) == set(kinds)
    assert results["results"]["pretrain.validation"]["bpb"] > 0


def test_eval_bad_inputs_are_one_line_errors(micro_copy: Path, tmp_path: Path):
    bad = _suite(tmp_path, ['{"prompt": "x", "check": "choice", "choices": ["a", "b"], "answer": "z"}'])
    cases = [
        (["eval", str(tmp_path / "nowhere")], "checkpoint folder not found"),
        (["eval", str(micro_copy / "tokenizer")], "holds no model"),
        (["eval", str(micro_copy / "sft"), "--probes", str(bad)], f"{bad}:1"),
        (["eval", str(micro_copy / "sft"), "--data", str(tmp_path / "missing.jsonl")], "missing.jsonl"),
        (["eval", str(micro_copy / "sft"), "--batch-size", "0"], "--batch-size"),
    ]
    for args, expected in cases:
        result = invoke(*args)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and expected in errors[0], (args, result.output)


def test_eval_scores_every_block_of_long_text_rows(micro_copy: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    texts = [json.loads(line)["text"] for line in Path("data/pretrain.validation.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [" ".join(texts[i::4]) for i in range(4)]  # four rows, each many blocks of max_length (64) long
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in rows), encoding="utf-8")
    out = tmp_path / "eval.json"
    result = invoke("eval", str(micro_copy / "pretrain"), "--data", str(data), "--samples", "0", "--json", str(out))
    assert result.exit_code == 0, result.output
    scored = json.loads(out.read_text())["results"]["long"]
    tokenizer = AutoTokenizer.from_pretrained(micro_copy / "pretrain")
    # As pretraining packs documents: <bos> text <eos>.
    total = sum(len(ids) + 2 for ids in tokenizer(rows, add_special_tokens=False)["input_ids"])
    assert total > 20 * 64 * len(rows)
    assert scored["tokens"] >= 0.95 * total, (scored, total)
    assert scored["tokens_total"] == total and scored["scored_share"] == round(scored["tokens"] / total, 4)
    assert f"tokens {scored['tokens']} of {total} ({scored['scored_share']:.1%})" in result.stdout


def test_continuation_scores_are_the_same_whatever_the_token_budget_per_batch(monkeypatch):
    import torch
    from hf_models import make_tokenizer, model_config
    from transformers import AutoModelForCausalLM

    from llmpipe.eval import metrics

    tokenizer = make_tokenizer("chatml")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("llama", tokenizer))
    texts = ["The kettle is blue.", "What is 2 plus 3? Answer: 5. " * 6, "Once upon a time", "a fox " * 20]
    pairs = [(tokenizer(t[:8])["input_ids"], tokenizer(t)["input_ids"]) for t in texts]
    wide = metrics.continuation_scores(model, tokenizer.pad_token_id, pairs)
    monkeypatch.setattr(metrics, "SCORE_TOKENS", 24)  # one or two rows a batch, the long ones alone
    narrow = metrics.continuation_scores(model, tokenizer.pad_token_id, pairs)
    assert [n for _, n in narrow] == [n for _, n in wide]
    assert [s for s, _ in narrow] == pytest.approx([s for s, _ in wide], abs=1e-4)
