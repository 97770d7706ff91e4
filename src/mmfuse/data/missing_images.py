"""Images missing at predict / evaluate time: counted, named, warned about, and past a share an error.

A model that reads images still predicts an example whose image is missing or unreadable, from a blank image (the
example is flagged ``image_present=False``, as in training with ``on_missing_image: blank``). That changes its
prediction, so it is never silent: :func:`check_images` counts such examples, names the first few with the reason and
the path that was looked for, warns (:class:`MissingImagesWarning` and the ``mmfuse.engine`` log), and raises
:class:`TooManyMissingImagesError` when their share passes the allowed one (``max_missing_images``: by default any
for evaluate, half for predict).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfuse.data.config import DataConfig
from mmfuse.data.example import Example
from mmfuse.data.report import Problem, SplitReport

logger = logging.getLogger("mmfuse.engine")

DEFAULT_MAX_MISSING = {"predict": 0.5, "evaluate": 0.0}
"""Largest share of examples predicted from a blank image before it is an error, by task, unless the caller or
``data.max_missing_images`` says otherwise."""

_SHOW = 5  # examples named in a message


class MissingImagesWarning(UserWarning):
    """Some examples were predicted from a blank image because theirs was missing or unreadable."""


class TooManyMissingImagesError(ValueError):
    """More examples lack a usable image than ``max_missing_images`` allows."""


@dataclass
class MissingImages:
    """Which examples of one predict / evaluate call had no usable image.

    Attributes:
        total: examples predicted.
        blanked: examples predicted from a blank image, with the reason and the path looked for.
        dropped: examples left out when the data was loaded (``on_missing_image: skip``), not predicted.
        source: what was read (a file, a split), for messages.
        image_root: the folder relative image paths resolved against, when known.
    """

    total: int
    blanked: list[Problem] = field(default_factory=list)
    dropped: list[Problem] = field(default_factory=list)
    source: str = ""
    image_root: Path | None = None

    @property
    def share(self) -> float:
        return len(self.blanked) / self.total if self.total else 0.0

    def describe(self, predicted: bool = True) -> str:
        """One line: counts, then the first few examples with their reason and path (``predicted``: they were
        predicted from a blank image, rather than stopped for)."""
        parts = []
        if self.blanked:
            done = " and were predicted from a blank image" if predicted else ""
            parts.append(
                f"{len(self.blanked)} of {self.total} examples{_of(self.source)} have no usable image{done} "
                f"({self.share:.0%}): {_first(self.blanked)}"
            )
        if self.dropped:
            parts.append(
                f"{len(self.dropped)} examples{_of(self.source)} were left out at load for a missing or unreadable "
                f"image (on_missing_image: skip): {_first(self.dropped)}"
            )
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """Counts and the first few ids, for evaluation results and ``summary.json``."""
        return {
            "predicted_blank": len(self.blanked),
            "dropped": len(self.dropped),
            "of": self.total,
            "first_ids": [p.id for p in (self.blanked + self.dropped)[:_SHOW]],
        }


def _of(source: str) -> str:
    return f" of {source}" if source else ""


def _first(problems: Sequence[Problem]) -> str:
    shown = "; ".join(str(p) for p in problems[:_SHOW])
    return shown + (f"; ... {len(problems) - _SHOW} more" if len(problems) > _SHOW else "")


def missing_images(
    examples: Sequence[Example],
    present: np.ndarray | Sequence[bool] | None = None,
    *,
    report: SplitReport | None = None,
    source: str = "",
    image_root: Path | None = None,
) -> MissingImages:
    """Counts the examples without a usable image.

    Args:
        examples: the examples predicted, in order.
        present: per example whether the model saw its image (the ``image_present`` of the run); ``None`` checks
            before running: an example has an image when its path is set and is a file.
        report: the load report of ``examples``: its reasons (and dropped examples) are used when it has them.
        source: what was read, for messages.
        image_root: where relative image paths resolved, for messages.
    """
    known: dict[str | None, list[Problem]] = {}  # id -> its rows' problems in file order (ids need not be unique)
    for p in report.blank_images if report is not None else []:
        known.setdefault(p.id, []).append(p)
    blanked = []
    for i, e in enumerate(examples):
        has = bool(present[i]) if present is not None else e.image is not None and e.image.is_file()
        if has:
            continue
        if known.get(e.id):
            blanked.append(known[e.id].pop(0))
        elif e.image is None:
            reason = "no image (none named, or missing or unreadable when the data was loaded)"
            blanked.append(Problem("", e.id, reason))
        elif not e.image.exists():
            blanked.append(Problem("", e.id, "file not found", str(e.image)))
        else:
            blanked.append(Problem("", e.id, "unreadable (failed to open at predict time)", str(e.image)))
    dropped = list(report.skipped_images) if report is not None else []
    return MissingImages(len(examples), blanked, dropped, source, image_root)


def allowed_share(task: str, given: float | None, data: DataConfig | None) -> float:
    """The share of blank-image examples allowed: ``given``, else ``data.max_missing_images``, else the task's
    default (:data:`DEFAULT_MAX_MISSING`).

    Raises:
        ValueError: a share outside ``[0, 1]``.
    """
    value = given if given is not None else getattr(data, "max_missing_images", None)
    if value is None:
        return DEFAULT_MAX_MISSING[task]
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"max_missing_images must be a share in [0, 1] (e.g. 0.5), got {value}")
    return float(value)


def check_images(found: MissingImages, *, task: str, limit: float, data: DataConfig | None, warn: bool = True) -> None:
    """Raises when the share of blank-image examples passes ``limit``; else warns when there are any.

    Args:
        found: what :func:`missing_images` counted.
        task: ``predict`` or ``evaluate`` (the words of the message).
        limit: the allowed share (:func:`allowed_share`).
        data: the data config the images were looked up with (the columns named in the message).
        warn: warn (``MissingImagesWarning`` and the log) when some are missing but not too many.

    Raises:
        TooManyMissingImagesError: more than ``limit`` of the examples have no usable image.
    """
    if found.blanked and found.share > limit:
        allowed = "none" if limit == 0 else f"at most {limit:.0%}"
        raise TooManyMissingImagesError(
            f"{task}: {found.describe(predicted=False)}. That is more than allowed ({allowed}). {_where(found, data)} "
            f"Fix the paths, or {task} anyway with blank images: --max-missing-images 1 on the command line (a share "
            "in [0, 1]), data.max_missing_images in the config, or max_missing_images= in the Python API"
        )
    if warn and (found.blanked or found.dropped):
        message = f"{task}: {found.describe()}"
        logger.warning(message)
        warnings.warn(message, MissingImagesWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning raised by the caller at the first frame outside mmfuse (the user's
    line, whichever public method it called)."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(2), 2  # level 1 is the function that called this one; 2 its caller
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _where(found: MissingImages, data: DataConfig | None) -> str:
    """Where the image paths came from and what they resolved against."""
    column = "the image column"
    if data is not None:
        column = f"column {data.columns.image!r} (columns.image)" if data.columns.image else "the image column"
        if data.image_template:
            column += f" through image_template {data.image_template!r}"
    root = f", resolved against {str(found.image_root)!r}" if found.image_root is not None else ""
    dataset = f" {str(data.root)!r}" if data is not None else ""
    return (
        f"Image paths come from {column}{root} (a data file inside the run's dataset root{dataset} resolves them "
        "against that root, any other against its own folder)."
    )
