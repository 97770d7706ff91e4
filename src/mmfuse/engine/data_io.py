"""Where the examples of fit / evaluate / predict come from, and how predictions are written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmfuse.data.config import DataConfig, load_data_config
from mmfuse.data.example import Example
from mmfuse.data.loading import Split, load_examples, load_splits

ExamplesLike = Sequence[Example] | Split | str | Path
"""Examples, a loaded split, or the path of a data file (JSONL/CSV read with the run's column mapping)."""

_CONFIG_SUFFIXES = (".yaml", ".yml")


def examples_of(source: ExamplesLike, data: DataConfig | None, *, labeled: bool | None = None) -> list[Example]:
    """The examples of ``source``; a file path is read with :func:`file_examples`."""
    if isinstance(source, Split):
        return list(source.examples)
    if isinstance(source, (str, Path)):
        return file_examples(source, data, labeled=labeled).examples
    return list(source)


def file_examples(path: str | Path, data: DataConfig | None, *, labeled: bool | None = None) -> Split:
    """Reads one data file with the run's data config (columns, templates, label map).

    A file inside the run's dataset root resolves its images against that root; a file elsewhere against its own
    folder. Missing images become blanks (``image_present=False``) rather than dropped rows, so every row of the
    file gets a prediction.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if data is not None:
        root = data.resolved_root()
        if (root / path).is_file() if not path.is_absolute() else (path.is_file() and _inside(path, root)):
            return load_examples(path, data.model_copy(update={"on_missing_image": "blank"}), labeled=labeled)
    if not path.is_file():
        where = f" (nor under the dataset root {str(data.root)!r})" if data is not None else ""
        raise FileNotFoundError(f"data file {str(path)!r} not found{where}; pass a JSONL or CSV file")
    base = data or DataConfig(root=path.resolve().parent, train=path.name)
    cfg = base.model_copy(update={"root": path.resolve().parent, "on_missing_image": "blank"})
    return load_examples(path.resolve(), cfg, labeled=labeled)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def split_examples(split: str, data: DataConfig | None, source: str | Path | None = None) -> Split:
    """The ``split`` of the run's data, of another data config (``source`` a YAML file), or a data file.

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
    if split not in splits:
        raise ValueError(f"the data has no {split!r} split (it has {', '.join(splits)}); pick one of them")
    return splits[split]


def predictions_frame(
    ids: Sequence[str], proba: np.ndarray, classes: Sequence[str], labels: Sequence[str]
) -> pd.DataFrame:
    """The predictions table.

    Binary tasks: ``id, proba, label`` (the Hateful Memes challenge format): ``proba`` is P(class 1), ``label`` the
    predicted class name (``0``/``1`` for 0/1 labels). Otherwise ``id``, one ``proba_<class>`` column per class, and
    ``label``.
    """
    frame = pd.DataFrame({"id": list(ids)})
    if len(classes) == 2:
        frame["proba"] = proba[:, 1]
    else:
        for i, name in enumerate(classes):
            frame[f"proba_{name}"] = proba[:, i]
    frame["label"] = list(labels)
    return frame
