"""``write_report``: one self-contained HTML page (and its figures as files) for a run, a sweep or an ensemble folder.

A run's report: overview and config; a preview of the training data; learning curves; on the validation split
(or another), metrics beside the baselines (majority class, random, and the unimodal ``text_only`` / ``image_only``
runs when the run's sweep or demo trained them: :mod:`mmfuse.report.baselines`), ROC (binary) or per-class
precision-recall, confusion matrix and calibration; a gallery of the best, worst and most uncertain examples with
image, text, true and predicted label, probability, and for heads that have them the attention over image regions as
a heatmap and the image reliance. A sweep's report adds the trials chart, the parameter importances (with enough
trials) and the ranked table, then the selected trial's run report. An ensemble's report shows its members and the
evaluation of the ensemble.

Charts are inline SVG drawn for a 1280-pixel wide window at 100% zoom (:mod:`mmfuse.report.plots`); durations read
as people say them (``3 min 12 s``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmfuse.report import html as H
from mmfuse.report import plots

logger = logging.getLogger("mmfuse.report")

Section = tuple[str, str, str]  # anchor, navigation title, markup

TEXT_CHARS = 600
"""Characters of an example's text shown on its card."""

MIN_IMPORTANCE_TRIALS = 10
"""Complete trials below which parameter importances are not shown: fANOVA fits a random forest to the trials, and
from a handful of them it splits the variance between the settings by chance (a 2 x 2 grid gives one setting 0.98)."""


class ReportError(ValueError):
    """A folder that a report cannot be made of; the message says what was expected."""


@dataclass
class Evaluation:
    """A predictor's outputs on one labeled split.

    Attributes:
        split: the split's name.
        examples: the examples, in order.
        y: true class ids ``(N,)``.
        proba: ``(N, C)`` probabilities.
        classes: class names.
        attention: per example the ``(h, w)`` attention grid over image regions (heads that have it).
        reliance: ``(N,)`` image reliance (heads that have it).
        threshold: binary decision threshold tuned on validation.
        temperature: the model's calibration temperature (``proba`` is calibrated by it), ``None`` when uncalibrated.
        calibration_note: what training said about the fit (no temperature, or one clamped), from ``summary.json``.
        missing_images: examples predicted from a blank image because theirs was missing or unreadable.
        explain: ``(examples, ids) -> explanations`` of the model (:meth:`MultimodalClassifier.explain`), for the
            gallery's panels; ``None``: no explanations (an ensemble).
    """

    split: str
    examples: list[Any]
    y: np.ndarray
    proba: np.ndarray
    classes: list[str]
    attention: list[np.ndarray] | None = None
    reliance: np.ndarray | None = None
    threshold: float | None = None
    missing_images: list[str] | None = None
    temperature: float | None = None
    calibration_note: str | None = None
    explain: Callable[[list[Any], list[str]], list[Any]] | None = None


def write_report(
    target: str | Path,
    out: str | Path | None = None,
    *,
    split: str = "val",
    per_group: int = 4,
    storage: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Writes ``report.html`` (charts and images embedded) and its figures (SVG, PNG) for a run, sweep or ensemble
    folder.

    Args:
        target: a run folder (``mmfuse train``), a sweep folder (``mmfuse sweep``) or an ensemble folder
            (``mmfuse ensemble``).
        out: output folder (default ``<target>/report``).
        split: the split evaluated and shown in the gallery (``val`` by default: the test split stays unseen).
        per_group: gallery examples per group (best, worst, most uncertain).
        storage: a sweep's storage URL when it is not the sweep folder's own.
        log: called with progress lines.

    A run folder that logged to MLflow while training (``train.report_to``) gets the page added to that MLflow run
    (``report/report.html``); ``log`` says so, or why it could not be.

    Returns:
        The HTML file.

    Raises:
        ReportError: not a run, sweep or ensemble folder.
        FileNotFoundError: ``target`` does not exist.
    """
    target = Path(target)
    if not target.exists():
        raise FileNotFoundError(f"{str(target)!r} not found; pass a run, sweep or ensemble folder")
    out = Path(out) if out is not None else target / "report"
    out.mkdir(parents=True, exist_ok=True)
    say = log or logger.info
    kind = folder_kind(target)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no weight-loading bars for each model the report loads
    try:
        if kind == "sweep":
            title, subtitle, sections = _sweep_report(target, out, split, per_group, storage, say)
        elif kind == "ensemble":
            title, subtitle, sections = _ensemble_report(target, out, split, per_group, say)
        else:
            title, subtitle, sections = _run_report(target, out, split, per_group, say)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    from mmfuse import __version__

    path = out / "report.html"
    footer = f"mmfuse {__version__} report of {target.resolve()}"
    path.write_text(H.page(title, subtitle, sections, footer), encoding="utf-8")
    if kind == "run":  # a run that logged to MLflow gets its report there too
        from mmfuse.config import load_config
        from mmfuse.engine.tracking import log_to_training_run

        line = log_to_training_run(target, load_config(target / "config.yaml"), [path])
        if line:
            say(line)
    return path


def folder_kind(path: Path) -> str:
    """``sweep``, ``ensemble`` or ``run``.

    Raises:
        ReportError: none of them.
    """
    if (path / "sweep.json").is_file():
        return "sweep"
    if (path / "ensemble.json").is_file():
        return "ensemble"
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        return "run"
    raise ReportError(
        f"{str(path)!r} is neither a run folder (config.yaml and checkpoints/), a sweep folder (sweep.json) nor an "
        "ensemble folder (ensemble.json); pass a folder that `mmfuse train`, `mmfuse sweep` or `mmfuse ensemble` wrote"
    )


# ------------------------------------------------------------------------------------------------------ run


def _run_report(run: Path, out: Path, split: str, per_group: int, say: Callable[[str], None]):
    from mmfuse.engine.classifier import MultimodalClassifier

    clf = MultimodalClassifier.load(run)
    summary = clf.summary
    title = f"Run {run.resolve().name}"
    status = summary.get("status", "unknown")
    subtitle = [f"{clf.config.model.head.name} head · classes {', '.join(clf.classes)} · status {status}"]
    return title, subtitle, run_sections(clf, run, out, split, per_group, say)


def run_sections(clf: Any, run: Path, out: Path, split: str, per_group: int, say: Callable[[str], None],
                 prefix: str = "") -> list[Section]:  # fmt: skip
    """The sections of one run's report (``prefix`` names them inside a sweep report)."""
    from mmfuse.engine.run_dir import RunDir

    history = RunDir(run).history()
    metric = clf.summary.get("selection_metric") or _metric_of(clf)
    sections = [_overview(clf, metric, prefix)]
    preview = _training_data_notes(clf.summary) + _data_preview(clf.config.data, out, say)
    if preview:
        sections.append(_section("data", prefix + "Data", preview, "What the model was trained on."))
    if history:
        body = _chart(plots.learning_curves(history, metric), out / "learning_curves.svg",
                      "Train and validation loss; validation metrics; dashed: the kept epoch")  # fmt: skip
        sections.append(_section("curves", prefix + "Learning curves", H.charts([body])))
    evaluation = _evaluate(clf, split, say, details=True)
    if isinstance(evaluation, str):
        sections.append(_section("evaluation", prefix + "Evaluation", f'<p class="note">{H.esc(evaluation)}</p>'))
        return sections
    evaluation.threshold = clf.threshold
    evaluation.temperature = getattr(clf, "temperature", None)
    evaluation.calibration_note = (clf.summary.get("calibration") or {}).get("note")
    evaluation.explain = lambda examples, ids: clf.explain(examples, ids, progress=say)
    others = unimodal_columns(run, evaluation, say)
    sections += _evaluation_sections(evaluation, clf.train_class_counts, out, per_group, _crop_of(clf.model), prefix,
                                     others)  # fmt: skip
    return sections


def _chart(fig: Any, path: Path, caption: str) -> str:
    """A chart saved as SVG beside the report and inlined in it."""
    return H.svg_figure(plots.save_svg(fig, path), caption)


def unimodal_columns(folder: Path, ev: Evaluation, say: Callable[[str], None]) -> tuple[list[tuple[str, dict]], str]:
    """The metrics of the unimodal baselines beside ``folder`` (:func:`mmfuse.report.baselines.find_baselines`) on
    the examples of ``ev``, each as a ``(column name, metrics)``, and a line saying where they come from, what could
    not be shown, or that there are none and how to get them.

    Each baseline run is loaded and predicts the same split as the run, so its column is measured as the run's.
    """
    from mmfuse.engine.classifier import MultimodalClassifier
    from mmfuse.engine.metrics import classification_metrics
    from mmfuse.report.baselines import NONE_FOUND, find_baselines

    found = find_baselines(folder)
    if found is None:
        return [], NONE_FOUND
    columns: list[tuple[str, dict]] = []
    problems = list(found.missing)
    ids = [e.id for e in ev.examples]
    for head, path in found.runs.items():
        say(f"evaluating the {head} baseline ({path.name})")
        try:
            other = _evaluate(MultimodalClassifier.load(path), ev.split, lambda _: None, details=False)
        except (ValueError, FileNotFoundError, OSError) as e:
            problems.append(f"{head}: its run could not be loaded ({e})")
            continue
        if isinstance(other, str):
            problems.append(f"{head}: {other}")
        elif other.classes != ev.classes or [e.id for e in other.examples] != ids:
            problems.append(f"{head}: its {ev.split} split is not the run's (other examples or classes); not shown")
        else:
            columns.append((head, classification_metrics(other.y, other.proba, other.classes)))
    line = ""
    if columns:
        names = " and ".join(n for n, _ in columns)
        line = (f"{names}: the unimodal baselines of {found.where}, each evaluated on the same {len(ids)} "
                f"{ev.split} examples.")  # fmt: skip
    if problems:
        line += (" " if line else "") + "Not shown: " + "; ".join(problems) + "."
    return columns, line


def _section(anchor: str, title: str, body: str, lead: str = "") -> Section:
    """A section whose anchor is unique in the page (sections of a sweep's selected trial get ``trial-``)."""
    if title.startswith("Trial "):
        anchor = f"trial-{anchor}"
    return anchor, title, H.section(anchor, title, body, lead)


def _metric_of(clf: Any) -> str:
    from mmfuse.engine.metrics import selection_metric

    return selection_metric(clf.config.train.selection_metric, len(clf.classes))


def _overview(clf: Any, metric: str, prefix: str) -> Section:
    cfg, summary = clf.config, clf.summary
    val, test = summary.get("val") or {}, summary.get("test") or {}
    tiles = [(f"val {metric} (best epoch)", val.get(metric)), ("val accuracy", val.get("accuracy"))]
    if test:
        tiles += [(f"test {metric}", test.get(metric)), ("test accuracy", test.get("accuracy"))]
    tiles += [("best epoch", summary.get("best_epoch")), ("epochs run", summary.get("epochs_run")),
              ("training time", H.duration(summary.get("seconds")) or None)]  # fmt: skip
    model = cfg.model
    rows = [
        ("head", model.head.name),
        ("head params", json.dumps(model.head.params) if model.head.params else "(defaults)"),
        ("text encoder", _encoder(model.text_encoder)),
        ("image encoder", _encoder(model.image_encoder)),
        ("optimizer", f"{cfg.optim.name}, lr {cfg.optim.lr:g}, weight decay {cfg.optim.weight_decay:g}, "
                      f"{cfg.optim.schedule} schedule"),
        ("training", f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, seed {cfg.train.seed}, "
                     f"selection by val {metric}"),
        ("classes", ", ".join(clf.classes)),
        ("data", f"{cfg.data.root} ({cfg.data.preset or 'custom'})" if cfg.data else "(examples passed to fit)"),
        ("threshold", f"{clf.threshold:.3f} (binary, tuned on validation)" if clf.threshold is not None else "argmax"),
    ]  # fmt: skip
    body = H.kpis(tiles) + H.table(["setting", "value"], rows, numeric=[False, False])
    return _section("overview", prefix + "Overview", body)


def _encoder(enc: Any) -> str:
    if enc is None:
        return "(none)"
    if enc.lora is not None:
        state = f"frozen, LoRA adapters r={enc.lora.r} trainable"
    elif enc.fully_frozen:
        state = "frozen"
    else:
        state = "trainable" if not enc.freeze else f"top {enc.trainable_top_k} trainable"
    return f"{enc.name} ({state})"


def _training_data_notes(summary: dict[str, Any]) -> str:
    """What training said about its data (``summary.json``): rows and images left out or blanked per split, splits
    not stratified, classes with very few examples."""
    counts, warnings = summary.get("data") or {}, summary.get("warnings") or []
    body = ""
    if warnings:
        items = "".join(f"<li>{H.esc(w)}</li>" for w in warnings)
        body += f'<div class="warn"><b>Training warned about its data</b><ul>{items}</ul></div>'
    if counts:
        kinds = ["bad_rows", "duplicate_ids", "skipped_images", "blank_images"]
        header = ["split", "rows read", "examples used", "bad rows skipped", "duplicate ids (kept)",
                  "images missing: dropped", "images missing: blank"]  # fmt: skip
        rows = [[name, c.get("rows"), c.get("examples"), *(c.get(k, 0) for k in kinds)] for name, c in counts.items()]
        body += H.table(header, rows, numeric=[False, *([True] * 6)])
    return body


def _data_preview(data: Any, out: Path, say: Callable[[str], None]) -> str:
    if data is None:
        return ""
    from mmfuse.data.loading import load_splits
    from mmfuse.data.preview import save_preview

    try:
        splits = load_splits(data, strict=False)
    except (ValueError, FileNotFoundError) as e:
        return f'<p class="note">data could not be read: {H.esc(e)}</p>'
    counts = [(name, len(s.examples), ", ".join(f"{k} {v}" for k, v in s.report.label_counts.items()))
              for name, s in splits.items()]  # fmt: skip
    train = splits.get("train")
    body = H.table(["split", "examples", "labels"], counts, numeric=[False, True, False])
    if train is not None and train.examples:
        say("drawing the data preview")
        svg = save_preview(train.examples, out / "data_preview.svg", n=8, columns=4, seed=0,
                           title=f"train: {len(train.examples)} examples (8 at random)")  # fmt: skip
        caption = "A random sample of training examples: image as on disk, id [label], text"
        body += H.charts([H.svg_figure(svg, caption)])
    return body


def _evaluate(predictor: Any, split: str, say: Callable[[str], None], *, details: bool) -> Evaluation | str:
    """The predictor's outputs on ``split`` of its data, or why there are none."""
    from mmfuse.data.inputs import split_examples

    try:
        examples = split_examples(split, predictor.config.data).examples
    except (ValueError, FileNotFoundError) as e:
        return f"no evaluation: {e}"
    labeled = [e for e in examples if e.label is not None]
    if not labeled:
        return f"no evaluation: the {split} split has no labels"
    classes = list(predictor.classes)
    unknown = sorted({e.label for e in labeled} - set(classes))
    if unknown:
        return f"no evaluation: the {split} split has labels the model does not know: {unknown}"
    say(f"predicting {len(labeled)} {split} examples")
    y = np.array([classes.index(e.label) for e in labeled])
    # a report shows the evaluation whatever is missing, and says what was (the warning goes to the log too)
    if details and hasattr(predictor, "predict_details"):
        preds = predictor.predict_details(labeled, max_missing_images=1.0)
        proba = np.array([[p.proba[c] for c in classes] for p in preds])
        attention = [p.attention for p in preds] if preds and preds[0].attention is not None else None
        reliance = (
            np.array([p.image_reliance for p in preds]) if preds and preds[0].image_reliance is not None else None
        )
        missing = [p.id for p in preds if not p.image_present]
        return Evaluation(split, labeled, y, proba, classes, attention, reliance, missing_images=missing)
    return Evaluation(split, labeled, y, predictor.predict_proba(labeled, max_missing_images=1.0), classes)


def _evaluation_sections(ev: Evaluation, train_counts: Sequence[int] | None, out: Path, per_group: int,
                         crop: float | None, prefix: str,
                         others: tuple[list[tuple[str, dict]], str] = ([], "")) -> list[Section]:  # fmt: skip
    """The evaluation and gallery sections; ``others``: the unimodal baselines' columns and their line
    (:func:`unimodal_columns`)."""
    from mmfuse.engine.metrics import baseline_metrics, classification_metrics

    metrics = classification_metrics(ev.y, ev.proba, ev.classes)
    columns = [("model", metrics)]
    if ev.threshold is not None and len(ev.classes) == 2:
        columns.append(
            (f"model @ {ev.threshold:.3f}", classification_metrics(ev.y, ev.proba, ev.classes, threshold=ev.threshold))
        )
    columns += others[0]
    if train_counts:
        train_y = np.repeat(np.arange(len(ev.classes)), train_counts)
        columns += [(f"{k} baseline", m) for k, m in baseline_metrics(train_y, ev.y, ev.classes).items()]
    keys = ["accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "auroc"]
    body = ""
    if ev.missing_images:
        n, shown = len(ev.missing_images), ", ".join(ev.missing_images[:10])
        more = f" and {n - 10} more" if n > 10 else ""
        body += (f'<div class="warn">{n} of {len(ev.y)} examples were predicted from a blank image (their image is '
                 f"missing or unreadable): ids {H.esc(shown)}{more}. These metrics count them.</div>")  # fmt: skip
    body += H.table(["metric", *(n for n, _ in columns)], [[k, *(m.get(k) for _, m in columns)] for k in keys])
    if others[1]:
        body += f'<p class="note">{H.esc(others[1])}</p>'
    per_class = [[c, r["precision"], r["recall"], r["f1"], r["support"]] for c, r in metrics["per_class"].items()]
    body += H.table(["class", "precision", "recall", "f1", "support"], per_class)
    if len(ev.classes) == 2:
        curve = _chart(plots.roc_curve_plot(ev.y, ev.proba, ev.classes, ev.threshold), out / "roc.svg",
                       "ROC curve of the positive class")  # fmt: skip
    else:
        curve = _chart(plots.pr_curves(ev.y, ev.proba, ev.classes), out / "precision_recall.svg",
                       "Precision-recall per class, one against the rest")  # fmt: skip
    figures = [
        curve,
        _chart(plots.confusion_plot(metrics["confusion_matrix"], ev.classes), out / "confusion_matrix.svg",
               "Confusion matrix (argmax): counts and share of each true class"),
    ]  # fmt: skip
    body += _calibration(ev, out, figures)
    body += H.charts(figures)
    lead = f"{len(ev.y)} labeled {ev.split} examples."
    sections = [_section("evaluation", f"{prefix}Evaluation on {ev.split}", body, lead)]
    gallery = _gallery(ev, out, per_group, crop)
    title = f"{prefix}Examples from {ev.split}"
    lead = "The most confidently right, the most confidently wrong, and the least certain predictions."
    if ev.attention:
        lead += " Heatmap: the text's attention over image regions (mean over its tokens)."
    sections.append(_section("gallery", title, gallery, lead))
    return sections


def _calibration(ev: Evaluation, out: Path, figures: list[str]) -> str:
    """The calibration table (ECE and Brier score; before and after for a model calibrated with a temperature), and
    its reliability diagrams added to ``figures``: before calibration too when there is a temperature."""
    from mmfuse.engine.calibration import uncalibrated
    from mmfuse.engine.metrics import brier_score, expected_calibration_error

    columns = [("model", ev.proba)]
    if ev.temperature is not None:
        columns = [("before calibration", uncalibrated(ev.proba, ev.temperature)),
                   (f"after (temperature {ev.temperature:.3f})", ev.proba)]  # fmt: skip
    for i, (name, proba) in enumerate(columns):
        title = "Calibration" if len(columns) == 1 else ("Before calibration", "After calibration")[i]
        fig, ece = plots.calibration_plot(ev.y, proba, ev.classes, title=title)
        path = out / ("calibration.svg" if i == len(columns) - 1 else "calibration_before.svg")
        figures.append(_chart(fig, path, f"Reliability diagram {name}; expected calibration error {ece:.3f}"))
    rows = [
        ["expected calibration error", *(expected_calibration_error(ev.y, p) for _, p in columns)],
        ["Brier score", *(brier_score(ev.y, p) for _, p in columns)],
    ]
    lead = (
        f'<p class="note">Probabilities calibrated by temperature scaling fitted on validation: softmax(logits / '
        f"{ev.temperature:.3f}); labels (argmax) are unchanged. Lower is better.</p>"
        if ev.temperature is not None
        else '<p class="note">No calibration temperature applies to these probabilities as a whole (a run trained with '
        "train.calibrate: none or without a fit, or an ensemble of calibrated runs). Lower is better.</p>"
    )
    if ev.calibration_note:
        lead = f'<div class="warn">Calibration at training: {H.esc(ev.calibration_note)}</div>' + lead
    return lead + H.table(["calibration", *(n for n, _ in columns)], rows)


# ------------------------------------------------------------------------------------------------------ gallery


def gallery_groups(y: np.ndarray, proba: np.ndarray, k: int) -> dict[str, list[int]]:
    """Indices of the ``best`` (right, most confident), ``worst`` (wrong, most confident) and ``uncertain``
    (smallest margin between the top two classes) examples, ``k`` each, no example twice."""
    pred = proba.argmax(axis=1)
    p_true = proba[np.arange(len(y)), y]
    top2 = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.ones((len(y), 2))
    margin = top2[:, 1] - top2[:, 0]
    used: set[int] = set()
    groups: dict[str, list[int]] = {}
    order = {
        "best": [i for i in np.argsort(-p_true, kind="stable") if pred[i] == y[i]],
        "worst": [i for i in np.argsort(p_true, kind="stable") if pred[i] != y[i]],
        "uncertain": list(np.argsort(margin, kind="stable")),
    }
    for name in ("best", "worst", "uncertain"):
        picked = [int(i) for i in order[name] if int(i) not in used][:k]
        used.update(picked)
        groups[name] = picked
    return groups


_GROUPS = {
    "best": ("Most confidently right", "highest probability of the true class"),
    "worst": ("Most confidently wrong", "lowest probability of the true class among mistakes"),
    "uncertain": ("Most uncertain", "smallest gap between the two most probable classes"),
}


def _gallery(ev: Evaluation, out: Path, k: int, crop: float | None) -> str:
    from mmfuse.data.images import ImageError, open_image

    groups = gallery_groups(ev.y, ev.proba, k)
    panels, head = _gallery_panels(ev, groups, out, crop)
    parts = [head] if head else []
    for name, indices in groups.items():
        title, how = _GROUPS[name]
        if not indices:
            parts.append(f'<h3>{H.esc(title)}</h3><p class="note">none</p>')
            continue
        cards = []
        for rank, i in enumerate(indices, 1):
            if i in panels:  # the panel shows the image, occlusion and attention: no thumbnail of its own
                cards.append(_card(ev, i, None, panels[i]))
                continue
            example = ev.examples[i]
            image = None
            if example.image is not None:
                try:
                    image = np.asarray(open_image(example.image))
                except ImageError:
                    image = None
            attention = ev.attention[i] if ev.attention is not None else None
            png = plots.save_image(plots.attention_card(image, attention, crop), out / "gallery" / f"{name}_{rank}.png")
            cards.append(_card(ev, i, png))
        parts.append(
            f'<h3>{H.esc(title)} <span class="note">({H.esc(how)})</span></h3><div class="cards">{"".join(cards)}</div>'
        )
    return f'<div class="gallery">{"".join(parts)}</div>'


def _gallery_panels(ev: Evaluation, groups: dict[str, list[int]], out: Path, crop: float | None
                    ) -> tuple[dict[int, Any], str]:  # fmt: skip
    """The explanation panels of the gallery's examples (index -> :class:`~mmfuse.report.explain.Panel`), and the
    gallery's note on them: what was computed, which images could not be drawn, or why there are none."""
    from mmfuse.report import explain as X

    if ev.explain is None:
        return {}, ('<p class="note">No explanations here (an ensemble has no single model to explain): '
                    "`mmfuse explain RUN DATA --ids ...` explains one of its member runs.</p>")  # fmt: skip
    indices = list(dict.fromkeys(i for name in groups for i in groups[name]))
    ids = [str(ev.examples[i].id) for i in indices]
    unique = list(dict.fromkeys(ids))
    try:
        explained = ev.explain([ev.examples[i] for i in indices], unique)
    except (ValueError, FileNotFoundError) as e:
        logger.warning("report gallery: no explanations: %s", e)
        return {}, f'<div class="warn">No explanations in this gallery: {H.esc(e)}</div>'
    by_id = {e.id: e for e in explained}
    ranks = {i: f"{name}_{r}" for name in groups for r, i in enumerate(groups[name], 1)}
    drawn = X.draw_panels([by_id[i] for i in ids], out / "gallery", crop, compact=True,
                          names=[f"{ranks[i]}.png" for i in indices])  # fmt: skip
    panels = dict(zip(indices, drawn, strict=True))
    head = f'<p class="note">{H.esc(X.computed_note(explained))}</p>'
    missing = X.missing_pictures_note(drawn)
    if missing is not None:
        logger.warning("report gallery: %s", missing)
        head += f'<div class="warn">{H.esc(missing)}</div>'
    return panels, head


def _card(ev: Evaluation, i: int, png: Path | None, panel: Any = None) -> str:
    """A gallery card: the example's image (or, with an explanation ``panel``, the panel across the row: image,
    occlusion map, attention and each word's, with the words shaded by their contribution)."""
    example = ev.examples[i]
    pred = int(ev.proba[i].argmax())
    right = pred == ev.y[i]
    p_pred, p_true = float(ev.proba[i, pred]), float(ev.proba[i, ev.y[i]])
    text = example.text if len(example.text) <= TEXT_CHARS else example.text[: TEXT_CHARS - 1] + "…"
    chips = (f'<span class="chip">true: {H.esc(ev.classes[ev.y[i]])}</span>'
             f'<span class="chip {"good" if right else "bad"}">predicted: {H.esc(ev.classes[pred])} '
             f"({p_pred:.0%})</span>")  # fmt: skip
    meta = [f"id {H.esc(example.id)}", f"P(true class) {p_true:.3f}"]
    if ev.reliance is not None:
        meta.append(f"image reliance {float(ev.reliance[i]):.2f}")
    if ev.attention is not None and ev.attention[i] is not None and ev.attention[i].size:
        weights = np.asarray(ev.attention[i], dtype=float)  # the (h, w) grid, summing to 1
        meta.append(f"attention peak {weights.max() * weights.size:.1f}× uniform")
    bar = f'<div class="bar"><i style="width:{p_pred * 100:.1f}%"></i></div>'
    if panel is None:
        assert png is not None
        return (
            f'<div class="card"><img src="{H.data_uri(png)}" alt="image of example {H.esc(example.id)}">'
            f'<div class="body"><p class="text" title="{H.esc(example.text)}">{H.esc(text) or "<i>(empty text)</i>"}'
            f'</p>{chips}{bar}<div class="meta">{" · ".join(meta)}</div></div></div>'
        )
    from mmfuse.report import explain as X

    e = panel.explanation
    words = X.words_markup(e) if len(example.text) <= TEXT_CHARS else H.esc(text)
    notes = [*e.notes, *([f"image not shown: {panel.missing}"] if panel.missing else [])]
    warn = f'<div class="warn"><ul>{"".join(f"<li>{H.esc(n)}</li>" for n in notes)}</ul></div>' if notes else ""
    alt = f"explanation of example {example.id}: image, occlusion map" + (", attention" if e.attention is not None
                                                                          else "")  # fmt: skip
    return (
        '<div class="card" style="grid-column:1/-1">'
        f'<div class="body"><p class="text" style="max-height:none" title="{H.esc(example.text)}">{words}</p>'
        f'<p class="meta" style="margin:0 0 6px">Words shaded by their contribution to P({H.esc(e.label)}): red '
        "supports, blue opposes (hover a word for its number).</p>"
        f'{chips}{bar}<div class="meta">{" · ".join(meta)}</div>'
        f'<div class="meta">{H.esc(X.modalities_text(e))}</div>{warn}</div>'
        f'<img src="{H.data_uri(panel.png)}" alt="{H.esc(alt)}" style="aspect-ratio:auto;height:auto">'
        "</div>"
    )


def _crop_of(model: Any) -> float | None:
    """How the image encoder frames an image (`model.prediction.image_crop`, the rule the serve page uses too)."""
    from mmfuse.model.prediction import image_crop

    return image_crop(getattr(getattr(model, "image_encoder", None), "preprocess", None))


# ------------------------------------------------------------------------------------------------------ sweep


def _sweep_report(folder: Path, out: Path, split: str, per_group: int, storage: str | None, say: Callable[[str], None]):
    from mmfuse.engine.metrics import HIGHER_IS_BETTER
    from mmfuse.sweep.runner import SweepDir, load_study, sweep_table

    sweep_dir = SweepDir.existing(folder)
    frame, info = sweep_table(folder, storage)
    metric, selected = info["metric"], sweep_dir.read_selected()
    title = f"Sweep {info['name']}"
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    subtitle = [f"{info['mode']} · {len(frame)} trials ({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none'}) "
                f"· ranked by validation {metric}"]  # fmt: skip
    tiles = [("trials complete", counts.get("complete", 0)), ("pruned", counts.get("pruned", 0))]
    if selected:
        tiles += [(f"selected trial {selected['trial']}: val {metric}", selected.get("val"))]
        tiles += [(f"its test {metric} (tested once)", (selected.get("test") or {}).get(metric))]
    body = H.kpis(tiles)
    if selected and selected.get("overrides"):
        shown = ", ".join(f"{k}={v}" for k, v in selected["overrides"].items())
        body += f"<p>Selected on validation: trial {selected['trial']} with {H.esc(shown)}.</p>"
    sections: list[Section] = [("overview", "Overview", H.section("overview", "Overview", body))]
    done = frame[frame["state"].isin(["complete", "pruned"]) & (frame["baseline"] == "")]
    ran = frame[(frame["state"] == "complete") & (frame["baseline"] != "")]
    baselines = {b: float(v) for b, v in zip(ran["baseline"], ran[f"val_{metric}"], strict=True) if not _nan(v)}
    study = load_study(folder, storage)
    if not done.empty:
        fig = plots.trials_chart(list(done["trial"]), [None if _nan(v) else float(v) for v in done[f"val_{metric}"]],
                                 list(done["state"]), metric, HIGHER_IS_BETTER[metric], baselines)  # fmt: skip
        caption = f"Validation {metric} of each trial; line: the best complete trial so far"
        figs = [_chart(fig, out / "trials.svg", caption + ("; dotted: the unimodal baselines" if baselines else ""))]
        importance, trials, note = parameter_importance(study, say=say)
        if importance is not None:
            figs.append(_chart(plots.importance_plot(importance, trials), out / "param_importance.svg",
                               f"How much each swept setting explains of the validation metric, from {trials} "
                               "complete trials"))  # fmt: skip
        note_html = f'<p class="note">{H.esc(note)}</p>' if note else ""
        sections.append(("trials", "Trials", H.section("trials", "Trials", H.charts(figs) + note_html)))
    columns, rows, numeric, base_line = _ranked_rows(frame, info, study)
    highlight = [bool(selected and t == selected.get("trial")) for t in frame["trial"]]
    lead = f"Best first on validation {metric}; the test metric is measured for the selected trial only."
    table = H.table(columns, rows, numeric=numeric, highlight=highlight)
    if base_line:
        table = f'<p class="note">{H.esc(base_line)}</p>' + table
    sections.append(("table", "Ranked trials", H.section("table", "Ranked trials", table, lead)))
    if selected:
        run = Path(selected["run_dir"])
        run = run if run.is_absolute() else sweep_dir.path / run
        if (run / "checkpoints").is_dir():
            from mmfuse.engine.classifier import MultimodalClassifier

            say(f"report of the selected trial {selected['trial']}")
            clf = MultimodalClassifier.load(run)
            sections += run_sections(clf, run, out, split, per_group, say, prefix=f"Trial {selected['trial']}: ")
    return title, subtitle, sections


def _ranked_rows(frame: Any, info: dict[str, Any], study: Any) -> tuple[list[str], list[list[str]], list[bool], str]:
    """The ranked table as the page shows it: header, cells, numeric columns, and a line saying what ``(base)`` is.

    A swept setting a trial left as it is shows the base config's value (``0.001 (base)``), the base config's own
    trial (no overrides) included, which ``trials.csv`` leaves blank; the training time reads ``1 min 5 s``.
    """
    import pandas as pd

    from mmfuse.sweep.study import A_OVERRIDES
    from mmfuse.sweep.table import cell_text

    keys = [k for k in info.get("keys", []) if k in frame.columns]
    base = {k: _base_value(info.get("base") or {}, k) for k in keys}
    base_trials = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(A_OVERRIDES) == {}}
    columns = [c for c in frame.columns if c != "run_dir"]
    rows = []
    for record in frame[columns].to_dict("records"):
        row = []
        for c in columns:
            value = record[c]
            if c in base and (value == "(base)" or (value == "" and record["trial"] in base_trials)):
                row.append(f"{base[c]} (base)")
            elif c == "train_s":
                row.append(H.duration(None if value is None or pd.isna(value) else float(value)))
            else:
                row.append(cell_text(value, c))
        rows.append(row)
    numeric = [bool(frame[c].map(lambda v: isinstance(v, (int, float)) or v is None).all()) for c in columns]
    header = ["train time" if c == "train_s" else c for c in columns]
    line = ""
    if keys:
        shown = "; ".join(f"{k} {v}" if v != "default" else f"{k} not set (the default)" for k, v in base.items())
        line = f"(base): the value in the sweep's base config, which every trial starts from: {shown}."
    return header, rows, numeric, line


def _base_value(base: dict[str, Any], key: str) -> str:
    """The base config's value of a swept ``key`` (a short key like ``lr`` resolved as the sweep resolves it), or
    ``default`` when the base config does not set it."""
    from mmfuse.config import resolve_key
    from mmfuse.sweep.table import short_value

    try:
        node: Any = base
        for part in resolve_key(key):
            node = node[part]
    except (ValueError, KeyError, TypeError):
        return "default"
    return "default" if node is None else short_value(node)


def parameter_importance(
    study: Any, minimum: int = MIN_IMPORTANCE_TRIALS, say: Callable[[str], None] | None = None
) -> tuple[dict[str, float] | None, int, str]:
    """The sweep's parameter importances (fANOVA, Optuna) from its complete trials (the baselines left out), the
    number of those trials, and a line saying why there are none.

    Below ``minimum`` complete trials there are no numbers, only the line with the count: importances from a
    handful of trials are chance, yet read as a finding.
    """
    import optuna
    from optuna.trial import TrialState

    from mmfuse.sweep.table import is_baseline

    complete = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if not is_baseline(t) and t.params
    ]
    n = len(complete)
    if n < minimum:
        return None, n, (f"Parameter importance not shown: {n} complete trial{'' if n == 1 else 's'}, too few for "
                         f"fANOVA to tell the settings apart (it needs at least {minimum}).")  # fmt: skip
    (say or logger.info)("computing parameter importances")
    view = optuna.create_study(direction=study.direction)  # in memory: the sweep's trials without the baselines,
    view.add_trials(complete)  # which have no parameters and would empty the common search space
    try:
        importance = optuna.importance.get_param_importances(view)
    except (ValueError, RuntimeError) as e:
        return None, n, f"Parameter importance unavailable ({n} complete trials): {e}"
    if not importance:
        return None, n, f"Parameter importance unavailable ({n} complete trials): no setting took more than one value."
    return {k: float(v) for k, v in importance.items()}, n, ""


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------------------------ ensemble


def _ensemble_report(folder: Path, out: Path, split: str, per_group: int, say: Callable[[str], None]):
    from mmfuse.sweep.ensemble import Ensemble

    ens = Ensemble.load(folder)
    info = ens.info
    metric = info.get("metric", "macro_f1")
    title = f"Ensemble of {len(ens.members)} runs"
    subtitle = [f"greedy selection with replacement on validation {metric} · classes {', '.join(ens.classes)}"]
    best = info.get("best_single") or {}
    tiles = [(f"ensemble val {metric}", (info.get("val") or {}).get(metric)),
             (f"best single (trial {best.get('trial')}) val {metric}", best.get(f"val_{metric}"))]  # fmt: skip
    rows = [[m.get("trial"), m.get("run"), m.get("weight"), m.get(f"val_{metric}")] for m in info.get("members", [])]
    body = H.kpis(tiles) + H.table(["trial", "run", "weight", f"val {metric} alone"], rows)
    sections: list[Section] = [("overview", "Overview", H.section("overview", "Overview", body))]
    evaluation = _evaluate(ens, split, say, details=False)
    if isinstance(evaluation, str):
        sections.append(
            (
                "evaluation",
                "Evaluation",
                H.section("evaluation", "Evaluation", f'<p class="note">{H.esc(evaluation)}</p>'),
            )
        )
        return title, subtitle, sections
    evaluation.threshold = ens.threshold
    sections += _evaluation_sections(evaluation, ens.train_class_counts, out, per_group, None, "")
    return title, subtitle, sections
