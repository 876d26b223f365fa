"""Tiny Hugging Face model folders of real families, for tests that start from a model llmpipe did not train.

`make_model_folder(tmp, family="llama", template="llama3")` writes what a user downloads from the hub:
config.json, model.safetensors, generation_config.json and a tokenizer with that family's chat template
and special tokens. The templates below are written here from the formats' documentation (the turn
markers each family uses), not copied from the models' repositories; like the real ones, none has
`{% generation %}` markers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The chat formats users bring. Each reproduces its family's turn layout: which tokens open and close a
# turn, where the end-of-turn token sits relative to the reply, what a generation prompt adds.
TEMPLATES: dict[str, str] = {
    # Qwen, SmolLM: <|im_start|>role\n ... <|im_end|>\n; SmolLM adds a default system turn when none is given.
    "chatml": (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Llama 3: a header per turn, two newlines, the content trimmed, <|eot_id|>.
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Mistral (v1-style): [INST] user [/INST] reply</s>; a system message is folded into the first user turn.
    "mistral": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\n\n' %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first %}{{ '[INST] ' + system + message['content'] + ' [/INST]' }}"
        "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # Gemma: <start_of_turn>user|model\n ... <end_of_turn>\n; no system role (folded into the first user turn).
    "gemma": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\n\n' %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    # Phi-3: <|role|>\n ... <|end|>\n.
    "phi3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}

# Special tokens per template, and which of them play bos / eos / pad and end a turn.
SPECIALS: dict[str, dict[str, Any]] = {
    "chatml": {"tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "bos": None, "eos": "<|im_end|>",
               "pad": "<|endoftext|>", "end_of_turn": "<|im_end|>"},
    "llama3": {"tokens": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                          "<|finetune_right_pad_id|>"],
               "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": "<|finetune_right_pad_id|>", "end_of_turn": "<|eot_id|>"},
    "mistral": {"tokens": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "bos": "<s>", "eos": "</s>", "pad": "<unk>",
                "end_of_turn": "</s>"},
    "gemma": {"tokens": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "bos": "<bos>", "eos": "<eos>",
              "pad": "<pad>", "end_of_turn": "<end_of_turn>"},
    "phi3": {"tokens": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "bos": None,
             "eos": "<|endoftext|>", "pad": "<|endoftext|>", "end_of_turn": "<|end|>"},
    # A base model without a chat template (a pretrained-only checkpoint).
    "none": {"tokens": ["<|endoftext|>"], "bos": None, "eos": "<|endoftext|>", "pad": None, "end_of_turn": None},
}

SAMPLE_TEXT = [
    "The kettle is blue. The cup is red. What colour is the kettle? The kettle is blue.",
    "Question: What is 2 plus 3? Answer: 5. Question: What is 4 plus 1? Answer: 5.",
    "Once upon a time there was a small fox who lived by the river and liked to read.",
] * 20


def make_tokenizer(template: str, vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer with `template`'s special tokens and chat template ('none': no template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = SPECIALS[template]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["tokens"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(SAMPLE_TEXT, trainer=trainer)
    named = {k: spec[k] for k in ("bos", "eos", "pad") if spec[k]}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **{f"{k}_token": v for k, v in named.items()})
    if template != "none":
        tokenizer.chat_template = TEMPLATES[template]
    return tokenizer


def model_config(family: str, tokenizer: Any, **overrides: Any) -> Any:
    """A tiny transformers config of `family` (llama, qwen3, phi3, gpt2) sized to the tokenizer."""
    from transformers import GPT2Config, LlamaConfig, Phi3Config, Qwen3Config

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if family == "gpt2":
        return GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2, **ids, **overrides)
    kind = {"llama": LlamaConfig, "qwen3": Qwen3Config, "phi3": Phi3Config}[family]
    shape = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
             "tie_word_embeddings": True}
    if family == "qwen3":
        shape["head_dim"] = 8
    return kind(**{**shape, **ids, **overrides})


def make_model_folder(folder: Path, family: str = "llama", template: str = "chatml", seed: int = 0,
                      licence: str | None = "apache-2.0", **overrides: Any) -> Path:
    """Write a random tiny `family` model with `template`'s tokenizer into `folder` (as a hub download looks)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(template)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(family, tokenizer, **overrides))
    end = SPECIALS[template]["end_of_turn"]
    if end:
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(end)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if licence:
        (folder / "README.md").write_text(f"---\nlicense: {licence}\n---\n# A tiny {family} model for tests\n", encoding="utf-8")
    return folder


def edit_config(folder: Path, **changes: Any) -> None:
    """Change keys of a model folder's config.json (for bad-input tests)."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(changes)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
