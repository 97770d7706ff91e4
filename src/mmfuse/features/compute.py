"""Running a frozen encoder over a dataset once: :func:`compute_features`, or chunk by chunk from one pass:
:func:`compute_feature_chunks` (what a feature cache uses, writing a shard per chunk).

A frozen encoder gives the same output for an example every epoch, so it runs once over a dataset (batched, under
``torch.inference_mode``, images decoded in DataLoader workers) and the head trains and evaluates from the stored
:class:`~mmfuse.features.table.FeatureTable`. Every :class:`~mmfuse.features.table.FeatureSource` calls this on a
miss.

The encoder's forward runs on its ``backend`` (:mod:`mmfuse.encoders.runtime`): ``torch``, ``onnxruntime`` (the
encoder exported to ONNX once, the file kept in ``onnx_dir``), or ``auto`` (the default): onnxruntime where it is
installed, the device is the CPU, the encoder exports, its outputs on the first inputs (:data:`CHECK_ROWS`) are
within the tolerance of torch's and it ran them faster, and the export pays for itself (an ONNX file of this
encoder is already in ``onnx_dir``, or at least :data:`AUTO_MIN_INPUTS` inputs are to be encoded in this job,
``total``); else torch.
A backend that cannot run the encoder falls back to torch with a warning naming why. Several processes that
encode one job together (a feature cache under ``accelerate launch``) export once: one of them asks
:func:`onnx_export_due` of the job's ``total`` and exports (:func:`choose_backend`) while the others wait, then each
loads the file and makes its own check (or, where the export failed, is told why: :func:`refuse_onnx`).

The choice, and the onnxruntime session, are made once per process for an encoder object and its ONNX file (the
file is named by a hash of the encoder's weights and preprocessing, so changed weights mean another file and a new
choice): the check against torch runs two torch forwards and loads a session, ~3 CPU-seconds for EfficientNet-Lite0
on 2 cores, which a cache that encodes 2,592 images in 6 shards paid 6 times (~10 of its 87 CPU-seconds), and the
shards of one job could come out of different backends.

Images travel from the DataLoader workers as they are decoded and resized, before normalisation, where the
encoder's preprocessor can split the two (``to_uint8`` / ``from_uint8``, as
:class:`~mmfuse.encoders._preprocess.LitePreprocessor` does): ``uint8`` pixels are a quarter of the float32 bytes
through shared memory, and normalising a batch in this process gives bit-identical inputs. Every batch is
normalised into the same float32 buffer (a fresh 38 MB one per batch of 64 faulted its pages in again: ~0.7 s of
kernel time over 2,592 images), so an encoder output that is a view of its input is copied before the next batch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import platform
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmfuse._writable import UnwritableError, write_atomic
from mmfuse.data.dataset import MultimodalDataset, collate_examples
from mmfuse.data.example import Example
from mmfuse.encoders.base import Encoder, EncoderOutput, ImageEncoder, TextEncoder
from mmfuse.encoders.runtime import BACKENDS, BackendError, OnnxEncoder, check_close, retained_heap
from mmfuse.features.batches import finish_uint8, uint8_stages
from mmfuse.features.table import FeatureTable

logger = logging.getLogger("mmfuse.features")

# ``auto`` exports an encoder to ONNX only for at least this many inputs: the export takes ~20 s for
# EfficientNet-Lite0 or MiniLM on a 2-core CPU, and onnxruntime saves ~0.06 s per image, ~0.015 s per sentence there.
AUTO_MIN_INPUTS = 1000
CHECK_ROWS = 4  # inputs of the first batch on which onnxruntime is checked against torch (and timed, for auto)
ONNX_FORMAT = 1  # part of the file name: bump when the exported graph changes

# encoder -> {(backend, ONNX file): the OnnxEncoder chosen for it, or why onnxruntime was not}; see the module docstring
_CHOSEN: weakref.WeakKeyDictionary[Encoder, dict[tuple[str, Path], OnnxEncoder | str]] = weakref.WeakKeyDictionary()


def onnx_file(encoder: Encoder, onnx_dir: str | Path) -> Path:
    """Where the ONNX export of ``encoder`` is kept in ``onnx_dir``: named by a hash of its identity (its weights
    and preprocessing, :meth:`~mmfuse.encoders.base.Encoder.cache_identity`) and of the torch version."""
    text = json.dumps([encoder.cache_identity(), ONNX_FORMAT, torch.__version__], sort_keys=True, default=str)
    return Path(onnx_dir) / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.onnx"


def compute_features(
    encoder: Encoder,
    examples: Sequence[Example],
    *,
    need_sequence: bool,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: Callable[[int], None] | None = None,
    backend: str | None = None,
    onnx_dir: str | Path | None = None,
    total: int | None = None,
) -> FeatureTable:
    """Runs a frozen ``encoder`` over ``examples`` once, in eval mode and under ``torch.inference_mode``.

    Args:
        encoder: a text or image encoder (its weights are not changed; it is left in eval mode).
        examples: the examples, in table row order.
        need_sequence: keep the token sequence / region grid, not only the pooled vector.
        device: where to run the encoder (it is moved there).
        batch_size: examples per encoder batch.
        num_workers: DataLoader workers that open and preprocess images.
        progress: called with the number of examples done after each batch.
        backend: ``torch``, ``onnxruntime`` or ``auto`` (see the module docstring); default: the encoder's
            ``backend`` attribute (``model.<modality>_encoder.backend``), else ``auto``.
        onnx_dir: folder that keeps ONNX exports of encoders (the feature cache's ``onnx/``); ``None``: ``auto``
            runs torch, ``onnxruntime`` exports to a temporary folder.
        total: inputs this job encodes with ``encoder``, of which ``examples`` are a part; what ``auto`` weighs
            the export against. Default: ``len(examples)``.

    Raises:
        ValueError: an unknown ``backend``.
    """
    chunks = compute_feature_chunks(
        encoder, examples, chunk=max(1, len(examples)), need_sequence=need_sequence, device=device,
        batch_size=batch_size, num_workers=num_workers, progress=progress, backend=backend, onnx_dir=onnx_dir,
        total=max(len(examples), total or 0),
    )  # fmt: skip
    with contextlib.closing(chunks):
        return next(chunks)


@torch.inference_mode()
def compute_feature_chunks(
    encoder: Encoder,
    examples: Sequence[Example],
    *,
    chunk: int,
    need_sequence: bool,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: Callable[[int], None] | None = None,
    backend: str | None = None,
    onnx_dir: str | Path | None = None,
    total: int | None = None,
) -> Iterator[FeatureTable]:
    """:func:`compute_features` of ``examples[0:chunk]``, ``examples[chunk:2 * chunk]``, ..., one table per chunk as
    soon as it is encoded, all from one pass: one DataLoader (its workers started once, decoding the next chunk's
    images while the caller stores this one), one backend choice. A feature cache writes a shard per chunk.

    Each chunk is batched on its own (its last batch may be short), so every table is bit-identical to
    ``compute_features(encoder, examples[i:i + chunk], ...)``. Close the iterator (``contextlib.closing``) when
    stopping early: that stops the workers. Arguments as :func:`compute_features`; ``total`` (what ``auto``
    weighs the ONNX export against) defaults to ``len(examples)``, what the whole pass encodes.

    Raises:
        ValueError: an unknown ``backend``, or ``chunk`` < 1.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 examples, got {chunk}")
    with torch.inference_mode(False):  # moved in inference mode, its weights would turn into inference tensors, which
        encoder.eval().to(device)  # no later fingerprint, DDP broadcast or training may touch (accelerate's cpu:0 too)
    bounds = [(start, min(start + chunk, len(examples))) for start in range(0, len(examples), chunk)] or [(0, 0)]
    image = isinstance(encoder, ImageEncoder)
    if encoder.reads_example_ids:  # features computed elsewhere, looked up by id (the precomputed encoders)
        for start, end in bounds:
            out, present = encoder.encode_ids([e.id for e in examples[start:end]], need_sequence=need_sequence)
            if progress is not None:
                progress(end - start)
            yield FeatureTable.from_outputs([out], keep_sequence=need_sequence, present=present if image else None)
        return
    backend = backend or getattr(encoder, "backend", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    with contextlib.ExitStack() as stack:
        keep = onnx_dir is not None  # a temporary export is not kept for later calls, nor is its session
        if backend == "onnxruntime" and onnx_dir is None:
            onnx_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mmfuse-onnx-"))
        total = len(examples) if total is None else total
        forward = _Forward(encoder, backend, onnx_dir, torch.device(device), total, keep=keep)
        # each chunk batched on its own, as a call per chunk would batch it: the same batches, the same numbers
        batches = [range(i, min(i + batch_size, end)) for start, end in bounds for i in range(start, end, batch_size)]
        stack.enter_context(retained_heap())
        stream = stack.enter_context(contextlib.closing(_batches(encoder, examples, device, batches, num_workers)))
        for start, end in bounds:
            outputs: list[EncoderOutput] = []
            present: list[torch.Tensor] = []
            done = start
            while done < end:
                inputs, batch_present, n = next(stream)
                # image pixels come in one buffer that the next batch overwrites: keep no output that shares it
                outputs.append(_unshared(forward(inputs), inputs) if image else forward(inputs))
                if batch_present is not None:
                    present.append(batch_present)
                if progress is not None:
                    progress(n)
                done += n
            if not image:
                yield FeatureTable.from_outputs(outputs, keep_sequence=need_sequence)
            else:
                yield FeatureTable.from_outputs(outputs, keep_sequence=need_sequence, present=torch.cat(present))


def onnx_export_due(
    encoder: Encoder,
    *,
    onnx_dir: str | Path,
    total: int,
    device: torch.device | str = "cpu",
    backend: str | None = None,
) -> bool:
    """Whether :func:`compute_feature_chunks` of ``total`` inputs, with this ``onnx_dir`` (and ``backend``, default
    the encoder's), would try onnxruntime and first export the encoder: its ONNX file is not in ``onnx_dir`` yet.
    What several processes of one job ask before one of them exports for all (:func:`choose_backend`)."""
    backend = backend or getattr(encoder, "backend", "auto")
    if encoder.reads_example_ids or backend not in BACKENDS or total < 1:
        return False
    forward = _Forward(encoder, backend, onnx_dir, torch.device(device), total)
    return forward._skip_onnx() is None and not onnx_file(encoder, onnx_dir).is_file()


def choose_backend(
    encoder: Encoder,
    examples: Sequence[Example],
    *,
    onnx_dir: str | Path,
    total: int,
    device: torch.device | str = "cpu",
    backend: str | None = None,
) -> str | None:
    """Makes now, on the first :data:`CHECK_ROWS` of ``examples``, the choice of backend that
    :func:`compute_feature_chunks` of ``total`` inputs makes on its first batch (exporting the ONNX file to
    ``onnx_dir`` where onnxruntime is tried and the file is not there yet), and keeps it for this process's later
    passes over ``encoder``. Only an export is said here (as on a first batch); the choice itself is said by
    the later passes, as they say a choice made by an earlier pass.

    Returns:
        ``None`` where onnxruntime will run the encoder, else why not (a failed export, a check that failed).
    """
    backend = backend or getattr(encoder, "backend", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    forward = _Forward(encoder, backend, onnx_dir, torch.device(device), total)
    if (reason := forward._skip_onnx()) is not None:
        return reason
    with torch.inference_mode(False):  # as compute_feature_chunks moves it
        encoder.eval().to(device)
    rows = range(min(CHECK_ROWS, len(examples)))
    with torch.inference_mode(), contextlib.closing(_batches(encoder, examples, device, [rows], 0)) as stream:
        inputs, _, _ = next(stream)
        chosen = forward._decide(inputs)
    return None if isinstance(chosen, OnnxEncoder) else chosen


def refuse_onnx(encoder: Encoder, reason: str, *, onnx_dir: str | Path, backend: str | None = None) -> None:
    """Keeps, for this process's later passes over ``encoder`` with ``onnx_dir``, that onnxruntime cannot run it
    (``reason``), as if this process had tried it: what the other processes of a job are told when the one that
    exported for all of them failed (:func:`choose_backend`), so that they run torch, saying the same ``reason``,
    instead of each trying the export again."""
    backend = backend or getattr(encoder, "backend", "auto")
    _CHOSEN.setdefault(encoder, {})[(backend, onnx_file(encoder, onnx_dir))] = reason


def _batches(
    encoder: Encoder,
    examples: Sequence[Example],
    device: torch.device | str,
    batches: Sequence[range],
    num_workers: int,
) -> Iterator[tuple[Any, torch.Tensor | None, int]]:
    """(encoder inputs, which images are present or ``None`` for text, examples in the batch), for each of
    ``batches`` (rows of ``examples``) in turn; images from one DataLoader."""
    if isinstance(encoder, TextEncoder):
        for rows in batches:
            chunk = examples[rows.start : rows.stop]
            yield {k: v.to(device) for k, v in encoder.tokenize([e.text for e in chunk]).items()}, None, len(chunk)
        return
    assert isinstance(encoder, ImageEncoder), f"not a text or image encoder: {type(encoder).__name__}"
    stages = uint8_stages(encoder.preprocess)  # see the module docstring
    dataset = MultimodalDataset(
        examples, label_map=None, image_preprocess=encoder.preprocess if stages is None else stages[0]
    )
    loader = DataLoader(
        dataset, batch_sampler=[list(rows) for rows in batches], num_workers=num_workers, collate_fn=collate_examples
    )
    buffer: torch.Tensor | None = None  # the float32 pixels of every batch, normalised into one buffer
    for batch in loader:
        pixels, present = batch["pixel_values"], batch["image_present"]
        if stages is not None:
            n = pixels.shape[0]
            if buffer is None or buffer.shape[0] < n or buffer.shape[1:] != pixels.shape[1:]:
                buffer = torch.empty(pixels.shape, dtype=torch.float32)
            pixels = finish_uint8(functools.partial(stages[1], out=buffer[:n]), pixels, present)
        yield pixels.to(device), present, len(batch["ids"])


def _unshared(out: EncoderOutput, inputs: torch.Tensor) -> EncoderOutput:
    """``out``, with a copy of any tensor of it that shares memory with ``inputs`` (an encoder may return a view of
    its pixels; the pixel buffer is written again by the next batch)."""
    held = inputs.untyped_storage().data_ptr()

    def own(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.clone() if t is not None and t.untyped_storage().data_ptr() == held else t

    pooled = own(out.pooled)
    assert pooled is not None
    return EncoderOutput(pooled=pooled, sequence=own(out.sequence), mask=own(out.mask), grid=out.grid)


class _Forward:
    """The encoder's forward on the chosen backend; the choice is made on the first batch."""

    def __init__(
        self,
        encoder: Encoder,
        backend: str,
        onnx_dir: str | Path | None,
        device: torch.device,
        total: int,
        *,
        keep: bool = True,
    ) -> None:
        self.encoder = encoder
        self.backend = backend
        self.onnx_dir = onnx_dir
        self.device = device
        self.total = total
        self.keep = keep
        self.run: Callable[[Any], EncoderOutput] | None = None
        self.chosen = "torch"

    def __call__(self, inputs: Any) -> EncoderOutput:
        if self.run is None:
            self.run = self._choose(inputs)
        return self.run(inputs)

    def _choose(self, inputs: Any) -> Callable[[Any], EncoderOutput]:
        """The encoder itself or its :class:`OnnxEncoder`, decided on the first rows of the first batch (or by an
        earlier call in this process, for this encoder and its ONNX file)."""
        chosen = self._decide(inputs)
        if isinstance(chosen, OnnxEncoder):
            return chosen
        reason = chosen
        if self.backend == "onnxruntime":
            logger.warning("%s: backend onnxruntime cannot run it (%s); running it on torch", self._name, reason)
        else:
            logger.debug("%s: backend %s runs torch (%s)", self._name, self.backend, reason)
        return self.encoder

    def _decide(self, inputs: Any) -> OnnxEncoder | str:
        """:meth:`_choose`'s choice, without saying it: the :class:`OnnxEncoder`, or why onnxruntime is not used."""
        reason = self._skip_onnx()
        if reason is not None:
            return reason
        assert self.onnx_dir is not None
        key = (self.backend, onnx_file(self.encoder, self.onnx_dir))
        chosen = _CHOSEN.get(self.encoder, {}).get(key)
        if chosen is None:
            try:
                chosen = self._onnx(inputs)
            except BackendError as e:
                chosen = str(e)
            if self.keep:
                _CHOSEN.setdefault(self.encoder, {})[key] = chosen
        elif isinstance(chosen, OnnxEncoder):
            logger.info("%s runs on onnxruntime (loaded %s, checked earlier in this process)", self._name, key[1])
        return chosen

    @property
    def _name(self) -> str:
        kind = "text" if isinstance(self.encoder, TextEncoder) else "image"
        return f"{kind} encoder {self.encoder.name!r}"

    def _skip_onnx(self) -> str | None:
        """Why onnxruntime is not tried, or ``None``."""
        if self.backend == "torch":
            return "asked for torch"
        if not self.encoder.is_frozen:
            return "its weights train (only a frozen encoder is exported)"
        if self.device.type != "cpu":
            return f"onnxruntime runs on the CPU here, the device is {self.device}; set train.device: cpu"
        if self.backend == "auto":
            if self.onnx_dir is None:
                return "no cache folder to keep the ONNX export in"
            if self.total < AUTO_MIN_INPUTS and not onnx_file(self.encoder, self.onnx_dir).is_file():
                return f"{self.total} inputs: the export would take longer than it saves (< {AUTO_MIN_INPUTS})"
        return None

    def _onnx(self, inputs: Any) -> OnnxEncoder:
        """The encoder on onnxruntime, checked against torch on the first :data:`CHECK_ROWS` inputs (and, for
        ``auto``, faster there), or loaded without a check where an earlier process checked this very file in this
        environment (:func:`check_record_file`)."""
        assert self.onnx_dir is not None
        rows = (
            inputs[:CHECK_ROWS] if isinstance(inputs, torch.Tensor) else {k: v[:CHECK_ROWS] for k, v in inputs.items()}
        )
        path = onnx_file(self.encoder, self.onnx_dir)
        record = _recorded_check(path, self.backend)
        if record is not None:
            grid = tuple(record["grid"]) if record["grid"] is not None else None
            known = OnnxEncoder(self.encoder, rows, path, outputs=record["outputs"], grid=grid)  # type: ignore[arg-type]
            if not known.exported:  # (a file that no longer loaded was exported again: that one is checked below)
                logger.info(
                    "%s runs on onnxruntime (loaded %s; checked against torch on %s: max |onnxruntime - torch| %.1e "
                    "on %d inputs; delete %s to check again)", self._name, path, record["checked"],
                    record["max_abs_diff"], record["rows"], check_record_file(path).name,
                )  # fmt: skip
                return known
        reference = self.encoder(rows)
        runner = OnnxEncoder(self.encoder, rows, path, reference=reference)
        diff = check_close(self.encoder.name, runner(rows), reference)  # also onnxruntime's warm-up run
        ort_seconds = _seconds(runner, rows)
        # auto: which is faster, each on its second run (the first of each pays one-off set-up)
        torch_seconds = _seconds(self.encoder, rows) if self.backend == "auto" else float("nan")
        if self.backend == "auto" and ort_seconds >= torch_seconds:
            raise BackendError(f"onnxruntime was not faster on {CHECK_ROWS} inputs ({ort_seconds:.3f} s, torch "
                               f"{torch_seconds:.3f} s)")  # fmt: skip
        logger.info(
            "%s runs on onnxruntime (%s; max |onnxruntime - torch| %.1e on %d inputs; %.3f s for them, torch %.3f s)",
            self._name, ("exported to " if runner.exported else "loaded ") + str(runner.path), diff, CHECK_ROWS,
            ort_seconds, torch_seconds,
        )  # fmt: skip
        if self.keep:
            _record_check(path, runner, self.backend, diff, ort_seconds, torch_seconds)
        return runner


CHECK_RECORD_FORMAT = 1


def check_record_file(onnx: Path) -> Path:
    """Where the record of the last passed check of the ONNX file ``onnx`` is kept: beside it, ``<name>.checked.json``.

    Checking an export against torch runs the encoder on torch twice and loads a session (~0.9 CPU-seconds for
    EfficientNet-Lite0 on 2 cores, ~2 % of a 2,592-image fill), in every process. The record lets a later process
    load the file without it, as long as the file (its size and modification time), onnxruntime's and torch's
    versions and the CPU (model and the instruction set torch's kernels use) are those it was checked with; and for
    ``auto`` only a check that also found onnxruntime faster counts (a failed or slower check is never recorded, so
    it is made again by the next process). ``mmfuse cache clear`` removes it with the exports.
    """
    return onnx.with_name(onnx.name + ".checked.json")


def _environment() -> dict[str, str] | None:
    """What a check's verdict depends on besides the file; ``None`` without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": cpu,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _file_state(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _recorded_check(path: Path, backend: str) -> dict[str, Any] | None:
    """The record of a check that vouches for ``path`` here and for ``backend``, or ``None``."""
    try:
        record = json.loads(check_record_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(record, dict)
        or record.get("format") != CHECK_RECORD_FORMAT
        or record.get("file") != _file_state(path)
        or record.get("environment") != _environment()
        or (backend == "auto" and record.get("faster") is not True)
        or not isinstance(record.get("outputs"), list)
        or "pooled" not in record["outputs"]
        or not (record.get("grid") is None or _is_grid(record["grid"]))
    ):
        return None
    return record


def _is_grid(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(type(v) is int and v > 0 for v in value)


def _record_check(path: Path, runner: OnnxEncoder, backend: str, diff: float, ort_s: float, torch_s: float) -> None:
    """Keeps the passed check of ``path`` for later processes (see :func:`check_record_file`); a folder that takes
    no record only costs the next process the check."""
    record = {
        "format": CHECK_RECORD_FORMAT,
        "file": _file_state(path),
        "environment": _environment(),
        "backend": backend,
        "faster": None if backend != "auto" else True,  # (a slower onnxruntime raised before this)
        "rows": CHECK_ROWS,
        "max_abs_diff": diff,
        "onnxruntime_s": round(ort_s, 6),
        "torch_s": None if math.isnan(torch_s) else round(torch_s, 6),
        "outputs": runner.output_names,
        "grid": list(runner.grid) if runner.grid is not None else None,
        "checked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        write_atomic(
            check_record_file(path), json.dumps(record, indent=1) + "\n", what="onnxruntime check record",
            fix="make the feature cache's onnx/ folder writable",
        )  # fmt: skip
    except UnwritableError as e:
        logger.info("%s (the next process checks %s against torch again)", e, path.name)


def _seconds(run: Callable[[Any], EncoderOutput], inputs: Any) -> float:
    start = time.perf_counter()
    run(inputs)
    return time.perf_counter() - start
