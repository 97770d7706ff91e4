"""``mmfuse explain``: parse, call :meth:`MultimodalClassifier.explain
<mmfuse.engine.classifier.MultimodalClassifier.explain>` and :func:`mmfuse.report.explain.write_explanations`, print
where the files are.

Exit codes: 0 fine, 2 a wrong argument, folder, file or id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmfuse.cli._errors import fail

_SPLITS = ("train", "val", "test")


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the top-level app."""
    app.command("explain")(explain)


def explain(
    run: Annotated[Path, typer.Argument(help="A run folder or checkpoint folder.", show_default=False)],
    data: Annotated[
        str,
        typer.Argument(
            help="A JSONL/CSV/TSV/Parquet file read with the run's column mapping, or train, val or test: that "
            "split of the run's data.",
            show_default=False,
        ),
    ],
    ids: Annotated[
        list[str],
        typer.Option("--ids", help="Example ids, comma-separated (repeatable): ID[,ID...].", show_default=False),
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <run>/explain).")] = None,
    grid: Annotated[
        str | None, typer.Option("--grid", help="Occlusion cells ROWSxCOLS (default: the image encoder's grid).")
    ] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last")] = "best",
) -> None:
    """Explain chosen predictions: per example a PNG (occlusion map of image regions; for cross_attention the
    attention and each word's attention beside it; each word's and each modality's contribution), an index.html
    showing them, and explanations.json with the numbers."""
    wanted = [i.strip() for item in ids for i in item.split(",") if i.strip()]
    if not wanted:
        fail("--ids is empty; pass one or more example ids, e.g. --ids 42,57")
    cells = _grid(grid) if grid is not None else None
    try:
        from mmfuse.engine.classifier import MultimodalClassifier
        from mmfuse.report.explain import encoder_crop, write_explanations

        if not run.exists():
            raise FileNotFoundError(f"{str(run)!r} not found; pass a run folder or a checkpoint folder")
        if (run / "ensemble.json").is_file():
            raise ValueError(f"{str(run)!r} is an ensemble; explain one of its member runs instead")
        clf = MultimodalClassifier.load(run, checkpoint=checkpoint)
        examples = _examples(clf, data)
        log = lambda line: typer.echo(line, err=True)  # noqa: E731
        explanations = clf.explain(examples, wanted, grid=cells, progress=log)
        folder = out if out is not None else run / "explain"
        page = write_explanations(
            explanations, folder, crop=encoder_crop(clf.model), title=f"Explanations · {run.resolve().name}",
            subtitle=[f"{clf.config.model.head.name} head · data {data} · {len(explanations)} example(s)"],
            meta={"run": str(run), "data": str(data), "head": clf.config.model.head.name}, log=log,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    for e in explanations:
        for note in e.notes:
            typer.echo(f"note: {e.id}: {note}", err=True)
    typer.echo(f"wrote {page} and {folder / 'explanations.json'}")


def _examples(clf: object, data: str) -> object:
    """A data file, or a split of the run's data."""
    from mmfuse.data.inputs import split_examples

    if Path(data).exists() or data not in _SPLITS:
        if not Path(data).exists():
            raise FileNotFoundError(f"{data!r} not found; pass a data file, or one of {', '.join(_SPLITS)}")
        return data
    return split_examples(data, clf.config.data)  # type: ignore[attr-defined]


def _grid(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        fail(f"--grid must be ROWSxCOLS, e.g. 7x7, got {text!r}")
    if rows < 1 or cols < 1:
        fail(f"--grid needs positive rows and columns, got {text!r}")
    return rows, cols
