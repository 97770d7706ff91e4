"""The flat public API: every name in ``mmfuse.__all__`` resolves, and unknown names fail clearly."""

from __future__ import annotations

import pytest

import mmfuse


@pytest.mark.parametrize("name", [n for n in mmfuse.__all__ if n != "__version__"])
def test_every_export_resolves(name: str) -> None:
    obj = getattr(mmfuse, name)
    assert getattr(obj, "__name__", name) == name


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        mmfuse.Nope  # noqa: B018
