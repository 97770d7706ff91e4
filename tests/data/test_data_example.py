"""Examples built by hand in Python: paths as strings, ids and labels as ints, as a user writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmfuse import Example
from mmfuse.data.dataset import MultimodalDataset, collate_examples
from mmfuse.data.missing_images import missing_images


def test_a_string_image_path_becomes_a_path(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    example = Example(id="1", text="hello", image="a.png")
    assert example.image == Path("a.png") and isinstance(example.image, Path)
    # the pipeline reads it like a path read from a file: the image is found, decoded and counted present
    found = missing_images([example])
    assert (found.total, found.blanked) == (1, [])
    size = MultimodalDataset([example], label_map=None, image_preprocess=lambda im: torch.tensor(im.size))
    batch = collate_examples([size[0]])
    assert batch["image_present"].tolist() == [True] and batch["pixel_values"].tolist() == [[8, 8]]


def test_ids_and_labels_given_as_ints_become_strings_as_from_a_file():
    example = Example(id=np.int64(7), text="t", image=None, label=1)
    assert (example.id, example.label) == ("7", "1")
    assert Example(id="x", text="t", image=None).label is None


def test_an_image_that_is_not_a_path_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"Example 'x': image must be a file path .* got Image; save the image"):
        Example(id="x", text="t", image=Image.new("RGB", (2, 2)))
