"""One example of a multimodal dataset."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One (id, text, image, label) example, after reading and cleaning.

    Attributes:
        id: unique id within its split (as a string, whatever it was in the file).
        text: the text, already decoded (may be empty).
        image: path of the image file (read from a data file: resolved against the dataset root); ``None`` when
            the row has no image (the image policy decides what happens then). A ``str`` or other path-like value
            becomes a :class:`~pathlib.Path` (a relative one is relative to the working directory).
        label: the class name after the optional raw-label mapping (ints become their decimal string);
            ``None`` for unlabeled data.

    An ``id`` or ``label`` given as an int becomes its decimal string, as when read from a file.

    Raises:
        TypeError: an image that is not a path (e.g. a PIL image or bytes).
    """

    id: str
    text: str
    image: Path | None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.image is not None and not isinstance(self.image, Path):
            if not isinstance(self.image, (str, os.PathLike)):
                raise TypeError(
                    f"Example {self.id!r}: image must be a file path (str or pathlib.Path) or None, got "
                    f"{type(self.image).__name__}; save the image to a file and pass its path"
                )
            object.__setattr__(self, "image", Path(self.image))
        if not isinstance(self.id, str):
            object.__setattr__(self, "id", str(self.id))
        if self.label is not None and not isinstance(self.label, str):
            object.__setattr__(self, "label", str(self.label))
