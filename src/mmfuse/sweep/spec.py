"""The sweep file: a base training config plus a grid, an explicit list of overrides, or an Optuna search.

::

    name: mvsa-lr-grid                   # the study's name (default: the file's name)
    base: ../configs/mvsa.yaml           # a config file (relative to this file) or an inline config mapping
    overrides: [train.epochs=5]          # key=value applied to the base before anything else
    metric: macro_f1                     # validation metric that ranks trials (default: the base's selection metric)
    grid:                                # every combination ...
      lr: [1.0e-3, 3.0e-4]
      head.params.dropout: [0.1, 0.3]
    # trials:                            # ... or an explicit list of override sets ...
    #   - {lr: 1.0e-3, batch_size: 32}
    # search:                            # ... or a search (Optuna TPE)
    #   params:
    #     lr: {low: 1.0e-5, high: 1.0e-2, log: true}
    #     head.name: [concat, cross_attention]
    n_trials: 20                         # trial budget (the whole study, all workers together)
    timeout: 3600                        # time budget in seconds (each worker starts no trial after it)
    pruner: {name: median, n_warmup_steps: 1}
    baselines: true                      # also train the unimodal baselines (text_only, image_only) for the table
    seeds: [0, 1, 2]                     # then train the selected point with each seed: mean ± std on val and test
    variants:                            # and variants of the selected point, each with the seeds
      finetune:                          # a fine-tuning grid on top of the chosen head settings
        overrides: {model.text_encoder.freeze: false, epochs: 3}
        grid: {optim.encoder_lr: [2.0e-5, 5.0e-5]}   # the value whose seeds score best on validation is kept
      label_smoothing: {overrides: {train.label_smoothing: 0.1}}
    # limit: {train: 48, val: 24, test: 24}   # only the first examples of each split (a quick try)

Keys are the same dotted keys as ``--set`` (:func:`mmfuse.config.resolve_key`: ``lr`` means ``optim.lr``). The file
is validated once, here, like a config: every grid point and list entry is turned into a full config up front, and
each searched value range is checked at both ends, so a typo fails before the first trial and not after an hour.
Each variant is checked on top of every grid point or list entry (on the base config for a search).

After the search, ``seeds`` and ``variants`` (:mod:`mmfuse.sweep.final`) train the point chosen on validation again:
with each seed, so its numbers are a mean ± std and not one lucky run, and with each variant's overrides (a
fine-tuning grid, an ablation), each chosen on validation too; only then is the test split evaluated.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from mmfuse._strict import StrictSection
from mmfuse.config import (
    ConfigError,
    SelectionMetric,
    TrainConfig,
    format_errors,
    parse_value,
    read_yaml,
    resolve_key,
    set_path,
    validate_config,
)

UNIMODAL_HEADS = ("text_only", "image_only")
"""The baselines every fusion head must beat, trained once per sweep with the base config (``baselines: true``)."""

MAX_POINTS = 10_000
"""Largest grid accepted (each point is validated up front, and each one is a training run)."""

RESERVED_KEYS = {
    ("run",): "the sweep places each trial's run folder itself (pass --out to choose the sweep folder)",
    ("train", "selection_metric"): "set the sweep's top-level `metric` instead: every trial is ranked by it",
}


class SweepError(ConfigError):
    """A sweep file, or a sweep folder, that cannot be used; the message names the key and the fix."""


class ParamSpec(StrictSection):
    """One searched setting: ``choices`` (categorical), or ``low``/``high`` (a number).

    Attributes:
        type: ``float``, ``int`` or ``categorical``; inferred when left out (``choices`` -> categorical, integer
            bounds -> int, else float).
        low: smallest value (numbers).
        high: largest value (numbers).
        log: sample on a log scale (learning rates, weight decay); needs ``low > 0``.
        step: sample on a grid of this step from ``low`` (not with ``log``).
        choices: the values of a categorical setting (numbers, strings, booleans, null; lists and mappings too).
    """

    type: Literal["float", "int", "categorical"] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, list):
            data = {"choices": data}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a searched setting is a list of choices or a mapping like {{low: 1.0e-5, high: 1.0e-2, log: true}}, "
                f"got {data!r}"
            )
        data = dict(data)
        if data.get("type") is None:
            if data.get("choices") is not None:
                data["type"] = "categorical"
            else:
                bounds = [data.get("low"), data.get("high"), data.get("step")]
                is_int = all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in bounds)
                data["type"] = "int" if is_int and not data.get("log") else "float"
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical setting needs a non-empty list of `choices`")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("a categorical setting takes only `choices` (no low/high/step/log)")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} setting takes low/high, not `choices`; drop `type` to make it categorical")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} setting needs both `low` and `high`")
        if self.low >= self.high:
            raise ValueError(f"`low` must be below `high`, got low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale setting needs low > 0, got low={self.low!r}")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log: true` cannot be combined (Optuna samples one or the other)")
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and float(value) != int(value):
                    raise ValueError(f"an int setting needs whole numbers, got {name}={value!r}")
        return self

    def edge_values(self) -> list[Any]:
        """The values that bound this setting (both ends, or every choice): each must give a valid config."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class SearchSpec(StrictSection):
    """An Optuna search (TPE sampler).

    Attributes:
        params: override key -> :class:`ParamSpec` (or a list of choices).
        seed: seed of the sampler (the first worker uses it; joining workers derive their own, so they do not
            propose the same values).
        n_startup_trials: random trials before TPE starts modelling.
    """

    params: dict[str, ParamSpec]
    seed: int = 0
    n_startup_trials: int = Field(default=5, ge=0)

    @field_validator("params")
    @classmethod
    def _some(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not v:
            raise ValueError("search.params is empty; name at least one setting to search, e.g. lr")
        return v


class PrunerSpec(StrictSection):
    """Stopping bad trials early, from their validation metric after each epoch.

    Attributes:
        name: ``none``, ``median`` (stop a trial whose best value so far is worse than the median of earlier trials
            at the same epoch) or ``hyperband``.
        n_startup_trials: ``median``: trials that run to the end before any is pruned.
        n_warmup_steps: ``median``: epochs every trial runs before it can be pruned.
        min_resource: ``hyperband``: epochs of the shortest bracket.
    """

    name: Literal["none", "median", "hyperband"] = "median"
    n_startup_trials: int = Field(default=3, ge=0)
    n_warmup_steps: int = Field(default=1, ge=0)
    min_resource: int = Field(default=1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        if data is None:
            return {"name": "none"}
        return {"name": data} if isinstance(data, str) else data


class VariantSpec(StrictSection):
    """A variant of the selected point (``variants:`` of the sweep file), trained after the search.

    Attributes:
        overrides: key -> value set on top of the selected point's overrides (``model.text_encoder.freeze: false``).
        grid: key -> list of values; every combination is tried on top of ``overrides``, each with every seed, and
            the one whose seeds score best on validation (mean; ties: mean accuracy, then the first) is the
            variant's result. Default: the one point ``overrides``.
        seeds: ``train.seed`` of the runs of each point; default: the sweep's ``seeds``, else the selected trial's
            seed.
    """

    overrides: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] | None = None
    seeds: list[int] | None = None

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_lists(cls, v: Any) -> Any:
        return _check_grid_lists(v)

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, v: list[int] | None) -> list[int] | None:
        return _check_seeds(v)


def _check_grid_lists(v: Any) -> Any:
    if isinstance(v, Mapping):
        for key, values in v.items():
            if not isinstance(values, list) or not values:
                raise ValueError(
                    f"grid.{key} must be a non-empty list of values, got {values!r}; write e.g. [{values!r}] "
                    "for a single value"
                )
    return v


def _check_seeds(v: list[int] | None) -> list[int] | None:
    if v is not None and (not v or len(set(v)) != len(v)):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, e.g. [0, 1, 2], got {v!r}")
    return v


class SweepSpec(StrictSection):
    """The sweep file, as written (see the module docstring).

    Attributes:
        name: the study's name; default: the sweep file's name without suffix.
        base: the base config: a YAML file (relative to the sweep file) or an inline mapping.
        overrides: ``key=value`` overrides applied to the base for every trial.
        metric: validation metric that ranks trials (and picks each trial's best epoch); ``auto``: the base
            config's ``train.selection_metric``.
        grid: override key -> list of values; every combination is a trial.
        trials: a list of override mappings; each is a trial.
        search: an Optuna search.
        n_trials: trial budget of the whole study (all workers together); required for a search without timeout.
        timeout: time budget in seconds: a worker starts no trial after this long (running ones finish).
        pruner: how bad trials are stopped early; default ``median`` for a search, ``none`` for a grid or list.
        out_dir: parent folder of the sweep folder (relative to the working directory).
        baselines: also train the unimodal baselines (``text_only``, ``image_only``) once each, on the base config
            with only the head swapped (its hyperparameters kept where the baseline head has them). They are ranked
            in the table beside the trials, for comparison, but never selected, tested or ensembled, and do not
            count against ``n_trials``. A baseline is left out when the base config is already that head or has no
            encoder for its modality.
        seeds: after the search, the selected point is trained with each of these ``train.seed`` values (a run
            whose config equals the selected trial's is that trial, not trained again); validation and test
            metrics are reported as mean ± sample std over the seeds (``final.json``). Default: no such runs.
        variants: name -> :class:`VariantSpec`: variants of the selected point trained after the search (with the
            sweep's ``seeds`` unless the variant names its own), each reported like the selected point.
        limit: split name (``train``, ``val``, ``test``) -> number of examples: only the first ones of that split are
            used (a quick try of a sweep; the splits' other examples are left out and the count is logged).
    """

    name: str | None = None
    base: str | dict[str, Any]
    overrides: list[str] = Field(default_factory=list)
    metric: SelectionMetric = "auto"
    grid: dict[str, list[Any]] | None = None
    trials: list[dict[str, Any]] | None = None
    search: SearchSpec | None = None
    n_trials: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    pruner: PrunerSpec | None = None
    out_dir: Path = Path("runs/sweeps")
    baselines: bool = True
    seeds: list[int] | None = None
    variants: dict[str, VariantSpec] = Field(default_factory=dict)
    limit: dict[Literal["train", "val", "test"], int] | None = None

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, v: list[int] | None) -> list[int] | None:
        return _check_seeds(v)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        for name in v:
            if name == "selected" or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(
                    f"variant name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder) and not "
                    "'selected'"
                )
        return v

    @field_validator("limit")
    @classmethod
    def _positive_limit(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        for split, n in (v or {}).items():
            if n < 1:
                raise ValueError(f"limit.{split} must be at least 1, got {n!r}")
        return v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (it names a folder), got {v!r}")
        return v

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_lists(cls, v: Any) -> Any:
        return _check_grid_lists(v)

    @model_validator(mode="after")
    def _one_mode(self) -> SweepSpec:
        given = [k for k in ("grid", "trials", "search") if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none of them" if not given else " and ".join(given)
            raise ValueError(
                f"a sweep has exactly one of `grid` (every combination), `trials` (a list of override sets) or "
                f"`search` (Optuna), got {what}"
            )
        if self.trials is not None and not self.trials:
            raise ValueError("`trials` is empty; list at least one mapping of overrides, e.g. - {lr: 1.0e-3}")
        if self.search is not None and self.n_trials is None and self.timeout is None:
            raise ValueError("a search needs a budget: set n_trials, timeout, or both")
        return self

    @property
    def mode(self) -> str:
        return "grid" if self.grid is not None else "trials" if self.trials is not None else "search"


@dataclass
class Sweep:
    """A validated sweep, ready to run.

    Attributes:
        spec: the sweep file as written.
        name: the study's name.
        base: the base config (overrides and the sweep metric applied), every path resolved.
        points: the override mappings of a grid or list (``{}`` for a search), in trial order.
        keys: every override key a trial may set, in the order of the file (table columns, Optuna parameters).
        source: the sweep file (``None`` when built from a mapping).
        baselines: unimodal head name -> the overrides of its baseline trial (empty with ``baselines: false``).
        variants: variant name -> the override mappings of its points, each on top of the selected point's
            (``overrides`` and one grid combination), in order.
    """

    spec: SweepSpec
    name: str
    base: TrainConfig
    points: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    source: Path | None = None
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.spec.mode

    def seeds_of(self, variant: str | None = None) -> list[int]:
        """The seeds of the selected point's runs (``variant=None``) or of a variant's; empty: no such runs."""
        if variant is not None and self.spec.variants[variant].seeds is not None:
            return list(self.spec.variants[variant].seeds or [])
        if self.spec.seeds is not None:
            return list(self.spec.seeds)
        return []  # the selected point: no runs; a variant: one run with the selected trial's seed

    @property
    def metric_setting(self) -> str:
        """The metric as configured (``auto`` resolves once the number of classes is known)."""
        return self.base.train.selection_metric

    def trial_config(self, overrides: Mapping[str, Any], run_dir: Path | None = None) -> TrainConfig:
        """The full config of one trial: the base with ``overrides``; its run folder at ``run_dir``.

        Raises:
            ConfigError: the overrides do not give a valid config.
        """
        data = self.base.to_dict()
        for key, value in overrides.items():
            set_path(data, resolve_key(key), copy.deepcopy(value))
        if run_dir is not None:
            data["run"] = {**data.get("run", {}), "out_dir": str(run_dir.parent), "name": run_dir.name}
            data["run"].update(quiet=True, overwrite=True)
        return validate_config(data)

    def fingerprint(self) -> str:
        """What makes two sweep files the same study: base config (without machine-local paths), metric, and the
        points or search space. Budgets and the pruner may change between runs of the same study."""
        base = self.base.to_dict()
        base.pop("run", None)
        base.pop("cache", None)
        for key in ("report_to", "log_every_steps"):  # where a run is logged does not change it
            base["train"].pop(key, None)
        if base.get("data"):
            base["data"].pop("root", None)
        payload = {"base": base, "mode": self.mode, "points": self.points}
        if self.spec.search is not None:
            payload["search"] = self.spec.search.model_dump(mode="json")
        if self.baselines:
            payload["baselines"] = self.baselines
        if self.spec.limit:  # the trials see fewer examples: another study
            payload["limit"] = self.spec.limit
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep (as written to ``sweep.json`` in the sweep folder)."""
        return {
            "name": self.name,
            "mode": self.mode,
            "source": str(self.source) if self.source else None,
            "spec": self.spec.model_dump(mode="json"),
            "base": self.base.to_dict(),
            "points": self.points,
            "keys": self.keys,
            "baselines": self.baselines,
            "variants": self.variants,
            "fingerprint": self.fingerprint(),
        }


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Reads and validates a sweep file.

    Args:
        path: the YAML sweep file.
        overrides: ``key=value`` overrides of the base config for every trial, after the file's own ``overrides``
            (``train.epochs=1`` for a quick try).

    Raises:
        FileNotFoundError: no such file, or no base config file.
        SweepError: bad YAML, an unknown key, a bad value, or a trial that would not give a valid config.
    """
    path = Path(path)
    try:
        data = read_yaml(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"sweep file {str(path)!r} not found; pass the path of a YAML sweep file") from None
    except ConfigError as e:
        raise SweepError(str(e).replace("config file", "sweep file", 1)) from None
    if overrides:
        given = data.get("overrides") or []
        if not isinstance(given, list):
            raise SweepError(f"`overrides` in {str(path)!r} must be a list of key=value strings, got {given!r}")
        data["overrides"] = [*given, *overrides]
    return sweep_from_dict(data, base_dir=path.resolve().parent, source=path)


def sweep_from_dict(data: Mapping[str, Any], *, base_dir: Path | None = None, source: Path | None = None) -> Sweep:
    """Validates a sweep given as a mapping; relative paths resolve against ``base_dir`` (default: here).

    Raises:
        FileNotFoundError: the base config file does not exist.
        SweepError: as :func:`load_sweep`.
    """
    where = f" in {str(source)!r}" if source else ""
    try:
        spec = SweepSpec.model_validate(dict(data))
    except ValidationError as e:
        raise SweepError(format_errors(e).replace("invalid config", f"invalid sweep{where}", 1)) from None
    base_dir = (base_dir or Path.cwd()).resolve()
    name = spec.name or (source.stem if source else "sweep")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SweepError(f"the sweep's name {name!r} (from the file name) cannot name a folder; set `name:`{where}")
    base = _base_config(spec, base_dir, where)
    points, keys = _points(spec, base, where)
    sweep = Sweep(spec=spec, name=name, base=base, points=points, keys=keys, source=source)
    if spec.search is not None:
        _check_search(sweep, where)
    if spec.baselines:
        sweep.baselines = _baselines(sweep)
    sweep.variants = _variants(sweep, where)
    return sweep


def _variants(sweep: Sweep, where: str) -> dict[str, list[dict[str, Any]]]:
    """Each variant's points, checked on top of every point of the sweep (the base config for a search)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, variant in sweep.spec.variants.items():
        label = f"variants.{name}"
        grid = variant.grid or {}
        keys = _keys([*variant.overrides, *grid], label)
        for key in keys:
            if resolve_key(key) == ("train", "seed"):
                raise SweepError(f"{label}: key {key!r} cannot be set in a variant; list the seeds in `seeds`")
        size = len(sweep.points or [{}])
        for values in grid.values():
            size *= len(values)
        if size > MAX_POINTS:
            raise SweepError(f"{label}: {size} combinations with the sweep's points (more than {MAX_POINTS})")
        points = [
            {**variant.overrides, **dict(zip(grid, combo, strict=True))} for combo in itertools.product(*grid.values())
        ]
        errors = []
        for point in sweep.points or [{}]:
            for i, extra in enumerate(points):
                try:
                    sweep.trial_config({**point, **extra})
                except ConfigError as e:
                    shown = ", ".join(f"{k}={v!r}" for k, v in {**point, **extra}.items())
                    errors.append(f"{label} point {i} ({shown}): " + str(e).replace("\n", "\n    "))
        if errors:
            more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
            raise SweepError(f"invalid sweep{where}: {len(errors)} variant runs would not run:\n  "
                             + "\n  ".join(errors[:5]) + more)  # fmt: skip
        out[name] = points
    return out


def _baselines(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """The overrides of each unimodal baseline: the head swapped, the base head's hyperparameters it shares kept."""
    from mmfuse.fusion import head_params

    head = sweep.base.model.head
    out = {}
    for name in UNIMODAL_HEADS:
        if head.name == name:
            continue  # the base config is this baseline already
        allowed = head_params(name)
        overrides = {"head.name": name, "head.params": {k: v for k, v in head.params.items() if k in allowed}}
        try:
            sweep.trial_config(overrides)
        except ConfigError:  # e.g. no image encoder for image_only: no such baseline for this sweep
            continue
        out[name] = overrides
    return out


def _base_config(spec: SweepSpec, base_dir: Path, where: str) -> TrainConfig:
    if isinstance(spec.base, str):
        path = Path(spec.base).expanduser()
        path = path if path.is_absolute() else base_dir / path
        data, config_dir = read_yaml(path), path.resolve().parent
    else:
        data, config_dir = copy.deepcopy(spec.base), base_dir
    try:
        for item in spec.overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} must be key=value, e.g. train.epochs=5")
            _check_key(key.strip(), "overrides")
            set_path(data, resolve_key(key.strip()), parse_value(value))
        if spec.metric != "auto":
            set_path(data, ("train", "selection_metric"), spec.metric)
        base = validate_config(data, base_dir=config_dir)
    except ConfigError as e:
        raise SweepError(f"base config of the sweep{where}: " + str(e).replace("\n", "\n  ")) from None
    if base.data is None:
        raise SweepError(
            f"the base config of the sweep{where} has no `data`; a sweep trains every trial on the config's "
            "train/val splits (and tests the selected one on its test split), so set data.root and data.preset"
        )
    return base


def _check_key(key: str, where: str) -> tuple[str, ...]:
    """The full path of an override key, refusing the keys a sweep owns."""
    try:
        parts = resolve_key(key)
    except ConfigError as e:
        raise SweepError(f"{where}: {e}") from None
    for reserved, why in RESERVED_KEYS.items():
        if parts[: len(reserved)] == reserved:
            raise SweepError(f"{where}: key {key!r} cannot be swept: {why}")
    return parts


def _keys(keys: Sequence[str], where: str) -> list[str]:
    """Checks override keys and refuses two spellings of one setting (``lr`` and ``optim.lr``)."""
    seen: dict[tuple[str, ...], str] = {}
    for key in keys:
        parts = _check_key(key, where)
        if parts in seen and seen[parts] != key:
            raise SweepError(f"{where}: keys {seen[parts]!r} and {key!r} name the same setting; keep one spelling")
        seen[parts] = key
    return list(dict.fromkeys(keys))


def _points(spec: SweepSpec, base: TrainConfig, where: str) -> tuple[list[dict[str, Any]], list[str]]:
    if spec.grid is not None:
        keys = _keys(list(spec.grid), "grid")
        size = 1
        for values in spec.grid.values():
            size *= len(values)
        if size > MAX_POINTS:
            raise SweepError(f"the grid has {size} combinations (more than {MAX_POINTS}); use a search instead")
        points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.grid.values())]
        label = "grid point"
    elif spec.trials is not None:
        keys = _keys([k for point in spec.trials for k in point], "trials")
        points = [dict(point) for point in spec.trials]
        label = "trials entry"
    else:
        return [], _keys(list(spec.search.params), "search.params")  # type: ignore[union-attr]
    sweep = Sweep(spec=spec, name="", base=base)
    errors = []
    for i, point in enumerate(points):
        try:
            sweep.trial_config(point)
        except ConfigError as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "(no overrides)"
            errors.append(f"{label} {i} ({shown}): " + str(e).replace("\n", "\n    "))
    if errors:
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise SweepError(
            f"invalid sweep{where}: {len(errors)} of {len(points)} trials would not run:\n  "
            + "\n  ".join(errors[:5])
            + more
        )
    return points, keys


def _check_search(sweep: Sweep, where: str) -> None:
    """Each searched setting must give a valid config at both ends of its range (or with each choice)."""
    assert sweep.spec.search is not None
    errors = []
    for key, param in sweep.spec.search.params.items():
        for value in param.edge_values():
            try:
                sweep.trial_config({key: value})
            except ConfigError as e:
                errors.append(f"search.params.{key} = {value!r}: " + str(e).replace("\n", "\n    "))
    if errors:
        raise SweepError(f"invalid sweep{where}:\n  " + "\n  ".join(errors))
