"""The Python API: :class:`MultimodalClassifier`, one object to fit, predict, evaluate, save and load a model.

::

    clf = MultimodalClassifier("configs/hateful_memes.yaml")          # or a TrainConfig, or shortcuts:
    clf = MultimodalClassifier(data="data.yaml", head="cross_attention", epochs=5)
    clf.fit()                                # splits from the config's data; or clf.fit(train_examples, val_examples)
    clf.predict(examples)                    # class names
    clf.predict_proba(examples)              # (N, C) probabilities, class order = clf.classes
    clf.evaluate(test_examples)              # metrics beside the majority-class and random baselines
    clf.save("model/")
    clf = MultimodalClassifier.load("runs/concat-20250101-120000")   # a run folder or a checkpoint folder
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfuse.cache import source_for
from mmfuse.config import TrainConfig, config_from, load_config, validate_config
from mmfuse.data.labels import LabelMap
from mmfuse.data.loading import Split, load_splits
from mmfuse.engine import checkpoint as ckpt
from mmfuse.engine.build import build_model, set_train_mode
from mmfuse.engine.data_io import ExamplesLike, Inputs, inputs_of, predictions_frame
from mmfuse.engine.inference import Outputs, run_model
from mmfuse.engine.metrics import baseline_metrics, classification_metrics, evaluation_scalars, predict_labels
from mmfuse.engine.missing_images import MissingImages, allowed_share, check_images, missing_images
from mmfuse.engine.progress import is_main_process
from mmfuse.engine.run_dir import Reporter, RunDir
from mmfuse.engine.trainer import EpochCallback, Trainer
from mmfuse.features import FeatureSource, InputMaker, compute_tables, make_loader, plan_features


class NotFittedError(ValueError):
    """The classifier has no trained model yet: call fit() or load()."""


@dataclass
class Prediction:
    """One example's prediction with what the head shows of its reasoning.

    Attributes:
        id: the example id.
        label: predicted class name.
        proba: probabilities per class name.
        attention: ``(Q, N)`` attention of text tokens (or one pooled query) over image regions; ``None`` for
            heads without attention.
        image_reliance: how much the image contributed, in ``[0, 1]``; ``None`` for heads without it.
        image_present: ``False`` when the image was missing or unreadable and a blank stood in.
    """

    id: str
    label: str
    proba: dict[str, float]
    attention: np.ndarray | None = None
    image_reliance: float | None = None
    image_present: bool = True


class MultimodalClassifier:
    """An image+text classifier: a config, and once fitted or loaded, a model and its label map.

    Args:
        config: a :class:`~mmfuse.config.TrainConfig`, the path of a YAML config, or ``None`` for the defaults.
        overrides: ``key=value`` overrides applied to a YAML config.
        source: where features of frozen encoders come from (default: as ``config.cache`` says: the persistent
            feature cache, or the process-wide memo).
        **shortcuts: settings named like override keys (``head="align"``, ``epochs=5``, ``lr=1e-3``,
            ``data="data.yaml"``); see :func:`~mmfuse.config.config_from`.

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
        self.source = source or source_for(self.config.cache.enabled, self.config.cache.dir)
        self.model: nn.Module | None = None
        self.label_map: LabelMap | None = None
        self.threshold: float | None = None
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
        train: ExamplesLike | None = None,
        val: ExamplesLike | None = None,
        *,
        callbacks: Sequence[EpochCallback] = (),
        resume: str | Path | None = None,
    ) -> MultimodalClassifier:
        """Trains a model, writing a run folder under ``config.run.out_dir``; keeps the best epoch's weights.

        Without ``train``, the splits come from ``config.data`` (train, val, and a labeled test split, which is
        evaluated at the end into ``summary.json``).

        Args:
            train: training examples (a list, a split, or a data file).
            val: validation examples; required when ``train`` is given.
            callbacks: called with each epoch's record.
            resume: a run folder to continue from its last checkpoint.

        Raises:
            ValueError: no data, or no validation examples.
            NonFiniteLossError: the loss became NaN/inf.
        """
        test = None
        if train is None:
            splits = self._config_splits()
            train, val, test = splits["train"], splits.get("val"), splits.get("test")
        if val is None:
            raise ValueError(
                "fit needs validation examples: pass val=..., or give the data a val split (data.val, or "
                "data.split.val > 0 to carve one off train)"
            )
        data = self.config.data
        train_in, val_in = inputs_of(train, data, labeled=True), inputs_of(val, data, labeled=True)
        reports = {"train": train_in.report, "val": val_in.report, "test": test.report if test is not None else None}
        trainer = Trainer(
            self.config, train_in.examples, val_in.examples, source=self.source, callbacks=callbacks,
            data_reports={name: r for name, r in reports.items() if r is not None},
        )  # fmt: skip
        run = RunDir.existing(resume) if resume is not None else None
        result = trainer.fit(run_dir=run, resume=resume is not None)
        self.model, self.device, self.label_map = result.model, result.device, trainer.label_map
        self.threshold, self.run_dir, self.history = result.threshold, result.run_dir, result.history
        self.train_class_counts = [int(c) for c in np.bincount(trainer.train_y, minlength=len(self.classes))]
        self.summary = result.run_dir.read_summary()
        if test is not None and test.report.labeled and trainer.accelerator.is_main_process:
            # the run is trained: missing test images are counted (log, summary) rather than an error here
            with trainer.reporter.log_to(result.run_dir.log):
                self.summary["test"] = evaluation_scalars(self.evaluate(test, max_missing_images=1.0))
            result.run_dir.write_summary(self.summary)
            trainer.tracking.log_final(self.summary["test"], artifact=result.run_dir.summary)
        return self

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

    def predict_proba(self, examples: ExamplesLike, *, max_missing_images: float | None = None) -> np.ndarray:
        """``(N, C)`` class probabilities (columns in :attr:`classes` order).

        Examples whose image is missing or unreadable are predicted from a blank image, counted and named in a
        :class:`~mmfuse.engine.missing_images.MissingImagesWarning` (and the log); more than ``max_missing_images``
        of them (a share; default ``data.max_missing_images``, else 0.5) raise
        :class:`~mmfuse.engine.missing_images.TooManyMissingImagesError`. The same holds for every method below.
        """
        return self._run(examples, max_missing=max_missing_images)[0].proba

    def predict(
        self, examples: ExamplesLike, *, threshold: float | None = None, max_missing_images: float | None = None
    ) -> list[str]:
        """Predicted class names; binary tasks use ``threshold`` on P(class 1) when given (e.g. the tuned
        :attr:`threshold`), else the most probable class."""
        labels = predict_labels(self.predict_proba(examples, max_missing_images=max_missing_images), threshold)
        return [self._label_map().decode(int(i)) for i in labels]

    def predict_details(
        self, examples: ExamplesLike, *, threshold: float | None = None, max_missing_images: float | None = None
    ) -> list[Prediction]:
        """Per example: label, probabilities, whether its image was read, and where the head has them, attention
        maps and image reliance."""
        out, _ = self._run(examples, details=True, max_missing=max_missing_images)
        proba, classes = out.proba, self.classes
        labels = predict_labels(proba, threshold)
        return [
            Prediction(
                id=out.ids[i],
                label=classes[int(labels[i])],
                proba={c: float(p) for c, p in zip(classes, proba[i], strict=True)},
                attention=out.attention[i] if out.attention is not None else None,
                image_reliance=float(out.image_reliance[i]) if out.image_reliance is not None else None,
                image_present=bool(out.image_present[i]) if out.image_present is not None else True,
            )
            for i in range(len(out.ids))
        ]

    def predictions_table(
        self, examples: ExamplesLike, *, threshold: float | None = None, max_missing_images: float | None = None
    ):
        """The predictions as a DataFrame: ``id, proba, label, image_present`` for binary tasks (Hateful Memes
        format, plus whether the image was read), else ``id``, one ``proba_<class>`` column per class, ``label``,
        ``image_present``. Works on unlabeled examples."""
        out, _ = self._run(examples, max_missing=max_missing_images)
        labels = [self.classes[int(i)] for i in predict_labels(out.proba, threshold)]
        return predictions_frame(out.ids, out.proba, self.classes, labels, out.image_present)

    def evaluate(
        self, examples: ExamplesLike, *, name: str | None = None, max_missing_images: float | None = None
    ) -> dict[str, Any]:
        """Metrics on labeled examples beside the majority-class and random baselines.

        Any example predicted from a blank image (its image missing or unreadable) is an error unless
        ``max_missing_images`` (a share; default ``data.max_missing_images``, else 0) allows it.

        Returns:
            ``split``, ``n``, ``metrics`` (accuracy, macro precision/recall/F1, weighted F1, AUROC, per class,
            confusion matrix; argmax = threshold 0.5), for binary tasks ``threshold`` (tuned on validation) and
            ``metrics_at_threshold``, ``baselines`` (``majority``, ``random``) computed the same way, and for models
            that read images ``missing_images`` (examples predicted from a blank image, examples dropped at load).

        Raises:
            ValueError: an example without a label.
            TooManyMissingImagesError: more examples without a usable image than allowed.
        """
        label_map = self._label_map()
        inputs = inputs_of(examples, self.config.data, labeled=True)
        items = inputs.examples
        unlabeled = sum(e.label is None for e in items)
        if unlabeled:
            raise ValueError(f"{unlabeled} of {len(items)} examples have no label; evaluate needs labels (use predict)")
        out, missing = self._run(inputs, labeled=True, task="evaluate", max_missing=max_missing_images)
        proba, y = out.proba, out.labels
        result: dict[str, Any] = {
            "split": name or (examples.name if isinstance(examples, Split) else str(examples)[:60]),
            "n": len(y),
            "classes": label_map.classes,
            "metrics": classification_metrics(y, proba, label_map.classes),
        }
        if label_map.num_classes == 2 and self.threshold is not None:
            result["threshold"] = self.threshold
            result["metrics_at_threshold"] = classification_metrics(
                y, proba, label_map.classes, threshold=self.threshold
            )
        train_y = np.repeat(np.arange(label_map.num_classes), self.train_class_counts or 0)
        if len(train_y):
            result["baselines"] = baseline_metrics(train_y, y, label_map.classes, seed=self.config.train.seed)
        if missing is not None:
            result["missing_images"] = missing.to_dict()
        return result

    def run_outputs(
        self,
        examples: ExamplesLike | Inputs,
        *,
        task: str = "predict",
        max_missing_images: float | None = None,
        labeled: bool = False,
        warn: bool = True,
    ) -> tuple[Outputs, MissingImages | None]:
        """The model's raw outputs on ``examples`` (what an ensemble combines), and for a model that reads images,
        the examples it got a blank image for.

        Args:
            examples: examples, a split, a data file, or :class:`~mmfuse.engine.data_io.Inputs`.
            task: ``predict`` or ``evaluate``: the default allowed share of missing images, and the messages' words.
            max_missing_images: the allowed share of examples without a usable image (see :meth:`predict_proba`).
            labeled: read labels (required).
            warn: warn about missing images (an ensemble warns once, not once per member).

        Raises:
            TooManyMissingImagesError: more examples without a usable image than allowed.
        """
        return self._run(examples, labeled=labeled, task=task, max_missing=max_missing_images, warn=warn)

    def _run(
        self,
        examples: ExamplesLike | Inputs,
        *,
        labeled: bool = False,
        details: bool = False,
        task: str = "predict",
        max_missing: float | None = None,
        warn: bool = True,
    ) -> tuple[Outputs, MissingImages | None]:
        """The model's outputs on ``examples``, and for a model that reads images, the examples it got a blank
        image for (checked against the allowed share before and after running)."""
        model, label_map = self._model(), self._label_map()
        cfg = self.config
        inputs = inputs_of(examples, cfg.data, labeled=True if labeled else None)
        items = inputs.examples
        if not items:
            raise ValueError("no examples to predict")
        reads_images = getattr(model, "image_encoder", None) is not None
        limit = allowed_share(task, max_missing, cfg.data)
        where = {"report": inputs.report, "source": inputs.source, "image_root": inputs.image_root}
        if reads_images:  # fail before the model runs when the paths already say so
            check_images(missing_images(items, **where), task=task, limit=limit, data=cfg.data, warn=False)
        plan = plan_features(model, precompute=cfg.cache.enabled)
        reporter = Reporter(quiet=cfg.run.quiet, main=is_main_process())
        with reporter.bar(len(items) * plan.precomputed, f"features {task}") as bar:
            tables = compute_tables(
                model, plan, items, self.source, device=self.device, batch_size=cfg.train.eval_batch,
                num_workers=cfg.train.num_workers, progress=bar.update,
            )  # fmt: skip
        loader = make_loader(
            items, label_map=label_map if labeled else None, plan=plan, batch_size=cfg.train.eval_batch,
            image_encoder=getattr(model, "image_encoder", None), num_workers=cfg.train.num_workers,
        )  # fmt: skip
        maker = InputMaker(plan, tables, getattr(model, "text_encoder", None))
        with reporter.bar(len(items), task) as bar:
            out = run_model(model, loader, maker, device=self.device, details=details, bar=bar)
        if not reads_images:
            return out, None
        missing = missing_images(items, out.image_present, **where)
        check_images(missing, task=task, limit=limit, data=cfg.data, warn=warn)
        return out, missing

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
        """Writes a checkpoint folder (trainable weights, metadata, ``config.yaml``, ``label_map.json``) that
        :meth:`load` reads back."""
        model = self._model()
        meta = {
            "config": self.config.to_dict(),
            "classes": self.classes,
            "threshold": self.threshold,
            "train_class_counts": self.train_class_counts,
        }
        folder = ckpt.save_checkpoint(path, model, meta)
        (folder / "config.yaml").write_text(self.config.to_yaml(), encoding="utf-8")
        self._label_map().save(folder / "label_map.json")
        return folder

    @classmethod
    def load(
        cls, path: str | Path, *, checkpoint: str = "best", device: str | torch.device | None = None
    ) -> MultimodalClassifier:
        """Loads a run folder (its ``checkpoints/<checkpoint>``) or a checkpoint folder.

        Frozen encoders are rebuilt from their names and checked against the fingerprints recorded at training.

        Raises:
            FileNotFoundError: no checkpoint at ``path``.
            CheckpointError: a damaged checkpoint, or rebuilt encoders that differ from the trained ones.
        """
        folder = ckpt.resolve_checkpoint(path, checkpoint)
        meta = ckpt.read_meta(folder)
        config = validate_config(meta["config"])
        clf = cls(config)
        clf.label_map = LabelMap(meta["classes"])
        model = build_model(config.model, clf.label_map.num_classes)
        ckpt.load_weights(model, folder, meta)
        if device is None:
            device = "cuda" if torch.cuda.is_available() and config.train.device == "auto" else "cpu"
        clf.device = torch.device(device)
        set_train_mode(model, False)
        clf.model = model.to(clf.device)
        clf.threshold = meta.get("threshold")
        clf.train_class_counts = meta.get("train_class_counts")
        run = folder.parent.parent
        if (run / "config.yaml").is_file() and folder.parent.name == "checkpoints":
            clf.run_dir = RunDir(run)
            clf.history = clf.run_dir.history()
            clf.summary = clf.run_dir.read_summary()
        return clf
