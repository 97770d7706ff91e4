"""Reports a person would rather look at than read: one self-contained HTML page (plus its figures) for a run, a sweep
or an ensemble, made with matplotlib.

Typical use::

    write_report("runs/concat-20250101-120000")          # -> runs/concat-.../report/report.html
    write_report("runs/sweeps/mvsa", out="reports/mvsa")

Names load on first use, so ``import mmfuse.report`` and the CLI stay fast.
"""

from __future__ import annotations

from mmfuse._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Evaluation": "mmfuse.report.build",
    "ReportError": "mmfuse.report.build",
    "folder_kind": "mmfuse.report.build",
    "gallery_groups": "mmfuse.report.build",
    "write_report": "mmfuse.report.build",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
