"""What the server runs: a predictor turns texts and decoded images into labelled predictions.

One small interface, two backends:

- :class:`TorchPredictor`: the trained PyTorch model (a fusion head owning its encoders), loaded from a run folder
  with :meth:`MultimodalClassifier.load <mmfuse.engine.classifier.MultimodalClassifier.load>`;
- :class:`~mmfuse.export.OnnxPredictor`: the same model exported to ONNX, run by onnxruntime.

Both share the steps around the model (:class:`Predictor`): the encoders' own preprocessing (``tokenize``, image
``preprocess``) builds the named inputs ``input_ids``, ``attention_mask`` (``token_type_ids`` where the text model
takes them) and ``pixel_values`` — the same names as the ONNX graph's inputs — and the outputs (``logits``, and where
the head has them ``attention`` and ``image_reliance``) become :class:`Prediction` objects: probabilities, the label
(binary tasks: P(class 1) >= the run's tuned threshold), the image-reliance weight, and the attention over image
regions averaged over the valid text tokens, with the region grid's shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import mmfuse

__all__ = ["Prediction", "Predictor", "TorchPredictor", "grid_shape"]

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Prediction:
    """One item's prediction.

    Attributes:
        label: predicted class name.
        probabilities: class name -> probability (softmax of the logits), in class order.
        threshold: the decision threshold on P(second class) for binary tasks; ``None`` (argmax) otherwise.
        image_reliance: how much the image contributed, in ``[0, 1]``; ``None`` for heads without it.
        attention: ``(h, w)`` attention over the image's region grid (row-major, top-left first), averaged over the
            valid text tokens, summing to 1; ``None`` for heads without attention.
    """

    label: str
    probabilities: dict[str, float]
    threshold: float | None = None
    image_reliance: float | None = None
    attention: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what the HTTP API returns)."""
        out: dict[str, Any] = {
            "label": self.label,
            "probabilities": self.probabilities,
            "threshold": self.threshold,
            "image_reliance": self.image_reliance,
            "attention": None,
        }
        if self.attention is not None:
            out["attention"] = {"grid": list(self.attention.shape), "weights": self.attention.round(6).tolist()}
        return out


def grid_shape(regions: int, height: int, width: int) -> tuple[int, int]:
    """``(rows, cols)`` of a row-major grid of ``regions`` cells over an image of ``height × width`` pixels: the
    factorisation ``rows × cols = regions`` whose aspect ratio is closest to the image's (7 × 7 for 49 regions of a
    square image). Encoders flatten their feature map row-major (see their ``forward``)."""
    if regions <= 0:
        raise ValueError(f"regions must be positive, got {regions}")
    target = height / max(width, 1)
    best = (1, regions)
    for rows in range(1, math.isqrt(regions) + 1):
        if regions % rows:
            continue
        for r, c in ((rows, regions // rows), (regions // rows, rows)):
            if abs(math.log(r / c / target)) < abs(math.log(best[0] / best[1] / target)):
                best = (r, c)
    return best


class Predictor:
    """Preprocessing and postprocessing around a model; subclasses implement :meth:`_run`.

    Args:
        text_encoder: the run's text encoder (its ``tokenize``), or ``None`` when the head reads no text.
        image_encoder: the run's image encoder (its ``preprocess``), or ``None`` when the head reads no image.
        classes: class names in logit order.
        threshold: the run's tuned threshold for binary tasks (``None``: 0.5); ignored for more classes.
        head: the fusion head's name.
        encoders: modality -> encoder name (for ``/info``).
        source: where the model came from (run folder or ONNX file), for ``/info``.
    """

    backend: str = "?"

    def __init__(
        self,
        *,
        text_encoder: Any,
        image_encoder: Any,
        classes: Sequence[str],
        threshold: float | None,
        head: str,
        encoders: dict[str, str | None],
        source: str | Path | None = None,
    ) -> None:
        if len(classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {list(classes)!r}")
        self._tokenize: Callable[[list[str]], dict[str, torch.Tensor]] | None = (
            text_encoder.tokenize if text_encoder is not None else None
        )
        self._preprocess: Callable[[Image.Image], torch.Tensor] | None = (
            image_encoder.preprocess if image_encoder is not None else None
        )
        self.classes = [str(c) for c in classes]
        binary = len(self.classes) == 2
        self.threshold: float | None = (0.5 if threshold is None else float(threshold)) if binary else None
        self.head = head
        self.encoders = dict(encoders)
        self.source = str(source) if source is not None else None
        self._outputs: set[str] | None = None

    # ------------------------------------------------------------------------------------------- what it reads

    @property
    def reads_text(self) -> bool:
        return self._tokenize is not None

    @property
    def reads_image(self) -> bool:
        return self._preprocess is not None

    @property
    def outputs(self) -> set[str]:
        """The optional outputs this model's predictions carry (``attention``, ``image_reliance``)."""
        if self._outputs is None:
            self.warmup()
        assert self._outputs is not None
        return self._outputs

    def warmup(self) -> None:
        """Runs one dummy item through the model: the first call's one-off costs are paid before the first request,
        and :attr:`outputs` is learnt."""
        pixels = [self.prepare_image(Image.new("RGB", (64, 64), (128, 128, 128)))] if self.reads_image else None
        outputs = self._run(self.make_inputs(["warm up"], pixels))
        self._outputs = {k for k in ("attention", "image_reliance") if outputs.get(k) is not None}

    def info(self) -> dict[str, Any]:
        """Model facts for ``/info``."""
        return {
            "head": self.head,
            "encoders": self.encoders,
            "classes": self.classes,
            "threshold": self.threshold,
            "inputs": [name for name, used in (("text", self.reads_text), ("image", self.reads_image)) if used],
            "attention": "attention" in self.outputs,
            "image_reliance": "image_reliance" in self.outputs,
            "backend": self.backend,
            "version": mmfuse.__version__,
            "source": self.source,
        }

    # ------------------------------------------------------------------------------------------- preprocessing

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        """One decoded RGB image → the ``(3, H, W)`` tensor the image encoder reads (cheap; safe in any thread)."""
        if self._preprocess is None:
            raise ValueError(f"the {self.head!r} head reads no image")
        return self._preprocess(image)

    def make_inputs(self, texts: Sequence[str], pixels: Sequence[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Named model inputs for a batch: tokenized ``texts`` (padded to the longest) and stacked ``pixels``."""
        inputs: dict[str, torch.Tensor] = {}
        if self._tokenize is not None:
            tokens = self._tokenize(list(texts))
            inputs.update({k: tokens[k] for k in TEXT_INPUTS if k in tokens})
        if self._preprocess is not None:
            if not pixels:
                raise ValueError(f"the {self.head!r} head reads images; pass one preprocessed image per text")
            inputs["pixel_values"] = torch.stack(list(pixels))
        return inputs

    # ------------------------------------------------------------------------------------------- running

    def predict(self, texts: Sequence[str], pixels: Sequence[torch.Tensor] | None = None) -> list[Prediction]:
        """Predictions for one batch; ``pixels[i]`` is :meth:`prepare_image` of item ``i``'s image.

        For a head that reads no text (no image), ``texts`` (``pixels``) only give the batch size.
        """
        n = len(texts) if self.reads_text else len(pixels or ())
        if n == 0:
            return []
        if self.reads_text and self.reads_image and len(pixels or ()) != n:
            raise ValueError(f"got {n} texts but {len(pixels or ())} images; pass one image per text")
        inputs = self.make_inputs(texts, pixels)
        outputs = self._run(inputs)
        return self._predictions(outputs, inputs)

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The model on named inputs → ``logits`` ``(B, C)``, and where the head has them ``attention``
        ``(B, Q, N)`` and ``image_reliance`` ``(B,)``, as numpy arrays."""
        raise NotImplementedError

    def _predictions(self, outputs: dict[str, np.ndarray], inputs: dict[str, torch.Tensor]) -> list[Prediction]:
        logits = torch.from_numpy(np.asarray(outputs["logits"])).double()
        proba = torch.softmax(logits, dim=-1).numpy()  # float64, as MultimodalClassifier.predict_proba
        if self.threshold is not None:
            labels = (proba[:, 1] >= self.threshold).astype(np.int64)
        else:
            labels = proba.argmax(axis=1)
        reliance = outputs.get("image_reliance")
        attention = _region_attention(outputs.get("attention"), inputs)
        return [
            Prediction(
                label=self.classes[int(labels[i])],
                probabilities={c: float(p) for c, p in zip(self.classes, proba[i], strict=True)},
                threshold=self.threshold,
                image_reliance=None if reliance is None else float(reliance[i]),
                attention=None if attention is None else attention[i],
            )
            for i in range(len(proba))
        ]


def _region_attention(attention: np.ndarray | None, inputs: dict[str, torch.Tensor]) -> np.ndarray | None:
    """``(B, Q, N)`` attention → ``(B, h, w)``: the mean over valid query rows (text tokens, or the one pooled
    query), renormalised to sum to 1, laid out on the region grid."""
    if attention is None:
        return None
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim == 2:  # (B, N): one query
        att = att[:, None, :]
    b, q, n = att.shape
    rows = np.ones((b, q), dtype=bool)
    mask = inputs.get("attention_mask")
    if mask is not None and mask.shape[1] == q:
        rows = mask.numpy().astype(bool)
    counts = np.maximum(rows.sum(axis=1, keepdims=True), 1)
    mean = (att * rows[:, :, None]).sum(axis=1) / counts  # (B, N)
    mean = mean / np.maximum(mean.sum(axis=1, keepdims=True), 1e-12)
    pixels = inputs.get("pixel_values")
    h, w = grid_shape(n, *pixels.shape[-2:]) if pixels is not None else (1, n)
    return mean.reshape(b, h, w)


class TorchPredictor(Predictor):
    """The trained PyTorch model behind the predictor interface.

    Args:
        model: a fusion head owning its encoders (what :func:`~mmfuse.fusion.build_head` returns); put in eval mode.
        classes: class names in logit order.
        threshold: the tuned threshold for binary tasks.
        head: the head's name; default: the registered name of the model's class.
        encoders: modality -> encoder name; default: the encoders' ``name``.
        source: where the model came from, for ``/info``.
        device: where the model runs.
    """

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        classes: Sequence[str],
        threshold: float | None = None,
        head: str | None = None,
        encoders: dict[str, str | None] | None = None,
        source: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        text_encoder = getattr(model, "text_encoder", None)
        image_encoder = getattr(model, "image_encoder", None)
        if encoders is None:
            encoders = {
                "text": getattr(text_encoder, "name", None),
                "image": getattr(image_encoder, "name", None),
            }
        super().__init__(
            text_encoder=text_encoder,
            image_encoder=image_encoder,
            classes=classes,
            threshold=threshold,
            head=head or _head_name(model),
            encoders=encoders,
            source=source,
        )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_run(cls, run: str | Path, *, checkpoint: str = "best", device: str = "cpu") -> TorchPredictor:
        """Loads a run folder (its ``checkpoints/<checkpoint>``) or a checkpoint folder.

        Raises:
            FileNotFoundError: no checkpoint there.
            CheckpointError: a damaged checkpoint, or rebuilt encoders that differ from the trained ones.
        """
        from mmfuse.engine.classifier import MultimodalClassifier

        clf = MultimodalClassifier.load(run, checkpoint=checkpoint, device=device)
        model_cfg = clf.config.model
        encoders = {
            m: (getattr(model_cfg, f"{m}_encoder").name if getattr(model_cfg, f"{m}_encoder") else None)
            for m in ("text", "image")
        }
        assert clf.model is not None
        return cls(
            clf.model,
            classes=clf.classes,
            threshold=clf.threshold,
            head=model_cfg.head.name,
            encoders=encoders,
            source=run,
            device=device,
        )

    @torch.inference_mode()
    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        from mmfuse.fusion.base import FusionInputs

        text = {k: v.to(self.device) for k, v in inputs.items() if k in TEXT_INPUTS}
        pixels = inputs.get("pixel_values")
        out = self.model(
            FusionInputs(text_inputs=text or None, pixel_values=None if pixels is None else pixels.to(self.device))
        )
        return {k: v.float().cpu().numpy() for k, v in out.as_dict().items() if k != "fused"}


def _head_name(model: nn.Module) -> str:
    from mmfuse.fusion import FUSION_HEADS

    for name in FUSION_HEADS.names():
        if type(model) is FUSION_HEADS.get(name):
            return name
    return type(model).__name__
