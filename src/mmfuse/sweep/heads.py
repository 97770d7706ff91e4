"""A sweep that compares heads (``heads:`` in the sweep file): each head's own sweep, the heads ranked, and an
ensemble of the best ones.

Each head is a sweep of its own (:func:`mmfuse.sweep.spec.sweep_from_dict` builds it: the head set, the encoders it
does not read left out, its own grid, seeds and variants), run one after the other in this process so the frozen
encoders' features are computed once for all of them. The folder::

    <sweep>/
        sweep.json                  the resolved sweep (each head's resolved sweep under "heads")
        baselines.json, baselines/  the logistic-regression reference rows (``baselines: [logistic]``), and on one
                                    checkpoint's two towers (``model.encoder``) the ``zero_shot`` row
        heads/<head>/               one sweep folder per head (trials, selected.json, final.json, ...)
        heads.csv, heads.md         the leaderboard: one row per head (and per variant), ranked on validation
        ensemble/                   the ensemble of the heads best on validation (``ensemble:``); ``mmfuse evaluate``
                                    and ``mmfuse predict`` load it like a run

Every number of the leaderboard is the mean (± sample std) over the head's seeds when the sweep has ``seeds``, else
the selected trial's; rows are ranked on validation only, the test columns are reported, never used to choose.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmfuse.engine.metrics import HIGHER_IS_BETTER, classification_metrics, headline, tune_threshold
from mmfuse.sweep.spec import Sweep, SweepError

HEADS_DIR = "heads"
HEADS_CSV, HEADS_MD = "heads.csv", "heads.md"
ENSEMBLE_DIR = "ensemble"


def run_heads(
    sweep: Sweep,
    *,
    out: str | Path | None,
    storage: str | None,
    n_trials: int | None,
    timeout: float | None,
    log: Callable[[str], None],
) -> Any:
    """Runs (or resumes) every head's sweep, then writes the leaderboard and builds the ensemble.

    The trial and time budgets apply to each head's search. Returns a :class:`~mmfuse.sweep.runner.SweepResult`
    whose ``heads`` holds each head's result and whose ``table`` is the leaderboard.
    """
    from mmfuse.data.labels import LabelMap
    from mmfuse.engine.metrics import selection_metric
    from mmfuse.fusion import FUSION_HEADS
    from mmfuse.sweep.reference import logistic_baselines, zero_shot_baseline
    from mmfuse.sweep.runner import SplitCache, SweepResult, _quiet_optuna, _run_one

    folder = Path(out if out is not None else sweep.spec.out_dir / sweep.name)
    folder.mkdir(parents=True, exist_ok=True)
    splits = SplitCache(sweep.spec.limit, log)
    base_splits = splits.get(sweep.base.data)  # type: ignore[arg-type]
    classes = LabelMap.from_labels(e.label for e in base_splits["train"].examples).classes
    metric = selection_metric(sweep.metric_setting, len(classes))
    _write_info(sweep, folder, metric)
    log(f"sweep {sweep.name!r}: {len(sweep.heads)} heads ({', '.join(sweep.heads)}), ranked by val {metric}")
    baselines = None
    if "logistic" in sweep.spec.baseline_kinds:
        deep = {"sequence", "grid"}
        need_sequence = [m for m in ("text", "image")
                         if any(getattr(FUSION_HEADS.get(h), f"uses_{m}") in deep for h in sweep.heads)]  # fmt: skip
        with _quiet_optuna():
            baselines = logistic_baselines(sweep.base, base_splits, folder, metric, log, need_sequence)
    if sweep.spec.baselines is not False and "zero_shot" not in sweep.heads:  # only on one checkpoint's two towers
        zero_shot = zero_shot_baseline(sweep.base, base_splits, folder, metric, log)
        if zero_shot is not None:
            baselines = {**(baselines or {}), "zero_shot": zero_shot}
    results = {}
    for head, head_sweep in sweep.heads.items():
        results[head] = _run_one(head_sweep, folder / HEADS_DIR / head, storage, n_trials, timeout,
                                 _prefixed(log, head), splits)  # fmt: skip
    finished = all(r.finished for r in results.values())
    table = write_leaderboard(folder)
    ensemble = None
    if sweep.spec.ensemble is not None and finished:
        spec = sweep.spec.ensemble
        ensemble = build_heads_ensemble(folder, top_k=spec.top_k, weights=spec.weights, rounds=spec.rounds)
        info = json.loads((ensemble / "ensemble.json").read_text(encoding="utf-8"))
        members = ", ".join(f"{m['head']} x{m['weight']:.2f}" for m in info["members"])
        log(f"ensemble of {members}: val {metric} {_text(info['val'].get(metric))}")
        table = write_leaderboard(folder)
    best = _best_selected(results, metric)
    return SweepResult(folder, table, metric, best, finished, [n for r in results.values() for n in r.ran],
                       heads=results, baselines=baselines, ensemble=ensemble)  # fmt: skip


def _write_info(sweep: Sweep, folder: Path, metric: str) -> None:
    info = {**sweep.to_dict(), "metric": metric}
    (folder / "sweep.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")


def _prefixed(log: Callable[[str], None], head: str) -> Callable[[str], None]:
    return lambda line: log(f"{head}: {line}")


def _best_selected(results: Mapping[str, Any], metric: str) -> dict[str, Any] | None:
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    chosen = [(sign * r.selected["val"], head) for head, r in results.items() if r.selected]
    if not chosen:
        return None
    _, head = max(chosen, key=lambda t: t[0])  # the first head wins ties
    return {**results[head].selected, "head": head}


def is_heads_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is the folder of a sweep that compares heads."""
    path = Path(folder) / "sweep.json"
    return path.is_file() and bool(json.loads(path.read_text(encoding="utf-8")).get("heads"))


def head_folders(folder: str | Path) -> dict[str, Path]:
    """Head name -> its sweep folder, in the order of the sweep file.

    Raises:
        SweepError: ``folder`` is not a sweep that compares heads.
    """
    folder = Path(folder)
    if not is_heads_folder(folder):
        raise SweepError(f"{str(folder)!r} is not the folder of a sweep with `heads:`; pass the folder such a sweep "
                         "wrote")  # fmt: skip
    info = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    return {head: folder / HEADS_DIR / head for head in info["heads"]}


# ----------------------------------------------------------------------------------------------------- leaderboard


def heads_frame(folder: str | Path) -> pd.DataFrame:
    """The leaderboard of a sweep that compares heads: one row per head's selected point, per variant and per
    reference row (logistic regression, the ensemble), ranked on validation (mean over seeds; ties: order).

    Columns: ``rank``, ``head``, ``variant``, ``val_<metric>``, ``val_<metric>_std``, ``test_<metric>``,
    ``test_<metric>_std``, ``seeds``, ``trials``, ``folder`` (relative to the sweep folder), ``note``.
    """
    from mmfuse.sweep.final import read_final
    from mmfuse.sweep.reference import read_baselines

    folder = Path(folder)
    info = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    metric = info["metric"]
    rows: list[dict[str, Any]] = []

    def add(head: str, variant: str, val: Mapping, val_std: Mapping, test: Mapping | None, test_std: Mapping,
            seeds: str, trials: Any, where: str, note: str = "") -> None:  # fmt: skip
        rows.append({"head": head, "variant": variant, f"val_{metric}": val.get(metric),
                     f"val_{metric}_std": val_std.get(metric), f"test_{metric}": (test or {}).get(metric),
                     f"test_{metric}_std": test_std.get(metric), "seeds": seeds, "trials": trials, "folder": where,
                     "note": note})  # fmt: skip

    for head, path in head_folders(folder).items():
        where = f"{HEADS_DIR}/{head}"
        selected = _read_json(path / "selected.json")
        final = read_final(path)
        trials = _trials(path)
        if final and "selected" in final["groups"]:
            g = final["groups"]["selected"]
            add(head, "", g["val_mean"], g["val_std"], g["test_mean"], g["test_std"], _seeds(g["seeds"]), trials,
                where)  # fmt: skip
        elif selected:
            add(head, "", {metric: selected["val"]}, {}, selected.get("test"), {}, "", trials, where,
                f"selected trial {selected['trial']}")  # fmt: skip
        else:
            add(head, "", {}, {}, None, {}, "", trials, where, "no complete trial yet")
        for name, g in ((final or {}).get("groups") or {}).items():
            if name != "selected":
                add(head, name, g["val_mean"], g["val_std"], g["test_mean"], g["test_std"], _seeds(g["seeds"]), "",
                    where)  # fmt: skip
    references = read_baselines(folder) or {}
    for name, row in (references.get("logistic") or {}).items():
        add(f"logistic regression ({name})", "", row["val"], {}, row.get("test"), {}, "", "", "baselines",
            row["chosen_text"])  # fmt: skip
    if references.get("zero_shot"):
        row = references["zero_shot"]
        add("zero_shot", "", row["val"], {}, row.get("test"), {}, "", "", "baselines/zero_shot", "no training")
    ensemble = _read_json(folder / ENSEMBLE_DIR / "ensemble.json")
    if ensemble:
        seeds = ensemble.get("seeds") or {}
        members = " + ".join(f"{m['head']} x{m['weight']:.2f}" for m in ensemble["members"])
        add("ensemble", "", seeds.get("val_mean") or ensemble["val"], seeds.get("val_std") or {},
            seeds.get("test_mean"), seeds.get("test_std") or {}, _seeds(seeds.get("seeds") or []), "", ENSEMBLE_DIR,
            members)  # fmt: skip
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    key = [(-sign * v if v is not None and not math.isnan(v) else math.inf) for v in frame[f"val_{metric}"]]
    frame = frame.assign(_key=key).sort_values("_key", kind="stable").drop(columns="_key").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def write_leaderboard(folder: str | Path) -> pd.DataFrame:
    """Writes ``heads.csv`` and ``heads.md`` into the sweep folder; returns the table."""
    from mmfuse.sweep.table import to_markdown

    folder = Path(folder)
    frame = heads_frame(folder)
    info = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    frame.to_csv(folder / HEADS_CSV, index=False)
    lines = [
        f"# Sweep {info['name']}: the heads compared",
        "",
        f"Ranked by validation {info['metric']} (mean ± std over each head's seeds); the test columns are only "
        "reported. Each head's own table: heads/<head>/trials.md.",
        "",
    ]
    (folder / HEADS_MD).write_text("\n".join(lines) + to_markdown(frame), encoding="utf-8")
    return frame


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _trials(path: Path) -> int | str:
    table = path / "trials.csv"
    if not table.is_file():
        return ""
    return len(pd.read_csv(table))


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(map(str, seeds))


def _text(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ----------------------------------------------------------------------------------------------------- ensemble


def rank_heads(folder: str | Path) -> list[tuple[str, float, float]]:
    """The finished heads by their selected trial's validation score: ``(head, metric, accuracy)``, best first (ties:
    accuracy, then the order of the sweep file). Read from each selected trial's saved validation probabilities."""
    from mmfuse.sweep.ensemble import score
    from mmfuse.sweep.runner import VAL_PREDICTIONS

    folder = Path(folder)
    info = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    metric = info["metric"]
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    ranked = []
    for head, path in head_folders(folder).items():
        selected = _read_json(path / "selected.json")
        if not selected:
            continue
        with np.load(_under(path, selected["run_dir"]) / VAL_PREDICTIONS) as npz:
            y, proba, classes = npz["labels"], npz["proba"], [str(c) for c in npz["classes"]]
        value = score(metric, y, proba, classes)
        accuracy = float((proba.argmax(1) == y).mean())
        ranked.append((head, value, accuracy))
    order = sorted(range(len(ranked)), key=lambda i: (-(sign * ranked[i][1]) if not math.isnan(ranked[i][1])
                                                      else math.inf, -ranked[i][2], i))  # fmt: skip
    return [ranked[i] for i in order]


def build_heads_ensemble(
    folder: str | Path, *, top_k: int = 3, weights: str = "greedy", rounds: int = 25, out: str | Path | None = None
) -> Path:
    """The ensemble of the heads best on validation: their selected trials, weighted by greedy selection on
    validation (``weights="greedy"``) or equally; ``<sweep>/ensemble/ensemble.json``, loadable like ``mmfuse
    ensemble``'s. With seeds, the same weights combine each seed's runs of the members (the runs of the sweep's
    final stage, from their saved probabilities), and ``seeds`` in ``ensemble.json`` holds the mean and std over
    the seeds on val and test (``seed-<n>.npz``: the combined probabilities).

    Raises:
        EnsembleError: no finished head, or heads validated on other examples.
    """
    from mmfuse.sweep.ensemble import (
        ENSEMBLE_JSON,
        FORMAT,
        EnsembleError,
        _portable,
        _val_predictions,
        greedy_selection,
        score,
    )
    from mmfuse.sweep.final import mean_std, read_final, read_final_run, split_metrics

    folder = Path(folder)
    if weights not in ("greedy", "equal"):
        raise EnsembleError(f"weights must be 'greedy' or 'equal', got {weights!r}")
    info = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    metric = info["metric"]
    ranked = rank_heads(folder)[:top_k]
    if not ranked:
        raise EnsembleError(f"no head of the sweep {str(folder)!r} has a selected trial yet; run the sweep first")
    heads = [h for h, _, _ in ranked]
    paths = head_folders(folder)
    selected = {h: _read_json(paths[h] / "selected.json") or {} for h in heads}
    runs = [_under(paths[h], selected[h]["run_dir"]) for h in heads]
    _, y, classes, probas = _val_predictions(runs)
    counts = greedy_selection(probas, y, metric, classes, rounds) if weights == "greedy" else [1] * len(heads)
    target = Path(out) if out is not None else folder / ENSEMBLE_DIR
    target.mkdir(parents=True, exist_ok=True)
    proba = sum(c * p for c, p in zip(counts, probas, strict=True)) / sum(counts)
    val = headline(classification_metrics(y, proba, classes))
    val["loss"] = score("loss", y, proba, classes)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "sweep": _portable(folder, target),
        "metric": metric,
        "top_k": top_k,
        "weights": weights,
        "rounds": rounds if weights == "greedy" else None,
        "classes": classes,
        "threshold": tune_threshold(y, proba) if len(classes) == 2 else None,
        "val": val,
        "heads_ranked": [{"head": h, f"val_{metric}": v, "val_accuracy": a} for h, v, a in ranked],
        "best_single": {"head": heads[0], "trial": selected[heads[0]]["trial"], f"val_{metric}": ranked[0][1]},
        "members": [
            {
                "run": _portable(run, target),
                "head": h,
                "trial": selected[h]["trial"],
                "weight": c / sum(counts),
                f"val_{metric}": v,
            }
            for run, h, c, (_, v, _) in zip(runs, heads, counts, ranked, strict=True)
            if c > 0
        ],
    }
    members = [(h, c) for h, c in zip(heads, counts, strict=True) if c > 0]
    finals = {h: read_final(paths[h]) for h, _ in members}
    if all(f and "selected" in f["groups"] for f in finals.values()):
        labels = {h: finals[h]["groups"]["selected"]["runs"] for h, _ in members}  # type: ignore[index]
        n = min(len(v) for v in labels.values())
        per_seed = []
        for s in range(n):
            arrays = [(c, read_final_run(paths[h], "selected", labels[h][s])[1]) for h, c in members]
            record: dict[str, Any] = {"runs": {h: labels[h][s] for h, _ in members}}
            saved = {}
            for split in ("val", "test"):
                if all(f"{split}_proba" in a for _, a in arrays):
                    combined = sum(c * a[f"{split}_proba"] for c, a in arrays) / sum(c for c, _ in arrays)
                    record[split] = split_metrics(arrays[0][1][f"{split}_labels"], combined, classes)
                    saved[f"{split}_proba"], saved[f"{split}_labels"] = combined, arrays[0][1][f"{split}_labels"]
            np.savez(target / f"seed-{s}.npz", classes=np.array(classes), **saved)
            per_seed.append(record)
        val_mean, val_std = mean_std([r["val"] for r in per_seed])
        tests = [r["test"] for r in per_seed if r.get("test")]
        test_mean, test_std = mean_std(tests) if tests and len(tests) == len(per_seed) else ({}, {})
        first = finals[members[0][0]]["groups"]["selected"]["seeds"]  # type: ignore[index]
        payload["seeds"] = {"seeds": list(first[:n]), "runs": per_seed, "val_mean": val_mean, "val_std": val_std,
                            "test_mean": test_mean, "test_std": test_std}  # fmt: skip
    (target / ENSEMBLE_JSON).write_text(json.dumps(payload, indent=2, default=float) + "\n", encoding="utf-8")
    return target


def _under(folder: Path, rel: str) -> Path:
    path = Path(rel)
    return path if path.is_absolute() else folder / path
