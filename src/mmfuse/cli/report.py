"""``mmfuse report``: parse, call :func:`mmfuse.report.write_report`, print where the page is.

Exit codes: 0 fine, 2 a wrong argument or folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the top-level app."""
    app.command("report")(report)


def report(
    target: Annotated[Path, typer.Argument(help="A run, sweep or ensemble folder.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <target>/report).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate and show examples of.")] = "val",
    per_group: Annotated[int, typer.Option("--examples", min=1, help="Gallery examples per group.")] = 4,
    storage: Annotated[str | None, typer.Option("--storage", help="A sweep's storage URL, if not its own.")] = None,
) -> None:
    """Write one self-contained HTML report (charts and images embedded) and its figures (SVG, PNG): data, learning
    curves, metrics beside the baselines (unimodal ones when the run's sweep or demo trained them), ROC or
    precision-recall, confusion matrix, calibration, example gallery with attention heatmaps; for sweeps the trials
    chart, parameter importances (from 10 complete trials) and ranked table."""
    from mmfuse.report import write_report

    try:
        path = write_report(target, out, split=split, per_group=per_group, storage=storage,
                            log=lambda m: typer.echo(m, err=True))  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {path} (and its figures in {path.parent})")
