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


def _attach() -> None:
    from mmfuse.cli import cache, data, report, run, serve, sweep

    app.add_typer(data.app, name="data")
    for module in (run, cache, sweep, report, serve):
        module.register(app)


_attach()


def main() -> None:
    """Entry point of the console script."""
    app()
