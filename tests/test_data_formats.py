"""Reading files of every kind, converting foreign shapes, and locating bad rows precisely."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from llmpipe.core.errors import UserError
from llmpipe.data.formats import to_chat, to_preference
from llmpipe.data.io import SourceRow, read_rows


def row(data):
    return SourceRow(data, "f.jsonl", 7)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_foreign_chat_shapes_convert():
    alpaca = to_chat(row({"instruction": "Add", "input": "2 and 3", "output": "5"}))
    assert alpaca["messages"] == [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    share = to_chat(row({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}))
    assert [m["role"] for m in share["messages"]] == ["user", "assistant"]
    pc = to_chat(row({"prompt": "Q", "completion": "A"}))
    assert pc["messages"][1] == {"role": "assistant", "content": "A"}
    kept = to_chat(row({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "a"}))
    assert kept["answer"] == "a"


def test_hh_transcripts_and_implicit_prompts_become_explicit():
    hh = to_preference(row({
        "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: A good one.",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: No.",
    }))
    assert [m["role"] for m in hh["prompt"]] == ["user", "assistant", "user"]
    assert hh["chosen"] == [{"role": "assistant", "content": "A good one."}]
    assert hh["rejected"] == [{"role": "assistant", "content": "No."}]
    plain = to_preference(row({"prompt": "Q?", "chosen": "yes", "rejected": "no"}))
    assert plain["prompt"] == [{"role": "user", "content": "Q?"}]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, 'f.jsonl:7: "messages" has no assistant turn'),
        ({"messages": [{"role": "bot", "content": "q"}]}, '"messages[0].role" is \'bot\'; expected one of'),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}, "assistant turn is empty"),
        ({"question": "q"}, '"messages" missing (row has question)'),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown speaker 'alien'"),
    ],
)
def test_bad_chat_rows_are_located(data, message):
    with pytest.raises(UserError) as error:
        to_chat(row(data))
    assert message in error.value.one_line()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, '"rejected" missing'),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "identical to chosen"),
        ({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}, "must end with a user turn"),
        ({"prompt": "q", "chosen": [{"role": "assistant", "content": ""}], "rejected": "b"}, '"chosen[0].content" assistant turn is empty'),
    ],
)
def test_bad_preference_rows_are_located(data, message):
    with pytest.raises(UserError) as error:
        to_preference(row(data))
    assert message in error.value.one_line()


def test_file_kinds_folders_and_gzip(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    (folder / "b.json").write_text(json.dumps([{"text": "three"}]))
    (folder / "c.txt").write_text("four\nfive")
    with gzip.open(folder / "d.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "six"}) + "\n")
    pq.write_table(pa.table({"text": ["seven"]}), folder / "e.parquet")
    (folder / "ignored.md").write_text("not data")
    texts = [r.data["text"] for r in read_rows(str(folder))]
    assert texts == ["one", "two", "three", "four\nfive", "six", "seven"]
    assert [r.data["text"] for r in read_rows(str(folder / "*.jsonl"))] == ["one", "two"]


def test_broken_files_name_file_and_line(tmp_path: Path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(UserError) as error:
        list(read_rows(str(broken)))
    assert error.value.one_line().startswith(f"{broken}:3: invalid JSON")
    with pytest.raises(UserError, match="data file not found"):
        list(read_rows(str(tmp_path / "missing.jsonl")))
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not UTF-8"):
        list(read_rows(str(binary)))


def test_validation_split_is_deterministic_and_disjoint(tmp_path: Path):
    from llmpipe.config import load_recipe
    from llmpipe.data.pipeline import stream_text

    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"document number {i}"} for i in range(400)])
    cfg = load_recipe(None, [f"pretrain.train_files={path}", "pretrain.validation_files=", "pretrain.validation_fraction=0.1"]).pretrain
    first, second = stream_text(cfg), stream_text(cfg)
    train = list(first.train())
    assert first.validation == second.validation and 20 < len(first.validation) < 60
    assert len(train) + len(first.validation) == 400
    assert not {r["text"] for r in train} & {r["text"] for r in first.validation}
    train_source = next(s for s in first.report.sources if s["split"] == "train")
    assert train_source["rows"] == 400 and train_source["files"][0]["sha256"]
    assert first.report.sources[0]["split"] == "validation" and first.report.sources[0]["rows"] == len(first.validation)
