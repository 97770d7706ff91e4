"""mmfuse: train, evaluate, compare, explain and serve classifiers that read an image and its text together.

The top level re-exports what users call. Heavy modules (torch, transformers) load on first use, so
``import mmfuse`` and ``mmfuse --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ConfigError": "mmfuse.config",
    "DataConfig": "mmfuse.data.config",
    "EncoderOutput": "mmfuse.encoders.base",
    "Example": "mmfuse.data.example",
    "FusionInputs": "mmfuse.fusion.base",
    "FusionOutput": "mmfuse.fusion.base",
    "MultimodalClassifier": "mmfuse.engine.classifier",
    "TrainConfig": "mmfuse.config",
    "build_head": "mmfuse.fusion.registry",
    "build_image_encoder": "mmfuse.encoders.registry",
    "build_text_encoder": "mmfuse.encoders.registry",
    "config_from": "mmfuse.config",
    "load_config": "mmfuse.config",
    "load_splits": "mmfuse.data.loading",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmfuse' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
