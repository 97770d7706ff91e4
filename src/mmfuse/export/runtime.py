"""Running an exported model with onnxruntime behind the server's predictor interface.

Only the model runs in onnxruntime; the preprocessing (tokenizer, image preprocessing) still comes from the run's
encoders, rebuilt from the model config stored in the file's metadata, so a request is tokenized and resized exactly
as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.export.onnx_export import TEXT_INPUTS, read_metadata
from mmfuse.serve.predictor import Predictor

__all__ = ["OnnxPredictor"]


class OnnxPredictor(Predictor):
    """An exported ``.onnx`` model run by onnxruntime on CPU.

    Args:
        path: the file :func:`~mmfuse.export.export_onnx` wrote.
        text_encoder: gives ``tokenize``; default: rebuilt from the file's config (``None`` if it reads no text).
        image_encoder: gives ``preprocess``; default: rebuilt from the file's config.
        threads: onnxruntime intra-op threads (default: one per physical core).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an mmfuse export, or no config to rebuild the preprocessing from (pass the encoders).
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | Path,
        *,
        text_encoder: Any = None,
        image_encoder: Any = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        names = self.metadata.get("inputs", [])
        reads_text = any(n in TEXT_INPUTS for n in names)
        reads_image = "pixel_values" in names
        config = self.metadata.get("config")
        if (reads_text and text_encoder is None) or (reads_image and image_encoder is None):
            if config is None:
                raise ValueError(
                    f"{str(self.path)!r} carries no model config to rebuild its tokenizer and image preprocessing "
                    "from; pass text_encoder= / image_encoder=, or export it with `mmfuse export RUN`"
                )
            built = _preprocessing_encoders(config, text=reads_text and text_encoder is None,
                                            image=reads_image and image_encoder is None)  # fmt: skip
            text_encoder = text_encoder or built.get("text")
            image_encoder = image_encoder or built.get("image")
        model_cfg = (config or {}).get("model", {})
        super().__init__(
            text_encoder=text_encoder if reads_text else None,
            image_encoder=image_encoder if reads_image else None,
            classes=self.metadata["classes"],
            threshold=self.metadata.get("threshold"),
            head=self.metadata.get("head", "?"),
            encoders={
                m: ((model_cfg.get(f"{m}_encoder") or {}).get("name") if used else None)
                for m, used in (("text", reads_text), ("image", reads_image))
            },
            source=self.path,
        )
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.input_names:
            if name in inputs:
                feeds[name] = inputs[name].numpy()
            elif name == "token_type_ids" and "input_ids" in inputs:
                feeds[name] = np.zeros_like(inputs["input_ids"].numpy())
            else:
                raise ValueError(f"the ONNX model needs input {name!r}, but the preprocessing gave {sorted(inputs)}")
        wanted = [n for n in self.output_names if n != "probabilities"]
        return dict(zip(wanted, self.session.run(wanted, feeds), strict=True))


def _preprocessing_encoders(config: dict[str, Any], *, text: bool, image: bool) -> dict[str, Any]:
    """The run's encoders rebuilt from its config (only their tokenizer / preprocessing are used)."""
    from mmfuse.config import validate_config
    from mmfuse.model.build import build_encoder

    model = validate_config(config).model
    out: dict[str, Any] = {}
    if text and model.text_encoder is not None:
        out["text"] = build_encoder("text", model.text_encoder)
    if image and model.image_encoder is not None:
        out["image"] = build_encoder("image", model.image_encoder)
    return out
