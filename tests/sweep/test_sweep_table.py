"""The ranked table of a sweep: one column per swept key beside the table's own columns, none taking another's
place. Built from hand-made Optuna trials, so no training runs here."""

from __future__ import annotations

import io

import optuna
from optuna.distributions import CategoricalDistribution
from rich.console import Console

from mmfuse.config.overrides import _paths
from mmfuse.engine.tables import frame_table
from mmfuse.sweep.study import A_OVERRIDES, A_RESULT, A_RUN_DIR
from mmfuse.sweep.table import to_markdown, trials_frame


def _study(points: list[dict]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, overrides in enumerate(points):
        result = {"best_epoch": 1, "epochs_run": 2, "seconds": 1.5}
        attrs = {A_OVERRIDES: overrides, A_RESULT: result, A_RUN_DIR: f"trials/trial-{i:04d}"}
        point = {"params": {"p": i}, "distributions": {"p": CategoricalDistribution(list(range(9)))}}
        study.add_trial(optuna.trial.create_trial(value=0.5 + i / 10, user_attrs=attrs, **point))
    return study


def test_a_swept_epochs_setting_and_the_epochs_run_are_two_columns() -> None:
    # the example sweep's trial {epochs: 20} run with --set train.epochs=2: the setting and what ran differ
    study = _study([{}, {"lr": 1e-4}, {"epochs": 20}])
    frame = trials_frame(study, "accuracy", ["lr", "epochs"])
    assert frame.columns.is_unique
    assert list(frame["epochs"]) == [20, "(base)", ""]  # best first: trial 2, 1, 0 (the base config: no overrides)
    assert list(frame["epochs_run"]) == [2, 2, 2]
    markdown = to_markdown(frame)
    assert "| epochs |" in markdown and "| epochs_run |" in markdown
    console = Console(file=io.StringIO(), width=300)
    console.print(frame_table(frame.astype(object), "t"))
    assert "epochs_run" in console.file.getvalue()


def test_no_config_key_can_take_the_place_of_a_table_column() -> None:
    # a swept key is a column named as written: a full path (with dots) or a setting's own name (``epochs``)
    from mmfuse.sweep.table import result_columns

    own = set(result_columns("accuracy")) | {c for m in ("auroc", "macro_f1", "loss") for c in result_columns(m)}
    assert not own & {path[-1] for path in _paths()}
