"""Fusion heads: one file each, one contract (:mod:`mmfuse.fusion.base`), built by :func:`build_head`.

Each head module registers itself in :data:`FUSION_HEADS` when imported; they are imported here explicitly.
"""

from mmfuse.fusion.base import FusionInputs, FusionOutput, ImageUse, TextUse, classify, encode_image, encode_text
from mmfuse.fusion.registry import FUSION_HEADS, build_head, head_params

# Imported for their registration side effect (FUSION_HEADS.names() lists them sorted).
from mmfuse.fusion.concat import ConcatHead  # isort: skip
from mmfuse.fusion.cross_attention import CrossAttentionHead  # isort: skip
from mmfuse.fusion.early_fusion import EarlyFusionHead  # isort: skip
from mmfuse.fusion.align import AlignHead  # isort: skip
from mmfuse.fusion.cross import CrossHead  # isort: skip
from mmfuse.fusion.text_only import TextOnlyHead  # isort: skip
from mmfuse.fusion.image_only import ImageOnlyHead  # isort: skip
from mmfuse.fusion.zero_shot import ZeroShotHead  # isort: skip

__all__ = [
    "FUSION_HEADS",
    "AlignHead",
    "ConcatHead",
    "CrossAttentionHead",
    "CrossHead",
    "EarlyFusionHead",
    "FusionInputs",
    "FusionOutput",
    "ImageOnlyHead",
    "ImageUse",
    "TextOnlyHead",
    "TextUse",
    "ZeroShotHead",
    "build_head",
    "classify",
    "encode_image",
    "encode_text",
    "head_params",
]
