"""Hyperparameter sweeps: a base config plus a grid, a list of overrides or an Optuna search; ranked tables of the
trials; ensembles of the best ones.

Typical use::

    sweep = load_sweep("examples/sweeps/mvsa_ten_experiments.yaml")
    result = run_sweep(sweep)                      # resumable; run it in several processes to share the work
    print(result.table)                            # ranked on validation; test metric of the selected trial only
    result.final                                   # with `seeds` / `variants`: mean ± std over seeds, val and test
    result.heads                                   # with `heads:`: each head's result; result.table ranks the heads
    folder = build_ensemble(result.folder, top_k=5)
    Ensemble.load(folder).predict_proba(examples)
    leaderboard(result.folder, test_df)           # every trial, the baselines and the ensemble, metrics on test_df

Names load on first use, so ``import mmfuse.sweep`` and the CLI stay fast.
"""

from __future__ import annotations

from mmfuse._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Ensemble": "mmfuse.sweep.ensemble",
    "EnsembleError": "mmfuse.sweep.ensemble",
    "build_ensemble": "mmfuse.sweep.ensemble",
    "greedy_selection": "mmfuse.sweep.ensemble",
    "load_predictor": "mmfuse.sweep.ensemble",
    "read_final": "mmfuse.sweep.final",
    "leaderboard": "mmfuse.sweep.leaderboards",
    "read_final_run": "mmfuse.sweep.final",
    "build_heads_ensemble": "mmfuse.sweep.heads",
    "heads_frame": "mmfuse.sweep.heads",
    "read_baselines": "mmfuse.sweep.reference",
    "PruneOnEpoch": "mmfuse.sweep.runner",
    "SweepDir": "mmfuse.sweep.runner",
    "SweepResult": "mmfuse.sweep.runner",
    "load_study": "mmfuse.sweep.runner",
    "run_sweep": "mmfuse.sweep.runner",
    "sweep_table": "mmfuse.sweep.runner",
    "ParamSpec": "mmfuse.sweep.spec",
    "PrunerSpec": "mmfuse.sweep.spec",
    "SearchSpec": "mmfuse.sweep.spec",
    "Sweep": "mmfuse.sweep.spec",
    "SweepError": "mmfuse.sweep.spec",
    "SweepSpec": "mmfuse.sweep.spec",
    "load_sweep": "mmfuse.sweep.spec",
    "sweep_from_dict": "mmfuse.sweep.spec",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
