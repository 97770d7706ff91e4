"""Why a model decided: occlusion of words and image regions, the modality contributions, and for heads with
attention, which words looked where.

The attribution is model-agnostic: every head is re-run on changed copies of one example through the same forward
pass as a prediction, and a piece of the input's **contribution** is how much the probability of the predicted class
falls without it: ``P(class | example) − P(class | example without the piece)``. Positive: the piece supports the
prediction; negative: it speaks against it; 0: the model did not use it.

- **Words**: the text split at whitespace; each word in turn is *dropped* from the text (not replaced by a mask
  token: not every tokenizer has one, and a dropped word is what the text would be without it), and the text is
  tokenized again. A word that never reached the model (past the text encoder's ``max_length``) contributes 0
  and is not re-run: without it the model's input is the same.
- **Image regions**: the model's input image (after the image encoder's own resize and crop) is cut into the cells
  of the image encoder's grid (``EncoderOutput.grid``, the ``h × w`` cells a ``cross_attention`` head attends over;
  :data:`FALLBACK_GRID` for an encoder that reports none, or the ``grid`` asked for), and each cell in turn is set
  to the blank the data pipeline stands in for a missing image (the zero tensor: the normalisation's mean colour).
  The pixels are occluded and the image encoder runs again — for every head, also those that read pooled image
  vectors or grid features — so the map measures the whole model, a fine-tuned encoder included, on the same cells
  as the attention.
- **Modalities**: without the text, the text is empty (``""``, what a row without text gives); without the image,
  the model takes the path of a missing image (a blank, ``image_present`` false, so the head zeroes the image
  features, see :func:`mmfuse.fusion.encode_image`).
- A modality the head does not read (``uses_text`` / ``uses_image`` ``None``: ``image_only``, ``text_only``,
  ``zero_shot``) contributes exactly 0 and is not re-run; a ``text_only`` head's regions are one ``1 × 1`` cell.
- **Word × region attention** (heads that return attention over image regions, e.g. ``cross_attention``): each
  word's row is the mean of the attention rows of its tokens (each summing to 1 over the regions), on the grid.
  Attention says where a head looked, not what changed its decision; the occlusion map beside it says the latter.

Each example costs ``words + regions + 3`` forward passes (batched).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmfuse.model.prediction import attention_grid, grid_shape, predict_labels, probabilities

if TYPE_CHECKING:
    from mmfuse.data.example import Example
    from mmfuse.data.inputs import ExamplesLike, Inputs
    from mmfuse.model.predictor import TorchPredictor

__all__ = ["FALLBACK_GRID", "Explanation", "UnknownIdsError", "explain_examples", "word_rows", "word_token_spans"]

logger = logging.getLogger("mmfuse.explain")

FALLBACK_GRID = (4, 4)
"""Occlusion cells ``(rows, cols)`` for an image encoder that reports no grid."""


class UnknownIdsError(ValueError):
    """Ids asked for that the data does not have; ``ids`` lists them."""

    def __init__(self, ids: Sequence[str], known: Sequence[str]) -> None:
        self.ids = list(ids)
        shown = ", ".join(map(repr, self.ids[:10])) + (f" and {len(self.ids) - 10} more" if len(self.ids) > 10 else "")
        sample = ", ".join(map(repr, list(known)[:5]))
        super().__init__(
            f"{len(self.ids)} id(s) not in the data: {shown}; pass ids of its id column ({len(known)} examples, "
            f"e.g. {sample})"
        )


@dataclass
class Explanation:
    """Why the model gave one example its label (see the module docstring for how each number is made).

    Attributes:
        id: the example id.
        text: its text.
        image: its image file (``None``: the row has none).
        image_present: ``False`` when the image was missing or unreadable and a blank stood in (as in predict).
        label: the predicted class, the one explained.
        true_label: the example's label, when the data has one.
        probability: ``P(label | example)``.
        probabilities: class name -> probability.
        words: the text's words (split at whitespace), in order.
        word_contributions: ``(len(words),)`` the fall of ``P(label)`` when each word is dropped (0 for a word not
            read).
        region_contributions: ``(h, w)`` the fall of ``P(label)`` when each cell of the model's input image is
            blanked (row-major, top-left first; ``1 × 1`` zero for a head that reads no image).
        text_contribution: the fall of ``P(label)`` with an empty text.
        image_contribution: the fall of ``P(label)`` without the image (the missing-image path).
        words_read: ``(len(words),)`` bool, ``False`` for words the model never saw (past the text encoder's
            ``max_length``, or made of characters its tokenizer drops).
        word_attention: ``(len(words), h, w)`` each word's attention over the image regions (rows of read words
            sum to 1; others are 0), for heads that return attention; else ``None``.
        attention: ``(h, w)`` the attention averaged over the valid text tokens (as
            :attr:`Prediction.attention <mmfuse.model.prediction.Prediction.attention>`), or ``None``.
        notes: what the numbers leave out or stand in for, in words.
        forward_passes: the model's forward passes (one per changed copy, and the example itself) it took.
    """

    id: str
    text: str
    image: str | None
    image_present: bool
    label: str
    true_label: str | None
    probability: float
    probabilities: dict[str, float]
    words: list[str]
    word_contributions: np.ndarray
    region_contributions: np.ndarray
    text_contribution: float
    image_contribution: float
    words_read: np.ndarray
    word_attention: np.ndarray | None = None
    attention: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    forward_passes: int = 0

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` of the occlusion cells."""
        h, w = self.region_contributions.shape
        return int(h), int(w)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``mmfuse explain`` writes), numbers rounded to 6 decimals."""

        def arr(a: np.ndarray | None) -> Any:
            return None if a is None else np.round(np.asarray(a, dtype=np.float64), 6).tolist()

        return {
            "id": self.id,
            "text": self.text,
            "image": self.image,
            "image_present": self.image_present,
            "label": self.label,
            "true_label": self.true_label,
            "probability": round(self.probability, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "contribution": "P(label | example) - P(label | example without the piece)",
            "modalities": {"text": round(self.text_contribution, 6), "image": round(self.image_contribution, 6)},
            "words": [
                {"word": w, "contribution": round(float(c), 6), "read": bool(r)}
                for w, c, r in zip(self.words, self.word_contributions, self.words_read, strict=True)
            ],
            "regions": {"grid": list(self.grid), "contributions": arr(self.region_contributions)},
            "attention": None
            if self.attention is None
            else {"grid": list(self.attention.shape), "mean": arr(self.attention), "words": arr(self.word_attention)},
            "notes": list(self.notes),
            "forward_passes": self.forward_passes,
        }


# ------------------------------------------------------------------------------------------------------- entry


def explain_examples(
    predictor: TorchPredictor,
    examples: ExamplesLike | Inputs,
    ids: Sequence[str],
    *,
    threshold: float | None = None,
    grid: tuple[int, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Explanation]:
    """One :class:`Explanation` per id in ``ids`` (in that order, each once).

    Args:
        predictor: the model (its config reads ``examples``: columns, image root; ``train.eval_batch`` sizes the
            batches of changed copies).
        examples: examples, a split, a data file, a DataFrame (what ``predict`` takes).
        ids: the examples to explain, by id.
        threshold: binary tasks: the label is P(class 1) >= ``threshold`` when given, else the most probable class
            (as ``predict``).
        grid: occlusion cells ``(rows, cols)`` instead of the image encoder's grid (the word × region attention
            stays on the encoder's grid).
        progress: called with a line per example.

    Raises:
        UnknownIdsError: an id not in ``examples`` (all of them named).
        ValueError: no ids; a ``grid`` that is not two positive ints; a model with a ``precomputed`` encoder (its
            features are looked up by id, so changed inputs cannot be encoded).
    """
    from mmfuse.data.inputs import inputs_of

    wanted = list(dict.fromkeys(str(i) for i in ids))
    if not wanted:
        raise ValueError("no ids to explain; pass the ids of one or more examples")
    if grid is not None and (
        len(grid) != 2 or any(not isinstance(g, (int, np.integer)) or isinstance(g, bool) or g < 1 for g in grid)
    ):
        raise ValueError(f"grid must be two positive ints (rows, cols), got {grid!r}")
    cells = None if grid is None else (int(grid[0]), int(grid[1]))
    for modality in ("text", "image"):
        encoder = getattr(predictor.model, f"{modality}_encoder", None)
        if getattr(encoder, "reads_example_ids", False):
            raise ValueError(
                f"the model's {modality} encoder is 'precomputed' (features looked up by example id), so it cannot "
                "encode the changed copies an explanation needs; explain a model trained with a real encoder"
            )
    inputs = inputs_of(examples, predictor.config.data)
    by_id = {e.id: e for e in inputs.examples}
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        raise UnknownIdsError(unknown, list(by_id))
    runner = _Runner(predictor)
    out = []
    for n, example_id in enumerate(wanted, 1):
        explanation = runner.explain(by_id[example_id], threshold=threshold, grid=cells)
        if progress is not None:
            progress(
                f"explained {n}/{len(wanted)}: {example_id} -> {explanation.label} ({explanation.probability:.3f})"
            )
        out.append(explanation)
    return out


# ------------------------------------------------------------------------------------------------------- runner


class _Runner:
    """Runs one model on batches of (text, pixels, image present) copies of an example."""

    def __init__(self, predictor: TorchPredictor) -> None:
        self.predictor = predictor
        self.model = predictor.model
        head = type(self.model)
        self.uses_text = getattr(head, "uses_text", "pooled") is not None and predictor.reads_text
        self.uses_image = getattr(head, "uses_image", "pooled") is not None and predictor.reads_image
        self.batch = max(1, int(predictor.config.train.eval_batch))
        self.classes = predictor.classes
        self.passes = 0  # forward passes (copies run) since the last explain

    @torch.inference_mode()
    def run(self, copies: Sequence[tuple[str, torch.Tensor | None, bool]]) -> tuple[np.ndarray, Any]:
        """``(P (V, C) float64, the first batch's FusionOutput)`` for ``copies`` of ``(text, pixels, present)``."""
        from mmfuse.fusion.base import FusionInputs
        from mmfuse.model.build import set_train_mode
        from mmfuse.model.predictor import TEXT_INPUTS

        set_train_mode(self.model, False)
        self.passes += len(copies)
        device = self.predictor.device
        rows, first = [], None
        for start in range(0, len(copies), self.batch):
            part = copies[start : start + self.batch]
            pixels = [p for _, p, _ in part] if self.predictor.reads_image else None
            named = self.predictor.make_inputs([t for t, _, _ in part], pixels)
            text = {k: v.to(device) for k, v in named.items() if k in TEXT_INPUTS}
            values = named.get("pixel_values")
            present = torch.tensor([s for _, _, s in part], dtype=torch.bool) if pixels is not None else None
            out = self.model(
                FusionInputs(
                    text_inputs=text or None,
                    pixel_values=None if values is None else values.to(device),
                    image_present=None if present is None or bool(present.all()) else present.to(device),
                )
            )
            rows.append(probabilities(out.logits.float().cpu().numpy(), self.predictor.temperature))  # as predict
            first = first if first is not None else out
        return np.concatenate(rows), first

    def explain(self, example: Example, *, threshold: float | None, grid: tuple[int, int] | None) -> Explanation:
        notes: list[str] = []
        self.passes = 0
        text = example.text
        words = text.split()
        pixels, present = self._pixels(example, notes)
        (full,), out = self.run([(text, pixels, present)])
        label = int(predict_labels(full[None], threshold)[0])
        p = float(full[label])

        spans = self._spans(words, notes)
        read = (
            np.array([b > a for a, b in spans], dtype=bool)
            if spans is not None
            else np.full(len(words), self.uses_text)
        )
        word_contrib = np.zeros(len(words))
        text_contrib = 0.0
        if self.uses_text and words:
            # a word that never reached the model (past max_length) leaves the input as it was: 0, not re-run
            kept = [i for i in range(len(words)) if read[i]]
            dropped = [" ".join(words[:i] + words[i + 1 :]) for i in kept]
            probs, _ = self.run([(t, pixels, present) for t in [*dropped, ""]])
            word_contrib[kept] = p - probs[:-1, label]
            text_contrib = p - float(probs[-1, label])
        elif not self.uses_text:
            notes.append(f"the {self.predictor.head} head reads no text: every word contributes 0")
        else:
            notes.append("the text is empty: no words to drop")

        if not self.uses_image:
            regions = np.zeros((1, 1))
            image_contrib = 0.0
            notes.append(f"the {self.predictor.head} head reads no image: the image contributes 0")
        elif not present:
            cells = grid or self._encoder_grid(pixels, out)
            regions = np.zeros(cells)
            image_contrib = 0.0
            notes.append("no usable image (a blank stood in, as in predict): nothing to occlude, regions contribute 0")
        else:
            cells = grid or self._encoder_grid(pixels, out)
            assert pixels is not None
            probs, _ = self.run([*((text, c, True) for c in occluded(pixels, cells)), (text, pixels, False)])
            regions = (p - probs[:-1, label]).reshape(cells)
            image_contrib = p - float(probs[-1, label])

        word_att, attention = self._attention(text, words, spans, out, notes)
        return Explanation(
            id=example.id,
            text=text,
            image=None if example.image is None else str(example.image),
            image_present=present,
            label=self.classes[label],
            true_label=example.label,
            probability=p,
            probabilities={c: float(v) for c, v in zip(self.classes, full, strict=True)},
            words=words,
            word_contributions=np.asarray(word_contrib, dtype=np.float64),
            region_contributions=np.asarray(regions, dtype=np.float64),
            text_contribution=float(text_contrib),
            image_contribution=float(image_contrib),
            words_read=read,
            word_attention=word_att,
            attention=attention,
            notes=notes,
            forward_passes=self.passes,
        )

    def _pixels(self, example: Example, notes: list[str]) -> tuple[torch.Tensor | None, bool]:
        """The model's input image of ``example`` and whether it is present; a blank (zeros) when it is missing or
        unreadable, as the data pipeline stands in (noted and logged)."""
        if not self.predictor.reads_image:
            return None, True
        from mmfuse.data.images import ImageError, open_image

        if example.image is not None:
            try:
                return self.predictor.prepare_image(open_image(example.image)), True
            except ImageError as e:
                reason = str(e)
        else:
            reason = "the row has no image"
        notes.append(f"image not used: {reason}; a blank stood in")
        logger.warning("example %r: %s; explained with a blank image, as predict does", example.id, reason)
        h, w = self.predictor.image_size()
        return torch.zeros(3, h, w), False

    def _encoder_grid(self, pixels: torch.Tensor | None, out: Any) -> tuple[int, int]:
        """The image encoder's grid (from the head's output, else from running the encoder), else the fallback."""
        found = getattr(out, "grid", None)
        if found is None and pixels is not None:
            with torch.inference_mode():
                found = self.model.image_encoder(pixels[None].to(self.predictor.device)).grid
        return (int(found[0]), int(found[1])) if found is not None else FALLBACK_GRID

    def _spans(self, words: list[str], notes: list[str]) -> list[tuple[int, int]] | None:
        """Each word's ``[start, end)`` token positions (empty: the model never read it, noted), or ``None`` when
        the head reads no text or the tokenizer's tokens do not follow the words (noted)."""
        tokenize = getattr(getattr(self.model, "text_encoder", None), "tokenize", None)
        if tokenize is None or not self.uses_text:
            return None
        try:
            spans = word_token_spans(tokenize, words)
        except ValueError as e:
            notes.append(f"no word x region view, every word taken as read: {e}")
            return None
        unread = [w for w, (a, b) in zip(words, spans, strict=True) if b <= a]
        if unread:
            shown = ", ".join(map(repr, unread[:8])) + (" ..." if len(unread) > 8 else "")
            notes.append(f"{len(unread)} of {len(words)} words never reached the model (past the text encoder's "
                         f"max_length, or no tokens), so they contribute 0: {shown}")  # fmt: skip
        return spans

    def _attention(
        self, text: str, words: list[str], spans: list[tuple[int, int]] | None, out: Any, notes: list[str]
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(word × region attention (W, h, w), mean attention (h, w))`` of the head's output."""
        if not self.uses_text:
            return None, None
        tokenize = self.model.text_encoder.tokenize
        att = getattr(out, "attention", None)
        if att is None:
            return None, None
        rows = att[0].float().cpu().numpy()  # (T, N): this example alone, so no padding of batch-mates
        n = rows.shape[1]
        size = self.predictor.image_size()
        cells = out.grid if out.grid is not None else grid_shape(n, *size)
        mask = tokenize([text])["attention_mask"].numpy().astype(bool)
        mean = attention_grid(rows[None], mask if mask.shape[1] == rows.shape[0] else None, size, cells)[0]
        if rows.shape[0] == 1:  # one pooled query, not one row per token: no word view
            notes.append("the head's attention has one pooled query, not one per token: no word x region view")
            return None, mean
        if spans is None:
            return None, mean
        return word_rows(rows, spans).reshape(len(words), int(cells[0]), int(cells[1])), mean


def occluded(pixels: torch.Tensor, cells: tuple[int, int]) -> list[torch.Tensor]:
    """``(3, H, W)`` pixels → one copy per grid cell (row-major) with that cell's pixels set to 0, the blank."""
    h, w = pixels.shape[-2:]
    rows = np.linspace(0, h, cells[0] + 1).round().astype(int)
    cols = np.linspace(0, w, cells[1] + 1).round().astype(int)
    copies = []
    for r in range(cells[0]):
        for c in range(cells[1]):
            copy = pixels.clone()
            copy[:, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = 0
            copies.append(copy)
    return copies


def word_rows(rows: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(Q, N)`` per-token attention over N regions → ``(W, N)``: each word's row the mean of its tokens' rows
    (``spans`` of :func:`word_token_spans`); 0 for a word without tokens (never read)."""
    rows = np.asarray(rows, dtype=np.float64)
    out = np.zeros((len(spans), rows.shape[1]))
    for k, (a, b) in enumerate(spans):
        if b > a and a < rows.shape[0]:
            out[k] = rows[a : min(b, rows.shape[0])].mean(axis=0)
    return out


def word_token_spans(
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]], words: Sequence[str]
) -> list[tuple[int, int]]:
    """``[start, end)`` token positions of each word in ``tokenize([" ".join(words)])``, for any tokenizer.

    The text's prefixes of 0..n words are tokenized: word ``k`` holds the tokens prefix ``k`` adds to prefix
    ``k − 1``, after the tokens every text starts with (``[CLS]``, ``<s>``: where the empty text and the first
    word's tokens first differ). A word past ``max_length`` gets an empty span. Words are whitespace-separated, so a
    tokenizer never merges two of them into one token; should it (a prefix that gains fewer tokens than the one
    before it had), the spans would be wrong, and this raises instead.

    Raises:
        ValueError: the tokenizer's counts are not monotonic in the prefixes.
    """
    if not words:
        return []
    prefixes = [" ".join(words[:k]) for k in range(len(words) + 1)]
    enc = tokenize(prefixes)
    counts = enc["attention_mask"].sum(dim=1).tolist()
    ids = enc["input_ids"]
    base = counts[0]
    first = next((k for k, c in enumerate(counts) if c > base), None)  # the first prefix with a token of its own
    lead = 0
    while first is not None and lead < base and int(ids[0, lead]) == int(ids[first, lead]):
        lead += 1
    content = [max(0, c - base) for c in counts]
    if any(b < a for a, b in itertools.pairwise(content)):
        raise ValueError("the tokenizer's tokens do not follow the text's words (a longer prefix has fewer tokens)")
    return [(lead + content[k], lead + content[k + 1]) for k in range(len(words))]
