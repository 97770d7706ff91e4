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
                                         # (and zero_shot when the base config has model.encoder: one CLIP/SigLIP)
    seeds: [0, 1, 2]                     # then train the selected point with each seed: mean ± std on val and test
    variants:                            # and variants of the selected point, each with the seeds
      finetune:                          # a fine-tuning grid on top of the chosen head settings
        overrides: {model.text_encoder.freeze: false, epochs: 3}
        grid: {optim.encoder_lr: [2.0e-5, 5.0e-5]}   # the value whose seeds score best on validation is kept
      label_smoothing: {overrides: {train.label_smoothing: 0.1}}
    # limit: {train: 48, val: 24, test: 24}   # only the first examples of each split (a quick try)

A sweep may compare heads: each head of ``heads:`` gets the whole treatment (its search, its point chosen on
validation, that point with the seeds, the variants), in ``<sweep>/heads/<head>/``, and the sweep ranks the heads in
a leaderboard. Each head's config names only the encoders that head reads::

    heads:                               # a list of head names, or head -> what it changes
      text_only: {}
      concat: {}
      early_fusion:                      # a slow head: fewer epochs, a smaller grid, one seed, one variant
        overrides: {train.epochs: 2}
        grid: {lr: [1.0e-3]}
        seeds: [0]
        variants: [finetune]
    baselines: [logistic]                # reference rows: logistic regression on frozen pooled features
    ensemble: {top_k: 3, weights: greedy}   # the heads best on validation, combined (``<sweep>/ensemble``)

Keys are the same dotted keys as ``--set`` (:func:`mmfuse.config.resolve_key`: ``lr`` means ``optim.lr``). The file
is validated once, here, like a config: every grid point and list entry is turned into a full config up front, and
each searched value range is checked at both ends, so a typo fails before the first trial and not after an hour.
Each variant is checked on top of every grid point or list entry (on the base config for a search).

After the search, ``seeds`` and ``variants`` (:mod:`mmfuse.sweep.final`) train the point chosen on validation again:
with each seed, so its numbers are a mean ± std and not one lucky run, and with each variant's overrides (a
fine-tuning grid, an ablation), each chosen on validation too; only then is the test split evaluated.

``baselines`` is ``true`` (the unimodal heads, trained like trials), ``false``, or a list of kinds: ``unimodal`` and
``logistic`` (:mod:`mmfuse.sweep.reference`: scikit-learn logistic regression on the frozen encoders' pooled features,
text alone and text + image, its ``C`` and class weights chosen on validation).
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
ZERO_SHOT = "zero_shot"
"""A baseline head beside the unimodal ones when the base config has one checkpoint's two towers (``model.encoder``)."""
BASELINE_KINDS = ("unimodal", "logistic")
"""What ``baselines:`` may list: the unimodal heads trained like trials, and logistic regression on frozen features."""
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


class _GridAndSeedsChecks(StrictSection):
    """The checks of a section's ``grid`` (lists of values) and ``seeds``; the subclass declares the fields."""

    @field_validator("grid", mode="before", check_fields=False)
    @classmethod
    def _grid_lists(cls, v: Any) -> Any:
        return _check_grid_lists(v)

    @field_validator("seeds", check_fields=False)
    @classmethod
    def _seed_list(cls, v: list[int] | None) -> list[int] | None:
        return _check_seeds(v)


class VariantSpec(_GridAndSeedsChecks):
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


class HeadVariant(VariantSpec):
    """How one compared head runs one of the sweep's variants (``heads.<head>.variants.<variant>``).

    Attributes:
        overrides: key -> value added to the variant's own overrides.
        grid: key -> list of values replacing those keys of the variant's grid (e.g. one encoder lr for a slow head).
        seeds: replace the variant's seeds for this head.
    """


class HeadSpec(_GridAndSeedsChecks):
    """One head of a sweep that compares heads (``heads:``): what it changes from the sweep's shared settings.

    The head's base config is the sweep's with ``model.head.name`` set to the head, the head hyperparameters it does
    not take dropped, and the encoder of a modality it does not read left out (``text_only`` gets no image
    encoder); what was dropped is logged and written to the head's ``sweep.json`` (``notes``).

    Attributes:
        overrides: key -> value set on this head's base config (``train.epochs: 2``).
        grid: key -> list of values replacing (or adding) those keys of the sweep's grid (a smaller grid for a slow
            head); grid sweeps only.
        seeds: the seeds of this head's selected point, instead of the sweep's ``seeds``.
        variants: the sweep's variants this head runs (default: every one): a list of names, or name ->
            :class:`HeadVariant` (what changes for this head).
    """

    overrides: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] | None = None
    seeds: list[int] | None = None
    variants: dict[str, HeadVariant] | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, data: Any) -> Any:
        return {} if data is None else data

    @field_validator("variants", mode="before")
    @classmethod
    def _variant_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not all(isinstance(name, str) for name in v):
                raise ValueError(f"variants: a list of the sweep's variant names, got {v!r}")
            return {name: {} for name in v}
        if isinstance(v, Mapping):
            return {k: ({} if x is None else x) for k, x in v.items()}
        return v


class EnsembleSpec(StrictSection):
    """An ensemble of the compared heads (``ensemble:`` of a sweep with ``heads``), built when every head finished.

    Candidates are the ``top_k`` heads whose selected trial scores best on validation (the sweep's metric, ties:
    accuracy); each candidate contributes its selected trial and, seed by seed, its runs with the sweep's seeds.

    Attributes:
        top_k: candidate heads.
        weights: ``greedy`` (greedy selection with replacement on validation, ``rounds`` picks, as ``mmfuse
            ensemble``) or ``equal`` (the plain mean of the candidates' probabilities).
        rounds: picks of the greedy selection.
    """

    top_k: int = Field(default=3, ge=1)
    weights: Literal["greedy", "equal"] = "greedy"
    rounds: int = Field(default=25, ge=1)


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
        baselines: ``true`` (the default without ``heads``) or ``[unimodal]``: also train the unimodal baselines
            (``text_only``, ``image_only``, and ``zero_shot`` when the base config's encoders are one CLIP / SigLIP
            checkpoint's two towers, ``model.encoder``: it trains nothing) once each, on the base config
            with only the head swapped (its hyperparameters kept where the baseline head has them). They are ranked
            in the table beside the trials, for comparison, but never selected, tested or ensembled, and do not
            count against ``n_trials``. A baseline is left out when the base config is already that head or has no
            encoder for its modality. ``[logistic]`` (also with ``heads``): logistic-regression reference rows
            on the frozen encoders' pooled features (:mod:`mmfuse.sweep.reference`), in ``baselines.json``.
            ``false`` (the default with ``heads``): none.
        seeds: after the search, the selected point is trained with each of these ``train.seed`` values (a run
            whose config equals the selected trial's is that trial, not trained again); validation and test
            metrics are reported as mean ± sample std over the seeds (``final.json``). Default: no such runs.
        variants: name -> :class:`VariantSpec`: variants of the selected point trained after the search (with the
            sweep's ``seeds`` unless the variant names its own), each reported like the selected point.
        limit: split name (``train``, ``val``, ``test``) -> number of examples: only the first ones of that split are
            used (a quick try of a sweep; the splits' other examples are left out and the count is logged).
        heads: head name -> :class:`HeadSpec` (or a list of names): compare these heads, each searched, selected
            and re-run with the seeds on its own (``<sweep>/heads/<head>/``); the sweep ranks them (leaderboard).
        ensemble: with ``heads``: combine the heads best on validation (:class:`EnsembleSpec`).
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
    baselines: bool | list[Literal["unimodal", "logistic"]] | None = None
    seeds: list[int] | None = None
    variants: dict[str, VariantSpec] = Field(default_factory=dict)
    limit: dict[Literal["train", "val", "test"], int] | None = None
    heads: dict[str, HeadSpec] | None = None
    ensemble: EnsembleSpec | None = None

    @field_validator("heads", mode="before")
    @classmethod
    def _head_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not all(isinstance(name, str) for name in v) or len(set(v)) != len(v):
                raise ValueError(f"heads: a list of distinct head names or a mapping head -> settings, got {v!r}")
            return {name: {} for name in v}
        return v

    @field_validator("heads")
    @classmethod
    def _some_heads(cls, v: dict[str, HeadSpec] | None) -> dict[str, HeadSpec] | None:
        if v is not None and not v:
            raise ValueError("heads is empty; name the heads to compare, e.g. [text_only, image_only, concat]")
        return v

    @property
    def baseline_kinds(self) -> list[str]:
        """``baselines`` as a list of kinds (``true`` is ``[unimodal]``)."""
        if self.baselines is None:  # the default: the unimodal baselines, unless the heads are compared
            return ["unimodal"] if self.heads is None else []
        if isinstance(self.baselines, bool):
            return ["unimodal"] if self.baselines else []
        return list(dict.fromkeys(self.baselines))

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
        if self.ensemble is not None and self.heads is None:
            raise ValueError(
                "`ensemble` combines the heads a sweep compares; add `heads:`, or run `mmfuse ensemble <sweep folder>` "
                "to combine one head's trials"
            )
        if self.heads is not None and "unimodal" in self.baseline_kinds:
            raise ValueError(
                "a sweep that compares heads has no unimodal baselines: list text_only and image_only among the "
                "`heads` (each then gets its own search), and set `baselines: false` or `baselines: [logistic]`"
            )
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
        heads: a sweep that compares heads: head name -> that head's own sweep (its base config, grid, seeds and
            variants), run in ``<sweep>/heads/<head>``; empty for a sweep of one head.
        head: the compared head this sweep is (``None`` for a sweep of its own).
        notes: what the sweep changed from the file on its own (e.g. a head's unread encoder left out).
    """

    spec: SweepSpec
    name: str
    base: TrainConfig
    points: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    source: Path | None = None
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    heads: dict[str, Sweep] = field(default_factory=dict)
    head: str | None = None
    notes: list[str] = field(default_factory=list)

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
        if self.heads:  # the heads' own studies, and what the sweep adds on top of them
            payload = {
                "heads": {name: head.fingerprint() for name, head in self.heads.items()},
                "baselines": self.spec.baseline_kinds,
                "ensemble": self.spec.ensemble.model_dump(mode="json") if self.spec.ensemble else None,
            }
            return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
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
            "heads": {name: head.to_dict() for name, head in self.heads.items()},
            "head": self.head,
            "notes": self.notes,
            "fingerprint": self.fingerprint(),
        }


def load_sweep(path: str | Path, overrides: Sequence[str] = (), heads: Sequence[str] | None = None) -> Sweep:
    """Reads and validates a sweep file.

    Args:
        path: the YAML sweep file.
        overrides: ``key=value`` overrides of the base config for every trial, after the file's own ``overrides``
            (``train.epochs=1`` for a quick try).
        heads: of a sweep that compares heads, only these (each as the file sets it up); default: every one.

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
    if heads is not None:
        data["heads"] = _only_heads(data.get("heads"), list(heads), str(path))
    return sweep_from_dict(data, base_dir=path.resolve().parent, source=path)


def _only_heads(given: Any, heads: list[str], path: str) -> dict[str, Any]:
    if not given:
        raise SweepError(
            f"the sweep file {path!r} compares no heads (no `heads:`); to run it with another head, pass "
            "--set head.name=NAME"
        )
    mapping = {name: {} for name in given} if isinstance(given, list) else dict(given)
    unknown = [h for h in heads if h not in mapping]
    if unknown or not heads:
        raise SweepError(f"head(s) {unknown or heads!r} are not among the heads of {path!r}: {', '.join(mapping)}")
    return {h: mapping[h] for h in heads}


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
    if spec.heads is not None:
        heads = {head: _head_sweep(spec, head, name, base_dir, source, where) for head in spec.heads}
        sweep = Sweep(spec=spec, name=name, base=base, source=source, heads=heads)
        _store_what_the_heads_read(sweep, [sweep, *heads.values()])
        return sweep
    points, keys = _points(spec, base, where)
    sweep = Sweep(spec=spec, name=name, base=base, points=points, keys=keys, source=source)
    if spec.search is not None:
        _check_search(sweep, where)
    if "unimodal" in spec.baseline_kinds:
        sweep.baselines = _baselines(sweep)
    sweep.variants = _variants(sweep, where)
    _store_what_the_heads_read(sweep, [sweep])
    return sweep


_HEAD_NAME = ("model", "head", "name")


def _head_names(sweep: Sweep) -> set[str]:
    """Every head a sweep (not its compared heads) may train: the base's, the grid's or list's, the search's, the
    variants' and the baselines'."""
    names = {sweep.base.model.head.name}
    overrides = [*sweep.points, *sweep.baselines.values(), *(p for ps in sweep.variants.values() for p in ps)]
    for point in overrides:
        names.update(str(v) for k, v in point.items() if resolve_key(k) == _HEAD_NAME)
    if sweep.spec.search is not None:
        for key, param in sweep.spec.search.params.items():
            if resolve_key(key) == _HEAD_NAME:
                names.update(str(c) for c in param.choices or [])
    return names


def _store_what_the_heads_read(sweep: Sweep, parts: list[Sweep]) -> None:
    """A sweep over several heads stores, for every input it encodes, the sequences / grids any of its heads reads
    (``cache.store_sequences`` of each part's base config), so each frozen encoder runs once per input for the whole
    sweep whichever head comes first; the change is noted (``notes``, logged by the runner)."""
    from mmfuse.fusion import FUSION_HEADS

    names = set().union(*(_head_names(part) for part in parts))
    if len(names) < 2:
        return
    wanted: set[str] = set()
    for name in names:
        try:
            cls = FUSION_HEADS.get(name)
        except ValueError:  # an unknown name fails the trial's own validation, with the registry's message
            continue
        wanted |= {"text"} if cls.uses_text == "sequence" else set()
        wanted |= {"image"} if cls.uses_image == "grid" else set()
    for part in parts:
        given = part.base.cache.store_sequences
        if given is True or not wanted - set(given or []):
            continue
        store = sorted(wanted | set(given or []))
        cache = part.base.cache.model_copy(update={"store_sequences": store})
        part.base = part.base.model_copy(update={"cache": cache})
        readers = sorted(n for n in names if n in FUSION_HEADS and _reads_sequences(FUSION_HEADS.get(n)))
        part.notes.append(
            f"cache.store_sequences: {store} (the sweep's heads {', '.join(readers)} read them; stored with every "
            "input encoded, so each encoder runs once per input)"
        )


def _reads_sequences(cls: Any) -> bool:
    return cls.uses_text == "sequence" or cls.uses_image == "grid"


def _head_sweep(spec: SweepSpec, head: str, name: str, base_dir: Path, source: Path | None, where: str) -> Sweep:
    """One compared head's sweep: the sweep file with the head's settings, validated like a sweep of its own."""
    from mmfuse.fusion import FUSION_HEADS

    label = f"heads.{head}"
    try:
        cls = FUSION_HEADS.get(head)
    except ValueError as e:  # an unknown name: the registry's message lists the known heads
        raise SweepError(f"{label}{where}: {e}") from None
    own = spec.heads[head]  # type: ignore[index]
    reads = {"text": cls.uses_text is not None, "image": cls.uses_image is not None}
    notes: list[str] = []
    data = spec.model_dump(mode="python", exclude={"heads", "ensemble", "name", "baselines"}, exclude_unset=True)
    data.update(name=f"{name}-{head}", baselines=False)
    for key in own.overrides:
        if resolve_key(key)[:3] == ("model", "head", "name"):
            raise SweepError(f"{label}.overrides{where}: key {key!r} cannot be set; the head is {head!r}")
    if own.grid is not None:
        if spec.grid is None:
            raise SweepError(f"{label}.grid{where}: a head's grid replaces keys of the sweep's `grid`; this sweep has "
                             f"{spec.mode}")  # fmt: skip
        data["grid"] = {**spec.grid, **own.grid}
    if own.seeds is not None:
        data["seeds"] = list(own.seeds)
    variants = {}
    for variant, change in (
        own.variants if own.variants is not None else {v: HeadVariant() for v in spec.variants}
    ).items():
        if variant not in spec.variants:
            raise SweepError(f"{label}.variants{where}: {variant!r} is not one of the sweep's variants "
                             f"({', '.join(spec.variants) or 'none'})")  # fmt: skip
        merged = spec.variants[variant].model_dump(mode="python")
        merged["overrides"] = {**merged["overrides"], **change.overrides}
        if change.grid is not None:
            merged["grid"] = {**(merged["grid"] or {}), **change.grid}
        if change.seeds is not None:
            merged["seeds"] = list(change.seeds)
        for modality, used in reads.items():  # e.g. no image encoder to swap for text_only
            if used:
                continue
            for part in ("overrides", "grid"):
                unread = [k for k in merged[part] or {} if resolve_key(k)[:2] == ("model", f"{modality}_encoder")]
                for key in unread:
                    del merged[part][key]
                    notes.append(f"variants.{variant}.{part}: {key} left out ({head} reads no {modality})")
        variants[variant] = merged
    data["variants"] = variants
    for key in spec.grid or {}:
        if resolve_key(key)[:2] in (("model", "text_encoder"), ("model", "image_encoder")):
            modality = resolve_key(key)[1].split("_")[0]
            if not reads[modality]:
                raise SweepError(f"grid{where}: {key!r} sets the {modality} encoder, which {head!r} does not read; "
                                 f"set it in `heads` for the heads that read it")  # fmt: skip
    head_spec = SweepSpec.model_validate(data)
    base = _base_config(head_spec, base_dir, f"{where} ({label})", head=(head, reads, own.overrides, notes))
    points, keys = _points(head_spec, base, f"{where} ({label})")
    sweep = Sweep(spec=head_spec, name=head_spec.name or head, base=base, points=points, keys=keys, source=source,
                  head=head, notes=notes)  # fmt: skip
    if head_spec.search is not None:
        _check_search(sweep, f"{where} ({label})")
    try:
        sweep.variants = _variants(sweep, f"{where} ({label})")
    except SweepError as e:
        if own.variants is not None:
            raise
        hint = f"(a head runs every variant unless `{label}.variants` lists the ones it runs)"
        raise SweepError(f"{e}\n  {hint}") from None
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
    """The overrides of each baseline head: the head swapped, the base head's hyperparameters it shares kept. The
    unimodal heads, and ``zero_shot`` when the base config's encoders are one checkpoint's two towers
    (``model.encoder``; its prompts: ``model.zero_shot_prompts``, as ``evaluate`` shows it)."""
    from mmfuse.fusion import head_params

    model = sweep.base.model
    head = model.head
    names = [*UNIMODAL_HEADS, *([ZERO_SHOT] if model.encoder is not None else [])]
    out = {}
    for name in names:
        if head.name == name:
            continue  # the base config is this baseline already
        allowed = head_params(name)
        overrides = {"head.name": name, "head.params": {k: v for k, v in head.params.items() if k in allowed}}
        if name == ZERO_SHOT and model.zero_shot_prompts:
            overrides["head.params"]["prompts"] = dict(model.zero_shot_prompts)
        try:
            sweep.trial_config(overrides)
        except ConfigError:  # e.g. no image encoder for image_only: no such baseline for this sweep
            continue
        out[name] = overrides
    return out


def _base_config(spec: SweepSpec, base_dir: Path, where: str, head: tuple[Any, ...] | None = None) -> TrainConfig:
    """The base config: the file or mapping, the sweep's overrides and metric, and for a compared head
    (``head``: its name, the modalities it reads, its overrides, the notes to add to) the head set up."""
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
        if head is not None:
            _set_head(data, *head)
        base = validate_config(data, base_dir=config_dir)
    except ConfigError as e:
        raise SweepError(f"base config of the sweep{where}: " + str(e).replace("\n", "\n  ")) from None
    if base.data is None:
        raise SweepError(
            f"the base config of the sweep{where} has no `data`; a sweep trains every trial on the config's "
            "train/val splits (and tests the selected one on its test split), so set data.root and data.preset"
        )
    return base


def _set_head(data: dict[str, Any], head: str, reads: Mapping[str, bool], overrides: Mapping[str, Any],
              notes: list[str]) -> None:  # fmt: skip
    """A compared head in a config mapping: its name, only the hyperparameters it takes, only the encoders it reads,
    then its own overrides; what was left out is added to ``notes``."""
    from mmfuse.fusion import head_params

    model = data.setdefault("model", {}) or {}
    data["model"] = model
    spec = model.get("head") or {}
    spec = {"name": spec} if isinstance(spec, str) else spec  # `head: concat`, the shorthand of a config file
    model["head"] = spec
    allowed = head_params(head)
    params = dict(spec.get("params") or {})
    for key in [k for k in params if k not in allowed]:
        notes.append(f"head.params.{key} left out ({head} does not take it)")
        del params[key]
    spec.update(name=head, params=params)
    for modality, used in reads.items():
        if not used and model.get(f"{modality}_encoder") is not None:
            model[f"{modality}_encoder"] = None  # a head's config names only the encoders it reads
            notes.append(f"model.{modality}_encoder left out ({head} reads no {modality})")
    for key, value in overrides.items():
        set_path(data, _check_key(key, f"heads.{head}.overrides"), copy.deepcopy(value))


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
