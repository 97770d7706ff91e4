"""What the feature cache holds (``mmfuse cache ls``) and removing it (``mmfuse cache clear``).

The cache root holds ``features/`` (one folder per encoder identity) and ``onnx/`` (ONNX exports of frozen encoders
on ``backend: onnxruntime``, one file per encoder identity and torch version, made by ``mmfuse.features.compute``).
Both are listed and cleared here. Reads only headers, file sizes and small JSON files: no torch import, so the CLI
answers at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfuse.cache.location import features_dir, onnx_dir
from mmfuse.cache.shards import SUFFIX, TMP_PREFIX, CorruptShardError, is_shard_file, read_header

IDENTITY_FILE = "identity.json"
USAGE_DIR = "usage"
ONNX_FORMAT = 1
"""``mmfuse.features.compute.ONNX_FORMAT``, repeated here so that listing needs no torch import (that module
imports torch); ``tests/cache/test_cache_cli.py`` checks that a real export is attributed to its encoder."""
CHECK_RECORD_SUFFIX = ".checked.json"
"""What ``mmfuse.features.compute.check_record_file`` adds to an export's name: the record of its last check
against torch, listed and removed with its export."""


@dataclass
class CachedEncoder:
    """One encoder identity's folder in the cache.

    Attributes:
        path: the folder (``<root>/features/<identity sha256>``).
        identity_sha256: the folder name: SHA-256 of the encoder's canonical ``cache_identity()``.
        name: the encoder's name (``minilm``, ``efficientnet-lite0``, a folder...).
        encoder_class: its class.
        modality: ``text`` or ``image``.
        identity: the full identity (weights hash, preprocessing).
        shards: usable shard files.
        entries: distinct inputs cached.
        sequence_entries: of which with their sequence/grid (the rest pooled only).
        bytes: size of the folder on disk.
        shard_bytes: of which in usable shards (what :attr:`bytes_per_example` divides).
        dtypes: storage dtype -> inputs stored with it: ``pooled float32``, ``sequence float16``, ...
        unusable: damaged, foreign or half-written files (set aside; removed by ``cache clear``).
        datasets: per dataset (common image folder): ``examples`` asked for, ``sequence``, ``last_used``.
        last_used: latest use (seconds since the epoch), or ``None``.
    """

    path: Path
    identity_sha256: str
    name: str = "?"
    encoder_class: str = "?"
    modality: str = "?"
    identity: dict[str, Any] = field(default_factory=dict)
    shards: int = 0
    entries: int = 0
    sequence_entries: int = 0
    bytes: int = 0
    shard_bytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    unusable: int = 0
    datasets: list[dict[str, Any]] = field(default_factory=list)
    last_used: float | None = None

    @property
    def bytes_per_example(self) -> float | None:
        """Bytes of usable shards per cached input (``None`` when nothing is cached): what one more example costs.
        An input stored twice (pooled only, later with its grid) counts once, so a folder of such entries says
        more than a fresh one would."""
        return self.shard_bytes / self.entries if self.entries else None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["path"] = str(self.path)
        out["bytes_per_example"] = self.bytes_per_example
        return out


@dataclass
class CachedExport:
    """One ONNX export of a frozen encoder in the cache's ``onnx/`` folder.

    Attributes:
        path: the file.
        bytes: its size on disk.
        name: the name of the cached encoder it was exported from, or ``None`` when no encoder folder under
            ``features/`` matches it (its features were cleared, or another torch version made it: exports are
            named by the torch version too, so such a file is not used by this installation).
        identity_sha256: that encoder folder's name, or ``None``.
        modality: ``text``, ``image``, or ``?`` when unmatched.
        modified: when it was written (seconds since the epoch), or ``None``.
        partial: a half-written temporary left by an export that was killed (never loaded; ``cache clear`` removes
            it). Any other file that is not ``*.onnx`` is listed too (unmatched), as ``cache clear`` removes it.
        check_record: the record of the export's last check against torch (``<name>.checked.json``, which lets a
            later process skip the check), or ``None``; removed with the export.
    """

    path: Path
    bytes: int
    name: str | None = None
    identity_sha256: str | None = None
    modality: str = "?"
    modified: float | None = None
    partial: bool = False
    check_record: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["path"] = str(self.path)
        out["check_record"] = None if self.check_record is None else str(self.check_record)
        return out


def export_stem(identity: dict[str, Any], torch_version: str) -> str:
    """The file name (without ``.onnx``) the export of the encoder with this ``cache_identity()`` gets under
    ``torch_version``: what :func:`mmfuse.features.compute.onnx_file` computes, without importing torch."""
    text = json.dumps([identity, ONNX_FORMAT, torch_version], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _torch_version() -> str | None:
    """The installed torch's version, read from its package metadata (no import); ``None`` when not found."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def list_exports(root: Path, encoders: list[CachedEncoder] | None = None) -> list[CachedExport]:
    """Every file under ``root/onnx``, largest first, each attributed to the cached encoder it was exported from.

    Args:
        root: the cache root.
        encoders: :func:`list_cache`'s answer, where the caller has it already.
    """
    folder = onnx_dir(Path(root))
    if not folder.is_dir():
        return []
    version = _torch_version()
    by_stem: dict[str, CachedEncoder] = {}
    for enc in list_cache(root) if encoders is None else encoders:
        if enc.identity and version is not None:
            by_stem[export_stem(enc.identity, version)] = enc
    found = []
    files = sorted(p for p in folder.iterdir() if p.is_file())
    names = {p.name for p in files}
    for file in files:
        if file.name.endswith(CHECK_RECORD_SUFFIX) and file.name[: -len(CHECK_RECORD_SUFFIX)] in names:
            continue  # listed with its export, below
        try:
            modified: float | None = file.stat().st_mtime
        except OSError:
            modified = None
        partial = ".onnx." in file.name and file.suffix == ".tmp"  # "<stem>.onnx.<random>.tmp" of a killed export
        export = CachedExport(path=file, bytes=_size(file), modified=modified, partial=partial)
        enc = by_stem.get(file.name.split(".", 1)[0])
        if enc is not None and file.suffix == ".onnx":
            export.name, export.identity_sha256, export.modality = enc.name, enc.identity_sha256, enc.modality
        if file.name + CHECK_RECORD_SUFFIX in names:
            export.check_record = file.with_name(file.name + CHECK_RECORD_SUFFIX)
        found.append(export)
    return sorted(found, key=lambda e: e.bytes, reverse=True)


def list_cache(root: Path) -> list[CachedEncoder]:
    """Every encoder folder under ``root/features``, largest first."""
    base = features_dir(Path(root))
    if not base.is_dir():
        return []
    found = [describe_folder(p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda c: c.bytes, reverse=True)


def describe_folder(path: Path) -> CachedEncoder:
    """Summary of one encoder folder (headers and JSON files only)."""
    info = CachedEncoder(path=path, identity_sha256=path.name)
    try:
        meta = json.loads((path / IDENTITY_FILE).read_text(encoding="utf-8"))
        info.name = str(meta.get("name", "?"))
        info.encoder_class = str(meta.get("class", "?"))
        info.modality = str(meta.get("modality", "?"))
        info.identity = dict(meta.get("identity") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    keys: set[str] = set()
    seq_keys: set[str] = set()
    by_dtype: dict[str, set[str]] = {}
    for file in _files(path):
        info.bytes += _size(file)
        if not is_shard_file(file):
            info.unusable += file.name.endswith((".corrupt", SUFFIX))
            continue
        try:
            header = read_header(file)
        except (CorruptShardError, OSError):
            info.unusable += 1
            continue
        info.shards += 1
        info.shard_bytes += header.size
        keys.update(header.keys)
        by_dtype.setdefault(f"pooled {header.dtype_of('pooled')}", set()).update(header.keys)
        if header.sequence:
            seq_keys.update(header.keys)
            by_dtype.setdefault(f"sequence {header.dtype_of('values')}", set()).update(header.keys)
    info.entries, info.sequence_entries = len(keys), len(seq_keys)
    info.dtypes = {name: len(k) for name, k in sorted(by_dtype.items())}
    info.datasets = _datasets(path / USAGE_DIR)
    info.last_used = max((d["last_used"] for d in info.datasets), default=None)
    return info


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _datasets(usage: Path) -> list[dict[str, Any]]:
    """Usage records merged per dataset: examples of its largest request per split size, latest use."""
    merged: dict[str, dict[str, Any]] = {}
    for file in sorted(usage.glob("*.json")) if usage.is_dir() else []:
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            name, n = str(record["dataset"]), int(record["examples"])
            used, seq = float(record["last_used"]), bool(record["sequence"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        entry = merged.setdefault(name, {"dataset": name, "requests": 0, "examples": 0, "sequence": False})
        entry["requests"] += 1
        entry["examples"] += n
        entry["sequence"] = entry["sequence"] or seq
        entry["last_used"] = max(entry.get("last_used", 0.0), used)
    return sorted(merged.values(), key=lambda d: d["last_used"], reverse=True)


def match_encoders(root: Path, which: str) -> list[CachedEncoder]:
    """The cached encoders that ``which`` names: an encoder name (``minilm``), or a prefix (>= 6 hex digits) of an
    identity hash.

    Raises:
        ValueError: nothing matches (the message lists what is cached).
    """
    cached = list_cache(root)
    which = which.strip()
    hits = [c for c in cached if c.name == which]
    if not hits and len(which) >= 6:
        hits = [c for c in cached if c.identity_sha256.startswith(which.lower())]
    if not hits:
        known = ", ".join(f"{c.name} ({c.identity_sha256[:12]})" for c in cached) or "nothing is cached"
        raise ValueError(
            f"no cached encoder {which!r} in {str(features_dir(root))!r}; cached: {known}. Pass an encoder name or "
            "the start of an identity hash as shown by `mmfuse cache ls`"
        )
    return hits


def clear_cache(root: Path, encoder: str | None = None) -> list[CachedEncoder]:
    """Removes every encoder folder and every ONNX export (``encoder=None``), or the folders ``encoder`` names (see
    :func:`match_encoders`) with their ONNX exports. Exports are made again when next needed.

    A folder is first renamed out of the way (atomic), then deleted, so a run reading the cache meanwhile sees
    either all of it or none of it and recomputes what it lacks.

    Returns:
        The encoder folders removed (:func:`exports_to_clear` tells which exports go with them).

    Raises:
        ValueError: ``encoder`` names nothing cached.
    """
    root = Path(root)
    cached = list_cache(root)
    targets = cached if encoder is None else match_encoders(root, encoder)
    exports = exports_to_clear(root, targets, everything=encoder is None, encoders=cached)
    for target in targets:
        trash = target.path.with_name(f".trash-{uuid.uuid4().hex[:8]}-{target.path.name}")
        try:
            os.replace(target.path, trash)
        except OSError:
            trash = target.path
        shutil.rmtree(trash, ignore_errors=True)
    base = features_dir(root)
    if encoder is None and base.is_dir():  # leftovers of interrupted clears
        for leftover in base.glob(".trash-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    for export in exports:  # a run loading one meanwhile keeps its open file (POSIX) or exports it again
        if export.check_record is not None:  # first: a record never outlives the file it vouches for
            export.check_record.unlink(missing_ok=True)
        export.path.unlink(missing_ok=True)
    if encoder is None:
        shutil.rmtree(onnx_dir(root), ignore_errors=True)
    return targets


def exports_to_clear(
    root: Path, targets: list[CachedEncoder], *, everything: bool, encoders: list[CachedEncoder] | None = None
) -> list[CachedExport]:
    """The ONNX exports :func:`clear_cache` removes with ``targets``: all of them (``everything``), else those
    exported from one of ``targets``."""
    exports = list_exports(root, encoders)
    if everything:
        return exports
    names = {t.identity_sha256 for t in targets}
    return [e for e in exports if e.identity_sha256 in names]


def stale_temporaries(folder: Path, older_than_s: float) -> list[Path]:
    """Half-written files (``.tmp-*``) in ``folder`` older than ``older_than_s`` (left by killed writers)."""
    import time

    now = time.time()
    out = []
    for p in folder.glob(f"{TMP_PREFIX}*"):
        try:
            if now - p.stat().st_mtime > older_than_s:
                out.append(p)
        except OSError:
            continue
    return out
