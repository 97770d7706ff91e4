"""Opening images safely: by content, fully decoded, converted to RGB, with a pixel cap and a root check.

Every failure is an :class:`ImageError` (a ``ValueError``) that names the file and says what is wrong, so the
loader can apply its missing-image policy and the dataset can stand a blank in for an image that breaks mid-run.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmfuse.data._paths import ALLOW_COMMAND_LINE, OutsideRootError, resolve_path

DEFAULT_MAX_PIXELS = 64_000_000
"""Default pixel cap: an 8000x8000 photo passes, a 20000x20000 decompression bomb does not."""

_EXIF_ORIENTATION = 0x0112
_BLANK_BACKGROUND = (255, 255, 255)  # transparent regions are shown on white, as viewers and browsers show them


class ImageError(ValueError):
    """An image that cannot be used; ``path`` is the file and ``reason`` the short cause (for reports)."""

    def __init__(self, path: Path | str, reason: str, fix: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"image {str(path)!r}: {reason}" + (f"; {fix}" if fix else ""))


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The image file does not exist (or the row names no image)."""


class ImageDecodeError(ImageError):
    """The file exists but is empty, not an image, truncated or corrupt."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the cap (a decompression bomb, or a cap set too low)."""


class ImageOutsideRootError(ImageError, OutsideRootError):
    """The image path resolves outside the dataset root."""

    @classmethod
    def of(cls, path: Path | str, error: OutsideRootError) -> ImageOutsideRootError:
        """The image error for ``path`` refused by :func:`~mmfuse.data._paths.resolve_path` with ``error``: its
        reason (which names the setting that accepts it), where it leads, and that setting on the command line."""
        return cls(path, error.reason, f"it resolves to {str(error.resolved)!r}; {ALLOW_COMMAND_LINE}")


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`check_image` found: the format detected from the content, the size on disk, the mode, and a
    hash of the file's bytes (to find the same image under two names)."""

    format: str | None
    size: tuple[int, int]
    mode: str
    digest: str = ""


def open_image(
    path: Path | str,
    *,
    root: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_outside_root: bool = False,
) -> Image.Image:
    """Opens, fully decodes and converts an image to RGB.

    The format is detected from the content, whatever the file extension. Conversions: EXIF orientation applied;
    palette, grayscale, CMYK converted; alpha composited on white; 16-bit and 32-bit gray scaled to 8 bits.

    Args:
        path: image file; relative paths resolve against ``root`` when given.
        root: dataset root; when given, a path that resolves outside it is refused.
        max_pixels: refuse images with more pixels than this (checked from the header, before decoding).
        allow_outside_root: accept paths outside ``root``.

    Raises:
        ImageNotFoundError: no such file.
        ImageOutsideRootError: the path resolves outside ``root``.
        ImageTooLargeError: more pixels than ``max_pixels``.
        ImageDecodeError: empty, not an image, truncated or corrupt.
    """
    path = _check_root(Path(path), root, allow_outside_root)
    image, _ = _decode(_read(path), path, max_pixels=max_pixels, draft=False)
    return _to_rgb(image, path)


def check_image(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Decodes the whole image (at reduced scale for JPEG) to prove it is readable, and returns what it found.

    ``Image.verify()`` is not enough: a truncated PNG may pass it. JPEGs decode in draft mode (DCT scaling), which
    still reads the whole bitstream, so truncation is caught at a fraction of the cost.

    Raises:
        ImageError: as :func:`open_image` (without the root check, which the loader does itself).
    """
    path = Path(path)
    data = _read(path)
    image, size = _decode(data, path, max_pixels=max_pixels, draft=True)
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    info = ImageInfo(format=image.format, size=size, mode=image.mode, digest=digest)
    _to_rgb(image, path)
    return info


def _check_root(path: Path, root: Path | None, allow_outside_root: bool) -> Path:
    if root is None:
        return path
    try:
        return resolve_path(path, root, allow_outside_root=allow_outside_root, what="image")
    except OutsideRootError as e:
        raise ImageOutsideRootError.of(path, e) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageNotFoundError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageNotFoundError(path, "is a directory, not an image file") from None
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})") from None


def _decode(data: bytes, path: Path, *, max_pixels: int, draft: bool) -> tuple[Image.Image, tuple[int, int]]:
    """The fully decoded image and its size on disk (JPEG draft mode may decode it smaller)."""
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns above its own cap and raises above twice it; the cap that counts is max_pixels, checked below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            match = re.search(r"\((\d+) pixels\)", str(e))
            pixels = match.group(1) if match else "too many"
            raise ImageTooLargeError(
                path,
                f"{pixels} pixels exceeds the cap of {max_pixels} (possible decompression bomb)",
                "resize the image; Pillow refuses anything above twice Image.MAX_IMAGE_PIXELS",
            ) from None
        except UnidentifiedImageError:
            raise ImageDecodeError(path, f"not an image (content starts with {data[:8]!r})") from None
        except Exception as e:  # Pillow plugins raise many types on corrupt headers (SyntaxError, struct.error, ...)
            raise ImageDecodeError(path, f"corrupt header ({type(e).__name__}: {e})") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                path,
                f"{width}x{height} = {width * height} pixels exceeds the cap of {max_pixels} "
                "(possible decompression bomb)",
                "raise max_image_pixels if the image is genuine",
            )
        if draft and image.format == "JPEG":
            image.draft("RGB", (64, 64))
        try:
            image.load()
        except Exception as e:  # truncated data (OSError), zlib errors, broken chunks...
            raise ImageDecodeError(path, f"cannot decode {image.format} data ({type(e).__name__}: {e})") from None
    return image, (width, height)


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        mode = image.mode
        if mode == "RGB":
            return image
        if mode.startswith("I") or mode == "F":
            return Image.fromarray(_gray_to_uint8(np.asarray(image), mode), mode="L").convert("RGB")
        has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*_BLANK_BACKGROUND, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except Exception as e:
        raise ImageDecodeError(path, f"cannot convert mode {image.mode} to RGB ({type(e).__name__}: {e})") from None


def _gray_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scales 16/32-bit integer or float gray levels to 0..255."""
    values = array.astype(np.float64)
    if mode.startswith("I;16"):
        values = values / 257.0
    elif mode == "F":
        values = values * 255.0 if values.size and values.max() <= 1.0 else values
    elif values.size and values.max() > 255:  # "I": 32-bit container, usually holding 16-bit data
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
