"""The leaderboard of a sweep: every trial, the unimodal baselines and the ensemble, with metrics on given data."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from mmfuse.data import DataConfig, load_splits
from mmfuse.engine.metrics import UnknownMetricError
from mmfuse.model import TorchPredictor
from mmfuse.sweep import Ensemble, build_ensemble, leaderboard, run_sweep, sweep_from_dict


@pytest.fixture(scope="module")
def sweep_folder(base_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-point grid (dropout) with the two unimodal baselines, one epoch each."""
    base = copy.deepcopy(base_config)
    base["train"]["epochs"] = 1
    spec = {"name": "board", "base": base, "grid": {"head.params.dropout": [0.0, 0.3]}}
    return run_sweep(sweep_from_dict(spec), out=tmp_path_factory.mktemp("sweeps") / "board", log=lambda _: None).folder


def test_leaderboard_lists_every_trial_and_the_baselines(sweep_folder: Path) -> None:
    board = leaderboard(sweep_folder)
    assert len(board) == 4 and list(board.columns[:2]) == ["model", "rank"]
    assert set(board["model"]) == {"text_only (baseline)", "image_only (baseline)", "trial 2", "trial 3"}
    assert "head.params.dropout" in board.columns and "val_auroc" in board.columns
    trials = board[board["baseline"] == ""].set_index("trial")
    assert trials.loc[2, "head.params.dropout"] == 0.0 and trials.loc[3, "head.params.dropout"] == 0.3
    assert not any(c.startswith("data_") for c in board.columns)  # no data, no data metrics


def test_leaderboard_on_data_with_the_ensemble(sweep_folder: Path, synth_root: Path) -> None:
    folder = build_ensemble(sweep_folder, top_k=2, rounds=4)
    test = load_splits(DataConfig(root=synth_root, preset="hateful_memes"))["test"]
    y = np.array([int(e.label) for e in test.examples])
    ensemble = Ensemble.load(folder)

    board = ensemble.leaderboard(test, metrics=["accuracy", "roc_auc"])
    assert board["model"].iloc[0] == "ensemble" and len(board) == 5
    assert board["val_auroc"].iloc[0] == pytest.approx(ensemble.info["val"]["auroc"])
    assert "trial 2" in board["note"].iloc[0] or "trial 3" in board["note"].iloc[0]
    # each model's numbers are scikit-learn's on that model's own probabilities (the same arrays: exact)
    for row in board.itertuples():
        if row.model == "ensemble":
            proba = ensemble.predict_proba(test)
        else:
            proba = TorchPredictor.from_run(sweep_folder / row.run_dir).predict_proba(test)
        assert row.data_roc_auc == roc_auc_score(y, proba[:, 1]), row.model
        assert row.data_accuracy == accuracy_score(y, proba.argmax(1)), row.model

    # the function on the sweep folder finds the ensemble itself; default metrics: the sweep's, accuracy, macro-F1
    frame = pd.DataFrame({"text": [e.text for e in test.examples], "img": [str(e.image) for e in test.examples],
                          "label": [int(e.label) for e in test.examples]})  # fmt: skip
    by_folder = leaderboard(sweep_folder, frame)
    assert by_folder["model"].iloc[0] == "ensemble"
    assert [c for c in by_folder.columns if c.startswith("data_")] == ["data_auroc", "data_accuracy", "data_macro_f1"]
    np.testing.assert_array_equal(by_folder["data_auroc"].to_numpy(float), board["data_roc_auc"].to_numpy(float))
    with pytest.raises(UnknownMetricError, match="did you mean 'roc_auc'"):
        leaderboard(sweep_folder, test, metrics=["roc_aux"])
