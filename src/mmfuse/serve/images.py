"""Images from request bytes, never from paths: the data layer's safe decoding applied to bytes in memory.

:func:`~mmfuse.data.open_image` reads a file; a request must never name one. These functions decode the bytes a
client sent with the same checks (format detected from the content, pixel cap read from the header before decoding,
full decode, conversion to RGB), so a server never touches the filesystem on a client's behalf.
"""

from __future__ import annotations

import base64
import binascii
import re

from PIL import Image

from mmfuse.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, _decode, _to_rgb

__all__ = ["ImageBytesTooLargeError", "decode_base64", "decode_image"]

_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class ImageBytesTooLargeError(ImageTooLargeError):
    """The encoded image has more bytes than allowed (before any decoding)."""


def decode_image(
    data: bytes, *, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None
) -> Image.Image:
    """Decodes image bytes (PNG, JPEG, WebP, GIF, BMP, ...) into a fully loaded RGB image.

    Args:
        data: the encoded image.
        name: what the bytes are, for messages (a field name such as ``items[2].image``, never a path).
        max_pixels: refuse images with more pixels than this (a decompression bomb), checked from the header.
        max_bytes: refuse more encoded bytes than this.

    Raises:
        ImageBytesTooLargeError: more than ``max_bytes`` bytes.
        ImageTooLargeError: more than ``max_pixels`` pixels.
        ImageDecodeError: empty, not an image, truncated or corrupt.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageBytesTooLargeError(
            name, f"{len(data)} bytes exceeds the limit of {max_bytes} bytes", "send a smaller or more compressed image"
        )
    try:
        image, _ = _decode(data, name, max_pixels=max_pixels, draft=False)  # type: ignore[arg-type]
    except ImageTooLargeError as e:  # the data layer's fix names its config key; say what a client can do
        raise ImageTooLargeError(
            name, e.reason, "send a smaller image (the server's pixel cap is --max-pixels)"
        ) from None
    return _to_rgb(image, name)  # type: ignore[arg-type]


def decode_base64(text: str, *, name: str = "image", max_bytes: int | None = None) -> bytes:
    """The bytes of a base64 string (standard or URL-safe alphabet, padding optional), or of a ``data:`` URL.

    Raises:
        ImageBytesTooLargeError: the decoded bytes would exceed ``max_bytes``.
        ImageDecodeError: not valid base64.
    """
    original = text.strip()
    text = _DATA_URL.sub("", original, count=1)
    text = "".join(text.split())  # line breaks of MIME-style base64
    if max_bytes is not None and len(text) * 3 // 4 > max_bytes + 3:
        raise ImageBytesTooLargeError(
            name,
            f"about {len(text) * 3 // 4} bytes exceeds the limit of {max_bytes} bytes",
            "send a smaller or more compressed image",
        )
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        shown = text[:24] + ("..." if len(text) > 24 else "")
        location = _location_kind(original)
        if location is not None:
            shown = original[:80] + ("..." if len(original) > 80 else "")
            raise ImageDecodeError(
                name,
                f"{shown!r} looks like {location}, not base64 image bytes; the server never reads files or fetches "
                "URLs for a client",
                "send the image file's bytes base64-encoded (or as a multipart file)",
            ) from None
        raise ImageDecodeError(
            name, f"not valid base64 (starts with {shown!r})", "send the file's bytes base64-encoded"
        ) from None


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_PATH = re.compile(r"([\\/]|^~|^[a-z]:)(.*)\.[a-z0-9]{2,5}$|^[^/\\]+\.(jpe?g|png|gif|bmp|webp|tiff?)$", re.IGNORECASE)


def _location_kind(text: str) -> str | None:
    """``a URL`` or ``a file path`` when ``text`` is one of those rather than base64, else ``None``."""
    text = text.strip()
    if _URL.match(text):
        return "a URL"
    if _PATH.search(text):
        return "a file path"
    return None
