"""The config made visible: every key with the value a run would use, which of them differ from the defaults, and the
JSON Schema editors validate YAML files with (``mmfuse config show`` / ``mmfuse config schema``).

A loaded :class:`~mmfuse.config.schema.TrainConfig` keeps what was written: ``model.head.params: {}`` means "the
head's defaults", which only the fusion registry knows (:func:`~mmfuse.fusion.registry.head_params`); encoder
``options: {}`` likewise (:func:`~mmfuse.encoders.registry.encoder_option_values`). :func:`resolved_config` fills
them in, so the printed config names every value; it validates back to a config that trains the same model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from mmfuse.config.schema import EncoderConfig, HeadConfig, TrainConfig

# Declared as draft-07, the newest draft the YAML language server (VS Code's YAML extension) supports: pydantic's
# schema uses nothing newer (``$defs`` is reached by a JSON pointer in ``$ref``, which draft-07 resolves as well),
# and the head rules below use draft-07's ``if``/``then``.
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


def resolved_config(config: TrainConfig) -> tuple[dict[str, Any], list[str]]:
    """``config`` as a mapping with every default filled in: the head's hyperparameters and each encoder's options.

    Returns:
        The mapping (validates back to an equal config, up to the filled-in defaults), and one note per value that
        could not be resolved here (a hub encoder's option defaults are known once its config is fetched).

    Raises:
        ValueError: an encoder name or option the encoder registry refuses (the message names the closest names).
    """
    from mmfuse.fusion.registry import head_params

    data = config.to_dict()
    notes: list[str] = []
    head = data["model"]["head"]
    head["params"] = _jsonable({**head_params(config.model.head.name), **head["params"]})
    for kind in ("text", "image"):
        encoder = data["model"][f"{kind}_encoder"]
        if encoder is not None:
            values = _option_values(encoder["name"], kind, encoder["options"])
            if values is None:
                notes.append(
                    f"model.{kind}_encoder.options are shown as given: {encoder['name']!r} is a hub id, whose option "
                    f"defaults are known once its config is fetched (when the encoder is built)"
                )
            else:
                encoder["options"] = _jsonable(values)
    return data, notes


def default_values(config: TrainConfig) -> dict[str, Any]:
    """The default of every key of ``config``, for the choices it makes: the chosen head's hyperparameter defaults,
    the chosen encoders' option defaults, and each data field's default (a key that must be given has none)."""
    from mmfuse.data.config import DataConfig
    from mmfuse.fusion.registry import head_params

    out = TrainConfig().to_dict()
    if config.data is not None:
        out["data"] = _field_defaults(DataConfig)
    out["model"]["head"]["params"] = _jsonable(head_params(config.model.head.name))
    for kind in ("text", "image"):
        chosen = getattr(config.model, f"{kind}_encoder")
        default = out["model"][f"{kind}_encoder"]
        if default is not None:  # the chosen encoder's options' defaults (the default encoder's when it is null)
            name = default["name"] if chosen is None else chosen.name
            default["options"] = _jsonable(_option_values(name, kind, {}) or {})
    return out


def show_yaml(config: TrainConfig, *, mark_defaults: bool = False) -> tuple[str, list[str]]:
    """The resolved config as YAML (:func:`resolved_config`), and its notes.

    Args:
        mark_defaults: end every line whose value differs from its default with ``# default: <value>`` (the
            default for the config's own head and encoders); unmarked values are the defaults.
    """
    data, notes = resolved_config(config)
    marks = default_values(config) if mark_defaults else None
    lines = []
    if mark_defaults:
        lines += [
            "# Every value of this config; '# default: X' ends each line set to something other than its default X.",
            "# Unmarked values are the defaults (of the chosen head and encoders, for their params and options).",
        ]
    _emit(data, marks, 0, lines)
    return "\n".join(lines) + "\n", notes


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of a training config (pydantic's), for editors (``# yaml-language-server: $schema=...``).

    Beyond pydantic's: the registered head names as an ``enum`` and each head's hyperparameters with their defaults
    (``params`` of another head are refused, as load_config refuses them); the registered encoder names as
    ``examples``; a head or encoder given as its bare name (``head: concat``), as the config accepts it.
    """
    from mmfuse.encoders.registry import IMAGE_ENCODERS, TEXT_ENCODERS
    from mmfuse.fusion import FUSION_HEADS
    from mmfuse.fusion.registry import head_params

    schema = TrainConfig.model_json_schema()
    defs = schema["$defs"]
    heads = FUSION_HEADS.names()
    head = defs[HeadConfig.__name__]
    head["properties"]["name"]["enum"] = heads
    head["allOf"] = [_head_params_rule(name, head_params(name), name == HeadConfig().name) for name in heads]
    encoder = defs[EncoderConfig.__name__]
    encoder["properties"]["name"]["examples"] = [*TEXT_ENCODERS.names(), *IMAGE_ENCODERS.names()]
    encoder["properties"]["name"]["description"] = (
        "a registered encoder name, a local folder made with save_pretrained, or a Hugging Face hub id 'org/name'"
    )
    defs[HeadConfig.__name__] = {"anyOf": [{"type": "string", "enum": heads}, head]}
    defs[EncoderConfig.__name__] = {"anyOf": [{"type": "string"}, encoder]}
    return {"$schema": SCHEMA_DIALECT, **schema, "title": "mmfuse training config"}


# --------------------------------------------------------------------------------------------------- helpers


def _option_values(name: str, kind: str, options: dict[str, Any]) -> dict[str, Any] | None:
    from mmfuse.encoders.registry import encoder_option_values

    return encoder_option_values(name, kind, options)  # type: ignore[arg-type]


def _head_params_rule(name: str, params: dict[str, Any], default: bool) -> dict[str, Any]:
    """``if name is <name> then params may hold these keys`` (the default head also when name is absent)."""
    named = {"properties": {"name": {"const": name}}, "required": ["name"]}
    condition = {"anyOf": [named, {"not": {"required": ["name"]}}]} if default else named
    properties = {key: {"default": value, **_json_type(value)} for key, value in params.items()}
    return {
        "if": condition,
        "then": {"properties": {"params": {"properties": properties, "additionalProperties": False}}},
    }


def _json_type(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, (int, float)):
        return {"type": "number"}
    return {}


def _field_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Each field's default (nested models' fields too); fields without one are left out."""
    out: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if field.is_required():
            continue
        value = field.get_default(call_default_factory=True)
        out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return copy.deepcopy(value)


def _scalar(value: Any) -> str:
    """A value as one line of flow YAML (``0.001``, ``null``, ``[a, b]``, ``{}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


_NONE = object()


def _emit(data: dict[str, Any], marks: Any, depth: int, lines: list[str]) -> None:
    """Block YAML of ``data``; with ``marks`` (the defaults, same shape), a comment on each value that differs."""
    pad = "  " * depth
    for key, value in data.items():
        default = marks.get(key, _NONE) if isinstance(marks, dict) else _NONE
        comment = ""
        if marks is not None and default is not _NONE and default != value and not _both_mappings(value, default):
            comment = f"  # default: {_scalar(default)}"
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{_scalar(key)}:{comment}")
            inner = default if isinstance(default, dict) else ({} if marks is not None else None)
            _emit(value, inner, depth + 1, lines)
        else:
            lines.append(f"{pad}{_scalar(key)}: {_scalar(value)}{comment}")


def _both_mappings(value: Any, default: Any) -> bool:
    """Two non-empty mappings are compared key by key, not as a whole."""
    return isinstance(value, dict) and isinstance(default, dict) and bool(value)
