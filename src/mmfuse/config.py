"""The training config: one typed model for data, model, optimization, training loop, run folder and feature cache.

A config comes from YAML plus ``key=value`` overrides (:func:`load_config`), from a dict
(:meth:`TrainConfig.model_validate`), or from keyword shortcuts (:func:`config_from`). It is validated once, here:
every wrong key or value is a :class:`ConfigError` that names the key path (``optim.name``), the bad value, and the
allowed values or keys. Nothing deeper in the engine reads raw config keys.

Override keys are dotted paths (``optim.lr=1e-4``, ``model.head.name=cross_attention``,
``model.head.params.hidden=0``). A shorter key is accepted when it names exactly one setting: ``head.name`` means
``model.head.name`` and ``lr`` means ``optim.lr``; an ambiguous one (``seed``: ``train.seed`` or
``data.split.seed``?) is refused with the candidates. Values are parsed as YAML scalars or lists (``[1, 2]``).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mmfuse._strict import StrictSection
from mmfuse.data.config import DataConfig


class ConfigError(ValueError):
    """A config that does not validate; the message lists each bad key path with what is allowed."""


class EncoderConfig(StrictSection):
    """One encoder: what to build and whether it trains.

    Attributes:
        name: registry name (``minilm``, ``efficientnet-lite0``), hub name, or local folder.
        freeze: freeze the encoder's weights. A frozen encoder whose pooled/sequence/grid output a head reads is run
            once per dataset and its features reused (much faster); it is not stored in checkpoints but rebuilt from
            ``name`` and checked against its fingerprint.
        trainable_top_k: with ``freeze``, leave the top k layers/blocks trainable (0 = fully frozen).
        options: keyword options of the encoder builder (checked when the encoder is built).
    """

    name: str
    freeze: bool = True
    trainable_top_k: int = Field(default=0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @property
    def fully_frozen(self) -> bool:
        return self.freeze and self.trainable_top_k == 0


class HeadConfig(StrictSection):
    """The fusion head and its hyperparameters.

    Attributes:
        name: a registered fusion head (``concat``, ``cross_attention``, ``early_fusion``, ``align``, ``cross``,
            ``text_only``, ``image_only``).
        params: the head's hyperparameters (e.g. ``hidden``, ``dropout``); unknown ones are refused, listing the
            allowed ones with their defaults.
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
        from mmfuse.fusion import head_params

        allowed = head_params(self.name)
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            listed = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "(none)"
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, unknown))} in params of head {self.name!r}; "
                f"allowed (defaults): {listed}"
            )
        for key, value in self.params.items():
            default = allowed[key]
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"params.{key} of head {self.name!r} must be true or false, got {value!r}")
            number = isinstance(default, (int, float)) and not isinstance(default, bool)
            if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"params.{key} of head {self.name!r} must be a number, got {value!r}")
        return self


class ModelConfig(StrictSection):
    """Encoders and head. An encoder may be ``null`` when the head does not read its modality."""

    text_encoder: EncoderConfig | None = Field(default_factory=lambda: EncoderConfig(name="minilm"))
    image_encoder: EncoderConfig | None = Field(default_factory=lambda: EncoderConfig(name="efficientnet-lite0"))
    head: HeadConfig = Field(default_factory=HeadConfig)

    @model_validator(mode="after")
    def _encoders_for_head(self) -> ModelConfig:
        from mmfuse.fusion import FUSION_HEADS

        cls = FUSION_HEADS.get(self.head.name)
        for modality, uses in (("text", cls.uses_text), ("image", cls.uses_image)):
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
    weight_decay: float = Field(default=0.01, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(default=None, ge=0)
    grad_clip: float | None = Field(default=1.0, ge=0)
    grad_accum: int = Field(default=1, ge=1)


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
            :mod:`mmfuse.engine.progress`.
        overwrite: reuse an existing run folder, deleting its contents; otherwise an existing one is an error.
    """

    out_dir: Path = Path("runs")
    name: str | None = None
    quiet: bool = False
    overwrite: bool = False

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
    """

    enabled: bool = True
    dir: str | None = None


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


# --------------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML: ``1e-4`` -> float, ``true`` -> bool, ``null`` -> None, ``[1, 2]`` -> list."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not valid YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found; pass the path of a YAML config")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), *, base: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Reads a YAML config, applies ``key=value`` overrides, and validates it.

    A relative ``data.root`` in the YAML file resolves against the file's folder; one given as an override, against
    the working directory.

    Args:
        path: the YAML file; ``None`` starts from ``base`` (or from the defaults).
        overrides: ``key=value`` strings (see the module docstring for keys and values).
        base: the config as a mapping, used when ``path`` is ``None``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: bad YAML, a malformed or unknown override key, or a value that does not validate.
    """
    data = read_yaml(path) if path is not None else dict(base or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must be key=value, e.g. optim.lr=1e-4 or model.head.name=concat")
        parts = resolve_key(key.strip())
        parsed = parse_value(value)
        if parts == ("data", "root") and isinstance(parsed, str):
            parsed = str(Path(parsed).expanduser().absolute())  # typed on the command line: relative to the cwd
        set_path(data, parts, parsed)
    base_dir = Path(path).resolve().parent if path is not None else None
    return validate_config(data, base_dir=base_dir, source=str(path) if path is not None else None)


def validate_config(data: Mapping[str, Any], *, base_dir: Path | None = None, source: str | None = None) -> TrainConfig:
    """Validates a config mapping, turning pydantic's errors into one :class:`ConfigError` naming every key path."""
    try:
        return TrainConfig.model_validate(dict(data), context={"base_dir": base_dir} if base_dir else None)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def config_from(config: TrainConfig | Mapping[str, Any] | None = None, **shortcuts: Any) -> TrainConfig:
    """A config from an optional base plus keyword settings, each named like an override key.

    ``config_from(head="cross_attention", epochs=5, lr=1e-3)``; a section given a string sets its ``name``
    (``text_encoder="minilm"``, ``head="concat"``); ``data`` may be a :class:`~mmfuse.data.DataConfig`, a mapping
    or a YAML path.

    Raises:
        ConfigError: unknown or ambiguous keys, or values that do not validate.
    """
    data: dict[str, Any] = config.to_dict() if isinstance(config, TrainConfig) else dict(config or {})
    for key, value in shortcuts.items():
        if key == "data" and isinstance(value, (str, Path)):
            from mmfuse.data import load_data_config

            value = load_data_config(value)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        parts = resolve_key(key.replace("__", "."))
        if isinstance(value, str) and _kind(parts) == "section" and "name" in _fields_at(parts):
            parts = (*parts, "name")
        set_path(data, parts, value)
    return validate_config(data)


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


# --------------------------------------------------------------------------------------------------- key paths


def _unwrap(annotation: Any) -> Any:
    """The model class inside ``X | None``; other annotations unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _schema_paths(cls: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """Every settable key path of ``cls``: ``section`` (a nested model), ``mapping`` (free keys) or ``leaf``."""
    out: dict[tuple[str, ...], str] = {}
    for name, field in cls.model_fields.items():
        path = (*prefix, name)
        ann = _unwrap(field.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[path] = "section"
            out.update(_schema_paths(ann, path))
        elif ann is dict or typing.get_origin(ann) is dict:
            out[path] = "mapping"
        else:
            out[path] = "leaf"
    return out


_PATHS: dict[tuple[str, ...], str] | None = None


def _paths() -> dict[tuple[str, ...], str]:
    global _PATHS
    if _PATHS is None:
        _PATHS = _schema_paths(TrainConfig)
    return _PATHS


def _kind(parts: tuple[str, ...]) -> str | None:
    return _paths().get(parts)


def _fields_at(parts: tuple[str, ...]) -> list[str]:
    return [p[-1] for p in _paths() if len(p) == len(parts) + 1 and p[: len(parts)] == parts]


def resolve_key(key: str) -> tuple[str, ...]:
    """The full key path of a dotted override key, which may be shortened when only one setting matches.

    Raises:
        ConfigError: an empty part, an unknown key (listing the sections), or an ambiguous short key (listing the
            candidates).
    """
    parts = tuple(key.split("."))
    if any(not p for p in parts):
        raise ConfigError(f"override key {key!r} has an empty part; write dotted keys like optim.lr")
    if parts[0] in TrainConfig.model_fields:
        return parts  # a full path; a wrong key below the top level is reported by validation, naming its level
    matches: set[tuple[str, ...]] = set()
    for path, kind in _paths().items():
        for k in range(1, min(len(path), len(parts)) + 1):
            if path[-k:] == parts[:k] and (k == len(parts) or kind == "mapping"):
                matches.add(path + parts[k:])
    if len(matches) == 1:
        return matches.pop()
    if matches:
        listed = ", ".join(sorted(".".join(m) for m in matches))
        raise ConfigError(f"override key {key!r} is ambiguous; write the full path: one of {listed}")
    sections = ", ".join(TrainConfig.model_fields)
    raise ConfigError(
        f"unknown override key {key!r}; a key is a dotted path starting with one of the sections {sections} "
        f"(e.g. optim.lr, model.head.name), or the unambiguous end of one"
    )


_MISSING = object()


def _default_at(parts: tuple[str, ...]) -> Any:
    """The default value of the config field at ``parts`` (a section's defaults as a model), or ``None``."""
    cls: Any = TrainConfig
    value: Any = None
    for part in parts:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        field = cls.model_fields[part]
        value = field.get_default(call_default_factory=True)
        cls = _unwrap(field.annotation)
    return value


def set_path(data: dict[str, Any], parts: Iterable[str], value: Any) -> None:
    """Sets ``data[a][b][c] = value`` for ``parts = (a, b, c)``, creating sections on the way: a section the data
    does not have starts from its defaults (so ``model.text_encoder.options.x=1`` keeps the default encoder name);
    one set to null starts empty."""
    parts = list(parts)
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part, _MISSING)
        if child is _MISSING:
            child = _default_at(tuple(parts[: i + 1]))
        if isinstance(child, BaseModel):
            child = child.model_dump(mode="json")
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"cannot set {'.'.join(parts)}: {where} is {child!r}, not a section")
        else:
            child = dict(child)
        node[part] = child
        node = child
    node[parts[-1]] = value
