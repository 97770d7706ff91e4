"""After the search: the selected point trained with several seeds, and variants of it (a fine-tuning grid, an
ablation), each chosen on validation, reported as mean ± std over seeds; plus the split ``limit`` of quick tries."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.sweep import SweepError, read_final, read_final_run, run_sweep, sweep_from_dict


def _spec(base: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": "final", "base": copy.deepcopy(base), "baselines": False, **kw}


# ----------------------------------------------------------------------------------------------- the sweep file


def test_variants_are_expanded_on_top_of_the_selected_point(base_config):
    sweep = sweep_from_dict(
        _spec(
            base_config,
            grid={"lr": [1e-3, 3e-4]},
            seeds=[0, 1],
            variants={
                "finetune": {
                    "overrides": {"model.text_encoder.freeze": False},
                    "grid": {"optim.encoder_lr": [1e-5, 1e-4]},
                },
                "ls": {"overrides": {"train.label_smoothing": 0.1}, "seeds": [3]},
            },
        )
    )
    assert sweep.variants["finetune"] == [
        {"model.text_encoder.freeze": False, "optim.encoder_lr": 1e-5},
        {"model.text_encoder.freeze": False, "optim.encoder_lr": 1e-4},
    ]
    assert sweep.variants["ls"] == [{"train.label_smoothing": 0.1}]
    assert sweep.seeds_of(None) == [0, 1] and sweep.seeds_of("finetune") == [0, 1] and sweep.seeds_of("ls") == [3]
    cfg = sweep.trial_config({**sweep.points[1], **sweep.variants["finetune"][1]})
    assert cfg.optim.lr == 3e-4 and cfg.optim.encoder_lr == 1e-4 and not cfg.model.text_encoder.freeze


def test_seeds_and_variants_do_not_change_the_study(base_config):
    """The search's trials are the same with or without them, so adding seeds to a finished sweep resumes it."""
    plain = sweep_from_dict(_spec(base_config, grid={"lr": [1e-3]}))
    more = sweep_from_dict(_spec(base_config, grid={"lr": [1e-3]}, seeds=[0, 1], variants={"v": {"overrides": {}}}))
    limited = sweep_from_dict(_spec(base_config, grid={"lr": [1e-3]}, limit={"train": 10}))
    assert plain.fingerprint() == more.fingerprint() != limited.fingerprint()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"seeds": [0, 0]}, "seeds must be a non-empty list of distinct integers"),
        ({"seeds": []}, "seeds must be a non-empty list of distinct integers"),
        ({"variants": {"selected": {}}}, "variant name 'selected' must be"),
        ({"variants": {"a b": {}}}, "variant name 'a b' must be"),
        ({"variants": {"v": {"overrides": {"train.seed": 3}}}}, "variants.v: key 'train.seed' cannot be set"),
        ({"variants": {"v": {"overrides": {"run.name": "x"}}}}, "variants.v: key 'run.name' cannot be swept"),
        ({"variants": {"v": {"grid": {"lr": 0.1}}}}, "grid.lr must be a non-empty list of values"),
        ({"variants": {"v": {"overrides": {"train.batch_size": 0}}}}, "variants.v point 0"),
        ({"variants": {"v": {"overrides": {"no.such.key": 1}}}}, "no.such.key"),
        ({"limit": {"train": 0}}, "limit.train must be at least 1"),
        ({"limit": {"dev": 5}}, "limit.dev"),
    ],
)
def test_bad_seeds_variants_and_limits_name_the_key(base_config, extra, expected):
    with pytest.raises(SweepError) as err:
        sweep_from_dict(_spec(base_config, grid={"lr": [1e-3]}, **extra))
    assert expected in str(err.value)


# ----------------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def final_sweep(base_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory):
    """A 2-point grid, then the selected point with seeds 0 and 1, a fine-tuning grid (2 encoder lrs, 1 seed) and a
    label-smoothing variant, on the first 40 training examples; run through the CLI, then run again."""
    tmp = tmp_path_factory.mktemp("final")
    spec = _spec(
        base_config,
        grid={"lr": [3e-3, 1e-3]},
        seeds=[0, 1],
        limit={"train": 40},
        variants={
            "finetune": {
                "overrides": {"model.text_encoder.freeze": False, "train.epochs": 1},
                "grid": {"optim.encoder_lr": [1e-5, 1e-3]},
                "seeds": [0],
            },
            "ls": {"overrides": {"train.label_smoothing": 0.2}},
        },
    )
    file = tmp / "final.yaml"
    file.write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = tmp / "out"
    first = CliRunner().invoke(app, ["sweep", str(file), "--out", str(out)])
    again: list[str] = []
    result = run_sweep(sweep_from_dict(spec), out=out, log=again.append)
    return first, result, again


def test_the_selected_point_is_trained_with_each_seed(final_sweep):
    first, result, _ = final_sweep
    assert first.exit_code == 0, first.output
    final = result.final
    selected = json.loads((result.folder / "selected.json").read_text())
    group = final["groups"]["selected"]
    assert final["selected_trial"] == selected["trial"] and group["seeds"] == [0, 1]
    assert group["runs"] == ["seed-0", "seed-1"]
    runs = [read_final_run(result.folder, "selected", label) for label in group["runs"]]
    # seed 0 is the selected trial itself (the base seed is 0): loaded, not trained again
    assert runs[0][0]["reused_trial"] == selected["trial"] and runs[0][0]["run_dir"] == selected["run_dir"]
    assert runs[1][0]["reused_trial"] is None and runs[1][0]["seed"] == 1
    assert runs[1][0]["overrides"] == {**selected["overrides"], "train.seed": 1}
    # the loaded trial predicts what it predicted when it was selected: the same validation metric
    # (the trainer's float32 metric against numpy's float64 one on the same probabilities: 1e-6)
    assert runs[0][0]["val"]["auroc"] == pytest.approx(selected["val"], abs=1e-6)
    assert runs[0][0]["test"]["auroc"] == pytest.approx(selected["test"]["auroc"], abs=1e-6)
    for _, arrays in runs:
        assert arrays["test_proba"].shape == (12, 2) and arrays["val_proba"].shape == (12, 2)
    vals = [r["val"]["auroc"] for r, _ in runs]
    tests = [r["test"]["accuracy"] for r, _ in runs]
    assert group["val_mean"]["auroc"] == pytest.approx(np.mean(vals))
    assert group["test_mean"]["accuracy"] == pytest.approx(np.mean(tests))
    assert group["test_std"]["accuracy"] == pytest.approx(np.std(tests, ddof=1))
    assert read_final(result.folder) == final


def test_a_variant_grid_keeps_the_point_best_on_validation(final_sweep):
    _, result, _ = final_sweep
    final = result.final
    selected = final["selected_overrides"]
    group = final["groups"]["finetune"]
    assert [p["overrides"]["optim.encoder_lr"] for p in group["points"]] == [1e-5, 1e-3]
    means = []
    for i, point in enumerate(group["points"]):
        assert point["overrides"] == {**selected, "model.text_encoder.freeze": False, "train.epochs": 1,
                                      "optim.encoder_lr": [1e-5, 1e-3][i]}  # fmt: skip
        ((record, _arrays),) = [read_final_run(result.folder, "finetune", label) for label in point["runs"]]
        assert record["epochs_run"] == 1 and record["seed"] == 0
        means.append((record["val"]["auroc"], record["val"]["accuracy"]))
    best = max(range(2), key=lambda i: means[i])  # validation only; the first wins ties
    assert group["chosen"] == best and group["overrides"] == group["points"][best]["overrides"]
    assert group["test_mean"] and group["test_std"] == {}  # one seed: no std
    # a variant without seeds of its own takes the sweep's
    assert final["groups"]["ls"]["seeds"] == [0, 1] and final["groups"]["ls"]["runs"] == ["p0-seed-0", "p0-seed-1"]


def test_final_lines_in_the_table_and_the_cli(final_sweep):
    first, result, _ = final_sweep
    md = (result.folder / "trials.md").read_text()
    lr = result.final["groups"]["finetune"]["overrides"]["optim.encoder_lr"]
    for text in (md, first.output):
        assert "Selected point, seeds 0, 1: val auroc " in text and ", test auroc " in text
        assert f"Variant finetune (optim.encoder_lr={lr:g}, chosen on validation), seeds 0: val auroc" in text
        assert "Variant ls, seeds 0, 1: val auroc " in text


def test_running_again_trains_nothing(final_sweep):
    _, result, again = final_sweep
    assert not [line for line in again if " started" in line], again
    assert result.ran == []


def test_limit_keeps_the_first_examples_of_a_split(final_sweep):
    first, result, _ = final_sweep
    assert "limit: train split cut to its first 40 of 56 examples" in first.output
    summary = json.loads((result.folder / "final" / "selected" / "seed-1" / "summary.json").read_text())
    assert summary["data"]["train"]["examples"] == 40 and summary["data"]["val"]["examples"] == 12
