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
    "Example": "mmfuse.data.example",
    "EncoderOutput": "mmfuse.encoders.base",
    "FusionInputs": "mmfuse.fusion.base",
    "FusionOutput": "mmfuse.fusion.base",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmfuse' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
