"""Fusion heads: one file each, one contract (:mod:`mmfuse.fusion.base`)."""

from mmfuse.fusion.base import FusionInputs, FusionOutput, encode_image, encode_text

__all__ = ["FusionInputs", "FusionOutput", "encode_image", "encode_text"]
