"""The Ollama `Modelfile` written beside an exported GGUF: FROM the file, the chat template in Ollama's
Go template language, the stop tokens, the context length.

A Jinja chat template cannot be translated to Go in general. The formats below are the ones llmpipe's
models and the families it exports use; each comes with a Python renderer that says exactly what its
Go template writes. The checkpoint's template is rendered (by transformers) on probe conversations and
compared with each renderer: the first that gives the same text on all of them is used. When none
does, the Modelfile says so and has no TEMPLATE line: Ollama then picks a template by comparing the
GGUF's `tokenizer.chat_template` with the ones it knows, which the comment asks the user to check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError

from llmpipe.chat_format import end_of_turn_token

MODELFILE = "Modelfile"
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Format:
    """A chat format: how it renders a conversation (Python, for the comparison) and its Go template.

    The Go template ranges over Ollama's `.Messages` (a SYSTEM line of the Modelfile arrives as the
    first message, role "system") and always ends with the assistant's turn header."""

    name: str
    render: Callable[[Messages], str]
    go: str
    # A system turn the template adds when the conversation has none (SmolLM's, Qwen2.5's): found by
    # this pattern in the rendering of a conversation without one, and written as the Modelfile's SYSTEM.
    default_system: str | None = None


def _pipes(messages: Messages) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages) + "<|assistant|>\n"


def _chatml(messages: Messages) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def _llama3(messages: Messages) -> str:
    return ("".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>" for m in messages)
            + "<|start_header_id|>assistant<|end_header_id|>\n\n")


FORMATS = (
    # llmpipe's own template (with bos) and Phi-3's (without): <|role|>\n ... <|end|>\n.
    Format("llmpipe / Phi-3", _pipes,
           "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"),
    Format("ChatML", _chatml,
           "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
           default_system=r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n"),
    Format("Llama 3", _llama3,
           "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
           "<|start_header_id|>assistant<|end_header_id|>\n\n"),
)

# The conversations both renderings must agree on. Contents have no surrounding spaces, so Llama 3's
# trim (which the Go template does not do) is the identity on them.
_WITH_SYSTEM = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is 2 plus 3?"},
                {"role": "assistant", "content": "5."}, {"role": "user", "content": "And 4 plus 1?"}]
_WITHOUT_SYSTEM = [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "Hi."},
                   {"role": "user", "content": "Name a colour."}]


@dataclass
class Translation:
    """What the Modelfile gets from the checkpoint's template: the Go template and SYSTEM, or why not."""

    format: str | None
    go: str | None
    system: str | None
    prefix: str  # text the template writes before the first turn (llmpipe's bos)


def translate(tokenizer: Any) -> Translation:
    """The Go template that renders exactly what the tokenizer's chat template renders on the probe
    conversations, or a Translation with format None when no known format does."""
    try:
        with_system = tokenizer.apply_chat_template(_WITH_SYSTEM, tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(_WITHOUT_SYSTEM, tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError):  # no template, or one that refuses a system turn (Gemma's, Mistral's)
        return Translation(None, None, None, "")
    # A template writes bos itself (llmpipe's) or not; when plain tokenization adds it, llama.cpp adds it too.
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    bos = tokenizer.bos_token or ""
    for fmt in FORMATS:
        for prefix in ("", bos) if bos else ("",):
            if with_system != prefix + fmt.render(_WITH_SYSTEM):
                continue
            system = None
            if fmt.default_system:
                found = re.match(re.escape(prefix) + fmt.default_system, without, re.S)
                system = found.group(1) if found else None
            conversation = ([{"role": "system", "content": system}] if system is not None else []) + _WITHOUT_SYSTEM
            if without == prefix + fmt.render(conversation):
                return Translation(fmt.name, ("" if adds_bos else prefix) + fmt.go, system, prefix)
    return Translation(None, None, None, "")


def modelfile_text(gguf_name: str, tokenizer: Any, context: int) -> tuple[str, str]:
    """(the Modelfile for the GGUF file `gguf_name` in the same folder, a one-line summary of it)."""
    translation = translate(tokenizer)
    lines = ["# Ollama Modelfile written by `llmpipe export --format gguf`.",
             "# Use: ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}", ""]
    if translation.go is not None:
        lines += [f"# The checkpoint's chat template, as the {translation.format} format in Ollama's Go template language:",
                  "# llmpipe checked that both render the same text on test conversations (with and without a",
                  "# system message). The Jinja original is in the GGUF (tokenizer.chat_template) for llama.cpp --jinja.",
                  f'TEMPLATE """{translation.go}"""']
        summary = f"chat template translated as {translation.format}"
        if translation.system is not None:
            lines += ["# The system message the template adds when a conversation has none.", f'SYSTEM """{translation.system}"""']
            summary += " with its default system message"
    elif tokenizer.chat_template:
        lines += ["# The checkpoint's chat template matches none of the formats llmpipe translates to Ollama's Go",
                  "# templates (llmpipe / Phi-3, ChatML, Llama 3), so there is no TEMPLATE line: Ollama picks a template",
                  "# by comparing the GGUF's tokenizer.chat_template with the ones it knows, which may not be this one.",
                  "# Check `ollama show NAME --template`, and write a TEMPLATE here if it differs. The Jinja original:"]
        lines += [f"#   {line}" for line in tokenizer.chat_template.splitlines()]
        summary = "chat template NOT translated (no known format matches; see the comment in the file)"
    else:
        lines += ["# The checkpoint has no chat template (a pretrained-only model): use it for plain completion,",
                  '# e.g. `ollama run NAME "Once upon a time"` after adding TEMPLATE "{{ .Prompt }}" here.']
        summary = "no chat template (plain completion)"
    stops = [t for t in dict.fromkeys((end_of_turn_token(tokenizer), tokenizer.eos_token)) if t]
    lines += ["", "# Reply ends: the template's end-of-turn token and eos."]
    lines += [f'PARAMETER stop "{token}"' for token in stops]
    lines += ["# The context the model was trained for (Ollama's default may be longer).", f"PARAMETER num_ctx {context}"]
    return "\n".join(lines) + "\n", f"{summary}; stops at {', '.join(stops)}; num_ctx {context}"


def write_modelfile(path: Path, gguf_name: str, tokenizer: Any, context: int) -> str:
    """Write the Modelfile (see modelfile_text) to `path`; returns its one-line summary."""
    text, summary = modelfile_text(gguf_name, tokenizer, context)
    Path(path).write_text(text, encoding="utf-8")
    return summary
