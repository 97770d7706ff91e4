"""``HFVisionEncoder``: a transformers vision backbone (ViT, DeiT, DINOv2, SigLIP vision, ConvNeXt, Swin) through
``AutoModel`` + ``AutoImageProcessor``: its pooled output, and its patch/region grid as a sequence with mask and
``(h, w)``.

Each supported ``model_type`` has a :class:`VisionFamily`: where its grid sits in the model's output (patch tokens
after the CLS/distillation/register tokens, or a feature map), what its pooled vector is, and which blocks
``trainable_top_k`` counts. CLIP (``clip``, ``clip_vision_model``) and ResNet (``resnet``) keep their own classes
(:class:`~mmfuse.encoders.clip.CLIPVisionEncoder`, :class:`~mmfuse.encoders.resnet.HFResNetEncoder`), so their
outputs and cache identities stay what they were.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mmfuse.encoders._common import (
    EncoderLoadError,
    WeightsFingerprint,
    check_top_k,
    jsonable,
    load_pretrained,
    set_trainable,
)
from mmfuse.encoders._preprocess import HFImagePreprocessor
from mmfuse.encoders.base import EncoderOutput, ImageEncoder


# Config readers (module-level functions, not lambdas, so a family pickles by name).
def _no_tokens(config: Any) -> int:
    return 0


def _cls(config: Any) -> int:
    return 1


def _cls_and_distillation(config: Any) -> int:
    return 2


def _cls_and_registers(config: Any) -> int:
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def _stage_merges(config: Any) -> int:
    return len(config.depths) - 1


@dataclass(frozen=True)
class VisionFamily:
    """How mmfuse reads one kind of transformers vision backbone.

    Attributes:
        layout: ``"tokens"``: ``last_hidden_state`` is ``(B, L, D)``, ``prefix`` non-grid tokens then the grid
            row-major; ``"map"``: it is a ``(B, C, h, w)`` feature map.
        pooled: ``"cls"``: the final state of token 0 (after the model's final LayerNorm: what its image classifier
            reads); ``"pooler"``: the model's ``pooler_output`` (average pooling + LayerNorm, or SigLIP's attention
            pooling head).
        blocks: path of the module lists whose items are the unit of ``trainable_top_k``, bottom to top (``*``:
            every item of a list, in order); ``|`` separates alternatives (module names differ between transformers
            versions), the first that exists is used.
        top: paths of the modules after the blocks, trainable again whenever ``trainable_top_k > 0`` (final norm,
            pooling head); alternatives as in ``blocks``.
        prefix: number of tokens before the grid (CLS, distillation, register tokens), from the config.
        pad: the patch embedding pads the image to a multiple of the patch size (grid side ``ceil(H / patch)``)
            instead of dropping the remainder (``floor``).
        merges: number of 2×2 patch mergings after the patch embedding (Swin: stages − 1), from the config.
        model_kwargs: passed to ``from_pretrained`` (``add_pooling_layer=False`` where mmfuse does not read the
            model's pooler: its weights are absent from image-classification checkpoints and would be random).
        vision_class: for a model type holding both towers (``siglip``), the transformers class of its vision
            tower, loaded with ``config.vision_config``.
    """

    layout: Literal["tokens", "map"]
    pooled: Literal["cls", "pooler"]
    blocks: str
    top: tuple[str, ...]
    prefix: Callable[[Any], int] = _no_tokens
    pad: bool = False
    merges: Callable[[Any], int] = _no_tokens
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    vision_class: str | None = None


_NO_POOLER = {"add_pooling_layer": False}
_SIGLIP = VisionFamily(
    "tokens",
    "pooler",
    "encoder.layers|vision_model.encoder.layers",
    ("post_layernorm|vision_model.post_layernorm", "head|vision_model.head"),
)
_CONVNEXT = VisionFamily("map", "pooler", "encoder.stages.*.layers", ("layernorm",))
_VIT_LAYERS = "layers|encoder.layer"

FAMILIES: dict[str, VisionFamily] = {
    "vit": VisionFamily("tokens", "cls", _VIT_LAYERS, ("layernorm",), _cls, model_kwargs=_NO_POOLER),
    # DeiT: [CLS] and the distillation token come before the patches; pooled = the [CLS] state
    "deit": VisionFamily("tokens", "cls", _VIT_LAYERS, ("layernorm",), _cls_and_distillation, model_kwargs=_NO_POOLER),
    "dinov2": VisionFamily("tokens", "cls", "encoder.layer|layers", ("layernorm",), _cls_and_registers),
    "dinov2_with_registers": VisionFamily("tokens", "cls", "encoder.layer|layers", ("layernorm",), _cls_and_registers),
    "siglip": dataclasses.replace(_SIGLIP, vision_class="SiglipVisionModel"),
    "siglip_vision_model": _SIGLIP,
    "convnext": _CONVNEXT,
    "convnextv2": _CONVNEXT,
    "swin": VisionFamily("tokens", "pooler", "encoder.layers.*.blocks", ("layernorm",), pad=True, merges=_stage_merges),
}
"""``model_type`` -> how :class:`HFVisionEncoder` reads it."""

VISION_MODEL_TYPES = tuple(FAMILIES)


def _modules_at(model: nn.Module, paths: str) -> list[nn.Module]:
    """The modules at the first of ``paths`` (``|``-separated alternatives of dotted attribute names; ``*`` expands
    every item of a module list, in order) that exists; a list at the end is expanded into its items.

    Raises:
        ValueError: none of them exists (a transformers version that names its modules otherwise).
    """
    for path in paths.split("|"):
        current = [model]
        try:
            for part in path.split("."):
                if part == "*":
                    current = [item for module in current for item in module.children()]
                else:
                    current = [getattr(module, part) for module in current]
        except AttributeError:
            continue
        out: list[nn.Module] = []
        for module in current:
            out.extend(module if isinstance(module, nn.ModuleList) else [module])
        return out
    raise ValueError(
        f"{type(model).__name__} has no module {paths!r} (another transformers version?); "
        "mmfuse cannot tell which of its layers trainable_top_k should count"
    )


def _load_quietly(loader: Callable[..., Any], source: str | Path, what: str, **kwargs: Any) -> Any:
    """``loader(source, **kwargs)`` through :func:`load_pretrained`, without transformers' report of the checkpoint's
    unused weights (a classifier, the text tower of a two-tower model: expected); weights the model needs and the
    checkpoint lacks would be random, so they are an error here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = load_pretrained(loader, source, what, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise EncoderLoadError(
            f"the {what} {str(source)!r} lacks weights the model needs ({shown}): they would be random. Pass a "
            "checkpoint of the whole backbone (save_pretrained of the model, or of its image-classification model)"
        )
    return model


class HFVisionEncoder(ImageEncoder):
    """A transformers vision backbone as a grid encoder, for the model types of :data:`FAMILIES`.

    Outputs (``h × w`` the grid, see :class:`~mmfuse.encoders.base.EncoderOutput`):

    - ``sequence`` ``(B, h·w, sequence_dim)``: the patch tokens of the last layer without the CLS / distillation /
      register tokens (ViT, DeiT, DINOv2: after the final LayerNorm; SigLIP: after ``post_layernorm``; Swin: the
      last stage after its LayerNorm), or the last feature map (ConvNeXt, before its pooled LayerNorm), row-major;
      ``mask`` all True; ``grid`` ``(h, w)``: ``image side / patch`` (ViT-B/16 at 224 px: 14×14), ``/ 32`` for
      ConvNeXt and Swin (7×7 at 224 px).
    - ``pooled`` ``(B, dim)``: the [CLS] state (ViT, DeiT, DINOv2: what their image classifiers read), the attention
      pooling head (SigLIP: the vector matched against text), or the LayerNormed average (ConvNeXt, Swin).

    ``dim == sequence_dim`` (the hidden size of the last stage). ``trainable_top_k`` counts transformer layers
    (ViT, DeiT, DINOv2, SigLIP) or blocks across stages (ConvNeXt, Swin), top first; with any ``k > 0`` the final
    norm (and SigLIP's pooling head) train too.

    Args:
        source: hub id (``"facebook/dinov2-small"``) or a folder made with ``save_pretrained`` (the backbone, or an
            image-classification model of it; for SigLIP the full two-tower model or its vision tower) with
            ``preprocessor_config.json``.
        name: the name it was built from; defaults to ``source``.
        tower: the vision model already loaded (SigLIP: a ``SiglipVisionModel`` sharing a full SigLIP model's
            weights, from :func:`~mmfuse.encoders.two_towers.build_two_towers`); default: loaded from ``source``.
    """

    def __init__(self, source: str | Path, *, name: str | None = None, tower: nn.Module | None = None) -> None:
        super().__init__()
        import transformers
        from transformers import AutoConfig, AutoModel

        self.source = str(source)
        self.name = name or self.source
        config = load_pretrained(AutoConfig.from_pretrained, source, "vision model config")
        self.model_type = str(getattr(config, "model_type", None))
        if self.model_type not in FAMILIES:
            raise ValueError(
                f"{self.source!r} is a {self.model_type!r} model; HFVisionEncoder reads model types "
                f"{', '.join(VISION_MODEL_TYPES)}"
            )
        self.family = family = FAMILIES[self.model_type]
        if family.vision_class is not None:  # a two-tower model: its vision tower only
            config = config.vision_config
            loader = getattr(transformers, family.vision_class).from_pretrained
        else:
            loader = AutoModel.from_pretrained
        if tower is None:
            tower = _load_quietly(loader, source, "vision model", config=config, **family.model_kwargs)
        self.model = tower.eval()
        self._preprocessor = HFImagePreprocessor(source)
        sizes = getattr(self.model.config, "hidden_sizes", None)
        self.dim = int(sizes[-1] if sizes else self.model.config.hidden_size)
        self._blocks = _modules_at(self.model, family.blocks)
        self._top = [m for path in family.top for m in _modules_at(self.model, path)]
        self.num_layers = len(self._blocks)
        self._fingerprint = WeightsFingerprint()

    @property
    def preprocess(self) -> HFImagePreprocessor:  # type: ignore[override]
        """PIL image (any mode) → ``(3, H, W)`` float tensor with the model's image processor settings."""
        return self._preprocessor

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the patch-token grid for ``height × width`` pixel inputs (token layouts)."""
        config = self.model.config
        patch = config.patch_size
        ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
        side = math.ceil if self.family.pad else math.floor
        h, w = side(height / ph), side(width / pw)
        for _ in range(self.family.merges(config)):  # each 2x2 merge pads an odd side by one
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        """``(B, 3, H, W)`` → pooled ``(B, dim)``, sequence ``(B, h·w, dim)``, mask ``(B, h·w)`` all True, grid
        ``(h, w)``."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        out = self.model(pixel_values=pixel_values)
        states = out.last_hidden_state
        if self.family.layout == "map":  # (B, C, h, w)
            grid = (int(states.shape[-2]), int(states.shape[-1]))
            seq = states.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
        else:  # (B, prefix + h*w, D)
            grid = self.token_grid(int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
            prefix = self.family.prefix(self.model.config)
            if states.shape[1] != prefix + grid[0] * grid[1]:
                raise ValueError(
                    f"{self.name!r} returned {states.shape[1]} tokens for {tuple(pixel_values.shape[-2:])} px images, "
                    f"expected {prefix} + {grid[0]}×{grid[1]}; feed it images made by its own preprocessing"
                )
            seq = states[:, prefix:]
        pooled = states[:, 0] if self.family.pooled == "cls" else out.pooler_output.flatten(1)
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
        return EncoderOutput(pooled=pooled, sequence=seq, mask=mask, grid=grid)

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes everything, then makes the top ``trainable_top_k`` layers/blocks and the modules after them
        (final norm, pooling head) trainable again. ``0 <= trainable_top_k <= num_layers``."""
        check_top_k(trainable_top_k, self.num_layers, "layers/blocks")
        set_trainable([self], False)
        if trainable_top_k:
            set_trainable(self._blocks[self.num_layers - trainable_top_k :], True)
            set_trainable(self._top, True)
        self.train(self.training)

    def cache_identity(self) -> dict[str, Any]:
        """Encoder class, name and model type, a hash of the weights and every image processor setting."""
        f = self.family
        return jsonable(
            {
                "encoder": type(self).__name__,
                "name": self.name,
                "model_type": self.model_type,
                "weights": self._fingerprint(self.model),
                "preprocess": self._preprocessor.identity(),
                "output": f"{f.layout} grid; pooled = {f.pooled}",
            }
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, model_type={self.model_type!r}, dim={self.dim}, num_layers={self.num_layers}"
