"""From data sources to training rows: read, map columns, convert and check, split, clean, mix.

Every source streams row by row, so pretraining text larger than memory flows through to the token
shards; chat and preference rows are small and come back as lists. What was read, skipped and
dropped (and why) is counted in a DataReport that goes to the stage's manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmpipe.core.errors import UserError
from llmpipe.data.clean import RowCleaner, normalize_row, row_text
from llmpipe.data.formats import CONVERTERS
from llmpipe.data.io import SourceRow, file_record, read_rows
from llmpipe.registry import RUN_ORDER, stage_for, stage_spec


@dataclass
class DataReport:
    """Counts for the manifest: rows per source, invalid rows skipped by reason, cleaning drops."""

    sources: list[dict[str, Any]] = field(default_factory=list)
    invalid: Counter = field(default_factory=Counter)
    cleaning: dict[str, int] = field(default_factory=dict)
    validation_rows: int = 0
    train_rows: int = 0

    def to_manifest(self) -> dict[str, Any]:
        """The `data` entry of a manifest."""
        dropped = {f"invalid: {reason}": n for reason, n in self.invalid.items()}
        dropped.update({reason: n for reason, n in self.cleaning.items() if reason != "kept" and n})
        return {"sources": self.sources, "dropped": dropped, "train_rows": self.train_rows,
                "validation_rows": self.validation_rows}


@dataclass
class StageData:
    """Training and validation rows of one stage, with the report of how they were made."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    report: DataReport


def _bucket(row: dict[str, Any], salt: str = "") -> float:
    """A stable number in [0, 1) from a row's content: the same split on every run and machine."""
    digest = hashlib.sha256((salt + json.dumps(row, sort_keys=True, ensure_ascii=False)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _converted(spec: str, kind: str, cfg: Any, report: DataReport | None) -> Iterator[dict[str, Any]]:
    convert = CONVERTERS[kind]
    # Recorded up front and counted as rows arrive, so a reader that stops early (the tokenizer's
    # sample) still leaves a true record of what it read. Only reported passes hash the files:
    # counting and split passes would hash a large corpus again for nothing.
    record: dict[str, Any] = {"rows": 0}
    if report is not None:
        record.update(file_record(spec))
        report.sources.append(record)
    invalid = None
    for raw in read_rows(spec):
        if cfg.columns:
            raw = SourceRow({cfg.columns.get(k, k): v for k, v in raw.data.items()}, raw.file, raw.line)
        try:
            row = convert(raw)
        except UserError as error:
            if cfg.bad_rows == "fail":
                raise
            invalid = invalid or error
            if report is not None:
                report.invalid[f'"{error.field}" {error.what}' if error.field else error.what] += 1
            continue
        record["rows"] += 1
        yield row
    if record["rows"] == 0 and invalid is None:
        raise UserError("holds no usable rows: it has no rows at all", file=spec, hint="give a file with data")
    if record["rows"] == 0:
        # Every row was skipped: say why the first one failed, so that no second run is needed.
        reason = f'"{invalid.field}" {invalid.what}' if invalid.field else invalid.what
        raise UserError(f"holds no usable rows; the first (line {invalid.line}) fails with: {reason}", file=spec,
                        hint="fix the rows, or map their columns with columns={...}")


def _validation_rows(kind: str, cfg: Any, report: DataReport) -> list[dict[str, Any]]:
    if cfg.validation_files:
        rows = [row for spec in cfg.validation_files for row in _converted(spec, kind, cfg, report)]
        for source in report.sources:
            source["split"] = "validation"
    else:  # held out from the train files by content hash
        rows = [row for spec in cfg.train_files for row in _converted(spec, kind, cfg, None)
                if _bucket(row) < cfg.validation_fraction]
        if not rows:
            raise UserError("no rows fall into the validation split", file=cfg.train_files[0],
                            hint="give validation_files, more data, or a larger validation_fraction")
        report.sources.append({"source": f"content-hash split of train_files ({cfg.validation_fraction:.0%})",
                               "split": "validation", "rows": len(rows)})
    report.validation_rows = len(rows)
    return [normalize_row(r) for r in rows] if cfg.cleaning.normalize_unicode else rows


def _copies_per_row(kind: str, cfg: Any) -> list[float]:
    """How many times each train source's rows enter the mix, from the mixture weights.

    Weights are shares of the mix: source i contributes w_i / sum(w) of all rows. Counted on the
    rows before cleaning, so the counting pass is cheap and streams."""
    if not cfg.mixture_weights:
        return [1.0] * len(cfg.train_files)
    counts = [sum(1 for _ in _converted(spec, kind, cfg, None)) for spec in cfg.train_files]
    total, weight_sum = sum(counts), sum(cfg.mixture_weights)
    return [w / weight_sum * total / n for w, n in zip(cfg.mixture_weights, counts)]


def _train_stream(kind: str, cfg: Any, references: list[str], report: DataReport) -> Callable[[], Iterator[dict]]:
    # Invalid rows of the validation files stay counted; the train files' are recounted each pass.
    validation_invalid = dict(report.invalid)

    copies: list[float] = []

    def rows() -> Iterator[dict[str, Any]]:
        if not copies:  # counted on the first pass only: a token-cache hit never reads the corpus
            copies.extend(_copies_per_row(kind, cfg))
        cleaner = RowCleaner(cfg.cleaning, references)
        report.cleaning = cleaner.counts  # live: right even when a reader stops early (tokenizer sample)
        report.sources = [s for s in report.sources if s.get("split") == "validation"]
        report.train_rows = 0
        report.invalid = Counter(validation_invalid)
        for index, (spec, factor) in enumerate(zip(cfg.train_files, copies)):
            start = len(report.sources)
            for number, row in enumerate(_converted(spec, kind, cfg, report)):
                if number == 0:
                    report.sources[start].update(split="train", copies=round(factor, 4))
                if not cfg.validation_files and _bucket(row) < cfg.validation_fraction:
                    continue
                kept, _ = cleaner.check(row)
                if kept is None:
                    continue
                # Whole copies, plus one more for a stable pseudo-random share of the rows.
                n = math.floor(factor) + (_bucket({"i": index, "n": number}, "mix") < factor - math.floor(factor))
                report.train_rows += n
                for _ in range(n):
                    yield kept
        if report.train_rows == 0:
            raise UserError("no training rows left after splitting and cleaning", file=cfg.train_files[0],
                            hint=f"dropped: {dict(report.cleaning)}")

    return rows


def load_rows(kind: str, cfg: Any, references: list[str] = ()) -> StageData:
    """All rows of a chat or preference stage (or tokenizer text), checked, split, cleaned, mixed."""
    report = DataReport()
    validation = _validation_rows(kind, cfg, report)
    train = list(_train_stream(kind, cfg, _with_own(references, validation, cfg), report)())
    return StageData(train=train, validation=validation, report=report)


def validation_rows(kind: str, cfg: Any) -> list[dict[str, Any]]:
    """The held-out rows of `cfg` read as `kind`, without a pass over the train files (an RL stage
    reads its validation files again as preference pairs, where they are pairs)."""
    return _validation_rows(kind, cfg, DataReport())


@dataclass
class TextStream:
    """Pretraining text: held-out rows in memory, training rows as a stream that can be replayed."""

    validation: list[dict[str, Any]]
    train: Callable[[], Iterator[dict[str, Any]]]
    report: DataReport


def stream_text(cfg: Any, references: list[str] = ()) -> TextStream:
    """Pretraining text that never has to fit in memory; `train()` starts a fresh pass."""
    report = DataReport()
    validation = _validation_rows("text", cfg, report)
    return TextStream(validation=validation, train=_train_stream("text", cfg, list(references), report), report=report)


def _with_own(references: list[str], validation: list[dict[str, Any]], cfg: Any) -> list[str]:
    return list(references) + [row_text(r) for r in validation] if cfg.cleaning.decontaminate else list(references)


def heldout_texts(recipe: Any) -> list[str]:
    """Texts of the run's held-out chat, preference and prompt rows (explicit validation files only).

    Every stage's training rows are decontaminated against them. Pretraining is not checked against
    its own held-out split: text split at random shares boilerplate n-grams with itself."""
    texts = []
    method = recipe.align.method
    # Every stage of the run that reads rows (not text), with the stages its align method trains first
    # (rlhf: the reward model's held-out pairs).
    specs = [stage_for(section, method) for section in RUN_ORDER]
    specs += [stage_spec(first) for first in stage_spec(method).trains_first]
    sections = [(spec.data, getattr(recipe, spec.section)) for spec in specs if spec.data != "text"]
    for kind, cfg in sections:
        for spec in cfg.validation_files:
            texts += [row_text(r) for r in _converted(spec, kind, cfg, None)]
    return texts
