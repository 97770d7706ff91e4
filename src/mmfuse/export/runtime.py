"""Running an exported model with onnxruntime behind the server's predictor interface.

The model runs in onnxruntime; the preprocessing (tokenizer, image preprocessing) is loaded from the folder the export
wrote beside the file (tokenizer and image-processor files, no weights), so a request is tokenized and resized exactly
as in training without loading the encoders. An export without that folder (an older mmfuse, or the ``.onnx`` copied
alone) still works: the encoders are rebuilt from the model config in the file's metadata, weights and all, with a
warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.export.onnx_export import preprocessing_problem, read_metadata
from mmfuse.model.predictor import TEXT_INPUTS, Predictor

__all__ = ["OnnxPredictor"]

log = logging.getLogger("mmfuse.export")


class OnnxPredictor(Predictor):
    """An exported ``.onnx`` model run by onnxruntime on CPU.

    Args:
        path: the file :func:`~mmfuse.export.export_onnx` wrote.
        text_encoder: gives ``tokenize``; default: loaded from the preprocessing folder beside the file (``None`` if
            it reads no text).
        image_encoder: gives ``preprocess``; default: loaded from the preprocessing folder beside the file.
        threads: onnxruntime intra-op threads (default: one per physical core).

    Attributes:
        preprocessing: where the preprocessing came from: the folder beside the file, ``"encoders rebuilt from the
            config"`` (an export without usable preprocessing files; logged as a warning), or ``"given"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an mmfuse export, or neither preprocessing files nor a config to rebuild the preprocessing
            from (pass the encoders).
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
        text_encoder, image_encoder, self.preprocessing = _preprocessing(
            self.path, self.metadata, text_encoder if reads_text else None, image_encoder if reads_image else None,
            text=reads_text, image=reads_image,
        )  # fmt: skip
        model_cfg = (config or {}).get("model", {})
        super().__init__(
            text_encoder=text_encoder if reads_text else None,
            image_encoder=image_encoder if reads_image else None,
            classes=self.metadata["classes"],
            threshold=self.metadata.get("threshold"),
            temperature=self.metadata.get("temperature"),  # absent from exports made before calibration: none
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

    def missing_image_problem(self) -> str | None:
        """An export has no input that marks an image as missing, so every item needs its image."""
        if not self.reads_image:
            return None
        return (
            f"an image is required: the ONNX export {self.path.name!r} has no input for a missing image; send an "
            "image, or serve the run folder (mmfuse serve RUN) of a model trained with data.on_missing_image: blank "
            "(or train.image_dropout > 0) to take text-only requests"
        )

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
        outputs = dict(zip(wanted, self.session.run(wanted, feeds), strict=True))
        grid = self.metadata.get("image_grid")  # absent from exports made before it was recorded: guessed then
        if "attention" in outputs and grid is not None:
            outputs["grid"] = np.asarray(grid, dtype=np.int64)
        return outputs


def _preprocessing(
    path: Path, metadata: dict[str, Any], text_encoder: Any, image_encoder: Any, *, text: bool, image: bool
) -> tuple[Any, Any, str]:
    """What gives ``tokenize`` / ``preprocess`` for each modality the file reads, and where it came from: the
    encoders given, else the preprocessing folder beside the file, else (warning) the encoders rebuilt from the
    config in the metadata."""
    wanted = [m for m, need in (("text", text and text_encoder is None), ("image", image and image_encoder is None))
              if need]  # fmt: skip
    if not wanted:
        return text_encoder, image_encoder, "given"
    problem = preprocessing_problem(path, metadata, wanted)
    if problem is None:
        folder = path.with_name(metadata["preprocessing"]["folder"])
        loaded = _load_preprocessing(folder, wanted)
        return text_encoder or loaded.get("text"), image_encoder or loaded.get("image"), str(folder)
    config = metadata.get("config")
    if config is None:
        raise ValueError(
            f"{str(path)!r} carries neither its preprocessing files ({problem}) nor a model config to rebuild its "
            "tokenizer and image preprocessing from; pass text_encoder= / image_encoder=, or export it again with "
            "`mmfuse export RUN --format onnx`"
        )
    log.warning(
        "%s: %s; rebuilding the %s encoder(s) from the config stored in the file instead, which loads their full "
        "PyTorch weights only to tokenize and preprocess images. Export again with `mmfuse export RUN --format onnx` "
        "to ship the tokenizer and image-processor files beside the .onnx file",
        path, problem, " and ".join(wanted),
    )  # fmt: skip
    built = _preprocessing_encoders(config, text="text" in wanted, image="image" in wanted)
    return text_encoder or built.get("text"), image_encoder or built.get("image"), "encoders rebuilt from the config"


@dataclass(frozen=True)
class _ImagePreprocessing:
    """Stands in for an image encoder where the predictor only reads its ``preprocess``."""

    preprocess: Callable[[Any], torch.Tensor]


def _load_preprocessing(folder: Path, modalities: list[str]) -> dict[str, Any]:
    """The text / image preprocessing saved in ``folder/<modality>``, no weights; stand-ins for the encoders'
    ``tokenize`` / ``preprocess``."""
    from mmfuse.encoders import load_preprocessing

    out: dict[str, Any] = {}
    if "text" in modalities:
        out["text"] = load_preprocessing(folder / "text", "text")  # has ``tokenize``
    if "image" in modalities:
        out["image"] = _ImagePreprocessing(load_preprocessing(folder / "image", "image"))
    return out


def _preprocessing_encoders(config: dict[str, Any], *, text: bool, image: bool) -> dict[str, Any]:
    """The run's encoders rebuilt from its config (only their tokenizer / preprocessing are used): the fallback for
    exports without preprocessing files, which loads every encoder weight."""
    from mmfuse.config import validate_config
    from mmfuse.model.build import build_encoder

    model = validate_config(config).model
    out: dict[str, Any] = {}
    if text and model.text_encoder is not None:
        out["text"] = build_encoder("text", model.text_encoder)
    if image and model.image_encoder is not None:
        out["image"] = build_encoder("image", model.image_encoder)
    return out
