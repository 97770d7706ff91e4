"""From a :class:`~mmfuse.data.config.DataConfig` to checked splits of examples, with a report of every defect.

Everything that can be wrong with a row or an image is found here, at load time, and handled by the config's
policies (``on_bad_row``, ``on_missing_image``): the training loop never meets a row or an image it cannot use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from mmfuse.data._paths import OutsideRootError, resolve_path
from mmfuse.data.config import DataConfig, SplitConfig
from mmfuse.data.example import Example
from mmfuse.data.images import (
    ImageError,
    ImageInfo,
    ImageNotFoundError,
    ImageOutsideRootError,
    check_image,
)
from mmfuse.data.readers import BadRowError, MissingColumnError, RawFile, RawRow, frame_rows, plain_value, read_file
from mmfuse.data.report import Problem, SplitReport
from mmfuse.data.text import decode_text

SPLIT_NAMES = ("train", "val", "test")
_BAD_ROW_FIX = "fix the row, or set on_bad_row: skip to drop such rows (they are counted and listed)"
_IMAGE_FIX = "fix the file, or set on_missing_image: skip (drop the example) or blank (zero image, flagged)"


WRITTEN_IMAGES = "were written to"
"""Words of the report note that says where images held in memory were written (what fit repeats in its notes)."""
READ_BY_CONTENT = "from its content"
"""Words of the report note of a file read in another format than its suffix or the config says (training repeats
it among its data warnings, ``predict`` prints it)."""
NO_SPLIT_FILE = "is not there"
"""Words of the report note of a split that a preset names and the dataset folder does not have (it is left out)."""


class ColumnKindError(BadRowError):
    """A configured column whose values are all of the wrong kind (a label column with no label, a text column of
    lists, an image column of numbers); the message names the column, shows a value and says the fix."""


class UnusableDataError(ValueError):
    """The data loaded, but a split cannot be used (no examples, one class only in train, unseen labels...)."""


@dataclass
class Split:
    """One split: its examples and what loading it found.

    Attributes:
        name: ``train``, ``val`` or ``test`` (or the file stem for :func:`load_examples`).
        examples: the usable examples, in file order.
        report: counts and defects.
        image_digests: image path -> hash of the file's bytes (when images were verified), to find the same image
            under two names, within and across splits (keyed by path, not id: ids need not be unique).
    """

    name: str
    examples: list[Example]
    report: SplitReport
    image_digests: dict[Path, str] = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> list[str | None]:
        return [e.label for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)


class _RowError(Exception):
    """Internal: why one row cannot become an example (turned into a BadRowError or a skipped-row entry)."""


@dataclass
class _Candidate:
    where: str
    example: Example
    image_error: ImageError | None = None
    image_info: ImageInfo | None = None


def load_splits(cfg: DataConfig, *, strict: bool = True) -> dict[str, Split]:
    """Loads the splits the config names, carving val/test off the train file when they have no file.

    Args:
        cfg: the data config.
        strict: raise :class:`UnusableDataError` when a split is unusable; ``False`` returns the splits anyway,
            with the reasons in each ``report.fatal`` (what ``mmfuse data check`` shows).

    Returns:
        Splits by name, among ``train``, ``val``, ``test``, in that order.

    Raises:
        ValueError: the config names no split file.
        FileNotFoundError: the root or a split file does not exist.
        BadRowError: a bad row with ``on_bad_row: error`` (:class:`MissingColumnError` for a missing column,
            whatever the policy).
        ImageError: a missing or unreadable image with ``on_missing_image: error``.
        UnusableDataError: with ``strict``, a split that cannot be used.
    """
    if cfg.train is None and cfg.val is None and cfg.test is None:
        raise ValueError(
            "no split file given: set train (and optionally val, test) or a preset in the data config; a data config "
            "without files (e.g. from MultimodalClassifier(label=..., text=..., image=...)) only says how to read rows "
            "passed to fit / predict"
        )
    absent = _absent_preset_splits(cfg)
    cfg = cfg.model_copy(update=dict.fromkeys(absent))  # as if never named: a missing val is carved off train
    splits: dict[str, Split] = {}
    for name in SPLIT_NAMES:
        file = getattr(cfg, name)
        if file is not None:
            splits[name] = load_examples(file, cfg, name=name)
    if "train" in splits:
        _carve(splits, cfg)
    first = next(iter(splits.values()), None)
    for name, file in absent.items():
        instead = f"{cfg.split.val:g} of train is carved off for val" if name == "val" and cfg.split.val else ""
        note = (
            f"no {name} split: {file!r}, which the preset {cfg.preset!r} names, {NO_SPLIT_FILE}; "
            f"{instead or f'the data has no {name} split'} (add the file, or set {name}: to another one)"
        )
        if first is not None:
            first.report.notes.insert(0, note)
    _cross_check(splits)
    splits = {n: splits[n] for n in SPLIT_NAMES if n in splits}
    fatal = [f"{n}: {reason}" for n, s in splits.items() for reason in s.report.fatal]
    if strict and fatal:
        raise UnusableDataError(
            "the data cannot be used as configured:\n  " + "\n  ".join(fatal) + "\n(`mmfuse data check` shows details)"
        )
    return splits


def load_examples(
    path: str | Path,
    cfg: DataConfig,
    *,
    labeled: bool | None = None,
    name: str | None = None,
    image_cache: Path | None = None,
) -> Split:
    """Loads one split file (e.g. new data for ``predict``) with the config's columns, templates and policies.

    Args:
        path: the split file; a relative path resolves against ``cfg.root`` (or the working directory when it is
            not there).
        cfg: the data config.
        labeled: ``True`` requires labels, ``False`` ignores them, ``None`` reads them when the file has the label
            column.
        name: split name for the report; defaults to the file stem.
        image_cache: where images held in the file itself (a Parquet column of ``{"bytes", "path"}``) are written
            (default: :func:`~mmfuse.data.embedded.default_image_cache`).

    Raises:
        FileNotFoundError: no such file or root.
        BadRowError, ImageError: as :func:`load_splits`.
    """
    root = _root(cfg)
    file = _split_file(Path(path), root)
    raw = read_file(file, cfg.format, delimiter=cfg.delimiter, fallback_encodings=cfg.fallback_encodings)
    return _load_raw(
        raw, cfg, root, labeled=labeled, name=name or file.stem, source=_display(file, root), image_cache=image_cache
    )


def load_records(
    records: Any,
    cfg: DataConfig,
    *,
    labeled: bool | None = None,
    name: str = "records",
    root: Path | None = None,
    image_cache: Path | None = None,
) -> Split:
    """Loads rows given in memory, a pandas DataFrame or a list of dicts, with the config's columns, templates and
    policies, exactly as rows of a file: every bad row, missing image or odd text is counted in the report.

    Args:
        records: a DataFrame (its cells; NaN/None are empty) or a sequence of mappings, one per example.
        cfg: the data config (columns, label map, image policy).
        labeled: as :func:`load_examples`.
        name: what the rows are called in messages and the report.
        root: where relative image paths resolve (default: ``cfg``'s root).
        image_cache: where images held in the rows (PIL images, bytes, ``{"bytes", "path"}`` dicts) are written,
            one file per content hash (default: :func:`~mmfuse.data.embedded.default_image_cache`).

    Raises:
        TypeError: ``records`` is neither.
        BadRowError, ImageError, MissingColumnError: as :func:`load_examples`.
    """
    import pandas as pd

    raw = RawFile(path=Path(f"<{name}>"), has_header=True)
    rows: list[tuple[str, Any]]
    if isinstance(records, pd.DataFrame):
        rows = frame_rows(records)
        raw.fields = [str(c) for c in records.columns]
    elif isinstance(records, (list, tuple)) and all(isinstance(r, Mapping) for r in records):
        rows = [(f"row {i}", dict(r)) for i, r in enumerate(records)]
        raw.fields = list(dict.fromkeys(str(k) for r in records for k in r))
    else:
        raise TypeError(
            f"rows must be a pandas DataFrame or a list of dicts, got {type(records).__name__}; "
            "pass a DataFrame, a list of dicts, a list of Example, or a data file path"
        )
    for where, values in rows:
        raw.rows.append(RawRow(where=where, values={str(k): plain_value(v) for k, v in values.items()}))
    base = root if root is not None else _root(cfg)
    return _load_raw(raw, cfg, base, labeled=labeled, name=name, source=name, in_memory=True, image_cache=image_cache)


def _load_raw(
    raw: RawFile,
    cfg: DataConfig,
    root: Path,
    *,
    labeled: bool | None,
    name: str,
    source: str,
    in_memory: bool = False,
    image_cache: Path | None = None,
) -> Split:
    """The rows of ``raw`` as a split: columns checked, rows read, images checked, the report filled."""
    file = raw.path
    labeled = _is_labeled(raw, cfg, labeled)
    row_ids, cfg_id = _ids_are_row_numbers(raw, cfg, in_memory), cfg.columns.id
    if row_ids:
        cfg = cfg.model_copy(update={"columns": cfg.columns.model_copy(update={"id": None})})
    _require_columns(raw, cfg, labeled)
    written = _write_embedded(raw, cfg, image_cache)
    _check_column_kinds(raw, cfg, labeled)
    report = SplitReport(name=name, source=source, labeled=labeled, rows=len(raw.rows), file_encoding=raw.encoding)
    if raw.format_note is not None:
        report.notes.append(raw.format_note)
    if row_ids:
        report.notes.append(
            f"no {cfg_id!r} column: each example's id is its row number (0-based); set columns.id to the column "
            "that holds the ids, if one does"
        )
    if written is not None:
        count, folder = written
        report.notes.append(
            f"{count} images held in column {cfg.columns.image!r} (not paths) {WRITTEN_IMAGES} {str(folder)!r}, one "
            "file per content hash, and read from there"
        )
    trusted = written[1].resolve() if written is not None else None
    candidates = _read_rows(raw, cfg, root, labeled, report, trusted)
    _check_images(candidates, cfg)
    examples = _apply_image_policy(candidates, cfg, report, file, root)
    digests = {c.example.image: c.image_info.digest for c in candidates if c.image_info and c.example.image}
    _same_images(candidates, digests, report)
    report.count_examples(examples)
    if not examples:
        report.fatal.append(
            f"no usable examples ({report.rows} rows, {len(report.bad_rows)} bad, "
            f"{len(report.skipped_images)} without a usable image)"
        )
    return Split(name=report.name, examples=examples, report=report, image_digests=digests)


def _absent_preset_splits(cfg: DataConfig) -> dict[str, str]:
    """The val / test files that the config's preset names (and the config leaves as they are) and that are not
    under the root: a preset describes a full release, and a folder may hold part of it (the public Hateful Memes
    release has no test labels; a user's own data may have train and dev only). The train file is never optional."""
    if cfg.preset is None:
        return {}
    from mmfuse.data.presets import PRESETS

    preset, root = PRESETS.get(cfg.preset), _root(cfg)
    return {
        name: file
        for name in ("val", "test")
        if (file := getattr(cfg, name)) is not None and file == preset.get(name) and not (root / file).exists()
    }


def _root(cfg: DataConfig) -> Path:
    root = cfg.resolved_root()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {str(cfg.root)!r} not found (resolved to {str(root)!r}); set root to the dataset folder"
        )
    return root


def _split_file(path: Path, root: Path) -> Path:
    if path.is_absolute():
        return path
    in_root = root / path
    if in_root.exists() or not path.exists():
        return in_root
    return path.resolve()


def _display(path: Path, root: Path) -> str:
    """``path`` relative to the root when it is inside, else as given."""
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _has_value(values: Mapping[str, Any], column: str) -> bool:
    value = values.get(column)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _is_labeled(raw: RawFile, cfg: DataConfig, labeled: bool | None) -> bool:
    """Whether to read labels: as asked, or (``None``) when the label column is there and holds a value."""
    column = cfg.columns.label
    if labeled is None:
        if column is None or column not in raw.fields:
            return False
        return any(_has_value(r.values, column) for r in raw.rows if r.values is not None) or not raw.rows
    if labeled and column is None:
        raise ValueError("labels were required but columns.label is not set; set it to the label column's name")
    return labeled


def _ids_are_row_numbers(raw: RawFile, cfg: DataConfig, in_memory: bool = False) -> bool:
    """Whether the rows have no id column while ``columns.id`` is left at its default (or the rows are in memory,
    where the config was written for files): then ids are row numbers. In a file, a column named explicitly and
    missing stays an error."""
    column = cfg.columns.id
    if column is None or not (raw.has_header or raw.fields) or column in raw.fields:
        return False
    return in_memory or (column == "id" and "id" not in cfg.columns.model_fields_set)


def _require_columns(raw: RawFile, cfg: DataConfig, labeled: bool) -> None:
    """A configured column that no row has is a config error, whatever ``on_bad_row`` says."""
    if not raw.has_header and not raw.fields:
        return  # no readable row at all: every row is reported as bad instead
    wanted = {"id": cfg.columns.id, "image": cfg.columns.image, "label": cfg.columns.label if labeled else None}
    if cfg.text_file is None:
        wanted["text"] = cfg.columns.text
    for role, column in wanted.items():
        if column is not None and column not in raw.fields:
            where = "header (line 1)" if raw.has_header else "every row"
            present = ", ".join(map(repr, raw.fields))
            raise MissingColumnError(
                raw.path,
                where,
                f"column {column!r} (columns.{role}) not found; columns present: {present}",
                f"set columns.{role} to one of them" + (", or null" if role in ("id", "label") else ""),
            )


def _write_embedded(raw: RawFile, cfg: DataConfig, folder: Path | None) -> tuple[int, Path] | None:
    """Writes the images held in the image column (not paths) to files (:mod:`mmfuse.data.embedded`); how many
    and where, or ``None`` when the column holds none."""
    from mmfuse.data.embedded import default_image_cache, is_embedded_image, write_embedded_images

    column = cfg.columns.image
    if column is None:
        return None
    values = [row.values for row in raw.rows if row.values is not None]
    if not any(is_embedded_image(v.get(column)) for v in values):
        return None
    folder = folder if folder is not None else default_image_cache()
    count = write_embedded_images(values, column, folder)
    return (count, folder) if count else None


_IMAGE_KINDS = "image file paths (str), PIL images, bytes or {'bytes', 'path'} dicts (a datasets.Image column)"


def _check_column_kinds(raw: RawFile, cfg: DataConfig, labeled: bool) -> None:
    """A column whose every value is of the wrong kind is a config error naming the column and showing a value,
    whatever ``on_bad_row`` says (skipping every row would leave nothing): a label column with no value at all, a
    text column of lists, an image column of numbers (without ``image_template`` to make paths of them)."""
    rows = [row for row in raw.rows if row.values is not None]
    if not rows:
        return

    def fail(role: str, problem: str, fix: str, sample: tuple[str, Any] | None = None) -> None:
        column = getattr(cfg.columns, role)
        shown = (
            f", e.g. {sample[0]}: {role} is a {type(sample[1]).__name__} ({str(sample[1])[:60]!r})" if sample else ""
        )
        raise ColumnKindError(raw.path, f"column {column!r} (columns.{role}){shown}", problem, fix)

    def present(column: str) -> list[tuple[str, Any]]:
        return [(r.where, r.values[column]) for r in rows if _has_value(r.values, column)]  # type: ignore[arg-type]

    label = cfg.columns.label
    if labeled and label is not None and not present(label):
        fail(
            "label",
            f"every one of the {len(rows)} rows has no label (NaN/None/missing)",
            "set columns.label (label=...) to the column that holds the labels; to predict on unlabeled rows, use "
            "predict rather than fit/evaluate",
        )
    text = cfg.columns.text if cfg.text_file is None else None
    if text is not None:
        values = present(text)
        if values and all(not isinstance(v, (str, int, float)) or isinstance(v, bool) for _, v in values):
            fix = "set columns.text (text=...) to the column of texts, or join the pieces into one string per row"
            fail("text", "no value is a string", fix, values[0])
    image = cfg.columns.image
    if image is not None:
        values = present(image)
        fix = "set columns.image (image=...) to the column of image paths"
        if values and cfg.image_template is None and all(isinstance(v, (int, float)) for _, v in values):
            fix += ", or image_template to build a path from the value (e.g. 'img/{image}.jpg')"
            fail("image", f"it holds numbers, not {_IMAGE_KINDS}", fix, values[0])
        if values and all(not isinstance(v, (str, int, float)) for _, v in values):
            fail("image", f"no value is one of {_IMAGE_KINDS}", fix, values[0])


def _read_rows(
    raw: RawFile, cfg: DataConfig, root: Path, labeled: bool, report: SplitReport, trusted: Path | None = None
) -> list[_Candidate]:
    seen: dict[str, _Candidate] = {}  # id -> the first row with it
    candidates: list[_Candidate] = []
    for index, row in enumerate(raw.rows):
        example_id: str | None = None
        try:
            if row.error is not None:
                raise _RowError(row.error)
            assert row.values is not None
            example_id = _id(row.values, index, cfg)
            candidate = _row_to_candidate(row.values, row.where, example_id, cfg, root, labeled, report, trusted)
        except _RowError as e:
            if cfg.on_bad_row == "error":
                raise BadRowError(raw.path, row.where, str(e), _BAD_ROW_FIX) from None
            report.bad_rows.append(Problem(row.where, example_id, str(e)))
            continue
        first = seen.setdefault(example_id, candidate)
        if first is not candidate:  # kept: an id names a row for people; nothing downstream needs it unique
            reason = f"id also at {first.where} ({_difference(first.example, candidate.example)}); both rows kept"
            report.duplicate_ids.append(Problem(row.where, example_id, reason))
        candidates.append(candidate)
    return candidates


def _difference(first: Example, again: Example) -> str:
    """How a row with an id seen before differs from the first row with that id."""
    differ = [name for name in ("text", "image", "label") if getattr(first, name) != getattr(again, name)]
    return f"different {', '.join(differ)}" if differ else "same text, image and label"


def _row_to_candidate(
    values: Mapping[str, Any],
    where: str,
    example_id: str,
    cfg: DataConfig,
    root: Path,
    labeled: bool,
    report: SplitReport,
    trusted: Path | None = None,
) -> _Candidate:
    raw_image = _image_value(values, cfg)
    label = _label(values, cfg) if labeled else None
    text = _text(values, where, example_id, raw_image, cfg, root, report)
    image: Path | None = None
    error: ImageError | None = None
    relative = _image_relative(example_id, raw_image, cfg)
    if relative is None:
        error = ImageNotFoundError("", "the row names no image")
    else:
        try:
            written = trusted is not None and Path(relative).parent == trusted  # an image written from memory
            allow = cfg.allow_outside_root or written
            image = resolve_path(relative, root, allow_outside_root=allow, what="image")
        except OutsideRootError as e:
            error = ImageOutsideRootError.of(relative, e)
    if "\ufffd" in text:
        report.replacement_chars.append(Problem(where, example_id, "U+FFFD in text (mangled upstream)"))
    return _Candidate(where, Example(id=example_id, text=text, image=image, label=label), error)


def _field(values: Mapping[str, Any], column: str, role: str) -> Any:
    if column not in values:
        raise _RowError(
            f"missing field {column!r} (columns.{role}); fields in this row: {', '.join(map(repr, values))}"
        )
    return values[column]


def _scalar(value: Any, role: str) -> str | None:
    """A JSON/CSV scalar as a stripped string; ``None`` for null or empty."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _RowError(f"{role} is a boolean ({value}); expected a string or a number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (str, int, float)):
        return str(value).strip() or None
    raise _RowError(f"{role} is a {type(value).__name__} ({str(value)[:60]!r}); expected a string or a number")


def _id(values: Mapping[str, Any], index: int, cfg: DataConfig) -> str:
    if cfg.columns.id is None:
        return str(index)
    value = _scalar(_field(values, cfg.columns.id, "id"), "id")
    if value is None:
        raise _RowError(f"empty id in field {cfg.columns.id!r}")
    return value


def _image_value(values: Mapping[str, Any], cfg: DataConfig) -> str | None:
    if cfg.columns.image is None:
        return None
    return _scalar(_field(values, cfg.columns.image, "image"), "image")


def _image_relative(example_id: str, raw_image: str | None, cfg: DataConfig) -> str | None:
    if cfg.image_template is None:
        return raw_image
    if raw_image is None and "{image}" in cfg.image_template:
        return None
    return cfg.image_template.format(id=example_id, image=raw_image or "")


def _label(values: Mapping[str, Any], cfg: DataConfig) -> str:
    assert cfg.columns.label is not None
    value = _field(values, cfg.columns.label, "label")
    if isinstance(value, list):  # some datasets store [label, annotator agreement, ...]
        if not value:
            raise _RowError(f"label field {cfg.columns.label!r} is an empty list")
        value = value[0]
    label = _scalar(value, "label")
    if label is None:
        raise _RowError(f"empty label in field {cfg.columns.label!r}")
    if cfg.label_map is not None:
        if label not in cfg.label_map:
            known = ", ".join(map(repr, cfg.label_map))
            raise _RowError(f"label {label!r} is not in label_map (raw values it maps: {known}); add it there")
        label = cfg.label_map[label]
    return label


def _text(
    values: Mapping[str, Any],
    where: str,
    example_id: str,
    raw_image: str | None,
    cfg: DataConfig,
    root: Path,
    report: SplitReport,
) -> str:
    if cfg.text_file is None:
        assert cfg.columns.text is not None
        value = _field(values, cfg.columns.text, "text")
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _RowError(f"text is a {type(value).__name__} ({str(value)[:60]!r}); expected a string")
        return str(value).strip()
    relative = cfg.text_file.format(id=example_id, image=raw_image or "")
    try:
        path = resolve_path(relative, root, allow_outside_root=cfg.allow_outside_root, what="text file")
        data = path.read_bytes()
    except OutsideRootError as e:
        raise _RowError(str(e)) from None
    except FileNotFoundError:
        raise _RowError(f"text file {relative!r} not found") from None
    except OSError as e:
        raise _RowError(f"cannot read text file {relative!r} ({e.strerror or e})") from None
    text, encoding = decode_text(data, cfg.fallback_encodings)
    if encoding is not None:
        report.fallback_texts.append(Problem(where, example_id, encoding, path=relative))
    return text.strip()


def _check_images(candidates: list[_Candidate], cfg: DataConfig) -> None:
    """Fills ``image_error`` / ``image_info``; full decodes run in threads (Pillow releases the GIL to decode)."""
    todo = [c for c in candidates if c.image_error is None and c.example.image is not None]

    def check(candidate: _Candidate) -> None:
        path = candidate.example.image
        assert path is not None
        try:
            if cfg.verify_images:
                candidate.image_info = check_image(path, max_pixels=cfg.max_image_pixels)
            elif not path.is_file():
                raise ImageNotFoundError(path, "file not found")
        except ImageError as e:
            candidate.image_error = e

    workers = min(8, os.cpu_count() or 1)
    if len(todo) < 16 or workers == 1:
        for c in todo:
            check(c)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(check, todo))


def _apply_image_policy(
    candidates: list[_Candidate], cfg: DataConfig, report: SplitReport, file: Path, root: Path
) -> list[Example]:
    extensions = Image.registered_extensions()
    examples: list[Example] = []
    for c in candidates:
        error, example = c.image_error, c.example
        if error is None:
            info, path = c.image_info, example.image
            if info is not None and path is not None:
                expected = extensions.get(path.suffix.lower())
                if expected is not None and info.format is not None and expected != info.format:
                    reason = f"{info.format} content in a {path.suffix} file"
                    report.extension_mismatches.append(Problem(c.where, example.id, reason, _display(path, root)))
            examples.append(example)
            continue
        shown = _display(error.path, root) if str(error.path) not in ("", ".") else None
        problem = Problem(c.where, example.id, error.reason, path=shown)
        if cfg.on_missing_image == "error":
            where = f"id {example.id}, {c.where} of {str(file)!r}"
            raise type(error)(shown or "(none)", f"{error.reason} ({where})", _IMAGE_FIX)
        if cfg.on_missing_image == "skip":
            report.skipped_images.append(problem)
        else:
            report.blank_images.append(problem)
            examples.append(replace(example, image=None))
    return examples


def _same_images(candidates: list[_Candidate], digests: dict[Path, str], report: SplitReport) -> None:
    """Reports examples whose image file has the same bytes as an earlier example's (kept: memes reuse images)."""
    first: dict[str, _Candidate] = {}
    for c in candidates:
        digest = digests.get(c.example.image) if c.example.image is not None else None
        if digest is None or c.image_error is not None:
            continue
        if digest not in first:
            first[digest] = c
            continue
        earlier = first[digest].example
        reason = f"same image as id {earlier.id}"
        if earlier.text == c.example.text:
            reason += " and same text"
            if earlier.label != c.example.label:
                reason += f", but labeled {c.example.label!r} vs {earlier.label!r} (conflicting labels)"
        report.same_images.append(Problem(c.where, c.example.id, reason))


def _carve(splits: dict[str, Split], cfg: DataConfig) -> None:
    """Moves ``split.val`` / ``split.test`` of the train file to val / test when those have no file."""
    fractions = {n: getattr(cfg.split, n) for n in ("test", "val") if getattr(cfg, n) is None}
    splits.update(carve_off(splits["train"], fractions, cfg.split))


def carve_off(train: Split, fractions: Mapping[str, float], how: SplitConfig) -> dict[str, Split]:
    """Moves the ``fractions`` (split name -> share) of ``train``'s examples to new splits, seeded (``how.seed``)
    and stratified by label when ``how.stratify`` and ``train`` is labeled (as scikit-learn's
    ``train_test_split``); ``train`` keeps the rest, and both reports say what was done. Too few examples to carve is
    a ``fatal`` entry of ``train``'s report, and nothing is moved."""
    fractions = {n: f for n, f in fractions.items() if f > 0}
    n = len(train.examples)
    if not fractions or n == 0:
        return {}
    sizes = {k: max(1, round(f * n)) for k, f in fractions.items()}
    if sum(sizes.values()) >= n:
        train.report.fatal.append(f"only {n} examples: too few to carve {sizes} off for {', '.join(sizes)}")
        return {}
    stratify = train.report.labeled and how.stratify
    labels = [e.label for e in train.examples]
    remaining = list(range(n))
    out: dict[str, Split] = {}
    for name, size in sizes.items():
        remaining, taken, kind = _split_off(remaining, size, labels if stratify else None, how.seed)
        examples = [train.examples[i] for i in sorted(taken)]
        source = f"{train.report.source} ({fractions[name]:g} carved off, seed {how.seed}, {kind})"
        report = SplitReport(
            name=name, source=source, labeled=train.report.labeled, rows=len(examples),
            file_encoding=train.report.file_encoding,
        )  # fmt: skip
        report.notes.append(f"defects met while reading the data are listed under {train.name}")
        report.count_examples(examples)
        out[name] = Split(name=name, examples=examples, report=report, image_digests=train.image_digests)
        train.report.notes.append(f"{len(examples)} examples carved off for {name} ({kind}, seed {how.seed})")
    train.examples = [train.examples[i] for i in sorted(remaining)]
    train.report.count_examples(train.examples)
    return out


def _split_off(
    indices: list[int], size: int, labels: list[str | None] | None, seed: int
) -> tuple[list[int], list[int], str]:
    """(kept, taken, how) with ``size`` indices taken, stratified by label when possible."""
    from sklearn.model_selection import train_test_split  # scikit-learn takes a second to import; only needed here

    split: Callable[..., list[list[int]]] = train_test_split
    if labels is not None:
        try:
            kept, taken = split(indices, test_size=size, random_state=seed, stratify=[labels[i] for i in indices])
            return kept, taken, "stratified"
        except ValueError as e:  # a class with one member, or fewer taken than there are classes
            kept, taken = split(indices, test_size=size, random_state=seed)
            return kept, taken, f"not stratified: {e}"
    kept, taken = split(indices, test_size=size, random_state=seed)
    return kept, taken, "random"


def _leaks(splits: dict[str, Split]) -> None:
    """Notes examples of a later split whose image file (byte for byte) is in an earlier split."""
    names = list(splits)
    for i, name in enumerate(names):
        split = splits[name]
        for other in names[:i]:
            earlier = splits[other]
            seen = {earlier.image_digests[e.image] for e in earlier.examples if e.image in earlier.image_digests}
            shared = [e.id for e in split.examples if e.image is not None and split.image_digests.get(e.image) in seen]
            if shared:
                split.report.notes.append(
                    f"{len(shared)} examples have the same image file as an example of {other} "
                    f"(possible leak; often the same post twice): ids {shared[:5]}"
                )


def _cross_check(splits: dict[str, Split]) -> None:
    """Problems that only show across splits: what train must have, leaks, labels the model cannot know."""
    train = splits.get("train")
    if train is not None and train.examples:
        if not train.report.labeled:
            train.report.fatal.append("train has no labels (check columns.label)")
        elif len(train.report.label_counts) < 2:
            only = ", ".join(train.report.label_counts)
            train.report.fatal.append(f"train has one class only ({only}); a classifier needs at least two")
    _leaks(splits)
    for name, split in splits.items():
        if name == "train" or train is None:
            continue
        if not split.report.labeled:
            split.report.notes.append("unlabeled: it can be predicted on, not scored")
        train_ids = {e.id for e in train.examples}
        shared = [e.id for e in split.examples if e.id in train_ids]
        if shared:
            split.report.notes.append(
                f"{len(shared)} ids also in train (possible leak, or ids not unique across files): {shared[:5]}"
            )
        unseen = sorted(set(split.report.label_counts) - set(train.report.label_counts))
        if unseen and train.report.labeled:
            split.report.fatal.append(
                f"labels not in train: {unseen} (train has {sorted(train.report.label_counts)}); "
                "map them with label_map or fix the files"
            )
