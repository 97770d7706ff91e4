"""The base of every config section (data, training, sweep files): unknown keys are refused, naming them and the
allowed ones, so a typo in a YAML file fails at load time instead of being ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from mmfuse._registry import did_you_mean


class StrictSection(BaseModel):
    """A pydantic model that refuses unknown keys with a message listing the allowed ones."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                allowed = ", ".join(cls.model_fields)
                hints = "".join(did_you_mean(k, cls.model_fields, n=1, of=len(unknown) > 1) for k in unknown)
                raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {allowed}{hints}")
        return data
