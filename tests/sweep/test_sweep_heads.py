"""A sweep that compares heads (``heads:``): each head searched, selected and re-run with the seeds on its own, a
leaderboard, logistic-regression reference rows (``baselines: [logistic]``) and an ensemble of the best heads."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.sweep import (
    Ensemble,
    SweepError,
    build_ensemble,
    load_predictor,
    read_final,
    read_final_run,
    run_sweep,
    sweep_from_dict,
    sweep_table,
)


def _spec(base: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": "heads", "base": copy.deepcopy(base), "grid": {"lr": [1e-3, 3e-4]}, **kw}


# ----------------------------------------------------------------------------------------------- the sweep file


def test_each_head_gets_its_own_sweep_naming_only_the_encoders_it_reads(base_config):
    sweep = sweep_from_dict(_spec(base_config, heads=["text_only", "image_only", "concat"], seeds=[0, 1]))
    assert list(sweep.heads) == ["text_only", "image_only", "concat"]
    text, image, concat = sweep.heads.values()
    assert text.base.model.head.name == "text_only" and text.base.model.image_encoder is None
    assert image.base.model.head.name == "image_only" and image.base.model.text_encoder is None
    assert concat.base.model.text_encoder is not None and concat.base.model.image_encoder is not None
    assert text.notes == ["model.image_encoder left out (text_only reads no image)"] and concat.notes == []
    for head in sweep.heads.values():  # the sweep's grid and seeds, its own study name; no unimodal baselines
        assert head.points == [{"lr": 1e-3}, {"lr": 3e-4}] and head.seeds_of(None) == [0, 1]
        assert head.name == f"heads-{head.head}" and head.baselines == {}
    assert len({h.fingerprint() for h in sweep.heads.values()}) == 3


def test_a_head_changes_its_epochs_grid_seeds_and_variants(base_config):
    sweep = sweep_from_dict(
        _spec(
            base_config,
            seeds=[0, 1, 2],
            variants={
                "ls": {"overrides": {"train.label_smoothing": 0.1}},
                "enc": {"overrides": {"model.image_encoder.freeze": False, "train.label_smoothing": 0.2}},
            },
            heads={
                "text_only": {"variants": ["enc"]},
                "image_only": {"variants": []},
                "concat": {
                    "overrides": {"train.epochs": 1},
                    "grid": {"lr": [1e-3]},
                    "seeds": [0],
                    "variants": {"ls": {"seeds": [5]}},
                },
            },
        )
    )
    text, concat = sweep.heads["text_only"], sweep.heads["concat"]
    assert sweep.heads["image_only"].variants == {}  # an empty list: no variant
    assert concat.base.train.epochs == 1 and text.base.train.epochs == 2
    assert concat.points == [{"lr": 1e-3}] and len(text.points) == 2
    assert concat.seeds_of(None) == [0] and concat.seeds_of("ls") == [5] and list(concat.variants) == ["ls"]
    # a variant's settings of an encoder the head does not read are left out, and said so
    assert text.variants == {"enc": [{"train.label_smoothing": 0.2}]}
    assert "variants.enc.overrides: model.image_encoder.freeze left out (text_only reads no image)" in text.notes


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"heads": ["concat", "nope"]}, "heads.nope"),
        ({"heads": {"concat": {"variants": ["missing"]}}}, "'missing' is not one of the sweep's variants"),
        ({"heads": {"concat": {"overrides": {"head.name": "align"}}}}, "cannot be set; the head is 'concat'"),
        ({"heads": ["concat"], "baselines": True}, "no unimodal baselines"),
        ({"ensemble": {"top_k": 2}}, "`ensemble` combines the heads"),
        ({"heads": []}, "heads is empty"),
        ({"heads": {"concat": {"seeds": []}}}, "seeds must be a non-empty list"),
        ({"heads": ["text_only"], "variants": {"v": {"overrides": {"train.image_dropout": 0.3}}}},
         "heads.text_only.variants` lists the ones it runs"),
    ],
)  # fmt: skip
def test_bad_heads_name_the_key_and_the_fix(base_config, extra, expected):
    with pytest.raises(SweepError, match=None) as e:
        sweep_from_dict(_spec(base_config, **extra))
    assert expected in str(e.value)


def test_a_head_grid_needs_a_grid_sweep(base_config):
    data = {**_spec(base_config, heads={"concat": {"grid": {"lr": [1e-3]}}}), "trials": [{"lr": 1e-3}]}
    del data["grid"]
    with pytest.raises(SweepError, match="replaces keys of the sweep's `grid`"):
        sweep_from_dict(data)


def test_a_sweep_of_one_head_is_unchanged_by_the_new_keys(base_config):
    """``heads`` absent: the same sweep (trials, baselines, fingerprint) whether ``baselines`` is left out or true."""
    plain = sweep_from_dict({k: v for k, v in _spec(base_config).items()})
    explicit = sweep_from_dict(_spec(base_config, baselines=True))
    assert plain.heads == {} and plain.head is None
    assert set(plain.baselines) == {"text_only", "image_only"}
    assert plain.fingerprint() == explicit.fingerprint()


# ----------------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def heads_sweep(base_config, tmp_path_factory):
    """text_only and concat, a grid of 2, seeds 0 and 1, logistic reference rows, an equal-weight ensemble."""
    folder = tmp_path_factory.mktemp("heads") / "sweep"
    cache = tmp_path_factory.mktemp("cache")
    base = copy.deepcopy(base_config)
    base["cache"] = {"dir": str(cache)}
    data = _spec(
        base,
        heads={"text_only": {}, "concat": {"seeds": [0, 1], "variants": ["ls"]}},
        seeds=[0, 1],
        variants={"ls": {"overrides": {"train.label_smoothing": 0.1}, "seeds": [0]}},
        baselines=["logistic"],
        ensemble={"top_k": 2, "weights": "equal"},
    )
    lines: list[str] = []
    result = run_sweep(sweep_from_dict(data), out=folder, log=lines.append)
    return result, folder, data, lines, cache


def test_every_head_is_searched_selected_and_rerun_with_the_seeds(heads_sweep):
    result, folder, _, lines, _ = heads_sweep
    assert result.finished and list(result.heads) == ["text_only", "concat"]
    for head, sub in result.heads.items():
        assert sub.folder == folder / "heads" / head and sub.finished
        assert len(sub.table) == 2  # its grid, no unimodal baseline trials
        final = read_final(sub.folder)
        assert final["groups"]["selected"]["seeds"] == [0, 1]
        cfg = json.loads((sub.folder / "sweep.json").read_text())["base"]
        assert cfg["model"]["head"]["name"] == head
    assert (folder / "heads" / "text_only" / "sweep.json").read_text().count('"image_encoder": null') >= 1
    assert "text_only: sweep 'heads-text_only': model.image_encoder left out (text_only reads no image)" in lines
    assert result.selected["head"] in ("text_only", "concat")


def test_the_leaderboard_ranks_heads_variants_and_references_on_validation(heads_sweep):
    result, folder, _, _, _ = heads_sweep
    table = pd.read_csv(folder / "heads.csv", keep_default_na=False)
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    metric = result.metric
    rows = {(r["head"], r["variant"]): r for _, r in table.iterrows()}
    assert set(rows) == {("text_only", ""), ("text_only", "ls"), ("concat", ""), ("concat", "ls"), ("ensemble", ""),
                         ("logistic regression (text)", ""), ("logistic regression (text+image)", "")}  # fmt: skip
    vals = [float(v) for v in table[f"val_{metric}"]]
    assert vals == sorted(vals, reverse=True)  # the metric of the synthetic data is higher-is-better
    concat = read_final(folder / "heads" / "concat")["groups"]["selected"]
    assert rows[("concat", "")][f"test_{metric}"] == pytest.approx(concat["test_mean"][metric], abs=1e-9)  # CSV text
    assert "Ranked by validation" in (folder / "heads.md").read_text()
    with pytest.raises(SweepError, match="compares heads"):
        sweep_table(folder)


def test_logistic_rows_choose_on_validation_and_report_test(heads_sweep):
    from mmfuse.sweep.final import split_metrics
    from mmfuse.sweep.reference import C_VALUES, read_baseline_predictions, read_baselines

    result, folder, _, _, cache = heads_sweep
    info = read_baselines(folder)
    assert result.baselines == info and set(info["logistic"]) == {"text", "text+image"}
    for name, row in info["logistic"].items():
        assert row["C"] in C_VALUES and row["class_weight"] in ("none", "balanced")
        arrays = read_baseline_predictions(folder, name)
        classes = [str(c) for c in arrays["classes"]]
        assert split_metrics(arrays["test_labels"], arrays["test_proba"], classes) == row["test"]
    assert any(cache.rglob("*")), "the features went through the base config's feature cache"


def test_the_ensemble_of_the_best_heads_loads_like_a_run(heads_sweep, synth_root):
    result, folder, _, _, _ = heads_sweep
    assert result.ensemble == folder / "ensemble"
    info = json.loads((folder / "ensemble" / "ensemble.json").read_text())
    assert [m["head"] for m in info["members"]] == [h["head"] for h in info["heads_ranked"]]
    assert [m["weight"] for m in info["members"]] == [0.5, 0.5]
    # seed by seed: the members' runs with that seed, averaged; mean over the seeds
    per_seed = []
    for i in range(2):
        probas = [read_final_run(folder / "heads" / m["head"], "selected", f"seed-{i}")[1] for m in info["members"]]
        combined = (probas[0]["test_proba"] + probas[1]["test_proba"]) / 2
        with np.load(folder / "ensemble" / f"seed-{i}.npz") as saved:
            np.testing.assert_array_equal(saved["test_proba"], combined)
        per_seed.append(info["seeds"]["runs"][i]["test"]["accuracy"])
    assert info["seeds"]["test_mean"]["accuracy"] == pytest.approx(np.mean(per_seed), abs=1e-12)  # a mean of two
    ensemble = load_predictor(folder / "ensemble")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2


def test_running_again_trains_and_fits_nothing(heads_sweep):
    _, folder, data, _, _ = heads_sweep
    before = (folder / "baselines.json").read_text()
    lines: list[str] = []
    again = run_sweep(sweep_from_dict(data), out=folder, log=lines.append)
    assert again.finished and again.ran == []
    assert not any("started" in line for line in lines), lines
    assert (folder / "baselines.json").read_text() == before


def test_a_sweep_of_one_head_fits_the_logistic_reference_too(base_config, tmp_path):
    data = {**_spec(base_config, grid={"lr": [1e-3]}, baselines=["unimodal", "logistic"]), "limit": {"train": 24}}
    result = run_sweep(sweep_from_dict(data), out=tmp_path / "one", log=lambda line: None)
    assert set(result.baselines["logistic"]) == {"text", "text+image"}
    assert set(result.table["baseline"]) == {"", "text_only", "image_only"}  # the unimodal heads as trials
    assert "Logistic regression on frozen pooled features" in (tmp_path / "one" / "trials.md").read_text()


def test_heads_on_the_command_line_must_be_the_files(base_config, tmp_path):
    from mmfuse.sweep import load_sweep

    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump(_spec(base_config, heads=["text_only", "concat"])))
    assert list(load_sweep(file, heads=["concat"]).heads) == ["concat"]
    with pytest.raises(SweepError, match="not among the heads"):
        load_sweep(file, heads=["align"])
    file.write_text(yaml.safe_dump(_spec(base_config)))
    with pytest.raises(SweepError, match="compares no heads"):
        load_sweep(file, heads=["concat"])


def test_greedy_ensemble_from_the_cli(heads_sweep, tmp_path):
    _, folder, _, _, _ = heads_sweep
    out = build_ensemble(folder, top_k=2, rounds=5, out=tmp_path / "greedy")
    info = json.loads((out / "ensemble.json").read_text())
    assert info["weights"] == "greedy" and sum(m["weight"] for m in info["members"]) == pytest.approx(1.0)
    result = CliRunner().invoke(app, ["ensemble", str(folder), "--top-k", "2", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "ensemble of" in result.output and (tmp_path / "cli" / "ensemble.json").is_file()


def test_the_cli_runs_a_heads_sweep_and_prints_the_leaderboard(base_config, tmp_path):
    data = _spec(base_config, grid={"lr": [1e-3]}, heads=["text_only", "concat"], limit={"train": 24})
    file = tmp_path / "heads.yaml"
    file.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(file), "--out", str(out), "--heads", "concat"])
    assert result.exit_code == 0, result.output
    assert "heads: ranked by val" in result.output and "concat" in result.output
    assert list(json.loads((out / "sweep.json").read_text())["heads"]) == ["concat"]
    bad = CliRunner().invoke(app, ["sweep", str(file), "--out", str(out), "--heads", "cross"])
    assert bad.exit_code == 2 and "cross" in bad.output
