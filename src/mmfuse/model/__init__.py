"""A trained model on its own: what it is (:class:`ModelSpec`), how it is saved and loaded, and the one inference
path (:class:`Predictor`, :class:`Prediction`) that the Python API, the server, the ONNX runtime and ensembles share.

::

    from mmfuse.model import TorchPredictor
    predictor = TorchPredictor.from_run("runs/concat-20250101-120000")   # no trainer, no accelerate
    predictor.predict_proba("test.jsonl")                                  # (N, C), a data file or examples
    predictor.predict(["a caption"], [predictor.prepare_image(image)])     # one request's Prediction objects

Names load on first use.
"""

from __future__ import annotations

from mmfuse._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CheckpointError": "mmfuse.model.checkpoint",
    "CheckpointWriteError": "mmfuse.model.checkpoint",
    "load_model": "mmfuse.model.checkpoint",
    "resolve_checkpoint": "mmfuse.model.checkpoint",
    "save_checkpoint": "mmfuse.model.checkpoint",
    "Explanation": "mmfuse.model.explain",
    "UnknownIdsError": "mmfuse.model.explain",
    "explain_examples": "mmfuse.model.explain",
    "ModelSpec": "mmfuse.model.spec",
    "Prediction": "mmfuse.model.prediction",
    "grid_shape": "mmfuse.model.prediction",
    "predict_labels": "mmfuse.model.prediction",
    "Predictor": "mmfuse.model.predictor",
    "TorchPredictor": "mmfuse.model.predictor",
    "UncalibratedWarning": "mmfuse.model.predictor",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
