"""The HTTP API and the web page: :func:`create_app` builds a FastAPI app around a :class:`Predictor`.

Routes:

- ``POST /predict``: one item, as ``multipart/form-data`` (a ``text`` field and an ``image`` file) or as JSON
  (``{"text": ..., "image": <base64 or data: URL>}``).
- ``POST /predict/batch``: many items in one call (JSON ``{"items": [...]}``, or multipart with repeated ``text`` and
  ``image`` fields paired in order); they run through the model together. An image that cannot be decoded fails its
  item only (listed in ``errors``, counted in ``failed`` and in the log), not the request; it is never replaced by a
  blank.
- ``GET /health``, ``GET /info``; ``GET /openapi.json``, ``GET /docs``; ``GET /``: the page to try the model.

Each body kind has its own typed FastAPI route: a pydantic body model for JSON (``PredictRequest``,
``PredictBatchRequest``) and a ``Form`` model with ``UploadFile`` fields for multipart (``PredictForm``,
``PredictBatchForm``), built per app because their limits come from :class:`ServeSettings` and what is required from
the model (a text-only head needs no image). The JSON and the multipart route of an operation share its URL: a route
takes only requests whose ``Content-Type`` is its own (:class:`_BodyRoute`), and the operation's OpenAPI entry lists
both bodies, the multipart one from the form model's schema (``openapi_extra``, as FastAPI documents for a body it
does not read itself).

Bad input is answered, never raised into the worker: a body over the size limit gets 413 before it is read, an image
over the byte or pixel cap 413, bytes that are not an image 400, a wrong or missing field 422 (FastAPI's error shape),
another content type 415, an overloaded queue 503. Nothing from a request reaches the filesystem: images are decoded
from the bytes in memory, and the page's files are fixed routes loaded from the package at start-up.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations at run time, and they
# name the request models that create_app builds for each app.

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, ClassVar

try:
    from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.routing import APIRoute
    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers
    from starlette.datastructures import UploadFile as StarletteUploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
    from starlette.routing import Match
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f'the server needs the serve extra ({e.name} is missing): pip install "mmfuse[serve]"') from e

import mmfuse
from mmfuse.data.images import ImageDecodeError, ImageError, ImageTooLargeError
from mmfuse.model.prediction import Prediction
from mmfuse.model.predictor import Predictor
from mmfuse.serve.batching import MicroBatcher, QueueFullError
from mmfuse.serve.health import LogWatch, unreadable
from mmfuse.serve.images import decode_base64, decode_image
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
_JSON = "application/json"
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")  # the latter: a form with no file


# ----------------------------------------------------------------------------------------------- response models


class WordAttentionOut(BaseModel):
    """Where one word of the text looked: the mean attention of its tokens over the region grid."""

    word: str
    weights: list[list[float]] = Field(
        description="rows × cols weights (sum to 1; all 0 for a word the model never read, past its token limit)"
    )


class AttentionOut(BaseModel):
    """Attention over the image's region grid, averaged over the text tokens (sums to 1). The grid covers what the
    image encoder reads: the whole image, or its centre square (``/info``'s ``image_crop``)."""

    grid: tuple[int, int] = Field(description="(rows, cols) of the region grid over the image")
    weights: list[list[float]] = Field(description="rows × cols weights, row-major from the top-left region")
    words: list[WordAttentionOut] | None = Field(
        None,
        description="heads with one attention row per text token (cross_attention): each word's own map, in text "
        "order (the text split at whitespace, its first 128 words); else null",
    )
    words_omitted: int = Field(0, description="words of the text past the first 128, without a map of their own")


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
    image_present: bool = Field(
        True,
        description="false: the item came without an image and was predicted from the text alone (a model "
        "trained with missing-image handling)",
    )


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
    status: str = Field(
        description="ok; degraded: it answers, but something needs a fix (see problems); unavailable: it cannot answer"
    )
    problems: list[str] = Field(
        default_factory=list, description="what is wrong, each with its fix (empty when status is ok)"
    )
    queued: int = Field(description="items waiting for the model")
    batches: int = Field(description="model batches run so far")
    mean_batch: float = Field(description="mean items per model batch so far")


class InfoOut(BaseModel):
    head: str
    encoders: dict[str, str | None]
    classes: list[str]
    threshold: float | None
    temperature: float | None = Field(
        None, description="calibration temperature: probabilities are softmax(logits / temperature); null: none"
    )
    image_required: bool = Field(
        False, description="every item needs an image (false: the model also predicts from the text alone)"
    )
    inputs: list[str] = Field(description="the fields an item needs: text, image")
    attention: bool = Field(description="predictions carry attention over image regions")
    image_reliance: bool = Field(description="predictions carry the image-reliance weight")
    image_crop: float | None = Field(
        None,
        description="where the attention grid lies on an image: null, the whole image (resized to the model's "
        "input); a number, the centre square the image encoder reads, as a share of the image's short side",
    )
    backend: str = Field(description="torch or onnx")
    version: str
    source: str | None
    settings: dict[str, Any]


# ----------------------------------------------------------------------------------------------- request models


@dataclass(frozen=True)
class _RequestModels:
    """The request bodies of one app: JSON (one item, a batch) and multipart forms (one item, a batch)."""

    json_item: type[BaseModel]
    json_batch: type[BaseModel]
    form_item: type[BaseModel]
    form_batch: type[BaseModel]


def _file_part(value: Any) -> Any:
    """Before FastAPI's UploadFile check: a message that says what to send instead."""
    if isinstance(value, str):
        raise ValueError("image must be a file part (filename and bytes), not a text field")
    return value


def _request_models(predictor: Predictor, settings: ServeSettings) -> _RequestModels:
    """The pydantic models FastAPI validates request bodies with; their limits and required fields follow
    ``settings`` and what ``predictor`` reads, so ``/openapi.json`` shows the ones this server applies."""
    text = Annotated[str, Field(max_length=settings.max_text_chars, description="the text (may be empty)")]
    image64 = Annotated[
        str, Field(description="the image file's bytes, base64-encoded (standard or URL-safe); a data: URL works too")
    ]
    image_file = Annotated[UploadFile, BeforeValidator(_file_part), Field(description="the image file")]
    many = {"min_length": 1, "max_length": settings.max_items}

    def field(kind: Any, used: bool) -> Any:
        return (kind, ...) if used else (kind | None, None)

    # a model trained with missing-image handling takes items without an image (predicted from a blank, as trained)
    needs_image = predictor.reads_image and predictor.missing_image_problem() is not None
    json_item = create_model(
        "PredictRequest",
        __doc__="One item: the text, and the image file's bytes base64-encoded (a data: URL works too).",
        text=field(text, predictor.reads_text),
        image=field(image64, needs_image),
    )
    json_batch = create_model(
        "PredictBatchRequest",
        __doc__="Many items, run through the model together.",
        items=(list[json_item], Field(**many)),  # type: ignore[valid-type]
    )
    required = [name for name, used in (("text", predictor.reads_text), ("image", needs_image)) if used]

    def form_schema(schema: dict[str, Any]) -> None:
        if predictor.reads_text:  # the text is required although it has a default (see _text_sent)
            schema["required"] = required
            schema["properties"]["text"].pop("default", None)

    form_item = create_model(
        "PredictForm",
        __doc__="One item as multipart/form-data: a text field and an image file.",
        __config__=ConfigDict(json_schema_extra=form_schema),
        # FastAPI reads an empty form field as an absent one (HTML forms send empty inputs), but an empty text is
        # valid here: the default keeps it, and the route tells an absent field from an empty one (_text_sent).
        text=(text, "") if predictor.reads_text else (text | None, None),
        image=field(image_file, needs_image),
    )
    texts = list[text] if predictor.reads_text else list[text] | None  # type: ignore[valid-type]
    images = list[image_file] if needs_image else list[image_file] | None  # type: ignore[valid-type]

    def paired(form: Any) -> Any:  # images optional: none at all (text only), or one per text
        counts = [
            len(v)
            for v, used in ((form.text, predictor.reads_text), (form.image, predictor.reads_image))
            if used and v is not None
        ]
        if len(set(counts)) > 1:
            raise ValueError(f"got {len(form.text)} text and {len(form.image)} image fields; pair one of each")
        return form

    form_batch = create_model(
        "PredictBatchForm",
        __doc__="Many items as multipart/form-data: repeated text fields and image files, paired in order.",
        __validators__={"paired": model_validator(mode="after")(paired)},
        text=(texts, Field(..., description="one per item, in order", **many))
        if predictor.reads_text
        else (texts, None),
        image=(images, Field(..., description="one per item, in order", **many)) if needs_image else (images, None),
    )
    return _RequestModels(json_item, json_batch, form_item, form_batch)


def _multipart_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of an operation whose multipart body a route of its own reads: the form model's schema."""
    return {"requestBody": {"content": {"multipart/form-data": {"schema": model.model_json_schema()}}}}


# ----------------------------------------------------------------------------------------------- routing by body kind


def _media_type(scope: dict[str, Any]) -> str:
    return Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()


class _BodyRoute(APIRoute):
    """A route for request bodies of some media types: a request of another ``Content-Type`` does not match it, so
    routing goes on to the next route with the same path (FastAPI picks a route by path and method; one URL taking
    JSON or a multipart form needs one typed route per body kind)."""

    media_types: ClassVar[tuple[str, ...]] = ()

    def accepts(self, media_type: str) -> bool:
        return media_type in self.media_types

    def matches(self, scope: dict[str, Any]) -> tuple[Match, dict[str, Any]]:
        match, child_scope = super().matches(scope)
        if match is Match.FULL and not self.accepts(_media_type(scope)):
            return Match.NONE, {}
        return match, child_scope


class _JsonRoute(_BodyRoute):
    media_types = (_JSON,)

    def accepts(self, media_type: str) -> bool:
        return media_type == _JSON or media_type.endswith("+json")


class _FormRoute(_BodyRoute):
    """Multipart (or url-encoded) forms, parsed with this route's limits on fields, files and text size before
    FastAPI reads the form (Starlette keeps the parsed form on the request; FastAPI's own call returns it)."""

    media_types = _FORMS
    parse_limits: ClassVar[dict[str, int]] = {}  # not "form_limits": newer FastAPI routes have one

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handle = super().get_route_handler()
        limits = self.parse_limits

        async def parse_then_handle(request: Request) -> Response:
            try:
                await request.form(**limits)
            except StarletteHTTPException as e:
                if e.status_code != 400:  # a body over the size limit (413) stays what it is
                    raise
                raise HTTPException(400, f"malformed multipart body: {e.detail}") from None
            return await handle(request)

        return parse_then_handle


def _form_route(*, items: int, settings: ServeSettings) -> type[APIRoute]:
    limits = {"max_files": items, "max_fields": 2 * items + 4, "max_part_size": 4 * settings.max_text_chars + 1024}
    return type(f"_FormRoute{items}", (_FormRoute,), {"parse_limits": limits})


async def _unsupported_media_type(request: Request) -> Response:
    """The last route of a body-taking path: what no body route took."""
    kind = _media_type(request.scope)
    raise HTTPException(
        415,
        f"unsupported content type {kind or '(none)'!r}; send multipart/form-data (fields text and image, a file) "
        'or application/json ({"text": ..., "image": "<base64>"})',
    )


# ----------------------------------------------------------------------------------------------- body size limit


class _BodyTooLarge(StarletteHTTPException):
    """A body over the limit found while it is read: an HTTP error, so that FastAPI's body parsing (which answers
    other read errors with 400) lets it through."""

    def __init__(self, size: int, limit: int) -> None:
        detail = f"request body of {size} bytes exceeds the limit of {limit} bytes; send a smaller image"
        super().__init__(413, detail, headers={"Connection": "close"})


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
            await self._reject(send, _BodyTooLarge(int(declared), self.limit))
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
                    raise _BodyTooLarge(seen, self.limit)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge as e:  # where the app's exception handlers did not answer it
            if not started:
                await self._reject(send, e)

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

    async def _reject(self, send: Callable, error: _BodyTooLarge) -> None:
        response = JSONResponse({"detail": error.detail}, status_code=413, headers=error.headers)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:  # pragma: no cover - JSONResponse does not read
    return {"type": "http.disconnect"}


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


class _Service:
    """The app's state and request logic (kept apart from routing so each handler stays short)."""

    def __init__(self, predictor: Predictor, settings: ServeSettings) -> None:
        self.predictor = predictor
        self.settings = settings
        self.logs = LogWatch()
        self.models = _request_models(predictor, settings)
        self.batcher: MicroBatcher[tuple[str, Any], Prediction] = MicroBatcher(
            self._run_batch, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
        )  # fmt: skip

    def _run_batch(self, items: list[tuple[str, Any]]) -> list[Prediction]:
        texts = [text for text, _ in items]
        pixels = [p for _, p in items] if self.predictor.reads_image else None
        return self.predictor.predict(texts, pixels, words=True)  # each word's map too, for the page

    # --- validated bodies -> items

    def json_items(self, items: Sequence[Any], *, batch: bool) -> list[_RawItem]:
        """Items of a validated JSON body; their base64 images decoded to bytes. A bad one fails the request when
        alone, and its item in a batch."""
        out = []
        for i, item in enumerate(items):
            name = f"items[{i}].image" if batch else "image"
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

    async def form_items(
        self, texts: Sequence[str] | None, images: Sequence[UploadFile] | None, *, batch: bool
    ) -> list[_RawItem]:
        """Items of a validated multipart body (texts and images paired in order)."""
        texts, images = texts or [], images or []
        out = []
        for i in range(max(len(texts), len(images))):
            data = await images[i].read() if i < len(images) else None
            out.append(_RawItem(texts[i] if i < len(texts) else None, data, f"items[{i}].image" if batch else "image"))
        return out

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
            if item.image is None:  # no image sent: a blank stands in, for a model trained to expect that
                problem = self.predictor.missing_image_problem()
                out.append(None if problem is None else _ItemFailure(422, f"{item.name}: {problem}"))
                continue
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

    async def answer_one(self, items: list[_RawItem]) -> Any:
        (result,) = await self.predict(items)
        if isinstance(result, _ItemFailure):
            log.info("predict: no prediction (%d): %s", result.status, result.detail)
            return _error(result.status, result.detail)
        return _answer(result)

    async def answer_batch(self, items: list[_RawItem]) -> dict[str, Any]:
        results = await self.predict(items)
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, _ItemFailure)]
        errors = [{"index": i, "status": r.status, "detail": r.detail} for i, r in failures]
        if errors:
            shown = "; ".join(f"items[{e['index']}]: {e['detail']}" for e in errors[:5])
            more = f"; ... {len(errors) - 5} more" if len(errors) > 5 else ""
            log.warning("predict/batch: %d of %d items got no prediction: %s%s", len(errors), len(results), shown, more)
        return {
            "predictions": [_answer(r) if isinstance(r, Prediction) else None for r in results],
            "errors": errors,
            "failed": len(errors),
        }

    def info(self) -> dict[str, Any]:
        return {**self.predictor.info(), "settings": self.settings.to_dict()}

    def problems(self) -> list[str]:
        """What ``/health`` reports besides a stopped batcher: a model source that can no longer be read, a log
        that cannot be written. Neither stops the server: the model is in memory, and records are dropped."""
        out = []
        source = getattr(self.predictor, "source", None)  # not info(): its first call runs the model (warm-up)
        if source is not None and (reason := unreadable(source)) is not None:
            out.append(
                f"the model source {str(source)!r} cannot be read any more ({reason}): the model loaded at start "
                "keeps answering, but a restart would fail; restore the folder (or its permissions)"
            )
        if self.logs.failed:
            out.append(self.logs.problem())
        return out


def _answer(prediction: Prediction) -> dict[str, Any]:
    """A prediction as the API answers it: its JSON form, and whether the item came with an image."""
    return {**prediction.to_dict(), "image_present": prediction.image_present}


async def _text_sent(request: Request) -> None:
    """422 when a multipart body has no text field at all (an empty one is valid: see PredictForm)."""
    if "text" not in await request.form():  # parsed already: Starlette keeps the form on the request
        raise RequestValidationError(
            [
                {
                    "type": "missing",
                    "loc": ("body", "text"),
                    "msg": "Field required: the text (may be empty)",
                    "input": None,
                }
            ]
        )


def _shown(value: Any) -> Any:
    if isinstance(value, StarletteUploadFile):
        return {"filename": value.filename, "size": value.size, "content_type": value.content_type}
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown(item) for item in value]
    return value


def _explained(error: dict[str, Any], missing_image: str | None) -> dict[str, Any]:
    """A validation error as answered: an upload shown by name and size; a missing image field with the reason the
    model needs one (``missing_image``)."""
    if "input" in error:
        error = {**error, "input": _shown(error["input"])}
    loc = tuple(error.get("loc", ()))
    if missing_image is not None and error.get("type") == "missing" and loc[-1:] == ("image",):
        error = {**error, "msg": f"Field required: {missing_image}"}
    return error


def _status(error: ImageError) -> int:
    return 413 if isinstance(error, ImageTooLargeError) else 400


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


# ----------------------------------------------------------------------------------------------- the app


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor``.

    Args:
        predictor: a :class:`~mmfuse.model.TorchPredictor` or :class:`~mmfuse.export.OnnxPredictor`.
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
    service.logs.watch_all()  # the handlers there now; run_server watches uvicorn's once it configured them
    app.add_middleware(_BodyLimit, limit=settings.max_request_bytes)
    _add_predict_routes(app, service)
    _add_other_routes(app, service, pages)
    _add_error_handlers(app)
    return app


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad input: not an image, bad base64, malformed body"},
    413: {"description": "request, image bytes or image pixels over the limit"},
    415: {"description": "neither multipart/form-data nor JSON"},
    503: {"description": "overloaded: too many items waiting; retry"},
}


def _add_predict_routes(app: FastAPI, service: _Service) -> None:
    """Per operation: the JSON route (in the schema, with the multipart body documented beside), the multipart route,
    and 415 for any other body."""
    json_item, json_batch = service.models.json_item, service.models.json_batch
    form_item, form_batch = service.models.form_item, service.models.form_batch

    async def predict(body: json_item) -> Any:  # type: ignore[valid-type]
        """Classify one image with its text."""
        return await service.answer_one(service.json_items([body], batch=False))

    async def predict_form(request: Request, form: Annotated[form_item, Form()]) -> Any:  # type: ignore[valid-type]
        if service.predictor.reads_text:
            await _text_sent(request)
        texts = [form.text] if service.predictor.reads_text else None
        images = [form.image] if form.image is not None else None
        return await service.answer_one(await service.form_items(texts, images, batch=False))

    async def predict_batch(body: json_batch) -> Any:  # type: ignore[valid-type]
        """Classify many items in one call; the model runs them as one batch."""
        return await service.answer_batch(service.json_items(body.items, batch=True))

    async def predict_batch_form(form: Annotated[form_batch, Form()]) -> Any:  # type: ignore[valid-type]
        return await service.answer_batch(await service.form_items(form.text, form.image, batch=True))

    settings = service.settings
    for path, on_json, on_form, items, form_model, response_model in (
        ("/predict", predict, predict_form, 1, form_item, PredictionOut),
        ("/predict/batch", predict_batch, predict_batch_form, settings.max_items, form_batch, BatchOut),
    ):
        app.router.add_api_route(
            path, on_json, methods=["POST"], response_model=response_model, responses=_ERRORS,
            openapi_extra=_multipart_doc(form_model), route_class_override=_JsonRoute,
        )  # fmt: skip
        app.router.add_api_route(
            path, on_form, methods=["POST"], response_model=response_model, include_in_schema=False,
            route_class_override=_form_route(items=items, settings=settings),
        )  # fmt: skip
        app.router.add_api_route(
            path, _unsupported_media_type, methods=["POST"], include_in_schema=False, name=f"{on_json.__name__}_other"
        )


def _add_other_routes(app: FastAPI, service: _Service, pages: dict[str, bytes]) -> None:
    @app.get("/health", response_model=HealthOut, responses={503: {"description": "the model worker is not running"}})
    async def health() -> Any:
        """Liveness: ok while the batcher and its model thread run and nothing needs a fix; degraded (still 200)
        when the model's folder can no longer be read or the log cannot be written; ``problems`` says what."""
        batcher = service.batcher
        problems = await run_in_threadpool(service.problems)  # a hung network mount must not block the event loop
        body = {
            "status": "unavailable" if not batcher.running else "degraded" if problems else "ok",
            "problems": problems if batcher.running else ["the model worker is not running", *problems],
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
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, with an uploaded file shown as its name and size, not the file object's insides; a missing
        image says why this model needs one and what to do."""
        problem = request.app.state.service.predictor.missing_image_problem()
        errors = [_explained(error, problem) for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

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
