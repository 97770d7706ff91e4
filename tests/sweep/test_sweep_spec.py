"""The sweep file: expansion into trials, and errors that name the key, the value and the fix (no training here)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmfuse.sweep import SweepError, load_sweep, sweep_from_dict
from mmfuse.sweep.study import point_params


def _spec(base: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": "s", "base": copy.deepcopy(base), **kw}


def test_grid_is_every_combination_in_file_order(base_config):
    sweep = sweep_from_dict(_spec(base_config, grid={"lr": [1e-3, 1e-4], "head.params.dropout": [0.0, 0.1, 0.2]}))
    assert sweep.mode == "grid"
    assert sweep.keys == ["lr", "head.params.dropout"]
    assert len(sweep.points) == 6
    assert sweep.points[0] == {"lr": 1e-3, "head.params.dropout": 0.0}
    assert sweep.points[-1] == {"lr": 1e-4, "head.params.dropout": 0.2}
    cfg = sweep.trial_config(sweep.points[4], Path("/tmp/sweep/trials/trial-0004"))
    assert cfg.optim.lr == 1e-4 and cfg.model.head.params["dropout"] == 0.1
    assert cfg.model.head.params["hidden"] == 32  # the base's other params stay
    assert cfg.run.name == "trial-0004" and cfg.run.out_dir == Path("/tmp/sweep/trials") and cfg.run.quiet


def test_trials_list_fills_unset_keys_with_the_base_value(base_config):
    sweep = sweep_from_dict(_spec(base_config, trials=[{"lr": 0.01}, {"batch_size": 8, "optim.name": "sgd"}, {}]))
    assert sweep.mode == "trials" and len(sweep.points) == 3
    assert sweep.keys == ["lr", "batch_size", "optim.name"]
    params, choices = point_params(sweep)
    assert params[0] == {"lr": 0.01, "batch_size": 16, "optim.name": "adamw"}
    assert params[2] == {"lr": 0.001, "batch_size": 16, "optim.name": "adamw"}
    assert choices["batch_size"] == [16, 8]


def test_values_optuna_cannot_store_become_json_text(base_config):
    sweep = sweep_from_dict(_spec(base_config, grid={"class_weights": ["none", [1.0, 2.0]]}))
    params, _choices = point_params(sweep)
    assert params[1] == {"class_weights": "[1.0, 2.0]"}
    assert sweep.trial_config(sweep.points[1]).train.class_weights == [1.0, 2.0]


def test_metric_becomes_every_trials_selection_metric(base_config):
    sweep = sweep_from_dict(_spec(base_config, metric="macro_f1", grid={"lr": [1e-3]}))
    assert sweep.trial_config(sweep.points[0]).train.selection_metric == "macro_f1"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"grid": {"lr": [1e-3]}, "search": {"params": {"lr": [1e-3]}}, "n_trials": 2}, "exactly one of `grid`"),
        ({}, "got none of them"),
        ({"grid": {"lr": 0.001}}, "grid.lr must be a non-empty list of values, got 0.001; write e.g. [0.001]"),
        ({"grid": {"lr": []}}, "grid.lr must be a non-empty list"),
        ({"grid": {"lrr": [1]}}, "grid: unknown override key 'lrr'"),
        ({"grid": {"run.name": ["x"]}}, "cannot be swept: the sweep places each trial's run folder"),
        ({"grid": {"selection_metric": ["loss"]}}, "set the sweep's top-level `metric` instead"),
        ({"trials": [{"lr": 1e-3}, {"optim.lr": 1e-4}]}, "keys 'lr' and 'optim.lr' name the same setting"),
        ({"trials": []}, "`trials` is empty"),
        ({"grid": {"lr": [1e-3]}, "pruner": {"name": "sometimes"}}, "pruner.name"),
        ({"grid": {"lr": [1e-3]}, "budget": 3}, "unknown key(s) 'budget'"),
        ({"grid": {"lr": [1e-3]}, "name": "a/b"}, "it names a folder"),
        ({"search": {"params": {"lr": {"low": 1e-5, "high": 1e-2}}}}, "a search needs a budget"),
        ({"search": {"params": {}}, "n_trials": 3}, "search.params is empty"),
        ({"search": {"params": {"lr": {"low": 1e-2, "high": 1e-5}}}, "n_trials": 3}, "`low` must be below `high`"),
        ({"search": {"params": {"lr": {"low": 0.0, "high": 1.0, "log": True}}}, "n_trials": 3}, "needs low > 0"),
        (
            {"search": {"params": {"batch_size": {"low": 8, "high": 64.5, "type": "int"}}}, "n_trials": 3},
            "whole numbers",
        ),
        ({"search": {"params": {"lr": 0.1}}, "n_trials": 3}, "a searched setting is a list of choices or a mapping"),
    ],
)
def test_bad_sweep_files_are_refused_naming_the_key(base_config, extra, expected):
    with pytest.raises(SweepError) as info:
        sweep_from_dict(_spec(base_config, **extra))
    assert expected in str(info.value)


def test_a_grid_point_that_would_not_validate_is_named_before_anything_runs(base_config):
    with pytest.raises(SweepError) as info:
        sweep_from_dict(_spec(base_config, grid={"lr": [1e-3, -1.0], "head.name": ["concat", "nope"]}))
    message = str(info.value)
    assert "3 of 4 trials would not run" in message
    assert "grid point 1 (lr=0.001, head.name='nope')" in message
    assert "grid point 3 (lr=-1.0, head.name='nope')" in message
    assert "optim.lr: Input should be greater than 0 (got -1.0)" in message
    assert "grid point 0" not in message


def test_each_end_of_a_searched_range_must_validate(base_config):
    spec = _spec(base_config, search={"params": {"head.params.dropout": {"low": 0.0, "high": 0.5},
                                                  "head.name": ["concat", "cross_attention"]}}, n_trials=3)  # fmt: skip
    sweep_from_dict(spec)  # hidden=32 is a param of both heads
    spec["search"]["params"]["head.params.proj_dim"] = [8, 16]  # concat has no proj_dim
    with pytest.raises(SweepError) as info:
        sweep_from_dict(spec)
    assert "search.params.proj_dim" in str(info.value) or "search.params.head.params.proj_dim" in str(info.value)
    assert "proj_dim" in str(info.value) and "allowed" in str(info.value)


def test_param_type_is_inferred(base_config):
    sweep = sweep_from_dict(_spec(base_config, n_trials=3, search={"params": {
        "batch_size": {"low": 8, "high": 32, "step": 8}, "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "optim.name": ["adam", "sgd"]}}))  # fmt: skip
    params = sweep.spec.search.params
    assert (params["batch_size"].type, params["lr"].type, params["optim.name"].type) == ("int", "float", "categorical")


def test_base_needs_data(base_config):
    base = {k: v for k, v in base_config.items() if k != "data"}
    with pytest.raises(SweepError, match="has no `data`"):
        sweep_from_dict({"base": base, "grid": {"lr": [1e-3]}})


def test_a_bad_base_config_is_reported_as_the_base(base_config):
    with pytest.raises(SweepError, match=r"(?s)base config of the sweep.*optim: unknown key\(s\) 'nam'"):
        sweep_from_dict(_spec(base_config, overrides=["optim.nam=adam"], grid={"lr": [1e-3]}))


def test_file_base_path_resolves_against_the_sweep_file(tmp_path, base_config):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(yaml.safe_dump(base_config))
    (tmp_path / "sweeps").mkdir()
    path = tmp_path / "sweeps" / "my-sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "../configs/base.yaml", "grid": {"lr": [1e-3, 1e-2]}}))
    sweep = load_sweep(path, ["train.epochs=1"])
    assert sweep.name == "my-sweep"  # from the file name
    assert sweep.base.train.epochs == 1
    assert sweep.source == path
    with pytest.raises(FileNotFoundError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")
    path.write_text("grid: [unclosed")
    with pytest.raises(SweepError, match=r"sweep file .* is not valid YAML"):
        load_sweep(path)


def test_inline_relative_data_root_resolves_against_the_sweep_file(tmp_path, base_config, synth_root):
    base = copy.deepcopy(base_config)
    base["data"]["root"] = str(Path("..") / synth_root.name)
    folder = synth_root.parent / "sweeps"
    folder.mkdir(exist_ok=True)
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump({"base": base, "grid": {"lr": [1e-3]}}))
    assert load_sweep(path).base.data.resolved_root() == synth_root.resolve()


def test_fingerprint_ignores_budgets_and_machine_paths_but_not_the_grid(base_config):
    a = sweep_from_dict(_spec(base_config, grid={"lr": [1e-3, 1e-2]}, n_trials=5))
    moved = copy.deepcopy(base_config)
    moved["data"]["root"] = "/elsewhere/data"
    b = sweep_from_dict(_spec(moved, grid={"lr": [1e-3, 1e-2]}, timeout=60))
    c = sweep_from_dict(_spec(base_config, grid={"lr": [1e-3, 3e-2]}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_unimodal_baselines_swap_only_the_head(base_config):
    sweep = sweep_from_dict(_spec(base_config, grid={"lr": [1e-3, 1e-2]}))
    assert sweep.baselines == {
        "text_only": {"head.name": "text_only", "head.params": {"hidden": 32}},
        "image_only": {"head.name": "image_only", "head.params": {"hidden": 32}},
    }
    cfg = sweep.trial_config(sweep.baselines["image_only"])
    assert cfg.model.head.name == "image_only" and cfg.optim.lr == sweep.base.optim.lr
    assert sweep_from_dict(_spec(base_config, grid={"lr": [1e-3]}, baselines=False)).baselines == {}
    assert _fingerprint(base_config, True) != _fingerprint(base_config, False)


def test_baselines_keep_only_the_params_the_unimodal_head_has_and_skip_what_cannot_run(base_config):
    base = copy.deepcopy(base_config)
    base["model"]["head"] = {"name": "cross_attention", "params": {"num_heads": 2, "dropout": 0.2}}
    sweep = sweep_from_dict(_spec(base, grid={"lr": [1e-3]}))
    assert sweep.baselines["text_only"]["head.params"] == {"dropout": 0.2}  # num_heads is cross_attention's own
    text_only = copy.deepcopy(base_config)
    text_only["model"]["head"] = {"name": "text_only"}
    text_only["model"]["image_encoder"] = None
    assert sweep_from_dict(_spec(text_only, grid={"lr": [1e-3]})).baselines == {}  # is one, and no image encoder


def _fingerprint(base: dict[str, Any], baselines: bool) -> str:
    return sweep_from_dict(_spec(base, grid={"lr": [1e-3]}, baselines=baselines)).fingerprint()
