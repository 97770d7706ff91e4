"""The web page in a real browser: Playwright drives headless Chromium (tests/_browser.py) against the app on
127.0.0.1, at 1280 px wide. Screenshots of the page empty and with a result are kept as test artifacts
(``MMFUSE_TEST_ARTIFACTS``, else test-artifacts/screenshots).
"""

from __future__ import annotations

import pytest
from _serve_runs import png_bytes, running_server

from _browser import artifact_path, chromium, layout_facts

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CLASSES = ["benign", "hateful"]
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def base_url(tiny_predictor):
    from mmfuse.serve import create_app

    with running_server(create_app(tiny_predictor)) as url:
        yield url


def _open(browser, base_url: str, errors: list[str]):
    page = browser.new_page(viewport=VIEWPORT)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(base_url + "/")
    page.locator("#model-info", has_text="cross_attention").wait_for()  # GET /info answered
    return page


def _fits(page) -> None:
    facts = layout_facts(page)
    assert facts["overflowing"] == [], facts["overflowing"]
    assert facts["broken_images"] == [], facts["broken_images"]
    assert facts["page_width"] <= facts["viewport"] == VIEWPORT["width"]


# the heatmap canvas: its size, the displayed image's natural size, and per column whether any pixel is painted
CANVAS_JS = """() => {
  const c = document.querySelector('#heatmap'), img = document.querySelector('#preview');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const cols = new Array(c.width).fill(0); let painted = 0;
  for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) { painted++; cols[((i - 3) / 4) % c.width]++; } }
  let sum = 0; for (let i = 0; i < d.length; i++) sum = (sum + d[i] * (i % 97 + 1)) % 1000000007;
  return {width: c.width, height: c.height, natural: [img.naturalWidth, img.naturalHeight], painted, cols, sum,
          visible: getComputedStyle(c).display !== 'none'};
}"""


def test_upload_type_click_and_see_the_prediction(browser, base_url, tmp_path):
    image = tmp_path / "meme.png"
    image.write_bytes(png_bytes(width=160, height=120, seed=4))
    errors: list[str] = []
    page = _open(browser, base_url, errors)
    assert page.is_disabled("#predict")  # nothing chosen yet
    page.set_input_files("#file", str(image))
    # The preview shows once the browser has decoded the chosen file (asynchronously): wait for it rather than
    # checking at once (is_visible does not wait; on a busy CI machine the image had no size yet).
    page.locator("#preview").wait_for(state="visible", timeout=30_000)
    page.fill("#text", "the full moon over the city")
    page.click("#predict")
    page.wait_for_selector("#result[data-state=done]", timeout=30_000)

    label = page.text_content("#label")
    rows = page.query_selector_all("#probabilities .row")
    shown = {row.get_attribute("data-class"): float(row.query_selector(".value").text_content()) for row in rows}
    assert label in CLASSES
    assert list(shown) == CLASSES and sum(shown.values()) == pytest.approx(1.0, abs=2e-3)
    assert page.is_visible("#reliance") and page.is_visible("#attention")
    assert "4 × 4 image regions" in page.text_content("#attention-text")
    # the heatmap was drawn over the image: some canvas pixels are not transparent
    painted = page.evaluate(
        "() => { const c = document.querySelector('#heatmap'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0;"
        " return [c.width, c.height, n]; }"
    )
    assert painted[0] > 0 and painted[2] > 0.5 * painted[0] * painted[1], painted
    assert page.is_hidden("#error")
    assert not errors, errors
    page.close()


def test_a_file_that_is_not_an_image_shows_the_servers_message(browser, base_url, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is text, not a PNG")
    page = _open(browser, base_url, [])
    page.set_input_files("#file", str(fake))
    page.click("#predict")
    page.wait_for_selector("#result[data-state=error]", state="attached", timeout=30_000)
    assert page.is_visible("#error")
    assert page.text_content("#error").startswith("400: ")
    page.close()


def test_the_empty_page_fits_1280_px_and_shows_no_placeholder(browser, base_url):
    errors: list[str] = []
    page = _open(browser, base_url, errors)
    page.screenshot(path=str(artifact_path("serve-page-empty.png")), full_page=True)
    _fits(page)
    # nothing chosen: no preview (not even a broken-image box with its alt text), no canvas, no result, no error
    for hidden in ("#stage", "#preview", "#heatmap", "#result", "#error", "#word-field"):
        assert page.is_hidden(hidden), hidden
    assert page.is_visible("#drop-hint")
    assert not errors, errors
    page.close()


def test_the_result_draws_the_heatmap_over_the_image_at_its_aspect_and_each_words_map(browser, base_url, tmp_path):
    image = tmp_path / "wide.png"
    image.write_bytes(png_bytes(width=320, height=160, seed=5))  # 2:1, so a squashed or misplaced map shows
    errors: list[str] = []
    page = _open(browser, base_url, errors)
    page.set_input_files("#file", str(image))
    page.locator("#preview").wait_for(state="visible", timeout=30_000)
    text = "the full moon over unbelievably quiet city"
    page.fill("#text", text)
    page.click("#predict")
    page.wait_for_selector("#result[data-state=done]", timeout=30_000)
    page.screenshot(path=str(artifact_path("serve-page-result.png")), full_page=True)
    _fits(page)

    mean = page.evaluate(CANVAS_JS)
    assert mean["visible"] and mean["natural"] == [320, 160]
    # the overlay has the image's aspect ratio (1 px of rounding on either side)
    assert abs(mean["width"] / mean["height"] - 2.0) < 2 / mean["height"] + 1e-9, mean
    # the tiny CLIP reads the centre square (image_crop 1.0): the map covers it, and nothing left or right of it
    side = mean["height"]
    left = (mean["width"] - side) // 2
    painted = [i for i, n in enumerate(mean["cols"]) if n]
    assert painted[0] >= left - 1 and painted[-1] <= left + side + 1, (painted[0], painted[-1], left, side)
    assert mean["painted"] > 0.9 * side * side

    # the word picker: the mean, then each word; choosing one draws that word's own map
    options = page.locator("#word option")
    assert options.count() == 1 + len(text.split())
    assert [options.nth(k).text_content() for k in range(1, 3)] == ["the", "full"]
    page.select_option("#word", "1")  # "full"
    word = page.evaluate(CANVAS_JS)
    assert word["sum"] != mean["sum"] and word["painted"] > 0.9 * side * side
    page.screenshot(path=str(artifact_path("serve-page-result-word.png")), full_page=True)
    assert not errors, errors
    page.close()
