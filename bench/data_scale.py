"""Data at scale: token-shard build throughput, and pretraining peak RSS on a small vs a large corpus.

1. Tokenize-and-pack: a synthetic ~100 MB JSONL corpus through `build_token_shards` (tokenizer
   threads on vs off), tokens/s and MB/s on this machine.
2. Peak RSS of the real `llmpipe pretrain` stage, each run in its own subprocess, on a 10 MB and a
   ~1 GB corpus (`--quick`: 100 MB): with streamed rows and memory-mapped shards the peaks should
   be close. Also the wall time of the data phase (read, clean, tokenize, write shards) and of a
   second run that hits the token cache.

Corpora live in a temporary folder under /tmp and are deleted at the end. Writes
bench/results/data_scale.json and prints a table. Run: `python bench/data_scale.py [--quick]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
LLMPIPE = str(Path(sys.executable).parent / "llmpipe")
MB = 1_000_000


def make_corpus(path: Path, n_bytes: int, seed: int = 0) -> int:
    """Write ~n_bytes of JSONL {"text"} rows: documents of random sentences over Zipf-distributed
    pseudo-words. Every corpus shares one "language" (word list and sentences), so a tokenizer trained
    on one fits the others; `seed` picks the documents. Every document is distinct (dedup keeps them)."""
    import numpy as np

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    zipf = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    sentences = [" ".join(rng.choices(words, cum_weights=zipf, k=rng.randint(5, 20))).capitalize() + "." for _ in range(20000)]
    picks = np.random.default_rng(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            # Draw indices in bulk and write ~4 MB per call: generation runs at ~40 MB/s.
            order, lengths = picks.integers(0, len(sentences), 40_000), picks.integers(3, 40, 2_000)
            rows, pos = [], 0
            for n in lengths:
                if pos + n > len(order) or written >= n_bytes:
                    break
                rows.append(json.dumps({"text": " ".join(sentences[i] for i in order[pos : pos + n])}) + "\n")
                pos += n
                written += len(rows[-1])
            f.write("".join(rows))
    return written


def read_texts(path: Path):
    """Stream the "text" of each JSONL row."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def throughput(corpus: Path, work: Path) -> dict:
    """Time build_token_shards over a generator reading `corpus`, tokenizer threads on and off."""
    from llmpipe.data.shards import build_token_shards
    from llmpipe.stages.tokenizer import train_tokenizer

    sample, size = [], 0
    for text in read_texts(corpus):
        sample.append(text)
        size += len(text.encode("utf-8"))
        if size >= 10 * MB:
            break
    started = time.time()
    tokenizer = train_tokenizer(sample, vocab_size=4096, min_frequency=2)
    out = {"tokenizer_train_seconds": round(time.time() - started, 1), "corpus_mb": round(corpus.stat().st_size / MB, 1)}
    del sample
    started = time.time()
    for _ in read_texts(corpus):
        pass
    out["read_only_seconds"] = round(time.time() - started, 2)
    for workers in (2, 1):
        shutil.rmtree(work / "shards", ignore_errors=True)
        wall, cpu = time.time(), cpu_seconds()
        meta = build_token_shards(read_texts(corpus), tokenizer, work / "shards", num_workers=workers)
        wall, cpu = time.time() - wall, cpu_seconds() - cpu
        out[f"num_workers={workers}"] = {
            "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "tokens_per_s": round(meta["tokens"] / wall), "mb_per_s": round(meta["bytes"] / MB / wall, 2),
            "tokens": meta["tokens"], "bytes_per_token": round(meta["bytes"] / meta["tokens"], 3),
        }
    shutil.rmtree(work / "shards", ignore_errors=True)
    return out


def run_measured(cmd: list[str], env: dict, marker: str) -> dict:
    """Run `cmd`; exact peak RSS from wait4's rusage, and RSS polled every 0.1 s (with children).

    The data phase ends when `marker` appears on stderr; RSS peaks are split at that point."""
    import psutil

    load_before = os.getloadavg()[0]
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    phase = {"data_end": None, "line": None}

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if phase["data_end"] is None and marker in line:
                phase["data_end"], phase["line"] = time.time() - started, line.strip()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    peaks = {"data": 0, "train": 0}
    watched = psutil.Process(proc.pid)
    while True:
        # wait4 reaps exactly this child and returns its own rusage: an exact peak per run (ru_maxrss
        # of RUSAGE_CHILDREN would be a running maximum over every child so far).
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        try:
            rss = sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)])
        except psutil.Error:
            rss = 0
        key = "data" if phase["data_end"] is None else "train"
        peaks[key] = max(peaks[key], rss)
        time.sleep(0.1)
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(lines[-30:]))
    return {
        "wall_seconds": round(time.time() - started, 1),
        "data_phase_seconds": None if phase["data_end"] is None else round(phase["data_end"], 1),
        "peak_rss_mb": round(usage.ru_maxrss * 1024 / MB, 1),  # Linux reports KiB
        "peak_rss_mb_polled": round(max(peaks.values()) / MB, 1),
        # CPU well under 2x wall during the data phase means other processes shared the 2 cores.
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "load_average_before": round(load_before, 2),
        "peak_rss_mb_data_phase": round(peaks["data"] / MB, 1),
        "peak_rss_mb_train_phase": round(peaks["train"] / MB, 1),
        "data_line": phase["line"],
        "log_tail": lines[-3:],
    }


def pretrain_rss(work: Path, corpora: dict[str, Path], small: Path, val: Path, steps: int) -> dict:
    """Train the tokenizer once, then the real pretrain stage on each corpus in its own subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMPIPE_CACHE": str(work / "cache")}
    recipe = "recipes/tiny.yaml"
    run_dir = work / "run"
    subprocess.run([LLMPIPE, "tokenizer", recipe, "--out", str(run_dir), f"tokenizer.train_files={small}",
                    f"tokenizer.validation_files={val}"], cwd=ROOT, env=env, check=True, capture_output=True)
    common = [f"pretrain.validation_files={val}", f"pretrain.max_steps={steps}", "pretrain.eval_every=1000",
              "pretrain.save_every=1000", "pretrain.cleaning.near_dedup=false", "pretrain.cleaning.decontaminate=false"]
    if steps < 20:  # tiny.yaml warms up for 20 steps, which must fit in max_steps
        common.append(f"pretrain.warmup_steps={steps}")
    results = {}
    for name, corpus in corpora.items():
        for attempt in ("first", "cached"):
            if attempt == "cached" and name != list(corpora)[-1]:
                continue  # the cache-hit run only for the largest corpus
            cmd = [LLMPIPE, "pretrain", recipe, "--out", str(work / f"run_{name}_{attempt}"), "--from",
                   str(run_dir / "tokenizer"), f"pretrain.train_files={corpus}", *common]
            say(f"  pretrain on {name} ({attempt}) ...")
            results[f"{name} ({attempt})"] = {"corpus_mb": round(corpus.stat().st_size / MB, 1),
                                              **run_measured(cmd, env, "training tokens in")}
    return results


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="compare 10 MB with 100 MB instead of 1 GB")
    parser.add_argument("--throughput-mb", type=float, default=100, help="corpus size for part 1")
    parser.add_argument("--large-mb", type=float, default=1000, help="the large corpus of part 2")
    parser.add_argument("--steps", type=int, default=20, help="pretrain steps per run")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    large_mb = 100 if args.quick else args.large_mb

    work = Path(tempfile.mkdtemp(prefix="llmpipe-data-scale-", dir="/tmp"))
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "load_average_at_start": os.getloadavg()}, "quick": args.quick}
    try:
        small, val = work / "small.jsonl", work / "val.jsonl"
        make_corpus(small, 10 * MB, seed=1)
        make_corpus(val, 200_000, seed=2)
        mid = work / "mid.jsonl"
        make_corpus(mid, int(args.throughput_mb * MB), seed=3)
        if not args.skip_throughput:
            say(f"throughput: build_token_shards over {args.throughput_mb:.0f} MB ...")
            results["throughput"] = throughput(mid, work)
        if not args.skip_rss:
            if large_mb == args.throughput_mb:
                large = mid
            else:
                large = work / "large.jsonl"
                started = time.time()
                make_corpus(large, int(large_mb * MB), seed=4)
                results["large_corpus_generation_seconds"] = round(time.time() - started, 1)
            say(f"peak RSS: pretrain on 10 MB vs {large_mb:.0f} MB ...")
            rss = pretrain_rss(work, {"10MB": small, f"{large_mb:.0f}MB": large}, small, val, args.steps)
            results["pretrain_rss"] = rss
            first = [v for k, v in rss.items() if k.endswith("(first)")]
            results["peak_rss_ratio_large_over_small"] = round(first[1]["peak_rss_mb"] / first[0]["peak_rss_mb"], 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = ROOT / "bench" / "results" / "data_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    print(f"\nwrote {out.relative_to(ROOT)}")


def print_table(results: dict) -> None:
    if "throughput" in results:
        t = results["throughput"]
        print(f"\nbuild_token_shards on {t['corpus_mb']} MB JSONL (reading alone: {t['read_only_seconds']} s)")
        print(f"{'tokenizer threads':<20}{'seconds':>9}{'cpu s':>8}{'Mtok/s':>8}{'MB/s':>7}")
        for workers in (2, 1):
            r = t[f"num_workers={workers}"]
            print(f"{'on (2)' if workers == 2 else 'off (1)':<20}{r['seconds']:>9}{r['cpu_seconds']:>8}"
                  f"{r['tokens_per_s'] / 1e6:>8.2f}{r['mb_per_s']:>7}")
    if "pretrain_rss" in results:
        print(f"\n{'pretrain run':<22}{'corpus MB':>10}{'peak RSS MB':>12}{'polled data':>12}{'polled train':>13}"
              f"{'data s':>8}{'wall s':>8}")
        for name, r in results["pretrain_rss"].items():
            print(f"{name:<22}{r['corpus_mb']:>10}{r['peak_rss_mb']:>12}{r['peak_rss_mb_data_phase']:>12}"
                  f"{r['peak_rss_mb_train_phase']:>13}{str(r['data_phase_seconds']):>8}{r['wall_seconds']:>8}")
        print(f"peak RSS ratio large/small: {results['peak_rss_ratio_large_over_small']}")


if __name__ == "__main__":
    main()
