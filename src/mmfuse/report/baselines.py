"""The unimodal baselines beside a run: the ``text_only`` and ``image_only`` runs that its sweep or demo trained on
the same data, found from the run folder's place in that folder.

Where they are::

    <sweep>/trials/trial-NNNN/            a sweep's trials; its baselines are the trials marked as such in its study
                                          (``baselines: true``, the default)
    <sweep>/heads/<head>/trials/...       a sweep over heads; the baselines are the selected trials of
                                          ``<sweep>/heads/text_only`` and ``<sweep>/heads/image_only``
    <demo>/runs/<head>/                   ``mmfuse demo``: the runs ``<demo>/runs/text_only`` and ``.../image_only``

A run elsewhere has none; the report says so in one line, with how to get them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

UNIMODAL = ("text_only", "image_only")

NONE_FOUND = (
    "No unimodal baselines: this run is not part of a sweep or demo that trained text_only and image_only (a sweep "
    "with `baselines: true`, the default, or `mmfuse demo` trains them)."
)
"""What the report says when a run has no baselines beside it."""


@dataclass
class Baselines:
    """The unimodal baseline runs beside a run.

    Attributes:
        where: where they come from, for people (``sweep 'name' (trials 0, 1)``, ``demo /path``).
        runs: head name -> its run folder, for those that exist here.
        missing: one line per baseline the folder names but that cannot be shown (not complete, folder gone).
    """

    where: str
    runs: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def find_baselines(folder: str | Path, levels: int = 4) -> Baselines | None:
    """The unimodal baselines of the sweep or demo that ``folder`` (a run or ensemble folder) belongs to, or
    ``None`` when it belongs to neither (or they trained none).

    The folders above ``folder`` are looked at, nearest first, up to ``levels`` of them; the first sweep or demo
    with baselines answers. ``folder`` itself is never its own baseline (a ``text_only`` trial gets ``image_only``).
    """
    folder = Path(folder).resolve()
    for parent in list(folder.parents)[:levels]:
        found = _demo(parent, folder) if (parent / "results.json").is_file() else None
        if found is None and (parent / "sweep.json").is_file():
            found = _sweep(parent, folder)
        if found is not None and (found.runs or found.missing):
            return found
    return None


def _demo(root: Path, folder: Path) -> Baselines | None:
    runs = root / "runs"
    if folder.parent != runs:
        return None
    found = Baselines(f"`mmfuse demo` in {root}")
    for head in UNIMODAL:
        path = runs / head
        if path == folder:
            continue
        if (path / "checkpoints").is_dir():
            found.runs[head] = path
        else:
            found.missing.append(f"{head}: the demo has no run {str(path)!r} (it was left out with --head)")
    return found


def _sweep(root: Path, folder: Path) -> Baselines | None:
    from mmfuse.sweep.runner import SweepDir

    info = json.loads((root / "sweep.json").read_text(encoding="utf-8"))
    if info.get("heads"):  # a sweep over heads: each unimodal head's own selected trial
        found = Baselines(f"the sweep over heads {info.get('name')!r}")
        for head in UNIMODAL:
            if head not in info["heads"]:
                continue
            selected = SweepDir(root / "heads" / head).read_selected()
            if not selected:
                found.missing.append(f"{head}: its sweep has no selected trial yet")
                continue
            _add(found, head, _run_path(root / "heads" / head, selected.get("run_dir")), folder)
        return found
    if not info.get("baselines"):
        return None
    return _sweep_trials(root, info, folder)


def _sweep_trials(root: Path, info: dict, folder: Path) -> Baselines:
    """The baseline trials of a sweep's own study."""
    from optuna.trial import TrialState

    from mmfuse.sweep.runner import load_study
    from mmfuse.sweep.study import A_BASELINE, A_RUN_DIR
    from mmfuse.sweep.table import real_trials

    found = Baselines(f"sweep {info.get('name')!r}")
    try:
        trials = real_trials(load_study(root))
    except Exception as e:  # any storage failure: said on the page, and the rest of the report goes on
        found.missing.append(f"the study of the sweep in {str(root)!r} could not be read ({type(e).__name__}: {e})")
        return found
    numbers = []
    for head in UNIMODAL:
        mine = [t for t in trials if t.user_attrs.get(A_BASELINE) == head]
        done = [t for t in mine if t.state == TrialState.COMPLETE]
        if not done:
            if mine:
                found.missing.append(f"{head}: its baseline trial {mine[-1].number} did not complete")
            continue
        trial = done[-1]
        if _add(found, head, _run_path(root, trial.user_attrs.get(A_RUN_DIR)), folder):
            numbers.append(str(trial.number))
    if numbers:
        found.where += f" (trial{'s' if len(numbers) > 1 else ''} {', '.join(numbers)})"
    return found


def _run_path(root: Path, run_dir: str | None) -> Path | None:
    if not run_dir:
        return None
    path = Path(run_dir)
    return (path if path.is_absolute() else root / path).resolve()


def _add(found: Baselines, head: str, path: Path | None, folder: Path) -> bool:
    if path == folder:
        return False
    if path is None or not (path / "checkpoints").is_dir():
        found.missing.append(f"{head}: its run folder {str(path)!r} is not here (a sweep run on another machine?)")
        return False
    found.runs[head] = path
    return True
