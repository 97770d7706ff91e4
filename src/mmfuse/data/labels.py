"""Class names <-> contiguous class ids, saved next to a model so evaluation and prediction reuse the same map."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path


class UnseenLabelError(ValueError):
    """A label that the map (built from the training labels) does not know; the message lists the known classes."""

    def __init__(self, label: str, classes: Sequence[str]) -> None:
        self.label = label
        self.classes = list(classes)
        super().__init__(
            f"label {label!r} was not seen in training; known classes: {', '.join(map(repr, classes))}. "
            "Fix the label (or the config's label_map), or retrain with this class"
        )


def _sort_key(label: str) -> tuple[int, float, str]:
    """Numeric labels first, by value ("2" before "10"); then the others alphabetically."""
    try:
        value = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (0, value, label) if math.isfinite(value) else (1, 0.0, label)


class LabelMap:
    """An ordered list of class names; a class id is the position of its name.

    Args:
        classes: the class names in id order; unique, non-empty.

    Raises:
        ValueError: empty list, duplicate or empty names.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        classes = [str(c) for c in classes]
        if not classes:
            raise ValueError("a label map needs at least one class; were all the labels missing?")
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        if duplicates:
            raise ValueError(f"duplicate class names {duplicates} in label map; each class must appear once")
        if any(not c for c in classes):
            raise ValueError("empty class name in label map; every label must be a non-empty string")
        self._classes = classes
        self._index = {c: i for i, c in enumerate(classes)}

    @classmethod
    def from_labels(cls, labels: Iterable[str | None]) -> LabelMap:
        """The map of the distinct labels, sorted (numeric strings numerically); ``None`` (unlabeled) is ignored."""
        return cls(sorted({str(x) for x in labels if x is not None}, key=_sort_key))

    @property
    def classes(self) -> list[str]:
        """Class names in id order (a copy)."""
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    def encode(self, label: str) -> int:
        """Class id of ``label``.

        Raises:
            UnseenLabelError: ``label`` is not one of the classes.
        """
        try:
            return self._index[label]
        except KeyError:
            raise UnseenLabelError(label, self._classes) from None

    def decode(self, index: int) -> str:
        """Class name of id ``index``.

        Raises:
            ValueError: ``index`` is not in ``0 .. num_classes - 1``.
        """
        if not 0 <= int(index) < len(self._classes):
            raise ValueError(f"class id {index} out of range: this map has {len(self._classes)} classes")
        return self._classes[int(index)]

    def to_dict(self) -> dict[str, list[str]]:
        return {"classes": self.classes}

    def save(self, path: str | Path) -> Path:
        """Writes the map as JSON (``{"classes": [...]}``); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        """Reads a map written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not JSON, or no ``classes`` list of strings.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label map {str(path)!r} not found; it is saved with the trained model")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"label map {str(path)!r} is not valid JSON ({e})") from None
        classes = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f'label map {str(path)!r} must be {{"classes": [names...]}}, got {str(data)[:100]!r}')
        return cls(classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and other._classes == self._classes

    def __hash__(self) -> int:
        return hash(tuple(self._classes))

    def __repr__(self) -> str:
        return f"LabelMap({self._classes!r})"
