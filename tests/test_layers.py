"""The import rule as code: each layer, imported alone (with all its modules) in a fresh interpreter, loads none of
the packages above it.

Layers, bottom up: ``data``, ``encoders``, ``fusion`` (the model library), ``features`` (feature plan, tables, the
in-process store, the batch maker), ``cache`` (the persistent feature cache, a feature source), ``model`` (a saved
model and the one inference path: build, checkpoints, predictor), then the tools that drive them (``engine``,
``serve``, ``export``, ``report``, ``sweep``, ``cli``). A row of :data:`FORBIDDEN` names, for one layer, the packages
it must never import, directly or through another module: serving and exporting a model never load the trainer or
accelerate.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_TOOLS = ("mmfuse.engine", "mmfuse.serve", "mmfuse.export", "mmfuse.report", "mmfuse.sweep", "mmfuse.cli")
_ABOVE = ("mmfuse.model", *_TOOLS)  # what the layers up to the cache must not import
_NOT_FOR_SERVING = ("mmfuse.engine.trainer", "mmfuse.sweep", "mmfuse.cli", "mmfuse.report", "accelerate")

# layer package -> packages it must not import (a name also forbids its submodules)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "mmfuse.data": (
        "mmfuse.encoders", "mmfuse.fusion", "mmfuse.features", "mmfuse.cache", *_ABOVE, "mmfuse.config", "accelerate",
    ),
    "mmfuse.encoders": ("mmfuse.fusion", "mmfuse.features", "mmfuse.cache", *_ABOVE, "mmfuse.config", "accelerate"),
    "mmfuse.fusion": ("mmfuse.features", "mmfuse.cache", *_ABOVE, "mmfuse.config", "accelerate"),
    "mmfuse.features": ("mmfuse.cache", *_ABOVE, "mmfuse.config", "accelerate"),
    "mmfuse.cache": (*_ABOVE, "accelerate"),
    "mmfuse.model": (*_TOOLS, "accelerate"),
    "mmfuse.serve": _NOT_FOR_SERVING,
    "mmfuse.export": _NOT_FOR_SERVING,
}  # fmt: skip

# Imports the layer and every module under it, then prints what the interpreter has loaded.
_PROBE = """
import importlib, json, pkgutil, sys
layer = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(layer.__path__, layer.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(layer: str) -> list[str]:
    """Every module loaded by importing ``layer`` and all its modules in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _PROBE, layer], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"importing {layer} alone failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def forbidden_in(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    found = forbidden_in(loaded_by(layer), FORBIDDEN[layer])
    assert not found, f"importing {layer} loads {found}: a layer must not import {', '.join(FORBIDDEN[layer])}"
