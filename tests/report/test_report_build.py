"""Reports of a run, a sweep and an ensemble: every section and figure is there, images are embedded, user text is
escaped."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.report import ReportError, folder_kind, write_report

IMG = re.compile(r'<img src="([^"]*)"')


def _images(page: str) -> list[bytes]:
    """Every image of the page, decoded; each must be an embedded PNG."""
    out = []
    for src in IMG.findall(page):
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(base64.b64decode(src.split(",", 1)[1]))
    return out


@pytest.fixture(scope="module")
def binary_report(binary_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    lines: list[str] = []
    path = write_report(binary_run, tmp_path_factory.mktemp("report") / "binary", log=lines.append)
    assert any("predicting 12 val examples" in line for line in lines)
    return path, path.read_text(encoding="utf-8")


def test_run_report_has_every_section_and_figure(binary_report):
    path, page = binary_report
    out = path.parent
    for name in ("learning_curves", "roc", "confusion_matrix", "calibration", "data_preview"):
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    for anchor in ("overview", "data", "curves", "evaluation", "gallery"):
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page
    gallery = sorted(p.name for p in (out / "gallery").glob("*.png"))
    assert {"best_1.png", "uncertain_1.png"} <= set(gallery) and len(gallery) <= 12
    images = _images(page)
    assert len(images) == len(gallery)  # the cards; the charts are inline SVG:
    assert page.count("<figure><svg ") == 6  # five charts (calibration before and after) and the data preview
    assert all(data[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert "Most confidently right" in page and "Most uncertain" in page
    assert "majority baseline" in page and "Reliability diagram" in page
    assert "image reliance" in page and "attention peak" in page  # cross-attention has both


def test_run_report_shows_calibration_before_and_after(binary_report, binary_run):
    """The run is calibrated (train.calibrate defaults to temperature): its report has both reliability diagrams and
    the ECE and Brier score of both, computed from the same validation predictions."""
    import json

    import numpy as np

    from mmfuse.data.inputs import split_examples
    from mmfuse.engine.calibration import uncalibrated
    from mmfuse.engine.classifier import MultimodalClassifier
    from mmfuse.engine.metrics import brier_score, expected_calibration_error
    from mmfuse.report import html as H

    path, page = binary_report
    clf = MultimodalClassifier.load(binary_run)
    t = clf.temperature
    assert t is not None and json.loads((binary_run / "summary.json").read_text())["calibration"]["temperature"] == t
    assert (path.parent / "calibration_before.svg").is_file()
    assert "Reliability diagram before calibration" in page
    assert f"Reliability diagram after (temperature {t:.3f})" in page
    val = split_examples("val", clf.config.data).examples
    proba = clf.predict_proba(val)
    y = np.array([clf.classes.index(e.label) for e in val])
    for value in (expected_calibration_error(y, uncalibrated(proba, t)), expected_calibration_error(y, proba),
                  brier_score(y, proba)):  # fmt: skip
        assert H.fmt(value) in page


def test_run_report_escapes_user_text(binary_report, hostile):
    _, page = binary_report
    assert "<script" not in page.lower()  # the report itself has no scripts, and no caption becomes one
    assert "onerror=" not in page.replace("onerror=&quot;", "")
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;window.__pwned = 2&quot;&gt; &amp; &quot;quotes&quot;" in page


def test_multiclass_report_draws_precision_recall_instead_of_roc(three_class_run, tmp_path):
    path = write_report(three_class_run, tmp_path / "r", per_group=2, log=lambda _: None)
    page = path.read_text()
    assert (tmp_path / "r" / "precision_recall.svg").is_file() and not (tmp_path / "r" / "roc.svg").exists()
    assert "attention peak" not in page  # concat has no attention
    assert len(list((tmp_path / "r" / "gallery").glob("*.png"))) <= 6
    assert "classes a, b, c" in page


def test_sweep_report_has_trials_chart_table_and_the_selected_run(small_sweep, tmp_path):
    path = write_report(small_sweep, tmp_path / "s", log=lambda _: None)
    page = path.read_text()
    out = tmp_path / "s"
    assert (out / "trials.svg").is_file()
    assert not (out / "param_importance.svg").exists() and "Parameter importance not shown: 4 complete trials" in page
    assert 'id="trials"' in page and 'id="table"' in page
    assert page.count('<tr class="hl">') == 1  # the selected trial, highlighted in the ranked table
    assert 'id="trial-overview"' in page and 'id="trial-gallery"' in page  # its own run report, below
    assert "measured for the selected trial only" in page
    assert "dotted: the unimodal baselines" in page and "<td>text_only</td>" in page and "<td>image_only</td>" in page
    _images(page)
    assert (out / "learning_curves.svg").is_file()


def test_ensemble_report_lists_members_and_evaluates_the_ensemble(small_sweep, tmp_path):
    path = write_report(small_sweep / "ensemble", tmp_path / "e", per_group=2, log=lambda _: None)
    page = path.read_text()
    assert "Ensemble of" in page and "weight" in page and "../trials/trial-" in page
    assert (tmp_path / "e" / "roc.svg").is_file() and 'id="gallery"' in page
    _images(page)


def test_folder_kind_and_errors(binary_run, small_sweep, tmp_path):
    assert folder_kind(binary_run) == "run"
    assert folder_kind(small_sweep) == "sweep"
    assert folder_kind(small_sweep / "ensemble") == "ensemble"
    with pytest.raises(ReportError, match="neither a run folder"):
        folder_kind(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        write_report(tmp_path / "missing")


def test_cli_report(binary_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(binary_run), "--out", str(tmp_path / "cli"), "--examples", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "report.html").is_file() and "wrote" in result.output
    assert len(list((tmp_path / "cli" / "gallery").glob("*.png"))) <= 3
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "neither a run folder" in result.output
