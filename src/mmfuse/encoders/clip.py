"""``CLIPVisionEncoder``: the vision tower of a CLIP model (transformers), its patch tokens and projected embedding."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from mmfuse.encoders._common import WeightsFingerprint, check_top_k, jsonable, load_pretrained, set_trainable
from mmfuse.encoders._preprocess import HFImagePreprocessor
from mmfuse.encoders.base import EncoderOutput, ImageEncoder

CLIP_MODEL_TYPES = ("clip", "clip_vision_model")


@functools.cache
def _vision_tower_class() -> type:
    """``CLIPVisionModelWithProjection`` that skips a full CLIP checkpoint's text tower quietly (instead of
    reporting every unexpected key). Made on first use so importing this module does not import the modeling code;
    module ``__getattr__`` below lets pickle find it by name."""
    from transformers import CLIPVisionModelWithProjection

    class _CLIPVisionTower(CLIPVisionModelWithProjection):
        _keys_to_ignore_on_load_unexpected = (r"^text_model\.", r"^text_projection\.", r"^logit_scale$")

    _CLIPVisionTower.__module__, _CLIPVisionTower.__qualname__ = __name__, "_CLIPVisionTower"
    return _CLIPVisionTower


def __getattr__(name: str) -> Any:
    if name == "_CLIPVisionTower":
        return _vision_tower_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CLIPVisionEncoder(ImageEncoder):
    """CLIP's vision transformer with its projection (``CLIPVisionModelWithProjection``).

    Outputs: ``pooled`` ``(B, dim)`` the projected image embedding (``visual_projection`` of the post-LayerNorm
    [CLS] state: the vector CLIP matches against text; ``dim`` = projection size, 512 for ViT-B/32);
    ``sequence`` ``(B, N, sequence_dim)`` the last hidden states of the N patch tokens, [CLS] excluded (it is what
    ``pooled`` reads), without projection or final LayerNorm (``sequence_dim`` = hidden size, 768 for ViT-B/32;
    N = 49 for ViT-B/32 at 224 px); ``mask`` all True; ``grid`` ``(H / patch, W / patch)`` (7×7 for ViT-B/32 at
    224 px).

    Args:
        source: hub id (``"openai/clip-vit-base-patch32"``) or a folder made with ``save_pretrained``, holding a
            full CLIP model or only its vision tower, and ``preprocessor_config.json``.
        name: the name it was built from; defaults to ``source``.
        tower: the vision tower already loaded (a ``CLIPVisionModelWithProjection`` sharing a full CLIP model's
            weights, from :func:`~mmfuse.encoders.two_towers.build_two_towers`); default: loaded from ``source``.
    """

    def __init__(self, source: str | Path, *, name: str | None = None, tower: torch.nn.Module | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig  # lazy: keeps `import mmfuse` fast

        self.source = str(source)
        self.name = name or self.source
        config = load_pretrained(AutoConfig.from_pretrained, source, "CLIP model config")
        if config.model_type not in CLIP_MODEL_TYPES:
            raise ValueError(
                f"{self.source!r} is a {config.model_type!r} model, not CLIP; "
                f"expected model_type in {list(CLIP_MODEL_TYPES)}"
            )
        if config.model_type == "clip":  # a full CLIP model: its vision part, with the projection size it was saved
            vision_config = config.vision_config  # with (kept on the top-level config, not on vision_config)
            vision_config.projection_dim = config.projection_dim
        else:
            vision_config = config
        if tower is None:
            loader = _vision_tower_class().from_pretrained
            tower = load_pretrained(loader, source, "CLIP vision model", config=vision_config)
        self.model = tower.eval()
        self._preprocessor = HFImagePreprocessor(source)
        self.dim = int(self.model.config.projection_dim)
        self.sequence_dim = int(self.model.config.hidden_size)
        self.num_layers = len(self.model.vision_model.encoder.layers)
        self._fingerprint = WeightsFingerprint()

    @property
    def preprocess(self) -> HFImagePreprocessor:  # type: ignore[override]
        """PIL image (any mode) → ``(3, S, S)`` float tensor with the model's CLIP image processor settings."""
        return self._preprocessor

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        """``(B, 3, S, S)`` → pooled ``(B, dim)``, sequence ``(B, N, sequence_dim)``, mask ``(B, N)`` all True."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        out = self.model(pixel_values=pixel_values)
        seq = out.last_hidden_state[:, 1:]  # (B, N, hidden): patch tokens; index 0 is [CLS]
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
        patch = int(self.model.config.patch_size)  # the patch conv has stride = kernel = patch_size
        grid = (int(pixel_values.shape[-2]) // patch, int(pixel_values.shape[-1]) // patch)
        return EncoderOutput(pooled=out.image_embeds, sequence=seq, mask=mask, grid=grid)

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes everything, then makes the top ``trainable_top_k`` transformer layers, the final LayerNorm and
        the projection trainable again. ``0 <= trainable_top_k <= num_layers``."""
        check_top_k(trainable_top_k, self.num_layers, "transformer layers")
        set_trainable([self], False)
        if trainable_top_k:
            vision = self.model.vision_model
            set_trainable(vision.encoder.layers[self.num_layers - trainable_top_k :], True)
            set_trainable([vision.post_layernorm, self.model.visual_projection], True)
        self.train(self.training)

    def cache_identity(self) -> dict[str, Any]:
        """Encoder class and name, a hash of the weights and every image processor setting."""
        return jsonable(
            {
                "encoder": type(self).__name__,
                "name": self.name,
                "weights": self._fingerprint(self.model),
                "preprocess": self._preprocessor.identity(),
                "output": "patch tokens without CLS; pooled = image_embeds",
            }
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, sequence_dim={self.sequence_dim}"
