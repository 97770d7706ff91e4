"""``mmfuse train / evaluate / predict / demo``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds the run commands to the top-level app."""
