"""`llmpipe export CKPT --format gguf [--quant f16|q8_0] --out DIR`: a GGUF file for llama.cpp and Ollama.

The file is written with the `gguf` package (llama.cpp's own Python writer): llama.cpp's tensor names
(`gguf.get_tensor_name_map`), its hyperparameter keys, and the tokenizer as llama.cpp reads it (the
byte-level BPE vocabulary with each token's type, the merges, bos/eos/pad/end-of-turn ids, the
pre-tokenizer name, and the chat template). Beside it goes an Ollama `Modelfile` (llmpipe/modelfile.py).

Mapped: GPT-2 (llmpipe's `micro`/`tiny` presets), Llama (`micro-llama`, `tiny-llama`, SmolLM2, ...) and
Qwen3 (`micro-qwen3`, ...), each with a byte-level BPE tokenizer; anything else is refused in one line.
Before reporting success the file is read back through transformers (which loads GGUF with the same
package): its logits must match the source's within the tolerance of the chosen type, and its
tokenizer must give the source's token ids and chat rendering.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError

from llmpipe.chat_format import end_of_turn_token
from llmpipe.core.errors import UserError
from llmpipe.export import export
from llmpipe.loading import check_checkpoint
from llmpipe.modelfile import MODELFILE, write_modelfile

FORMATS = ("hf", "gguf")
# --quant: the type of the weight matrices (vectors and norms stay f32, as llama.cpp's converter keeps them).
QUANTS = ("f16", "q8_0")
DEFAULT_QUANT = "f16"
# Largest logit difference accepted between the GGUF (read back through transformers) and its source,
# as a fraction of the source logits' largest magnitude. Measured (bench/gguf_export.py,
# bench/results/gguf_export.json): f16 0.0004-0.0006, q8_0 0.003-0.011 on the micro models and SmolLM2-135M.
# A transposed or mis-permuted tensor gives differences of the order of the logits themselves (> 0.3).
TOLERANCE = {"f16": 0.005, "q8_0": 0.1}
# Hugging Face model_type -> llama.cpp architecture.
ARCHITECTURES = {"gpt2": "gpt2", "llama": "llama", "qwen3": "qwen3"}
# GPT-2's Conv1D layers store (in, out); llama.cpp wants (out, in) as every Linear layer has.
_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# Text whose token ids and chat rendering the read-back tokenizer must reproduce: spaces, digits,
# punctuation, accents and an emoji, to catch a wrong pre-tokenizer or a lost byte.
PROBE_TEXT = "The kettle is red. What is 2 plus 3? Answer:  5!\n\tcafé 1234 don't 🙂"
PROBE_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"},
              {"role": "assistant", "content": "5."}, {"role": "user", "content": "And 4 plus 1?"}]
# `{% generation %}` / `{% endgeneration %}` (any whitespace control): markers only transformers' Jinja
# understands (for the SFT loss mask); llama.cpp's and llama-cpp-python's Jinja would reject them.
_GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def check_request(fmt: str, quant: str | None) -> str | None:
    """The quant type to write (None for --format hf), or a one-line error for a bad --format/--quant."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'", field="--format", hint=f"use one of: {', '.join(FORMATS)}")
    if fmt == "hf":
        if quant is not None:
            raise UserError("--quant applies to --format gguf only (a Hugging Face folder keeps the checkpoint's dtype)",
                            field="--quant", hint="drop --quant, or add --format gguf")
        return None
    quant = DEFAULT_QUANT if quant is None else quant
    if quant not in QUANTS:
        raise UserError(f"unknown GGUF quant type '{quant}'", field="--quant",
                        hint=f"use one of: {', '.join(QUANTS)} (smaller types: llama.cpp's llama-quantize on the f16 file)")
    return quant


def inference_template(template: str | None) -> str | None:
    """The chat template without llmpipe's `{% generation %}` markers: it renders the same text."""
    return None if template is None else _GENERATION_TAGS.sub("", template)


def export_gguf(checkpoint: Path, out: Path, quant: str = DEFAULT_QUANT, merge: bool = False,
                base: Path | None = None) -> dict[str, Any]:
    """Write `out/<out name>-<quant>.gguf` and `out/Modelfile` from a finished stage (or, with
    `merge`, a LoRA adapter merged into its base); returns what was written and measured."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("output folder exists and is not empty", file=str(out), hint="choose a new folder (or empty this one)")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if merge:  # the merged model as the HF export writes it (checked there), then converted
            source = partial / "merged"
            export(checkpoint, source, merge=True, base=base)
        else:
            check_checkpoint(checkpoint, need_template=False)
            source = checkpoint
        tokenizer = AutoTokenizer.from_pretrained(source)
        check_exportable(AutoConfig.from_pretrained(source), tokenizer, source)  # before the weights load
        model = AutoModelForCausalLM.from_pretrained(source).eval()
        partial.mkdir(parents=True, exist_ok=True)
        name = f"{out.name}-{quant}.gguf"
        written = write_gguf(model, tokenizer, source, partial / name, quant, out.name)
        checked = verify_gguf(partial / name, model, tokenizer, quant)
        described = write_modelfile(partial / MODELFILE, name, tokenizer, written["context"])
        if merge:
            shutil.rmtree(source)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return {"out": str(out), "file": str(out / name), "source": str(checkpoint), **written, **checked, "modelfile": described,
            "files": sorted(p.name for p in out.iterdir())}


def check_exportable(config: Any, tokenizer: Any, folder: Path) -> tuple[str, str]:
    """(llama.cpp architecture, pre-tokenizer name) of a model this exporter maps, or a one-line error."""
    config_file = str(Path(folder) / "config.json")
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(f"GGUF export maps {', '.join(ARCHITECTURES)} models; this one is '{model_type}'", file=config_file,
                        field="model_type", hint="export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py")
    if model_type == "gpt2":
        # llama.cpp's GPT-2 graph: tanh-approximated GELU, plain 1/sqrt(head_dim) attention scaling.
        unsupported = {"activation_function": config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"),
                       "scale_attn_weights": not config.scale_attn_weights,
                       "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
                       "reorder_and_upcast_attn": config.reorder_and_upcast_attn}
    else:
        rope = getattr(config, "rope_parameters", None) or {}
        unsupported = {"rope_parameters": rope.get("rope_type", "default") != "default",
                       "attention_bias": getattr(config, "attention_bias", False),
                       "mlp_bias": getattr(config, "mlp_bias", False),
                       "hidden_act": config.hidden_act != "silu",
                       "use_sliding_window": getattr(config, "use_sliding_window", False)}
    for field, refused in unsupported.items():
        if refused:
            raise UserError(f"GGUF export does not map this {model_type} variant ({field} = {getattr(config, field)!r})",
                            file=config_file, field=field, hint="export --format hf and convert it with llama.cpp's converter")
    return ARCHITECTURES[model_type], pre_tokenizer(tokenizer, folder)


def pre_tokenizer(tokenizer: Any, folder: Path) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for how the tokenizer splits text before BPE.

    llama.cpp's converter recognises a pre-tokenizer by hashing the ids of a test string, which only
    works for the released vocabularies it lists; a vocabulary llmpipe trained is new, so the split is
    read from the tokenizer's own description instead."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = backend.get("model") or {}, backend.get("decoder") or {}
    where = str(Path(folder) / "tokenizer.json")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise UserError("GGUF export maps byte-level BPE tokenizers (GPT-2's, llmpipe's, Llama 3's, Qwen's, SmolLM's); "
                        f"this one is {model.get('type')} with a {decoder.get('type')} decoder", file=where, field="model",
                        hint="export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py")
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's split (llmpipe's tokenizer, SmolLM2 as transformers reads it from GGUF)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # SmolLM's hub tokenizer: single digits, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

        pattern = (steps[0].get("pattern") or {}).get("Regex")
        for name in ("llama-bpe", "qwen2"):  # Llama 3's and Qwen2/3's regexes, as transformers reads them back
            if pattern == GGUF_PRE_TOKENIZER_SPLITS[name]:
                return name
    raise UserError(f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is none that GGUF export maps "
                    "(GPT-2's, SmolLM's, Llama 3's, Qwen2's)", file=where, field="pre_tokenizer",
                    hint="export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py")


def write_gguf(model: Any, tokenizer: Any, folder: Path, path: Path, quant: str, name: str) -> dict[str, Any]:
    """Write `model` and its tokenizer (saved in `folder`) as the GGUF file `path`; returns what was written."""
    import gguf

    config = model.config
    arch, pre = check_exportable(config, tokenizer, folder)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_description("exported by llmpipe")
    _hyperparameters(writer, config, arch)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _vocabulary(writer, tokenizer, folder, config.vocab_size, pre)
    types = _tensors(writer, model, arch, quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch, "quant": quant, "pre_tokenizer": pre, "bytes": path.stat().st_size,
            "tensor_types": types, "context": _context(config, arch)}


def _context(config: Any, arch: str) -> int:
    return int(config.n_positions if arch == "gpt2" else config.max_position_embeddings)


def _hyperparameters(writer: Any, config: Any, arch: str) -> None:
    """llama.cpp's hyperparameter keys for the architecture, from the transformers config."""
    writer.add_context_length(_context(config, arch))
    if arch == "gpt2":
        writer.add_block_count(config.n_layer)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _interleave_rope(weight: Any, heads: int) -> Any:
    """Reorder each head's rows of a q/k projection from transformers' rotary layout (the first half
    of a head's dimensions rotates with the second half) to the one llama.cpp's LLAMA graph expects
    (neighbouring dimensions rotate together). Qwen3 uses the first layout in llama.cpp too."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensors(writer: Any, model: Any, arch: str, quant: str) -> dict[str, int]:
    """Add every weight under its llama.cpp name; returns how many tensors of each type were written."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    target = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias")) or (tied and hf_name == "lm_head.weight"):
            continue  # GPT-2's causal-mask buffers; a tied output layer is the embedding (llama.cpp reuses it)
        data = tensor.detach().float()
        if arch == "gpt2" and hf_name.endswith(_CONV1D):
            data = data.t()
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            data = _interleave_rope(data, config.num_attention_heads)
        if arch == "llama" and hf_name.endswith("k_proj.weight"):
            data = _interleave_rope(data, config.num_key_value_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise RuntimeError(f"no llama.cpp name for tensor {hf_name} of a {arch} model")
        array = data.contiguous().numpy()
        # As llama.cpp's converter: vectors, norms and GPT-2's position table stay f32 (its kernels read them so).
        kind = gguf.GGMLQuantizationType.F32 if array.ndim < 2 or name.startswith("position_embd") else target
        try:
            packed = gguf.quants.quantize(array, kind)
        except gguf.QuantError:  # q8_0 needs rows of a multiple of 32 values; such a matrix is written f16
            kind = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(array, kind)
        writer.add_tensor(name, packed, raw_dtype=kind)
        counts[kind.name.lower()] = counts.get(kind.name.lower(), 0) + 1
    return counts


def _vocabulary(writer: Any, tokenizer: Any, folder: Path, vocab_size: int, pre: str) -> None:
    """The tokenizer metadata: tokens with their types, merges, special ids, bos/eos behaviour, template."""
    import gguf

    if len(tokenizer) > vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings",
                        file=str(Path(folder) / "config.json"), field="vocab_size", hint="export the model with its own tokenizer")
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    # Written by hand rather than with gguf.vocab.BpeVocab: that class types a special token that is also
    # in the BPE vocabulary (llmpipe's <|end|>, SmolLM's <|im_end|>) as NORMAL, and llama.cpp would then
    # neither parse it in a prompt nor treat it as control. Rows past the tokenizer (embeddings padded to
    # a round size) are named [PAD<id>], as llama.cpp's converter names them.
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(gguf.TokenType.NORMAL if i not in added else
                     gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # The merges and the bos/eos/unk/pad ids as llama.cpp's converter reads them from the saved tokenizer.
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    # Whether plain tokenization adds bos/eos: measured, since that is what the model saw in training.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    special.chat_template = inference_template(tokenizer.chat_template)
    special.add_to_gguf(writer, quiet=True)
    end = end_of_turn_token(tokenizer) if tokenizer.chat_template else None
    if end is not None and end != tokenizer.eos_token:
        # llama.cpp ends a reply at eos and at the end-of-turn token (eot) when the file names one.
        writer.add_eot_token_id(tokenizer.convert_tokens_to_ids(end))


def verify_gguf(path: Path, model: Any, tokenizer: Any, quant: str) -> dict[str, Any]:
    """Read the file back through transformers and compare it with its source: logits within the
    quant type's tolerance, the same token ids, the same chat rendering. Returns the measurements."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    rendered = _render(tokenizer) if tokenizer.chat_template else None
    for text in (PROBE_TEXT, *([rendered] if rendered else [])):
        expected, got = tokenizer(text)["input_ids"], loaded_tokenizer(text)["input_ids"]
        if expected != got:
            raise RuntimeError(f"the GGUF's tokenizer splits {text[:40]!r} differently: {got[:12]} ... instead of {expected[:12]} ...")
    if rendered and _render(loaded_tokenizer) != rendered:
        raise RuntimeError("the GGUF's chat template renders a conversation differently from the checkpoint's")
    # transformers' GGUF config mapping loses a field of two families: GPT-2's context (it sets n_ctx, not
    # n_positions, so a position table other than 1024 rows fails to load) and Qwen3's head_dim (it skips
    # attention.key_length and falls back to 128). For those the source's config is given; the weights
    # and tokenizer still come from the file. llama.cpp itself reads the keys (tests/test_export_gguf.py).
    config = model.config if model.config.model_type in ("gpt2", "qwen3") else None
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config).eval()
    ids = torch.tensor([tokenizer(PROBE_TEXT)["input_ids"]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits.float()
        got = loaded(input_ids=ids).logits.float()
    diff = (got - reference).abs().max().item()
    relative = diff / reference.abs().max().item()
    if relative > TOLERANCE[quant]:
        raise RuntimeError(f"the GGUF's logits differ from its source's by {relative:.3g} of their largest magnitude "
                           f"(max {diff:.3g}), over the {quant} tolerance {TOLERANCE[quant]}")
    return {"max_logit_diff": diff, "relative_logit_diff": relative, "tolerance": TOLERANCE[quant]}


def _render(tokenizer: Any) -> str | None:
    """The probe conversation as the tokenizer's chat template writes it (None if it refuses a system turn)."""
    try:
        return tokenizer.apply_chat_template(PROBE_CHAT, tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError):
        return None
