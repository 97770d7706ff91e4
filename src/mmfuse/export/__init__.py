"""Exporting a trained model to ONNX, and running the export with onnxruntime.

::

    from mmfuse.export import export_run, OnnxPredictor
    result = export_run("runs/cross_attention-20250101-120000")     # -> runs/.../export/model.onnx, checked,
                                                                      #  + export/model.preprocessing/
    predictor = OnnxPredictor(result.path)                            # what `mmfuse serve --onnx` runs

or ``mmfuse export RUN --format onnx``. Needs ``onnx``, ``onnxruntime`` and ``onnxscript`` (the ``serve`` extra).
Names load on first use.
"""

from __future__ import annotations

from mmfuse._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "EXPORTERS": "mmfuse.export.onnx_export",
    "ExportError": "mmfuse.export.onnx_export",
    "ExportResult": "mmfuse.export.onnx_export",
    "default_onnx_path": "mmfuse.export.onnx_export",
    "export_onnx": "mmfuse.export.onnx_export",
    "export_run": "mmfuse.export.onnx_export",
    "preprocessing_dir": "mmfuse.export.onnx_export",
    "preprocessing_problem": "mmfuse.export.onnx_export",
    "read_metadata": "mmfuse.export.onnx_export",
    "OnnxPredictor": "mmfuse.export.runtime",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
