"""ONNX export of a whole model (encoders + fusion head), checked against PyTorch with onnxruntime.

The graph takes the encoders' raw inputs and returns what the server needs:

- inputs: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the text model takes them), each
  ``(batch, sequence)`` int64; ``pixel_values`` ``(batch, 3, H, W)`` float32 (H, W fixed by the image preprocessing).
  A head that reads no image has no ``pixel_values``; one that reads no text, no text inputs.
- outputs: ``logits`` (the model's own) and ``probabilities`` ``(batch, C)`` (``softmax(logits / T)`` with the
  calibration temperature ``T`` fitted on validation, inside the graph; ``softmax(logits)`` for a model without
  one); where the head has them ``attention`` ``(batch, sequence, N)`` over the N image regions and
  ``image_reliance`` ``(batch,)``.

The batch and sequence axes are dynamic. The file carries its own metadata (``metadata_props["mmfuse"]``, JSON):
classes, the tuned threshold, the calibration ``temperature``, the head, the model config, a digest of the checkpoint
it came from, the ``(h, w)`` of the image grid the attention's N regions lie on (``image_grid``), and where its
preprocessing is. The preprocessing
(the encoders' tokenizer and image-processor files, no weights) is written beside the file, one folder per ``.onnx``
so ``model.onnx`` and ``model-last.onnx`` can share a folder::

    export/model.onnx
    export/model.preprocessing/text/     tokenizer.json, tokenizer_config.json, mmfuse_preprocessing.json
    export/model.preprocessing/image/    preprocessor_config.json (HF image processors), mmfuse_preprocessing.json

so :class:`~mmfuse.export.OnnxPredictor` tokenizes and resizes exactly as in training without loading the encoders.

Exporter: ``torch.onnx.export`` with ``dynamo=True`` (PyTorch's default since 2.9: ``torch.export`` then onnxscript)
is tried first; if it fails, the TorchScript exporter (``dynamo=False``, deprecated but ~5x faster here) is used
instead, and the result says so. Both give outputs within 1e-6 of PyTorch for every head; ``exporter=...`` picks one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

import mmfuse
from mmfuse.fusion.base import FusionInputs
from mmfuse.model.predictor import TEXT_INPUTS
from mmfuse.model.spec import head_name as registered_head_name

__all__ = [
    "EXPORTERS",
    "METADATA_KEY",
    "ExportError",
    "ExportResult",
    "default_onnx_path",
    "export_onnx",
    "export_run",
    "preprocessing_dir",
    "preprocessing_problem",
    "read_metadata",
]

log = logging.getLogger("mmfuse.export")

Exporter = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
METADATA_KEY = "mmfuse"
FORMAT_VERSION = 1
OPTIONAL_OUTPUTS = ("attention", "image_reliance")
DEFAULT_OPSET = 18


class ExportError(RuntimeError):
    """The model could not be exported, or the exported graph does not reproduce PyTorch's outputs."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how it checked it.

    Attributes:
        path: the ``.onnx`` file.
        exporter: the exporter that produced it (``dynamo`` or ``torchscript``).
        inputs: graph input names, in order.
        outputs: graph output names, in order.
        max_abs_diff: per output, the largest difference from PyTorch on fresh inputs (another batch size and
            text length than the export's); empty when not verified.
        seconds: time taken by the export alone.
        fallback_reason: why the dynamo exporter was abandoned, when it was.
        preprocessing: the folder beside ``path`` holding the preprocessing (:func:`preprocessing_dir`).
        preprocessing_skipped: modality -> why its preprocessing could not be saved (an encoder of your own); a
            server of this file rebuilds that encoder instead.
    """

    path: Path
    exporter: str
    inputs: list[str]
    outputs: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    fallback_reason: str | None = None
    preprocessing: Path | None = None
    preprocessing_skipped: dict[str, str] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


class OnnxGraph(nn.Module):
    """The module that is exported: named raw inputs → the head → a tuple of named outputs.

    Args:
        head: a fusion head owning its encoders.
        outputs: the output names to return, in order (``logits``, ``probabilities``, and optional ones).
        temperature: the calibration temperature the probabilities divide the logits by (``None``: 1).
    """

    def __init__(self, head: nn.Module, outputs: Sequence[str], temperature: float | None = None) -> None:
        super().__init__()
        self.head = head
        self.output_names = list(outputs)
        self.temperature = float(temperature) if temperature is not None else 1.0

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        named = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        text = {k: v for k, v in named.items() if v is not None}
        out = self.head(FusionInputs(text_inputs=text or None, pixel_values=pixel_values))
        values = {
            "logits": out.logits,
            "probabilities": (out.logits / self.temperature).softmax(dim=-1),
            "attention": out.attention,
            "image_reliance": out.image_reliance,
        }
        return tuple(values[name] for name in self.output_names)  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------- example inputs


def example_inputs(head: nn.Module, texts: Sequence[str], images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """Named inputs for ``texts`` and ``images``, made with the head's own encoders (tokenizer, preprocessing)."""
    inputs: dict[str, torch.Tensor] = {}
    text_encoder = getattr(head, "text_encoder", None)
    image_encoder = getattr(head, "image_encoder", None)
    if text_encoder is not None:
        tokens = text_encoder.tokenize(list(texts))
        inputs.update({k: tokens[k] for k in TEXT_INPUTS if k in tokens})
    if image_encoder is not None:
        inputs["pixel_values"] = torch.stack([image_encoder.preprocess(im) for im in images])
    if not inputs:
        raise ValueError(f"{type(head).__name__} has neither a text nor an image encoder; nothing to export")
    return inputs


def _random_images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(96, 64), (64, 80), (120, 120), (40, 56)]
    return [
        Image.fromarray(rng.integers(0, 256, (sizes[i % 4][1], sizes[i % 4][0], 3), dtype=np.uint8)) for i in range(n)
    ]


_TRACE_TEXTS = ["an example caption, long enough to pad the other one", "two words"]
_CHECK_TEXTS = ["a different caption for checking", "yes", "the third and longest caption of this batch, by far"]


# ----------------------------------------------------------------------------------------------- export


def export_onnx(
    head: nn.Module,
    out: str | Path,
    *,
    classes: Sequence[str],
    threshold: float | None = None,
    temperature: float | None = None,
    head_name: str | None = None,
    config: dict[str, Any] | None = None,
    exporter: Exporter = "dynamo",
    fallback: bool = True,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    atol: float = 1e-4,
    extra_metadata: dict[str, Any] | None = None,
) -> ExportResult:
    """Exports ``head`` (with its encoders) to an ONNX file and checks it with onnxruntime.

    Args:
        head: a fusion head owning its encoders, in eval mode or not (exported in eval mode).
        out: the ``.onnx`` file to write (its folder is created; written to a temporary name, then renamed).
        classes: class names in logit order.
        threshold: the run's tuned threshold (binary tasks).
        temperature: the run's calibration temperature: the graph's ``probabilities`` are ``softmax(logits / T)``.
        head_name: the head's registered name (default: looked up from the model's class).
        config: the model's config as ``{"model": ModelConfig dict}`` (what :func:`export_run` writes; a whole
            ``TrainConfig.to_dict()`` works too), so a server can rebuild its preprocessing.
        exporter: ``dynamo`` (default) or ``torchscript``.
        fallback: when the dynamo exporter fails, try the TorchScript one.
        opset: ONNX opset.
        verify: run the file with onnxruntime on fresh inputs and compare every output with PyTorch.
        atol: the largest difference ``verify`` accepts.
        extra_metadata: more JSON-able entries for the file's metadata.

    Raises:
        ValueError: an unknown exporter, ``out`` not ending in ``.onnx``, or a model that cannot read raw inputs
            (a precomputed encoder).
        ExportError: the export failed, or the exported graph differs from PyTorch by more than ``atol``.
    """
    from mmfuse.encoders.precomputed import raw_input_problem

    if (problem := raw_input_problem(head, "export")) is not None:
        raise ValueError(problem)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {list(EXPORTERS)}, got {exporter!r}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"the output file must end in .onnx, got {str(out)!r}; e.g. --out model.onnx")
    tmp = out.with_name(out.name + ".tmp")
    prep_dir = preprocessing_dir(out)
    prep_tmp = prep_dir.with_name(prep_dir.name + ".tmp")
    was_training = head.training
    head.eval()
    try:
        trace_inputs = example_inputs(head, _TRACE_TEXTS, _random_images(2, seed=0))
        out.parent.mkdir(parents=True, exist_ok=True)
        preprocessing, skipped = _save_preprocessing(head, trace_inputs, prep_tmp)
        preprocessing["folder"] = prep_dir.name
        with torch.inference_mode():
            probe = head(_fusion_inputs(trace_inputs))
        outputs = ["logits", "probabilities", *(k for k in OPTIONAL_OUTPUTS if getattr(probe, k) is not None)]
        graph = OnnxGraph(head, outputs, temperature).eval()
        start = time.perf_counter()
        used, reason = _export_with_fallback(graph, trace_inputs, outputs, tmp, exporter, fallback, opset)
        seconds = time.perf_counter() - start
        metadata = {
            "format_version": FORMAT_VERSION,
            "mmfuse_version": mmfuse.__version__,
            "torch_version": torch.__version__,
            "exporter": used,
            "head": head_name or registered_head_name(head),
            "classes": [str(c) for c in classes],
            "threshold": threshold,
            "temperature": temperature,
            "inputs": list(trace_inputs),
            "outputs": outputs,
            "config": config,
            "preprocessing": preprocessing,
            # (h, w) of the image grid the attention's regions lie on (fixed by the image preprocessing's size)
            "image_grid": None if probe.grid is None else [int(probe.grid[0]), int(probe.grid[1])],
            **(extra_metadata or {}),
        }
        _finish(tmp, trace_inputs, metadata)
        result = ExportResult(
            path=out, exporter=used, inputs=list(trace_inputs), outputs=outputs, seconds=seconds,
            fallback_reason=reason, preprocessing=prep_dir, preprocessing_skipped=skipped,
        )  # fmt: skip
        if verify:
            result.max_abs_diff = _verify(graph, tmp, outputs, atol)
        # the folder first: a crash between the two renames leaves a file whose digest does not match the folder,
        # which a server notices (preprocessing_problem), never a new folder silently paired with an old file
        shutil.rmtree(prep_dir, ignore_errors=True)
        os.replace(prep_tmp, prep_dir)
        os.replace(tmp, out)
        return result
    finally:
        head.train(was_training)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        shutil.rmtree(prep_tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- preprocessing


def preprocessing_dir(path: str | Path) -> Path:
    """The folder an export writes its preprocessing to: ``<stem>.preprocessing`` beside the ``.onnx`` file."""
    path = Path(path)
    return path.with_name(f"{path.stem}.preprocessing")


def _folder_digest(folder: Path) -> str:
    """SHA-256 of every file under ``folder`` (relative names and bytes, in name order)."""
    h = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(folder).as_posix()}|{file.stat().st_size}|".encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def _save_preprocessing(
    head: nn.Module, inputs: dict[str, torch.Tensor], folder: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """Saves the preprocessing of each encoder the graph reads from to ``folder/<modality>``; returns the metadata
    entry (modalities saved, digest) and modality -> why it could not be saved (logged)."""
    from mmfuse.encoders import PreprocessingError

    shutil.rmtree(folder, ignore_errors=True)  # a leftover of an interrupted export
    folder.mkdir(parents=True)
    used = {"text": any(k in TEXT_INPUTS for k in inputs), "image": "pixel_values" in inputs}
    saved: list[str] = []
    skipped: dict[str, str] = {}
    for modality in ("text", "image"):
        if not used[modality]:
            continue
        encoder = getattr(head, f"{modality}_encoder")
        try:
            encoder.save_preprocessing(folder / modality)
            saved.append(modality)
        except PreprocessingError as e:
            skipped[modality] = str(e)
            log.warning(
                "the %s preprocessing is not saved beside the export (%s); a server of this file will rebuild the "
                "%s encoder from the config, loading its weights",
                modality, e, modality,
            )  # fmt: skip
    entry: dict[str, Any] = {"modalities": saved, "digest": _folder_digest(folder)}
    if skipped:
        entry["skipped"] = skipped
    return entry, skipped


def preprocessing_problem(path: str | Path, metadata: dict[str, Any], modalities: Sequence[str] = ()) -> str | None:
    """Why the preprocessing folder of the export ``path`` (with ``metadata``, :func:`read_metadata`) cannot serve
    ``modalities`` (default: every modality the graph reads), or ``None`` when it can.

    Reasons: an export made before mmfuse shipped preprocessing beside the file, a folder that is missing (the
    ``.onnx`` copied alone) or differs from what the export wrote, a modality whose preprocessing was not saved.
    """
    path = Path(path)
    entry = metadata.get("preprocessing")
    if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str):
        return "it was exported without its preprocessing files (by an older mmfuse)"
    folder = path.with_name(entry["folder"])
    names = metadata.get("inputs", [])
    wanted = list(modalities) or [
        m for m, used in (("text", any(n in TEXT_INPUTS for n in names)), ("image", "pixel_values" in names)) if used
    ]
    missing = [m for m in wanted if m not in entry.get("modalities", [])]
    if missing:
        why = "; ".join(f"{m}: {entry.get('skipped', {}).get(m, 'not saved')}" for m in missing)
        return f"its {' and '.join(missing)} preprocessing was not saved at export ({why})"
    if not folder.is_dir():
        return f"its preprocessing folder {str(folder)!r} is missing (copy it along with the .onnx file)"
    if _folder_digest(folder) != entry.get("digest"):
        return f"its preprocessing folder {str(folder)!r} differs from the one exported with the file"
    return None


def _fusion_inputs(named: dict[str, torch.Tensor]) -> FusionInputs:
    text = {k: v for k, v in named.items() if k in TEXT_INPUTS}
    return FusionInputs(text_inputs=text or None, pixel_values=named.get("pixel_values"))


def _export_with_fallback(
    graph: OnnxGraph,
    inputs: dict[str, torch.Tensor],
    outputs: list[str],
    path: Path,
    exporter: str,
    fallback: bool,
    opset: int,
) -> tuple[str, str | None]:
    if exporter == "torchscript":
        _export_torchscript(graph, inputs, outputs, path, opset)
        return "torchscript", None
    try:
        _export_dynamo(graph, inputs, outputs, path, opset)
        return "dynamo", None
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
        if not fallback:
            raise ExportError(f"the dynamo ONNX exporter failed ({reason}); try exporter='torchscript'") from e
        log.warning("the dynamo ONNX exporter failed (%s); falling back to the TorchScript exporter", reason)
    try:
        _export_torchscript(graph, inputs, outputs, path, opset)
    except Exception as e:
        raise ExportError(f"both ONNX exporters failed; dynamo: {reason}; torchscript: {type(e).__name__}: {e}") from e
    return "torchscript", reason


def _export_dynamo(graph: OnnxGraph, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path, opset: int):
    dynamic = torch.export.Dim.DYNAMIC
    shapes = {k: ({0: dynamic} if k == "pixel_values" else {0: dynamic, 1: dynamic}) for k in inputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes from deep inside torch.export
        program = torch.onnx.export(
            graph, (), kwargs=dict(inputs), dynamo=True, input_names=list(inputs), output_names=outputs,
            dynamic_shapes=shapes, opset_version=opset, verbose=False, optimize=True,
        )  # fmt: skip
    assert program is not None
    program.save(str(path), external_data=False)


def _export_torchscript(graph: OnnxGraph, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path, opset: int):
    axes: dict[str, dict[int, str]] = {k: ({0: "batch"} if k == "pixel_values" else {0: "batch", 1: "sequence"})
                                       for k in inputs}  # fmt: skip
    axes.update({name: {0: "batch"} for name in outputs})
    if "attention" in outputs:
        axes["attention"] = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice, and tracer warnings about constant shapes
        torch.onnx.export(
            graph, (), str(path), kwargs=dict(inputs), dynamo=False, input_names=list(inputs), output_names=outputs,
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
        )  # fmt: skip


def _finish(path: Path, inputs: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Names the dynamic axes ``batch`` / ``sequence`` (dynamo calls them s0, s1, ...) and adds the metadata."""
    import onnx

    model = onnx.load(str(path))
    names: dict[str, str] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in TEXT_INPUTS and len(dims) >= 2:
            names.setdefault(dims[0].dim_param, "batch")
            names.setdefault(dims[1].dim_param, "sequence")
        elif value.name == "pixel_values" and dims:
            names.setdefault(dims[0].dim_param, "batch")
    names.pop("", None)
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, default=str)
    model.producer_name = "mmfuse"
    model.producer_version = mmfuse.__version__
    onnx.save(model, str(path))


def _verify(graph: OnnxGraph, path: Path, outputs: list[str], atol: float) -> dict[str, float]:
    """Runs the file on inputs of another batch size and text length than the export's; compares with PyTorch."""
    import onnxruntime as ort

    inputs = example_inputs(graph.head, _CHECK_TEXTS, _random_images(3, seed=1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    declared = {i.name for i in session.get_inputs()}  # an input the model never reads (SigLIP's text mask) is dropped
    got = session.run(outputs, {k: v.numpy() for k, v in inputs.items() if k in declared})
    with torch.inference_mode():
        want = graph(**inputs)
    diffs = {}
    for name, a, b in zip(outputs, got, want, strict=True):
        if a.shape != tuple(b.shape):
            raise ExportError(f"exported output {name!r} has shape {a.shape}, PyTorch gives {tuple(b.shape)}")
        diffs[name] = float(np.abs(a - b.float().numpy()).max()) if a.size else 0.0
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        raise ExportError(f"the exported model differs from PyTorch by more than {atol}: {bad}")
    return diffs


# ----------------------------------------------------------------------------------------------- runs


def default_onnx_path(run: str | Path, checkpoint: str = "best") -> Path:
    """Where ``mmfuse export RUN`` writes by default: ``RUN/export/model.onnx`` (``model-<checkpoint>.onnx`` for
    another checkpoint than ``best``)."""
    return Path(run) / "export" / ("model.onnx" if checkpoint == "best" else f"model-{checkpoint}.onnx")


def checkpoint_digest(run: str | Path, checkpoint: str = "best") -> str:
    """SHA-256 of the checkpoint's weights and metadata: tells whether an export is of this checkpoint."""
    from mmfuse.model.checkpoint import META, WEIGHTS, resolve_checkpoint

    folder = resolve_checkpoint(run, checkpoint)
    h = hashlib.sha256()
    for name in (META, WEIGHTS):
        path = folder / name
        if path.is_file():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def export_run(
    run: str | Path,
    out: str | Path | None = None,
    *,
    checkpoint: str = "best",
    exporter: Exporter = "dynamo",
    fallback: bool = True,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
) -> ExportResult:
    """Loads a run (or checkpoint) folder and exports its model: see :func:`export_onnx`.

    Args:
        run: a run folder (``runs/<name>``) or a checkpoint folder.
        out: the ``.onnx`` file; default :func:`default_onnx_path`.
        checkpoint: which checkpoint of a run folder (``best`` or ``last``).

    Raises:
        FileNotFoundError: no checkpoint there.
        CheckpointError: a damaged checkpoint.
        ExportError: the export failed or does not match PyTorch.
    """
    from mmfuse.model.checkpoint import load_model

    model, spec, _ = load_model(run, checkpoint=checkpoint, device="cpu")
    return export_onnx(
        model,
        out if out is not None else default_onnx_path(run, checkpoint),
        classes=spec.classes,
        threshold=spec.threshold,
        temperature=spec.temperature,
        head_name=spec.head,
        config={"model": spec.model.model_dump(mode="json")},
        exporter=exporter,
        fallback=fallback,
        opset=opset,
        verify=verify,
        extra_metadata={"checkpoint": checkpoint, "checkpoint_digest": checkpoint_digest(run, checkpoint)},
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The mmfuse metadata of an exported file (without loading its weights).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX file, or not one mmfuse exported.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {str(path)!r} not found; make one with `mmfuse export RUN --format onnx`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable ONNX file ({type(e).__name__}: {e})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(
            f"{str(path)!r} has no mmfuse metadata (classes, preprocessing); export it with "
            "`mmfuse export RUN --format onnx`"
        )
    meta = json.loads(props[METADATA_KEY])
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has export format {version!r}; this mmfuse reads up to {FORMAT_VERSION}")
    return meta
