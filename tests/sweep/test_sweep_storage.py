"""Storage URLs of a sweep: which PostgreSQL driver ``postgresql://`` goes through, and what a missing driver says.

The sweeps themselves on a real PostgreSQL server are in test_sweep_postgres.py (slow).
"""

from __future__ import annotations

import copy
import importlib.util
import sys

import pytest
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.sweep import SweepError
from mmfuse.sweep.study import storage_url


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_postgresql_url_goes_through_an_installed_driver_and_keeps_its_password():
    if not (_installed("psycopg") or _installed("psycopg2")):
        pytest.skip('no PostgreSQL driver installed (pip install "mmfuse[postgres]")')
    url = "postgresql://sweeper:p%40ss%2Fw@db.example:5433/sweeps"
    resolved, note = storage_url(url)
    parsed, default = make_url(resolved), make_url(url).get_driver_name()  # SQLAlchemy's default for postgresql://
    assert _installed(parsed.get_driver_name())
    assert (parsed.password, parsed.host, parsed.port, parsed.database) == ("p@ss/w", "db.example", 5433, "sweeps")
    if _installed(default):
        assert (resolved, note) == (url, None)
    else:  # mapped to the other driver, and said so without the password
        assert (
            note is not None and f"{default} (SQLAlchemy's default driver for postgresql://) is not installed" in note
        )
        assert "p%40ss" not in note


def test_an_explicitly_named_missing_driver_is_named_with_the_fix():
    if _installed("psycopg2"):
        pytest.skip("psycopg2 is installed here")
    with pytest.raises(SweepError, match=r"needs the PostgreSQL driver psycopg2, which is not installed") as e:
        storage_url("postgresql+psycopg2://sweeper:secret@db.example/sweeps")
    assert "mmfuse[postgres]" in str(e.value) and "secret" not in str(e.value)


def test_cli_sweep_on_postgresql_without_any_driver_names_the_extra(base_config, tmp_path, monkeypatch):
    for module in ("psycopg", "psycopg2"):  # as on a machine without them: importing them fails
        monkeypatch.setitem(sys.modules, module, None)
    file = tmp_path / "pg.yaml"
    file.write_text(yaml.safe_dump({"base": copy.deepcopy(base_config), "grid": {"lr": [1e-3]}}))
    storage = "postgresql://sweeper:secret@127.0.0.1:9/sweeps"
    result = CliRunner().invoke(app, ["sweep", str(file), "--out", str(tmp_path / "out"), "--storage", storage])
    assert result.exit_code == 2, result.output
    assert "needs the PostgreSQL driver" in result.output
    assert 'pip install "mmfuse[postgres]"' in result.output
    assert "secret" not in result.output
