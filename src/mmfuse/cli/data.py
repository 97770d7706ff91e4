"""``mmfuse data ...``: inspect, preview and generate datasets.

Each command parses its arguments, calls :mod:`mmfuse.data`, and prints. Exit codes: 0 fine, 1 the data is
unusable (``check``), 2 a wrong argument, config or path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mmfuse.cli._errors import fail, guard

if TYPE_CHECKING:
    from mmfuse.data import DataConfig, Split


app = typer.Typer(help="Check, preview and generate datasets.", no_args_is_help=True)

_SHOWN = 3  # problem examples listed per kind

ConfigArg = Annotated[
    str,
    typer.Argument(
        help="A YAML data config (fields at the top level or under `data:`), or a dataset folder with --preset.",
        show_default=False,
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", help="Dataset layout: hateful_memes, multioff or mvsa_single."),
]


@app.command()
def check(
    config_or_path: ConfigArg,
    preset: PresetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Load every split and report counts, label balance and each defect; exit 1 when a split is unusable.

    Bad rows and missing images are collected whatever the config's policies say, so one run lists them all;
    where the config's policy is `error`, their presence makes the check fail.
    """
    from mmfuse.data import load_splits

    cfg = _config(config_or_path, preset)
    lenient = cfg.model_copy(
        update={
            "on_bad_row": "skip",
            "on_missing_image": "skip" if cfg.on_missing_image == "error" else cfg.on_missing_image,
        }
    )
    splits = guard(lambda: load_splits(lenient, strict=False))
    _policy_failures(cfg, splits)
    usable = all(s.report.usable for s in splits.values())
    if as_json:
        payload = {"usable": usable, "splits": {n: s.report.to_dict() for n, s in splits.items()}}
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        _print_check(splits, usable)
    if not usable:
        raise typer.Exit(code=1)


@app.command()
def preview(
    config_or_path: ConfigArg,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    preset: PresetOpt = None,
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "train",
    n: Annotated[int, typer.Option("--n", min=1, help="Number of examples.")] = 16,
    columns: Annotated[int, typer.Option("--columns", min=1, help="Grid columns.")] = 4,
    seed: Annotated[int | None, typer.Option("--seed", help="Random sample with this seed (default: first N).")] = None,
) -> None:
    """Write a PNG grid of examples: image as on disk, wrapped text, label."""
    from mmfuse.data import load_splits
    from mmfuse.data.preview import save_preview

    cfg = _config(config_or_path, preset)
    splits = guard(lambda: load_splits(cfg, strict=False))
    if split not in splits:
        fail(f"no split {split!r} in this data; splits: {', '.join(splits)}")
    chosen = splits[split]
    title = f"{split}: {len(chosen.examples)} examples ({cfg.resolved_root().name})"
    path = guard(lambda: save_preview(chosen.examples, out, n=n, columns=columns, seed=seed, title=title))
    typer.echo(f"wrote {min(n, len(chosen.examples))} examples of {split} to {path}")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.", show_default=False)],
    n: Annotated[int, typer.Option("--n", help="Number of examples.")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed writes the same bytes.")] = 0,
) -> None:
    """Generate the synthetic image+text dataset (Hateful Memes layout) whose label needs both modalities."""
    from mmfuse.data import make_synthetic

    root = guard(lambda: make_synthetic(out, n=n, seed=seed))
    counts = {p.stem: sum(1 for _ in p.open(encoding="utf-8")) for p in sorted(root.glob("*.jsonl"))}
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    typer.echo(f"wrote {n} examples ({shown}) to {root}; read it with --preset hateful_memes")


def _config(source: str, preset: str | None) -> DataConfig:
    """A DataConfig from a YAML file, or from a dataset folder and a preset."""
    from mmfuse.data import PRESETS, load_data_config

    path = Path(source)
    if path.is_dir():
        if preset is None:
            fail(f"{source!r} is a folder: pass --preset NAME (one of {', '.join(PRESETS)}) or a YAML data config")
        return guard(lambda: load_data_config({"root": path, "preset": preset}))
    if not path.exists():
        fail(f"{source!r} not found: pass a YAML data config, or a dataset folder with --preset")
    return guard(lambda: load_data_config(path, overrides={"preset": preset} if preset else None))


def _policy_failures(cfg: DataConfig, splits: dict[str, Split]) -> None:
    """Marks splits that would fail to load with the config's own `error` policies."""
    for split in splits.values():
        report = split.report
        if cfg.on_bad_row == "error" and report.bad_rows:
            report.fatal.append(
                f"{len(report.bad_rows)} bad rows: with on_bad_row: error, loading stops at the first "
                f"({report.bad_rows[0].where}); fix them or set on_bad_row: skip"
            )
        if cfg.on_missing_image == "error" and report.skipped_images:
            report.fatal.append(
                f"{len(report.skipped_images)} missing/unreadable images: with on_missing_image: error, loading "
                "stops at the first; fix them or set on_missing_image: skip or blank"
            )


def _print_check(splits: dict[str, Split], usable: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Names, paths and messages come from the data: shown as written (rich Text), never read as markup.
    console = Console(highlight=False, markup=False)
    for name, split in splits.items():
        console.print(Text(f"{name}: {split.report.source}"))
    overview = Table(title=Text("Splits", "table.title"), title_justify="left")
    overview.add_column("")
    for name in splits:
        overview.add_column(Text(name), justify="right")
    for label, cell in _OVERVIEW_ROWS:
        overview.add_row(label, *(Text(cell(s)) for s in splits.values()))
    console.print(overview)
    for name, split in splits.items():
        report = split.report
        problems = report.problem_lists()
        if problems:
            table = Table(title=Text(f"{name}: defects", "table.title"), title_justify="left")
            table.add_column("kind")
            table.add_column("count", justify="right")
            table.add_column(f"first {_SHOWN}", overflow="fold")
            for kind, items in problems.items():
                shown = Text("\n".join(str(p) for p in items[:_SHOWN]))
                table.add_row(kind.replace("_", " "), str(len(items)), shown)
            console.print(table)
        for note in report.notes:
            console.print(Text.assemble((f"{name}: note:", "yellow"), " ", note))
        for reason in report.fatal:
            console.print(Text.assemble((f"{name}: UNUSABLE:", "bold red"), " ", reason))
    console.print(Text("data usable", "green") if usable else Text("data unusable", "bold red"))


def _labels(split: Split) -> str:
    report = split.report
    if not report.labeled:
        return "unlabeled"
    total = max(report.examples, 1)
    return "\n".join(f"{k} {v} ({v / total:.0%})" for k, v in report.label_counts.items())


def _lengths(split: Split) -> str:
    t = split.report.text_lengths
    return f"{t['min']} / {t['median']:g} / {t['max']}" if t else "-"


_OVERVIEW_ROWS: list[tuple[str, Any]] = [
    ("rows read", lambda s: str(s.report.rows)),
    ("examples", lambda s: str(s.report.examples)),
    ("labels", _labels),
    ("bad rows", lambda s: str(len(s.report.bad_rows))),
    ("duplicate ids", lambda s: str(len(s.report.duplicate_ids))),
    ("same image twice", lambda s: str(len(s.report.same_images))),
    ("images skipped", lambda s: str(len(s.report.skipped_images))),
    ("images blank", lambda s: str(len(s.report.blank_images))),
    ("ext. mismatch", lambda s: str(len(s.report.extension_mismatches))),
    ("file encoding", lambda s: f"{s.report.file_encoding} (not UTF-8)" if s.report.file_encoding else "UTF-8"),
    ("fallback texts", lambda s: str(len(s.report.fallback_texts))),
    ("U+FFFD texts", lambda s: str(len(s.report.replacement_chars))),
    ("empty texts", lambda s: str(s.report.empty_texts)),
    ("text len min/med/max", _lengths),
]
