"""Where the examples of fit / evaluate / predict come from, and how predictions are written."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmfuse.data.config import DataConfig, SplitConfig, load_data_config
from mmfuse.data.embedded import hf_frame, is_hf_dataset
from mmfuse.data.example import Example
from mmfuse.data.loading import (
    NO_SPLIT_FILE,
    READ_BY_CONTENT,
    Split,
    carve_off,
    load_examples,
    load_records,
    load_splits,
)
from mmfuse.data.report import Problem, SplitReport

ExamplesLike = Sequence[Example] | Split | str | Path | pd.DataFrame | Sequence[Mapping] | Any
"""Examples, a loaded split, the path of a data file (JSONL/CSV/TSV/Parquet read with the run's column mapping), or
rows in memory: a pandas DataFrame, a list of dicts or a Hugging Face ``datasets.Dataset`` (read with the same
column mapping; relative image paths resolve against the working directory; an image column may hold PIL images,
bytes or ``datasets.Image`` values, written once to files, see :mod:`mmfuse.data.embedded`)."""

_CONFIG_SUFFIXES = (".yaml", ".yml")
_SAID_NOTES = (NO_SPLIT_FILE, READ_BY_CONTENT, "possible leak")  # report notes that training repeats as warnings


@dataclass
class Inputs:
    """Examples to predict, with what loading them found (for the count of missing images).

    Attributes:
        examples: the examples, in order.
        source: what they were read from, for messages (a file, a split; empty for examples passed as a list).
        report: the load report when they come from a file or a split.
        image_root: where their relative image paths resolved, when they come from a file or a split.
    """

    examples: list[Example]
    source: str = ""
    report: SplitReport | None = None
    image_root: Path | None = None


def examples_of(source: ExamplesLike, data: DataConfig | None, *, labeled: bool | None = None) -> list[Example]:
    """The examples of ``source``; a file path is read with :func:`file_examples`."""
    return inputs_of(source, data, labeled=labeled).examples


def inputs_of(
    source: ExamplesLike | Inputs,
    data: DataConfig | None,
    *,
    labeled: bool | None = None,
    image_root: str | Path | None = None,
    image_cache: Path | None = None,
) -> Inputs:
    """The examples of ``source`` with their load report and image root when it is a file or a split.

    Args:
        source: what to read (see :data:`ExamplesLike`).
        data: the run's data config (columns, label map, policies); ``None`` reads the default column names.
        labeled: ``True`` requires labels, ``False`` ignores them, ``None`` reads them when there are.
        image_root: where relative image paths resolve, instead of the default: the dataset root for a file of the
            run's dataset, the file's folder for another file, the working directory for rows in memory and for
            examples (a loaded split keeps its paths).
        image_cache: where images held in memory (PIL images, bytes, ``datasets.Image``) are written (default:
            :func:`~mmfuse.data.embedded.default_image_cache`).

    Raises:
        TypeError: ``source`` is none of the kinds above.
    """
    if isinstance(source, Inputs):
        return source
    where = Path(image_root).expanduser().absolute() if image_root is not None else None
    if where is not None and not where.is_dir():
        raise FileNotFoundError(f"image_root {str(image_root)!r} is not a folder; pass the folder the image paths are "
                                "relative to")  # fmt: skip
    if is_hf_dataset(source):
        source = hf_frame(source)
    if isinstance(source, Split):
        root = data.resolved_root() if data is not None else None
        images = [e.image for e in source.examples if e.image is not None][:1]
        if root is not None and images and not _inside(images[0], root):
            root = None  # a split of another data config: its root is not known here
        return Inputs(list(source.examples), f"the {source.name} split", source.report, root)
    if isinstance(source, (str, Path)):
        split = file_examples(source, data, labeled=labeled, image_root=where, image_cache=image_cache)
        return Inputs(split.examples, repr(str(source)), split.report, where or _image_root(Path(source), data))
    if isinstance(source, pd.DataFrame) or (
        isinstance(source, (list, tuple)) and source and all(isinstance(r, Mapping) for r in source)
    ):
        split = records_examples(source, data, labeled=labeled, image_root=where, image_cache=image_cache)
        return Inputs(split.examples, f"the {split.name}", split.report, where or Path.cwd())
    if isinstance(source, (str, bytes)) or not isinstance(source, Sequence | Iterable):
        raise TypeError(_KINDS_HINT.format(what=f"a {type(source).__name__}"))
    items = list(source)
    strays = [type(e).__name__ for e in items if not isinstance(e, Example)]
    if strays:
        raise TypeError(_KINDS_HINT.format(what=f"{len(strays)} of {len(items)} items are not Example but {strays[0]}"))
    if where is not None:
        items = [replace(e, image=where / e.image) if e.image and not e.image.is_absolute() else e for e in items]
    return Inputs(items, image_root=where)


_KINDS_HINT = (
    "{what}; pass a list of Example, a pandas DataFrame, a list of dicts or a Hugging Face datasets.Dataset (columns "
    "as in data.columns), or a data file path (CSV, TSV, JSONL, Parquet)"
)


def hold_out(inputs: Inputs, fraction: float, how: SplitConfig, *, name: str = "train") -> tuple[Inputs, Inputs]:
    """Splits labeled examples into (train, val) with ``fraction`` of them held out for validation, seeded and
    stratified by label as the data config's own carving of a val split (``how``: ``split.seed``,
    ``split.stratify``). Both parts' reports say what was done (``notes``); ``inputs`` is left unchanged.

    Raises:
        ValueError: ``fraction`` not in (0, 1), or too few examples to hold any out.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_frac must be a fraction in (0, 1) (e.g. 0.2), got {fraction}")
    report = copy.deepcopy(inputs.report) if inputs.report is not None else None
    if report is None:
        report = SplitReport(name=name, source=inputs.source or "examples", labeled=True, rows=len(inputs.examples))
    report.name = name
    train = Split(name=name, examples=list(inputs.examples), report=report)
    val = carve_off(train, {"val": fraction}, how)["val"]
    if train.report.fatal:
        raise ValueError(
            f"cannot hold out {fraction:g} of the training data for validation: {train.report.fatal[-1]}; pass "
            "tuning_data (validation rows) or more training rows"
        )
    return (
        Inputs(train.examples, inputs.source, train.report, inputs.image_root),
        Inputs(val.examples, f"{fraction:g} of {inputs.source or 'the training data'}", val.report, inputs.image_root),
    )


def records_examples(records: pd.DataFrame | Sequence[Mapping], data: DataConfig | None, *,
                     labeled: bool | None = None, image_root: Path | None = None,
                     image_cache: Path | None = None) -> Split:  # fmt: skip
    """Reads rows in memory (a DataFrame or a list of dicts) with the run's data config (columns, templates, label
    map). Relative image paths resolve against ``image_root`` (default: the working directory), and absolute ones
    are accepted (the rows come from the caller's own code, not from a file that could point anywhere); missing
    images become blanks, as for a data file, so every row gets a prediction.

    Raises:
        BadRowError: a row whose values are of the wrong kind (naming the row and column), unless ``on_bad_row`` is
            ``skip``.
        MissingColumnError: a configured column the rows do not have (listing the ones they have).
    """
    name = "DataFrame" if isinstance(records, pd.DataFrame) else "records"
    root = image_root or Path.cwd()
    base = data or DataConfig(root=root)
    cfg = base.model_copy(update={"root": root, "on_missing_image": "blank", "allow_outside_root": True})
    return load_records(records, cfg, labeled=labeled, name=name, root=root, image_cache=image_cache)


def file_examples(
    path: str | Path,
    data: DataConfig | None,
    *,
    labeled: bool | None = None,
    image_root: Path | None = None,
    image_cache: Path | None = None,
) -> Split:
    """Reads one data file (CSV, TSV, JSONL, Parquet) with the run's data config (columns, templates, label map).

    The file is read as what it is, whatever format the run's data had (``format: auto``): by its extension, or by
    its content when that shows another format (the report's notes then say so, see
    :func:`~mmfuse.data.readers.detect_format`). A file inside the run's dataset root resolves its images against
    that root; a file elsewhere against its own folder; either against ``image_root`` when it is given. Missing
    images become blanks (``image_present=False``) rather than dropped rows, so every row of the file gets a
    prediction.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if data is not None and _in_data_root(path, data):
        cfg = data.model_copy(update={"on_missing_image": "blank", "format": "auto"})
        if image_root is None:
            return load_examples(path, cfg, labeled=labeled, image_cache=image_cache)
        path = path if path.is_absolute() else data.resolved_root() / path
    if not path.is_file():
        where = f" (nor under the dataset root {str(data.root)!r})" if data is not None else ""
        raise FileNotFoundError(f"data file {str(path)!r} not found{where}; pass a CSV, TSV, JSONL or Parquet file")
    root = image_root or path.resolve().parent
    base = data or DataConfig(root=root, train=path.name)
    cfg = base.model_copy(update={"root": root, "on_missing_image": "blank", "format": "auto"})
    return load_examples(path.resolve(), cfg, labeled=labeled, image_cache=image_cache)


def _in_data_root(path: Path, data: DataConfig) -> bool:
    """Whether a data file is read as part of the run's dataset (its images resolve against the dataset root)."""
    root = data.resolved_root()
    return (root / path).is_file() if not path.is_absolute() else (path.is_file() and _inside(path, root))


def _image_root(path: Path, data: DataConfig | None) -> Path:
    """Where :func:`file_examples` resolved the images of data file ``path``."""
    if data is not None and _in_data_root(path, data):
        return data.resolved_root()
    return path.resolve().parent


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def split_examples(split: str | None, data: DataConfig | None, source: str | Path | None = None) -> Split:
    """The ``split`` of the run's data, of another data config (``source`` a YAML file), or a data file.

    Args:
        split: ``train``, ``val`` or ``test``; ``None`` takes the labeled test split, else the labeled val split
            (the returned split's ``name`` says which).
        data: the run's data config.
        source: another data config (YAML) or a data file; a data file is read whole, whatever ``split``.

    Raises:
        ValueError: no data config to take the split from, or the data has no such split.
        FileNotFoundError: ``source`` does not exist.
    """
    if source is not None and Path(source).suffix.lower() not in _CONFIG_SUFFIXES:
        return file_examples(source, data, labeled=True)
    cfg = load_data_config(source) if source is not None else data
    if cfg is None:
        raise ValueError("this run has no data config (it was fit on examples); pass --data FILE_OR_CONFIG")
    splits = load_splits(cfg)
    if split is None:
        labeled = [n for n in ("test", "val") if n in splits and splits[n].report.labeled]
        if not labeled:
            raise ValueError(
                f"the data has no labeled test or val split to evaluate (it has {_split_list(splits)}); pass "
                "--split train, or --data with a labeled file or data config"
            )
        return splits[labeled[0]]
    if split not in splits:
        options = " or ".join(f"--split {n}" for n in splits)
        raise ValueError(
            f"the data has no {split!r} split (it has {_split_list(splits)}); pass {options}, or --data with another "
            "data file or config"
        )
    return splits[split]


def _split_list(splits: dict[str, Split]) -> str:
    return ", ".join(f"{n} ({len(s)} examples{'' if s.report.labeled else ', unlabeled'})" for n, s in splits.items())


def predictions_frame(
    ids: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    labels: Sequence[str],
    image_present: Sequence[bool] | np.ndarray | None = None,
) -> pd.DataFrame:
    """The predictions table.

    Binary tasks: ``id, proba, label`` (the Hateful Memes challenge format): ``proba`` is P(class 1), ``label`` the
    predicted class name (``0``/``1`` for 0/1 labels). Otherwise ``id``, one ``proba_<class>`` column per class, and
    ``label``. Then, when given, ``image_present``: ``False`` where the image was missing or unreadable and the
    example was predicted from a blank image.
    """
    frame = pd.DataFrame({"id": list(ids)})
    if len(classes) == 2:
        frame["proba"] = proba[:, 1]
    else:
        for i, name in enumerate(classes):
            frame[f"proba_{name}"] = proba[:, i]
    frame["label"] = list(labels)
    if image_present is not None:
        frame["image_present"] = [bool(p) for p in image_present]
    return frame


def unseen_labels(examples: Sequence[Example], classes: Sequence[str]) -> dict[str, int]:
    """The labels of ``examples`` that are not among ``classes`` (the model's), with how many examples carry each,
    most frequent first. Unlabeled examples count for nothing: labels are optional to predict."""
    known = set(classes)
    counts = Counter(e.label for e in examples if e.label is not None and e.label not in known)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class UnseenLabelsWarning(UserWarning):
    """Some examples given to predict carry a label the model never saw in training."""


def warn_unseen_labels(examples: Sequence[Example], classes: Sequence[str]) -> dict[str, int]:
    """Warns (:class:`UnseenLabelsWarning` and the ``mmfuse.engine`` log, as missing images are) when ``examples``
    carry labels that are not among ``classes``, in one message naming them (:func:`unseen_labels_message`); the
    predict paths (the Python API and ``mmfuse predict``) call it. Returns :func:`unseen_labels`."""
    import warnings

    from mmfuse.data.missing_images import _caller_level, logger

    unseen = unseen_labels(examples, classes)
    if unseen:
        message = unseen_labels_message(unseen, len(examples), classes)
        logger.warning(message)
        warnings.warn(message, UnseenLabelsWarning, stacklevel=_caller_level())
    return unseen


def unseen_labels_message(unseen: Mapping[str, int], total: int, classes: Sequence[str]) -> str:
    """One warning naming the labels the model never saw (with their counts) and the classes it knows."""
    n = sum(unseen.values())
    shown = ", ".join(f"{label!r} ({count})" for label, count in list(unseen.items())[:10])
    more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
    return (
        f"{n} of {total} examples carry a label the model never saw: {shown}{more}; it knows "
        f"{', '.join(map(repr, classes))}. They are predicted as one of those; the labels are not used to predict "
        "(`mmfuse evaluate` refuses them: map them with the data config's label_map, or retrain with these classes)"
    )


MIN_CLASS_EXAMPLES = 5
"""A class with fewer training examples than this gets a warning (often a label typo that became a class)."""


def data_counts(reports: Mapping[str, SplitReport]) -> dict[str, dict[str, int]]:
    """Per split: rows read, examples kept, how many were left out (or blanked) for what, and how many rows share
    an id with another (kept), for ``summary.json``."""
    return {
        name: {
            "rows": r.rows,
            "examples": r.examples,
            **{kind: len(getattr(r, kind)) for kind in _LEFT_OUT},
        }
        for name, r in reports.items()
    }


_LEFT_OUT = {
    "bad_rows": "rows skipped as unreadable (on_bad_row: skip)",
    "duplicate_ids": "rows with an id that an earlier row has too (both kept; ids need not be unique)",
    "skipped_images": "examples dropped for a missing or unreadable image (on_missing_image: skip)",
    "blank_images": "examples kept with a blank image for a missing or unreadable one (on_missing_image: blank)",
}
_FLAGGED = {
    "same_images": "examples with the same image file (byte for byte) as an earlier one (kept)",
    "extension_mismatches": "images whose content is another format than their extension says (kept)",
    "fallback_texts": "texts that were not UTF-8, decoded with a fallback encoding (kept)",
    "replacement_chars": "texts holding U+FFFD, mangled before they reached this file (kept)",
}
"""Defects of kept examples: what ``mmfuse data check`` lists beside :data:`_LEFT_OUT`, said by training too."""


def data_warnings(reports: Mapping[str, SplitReport], class_counts: Mapping[str, int]) -> list[str]:
    """What a training run must say about its data, as ``mmfuse data check`` does: rows and images left out or
    blanked, rows sharing an id, and the defects of kept examples (how many, why, the first few); a split file that
    is not UTF-8 or not in the format its extension says; a split the preset names that is not there; images or
    ids shared with another split (possible leaks); splits that could not be stratified; classes with fewer than
    :data:`MIN_CLASS_EXAMPLES` examples.

    Args:
        reports: the load reports of the splits trained on, by split name.
        class_counts: training examples per class.
    """
    out = []
    for name, report in reports.items():
        for kind, what in {**_LEFT_OUT, **_FLAGGED}.items():
            problems = getattr(report, kind)
            if problems:
                out.append(f"{name}: {len(problems)} of {report.rows} {what}: {_first(problems)}")
        if report.file_encoding:
            out.append(f"{name}: the file {report.source} is not UTF-8: decoded as {report.file_encoding}")
        out += [
            f"{name}: the seeded split is not stratified by label ({note}); class shares may differ between splits"
            for note in report.notes
            if "not stratified" in note
        ]
        out += [f"{name}: {note}" for note in report.notes if any(m in note for m in _SAID_NOTES)]
    for label, count in class_counts.items():
        if count < MIN_CLASS_EXAMPLES:
            out.append(
                f"class {label!r} has only {count} training example(s) (fewer than {MIN_CLASS_EXAMPLES}); if it is a "
                "label typo (e.g. 'Positive' beside 'positive'), fix the file or map it with label_map "
                "(`mmfuse data check` lists the labels)"
            )
    return out


def _first(problems: Sequence[Problem], show: int = 5) -> str:
    shown = "; ".join(str(p) for p in problems[:show])
    return shown + (f"; ... {len(problems) - show} more" if len(problems) > show else "")
