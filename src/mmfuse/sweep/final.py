"""After the search: the selected point with several seeds, and variants of it (``seeds`` and ``variants``).

One grid point chosen on one seed may be a lucky run. With ``seeds: [0, 1, 2]`` the point chosen on validation is
trained again with each seed, and its validation and test metrics are reported as mean ± sample std over the seeds.
Each entry of ``variants`` (a fine-tuning grid, an ablation, other encoders) takes the selected point's overrides,
adds its own, and is trained with the seeds too; a variant with a grid keeps the grid point whose seeds score best
on validation (mean; ties: mean accuracy, then the first point). The test split is predicted by every run and saved
beside it, but reported only for the chosen point of each group; nothing is chosen on it.

A run whose config equals the selected trial's (its seed included) is that trial: it is loaded, not trained again.
The runs live in the sweep folder::

    <sweep>/final.json                      every group: its points, runs, chosen point, mean and std
    <sweep>/final/selected/seed-1/          a run folder (config, checkpoints, metrics.jsonl)
    <sweep>/final/selected/seed-1.json      the run's record (overrides, seed, metrics, seconds)
    <sweep>/final/selected/seed-1.npz       its validation and test probabilities (``val_proba``, ``test_proba``, ...)
    <sweep>/final/finetune/p1-seed-0/ ...   variant ``finetune``, its grid point 1, seed 0

Running the sweep again skips the runs whose record matches their config, so an interrupted stage continues where
it stopped. With several workers, one runs this stage (a file lock in the sweep folder); the others return.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfuse.engine.metrics import HIGHER_IS_BETTER, classification_metrics, headline
from mmfuse.sweep.table import metric_text, short_value

FINAL_JSON = "final.json"
SELECTED = "selected"


def config_key(config: Any) -> str:
    """What makes two runs the same: the config without its run section (folder, name, verbosity)."""
    data = config.to_dict()
    data.pop("run", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_metrics(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The scalar metrics of one split's probabilities (argmax), as in a run's ``summary.json``."""
    return headline(classification_metrics(y, proba, classes))


def mean_std(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (ddof 1; empty with one record) of each metric every record has."""
    keys = [k for k, v in records[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    keys = [k for k in keys if all(isinstance(r.get(k), (int, float)) for r in records)]
    mean = {k: float(np.mean([r[k] for r in records])) for k in keys}
    std = {k: float(np.std([r[k] for r in records], ddof=1)) for k in keys} if len(records) > 1 else {}
    return mean, std


class FinalStage:
    """Runs (or resumes) the seeds and variants of a finished sweep's selected trial.

    Args:
        sweep: the sweep.
        folder: the sweep folder.
        metric: the selection metric.
        splits: loaded splits by data config (``SplitCache`` of the runner).
        selected: the selected trial's record (``selected.json``: its number, overrides and run folder).
        log: called with one line per event.
    """

    def __init__(self, sweep: Any, folder: Path, metric: str, splits: Any, selected: Mapping[str, Any],
                 log: Callable[[str], None]) -> None:  # fmt: skip
        self.sweep, self.folder, self.metric, self.splits, self.log = sweep, Path(folder), metric, splits, log
        self.selected = dict(selected)
        self.point = dict(self.selected.get("overrides") or {})
        self.selected_key = config_key(sweep.trial_config(self.point))

    def groups(self) -> dict[str, tuple[list[dict[str, Any]], list[int]]]:
        """Group name -> (its points, each as the full overrides of a run without the seed; its seeds)."""
        out: dict[str, tuple[list[dict[str, Any]], list[int]]] = {}
        if self.sweep.seeds_of(None):
            out[SELECTED] = ([dict(self.point)], self.sweep.seeds_of(None))
        own_seed = self.sweep.trial_config(self.point).train.seed
        for name, points in self.sweep.variants.items():
            seeds = self.sweep.seeds_of(name) or [own_seed]
            out[name] = ([{**self.point, **p} for p in points], seeds)
        return out

    def run(self) -> dict[str, Any]:
        """Trains what is missing and writes ``final.json``; returns its content."""
        result: dict[str, Any] = {
            "metric": self.metric,
            "selected_trial": self.selected.get("trial"),
            "selected_overrides": self.point,
            "groups": {},
        }
        for name, (points, seeds) in self.groups().items():
            runs = []
            for i, overrides in enumerate(points):
                label = [f"seed-{s}" if name == SELECTED else f"p{i}-seed-{s}" for s in seeds]
                runs.append(
                    [self._run(name, lab, {**overrides, "train.seed": s}) for lab, s in zip(label, seeds, strict=True)]
                )
            result["groups"][name] = self._summarize(name, points, seeds, runs)
        path = self.folder / FINAL_JSON
        path.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
        return result

    # ------------------------------------------------------------------------------------------------- runs

    def _run(self, group: str, label: str, overrides: dict[str, Any]) -> dict[str, Any]:
        where = self.folder / "final" / group
        record_path, predictions = where / f"{label}.json", where / f"{label}.npz"
        base_cfg = self.sweep.trial_config(overrides)
        key = config_key(base_cfg)
        if record_path.is_file() and predictions.is_file():
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("config_key") == key:
                return record
        where.mkdir(parents=True, exist_ok=True)
        reused = key == self.selected_key
        if reused:  # the selected trial itself: load it rather than train it again
            from mmfuse.engine.classifier import MultimodalClassifier

            rel = str(self.selected.get("run_dir") or "")
            run_dir = Path(rel) if Path(rel).is_absolute() else self.folder / rel
            clf = MultimodalClassifier.load(run_dir)
            cfg = base_cfg
            seconds = float((self.selected.get("result") or {}).get("seconds") or 0.0)
            run_rel = rel
        else:
            run_dir = where / label
            cfg = self.sweep.trial_config(overrides, run_dir)
            self.log(f"{group} {label} started: " + " ".join(f"{k}={short_value(v)}" for k, v in overrides.items()))
            clf, seconds = self._train(cfg)
            run_rel = str(run_dir.relative_to(self.folder))
        splits = self.splits.get(cfg.data)
        probas, labels = {}, {}
        for split in ("val", "test"):
            data = splits.get(split)
            if data is None or not data.report.labeled:
                continue
            probas[split] = clf.predict_proba(data, max_missing_images=1.0)
            labels[split] = np.array([clf.label_map.encode(e.label) for e in data.examples])
        arrays = {f"{s}_proba": p for s, p in probas.items()} | {f"{s}_labels": y for s, y in labels.items()}
        np.savez(predictions, classes=np.array(clf.classes), **arrays)
        summary = clf.summary or {}
        record = {
            "group": group,
            "label": label,
            "overrides": overrides,
            "seed": cfg.train.seed,
            "config_key": key,
            "run_dir": run_rel,
            "reused_trial": self.selected.get("trial") if reused else None,
            "seconds": seconds,
            "epochs_run": summary.get("epochs_run", len(clf.history) or None),
            "best_epoch": summary.get("best_epoch"),
            "threshold": clf.threshold,
            "val": split_metrics(labels["val"], probas["val"], clf.classes),
            "test": split_metrics(labels["test"], probas["test"], clf.classes) if "test" in probas else None,
        }
        record_path.write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")
        if not reused:
            value = record["val"].get(self.metric)
            self.log(f"{group} {label} done: val {self.metric} {metric_text(value)} in {seconds:.1f}s")
        return record

    def _train(self, cfg: Any) -> tuple[Any, float]:
        from mmfuse.engine.classifier import MultimodalClassifier

        splits = self.splits.get(cfg.data)
        start = time.perf_counter()
        clf = MultimodalClassifier(cfg).fit(splits["train"], splits["val"])
        return clf, time.perf_counter() - start

    # ------------------------------------------------------------------------------------------------- summary

    def _summarize(self, name: str, points: list[dict[str, Any]], seeds: list[int],
                   runs: list[list[dict[str, Any]]]) -> dict[str, Any]:  # fmt: skip
        sign = 1.0 if HIGHER_IS_BETTER[self.metric] else -1.0
        ranked = []
        for i, point_runs in enumerate(runs):
            val_mean, _ = mean_std([r["val"] for r in point_runs])
            value = val_mean.get(self.metric, math.nan)
            ranked.append(((sign * value if not math.isnan(value) else -math.inf, val_mean.get("accuracy", 0.0)), i))
        chosen = max(ranked, key=lambda t: t[0])[1]  # validation only; the first point wins ties
        chosen_runs = runs[chosen]
        val_mean, val_std = mean_std([r["val"] for r in chosen_runs])
        tests = [r["test"] for r in chosen_runs if r.get("test")]
        test_mean, test_std = mean_std(tests) if len(tests) == len(chosen_runs) else ({}, {})
        if len(points) > 1:
            self.log(f"{name}: chose point {chosen} on validation ({_changes(points[chosen], points)})")
        return {
            "seeds": seeds,
            "points": [
                {"overrides": p, "runs": [r["label"] for r in rs], "val_mean": mean_std([r["val"] for r in rs])[0]}
                for p, rs in zip(points, runs, strict=True)
            ],
            "chosen": chosen,
            "overrides": points[chosen],
            "runs": [r["label"] for r in chosen_runs],
            "val_mean": val_mean,
            "val_std": val_std,
            "test_mean": test_mean,
            "test_std": test_std,
        }


def read_final(folder: str | Path) -> dict[str, Any] | None:
    """``final.json`` of a sweep folder (``None`` when the sweep has no seeds or variants, or has not run them)."""
    path = Path(folder) / FINAL_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_final_run(folder: str | Path, group: str, label: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One final run's record and its saved probabilities (``val_proba``, ``val_labels``, ``test_proba``, ...)."""
    where = Path(folder) / "final" / group
    record = json.loads((where / f"{label}.json").read_text(encoding="utf-8"))
    with np.load(where / f"{label}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return record, arrays


def summary_lines(final: Mapping[str, Any] | None) -> list[str]:
    """One line per group of ``final.json``: the chosen point's validation and test mean ± std over its seeds."""
    if not final:
        return []
    metric, lines = final["metric"], []
    for name, group in final["groups"].items():
        what = "Selected point" if name == SELECTED else f"Variant {name}"
        if len(group["points"]) > 1:
            what += (
                f" ({_changes(group['overrides'], [p['overrides'] for p in group['points']])}, chosen on validation)"
            )
        seeds = ", ".join(map(str, group["seeds"]))
        test = _pm(group["test_mean"], group["test_std"], metric)
        lines.append(f"{what}, seeds {seeds}: val {metric} {_pm(group['val_mean'], group['val_std'], metric)}"
                     + (f", test {metric} {test}" if group["test_mean"] else "") + ".")  # fmt: skip
    return lines


def _pm(mean: Mapping[str, float], std: Mapping[str, float], metric: str) -> str:
    if metric not in mean:
        return "n/a"
    return f"{mean[metric]:.4f}" + (f" ± {std[metric]:.4f}" if metric in std else "")


def _changes(point: Mapping[str, Any], points: Sequence[Mapping[str, Any]]) -> str:
    """The settings that tell ``point`` from the other points of its grid."""
    varied = [k for k, v in point.items() if any(p.get(k, object()) != v for p in points)]
    return " ".join(f"{k}={short_value(point[k])}" for k in varied)
