"""`llmpipe export --format gguf`: the GPT-2 micro run and Llama/Qwen3 bases written as GGUF, read back
through transformers (which loads GGUF with llama.cpp's `gguf` package) and, where llama-cpp-python is
installed, run by llama.cpp itself: same logits within the type's tolerance, same greedy replies, same
token ids; the tokenizer metadata llama.cpp reads; the Ollama Modelfile's template; a mislaid tensor
caught by the export's own check."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MICRO, invoke

from llmpipe.chat_format import CHAT_TEMPLATE
from llmpipe.core.errors import UserError

PROMPTS = ["What is 2 plus 3?", "Name a colour.", "Tell me about the fox."]
# Greedy tokens compared per prompt (a fixed count: generation does not stop at eos here).
NEW_TOKENS = 12
# Measured max |logit difference| / max |logit| of the read-back against the source (this file's models):
# f16 1e-4 to 3e-4, q8_0 3e-3 to 7e-3; llama.cpp's own f16 run 1e-4 to 4e-4. The checks use the
# tolerances the export itself enforces (llmpipe/export_gguf.py TOLERANCE: f16 0.005, q8_0 0.05).


def _export(source: Path, out: Path, *flags: str):
    result = invoke("export", str(source), "--format", "gguf", "--out", str(out), *flags)
    assert result.exit_code == 0, result.output
    return result


def _base(tmp: Path, family: str, template: str) -> Path:
    """A random tiny `family` model imported as a base stage. Its weights have std 0.1 instead of
    0.02, so every tensor moves the logits: a tensor written in the wrong layout cannot hide."""
    from hf_models import make_model_folder

    folder = make_model_folder(tmp / family, family, template, initializer_range=0.1)
    result = invoke("base", "--from", str(folder), "--out", str(tmp / f"{family}-run"))
    assert result.exit_code == 0, result.output
    return tmp / f"{family}-run" / "base"


@pytest.fixture(scope="module")
def exported(micro_run: Path, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{name: (source stage, .gguf file)}: the micro run's DPO model (GPT-2, llmpipe's tokenizer and
    template) in f16 and q8_0, a Llama base with Llama 3's template and a Qwen3 base with ChatML."""
    tmp = tmp_path_factory.mktemp("gguf")
    sources = {"gpt2-f16": micro_run / "dpo", "gpt2-q8_0": micro_run / "dpo",
               "llama-f16": _base(tmp, "llama", "llama3"), "qwen3-q8_0": _base(tmp, "qwen3", "chatml")}
    files = {}
    for name, source in sources.items():
        result = _export(source, tmp / name, "--quant", name.split("-")[1])
        files[name] = (source, tmp / name / f"{name}-{name.split('-')[1]}.gguf")
        assert files[name][1].is_file(), result.output
    return files


def _chat_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text)["input_ids"]


def _greedy(model, ids: list[int]) -> list[int]:
    import torch

    # The mask is given: inferred from a pad id, it would hide a prompt's bos when the two share an id.
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


def _check_greedy(reference, ids: list[int], reply: list[int], quant: str) -> None:
    """`reply` is the source model's greedy continuation of `ids`, up to near-ties: at every step the token
    chosen is the source's top token, or within the type's tolerance of it. (A random model has steps whose
    two best logits differ by 0.001; rounding to f16 may pick either, and every later token then differs.)"""
    import torch

    from llmpipe.export_gguf import TOLERANCE

    with torch.no_grad():
        logits = reference(torch.tensor([ids + reply])).logits[0, len(ids) - 1:-1]
    slack = TOLERANCE[quant] * logits.abs().max().item()
    chosen = logits.gather(1, torch.tensor(reply).unsqueeze(1)).squeeze(1)
    assert (chosen >= logits.max(dim=1).values - slack).all(), (reply, _greedy(reference, ids))


def test_export_prints_what_it_wrote_and_writes_a_modelfile(micro_run: Path, tmp_path: Path):
    out = tmp_path / "tiny-dpo"
    result = _export(micro_run / "dpo", out, "--quant", "q8_0")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "tiny-dpo-q8_0.gguf"]
    assert re.search(r"tiny-dpo-q8_0\.gguf: gpt2 GGUF, q8_0, [\d.]+ MB \(\d+ f32, \d+ q8_0 tensors\), pre-tokenizer gpt-2; "
                     r"read back through transformers: max logit difference \S+ \(\S+ of the largest logit, tolerance 0\.1\)",
                     result.output), result.output
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./tiny-dpo-q8_0.gguf\n" in modelfile
    # llmpipe's template with its bos, in Go; it ends a reply at <|end|> and eos, within the trained context.
    assert 'TEMPLATE """<|bos|>{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"""' in modelfile
    assert 'PARAMETER stop "<|end|>"\nPARAMETER stop "<|eos|>"\n' in modelfile and "PARAMETER num_ctx 256\n" in modelfile
    assert "SYSTEM" not in modelfile
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_the_gguf_holds_the_tokenizer_llama_cpp_reads(exported):
    from gguf import GGUFReader, TokenType
    from transformers import AutoTokenizer

    source, path = exported["gpt2-f16"]
    fields = GGUFReader(str(path)).fields
    value = {key: fields[key].contents() for key in fields if not key.startswith("tokenizer.ggml.merges")}
    tokenizer = AutoTokenizer.from_pretrained(source)
    assert value["general.architecture"] == "gpt2" and value["gpt2.context_length"] == 256
    assert (value["tokenizer.ggml.model"], value["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert value["tokenizer.ggml.tokens"][:len(tokenizer)] == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<|bos|>", "<|eos|>", "<|pad|>", "<|end|>", "<|user|>")}
    assert (value["tokenizer.ggml.bos_token_id"], value["tokenizer.ggml.eos_token_id"], value["tokenizer.ggml.padding_token_id"],
            value["tokenizer.ggml.eot_token_id"]) == (ids["<|bos|>"], ids["<|eos|>"], ids["<|pad|>"], ids["<|end|>"])
    # Special tokens are control tokens (parsed whole in a prompt, ended on); the template writes bos itself.
    assert {value["tokenizer.ggml.token_type"][i] for i in ids.values()} == {TokenType.CONTROL}
    assert value["tokenizer.ggml.token_type"][tokenizer.convert_tokens_to_ids("Ġthe")] == TokenType.NORMAL
    assert value["tokenizer.ggml.add_bos_token"] is False and value["tokenizer.ggml.add_eos_token"] is False
    assert len(fields["tokenizer.ggml.merges"].data) == len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"])
    # The chat template without the {% generation %} markers only transformers' Jinja knows.
    assert value["tokenizer.chat_template"] == CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")


@pytest.mark.parametrize("name", ["gpt2-f16", "gpt2-q8_0", "llama-f16", "qwen3-q8_0"])
def test_transformers_reads_the_gguf_back_with_the_same_logits_and_replies(exported, name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmpipe.export_gguf import TOLERANCE

    source, path = exported[name]
    family, quant = name.split("-")
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    # transformers' GGUF config mapping drops GPT-2's context and Qwen3's head_dim (see verify_gguf): for
    # those the source's config is given, the weights still come from the file. Llama's comes from the file.
    config = AutoConfig.from_pretrained(source) if family in ("gpt2", "qwen3") else None
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for prompt in PROMPTS:
        ids = _chat_ids(tokenizer, prompt)
        assert _chat_ids(loaded_tokenizer, prompt) == ids  # the GGUF's tokenizer and template give the same ids
        with torch.no_grad():
            want, got = reference(torch.tensor([ids])).logits, loaded(torch.tensor([ids])).logits
        assert (got - want).abs().max().item() <= TOLERANCE[quant] * want.abs().max().item()
        _check_greedy(reference, ids, _greedy(loaded, ids), quant)


def test_a_mislaid_tensor_fails_the_export_check(exported, tmp_path, monkeypatch):
    # Llama's q/k rows written in transformers' rotary order instead of llama.cpp's: the read-back differs
    # by far more than the f16 tolerance (the export must refuse, not write a model that talks nonsense).
    import llmpipe.export_gguf as export_gguf

    monkeypatch.setattr(export_gguf, "_interleave_rope", lambda weight, heads: weight)
    with pytest.raises(RuntimeError, match="logits differ from its source's by"):
        export_gguf.export_gguf(exported["llama-f16"][0], tmp_path / "bad")
    assert not any(tmp_path.iterdir())


def test_modelfile_templates_render_as_the_jinja_templates():
    from hf_models import make_tokenizer

    from llmpipe.modelfile import FORMATS, translate

    expected = {"phi3": ("llmpipe / Phi-3", None, ""), "chatml": ("ChatML", "You are a helpful assistant.", ""),
                "llama3": ("Llama 3", None, "<|begin_of_text|>"), "mistral": (None, None, ""), "gemma": (None, None, "")}
    for template, (fmt, system, prefix) in expected.items():
        translation = translate(make_tokenizer(template))
        assert (translation.format, translation.system, translation.prefix) == (fmt, system, prefix), template
    llmpipe = make_tokenizer("phi3")
    llmpipe.chat_template, llmpipe.bos_token = CHAT_TEMPLATE, "<|endoftext|>"
    assert translate(llmpipe).prefix == "<|endoftext|>" and translate(llmpipe).go.startswith("<|endoftext|>{{- range")
    # Each Go template, run by a minimal interpreter of the constructs it uses, writes what its Python
    # renderer (the one compared with the Jinja template) writes.
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    for fmt in FORMATS:
        assert _run_go(fmt.go, conversation) == fmt.render(conversation), fmt.name


def _run_go(template: str, messages: list[dict[str, str]]) -> str:
    """Ollama's Go template restricted to `{{- range .Messages }} ... {{ .Role }} {{ .Content }} ... {{ end }}`."""
    head, rest = template.split("{{- range .Messages }}")
    body, tail = rest.split("{{ end }}")
    assert "{{" not in head + tail and set(re.findall(r"\{\{.*?\}\}", body)) <= {"{{ .Role }}", "{{ .Content }}"}
    return head.rstrip() + "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
                                   for m in messages) + tail


def test_pre_tokenizers_map_to_llama_cpp_names(tmp_path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from llmpipe.export_gguf import pre_tokenizer

    def named(pre, model=None, decoder=None) -> str:
        bpe = Tokenizer(model or models.BPE(vocab={"a": 0}, merges=[]))
        bpe.pre_tokenizer, bpe.decoder = pre, decoder or decoders.ByteLevel()
        return pre_tokenizer(PreTrainedTokenizerFast(tokenizer_object=bpe), tmp_path)

    assert named(pre_tokenizers.ByteLevel(add_prefix_space=False)) == "gpt-2"
    assert named(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel()])) == "smollm"
    for name in ("llama-bpe", "qwen2"):
        split = pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[name]), behavior="isolated")
        assert named(pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(use_regex=False)])) == name
    with pytest.raises(UserError, match="pre-tokenizer \\(Whitespace\\) is none that GGUF export maps"):
        named(pre_tokenizers.Whitespace())
    with pytest.raises(UserError, match="maps byte-level BPE tokenizers"):  # a sentencepiece-style vocabulary
        named(pre_tokenizers.Metaspace(), models.BPE(vocab={"a": 0}, merges=[], byte_fallback=True), decoders.Metaspace())


_LLAMA_CPP = r"""
import json, sys
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as C

# llama.cpp's CPU "extra buffer types" (AMX / repacked kernels) crash on quantized files on this
# machine, llama.cpp's own Q4_1 SmolLM2 included; the plain kernels (llama-cli --no-repack) are used.
default = C.llama_model_default_params
def params():
    p = default(); p.use_extra_bufts = False; return p
C.llama_model_default_params = params
path, texts, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False, n_threads=2)
rows = []
for text in texts:
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.reset(); llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)])
    reply = []
    for _ in range(n):
        reply.append(int(np.argmax(llm.scores[llm.n_tokens - 1]))); llm.eval([reply[-1]])
    rows.append({"ids": ids, "logits": logits.tolist(), "reply": reply})
print(json.dumps(rows))
"""


@pytest.mark.parametrize("name", ["gpt2-f16", "gpt2-q8_0", "llama-f16", "qwen3-q8_0"])
def test_llama_cpp_runs_the_gguf_like_the_source(exported, name):
    pytest.importorskip("llama_cpp")  # installed in the development venv, not by `pip install .[test]`
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmpipe.export_gguf import TOLERANCE

    source, path = exported[name]
    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]
    # In a child process: a crash inside llama.cpp must fail this test, not end the test session.
    done = subprocess.run([sys.executable, "-c", _LLAMA_CPP, str(path), json.dumps(texts), str(NEW_TOKENS)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for text, row in zip(texts, json.loads(done.stdout), strict=True):
        ids = tokenizer(text)["input_ids"]
        assert row["ids"] == ids  # llama.cpp's tokenizer (vocabulary, merges, pre-tokenizer, specials) is the source's
        with torch.no_grad():
            want = reference(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(np.array(row["logits"]) - want).max() <= TOLERANCE[name.split("-")[1]] * np.abs(want).max()
        _check_greedy(reference, ids, row["reply"], name.split("-")[1])


def test_gguf_bad_requests_are_refused_before_anything_loads():
    from llmpipe.export_gguf import check_request

    assert check_request("gguf", None) == "f16" and check_request("hf", None) is None
    with pytest.raises(UserError, match="unknown GGUF quant type 'q4_k_m'"):
        check_request("gguf", "q4_k_m")
    with pytest.raises(UserError, match="--quant applies to --format gguf only"):
        check_request("hf", "q8_0")
    assert invoke("export", MICRO, "--format", "onnx", "--out", "x").exit_code == 2
