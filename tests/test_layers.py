"""The import rule as code: no module of a layer imports a package above it, at import time or later.

Layers, bottom up: ``data``, ``encoders``, ``fusion`` (the model library), ``config``, ``features`` (feature plan,
tables, the in-process store, the batch maker), ``cache`` (the persistent feature cache, a feature source), ``model``
(a saved model and the one inference path: build, checkpoints, predictor), ``engine`` (training), then the tools that
drive them (``serve``, ``export``, ``report``, ``sweep``, ``cli``). Below them all, the module ``mmfuse.progress``
(progress bars, a run's console and log output) imports no other part of mmfuse. A row of :data:`FORBIDDEN` names,
for one layer, the packages it must never import, directly or through another module: serving and exporting a model
never load the engine (trainer, run folders) or accelerate.

Two checks read the table:

- each layer, imported alone (with all its modules) in a fresh interpreter, loads none of its forbidden packages
  (what an import really pulls in, through other modules too);
- every import statement in every module of a layer, also those inside functions and under ``if TYPE_CHECKING:``,
  and every lazy re-export (``_EXPORTS``) and ``importlib.import_module("...")``, names none of them (the imports the
  first check cannot see because they run only when a function is called). :data:`EXCEPTIONS` lists the few
  deliberate lazy imports up the stack, each with its reason.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TOOLS = ("mmfuse.engine", "mmfuse.serve", "mmfuse.export", "mmfuse.report", "mmfuse.sweep", "mmfuse.cli")
_ABOVE = ("mmfuse.model", *_TOOLS)  # what the layers up to the cache must not import
_NOT_FOR_SERVING = ("mmfuse.engine", "mmfuse.sweep", "mmfuse.cli", "mmfuse.report", "accelerate")

# layer package -> packages it must not import (a name also forbids its submodules)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "mmfuse.data": (
        "mmfuse.encoders", "mmfuse.fusion", "mmfuse.features", "mmfuse.cache", *_ABOVE, "mmfuse.config", "accelerate",
    ),
    "mmfuse.encoders": ("mmfuse.fusion", "mmfuse.features", "mmfuse.cache", *_ABOVE, "mmfuse.config", "accelerate"),
    "mmfuse.fusion": ("mmfuse.features", "mmfuse.cache", *_ABOVE, "mmfuse.config", "accelerate"),
    "mmfuse.config": ("mmfuse.features", "mmfuse.cache", *_ABOVE, "mmfuse.tools", "accelerate"),
    "mmfuse.features": ("mmfuse.cache", *_ABOVE, "mmfuse.config", "accelerate"),
    "mmfuse.cache": (*_ABOVE, "accelerate"),
    "mmfuse.model": (*_TOOLS, "accelerate"),
    "mmfuse.engine": ("mmfuse.serve", "mmfuse.export", "mmfuse.report", "mmfuse.sweep", "mmfuse.cli"),
    "mmfuse.serve": _NOT_FOR_SERVING,
    "mmfuse.export": _NOT_FOR_SERVING,
    # progress bars and a run's console/log output, shared by the model (predicting) and the engine (training)
    "mmfuse.progress": (
        "mmfuse.data", "mmfuse.encoders", "mmfuse.fusion", "mmfuse.config", "mmfuse.features", "mmfuse.cache", *_ABOVE,
        "accelerate",
    ),
}  # fmt: skip

# (importing module, imported module) -> why this import up the stack is right; the AST check allows these only
EXCEPTIONS: dict[tuple[str, str], str] = {}

# Imports the layer and every module under it, then prints what the interpreter has loaded.
_PROBE = """
import importlib, json, pkgutil, sys
layer = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(getattr(layer, "__path__", []), layer.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(layer: str) -> list[str]:
    """Every module loaded by importing ``layer`` and all its modules in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _PROBE, layer], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"importing {layer} alone failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def is_under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def forbidden_in(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [m for m in modules if is_under(m, forbidden)]


def modules_of(layer: str) -> Iterator[tuple[str, Path]]:
    """``(module name, source file)`` of the layer's package and every module under it (or of a single module)."""
    spec = importlib.util.find_spec(layer)
    assert spec is not None and spec.origin is not None, f"{layer} not found"
    if spec.submodule_search_locations is None:
        yield layer, Path(spec.origin)
        return
    root = Path(spec.origin).parent
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join([layer, *parts]), path


def imports_in(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every module ``path`` names to import, wherever the statement is: at the top, inside a
    function, under ``if TYPE_CHECKING:``. Relative imports are resolved; ``from a import b`` names ``a`` and
    ``a.b`` (``b`` may be a module); ``importlib.import_module("x")`` and the values of a lazy-export table
    (``_EXPORTS = {"Name": "x"}``) name ``x``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield node.lineno, source
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{source}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                for value in node.value.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        yield value.lineno, value.value


def upward_imports(layer: str) -> list[str]:
    """``module:line imports name`` for each import in the layer's source that its row of :data:`FORBIDDEN` forbids
    and :data:`EXCEPTIONS` does not allow."""
    found = []
    for module, path in modules_of(layer):
        for line, name in imports_in(module, path):
            if is_under(name, FORBIDDEN[layer]) and not any(
                module == m and (name == n or name.startswith(n + ".")) for m, n in EXCEPTIONS
            ):
                found.append((module, line, name))
    # ``from a import b`` names ``a`` and ``a.b``: show ``a.b`` only when ``a`` itself is allowed
    seen = set(found)
    shown = {f"{m}:{line} imports {n}" for m, line, n in found if (m, line, n.rpartition(".")[0]) not in seen}
    return sorted(shown)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    found = forbidden_in(loaded_by(layer), FORBIDDEN[layer])
    assert not found, f"importing {layer} loads {found}: a layer must not import {', '.join(FORBIDDEN[layer])}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_of_a_layer_imports_above_it_even_lazily(layer: str) -> None:
    found = upward_imports(layer)
    assert not found, (
        f"{layer} imports up the stack (also inside functions and under TYPE_CHECKING): {found}; a layer must not "
        f"import {', '.join(FORBIDDEN[layer])}: move what it needs down, or add a reasoned entry to EXCEPTIONS"
    )


def test_every_exception_is_still_needed() -> None:
    """An exception no import uses any more is dropped, so the list stays the few imports that need it."""
    layers = {m: layer for layer in FORBIDDEN for m, _ in modules_of(layer)}
    for module, name in EXCEPTIONS:
        layer = layers.get(module)
        assert layer is not None, f"EXCEPTIONS names {module}, a module of no layer in FORBIDDEN"
        _, path = next((m, p) for m, p in modules_of(layer) if m == module)
        assert any(n == name or n.startswith(name + ".") for _, n in imports_in(module, path)), (
            f"EXCEPTIONS allows {module} to import {name}, which it no longer does; drop the entry"
        )


def test_the_source_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The AST pass finds imports inside functions, under TYPE_CHECKING, relative ones and lazy re-exports."""
    source = tmp_path / "predictor.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from mmfuse.engine.run_dir import Inputs\n"
        "def f():\n"
        "    from ..engine import trainer\n"
        "    import importlib; importlib.import_module('mmfuse.cli.run')\n"
        "_EXPORTS = {'X': 'mmfuse.serve.app'}\n",
        encoding="utf-8",
    )
    names = {name for _, name in imports_in("mmfuse.model.predictor", source)}
    assert {"mmfuse.engine.run_dir", "mmfuse.engine.trainer", "mmfuse.cli.run", "mmfuse.serve.app"} <= names
