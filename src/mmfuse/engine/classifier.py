"""The Python API: :class:`MultimodalClassifier`, one object to fit, predict, evaluate, save and load a model.

::

    clf = MultimodalClassifier("configs/hateful_memes.yaml")          # or a TrainConfig, or shortcuts:
    clf = MultimodalClassifier(data="data.yaml", head="cross_attention", epochs=5)
    clf = MultimodalClassifier(label="sentiment", text="review_text", image="image_path", head="cross_attention")
    clf.fit()                                # splits from the config's data; or clf.fit(train_examples, val_examples)
    clf.fit(df_train, time_limit=600)        # a DataFrame, file, list, HF Dataset; 0.2 held out for validation
    clf.predict(examples)                    # class names
    clf.predict_proba(examples)              # (N, C) probabilities, class order = clf.classes
    clf.predict_proba(df, as_pandas=True)    # a DataFrame indexed like df, one column per class
    clf.evaluate(test_examples)              # metrics beside the majority-class and random baselines
    clf.evaluate(test_df, metrics=["accuracy", "f1_macro", "roc_auc"])   # any scikit-learn scorer names
    clf.extract_embedding(df, kind="fused")  # (N, D) numpy: the fused vector the head classifies ("text", "image")
    clf.save("model/")
    clf = MultimodalClassifier.load("runs/concat-20250101-120000")   # a run folder or a checkpoint folder

Inference runs on the one path of :mod:`mmfuse.model` (:meth:`MultimodalClassifier.predictor` is the fitted model as a
:class:`~mmfuse.model.TorchPredictor`, what ``mmfuse serve`` and ensembles run too); a saved model's ``meta.json``
describes the model alone (:class:`~mmfuse.model.ModelSpec`), the training config stays in ``config.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmfuse._writable import atomic_path, write_atomic
from mmfuse.cache import source_for
from mmfuse.cache.location import resolve_cache_dir
from mmfuse.config import TrainConfig, config_from, load_config
from mmfuse.data.config import SplitConfig
from mmfuse.data.embedded import IMAGES_SUBDIR, default_image_cache
from mmfuse.data.inputs import ExamplesLike, hold_out, inputs_of, predictions_frame
from mmfuse.data.labels import LabelMap
from mmfuse.data.loading import WRITTEN_IMAGES, Split, load_splits
from mmfuse.engine.metrics import check_scorer_names, evaluation, evaluation_scalars, scorer_metrics
from mmfuse.engine.run_dir import RUN_FOLDER_FIX, RunDir, check_run_folder
from mmfuse.engine.trainer import EpochCallback, Trainer
from mmfuse.features import FeatureSource
from mmfuse.model import checkpoint as ckpt
from mmfuse.model.explain import Explanation
from mmfuse.model.prediction import Prediction
from mmfuse.model.predictor import TorchPredictor
from mmfuse.model.spec import ModelSpec


def _alias(value: Any, old: Any, name: str, old_name: str) -> Any:
    """``value``, or the same argument passed under its older keyword name."""
    if old is None:
        return value
    if value is not None:
        raise TypeError(f"fit got both {name}= and {old_name}= (the same argument under its older name); pass one")
    return old


class NotFittedError(ValueError):
    """The classifier has no trained model yet: call fit() or load()."""


class MultimodalClassifier:
    """An image+text classifier: a config, and once fitted or loaded, a model and its label map.

    Args:
        config: a :class:`~mmfuse.config.TrainConfig`, the path of a YAML config, or ``None`` for the defaults.
        overrides: ``key=value`` overrides applied to a YAML config.
        source: where features of frozen encoders come from (default: as ``config.cache`` says: the persistent
            feature cache, or the process-wide memo).
        **shortcuts: settings named like override keys (``head="align"``, ``epochs=5``, ``lr=1e-3``,
            ``data="data.yaml"``), and the columns of the data (``label="sentiment"``, ``text="review_text"``,
            ``image="image_path"``, ``id="post_id"``: ``data.columns.*``, which also work without a data config);
            see :func:`~mmfuse.config.config_from`.

    Raises:
        ConfigError: a bad config, override or shortcut.
    """

    def __init__(
        self,
        config: TrainConfig | str | Path | None = None,
        *,
        overrides: Sequence[str] = (),
        source: FeatureSource | None = None,
        **shortcuts: Any,
    ) -> None:
        if isinstance(config, (str, Path)):
            config = load_config(config, overrides)
        elif overrides:
            config = load_config(None, overrides, base=config.to_dict() if config is not None else None)
        self.config = config_from(config, **shortcuts) if shortcuts or config is None else config
        self.source = source or source_for(
            self.config.cache.enabled, self.config.cache.dir, **self.config.cache.storage_options()
        )
        self.model: nn.Module | None = None
        self.label_map: LabelMap | None = None
        self.threshold: float | None = None
        self.temperature: float | None = None  # calibration (train.calibrate): probabilities = softmax(logits / T)
        self.train_class_counts: list[int] | None = None
        self.run_dir: RunDir | None = None
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.device = torch.device("cpu")

    @property
    def classes(self) -> list[str]:
        return self._label_map().classes

    # --------------------------------------------------------------------------------------------- training

    def fit(
        self,
        train_data: ExamplesLike | None = None,
        tuning_data: ExamplesLike | None = None,
        *,
        time_limit: float | None = None,
        image_root: str | Path | None = None,
        holdout_frac: float | None = None,
        callbacks: Sequence[EpochCallback] = (),
        resume: str | Path | None = None,
        train: ExamplesLike | None = None,
        val: ExamplesLike | None = None,
    ) -> MultimodalClassifier:
        """Trains a model, writing a run folder under ``config.run.out_dir``; keeps the best epoch's weights.

        Without ``train_data``, the splits come from ``config.data`` (train, val, and a labeled test split, which
        is evaluated at the end into ``summary.json``).

        Args:
            train_data: training rows: a pandas DataFrame, a list of dicts, a list of
                :class:`~mmfuse.data.Example`, a loaded split, a Hugging Face ``datasets.Dataset`` (its image column
                paths, or ``datasets.Image`` / PIL images, written once to ``<cache dir>/images``), or the path of
                a CSV, TSV, JSONL or Parquet file; columns as in ``config.data.columns`` (set them with
                ``MultimodalClassifier(label=..., text=..., image=...)``). ``train=`` is the same (older name).
            tuning_data: validation rows, of the same kinds: they select the best epoch, stop early and tune the
                threshold. Without them, ``holdout_frac`` of ``train_data`` is held out (seeded and stratified by
                label as ``data.split``); the log and ``summary.json`` (``notes``) say so. ``val=`` is the same.
            time_limit: seconds the training may take (``train.time_limit``): it stops at an epoch boundary once
                the next epoch would end past the limit (at least one epoch runs), keeps the best checkpoint, and
                the summary says ``status: time_limit`` with a note.
            image_root: the folder relative image paths resolve against (default: a data file's folder, or the
                dataset root for a file of ``config.data``; the working directory for rows in memory).
            holdout_frac: the share held out for validation when there is no ``tuning_data`` (default
                ``data.split.val``, 0.2).
            callbacks: called with each epoch's record.
            resume: a run folder to continue from its last checkpoint.

        Raises:
            ValueError: no data, a hold-out too small, a column of the wrong kind (naming it, with a value).
            UnwritableError: the run folder (``run.out_dir``) cannot be written: checked before any data is read.
            NonFiniteLossError: the loss became NaN/inf.
        """
        train_data = _alias(train_data, train, "train_data", "train")
        tuning_data = _alias(tuning_data, val, "tuning_data", "val")
        check_run_folder(resume if resume is not None else self.config.run.out_dir)  # before any data is read
        if time_limit is not None:
            self.config = self.config.model_copy(
                update={"train": self.config.train.model_validate({**self.config.train.model_dump(),
                                                                   "time_limit": time_limit})}
            )  # fmt: skip
        test = None
        if train_data is None:
            if image_root is not None:
                raise ValueError("image_root applies to train_data/tuning_data; the config's data resolves against "
                                 "data.root (set it there)")  # fmt: skip
            splits = self._config_splits()
            train_data, tuning_data, test = splits["train"], splits.get("val"), splits.get("test")
            if tuning_data is None:
                raise ValueError(
                    "fit needs validation examples: give the data a val split (data.val, or data.split.val > 0 to "
                    "carve one off train), or pass train_data and tuning_data"
                )
        data, cache = self.config.data, self._image_cache()
        train_in = inputs_of(train_data, data, labeled=True, image_root=image_root, image_cache=cache)
        notes: list[str] = []
        if tuning_data is None:
            how = data.split if data is not None else SplitConfig()
            fraction = holdout_frac if holdout_frac is not None else how.val or SplitConfig().val
            train_in, val_in = hold_out(train_in, fraction, how)
            unstratified = any("not stratified" in n for n in train_in.report.notes) if train_in.report else False
            kind = "stratified by label" if how.stratify and not unstratified else "not stratified (see warnings)"
            if not how.stratify:
                kind = "not stratified (data.split.stratify: false)"
            notes.append(
                f"no tuning_data: {len(val_in.examples)} of {len(train_in.examples) + len(val_in.examples)} training "
                f"examples ({fraction:g}) held out for validation, seed {how.seed}, {kind}"
            )
        elif holdout_frac is not None:
            raise ValueError("holdout_frac applies only without tuning_data (it is the share held out for validation "
                             "then); pass one or the other")  # fmt: skip
        else:
            val_in = inputs_of(tuning_data, data, labeled=True, image_root=image_root, image_cache=cache)
        for name, part in (("train", train_in), ("val", val_in)):
            notes += [f"{name}: {n}" for n in (part.report.notes if part.report else []) if WRITTEN_IMAGES in n]
        reports = {"train": train_in.report, "val": val_in.report, "test": test.report if test is not None else None}
        trainer = Trainer(
            self.config, train_in.examples, val_in.examples, source=self.source, callbacks=callbacks,
            data_reports={name: r for name, r in reports.items() if r is not None}, notes=notes,
        )  # fmt: skip
        run = RunDir.existing(resume) if resume is not None else None
        result = trainer.fit(run_dir=run, resume=resume is not None)
        self.model, self.device, self.label_map = result.model, result.device, trainer.label_map
        self.threshold, self.run_dir, self.history = result.threshold, result.run_dir, result.history
        self.temperature = result.temperature
        self.train_class_counts = [int(c) for c in np.bincount(trainer.train_y, minlength=len(self.classes))]
        self.summary = result.run_dir.read_summary()
        if test is not None and test.report.labeled and trainer.accelerator.is_main_process:
            # the run is trained: missing test images are counted (log, summary) rather than an error here
            with trainer.reporter.log_to(result.run_dir.log, fix=RUN_FOLDER_FIX):
                self.summary["test"] = evaluation_scalars(self.evaluate(test, max_missing_images=1.0))
            result.run_dir.write_summary(self.summary)
            trainer.tracking.log_final(self.summary["test"], artifact=result.run_dir.summary)
        return self

    def _image_cache(self) -> Path:
        """Where images held in memory (PIL images, bytes, ``datasets.Image``) are written: ``images/`` under the
        feature cache folder, or under the temp folder when that cache is off."""
        root = resolve_cache_dir(self.config.cache.dir)
        return root / IMAGES_SUBDIR if root is not None else default_image_cache()

    @classmethod
    def resume(cls, run: str | Path, overrides: Sequence[str] = (), config: str | Path | None = None):
        """Continues the run in folder ``run`` from its last checkpoint (with its config, or ``config``, plus
        ``overrides``, e.g. ``train.epochs=20`` to train longer) and returns the fitted classifier."""
        run_dir = RunDir.existing(run)
        clf = cls(config or run_dir.config, overrides=overrides)
        return clf.fit(resume=run_dir.path)

    def _config_splits(self) -> dict[str, Split]:
        if self.config.data is None:
            raise ValueError("no data: pass train= and val= examples to fit(), or set data in the config")
        return load_splits(self.config.data)

    # --------------------------------------------------------------------------------------------- inference

    def predict_proba(
        self, examples: ExamplesLike, *, as_pandas: bool = False, max_missing_images: float | None = None
    ) -> np.ndarray | pd.DataFrame:
        """``(N, C)`` class probabilities (columns in :attr:`classes` order): ``softmax(logits / T)`` with the
        calibration :attr:`temperature` fitted on validation (``train.calibrate``), the plain softmax without one.

        With ``as_pandas``, a DataFrame with one column per class (named by the class) indexed like the input: a
        DataFrame's own index, else the example ids (index ``id``).

        Examples whose image is missing or unreadable are predicted from a blank image, counted and named in a
        :class:`~mmfuse.data.missing_images.MissingImagesWarning` (and the log); more than ``max_missing_images``
        of them (a share; default ``data.max_missing_images``, else 0.5) raise
        :class:`~mmfuse.data.missing_images.TooManyMissingImagesError`. The same holds for every method below.
        """
        if not as_pandas:
            return self.predictor().predict_proba(examples, max_missing_images=max_missing_images)
        out, _ = self.predictor().run_examples(examples, max_missing_images=max_missing_images)
        return pd.DataFrame(out.proba, index=self._index(examples, out.ids), columns=pd.Index(self.classes))

    def predict(
        self,
        examples: ExamplesLike,
        *,
        threshold: float | None = None,
        as_pandas: bool = False,
        max_missing_images: float | None = None,
    ) -> list[str] | pd.Series:
        """Predicted class names; binary tasks use ``threshold`` on P(class 1) when given (e.g. the tuned
        :attr:`threshold`), else the most probable class. With ``as_pandas``, a Series named ``label`` indexed as
        :meth:`predict_proba`'s DataFrame."""
        predictor = self.predictor()
        out, _ = predictor.run_examples(examples, max_missing_images=max_missing_images)
        labels = predictor.label_names(out.proba, threshold)
        if not as_pandas:
            return labels
        return pd.Series(labels, index=self._index(examples, out.ids), name="label", dtype=object)

    def extract_embedding(
        self, examples: ExamplesLike, kind: str = "fused", *, max_missing_images: float | None = None
    ) -> np.ndarray:
        """``(N, D)`` float32 embeddings of the examples, in their order.

        Args:
            examples: as for :meth:`predict`.
            kind: ``fused``: the joint vector the head classifies from (what its last linear layer reads: the
                classifier's hidden layer, or the head's fused vector when ``hidden`` is 0); ``text`` / ``image``:
                the pooled output of that encoder (for a frozen encoder, the features the model reads, from the
                feature cache when it is on). A missing image embeds as the head sees it: zeros for ``image``.
            max_missing_images: as for :meth:`predict_proba`.

        Raises:
            ValueError: an unknown ``kind``, or a modality the model does not read (``image`` for ``text_only``).
        """
        return self.predictor().embed_examples(examples, kind, max_missing_images=max_missing_images)[0]

    @staticmethod
    def _index(examples: ExamplesLike, ids: list[str]) -> pd.Index:
        """The index of pandas outputs: a DataFrame input's own index, else the example ids."""
        if not isinstance(examples, pd.DataFrame):
            return pd.Index(ids, name="id")
        if len(ids) != len(examples):
            raise ValueError(
                f"{len(examples) - len(ids)} of {len(examples)} DataFrame rows were left out when reading them (the "
                "warnings above name them), so the outputs cannot carry the DataFrame's index; fix or drop those rows, "
                "or pass as_pandas=False"
            )
        return examples.index

    def predict_details(
        self, examples: ExamplesLike, *, threshold: float | None = None, max_missing_images: float | None = None
    ) -> list[Prediction]:
        """Per example a :class:`~mmfuse.model.prediction.Prediction`: id, label, probabilities, whether its image
        was read, and where the head has them, the attention grid over image regions and image reliance."""
        return self.predictor().predict_examples(examples, threshold=threshold, max_missing_images=max_missing_images)

    def explain(
        self,
        examples: ExamplesLike,
        ids: Sequence[str],
        *,
        threshold: float | None = None,
        grid: tuple[int, int] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> list[Explanation]:
        """Why the model labelled the examples ``ids`` of ``examples`` as it did: per example an
        :class:`~mmfuse.model.explain.Explanation` with each word's and each image region's contribution (the fall
        of the predicted class's probability when it is dropped or blanked), the text's and the image's
        contribution, and for heads with attention (``cross_attention``) each word's attention over the regions.

        ``threshold`` decides binary labels as in :meth:`predict`; ``grid`` sets the occlusion cells (default: the
        image encoder's grid); ``progress`` is called with a line per example. ``mmfuse explain`` draws the same numbers
        (:func:`mmfuse.report.explain.write_explanations`).

        Raises:
            UnknownIdsError: ids not in ``examples`` (a ``ValueError`` naming them).
        """
        from mmfuse.model.explain import explain_examples

        return explain_examples(self.predictor(), examples, ids, threshold=threshold, grid=grid, progress=progress)

    def predictions_table(
        self, examples: ExamplesLike, *, threshold: float | None = None, max_missing_images: float | None = None
    ):
        """The predictions as a DataFrame: ``id, proba, label, image_present`` for binary tasks (Hateful Memes
        format, plus whether the image was read), else ``id``, one ``proba_<class>`` column per class, ``label``,
        ``image_present``. Works on unlabeled examples."""
        predictor = self.predictor()
        out, _ = predictor.run_examples(examples, max_missing_images=max_missing_images)
        labels = predictor.label_names(out.proba, threshold)
        return predictions_frame(out.ids, out.proba, self.classes, labels, out.image_present)

    def evaluate(
        self,
        examples: ExamplesLike,
        metrics: Sequence[str] | None = None,
        *,
        name: str | None = None,
        max_missing_images: float | None = None,
    ) -> dict[str, Any]:
        """Metrics on labeled examples beside the majority-class and random baselines, or the ``metrics`` asked for.

        ``metrics``: scikit-learn scorer names (:func:`sklearn.metrics.get_scorer_names`: ``accuracy``, ``f1_macro``,
        ``roc_auc``, ``roc_auc_ovr``, ``neg_log_loss``, ``average_precision``, ...); then the result is
        ``{name: value}`` in that order, as the scorer computes it from this model's predictions: label metrics on
        the most probable class, probability metrics on the probabilities (class 1 the positive class of a binary
        task; ``neg_*`` are negated losses). An unknown name raises before the model runs.

        Any example predicted from a blank image (its image missing or unreadable) is an error unless
        ``max_missing_images`` (a share; default ``data.max_missing_images``, else 0) allows it.

        Returns:
            ``split``, ``n``, ``metrics`` (accuracy, macro precision/recall/F1, weighted F1, AUROC, per class,
            confusion matrix; argmax = threshold 0.5), ``calibration`` (expected calibration error ``ece`` and
            ``brier`` score; for a calibrated model also its ``temperature`` and both before calibration:
            ``ece_uncalibrated``, ``brier_uncalibrated``), for binary tasks ``threshold`` (tuned on validation) and
            ``metrics_at_threshold``, ``baselines`` (``majority``, ``random``) computed the same way, and for models
            that read images ``missing_images`` (examples predicted from a blank image, examples dropped at load).

        Raises:
            ValueError: an example without a label, or a metric that does not apply (``roc_auc`` with more than two
                classes: use ``roc_auc_ovr``).
            UnknownMetricError: a metric name that is not a scorer (the message lists the known ones).
            TooManyMissingImagesError: more examples without a usable image than allowed.
        """
        if metrics is not None:
            metrics = check_scorer_names(metrics)
        label_map = self._label_map()
        inputs = inputs_of(examples, self.config.data, labeled=True)
        items = inputs.examples
        unlabeled = sum(e.label is None for e in items)
        if unlabeled:
            raise ValueError(f"{unlabeled} of {len(items)} examples have no label; evaluate needs labels (use predict)")
        out, missing = self.predictor().run_examples(
            inputs, labeled=True, task="evaluate", max_missing_images=max_missing_images
        )
        if metrics is not None:
            return scorer_metrics(out.labels, out.proba, metrics)
        split = name or (examples.name if isinstance(examples, Split) else str(examples)[:60])
        zero_shot = self._zero_shot_proba(inputs)
        result = evaluation(out.labels, out.proba, label_map.classes, split=split, threshold=self.threshold,
                            train_class_counts=self.train_class_counts, seed=self.config.train.seed,
                            other_baselines={"zero_shot": zero_shot} if zero_shot is not None else None,
                            temperature=self.temperature, uncalibrated=out.uncalibrated_proba)  # fmt: skip
        if missing is not None:
            result["missing_images"] = missing.to_dict()
        return result

    def _zero_shot_proba(self, inputs: Any) -> np.ndarray | None:
        """The ``zero_shot`` baseline's probabilities on ``inputs``, for a model whose frozen, unadapted encoders are
        the two towers of one CLIP / SigLIP checkpoint (``model.encoder``) and whose head is another; else ``None``.
        It runs on the model's own encoders (frozen image features are reused from the feature source), with
        ``model.zero_shot_prompts``."""
        from mmfuse.encoders.lora import lora_settings
        from mmfuse.encoders.two_towers import two_towers_of
        from mmfuse.fusion import build_head

        model, label_map = self._model(), self._label_map()
        text, image = getattr(model, "text_encoder", None), getattr(model, "image_encoder", None)
        if self.config.model.head.name == "zero_shot" or two_towers_of(text, image) is None:
            return None
        if not (text.is_frozen and image.is_frozen) or lora_settings(text) or lora_settings(image):
            return None  # fine-tuned towers are no longer the pretrained model a zero-shot baseline stands for
        head = build_head(
            "zero_shot", text_encoder=text, image_encoder=image, num_classes=label_map.num_classes,
            classes=label_map.classes, prompts=self.config.model.zero_shot_prompts,
        )  # fmt: skip
        predictor = TorchPredictor(
            head, classes=label_map.classes, head="zero_shot", device=self.device, config=self.config,
            features=self.source,
        )  # fmt: skip
        out, _ = predictor.run_examples(inputs, labeled=True, task="evaluate", max_missing_images=1.0, warn=False)
        return out.proba

    def predictor(self) -> TorchPredictor:
        """The fitted or loaded model behind the one inference path (:class:`~mmfuse.model.TorchPredictor`), run
        with this classifier's config (data, cache, eval batch) and feature source; what ``predict*`` and
        ``evaluate`` use, and what an ensemble combines.

        Raises:
            NotFittedError: no model yet.
        """
        model, label_map = self._model(), self._label_map()
        return TorchPredictor(
            model,
            classes=label_map.classes,
            threshold=self.threshold,
            head=self.config.model.head.name,
            encoders=self.spec().encoder_names(),
            source=self.run_dir.path if self.run_dir is not None else None,
            device=self.device,
            train_class_counts=self.train_class_counts,
            config=self.config,
            features=self.source,
            temperature=self.temperature,
        )

    def spec(self) -> ModelSpec:
        """What the fitted or loaded model is (its config's ``model``, classes, threshold, training-label counts,
        calibration temperature): what :meth:`save` writes to ``meta.json``."""
        return ModelSpec(
            model=self.config.model,
            classes=self._label_map().classes,
            threshold=self.threshold,
            train_class_counts=self.train_class_counts,
            temperature=self.temperature,
        )

    def _model(self) -> nn.Module:
        if self.model is None:
            raise NotFittedError("this classifier has no trained model yet; call fit() or MultimodalClassifier.load()")
        return self.model

    def _label_map(self) -> LabelMap:
        if self.label_map is None:
            raise NotFittedError("this classifier has no label map yet; call fit() or MultimodalClassifier.load()")
        return self.label_map

    # --------------------------------------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> Path:
        """Writes a checkpoint folder that :meth:`load` (and :meth:`TorchPredictor.from_run
        <mmfuse.model.TorchPredictor.from_run>`, ``mmfuse serve``) reads back: trainable weights, ``meta.json`` with
        the model spec, and beside them the training config (``config.yaml``) and ``label_map.json``.

        Raises:
            UnwritableError: a file could not be written (full disk, read-only or unwritable folder), naming it, the
                reason and the fix (a :class:`~mmfuse.model.CheckpointWriteError` for the checkpoint itself).
        """
        model = self._model()
        fix = "pass save() a path in a writable folder"
        try:
            fit = {"calibration": self.summary["calibration"]} if "calibration" in self.summary else {}
            folder = ckpt.save_checkpoint(path, model, {**self.spec().to_meta(), **fit})  # the fit, and why none
        except ckpt.CheckpointWriteError as e:
            raise ckpt.CheckpointWriteError(e.path, e.reason, e.errno, what=e.what, fix=fix) from None
        write_atomic(folder / "config.yaml", self.config.to_yaml(), what="model file", fix=fix)
        with atomic_path(folder / "label_map.json", what="model file", fix=fix) as tmp:
            self._label_map().save(tmp)
        return folder

    @classmethod
    def load(
        cls, path: str | Path, *, checkpoint: str = "best", device: str | torch.device | None = None
    ) -> MultimodalClassifier:
        """Loads a run folder (its ``checkpoints/<checkpoint>``) or a checkpoint folder.

        The model comes from the checkpoint's spec (:meth:`TorchPredictor.from_run
        <mmfuse.model.TorchPredictor.from_run>`); the config (data, eval batch) from the ``config.yaml`` beside it
        or in its run folder. Frozen encoders are rebuilt from their names and checked against the fingerprints
        recorded at training.

        Raises:
            FileNotFoundError: no checkpoint at ``path``.
            CheckpointError: a damaged checkpoint, or rebuilt encoders that differ from the trained ones.
        """
        predictor = TorchPredictor.from_run(path, checkpoint=checkpoint, device=device)
        clf = cls(predictor.config)
        clf.label_map = LabelMap(predictor.classes)
        clf.model, clf.device = predictor.model, predictor.device
        clf.threshold = predictor.tuned_threshold
        clf.temperature = predictor.temperature
        clf.train_class_counts = predictor.train_class_counts
        folder = ckpt.resolve_checkpoint(path, checkpoint)
        run = folder.parent.parent
        if (run / "config.yaml").is_file() and folder.parent.name == "checkpoints":
            clf.run_dir = RunDir(run)
            clf.history = clf.run_dir.history()
            clf.summary = clf.run_dir.read_summary()
        return clf
