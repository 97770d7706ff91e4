"""The HTTP API and the web page: :func:`create_app` builds a FastAPI app around a :class:`Predictor`.

Routes:

- ``POST /predict``: one item, as ``multipart/form-data`` (a ``text`` field and an ``image`` file) or as JSON
  (``{"text": ..., "image": <base64 or data: URL>}``).
- ``POST /predict/batch``: many items in one call (JSON ``{"items": [...]}``, or multipart with repeated ``text`` and
  ``image`` fields paired in order); they run through the model together. An image that cannot be decoded fails its
  item only (listed in ``errors``, counted in ``failed`` and in the log), not the request; it is never replaced by a
  blank.
- ``GET /health``, ``GET /info``; ``GET /openapi.json``, ``GET /docs``; ``GET /``: the page to try the model.

Bad input is answered, never raised into the worker: a body over the size limit gets 413 before it is read, an image
over the byte or pixel cap 413, bytes that are not an image 400, a wrong or missing field 422 (FastAPI's error shape),
another content type 415, an overloaded queue 503. Nothing from a request reaches the filesystem: images are decoded
from the bytes in memory, and the page's files are fixed routes loaded from the package at start-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, Field, ValidationError, create_model
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f'the server needs the serve extra ({e.name} is missing): pip install "mmfuse[serve]"') from e

import mmfuse
from mmfuse.data.images import ImageDecodeError, ImageError, ImageTooLargeError
from mmfuse.serve.batching import MicroBatcher, QueueFullError
from mmfuse.serve.images import decode_base64, decode_image
from mmfuse.serve.predictor import Prediction, Predictor
from mmfuse.serve.settings import ServeSettings

__all__ = ["create_app"]

log = logging.getLogger("mmfuse.serve")

_STATIC = {  # route -> (package file, media type); fixed, so no request path ever names a file
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


# ----------------------------------------------------------------------------------------------- response models


class AttentionOut(BaseModel):
    """Attention over the image's region grid, averaged over the text tokens (sums to 1)."""

    grid: tuple[int, int] = Field(description="(rows, cols) of the region grid over the image")
    weights: list[list[float]] = Field(description="rows × cols weights, row-major from the top-left region")


class PredictionOut(BaseModel):
    """One item's prediction."""

    label: str = Field(description="the predicted class")
    probabilities: dict[str, float] = Field(description="class -> probability, in the model's class order")
    threshold: float | None = Field(
        description="binary tasks: label = second class where its probability >= threshold (the run's tuned "
        "threshold); null: the most probable class"
    )
    image_reliance: float | None = Field(
        None, description="how much the image contributed, in [0, 1] (heads with a gate); else null"
    )
    attention: AttentionOut | None = Field(None, description="heads with attention over image regions; else null")


class ItemError(BaseModel):
    """Why one item of a batch got no prediction."""

    index: int
    status: int = Field(description="the HTTP status the item alone would have got (400, 413)")
    detail: str


class BatchOut(BaseModel):
    """One entry per item, in order: a prediction, or null where the item failed (see ``errors``)."""

    predictions: list[PredictionOut | None]
    errors: list[ItemError] = Field(default_factory=list)
    failed: int = Field(0, description="how many items got no prediction (their image could not be read)")


class HealthOut(BaseModel):
    status: str
    queued: int = Field(description="items waiting for the model")
    batches: int = Field(description="model batches run so far")
    mean_batch: float = Field(description="mean items per model batch so far")


class InfoOut(BaseModel):
    head: str
    encoders: dict[str, str | None]
    classes: list[str]
    threshold: float | None
    inputs: list[str] = Field(description="the fields an item needs: text, image")
    attention: bool = Field(description="predictions carry attention over image regions")
    image_reliance: bool = Field(description="predictions carry the image-reliance weight")
    backend: str = Field(description="torch or onnx")
    version: str
    source: str | None
    settings: dict[str, Any]


# ----------------------------------------------------------------------------------------------- request handling


class _ItemFailure(Exception):
    """An item that gets no prediction: the status and message it is answered with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class _RawItem:
    text: str | None
    image: bytes | None
    name: str  # for messages: "image", "items[2].image"
    error: _ItemFailure | None = None  # the image could not even be read (bad base64)


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, from Content-Length before the app reads it,
    or while reading a body sent without one (chunked).

    The rest of the body is read and dropped (never stored) before answering, up to ``drain`` bytes, so an HTTP/1.1
    client still sending gets the 413 instead of a reset connection; a larger body gets the answer and the
    connection is closed.
    """

    def __init__(self, app: Any, limit: int, drain: int | None = None) -> None:
        self.app, self.limit = app, limit
        self.drain = drain if drain is not None else max(4 * limit, 64 * 1024 * 1024)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= self.drain:
                await self._discard(receive, 0)
            await self._reject(send, int(declared))
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body", False):
                        seen = await self._discard(receive, seen)
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send, seen)

    async def _discard(self, receive: Callable[[], Awaitable[dict]], seen: int) -> int:
        """Reads and drops the rest of the body (up to ``drain`` bytes in all); returns the bytes seen."""
        while seen <= self.drain:
            message = await receive()
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return seen

    async def _reject(self, send: Callable, size: int) -> None:
        detail = f"request body of {size} bytes exceeds the limit of {self.limit} bytes; send a smaller image"
        response = JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:  # pragma: no cover - JSONResponse does not read
    return {"type": "http.disconnect"}


def _missing(loc: tuple[Any, ...], what: str) -> RequestValidationError:
    return RequestValidationError([{"type": "missing", "loc": loc, "msg": f"Field required: {what}", "input": None}])


def _invalid(loc: tuple[Any, ...], msg: str, value: Any = None) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


class _Service:
    """The app's state and request logic (kept apart from routing so each handler stays short)."""

    def __init__(self, predictor: Predictor, settings: ServeSettings) -> None:
        self.predictor = predictor
        self.settings = settings
        self.batcher: MicroBatcher[tuple[str, Any], Prediction] = MicroBatcher(
            self._run_batch, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
        )  # fmt: skip
        self.json_item = create_model(
            "PredictRequest",
            text=(str, ...) if predictor.reads_text else (str | None, None),
            image=(str, ...) if predictor.reads_image else (str | None, None),
            __doc__="One item: the text, and the image file's bytes base64-encoded (a data: URL works too).",
        )
        self.json_batch = create_model(
            "PredictBatchRequest",
            items=(list[self.json_item], Field(..., min_length=1, max_length=settings.max_items)),  # type: ignore[valid-type]
            __doc__="Many items, run through the model together.",
        )

    def _run_batch(self, items: list[tuple[str, Any]]) -> list[Prediction]:
        texts = [text for text, _ in items]
        pixels = [p for _, p in items] if self.predictor.reads_image else None
        return self.predictor.predict(texts, pixels)

    # --- parsing

    async def read_items(self, request: Request, *, batch: bool) -> list[_RawItem]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json" or kind.endswith("+json"):
            return await self._json_items(request, batch=batch)
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):  # the latter: a form with no file
            return await self._form_items(request, batch=batch)
        raise HTTPException(
            415,
            f"unsupported content type {kind or '(none)'!r}; send multipart/form-data (fields text and image, a file) "
            'or application/json ({"text": ..., "image": "<base64>"})',
        )

    async def _json_items(self, request: Request, *, batch: bool) -> list[_RawItem]:
        body = await request.body()
        model = self.json_batch if batch else self.json_item
        try:
            parsed = model.model_validate_json(body)
        except ValidationError as e:
            raise RequestValidationError(
                [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
            ) from None
        items = parsed.items if batch else [parsed]  # type: ignore[attr-defined]
        prefix = "items[{}]." if batch else ""
        out = []
        for i, item in enumerate(items):
            name = prefix.format(i) + "image"
            raw = _RawItem(item.text, None, name)
            if item.image is not None and self.predictor.reads_image:
                try:
                    raw.image = decode_base64(item.image, name=name, max_bytes=self.settings.max_image_bytes)
                except ImageError as e:
                    raw.error = _ItemFailure(_status(e), str(e))
                    if not batch:
                        raise raw.error from None
            out.append(raw)
        return out

    async def _form_items(self, request: Request, *, batch: bool) -> list[_RawItem]:
        limit = self.settings.max_items if batch else 1
        try:
            form = await request.form(
                max_files=limit, max_fields=2 * limit + 4, max_part_size=4 * self.settings.max_text_chars + 1024
            )
        except HTTPException as e:
            raise HTTPException(400, f"malformed multipart body: {e.detail}") from None
        texts, images = form.getlist("text"), form.getlist("image")
        for field_name, values in (("text", texts), ("image", images)):
            if len(values) > limit:
                raise _invalid(("body", field_name), f"at most {limit} {field_name} field(s) per request")
        if batch:
            needed = [len(v) for v, used in ((texts, self.predictor.reads_text), (images, self.predictor.reads_image))
                      if used]  # fmt: skip
            if needed and len(set(needed)) > 1:
                raise _invalid(("body",), f"got {len(texts)} text and {len(images)} image fields; pair one of each")
            if not needed or needed[0] == 0:
                raise _missing(("body", "text" if self.predictor.reads_text else "image"), "at least one item")
        count = max(len(texts), len(images), 1) if batch else 1
        out = []
        for i in range(count):
            text = texts[i] if i < len(texts) else None
            image = images[i] if i < len(images) else None
            if text is not None and not isinstance(text, str):
                raise _invalid(("body", "text"), "text must be a plain form field, not a file")
            if image is not None and not isinstance(image, UploadFile):
                raise _invalid(("body", "image"), "image must be a file part (filename and bytes), not a text field")
            data = await image.read() if image is not None else None
            out.append(_RawItem(text, data, f"items[{i}].image" if batch else "image"))
        return out

    def check_fields(self, items: list[_RawItem], *, batch: bool) -> None:
        for i, item in enumerate(items):
            loc: tuple[Any, ...] = ("body", "items", i) if batch else ("body",)
            if self.predictor.reads_text and item.text is None:
                raise _missing((*loc, "text"), "the text (may be empty)")
            if self.predictor.reads_image and item.image is None and item.error is None:
                raise _missing((*loc, "image"), "the image")
            if item.text is not None and len(item.text) > self.settings.max_text_chars:
                raise _invalid(
                    (*loc, "text"), f"text has {len(item.text)} characters; the limit is {self.settings.max_text_chars}"
                )

    # --- images and prediction

    def prepare(self, items: list[_RawItem]) -> list[Any]:
        """Per item: the preprocessed image tensor, or an :class:`_ItemFailure` (runs in a worker thread)."""
        out: list[Any] = []
        for item in items:
            if not self.predictor.reads_image:
                out.append(None)
                continue
            if item.error is not None:
                out.append(item.error)
                continue
            assert item.image is not None
            try:
                image = decode_image(
                    item.image, name=item.name, max_pixels=self.settings.max_pixels,
                    max_bytes=self.settings.max_image_bytes,
                )  # fmt: skip
                out.append(self.predictor.prepare_image(image))
            except ImageError as e:
                out.append(_ItemFailure(_status(e), str(e)))
        return out

    async def predict(self, items: list[_RawItem]) -> list[Prediction | _ItemFailure]:
        prepared = await run_in_threadpool(self.prepare, items)
        good = [i for i, p in enumerate(prepared) if not isinstance(p, _ItemFailure)]
        results: list[Prediction | _ItemFailure] = list(prepared)
        if good:
            predictions = await self.batcher.submit([(items[i].text or "", prepared[i]) for i in good])
            for i, prediction in zip(good, predictions, strict=True):
                results[i] = prediction
        return results

    def info(self) -> dict[str, Any]:
        return {**self.predictor.info(), "settings": self.settings.to_dict()}


def _status(error: ImageError) -> int:
    return 413 if isinstance(error, ImageTooLargeError) else 400


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


# ----------------------------------------------------------------------------------------------- the app


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor``.

    Args:
        predictor: a :class:`~mmfuse.serve.predictor.TorchPredictor` or :class:`~mmfuse.export.OnnxPredictor`.
        settings: batching and limits (defaults: :class:`ServeSettings`).

    The request batcher starts with the app's lifespan (uvicorn runs it; in tests use ``with TestClient(app)``).
    """
    settings = settings or ServeSettings()
    service = _Service(predictor, settings)
    pages = {route: _read_static(name) for route, (name, _) in _STATIC.items()}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(
        title="mmfuse",
        version=mmfuse.__version__,
        summary=f"{predictor.head} image+text classifier ({', '.join(predictor.classes)})",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(_BodyLimit, limit=settings.max_request_bytes)
    _add_routes(app, service, pages)
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app, service)  # type: ignore[method-assign]
    return app


def _add_routes(app: FastAPI, service: _Service, pages: dict[str, bytes]) -> None:
    errors: dict[int | str, dict[str, Any]] = {
        400: {"description": "bad input: not an image, bad base64, malformed body"},
        413: {"description": "request, image bytes or image pixels over the limit"},
        415: {"description": "neither multipart/form-data nor JSON"},
        503: {"description": "overloaded: too many items waiting; retry"},
    }

    @app.post("/predict", response_model=PredictionOut, responses=errors, openapi_extra=_body_doc("PredictRequest"))
    async def predict(request: Request) -> Any:
        """Classify one image with its text."""
        items = await service.read_items(request, batch=False)
        service.check_fields(items, batch=False)
        (result,) = await service.predict(items)
        if isinstance(result, _ItemFailure):
            log.info("predict: no prediction (%d): %s", result.status, result.detail)
            return _error(result.status, result.detail)
        return result.to_dict()

    @app.post(
        "/predict/batch", response_model=BatchOut, responses=errors, openapi_extra=_body_doc("PredictBatchRequest")
    )
    async def predict_batch(request: Request) -> Any:
        """Classify many items in one call; the model runs them as one batch."""
        items = await service.read_items(request, batch=True)
        if len(items) > service.settings.max_items:
            raise _invalid(("body", "items"), f"at most {service.settings.max_items} items per request")
        service.check_fields(items, batch=True)
        results = await service.predict(items)
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, _ItemFailure)]
        errors = [{"index": i, "status": r.status, "detail": r.detail} for i, r in failures]
        if errors:
            shown = "; ".join(f"items[{e['index']}]: {e['detail']}" for e in errors[:5])
            more = f"; ... {len(errors) - 5} more" if len(errors) > 5 else ""
            log.warning("predict/batch: %d of %d items got no prediction: %s%s", len(errors), len(results), shown, more)
        return {
            "predictions": [r.to_dict() if isinstance(r, Prediction) else None for r in results],
            "errors": errors,
            "failed": len(errors),
        }

    @app.get("/health", response_model=HealthOut, responses={503: {"description": "the model worker is not running"}})
    async def health() -> Any:
        """Liveness: ok while the batcher and its model thread run."""
        batcher = service.batcher
        body = {
            "status": "ok" if batcher.running else "unavailable",
            "queued": batcher.queued,
            "batches": batcher.stats.batches,
            "mean_batch": round(batcher.stats.mean_batch, 3),
        }
        return body if batcher.running else JSONResponse(body, status_code=503)

    @app.get("/info", response_model=InfoOut)
    async def info() -> Any:
        """The model: head, encoders, classes, decision threshold, backend, version; and the server's limits."""
        return service.info()

    for route, (_, media_type) in _STATIC.items():
        _add_static(app, route, pages[route], media_type)


def _add_static(app: FastAPI, route: str, content: bytes, media_type: str) -> None:
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if route == "/":
        headers["Content-Security-Policy"] = _PAGE_CSP

    async def page() -> Response:
        return (HTMLResponse if route == "/" else Response)(content, media_type=media_type, headers=headers)

    app.add_api_route(route, page, methods=["GET"], include_in_schema=False, name=f"static:{route}")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(_ItemFailure)
    async def item_failure(_: Request, exc: _ItemFailure) -> JSONResponse:
        return _error(exc.status, exc.detail)

    @app.exception_handler(QueueFullError)
    async def queue_full(_: Request, exc: QueueFullError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ImageDecodeError)
    async def bad_image(_: Request, exc: ImageDecodeError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody reads it; keeps a routine event out of the error log

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server logged the details")


def _read_static(name: str) -> bytes:
    return (resources.files("mmfuse.serve") / "static" / name).read_bytes()


# ----------------------------------------------------------------------------------------------- OpenAPI


def _body_doc(model: str) -> dict[str, Any]:
    """The request body in the OpenAPI schema: JSON (the model's schema) or multipart."""
    single = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "the text (may be empty)"},
            "image": {"type": "string", "format": "binary", "description": "the image file"},
        },
        "required": ["text", "image"],
    }
    many = {
        "type": "object",
        "properties": {
            "text": {"type": "array", "items": {"type": "string"}, "description": "one per item, in order"},
            "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "in order"},
        },
        "required": ["text", "image"],
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}},
                "multipart/form-data": {"schema": many if "Batch" in model else single},
            },
        }
    }


def _openapi(app: FastAPI, service: _Service) -> dict[str, Any]:
    """FastAPI's schema plus the JSON request models (the handlers parse bodies themselves, to accept both JSON
    and multipart, so FastAPI does not see these models)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes, description=app.description
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (service.json_item, service.json_batch):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = json.loads(json.dumps(schema))
    return app.openapi_schema
