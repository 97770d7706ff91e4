"""``mmfuse train / evaluate / predict / demo``: parse the arguments, call the library, show the result."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.text import Text

from mmfuse._writable import atomic_path, check_writable, write_atomic
from mmfuse.cli._errors import write_failure

if TYPE_CHECKING:
    from mmfuse.data.report import SplitReport

# markup=False: messages quote paths, ids and labels from the data, in which rich would read [...] as markup
_console = Console(markup=False)
_errors_console = Console(stderr=True, markup=False)


def _error(error: Exception) -> None:
    # soft_wrap: no line breaks inserted at the console width, so a path or key in the message stays whole in logs
    _errors_console.print(Text.assemble(("error:", "red"), " ", str(error)), highlight=False, soft_wrap=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad configs, files or checkpoints, and writes that fail for lack of space or permission, end the command
    with their message (exit 2); a diverged run with 1."""
    from mmfuse.engine.trainer import NonFiniteLossError

    try:
        yield
    except NonFiniteLossError as e:
        _error(e)
        raise typer.Exit(1) from None
    except (ValueError, FileNotFoundError) as e:
        _error(e)
        raise typer.Exit(2) from None
    except Exception as e:
        if (failure := write_failure(e)) is None:
            raise
        _error(failure)
        raise typer.Exit(2) from None


def train(
    config: Path | None = typer.Argument(None, help="YAML config (optional with --resume: the run's own config)."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. optim.lr=1e-4 head.name=concat"),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help="key=value override (repeatable)."),
    resume: Path | None = typer.Option(None, "--resume", help="continue this run folder from its last checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no bars or epoch lines (progress lines stay in logs)"),
) -> None:
    """Train a model; writes a run folder (config, label map, metrics.jsonl, checkpoints, train.log, summary)."""
    from mmfuse.engine.classifier import MultimodalClassifier
    from mmfuse.engine.tables import summary_view

    items = [*(set_ or []), *(overrides or [])]
    if config is not None and "=" in str(config) and not config.exists():
        items, config = [str(config), *items], None  # `mmfuse train --resume RUN key=value`
    if quiet:
        items.append("run.quiet=true")
    with _user_errors():
        if resume is not None:
            clf = MultimodalClassifier.resume(resume, items, config)
        elif config is None:
            raise ValueError("pass a CONFIG file (see examples/*.yaml), or --resume RUN to continue a run")
        else:
            clf = MultimodalClassifier(config, overrides=items).fit()
    _console.print(summary_view(clf.summary))


_MAX_MISSING_HELP = (
    "largest share of examples (0 to 1) that may be predicted from a blank image because theirs is missing or "
    "unreadable; more is an error (default: data.max_missing_images, else {default}). They are always counted "
    "and named on stderr"
)


def evaluate(
    run: Path = typer.Argument(..., help="run folder (or checkpoint folder, or ensemble folder)"),
    split: str | None = typer.Option(
        None, "--split", help="split of the run's data: train, val or test (default: test, or val when there is none)"
    ),
    data: Path | None = typer.Option(
        None, "--data", help="another data config (YAML) or a labeled JSONL/CSV/TSV/Parquet file"
    ),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the full results as JSON here"),
    max_missing_images: float | None = typer.Option(
        None, "--max-missing-images", help=_MAX_MISSING_HELP.format(default="0: any missing image is an error")
    ),
) -> None:
    """Metrics table, per-class report and confusion matrix, beside the majority-class and random baselines."""
    import json

    from mmfuse.data.inputs import split_examples
    from mmfuse.engine.tables import evaluation_view
    from mmfuse.sweep.ensemble import load_predictor

    with _user_errors(), _warnings_to_stderr():
        if json_out is not None:
            _check_out(json_out, "results file", "--json")  # before the model is loaded
        clf = load_predictor(run, checkpoint=checkpoint)
        examples = split_examples(split, clf.config.data, data)
        _say_input_notes(examples.report)
        if split is None and data is None:
            note = "" if examples.name == "test" else " (the data has no labeled test split; val chose the best epoch)"
            _errors_console.print(f"evaluating the {examples.name} split{note}", highlight=False, soft_wrap=True)
        name = examples.name if data is None else str(data)
        result = clf.evaluate(examples, name=name, max_missing_images=max_missing_images)
    _console.print(evaluation_view(result))
    if json_out is not None:
        with _user_errors():
            text = json.dumps(result, indent=2) + "\n"
            write_atomic(json_out, text, what="results file", fix=_elsewhere("--json"))


def predict(
    run: Path = typer.Argument(..., help="run folder (or checkpoint folder, or ensemble folder)"),
    data: Path = typer.Argument(
        ..., help="JSONL/CSV/TSV/Parquet file (labels optional), read with the run's column mapping"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="CSV to write"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last"),
    threshold: str = typer.Option("0.5", "--threshold", help="binary: 0.5, tuned (on validation), or a number"),
    max_missing_images: float | None = typer.Option(
        None, "--max-missing-images", help=_MAX_MISSING_HELP.format(default="0.5")
    ),
) -> None:
    """Write predictions: id,proba,label for binary tasks (Hateful Memes format), else one proba column per class;
    then image_present (false: the image was missing or unreadable and a blank stood in).

    The file is read as what it holds (JSON lines, CSV/TSV or Parquet), whatever the run was trained on; its labels
    are optional, and labels the model never saw are named in one warning and counted in the last line."""
    from mmfuse.data.inputs import inputs_of, unseen_labels
    from mmfuse.sweep.ensemble import load_predictor

    with _user_errors(), _warnings_to_stderr():
        _check_out(out, "predictions file", "--out")  # before the model is loaded
        clf = load_predictor(run, checkpoint=checkpoint)
        inputs = inputs_of(data, clf.config.data)
        _say_input_notes(inputs.report)
        unseen = unseen_labels(inputs.examples, clf.classes)  # the predictor warns; counted in the last line
        frame = clf.predictions_table(
            inputs, threshold=_threshold(threshold, clf.threshold), max_missing_images=max_missing_images
        )
        with atomic_path(out, what="predictions file", fix=_elsewhere("--out")) as tmp:
            frame.to_csv(tmp, index=False)
    blank = int((~frame["image_present"]).sum()) if "image_present" in frame else 0
    counts = [f"{blank} from a blank image: image_present false"] if blank else []
    if unseen:
        counts.append(f"{sum(unseen.values())} with a label the model never saw: {', '.join(map(repr, unseen))}")
    said = f" ({'; '.join(counts)})" if counts else ""
    _errors_console.print(f"wrote {len(frame)} predictions to {out}{said}", highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    _errors_console.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)


def _say_input_notes(report: SplitReport | None) -> None:
    """Warns what reading an input file decided on its own: a format other than its extension's or the run's."""
    from mmfuse.data.loading import READ_BY_CONTENT

    for note in report.notes if report is not None else []:
        if READ_BY_CONTENT in note:
            _warn(note)


def _elsewhere(option: str) -> str:
    return f"pass {option} a path in a writable folder"


def _check_out(path: Path, what: str, option: str) -> None:
    """The folder of an output file is made and proved writable before the work that fills it; a folder named as
    the file is refused."""
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; pass the path of the file to write")
    check_writable(path.parent, what=f"the folder of the {what}", fix=_elsewhere(option))


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """While a command runs, the library's warnings (``mmfuse`` log records) print on stderr as ``warning: ...``;
    the same news as Python warnings is not printed twice."""
    import logging
    import warnings

    from mmfuse.data.inputs import UnseenLabelsWarning
    from mmfuse.data.missing_images import MissingImagesWarning
    from mmfuse.model.predictor import UncalibratedWarning

    class _Stderr(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = Text.assemble(("warning:", "yellow"), " ", record.getMessage())
            _errors_console.print(message, highlight=False, soft_wrap=True)

    handler = _Stderr(logging.WARNING)
    root = logging.getLogger("mmfuse")
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            for category in (MissingImagesWarning, UnseenLabelsWarning, UncalibratedWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        root.removeHandler(handler)


def _threshold(text: str, tuned: float | None) -> float | None:
    if text == "tuned":
        if tuned is None:
            raise ValueError("--threshold tuned: this model has no tuned threshold (binary tasks only)")
        return tuned
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--threshold must be 0.5, tuned, or a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {value}")
    return None if value == 0.5 else value


_DEMO_ENCODER_HELP = (
    "one CLIP / SigLIP checkpoint (hub id or folder) for both towers instead of the offline encoders; adds its "
    "zero_shot baseline to the table"
)


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="output folder (data, runs, results)"),
    n: int = typer.Option(600, "--n", help="number of synthetic examples"),
    epochs: int | None = typer.Option(None, "--epochs", help="epochs per head (default 20; best epoch kept)"),
    heads: list[str] | None = typer.Option(None, "--head", help="train only these heads (repeatable)"),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    encoder: str | None = typer.Option(None, "--encoder", help=_DEMO_ENCODER_HELP),
) -> None:
    """Synthetic data where the label needs both modalities; every fusion head vs. the unimodal baselines."""
    from mmfuse.engine.demo import DEMO_HEADS, run_demo
    from mmfuse.engine.tables import frame_table

    with _user_errors():
        result = run_demo(
            out, n=n, epochs=epochs, heads=heads or DEMO_HEADS, seed=seed, quiet=quiet,
            say=lambda line: _errors_console.print(line, highlight=False), encoder=encoder,
        )  # fmt: skip
    wide = Console(width=max(_console.width, 120), markup=False)  # piped: not squeezed
    console = _console if _console.is_terminal else wide
    console.print(frame_table(result.table, f"demo: test split of {n} synthetic examples"))
    _console.print(f"{result.seconds:.0f}s; results in {result.out}/results.md (and .csv, .json), runs in {out}/runs")


def register(app: typer.Typer) -> None:
    """Adds the run commands to the top-level app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("predict")(predict)
    app.command("demo")(demo)
