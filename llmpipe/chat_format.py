"""Chat format: llmpipe's special tokens and chat template, loading a chat tokenizer of any family, which
tokens of a conversation carry loss, and the tokens that end a reply.

llmpipe's own template wraps assistant turns in `{% generation %}` ... `{% endgeneration %}` (with the
end-of-turn token inside), so transformers' assistant-token mask finds them. The templates users bring
with a base model (ChatML, Llama 3, Mistral, Gemma, Phi-3, ...) have no such markers; for them the
reply spans are found by rendering prefixes of the conversation (`reply_spans`). Either way,
`assistant_mask` is the one answer to "which tokens does SFT train on", and SFT, held-out chat loss and
`data check` all ask it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
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

# `{% generation %}` with Jinja's whitespace-control variants (`{%- generation -%}`), as TRL matches it.
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
# The conversation end_of_turn_token renders to see what a template writes after a reply.
_PROBE = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "llmpipe probe reply"}]
# Two exchanges: load_chat_tokenizer masks them once so that a template that cannot be masked fails when
# the stage starts, not halfway through tokenizing the data. No system message: some templates refuse one.
_CHECK = [{"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again"},
          {"role": "assistant", "content": "Hello again."}]


def has_generation_markers(template: Any) -> bool:
    """True when a chat template marks assistant turns with `{% generation %}` (llmpipe's does)."""
    if isinstance(template, dict):  # a template shipped as named variants: the default one is used
        template = template.get("default", "")
    return bool(template) and _GENERATION_MARKER.search(template) is not None


def template_file(tokenizer: Any) -> str | None:
    """Where the tokenizer's chat template lives, for error messages: the folder's chat_template.jinja,
    else its tokenizer_config.json (older hub models keep it there), else the tokenizer's name."""
    name = getattr(tokenizer, "name_or_path", "") or ""
    if name and Path(name).is_dir():
        jinja = Path(name) / "chat_template.jinja"
        return str(jinja if jinja.is_file() else Path(name) / "tokenizer_config.json")
    return name or None


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it; a template that refuses it is a UserError."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise _refused(tokenizer, e) from e


def _refused(tokenizer: Any, error: Exception) -> UserError:
    """A template's own refusal (raise_exception, a missing key) as a UserError naming the template."""
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    return UserError(f"the chat template cannot render this conversation: {reason}", file=template_file(tokenizer),
                     field="chat_template", hint="check the roles your data uses against the ones the template accepts")


def reply_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character span of each assistant reply in it), for a template
    without `{% generation %}` markers.

    For assistant turn i, P renders messages[:i] with the generation prompt and S renders messages[:i+1];
    the reply is S[len(P):]: what the model writes after the prompt it is given at inference, its
    end-of-turn token included. Whitespace after the end-of-turn token (ChatML's, Gemma's newline) is
    left out: it belongs to the frame between turns, and the model stops before it. This needs the
    template to be prefix-preserving (the whole rendering starts with S, S with P); one that rewrites
    earlier turns depending on what follows cannot be masked this way, and says so."""
    full = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:  # transformers renders no empty conversation, so nothing says where the reply starts
            raise UserError("conversation starts with the assistant's reply, which this chat template cannot mark",
                            file=template_file(tokenizer), field="chat_template",
                            hint="start each conversation with a user (or system) turn")
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise UserError(
                f"chat template is not prefix-preserving (the rendering up to assistant turn {i} is not how the whole "
                "conversation starts), so the reply's tokens cannot be found",
                file=template_file(tokenizer), field="chat_template",
                hint="use a template that renders earlier turns the same whatever follows, or mark replies with "
                     "{% generation %} ... {% endgeneration %}")
        end = len(upto.rstrip())
        if end <= len(prompt):
            raise UserError(f"chat template renders nothing for assistant turn {i}", file=template_file(tokenizer),
                            field="chat_template", hint="use the template the model was trained with")
        spans.append((len(prompt), end))
    return full, spans


def assistant_mask(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(input_ids, mask) of a conversation: mask is 1 on the tokens SFT trains on, each assistant reply
    with its end-of-turn token, 0 elsewhere.

    With `{% generation %}` markers (llmpipe's template) this is transformers' assistant-token mask;
    otherwise the reply spans come from rendering prefixes (`reply_spans`). Both tokenize the rendered
    text without adding special tokens (templates write bos themselves) and mark every token that
    overlaps a reply, so input_ids are what apply_chat_template(tokenize=True) gives."""
    if has_generation_markers(tokenizer.chat_template):
        try:
            out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        except TemplateError as e:
            raise _refused(tokenizer, e) from e
        return list(out["input_ids"]), list(out["assistant_masks"])
    full, spans = reply_spans(tokenizer, messages)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [0] * len(encoded["input_ids"])
    # Spans and token offsets are both in order: one pass, as transformers' own mask does.
    span = 0
    for token, (start, end) in enumerate(encoded["offset_mapping"]):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if end > spans[span][0]:
            mask[token] = 1
    return list(encoded["input_ids"]), mask


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The token that ends an assistant turn in the tokenizer's chat template (llmpipe's `<|end|>`,
    ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`, Mistral's `</s>`, ...), else its eos token.

    Found by rendering a one-reply conversation and reading the first token after the reply, when that
    is a special token: the template, not a table of families, says how a turn ends."""
    if not tokenizer.chat_template:
        return tokenizer.eos_token
    text = render(tokenizer, _PROBE)
    at = text.rfind(_PROBE[-1]["content"])
    if at >= 0:
        after = tokenizer(text[at + len(_PROBE[-1]["content"]):], add_special_tokens=False)["input_ids"]
        if after and after[0] in tokenizer.added_tokens_decoder and tokenizer.added_tokens_decoder[after[0]].special:
            return tokenizer.convert_ids_to_tokens(after[0])
    return tokenizer.eos_token


def load_chat_tokenizer(parent_dir: Path) -> Any:
    """The parent's tokenizer, with any chat template whose assistant turns can be masked; a tokenizer
    without a pad token pads with eos (every batch of a chat stage is padded)."""
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    if not tokenizer.chat_template:
        raise UserError(
            "tokenizer has no chat template",
            file=str(parent_dir / "tokenizer_config.json"),
            field="chat_template",
            hint="train the tokenizer with 'llmpipe tokenizer', which writes one (a base model without one gets "
                 "llmpipe's template when the base stage imports it)",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    assistant_mask(tokenizer, _CHECK)  # a template that cannot be masked fails here, with its reason
    return tokenizer


def ensure_chat_template(tokenizer: Any) -> dict[str, Any]:
    """Give a tokenizer without a chat template llmpipe's (CHAT_TEMPLATE) and the special tokens it
    writes: the role tokens, the end-of-turn token and a pad token when there is none. Returns what
    was added ({} for a tokenizer that has a template: it is kept as it is) for the manifest:
    {"chat_template": "llmpipe", "added_tokens": [...], "pad_token": str | None, "vocab_size": int}.

    The model's embeddings must then grow to the new vocabulary: `resize_for_tokenizer(model, tokenizer)`.
    A tokenizer without bos renders the template's `{{ bos_token }}` as nothing."""
    if tokenizer.chat_template:
        return {}
    vocab = tokenizer.get_vocab()
    added = [t for t in (END_OF_TURN, *ROLE_TOKENS) if t not in vocab]
    tokenizer.add_tokens(added, special_tokens=True)
    pad = None
    if tokenizer.pad_token is None:
        pad = PAD
        tokenizer.add_special_tokens({"pad_token": PAD})
        if PAD not in vocab:
            added.append(PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    return {"chat_template": "llmpipe", "added_tokens": added, "pad_token": pad, "vocab_size": len(tokenizer)}


def resize_for_tokenizer(model: Any, tokenizer: Any) -> int | None:
    """Grow the model's token embeddings (and a tied or separate LM head) to the tokenizer's vocabulary;
    returns the new size, or None when the model already covers it. New rows start at the mean of the
    old ones (transformers' mean_resizing), so a new token is not a random outlier for the first steps.
    Also sets the pad id and the stop tokens the tokenizer now implies."""
    size = model.get_input_embeddings().weight.shape[0]
    resized = None
    if len(tokenizer) > size:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        resized = len(tokenizer)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    set_generation_stops(model, tokenizer)
    return resized


def set_generation_stops(model: Any, tokenizer: Any) -> None:
    """Make generate() stop at the template's end-of-turn token as well as eos, and know the pad id
    (eos when the tokenizer has no pad token)."""
    end = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)) if tokenizer.chat_template else None
    stops = list(dict.fromkeys(i for i in (end, tokenizer.eos_token_id) if i is not None))
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def stop_token_ids(model: Any) -> list[int]:
    """The token ids that end a reply, from the model's generation config (see set_generation_stops)."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def prompt_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of a chat prompt as generation sees it: rendered by the template, with the assistant's
    generation prompt at the end (what TRL's RL trainers and llmpipe's replies feed the model)."""
    return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))


def reply_suffix_length(tokenizer: Any) -> int:
    """Tokens the chat template adds after a reply's text when the conversation is rendered whole (the
    end-of-turn token and what follows it): what a reward model sees beyond the generated tokens, since TRL's
    RL trainers decode each completion without special tokens and render prompt + completion again."""
    prompt = [{"role": "user", "content": "Hi"}]
    text = tokenizer.encode("x", add_special_tokens=False)
    whole = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": "x"}], tokenize=True, return_dict=False)
    return max(0, len(whole) - prompt_length(tokenizer, prompt) - len(text))


def fit_prompt(tokenizer: Any, messages: list[dict[str, str]], budget: int) -> list[dict[str, str]] | None:
    """The prompt's most recent turns that fit in `budget` tokens, or None when even its last message does not.

    The oldest turns go first, a user message together with the reply to it so that roles keep
    alternating, and a leading system message stays (as `llmpipe chat` does when a conversation outgrows
    the context). Whole messages, not tokens cut from the left: a prompt cut mid-message would start
    without its template's opening (bos, a role header), a shape the model never saw in SFT."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    history = list(messages[len(head):])
    while prompt_length(tokenizer, head + history) > budget:
        if len(history) <= 1:
            return None
        cut = 2 if len(history) > 2 and history[1]["role"] == "assistant" else 1
        del history[:cut]
    return head + history


def fit_for_replies(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference rows (pairs, or unpaired rows with a `completion`) whose prompts lost their oldest turns
    (fit_prompt) until the longest reply fits after the prompt in `max_length` tokens; a row whose reply does
    not fit even after the last message alone keeps only that message, so that as much of the reply as
    possible survives. Returns the rows and {rows, shortened, reply_cut} for the manifest.

    TRL's preference trainers cut a pair that is too long at its end (`truncation_mode` keep_start; keep_end is
    deprecated), which removes the replies, the only tokens DPO learns from, and keeps the prompt's oldest turns.
    Measured on hh-rlhf helpful (600 training pairs; the README own-data run's 4096-token BPE of English text; max_length
    256): cut at the end, 44% of the pairs lose part of a reply and 27% all of both; fitted, 7% lose part of one."""
    kept, shortened, cut = [], 0, 0
    for row in rows:
        replies = [row[key] for key in ("chosen", "rejected", "completion") if key in row]
        longest = max((_reply_length(tokenizer, row["prompt"], reply) for reply in replies), default=0)
        prompt = row["prompt"]
        if prompt_length(tokenizer, prompt) + longest > max_length:
            fitted = fit_prompt(tokenizer, prompt, max_length - longest)
            if fitted is None:  # the reply does not fit even after the last message alone
                fitted = prompt[:1] + prompt[-1:] if prompt[0]["role"] == "system" and len(prompt) > 1 else prompt[-1:]
                cut += 1
            shortened += len(fitted) < len(prompt)
            prompt = fitted
        kept.append({**row, "prompt": prompt})
    return kept, {"rows": len(rows), "shortened": shortened, "reply_cut": cut}


def _reply_length(tokenizer: Any, prompt: list[dict[str, str]], reply: list[dict[str, str]]) -> int:
    """Tokens the reply adds after the prompt's last message, rendered by the chat template."""
    last = prompt[-1:]
    return len(tokenizer.apply_chat_template(last + reply, tokenize=True, return_dict=False)) - prompt_length(tokenizer, last)
