"""Dedup throughput: RowCleaner with MinHash/LSH near-dedup vs exact dedup only, on planted duplicates.

Generates N synthetic documents of ~200 Zipf-distributed pseudo-words (deterministic for a seed).
A fixed share are near-copies of an earlier original with a few words changed, another share exact
copies. Each configuration cleans the same documents; the table shows throughput and how many of
the planted duplicates each found (and any original wrongly dropped). Writes
bench/results/dedup_throughput.json. Run: `python bench/dedup_throughput.py [--docs 20000]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmpipe.config import CleaningConfig  # noqa: E402  (after the path set-up)


def shingle_jaccard(a: list[str], b: list[str], n: int = 5) -> float:
    """True Jaccard similarity of two documents' word n-gram sets (what MinHash estimates)."""
    sa = {tuple(a[i : i + n]) for i in range(len(a) - n + 1)}
    sb = {tuple(b[i : i + n]) for i in range(len(b) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def make_corpus(n: int, words: int, near_share: float, exact_share: float, changed: int, seed: int):
    """Documents, their planted labels ("original", "near", "exact") and each near-copy's true
    Jaccard similarity to its source; deterministic for `seed`."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "dr"]
    vocab = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(30_000)})
    weights = [1 / (rank + 1) for rank in range(len(vocab))]  # Zipf: realistic common-word overlap
    # Copies are spread evenly (every 1/share-th document) so the share is exact, not sampled.
    near_every = round(1 / near_share) if near_share else 0
    exact_every = round(1 / exact_share) if exact_share else 0
    docs: list[str] = []
    labels: list[str] = []
    originals: list[list[str]] = []
    near_jaccard: list[float] = []
    for i in range(n):
        if originals and exact_every and i % exact_every == 1:
            docs.append(" ".join(rng.choice(originals)))
            labels.append("exact")
        elif originals and near_every and i % near_every == 2:
            source = rng.choice(originals)
            copy = list(source)
            for pos in rng.sample(range(len(copy)), changed):
                copy[pos] = rng.choice(vocab)
            near_jaccard.append(shingle_jaccard(source, copy))
            docs.append(" ".join(copy))
            labels.append("near")
        else:
            doc = rng.choices(vocab, weights=weights, k=words)
            originals.append(doc)
            docs.append(" ".join(doc))
            labels.append("original")
    return docs, labels, near_jaccard


def run(docs: list[str], labels: list[str], cfg: CleaningConfig, references: list[str]) -> dict:
    """Clean `docs` with `cfg`; seconds include building the cleaner (LSH setup, reference hashing)."""
    from llmpipe.data.clean import RowCleaner

    start = time.perf_counter()
    cleaner = RowCleaner(cfg, references)
    reasons = [cleaner.check({"text": d})[1] for d in docs]
    seconds = time.perf_counter() - start
    found = {kind: sum(1 for r, lab in zip(reasons, labels) if lab == kind and r is not None) for kind in ("exact", "near")}
    return {
        "documents": len(docs),
        "seconds": round(seconds, 3),
        "documents_per_second": round(len(docs) / seconds, 1),
        "counts": dict(cleaner.counts),
        "exact_copies_dropped": found["exact"],
        "near_copies_dropped": found["near"],
        "originals_dropped": sum(1 for r, lab in zip(reasons, labels) if lab == "original" and r is not None),
    }


def main() -> None:
    """Parse arguments, run both configurations, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--words", type=int, default=200, help="words per document")
    parser.add_argument("--near-share", type=float, default=0.10, help="share of near-copies")
    parser.add_argument("--exact-share", type=float, default=0.05, help="share of exact copies")
    parser.add_argument("--changed-words", type=int, default=3, help="words changed in each near-copy")
    parser.add_argument("--references", type=int, default=1000,
                        help="also time decontamination against this many held-out reference documents (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dedup_throughput.json")
    args = parser.parse_args()

    docs, labels, near_jaccard = make_corpus(
        args.docs, args.words, args.near_share, args.exact_share, args.changed_words, args.seed)
    # Held-out references from another seed: independent text, so nothing should be contaminated.
    references = make_corpus(args.references, args.words, 0, 0, 0, args.seed + 1)[0] if args.references else []
    jaccard = {"mean": round(sum(near_jaccard) / len(near_jaccard), 3), "min": round(min(near_jaccard), 3),
               "max": round(max(near_jaccard), 3)} if near_jaccard else {}
    planted = {kind: labels.count(kind) for kind in ("original", "near", "exact")}

    # Import datasketch (numpy, scipy: ~0.7 s) before timing: a one-off cost, not throughput.
    start = time.perf_counter()
    import datasketch  # noqa: F401

    import_seconds = time.perf_counter() - start
    configs = {"exact_only": CleaningConfig(), "exact_and_near": CleaningConfig(near_dedup=True)}
    if references:
        configs["exact_and_decontaminate"] = CleaningConfig()
    results = {}
    for name, cfg in configs.items():
        results[name] = run(docs, labels, cfg, references if name == "exact_and_decontaminate" else [])

    header = f"{'config':<24}{'docs':>8}{'seconds':>9}{'docs/s':>10}{'exact found':>13}{'near found':>12}{'orig. dropped':>15}"
    print(f"planted: {planted['exact']} exact copies, {planted['near']} near-copies "
          f"({args.changed_words} of {args.words} words changed; true 5-gram Jaccard to source "
          f"mean {jaccard.get('mean')}, min {jaccard.get('min')}, max {jaccard.get('max')}), {planted['original']} originals")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<24}{r['documents']:>8}{r['seconds']:>9.2f}{r['documents_per_second']:>10.0f}"
              f"{r['exact_copies_dropped']:>8}/{planted['exact']:<4}{r['near_copies_dropped']:>7}/{planted['near']:<4}"
              f"{r['originals_dropped']:>15}")
    ratio = results["exact_and_near"]["seconds"] / results["exact_only"]["seconds"]
    print(f"near-dedup costs {ratio:.2f}x the time of exact dedup alone (plus {import_seconds:.2f} s to import datasketch once)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "dedup_throughput",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "near_dedup": {"threshold": CleaningConfig().near_dedup_threshold, "ngram": CleaningConfig().near_dedup_ngram,
                       "permutations": CleaningConfig().near_dedup_permutations},
        "planted": planted,
        "near_copy_true_jaccard": jaccard,
        "results": results,
        "ratio_near_over_exact_only": round(ratio, 3),
        "datasketch_import_seconds": round(import_seconds, 3),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
