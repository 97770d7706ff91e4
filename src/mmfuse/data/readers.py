"""Reading split files into raw rows (field name -> value) with their location in the file.

JSONL (one object a line; a ``.json`` file holding one array of objects is read too), CSV/TSV with any
delimiter and quoted fields, and Parquet (``pandas.read_parquet``; typed columns, so a cell may hold a number, a list
or an image's ``{"bytes", "path"}``). The ``csv`` module is used rather than pandas for text files because a broken
row must be reported with its line number and skipped on its own, not abort the whole file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfuse.data.text import decode_text

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
_SNIFF_DELIMITERS = ",;\t|"


class BadRowError(ValueError):
    """A row that cannot become an example; the message names the file, the row and what is wrong."""

    def __init__(self, path: Path | str, where: str, reason: str, fix: str = "") -> None:
        self.path = Path(path)
        self.where = where
        self.reason = reason
        super().__init__(f"{str(path)!r}, {where}: {reason}" + (f"; {fix}" if fix else ""))


class MissingColumnError(BadRowError):
    """A configured column (or JSON field) that the file does not have at all; lists the ones it has."""


@dataclass
class RawRow:
    """One row as read: ``values`` by field name, or ``error`` when the row itself is broken."""

    where: str
    values: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class RawFile:
    """All rows of one file, the fields it has, the encoding it needed when not UTF-8, and a note when it was read
    in another format than its suffix or the config says (:func:`detect_format`)."""

    path: Path
    rows: list[RawRow] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    encoding: str | None = None
    has_header: bool = False
    format_note: str | None = None


_FORMAT_NAMES = {"jsonl": "JSON lines", "csv": "CSV", "parquet": "Parquet"}


def format_by_suffix(path: Path) -> str | None:
    """``jsonl``, ``csv`` or ``parquet`` as the file's suffix says, or ``None`` for a suffix that says none."""
    suffix = path.suffix.lower()
    for fmt, suffixes in (("jsonl", JSONL_SUFFIXES), ("csv", CSV_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if suffix in suffixes:
            return fmt
    return None


def format_by_content(head: bytes) -> str | None:
    """The format the first bytes of a file show: ``parquet`` (its magic number), ``jsonl`` (the first non-blank
    character opens a JSON object or array), ``csv`` (a first line that is not JSON and holds a delimiter), or
    ``None`` when they show none of these (an empty file, one column, binary data)."""
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        return None
    if text[0] in "{[":
        return "jsonl"
    first = text.split("\n", 1)[0]
    if "\ufffd" in first[:64] or "\x00" in first:
        return None  # not text
    return "csv" if any(d in first for d in _SNIFF_DELIMITERS) else None


def detect_format(path: Path, fmt: str) -> tuple[str, str | None]:
    """The format to read ``path`` with, and a note when it is not the one its suffix or ``fmt`` says.

    The file's own content decides when it shows a format (:func:`format_by_content`): a CSV file given to a config
    of ``format: jsonl`` (e.g. to ``predict`` with a run trained on JSON lines), or a file whose extension lies, is
    read as what it holds, and the note says so. Otherwise ``fmt`` (unless ``auto``), else the suffix, decides; a
    file said to be Parquet without Parquet's magic number is read as Parquet (and refused as a broken one).

    Raises:
        ValueError: neither the content, ``fmt`` nor the suffix says a format.
    """
    expected = fmt if fmt != "auto" else format_by_suffix(path)
    with path.open("rb") as f:
        content = format_by_content(f.read(4096))
    if content is None or content == expected or expected == "parquet":  # Parquet without its magic: broken
        if expected is None:
            raise ValueError(
                f"cannot tell the format of {str(path)!r}: its suffix {path.suffix!r} says none (jsonl: "
                f"{', '.join(JSONL_SUFFIXES)}; csv: {', '.join(CSV_SUFFIXES)}; parquet: {', '.join(PARQUET_SUFFIXES)}) "
                "and its first line is not JSON nor delimited text; rename the file or set format: jsonl, csv or "
                "parquet"
            )
        return expected, None
    said = f"format: {fmt} in the data config" if fmt != "auto" else f"its extension {path.suffix!r}"
    if expected is None:
        said = f"its extension {path.suffix!r} says no format"
        return content, f"{str(path)!r} read as {_FORMAT_NAMES[content]}, from its content ({said})"
    return content, (
        f"{str(path)!r} holds {_FORMAT_NAMES[content]}, not {_FORMAT_NAMES[expected]} as {said} says: "
        f"read as {_FORMAT_NAMES[content]} (from its content)"
    )


def read_file(path: Path, fmt: str, *, delimiter: str | None = None, fallback_encodings: Sequence[str] = ()) -> RawFile:
    """Reads every row of ``path`` (``fmt`` is ``jsonl``, ``csv``, ``parquet`` or ``auto``; the file's content
    overrides it, see :func:`detect_format`, and ``RawFile.format_note`` then says so).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a format that neither the content, ``fmt`` nor the suffix says; a CSV file with no header; a
            file that is not Parquet read as Parquet.
    """
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} not found; check root and the split file names")
    found, note = detect_format(path, fmt)
    if found == "parquet":
        raw = _read_parquet(path)
    else:
        text, encoding = decode_text(path.read_bytes(), fallback_encodings)
        raw = _read_jsonl(path, text) if found == "jsonl" else _read_csv(path, text, delimiter)
        raw.encoding = encoding
    raw.format_note = note
    return raw


def _read_jsonl(path: Path, text: str) -> RawFile:
    raw = RawFile(path=path)
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of objects (.json), rather than JSON lines
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raw.rows.append(RawRow(where=f"line {e.lineno}", error=f"broken JSON array ({e.msg})"))
            return raw
        rows = ((f"item {i + 1}", item) for i, item in enumerate(items))
        raw.rows = [_json_row(where, item) for where, item in rows]
    else:
        raw.rows = list(_jsonl_rows(text))
    seen: dict[str, None] = {}
    for row in raw.rows:
        seen.update(dict.fromkeys(row.values or {}))
    raw.fields = list(seen)
    return raw


def _jsonl_rows(text: str) -> Iterator[RawRow]:
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends, which JSON strings may hold raw.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            yield RawRow(where=f"line {lineno}", error=f"broken JSON ({e.msg} at column {e.colno}): {line[:80]!r}")
            continue
        yield _json_row(f"line {lineno}", item)


def _json_row(where: str, item: Any) -> RawRow:
    if not isinstance(item, dict):
        return RawRow(where=where, error=f"not a JSON object but {type(item).__name__}: {str(item)[:80]!r}")
    return RawRow(where=where, values=item)


def _read_csv(path: Path, text: str, delimiter: str | None) -> RawFile:
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    raw = RawFile(path=path, has_header=True)
    header: list[str] | None = None
    last_line = 0
    index = 0
    while True:
        start = last_line + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            index += 1
            reason = f"malformed CSV ({e})"
            if "unexpected end of data" in str(e):
                reason += (
                    f": a quote opened at line {start} is never closed, so lines {start}-{reader.line_num} are lost"
                )
            raw.rows.append(RawRow(where=f"row {index} (line {start})", error=reason))
            last_line = reader.line_num
            continue
        last_line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
        index += 1
        where = f"row {index} (line {start})"
        if len(cells) != len(header):
            raw.rows.append(
                RawRow(
                    where=where,
                    error=f"has {len(cells)} fields but the header has {len(header)} "
                    f"(check the delimiter {delimiter!r} and the quoting)",
                )
            )
            continue
        raw.rows.append(RawRow(where=where, values=dict(zip(header, cells, strict=True))))
    if header is None:
        raise ValueError(f"CSV file {str(path)!r} is empty: it needs a header row naming the columns")
    raw.fields = header
    return raw


def _sniff_delimiter(text: str) -> str:
    sample = "\n".join(text.split("\n", 20)[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=_SNIFF_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _read_parquet(path: Path) -> RawFile:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError as e:
        raise ImportError(f"reading the Parquet file {str(path)!r} needs pyarrow: pip install pyarrow ({e})") from e
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{str(path)!r} is not a readable Parquet file ({e}); check the file or set format") from None
    raw = RawFile(path=path, has_header=True, fields=[str(c) for c in frame.columns])
    raw.rows = [RawRow(where=where, values=values) for where, values in frame_rows(frame)]
    return raw


def frame_rows(frame: Any) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a pandas DataFrame as ``(where, values)``: ``where`` names the row by its index label
    (``row 0``), missing cells (NaN, None, NaT) are ``None``, NumPy scalars and arrays are Python values and lists."""
    values = frame.astype(object).where(frame.notna(), None)
    return [
        (f"row {label!r}", {str(k): plain_value(v) for k, v in row.items()})
        for label, row in zip(values.index, values.to_dict("records"), strict=True)
    ]


def plain_value(value: Any) -> Any:
    """A NumPy scalar or array (a DataFrame or Parquet cell) as the Python value or list it holds; a path-like as
    its string; anything else as it is."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy":
        tolist = getattr(value, "tolist", None)
        if callable(tolist):
            return tolist()
    return value
