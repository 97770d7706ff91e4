"""Rows whose images are held in memory, and Hugging Face datasets.

The rest of the pipeline reads images from files (checked at load time, decoded in loader workers, hashed by the
feature cache). An image column may instead hold images themselves: PIL images, raw bytes, or the
``{"bytes": ..., "path": ...}`` dicts of a ``datasets.Image`` column (also what such a column becomes in a Parquet
file). :func:`write_embedded_images` writes each of them once to a folder, one file per content hash (the same
image under two rows, or in two calls, is one file), and puts the file's path in the row, so from there on they are
images like any other.

A ``datasets.Dataset`` (:func:`is_hf_dataset`, by its module name: ``datasets`` is imported only when the object is
one) becomes a pandas DataFrame (:func:`hf_frame`), with ``ClassLabel`` columns as their class names.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

IMAGES_SUBDIR = "images"
"""Folder under the feature cache root that holds images written from memory."""


def default_image_cache() -> Path:
    """Where images held in memory are written when no folder is given: ``<temp dir>/mmfuse-images``."""
    return Path(tempfile.gettempdir()) / "mmfuse-images"


def is_hf_dataset(obj: Any) -> bool:
    """Whether ``obj`` comes from Hugging Face ``datasets`` (checked by module name, without importing it); only a
    ``datasets.Dataset`` can be read (:func:`hf_frame`)."""
    return (type(obj).__module__ or "").split(".")[0] == "datasets"


def hf_frame(dataset: Any) -> Any:
    """A ``datasets.Dataset`` as a pandas DataFrame: an image column as its ``{"bytes", "path"}`` dicts (not
    decoded), a ``ClassLabel`` column as its class names.

    Raises:
        TypeError: a ``datasets.DatasetDict`` or ``IterableDataset`` (pick a split / materialize it first).
    """
    if not callable(getattr(dataset, "to_pandas", None)) or not hasattr(dataset, "features"):
        raise TypeError(
            f"a {type(dataset).__name__} from Hugging Face datasets cannot be read as rows; pass one split, "
            "e.g. dataset['train'] (a datasets.Dataset)"
        )
    frame = dataset.to_pandas()
    for name, feature in dataset.features.items():
        names = getattr(feature, "names", None)
        if type(feature).__name__ == "ClassLabel" and names:
            frame[name] = [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in frame[name]]
    return frame


def is_embedded_image(value: Any) -> bool:
    """Whether a cell holds an image itself (PIL image, bytes, or a ``{"bytes", "path"}`` dict) rather than a path."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, Mapping):
        return "bytes" in value or "path" in value
    return type(value).__module__.startswith("PIL.") and hasattr(value, "save")


def write_embedded_images(rows: list[dict[str, Any]] | list[Any], column: str, folder: Path) -> int:
    """Replaces each image held in memory in ``column`` of ``rows`` (dicts of cell values) by the path of a file
    under ``folder`` named by the hash of its bytes, written when it is not there yet. A ``{"bytes": None,
    "path": p}`` dict becomes ``p``; a dict with neither becomes ``None`` (no image, counted by the image policy).

    Returns:
        How many cells held an image's bytes in memory (each now names its file).

    Raises:
        OSError: the folder cannot be written (the message names it).
    """
    count = 0
    for row in rows:
        if row is None or column not in row or not is_embedded_image(row[column]):
            continue
        data = _image_bytes(row[column])
        if data is None:
            path = row[column].get("path") if isinstance(row[column], Mapping) else None
            row[column] = os.fspath(path) if path else None
            continue
        row[column] = str(_write_once(data, folder))
        count += 1
    return count


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        data = value.get("bytes")
        return bytes(data) if data is not None else None
    buffer = io.BytesIO()  # a PIL image: its own format when it has one (no re-encoding loss for JPEG), else PNG
    fmt = value.format if getattr(value, "format", None) in ("JPEG", "PNG", "WEBP", "GIF", "BMP") else "PNG"
    value.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_once(data: bytes, folder: Path) -> Path:
    digest = hashlib.sha256(data).hexdigest()[:32]
    path = folder / f"{digest}{_suffix(data)}"
    if path.is_file():
        return path.resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{digest}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    except OSError as e:
        raise OSError(
            f"cannot write an image held in memory to {str(folder)!r} ({e.strerror or e}); set cache.dir to a "
            "writable folder"
        ) from e
    return path.resolve()


def _suffix(data: bytes) -> str:
    """The file suffix of the image format ``data`` is in (by content), ``.img`` when Pillow does not know it (the
    image check then reports the file as unreadable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except (UnidentifiedImageError, OSError, ValueError):
        return ".img"
    suffixes = [s for s, f in Image.registered_extensions().items() if f == fmt]
    preferred = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
    return preferred.get(fmt or "", suffixes[0] if suffixes else ".img")
