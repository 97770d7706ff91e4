"""How a frozen encoder runs when it fills the feature cache: PyTorch or ONNX Runtime (``backend``).

A frozen encoder only runs forward, over a whole dataset, once. ONNX Runtime runs the same graph 2-4x faster than
PyTorch on a CPU for the convolutional encoders (it plans its memory once and fuses BatchNorm and activations into
the convolutions); :class:`OnnxEncoder` exports the encoder's forward to an ONNX file once (kept on disk, keyed by
the encoder's identity, so a later run loads it) and runs it with onnxruntime, giving the same
:class:`~mmfuse.encoders.base.EncoderOutput` as the encoder.

Tolerance (:data:`ONNX_ATOL`, :data:`ONNX_RTOL`): both backends compute the same float32 graph with different kernels
(another summation order, BatchNorm folded into the weights), so the features differ in the last bits: measured max
abs difference ~2e-5 on EfficientNet-Lite0 grids and on MiniLM token states (values up to ~6), ~1e-6 on tiny
random BERTs. That is the
size of the difference between PyTorch's own CPU kernels (AVX2 against AVX-512 against the scalar ones), which the
feature cache never keyed on either; so the backend is not part of the cache identity, and an entry written by
one backend serves the other. The features layer checks this against PyTorch on the first inputs of every run;
beyond the tolerance it is not used (:func:`check_close` raises :class:`BackendError`, and the caller falls back
to PyTorch with a warning).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from mmfuse.encoders.base import Encoder, EncoderOutput, ImageEncoder

__all__ = [
    "BACKENDS",
    "ONNX_ATOL",
    "ONNX_RTOL",
    "Backend",
    "BackendError",
    "OnnxEncoder",
    "available_cores",
    "check_close",
    "retained_heap",
]

log = logging.getLogger("mmfuse.encoders")

Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")

# |onnx - torch| <= ONNX_ATOL + ONNX_RTOL * |torch|, elementwise, for every output (see the module docstring: the
# measured differences are ~10x below this; float16 rounding of a cached value is ~5e-4 relative, 10x above it).
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4

_FORMAT = 1  # bump when the exported graph changes (inputs, outputs), so old files are not loaded
_OUTPUTS = ("pooled", "sequence", "mask")


class BackendError(RuntimeError):
    """onnxruntime cannot run this encoder (not installed, export failed, or outputs beyond the tolerance)."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class _Graph(torch.nn.Module):
    """The exported module: the encoder's named inputs → its ``pooled`` (, ``sequence``, ``mask``)."""

    def __init__(self, encoder: Encoder, input_names: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = input_names
        self.outputs = outputs

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = args[0] if isinstance(self.encoder, ImageEncoder) else dict(zip(self.input_names, args, strict=True))
        out = self.encoder(inputs)
        return tuple(getattr(out, name) for name in self.outputs)


def _named(inputs: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"pixel_values": inputs} if isinstance(inputs, torch.Tensor) else dict(inputs)


class OnnxEncoder:
    """A frozen encoder's forward on onnxruntime: ``runner(inputs)`` gives what ``encoder(inputs)`` gives.

    Args:
        encoder: the frozen encoder (in eval mode, on the CPU).
        example: inputs of one batch (pixels, or the tokenizer's dict), to trace the export with.
        path: the ``.onnx`` file: loaded when it exists (a file that does not load is exported again), else the
            encoder is exported there (written to a temporary name, then renamed, so concurrent runs are safe).
        threads: onnxruntime intra-op threads (default: :func:`available_cores`).
        reference: ``encoder(example)``, where the caller has it (saves running the encoder here).
        outputs: the names of the encoder's outputs (``pooled``, ``sequence``, ``mask``) and ``grid`` its grid,
            where the caller knows them from an earlier run of this file (what ``reference`` would give): then the
            encoder does not run here at all.

    Raises:
        BackendError: onnxruntime is not installed, or the encoder does not export or does not load.
    """

    def __init__(
        self,
        encoder: Encoder,
        example: torch.Tensor | dict[str, torch.Tensor],
        path: str | Path,
        *,
        threads: int | None = None,
        reference: EncoderOutput | None = None,
        outputs: list[str] | None = None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed; `pip install onnxruntime`") from None
        self.path = Path(path)
        named = _named(example)
        self.input_names = list(named)
        if outputs is not None and reference is None:
            self.output_names, self.grid = [n for n in _OUTPUTS if n in outputs], grid
        else:
            if reference is None:
                with torch.inference_mode():
                    reference = encoder(example)
            self.output_names = [n for n in _OUTPUTS if getattr(reference, n) is not None]
            self.grid = reference.grid
        self.exported = False
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle intra-op threads sleep instead of spinning: during a cache fill they share the cores with the
        # DataLoader workers that decode images, and spinning took their CPU (measured: 9-12 % fewer CPU-seconds
        # for the whole fill, wall clock no slower; docs/performance.md, "Feature extraction").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: no notes about unused initializers
        self.session = None
        if self.path.is_file():
            with contextlib.suppress(Exception):  # a damaged or foreign file: exported again below
                self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
                if [i.name for i in self.session.get_inputs()] != self.input_names or [
                    o.name for o in self.session.get_outputs()
                ] != self.output_names:
                    self.session = None
        if self.session is None:
            self._export(encoder, named)
            try:
                self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            except Exception as e:
                raise BackendError(f"onnxruntime cannot load the exported {encoder.name}: {_first_line(e)}") from e

    def _export(self, encoder: Encoder, named: dict[str, torch.Tensor]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        graph = _Graph(encoder, self.input_names, self.output_names).eval()
        axes: dict[str, dict[int, str]] = {
            k: ({0: "batch"} if k == "pixel_values" else {0: "batch", 1: "sequence"}) for k in named
        }
        for name in self.output_names:
            axes[name] = {0: "batch"} if name == "pooled" or "pixel_values" in named else {0: "batch", 1: "sequence"}
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            # The TorchScript exporter: ~5x faster to export than the dynamo one and gives the same graph for these
            # encoders; deprecated, so its notices are silenced.
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    graph, tuple(named.values()), tmp, dynamo=False, input_names=self.input_names,
                    output_names=self.output_names, dynamic_axes=axes, opset_version=18, do_constant_folding=True,
                )  # fmt: skip
            os.replace(tmp, self.path)
        except Exception as e:
            raise BackendError(f"{encoder.name} does not export to ONNX: {_first_line(e)}") from e
        finally:
            Path(tmp).unlink(missing_ok=True)
        self.exported = True

    def __call__(self, inputs: torch.Tensor | dict[str, torch.Tensor]) -> EncoderOutput:
        named = _named(inputs)
        feed = {k: named[k].cpu().numpy() for k in self.input_names}
        assert self.session is not None
        values = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
        tensors = {k: torch.from_numpy(v) for k, v in values.items()}
        return EncoderOutput(
            pooled=tensors["pooled"], sequence=tensors.get("sequence"), mask=tensors.get("mask"), grid=self.grid
        )


def check_close(name: str, onnx: EncoderOutput, reference: EncoderOutput) -> float:
    """The largest ``|onnx - torch|`` over every output; raises :class:`BackendError` beyond the tolerance."""
    worst = 0.0
    for field in _OUTPUTS:
        a, b = getattr(onnx, field), getattr(reference, field)
        if a is None and b is None:
            continue
        if a is None or b is None or a.shape != b.shape:
            raise BackendError(f"onnxruntime gives another {field} than torch for {name}")
        if field == "mask":
            if not torch.equal(a.bool(), b.bool()):
                raise BackendError(f"onnxruntime gives another mask than torch for {name}")
            continue
        a, b = a.float(), b.float()
        worst = max(worst, float((a - b).abs().max()) if a.numel() else 0.0)
        if not torch.allclose(a, b, atol=ONNX_ATOL, rtol=ONNX_RTOL):
            raise BackendError(
                f"onnxruntime's {field} of {name} differs from torch's by up to {worst:.2g}, beyond the tolerance "
                f"(atol {ONNX_ATOL:g}, rtol {ONNX_RTOL:g})"
            )
    return worst


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4


@contextlib.contextmanager
def retained_heap() -> Iterator[None]:
    """Keeps freed memory in the process while a frozen encoder runs over a dataset (glibc only; elsewhere nothing).

    A PyTorch CPU forward allocates each activation anew: with glibc's defaults the large ones (a batch of 64
    EfficientNet-Lite0 activations is up to 100 MB) are ``mmap``-ed and handed back on free, so the next batch
    faults every page in again: kernel time as large as the model's own (measured: 10.5 s sys for 9.6 s user over
    128 images, 3.8 million page faults). Inside this block large blocks come from the heap and stay there
    (``M_MMAP_MAX=0``, ``M_TRIM_THRESHOLD`` 1 GiB): the same 128 images take 0.4 s sys, 0.2 million faults. On exit
    the heap is trimmed (``malloc_trim``) and mmap is allowed again, at the thresholds glibc's own adaptive ones
    reach in a process that allocates large tensors (mmap from 32 MiB, trim above 64 MiB; any mallopt call fixes
    them, so they no longer adapt).

    Blocks nest (a caller's own block around a fill, which holds one): only the outermost one sets and restores.
    """
    libc = _glibc()
    outermost = libc is not None and not _HELD[0]
    if outermost:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    _HELD[0] += 1
    try:
        yield
    finally:
        _HELD[0] -= 1
        if outermost:
            libc.mallopt(_M_MMAP_MAX, 65536)
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
            libc.malloc_trim(0)


_HELD = [0]  # retained_heap blocks open in this process (the fill runs in the main thread)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018  (musl has no mallopt)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc
