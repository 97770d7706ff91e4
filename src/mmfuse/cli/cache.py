"""``mmfuse cache ls / clear``: what the persistent feature cache holds (encoder features under ``features/``, ONNX
exports of frozen encoders under ``onnx/``), and removing it.

Exit codes: 0 fine, 2 a wrong argument (an encoder that is not cached, a cache folder that is a file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mmfuse.cli._errors import fail

if TYPE_CHECKING:
    from mmfuse.cache.inventory import CachedEncoder, CachedExport

cache_app = typer.Typer(help="Inspect and clear the feature cache of frozen encoders.", no_args_is_help=True)

CacheDirOpt = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        help="Cache folder (default: $MMFUSE_CACHE_DIR, else $XDG_CACHE_HOME/mmfuse or ~/.cache/mmfuse).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Adds ``mmfuse cache ...`` to the top-level app."""
    app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
def ls(
    cache_dir: CacheDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the listing as JSON.")] = False,
) -> None:
    """List what is cached: per encoder, its inputs, sizes on disk, the datasets that asked for them, and its ONNX
    export (backend onnxruntime)."""
    from mmfuse.cache.inventory import list_cache, list_exports

    root = _root(cache_dir)
    cached = list_cache(root)
    exports = list_exports(root, cached)
    if as_json:
        payload = {
            "cache_dir": str(root),
            "encoders": [c.to_dict() for c in cached],
            "onnx_exports": [e.to_dict() for e in exports],
        }
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    if not cached and not exports:
        typer.echo(f"the feature cache at {root} is empty")
        return
    _print_listing(root, cached, exports)


@cache_app.command("clear")
def clear(
    cache_dir: CacheDirOpt = None,
    encoder: Annotated[
        str | None,
        typer.Option("--encoder", help="Only this encoder: its name, or the start of its identity hash (see ls)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove cached features and ONNX exports: all of them, or one encoder's (made again when next needed)."""
    from mmfuse.cache.inventory import clear_cache, exports_to_clear, list_cache, match_encoders

    root = _root(cache_dir)
    cached = list_cache(root)
    try:
        targets = cached if encoder is None else match_encoders(root, encoder)
    except ValueError as e:
        fail(str(e))
    exports = exports_to_clear(root, targets, everything=encoder is None, encoders=cached)
    if not targets and not exports:
        typer.echo(f"the feature cache at {root} is empty; nothing to clear")
        return
    total = sum(t.bytes for t in targets) + sum(e.bytes for e in exports)
    what = f"{len(targets)} encoder folder(s) and {len(exports)} ONNX export(s), {_size(total)}"
    if not yes and not typer.confirm(f"remove {what} from {root}?", default=False):
        raise typer.Exit(code=1)
    removed = clear_cache(root, encoder)
    for target in removed:
        typer.echo(f"removed {target.name} ({target.identity_sha256[:12]}, {_size(target.bytes)})")
    for export in exports:
        typer.echo(f"removed {_export_label(export)} ({_size(export.bytes)})")
    typer.echo(f"cleared {what} from {root}")


def _root(cache_dir: str | None) -> Path:
    from mmfuse.cache.location import resolve_cache_dir

    try:
        root = resolve_cache_dir(cache_dir)
    except ValueError as e:
        fail(str(e))
    if root is None:
        fail("the persistent feature cache is off (cache folder 'off'); pass --cache-dir FOLDER to inspect one")
    return root


def _print_listing(root: Path, cached: list[CachedEncoder], exports: list[CachedExport]) -> None:
    """One block per encoder, then the ONNX exports no cached encoder claims (plain lines: long names and paths stay
    readable at any terminal width)."""
    total = _size(sum(c.bytes for c in cached) + sum(e.bytes for e in exports))
    typer.echo(
        f"feature cache {root}: {total} in {len(cached)} encoder folder(s) and {len(exports)} ONNX export(s) "
        f"({_size(sum(e.bytes for e in exports))})"
    )
    for c in cached:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.last_used)) if c.last_used else "never"
        typer.echo("")
        typer.echo(f"{c.name}  [{c.modality}, {c.encoder_class}]  identity {c.identity_sha256[:12]}")
        per = f"{_size(round(c.bytes_per_example))} per example" if c.bytes_per_example is not None else "no entries"
        typer.echo(
            f"  {c.entries} inputs ({c.sequence_entries} with sequence/grid), {c.shards} shard(s), "
            f"{_size(c.bytes)}, {per}, last used {used}"
        )
        if c.dtypes:
            typer.echo("  stored as: " + ", ".join(f"{kind} ({n} inputs)" for kind, n in c.dtypes.items()))
        for d in c.datasets:
            kind = "sequence/grid" if d["sequence"] else "pooled"
            typer.echo(f"  dataset {d['dataset']}: {d['examples']} examples asked for ({kind})")
        for e in exports:
            if e.identity_sha256 == c.identity_sha256:
                where = f"{e.path.parent.name}/{e.path.name}"
                checked = " (checked against torch)" if e.check_record else ""
                typer.echo(f"  ONNX export (backend onnxruntime): {where}, {_size(e.bytes)}{checked}")
        if c.unusable:
            typer.echo(f"  {c.unusable} unusable file(s) set aside (damaged or foreign); `cache clear` removes them")
    others = [e for e in exports if e.identity_sha256 is None]
    if others:
        typer.echo("")
        typer.echo(f"{len(others)} ONNX export(s) of no cached encoder in {others[0].path.parent}:")
        for e in others:
            typer.echo(f"  {_export_label(e)}, {_size(e.bytes)}")
        typer.echo("  `mmfuse cache clear` removes them")


def _export_label(export: CachedExport) -> str:
    where = f"{export.path.parent.name}/{export.path.name}"
    if export.partial:
        return f"{where} (half-written by a stopped export)"
    if export.path.suffix != ".onnx":
        return f"{where} (not an ONNX export)"
    if export.name is None:
        return f"{where} (its encoder's features were cleared, or another torch version made it)"
    return f"{where} ({export.name}, {export.modality})"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
