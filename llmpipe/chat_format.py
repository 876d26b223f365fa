"""Chat format: llmpipe's special tokens and chat template, loading a chat tokenizer, and the tokens that end a reply.

The template wraps assistant turns in `{% generation %}` ... `{% endgeneration %}` (with the end-of-turn
token inside) so that TRL's assistant-only loss can find them and the model learns to stop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from llmpipe.core.errors import UserError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
END_OF_TURN = "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, END_OF_TURN, *ROLE_TOKENS)

# One line per turn header, the content, then the end-of-turn token. The assistant's content and its
# end-of-turn token are the only tokens that carry loss in SFT.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] }}{{ '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def load_chat_tokenizer(parent_dir: Path) -> Any:
    """The parent's tokenizer, refusing one whose chat template cannot mark assistant turns."""
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    template = tokenizer.chat_template or ""
    if "{% generation %}" not in template:
        raise UserError(
            "tokenizer has no chat template with {% generation %} markers, so assistant-only loss cannot work"
            if template else "tokenizer has no chat template",
            file=str(parent_dir / "tokenizer_config.json"),
            field="chat_template",
            hint="train the tokenizer with 'llmpipe tokenizer', which writes one",
        )
    return tokenizer


def ensure_chat_template(tokenizer: Any) -> list[str]:
    """Give a tokenizer without a chat template llmpipe's, with the special tokens it uses (a pad token
    too when it has none); returns the tokens added (the caller resizes the model's embeddings)."""
    if tokenizer.chat_template:
        return []
    before = set(tokenizer.get_vocab())
    extra = [token for token in (END_OF_TURN, *ROLE_TOKENS) if token not in before]
    specials: dict[str, Any] = {"additional_special_tokens": extra} if extra else {}
    if tokenizer.bos_token is None:
        specials["bos_token"] = BOS
    if tokenizer.eos_token is None:
        specials["eos_token"] = EOS
    if tokenizer.pad_token is None:
        specials["pad_token"] = PAD
    tokenizer.add_special_tokens(specials)
    tokenizer.chat_template = CHAT_TEMPLATE
    return sorted(set(tokenizer.get_vocab()) - before)


def set_generation_stops(model: Any, tokenizer: Any) -> None:
    """Make generate() stop at the end-of-turn token as well as eos, and know the pad id."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.eos_token_id = [end, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def stop_token_ids(model: Any) -> list[int]:
    """The token ids that end a reply, from the model's generation config (see set_generation_stops)."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
