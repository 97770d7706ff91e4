# %% [markdown]
# # mmfuse from pandas: tweet sentiment on MVSA-Single
#
# Train an image+text classifier on DataFrames, score it with scikit-learn metrics, get probabilities as a
# DataFrame, extract embeddings, save and reload it. Run it as a script (`python dataframe_quickstart.py`) or cell
# by cell (`# %%`) in VS Code, Jupyter (jupytext) or Spyder.
#
# The data: MVSA-Single (QMF split), read from `../shared/datasets/mvsa_single` beside the repository (see its
# README). Settings from the environment, for a quick run:
#
# - `MMFUSE_EXAMPLE_ROWS=200`: at most that many rows of each split (a seeded sample); default: all;
# - `MMFUSE_EXAMPLE_SET="train.epochs=1 ..."`: extra config overrides (`key=value`, as after `mmfuse train`);
# - `MMFUSE_MVSA_ROOT`: another copy of the dataset.

# %%
import os
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from mmfuse import MultimodalClassifier

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = Path(os.environ.get("MMFUSE_MVSA_ROOT") or HERE.parents[1].parent / "shared" / "datasets" / "mvsa_single")
ROWS = int(os.environ.get("MMFUSE_EXAMPLE_ROWS") or 0) or None
EXTRA = shlex.split(os.environ.get("MMFUSE_EXAMPLE_SET", ""))

# %% [markdown]
# ## The data as DataFrames
#
# One row per tweet: `id`, `text`, `image` (a file path), `label` — the column names mmfuse reads by default
# (`data.columns` maps others). The split files' `text` field was decoded wrongly upstream for some tweets, so the
# text comes from each tweet's own `data/<id>.txt` (UTF-8, else GB18030). Rows whose image or text file is missing
# are left out here, and counted.


# %%
def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("gb18030", errors="replace").strip()


def read_split(name: str) -> pd.DataFrame:
    rows = pd.read_json(ROOT / "splits" / f"{name}.jsonl", lines=True, dtype={"id": str})
    whole = [
        (ROOT / img).is_file() and (ROOT / f"data/{i}.txt").is_file()
        for i, img in zip(rows["id"], rows["img"], strict=True)
    ]
    print(f"{name}: {len(rows)} rows, {len(rows) - sum(whole)} left out for a missing image or text file")
    rows = rows[whole]
    if ROWS is not None and len(rows) > ROWS:
        rows = rows.sample(n=ROWS, random_state=0)
    return pd.DataFrame(
        {
            "id": rows["id"],
            "text": [read_text(ROOT / f"data/{i}.txt") for i in rows["id"]],
            "image": [str(ROOT / img) for img in rows["img"]],
            "label": rows["label"],
        }
    ).reset_index(drop=True)


df_train, df_val, df_test = (read_split(name) for name in ("train", "dev", "test"))
df_train.head()

# %% [markdown]
# ## Fit
#
# Frozen offline encoders (MiniLM for the text, EfficientNet-Lite0 for the image: each runs once over the data),
# a late-fusion `concat` head on top. Given one DataFrame, `fit` holds out a seeded, stratified 20% of it for
# validation (`holdout_frac`; or pass a second DataFrame as `tuning_data`), keeps the best epoch on it and writes a
# run folder under `runs/`.

# %%
clf = MultimodalClassifier(
    overrides=[
        "model.text_encoder.name=minilm",
        "model.image_encoder.name=efficientnet-lite0",
        "model.head.name=concat",
        "train.epochs=5",
        "train.class_weights=balanced",
        "run.out_dir=runs",
        "run.name=mvsa-dataframe",
        *EXTRA,
    ]
)
clf.fit(pd.concat([df_train, df_val], ignore_index=True))  # the dataset's train and dev rows
print("classes:", clf.classes)

# %% [markdown]
# ## Evaluate with scikit-learn metrics
#
# Any scorer name of `sklearn.metrics.get_scorer_names()`; without `metrics`, `evaluate` gives the full report
# (per-class scores, confusion matrix, majority-class and random baselines).

# %%
scores = clf.evaluate(df_test, metrics=["accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "neg_log_loss"])
print(pd.Series(scores).round(4))

# %% [markdown]
# ## Probabilities and labels as pandas, indexed like the input

# %%
proba = clf.predict_proba(df_test, as_pandas=True)  # one column per class
labels = clf.predict(df_test, as_pandas=True)
assert proba.index.equals(df_test.index) and list(proba.columns) == clf.classes
print(proba.join(labels).join(df_test["label"].rename("true")).head())

# %% [markdown]
# ## Embeddings
#
# `fused`: the joint vector the head classifies from; `text` / `image`: each encoder's pooled output (read from
# the precomputed features of the frozen encoders).

# %%
for kind in ("fused", "text", "image"):
    embedding = clf.extract_embedding(df_test, kind=kind)
    print(f"{kind:>5}: {embedding.shape}")

# %% [markdown]
# ## Save, load, predict the same

# %%
folder = clf.save(Path("runs") / "mvsa-dataframe-model")
loaded = MultimodalClassifier.load(folder)
same = np.array_equal(loaded.predict_proba(df_test), proba.to_numpy())
print(f"saved to {folder}; the loaded model predicts the same probabilities: {same}")
assert same
