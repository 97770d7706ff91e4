"""``mmfuse serve / export``: serve a trained model over HTTP, export it to ONNX.

Each command parses its arguments, calls :mod:`mmfuse.serve` / :mod:`mmfuse.export`, and prints. Exit codes: 0 fine,
1 the export failed or does not match PyTorch, 2 a wrong argument, path or missing extra.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

ServeRunArg = Annotated[
    Path,
    typer.Argument(
        help="A run folder (runs/<name>), a checkpoint folder, an exported .onnx file or an export folder.",
        show_default=False,
    ),
]
ExportRunArg = Annotated[
    Path, typer.Argument(help="A run folder (runs/<name>) or a checkpoint folder.", show_default=False)
]
CheckpointOpt = Annotated[str, typer.Option("--checkpoint", help="Checkpoint of a run folder: best or last.")]


@contextmanager
def _user_errors() -> Iterator[None]:
    """A missing extra, a bad path, argument or checkpoint ends the command with its message and exit code 2; a
    failed export with exit code 1."""
    try:
        yield
    except ImportError as e:
        typer.echo(f"error: {e}" if "mmfuse[serve]" in str(e) else f'error: {e}; pip install "mmfuse[serve]"', err=True)
        raise typer.Exit(code=2) from None
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None
    except RuntimeError as e:
        from mmfuse.export.onnx_export import ExportError

        if not isinstance(e, ExportError):
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None


def serve(
    run: ServeRunArg,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on; 0.0.0.0 exposes it to the network.")] = (
        "127.0.0.1"
    ),
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port; 0 picks a free one (printed once serving).")
    ] = 8000,
    onnx: Annotated[
        bool, typer.Option("--onnx", help="Run the model with onnxruntime (exports RUN/export/model.onnx if needed).")
    ] = False,
    checkpoint: CheckpointOpt = "best",
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Items per model batch; 1 = no batching.")] = 16,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="How long a request waits for others to batch with.")
    ] = 10.0,
    max_image_mb: Annotated[float, typer.Option("--max-image-mb", min=0.001, help="Largest image upload (MiB).")] = 10,
    max_request_mb: Annotated[
        float, typer.Option("--max-request-mb", min=0.001, help="Largest request body (MiB); batches hold many images.")
    ] = 32,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Largest decoded image (width × height; decompression bombs).")
    ] = 40_000_000,
    max_items: Annotated[int, typer.Option("--max-items", min=1, help="Most items per /predict/batch request.")] = 64,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Model threads (default: all cores).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve a trained model: POST /predict and /predict/batch, GET /health and /info, the try-it page at /, the
    OpenAPI schema at /docs. Requests arriving together run as one batch; the model runs in one thread."""
    with _user_errors():
        from mmfuse.serve.app import create_app  # noqa: F401 - fails early, with the fix, without the extra
        from mmfuse.serve.loading import load_predictor, run_server
        from mmfuse.serve.settings import MiB, ServeSettings

        settings = ServeSettings(
            max_batch=max_batch, max_wait_ms=max_wait_ms, max_image_bytes=int(max_image_mb * MiB),
            max_request_bytes=int(max_request_mb * MiB), max_pixels=max_pixels, max_items=max_items,
        )  # fmt: skip
        _log_to_console(log_level)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        predictor = load_predictor(run, onnx=onnx, checkpoint=checkpoint, threads=threads)

        def ready(url: str) -> None:
            with contextlib.suppress(OSError):  # stderr on a full disk: the server runs on, /health says it
                typer.echo(f"serving {predictor.head} ({predictor.backend}) from {run} on {url}", err=True)

        run_server(predictor, host=host, port=port, settings=settings, log_level=log_level, on_ready=ready)


def export(
    run: ExportRunArg,
    fmt: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="File to write (default RUN/export/model.onnx; model-last.onnx for --checkpoint last).",
            show_default=False,
        ),
    ] = None,
    exporter: Annotated[
        str,
        typer.Option(
            "--exporter",
            help="dynamo (PyTorch's default; falls back to torchscript if it fails) or torchscript (~5x faster).",
        ),
    ] = "dynamo",
    checkpoint: CheckpointOpt = "best",
    opset: Annotated[int, typer.Option("--opset", min=13, help="ONNX opset.")] = 18,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip running the file with onnxruntime against PyTorch.")
    ] = False,
) -> None:
    """Export a trained model (encoders + head) to ONNX, checked against PyTorch with onnxruntime.

    Inputs: input_ids, attention_mask (token_type_ids), pixel_values. Outputs: logits, probabilities, and where the
    head has them attention and image_reliance. Batch and sequence axes are dynamic; the file's metadata holds the
    classes, threshold and config, and the folder FILE.preprocessing/ beside it the tokenizer and image-processor
    files (no weights; copy it along), so `mmfuse serve FILE.onnx` runs it without loading the encoders.
    """
    with _user_errors():
        if fmt.lower() != "onnx":
            raise ValueError(f"unknown export format {fmt!r}; supported: onnx")
        from mmfuse.export.onnx_export import EXPORTERS, export_run

        if exporter not in EXPORTERS:
            raise ValueError(f"--exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
        _log_to_console("warning")
        result = export_run(
            run,
            out,
            checkpoint=checkpoint,
            exporter=exporter,
            opset=opset,
            verify=not no_verify,  # type: ignore[arg-type]
        )
    typer.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB) with the {result.exporter} exporter "
               f"in {result.seconds:.1f} s")  # fmt: skip
    if result.fallback_reason:
        typer.echo(f"  (dynamo exporter failed: {result.fallback_reason})")
    typer.echo(f"  inputs:  {', '.join(result.inputs)}\n  outputs: {', '.join(result.outputs)}")
    typer.echo(f"  preprocessing: {result.preprocessing} (tokenizer, image processor; keep it beside the file)")
    for modality, why in result.preprocessing_skipped.items():
        typer.echo(f"  {modality} preprocessing not saved ({why}): serving this file rebuilds that encoder")
    if result.max_abs_diff:
        worst = max(result.max_abs_diff.values())
        typer.echo(f"  onnxruntime vs PyTorch: max |difference| {worst:.2e} over {', '.join(result.max_abs_diff)}")


def _log_to_console(level: str) -> None:
    logging.basicConfig(level=level.upper() if level.upper() in logging._nameToLevel else "INFO",
                        format="%(levelname)s: %(message)s")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the top-level app."""
    app.command("serve")(serve)
    app.command("export")(export)
