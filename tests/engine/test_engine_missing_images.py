"""Missing images at predict / evaluate time are counted and named (stderr, log, warnings, an ``image_present``
column), and past the allowed share (``--max-missing-images``, ``data.max_missing_images``) an error that says
what was looked for where, through the real CLI and the Python API."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
from _engine_support import make_config
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.data.missing_images import MissingImagesWarning, TooManyMissingImagesError
from mmfuse.engine.classifier import MultimodalClassifier


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """A run trained (1 epoch, fake encoders) on the synthetic data; its folder."""
    from _engine_support import build_fake_image, build_fake_text

    import mmfuse.encoders

    out = tmp_path_factory.mktemp("missing_images_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmfuse.encoders, "build_text_encoder", build_fake_text, raising=False)
        mp.setattr(mmfuse.encoders, "build_image_encoder", build_fake_image, raising=False)
        MultimodalClassifier(make_config(synthetic_root, out, train={"epochs": 1})).fit()
    return out / "run"


@pytest.fixture
def clf(run: Path, fake_encoders) -> MultimodalClassifier:
    return MultimodalClassifier.load(run)


def rows_of(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]


def copy_with_images(synthetic_root: Path, folder: Path, drop: int) -> tuple[Path, list[str]]:
    """test.jsonl and its images copied to ``folder``, less the images of the first ``drop`` rows."""
    rows = rows_of(synthetic_root)
    (folder / "img").mkdir(parents=True)
    for r in rows[drop:]:
        shutil.copy(synthetic_root / r["img"], folder / r["img"])
    shutil.copy(synthetic_root / "test.jsonl", folder / "test.jsonl")
    return folder / "test.jsonl", [str(r["id"]) for r in rows[:drop]]


def test_predict_on_a_moved_file_stops_and_says_where_it_looked(
    run: Path, fake_encoders, synthetic_root: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(synthetic_root / "test.jsonl", moved / "test.jsonl")  # the images stay behind
    n = len(rows_of(synthetic_root))
    preds = tmp_path / "preds.csv"

    result = invoke("predict", run, moved / "test.jsonl", "--out", preds)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert f"{n} of {n} examples of" in message and "file not found" in message
    assert "img/" in message and repr(str(moved.resolve())) in message  # what was looked for, and where
    assert "column 'img' (columns.image)" in message
    assert "--max-missing-images" in message and "data.max_missing_images" in message
    assert not preds.exists()

    result = invoke("predict", run, moved / "test.jsonl", "--out", preds, "--max-missing-images", "1")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and f"{n} of {n} examples" in result.stderr
    assert f"({n} from a blank image" in result.stderr
    frame = pd.read_csv(preds)
    assert list(frame.columns) == ["id", "proba", "label", "image_present"]
    assert not frame["image_present"].any()


def test_predict_with_some_images_missing_warns_and_flags_them(
    run: Path, fake_encoders, synthetic_root: Path, tmp_path: Path
) -> None:
    data, missing = copy_with_images(synthetic_root, tmp_path / "copy", drop=2)
    corrupt = rows_of(synthetic_root)[2]
    (data.parent / corrupt["img"]).write_bytes(b"not a png at all")  # present but unreadable
    preds = tmp_path / "preds.csv"
    result = invoke("predict", run, data, "--out", preds)
    assert result.exit_code == 0, result.output
    n = len(rows_of(synthetic_root))
    warning = " ".join(result.stderr.split())
    assert f"warning: predict: 3 of {n} examples" in warning
    for example_id in missing:
        assert f"id {example_id}: file not found" in warning
    assert f"id {corrupt['id']}: not an image" in warning
    frame = pd.read_csv(preds, dtype={"id": str})
    assert sorted(frame.loc[~frame["image_present"], "id"]) == sorted([*missing, str(corrupt["id"])])

    # the limit is a share: 3 of 12 is more than 20%
    result = invoke("predict", run, data, "--out", preds, "--max-missing-images", "0.2")
    assert result.exit_code == 2 and "more than allowed (at most 20%)" in " ".join(result.stderr.split())


def test_evaluate_refuses_any_missing_image_by_default(
    run: Path, fake_encoders, synthetic_root: Path, tmp_path: Path
) -> None:
    data, missing = copy_with_images(synthetic_root, tmp_path / "copy", drop=1)
    result = invoke("evaluate", run, "--data", data)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "evaluate: 1 of" in message and f"id {missing[0]}: file not found" in message
    assert "more than allowed (none)" in message

    out_json = tmp_path / "eval.json"
    result = invoke("evaluate", run, "--data", data, "--max-missing-images", "0.5", "--json", out_json)
    assert result.exit_code == 0, result.output
    assert "warning: evaluate: 1 of" in " ".join(result.stderr.split())
    assert json.loads(out_json.read_text())["missing_images"] == {
        "predicted_blank": 1, "dropped": 0, "of": len(rows_of(synthetic_root)), "first_ids": missing,
    }  # fmt: skip


def test_max_missing_images_is_checked(run: Path, fake_encoders, synthetic_root: Path, tmp_path: Path) -> None:
    result = invoke("predict", run, synthetic_root / "test.jsonl", "--out", tmp_path / "p.csv",
                    "--max-missing-images", "2")  # fmt: skip
    assert result.exit_code == 2 and "max_missing_images must be a share in [0, 1]" in result.stderr
    result = invoke("predict", "--help")
    assert "--max-missing-images" in result.stdout


def test_api_warns_and_counts(clf: MultimodalClassifier, synthetic_splits: dict, caplog, tmp_path: Path) -> None:
    examples = synthetic_splits["test"].examples
    gone = [dataclasses.replace(examples[0], image=tmp_path / "gone.png"), *examples[1:]]

    with caplog.at_level(logging.WARNING, logger="mmfuse"), pytest.warns(MissingImagesWarning) as caught:
        clf.predict_proba(gone)
    message = str(caught[0].message)
    assert f"1 of {len(examples)} examples" in message and f"id {examples[0].id}: file not found" in message
    assert str(tmp_path / "gone.png") in message
    assert any("file not found" in r.getMessage() for r in caplog.records)

    with pytest.warns(MissingImagesWarning):
        details = clf.predict_details(gone)
    assert [d.image_present for d in details] == [False] + [True] * (len(examples) - 1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing: no warning
        clf.predict_proba(examples)

    with pytest.raises(TooManyMissingImagesError, match="more than allowed"):
        clf.predict_proba(gone, max_missing_images=0.0)
    with pytest.raises(TooManyMissingImagesError, match="max_missing_images="):
        clf.evaluate(gone)
    with pytest.warns(MissingImagesWarning):
        result = clf.evaluate(gone, max_missing_images=0.1)
    assert result["missing_images"]["predicted_blank"] == 1


def test_config_setting_sets_the_default(clf: MultimodalClassifier, synthetic_splits: dict, tmp_path: Path) -> None:
    examples = synthetic_splits["test"].examples
    gone = [dataclasses.replace(examples[0], image=tmp_path / "gone.png"), *examples[1:]]
    assert clf.config.data is not None
    clf.config = clf.config.model_copy(update={"data": clf.config.data.model_copy(update={"max_missing_images": 0.5})})
    with pytest.warns(MissingImagesWarning):
        assert clf.evaluate(gone)["missing_images"]["predicted_blank"] == 1


def test_report_says_which_examples_it_evaluated_from_a_blank_image(
    fake_encoders, synthetic_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    val = [json.loads(line) for line in (root / "dev.jsonl").read_text().splitlines()]
    (root / val[0]["img"]).unlink()
    cfg = tmp_path / "cfg.yaml"
    config = make_config(root, tmp_path / "runs", data={"on_missing_image": "blank"}, train={"epochs": 1})
    cfg.write_text(config.to_yaml(), encoding="utf-8")
    result = invoke("train", cfg)
    assert result.exit_code == 0, result.output
    assert f"val: 1 of {len(val)} examples kept with a blank image" in " ".join(result.stderr.split())

    with pytest.warns(MissingImagesWarning, match="1 of"):
        result = invoke("report", tmp_path / "runs" / "run", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert f"1 of {len(val)} examples were predicted from a blank image" in page and f"ids {val[0]['id']}" in page


def test_ensemble_counts_missing_images_once(clf: MultimodalClassifier, synthetic_root: Path, tmp_path: Path) -> None:
    from mmfuse.sweep.ensemble import Ensemble

    data, missing = copy_with_images(synthetic_root, tmp_path / "copy", drop=2)
    ensemble = Ensemble([clf, clf], [0.5, 0.5])
    with pytest.warns(MissingImagesWarning) as caught:
        table = ensemble.predictions_table(data)
    assert len([w for w in caught if issubclass(w.category, MissingImagesWarning)]) == 1  # not once per member
    assert sorted(table.loc[~table["image_present"], "id"]) == sorted(missing)
    with pytest.raises(TooManyMissingImagesError, match="evaluate: 2 of"):
        ensemble.evaluate(data)
    with pytest.warns(MissingImagesWarning):
        assert ensemble.evaluate(data, max_missing_images=0.5)["missing_images"]["predicted_blank"] == 2
