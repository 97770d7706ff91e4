"""The persistent feature cache as a :class:`~mmfuse.features.FeatureSource`.

:class:`FeatureCache` answers ``get(encoder, examples, need_sequence=...)`` in three steps, each cheaper than the next:

1. an in-process memo of whole tables (a sweep's second model in the same process pays nothing);
2. the folder of the encoder's identity under ``<root>/features/``: shards of entries keyed by each input's content,
   read back and checked (identity, CRC-32), gathered into the requested row order;
3. only the inputs found nowhere are encoded, in one pass (:func:`~mmfuse.features.compute.compute_feature_chunks`:
   one DataLoader whose workers decode the images, started once per table; batched forward under
   ``torch.inference_mode``), and written as new shards, one per ``shard_examples`` inputs as soon as they are
   encoded, so an interrupted encoding keeps what it finished.

A pooled-only entry cannot serve a sequence request (a later head that reads the grid encodes those inputs again and
stores them with their grids); a sequence entry serves both. New entries keep what the request asks for, plus the
sequence of the modalities :attr:`CacheStorage.store_sequences` names (``cache.store_sequences``; a sweep over several
heads names those any of its heads reads, so the encoder runs once per input for the whole sweep). An EfficientNet-
Lite0 grid is 50x its pooled vector, so storing it only where a head needs it is most of the cache's size.

Sequences and grids are stored as :attr:`CacheStorage.dtype` (``cache.dtype``: :data:`DEFAULT_DTYPE` ``float16``,
half the bytes of ``float32``), pooled vectors as :attr:`CacheStorage.pooled_dtype` (``float32``); whatever is stored
is read back as float32. The storage dtype is part of each entry's key: a request reads only shards of its own
dtypes (float32 and float16 entries never mix in one table; shards written before float16 existed, or while float32
was the default, are float32), and a table computed on a miss is rounded to the storage dtype before it is returned,
so a cold and a warm run train on the same numbers. Inputs that must be encoded although the folder holds them in
other dtypes are counted in :attr:`CacheStats.other_dtype` and said (a warning the first time per folder, with the
setting that would reuse them).

An image grid's ``(h, w)`` is stored with its entries; entries written before it was (same cache key: the encoder
identity did not change) stay readable, and their grid is read from the encoder itself
(:meth:`ImageEncoder.grid_shape`, one blank image), never guessed.

Several processes of one run (``accelerate launch --num_processes N``) fill one cache folder together
(:meth:`FeatureCache.across`, :mod:`mmfuse.cache.peers`): each input that no shard holds is encoded by exactly one of
them, which writes it as shards of its own (unique names, written atomically: writers never touch each other's files,
and there is no index to update); they meet after every round of one shard each, and then each reads the complete
table from the folder. A process that dies or hangs stops the others with a :class:`~mmfuse.cache.peers.PeerError`,
and so do processes that asked for different features (each meeting compares a digest of their requests). The
backend is chosen for the whole job: where an encoder is to be exported to ONNX, process 0 exports it while the
others wait, and each then loads that one file.

Encoders with trainable weights are never cached: their features are computed and returned, nothing is stored.
A cache folder that cannot take new entries (read-only, no permission, a full disk, or less free space than they need,
compared before the first shard is written) is said once as a warning (which a run also shows on its console), and
the features are served from memory (:attr:`CacheStats.unstored` counts them).

Folder layout::

    <root>/features/<sha256 of the identity>/
        identity.json                 the encoder's identity (and name, class, modality), for people and `cache ls`
        <ns>-<pid>-<rand>.safetensors  shards (see mmfuse.cache.shards)
        usage/<request>.json          which datasets asked for features (for `cache ls`)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mmfuse._writable import free_bytes, reason_of
from mmfuse.cache.inventory import IDENTITY_FILE, USAGE_DIR, stale_temporaries
from mmfuse.cache.keys import ContentHasher, canonical_identity, identity_hash, request_key
from mmfuse.cache.location import features_dir, onnx_dir, resolve_cache_dir
from mmfuse.cache.peers import PeerError, Peers
from mmfuse.cache.shards import (
    CorruptShardError,
    ShardHeader,
    check_offsets,
    is_shard_file,
    load_shard,
    read_header,
    read_tensors,
    torch_dtype,
    write_shard,
)
from mmfuse.data.example import Example
from mmfuse.encoders.base import Encoder, ImageEncoder, TextEncoder
from mmfuse.features import FeatureSource, FeatureTable, compute_features, default_store
from mmfuse.features.compute import (
    CHECK_ROWS,
    choose_backend,
    compute_feature_chunks,
    onnx_export_due,
    onnx_file,
    refuse_onnx,
)

logger = logging.getLogger("mmfuse.cache")

_KEY_BYTES = 70  # a content key in a shard's header: 64 hex digits, quotes and a comma
_STALE_TMP_S = 24 * 3600  # a half-written shard this old belongs to a writer that was killed

DEFAULT_DTYPE = "float16"
"""Storage dtype of sequences and grids unless ``cache.dtype`` says otherwise (the config's default is the same).
float32 was the default until float16 was measured within the seed spread of the quality benchmark's rows (see
docs/performance.md, "Quality with cache.dtype: float16"); entries written then stay readable with
``cache.dtype: float32``."""


@dataclass
class CacheStats:
    """What a :class:`FeatureCache` did, for logs and benchmarks.

    Attributes:
        memo_hits: requests answered from the in-process memo.
        requests: requests that went to disk (and maybe to the encoder).
        loaded: inputs read from shards.
        computed: inputs encoded (and written, unless the folder could not take them: ``unstored``).
        unstored: inputs encoded but not written, because the cache folder is read-only, full, or has too little
            space left for them (said once as a warning; their features live in this process only).
        uncached: requests for encoders with trainable weights (computed, never stored).
        corrupt: shards found damaged or foreign (ignored; their entries recomputed).
        peer_gaps: inputs another process was to encode (:meth:`FeatureCache.across`) that were not in the cache
            folder when it said it was done (the folder is not shared by every process, or could not be written),
            encoded by this process too (said as a warning).
        other_dtype: inputs encoded although the folder holds them stored in other dtypes (float32 grids written
            before float16 became the default, say), which this cache's :class:`CacheStorage` does not read (said
            with the setting that would reuse them).
        seconds: time spent inside ``get`` (hashing, reading, encoding, writing).
        encode_seconds: of which encoding.
    """

    memo_hits: int = 0
    requests: int = 0
    loaded: int = 0
    computed: int = 0
    unstored: int = 0
    uncached: int = 0
    corrupt: int = 0
    peer_gaps: int = 0
    other_dtype: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CacheStorage:
    """How a run stores the entries it computes (the ``cache`` config's ``dtype``, ``pooled_dtype`` and
    ``store_sequences``) and which stored entries it may read.

    Attributes:
        dtype: storage dtype of sequences and grids: ``float16`` (:data:`DEFAULT_DTYPE`: half the bytes; each
            value rounded to 11 significant bits, a relative error <= 2**-11 ~ 4.9e-4), or ``float32``.
        pooled_dtype: storage dtype of pooled vectors (``float32`` unless asked: they are small).
        store_sequences: also store the token sequence / region grid of new entries when only the pooled vector
            was asked for: ``True`` (every modality), ``False`` (only what a request asks), or the modalities
            (``{"image"}``).

    Raises:
        ValueError: an unknown dtype or modality.
    """

    dtype: str = DEFAULT_DTYPE
    pooled_dtype: str = "float32"
    store_sequences: bool | frozenset[str] = False

    def __post_init__(self) -> None:
        for name in (self.dtype, self.pooled_dtype):
            torch_dtype(name)  # raises on an unknown name
        if not isinstance(self.store_sequences, bool):
            modalities = frozenset(self.store_sequences)
            unknown = sorted(modalities - {"text", "image"})
            if unknown:
                raise ValueError(f"store_sequences: unknown modalities {unknown}; use true, false, or [text, image]")
            object.__setattr__(self, "store_sequences", modalities)

    def stores_sequence(self, modality: str) -> bool:
        """Whether new entries of ``modality`` keep their sequence / grid even for a pooled request."""
        if isinstance(self.store_sequences, bool):
            return self.store_sequences
        return modality in self.store_sequences

    @property
    def key_suffix(self) -> str:
        """What the dtypes add to a request's key: nothing for float32 throughout."""
        if self.dtype == self.pooled_dtype == "float32":
            return ""
        return f"|pooled={self.pooled_dtype}|sequence={self.dtype}"

    def rounded(self, table: FeatureTable) -> FeatureTable:
        """``table`` as it reads back from the cache: each float tensor passed through its storage dtype (float32)."""
        out = replace(table)
        if self.pooled_dtype != "float32":
            out.pooled = table.pooled.to(torch_dtype(self.pooled_dtype)).float()
        if self.dtype != "float32" and table.values is not None:
            out.values = table.values.to(torch_dtype(self.dtype)).float()
        return out


@dataclass(frozen=True)
class _Request:
    """One ``get`` of a frozen encoder's features that the memo did not answer: what resolving it needs."""

    encoder: Encoder
    examples: list[Example]
    keys: list[str]  # each example's content key, in row order
    need_sequence: bool
    device: torch.device | str
    batch_size: int
    workers: int
    progress: Callable[[int], None] | None


@dataclass
class _Folder:
    """One encoder identity's folder, with the headers of its shards read so far."""

    path: Path
    identity: str
    headers: dict[str, tuple[tuple[int, int], ShardHeader]] = field(default_factory=dict)
    bad: set[tuple[str, int, int]] = field(default_factory=set)
    said_other_dtypes: bool = False  # the warning of _say_other_dtypes was given for this folder


class FeatureCache:
    """Features of frozen encoders, stored on disk under ``root`` and reused by every later run.

    Args:
        root: the cache folder (see :func:`~mmfuse.cache.location.resolve_cache_dir`); created on first write.
        shard_examples: inputs per shard file (an EfficientNet-Lite0 grid is 250 KB per image, so 512 images make
            a 128 MB shard).
        max_tables: whole tables kept in the in-process memo (least recently used first out).
        encode_workers: DataLoader workers that decode images while the encoder runs, used when the caller asks
            for none (``num_workers=0``); ``None``: two, or one on a one-core machine.
        store_sequences: store the token sequence / region grid of new entries even when only the pooled vector
            was asked for, so a later sequence request (``cross_attention`` after ``concat``) does not encode again:
            ``True``, the modalities (``["image"]``), or ``False`` (the default: only what was asked; an
            EfficientNet-Lite0 grid is 50x its pooled vector).
        dtype: storage dtype of sequences and grids, ``float16`` (the default) or ``float32`` (see
            :class:`CacheStorage`).
        pooled_dtype: storage dtype of pooled vectors.

    Raises:
        ValueError: ``root`` is a file, or a bad ``shard_examples`` / ``max_tables``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        shard_examples: int = 512,
        max_tables: int = 16,
        encode_workers: int | None = None,
        store_sequences: bool | Sequence[str] = False,
        dtype: str = DEFAULT_DTYPE,
        pooled_dtype: str = "float32",
    ) -> None:
        resolved = resolve_cache_dir(root)
        if resolved is None:
            raise ValueError(f"FeatureCache needs a folder, got {str(root)!r}; use default_store() for no cache")
        if shard_examples < 1 or max_tables < 1:
            raise ValueError(f"shard_examples and max_tables must be >= 1, got {shard_examples} and {max_tables}")
        self.root = resolved
        self.shard_examples = shard_examples
        self.max_tables = max_tables
        self.encode_workers = min(2, os.cpu_count() or 1) if encode_workers is None else encode_workers
        stored = store_sequences if isinstance(store_sequences, bool) else frozenset(store_sequences)
        self.storage = CacheStorage(dtype=dtype, pooled_dtype=pooled_dtype, store_sequences=stored)
        self.stats = CacheStats()
        self._hasher = ContentHasher()
        self._memo: OrderedDict[str, FeatureTable] = OrderedDict()
        self._folders: dict[str, _Folder] = {}
        self._lock = threading.Lock()
        self._write_failed = False
        self.peers: Peers | None = None

    # FeatureStore-compatible counters (engine logs read these, see mmfuse.features.describe)
    @property
    def hits(self) -> int:
        return self.stats.memo_hits

    @property
    def misses(self) -> int:
        return self.stats.requests

    @property
    def store_sequences(self) -> bool | frozenset[str]:
        return self.storage.store_sequences

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r}, memo={len(self._memo)} tables, {self.storage})"

    def with_storage(self, storage: CacheStorage) -> FeatureCache:
        """This cache (same folder, memo, statistics and lock) storing and reading entries as ``storage`` says: what
        one run's ``cache`` config asks, while the process shares one cache per folder."""
        if storage == self.storage:
            return self
        view = copy.copy(self)
        view.storage = storage
        return view

    def across(self, peers: Peers | None) -> FeatureCache:
        """This cache (same folder, memo, statistics and lock) filled together with the other processes of a run
        (``accelerate launch --num_processes N``; see :mod:`mmfuse.cache.peers`): each input that no shard holds
        yet is encoded by exactly one process, which writes it to the shared folder; every process then reads the
        complete table from there. Every process must make the same ``get`` calls in the same order (the engine's
        feature step does; processes that do not stop at once with a :class:`~mmfuse.cache.peers.PeerError` naming
        each one's request). ``None`` or a single process: this cache as it is."""
        if peers is None or peers.world == 1:
            return self
        view = copy.copy(self)
        view.peers = peers
        return view

    # ----------------------------------------------------------------------------------------------- FeatureSource

    def get(
        self,
        encoder: Encoder,
        examples: Sequence[Example],
        *,
        need_sequence: bool,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        num_workers: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> FeatureTable:
        """Features of ``encoder`` for ``examples`` (row ``i`` = example ``i``); see the module docstring.

        Args:
            encoder: a text or image encoder; only a fully frozen one is cached.
            examples: the examples, in table row order.
            need_sequence: the token sequence / region grid too, not only the pooled vector.
            device: where to run the encoder for the inputs that are not cached.
            batch_size: inputs per encoder batch.
            num_workers: DataLoader workers that decode images (0: this cache's ``encode_workers``).
            progress: called with a number of examples done, until they add up to ``len(examples)``.
        """
        start = time.perf_counter()
        try:
            with self._lock:
                return self._get(encoder, list(examples), need_sequence, device, batch_size, num_workers, progress)
        finally:
            self.stats.seconds += time.perf_counter() - start

    def _get(
        self,
        encoder: Encoder,
        examples: list[Example],
        need_sequence: bool,
        device: torch.device | str,
        batch_size: int,
        num_workers: int,
        progress: Callable[[int], None] | None,
    ) -> FeatureTable:
        if not examples:
            raise ValueError("no examples to compute features for; pass at least one example")
        workers = num_workers or self.encode_workers
        if encoder.reads_example_ids:  # features read from the user's own file: a copy on disk would gain nothing
            return compute_features(encoder, examples, need_sequence=need_sequence, progress=progress)
        if not encoder.is_frozen:  # fine-tuned weights change as they train: their outputs are never stored
            self.stats.uncached += 1
            return self._encode(encoder, examples, need_sequence, device, batch_size, workers, progress)
        modality = "text" if isinstance(encoder, TextEncoder) else "image"
        identity = canonical_identity(encoder.cache_identity())
        ident_hex = identity_hash(identity)
        keys = self._hasher.keys(examples, modality=modality)
        # the storage dtypes key the memo as they key the shards: float32 and float16 tables never stand in for
        # each other (all-float32 keeps the key it had before float16 existed)
        request = request_key(ident_hex + self.storage.key_suffix, keys)
        memo = self._memo.get(request)
        if memo is not None and (memo.has_sequence or not need_sequence):
            self._memo.move_to_end(request)
            self.stats.memo_hits += 1
            if progress is not None:
                progress(len(examples))
            return memo if need_sequence else memo.pooled_only()
        self.stats.requests += 1
        folder = self._folder(ident_hex, identity, encoder, modality)
        wanted = _Request(encoder, examples, keys, need_sequence, device, batch_size, workers, progress)
        table = self._resolve(folder, wanted)
        if table.has_sequence and table.grid is None and isinstance(encoder, ImageEncoder):
            # every row came from shards written before the grid was stored with them: the same encoder (same
            # identity) gives the same grid, so it is read from the encoder (one blank image), not guessed
            table.grid = encoder.grid_shape()
        self._memo[request] = table
        self._memo.move_to_end(request)
        while len(self._memo) > self.max_tables:
            self._memo.popitem(last=False)
        # one usage record per dataset request whatever the dtypes (named as before float16 existed), so that
        # `cache ls` does not count a dataset twice after cache.dtype changed
        self._record_use(folder, request_key(ident_hex, keys), examples, keys, need_sequence)
        return table

    def clear_memo(self) -> None:
        """Forgets the in-process tables (the files stay)."""
        self._memo.clear()

    # ----------------------------------------------------------------------------------------------- resolution

    def _resolve(self, folder: _Folder, wanted: _Request) -> FeatureTable:
        own: list[tuple[FeatureTable, list[str]]] = []
        if self.peers is not None:  # this process's share first, with the others; then the table, as alone
            own = self._encode_share(folder, wanted)
            wanted = replace(wanted, progress=_after(wanted.progress, sum(len(chunk) for _, chunk in own)))
        for _ in range(3):
            try:
                return self._resolve_once(folder, wanted, own=own)
            except CorruptShardError as e:  # a shard failed its checksum mid-way: set it aside and start over
                self._discard(folder, e.path, e)
        return self._resolve_once(folder, wanted, own=own)

    def _encode_share(self, folder: _Folder, wanted: _Request) -> list[tuple[FeatureTable, list[str]]]:
        """Encodes and writes the inputs this process owns (:meth:`Peers.owns`) that no shard holds, one shard per
        round, every process meeting after each round (so a dead or stuck one is noticed within one shard's time,
        not the whole dataset's); returns the tables with their keys (kept, so a failed write costs no second
        encoding here). Every process makes the same number of rounds: the most any of them needs.

        At each meeting every process says which request it is at (:meth:`Peers.meet`), so processes that asked
        for different features stop at once. The backend is chosen for the whole job (all processes' misses, what
        ``auto`` weighs the ONNX export against), and where the encoder is to be exported, process 0 exports it
        while the others wait (:meth:`_export_once`)."""
        peers = self.peers
        assert peers is not None
        encoder, examples, keys, need_sequence, device = (
            wanted.encoder, wanted.examples, wanted.keys, wanted.need_sequence, wanted.device
        )  # fmt: skip
        held = {key for header in self._usable(folder, need_sequence) for key in header.keys}
        first = _first_rows(keys)
        unheld = [k for k in first if k not in held]
        todo = [k for k in unheld if peers.owns(k)]
        size = self.shard_examples
        modality = "text" if isinstance(encoder, TextEncoder) else "image"
        self._say_other_dtypes(folder, todo, need_sequence, modality)
        what = f"{len(first)} {modality} inputs of {folder.path}"
        # the request in a digest (the identity's folder, the storage dtypes, sequences or not, the keys in order)
        # and in words, for the message of processes that are not at the same one
        request = request_key(f"{folder.path.name}{self.storage.key_suffix}/{int(need_sequence)}", keys)[:16]
        about = (
            f"the {modality} encoder {encoder.name!r} on {len(keys)} inputs ({len(first)} distinct), "
            f"{'with' if need_sequence else 'without'} sequences, stored as {self.storage.dtype} (request {request})"
        )
        # process 0 counts the job's misses and says whether the encoder is to be exported for them
        due = peers.rank == 0 and onnx_export_due(encoder, onnx_dir=onnx_dir(self.root), total=len(unheld),
                                                  device=torch.device(device))  # fmt: skip
        said = peers.meet(request, about, f"the start of encoding {what}", (len(todo), len(unheld), due))
        rounds = max(-(-n // size) for n, _, _ in said)
        total = said[0][1]  # one choice of backend for the job, weighed against all of its misses
        if said[0][2]:
            sample = [examples[first[k]] for k in unheld[:CHECK_ROWS]]
            self._export_once(encoder, sample, device, total, request, about, what)
        own = []
        # one pass over this process's share (one DataLoader), a table per shard; nothing starts before next()
        tables = self._encode_for_store(wanted, [examples[first[k]] for k in todo], total=total)
        with contextlib.closing(tables):
            for r in range(rounds):
                chunk = todo[r * size : (r + 1) * size]
                if chunk:
                    table = self.storage.rounded(next(tables))  # what the other processes will read back
                    self._write(folder, table, chunk, remaining=len(todo) - r * size)
                    own.append((table, chunk))
                    self.stats.computed += len(chunk)
                peers.meet(f"{request}/{r}", f"{about}, round {r + 1} of {rounds}",
                           f"the end of round {r + 1} of {rounds} encoding {what}")  # fmt: skip
        logger.debug("%r encoded %d of %d %s inputs (%d were cached)", peers, len(todo), len(first), modality,
                     len(set(first) & held))  # fmt: skip
        return own

    def _export_once(
        self,
        encoder: Encoder,
        sample: list[Example],
        device: torch.device | str,
        total: int,
        request: str,
        about: str,
        what: str,
    ) -> None:
        """Process 0 exports ``encoder`` to ONNX for the job of ``total`` inputs (and makes its own choice of
        backend, :func:`~mmfuse.features.compute.choose_backend`, on ``sample``) while the others wait at a meeting;
        then each loads that one file and makes its own check. An export that failed is said to the others, which
        run torch as process 0 does, with its reason, instead of each trying it again; a process 0 that failed
        otherwise stops them with a :class:`PeerError`."""
        peers = self.peers
        assert peers is not None
        where = onnx_dir(self.root)
        name = f"{'text' if isinstance(encoder, TextEncoder) else 'image'} encoder {encoder.name!r}"
        meeting = f"process 0's ONNX export of the {name} encoding {what}"
        outcome: tuple[str, str] | None = None
        if peers.rank == 0:
            try:
                reason = choose_backend(encoder, sample, onnx_dir=where, total=total, device=device)
            except Exception as e:
                with contextlib.suppress(PeerError):  # tell the others, then stop as this process would alone
                    peers.meet(f"{request}/onnx", about, meeting, ("crashed", f"{type(e).__name__}: {e}"[:300]))
                raise
            if reason is not None and not onnx_file(encoder, where).is_file():
                outcome = ("failed", reason)
        told = peers.meet(f"{request}/onnx", about, meeting, outcome)[0]
        if told is None or peers.rank == 0:
            return
        kind, reason = told
        if kind == "crashed":
            raise PeerError(
                f"process {peers.rank} of {peers.world}: process 0 failed exporting the {name} to ONNX ({reason}); "
                "see its output for why. The shards written so far are kept in the cache; with the encoder's "
                "backend: torch no process exports it"
            )
        refuse_onnx(encoder, reason, onnx_dir=where)

    def _resolve_once(
        self, folder: _Folder, wanted: _Request, own: Sequence[tuple[FeatureTable, list[str]]] = ()
    ) -> FeatureTable:
        keys, need_sequence, progress = wanted.keys, wanted.need_sequence, wanted.progress
        first = _first_rows(keys)
        parts = [_Part(table) for table, _ in own]  # what this process encoded with its peers: in memory already
        where = {k: (p, j) for p, (_, chunk) in enumerate(own) for j, k in enumerate(chunk)}  # key -> (part, row)
        self._locate(folder, set(first), need_sequence, parts, where)
        loaded = sum(1 for k in keys if k in where)
        if progress is not None and loaded:
            progress(loaded)
        missing = [k for k in first if k not in where]
        if missing and self.peers is None:
            modality = "text" if isinstance(wanted.encoder, TextEncoder) else "image"
            self._say_other_dtypes(folder, missing, need_sequence, modality)
        if missing and self.peers is not None:
            self.stats.peer_gaps += len(missing)
            logger.warning(
                "%d of %d inputs that the other processes encoded are not in the feature cache folder %s (it must be "
                "one folder shared by every process, and writable; see the warnings above): process %d encodes them "
                "again. Point cache.dir (or MMFUSE_CACHE_DIR) at a folder every process can write",
                len(missing), len(first), folder.path, self.peers.rank,
            )  # fmt: skip
        tables = self._encode_for_store(
            wanted, [wanted.examples[first[k]] for k in missing]
        )  # one pass over all the misses (one DataLoader), a table per shard; nothing starts before next()
        with contextlib.closing(tables):
            for start in range(0, len(missing), self.shard_examples):
                chunk = missing[start : start + self.shard_examples]
                table = self.storage.rounded(next(tables))  # what a warm run will read back
                self._write(folder, table, chunk, remaining=len(missing) - start)
                parts.append(_Part(table))
                where.update((k, (len(parts) - 1, j)) for j, k in enumerate(chunk))
        duplicates = len(keys) - loaded - len(missing)
        if progress is not None and duplicates:
            progress(duplicates)
        table = assemble(parts, [where[k] for k in keys], need_sequence=need_sequence)
        self.stats.loaded += len(first) - len(missing) - sum(len(chunk) for _, chunk in own)
        self.stats.computed += len(missing)
        return table

    def _locate(
        self,
        folder: _Folder,
        wanted: set[str],
        need_sequence: bool,
        parts: list[_Part],
        where: dict[str, tuple[int, int]],
    ) -> None:
        """Finds the shards that hold ``wanted`` keys (newest first) and opens them as parts (small tensors read
        and checked now, sequences when the table is assembled)."""
        headers = self._usable(folder, need_sequence)
        for header in sorted(headers, key=lambda h: h.created, reverse=True):
            rows = [(k, j) for j, k in enumerate(header.keys) if k in wanted and k not in where]
            if not rows:
                continue
            try:
                part = _Part.open(header, need_sequence=need_sequence)
            except FileNotFoundError:
                folder.headers.pop(header.path.name, None)  # removed meanwhile (cache clear): recompute
                continue
            except CorruptShardError as e:
                self._discard(folder, header.path, e)
                continue
            parts.append(part)
            where.update((k, (len(parts) - 1, j)) for k, j in rows)
            if len(where) == len(wanted):
                return

    def _say_other_dtypes(self, folder: _Folder, missing: list[str], need_sequence: bool, modality: str) -> None:
        """Counts the ``missing`` inputs (about to be encoded) that the folder holds in other storage dtypes, which
        this request may not read (float32 grids written before float16 became the default, say), and says so with
        the setting that would reuse them: a warning (on a run's console) the first time per folder and process,
        then a line in the log. Reads only the shard headers already scanned."""
        want, wanted = self.storage, set(missing)
        found: dict[tuple[str, str | None], set[str]] = {}  # (pooled dtype, sequence dtype or None) -> keys
        for header in self._scan(folder):
            if need_sequence and not header.sequence:
                continue
            if header.serves(need_sequence=need_sequence, dtype=want.dtype, pooled_dtype=want.pooled_dtype):
                continue
            pooled, values = header.dtype_of("pooled"), header.dtype_of("values") if need_sequence else None
            if pooled is None:
                continue
            held = wanted.intersection(header.keys)
            if held:
                found.setdefault((pooled, values), set()).update(held)
        if not found:
            return
        count = len(set().union(*found.values()))
        self.stats.other_dtype += count
        stored = ", ".join(
            f"{len(keys)} with pooled vectors {pooled}" + (f" and sequences {values}" if values else "")
            for (pooled, values), keys in sorted(found.items(), key=lambda item: str(item[0]))
        )
        (pooled, values), _ = max(found.items(), key=lambda item: len(item[1]))
        fix = [f"cache.dtype: {values}"] if values not in (None, want.dtype) else []
        fix += [f"cache.pooled_dtype: {pooled}"] if pooled != want.pooled_dtype else []
        why = ""
        if want.dtype == DEFAULT_DTYPE and any(v == "float32" for _, v in found):
            why = f" ({DEFAULT_DTYPE} sequences and grids are the default now, half the bytes; float32 was before)"
        level = logging.INFO if folder.said_other_dtypes else logging.WARNING
        folder.said_other_dtypes = True
        logger.log(
            level,
            "feature cache %s: %d of the %d %s inputs to encode are stored there in other dtypes (%s), which this "
            "run's cache.dtype: %s, cache.pooled_dtype: %s does not read%s: encoding them again. Set %s to reuse them",
            folder.path, count, len(missing), modality, stored, want.dtype, want.pooled_dtype, why, " and ".join(fix),
        )  # fmt: skip

    def _usable(self, folder: _Folder, need_sequence: bool) -> list[ShardHeader]:
        """Headers of the folder's shards that can serve this request in this cache's storage dtypes."""
        want = self.storage
        return [
            h
            for h in self._scan(folder)
            if h.serves(need_sequence=need_sequence, dtype=want.dtype, pooled_dtype=want.pooled_dtype)
        ]

    def _scan(self, folder: _Folder) -> list[ShardHeader]:
        """Headers of the folder's usable shards (each file's header read once per process, checked for identity)."""
        try:
            entries = list(os.scandir(folder.path))
        except FileNotFoundError:
            entries = []
        seen: set[str] = set()
        out = []
        for entry in entries:
            path = Path(entry.path)
            if not is_shard_file(path):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            seen.add(entry.name)
            known = folder.headers.get(entry.name)
            if known is not None and known[0] == stamp:
                out.append(known[1])
                continue
            if (entry.name, *stamp) in folder.bad:
                continue
            try:
                header = read_header(path)
                if header.identity != folder.identity:
                    raise CorruptShardError(path, "it was computed by another encoder or preprocessing")
            except FileNotFoundError:
                continue
            except CorruptShardError as e:
                folder.bad.add((entry.name, *stamp))
                self._discard(folder, path, e)
                continue
            folder.headers[entry.name] = (stamp, header)
            out.append(header)
        for name in set(folder.headers) - seen:
            del folder.headers[name]
        return out

    def _discard(self, folder: _Folder, path: Path, error: CorruptShardError) -> None:
        """Moves a damaged or foreign shard out of the way (renamed ``*.corrupt``, ignored by readers)."""
        self.stats.corrupt += 1
        folder.headers.pop(path.name, None)
        logger.warning("%s", error)
        with contextlib.suppress(OSError):  # read-only cache or gone already: it stays ignored in this process
            os.replace(path, path.with_name(path.name + ".corrupt"))

    # ----------------------------------------------------------------------------------------------- encoding, writing

    def _encode_for_store(
        self, wanted: _Request, examples: list[Example], *, total: int | None = None
    ) -> Iterator[FeatureTable]:
        """Encodes new entries in one pass (:func:`~mmfuse.features.compute.compute_feature_chunks`: one DataLoader,
        its workers started once), a table per :attr:`shard_examples` inputs, each yielded as soon as it is encoded
        so that it is written before the next is encoded (an interrupted fill keeps the shards it finished). With
        their sequences when asked or when :attr:`CacheStorage.store_sequences` names the encoder's modality (see
        the module docstring); an encoder that has none (found on the first shard) stores what there is. ``total``:
        what ``auto`` weighs the ONNX export against (default: all of ``examples``), which are some of ``wanted``'s
        (its encoder, device, batches and progress)."""
        encoder, need_sequence = wanted.encoder, wanted.need_sequence
        modality = "text" if isinstance(encoder, TextEncoder) else "image"
        total = len(examples) if total is None else total
        args = (encoder, examples, wanted.device, wanted.batch_size, wanted.workers, wanted.progress, total)
        if need_sequence or not self.storage.stores_sequence(modality):
            yield from self._encode_chunks(*args, need_sequence=need_sequence)
            return
        tables = self._encode_chunks(*args, need_sequence=True)
        try:
            first = next(tables, None)
        except ValueError:  # the encoder has no sequence output: store what there is
            tables.close()
            tables = self._encode_chunks(*args, need_sequence=False)
            first = next(tables, None)
        with contextlib.closing(tables):
            if first is not None:
                yield first
                yield from tables

    def _encode_chunks(
        self,
        encoder: Encoder,
        examples: list[Example],
        device: torch.device | str,
        batch_size: int,
        workers: int,
        progress: Callable[[int], None] | None,
        total: int,
        *,
        need_sequence: bool,
    ) -> Iterator[FeatureTable]:
        """:func:`~mmfuse.features.compute.compute_feature_chunks` of ``examples``, a table per shard, each encoded
        inside a forked global RNG (as :meth:`_encode`) and timed in :attr:`CacheStats.encode_seconds`."""
        tables = compute_feature_chunks(
            encoder,
            examples,
            chunk=self.shard_examples,
            need_sequence=need_sequence,
            device=device,
            batch_size=batch_size,
            num_workers=0 if isinstance(encoder, TextEncoder) else workers,
            progress=progress,
            onnx_dir=onnx_dir(self.root),
            total=total,
        )
        with contextlib.closing(tables):
            while True:
                start = time.perf_counter()
                try:
                    # The DataLoader inside draws its base seed from the global RNG (when the first table is asked
                    # for): fork it, so that training after a cold cache draws the same weights and dropout as
                    # training after a warm one.
                    with torch.random.fork_rng(devices=[]):
                        table = next(tables, None)
                finally:
                    self.stats.encode_seconds += time.perf_counter() - start
                if table is None:
                    return
                yield table

    def _encode(
        self,
        encoder: Encoder,
        examples: list[Example],
        need_sequence: bool,
        device: torch.device | str,
        batch_size: int,
        workers: int,
        progress: Callable[[int], None] | None,
    ) -> FeatureTable:
        """Features of an encoder whose weights train (never stored), in one call."""
        start = time.perf_counter()
        # The DataLoader inside draws its base seed from the global RNG: fork it, so that training after a cold
        # cache draws the same weights and dropout as training after a warm one.
        try:
            with torch.random.fork_rng(devices=[]):
                return compute_features(
                    encoder,
                    examples,
                    need_sequence=need_sequence,
                    device=device,
                    batch_size=batch_size,
                    num_workers=0 if isinstance(encoder, TextEncoder) else workers,
                    progress=progress,
                    onnx_dir=onnx_dir(self.root),
                )
        finally:
            self.stats.encode_seconds += time.perf_counter() - start

    def _write(self, folder: _Folder, table: FeatureTable, keys: list[str], *, remaining: int) -> None:
        """Stores ``table`` as a new shard. Before the first byte is written, the free space of the cache folder's
        disk is compared with what the ``remaining`` inputs still to store (these and the ones after them) need, at
        this table's bytes per input: a folder that cannot take them (too little space, read-only, full, no
        permission) is said once, as a warning naming the folder, the reason and the fix, and this cache stores
        nothing more in this process; the run goes on with the features in memory."""
        if self._write_failed:
            self.stats.unstored += len(keys)
            return
        need = remaining * _bytes_per_input(table, self.storage)
        free = free_bytes(folder.path)
        if free is not None and need > free:
            self._stop_writing(
                folder.path, f"{_mb(free)} free on its disk, and the features of {remaining} inputs need about "
                f"{_mb(need)}", len(keys)
            )  # fmt: skip
            return
        modality = "image" if table.present is not None else "text"
        try:
            header = write_shard(
                folder.path,
                table,
                keys,
                identity=folder.identity,
                modality=modality,
                dtype=self.storage.dtype,
                pooled_dtype=self.storage.pooled_dtype,
            )
        except OSError as e:  # write_shard left no partial file behind
            self._stop_writing(folder.path, reason_of(e), len(keys))
            return
        st = header.path.stat()
        folder.headers[header.path.name] = ((st.st_size, st.st_mtime_ns), header)

    def _stop_writing(self, path: Path, reason: str, unstored: int) -> None:
        self._write_failed = True
        self.stats.unstored += unstored
        logger.warning(
            "the feature cache folder %s cannot be written (%s): features are kept in this process only, and later "
            "runs encode them again. Free space there, or set cache.dir (or MMFUSE_CACHE_DIR) to a writable "
            "folder, or to off",
            path,
            reason,
        )

    def _folder(self, ident_hex: str, identity: str, encoder: Encoder, modality: str) -> _Folder:
        folder = self._folders.get(ident_hex)
        if folder is not None:
            return folder
        folder = _Folder(features_dir(self.root) / ident_hex, identity)
        self._folders[ident_hex] = folder
        if folder.path.is_dir():
            for tmp in stale_temporaries(folder.path, _STALE_TMP_S):
                tmp.unlink(missing_ok=True)
        info_path = folder.path / IDENTITY_FILE
        try:
            stored = json.loads(info_path.read_text(encoding="utf-8"))
            if canonical_identity(stored.get("identity")) == identity:
                return folder
            logger.warning("feature cache %s: identity.json describes another encoder; rewriting it", folder.path)
        except (OSError, ValueError, AttributeError):
            pass
        info = {
            "identity": json.loads(identity),
            "identity_sha256": ident_hex,
            "name": getattr(encoder, "name", type(encoder).__name__),
            "class": type(encoder).__name__,
            "modality": modality,
            "created": time.time(),
        }
        _write_json(info_path, info)
        return folder

    def _record_use(
        self, folder: _Folder, request: str, examples: list[Example], keys: list[str], need_sequence: bool
    ) -> None:
        """Notes which dataset asked for features (shown by ``mmfuse cache ls``); best effort."""
        path = folder.path / USAGE_DIR / f"{request[:16]}.json"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            need_sequence = need_sequence or bool(json.loads(path.read_text(encoding="utf-8")).get("sequence"))
        record = {
            "dataset": dataset_label(examples),
            "examples": len(examples),
            "inputs": len(set(keys)),
            "sequence": need_sequence,
            "last_used": time.time(),
        }
        _write_json(path, record)


def _after(progress: Callable[[int], None] | None, done: int) -> Callable[[int], None] | None:
    """``progress`` that drops its first ``done`` units: they were reported already."""
    if progress is None or done <= 0:
        return progress
    skip = [done]

    def report(n: int) -> None:
        dropped = min(skip[0], n)
        skip[0] -= dropped
        if n > dropped:
            progress(n - dropped)

    return report


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes JSON atomically (temporary file + ``os.replace``); a read-only or full cache is not an error (the
    shard writes say it), and leaves no temporary file behind."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        logger.debug("cannot write %s: %s", path, e)


def _bytes_per_input(table: FeatureTable, storage: CacheStorage) -> int:
    """Bytes one input of ``table`` takes in a shard: its tensors as stored (features in ``storage``'s dtypes, bool
    masks, int64 offsets) and its content key in the header."""
    pooled_size, values_size = (torch_dtype(d).itemsize for d in (storage.pooled_dtype, storage.dtype))
    stored = table.pooled.numel() * pooled_size + (table.present.numel() if table.present is not None else 0)
    if table.has_sequence:
        assert table.values is not None and table.valid is not None and table.offsets is not None
        stored += table.values.numel() * values_size + table.valid.numel() + table.offsets.numel() * 8
    return -(-stored // len(table)) + _KEY_BYTES


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def dataset_label(examples: Sequence[Example]) -> str:
    """A short name of where the examples come from: the common folder of their images."""
    parents = {os.fspath(e.image.parent) for e in examples if e.image is not None}
    if not parents:
        return "(texts only)"
    try:
        return os.path.commonpath(sorted(parents))
    except ValueError:  # different drives
        return sorted(parents)[0]


class _Part:
    """A source of rows for :func:`assemble`: a computed table in memory, or a shard whose small tensors (pooled,
    present, offsets) are read at once and whose sequences are read only while being copied out."""

    def __init__(self, table: FeatureTable, header: ShardHeader | None = None) -> None:
        self.table = table
        self.header = header

    @classmethod
    def open(cls, header: ShardHeader, *, need_sequence: bool) -> _Part:
        small = load_shard(header, need_sequence=False)
        if need_sequence:
            if not header.sequence:
                raise ValueError(f"shard {str(header.path)!r} holds pooled vectors only; it cannot serve sequences")
            small.offsets = read_tensors(header, ["offsets"])["offsets"]
            check_offsets(header, small.offsets, header.shapes["values"][0])
            small.grid = header.grid
        return cls(small, header)

    @property
    def pooled(self) -> torch.Tensor:
        return self.table.pooled

    @property
    def present(self) -> torch.Tensor | None:
        return self.table.present

    @property
    def offsets(self) -> torch.Tensor:
        assert self.table.offsets is not None, "a pooled-only part cannot serve a sequence request"
        return self.table.offsets

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, valid)``; a shard's are read now (and checked) and dropped by the caller after use."""
        if self.header is None:
            assert self.table.values is not None and self.table.valid is not None
            return self.table.values, self.table.valid
        tensors = read_tensors(self.header, ["values", "valid"])
        return tensors["values"], tensors["valid"]


def assemble(parts: Sequence[_Part], sources: Sequence[tuple[int, int]], *, need_sequence: bool) -> FeatureTable:
    """A new table whose row ``i`` is row ``sources[i][1]`` of ``parts[sources[i][0]]`` (always a copy).

    The output is allocated once and filled part by part, so reading a cached table costs its own size plus one
    shard. Sequences are gathered with vectorised index arithmetic (no per-example Python loop over tensors).
    """
    n = len(sources)
    assert n > 0 and parts, "nothing to assemble"
    part_of = torch.tensor([p for p, _ in sources], dtype=torch.long)
    row_of = torch.tensor([r for _, r in sources], dtype=torch.long)
    pooled = torch.empty(n, parts[0].pooled.shape[1], dtype=torch.float32)
    with_present = parts[0].present is not None
    present = torch.empty(n, dtype=torch.bool) if with_present else None
    selections = []
    for p, part in enumerate(parts):
        sel = (part_of == p).nonzero().squeeze(1)
        if not len(sel):
            continue
        rows = row_of[sel]
        pooled[sel] = part.pooled[rows].float()
        if present is not None:
            assert part.present is not None
            present[sel] = part.present[rows]
        selections.append((part, sel, rows))
    if not need_sequence:
        return FeatureTable(pooled=pooled, present=present)
    grids = {part.table.grid for part, _, _ in selections} - {None}  # None: a shard from before grids were stored
    if len(grids) > 1:
        raise ValueError(f"cached parts of one encoder hold image grids of different shapes {sorted(grids)}")
    lengths = torch.empty(n, dtype=torch.long)
    for part, sel, rows in selections:
        lengths[sel] = part.offsets[rows + 1] - part.offsets[rows]
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    values: torch.Tensor | None = None
    valid = torch.empty(int(offsets[-1]), dtype=torch.bool)
    for part, sel, rows in selections:
        part_values, part_valid = part.sequences()
        if values is None:
            values = torch.empty(int(offsets[-1]), part_values.shape[1], dtype=torch.float32)
        counts = lengths[sel]
        total = int(counts.sum())
        # position of each packed row within its example: 0..len-1, for every selected example in turn
        within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        src = torch.repeat_interleave(part.offsets[rows], counts) + within
        dst = torch.repeat_interleave(offsets[sel], counts) + within
        values[dst] = part_values[src].float()  # float16 entries are read back as float32
        valid[dst] = part_valid[src]
        del part_values, part_valid
    grid = grids.pop() if grids else None
    return FeatureTable(pooled=pooled, values=values, valid=valid, offsets=offsets, present=present, grid=grid)


_SHARED: dict[Path, FeatureCache] = {}


def feature_source(
    cache_dir: str | os.PathLike[str] | None = None, storage: CacheStorage | None = None
) -> FeatureSource:
    """The feature source the engine should use: this process's :class:`FeatureCache` for the resolved cache folder
    (one per folder, so every model trained in the process shares its memo), or the in-process memo
    (:func:`~mmfuse.features.default_store`) when the persistent cache is off.

    Args:
        cache_dir: config ``cache.dir`` / ``--cache-dir``; ``None`` uses ``MMFUSE_CACHE_DIR`` or the default folder.
        storage: how entries are stored and read (default: :class:`CacheStorage`'s defaults).
    """
    root = resolve_cache_dir(cache_dir)
    if root is None:
        return default_store()
    key = root.resolve() if root.exists() else root.absolute()
    if key not in _SHARED:
        _SHARED[key] = FeatureCache(key)
    return _SHARED[key].with_storage(storage or CacheStorage())


def source_for(
    enabled: bool,
    folder: str | None,
    *,
    dtype: str = DEFAULT_DTYPE,
    pooled_dtype: str = "float32",
    store_sequences: bool | Sequence[str] = False,
) -> FeatureSource:
    """Where a run gets features of frozen encoders, as its ``cache`` config says: the persistent feature cache
    (:func:`feature_source`: ``folder``, else ``$MMFUSE_CACHE_DIR``, else ``~/.cache/mmfuse``; one per folder and
    process) storing entries as ``dtype`` / ``pooled_dtype`` / ``store_sequences`` say (see :class:`CacheStorage`), or
    the in-process memo when ``enabled`` is false or the folder is ``off``."""
    if not enabled:
        return default_store()
    stored = store_sequences if isinstance(store_sequences, bool) else frozenset(store_sequences)
    return feature_source(folder, CacheStorage(dtype=dtype, pooled_dtype=pooled_dtype, store_sequences=stored))


def _first_rows(keys: Sequence[str]) -> dict[str, int]:
    """Each distinct key -> the first row that has it (in ``keys`` order)."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return first
