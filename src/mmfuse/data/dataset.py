"""The torch dataset of examples and its collate function.

Images are opened and preprocessed in ``__getitem__``, so with ``num_workers > 0`` decoding runs in the DataLoader's
worker processes. An image that fails to open there (changed on disk since loading) never stops an epoch: a blank
stands in with ``image_present=False``, a warning is logged once per process, and :attr:`unreadable_count` counts it
across worker processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from mmfuse.data.example import Example
from mmfuse.data.images import DEFAULT_MAX_PIXELS, ImageError, open_image
from mmfuse.data.labels import LabelMap

logger = logging.getLogger(__name__)

UNLABELED = -1
"""Label id of an example without a label (or of every example when the dataset has no label map)."""


class MultimodalDataset(Dataset):
    """Examples as dicts of text, preprocessed image and label id.

    Args:
        examples: the examples (from :func:`~mmfuse.data.load_splits`, whose checks ran already).
        label_map: turns class names into ids; ``None`` gives every item label ``-1``.
        image_preprocess: one RGB PIL image -> ``(3, H, W)`` tensor (the image encoder's ``preprocess``); must be
            picklable for worker processes. ``None`` leaves images out of the items (text-only models, or features
            cached already).
        image_size: ``(height, width)`` of the blank that stands in for a missing image: the blank is a zero tensor
            shaped like ``image_preprocess``'s output for an image of this size.
        max_pixels: pixel cap for opening images.
        on_unreadable: ``blank`` (zero image, ``image_present=False``, counted) or ``error`` (raise the
            :class:`~mmfuse.data.ImageError`) for an image that fails to open at ``__getitem__`` time.

    Raises:
        UnseenLabelError: an example's label is not in ``label_map`` (checked here, not mid-epoch).
        ValueError: unknown ``on_unreadable``.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        label_map: LabelMap | None,
        image_preprocess: Callable[[Image.Image], torch.Tensor] | None,
        image_size: tuple[int, int] = (224, 224),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        on_unreadable: str = "blank",
    ) -> None:
        if on_unreadable not in ("blank", "error"):
            raise ValueError(f"on_unreadable must be 'blank' or 'error', got {on_unreadable!r}")
        self.examples = list(examples)
        self.label_map = label_map
        self.image_preprocess = image_preprocess
        self.image_size = tuple(image_size)
        self.max_pixels = max_pixels
        self.on_unreadable = on_unreadable
        self.labels: list[int] = [
            label_map.encode(e.label) if label_map is not None and e.label is not None else UNLABELED
            for e in self.examples
        ]
        # Shared memory, so counts made in DataLoader workers reach the main process.
        self._unreadable: Any = multiprocessing.Value("i", 0)
        self._unreadable_local = 0
        self._warned = False
        self._blank: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def unreadable_count(self) -> int:
        """Images that failed to open in ``__getitem__`` (and were blanked), in this process and its workers."""
        if self._unreadable is None:
            return self._unreadable_local
        return int(self._unreadable.value)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        item: dict[str, Any] = {
            "index": index,
            "id": example.id,
            "text": example.text,
            "image_present": example.image is not None,
            "label": self.labels[index],
        }
        if self.image_preprocess is None:
            return item
        pixels: torch.Tensor | None = None
        if example.image is not None:
            try:
                image = open_image(example.image, max_pixels=self.max_pixels)
            except ImageError as e:
                if self.on_unreadable == "error":
                    raise
                self._count_unreadable(e)
            else:
                pixels = self.image_preprocess(image)
        if pixels is None:
            pixels = self._blank_pixels()
            item["image_present"] = False
        item["pixel_values"] = pixels
        return item

    def _count_unreadable(self, error: ImageError) -> None:
        if self._unreadable is None:
            self._unreadable_local += 1
        else:
            with self._unreadable.get_lock():
                self._unreadable.value += 1
        if not self._warned:
            self._warned = True
            logger.warning("%s; a blank image stands in (further unreadable images are only counted)", error)

    def _blank_pixels(self) -> torch.Tensor:
        if self._blank is None:
            assert self.image_preprocess is not None
            height, width = self.image_size
            self._blank = torch.zeros_like(self.image_preprocess(Image.new("RGB", (width, height))))
        return self._blank.clone()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # A shared counter may only travel to a process being started (DataLoader workers); any other pickling
        # (deepcopy, saving) takes a plain snapshot of the count.
        if multiprocessing.context.get_spawning_popen() is None:
            state["_unreadable_local"] = self.unreadable_count
            state["_unreadable"] = None
        return state


def collate_examples(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches items of :class:`MultimodalDataset`.

    Returns:
        ``index`` ``(B,)`` long, ``ids`` and ``texts`` lists of str, ``pixel_values`` ``(B, 3, H, W)`` (only when
        the items have images), ``image_present`` ``(B,)`` bool, ``labels`` ``(B,)`` long (-1 = unlabeled).

    Raises:
        ValueError: an empty batch, or items with and without ``pixel_values`` mixed.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "ids": [it["id"] for it in items],
        "texts": [it["text"] for it in items],
        "image_present": torch.tensor([bool(it["image_present"]) for it in items], dtype=torch.bool),
        "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
    }
    with_pixels = sum("pixel_values" in it for it in items)
    if with_pixels == len(items):
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
    elif with_pixels:
        raise ValueError(f"{with_pixels} of {len(items)} items have pixel_values; all or none must")
    return batch
