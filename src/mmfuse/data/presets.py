"""Presets for public dataset layouts: each is only a mapping of :class:`~mmfuse.data.config.DataConfig` fields.

A preset fills the fields a config does not set; nested sections (``columns``, ``split``) are merged key by key.
No preset has code of its own: whatever a preset does, a user can write in a YAML config.
"""

from __future__ import annotations

from typing import Any

from mmfuse._registry import Registry

PRESETS: Registry[dict[str, Any]] = Registry("data preset")

# Hateful Memes (Kiela et al. 2020): {"id": 42953, "img": "img/42953.png", "label": 0, "text": "..."};
# test.jsonl of the public release has no labels (it loads as an unlabeled split).
PRESETS.register("hateful_memes")(
    {
        "format": "jsonl",
        "train": "train.jsonl",
        "val": "dev.jsonl",
        "test": "test.jsonl",
        "columns": {"id": "id", "text": "text", "image": "img", "label": "label"},
    }
)

# MVSA-Single, QMF split. The split files' ``text`` field was decoded wrongly upstream for some tweets, so the text
# comes from data/{id}.txt, whose bytes are the original ones: UTF-8, or GBK (a superset of which, GB18030, is
# tried first because charset-normalizer guesses single-byte code pages for these short, mostly-ASCII tweets).
PRESETS.register("mvsa_single")(
    {
        "format": "jsonl",
        "train": "splits/train.jsonl",
        "val": "splits/dev.jsonl",
        "test": "splits/test.jsonl",
        "columns": {"id": "id", "text": None, "image": "img", "label": "label"},
        "text_file": "data/{id}.txt",
        "fallback_encodings": ["gb18030"],
    }
)

# MultiOFF (Suryawanshi et al. 2020). The file spells the negative class "Non-offensiv"; the map also accepts the
# corrected spellings so a fixed copy of the files loads the same.
PRESETS.register("multioff")(
    {
        "format": "csv",
        "delimiter": ",",
        "train": "Split Dataset/Training_meme_dataset.csv",
        "val": "Split Dataset/Validation_meme_dataset.csv",
        "test": "Split Dataset/Testing_meme_dataset.csv",
        "columns": {"id": "image_name", "text": "sentence", "image": "image_name", "label": "label"},
        "image_template": "Labelled Images/{image}",
        "label_map": {
            "offensive": "offensive",
            "Non-offensiv": "non-offensive",
            "Non-offensive": "non-offensive",
            "non-offensive": "non-offensive",
        },
    }
)
