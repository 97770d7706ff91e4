"""benchmarks/quality.py: its options applied to the sweep files make one valid sweep per dataset comparing the heads
(the heads, their encoders, grids, seeds and variants are the sweep's, tested in tests/sweep), and the report reads
what it says about the run from the sweep folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("mmfuse_quality_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def sweep_of(quality, *argv, dataset="mvsa_single"):
    return quality.dataset_sweep(dataset, quality.parse_args(list(argv)))


def test_options_left_out_take_the_sweep_files_values(quality):
    data = quality.read_sweep_file("mvsa_single")
    plain = sweep_of(quality)
    assert (
        plain["grid"] == data["grid"]
        and plain["seeds"] == data["seeds"]
        and plain["base"]["train"] == (data["base"]["train"])
    )
    assert quality.read_sweep_file("multioff")["grid"] == data["grid"]  # one grid described in the report
    given = sweep_of(quality, "--lr", "0.01", "--seeds", "2", "--epochs", "3", "--limit", "48")
    assert given["grid"]["lr"] == [0.01] and given["seeds"] == [0, 1] and given["base"]["train"]["epochs"] == 3
    assert given["limit"] == {"train": 48, "val": 24, "test": 24}


def test_heads_keep_the_files_order_and_variants_run_only_when_asked(quality):
    frozen = sweep_of(quality, "--heads", "concat,text_only")
    assert list(frozen["heads"]) == ["text_only", "concat"] and frozen["variants"] == {}
    assert "ensemble" not in frozen  # two heads: fewer than the ensemble's 3
    some = sweep_of(quality, "--variants", "finetune,encoders")
    assert set(some["variants"]) == {"finetune", "encoders"}
    assert some["heads"]["image_only"]["variants"] == ["encoders"]  # the file names no fine-tuning for it
    assert some["heads"]["early_fusion"]["variants"] == ["finetune"]


def test_every_head_and_variant_gives_a_valid_sweep(quality, tmp_path):
    from mmfuse.sweep import sweep_from_dict

    for dataset in quality.DATASETS:
        (tmp_path / dataset).mkdir()
        data = sweep_of(quality, "--root", str(tmp_path), "--variants", "all", "--limit", "48", dataset=dataset)
        sweep = sweep_from_dict(data, base_dir=quality.SWEEPS_DIR)
        assert list(sweep.heads) == [*quality.UNIMODAL, *quality.FUSION]
        assert sweep.spec.baseline_kinds == ["logistic"] and sweep.spec.ensemble.top_k == 3
        for head, own in sweep.heads.items():
            assert own.spec.limit == {"train": 48, "val": 24, "test": 24}
            assert own.base.train.selection_metric == quality.DATASETS[dataset].select
            assert len(own.points) == (1 if head in ("cross_attention", "early_fusion") else 4)
        assert sweep.heads["text_only"].base.model.image_encoder is None
        assert sweep.heads["text_only"].variants["encoders"] == [{"model.text_encoder.name": "mpnet"}]


def test_the_report_setup_is_read_from_the_sweep_folder(quality, tmp_path):
    """What docs/benchmarks.md says about the run (grid, epochs, variants per head) comes from sweep.json."""
    from mmfuse.sweep import sweep_from_dict

    (tmp_path / "mvsa_single").mkdir()
    data = sweep_of(quality, "--root", str(tmp_path), "--variants", "all")
    info = {**sweep_from_dict(data, base_dir=quality.SWEEPS_DIR).to_dict(), "metric": "macro_f1"}
    setup = quality.setup_of(json.loads(json.dumps(info, default=str)))
    lines = "\n".join(quality.setup_lines(setup, {"threads": 1}) + quality.scope_lines(setup))
    assert "heads that try only the first point: `cross_attention`, `early_fusion`" in lines
    assert "up to 10 epochs (`cross_attention` 4)" in lines and "seeds 0..2" in lines
    assert "encoder lr 2e-05 or 5e-05, chosen per head on validation" in lines
    assert "Label smoothing 0.1 on the chosen point: `text_only`, `image_only`, `concat`, `align`, `cross`." in lines
    assert "mean of the predicted probabilities of the 3 heads" in lines


def test_the_command_line_checks_heads_and_variants_against_the_files(quality, capsys):
    for argv, said in (
        (["--heads", "nope"], "compares text_only, image_only"),
        (["--variants", "fine"], "has finetune"),
    ):
        with pytest.raises(SystemExit):
            quality.parse_args(argv)
        assert said in capsys.readouterr().err


def test_dry_run_writes_the_sweep_files_and_prints_the_commands(quality, tmp_path, capsys):
    quality.main(["--dry-run", "--work", str(tmp_path), "--heads", "concat,text_only", "--datasets", "multioff"])
    out = capsys.readouterr().out
    assert f"mmfuse sweep {tmp_path / 'multioff.yaml'} --out {tmp_path / 'sweeps'}" in out
    from mmfuse.sweep import load_sweep

    sweep = load_sweep(tmp_path / "multioff.yaml")
    assert list(sweep.heads) == ["text_only", "concat"]


def test_fusion_beats_unimodal_shows_the_smallest_margin(quality):
    def row(acc, f1, val=0.5):
        return {"test_mean": {"accuracy": acc, "macro_f1": f1}, "val_mean": {"macro_f1": val, "accuracy": val}}

    rows = {"text_only": row(0.78, 0.75), "image_only": row(0.60, 0.58)}
    fusion = {"concat": row(0.80, 0.7501), "align": row(0.81, 0.77), "cross": row(0.79, 0.76)}
    fusion |= {"cross_attention": row(0.79, 0.76), "early_fusion": row(0.785, 0.76)}
    targets = quality.check_targets(quality.DATASETS["mvsa_single"], {**rows, **fusion}, {}, None)
    beats = {t["target"]: t for t in targets if t.get("scope") == "frozen encoders"}
    f1 = beats["every fusion head beats the best unimodal head (macro_f1)"]
    assert f1["met"] and f1["closest"] == (pytest.approx(0.0001), "concat")
    assert "smallest margin: `concat`, +0.01 points" in quality.target_line("mvsa_single", f1)
    rows["text_only"] = row(0.795, 0.75)  # now concat (0.80) beats it but early_fusion (0.785) does not
    acc = next(t for t in quality.check_targets(quality.DATASETS["mvsa_single"], {**rows, **fusion}, {}, None)
               if t["target"].endswith("(accuracy)") and t["scope"] == "frozen encoders")  # fmt: skip
    assert not acc["met"] and acc["not_beating"] == ["cross", "cross_attention", "early_fusion"]
    assert "smallest margin" not in quality.target_line("mvsa_single", acc)
