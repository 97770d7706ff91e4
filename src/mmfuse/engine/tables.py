"""Console tables (rich) for evaluation results, training summaries and the demo comparison.

Class names, split names, paths and swept values come from the user's data and files, and rich reads ``[...]`` in a
plain string as markup: ``[/]`` crashes it, ``[data/3059.txt]`` vanishes as an unknown style. Every string here goes
into the table as :class:`~rich.text.Text` (:func:`plain`), which rich never parses, so any console prints it as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

_HEADLINE = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "auroc")


def plain(value: Any, style: str = "") -> Text:
    """``str(value)`` as rich text that is shown as written, never read as markup."""
    return Text(str(value), style=style)


def _title(value: Any) -> Text:
    return plain(value, "table.title")


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metrics_table(result: dict[str, Any]) -> Table:
    """Headline metrics of the model (at 0.5 and, binary, at the tuned threshold) beside the baselines."""
    columns: list[tuple[str, dict[str, Any]]] = [("model", result["metrics"])]
    if "metrics_at_threshold" in result:
        columns.append((f"model @ {result['threshold']:.3f} (tuned on val)", result["metrics_at_threshold"]))
    for name, metrics in result.get("baselines", {}).items():
        columns.append((f"{name} baseline", metrics))
    table = Table(title=_title(f"{result['split']}: {result['n']} examples"))
    table.add_column("metric")
    for name, _ in columns:
        table.add_column(plain(name), justify="right")
    for key in _HEADLINE:
        table.add_row(key, *(_num(m.get(key)) for _, m in columns))
    return table


def per_class_table(metrics: dict[str, Any]) -> Table:
    """Precision, recall, F1 and support per class."""
    table = Table(title="per class (model, argmax)")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in metrics["per_class"].items():
        table.add_row(plain(name), *(_num(row[k]) for k in ("precision", "recall", "f1", "support")))
    return table


def confusion_table(metrics: dict[str, Any], classes: Sequence[str]) -> Table:
    """Rows: true class; columns: predicted class."""
    table = Table(title="confusion matrix (rows: true, columns: predicted)")
    table.add_column("true \\ pred")
    for name in classes:
        table.add_column(plain(name), justify="right")
    for name, row in zip(classes, metrics["confusion_matrix"], strict=True):
        table.add_row(plain(name), *map(str, row))
    return table


def calibration_table(calibration: dict[str, Any]) -> Table:
    """Expected calibration error and Brier score of the probabilities (lower is better), and for a model calibrated
    with a temperature, the same before calibration beside them."""
    calibrated = "temperature" in calibration
    title = (
        f"calibration (temperature {calibration['temperature']:.3f}, fitted on val)"
        if calibrated
        else "calibration (no temperature: the model's own softmax)"
    )
    table = Table(title=title)
    table.add_column("metric")
    if calibrated:
        table.add_column("uncalibrated", justify="right")
    table.add_column("calibrated" if calibrated else "model", justify="right")
    for key, name in (("ece", "expected calibration error"), ("brier", "Brier score")):
        before = [_num(calibration.get(f"{key}_uncalibrated"))] if calibrated else []
        table.add_row(name, *before, _num(calibration.get(key)))
    return table


def evaluation_view(result: dict[str, Any]) -> Group:
    """Everything ``mmfuse evaluate`` shows."""
    metrics = result["metrics"]
    parts = [metrics_table(result)]
    if "calibration" in result:
        parts.append(calibration_table(result["calibration"]))
    return Group(*parts, per_class_table(metrics), confusion_table(metrics, result["classes"]))


def summary_view(summary: dict[str, Any]) -> Table:
    """The outcome of ``mmfuse train``: best epoch, its val metrics, and test metrics when there were some."""
    table = Table(title=_title(f"{summary.get('head')} - {summary.get('status')} ({summary.get('run_dir')})"))
    table.add_column("metric")
    table.add_column("val (best epoch)", justify="right")
    table.add_column("test", justify="right")
    val, test = summary.get("val") or {}, summary.get("test") or {}
    for key in ("accuracy", "macro_f1", "auroc", "loss", "threshold", "majority_accuracy"):
        if key in val or key in test:
            table.add_row(key, _num(val.get(key)), _num(test.get(key)))
    table.caption = plain(
        f"best epoch {summary.get('best_epoch')} of {summary.get('epochs_run')}, by {summary.get('selection_metric')}",
        "table.caption",
    )
    return table


def frame_table(frame: pd.DataFrame, title: str) -> Table:
    """A DataFrame as a rich table (floats with 3 decimals). Columns are read by position, so a frame with two
    columns of the same name still prints."""
    table = Table(title=_title(title))
    for col, dtype in zip(frame.columns, frame.dtypes, strict=True):
        table.add_column(plain(col), justify="left" if pd.api.types.is_object_dtype(dtype) else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*(_frame_cell(v) for v in row))
    return table


def _frame_cell(value: Any) -> Text:
    """A table cell: blank for missing values (None, NaN, pandas NA), floats with 3 decimals."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return plain("")
    return plain(_num(value, 3) if isinstance(value, float) else value)
