"""``mmfuse data ...``: inspect, preview and generate datasets."""

from __future__ import annotations

import typer

app = typer.Typer(help="Check, preview and generate datasets.", no_args_is_help=True)
