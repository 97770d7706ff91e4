"""Server settings: batching and the limits that keep bad or huge requests from hurting the worker."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ServeSettings"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts.

    Attributes:
        max_batch: at most this many items per model batch; 1 turns request batching off.
        max_wait_ms: how long a request may wait for others to join its batch.
        max_queue: items allowed to wait for the model; beyond, requests get 503 (retry later).
        max_request_bytes: largest request body; larger ones get 413 before they are read.
        max_image_bytes: largest encoded image (a file part, or base64-decoded); larger ones get 413.
        max_pixels: largest decoded image in pixels (width × height, read from the header before decoding):
            a decompression bomb gets 413.
        max_items: most items in one ``/predict/batch`` request (422 beyond).
        max_text_chars: longest text in characters (422 beyond; the model truncates to its token limit anyway).
    """

    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 1024
    max_request_bytes: int = 32 * MiB
    max_image_bytes: int = 10 * MiB
    max_pixels: int = 40_000_000
    max_items: int = 64
    max_text_chars: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_request_bytes", "max_image_bytes", "max_pixels", "max_items",
                     "max_text_chars"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.max_wait_ms, bool) or not isinstance(self.max_wait_ms, (int, float)) or self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be a number >= 0 (milliseconds), got {self.max_wait_ms!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
