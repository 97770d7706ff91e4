"""Reading a config: YAML files, ``key=value`` overrides, keyword shortcuts, and the key paths they name.

A config comes from YAML plus ``key=value`` overrides (:func:`load_config`), from a dict
(:func:`~mmfuse.config.schema.validate_config`), or from keyword shortcuts (:func:`config_from`); each ends in the
schema's validation (:mod:`mmfuse.config.schema`), which holds every rule.

Override keys are dotted paths (``optim.lr=1e-4``, ``model.head.name=cross_attention``,
``model.head.params.hidden=0``). A shorter key is accepted when it names exactly one setting: ``head.name`` means
``model.head.name`` and ``lr`` means ``optim.lr``; an ambiguous one (``seed``: ``train.seed`` or
``data.split.seed``?) is refused with the candidates, and an unknown one with the settings it probably meant
(``epoch`` -> ``train.epochs``, :func:`suggest_keys`), as is a key of a YAML file or keyword shortcut that stands in
the wrong section (``train: {lr: ...}`` -> ``optim.lr``). Values are parsed as YAML scalars or lists (``[1, 2]``).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from mmfuse.config.schema import ConfigError, EncoderConfig, TrainConfig, validate_config

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
    return _validate(data, base_dir=base_dir, source=str(path) if path is not None else None)


def config_from(config: TrainConfig | Mapping[str, Any] | None = None, **shortcuts: Any) -> TrainConfig:
    """A config from an optional base plus keyword settings, each named like an override key.

    ``config_from(head="cross_attention", epochs=5, lr=1e-3)``; a section given a string sets its ``name``
    (``text_encoder="minilm"``, ``head="concat"``); ``data`` may be a :class:`~mmfuse.data.DataConfig`, a mapping
    or a YAML path. The column names of the rows to read are shortcuts too: ``label="sentiment"``,
    ``text="review_text"``, ``image="image_path"``, ``id="post_id"`` set ``data.columns.*``; without a data config
    they make one that names no file (its root the working directory), which says how to read the DataFrames,
    files and datasets passed to fit / predict / evaluate.

    Raises:
        ConfigError: unknown or ambiguous keys, or values that do not validate.
    """
    data: dict[str, Any] = config.to_dict() if isinstance(config, TrainConfig) else dict(config or {})
    had_data = data.get("data") is not None
    if not had_data:
        # data settings without a data config start empty, not from dumped defaults: a column left at its default
        # stays unset (columns.id unset reads a file without an id column by row numbers)
        data["data"] = {"columns": {}}
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
    section = data.get("data")
    if not had_data and section == {"columns": {}}:
        data["data"] = None  # no data setting given
    elif not had_data and isinstance(section, dict) and "root" not in section:
        section["root"] = str(Path.cwd())  # data settings without a data config: rows passed in memory
    return _validate(data)


def _validate(data: dict[str, Any], *, base_dir: Path | None = None, source: str | None = None) -> TrainConfig:
    """:func:`validate_config`, whose error also says where a misplaced key belongs (``train.lr``: did you mean
    ``optim.lr``?)."""
    try:
        return validate_config(data, base_dir=base_dir, source=source)
    except ConfigError as e:
        hints = _misplaced_key_hints(data)
        if not hints:
            raise
        raise ConfigError("\n".join([str(e), *hints])) from None


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

_FULL_PATH_ONLY = frozenset({"lora"})
"""Sections whose settings a short key never means unless it names the section: ``dropout=0.2`` stays the head's
dropout (a "did you mean"), not an ambiguity with ``model.text_encoder.lora.dropout``; ``lora.dropout`` or the
full path reach them."""


def _short_key_reaches(path: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    return not any(p in _FULL_PATH_ONLY and p not in parts for p in path)


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
        if not _short_key_reaches(path, parts):
            continue
        for k in range(1, min(len(path), len(parts)) + 1):
            if path[-k:] == parts[:k] and (k == len(parts) or kind == "mapping"):
                matches.add(path + parts[k:])
    if len(matches) == 1:
        return matches.pop()
    if matches:
        listed = ", ".join(sorted(".".join(m) for m in matches))
        raise ConfigError(f"override key {key!r} is ambiguous; write the full path: one of {listed}")
    sections = ", ".join(TrainConfig.model_fields)
    close = suggest_keys(key)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown override key {key!r}; a key is a dotted path starting with one of the sections {sections} "
        f"(e.g. optim.lr, model.head.name), or the unambiguous end of one{hint}"
    )


def _free_key_paths() -> list[tuple[str, ...]]:
    """Key paths under the free mappings: every fusion head's hyperparameters (``model.head.params.dropout``) and
    every registered encoder's options (``model.text_encoder.options.pooling``)."""
    from mmfuse.encoders.registry import IMAGE_ENCODERS, TEXT_ENCODERS, encoder_options
    from mmfuse.fusion import FUSION_HEADS, head_params

    out = [("model", "head", "params", p) for head in FUSION_HEADS for p in head_params(head)]
    for section, registry in (("text_encoder", TEXT_ENCODERS), ("image_encoder", IMAGE_ENCODERS)):
        for name in registry:
            spec = registry.get(name)
            options = [*encoder_options(spec.cls), *spec.defaults]
            out += [("model", section, "options", o) for o in options if o not in spec.fixed]
    return list(dict.fromkeys(out))


def suggest_keys(key: str, *, limit: int = 3) -> list[str]:
    """Full key paths that an unknown key probably meant, best first: ``epoch`` -> ``train.epochs``, ``dropout`` ->
    ``model.head.params.dropout``, ``trainer.epochs`` -> ``train.epochs``; ``[]`` when nothing is close.

    Every settable path counts, head hyperparameters and encoder options included. Paths whose last name is the
    key's last name come first, then those whose last name contains it as a word (``train.image_dropout``); only
    when there are none, paths whose end is spelled like the key (:func:`difflib.get_close_matches`)."""
    parts = tuple(p for p in key.split(".") if p)
    if not parts:
        return []
    by_suffix: dict[str, list[str]] = {}
    for path in [*_paths(), *_free_key_paths()]:
        if len(path) >= len(parts) and _short_key_reaches(path, parts):
            by_suffix.setdefault(".".join(path[-len(parts) :]), []).append(".".join(path))
    wanted, leaf = ".".join(parts), parts[-1]

    def similarity(suffix: str) -> float:
        return difflib.SequenceMatcher(None, wanted, suffix).ratio()

    named = [s for s in by_suffix if s.rsplit(".", 1)[-1] == leaf]
    named += [s for s in by_suffix if s not in named and leaf in s.rsplit(".", 1)[-1].split("_")]
    close = sorted(named, key=lambda s: (s.rsplit(".", 1)[-1] != leaf, -similarity(s)))
    if not close:
        close = difflib.get_close_matches(wanted, list(by_suffix), n=limit)
    return list(dict.fromkeys(p for suffix in close for p in by_suffix[suffix]))[:limit]


def _misplaced_key_hints(data: Mapping[str, Any]) -> list[str]:
    """One line per key of ``data`` (a config mapping) that is not a setting where it stands and has no close name
    there either (the section's own error suggests those), naming where a key like it lives: ``train.lr`` ->
    ``optim.lr``, top-level ``epochs`` -> ``train.epochs``, ``model.head.dropout`` -> ``model.head.params.dropout``."""
    hints = []

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        fields = _fields_at(prefix)
        for key, value in node.items():
            path = (*prefix, str(key))
            kind = _kind(path)
            if kind == "section" and isinstance(value, Mapping):
                walk(value, path)
            elif kind is None and not difflib.get_close_matches(str(key), fields, n=1):
                close = [c for c in suggest_keys(str(key)) if tuple(c.split(".")) != path]
                if close:
                    hints.append(f"  {'.'.join(path)} is not a setting; did you mean {' or '.join(close)}?")

    walk(data, ())
    return hints


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
    does not have starts from its defaults (so ``model.text_encoder.options.x=1`` keeps the default encoder name;
    beside ``model.encoder``, set before, it starts without a name, which ``model.encoder`` fills in); one set to
    null starts empty."""
    parts = list(parts)
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part, _MISSING)
        if child is _MISSING:
            child = _default_at(tuple(parts[: i + 1]))
            if isinstance(child, EncoderConfig) and node.get("encoder") is not None:  # model.encoder names it
                child = child.model_dump(mode="json", exclude={"name"})
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
