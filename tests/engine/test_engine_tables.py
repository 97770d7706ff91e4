"""The console tables show names from the data as written, whatever brackets they hold, on any rich console."""

from __future__ import annotations

import io

import pandas as pd
from rich.console import Console

from mmfuse.engine.tables import evaluation_view, frame_table, summary_view

# A closing tag with nothing to close (rich raised MarkupError), a style tag (applied and hidden), a stray bracket,
# and a lowercase path in brackets (dropped silently as an unknown style).
HOSTILE = ["b[/]1", "[bold]pos", "neg]", "[data/3059.txt]"]


def _render(renderable: object) -> str:
    """What a default console (markup on, as a library user would have it) prints, borders removed."""
    console = Console(file=io.StringIO(), width=300, color_system=None)
    console.print(renderable)
    return " ".join(console.file.getvalue().replace("│", " ").replace("┃", " ").split())


def test_evaluation_tables_show_class_and_split_names_as_written() -> None:
    per_class = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    metrics = {"accuracy": 0.5, "macro_f1": 0.5, "per_class": dict.fromkeys(HOSTILE, per_class)}
    metrics["confusion_matrix"] = [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 2]]
    result = {"split": "[data/test.jsonl]", "n": 8, "metrics": metrics, "classes": HOSTILE, "baselines": {}}
    shown = _render(evaluation_view(result))
    assert "[data/test.jsonl]: 8 examples" in shown
    for name in HOSTILE:
        assert f"{name} 0.5000 0.5000 0.5000 2" in shown  # per class
        assert shown.count(name) >= 3  # per class, confusion matrix row and column


def test_summary_and_frame_tables_show_values_as_written() -> None:
    summary = {"head": "concat", "status": "finished", "run_dir": "runs/[data/x]", "val": {"accuracy": 0.5}}
    assert "concat - finished (runs/[data/x])" in _render(summary_view(summary))
    frame = pd.DataFrame({"name": HOSTILE, "[bold]value": [1.0, 2.0, 3.0, 4.0]})
    shown = _render(frame_table(frame, "[red]title"))
    assert "[red]title" in shown and "[bold]value" in shown
    assert all(name in shown for name in HOSTILE)


def test_frame_table_prints_a_frame_with_two_columns_of_one_name() -> None:
    frame = pd.DataFrame([["a", 1, 2]], columns=["trial", "epochs", "epochs"])
    assert "a 1 2" in _render(frame_table(frame, "t"))
