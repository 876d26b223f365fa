"""`llmpipe chat` and `llmpipe generate` on the micro run's checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import invoke

PROMPTS = ["What colour is the kettle?", "Where is the cup?", "Tell me about the red lamp in the hall."]


def invoke_with_input(text: str, *args: str):
    """Like conftest's `invoke`, with `text` piped to the command's stdin."""
    from typer.testing import CliRunner

    from llmpipe.cli import app

    return CliRunner().invoke(app, list(args), input=text)


def write_prompts(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_chat_reads_piped_lines_and_prints_replies(micro_run: Path):
    result = invoke_with_input("hello\n/reset\nwho are you?\n/exit\n", "chat", str(micro_run / "sft"), "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") >= 2  # one reply per user line, each ending in a newline
    assert "history cleared" in result.stderr


def test_chat_loop_reset_clears_history_and_long_history_is_cut(micro_run: Path):
    from llmpipe.chat import ChatSession, Sampling, chat_loop, encode_prompt
    from llmpipe.loading import load_checkpoint

    model, tokenizer = load_checkpoint(micro_run / "sft", "cpu")
    session = ChatSession(model, tokenizer, Sampling(max_new_tokens=4))
    lines = iter(["hello\n", "/reset\n", "who are you?\n", "/exit\n", "never read\n"])
    replies: list[str] = []
    chat_loop(session, lambda: next(lines, ""), replies.append, lambda note: None)
    assert len(replies) == 2
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.history[0]["content"] == "who are you?"

    # 256 positions less 200 new tokens leaves 56 for the prompt: earlier turns must go.
    session = ChatSession(model, tokenizer, Sampling(max_new_tokens=200, temperature=0), system="Be brief.")
    session.history = [{"role": "user", "content": "tell me everything"}, {"role": "assistant", "content": "the red kettle " * 20}]
    session.ask("what colour is the lamp?")
    assert session.last_dropped == 2
    assert session.history[0]["content"] == "what colour is the lamp?"
    kept = [{"role": "system", "content": "Be brief."}, session.history[0]]
    assert len(encode_prompt(tokenizer, kept, raw=False)) <= session.budget


def test_chat_refuses_a_tampered_chat_template(micro_copy: Path):
    template = micro_copy / "sft" / "chat_template.jinja"
    template.write_text(template.read_text(encoding="utf-8").replace("<|assistant|>", "<|bot|>"), encoding="utf-8")
    result = invoke_with_input("hello\n", "chat", str(micro_copy / "sft"))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "chat template differs from the one the model was trained with" in result.stderr


def test_chat_refuses_a_checkpoint_without_chat_template(micro_copy: Path):
    (micro_copy / "sft" / "chat_template.jinja").unlink()
    result = invoke_with_input("hello\n", "chat", str(micro_copy / "sft"))
    assert result.exit_code == 2
    assert "no chat template" in result.stderr


def test_generate_writes_one_row_per_prompt(micro_run: Path, tmp_path: Path):
    rows = [{"prompt": PROMPTS[0]}, {"prompt": [{"role": "user", "content": PROMPTS[1]}]},
            {"messages": [{"role": "user", "content": PROMPTS[2]}, {"role": "assistant", "content": "dropped"}]}]
    prompts = write_prompts(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "replies.jsonl"
    result = invoke("generate", str(micro_run / "sft"), "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    written = read_rows(out)
    assert len(written) == 3
    assert all(isinstance(row["reply"], str) for row in written)
    assert written[0]["prompt"] == PROMPTS[0]
    assert written[2]["prompt"] == [{"role": "user", "content": PROMPTS[2]}]


def test_greedy_generation_is_deterministic_and_matches_eval_replies(micro_run: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmpipe.eval.metrics import generate_replies

    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    replies = []
    for attempt in range(2):
        out = tmp_path / f"replies{attempt}.jsonl"
        result = invoke("generate", str(micro_run / "sft"), "--prompts", str(prompts), "--out", str(out),
                        "--temperature", "0", "--max-new-tokens", "12", "--seed", str(attempt))
        assert result.exit_code == 0, result.output
        replies.append([row["reply"] for row in read_rows(out)])
    assert replies[0] == replies[1]

    model = AutoModelForCausalLM.from_pretrained(micro_run / "sft")
    tokenizer = AutoTokenizer.from_pretrained(micro_run / "sft")
    expected = generate_replies(model, tokenizer, [[{"role": "user", "content": p}] for p in PROMPTS], max_new_tokens=12)
    assert replies[0] == [reply.strip() for reply in expected]


def test_generate_raw_continues_plain_text_from_a_pretrain_checkpoint(micro_run: Path, tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The kettle\n\nOnce upon a time\n", encoding="utf-8")
    result = invoke("generate", str(micro_run / "pretrain"), "--prompts", str(prompts), "--raw", "--max-new-tokens", "6")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["prompt"] for row in rows] == ["The kettle", "Once upon a time"]


def test_generate_names_the_line_and_field_of_a_bad_row(micro_run: Path, tmp_path: Path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "fine"}, {"messages": [{"role": "robot", "content": "hi"}]}])
    result = invoke("generate", str(micro_run / "sft"), "--prompts", str(prompts))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert f"{prompts}:2:" in result.stderr and '"messages[0]"' in result.stderr


def test_missing_checkpoint_is_a_user_error(tmp_path: Path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "hello"}])
    result = invoke("generate", str(tmp_path / "nowhere"), "--prompts", str(prompts))
    assert result.exit_code == 2
    assert "checkpoint folder not found" in result.stderr and "nowhere" in result.stderr
    result = invoke_with_input("hello\n", "chat", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
