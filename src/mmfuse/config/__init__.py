"""The training config: one typed model for data, model, optimization, training loop, run folder and feature cache.

A config comes from YAML plus ``key=value`` overrides (:func:`load_config`), from a dict (:func:`validate_config`
or :meth:`TrainConfig.model_validate`), or from keyword shortcuts (:func:`config_from`). It is validated once, by the
schema: every wrong key or value is a :class:`ConfigError` that names the key path (``optim.name``), the bad value,
and the allowed values or keys.

- :mod:`mmfuse.config.schema`: the sections (pydantic models) and every rule a config must satisfy.
- :mod:`mmfuse.config.overrides`: YAML reading, ``key=value`` overrides, keyword shortcuts and (short) key paths,
  and the "did you mean" of an unknown key.
- :mod:`mmfuse.config.describe`: the resolved config with every default filled in, and its JSON Schema
  (``mmfuse config show`` / ``mmfuse config schema``).
"""

from mmfuse.config.overrides import config_from, load_config, parse_value, read_yaml, resolve_key, set_path
from mmfuse.config.schema import (
    CacheConfig,
    ConfigError,
    EncoderConfig,
    HeadConfig,
    LoraSettings,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SelectionMetric,
    TrainConfig,
    TrainingConfig,
    format_errors,
    validate_config,
)

__all__ = [
    "CacheConfig",
    "ConfigError",
    "EncoderConfig",
    "HeadConfig",
    "LoraSettings",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SelectionMetric",
    "TrainConfig",
    "TrainingConfig",
    "config_from",
    "format_errors",
    "load_config",
    "parse_value",
    "read_yaml",
    "resolve_key",
    "set_path",
    "validate_config",
]
