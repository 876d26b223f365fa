"""Bring your own data: every shape loads through the right stage, bad rows fail (or are skipped and
counted) with file:line, mixtures and column mappings work, and `llmpipe data check` shows it all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import MICRO, ROOT, SHARED_DATA, invoke

from llmpipe.config import load_recipe
from llmpipe.data.pipeline import load_rows, stream_text

FIXTURES = ROOT / "tests" / "fixtures"
KIND_OF = {"pretrain": "text", "sft": "chat", "preference": "preference"}


def stage_cfg(stage: str, *overrides: str):
    return getattr(load_recipe(None, list(overrides)), stage)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_every_shared_dataset_loads_through_its_stage():
    manifest = json.loads((SHARED_DATA / "MANIFEST.json").read_text())
    files = manifest["files"] if isinstance(manifest, dict) and "files" in manifest else manifest
    checked = 0
    for path in sorted(SHARED_DATA.glob("*.train.jsonl")):
        first = json.loads(path.open().readline())
        kind = "text" if "text" in first else "chat" if "messages" in first else "preference"
        stage = {"text": "pretrain", "chat": "sft", "preference": "align"}[kind]
        validation = path.with_name(path.name.replace(".train.", ".validation."))
        cfg = stage_cfg(stage, f"{stage}.train_files={path}", f"{stage}.validation_files={validation}",
                        f"{stage}.cleaning.exact_dedup=false", f"{stage}.cleaning.decontaminate=false",
                        f"{stage}.cleaning.near_dedup=false", f"{stage}.cleaning.max_repeated_line_share=1")
        if kind == "text":
            stream = stream_text(cfg)
            rows = list(stream.train())
            report = stream.report
        else:
            data = load_rows(kind, cfg)
            rows, report = data.train, data.report
        lines = sum(1 for _ in path.open())
        assert len(rows) == lines == report.train_rows, path.name
        assert report.validation_rows == sum(1 for _ in validation.open())
        checked += 1
    assert checked == 8 and files


def chat_fixture(name: str, *overrides: str):
    return load_rows("chat", stage_cfg("sft", f"sft.train_files={FIXTURES}/{name}", *overrides))


def test_foreign_shapes_convert_from_fixture_files():
    alpaca = chat_fixture("alpaca.json")
    assert alpaca.train[0]["messages"] == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                          {"role": "assistant", "content": "5"}]
    share = chat_fixture("sharegpt.jsonl")
    assert [m["role"] for m in share.train[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    pc = chat_fixture("prompt_completion.jsonl")
    assert pc.train[1]["messages"] == [{"role": "user", "content": "Grass is"}, {"role": "assistant", "content": " green."}]
    hh = load_rows("preference", stage_cfg("align", f"align.train_files={FIXTURES}/hh.jsonl"))
    row = hh.train[0]
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]
    assert row["chosen"] == [{"role": "assistant", "content": "About 40 minutes at 220 C."}]
    assert row["rejected"] == [{"role": "assistant", "content": "No idea."}]


def test_column_mapping_and_csv():
    rows = chat_fixture("custom_columns.csv", "sft.columns={question: prompt, response: completion}").train
    assert rows[1]["messages"] == [{"role": "user", "content": 'Say "hi"'}, {"role": "assistant", "content": "hi"}]


def test_hub_loader_on_a_local_dataset_folder(tmp_path: Path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"document {i} " * 30}) + "\n" for i in range(40)))
    cfg = stage_cfg("pretrain", f"pretrain.train_files=hf:{folder}@train#main", "pretrain.validation_files=",
                    "pretrain.validation_fraction=0.2")
    stream = stream_text(cfg)
    train = list(stream.train())
    assert len(train) + len(stream.validation) == 40 and stream.validation
    assert stream.report.sources[-1]["source"] == f"hf:{folder}@train#main"


def test_mixture_weights_set_each_sources_share(tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"text": f"alpha row number {i}"}) + "\n" for i in range(100)))
    b.write_text("".join(json.dumps({"text": f"beta row number {i}"}) + "\n" for i in range(300)))
    cfg = stage_cfg("pretrain", f"pretrain.train_files={a},{b}", "pretrain.mixture_weights=[3, 1]",
                    "pretrain.validation_files=data/pretrain.validation.jsonl")
    rows = list(stream_text(cfg).train())
    alpha = sum(r["text"].startswith("alpha") for r in rows)
    assert len(rows) == pytest.approx(400, abs=15)
    assert alpha / len(rows) == pytest.approx(0.75, abs=0.03)  # 100 rows upsampled 3x, 300 downsampled
    assert rows == list(stream_text(cfg).train())  # deterministic


BROKEN = [
    ("malformed.jsonl", '{"messages": [}\n', "sft", ':1: invalid JSON'),
    ("missing.jsonl", '{"question": "hi"}\n', "sft", ':1: "messages" missing (row has question)'),
    ("empty_reply.jsonl", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}\n',
     "sft", ':1: "messages[1].content" assistant turn is empty'),
    ("mistyped.jsonl", '{"messages": [{"role": "user", "content": 5}]}\n', "sft", ':1: "messages[0].content" must be a string'),
    ("wrong_role.jsonl", '{"messages": [{"role": "robot", "content": "x"}]}\n', "sft", ':1: "messages[0].role" is \'robot\''),
    ("no_assistant.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n', "sft", ':1: "messages" has no assistant turn'),
    ("same.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "a"}\n', "align", ':1: "rejected" is identical to chosen'),
    ("empty_chosen.jsonl", '{"prompt": "q", "chosen": [], "rejected": "b"}\n', "align", ':1: "chosen" must be a non-empty list'),
    ("text_type.jsonl", '{"text": ["a"]}\n', "pretrain", ':1: "text" must be a string, got list'),
    ("empty_text.jsonl", '{"text": "  "}\n', "pretrain", ':1: "text" is empty'),
    ("empty.jsonl", "", "sft", "holds no usable rows"),
    ("not_list.json", '{"a": 1, "b": 2}', "sft", "a .json data file must hold a list of objects"),
    ("latin1.jsonl", b'{"text": "caf\xe9"}\n', "pretrain", "file is not UTF-8 text"),
    ("third_line.jsonl", '{"text": "ok"}\n{"text": "fine"}\n{"txt": "oops"}\n', "pretrain", ':3: "text" missing (row has txt)'),
]


@pytest.mark.parametrize(("name", "content", "stage", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_inputs_give_one_line_errors(tmp_path: Path, name, content, stage, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = invoke("data", "check", MICRO, "--stage", stage, f"{stage}.train_files={path}", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_bad_rows_skip_policy_counts_reasons(tmp_path: Path):
    path = tmp_path / "mixed.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rows = [good, {"question": 1}, {"messages": [{"role": "user", "content": "x"}]}, {"question": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = stage_cfg("sft", f"sft.train_files={path}", "sft.validation_files=data/sft.validation.jsonl", "sft.bad_rows=skip")
    data = load_rows("chat", cfg)
    assert len(data.train) == 1
    assert data.report.to_manifest()["dropped"] == {
        'invalid: "messages" missing (row has question)': 2,
        'invalid: "messages" has no assistant turn, so there is nothing to learn': 1}


def test_data_check_marks_trained_tokens_and_reports_lengths(micro_run: Path, tmp_path: Path):
    out = tmp_path / "check.json"
    result = invoke("data", "check", MICRO, "--stage", "sft", "--out", str(micro_run), "--examples", "2", "--json", str(out))
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["lengths_in"] == "tokens" and figures["train_rows"] == 2400
    assert sum(int(line.split()[1]) for line in figures["histogram"]) == 2400
    # The micro recipe cuts SFT rows at 64 tokens: the longest multi-turn rows go past it.
    assert 0 < figures["truncated"]["rows"] < 2400 and figures["lengths"]["max"] > 64
    assert figures["truncated"]["share"] == round(figures["truncated"]["rows"] / 2400, 4)
    first = figures["examples"][0]
    assert "[[" in first and first.count("[[") == first.count("]]")
    assert first.startswith("<|bos|>") and "]]" in first.split("<|assistant|>")[-1]
    assert "<|user|>" not in "".join(part.split("]]")[0] for part in first.split("[[")[1:])  # prompts carry no loss
    assert "examples (tokens that carry loss are [[marked]])" in result.stdout


def test_duplicates_and_contamination_are_dropped_and_recorded(tmp_path: Path):
    train = tmp_path / "train.jsonl"
    held = "the quick brown fox jumps over the lazy dog while the farmer watches from the old red barn door"
    rows = [{"text": "first document about apples and pears"}] * 3 + [{"text": "prefix words " + held}, {"text": "another clean text here"}]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    validation = tmp_path / "val.jsonl"
    validation.write_text(json.dumps({"messages": [{"role": "user", "content": held}, {"role": "assistant", "content": "ok"}]}) + "\n")
    recipe = load_recipe(None, [f"pretrain.train_files={train}", "pretrain.validation_files=data/pretrain.validation.jsonl",
                                f"sft.validation_files={validation}"])
    from llmpipe.data.pipeline import heldout_texts

    stream = stream_text(recipe.pretrain, heldout_texts(recipe))
    kept = [r["text"] for r in stream.train()]
    assert kept == ["first document about apples and pears", "another clean text here"]
    assert stream.report.to_manifest()["dropped"] == {"exact_duplicate": 2, "contaminated": 1}


def test_mixture_counting_waits_for_the_first_pass(tmp_path: Path):
    # A token-cache hit never calls train(), so building the stream must not read the train files.
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"text": "alpha"}) + "\n")
    cfg = stage_cfg("pretrain", f"pretrain.train_files={a},{a}", "pretrain.mixture_weights=[1, 1]",
                    "pretrain.validation_files=data/pretrain.validation.jsonl")
    stream = stream_text(cfg)
    a.unlink()
    from llmpipe.core.errors import UserError

    with pytest.raises(UserError, match="data file not found"):
        next(stream.train())
