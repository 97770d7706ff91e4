"""Bring your own features: the ``precomputed`` encoders, which read per-example vectors from a file by example id.

A user with embeddings from another system (an API, a model mmfuse does not know) trains mmfuse heads on them:
``model.text_encoder: {name: precomputed, options: {path: feats.parquet}}`` (or ``model.image_encoder``). The file
holds one row per example id:

- **Parquet** (``.parquet``): a column ``id`` (``id_key``) and a column ``pooled`` (``pooled_key``) of equal-length
  lists of floats; optionally ``sequence`` (per row a list of vectors: token states or grid regions, any number per
  row) and ``mask`` (per row a list of bools, ``True`` for a real token/region; default all ``True``).
- **NPZ** (``.npz``, ``numpy.savez``): arrays ``ids`` (or ``id``; ``id_key``) ``(N,)`` (strings or ints),
  ``pooled`` ``(N, D)``, optionally ``sequence`` ``(N, L, D_seq)`` and ``mask`` ``(N, L)``.
- **NPY** (``.npy``): a ``(N, D)`` array of pooled vectors; the ids come from ``ids``: a text file with one id per
  line, in the array's row order.

An image file's sequences are grid regions; ``options.grid: [h, w]`` says their layout (``h·w`` must be the stored
sequence length, every row holding all its cells), which the encoder's outputs then carry (``EncoderOutput.grid``)
to ``early_fusion``'s 2-D pooling, ``cross_attention`` and the attention plots; without it they are one row of
regions.

Ids are matched as strings (an int id ``7`` is ``"7"``, as in a data file). An example whose id has no row gets zero
features (and for images ``image_present=False``, as a missing image does): such examples are counted and named in a
:class:`MissingFeaturesWarning` and the ``mmfuse.encoders`` log, and more than ``max_missing`` of them (a share,
default 0) is a :class:`MissingFeaturesError`. The encoder's ``cache_identity()`` is the file's content hash (and the
keys read), so a changed file is a different encoder for checkpoints.

These encoders run nothing: the features layer asks them for the rows of a dataset's ids (``reads_example_ids``,
:meth:`~mmfuse.encoders.base.Encoder.encode_ids`) instead of tokenizing or preprocessing. So a model on precomputed
features predicts examples whose ids are in the file (``MultimodalClassifier.predict`` / ``evaluate``, ``mmfuse
predict``), but cannot read raw text or images: serving it or exporting it to ONNX is refused
(:func:`raw_input_problem`).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfuse.encoders._common import jsonable
from mmfuse.encoders.base import EncoderOutput, ImageEncoder, TextEncoder

__all__ = [
    "FeatureFileError",
    "MissingFeaturesError",
    "MissingFeaturesWarning",
    "PrecomputedImageEncoder",
    "PrecomputedTextEncoder",
    "raw_input_problem",
]

logger = logging.getLogger("mmfuse.encoders")

FORMATS = (".parquet", ".npz", ".npy")
_SHOW = 5  # ids named in a message


class FeatureFileError(ValueError):
    """A feature file that cannot be read or whose arrays do not fit together (the message says what to fix)."""


class MissingFeaturesError(ValueError):
    """More examples have no row in the feature file than ``max_missing`` allows."""


class MissingFeaturesWarning(UserWarning):
    """Some examples have no row in the feature file and got zero features."""


class _FeatureFile:
    """A feature file read into memory: ids, pooled ``(N, D)``, and optional padded sequence ``(N, L, D_seq)`` with
    its mask ``(N, L)``."""

    def __init__(
        self,
        path: Path,
        *,
        ids: str | Path | None,
        id_key: str,
        pooled_key: str,
        sequence_key: str,
        mask_key: str,
    ) -> None:
        self.path = path
        suffix = path.suffix.lower()
        sequence: np.ndarray | None = None
        mask: np.ndarray | None = None
        if suffix == ".parquet":
            id_list, pooled, sequence, mask = self._parquet(id_key, pooled_key, sequence_key, mask_key)
        elif suffix == ".npz":
            id_list, pooled, sequence, mask = self._npz(id_key, pooled_key, sequence_key, mask_key)
        else:
            id_list, pooled = self._npy(ids)
        self.ids = id_list
        self.pooled = self._checked_pooled(pooled)
        self.sequence, self.mask = self._checked_sequence(sequence, mask)
        self.index = self._index(id_list)
        self.sha256 = _file_hash(path) if ids is None else _file_hash(path, Path(ids))

    # --- readers -------------------------------------------------------------------------------------------------

    def _parquet(
        self, id_key: str, pooled_key: str, sequence_key: str, mask_key: str
    ) -> tuple[list[str], Any, np.ndarray | None, np.ndarray | None]:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.path)
        except Exception as e:  # pyarrow's errors differ by version: ArrowInvalid, OSError
            raise FeatureFileError(
                f"cannot read Parquet feature file {str(self.path)!r} ({type(e).__name__}: {e})"
            ) from None
        columns = table.column_names
        for key, what in ((id_key, "id_key"), (pooled_key, "pooled_key")):
            if key not in columns:
                raise FeatureFileError(
                    f"feature file {str(self.path)!r} has no column {key!r} (options.{what}); its columns: {columns}"
                )
        ids = _id_strings(table.column(id_key).to_pylist(), self.path)
        pooled = self._rows(table.column(pooled_key).to_pylist(), ids, pooled_key)
        if sequence_key not in columns:
            if mask_key in columns:
                raise FeatureFileError(
                    f"feature file {str(self.path)!r} has a {mask_key!r} column but no {sequence_key!r} column "
                    "(options.sequence_key) for it to mask"
                )
            return ids, pooled, None, None
        rows = table.column(sequence_key).to_pylist()
        masks = table.column(mask_key).to_pylist() if mask_key in columns else None
        seqs = [self._rows(r, [f"{i} (row {j})" for j in range(len(r or ()))], sequence_key, of=i) for i, r in
                zip(ids, rows, strict=True)]  # fmt: skip
        dims = {s.shape[1] for s in seqs if s.size}
        if len(dims) > 1:
            raise FeatureFileError(
                f"feature file {str(self.path)!r}: the vectors of column {sequence_key!r} have different sizes "
                f"{sorted(dims)}; every token/region vector must have the same size"
            )
        dim = dims.pop() if dims else 1
        length = max((len(s) for s in seqs), default=0) or 1
        sequence = np.zeros((len(ids), length, dim), dtype=np.float32)
        mask = np.zeros((len(ids), length), dtype=bool)
        for i, s in enumerate(seqs):
            if s.size:
                sequence[i, : len(s)] = s
            if masks is None:
                mask[i, : len(s)] = True
                continue
            m = masks[i] or []
            if len(m) != len(s):
                raise FeatureFileError(
                    f"feature file {str(self.path)!r}: id {ids[i]!r} has {len(s)} {sequence_key!r} vectors but "
                    f"{len(m)} {mask_key!r} entries; give one mask entry per vector"
                )
            mask[i, : len(m)] = np.asarray(m, dtype=bool)
        return ids, pooled, sequence, mask

    def _rows(self, values: list[Any], ids: Sequence[str], key: str, of: str | None = None) -> np.ndarray:
        """Equal-length float lists → ``(n, D)``; a row of another length or not a list of numbers names its id."""
        where = f"id {of!r}, " if of is not None else ""
        if not values:
            return np.zeros((0, 0), dtype=np.float32)
        lengths: dict[int, str] = {}
        for i, v in zip(ids, values, strict=True):
            if v is None:
                raise FeatureFileError(f"feature file {str(self.path)!r}: {where}id {i!r} has no {key!r} value")
            lengths.setdefault(len(v), i)
        if len(lengths) > 1:
            shown = ", ".join(f"{n} (id {i!r})" for n, i in list(lengths.items())[:3])
            raise FeatureFileError(
                f"feature file {str(self.path)!r}: {where}the {key!r} vectors have different lengths: {shown}; every "
                "vector must have the same size"
            )
        try:
            return np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise FeatureFileError(
                f"feature file {str(self.path)!r}: {where}{key!r} is not lists of numbers ({e})"
            ) from None

    def _npz(self, id_key: str, pooled_key: str, sequence_key: str, mask_key: str) -> tuple[list[str], Any, Any, Any]:
        try:
            data = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FeatureFileError(
                f"cannot read NPZ feature file {str(self.path)!r} ({type(e).__name__}: {e})"
            ) from None
        with data:
            keys = list(data.keys())
            if id_key == "id" and "id" not in keys and "ids" in keys:  # the default key: ``ids`` reads as naturally
                id_key = "ids"
            for key, what in ((id_key, "id_key"), (pooled_key, "pooled_key")):
                if key not in keys:
                    raise FeatureFileError(
                        f"feature file {str(self.path)!r} has no array {key!r} (options.{what}); its arrays: {keys}"
                    )
            ids = _id_strings(data[id_key].tolist(), self.path)
            sequence = data[sequence_key] if sequence_key in keys else None
            mask = data[mask_key] if mask_key in keys else None
            return ids, data[pooled_key], sequence, mask

    def _npy(self, ids: str | Path | None) -> tuple[list[str], Any]:
        if ids is None:
            raise FeatureFileError(
                f"feature file {str(self.path)!r} is a .npy array, which holds no ids; pass options.ids: a text file "
                "with one example id per line in the array's row order (or use .npz / .parquet with an id column)"
            )
        ids_path = Path(ids).expanduser()
        if not ids_path.is_file():
            raise FileNotFoundError(f"ids file {str(ids_path)!r} (options.ids) not found; one example id per line")
        try:
            pooled = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FeatureFileError(
                f"cannot read NPY feature file {str(self.path)!r} ({type(e).__name__}: {e})"
            ) from None
        lines = ids_path.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        return _id_strings([line.strip() for line in lines], ids_path), pooled

    # --- checks --------------------------------------------------------------------------------------------------

    def _checked_pooled(self, pooled: Any) -> np.ndarray:
        pooled = np.asarray(pooled)
        n = len(self.ids)
        if pooled.ndim != 2 or pooled.shape[1] == 0:
            raise FeatureFileError(
                f"feature file {str(self.path)!r}: the pooled vectors must be a (N, D) array (one D-sized vector per "
                f"example), got shape {pooled.shape}"
            )
        if pooled.shape[0] != n:
            raise FeatureFileError(
                f"feature file {str(self.path)!r} has {n} ids but {pooled.shape[0]} pooled vectors; give one vector "
                "per id, in the same order"
            )
        if not np.issubdtype(pooled.dtype, np.number) or np.issubdtype(pooled.dtype, np.complexfloating):
            raise FeatureFileError(
                f"feature file {str(self.path)!r}: pooled vectors of dtype {pooled.dtype}; need floats"
            )
        pooled = pooled.astype(np.float32)
        self._check_finite(pooled.reshape(n, -1), "pooled")
        return pooled

    def _checked_sequence(self, sequence: Any, mask: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        n = len(self.ids)
        if sequence is None:
            if mask is not None:
                raise FeatureFileError(f"feature file {str(self.path)!r} has a mask but no sequence for it to mask")
            return None, None
        sequence = np.asarray(sequence)
        if sequence.ndim != 3 or sequence.shape[0] != n or sequence.shape[2] == 0:
            raise FeatureFileError(
                f"feature file {str(self.path)!r}: the sequence must be a (N, L, D) array with N = {n} ids (L "
                f"tokens/regions of D values each), got shape {sequence.shape}"
            )
        if not np.issubdtype(sequence.dtype, np.number):
            raise FeatureFileError(f"feature file {str(self.path)!r}: sequence of dtype {sequence.dtype}; need floats")
        sequence = sequence.astype(np.float32)
        self._check_finite(sequence.reshape(n, -1), "sequence")
        if mask is None:
            mask = np.ones(sequence.shape[:2], dtype=bool)
        mask = np.asarray(mask)
        if mask.shape != sequence.shape[:2]:
            raise FeatureFileError(
                f"feature file {str(self.path)!r}: the mask must be (N, L) = {sequence.shape[:2]} like the sequence, "
                f"got shape {mask.shape}"
            )
        return sequence, mask.astype(bool)

    def _check_finite(self, values: np.ndarray, what: str) -> None:
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            shown = [self.ids[i] for i in np.flatnonzero(bad)[:_SHOW]]
            raise FeatureFileError(
                f"feature file {str(self.path)!r}: {int(bad.sum())} rows have NaN or infinite {what} values "
                f"(ids {shown}); fix or drop those rows"
            )

    def _index(self, ids: list[str]) -> dict[str, int]:
        index: dict[str, int] = {}
        dupes: list[str] = []
        for i, key in enumerate(ids):
            if key in index:
                dupes.append(key)
            index[key] = i
        if dupes:
            raise FeatureFileError(
                f"feature file {str(self.path)!r} has {len(dupes)} duplicate ids (first: {dupes[:_SHOW]}); give each "
                "example one row"
            )
        return index


def _id_strings(values: list[Any], path: Path) -> list[str]:
    out = []
    for v in values:
        if v is None or isinstance(v, (bool, float)) or (isinstance(v, str) and not v):
            raise FeatureFileError(
                f"feature file {str(path)!r}: id {v!r} is not an id; ids must be non-empty strings or integers"
            )
        out.append(v.decode() if isinstance(v, bytes) else str(v))
    return out


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\x00")
    return h.hexdigest()


class _Precomputed:
    """What both precomputed encoders share: the file, the lookup by id, identity, and refusing raw inputs."""

    reads_example_ids = True
    modality = "?"

    def __init__(
        self,
        source: Any = None,
        *,
        name: str | None = None,
        path: str | None = None,
        ids: str | None = None,
        id_key: str = "id",
        pooled_key: str = "pooled",
        sequence_key: str = "sequence",
        mask_key: str = "mask",
        max_missing: float = 0.0,
    ) -> None:
        nn.Module.__init__(self)
        self._setup(
            path, name=name, ids=ids, id_key=id_key, pooled_key=pooled_key, sequence_key=sequence_key,
            mask_key=mask_key, max_missing=max_missing,
        )  # fmt: skip

    def _setup(
        self,
        path: str | Path | None,
        *,
        name: str | None,
        ids: str | Path | None,
        id_key: str,
        pooled_key: str,
        sequence_key: str,
        mask_key: str,
        max_missing: float,
    ) -> None:
        if path is None:
            raise ValueError(
                f"the precomputed {self.modality} encoder needs options.path: a .parquet, .npz or .npy file of "
                "per-example vectors keyed by example id"
            )
        file = Path(path).expanduser()
        if file.suffix.lower() not in FORMATS:
            raise ValueError(f"feature file {str(path)!r} must end in one of {list(FORMATS)}")
        if not file.is_file():
            raise FileNotFoundError(f"feature file {str(path)!r} (options.path) not found")
        if isinstance(max_missing, bool) or not isinstance(max_missing, (int, float)) or not 0 <= max_missing <= 1:
            raise ValueError(
                f"max_missing must be a share in [0, 1] of examples allowed without a row in the file, got "
                f"{max_missing!r}"
            )
        self.name = name or "precomputed"
        self.path = file
        self.max_missing = float(max_missing)
        self._keys = {"id_key": id_key, "pooled_key": pooled_key, "sequence_key": sequence_key, "mask_key": mask_key}
        self.file = _FeatureFile(file, ids=ids, **self._keys)
        self.dim = int(self.file.pooled.shape[1])
        if self.file.sequence is not None:
            self.sequence_dim = int(self.file.sequence.shape[2])  # type: ignore[attr-defined]

    @property
    def has_sequence(self) -> bool:
        """Whether the file holds sequences (token states / grid regions), not only pooled vectors."""
        return self.file.sequence is not None

    def encode_ids(self, ids: Sequence[str], *, need_sequence: bool) -> tuple[EncoderOutput, torch.Tensor]:
        """The file's rows for ``ids``; ids without a row get zeros and ``present=False``.

        Raises:
            FeatureFileError: ``need_sequence`` but the file holds only pooled vectors.
            MissingFeaturesError: more ids without a row than ``max_missing`` allows (they are named).
        """
        if need_sequence and self.file.sequence is None:
            raise FeatureFileError(
                f"the head reads the {self.modality} sequence/grid, but feature file {str(self.path)!r} holds only "
                f"pooled vectors; add {self._keys['sequence_key']!r} (per example a list of vectors) and "
                f"{self._keys['mask_key']!r}, or use a head that reads pooled features (concat, text_only, image_only)"
            )
        rows = np.array([self.file.index.get(str(i), -1) for i in ids], dtype=np.int64)
        present = rows >= 0
        missing = [str(i) for i, ok in zip(ids, present, strict=True) if not ok]
        if missing:
            self._report_missing(missing, len(ids))
        take = np.where(present, rows, 0)
        pooled = torch.from_numpy(self.file.pooled[take] * present[:, None])
        if not need_sequence:
            return EncoderOutput(pooled=pooled), torch.from_numpy(present)
        assert self.file.sequence is not None and self.file.mask is not None
        sequence = torch.from_numpy(self.file.sequence[take] * present[:, None, None])
        mask = self.file.mask[take].copy()
        mask[~present] = False
        mask[~present, 0] = True  # one (zero) position, so attention over an example's sequence stays defined
        return EncoderOutput(pooled=pooled, sequence=sequence, mask=torch.from_numpy(mask)), torch.from_numpy(present)

    def _report_missing(self, missing: list[str], total: int) -> None:
        share = len(missing) / total
        shown = ", ".join(repr(i) for i in missing[:_SHOW]) + (f", ... {len(missing) - _SHOW} more" if
                                                               len(missing) > _SHOW else "")  # fmt: skip
        what = (
            f"{len(missing)} of {total} examples ({share:.0%}) have no row in {self.modality} feature file "
            f"{str(self.path)!r}: ids {shown}"
        )
        if share > self.max_missing:
            allowed = "none" if self.max_missing == 0 else f"at most {self.max_missing:.0%}"
            raise MissingFeaturesError(
                f"{what}. That is more than allowed ({allowed}). Add their rows to the file, drop those examples, or "
                f"let them through with zero features: model.{self.modality}_encoder.options.max_missing (a share "
                "in [0, 1])"
            )
        message = f"{what}; they got zero features"
        logger.warning(message)
        warnings.warn(message, MissingFeaturesWarning, stacklevel=2)

    def _raw(self, what: str) -> FeatureFileError:
        return FeatureFileError(
            f"the precomputed {self.modality} encoder reads features by example id from {str(self.path)!r}; it cannot "
            f"{what}. A model on precomputed features predicts examples whose ids are in that file "
            "(MultimodalClassifier.predict / evaluate, `mmfuse predict`), not raw requests (serve, ONNX export)"
        )

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Nothing to freeze (no weights); ``trainable_top_k`` must be 0."""
        if trainable_top_k:
            raise ValueError(
                f"trainable_top_k={trainable_top_k}, but a precomputed encoder has no layers to train; use 0"
            )

    def cache_identity(self) -> dict[str, Any]:
        """The file's content hash (and of the ids file for ``.npy``), and the keys read from it."""
        return jsonable(
            {"encoder": type(self).__name__, "name": self.name, "file_sha256": self.file.sha256, **self._keys}
        )

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, rows={len(self.file.ids)}, dim={self.dim}"  # type: ignore[attr-defined]


_OPTIONS_DOC = """
    Args:
        source: unused (the registry passes ``None``); the file is ``path``.
        name: the name it was built from (``precomputed``).
        path: the feature file: ``.parquet``, ``.npz`` or ``.npy`` (see :mod:`mmfuse.encoders.precomputed`).
        ids: for ``.npy``: a text file with one example id per line, in the array's row order.
        id_key, pooled_key, sequence_key, mask_key: the column (Parquet) or array (NPZ) names.
        max_missing: the largest share of a dataset's examples allowed without a row (they get zero features);
            more is a :class:`MissingFeaturesError`.

    Raises:
        FileNotFoundError: no file at ``path`` (or ``ids``).
        FeatureFileError: a file that cannot be read, or arrays of the wrong shape, non-finite values, duplicate ids.
"""
_Precomputed.__init__.__doc__ = _OPTIONS_DOC


class PrecomputedTextEncoder(_Precomputed, TextEncoder):
    """Text features from a file, by example id: ``pooled`` ``(B, D)``, and where the file has them ``sequence``
    ``(B, L, D_seq)`` with ``mask``. It has no tokenizer: :meth:`tokenize` and :meth:`forward` raise."""

    modality = "text"

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise self._raw("tokenize raw text")

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:  # type: ignore[override]
        raise self._raw("encode token ids")


class PrecomputedImageEncoder(_Precomputed, ImageEncoder):
    """Image features from a file, by example id: ``pooled`` ``(B, D)``, and where the file has them ``sequence``
    ``(B, L, D_seq)`` (grid regions, row-major) with ``mask``. An id without a row counts as a missing image
    (``image_present=False``). It has no image preprocessing: :meth:`preprocess` and :meth:`forward` raise.

    With ``grid: [h, w]`` the ``L = h·w`` regions are the cells of an ``h × w`` grid, row-major, and the outputs say so
    (``EncoderOutput.grid``), so ``early_fusion`` pools them in 2-D and attention maps are laid out ``h × w``.
    Without it (the default) the encoder gives no grid: a head reads the regions as one row, as before.
    """

    modality = "image"

    def __init__(
        self,
        source: Any = None,
        *,
        name: str | None = None,
        path: str | None = None,
        ids: str | None = None,
        id_key: str = "id",
        pooled_key: str = "pooled",
        sequence_key: str = "sequence",
        mask_key: str = "mask",
        max_missing: float = 0.0,
        grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            source, name=name, path=path, ids=ids, id_key=id_key, pooled_key=pooled_key, sequence_key=sequence_key,
            mask_key=mask_key, max_missing=max_missing,
        )  # fmt: skip
        self.grid = self._checked_grid(grid)

    def _checked_grid(self, grid: Any) -> tuple[int, int] | None:
        """``grid`` as ``(h, w)``, checked against the file: a sequence of exactly ``h·w`` regions, all real."""
        if grid is None:
            return None
        if (
            not isinstance(grid, Sequence)
            or isinstance(grid, str)
            or len(grid) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid)
        ):
            raise ValueError(f"options.grid must be [h, w], two positive integers (rows, columns), got {grid!r}")
        h, w = int(grid[0]), int(grid[1])
        where = f"feature file {str(self.path)!r}"
        if self.file.sequence is None:
            raise FeatureFileError(
                f"options.grid={[h, w]} lays out the image regions, but {where} holds only pooled vectors; add "
                f"{self._keys['sequence_key']!r} (per example its {h * w} region vectors, row-major), or drop grid"
            )
        length = int(self.file.sequence.shape[1])
        if length != h * w:
            raise FeatureFileError(
                f"options.grid={[h, w]} has {h * w} cells, but {where} stores sequences of {length} regions; give the "
                f"grid whose h·w is {length} (rows, columns of the regions, row-major), or drop grid"
            )
        partial = ~self.file.mask.all(axis=1)  # type: ignore[union-attr]
        if partial.any():
            shown = [self.file.ids[i] for i in np.flatnonzero(partial)[:_SHOW]]
            raise FeatureFileError(
                f"options.grid={[h, w]}: {int(partial.sum())} rows of {where} do not have all {h * w} cells (their "
                f"{self._keys['mask_key']!r} is False somewhere; ids {shown}); a grid's cells are all real, so give "
                "every row its full grid, or drop grid to read the regions as a masked sequence"
            )
        return h, w

    def encode_ids(self, ids: Sequence[str], *, need_sequence: bool) -> tuple[EncoderOutput, torch.Tensor]:
        """As :meth:`_Precomputed.encode_ids`; the sequence carries ``grid`` (``options.grid``)."""
        out, present = super().encode_ids(ids, need_sequence=need_sequence)
        if need_sequence and self.grid is not None:
            out = EncoderOutput(pooled=out.pooled, sequence=out.sequence, mask=out.mask, grid=self.grid)
        return out, present

    def grid_shape(self) -> tuple[int, int] | None:
        """``options.grid`` (this encoder preprocesses no image to find one)."""
        return self.grid

    def cache_identity(self) -> dict[str, Any]:
        """As :meth:`_Precomputed.cache_identity`, and the grid when one is given (a model reads its regions
        differently with it); without one, the identity is what it was before the option existed."""
        identity = super().cache_identity()
        return identity if self.grid is None else {**identity, "grid": [*self.grid]}

    def preprocess(self, image: Any) -> torch.Tensor:
        raise self._raw("preprocess raw images")

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        raise self._raw("encode pixels")


PrecomputedImageEncoder.__init__.__doc__ = (
    _OPTIONS_DOC.rstrip().split("\n\n    Raises:")[0]
    + """
        grid: ``[h, w]``, the stored regions as an ``h × w`` grid, row-major (every row must hold all ``h·w`` cells);
            default: no grid.

    Raises:
        FileNotFoundError: no file at ``path`` (or ``ids``).
        FeatureFileError: a file that cannot be read, or arrays of the wrong shape, non-finite values, duplicate ids;
            a ``grid`` whose ``h·w`` is not the stored sequence length, or rows that do not fill it.
        ValueError: a ``grid`` that is not two positive integers.
"""
)


def raw_input_problem(model: nn.Module, task: str) -> str | None:
    """Why ``model`` cannot ``task`` (serve, export) raw text and images, or ``None`` when it can: a precomputed
    encoder reads features by example id, which a request does not carry."""
    for modality in ("text", "image"):
        encoder = getattr(model, f"{modality}_encoder", None)
        if getattr(encoder, "reads_example_ids", False):
            return (
                f"cannot {task} this model: its {modality} encoder is precomputed (features read by example id from "
                f"{str(getattr(encoder, 'path', '?'))!r}), so it cannot read raw {modality}. Predict examples whose "
                "ids are in that file with MultimodalClassifier.predict / `mmfuse predict`, or train on an encoder "
                "that reads raw inputs to serve or export"
            )
    return None
