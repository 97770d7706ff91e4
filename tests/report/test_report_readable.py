"""What makes a report readable, piece by piece: durations as people say them, charts as SVG whose labels stay
(escaped) text at a legible size, parameter importance only from enough trials (with the count), the base config's
values in the ranked table, and the unimodal baselines beside a run's metrics when its sweep or demo trained them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from mmfuse.report import html as H
from mmfuse.report import plots, write_report
from mmfuse.report.baselines import NONE_FOUND, find_baselines
from mmfuse.report.build import MIN_IMPORTANCE_TRIALS, _ranked_rows, parameter_importance
from mmfuse.sweep.study import A_BASELINE, A_OVERRIDES, A_RESULT, A_RUN_DIR
from mmfuse.sweep.table import trials_frame


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (float("nan"), ""), (0, "0 s"), (0.004, "< 0.1 s"), (0.4, "0.4 s"), (2.4321, "2.4 s"),
     (9.96, "10 s"), (42.4, "42 s"), (59.6, "1 min"), (192.3, "3 min 12 s"), (3599.6, "1 h"), (7530, "2 h 6 min")],
)  # fmt: skip
def test_durations_read_as_people_say_them(seconds, text):
    assert H.duration(seconds) == text


def test_no_duration_shows_milliseconds():
    for seconds in np.linspace(0.05, 5000, 997):
        assert not re.search(r"\d\.\d\d", H.duration(float(seconds))), seconds


def test_charts_are_svg_with_escaped_text_labels_of_at_least_9_points(tmp_path):
    hostile = '<script>alert("x")</script>'
    fig = plots.confusion_plot([[5, 1], [2, 3]], [hostile, "b & c"])
    path = plots.save_svg(fig, tmp_path / "cm.svg")
    markup = H.svg_figure(path, hostile)
    assert markup.startswith("<figure><svg ") and "<?xml" not in markup and "<metadata>" not in markup
    assert "<script" not in markup and "&lt;script&gt;" in markup  # the class name and the caption, escaped
    sizes = [float(s) for s in re.findall(r"<text[^>]*font-size: ([\d.]+)px", markup)]
    assert len(sizes) >= 8 and min(sizes) >= plots.SMALL  # points: 12 px at the figure's own size
    width = float(re.search(r'<svg [^>]*width="([\d.]+)pt"', markup).group(1)) / 72
    assert width <= plots.MAX_WIDTH


def _study(n: int, baselines: int = 1) -> optuna.Study:
    """``n`` complete sweep trials over lr and dropout (values made up), and ``baselines`` trials without params."""
    study = optuna.create_study(direction="maximize")
    rng = np.random.default_rng(0)
    lrs, drops = [1e-3, 3e-4, 1e-4], [0.0, 0.3]
    dists = {"lr": CategoricalDistribution(lrs), "dropout": CategoricalDistribution(drops)}
    for i in range(n):
        params = {"lr": lrs[i % 3], "dropout": drops[i % 2]}
        value = 0.5 + 0.1 * (i % 3) + 0.01 * rng.random()
        study.add_trial(optuna.trial.create_trial(value=value, params=params, distributions=dists))
    for _ in range(baselines):
        study.add_trial(optuna.trial.create_trial(value=0.4, user_attrs={A_BASELINE: "text_only"}))
    return study


def test_parameter_importance_needs_enough_trials_and_says_how_many():
    few = MIN_IMPORTANCE_TRIALS - 1
    values, n, note = parameter_importance(_study(few, baselines=3))
    assert values is None and n == few  # the baselines are not counted
    assert f"{few} complete trials" in note and f"at least {MIN_IMPORTANCE_TRIALS}" in note
    values, n, note = parameter_importance(_study(MIN_IMPORTANCE_TRIALS + 2))
    assert n == MIN_IMPORTANCE_TRIALS + 2 and note == ""
    assert set(values) == {"lr", "dropout"} and values["lr"] > values["dropout"]  # lr drives the made-up values


def test_the_ranked_table_fills_the_base_config_row_and_rounds_training_time():
    study = optuna.create_study(direction="maximize")
    for i, overrides in enumerate([{}, {"lr": 1e-4}, {"model.head.name": "text_only"}]):
        attrs = {A_OVERRIDES: overrides, A_RESULT: {"best_epoch": 1, "epochs_run": 2, "seconds": 75.123 * (i + 1)},
                 A_RUN_DIR: f"trials/trial-{i:04d}"}  # fmt: skip
        if i == 2:
            attrs[A_BASELINE] = "text_only"
        study.add_trial(optuna.trial.create_trial(value=0.5 + i / 10, user_attrs=attrs))
    frame = trials_frame(study, "accuracy", ["lr", "head.params.dropout"])
    info = {"keys": ["lr", "head.params.dropout"], "base": {"optim": {"lr": 0.001}, "model": {"head": {"params": {}}}}}
    header, rows, _, line = _ranked_rows(frame, info, study)
    cells = {row[header.index("trial")]: row for row in rows}
    lr, dropout, time = header.index("lr"), header.index("head.params.dropout"), header.index("train time")
    assert cells["0"][lr] == "0.001 (base)" and cells["0"][dropout] == "default (base)"  # trials.csv leaves it blank
    assert cells["1"][lr] == "0.0001" and cells["2"][lr] == "0.001 (base)"
    assert [cells[t][time] for t in "012"] == ["1 min 15 s", "2 min 30 s", "3 min 45 s"]
    assert "lr 0.001" in line and "head.params.dropout not set (the default)" in line


# ---------------------------------------------------------------------------------------- baselines beside a run


def _trial(sweep: Path, baseline: str | None) -> Path:
    """The run folder of the sweep's trial that is ``baseline`` (or, for ``None``, a sweep trial)."""
    from mmfuse.config import load_config

    for config in sorted((sweep / "trials").glob("trial-*/config.yaml")):
        head = load_config(config).model.head.name
        if (head == baseline) or (baseline is None and head not in ("text_only", "image_only")):
            return config.parent
    raise AssertionError(f"no trial {baseline} in {sweep}")


def test_find_baselines_in_a_sweep_and_a_demo_and_nowhere_else(small_sweep, binary_run, tmp_path):
    found = find_baselines(_trial(small_sweep, None))
    assert found is not None and set(found.runs) == {"text_only", "image_only"} and found.missing == []
    assert found.runs["text_only"] == _trial(small_sweep, "text_only").resolve()
    alone = find_baselines(_trial(small_sweep, "text_only"))  # a baseline is not its own baseline
    assert set(alone.runs) == {"image_only"}
    assert find_baselines(small_sweep / "ensemble").runs.keys() == {"text_only", "image_only"}
    assert find_baselines(binary_run) is None
    demo = _demo(small_sweep, binary_run, tmp_path)
    found = find_baselines(demo / "runs" / "cross_attention")
    assert set(found.runs) == {"text_only", "image_only"} and "demo" in found.where
    shutil.rmtree(demo / "runs" / "image_only")
    found = find_baselines(demo / "runs" / "cross_attention")
    assert set(found.runs) == {"text_only"} and "image_only" in found.missing[0]


def _demo(small_sweep: Path, binary_run: Path, tmp_path: Path) -> Path:
    """A folder laid out as `mmfuse demo` writes it, from runs trained on the same data."""
    demo = tmp_path / "demo"
    (demo / "runs").mkdir(parents=True)
    (demo / "results.json").write_text(json.dumps([]))
    shutil.copytree(binary_run, demo / "runs" / "cross_attention")
    for head in ("text_only", "image_only"):
        shutil.copytree(_trial(small_sweep, head), demo / "runs" / head)
    return demo


def _metrics_table(page: str) -> str:
    """The first table of the run's evaluation section (the metrics beside the baselines)."""
    section = page.split('id="evaluation"', 1)[1]
    return section.split("</table>", 1)[0]


def test_a_runs_report_shows_its_demos_unimodal_baselines_beside_its_metrics(small_sweep, binary_run, tmp_path):
    from mmfuse.data.inputs import split_examples
    from mmfuse.engine.classifier import MultimodalClassifier

    demo = _demo(small_sweep, binary_run, tmp_path)
    page = write_report(demo / "runs" / "cross_attention", tmp_path / "r", per_group=1, log=lambda _: None).read_text()
    table = _metrics_table(page)
    header = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert header[:1] == ["metric"] and {"model", "text_only", "image_only", "majority baseline"} <= set(header)
    assert header.index("text_only") < header.index("majority baseline")
    assert "the unimodal baselines of `mmfuse demo` in" in page and "same 12 val examples" in page
    # the text_only column is that run's own predictions on the same examples
    from mmfuse.engine.metrics import classification_metrics

    clf = MultimodalClassifier.load(demo / "runs" / "text_only")
    val = split_examples("val", clf.config.data).examples
    y = np.array([clf.classes.index(e.label) for e in val])
    expected = classification_metrics(y, clf.predict_proba(val), clf.classes)
    auroc_row = re.search(r"<td>auroc</td>(.*?)</tr>", table).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", auroc_row)
    assert cells[header.index("text_only") - 1] == H.fmt(expected["auroc"])


def test_a_run_without_baselines_says_so_in_one_line(binary_run, tmp_path):
    page = write_report(binary_run, tmp_path / "r", per_group=1, log=lambda _: None).read_text()
    assert H.esc(NONE_FOUND) in page and "text_only" not in _metrics_table(page)


def test_a_sweep_trials_report_shows_the_sweeps_baselines(small_sweep, tmp_path):
    page = write_report(small_sweep, tmp_path / "s", per_group=1, log=lambda _: None).read_text()
    selected = page.split('id="trial-evaluation"', 1)[1].split("</table>", 1)[0]
    assert '<th class="num">text_only</th>' in selected and '<th class="num">image_only</th>' in selected
    assert "the unimodal baselines of sweep &#x27;report&#x27; (trials" in page
    assert "Parameter importance not shown: 4 complete trials" in page  # a 2 x 2 grid: too few for fANOVA
    assert re.search(r"<td class=\"num\">\d+\.\d s</td>", page)  # training time rounded, in seconds
