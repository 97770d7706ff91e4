"""Where the cache lives: explicit folder, then MMFUSE_CACHE_DIR, then XDG_CACHE_HOME / ~/.cache; 'off' disables."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfuse.cache.location import default_cache_dir, resolve_cache_dir


def test_explicit_folder_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "cfg") == tmp_path / "cfg"
    assert resolve_cache_dir() == tmp_path / "env"


def test_default_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMFUSE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == default_cache_dir() == tmp_path / "xdg" / "mmfuse"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec says: ignore relative paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mmfuse"


@pytest.mark.parametrize("value", ["off", "OFF", " none ", "false", "0", "no"])
def test_off_disables_the_persistent_cache(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_cache_dir(value) is None
    monkeypatch.setenv("MMFUSE_CACHE_DIR", value)
    assert resolve_cache_dir() is None


def test_a_file_is_not_a_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"'.*file' is a file, not a folder.*'off'"):
        resolve_cache_dir(file)
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(file))
    with pytest.raises(ValueError, match=r"\$MMFUSE_CACHE_DIR"):
        resolve_cache_dir()


def test_home_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_cache_dir("~/features") == tmp_path / "features"
