"""The ``mmfuse`` command: parses arguments and dispatches; the work lives in the library modules.

Each command group lives in its own module and is attached here explicitly.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mmfuse",
    help="Train, evaluate, compare, explain and serve image+text classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    """``mmfuse --version``: this package's version and torch's, read from the installed metadata (importing torch
    would take seconds)."""
    if not value:
        return
    from importlib import metadata

    from mmfuse import __version__

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    typer.echo(f"mmfuse {__version__} (torch {torch_version})")
    raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version of mmfuse (and torch) and exit."
    ),
) -> None:
    """Train, evaluate, compare, explain and serve image+text classifiers."""


def _attach() -> None:
    from mmfuse.cli import cache, config, data, explain, report, run, serve, sweep

    app.add_typer(data.app, name="data")
    app.add_typer(config.app, name="config")
    for module in (run, cache, sweep, report, explain, serve):
        module.register(app)


_attach()


def main() -> None:
    """Entry point of the console script."""
    app()
