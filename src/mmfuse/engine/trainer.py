"""The training loop: accelerate for devices and processes, checkpoints every epoch, resume, early stopping.

One :class:`Trainer` trains one model on one train/val pair and writes one run folder (:mod:`mmfuse.engine.run_dir`).
The same code runs on a CPU, one GPU, or several processes (``accelerate launch``): batches are split across
processes (``split_batches``, so the effective batch is ``train.batch_size`` whatever the process count), metrics
are computed on predictions gathered from every process, and only the main process writes files.

Determinism: weights and dropout draw from the global RNG seeded by ``train.seed``; the data order of epoch ``e``
comes from a generator seeded with ``seed + e`` (:class:`~mmfuse.engine.sampler.EpochSampler`); the last checkpoint
stores the RNG states, so a resumed run continues exactly where the uninterrupted one would have.

Crash safety: each epoch ends with one commit (:func:`mmfuse.engine.checkpoint.commit_epoch`: the last checkpoint,
the best one, ``metrics.jsonl``); ``--resume`` first repairs whatever a kill at any moment of it left
(:func:`~mmfuse.engine.checkpoint.recover_run`, with the table of every such state), so the resumed run ends exactly
like an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, gather_object, set_seed
from torch import nn

from mmfuse import __version__
from mmfuse.cache.peers import TorchPeers
from mmfuse.config import ConfigError, TrainConfig, TrainingConfig
from mmfuse.data.example import Example
from mmfuse.data.inputs import data_counts, data_warnings
from mmfuse.data.labels import LabelMap
from mmfuse.data.report import SplitReport
from mmfuse.engine import checkpoint as ckpt
from mmfuse.engine.calibration import Calibration, fit_temperature
from mmfuse.engine.metrics import classification_metrics, headline, improves, selection_metric, tune_threshold
from mmfuse.engine.optim import build_optimizer, build_scheduler, class_weight_tensor, current_lrs, optimizer_steps
from mmfuse.engine.run_dir import RUN_FOLDER_FIX, RunDir, Timer
from mmfuse.engine.sampler import EpochSampler
from mmfuse.engine.tracking import Tracking, check_installed, ended_status, scalars
from mmfuse.features import FeatureSource, InputMaker, compute_tables, default_store, make_loader, plan_features
from mmfuse.model.build import build_model, set_train_mode
from mmfuse.model.inference import Outputs, run_model
from mmfuse.model.spec import ModelSpec
from mmfuse.progress import Reporter

logger = logging.getLogger("mmfuse.engine")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


@dataclass
class LoopState:
    """Counters a resumed run continues from (stored in the last checkpoint)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps done
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the last improvement
    best_loss: float | None = None  # validation loss of the best epoch: breaks ties of the selection metric
    seconds: float = 0.0  # the run's time up to this epoch's checkpoint, over every attempt (a resume adds its own)


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        model: the trained model (unwrapped, on the training device) with the best checkpoint's weights.
        run_dir: the run folder.
        history: one record per epoch (as in ``metrics.jsonl``).
        best_epoch: epoch (1-based) of the best checkpoint.
        selection_metric: the metric that chose it.
        threshold: binary decision threshold tuned on validation at the best epoch (``None`` otherwise), on the
            calibrated probabilities when there is a ``temperature``.
        status: ``completed``, ``early_stopped``.
        calibration: the temperature fit on validation (``train.calibrate``), ``None`` when off.
    """

    model: nn.Module
    run_dir: RunDir
    history: list[dict[str, Any]]
    best_epoch: int | None
    selection_metric: str
    threshold: float | None
    status: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    calibration: Calibration | None = None

    @property
    def temperature(self) -> float | None:
        """The calibration temperature stored with the best checkpoint, or ``None``."""
        return self.calibration.temperature if self.calibration is not None else None

    @property
    def best_record(self) -> dict[str, Any]:
        return next((r for r in self.history if r["epoch"] == self.best_epoch), {})


EpochCallback = Callable[[dict[str, Any]], None]


def make_accelerator(cfg: TrainingConfig, grad_accum: int) -> Accelerator:
    """An Accelerator for this config: CPU or GPU, mixed precision resolved, batches split across processes.

    Raises:
        ConfigError: fp16 without a GPU, or a precision other than the one this process started with.
    """
    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision == "fp16" and cpu:
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; use no (or bf16) on a CPU")
    try:
        return Accelerator(
            cpu=cpu,
            mixed_precision=precision,
            gradient_accumulation_steps=grad_accum,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
    except ValueError as e:
        raise ConfigError(f"train.mixed_precision={cfg.mixed_precision}: {e}") from e


class Trainer:
    """Trains the model a config describes on given train/val examples.

    Args:
        config: the validated config.
        train: training examples (labeled).
        val: validation examples (labeled): they select the best epoch, stop early, tune the threshold.
        label_map: class names; built from the training labels when ``None``.
        source: where features of frozen encoders come from (default: the process-wide memo).
        callbacks: called with each epoch's record after its checkpoint is written.
        data_reports: the load reports of the splits (by name), when the examples were read from files: what was
            left out or blanked is said on the console, in ``train.log`` and ``summary.json``.
        notes: what the caller did with the data that the run must say (e.g. a validation hold-out): on the console,
            in ``train.log`` and in ``summary.json`` (``notes``).
    """

    def __init__(
        self,
        config: TrainConfig,
        train: Sequence[Example],
        val: Sequence[Example],
        *,
        label_map: LabelMap | None = None,
        source: FeatureSource | None = None,
        callbacks: Sequence[EpochCallback] = (),
        data_reports: Mapping[str, SplitReport] | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        _check_examples(train, "train")
        _check_examples(val, "val")
        self.cfg = config
        self.train_examples, self.val_examples = list(train), list(val)
        self.label_map = label_map or LabelMap.from_labels(e.label for e in self.train_examples)
        self.classes = self.label_map.classes
        self.train_y = [self.label_map.encode(e.label) for e in self.train_examples]  # type: ignore[arg-type]
        for e in self.val_examples:
            self.label_map.encode(e.label)  # type: ignore[arg-type]  # unseen val labels fail now, not mid-run
        self.source = source or default_store()
        self.callbacks = list(callbacks)
        self.metric = selection_metric(config.train.selection_metric, len(self.classes))
        self.state = LoopState()
        self.seconds_before = 0.0  # the run's time before this attempt (a resume)
        self.history: list[dict[str, Any]] = []
        self.data_reports = dict(data_reports or {})
        counts = dict(zip(self.classes, _class_counts(self.train_y, len(self.classes)), strict=True))
        self.data_warnings = data_warnings(self.data_reports, counts)
        self.notes = list(notes)
        self.tracking = Tracking()  # train.report_to's trackers, made with the run folder

    # ------------------------------------------------------------------------------------------------- setup

    def _setup(self, run_dir: RunDir | None) -> None:
        cfg = self.cfg
        check_installed(cfg.train.report_to)  # a missing tracker package fails before anything is written
        self.accelerator = acc = make_accelerator(cfg.train, cfg.optim.grad_accum)
        self.reporter = Reporter(quiet=cfg.run.quiet, main=acc.is_main_process)
        for name, size in (("train.batch_size", cfg.train.batch_size), ("train.eval_batch_size", cfg.train.eval_batch)):
            if size % acc.num_processes:
                raise ConfigError(f"{name}={size} must be divisible by the {acc.num_processes} processes")
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        set_seed(cfg.train.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = build_model(cfg.model, len(self.classes), self.classes)
        self.run = run_dir or self._create_run_dir()
        self.tracking = Tracking.for_run(cfg, self.run.path, main=acc.is_main_process)
        self.plan = plan_features(self.model, precompute=cfg.cache.enabled)
        self.loss_weight = class_weight_tensor(cfg.train.class_weights, self.train_y, self.classes)

    def _create_run_dir(self) -> RunDir:
        name = [self.cfg.run.name or f"{self.cfg.model.head.name}-{time.strftime('%Y%m%d-%H%M%S')}"]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(name)  # every process agrees on the timestamped name
        run_dir = RunDir(self.cfg.run.out_dir / name[0])
        if self.accelerator.is_main_process:
            run_dir = RunDir.create(self.cfg.run.model_copy(update={"name": name[0]}), name[0])
        self.accelerator.wait_for_everyone()
        return run_dir

    def _data(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        device, eval_bs = acc.device, cfg.train.eval_batch
        makers = {}
        source, encoded_before, start = self._feature_source(), _encoded(self.source), time.perf_counter()
        for split, examples in (("train", self.train_examples), ("val", self.val_examples)):
            bar = self.reporter.bar(len(examples) * self.plan.precomputed, f"features {split}")
            # Computing features may draw from the global RNG (a DataLoader's base seed) and a warm store does not:
            # fork it, so that a run after a cold store trains exactly like one after a warm store (or a resume).
            with bar, torch.random.fork_rng(devices=[]):
                tables = compute_tables(
                    self.model, self.plan, examples, source, device=device, batch_size=eval_bs,
                    num_workers=cfg.train.num_workers, progress=bar.update,
                )  # fmt: skip
            makers[split] = InputMaker(
                self.plan, tables, getattr(self.model, "text_encoder", None), getattr(self.model, "image_encoder", None)
            )
        if source is not self.source:
            self._report_shares(_encoded(self.source) - encoded_before, time.perf_counter() - start)
        self.make_train_inputs, self.make_val_inputs = makers["train"], makers["val"]
        image_encoder = getattr(self.model, "image_encoder", None)
        self.sampler = EpochSampler(len(self.train_examples), cfg.train.seed)
        common = {"label_map": self.label_map, "plan": self.plan, "image_encoder": image_encoder}
        train_loader = make_loader(
            self.train_examples, batch_size=cfg.train.batch_size, num_workers=cfg.train.num_workers,
            sampler=self.sampler, **common,
        )  # fmt: skip
        val_loader = make_loader(self.val_examples, batch_size=eval_bs, num_workers=cfg.train.num_workers, **common)
        self.datasets = {"training": train_loader.dataset, "validation": val_loader.dataset}
        self.blanked = dict.fromkeys(self.datasets, 0)  # images that failed to open in the loaders, said so far
        self.model.to(device)
        if self.trains_nothing:  # no optimizer, nothing to synchronise: the model as it is, the loaders prepared
            self.ddp_model, self.optimizer, self.scheduler = self.model, None, None
            self.train_loader, self.val_loader = acc.prepare(train_loader, val_loader)
            return
        optimizer = build_optimizer(self.model, cfg.optim)
        total = optimizer_steps(len(train_loader), cfg.train.epochs, cfg.optim.grad_accum)
        scheduler = build_scheduler(optimizer, cfg.optim, total)
        self.ddp_model, self.optimizer, self.train_loader, self.val_loader, self.scheduler = acc.prepare(
            self.model, optimizer, train_loader, val_loader, scheduler
        )

    def _feature_source(self) -> FeatureSource:
        """Where this process gets features: with several processes (``accelerate launch --num_processes N``) and
        the persistent cache, the cache folder they fill together, each input encoded by one process
        (:meth:`mmfuse.cache.FeatureCache.across`); else the run's source as it is (the in-process memo: every
        process encodes every input, as the log says)."""
        acc = self.accelerator
        if acc.num_processes == 1 or not self.plan.precomputed:
            return self.source
        across = getattr(self.source, "across", None)
        if across is None:
            self.reporter.info(
                f"features: each of the {acc.num_processes} processes encodes every input (the feature cache is off);"
                " turn cache.enabled on, with a cache.dir every process can write, to split the encoding among them"
            )
            return self.source
        return across(TorchPeers(acc.process_index, acc.num_processes))

    def _report_shares(self, encoded: int, seconds: float) -> None:
        """Says on the console and in the log how many inputs each process encoded into the shared cache, and in
        how many seconds (its features step: encoding, writing, waiting for the others, reading the tables)."""
        shares = gather_object([(encoded, seconds)])
        counts = [n for n, _ in shares]
        self.reporter.info(
            f"features: {len(shares)} processes encoded {' + '.join(map(str, counts))} = {sum(counts)} inputs "
            f"into the shared feature cache {getattr(self.source, 'root', '')} (in "
            f"{', '.join(f'{s:.1f}' for _, s in shares)} s)"
        )

    # ------------------------------------------------------------------------------------------------- loop

    def fit(self, *, run_dir: RunDir | None = None, resume: bool = False) -> FitResult:
        """Trains for ``train.epochs`` epochs (or until early stopping), checkpointing every epoch.

        Args:
            run_dir: write into this existing run folder (resume); default: a new one from ``config.run``.
            resume: continue from ``run_dir``'s last checkpoint (weights, optimizer, schedule, RNG, counters).

        Raises:
            NonFiniteLossError: the loss became NaN/inf (the last good checkpoint stays).
            ConfigError, CheckpointError: a config or a checkpoint that does not fit.
        """
        timer = self.timer = Timer()
        self._setup(run_dir)
        with self.reporter.log_to(self.run.log, fix=RUN_FOLDER_FIX):
            for message in self.data_warnings:
                self.reporter.warning(message)
            for note in self.notes:
                self.reporter.info(note)
            self._data()
            if resume:
                self._restore()
            else:
                self._write_run_files()
            return self._tracked(lambda: self._finish(self._loop(), timer), resume)

    def _tracked(self, train: Callable[[], FitResult], resume: bool) -> FitResult:
        """Runs ``train`` inside the trackers' run: config first, summary and config files last, status at the end."""
        self.tracking.start(self.run.path.name, self.cfg, resumed_at=self.state.step if resume else None)
        try:
            result = train()
        except BaseException as e:
            self.tracking.finish(ended_status(e))
            raise
        for path in (self.run.summary, self.run.config):
            self.tracking.log_artifact(path)
        self.tracking.finish()
        return result

    @property
    def trains_nothing(self) -> bool:
        """The head has no weights to train (``zero_shot``): fit validates once instead of training epochs."""
        return bool(getattr(type(self.model), "trains_nothing", False))

    def _validate_only(self) -> str:
        """A head that trains nothing: one validation pass (it picks the binary threshold), recorded as epoch 1."""
        note = (
            f"head {self.cfg.model.head.name!r} has no trainable weights: no training epoch was run "
            f"(train.epochs={self.cfg.train.epochs} ignored); the model was validated once, as built"
        )
        self.notes.append(note)
        self.reporter.info(note)
        started = time.perf_counter()
        val, _ = self._validate(1)
        self._say_blanked(1)
        self.state.epoch, self.state.best_epoch, self.state.bad_epochs = 1, 1, 0
        self.state.best_value, self.state.best_loss = val[self.metric], val.get("loss")
        seconds = time.perf_counter() - started
        stats = {"train_loss": math.nan, "lr": {}, "examples_per_s": 0.0, "seconds": seconds, "step": self.state.step}
        record = {"epoch": 1, **stats, "val": val, "best": True}
        self._checkpoint(record, True)
        self.tracking.log_metrics(self.state.step, {**scalars(val, "val"), "epoch": 1})
        for callback in self.callbacks:
            callback(record)
        return "completed"

    def _loop(self) -> str:
        if self.trains_nothing:
            return self._validate_only()
        cfg = self.cfg.train
        longest = 0.0  # the longest epoch (training and validation) so far, to tell whether the next one fits
        while self.state.epoch < cfg.epochs:
            if self._patience_spent():  # a resumed run that had stopped early (killed before its summary)
                return "early_stopped"
            if self.state.epoch and self._out_of_time(longest):
                return "time_limit"
            started = time.perf_counter()
            epoch = self.state.epoch + 1
            train_stats = self._train_epoch(epoch)
            val, _ = self._validate(epoch)
            self._say_blanked(epoch)
            improved = improves(self.metric, val, self.state.best_value, self.state.best_loss)
            self.state.epoch = epoch
            if improved:
                self.state.best_value, self.state.best_epoch, self.state.bad_epochs = val[self.metric], epoch, 0
                self.state.best_loss = val.get("loss")
            else:
                self.state.bad_epochs += 1
            record = {"epoch": epoch, **train_stats, "val": val, "best": improved}
            self._checkpoint(record, improved)
            self.reporter.info(_epoch_line(record, self.metric, cfg.epochs))
            epoch_loss = {"train/epoch_loss": record["train_loss"], "epoch": epoch}
            self.tracking.log_metrics(self.state.step, {**scalars(val, "val"), **epoch_loss})
            for callback in self.callbacks:
                callback(record)
            longest = max(longest, time.perf_counter() - started)
            if self._patience_spent():
                return "early_stopped"
        return "completed"

    def _say_blanked(self, epoch: int) -> None:
        """Warns of the images that failed to open in this epoch's loaders, for which a blank stood in: files
        changed on disk since the data was checked. Each worker process logs only its first; the dataset counts
        them all, across its workers."""
        for split, dataset in self.datasets.items():
            count = dataset.unreadable_count
            if count > self.blanked[split]:
                self.reporter.warning(
                    f"epoch {epoch}: {count - self.blanked[split]} {split} image(s) could not be opened (changed on "
                    f"disk since the data was checked?), {count} so far; a blank image stood in for each, marked "
                    "missing. Check the files with: mmfuse data check <config>"
                )
                self.blanked[split] = count

    def _patience_spent(self) -> bool:
        patience = self.cfg.train.early_stopping_patience
        if patience is None or self.state.bad_epochs < patience:
            return False
        self.reporter.info(f"early stopping: no {self.metric} improvement in {patience} epochs")
        return True

    def _out_of_time(self, longest: float) -> bool:
        """Whether ``train.time_limit`` stops training before the next epoch: it would end past the limit if it took
        as long as the ``longest`` so far. The main process decides for all (their clocks differ slightly)."""
        limit = self.cfg.train.time_limit
        if limit is None:
            return False
        elapsed = self.timer.seconds
        stop = [elapsed + longest > limit]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(stop)
        if stop[0]:
            note = (
                f"stopped for the time limit ({limit:g}s): {elapsed:.0f}s used after epoch {self.state.epoch} of "
                f"{self.cfg.train.epochs}, and the next epoch would take about {longest:.0f}s more; the best "
                f"checkpoint (epoch {self.state.best_epoch}) is kept"
            )
            self.notes.append(note)
            self.reporter.info(note)
        return stop[0]

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        acc, cfg = self.accelerator, self.cfg
        set_train_mode(self.ddp_model, True)
        self.train_loader.set_epoch(epoch)  # data order = f(seed + epoch)
        start, seen = time.perf_counter(), len(self.train_examples)
        loss_sum, weight_sum = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
        interval = torch.zeros(2, device=acc.device)  # loss and weight sums since the last tracker log
        bar = self.reporter.bar(len(self.train_examples), f"epoch {epoch}/{cfg.train.epochs}")
        with bar:
            for batch in self.train_loader:
                with acc.accumulate(self.ddp_model):
                    loss, batch_sum, batch_weight = self._loss(batch)
                    self._check_finite(loss, epoch)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.optim.grad_clip:
                        acc.clip_grad_norm_(self.ddp_model.parameters(), cfg.optim.grad_clip)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if acc.sync_gradients:
                    self.state.step += 1
                n = len(batch["ids"])
                loss_sum += batch_sum
                weight_sum += batch_weight
                if cfg.train.report_to:
                    interval += torch.stack([batch_sum, batch_weight])
                    if acc.sync_gradients and self.state.step % cfg.train.log_every_steps == 0:
                        interval = self._log_step(interval)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                bar.update(n * acc.num_processes)
        totals = acc.reduce(torch.stack([loss_sum, weight_sum]), "sum")
        seconds = time.perf_counter() - start
        return {
            "train_loss": float(totals[0] / totals[1]),
            "lr": current_lrs(self.optimizer),
            "examples_per_s": seen / max(seconds, 1e-9),
            "seconds": seconds,
            "step": self.state.step,
        }

    def _log_step(self, interval: torch.Tensor) -> torch.Tensor:
        """Sends the trackers the mean loss of the batches since the last log (over every process: each process
        takes part in the sum) and the learning rates; returns the emptied sums."""
        totals = self.accelerator.reduce(interval, "sum") if self.accelerator.num_processes > 1 else interval
        metrics = {"train/lr" if g == "head" else f"train/lr_{g}": lr for g, lr in current_lrs(self.optimizer).items()}
        if totals[1] > 0:
            metrics["train/loss"] = float(totals[0] / totals[1])
        self.tracking.log_metrics(self.state.step, metrics)
        return torch.zeros_like(interval)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss to backpropagate, and this process's sum of example losses and of their weights (for the epoch's
        mean loss).

        The loss is the (class-weighted) mean over the whole batch of every process, whatever the process count:
        each process divides its sum by the global weight sum, times the process count because DDP averages the
        gradients. Rows that accelerate repeats to even out the last batch across processes count zero.
        """
        acc = self.accelerator
        inputs = self.make_train_inputs(batch, acc.device)
        if self.cfg.train.image_dropout:
            inputs.image_present = hide_images(
                inputs.image_present, len(batch["labels"]), self.cfg.train.image_dropout, acc.device
            )
        logits = self.ddp_model(inputs).logits.float()
        labels = batch["labels"].to(logits.device)
        weight = None if self.loss_weight is None else self.loss_weight.to(logits.device)
        losses = F.cross_entropy(  # (B,), each scaled by its class weight
            logits, labels, weight=weight, label_smoothing=self.cfg.train.label_smoothing, reduction="none"
        )
        real = self._real_rows(len(labels), logits.device)
        weights = (weight[labels] if weight is not None else torch.ones_like(losses)) * real
        total, denominator = (losses * real).sum(), weights.sum()
        global_denominator = acc.reduce(denominator.detach(), "sum") if acc.num_processes > 1 else denominator
        loss = total / global_denominator * acc.num_processes
        return loss, total.detach(), denominator.detach()

    def _real_rows(self, n: int, device: torch.device) -> torch.Tensor:
        """``(n,)`` 1 for this process's rows of the batch, 0 for the repeats from the epoch's start that accelerate
        appends to a last batch smaller than ``train.batch_size`` (split_batches, even_batches) in a multi-process
        run. This process holds rows ``[p * n, (p + 1) * n)`` of the global batch; the first ``remainder`` are real."""
        acc, ones = self.accelerator, torch.ones(n, device=device)
        remainder = acc.gradient_state.remainder
        if acc.num_processes == 1 or not acc.gradient_state.end_of_dataloader or remainder <= 0:
            return ones
        rows = torch.arange(n, device=device) + acc.process_index * n
        return (rows < remainder).to(ones.dtype)

    def _check_finite(self, loss: torch.Tensor, epoch: int) -> None:
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, "sum")
        if bad.item() == 0:
            return
        last = f"the last good checkpoint is {self.run.last}" if self.state.epoch else "no checkpoint was written yet"
        message = (
            f"the training loss became {loss.item()} at epoch {epoch}, optimizer step {self.state.step + 1}; "
            f"training stopped ({last}). Try a lower optim.lr, optim.grad_clip (now {self.cfg.optim.grad_clip}), "
            "train.mixed_precision=no, or check the data for extreme values"
        )
        if self.accelerator.is_main_process:
            self.run.write_summary({**self._summary_base(), "status": "diverged", "error": message})
        logger.error(message)
        raise NonFiniteLossError(message)

    def _validate(self, epoch: int) -> tuple[dict[str, Any], Outputs]:
        with self.reporter.bar(len(self.val_examples), f"validate {epoch}/{self.cfg.train.epochs}") as bar:
            out = run_model(
                self.ddp_model, self.val_loader, self.make_val_inputs, device=self.accelerator.device,
                accelerator=self.accelerator, bar=bar,
            )  # fmt: skip
        return validation_metrics(out, self.classes), out

    # ------------------------------------------------------------------------------------------------- files

    def _write_run_files(self) -> None:
        if self.accelerator.is_main_process:
            self.run.write_start(self.cfg.to_yaml(), self.label_map.save)
            self.run.rewrite_metrics([])
        self.reporter.info(
            f"run folder {self.run.path}: {self.cfg.model.head.name} head, {len(self.train_examples)} train / "
            f"{len(self.val_examples)} val examples, classes {self.classes}, "
            f"device {self.accelerator.device} x{self.accelerator.num_processes}, features {asdict(self.plan)}"
        )

    def _meta(self, record: dict[str, Any]) -> dict[str, Any]:
        spec = ModelSpec(
            model=self.cfg.model,
            classes=list(self.classes),
            threshold=record["val"].get("threshold"),
            train_class_counts=_class_counts(self.train_y, len(self.classes)),
        )
        return {
            "mmfuse_version": __version__,
            **spec.to_meta(),
            "epoch": record["epoch"],
            "step": self.state.step,
            "val": record["val"],
            "selection_metric": self.metric,
        }

    def _checkpoint(self, record: dict[str, Any], improved: bool) -> None:
        """Commits the epoch of ``record``: last checkpoint, best one, ``metrics.jsonl``, in one recoverable step."""
        self.history.append(record)
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        model = self.accelerator.unwrap_model(self.ddp_model)
        self.state.seconds = self.seconds_before + self.timer.seconds
        state = {
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "rng": ckpt.rng_state(),
            "loop": asdict(self.state),
        }
        ckpt.commit_epoch(self.run, model, self._meta(record), state, self.history, improved)
        self.accelerator.wait_for_everyone()

    def _restore(self) -> None:
        """Continues from the last committed epoch, after repairing what an interruption left (main process)."""
        if self.accelerator.is_main_process:
            for action in ckpt.recover_run(self.run):
                self.reporter.warning(f"resume: {action}")
        self.accelerator.wait_for_everyone()
        found = ckpt.committed(self.run)
        if found is None:
            self.reporter.warning(
                f"resume: {self.run.path} has no checkpoint yet (interrupted before the end of its first epoch): "
                "training starts over, as a new run would"
            )
            self._write_run_files()
            return
        folder = self.run.last
        meta = ckpt.read_meta(folder)
        ckpt.check_matches(meta, head=self.cfg.model.head.name, classes=self.classes, folder=folder)
        ckpt.load_weights(self.accelerator.unwrap_model(self.ddp_model), folder, meta)
        state = found.state
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.state = LoopState(**state["loop"])
        self.seconds_before = self.state.seconds
        self.history = found.history
        if self.accelerator.is_main_process:
            self.run.config.write_text(self.cfg.to_yaml(), encoding="utf-8")
        ckpt.set_rng_state(state["rng"])  # last: nothing may draw from the RNG between here and the next epoch
        self.reporter.info(f"resumed {self.run.path} after epoch {self.state.epoch} (step {self.state.step})")

    def _summary_base(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run.path),
            "head": self.cfg.model.head.name,
            "classes": self.classes,
            "epochs_run": self.state.epoch,
            "best_epoch": self.state.best_epoch,
            "selection_metric": self.metric,
            "best_value": self.state.best_value,
            "data": data_counts(self.data_reports),
            "warnings": self.data_warnings,
            **({"notes": self.notes} if self.notes else {}),
        }

    def _finish(self, status: str, timer: Timer) -> FitResult:
        self.accelerator.wait_for_everyone()
        model = self.accelerator.unwrap_model(self.ddp_model)
        best = next((r for r in self.history if r["epoch"] == self.state.best_epoch), None)
        last = self.history[-1] if self.history else None
        if last is not None and best is not None and last["epoch"] != best["epoch"]:
            self._calibrate([self.run.last], f"checkpoints/last (epoch {last['epoch']})")  # the model holds its weights
        if best is not None and self.run.best.is_dir():
            ckpt.load_weights(model, self.run.best, ckpt.read_meta(self.run.best))
        set_train_mode(model, False)
        threshold = best["val"].get("threshold") if best else None
        seconds = self.seconds_before + timer.seconds  # a resumed run counts the time before the interruption too
        calibration, calibrated = None, None
        if best is not None:  # the last checkpoint of the best epoch holds the same weights: the same fit
            same = [self.run.last] if last is not None and last["epoch"] == best["epoch"] else []
            calibration, calibrated = self._calibrate([self.run.best, *same], "")
        if calibrated is not None and len(self.classes) == 2:  # the threshold the model uses: on calibrated proba
            threshold = calibrated["threshold"]
        if self.accelerator.is_main_process:
            summary = {**self._summary_base(), "status": status, "threshold": threshold}
            summary.update(val=best["val"] if best else None, seconds=seconds)
            if calibration is not None:
                summary["calibration"] = _calibration_record(calibration, calibrated, best)
            ckpt.write_summary(self.run, summary, self.state.epoch)
        self.reporter.info(
            f"done ({status}) in {seconds:.1f}s: best epoch {self.state.best_epoch}, "
            f"val {self.metric} {_fmt(self.state.best_value)}; checkpoints in {self.run.path / 'checkpoints'}"
        )
        return FitResult(
            model,
            self.run,
            self.history,
            self.state.best_epoch,
            self.metric,
            threshold,
            status,
            self.accelerator.device,
            calibration,
        )

    def _calibrate(self, folders: list[Path], which: str) -> tuple[Calibration | None, dict[str, Any] | None]:
        """``train.calibrate``: fits the temperature on the validation logits of the model as it is now (the
        weights of the checkpoint ``folders`` hold), tunes the binary threshold again on the calibrated
        probabilities, and stores both in each folder's ``meta.json`` (its ``val`` stays the epoch's record, as
        ``metrics.jsonl`` has it). ``which`` names the checkpoint in the log (``""``: the best one). Returns the fit
        and the validation metrics of the calibrated probabilities (``None`` when no temperature was fitted).

        Both checkpoints are calibrated, so that ``--checkpoint last`` gives calibrated probabilities too: the last
        epoch's own fit when it is not the best epoch, else the best one's."""
        if self.cfg.train.calibrate == "none":
            return None, None
        with self.reporter.bar(len(self.val_examples), "calibrate") as bar:
            out = run_model(
                self.ddp_model, self.val_loader, self.make_val_inputs, device=self.accelerator.device,
                accelerator=self.accelerator, bar=bar,
            )  # fmt: skip
        calibration = fit_temperature(out.logits, out.labels)
        val: dict[str, Any] | None = None
        label = f"calibration of {which}" if which else "calibration"
        if calibration.temperature is None:
            note = f"{label}: no temperature fitted ({calibration.note}); probabilities are the model's own softmax"
            self.reporter.warning(note)  # console and train.log; summary.json has it under calibration.note
            changes: dict[str, Any] = {"temperature": None}  # a resumed run's best may hold an older fit
        else:
            val = {}
            if len(self.classes) == 2:  # the threshold's value moves with the probabilities: tuned on the calibrated
                proba = Outputs(out.logits, out.labels, temperature=calibration.temperature).proba
                threshold = tune_threshold(out.labels, proba)
                tuned = classification_metrics(out.labels, proba, self.classes, threshold=threshold)
                val = {"threshold": threshold, "accuracy_at_threshold": tuned["accuracy"],
                       "macro_f1_at_threshold": tuned["macro_f1"]}  # fmt: skip
            if calibration.note is not None:
                self.reporter.warning(f"{label}: {calibration.note}")
            self.reporter.info(
                f"{label}: temperature {calibration.temperature:.3f} fitted on {calibration.n} val examples: NLL "
                f"{calibration.nll_before:.4f} -> {calibration.nll_after:.4f}, ECE {calibration.ece_before:.4f} -> "
                f"{calibration.ece_after:.4f}" + (f", threshold {val['threshold']:.3f}" if "threshold" in val else "")
            )
            changes = {"temperature": calibration.temperature, "threshold": val.get("threshold")}
        if self.accelerator.is_main_process:
            for folder in folders:
                if folder.is_dir():
                    ckpt.update_run_meta(self.run, folder, {**changes, "calibration": calibration.to_dict()})
        self.accelerator.wait_for_everyone()
        return calibration, val


def _calibration_record(
    calibration: Calibration, calibrated: dict[str, Any] | None, best: dict[str, Any]
) -> dict[str, Any]:
    """``summary.json``'s ``calibration``: the fit, and for a binary task the threshold tuned on the calibrated
    validation probabilities (``threshold``, the one the model uses) beside the epoch's (``threshold_uncalibrated``,
    as ``val`` and ``metrics.jsonl`` record it) with the validation metrics at it."""
    out = calibration.to_dict()
    if calibrated is not None and "threshold" in calibrated:
        out["threshold"] = calibrated["threshold"]
        out["threshold_uncalibrated"] = best["val"].get("threshold")
        for key in ("accuracy_at_threshold", "macro_f1_at_threshold"):
            out[key] = calibrated[key]
    return out


def hide_images(present: torch.Tensor | None, n: int, p: float, device: torch.device) -> torch.Tensor:
    """Modality dropout: ``image_present`` with each row also hidden with probability ``p`` (global torch RNG, so
    seeded and resumable like dropout)."""
    keep = torch.rand(n, device=device) >= p
    return keep if present is None else present.to(device) & keep


def validation_metrics(out: Outputs, classes: Sequence[str]) -> dict[str, Any]:
    """Headline metrics of a validation pass, its unweighted cross-entropy, and (binary) the tuned threshold (on
    ``out.proba``: calibrated when ``out`` has a temperature)."""
    proba = out.proba
    metrics = headline(classification_metrics(out.labels, proba, classes))
    logits = torch.from_numpy(out.logits).double()
    metrics["loss"] = float(F.cross_entropy(logits, torch.from_numpy(out.labels).long())) if len(logits) else math.nan
    if len(classes) == 2:
        threshold = tune_threshold(out.labels, proba)
        tuned = classification_metrics(out.labels, proba, classes, threshold=threshold)
        metrics.update(
            threshold=threshold, accuracy_at_threshold=tuned["accuracy"], macro_f1_at_threshold=tuned["macro_f1"]
        )
    return metrics


def _encoded(source: FeatureSource) -> int:
    """Inputs a source has encoded so far (a :class:`~mmfuse.cache.FeatureCache` counts them; 0 for others)."""
    stats = getattr(source, "stats", None)
    return int(getattr(stats, "computed", 0))


def _check_examples(examples: Sequence[Example], split: str) -> None:
    if not examples:
        raise ValueError(f"the {split} split has no examples; training needs labeled train and val examples")
    unlabeled = sum(e.label is None for e in examples)
    if unlabeled:
        raise ValueError(
            f"{unlabeled} of {len(examples)} {split} examples have no label; training and validation need labels "
            "(check columns.label in the data config)"
        )


def _class_counts(y: Sequence[int], num_classes: int) -> list[int]:
    counts = Counter(y)
    return [int(counts.get(i, 0)) for i in range(num_classes)]


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _epoch_line(record: dict[str, Any], metric: str, epochs: int) -> str:
    val = record["val"]
    star = " *" if record["best"] else ""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
    parts += [f"val {k} {_fmt(val.get(k))}" for k in dict.fromkeys([metric, "accuracy", "macro_f1"])]
    parts.append(f"{record['examples_per_s']:.0f} ex/s")
    return "  ".join(parts) + star
