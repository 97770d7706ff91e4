"""Decoding text bytes: UTF-8 first, then the configured encodings, then charset-normalizer's guess."""

from __future__ import annotations

import codecs
from collections.abc import Sequence

import charset_normalizer

REPLACED = "utf-8 (undecodable bytes replaced)"
"""The "encoding" reported when nothing decodes the bytes cleanly and invalid bytes become U+FFFD."""


def decode_text(data: bytes, fallback_encodings: Sequence[str] = ()) -> tuple[str, str | None]:
    """Decodes ``data``, returning the text and the fallback encoding used (``None`` for plain UTF-8).

    Order: UTF-8 (a BOM is dropped); UTF-16 when the bytes start with its BOM; each of ``fallback_encodings``;
    charset-normalizer's best guess; last, UTF-8 with invalid bytes replaced (reported as :data:`REPLACED`).
    Never raises on content.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass
    for encoding in fallback_encodings:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    best = charset_normalizer.from_bytes(data).best()
    if best is not None:
        return str(best), best.encoding
    return data.decode("utf-8", errors="replace"), REPLACED
