"""One example of a multimodal dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One (id, text, image, label) example, after reading and cleaning.

    Attributes:
        id: unique id within its split (as a string, whatever it was in the file).
        text: the text, already decoded (may be empty).
        image: absolute path of the image file, resolved against the dataset root; ``None`` when the row has
            no image (the image policy decides what happens then).
        label: the class name after the optional raw-label mapping (ints become their decimal string);
            ``None`` for unlabeled data.
    """

    id: str
    text: str
    image: Path | None
    label: str | None = None
