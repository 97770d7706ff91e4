"""Shard files: a batch of cache entries of one encoder in one safetensors file, written atomically.

A shard holds, for ``n`` inputs (rows), the tensors of a :class:`~mmfuse.features.FeatureTable`:

- ``pooled`` ``(n, D)`` float32 or float16; ``present`` ``(n,)`` bool (images only);
- with sequences: ``values`` ``(M, D_seq)`` float32 or float16 packed rows, ``valid`` ``(M,)`` bool, ``offsets``
  ``(n + 1,)`` int64.

The float dtype of ``pooled`` and of ``values`` is each tensor's own safetensors dtype (``F32``/``F16``), read from
the header (:attr:`ShardHeader.dtypes`): a reader asks for the dtypes it wants and never mixes shards of other
dtypes into its table (see :meth:`ShardHeader.serves`); shards written before float16 existed are float32.

Its safetensors metadata holds everything needed to trust it: the format, the encoder identity (canonical JSON,
compared with the requesting encoder's), the modality, whether it has sequences, for image grids their ``(h, w)``
(``grid``; shards written before it was stored lack it, and stay readable: see :meth:`FeatureCache.get`), the ``n``
content keys of its rows in order, and a CRC-32 of every tensor's bytes. A shard is written to a hidden temporary
file and renamed into place (``os.replace``), so a reader never sees a half-written shard under a real name; a
truncated, damaged or foreign shard is detected (:class:`CorruptShardError`) and its entries recomputed.

The header is parsed here without torch, so ``mmfuse cache ls`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmfuse._writable import error_code, raise_injected

if TYPE_CHECKING:
    import torch

    from mmfuse.features import FeatureTable

FORMAT = "mmfuse-features/1"
SUFFIX = ".safetensors"
TMP_PREFIX = ".tmp-"
_MAX_HEADER = 256 << 20  # a header larger than this is garbage, not a shard

_SEQUENCE_TENSORS = ("values", "valid", "offsets")

FLOAT_DTYPES = {"float32": "F32", "float16": "F16"}
"""Storage dtypes of float tensors (``cache.dtype`` / ``cache.pooled_dtype``) -> their safetensors dtype code."""
_CODES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bool": "BOOL", "torch.int64": "I64"}
_DTYPES = {"pooled": set(FLOAT_DTYPES.values()), "values": set(FLOAT_DTYPES.values()), "present": {"BOOL"},
           "valid": {"BOOL"}, "offsets": {"I64"}}  # fmt: skip


class CorruptShardError(ValueError):
    """A shard file that is truncated, unreadable, not a shard, or whose bytes do not match its checksums."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"feature cache shard {str(path)!r}: {reason}; it is ignored and its entries recomputed")


@dataclass(frozen=True)
class ShardHeader:
    """What a shard's header says (read without loading its tensors).

    Attributes:
        path: the shard file.
        identity: the encoder identity it was computed with (canonical JSON).
        modality: ``text`` or ``image``.
        sequence: whether it holds sequences/grids besides pooled vectors.
        keys: content key of each row, in row order.
        size: bytes on disk.
        created: when it was written (seconds since the epoch).
        checksums: CRC-32 of each tensor's bytes.
        shapes: shape of each tensor.
        grid: ``(h, w)`` of the image grid its sequences hold; ``None`` for text, pooled-only shards, and shards
            written before the grid was stored.
        dtypes: safetensors dtype code of each tensor (``F32``, ``F16``, ``BOOL``, ``I64``).
    """

    path: Path
    identity: str
    modality: str
    sequence: bool
    keys: tuple[str, ...]
    size: int
    created: float
    checksums: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    grid: tuple[int, int] | None = None
    dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.keys)

    def dtype_of(self, name: str) -> str | None:
        """Storage dtype (``float32`` / ``float16``) of float tensor ``name``; ``None`` when the shard lacks it."""
        code = self.dtypes.get(name, "F32" if name in self.shapes else None)
        return next((dtype for dtype, c in FLOAT_DTYPES.items() if c == code), None)

    def serves(self, *, need_sequence: bool, dtype: str, pooled_dtype: str) -> bool:
        """Whether this shard can answer a request for pooled vectors stored as ``pooled_dtype`` (and sequences
        stored as ``dtype`` when ``need_sequence``): float32 and float16 entries never mix in one table."""
        if self.dtype_of("pooled") != pooled_dtype:
            return False
        return not need_sequence or (self.sequence and self.dtype_of("values") == dtype)


def crc32(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes (C order)."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return 0
    return zlib.crc32(flat.view(torch.uint8).numpy())


def shard_name() -> str:
    """A unique file name that sorts by creation time: ``<ns>-<pid>-<random>.safetensors``."""
    return f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"


def is_shard_file(path: Path) -> bool:
    return path.name.endswith(SUFFIX) and not path.name.startswith(TMP_PREFIX)


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a storage dtype name (``float32`` / ``float16``).

    Raises:
        ValueError: another name.
    """
    import torch

    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"cache dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def write_shard(
    folder: Path,
    table: FeatureTable,
    keys: list[str],
    *,
    identity: str,
    modality: str,
    dtype: str = "float32",
    pooled_dtype: str = "float32",
) -> ShardHeader:
    """Writes ``table`` (one row per key) as a new shard in ``folder``, atomically, its sequences stored as
    ``dtype`` and its pooled vectors as ``pooled_dtype`` (``float32`` or ``float16``).

    Raises:
        OSError: the folder cannot be written (full disk, read-only); no partial file is left behind. safetensors'
            own ``SafetensorError`` for a failed write is raised as the ``OSError`` it wraps (its error number,
            the shard's path).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    assert len(keys) == len(table), f"{len(keys)} keys for {len(table)} rows"
    tensors: dict[str, Any] = {"pooled": table.pooled.to(torch_dtype(pooled_dtype)).contiguous()}
    if table.present is not None:
        tensors["present"] = table.present.bool().contiguous()
    if table.has_sequence:
        assert table.values is not None and table.valid is not None and table.offsets is not None
        tensors.update(
            values=table.values.to(torch_dtype(dtype)).contiguous(),
            valid=table.valid.bool().contiguous(),
            offsets=table.offsets.long().contiguous(),
        )
    created = time.time()
    checksums = {name: crc32(t) for name, t in tensors.items()}
    metadata = {
        "format": FORMAT,
        "identity": identity,
        "modality": modality,
        "sequence": "1" if table.has_sequence else "0",
        "keys": json.dumps(keys, separators=(",", ":")),
        "crc32": json.dumps(checksums, sort_keys=True),
        "created": repr(created),
    }
    if table.has_sequence and table.grid is not None:
        metadata["grid"] = json.dumps([int(table.grid[0]), int(table.grid[1])])
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / shard_name()
    tmp = folder / f"{TMP_PREFIX}{final.name}"
    # not write_atomic: its fsyncs would stall fills for nothing (a torn shard fails size/CRC and is recomputed)
    try:
        raise_injected(tmp)
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(OSError):  # never made (a read-only folder), or gone already
            tmp.unlink()
        if isinstance(e, SafetensorError):  # "Error while serializing: I/O error: ... (os error 28)"
            code = error_code(e)
            raise OSError(code, os.strerror(code) if code is not None else str(e), str(final)) from None
        raise
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    dtypes = {name: _CODES[str(t.dtype)] for name, t in tensors.items()}
    grid = (int(table.grid[0]), int(table.grid[1])) if "grid" in metadata and table.grid is not None else None
    return ShardHeader(
        final, identity, modality, table.has_sequence, tuple(keys), final.stat().st_size, created, checksums, shapes,
        grid, dtypes,
    )  # fmt: skip


def read_header(path: Path) -> ShardHeader:
    """Parses and checks a shard's header: format, field types, tensor shapes that agree with the keys, and a file
    size that covers every tensor exactly (a truncated or extended file fails here).

    Raises:
        CorruptShardError: anything wrong with the file.
        FileNotFoundError: the file is gone (removed by ``cache clear`` or another process).
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise CorruptShardError(path, f"only {len(head)} bytes, not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CorruptShardError(path, f"header length {n} does not fit the file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        meta = header.pop("__metadata__")
        if meta.get("format") != FORMAT:
            raise CorruptShardError(path, f"format {meta.get('format')!r}, expected {FORMAT!r}")
        keys = json.loads(meta["keys"])
        checksums = {str(k): int(v) for k, v in json.loads(meta["crc32"]).items()}
        shapes = {name: tuple(int(d) for d in info["shape"]) for name, info in header.items()}
        dtypes = {name: str(info["dtype"]) for name, info in header.items()}
        end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
        grid = None
        if "grid" in meta:
            h, w = (int(d) for d in json.loads(meta["grid"]))
            if h <= 0 or w <= 0:
                raise ValueError(f"grid {meta['grid']!r} is not two positive sides")
            grid = (h, w)
        result = ShardHeader(
            path=path,
            identity=str(meta["identity"]),
            modality=str(meta["modality"]),
            sequence=meta["sequence"] == "1",
            keys=tuple(str(k) for k in keys),
            size=size,
            created=float(meta["created"]),
            checksums=checksums,
            shapes=shapes,
            grid=grid,
            dtypes=dtypes,
        )
    except CorruptShardError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CorruptShardError(path, f"unreadable header ({type(e).__name__}: {e})") from None
    if 8 + n + end != size:
        raise CorruptShardError(path, f"file is {size} bytes but its tensors end at byte {8 + n + end} (truncated?)")
    _check_shapes(result)
    return result


def _check_shapes(h: ShardHeader) -> None:
    n = h.rows
    expected = {"pooled"} | ({"present"} if h.modality == "image" else set())
    if h.sequence:
        expected |= set(_SEQUENCE_TENSORS)
    if set(h.shapes) != expected or set(h.checksums) != expected:
        raise CorruptShardError(h.path, f"tensors {sorted(h.shapes)}, expected {sorted(expected)}")
    if n == 0 or len(h.shapes["pooled"]) != 2 or h.shapes["pooled"][0] != n:
        raise CorruptShardError(h.path, f"pooled has shape {h.shapes['pooled']} for {n} keys")
    if "present" in h.shapes and h.shapes["present"] != (n,):
        raise CorruptShardError(h.path, f"present has shape {h.shapes['present']} for {n} keys")
    if h.sequence and h.shapes["offsets"] != (n + 1,):
        raise CorruptShardError(h.path, f"offsets has shape {h.shapes['offsets']} for {n} keys")
    for name, code in h.dtypes.items():  # a tensor of another dtype is never reinterpreted
        if code not in _DTYPES[name]:
            raise CorruptShardError(
                h.path, f"tensor {name!r} has dtype {code}, expected one of {sorted(_DTYPES[name])}"
            )


def read_tensors(header: ShardHeader, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Tensors ``names`` of a shard, each checked against its CRC-32. They may map the file: copy what you keep.

    Raises:
        CorruptShardError: the file no longer matches its header, or a tensor fails its checksum.
        FileNotFoundError: the file is gone.
    """
    from safetensors import SafetensorError, safe_open

    unknown = [n for n in names if n not in header.shapes]
    if unknown:
        raise ValueError(f"shard {str(header.path)!r} has no tensor(s) {unknown}; it has {sorted(header.shapes)}")
    tensors = {}
    try:
        with safe_open(str(header.path), framework="pt") as f:
            if json.loads(f.metadata().get("keys", "[]")) != list(header.keys):
                raise CorruptShardError(header.path, "its keys changed since its header was read")
            for name in names:
                t = f.get_tensor(name)
                if tuple(t.shape) != header.shapes[name] or crc32(t) != header.checksums[name]:
                    raise CorruptShardError(header.path, f"tensor {name!r} does not match its checksum")
                tensors[name] = t
    except SafetensorError as e:
        raise CorruptShardError(header.path, f"safetensors cannot read it ({e})") from None
    return tensors


def load_shard(header: ShardHeader, *, need_sequence: bool) -> FeatureTable:
    """The shard's rows as a :class:`FeatureTable` (sequences only when asked; float32 whatever the stored dtype),
    every tensor checked.

    Raises:
        ValueError: sequences asked of a pooled-only shard.
        CorruptShardError: see :func:`read_tensors`.
        FileNotFoundError: the file is gone.
    """
    from mmfuse.features import FeatureTable

    if need_sequence and not header.sequence:
        raise ValueError(f"shard {str(header.path)!r} holds pooled vectors only; it cannot serve sequences")
    names = ["pooled", *(["present"] if "present" in header.shapes else [])]
    if need_sequence:
        names += list(_SEQUENCE_TENSORS)
    t = read_tensors(header, names)
    table = FeatureTable(pooled=t["pooled"].float(), present=t.get("present"))  # float16 is read back as float32
    if need_sequence:
        check_offsets(header, t["offsets"], header.shapes["values"][0])
        table.values, table.valid, table.offsets = t["values"].float(), t["valid"], t["offsets"]
        table.grid = header.grid
    return table


def check_offsets(header: ShardHeader, offsets: torch.Tensor, packed_rows: int) -> None:
    """Offsets must start at 0, rise strictly (every row keeps at least one position) and end at ``packed_rows``.

    Raises:
        CorruptShardError: they do not.
    """
    if int(offsets[0]) != 0 or int(offsets[-1]) != packed_rows or bool((offsets[1:] <= offsets[:-1]).any()):
        raise CorruptShardError(header.path, "its offsets do not describe its packed rows")
