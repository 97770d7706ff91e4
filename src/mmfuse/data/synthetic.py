"""A synthetic dataset in the Hateful Memes layout where the label needs both modalities.

Each example pairs a caption about daytime (sun, noon, summer...) or night (moon, midnight, winter...) with a
picture of a bright warm scene or a dark cool one. The label is 1 ("mismatch", the hateful analog: the text says
one thing, the picture another) when they disagree and 0 when they agree: an XOR. Each caption kind appears equally
often with each picture kind, so the text alone or the picture alone says nothing about the label (near chance),
while a model that fuses both can reach ~100%. Fillers (who, where, what) in the captions and random shapes,
positions and noise in the pictures vary freely and carry no signal: benign confounders.

The layout is that of Hateful Memes (``train.jsonl``, ``dev.jsonl``, ``test.jsonl``, ``img/{id}.png``, integer
labels), so the ``hateful_memes`` preset reads it. Output is byte-for-byte deterministic for a seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLIT_FRACTIONS = {"train": 0.70, "dev": 0.15, "test": 0.15}
MIN_EXAMPLES = 40

_TIMES = (
    # concept 0: day
    (
        "the midday sun",
        "a sunny afternoon",
        "bright daylight",
        "the summer sun",
        "an early sunrise",
        "a hot noon",
        "the morning sunshine",
        "a cloudless summer day",
        "the blazing afternoon heat",
        "broad daylight",
    ),
    # concept 1: night
    (
        "the full moon",
        "a dark midnight",
        "the starry night",
        "a cold winter night",
        "the pale moonlight",
        "a late evening",
        "the quiet darkness",
        "a frosty night sky",
        "the midnight stars",
        "a moonlit night",
    ),
)
_SUBJECTS = (
    "my dog",
    "the kids",
    "grandma",
    "a lonely cyclist",
    "our neighbours",
    "two old friends",
    "the whole team",
    "my little sister",
    "a street musician",
    "the new intern",
    "our cat",
    "a tourist couple",
)
_PLACES = (
    "at the park",
    "on the beach",
    "on the rooftop",
    "by the river",
    "in the city",
    "in the garden",
    "at the station",
    "near the lake",
    "on the balcony",
    "in the old harbour",
)
_TEMPLATES = (
    "{subject} out {place} under {time}",
    "nothing beats {time} {place}",
    "{subject} loves {time}",
    "caught {subject} {place} during {time}",
    "{time} {place} with {subject}",
    "just {subject} and {time}",
    "who else enjoys {time} {place}?",
    "{subject} waiting for {time} {place} {extra}",
    "remember {time} with {subject} {extra}",
    "{place}, {time}, {subject}",
)
_EXTRAS = ("again", "as usual", "for the first time", "lol", "#weekend", "#memories", "no filter", "best day ever")


def make_synthetic(out_dir: Path | str, n: int = 600, seed: int = 0, *, image_size: int = 112) -> Path:
    """Writes the dataset and returns ``out_dir``.

    Args:
        out_dir: folder to write into (created; existing files of the same names are overwritten).
        n: number of examples, split 70/15/15 into train/dev/test, each balanced across the four (caption kind,
            picture kind) cells and so across labels.
        seed: the same seed gives the same bytes.
        image_size: side of the square PNG images in pixels.

    Raises:
        ValueError: ``n`` below 40 (too few per cell and split) or ``image_size`` below 32.
    """
    if n < MIN_EXAMPLES:
        raise ValueError(f"n must be at least {MIN_EXAMPLES} so every split gets every combination, got {n}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(10_000, 100_000), size=n, replace=False)
    cells = rng.permutation(np.arange(n) % 4)  # cell = 2 * text concept + image concept
    rows: list[dict[str, object]] = []
    for i in range(n):
        text_concept, image_concept = divmod(int(cells[i]), 2)
        example_id = int(ids[i])
        image = _draw(rng, image_concept, image_size)
        image.save(out / "img" / f"{example_id}.png", format="PNG")
        rows.append(
            {
                "id": example_id,
                "img": f"img/{example_id}.png",
                "label": int(text_concept != image_concept),
                "text": _caption(rng, text_concept),
            }
        )
    for name, members in _split(cells, rng).items():
        lines = [json.dumps(rows[i], ensure_ascii=False) for i in members]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _split(cells: np.ndarray, rng: np.random.Generator) -> dict[str, list[int]]:
    """70/15/15 of each cell, so each split is balanced over cells (hence labels)."""
    parts: dict[str, list[int]] = {name: [] for name in SPLIT_FRACTIONS}
    for cell in range(4):
        members = rng.permutation(np.flatnonzero(cells == cell)).tolist()
        n_train = round(SPLIT_FRACTIONS["train"] * len(members))
        n_dev = round(SPLIT_FRACTIONS["dev"] * len(members))
        parts["train"] += members[:n_train]
        parts["dev"] += members[n_train : n_train + n_dev]
        parts["test"] += members[n_train + n_dev :]
    return {name: sorted(members) for name, members in parts.items()}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _caption(rng: np.random.Generator, concept: int) -> str:
    template = _pick(rng, _TEMPLATES)
    return template.format(
        subject=_pick(rng, _SUBJECTS),
        place=_pick(rng, _PLACES),
        time=_pick(rng, _TIMES[concept]),
        extra=_pick(rng, _EXTRAS),
    )


def _draw(rng: np.random.Generator, concept: int, size: int) -> Image.Image:
    """A bright warm scene with a sun (concept 0) or a dark cool one with a moon and stars (concept 1)."""
    if concept == 0:
        top = rng.uniform([225, 150, 40], [255, 215, 130])
        bottom = rng.uniform([240, 190, 90], [255, 245, 170])
    else:
        top = rng.uniform([0, 5, 25], [25, 30, 80])
        bottom = rng.uniform([10, 15, 50], [45, 55, 110])
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    sky = top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp
    image = Image.fromarray(np.broadcast_to(sky, (size, size, 3)).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    # Benign confounders: shapes of any hue, anywhere, in both kinds of scene.
    for _ in range(int(rng.integers(2, 6))):
        color = tuple(int(c) for c in rng.integers(60, 200, size=3))
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, size=2))
        w, h = (int(v) for v in rng.integers(8, size // 2, size=2))
        box = (x0, y0, min(size - 1, x0 + w), min(size - 1, y0 + h))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.rectangle(box, fill=color)
        elif shape == 1:
            draw.ellipse(box, fill=color)
        else:
            draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=color)
    cx, cy = (int(v) for v in rng.integers(size // 6, size - size // 6, size=2))
    r = int(rng.integers(size // 12, size // 6))
    if concept == 0:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 250, 200))
    else:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(235, 235, 220))
        off = max(2, r // 2)
        draw.ellipse((cx - r + off, cy - r - 1, cx + r + off, cy + r - 1), fill=tuple(int(c) for c in top))
        for _ in range(int(rng.integers(5, 15))):
            sx, sy = (int(v) for v in rng.integers(0, size, size=2))
            draw.point((sx, sy), fill=(255, 255, 255))
    noise = rng.normal(0.0, 8.0, size=(size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")
