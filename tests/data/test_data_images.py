"""open_image / check_image on broken inputs and on every mode that must become RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmfuse.data import (
    ImageDecodeError,
    ImageError,
    ImageNotFoundError,
    ImageOutsideRootError,
    ImageTooLargeError,
    check_image,
    open_image,
)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _noise(size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 1-bit pixels, with a token IDAT: a few hundred bytes on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# --- broken inputs ------------------------------------------------------------------------------------------------


def test_truncated_png_is_refused_even_though_verify_passes(tmp_path: Path) -> None:
    data = _png_bytes(_noise())
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(ImageDecodeError, match=r"cut\.png") as exc:
        open_image(path)
    assert "cannot decode PNG" in exc.value.reason
    with pytest.raises(ImageDecodeError):
        check_image(path)


def test_truncated_jpeg_is_caught_by_the_draft_mode_check(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _noise(128).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        check_image(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty file \(0 bytes\)"):
        open_image(path)


def test_non_image_bytes_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"this is a text file, not a photo\n" * 4)
    with pytest.raises(ImageDecodeError, match="not an image") as exc:
        open_image(path)
    assert isinstance(exc.value, ValueError)
    assert exc.value.path == path


def test_jpeg_named_png_opens_by_content(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (20, 10), (10, 200, 30)).save(path, format="JPEG")
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (20, 10)
    assert check_image(path).format == "JPEG"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="file not found") as exc:
        open_image(tmp_path / "nope.png")
    assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, ValueError)


def test_decompression_bomb_20000_squared_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_huge_png_header(20_000, 20_000))
    assert path.stat().st_size < 1000
    with pytest.raises(ImageTooLargeError, match="400000000 pixels") as exc:
        open_image(path)
    assert "decompression bomb" in str(exc.value)
    with pytest.raises(ImageTooLargeError):
        check_image(path, max_pixels=10**12)  # above Pillow's own hard limit, Pillow's refusal is reported the same


def test_pixel_cap_below_pillows_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_huge_png_header(10_000, 10_000))  # 100 Mpx: Pillow only warns; our default cap refuses
    with pytest.raises(ImageTooLargeError, match="10000x10000"):
        open_image(path)
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 10)).save(small)
    with pytest.raises(ImageTooLargeError, match="cap of 99"):
        open_image(small, max_pixels=99)
    assert open_image(small, max_pixels=100).size == (10, 10)


def test_path_with_dotdot_outside_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    with pytest.raises(ImageOutsideRootError, match="outside the dataset root") as exc:
        open_image("../secret.png", root=root)
    assert "allow_outside_root" in str(exc.value)
    with pytest.raises(ImageOutsideRootError):
        open_image(outside, root=root)  # absolute paths too
    assert open_image("../secret.png", root=root, allow_outside_root=True).size == (4, 4)


def test_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    target = tmp_path / "elsewhere.png"
    Image.new("RGB", (4, 4)).save(target)
    (root / "link.png").symlink_to(target)
    with pytest.raises(ImageOutsideRootError) as exc:
        open_image("link.png", root=root)
    # the message names the link, where it leads, and both ways to accept it
    assert f"through the symlink 'link.png' -> '{target}'" in exc.value.reason
    assert "set allow_outside_root: true in the data config to follow it" in exc.value.reason
    assert "data.allow_outside_root=true" in str(exc.value)
    assert open_image("link.png", root=root, allow_outside_root=True).size == (4, 4)


def test_every_image_error_is_a_value_error_with_path_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\x00\x01")
    with pytest.raises(ImageError) as exc:
        open_image(path)
    assert str(path) in str(exc.value) and exc.value.reason


# --- conversions to RGB -------------------------------------------------------------------------------------------


def test_palette_with_transparency_composites_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 1)
    image.info["transparency"] = 0
    path = tmp_path / "pal.png"
    image.save(path, transparency=0)
    rgb = open_image(path)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 0, 0)
    assert rgb.getpixel((1, 1)) == (255, 255, 255)  # transparent index on white, not black


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "pal.gif"
    Image.new("RGB", (8, 8), (0, 128, 255)).convert("P").save(path)
    rgb = open_image(path)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((3, 3)) == pytest.approx((0, 128, 255), abs=40)


def test_rgba_alpha_blends_onto_white(tmp_path: Path) -> None:
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[0, 0] = (0, 0, 255, 255)  # opaque blue
    array[0, 1] = (0, 0, 0, 0)  # fully transparent
    array[1, 0] = (0, 0, 0, 128)  # half-transparent black
    path = tmp_path / "alpha.png"
    Image.fromarray(array).save(path)
    rgb = open_image(path)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (0, 0, 255)
    assert rgb.getpixel((1, 0)) == (255, 255, 255)
    assert 120 <= rgb.getpixel((0, 1))[0] <= 135


def test_grayscale_alpha_and_one_bit(tmp_path: Path) -> None:
    la = tmp_path / "la.png"
    Image.new("LA", (3, 3), (100, 255)).save(la)
    assert open_image(la).getpixel((1, 1)) == (100, 100, 100)
    one = tmp_path / "one.png"
    Image.new("1", (3, 3), 1).save(one)
    assert open_image(one).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    r, g, b = open_image(path).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = open_image(path)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((1, 0))[0] == 128  # clipping to 255 would make this white
    assert rgb.getpixel((0, 1))[0] == 255
    assert rgb.getpixel((1, 1))[0] == 4


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, format="JPEG", exif=exif, quality=95)
    rgb = open_image(path)
    assert rgb.size == (20, 40)
    top = rgb.getpixel((10, 2))
    assert top[0] > 200 and top[2] < 60  # the left stripe is now on top


def test_check_image_reports_size_on_disk_and_format(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    _noise(300).save(path, format="JPEG")
    info = check_image(path)
    assert info.format == "JPEG"
    assert info.size == (300, 300)
