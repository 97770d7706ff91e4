"""Serving a trained model: an HTTP API with request batching, and a web page to try it.

::

    from mmfuse.serve import TorchPredictor, create_app
    app = create_app(TorchPredictor.from_run("runs/cross_attention-20250101-120000"))   # uvicorn app

or ``mmfuse serve RUN``. The server is a tool apart from the library (``mmfuse.encoders`` and ``mmfuse.fusion``
never import it) and needs the ``serve`` extra (FastAPI, uvicorn): ``pip install "mmfuse[serve]"``. Names load on
first use, so importing this package does not import FastAPI.
"""

from __future__ import annotations

from mmfuse._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "create_app": "mmfuse.serve.app",
    "MicroBatcher": "mmfuse.serve.batching",
    "QueueFullError": "mmfuse.serve.batching",
    "decode_base64": "mmfuse.serve.images",
    "decode_image": "mmfuse.serve.images",
    "load_predictor": "mmfuse.serve.loading",
    "run_server": "mmfuse.serve.loading",
    "Prediction": "mmfuse.model.prediction",
    "Predictor": "mmfuse.model.predictor",
    "TorchPredictor": "mmfuse.model.predictor",
    "ServeSettings": "mmfuse.serve.settings",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
