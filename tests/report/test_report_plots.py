"""The report's building blocks on their own: grid shapes, gallery picks, escaping, figures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmfuse.model.prediction import grid_shape
from mmfuse.report import gallery_groups, plots
from mmfuse.report import html as H


@pytest.mark.parametrize(
    ("n", "shape"), [(49, (7, 7)), (16, (4, 4)), (4, (2, 2)), (12, (3, 4)), (50, (5, 10)), (7, (1, 7)), (1, (1, 1))]
)
def test_grid_shape_of_a_square_image(n, shape):
    """The one grid rule (the server's, the report's): the most square factorisation, rows <= cols on a tie."""
    assert grid_shape(n) == shape


def test_gallery_groups_pick_right_wrong_and_uncertain_without_repeats():
    y = np.array([0, 0, 1, 1, 0, 1])
    proba = np.array([[0.95, 0.05], [0.1, 0.9], [0.2, 0.8], [0.52, 0.48], [0.6, 0.4], [0.3, 0.7]])
    groups = gallery_groups(y, proba, 2)
    assert groups["best"] == [0, 2]  # right, highest P(true)
    assert groups["worst"] == [1, 3]  # wrong, lowest P(true)
    assert groups["uncertain"] == [4, 5]  # smallest margins among the rest
    every = gallery_groups(y, proba, 10)  # all right ones are "best", all wrong ones "worst"; none left over
    assert every == {"best": [0, 2, 5, 4], "worst": [1, 3], "uncertain": []}


def test_html_escapes_user_text_everywhere():
    hostile = '<script>alert("x")</script>'
    table = H.table(["<b>col</b>"], [[hostile], [1.5]])
    assert "<script>" not in table and "&lt;script&gt;" in table and "&lt;b&gt;col&lt;/b&gt;" in table
    page = H.page(hostile, [hostile], [('a"b', hostile, H.section("x", hostile, "<p>ok</p>", hostile))], hostile)
    # <title>, <h1>, subtitle, navigation, section title, lead, footer
    assert "<script>" not in page and page.count("&lt;script&gt;") == 7
    assert "<p>ok</p>" in page  # the module's own markup passes


def test_figures_render(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1 / e, "val": {"loss": 1.1 / e, "accuracy": 0.5 + e / 20, "macro_f1": 0.4 + e / 20},
         "best": e == 3}
        for e in (1, 2, 3)
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    figures = {
        "curves": plots.learning_curves(history, "macro_f1"),
        "pr": plots.pr_curves(y, proba, ["a", "b", "$c$"]),
        "roc": plots.roc_curve_plot(y % 2, np.c_[1 - proba[:, 0], proba[:, 0]], ["n", "p"], 0.4),
        "cm": plots.confusion_plot([[5, 1, 0], [2, 3, 1], [0, 0, 4]], ["a", "b", "c"]),
        "trials": plots.trials_chart(
            [0, 1, 2, 3], [0.5, 0.6, None, 0.55], ["complete", "complete", "pruned", "pruned"], "accuracy", True
        ),
        "importance": plots.importance_plot({"lr": 0.7, "head.params.dropout": 0.3}),
    }
    for name, fig in figures.items():
        path = plots.save(fig, tmp_path / f"{name}.png")
        assert Image.open(path).size[0] > 300


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    y = np.array([1] * 8 + [0] * 2 + [0] * 8 + [1] * 2)  # P(1) = 0.8 right 8 of 10 times, 0.2 wrong 2 of 10
    proba = np.array([[0.2, 0.8]] * 10 + [[0.8, 0.2]] * 10)
    _, ece = plots.calibration_plot(y, proba, ["0", "1"])
    assert ece == pytest.approx(0.0, abs=1e-9)
    _, ece = plots.calibration_plot(y, np.array([[0.01, 0.99]] * 10 + [[0.99, 0.01]] * 10), ["0", "1"])
    assert ece == pytest.approx(0.19, abs=1e-6)


def test_attention_card_keeps_the_image_aspect_and_marks_the_peak(tmp_path):
    image = np.full((100, 300, 3), 255, dtype=np.uint8)
    attention = np.zeros((4, 4))
    attention[1, 1] = 1.0  # row 1, column 1 of a 4x4 grid
    path = plots.save_image(plots.attention_card(image, attention), tmp_path / "card.png")
    drawn = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    h, w = drawn.shape[:2]
    assert (w, h) == (plots.CARD_SIDE, round(100 * plots.CARD_SIDE / 300))  # 320 x 106.7, rounded
    # the peak region (second row, second column of four) turns yellow; the far corner only dims (stays grey)
    peak = drawn[int(h * 0.375), int(w * 0.375)]
    corner = drawn[int(h * 0.9), int(w * 0.9)]
    assert peak[0] - peak[2] > 50 and abs(corner[0] - corner[2]) < 10
    cropped = np.asarray(plots.attention_card(image, attention, crop=1.0), dtype=float)
    assert abs(cropped[5, 5, 0] - cropped[5, 5, 2]) < 10  # outside the centre square the encoder saw: no heat
    assert plots.attention_card(None, None).size == (plots.CARD_SIDE, plots.CARD_SIDE)
    plain = np.asarray(plots.attention_card(image, np.ones(7) / 7))  # 7 regions are not a grid: image only
    assert (plain == 255).all()
    flat = np.zeros(16)
    flat[5] = 1.0  # the same peak given over the regions in row-major order
    assert (np.asarray(plots.attention_card(image, flat)) == np.asarray(Image.open(path).convert("RGB"))).all()
