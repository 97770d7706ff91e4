"""From what ``mmfuse serve`` is given (a run folder, an ``.onnx`` file, an export folder) to a running server."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from mmfuse.model.predictor import Predictor, TorchPredictor
from mmfuse.serve.settings import ServeSettings

__all__ = ["load_predictor", "run_server"]

log = logging.getLogger("mmfuse.serve")

ONNX_FILE = "model.onnx"


def load_predictor(
    path: str | Path, *, onnx: bool = False, checkpoint: str = "best", threads: int | None = None
) -> Predictor:
    """A predictor for ``path``.

    - an ``.onnx`` file, or a folder holding ``model.onnx`` and no checkpoint (an export folder): onnxruntime;
    - a run or checkpoint folder: PyTorch, or with ``onnx=True`` onnxruntime on the run's export
      (``RUN/export/model.onnx``), made first when it is missing or of another checkpoint.

    Raises:
        FileNotFoundError: ``path`` holds neither a checkpoint nor an ONNX model.
        ValueError: an ONNX file mmfuse did not export; a damaged checkpoint (``CheckpointError``); a model on
            precomputed features (it cannot read raw requests).
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return _onnx(path, threads)
    if not path.exists():
        raise FileNotFoundError(
            f"{str(path)!r} not found; pass a run folder (runs/<name>), a checkpoint folder or an exported .onnx file"
        )
    if not _has_checkpoint(path, checkpoint):
        if path.is_dir() and (path / ONNX_FILE).is_file():
            return _onnx(path / ONNX_FILE, threads)
        from mmfuse.model.checkpoint import resolve_checkpoint

        resolve_checkpoint(path, checkpoint)  # raises FileNotFoundError saying what is missing
    if not onnx:
        predictor = TorchPredictor.from_run(path, checkpoint=checkpoint)
        from mmfuse.encoders.precomputed import raw_input_problem

        if (problem := raw_input_problem(predictor.model, "serve")) is not None:
            raise ValueError(problem)
        return predictor
    return _onnx(_current_export(path, checkpoint), threads)


def _has_checkpoint(path: Path, checkpoint: str) -> bool:
    from mmfuse.model.checkpoint import resolve_checkpoint

    try:
        resolve_checkpoint(path, checkpoint)
    except FileNotFoundError:
        return False
    return True


def _onnx(path: Path, threads: int | None) -> Predictor:
    from mmfuse.export.runtime import OnnxPredictor

    return OnnxPredictor(path, threads=threads)


def _current_export(run: Path, checkpoint: str) -> Path:
    """The run's ONNX export of ``checkpoint``, exported now if missing, stale, or without its preprocessing files."""
    from mmfuse.export.onnx_export import (
        checkpoint_digest,
        default_onnx_path,
        export_run,
        preprocessing_problem,
        read_metadata,
    )

    path = default_onnx_path(run, checkpoint)
    if path.is_file():
        try:
            metadata = read_metadata(path)
            if metadata.get("checkpoint_digest") != checkpoint_digest(run, checkpoint):
                log.warning("%s was exported from another checkpoint; exporting again", path)
            elif (problem := preprocessing_problem(path, metadata)) is not None:
                log.warning("%s: %s; exporting again", path, problem)
            else:
                return path
        except ValueError as e:
            log.warning("%s is unusable (%s); exporting again", path, e)
    else:
        log.warning("no ONNX export at %s yet; exporting the %s checkpoint (takes a minute)", path, checkpoint)
    result = export_run(run, path, checkpoint=checkpoint)
    log.warning("exported %s with the %s exporter in %.0f s", result.path, result.exporter, result.seconds)
    return result.path


def run_server(
    predictor: Predictor,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serves ``predictor`` with uvicorn (one process; the model runs in one thread, requests are batched) until
    interrupted.

    Args:
        port: TCP port; 0 lets the system pick a free one (``on_ready`` is told which).
        on_ready: called with the server's base URL (``http://HOST:PORT/``, the port it really listens on) once it
            accepts requests.
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from mmfuse.serve.app import create_app

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if on_ready is not None and self.servers:
                bound = self.servers[0].sockets[0].getsockname()[1]
                on_ready(f"http://{f'[{host}]' if ':' in host else host}:{bound}/")

    predictor.warmup()
    app = create_app(predictor, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, workers=1, timeout_graceful_shutdown=5)
    app.state.service.logs.watch_all()  # uvicorn.Config set up its log handlers
    server = Server(config)  # what uvicorn.run does for one worker, with the startup hook above
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # uvicorn logged why (a port in use, a failed startup)
