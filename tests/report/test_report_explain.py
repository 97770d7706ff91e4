"""``mmfuse explain`` and its panels (``mmfuse.report.explain``) on a trained cross-attention run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.model.explain import Explanation
from mmfuse.report.explain import MAX_WORD_BARS, MAX_WORD_MAPS, explanation_figure, words_markup


def _val_ids(root: Path, k: int) -> list[str]:
    return [str(json.loads(line)["id"]) for line in (root / "dev.jsonl").read_text().splitlines()[:k]]


def test_explain_writes_a_panel_per_example_the_page_and_the_numbers(
    binary_run: Path, binary_root: Path, hostile: str, tmp_path: Path
) -> None:
    ids = _val_ids(binary_root, 2)  # the first has a caption of hostile markup
    out = tmp_path / "explained"
    result = CliRunner().invoke(app, ["explain", str(binary_run), "val", "--ids", ",".join(ids), "--out", str(out)])
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name.split("_", 1)[1] for p in pngs] == [f"{i}.png" for i in ids]
    for png in pngs:
        with Image.open(png) as image:
            assert image.width >= 1000  # a panel at least as wide as the report's figures, legible at 100 %
    data = json.loads((out / "explanations.json").read_text())
    assert data["head"] == "cross_attention" and [e["id"] for e in data["examples"]] == ids
    page = (out / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page  # the hostile caption is text, not markup
    assert page.count("data:image/png;base64,") == len(ids)
    # the numbers are those of the Python API
    clf = MultimodalClassifier.load(binary_run)
    from mmfuse.data.inputs import split_examples

    api = clf.explain(split_examples("val", clf.config.data), ids)
    for got, want in zip(data["examples"], api, strict=True):
        assert got["label"] == want.label and got["text"] == want.text
        h, w = want.grid
        assert got["regions"]["grid"] == [h, w]
        # rounded to 6 decimals in the JSON; the same model on the same inputs
        np.testing.assert_allclose(got["regions"]["contributions"], want.region_contributions, atol=1e-6)
        np.testing.assert_allclose([x["contribution"] for x in got["words"]], want.word_contributions, atol=1e-6)
        assert got["modalities"]["image"] == pytest.approx(want.image_contribution, abs=1e-6)
        words = np.asarray(got["attention"]["words"])
        assert words.shape == (len(want.words), h, w)
        read = [x["read"] for x in got["words"]]
        # each read word's attention row sums to 1 (rounded to 6 decimals over h*w cells)
        np.testing.assert_allclose(words[read].sum(axis=(1, 2)), 1.0, atol=1e-4)


def test_unknown_ids_exit_2_naming_them(binary_run: Path, binary_root: Path, tmp_path: Path) -> None:
    known = _val_ids(binary_root, 1)[0]
    out = tmp_path / "none"
    result = CliRunner().invoke(
        app, ["explain", str(binary_run), "val", "--ids", f"{known},no-such-id", "--ids", "other", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "'no-such-id', 'other'" in result.output and known not in result.output.split("e.g.")[0]
    assert not out.exists()  # nothing written for a half-right request


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["val", "--ids", "1", "--grid", "7"], "--grid must be ROWSxCOLS"),
        (["nowhere.jsonl", "--ids", "1"], "'nowhere.jsonl' not found"),
        (["val", "--ids", ","], "--ids is empty"),
    ],
)
def test_bad_arguments_exit_2_with_the_fix(binary_run: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["explain", str(binary_run), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_data_file_and_another_grid(binary_run: Path, binary_root: Path, tmp_path: Path) -> None:
    [example_id] = _val_ids(binary_root, 1)
    out = tmp_path / "grid"
    args = ["explain", str(binary_run), str(binary_root / "dev.jsonl"), "--ids", example_id, "--grid", "2x3"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    [example] = json.loads((out / "explanations.json").read_text())["examples"]
    assert example["regions"]["grid"] == [2, 3]
    assert np.asarray(example["attention"]["words"]).shape[1:] == (4, 4)  # attention stays on the encoder's grid


def _explanation(n_words: int, *, attention: bool) -> Explanation:
    """A hand-made explanation (no model): ``n_words`` words, the last one not read, a 2 × 3 grid."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(n_words - 1)] + ["<b>late</b>"]
    per_word = rng.dirichlet(np.ones(6), size=n_words).reshape(n_words, 2, 3) if attention else None
    return Explanation(
        id="x/1", text=" ".join(words), image=None, image_present=False, label="a", true_label="b", probability=0.7,
        probabilities={"a": 0.7, "b": 0.3}, words=words, word_contributions=rng.normal(0, 0.1, n_words),
        region_contributions=rng.normal(0, 0.05, (2, 3)), text_contribution=0.4, image_contribution=-0.1,
        words_read=np.array([True] * (n_words - 1) + [False]), word_attention=per_word,
        attention=per_word.mean(axis=0) if per_word is not None else None, notes=["a note <i>"],
    )  # fmt: skip


@pytest.mark.parametrize(("n_words", "attention"), [(5, True), (60, False)])
def test_the_panel_draws_what_the_explanation_has(n_words: int, attention: bool) -> None:
    explanation = _explanation(n_words, attention=attention)
    fig = explanation_figure(explanation, None)
    titles = [ax.get_title() for ax in fig.axes]
    assert "no image (blank)" in titles and "occlusion: blanking each of 2×3 regions" in titles
    assert ("attention (mean over the text's tokens)" in titles) == attention
    # one attention map per read word, at most MAX_WORD_MAPS: w0..w3 here (the last word was not read)
    maps = [t for t in titles if re.fullmatch(r"w\d+ \(.*\)", t)]
    assert len(maps) == (min(n_words - 1, MAX_WORD_MAPS) if attention else 0)
    title = fig._suptitle.get_text()  # type: ignore[union-attr]
    assert "x/1: predicted a (P = 0.700)" in title
    assert (f"{MAX_WORD_BARS} of {n_words} words shown" in title) == (n_words > MAX_WORD_BARS)


def test_words_markup_escapes_and_marks_unread_words() -> None:
    markup = words_markup(_explanation(4, attention=False))
    assert "&lt;b&gt;late&lt;/b&gt;" in markup and "<b>" not in markup
    assert markup.count("line-through") == 1 and "not read" in markup
