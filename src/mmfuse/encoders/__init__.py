"""Text and image encoders behind one interface (:class:`~mmfuse.encoders.base.Encoder`)."""

from mmfuse.encoders.base import EncoderOutput, ImageEncoder, TextEncoder

__all__ = ["EncoderOutput", "ImageEncoder", "TextEncoder"]
