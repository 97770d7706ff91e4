"""Image preprocessing as small picklable callables (settings only, no model weights), one per encoder family.

No torchvision: transformers' PIL-backend image processors, or PIL + numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from mmfuse.encoders._common import jsonable, load_pretrained

ResizeMode = Literal["stretch", "crop"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "crop")


def _as_rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ValueError(f"preprocess takes a PIL image, got {type(image).__name__}; open files with PIL.Image.open")
    return image if image.mode == "RGB" else image.convert("RGB")  # grayscale, palette, RGBA, CMYK -> RGB


class HFImagePreprocessor:
    """A transformers image processor (PIL backend) applied to one image: resize, crop, rescale, normalise as the
    model's ``preprocessor_config.json`` says. Returns a ``(3, H, W)`` float32 tensor.

    Args:
        source: hub id or folder with ``preprocessor_config.json``.
    """

    def __init__(self, source: str | Path) -> None:
        from transformers import AutoImageProcessor

        self.processor = load_pretrained(AutoImageProcessor.from_pretrained, source, "image processor", backend="pil")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=_as_rgb(image), return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
        return pixels[0].to(torch.float32)

    def identity(self) -> dict[str, Any]:
        """Every setting of the processor (sizes, crop, resampling, mean/std, ...)."""
        return jsonable({"processor": type(self.processor).__name__, **self.processor.to_dict()})


class LitePreprocessor:
    """EfficientNet-Lite preprocessing, as the TF-Lite models were trained: RGB 0..255, ``(x - 127) / 128``.

    Args:
        image_size: output side in pixels.
        resize: ``"stretch"`` resizes the whole image to ``image_size × image_size`` (keeps every pixel, e.g. the
            caption of a meme, at the cost of the aspect ratio); ``"crop"`` resizes the short side to
            ``image_size`` and takes the centre square.
    """

    mean = 127.0
    std = 128.0

    def __init__(self, image_size: int = 224, resize: ResizeMode = "stretch") -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size must be an int >= 32 (pixels), got {image_size!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
        self.image_size = image_size
        self.resize = resize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = _as_rgb(image)
        s = self.image_size
        if self.resize == "stretch":
            image = image.resize((s, s), Image.Resampling.BILINEAR)
        else:
            w, h = image.size
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            image = image.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - s) // 2, (nh - s) // 2
            image = image.crop((left, top, left + s, top + s))
        x = (np.asarray(image, dtype=np.float32) - self.mean) / self.std  # (H, W, 3)
        return torch.from_numpy(x.transpose(2, 0, 1).copy())

    def identity(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "resample": "bilinear",
            "mean": self.mean,
            "std": self.std,
        }
