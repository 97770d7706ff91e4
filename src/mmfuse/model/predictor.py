"""The one inference path: a predictor turns a trained model's inputs into labelled :class:`Prediction` objects.

One interface, two backends:

- :class:`TorchPredictor`: the trained PyTorch model (a fusion head owning its encoders), loaded from a run or
  checkpoint folder with :meth:`TorchPredictor.from_run` (no trainer involved). Besides requests it runs datasets:
  :meth:`~TorchPredictor.run_examples` is what :class:`~mmfuse.engine.classifier.MultimodalClassifier`'s
  ``predict*`` / ``evaluate`` and the ensembles of :mod:`mmfuse.sweep` run on.
- :class:`~mmfuse.export.OnnxPredictor`: the same model exported to ONNX, run by onnxruntime.

Both share the steps around the model (:class:`Predictor`) for a request: the encoders' own preprocessing
(``tokenize``, image ``preprocess``) builds the named inputs ``input_ids``, ``attention_mask`` (``token_type_ids``
where the text model takes them) and ``pixel_values`` — the same names as the ONNX graph's inputs — and the outputs
(``logits``, and where the head has them ``attention`` and ``image_reliance``) become :class:`Prediction` objects
(see :mod:`mmfuse.model.prediction`): probabilities, the label (binary tasks: P(class 1) >= the run's tuned
threshold), the image-reliance weight, and the attention over image regions averaged over the valid text tokens,
on the region grid.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import mmfuse
from mmfuse.model.prediction import (
    MAX_VIEW_WORDS,
    Prediction,
    attention_grid,
    grid_shape,
    image_crop,
    predict_labels,
    probabilities,
)
from mmfuse.model.spec import head_name

if TYPE_CHECKING:
    from mmfuse.config import TrainConfig
    from mmfuse.data.inputs import ExamplesLike, Inputs
    from mmfuse.data.missing_images import MissingImages
    from mmfuse.features import FeatureSource
    from mmfuse.model.inference import Outputs

__all__ = ["Prediction", "Predictor", "TorchPredictor", "UncalibratedWarning", "grid_shape", "head_name"]

logger = logging.getLogger("mmfuse.model")

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Predictor:
    """Preprocessing and postprocessing around a model; subclasses implement :meth:`_run`.

    Args:
        text_encoder: the run's text encoder (its ``tokenize``), or ``None`` when the head reads no text.
        image_encoder: the run's image encoder (its ``preprocess``), or ``None`` when the head reads no image.
        classes: class names in logit order.
        threshold: the run's tuned threshold for binary tasks (``None``: 0.5); ignored for more classes.
        head: the fusion head's name.
        temperature: the calibration temperature fitted on validation (probabilities are
            ``softmax(logits / temperature)``); ``None``: not calibrated.
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
        temperature: float | None = None,
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
        if temperature is not None and not temperature > 0:
            raise ValueError(f"the calibration temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature) if temperature is not None else None
        self._outputs: set[str] | None = None
        self._image_size: tuple[int, int] | None = None
        self._blank: torch.Tensor | None = None

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
            "temperature": self.temperature,
            "image_required": self.reads_image and self.missing_image_problem() is not None,
            "inputs": [name for name, used in (("text", self.reads_text), ("image", self.reads_image)) if used],
            "attention": "attention" in self.outputs,
            "image_reliance": "image_reliance" in self.outputs,
            "image_crop": self.image_crop(),
            "backend": self.backend,
            "version": mmfuse.__version__,
            "source": self.source,
        }

    def missing_image_problem(self) -> str | None:
        """Why this model cannot predict an item sent without an image; ``None`` when it can (or reads no image).

        An item without an image is predicted from a blank with ``image_present=False`` (its image features zeroed),
        as training saw a missing image, only for a model that learnt what that means. The base predictor does not
        know how its model was trained, so it refuses.
        """
        if not self.reads_image:
            return None
        return (
            f"the {self.head!r} model reads an image with every text and this server cannot tell whether it was "
            "trained to predict without one; send an image"
        )

    # ------------------------------------------------------------------------------------------- preprocessing

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        """One decoded RGB image → the ``(3, H, W)`` tensor the image encoder reads (cheap; safe in any thread)."""
        if self._preprocess is None:
            raise ValueError(f"the {self.head!r} head reads no image")
        return self._preprocess(image)

    def make_inputs(
        self, texts: Sequence[str], pixels: Sequence[torch.Tensor | None] | None
    ) -> dict[str, torch.Tensor]:
        """Named model inputs for a batch: tokenized ``texts`` (padded to the longest) and stacked ``pixels``.

        A ``None`` among ``pixels`` is an item without an image: a blank stands in and ``image_present`` ``(B,)``
        says which items have one (only when one has not; see :meth:`missing_image_problem`)."""
        inputs: dict[str, torch.Tensor] = {}
        if self._tokenize is not None:
            tokens = self._tokenize(list(texts))
            inputs.update({k: tokens[k] for k in TEXT_INPUTS if k in tokens})
        if self._preprocess is not None:
            if not pixels:
                raise ValueError(f"the {self.head!r} head reads images; pass one preprocessed image per text")
            present = [p is not None for p in pixels]
            if not all(present):
                problem = self.missing_image_problem()
                if problem is not None:
                    raise ValueError(problem)
                inputs["image_present"] = torch.tensor(present, dtype=torch.bool)
            inputs["pixel_values"] = torch.stack([p if p is not None else self._blank_pixels() for p in pixels])
        return inputs

    def _blank_pixels(self) -> torch.Tensor:
        """The stand-in for a missing image: zeros shaped like a preprocessed image (what training uses)."""
        if self._blank is None:
            self._blank = torch.zeros_like(self.prepare_image(Image.new("RGB", (64, 64), (128, 128, 128))))
        return self._blank

    # ------------------------------------------------------------------------------------------- running

    def predict(
        self, texts: Sequence[str], pixels: Sequence[torch.Tensor | None] | None = None, *, words: bool = False
    ) -> list[Prediction]:
        """Predictions for one batch; ``pixels[i]`` is :meth:`prepare_image` of item ``i``'s image, or ``None`` for
        an item without one (a model that allows it: :meth:`missing_image_problem`; it gets no attention map).

        For a head that reads no text (no image), ``texts`` (``pixels``) only give the batch size. ``words``: also
        each word's attention over the image regions (:meth:`word_attention`), for heads with one attention row per
        text token (``cross_attention``); it tokenizes each text's prefixes once more.
        """
        n = len(texts) if self.reads_text else len(pixels or ())
        if n == 0:
            return []
        if self.reads_text and self.reads_image and len(pixels or ()) != n:
            raise ValueError(f"got {n} texts but {len(pixels or ())} images; pass one image per text")
        inputs = self.make_inputs(texts, pixels)
        outputs = self._run(inputs)
        predictions = self._predictions(outputs, inputs)
        if words and self.reads_text:
            for text, prediction in zip(texts, predictions, strict=True):
                self.word_attention(text, prediction)
        return predictions

    def word_attention(self, text: str, prediction: Prediction) -> bool:
        """Sets ``prediction.words`` / ``word_attention`` / ``words_omitted``: where each of the text's words (its
        first :data:`~mmfuse.model.prediction.MAX_VIEW_WORDS`) looked, the mean attention of its tokens (see
        :func:`mmfuse.model.explain.word_token_spans`); returns whether there is such a view (a head with one
        attention row per token, an image present, a tokenizer whose tokens follow the words)."""
        from mmfuse.model.explain import word_rows, word_token_spans

        rows = prediction.token_attention
        if self._tokenize is None or rows is None or prediction.attention is None or rows.ndim != 2 or len(rows) < 2:
            return False
        every = text.split()
        shown = every[:MAX_VIEW_WORDS]
        try:
            spans = word_token_spans(self._tokenize, shown)
        except ValueError:
            return False
        h, w = prediction.attention.shape
        prediction.words = shown
        prediction.word_attention = word_rows(rows, spans).reshape(len(shown), h, w)
        prediction.words_omitted = len(every) - len(shown)
        return True

    def image_crop(self) -> float | None:
        """How the image preprocessing frames an image (:func:`~mmfuse.model.prediction.image_crop`): ``None`` the
        whole image, else its centre square as a share of the short side; where the region grid lies on it."""
        return image_crop(self._preprocess)

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The model on named inputs → ``logits`` ``(B, C)``, and where the head has them ``attention``
        ``(B, Q, N)``, ``image_reliance`` ``(B,)`` and ``grid`` ``(2,)`` (the ``(h, w)`` of the attention's image
        grid), as numpy arrays."""
        raise NotImplementedError

    def _predictions(self, outputs: dict[str, np.ndarray], inputs: dict[str, torch.Tensor]) -> list[Prediction]:
        proba = probabilities(outputs["logits"], self.temperature)  # float64, as MultimodalClassifier.predict_proba
        labels = predict_labels(proba, self.threshold)
        shown = inputs.get("image_present")
        present = [True] * len(proba) if shown is None else [bool(v) for v in shown]
        reliance = outputs.get("image_reliance")
        attention = outputs.get("attention")
        if attention is not None:
            mask, pixels = inputs.get("attention_mask"), inputs.get("pixel_values")
            size = tuple(pixels.shape[-2:]) if pixels is not None else self.image_size()
            grid = outputs.get("grid")  # (h, w) the image encoder reported; absent from old exports: guessed
            raw = np.asarray(attention)
            valid = None if mask is None else mask.numpy().astype(bool)
            # each item's rows of its valid tokens (one pooled query: its one row), before averaging
            rows = [
                a[None] if a.ndim == 1 else a[v] if v is not None and len(v) == len(a) else a
                for a, v in zip(raw, valid if valid is not None else [None] * len(raw), strict=True)
            ]
            attention = attention_grid(attention, valid, size, grid)
        return [
            Prediction(
                label=self.classes[int(labels[i])],
                probabilities=self._named(proba[i]),
                threshold=self.threshold,
                image_reliance=None if reliance is None else float(reliance[i]),
                attention=None if attention is None or not present[i] else attention[i],
                image_present=present[i],
                token_attention=None if attention is None or not present[i] else rows[i],
            )
            for i in range(len(proba))
        ]

    def label_names(self, proba: np.ndarray, threshold: float | None = None) -> list[str]:
        """Class names for ``(N, C)`` probabilities: ``threshold`` on P(class 1) for binary tasks when given, else
        the most probable class."""
        return [self.classes[int(i)] for i in predict_labels(proba, threshold)]

    def _named(self, proba: np.ndarray) -> dict[str, float]:
        return {c: float(p) for c, p in zip(self.classes, proba, strict=True)}

    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of what the image preprocessing makes (for the region grid); ``(1, 1)`` (a square)
        for a model that reads no image."""
        if self._image_size is None:
            if self._preprocess is None:
                self._image_size = (1, 1)
            else:
                pixels = self.prepare_image(Image.new("RGB", (64, 64), (128, 128, 128)))
                self._image_size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        return self._image_size


class TorchPredictor(Predictor):
    """The trained PyTorch model behind the predictor interface, for requests and for datasets.

    Args:
        model: a fusion head owning its encoders (what :func:`~mmfuse.fusion.build_head` returns); put in eval mode.
        classes: class names in logit order.
        threshold: the tuned threshold for binary tasks.
        head: the head's name; default: the registered name of the model's class.
        encoders: modality -> encoder name; default: the encoders' ``name``.
        source: where the model came from, for ``/info``.
        device: where the model runs.
        train_class_counts: training examples per class (for the baselines of an evaluation).
        config: how examples are read and run (``data``: columns and image root of a data file, the allowed share
            of missing images; ``cache``: whether frozen encoders' features are precomputed; ``train.eval_batch``,
            ``train.num_workers``; ``run.quiet``); default: the defaults. Its ``model`` is not read.
        features: where precomputed features come from (default: as ``config.cache`` says).
        temperature: the calibration temperature (see :class:`Predictor`).
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
        train_class_counts: Sequence[int] | None = None,
        config: TrainConfig | None = None,
        features: FeatureSource | None = None,
        temperature: float | None = None,
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
            head=head or head_name(model),
            encoders=encoders,
            source=source,
            temperature=temperature,
        )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tuned_threshold = threshold  # as saved: None when the run tuned none (self.threshold is then 0.5)
        self.train_class_counts = list(train_class_counts) if train_class_counts is not None else None
        self._config = config
        self._features = features

    @classmethod
    def from_run(
        cls, run: str | Path, *, checkpoint: str = "best", device: str | torch.device | None = "cpu"
    ) -> TorchPredictor:
        """Loads a run folder (its ``checkpoints/<checkpoint>``) or a checkpoint folder, with the settings of its
        training config for running examples (see ``config`` above).

        Args:
            device: where the model runs; ``None``: a GPU when there is one and the run's ``train.device`` is
                ``auto``, else the CPU.

        Raises:
            FileNotFoundError: no checkpoint there.
            CheckpointError: a damaged checkpoint, or rebuilt encoders that differ from the trained ones.
        """
        from mmfuse.config import validate_config
        from mmfuse.model.checkpoint import load_model, read_meta, resolve_checkpoint, run_config_data

        folder = resolve_checkpoint(run, checkpoint)
        model, spec, folder = load_model(folder)
        meta = read_meta(folder)
        config = validate_config(run_config_data(folder, meta, spec))
        if spec.temperature is None and config.train.calibrate != "none":
            warn_uncalibrated(folder, meta)
        if device is None:
            device = "cuda" if torch.cuda.is_available() and config.train.device == "auto" else "cpu"
        return cls(
            model,
            classes=spec.classes,
            threshold=spec.threshold,
            head=spec.head,
            encoders=spec.encoder_names(),
            source=run,
            device=device,
            train_class_counts=spec.train_class_counts,
            config=config,
            temperature=spec.temperature,
        )

    def missing_image_problem(self) -> str | None:
        """``None`` when the model reads no image, or was trained with missing-image handling: its training config
        kept examples without a usable image as blanks (``data.on_missing_image: blank``) or hid images at random
        (``train.image_dropout`` > 0); else why an item without an image cannot be predicted, and what to do."""
        if not self.reads_image:
            return None
        cfg = self.config
        policy = cfg.data.on_missing_image if cfg.data is not None else None
        if policy == "blank" or cfg.train.image_dropout > 0:
            return None
        how = f"data.on_missing_image: {policy}" if policy is not None else "no data config"
        return (
            f"an image is required: this {self.head!r} model was trained without missing-image handling ({how}, "
            f"train.image_dropout: {cfg.train.image_dropout:g}), so a prediction without an image would be a guess. "
            "Send an image, or retrain with data.on_missing_image: blank (or train.image_dropout > 0) to serve "
            "text-only requests"
        )

    @property
    def config(self) -> TrainConfig:
        """The settings examples are run with (see the class docstring)."""
        if self._config is None:
            from mmfuse.config import TrainConfig

            self._config = TrainConfig()
        return self._config

    @property
    def features(self) -> FeatureSource:
        """Where features of frozen encoders come from."""
        if self._features is None:
            from mmfuse.cache import source_for

            self._features = source_for(
                self.config.cache.enabled, self.config.cache.dir, **self.config.cache.storage_options()
            )
        return self._features

    @torch.inference_mode()
    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        from mmfuse.fusion.base import FusionInputs

        text = {k: v.to(self.device) for k, v in inputs.items() if k in TEXT_INPUTS}
        pixels, present = inputs.get("pixel_values"), inputs.get("image_present")
        out = self.model(
            FusionInputs(
                text_inputs=text or None,
                pixel_values=None if pixels is None else pixels.to(self.device),
                image_present=None if present is None else present.to(self.device),
            )
        )
        named = {k: v.float().cpu().numpy() for k, v in out.as_dict().items() if k not in ("fused", "embedding")}
        if out.grid is not None:
            named["grid"] = np.asarray(out.grid, dtype=np.int64)
        return named

    # ------------------------------------------------------------------------------------------- datasets

    def run_examples(
        self,
        examples: ExamplesLike | Inputs,
        *,
        labeled: bool = False,
        details: bool = False,
        task: str = "predict",
        max_missing_images: float | None = None,
        warn: bool = True,
    ) -> tuple[Outputs, MissingImages | None]:
        """The model's outputs on ``examples`` (features of frozen encoders computed once, batches of
        ``train.eval_batch``), and for a model that reads images, the examples it got a blank image for.

        Examples whose image is missing or unreadable are predicted from a blank image, counted and named in a
        :class:`~mmfuse.data.missing_images.MissingImagesWarning` (and the log); more than ``max_missing_images``
        of them (a share; default ``data.max_missing_images``, else 0.5 to predict and 0 to evaluate) raise
        :class:`~mmfuse.data.missing_images.TooManyMissingImagesError`, checked before and after running.

        Args:
            examples: examples, a split, a data file (read with ``config.data``), or
                :class:`~mmfuse.data.inputs.Inputs`.
            labeled: read labels (required).
            details: also collect attention maps and image reliance.
            task: ``predict`` or ``evaluate``: the default allowed share of missing images, and the messages' words.
            max_missing_images: the allowed share of examples without a usable image.
            warn: warn about missing images, and (``predict``) about labels the model never saw
                (:class:`~mmfuse.data.inputs.UnseenLabelsWarning`); an ensemble warns once, not once per member.

        Raises:
            ValueError: no examples.
            TooManyMissingImagesError: more examples without a usable image than allowed.
        """
        from mmfuse.data.inputs import warn_unseen_labels
        from mmfuse.data.missing_images import check_images, missing_images
        from mmfuse.features import plan_features
        from mmfuse.model.inference import run_model

        plan = plan_features(self.model, precompute=self.config.cache.enabled)
        inputs, limit, where = self._inputs(examples, labeled=labeled, task=task, max_missing_images=max_missing_images)
        items = inputs.examples
        if warn and task == "predict":  # evaluate refuses such labels; predict names them and goes on
            warn_unseen_labels(items, self.classes)
        with self._batches(items, plan, labeled=labeled, task=task) as (loader, maker, bar):
            out = run_model(self.model, loader, maker, device=self.device, details=details, bar=bar)
        out.temperature = self.temperature
        if not self.reads_image_paths:
            return out, None
        missing = missing_images(items, out.image_present, **where)
        check_images(missing, task=task, limit=limit, data=self.config.data, warn=warn)
        return out, missing

    def embed_examples(
        self, examples: ExamplesLike | Inputs, kind: str = "fused", *, max_missing_images: float | None = None
    ) -> tuple[np.ndarray, list[str], MissingImages | None]:
        """``(embeddings (N, D), ids, missing images)`` of ``examples``: the ``fused`` embedding the head's last
        classifier layer reads, or the pooled output of the ``text`` / ``image`` encoder (read from the precomputed
        features of a frozen encoder, as the model reads them; only that modality is read). Missing images as in
        :meth:`run_examples` (for ``fused`` and ``image``; they embed as zeros, as the head sees them).

        Raises:
            ValueError: an unknown ``kind``, or a modality the model does not read.
        """
        import dataclasses

        from mmfuse.data.missing_images import check_images, missing_images
        from mmfuse.features import plan_features
        from mmfuse.model.inference import EMBEDDINGS, run_embeddings

        if kind not in EMBEDDINGS:
            raise ValueError(f"unknown embedding kind {kind!r}; use one of {', '.join(map(repr, EMBEDDINGS))}")
        plan = plan_features(self.model, precompute=self.config.cache.enabled)
        if kind != "fused":
            if getattr(self.model, f"{kind}_encoder", None) is None or not plan.reads(kind):
                reads = [m for m in ("text", "image") if plan.reads(m)]
                raise ValueError(
                    f"the {self.head!r} model reads no {kind}, so it has no {kind} embedding; use kind='fused'"
                    + "".join(f" or kind={m!r}" for m in reads)
                )
            plan = dataclasses.replace(plan, **{"image" if kind == "text" else "text": None})  # read only `kind`
        task = "predict"
        paths = plan.reads("image") and self.reads_image_paths
        inputs, limit, where = self._inputs(examples, labeled=False, task=task, max_missing_images=max_missing_images,
                                            images=paths)  # fmt: skip
        items = inputs.examples
        with self._batches(items, plan, labeled=False, task=f"embed {kind}") as (loader, maker, bar):
            embeddings, ids, present = run_embeddings(self.model, loader, maker, kind=kind, device=self.device, bar=bar)
        if not paths:
            return embeddings, ids, None
        missing = missing_images(items, present, **where)
        check_images(missing, task=task, limit=limit, data=self.config.data, warn=True)
        return embeddings, ids, missing

    def _inputs(
        self, examples: ExamplesLike | Inputs, *, labeled: bool, task: str, max_missing_images: float | None,
        images: bool | None = None,
    ) -> tuple[Inputs, float, dict[str, Any]]:  # fmt: skip
        """The examples to run, the allowed share of missing images, and where their images were looked for;
        fails before the model runs when the image paths already show too many missing (``images``: whether they
        are read; default: whether the model reads images)."""
        # the dataset path's helpers; a server's request path needs none of them
        from mmfuse.data.inputs import inputs_of
        from mmfuse.data.missing_images import allowed_share, check_images, missing_images

        cfg = self.config
        inputs = inputs_of(examples, cfg.data, labeled=True if labeled else None)
        if not inputs.examples:
            raise ValueError("no examples to predict")
        limit = allowed_share(task, max_missing_images, cfg.data)
        where = {"report": inputs.report, "source": inputs.source, "image_root": inputs.image_root}
        if self.reads_image_paths if images is None else images:  # fail before the model runs when paths already say so
            check_images(missing_images(inputs.examples, **where), task=task, limit=limit, data=cfg.data, warn=False)
        return inputs, limit, where

    @property
    def reads_image_paths(self) -> bool:
        """Whether running examples reads image files: the model reads images, and not by example id (a
        ``precomputed`` image encoder looks its features up and counts missing ids itself)."""
        encoder = getattr(self.model, "image_encoder", None)
        return self.reads_image and not getattr(encoder, "reads_example_ids", False)

    @contextlib.contextmanager
    def _batches(self, items: list, plan: Any, *, labeled: bool, task: str) -> Iterator[tuple[Any, Any, Any]]:
        """``(loader, input maker, progress bar)`` for running the model over ``items`` as ``plan`` says: the
        features it precomputes are computed (or read from the feature source) first."""
        from mmfuse.data.labels import LabelMap
        from mmfuse.features import InputMaker, compute_tables, make_loader
        from mmfuse.progress import Reporter, is_main_process

        model, cfg = self.model, self.config
        reporter = Reporter(quiet=cfg.run.quiet, main=is_main_process())
        with reporter.bar(len(items) * plan.precomputed, f"features {task}") as bar:
            tables = compute_tables(
                model, plan, items, self.features, device=self.device, batch_size=cfg.train.eval_batch,
                num_workers=cfg.train.num_workers, progress=bar.update,
            )  # fmt: skip
        loader = make_loader(
            items, label_map=LabelMap(self.classes) if labeled else None, plan=plan, batch_size=cfg.train.eval_batch,
            image_encoder=getattr(model, "image_encoder", None), num_workers=cfg.train.num_workers,
        )  # fmt: skip
        maker = InputMaker(plan, tables, getattr(model, "text_encoder", None), getattr(model, "image_encoder", None))
        with reporter.bar(len(items), task) as bar:
            yield loader, maker, bar

    def predict_proba(self, examples: ExamplesLike | Inputs, *, max_missing_images: float | None = None) -> np.ndarray:
        """``(N, C)`` class probabilities of ``examples`` (columns in :attr:`classes` order); missing images as in
        :meth:`run_examples`."""
        return self.run_examples(examples, max_missing_images=max_missing_images)[0].proba

    def predict_examples(
        self,
        examples: ExamplesLike | Inputs,
        *,
        threshold: float | None = None,
        max_missing_images: float | None = None,
    ) -> list[Prediction]:
        """One :class:`Prediction` per example: id, label (``threshold`` on P(class 1) for binary tasks when
        given, else the most probable class), probabilities, whether its image was read, and where the head has
        them the attention grid and image reliance; missing images as in :meth:`run_examples`."""
        out, _ = self.run_examples(examples, details=True, max_missing_images=max_missing_images)
        return self.predictions_of(out, threshold)

    def predictions_of(self, out: Outputs, threshold: float | None = None) -> list[Prediction]:
        """The :class:`Prediction` objects of :meth:`run_examples`' outputs (label: ``threshold`` on P(class 1) for
        binary tasks when given, else the most probable class)."""
        proba = out.proba
        labels = predict_labels(proba, threshold)
        binary = len(self.classes) == 2
        # the image size only guesses a grid the encoder did not report (a precomputed image encoder has no
        # preprocessing to measure, only its options.grid)
        size = self.image_size() if out.attention is not None and out.grid is None else (1, 1)
        grids = None
        if out.attention is not None:
            grids = [attention_grid(a[None], None, size, out.grid)[0] for a in out.attention]
        return [
            Prediction(
                label=self.classes[int(labels[i])],
                probabilities=self._named(proba[i]),
                threshold=threshold if binary else None,
                image_reliance=float(out.image_reliance[i]) if out.image_reliance is not None else None,
                attention=grids[i] if grids is not None else None,
                id=out.ids[i],
                image_present=bool(out.image_present[i]) if out.image_present is not None else True,
                token_attention=out.attention[i] if out.attention is not None else None,
            )
            for i in range(len(out.ids))
        ]


class UncalibratedWarning(UserWarning):
    """A model loaded from a run that asked for calibration (``train.calibrate: temperature``) has no temperature:
    its probabilities are the model's own softmax."""


def warn_uncalibrated(folder: Path, meta: dict[str, Any]) -> None:
    """Says (:class:`UncalibratedWarning` and the ``mmfuse.model`` log) that the checkpoint ``folder`` gives
    uncalibrated probabilities although its run asked for calibration, why, and what to do."""
    from mmfuse.data.missing_images import _caller_level

    fit = meta.get("calibration")
    if isinstance(fit, dict) and fit.get("note"):  # the fit found no temperature; training said so too
        why = f"no temperature could be fitted: {fit['note']}"
    else:
        why = (
            "it holds no calibration fit (saved by an older mmfuse, which calibrated only checkpoints/best; by a run "
            "that ended before calibrating; or by save() of a model never calibrated). For a run folder, `mmfuse "
            "train --resume RUN` fits it; else use the run's best checkpoint"
        )
    message = f"checkpoint {str(folder)!r} is not calibrated: its probabilities are the model's own softmax; {why}"
    logger.warning(message)
    warnings.warn(message, UncalibratedWarning, stacklevel=_caller_level())
