"""``mmfuse config show / schema``: the resolved config with every default, and its JSON Schema for editors."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmfuse.cli._errors import fail, guard

app = typer.Typer(help="Show the resolved config with every default, or its JSON Schema.", no_args_is_help=True)


@app.command("show")
def show(
    config: Path | None = typer.Argument(None, help="YAML config (default: the built-in defaults)."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. optim.lr=1e-4 head.name=concat"),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help="key=value override (repeatable)."),
    defaults: bool = typer.Option(
        False, "--defaults", help="end each value that differs from its default with '# default: X'"
    ),
) -> None:
    """Print the config a run would use, as YAML: every key with its value, including the fusion head's
    hyperparameters and the encoders' options with their defaults. The output loads back as a config file."""
    from mmfuse.config import load_config
    from mmfuse.config.describe import show_yaml

    items = [*(set_ or []), *(overrides or [])]
    if config is not None and "=" in str(config) and not config.exists():
        items, config = [str(config), *items], None  # `mmfuse config show key=value` (no file)

    def render() -> tuple[str, list[str]]:
        return show_yaml(load_config(config, items), mark_defaults=defaults)

    text, notes = guard(render)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(text, nl=False)


@app.command("schema")
def schema(
    out: Path | None = typer.Option(None, "--out", "-o", help="write the schema to this file instead of stdout"),
) -> None:
    """Print the JSON Schema of a config file. Editors validate and complete YAML configs with it: save it with -o
    and start a config with `# yaml-language-server: $schema=<path>` (VS Code's YAML extension)."""
    from mmfuse.config.describe import config_json_schema

    text = json.dumps(config_json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        fail(f"cannot write the schema to {str(out)!r} ({e.strerror or e}); pass -o a file path you can write")
    typer.echo(f"wrote the config's JSON Schema to {out}", err=True)
