"""``HFResNetEncoder``: a transformers ResNet (``microsoft/resnet-18``, ...), its last feature map and its pooling."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from mmfuse.encoders._common import WeightsFingerprint, check_top_k, jsonable, load_pretrained, set_trainable
from mmfuse.encoders._preprocess import HFImagePreprocessor
from mmfuse.encoders.base import EncoderOutput, ImageEncoder

RESNET_MODEL_TYPES = ("resnet",)


@functools.cache
def _backbone_class() -> type:
    """``ResNetModel`` that skips the ImageNet classifier of a ``ResNetForImageClassification`` checkpoint (what the
    hub holds) quietly. Made on first use so importing this module does not import the modeling code; module
    ``__getattr__`` below lets pickle find it by name."""
    from transformers import ResNetModel

    class _ResNetBackbone(ResNetModel):
        _keys_to_ignore_on_load_unexpected = (r"^classifier\.",)

    _ResNetBackbone.__module__, _ResNetBackbone.__qualname__ = __name__, "_ResNetBackbone"
    return _ResNetBackbone


def __getattr__(name: str) -> Any:
    if name == "_ResNetBackbone":
        return _backbone_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HFResNetEncoder(ImageEncoder):
    """A ResNet as a grid encoder.

    Outputs: ``sequence`` ``(B, h·w, C)`` the last stage's feature map (7×7 at 224 px, C = 512 for ResNet-18,
    2048 for ResNet-50) as row-major regions, ``grid`` its ``(h, w)``, ``mask`` all True, ``pooled`` ``(B, C)``
    the model's average-pooled output. ``dim == sequence_dim == C``. BatchNorm layers of frozen blocks stay in eval
    mode even in train mode (see :meth:`Encoder.train`).

    Args:
        source: hub id (``"microsoft/resnet-18"``) or a folder made with ``save_pretrained`` (a ``ResNetModel`` or
            ``ResNetForImageClassification`` checkpoint) with ``preprocessor_config.json``.
        name: the name it was built from; defaults to ``source``.
    """

    def __init__(self, source: str | Path, *, name: str | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig  # lazy: keeps `import mmfuse` fast

        self.source = str(source)
        self.name = name or self.source
        config = load_pretrained(AutoConfig.from_pretrained, source, "ResNet config")
        if config.model_type not in RESNET_MODEL_TYPES:
            raise ValueError(f"{self.source!r} is a {config.model_type!r} model, not a ResNet (model_type 'resnet')")
        backbone = _backbone_class()
        self.model = load_pretrained(backbone.from_pretrained, source, "ResNet model", config=config).eval()
        self._preprocessor = HFImagePreprocessor(source)
        self.dim = int(self.model.config.hidden_sizes[-1])
        # residual blocks bottom to top, across stages: the unit of trainable_top_k
        self._blocks = [layer for stage in self.model.encoder.stages for layer in stage.layers]
        self.num_layers = len(self._blocks)
        self._fingerprint = WeightsFingerprint()

    @property
    def preprocess(self) -> HFImagePreprocessor:  # type: ignore[override]
        """PIL image (any mode) → ``(3, S, S)`` float tensor with the model's image processor settings."""
        return self._preprocessor

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        """``(B, 3, S, S)`` → pooled ``(B, C)``, sequence ``(B, h·w, C)``, mask ``(B, h·w)`` all True."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        out = self.model(pixel_values=pixel_values)
        seq = out.last_hidden_state.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
        grid = (int(out.last_hidden_state.shape[-2]), int(out.last_hidden_state.shape[-1]))
        return EncoderOutput(pooled=out.pooler_output.flatten(1), sequence=seq, mask=mask, grid=grid)

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes everything, then makes the last ``trainable_top_k`` residual blocks trainable again
        (ResNet-18 has 8). ``0 <= trainable_top_k <= num_layers``."""
        check_top_k(trainable_top_k, self.num_layers, "residual blocks")
        set_trainable([self], False)
        if trainable_top_k:
            set_trainable(self._blocks[self.num_layers - trainable_top_k :], True)
        self.train(self.training)

    def cache_identity(self) -> dict[str, Any]:
        """Encoder class and name, a hash of the weights (BatchNorm statistics included) and the preprocessing."""
        return jsonable(
            {
                "encoder": type(self).__name__,
                "name": self.name,
                "weights": self._fingerprint(self.model),
                "preprocess": self._preprocessor.identity(),
                "output": "last feature map grid; pooled = pooler_output",
            }
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, num_layers={self.num_layers}"
