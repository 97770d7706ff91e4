"""The model tests share the serving tests' tiny checkpoints (tests/serve/_serve_runs.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
