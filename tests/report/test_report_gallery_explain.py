"""The report gallery's explanation panels (occlusion beside attention, each word's map, the modalities), and
panels whose image cannot be drawn: counted and named, never drawn silently without it."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmfuse.model.explain import Explanation
from mmfuse.report import write_report


@pytest.fixture(scope="module")
def gallery_report(binary_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str]]:
    lines: list[str] = []
    path = write_report(binary_run, tmp_path_factory.mktemp("report") / "gallery", per_group=1, log=lines.append)
    return path, path.read_text(encoding="utf-8"), lines


def _gallery_part(page: str) -> str:
    return page[page.index('<section id="gallery"') :].split("</section>", 1)[0]


def test_each_gallery_card_has_its_explanation_panel(gallery_report, binary_run):
    from mmfuse.engine.classifier import MultimodalClassifier

    _, page, lines = gallery_report
    gallery = _gallery_part(page)
    cards = gallery.count('<div class="card"')
    panels = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="explanation of example ([^"]+?): image, '
                        r'occlusion map, attention"', gallery)  # fmt: skip
    assert cards == len(panels) == 3  # best, worst, uncertain: one each
    for data, _ in panels:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.width >= 1000  # the panel as wide as the report's figures
    # the modalities and the words' contributions are on the card; the cost is said
    assert gallery.count("without the text, by") == 3
    assert "line-through" in gallery or gallery.count('title="+') + gallery.count('title="-') > 0
    note = re.search(r"Explanations computed for these 3 examples only: .*?(\d+) forward passes", gallery)
    assert note, gallery[:2000]
    # the numbers are those of the API's explanation of the same examples
    ids = [i for _, i in panels]
    clf = MultimodalClassifier.load(binary_run)
    from mmfuse.data.inputs import split_examples

    explained = clf.explain(split_examples("val", clf.config.data), ids)
    assert int(note.group(1)) == sum(e.forward_passes for e in explained)
    for e in explained:
        assert f"P({e.label}) changes by" in gallery
    assert any(line.startswith("explained 1/3") for line in lines)  # progress said on the console


def _lost(image: str | None, *, present: bool, notes: list[str] | None = None) -> Explanation:
    rng = np.random.default_rng(0)
    return Explanation(
        id=f"id-{image}", text="two words", image=image, image_present=present, label="a", true_label=None,
        probability=0.6, probabilities={"a": 0.6, "b": 0.4}, words=["two", "words"],
        word_contributions=np.array([0.1, -0.05]), region_contributions=rng.normal(0, 0.05, (2, 2)),
        text_contribution=0.2, image_contribution=0.1, words_read=np.array([True, True]), notes=notes or [],
    )  # fmt: skip


def test_a_picture_that_cannot_be_read_says_why(tmp_path):
    from mmfuse.report.explain import load_picture

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 20), (10, 200, 30)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    picture, why = load_picture(_lost(str(good), present=True))
    assert picture is not None and picture.shape == (20, 40, 3) and why is None
    assert load_picture(_lost(None, present=False))[1] == "the example has no image"
    gone = load_picture(_lost(str(tmp_path / "deleted.png"), present=True))
    assert gone[0] is None and "deleted.png" in gone[1]
    told = load_picture(_lost(str(broken), present=False, notes=["image not used: cannot decode; a blank stood in"]))
    assert told == (None, "image not used: cannot decode; a blank stood in")


def test_panels_without_their_image_are_counted_and_named_on_the_page(tmp_path):
    from mmfuse.report.explain import draw_panels, missing_pictures_note, write_explanations

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 20), (10, 200, 30)).save(good)
    explanations = [_lost(str(good), present=True), _lost(str(tmp_path / "deleted.png"), present=True)]
    panels = draw_panels(explanations, tmp_path / "panels")
    assert [p.missing is None for p in panels] == [True, False]
    note = missing_pictures_note(panels)
    assert note is not None and note.startswith("1 of 2 examples drawn without their image")
    assert f"'id-{tmp_path / 'deleted.png'}'" in note
    lines: list[str] = []
    page = write_explanations(explanations, tmp_path / "out", log=lines.append)
    html = page.read_text(encoding="utf-8")
    assert "1 of 2 examples drawn without their image" in html
    assert any(line.startswith("warning: 1 of 2 examples") for line in lines)
    data = json.loads((tmp_path / "out" / "explanations.json").read_text())
    assert [d["id"] for d in data["images_not_drawn"]] == [explanations[1].id]
    assert missing_pictures_note(panels[:1]) is None
