"""The training config's schema: one typed model for data, model, optimization, training loop, run folder and
feature cache, and every rule a config must satisfy.

Each rule lives once, on what it is about: a field's type and range on the field, a rule between fields of one
section on that section (an encoder's ``trainable_top_k`` only with ``freeze``), a rule across sections on the
smallest model that holds both (modality dropout needs a head that reads both modalities). A fusion head's
hyperparameters are checked by the fusion registry (:func:`mmfuse.fusion.registry.check_head_params`), which knows
each head's; building the head runs the same check. :func:`validate_config` turns every broken rule into one
:class:`ConfigError` that names the key path (``optim.name``), the bad value, and the allowed values or the fix.
Nothing deeper in the engine reads raw config keys.

Reading YAML files and ``key=value`` overrides is :mod:`mmfuse.config.overrides`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from mmfuse._strict import StrictSection
from mmfuse.data.config import DataConfig


class ConfigError(ValueError):
    """A config that does not validate; the message lists each bad key path with what is allowed."""


class LoraSettings(StrictSection):
    """LoRA adapters on an encoder (``model.<modality>_encoder.lora``): the pretrained weights stay frozen and only
    low-rank adapters (rank ``r``, scaled by ``alpha / r``) beside the ``target`` layers train; checkpoints store
    only the adapters. Needs a Hugging Face encoder and the ``lora`` extra (``peft``).

    Attributes:
        r: the adapters' rank.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapters' input.
        target: names (suffixes) of the layers to adapt, e.g. ``[query, value]``; ``null``: the model type's default
            (attention query and value projections; a ResNet's convolutions).
    """

    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target: list[str] | None = Field(default=None, min_length=1)


class EncoderConfig(StrictSection):
    """One encoder: what to build and whether it trains.

    Attributes:
        name: registry name (``minilm``, ``efficientnet-lite0``), hub name, or local folder.
        freeze: freeze the encoder's weights. A frozen encoder whose pooled/sequence/grid output a head reads is run
            once per dataset and its features reused (much faster); it is not stored in checkpoints but rebuilt from
            ``name`` and checked against its fingerprint.
        trainable_top_k: with ``freeze``, leave the top k layers/blocks trainable (0 = fully frozen). Without
            ``freeze`` every layer trains, so a k > 0 there is refused rather than ignored.
        options: keyword options of the encoder builder (checked when the encoder is built).
        lora: train LoRA adapters on the frozen encoder instead of its weights (:class:`LoraSettings`); needs
            ``freeze`` (the default) and ``trainable_top_k: 0``.
        backend: what runs a fully frozen encoder when it fills the feature cache: ``torch``, ``onnxruntime`` (the
            encoder exported to ONNX once, kept in the cache folder's ``onnx/``; features within 1e-4 of torch's,
            so the cache serves both), or ``auto``: onnxruntime where it runs the encoder, within that tolerance
            and faster, for a dataset large enough to pay for the export; else torch (see
            :mod:`mmfuse.features.compute`). Training and prediction through a head that runs the encoder itself
            always use torch.
    """

    name: str
    freeze: bool = True
    trainable_top_k: int = Field(default=0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)
    lora: LoraSettings | None = None
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _top_k_needs_freeze(self) -> EncoderConfig:
        if not self.freeze and self.trainable_top_k:
            raise ValueError(
                f"trainable_top_k={self.trainable_top_k} leaves the top layers of a frozen encoder trainable, but "
                f"freeze is false, so every layer trains; set freeze=true to train only the top "
                f"{self.trainable_top_k}, or trainable_top_k=0 to train the whole encoder"
            )
        return self

    @field_validator("options")
    @classmethod
    def _feature_files_against_base(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The files of a ``precomputed`` encoder (``path``, ``ids``) resolve against the config file's folder, like
        ``data.root``."""
        base = (info.context or {}).get("base_dir")
        if base is None or info.data.get("name") != "precomputed":
            return v
        out = dict(v)
        for key in ("path", "ids"):
            if isinstance(out.get(key), str) and not Path(out[key]).expanduser().is_absolute():
                out[key] = str(Path(base) / Path(out[key]).expanduser())
        return out

    @model_validator(mode="after")
    def _lora_on_frozen_base(self) -> EncoderConfig:
        if self.lora is None:
            return self
        if not self.freeze:
            raise ValueError(
                "lora trains adapters on a frozen encoder, but freeze is false, which would train every weight too; "
                "drop freeze: false to train only the adapters, or drop lora to fine-tune the whole encoder"
            )
        if self.trainable_top_k:
            raise ValueError(
                f"lora trains adapters on a frozen encoder, but trainable_top_k={self.trainable_top_k} would also "
                "train the top layers' full weights; use one of them: trainable_top_k: 0 with lora, or no lora"
            )
        return self

    @property
    def fully_frozen(self) -> bool:
        return self.freeze and self.trainable_top_k == 0 and self.lora is None


class HeadConfig(StrictSection):
    """The fusion head and its hyperparameters.

    Attributes:
        name: a registered fusion head (``concat``, ``cross_attention``, ``early_fusion``, ``align``, ``cross``,
            ``text_only``, ``image_only``).
        params: the head's hyperparameters (e.g. ``hidden``, ``dropout``); unknown ones and values of the wrong
            kind are refused, listing the allowed ones with their defaults
            (:func:`~mmfuse.fusion.registry.check_head_params`).
    """

    name: str = "concat"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from mmfuse.fusion import FUSION_HEADS

        FUSION_HEADS.get(v)  # raises UnknownNameError (a ValueError) listing the known heads
        return v

    @model_validator(mode="after")
    def _known_params(self) -> HeadConfig:
        from mmfuse.fusion.registry import check_head_params

        check_head_params(self.name, self.params)  # the fusion registry knows each head's hyperparameters
        return self


class ModelConfig(StrictSection):
    """Encoders and head. An encoder may be ``null`` when the head does not read its modality.

    Attributes:
        encoder: one CLIP / SigLIP checkpoint (hub id, folder, or ``clip-vit-b32``-style registered name) for both
            towers: it becomes the ``name`` of ``text_encoder`` and ``image_encoder`` (whose other settings, such
            as ``freeze`` or ``options``, still apply per tower), and the model loads it once, the two encoders
            sharing its weights (what the ``zero_shot`` head needs). Rule: an encoder section given with a name
            must name the same checkpoint; a different name is a config error (drop ``model.encoder`` to mix
            encoders).
        text_encoder: the text encoder.
        image_encoder: the image encoder.
        head: the fusion head.
        zero_shot_prompts: class name -> prompt of the zero-shot baseline that ``evaluate`` shows beside a model
            whose frozen encoders are one checkpoint's two towers (``model.encoder``); a class not named gets
            ``"a photo of {label}"``. The ``zero_shot`` head itself takes its prompts from ``head.params``.
    """

    encoder: str | None = None
    zero_shot_prompts: dict[str, str] | None = None
    text_encoder: EncoderConfig | None = Field(default_factory=lambda: EncoderConfig(name="minilm"))
    image_encoder: EncoderConfig | None = Field(default_factory=lambda: EncoderConfig(name="efficientnet-lite0"))
    head: HeadConfig = Field(default_factory=HeadConfig)

    @model_validator(mode="before")
    @classmethod
    def _one_checkpoint(cls, data: Any) -> Any:
        """``encoder`` names both towers: fills the encoder sections' names, refuses a different one."""
        if not isinstance(data, dict) or data.get("encoder") is None:
            return data
        name = data["encoder"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"encoder must be the name of a CLIP / SigLIP checkpoint, got {name!r}")
        data = dict(data)
        for modality in ("text", "image"):
            key = f"{modality}_encoder"
            section = data.get(key, {})
            if section is None:
                continue  # the head reads no such modality (checked below)
            if isinstance(section, str):
                section = {"name": section}
            if isinstance(section, EncoderConfig):
                section = section.model_dump()
            if not isinstance(section, dict):
                continue  # the section's own validation says what is wrong
            given = section.get("name")
            if given is not None and given != name:
                raise ValueError(
                    f"encoder={name!r} builds both towers from one checkpoint, but {key}.name={given!r} names "
                    f"another; drop {key}.name (or make it {name!r}), or drop encoder to use two different encoders"
                )
            data[key] = {**section, "name": name}
        return data

    @model_validator(mode="after")
    def _encoders_for_head(self) -> ModelConfig:
        from mmfuse.fusion import FUSION_HEADS

        cls = FUSION_HEADS.get(self.head.name)
        text_use = cls.uses_text or ("prompts" if getattr(cls, "needs_text_tower", False) else None)
        for modality, uses in (("text", text_use), ("image", cls.uses_image)):
            if uses is not None and getattr(self, f"{modality}_encoder") is None:
                raise ValueError(
                    f"head {self.head.name!r} reads the {modality}, but {modality}_encoder is null; "
                    f"set model.{modality}_encoder.name"
                )
        return self


class OptimConfig(StrictSection):
    """Optimizer and learning-rate schedule.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd`` (with ``momentum``).
        lr: learning rate of the head (every parameter outside the encoders).
        encoder_lr: learning rate of trainable encoder parameters (fine-tuning wants a much smaller one).
        lora_lr: learning rate of the LoRA adapters (``model.<modality>_encoder.lora``), which usually want more than
            a fine-tuned encoder's weights; default (``null``): ``encoder_lr``, like the encoder's other parameters.
        weight_decay: decay of weight matrices; biases and normalization weights (1-D parameters) get none.
        momentum: SGD momentum (ignored by Adam/AdamW).
        schedule: ``constant``, ``linear`` (decay to 0) or ``cosine``, each after a linear warmup
            (transformers' schedule functions).
        warmup_ratio: warmup length as a fraction of all optimizer steps.
        warmup_steps: warmup length in optimizer steps; overrides ``warmup_ratio`` when set.
        grad_clip: clip the gradient norm to this value; ``null`` or 0 turns clipping off.
        grad_accum: accumulate gradients over this many batches per optimizer step.
    """

    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    encoder_lr: float = Field(default=2e-5, gt=0)
    lora_lr: float | None = Field(default=None, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(default=None, ge=0)
    grad_clip: float | None = Field(default=1.0, ge=0)
    grad_accum: int = Field(default=1, ge=1)


REPORT_TO = ("tensorboard", "mlflow")  # the experiment trackers train.report_to may name

SelectionMetric = Literal["auto", "accuracy", "macro_f1", "weighted_f1", "auroc", "loss"]


class TrainingConfig(StrictSection):
    """The training loop (the ``train`` section).

    Attributes:
        epochs: passes over the training data.
        batch_size: examples per batch, over all processes together (each of P processes gets batch_size / P).
        eval_batch_size: batch size for evaluation and feature computation; default 2 x batch_size.
        seed: seeds weights, dropout and data order; the same seed and config give the same metrics on CPU.
        num_workers: DataLoader worker processes that decode and preprocess images.
        class_weights: ``none``, ``balanced`` (inverse class frequency in train) or one weight per class, in the
            label map's class order.
        label_smoothing: label smoothing of the cross-entropy loss.
        image_dropout: modality dropout: the probability that a training example's image is hidden from the head
            (as if it were missing: zero features, no image regions), so the head cannot lean on the image alone;
            validation and prediction always see every image. Only for heads that read both modalities.
        selection_metric: validation metric that picks the best checkpoint and drives early stopping; ``auto`` is
            AUROC for binary tasks and macro-F1 otherwise; ``loss`` is the validation loss (lower is better).
        early_stopping_patience: stop after this many epochs without improvement; ``null`` trains every epoch.
        mixed_precision: ``no``, ``fp16``, ``bf16``, or ``auto`` (bf16 on a GPU that has it, else fp16 on a GPU,
            else no).
        deterministic: use only deterministic torch kernels (slower on GPU; CPU runs are deterministic anyway).
        device: ``auto`` (a GPU when there is one) or ``cpu``.
        threads: torch's intra-op CPU threads in this process; ``null`` keeps torch's default (one per core). Set 1
            when several runs or sweep workers share the CPU: oversubscribed threads spin-wait for each other and
            made training ~30x slower in our measurements (docs/benchmarks.md).
        report_to: experiment trackers to send the run to (the Hugging Face Trainer convention): a list of
            ``tensorboard`` and/or ``mlflow``, ``none`` (the default) or ``all`` (both). They need the ``track`` extra
            (``pip install "mmfuse[track]"``); see :mod:`mmfuse.engine.tracking` for what is logged where.
        log_every_steps: log the training loss (mean since the last log) and learning rate to the trackers every
            this many optimizer steps.
        time_limit: seconds this training may take (from the start of ``fit``, features included); ``null``: no
            limit. Training stops at an epoch boundary once the next epoch (estimated as the longest so far) would
            end past it, so at least one epoch always runs; the best checkpoint is kept and the summary says
            ``status: time_limit``.
        calibrate: after training, ``temperature`` fits one temperature ``T`` on the best checkpoint's validation
            logits (temperature scaling: LBFGS on the negative log-likelihood), and one on the last checkpoint's
            (the same when the last epoch is the best), each stored with its checkpoint, so that every
            probability it gives (predict, evaluate, serve, ONNX) is ``softmax(logits / T)``; the binary threshold is
            tuned again on those. It changes no argmax label. ``none`` keeps the raw softmax.
    """

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    seed: int = 0
    num_workers: int = Field(default=0, ge=0)
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    image_dropout: float = Field(default=0.0, ge=0, lt=1)
    selection_metric: SelectionMetric = "auto"
    early_stopping_patience: int | None = Field(default=None, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "auto"
    deterministic: bool = False
    device: Literal["auto", "cpu"] = "auto"
    threads: int | None = Field(default=None, ge=1)
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    log_every_steps: int = Field(default=50, ge=1)
    time_limit: float | None = Field(default=None, gt=0)
    calibrate: Literal["temperature", "none"] = "temperature"

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> Any:
        known = list(REPORT_TO)
        if v is None or v == "none":
            return []
        if v == "all":
            return known
        names = [v] if isinstance(v, str) else v
        if not isinstance(names, (list, tuple)) or any(not isinstance(n, str) for n in names):
            raise ValueError(f"must be a list of tracker names ({', '.join(known)}), 'none' or 'all', got {v!r}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"unknown tracker(s) {unknown}; allowed: {known}, or 'none' / 'all' (e.g. train.report_to=[mlflow])"
            )
        return list(dict.fromkeys(names))

    @field_validator("class_weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> Any:
        if v is None:
            return "none"
        if isinstance(v, str):
            if v not in ("none", "balanced"):
                raise ValueError(f"must be 'none', 'balanced' or a list of one weight per class, got {v!r}")
            return v
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"must be 'none', 'balanced' or a list of one weight per class, got {v!r}")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in v):
            raise ValueError(f"class weights must be numbers >= 0, got {list(v)!r}")
        return [float(w) for w in v]

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size


class RunConfig(StrictSection):
    """Where the run folder goes: ``out_dir/name``.

    Attributes:
        out_dir: parent folder of run folders (relative to the working directory).
        name: the run folder's name; default ``<head>-<YYYYmmdd-HHMMSS>``.
        quiet: no progress bars or per-epoch lines on the console (the log file keeps everything). Off a terminal
            the progress lines (one every ``$MMFUSE_PROGRESS_SECONDS``, default 30 s) stay: see
            :mod:`mmfuse.progress`.
        overwrite: reuse an existing run folder, deleting its contents; otherwise an existing one is an error.
        experiment: the MLflow experiment the run is logged to (with ``train.report_to`` naming ``mlflow``);
            default ``$MLFLOW_EXPERIMENT_NAME``, else ``mmfuse``.
    """

    out_dir: Path = Path("runs")
    name: str | None = None
    quiet: bool = False
    overwrite: bool = False
    experiment: str | None = Field(default=None, min_length=1)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v in (".", "..")):
            raise ValueError(f"must be a plain folder name (no slashes), got {v!r}; put the parent in run.out_dir")
        return v


class CacheConfig(StrictSection):
    """Features of frozen encoders.

    Attributes:
        enabled: compute the features of frozen encoders once per dataset and train from them.
        dir: folder of the persistent feature cache shared by every run, head and sweep trial (relative to the
            working directory). ``null``: ``$MMFUSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmfuse`` (``~/.cache/mmfuse``).
            ``off``: features live in this process only.
        dtype: how the persistent cache stores token sequences and image grids: ``float16`` (the default: half
            the bytes of ``float32``, an EfficientNet-Lite0 grid takes 123 KiB instead of 245 KiB per image; values
            are read back as float32, each rounded to 11 significant bits; measured within the seed spread of the
            quality benchmark, docs/performance.md), or ``float32``. float32 and float16 entries are kept apart:
            entries written while float32 was the default are read again only with ``float32``.
        pooled_dtype: how it stores pooled vectors (``float32``; ``float16`` halves these small vectors too).
        store_sequences: also store sequences / grids of inputs when the head reads only pooled vectors, so a
            later head that reads them does not run the encoder again: ``true``, ``false`` (store what the head
            reads), or the modalities (``[image]``). A sweep over several heads stores what any of them reads.
    """

    enabled: bool = True
    dir: str | None = None
    dtype: Literal["float32", "float16"] = "float16"  # mmfuse.cache.source.DEFAULT_DTYPE (config imports no cache)
    pooled_dtype: Literal["float32", "float16"] = "float32"
    store_sequences: bool | list[Literal["text", "image"]] = False

    def storage_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`mmfuse.cache.source_for` that say how entries are stored."""
        return {"dtype": self.dtype, "pooled_dtype": self.pooled_dtype, "store_sequences": self.store_sequences}


class TrainConfig(StrictSection):
    """A whole training config.

    Attributes:
        data: where the data is and how to read it (see :class:`~mmfuse.data.DataConfig`); may be ``null`` when
            examples are passed to :meth:`~mmfuse.MultimodalClassifier.fit` directly.
        model: encoders and fusion head.
        optim: optimizer and schedule.
        train: the training loop.
        run: the run folder.
        cache: features of frozen encoders.
    """

    data: DataConfig | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainingConfig = Field(default_factory=TrainingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @model_validator(mode="after")
    def _lora_lr_needs_lora(self) -> TrainConfig:
        encoders = [e for e in (self.model.text_encoder, self.model.image_encoder) if e is not None]
        if self.optim.lora_lr is not None and not any(e.lora is not None for e in encoders):
            raise ValueError(
                f"optim.lora_lr={self.optim.lora_lr:g} is the learning rate of LoRA adapters, but no encoder has lora; "
                "add model.text_encoder.lora (or model.image_encoder.lora), or drop optim.lora_lr (optim.encoder_lr "
                "sets a fine-tuned encoder's)"
            )
        return self

    @model_validator(mode="after")
    def _image_dropout_needs_both(self) -> TrainConfig:
        from mmfuse.fusion import FUSION_HEADS

        cls = FUSION_HEADS.get(self.model.head.name)
        if self.train.image_dropout and (cls.uses_text is None or cls.uses_image is None):
            raise ValueError(
                f"train.image_dropout={self.train.image_dropout:g} hides images from a head that also reads the text, "
                f"but head {self.model.head.name!r} reads one modality only; set train.image_dropout=0 or pick a "
                f"fusion head"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able form that validates back to an equal config."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------------- validation


def validate_config(data: Mapping[str, Any], *, base_dir: Path | None = None, source: str | None = None) -> TrainConfig:
    """Validates a config mapping, turning pydantic's errors into one :class:`ConfigError` naming every key path."""
    try:
        return TrainConfig.model_validate(dict(data), context={"base_dir": base_dir} if base_dir else None)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def format_errors(error: ValidationError, source: str | None = None) -> str:
    """One line per error: ``key.path: what is wrong (got value)``."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        msg = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] in ("value_error", "missing") else f" (got {_short(err.get('input'))})"
        lines.append(f"  {loc or '(top level)'}: {msg}{got}")
    where = f" in {source!r}" if source else ""
    return f"invalid config{where}:\n" + "\n".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("list[float]", "str", "int", "float"))
