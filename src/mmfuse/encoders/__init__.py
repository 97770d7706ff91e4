"""Text and image encoders behind one interface (:class:`~mmfuse.encoders.base.Encoder`).

Build them by name with :func:`build_text_encoder` / :func:`build_image_encoder`; ``minilm`` and
``efficientnet-lite0`` work offline. ``encoder.save_preprocessing(folder)`` and :func:`load_preprocessing` keep an
encoder's tokenizer / image preprocessing apart from its weights. Nothing here imports the training engine, the CLI
or the server.
"""

from mmfuse.encoders._common import EncoderLoadError
from mmfuse.encoders._preprocess import PreprocessingError, load_preprocessing
from mmfuse.encoders.base import Encoder, EncoderOutput, ImageEncoder, TextEncoder
from mmfuse.encoders.clip import CLIPVisionEncoder
from mmfuse.encoders.efficientnet import EfficientNetLiteEncoder
from mmfuse.encoders.hf_vision import HFVisionEncoder
from mmfuse.encoders.registry import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    EncoderSpec,
    build_image_encoder,
    build_text_encoder,
    encoder_options,
)
from mmfuse.encoders.resnet import HFResNetEncoder
from mmfuse.encoders.text import HFTextEncoder
from mmfuse.encoders.text_towers import CLIPTextEncoder, SiglipTextEncoder

__all__ = [
    "IMAGE_ENCODERS",
    "TEXT_ENCODERS",
    "CLIPTextEncoder",
    "CLIPVisionEncoder",
    "EfficientNetLiteEncoder",
    "Encoder",
    "EncoderLoadError",
    "EncoderOutput",
    "EncoderSpec",
    "HFResNetEncoder",
    "HFTextEncoder",
    "HFVisionEncoder",
    "ImageEncoder",
    "PreprocessingError",
    "SiglipTextEncoder",
    "TextEncoder",
    "build_image_encoder",
    "build_text_encoder",
    "encoder_options",
    "load_preprocessing",
]
