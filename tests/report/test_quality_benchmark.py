"""benchmarks/quality.py's sweeps: the options and the sweep files make one valid sweep per head, with the encoders
it reads and the variants it is named for (the selection itself is the sweep's, tested in tests/sweep)."""

from __future__ import annotations

import importlib.util
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


def sweep_of(quality, head, *argv, dataset="mvsa_single"):
    return quality.head_sweep(dataset, head, quality.parse_args(list(argv)))


def test_options_left_out_take_the_sweep_files_values(quality):
    args = quality.parse_args([])
    data = quality.read_sweep_file("mvsa_single")
    assert args.lr == data["grid"]["lr"] and args.class_weights == data["grid"]["train.class_weights"]
    assert args.seeds == len(data["seeds"]) and args.epochs == data["base"]["train"]["epochs"]
    assert args.finetune_encoder_lr == data["variants"]["finetune"]["grid"]["optim.encoder_lr"]
    assert quality.read_sweep_file("multioff")["grid"] == data["grid"]  # one grid described in the report
    given = quality.parse_args(["--lr", "0.01", "--seeds", "2"])
    sweep = quality.head_sweep("mvsa_single", "concat", given)
    assert sweep["grid"]["lr"] == [0.01] and sweep["seeds"] == [0, 1]


def test_each_head_reads_only_its_encoders_and_runs_the_variants_it_is_named_for(quality):
    argv = ["--finetune-heads", "text_only,concat", "--encoder-heads", "text_only", "--ablate-heads", "multioff:concat"]
    text = sweep_of(quality, "text_only", *argv)
    assert text["base"]["model"]["image_encoder"] is None and text["base"]["model"]["head"]["name"] == "text_only"
    assert set(text["variants"]) == {"finetune", "encoders"}
    assert text["variants"]["encoders"]["overrides"] == {"model.text_encoder.name": "mpnet"}  # no image to swap
    concat = sweep_of(quality, "concat", *argv)
    assert set(concat["variants"]) == {"finetune"}  # the ablation was named for MultiOFF only
    assert set(sweep_of(quality, "concat", *argv, dataset="multioff")["variants"]) == {"finetune", "label_smoothing"}
    image = sweep_of(quality, "image_only")
    assert image["base"]["model"]["text_encoder"] is None and image["variants"] == {}


@pytest.mark.parametrize(("small", "lrs"), [("concat", [2e-5]), ("mvsa_single:concat", [2e-5]),
                                            ("multioff:concat", [2e-5, 5e-5, 1e-4])])  # fmt: skip
def test_small_grid_heads_fine_tune_with_the_first_encoder_lr_only(quality, small, lrs):
    argv = ["--finetune-heads", "concat", "--finetune-encoder-lr", "2e-5,5e-5,1e-4", "--finetune-seeds", "2"]
    sweep = sweep_of(quality, "concat", *argv, "--finetune-small-grid-heads", small)
    finetune = sweep["variants"]["finetune"]
    assert finetune["grid"] == {"optim.encoder_lr": lrs} and finetune["seeds"] == [0, 1]
    assert finetune["overrides"]["model.text_encoder.freeze"] is False


def test_every_head_and_variant_gives_a_valid_sweep(quality, tmp_path):
    from mmfuse.sweep import sweep_from_dict

    every = ",".join(quality.ALL_HEADS)
    argv = ["--root", str(tmp_path), "--finetune-heads", every, "--ablate-heads", every, "--encoder-heads", every,
            "--modality-dropout-heads", "concat,align,cross,cross_attention,early_fusion", "--limit", "48"]  # fmt: skip
    for dataset in quality.DATASETS:
        (tmp_path / dataset).mkdir()
        for head in quality.ALL_HEADS:
            sweep = sweep_from_dict(sweep_of(quality, head, *argv, dataset=dataset))
            assert sweep.name == f"{dataset}-{head}" and sweep.spec.limit == {"train": 48, "val": 24, "test": 24}
            assert sweep.base.train.selection_metric == quality.DATASETS[dataset].select
            small = head in quality.parse_args([]).small_grid_heads
            assert len(sweep.points) == (1 if small else 4)


def test_the_command_line_reads_the_finetune_options_and_checks_head_names(quality):
    args = quality.parse_args(
        ["--finetune-small-grid-heads", "multioff:early_fusion", "--finetune-encoder-lr", "2e-5,5e-5"]
    )
    assert args.finetune_small_grid_heads == ["multioff:early_fusion"]
    assert args.finetune_encoder_lr == [2e-5, 5e-5]
    with pytest.raises(ValueError, match="unknown fusion head 'nope'"):
        quality.parse_args(["--finetune-small-grid-heads", "nope"])


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
