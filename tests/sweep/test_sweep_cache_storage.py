"""A sweep over several heads stores, with every input it encodes, the sequences / grids any of its heads reads
(``cache.store_sequences``), so each frozen encoder runs once per input whichever head runs first."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mmfuse.cache import list_cache
from mmfuse.cache.shards import SUFFIX, read_header
from mmfuse.sweep import run_sweep, sweep_from_dict


def _spec(base: dict[str, Any], **kw: Any) -> dict[str, Any]:
    grid = {} if "search" in kw else {"grid": {"lr": [1e-3]}}
    return {"name": "store", "base": copy.deepcopy(base), **grid, **kw}


def _stored(sweep: Any) -> list[Any]:
    return [part.base.cache.store_sequences for part in [sweep, *sweep.heads.values()]]


@pytest.mark.parametrize(
    ("extra", "want"),
    [
        ({"heads": ["text_only", "concat", "cross_attention"]}, ["image", "text"]),  # sequence and grid
        ({"heads": ["concat", "early_fusion"]}, ["image"]),  # early_fusion runs the text encoder on tokens
        ({"grid": {"lr": [1e-3], "head.name": ["concat", "cross_attention"]}}, ["image", "text"]),
        ({"search": {"params": {"head.name": ["concat", "early_fusion"], "lr": [1e-3]}}, "n_trials": 2}, ["image"]),
    ],
    ids=["heads", "heads-grid-only", "grid", "search"],
)
def test_a_sweep_stores_what_any_of_its_heads_reads(base_config: dict, extra: dict, want: list[str]) -> None:
    sweep = sweep_from_dict(_spec(base_config, **extra))
    assert set(map(str, _stored(sweep))) == {str(want)}
    parts = [sweep, *sweep.heads.values()]
    assert all(any(n.startswith(f"cache.store_sequences: {want}") for n in p.notes) for p in parts)
    for part in parts:  # every trial's config carries it
        point = part.points[0] if part.points else {}
        assert part.trial_config(point).cache.store_sequences == want


def test_pooled_heads_and_what_the_user_set_are_left_alone(base_config: dict) -> None:
    pooled = sweep_from_dict(_spec(base_config, heads=["text_only", "concat", "align"]))
    assert set(map(str, _stored(pooled))) == {"False"}
    assert not [n for p in [pooled, *pooled.heads.values()] for n in p.notes if "cache" in n]
    everything = copy.deepcopy(base_config)
    everything["cache"] = {"store_sequences": True}
    assert set(map(str, _stored(sweep_from_dict(_spec(everything, heads=["concat", "cross_attention"]))))) == {"True"}
    text = copy.deepcopy(base_config)
    text["cache"] = {"store_sequences": ["text"]}
    mixed = sweep_from_dict(_spec(text, heads=["concat", "early_fusion"]))
    assert set(map(str, _stored(mixed))) == {"['image', 'text']"}
    # the study is the same whatever the cache stores: a sweep resumes after this change
    plain = sweep_from_dict(_spec(base_config, heads=["concat", "cross_attention"]))
    assert plain.fingerprint() == sweep_from_dict(_spec(everything, heads=["concat", "cross_attention"])).fingerprint()


def test_a_heads_sweep_encodes_each_input_once(base_config: dict, tmp_path) -> None:
    """concat runs first and reads pooled vectors only, cross_attention reads sequences and grids: concat's entries
    already hold them, so every input sits in exactly one shard and nothing is encoded twice."""
    base = copy.deepcopy(base_config)
    base["cache"] = {"dir": str(tmp_path / "cache")}
    base["train"] = {**base["train"], "epochs": 1}
    data = _spec(base, heads={"concat": {}, "cross_attention": {}}, baselines=False)
    result = run_sweep(sweep_from_dict(data), out=tmp_path / "sweep", log=lambda line: None)
    assert result.finished
    for encoder in list_cache(tmp_path / "cache"):
        headers = [read_header(p) for p in encoder.path.glob(f"*{SUFFIX}")]
        assert all(h.sequence for h in headers)
        assert sum(h.rows for h in headers) == encoder.entries == encoder.sequence_entries
