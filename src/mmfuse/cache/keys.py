"""Cache keys: an encoder's identity, and the content of each input.

- The identity is ``encoder.cache_identity()`` (weights hash and preprocessing) as canonical JSON; its SHA-256 names
  the encoder's folder, and the JSON itself is stored in every shard and compared on read.
- An input's key hashes what the encoder reads: a text's UTF-8 bytes, an image file's bytes (not its path or
  modification time: a renamed or touched file keeps its entry, an edited one gets a new entry). A missing or
  unreadable image file and a row without an image share one key, :data:`ABSENT_IMAGE`: the encoder sees the same
  blank stand-in for all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmfuse.data.example import Example

ABSENT_IMAGE = "absent-image"
"""Key of every example whose image is missing (no path, no file, unreadable file): a blank stands in for it."""

_READ_CHUNK = 1 << 20


def canonical_identity(identity: dict[str, Any]) -> str:
    """``identity`` as canonical JSON (sorted keys, no spaces), the form stored and compared.

    Raises:
        ValueError: ``identity`` is not a JSON-able mapping.
    """
    if not isinstance(identity, dict):
        raise ValueError(f"cache_identity() must return a dict, got {type(identity).__name__}: {identity!r}")
    return json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def identity_hash(identity_json: str) -> str:
    """SHA-256 (hex) of the canonical identity JSON: the name of the encoder's cache folder."""
    return hashlib.sha256(identity_json.encode("utf-8")).hexdigest()


def text_key(text: str) -> str:
    """Key of one text: a 128-bit BLAKE2b of its UTF-8 bytes (lone surrogates kept as they are)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, person=b"mmfuse-text").hexdigest()


def file_key(path: Path) -> str:
    """Key of one image file: a 128-bit BLAKE2b of its bytes, or :data:`ABSENT_IMAGE` when it cannot be read."""
    h = hashlib.blake2b(digest_size=16, person=b"mmfuse-image")
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
    except OSError:
        return ABSENT_IMAGE
    return h.hexdigest()


class ContentHasher:
    """Keys of examples' inputs, with image digests remembered within this process.

    Reading every image file again for each request would cost a full pass over the dataset's bytes per run and
    split. A digest is reused only while the file's size, modification time (ns), inode and device are unchanged;
    the key itself is always the hash of the bytes.
    """

    def __init__(self) -> None:
        self._digests: dict[str, tuple[tuple[int, int, int, int], str]] = {}

    def image_key(self, path: Path | None) -> str:
        """Key of one image (``None``: the row has no image)."""
        if path is None:
            return ABSENT_IMAGE
        name = os.fspath(path)
        try:
            st = os.stat(name)
        except OSError:
            return ABSENT_IMAGE
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        known = self._digests.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        digest = file_key(Path(name))
        if digest != ABSENT_IMAGE:
            self._digests[name] = (stamp, digest)
        return digest

    def keys(self, examples: Sequence[Example], *, modality: str) -> list[str]:
        """One key per example: of its text (``modality="text"``) or of its image (``"image"``)."""
        if modality == "text":
            return [text_key(e.text) for e in examples]
        if modality == "image":
            return [self.image_key(e.image) for e in examples]
        raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")


def request_key(identity_hex: str, keys: Sequence[str]) -> str:
    """Key of one request (an encoder over an ordered list of inputs): the in-process memo's key."""
    h = hashlib.sha256(identity_hex.encode())
    for key in keys:
        h.update(b"\x00")
        h.update(key.encode())
    return h.hexdigest()
