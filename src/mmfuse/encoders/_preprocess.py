"""Preprocessing as small picklable objects (settings only, no model weights), one per encoder family: the text
tokenizer (:class:`HFTokenizer`) and the image preprocessing (:class:`HFImagePreprocessor`, :class:`LitePreprocessor`).

Each one saves itself to a folder (:func:`save_preprocessor`) and loads back from it alone
(:func:`load_preprocessing`), so a server can turn requests into model inputs without building the encoder and
loading its weights. The folder holds the library's own files (``save_pretrained`` of the tokenizer or image
processor, where there is one) and ``mmfuse_preprocessing.json``: which class, and the settings mmfuse applies on top
(``max_length``, ...).

No torchvision: transformers' tokenizers and PIL-backend image processors, or PIL + numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from mmfuse.encoders._common import jsonable, load_pretrained

ResizeMode = Literal["stretch", "crop"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "crop")
PREPROCESSING_FILE = "mmfuse_preprocessing.json"
PREPROCESSING_FORMAT = 1
TEXT_INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")


class PreprocessingError(ValueError):
    """A folder that holds no preprocessing mmfuse saved, or a preprocessor that cannot be saved."""


def _tokenizer_hash_text(tokenizer: Any) -> str:
    """The tokenizer's vocabulary and rules as text, without what the last call set (truncation, padding)."""
    if hasattr(tokenizer, "backend_tokenizer"):  # fast tokenizer: vocabulary, normaliser (lower-casing), ...
        data = json.loads(tokenizer.backend_tokenizer.to_str())
        for transient in ("truncation", "padding"):  # set by the last call; ours are fixed (see HFTokenizer)
            data.pop(transient, None)
        return json.dumps(data, sort_keys=True)
    return json.dumps(sorted(tokenizer.get_vocab().items())) + repr(sorted(tokenizer.init_kwargs.items()))


class HFTokenizer:
    """A transformers tokenizer with the settings mmfuse tokenizes with: padding to the longest text of the batch
    (or, for models trained that way such as SigLIP, to ``max_length``), truncation to ``max_length`` tokens (special
    tokens included), and only the inputs the model takes.

    Args:
        tokenizer: a loaded transformers tokenizer.
        max_length: tokens per text after truncation.
        input_names: the model inputs to return, a subset of ``input_ids``, ``attention_mask``, ``token_type_ids``.
        padding: ``"longest"`` (default) or ``"max_length"``.
    """

    kind = "hf_tokenizer"
    PADDINGS: tuple[str, ...] = ("longest", "max_length")
    truncation = True

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int,
        input_names: list[str] | tuple[str, ...],
        padding: str = "longest",
    ) -> None:
        unknown = [n for n in input_names if n not in TEXT_INPUT_NAMES]
        if unknown or "input_ids" not in input_names or "attention_mask" not in input_names:
            raise ValueError(
                f"input_names must hold input_ids and attention_mask, and only names from {list(TEXT_INPUT_NAMES)}; "
                f"got {list(input_names)!r}"
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (tokens per text), got {max_length!r}")
        if padding not in self.PADDINGS:
            raise ValueError(f"padding must be one of {list(self.PADDINGS)}, got {padding!r}")
        self.padding = padding
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.input_names = list(input_names)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenizes ``texts``, padded (to the longest, or to ``max_length``) and truncated to ``max_length``:
        ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` where the model takes them), each ``(B, T)``."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise ValueError(f"tokenize takes a list of strings, got {type(texts).__name__}; wrap one text as [text]")
        if not texts:
            raise ValueError("tokenize got an empty list; pass at least one text")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(
                f"tokenize takes strings; item {bad[0]} is {type(texts[bad[0]]).__name__}: {texts[bad[0]]!r}"
            )
        enc = self.tokenizer(
            list(texts), padding=self.padding, truncation=self.truncation, max_length=self.max_length,
            return_attention_mask=True, return_tensors="pt",
        )  # fmt: skip
        return {k: enc[k] for k in self.input_names if k in enc}

    tokenize = __call__  # the name a TextEncoder gives it, so this object stands in for the encoder's tokenize

    def settings(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "padding": self.padding,
            "truncation": self.truncation,
            "input_names": list(self.input_names),
        }

    def save_files(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any]) -> HFTokenizer:
        from transformers import AutoTokenizer

        if settings.get("padding") not in cls.PADDINGS or settings.get("truncation") is not cls.truncation:
            raise PreprocessingError(
                f"{str(folder)!r} tokenizes with padding={settings.get('padding')!r}, "
                f"truncation={settings.get('truncation')!r}; this mmfuse tokenizes with padding in "
                f"{list(cls.PADDINGS)}, truncation={cls.truncation!r}: export the model again with this mmfuse"
            )
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, folder, "tokenizer")
        return cls(
            tokenizer,
            max_length=settings["max_length"],
            input_names=settings["input_names"],
            padding=settings["padding"],
        )


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

    kind = "hf_image_processor"

    def __init__(self, source: str | Path) -> None:
        from transformers import AutoImageProcessor

        self.processor = load_pretrained(AutoImageProcessor.from_pretrained, source, "image processor", backend="pil")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=_as_rgb(image), return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
        return pixels[0].to(torch.float32)

    def identity(self) -> dict[str, Any]:
        """Every setting of the processor (sizes, crop, resampling, mean/std, ...)."""
        return jsonable({"processor": type(self.processor).__name__, **self.processor.to_dict()})

    def settings(self) -> dict[str, Any]:
        return {"processor": type(self.processor).__name__}  # the settings themselves: preprocessor_config.json

    def save_files(self, folder: Path) -> None:
        self.processor.save_pretrained(str(folder))

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any]) -> HFImagePreprocessor:
        loaded = cls(folder)
        if type(loaded.processor).__name__ != settings.get("processor"):
            raise PreprocessingError(
                f"{str(folder)!r} loads as a {type(loaded.processor).__name__}, but a {settings.get('processor')} "
                "was saved there (another transformers version?); export the model again with this installation"
            )
        return loaded


class LitePreprocessor:
    """EfficientNet-Lite preprocessing, as the TF-Lite models were trained: RGB 0..255, ``(x - 127) / 128``.

    Args:
        image_size: output side in pixels.
        resize: ``"stretch"`` resizes the whole image to ``image_size × image_size`` (keeps every pixel, e.g. the
            caption of a meme, at the cost of the aspect ratio); ``"crop"`` resizes the short side to
            ``image_size`` and takes the centre square.
    """

    kind = "efficientnet_lite"
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
        """``(3, H, W)`` float32, ``(x - 127) / 128`` of the resized RGB image."""
        return self.from_uint8(self.to_uint8(image))

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """The resized RGB image as ``(3, H, W)`` uint8, before normalisation (a quarter of the float32 bytes: what
        DataLoader workers send to the process that runs the encoder); :meth:`from_uint8` finishes it."""
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
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())

    def from_uint8(self, pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(x - 127) / 128`` in float32 of :meth:`to_uint8`'s pixels (one image or a batch). Exact: every uint8
        minus 127 is a float32 integer, and dividing by 128 only lowers the exponent, so the result is the same
        bits in any order, on any CPU.

        Args:
            pixels: uint8 pixels from :meth:`to_uint8` (or a batch of them).
            out: a float32 tensor of the same shape to write into (a caller that normalises batch after batch keeps
                one: a fresh 38 MB buffer per batch of 64 costs its page faults, ~0.7 s of kernel time for 2,592
                images); default: a new tensor.
        """
        x = pixels.to(torch.float32, copy=True) if out is None else out.copy_(pixels)  # then normalised in place
        return x.sub_(self.mean).div_(self.std)

    def identity(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "resample": "bilinear",
            "mean": self.mean,
            "std": self.std,
        }

    def settings(self) -> dict[str, Any]:
        return self.identity()

    def save_files(self, folder: Path) -> None:
        pass  # its settings are all there is

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any]) -> LitePreprocessor:
        loaded = cls(image_size=settings["image_size"], resize=settings["resize"])
        if jsonable(loaded.identity()) != jsonable(settings):
            raise PreprocessingError(
                f"{str(folder)!r} holds EfficientNet-Lite preprocessing {settings}, which this mmfuse does not apply "
                f"({loaded.identity()}); export the model again with this mmfuse"
            )
        return loaded


# kind -> class. Each class has ``kind``, ``settings()`` (JSON-able), ``save_files(folder)`` (the library's own files,
# if any) and the classmethod ``load(folder, settings)``.
PREPROCESSORS: dict[str, Any] = {
    HFTokenizer.kind: HFTokenizer,
    HFImagePreprocessor.kind: HFImagePreprocessor,
    LitePreprocessor.kind: LitePreprocessor,
}
MODALITIES = {HFTokenizer.kind: "text", HFImagePreprocessor.kind: "image", LitePreprocessor.kind: "image"}


def save_preprocessor(preprocessor: Any, folder: str | Path) -> Path:
    """Writes ``preprocessor`` (one of :data:`PREPROCESSORS`) to ``folder`` (created; must be empty or absent):
    the library's files and ``mmfuse_preprocessing.json``. :func:`load_preprocessing` reads it back.

    Raises:
        PreprocessingError: ``preprocessor`` is not one mmfuse can save, or ``folder`` holds files already.
    """
    kind = getattr(preprocessor, "kind", None)
    if PREPROCESSORS.get(kind) is not type(preprocessor):
        raise PreprocessingError(
            f"cannot save a {type(preprocessor).__name__} as preprocessing; savable: "
            f"{', '.join(c.__name__ for c in PREPROCESSORS.values())} (an encoder of your own can make its "
            "tokenize / preprocess one of these, or override save_preprocessing)"
        )
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise PreprocessingError(f"{str(folder)!r} is not empty; save preprocessing to a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    preprocessor.save_files(folder)
    entry = {
        "format_version": PREPROCESSING_FORMAT,
        "kind": kind,
        "modality": MODALITIES[kind],
        "settings": jsonable(preprocessor.settings()),
    }
    (folder / PREPROCESSING_FILE).write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def load_preprocessing(folder: str | Path, modality: str | None = None) -> Any:
    """The preprocessing ``encoder.save_preprocessing(folder)`` (:func:`save_preprocessor`) wrote, without any model
    weights.

    Returns an object with the encoder's preprocessing interface: for text an :class:`HFTokenizer`, whose
    ``tokenize(texts)`` gives the same tensors as the encoder's ``tokenize``; for an image a preprocessor whose
    ``preprocessor(image)`` gives the same tensor as the encoder's ``preprocess``.

    Args:
        modality: ``"text"`` or ``"image"`` to insist on one (a wrong folder then fails here, not at the first
            request).

    Raises:
        FileNotFoundError: ``folder`` holds no saved preprocessing.
        PreprocessingError: a damaged or unknown entry, another modality, or files that do not load (a
            ``ValueError``).
    """
    folder = Path(folder)
    path = folder / PREPROCESSING_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no preprocessing saved in {str(folder)!r} (no {PREPROCESSING_FILE}); save it with "
            "encoder.save_preprocessing(folder), or export the model again with `mmfuse export RUN --format onnx`"
        )
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        kind, settings, version = entry["kind"], entry["settings"], entry["format_version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PreprocessingError(f"{str(path)!r} is damaged ({type(exc).__name__}: {exc}); save it again") from None
    if not isinstance(version, int) or version > PREPROCESSING_FORMAT:
        raise PreprocessingError(
            f"{str(path)!r} has preprocessing format {version!r}; this mmfuse reads up to {PREPROCESSING_FORMAT}: "
            "upgrade mmfuse, or save it again with this one"
        )
    if kind not in PREPROCESSORS:
        raise PreprocessingError(f"{str(path)!r} holds unknown preprocessing {kind!r}; known: {sorted(PREPROCESSORS)}")
    if modality is not None and MODALITIES[kind] != modality:
        raise PreprocessingError(f"{str(folder)!r} holds {MODALITIES[kind]} preprocessing, not {modality}")
    try:
        return PREPROCESSORS[kind].load(folder, settings)
    except KeyError as exc:
        raise PreprocessingError(f"{str(path)!r} lacks the setting {exc}; save it again") from None
