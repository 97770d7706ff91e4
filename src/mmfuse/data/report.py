"""What loading a split found: counts, and every defect met with what was done about it."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from mmfuse.data.example import Example

_SHOW = 5  # items listed per problem kind in summaries


@dataclass(frozen=True)
class Problem:
    """One defect: where it is, the example id when known, the cause, and the file involved.

    Attributes:
        where: location in the split file (``"line 12"``, ``"row 5 (line 7)"``).
        id: example id, when the row got that far.
        reason: what is wrong (or, for fallback-decoded texts, the encoding used).
        path: the image or text file concerned, if any.
    """

    where: str
    id: str | None
    reason: str
    path: str | None = None

    def __str__(self) -> str:
        name = f"id {self.id}" if self.id is not None else self.where
        return f"{name}: {self.reason}" + (f" [{self.path}]" if self.path else "")


@dataclass
class SplitReport:
    """Counts and defects of one split.

    Attributes:
        name: ``train``, ``val``, ``test`` (or the file stem for :func:`~mmfuse.data.load_examples`).
        source: the file it was read from, and how it was carved when it comes from a seeded split.
        labeled: whether the examples carry labels.
        rows: non-blank rows read from the file (for a carved split: the examples it received).
        examples: examples kept.
        bad_rows: rows dropped as unreadable (``on_bad_row: skip``).
        duplicate_ids: later rows with an id already seen (kept: ids need not be unique), and how they differ from
            the first row with that id.
        same_images: examples whose image file has the same bytes as an earlier example's (kept), with whether
            the text is the same too and whether the labels conflict.
        skipped_images: examples dropped for a missing/unreadable image (``on_missing_image: skip``).
        blank_images: examples kept with a blank image (``on_missing_image: blank``).
        extension_mismatches: images whose content is another format than their extension says (kept).
        fallback_texts: texts that were not UTF-8; ``reason`` is the encoding that decoded them.
        replacement_chars: texts holding U+FFFD, the mark of text already mangled upstream (kept).
        file_encoding: the encoding the split file itself needed when it is not UTF-8.
        label_counts: examples per class.
        text_lengths: min / median / mean / max text length in characters.
        empty_texts: examples with empty text (valid, counted).
        notes: other findings (ids shared with another split, unstratified split, ...).
        fatal: reasons the split cannot be used; empty when it can.
    """

    name: str
    source: str
    labeled: bool
    rows: int = 0
    examples: int = 0
    bad_rows: list[Problem] = field(default_factory=list)
    duplicate_ids: list[Problem] = field(default_factory=list)
    same_images: list[Problem] = field(default_factory=list)
    skipped_images: list[Problem] = field(default_factory=list)
    blank_images: list[Problem] = field(default_factory=list)
    extension_mismatches: list[Problem] = field(default_factory=list)
    fallback_texts: list[Problem] = field(default_factory=list)
    replacement_chars: list[Problem] = field(default_factory=list)
    file_encoding: str | None = None
    label_counts: dict[str, int] = field(default_factory=dict)
    text_lengths: dict[str, float] = field(default_factory=dict)
    empty_texts: int = 0
    notes: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.fatal

    def count_examples(self, examples: list[Example]) -> None:
        """Fills the counts that depend only on the kept examples."""
        self.examples = len(examples)
        counts = Counter(e.label for e in examples if e.label is not None)
        self.label_counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        lengths = [len(e.text) for e in examples]
        self.empty_texts = sum(n == 0 for n in lengths)
        self.text_lengths = (
            {
                "min": min(lengths),
                "median": float(statistics.median(lengths)),
                "mean": round(statistics.fmean(lengths), 1),
                "max": max(lengths),
            }
            if lengths
            else {}
        )

    def problem_lists(self) -> dict[str, list[Problem]]:
        """Every non-empty list of problems by field name, in reading order."""
        names = (
            "bad_rows",
            "duplicate_ids",
            "same_images",
            "skipped_images",
            "blank_images",
            "extension_mismatches",
            "fallback_texts",
            "replacement_chars",
        )
        return {n: getattr(self, n) for n in names if getattr(self, n)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for ``mmfuse data check --json`` and run records)."""
        out = asdict(self)
        out["usable"] = self.usable
        return out

    def summary(self) -> str:
        """Human-readable, a few lines: counts, label balance, then each kind of problem with the first few."""
        lines = [f"{self.name}: {self.examples} examples from {self.rows} rows of {self.source}"]
        if self.labeled and self.examples:
            balance = ", ".join(f"{k} {v} ({v / self.examples:.0%})" for k, v in self.label_counts.items())
            lines.append(f"  labels: {balance}")
        elif not self.labeled:
            lines.append("  unlabeled")
        if self.text_lengths:
            t = self.text_lengths
            lines.append(
                f"  text length: min {t['min']}, median {t['median']:g}, max {t['max']}; {self.empty_texts} empty"
            )
        if self.file_encoding:
            lines.append(f"  file is not UTF-8: decoded as {self.file_encoding}")
        for kind, problems in self.problem_lists().items():
            shown = "; ".join(str(p) for p in problems[:_SHOW])
            more = f"; ... {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
            lines.append(f"  {kind.replace('_', ' ')}: {len(problems)} ({shown}{more})")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.extend(f"  UNUSABLE: {f}" for f in self.fatal)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
