"""Console tables (rich) for evaluation results, training summaries and the demo comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.console import Group
from rich.table import Table

_HEADLINE = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "auroc")


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
    table = Table(title=f"{result['split']}: {result['n']} examples")
    table.add_column("metric")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for key in _HEADLINE:
        table.add_row(key, *(_num(m.get(key)) for _, m in columns))
    return table


def per_class_table(metrics: dict[str, Any]) -> Table:
    """Precision, recall, F1 and support per class."""
    table = Table(title="per class (model, argmax)")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in metrics["per_class"].items():
        table.add_row(name, *(_num(row[k]) for k in ("precision", "recall", "f1", "support")))
    return table


def confusion_table(metrics: dict[str, Any], classes: Sequence[str]) -> Table:
    """Rows: true class; columns: predicted class."""
    table = Table(title="confusion matrix (rows: true, columns: predicted)")
    table.add_column("true \\ pred")
    for name in classes:
        table.add_column(name, justify="right")
    for name, row in zip(classes, metrics["confusion_matrix"], strict=True):
        table.add_row(name, *map(str, row))
    return table


def evaluation_view(result: dict[str, Any]) -> Group:
    """Everything ``mmfuse evaluate`` shows."""
    metrics = result["metrics"]
    return Group(metrics_table(result), per_class_table(metrics), confusion_table(metrics, result["classes"]))


def summary_view(summary: dict[str, Any]) -> Table:
    """The outcome of ``mmfuse train``: best epoch, its val metrics, and test metrics when there were some."""
    table = Table(title=f"{summary.get('head')} - {summary.get('status')} ({summary.get('run_dir')})")
    table.add_column("metric")
    table.add_column("val (best epoch)", justify="right")
    table.add_column("test", justify="right")
    val, test = summary.get("val") or {}, summary.get("test") or {}
    for key in ("accuracy", "macro_f1", "auroc", "loss", "threshold", "majority_accuracy"):
        if key in val or key in test:
            table.add_row(key, _num(val.get(key)), _num(test.get(key)))
    table.caption = (
        f"best epoch {summary.get('best_epoch')} of {summary.get('epochs_run')}, by {summary.get('selection_metric')}"
    )
    return table


def frame_table(frame: pd.DataFrame, title: str) -> Table:
    """A DataFrame as a rich table (floats with 3 decimals)."""
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="left" if frame[col].dtype == object else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*(_frame_cell(v) for v in row))
    return table


def _frame_cell(value: Any) -> str:
    """A table cell: blank for missing values (None, NaN, pandas NA), floats with 3 decimals."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    return _num(value, 3) if isinstance(value, float) else str(value)
