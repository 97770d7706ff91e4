"""mmfuse: train, evaluate, compare, explain and serve classifiers that read an image and its text together.

The top level re-exports what users call. Heavy modules (torch, transformers) load on first use, so
``import mmfuse`` and ``mmfuse --help`` stay fast.
"""

from __future__ import annotations

from mmfuse._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ConfigError": "mmfuse.config",
    "DataConfig": "mmfuse.data.config",
    "EncoderOutput": "mmfuse.encoders.base",
    "Example": "mmfuse.data.example",
    "FusionInputs": "mmfuse.fusion.base",
    "FusionOutput": "mmfuse.fusion.base",
    "MissingImagesWarning": "mmfuse.data.missing_images",
    "MultimodalClassifier": "mmfuse.engine.classifier",
    "TooManyMissingImagesError": "mmfuse.data.missing_images",
    "TrainConfig": "mmfuse.config",
    "UncalibratedWarning": "mmfuse.model.predictor",
    "UnseenLabelsWarning": "mmfuse.data.inputs",
    "build_head": "mmfuse.fusion.registry",
    "build_image_encoder": "mmfuse.encoders.registry",
    "build_text_encoder": "mmfuse.encoders.registry",
    "config_from": "mmfuse.config",
    "load_config": "mmfuse.config",
    "load_splits": "mmfuse.data.loading",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
