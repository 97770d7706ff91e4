"""The ranked table of a sweep's trials (CSV and Markdown), read from its study.

One row per trial: the unimodal baseline it is (if it is one), its overrides, the selection metric on validation,
best epoch, epochs run, training time, and the test metric of the selected trial only (the best on validation;
trials are never chosen on test). Each swept key is a column named as written in the sweep file (``lr``, ``epochs``);
the table's own columns are named so that no config key can take their place (``epochs_run``, not ``epochs``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from mmfuse.engine.metrics import HIGHER_IS_BETTER
from mmfuse.sweep.study import A_BASELINE, A_ERROR, A_OVERRIDES, A_RESULT, A_RETRY_OF, A_RUN_DIR, A_SPARE

_ORDER = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "interrupted": 4, "failed": 5}


def real_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials without the placeholders a worker may create when a grid runs out under it."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(A_SPARE)]


def trial_state(trial: FrozenTrial, retried: set[int]) -> str:
    """``complete``, ``pruned``, ``running``, ``waiting``, ``interrupted`` (failed and queued again) or ``failed``."""
    if trial.state == TrialState.FAIL:
        return "interrupted" if trial.number in retried else "failed"
    return {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]


def trial_value(trial: FrozenTrial, metric: str) -> float | None:
    """The trial's validation metric: its value when complete, its best reported epoch when pruned or running."""
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return float(trial.value)
    values = [v for v in trial.intermediate_values.values() if v is not None and not math.isnan(v)]
    if not values:
        return None
    return max(values) if HIGHER_IS_BETTER[metric] else min(values)


def is_baseline(trial: FrozenTrial) -> bool:
    """Whether ``trial`` is one of the sweep's unimodal baselines (ranked, never selected)."""
    return A_BASELINE in trial.user_attrs


def best_trial(study: optuna.Study, metric: str) -> FrozenTrial | None:
    """The complete sweep trial (not a baseline) with the best validation metric (the earliest among equals)."""
    done = [
        t for t in real_trials(study) if t.state == TrialState.COMPLETE and t.value is not None and not is_baseline(t)
    ]
    if not done:
        return None
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
    return min(done, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]


def result_columns(metric: str) -> list[str]:
    """The table's own columns, in order; the swept keys go between ``baseline`` and the validation metric."""
    return ["rank", "trial", "state", "baseline", f"val_{metric}", "best_epoch", "epochs_run", "train_s",
            f"test_{metric}", "run_dir", "note"]  # fmt: skip


def trials_frame(
    study: optuna.Study, metric: str, keys: Sequence[str], selected: dict[str, Any] | None = None
) -> pd.DataFrame:
    """The ranked table: complete trials best first (``rank`` 1..n), then pruned, running, waiting, interrupted and
    failed ones. The unimodal baselines are ranked among the complete trials; ``baseline`` names their head.

    Args:
        study: the sweep's study.
        metric: the selection metric (its direction orders the rows).
        keys: the override keys, one column each, in this order.
        selected: the selected trial's record (``trial`` and ``test`` metrics), when it was tested.
    """
    trials = real_trials(study)
    retried = {t.user_attrs[A_RETRY_OF] for t in trials if A_RETRY_OF in t.user_attrs}
    test_col = f"test_{metric}"
    rows = []
    for t in trials:
        overrides = t.user_attrs.get(A_OVERRIDES) or {}
        result = t.user_attrs.get(A_RESULT) or {}
        row: dict[str, Any] = {"rank": None, "trial": t.number, "state": trial_state(t, retried),
                               "baseline": t.user_attrs.get(A_BASELINE, "")}  # fmt: skip
        for key in keys:
            row[key] = _cell(overrides[key]) if key in overrides else ("" if not overrides else "(base)")
        row[f"val_{metric}"] = trial_value(t, metric)
        row["best_epoch"] = result.get("best_epoch")
        row["epochs_run"] = result.get("epochs_run")
        row["train_s"] = result.get("seconds")
        test = (selected or {}).get("test") or {}
        row[test_col] = test.get(metric) if selected and selected.get("trial") == t.number else None
        row["run_dir"] = t.user_attrs.get(A_RUN_DIR, "")
        note = t.user_attrs.get(A_ERROR) or ""
        if t.number in retried:
            note = f"queued again as trial {_retry_number(trials, t.number)}" + (f" ({note})" if note else "")
        row["note"] = note
        rows.append(row)
    columns = result_columns(metric)
    columns[4:4] = keys
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    for column in ("best_epoch", "epochs_run"):  # counts stay whole beside a trial without them (not 5.0)
        frame[column] = frame[column].astype("Int64")
    val = frame[f"val_{metric}"].astype(float)
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
    frame["_order"] = frame["state"].map(_ORDER)
    frame["_value"] = (sign * val).fillna(math.inf)
    frame = frame.sort_values(["_order", "_value", "trial"], kind="stable").drop(columns=["_order", "_value"])
    complete = frame["state"] == "complete"
    frame.loc[complete, "rank"] = range(1, int(complete.sum()) + 1)
    frame["rank"] = frame["rank"].astype("Int64")
    return frame.reset_index(drop=True)


def _retry_number(trials: Sequence[FrozenTrial], number: int) -> str:
    later = [t.number for t in trials if t.user_attrs.get(A_RETRY_OF) == number]
    return str(later[0]) if later else "?"


def _cell(value: Any) -> Any:
    """A table cell: scalars as they are, lists and mappings as compact text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    import json

    return json.dumps(value, separators=(",", ":"))


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers to 4 significant decimals, pipes escaped)."""
    if frame.empty:
        return "(no trials yet)\n"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    align = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    lines = [header, align]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md(v, str(c)) for v, c in zip(row, frame.columns, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def cell_text(value: Any, column: str) -> str:
    """A table cell as text: metrics to 4 decimals, seconds to 1, swept values to 4 significant digits."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if column.startswith(("val_", "test_")):
            return f"{value:.4f}"
        if column.endswith("_s"):
            return f"{value:.1f}"
        return f"{value:.4g}"  # a swept value: 0.001, 3e-05, 0.2
    return str(value)


def _md(value: Any, column: str) -> str:
    return cell_text(value, column).replace("|", "\\|").replace("\n", " ")


def write_tables(frame: pd.DataFrame, folder: Path, title: str, lines: Sequence[str] = ()) -> tuple[Path, Path]:
    """Writes ``trials.csv`` and ``trials.md`` (a title, summary lines, the table) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / "trials.csv", folder / "trials.md"
    frame.to_csv(csv, index=False)
    text = f"# {title}\n\n" + "".join(f"{line}\n" for line in lines) + ("\n" if lines else "") + to_markdown(frame)
    md.write_text(text, encoding="utf-8")
    return csv, md


def short_value(value: Any) -> str:
    """A setting's value as sweep logs and tables show it (floats to 4 digits, at most 40 characters)."""
    text = (
        f"{value:.4g}"
        if isinstance(value, float)
        else json.dumps(value)
        if isinstance(value, (list, dict))
        else str(value)
    )
    return text if len(text) <= 40 else text[:37] + "..."


def metric_text(value: Any) -> str:
    """A metric as sweep logs show it: 4 decimals, ``n/a`` when missing."""
    return "n/a" if value is None else f"{value:.4f}"
