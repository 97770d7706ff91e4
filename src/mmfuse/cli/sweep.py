"""``mmfuse sweep`` and ``mmfuse ensemble``: parse, call :mod:`mmfuse.sweep`, print.

Exit codes: 0 fine, 2 a wrong argument, sweep file or path, 130 interrupted (run the same command to resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mmfuse.cli._errors import guard


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the top-level app."""
    app.command("sweep")(sweep)
    app.command("ensemble")(ensemble)


def sweep(
    file: Annotated[Path, typer.Argument(help="The sweep file (YAML): a base config plus grid, trials or search.")],
    out: Annotated[Path | None, typer.Option("--out", help="Sweep folder (default: <out_dir>/<name>).")] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Optuna RDB storage URL shared by workers, e.g. postgresql://user:pass@host/db (extra postgres); "
            "default: SQLite in the folder.",
        ),
    ] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", min=1, help="Trial budget of the study.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="This worker's time budget (s).")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="key=value override of the base config (repeatable).")
    ] = None,
    heads: Annotated[
        str | None,
        typer.Option("--heads", help="Of a sweep file with `heads:`, only these (comma-separated) heads."),
    ] = None,
) -> None:
    """Run, resume or join a hyperparameter sweep; write the ranked table of its trials.

    Run it again to resume (finished trials are kept); run it in several processes or (--storage) machines to share.
    With `seeds: [0, 1, 2]` in the file, the trial chosen on validation is then trained with each seed (mean ± std on
    val and test, in final.json); with `variants:`, variants of it too (e.g. a fine-tuning grid of
    optim.encoder_lr with model.text_encoder.freeze=false), each chosen on validation. With `heads:`, each head
    listed is searched, selected and re-run on its own (<out>/heads/<head>/) and ranked in a leaderboard (heads.md);
    `baselines: [logistic]` adds logistic-regression reference rows, `ensemble:` an ensemble of the best heads.
    """
    import signal

    from mmfuse.sweep import load_sweep, run_sweep

    only = [h.strip() for h in heads.split(",") if h.strip()] if heads is not None else None
    spec = guard(lambda: load_sweep(file, overrides or (), only))
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped job re-queues its trial like Ctrl-C does
    try:
        result = guard(lambda: run_sweep(spec, out=out, storage=storage, n_trials=n_trials, timeout=timeout,
                                          log=_echo))  # fmt: skip
    except KeyboardInterrupt:
        _echo("interrupted: the running trial was queued again; run the same command to resume")
        raise typer.Exit(code=130) from None
    _print_table(result.table, f"{spec.name}: ranked by val {result.metric}")
    from mmfuse.sweep.final import summary_lines

    for line in summary_lines(result.final):
        typer.echo(line)
    state = "finished" if result.finished else "not finished (trials left or running elsewhere)"
    if spec.heads:
        typer.echo(f"sweep {state}; leaderboard in {result.folder / 'heads.md'} and heads.csv, each head's trials "
                   "in heads/<head>/trials.md")  # fmt: skip
    else:
        typer.echo(f"sweep {state}; table in {result.folder / 'trials.md'} and trials.csv")
    if result.ensemble is not None:
        typer.echo(f"ensemble of the best heads in {result.ensemble} (mmfuse evaluate / predict load it)")


def ensemble(
    folder: Annotated[Path, typer.Argument(help="A sweep folder.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Candidates: the best k trials on validation.")] = 5,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Picks of the greedy selection.")] = 25,
    out: Annotated[Path | None, typer.Option("--out", help="Ensemble folder (default: <sweep>/ensemble).")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="The sweep's storage URL, if not its own.")] = None,
) -> None:
    """Combine the top-k trials of a sweep (greedy selection with replacement on validation) into one predictor.

    A sweep with `heads:` is combined across its heads: the top-k heads on validation, each its selected trial.
    """
    import json

    from mmfuse.sweep import build_ensemble

    path = guard(lambda: build_ensemble(folder, top_k=top_k, rounds=rounds, out=out, storage=storage))
    info = json.loads((path / "ensemble.json").read_text(encoding="utf-8"))
    metric = info["metric"]
    members = ", ".join(f"{m.get('head') or 'trial'} {m['trial']} x{m['weight']:.2f}" for m in info["members"])
    typer.echo(f"ensemble of {members}")
    best = info["best_single"]
    single = f"{best.get('head') or 'trial'} {best['trial']}"
    typer.echo(f"val {metric}: ensemble {info['val'][metric]:.4f}, best single {single} "
               f"{best[f'val_{metric}']:.4f}")  # fmt: skip
    typer.echo(f"wrote {path / 'ensemble.json'}")


def _print_table(frame: Any, title: str, rows: int = 15) -> None:
    from rich.console import Console

    from mmfuse.engine.tables import frame_table
    from mmfuse.sweep.table import cell_text

    shown = frame.drop(columns=["run_dir", "note", "folder"], errors="ignore").head(rows).astype(object)
    for column in shown.columns:  # as in trials.md: 3e-05 stays 3e-05, not 0.000
        shown[column] = [cell_text(v, str(column)) for v in shown[column]]
    console = Console(highlight=False, markup=False)  # cells are Text; titles and values may hold [...]
    if not console.is_terminal:  # piped or logged: do not squeeze the columns into 80 characters
        console = Console(highlight=False, markup=False, width=max(console.width, 200))
    console.print(frame_table(shown, title))
    if len(frame) > rows:
        typer.echo(f"... {len(frame) - rows} more rows in trials.md")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _echo(message: str) -> None:
    typer.echo(message, err=True)
