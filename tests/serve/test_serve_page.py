"""The web page in a real browser: Playwright drives Debian's headless Chromium against the app on 127.0.0.1.

Needs the ``playwright`` Python package (its driver ships in the wheel; no browser download) and ``/usr/bin/chromium``
(``apt-get install chromium``). The screenshot is kept under pytest's temporary folder, or in the folder named by
``MMFUSE_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _serve_runs import png_bytes, running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path(os.environ.get("MMFUSE_CHROMIUM", "/usr/bin/chromium"))
CLASSES = ["benign", "hateful"]


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs Playwright for Python: pip install playwright"
    )
    if not CHROMIUM.is_file():
        pytest.skip(f"the browser test needs Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def base_url(tiny_predictor):
    from mmfuse.serve import create_app

    with running_server(create_app(tiny_predictor)) as url:
        yield url


def _keep(screenshot: Path) -> Path:
    folder = os.environ.get("MMFUSE_TEST_ARTIFACTS")
    if not folder:
        return screenshot
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(screenshot, Path(folder) / screenshot.name))


def test_upload_type_click_and_see_the_prediction(browser, base_url, tmp_path):
    image = tmp_path / "meme.png"
    image.write_bytes(png_bytes(width=160, height=120, seed=4))
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(base_url + "/")
    page.locator("#model-info", has_text="cross_attention").wait_for()  # GET /info answered
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
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {_keep(shot)}")
    assert not errors, errors
    page.close()


def test_a_file_that_is_not_an_image_shows_the_servers_message(browser, base_url, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is text, not a PNG")
    page = browser.new_page()
    page.goto(base_url + "/")
    page.locator("#model-info", has_text="cross_attention").wait_for()  # GET /info answered
    page.set_input_files("#file", str(fake))
    page.click("#predict")
    page.wait_for_selector("#result[data-state=error]", state="attached", timeout=30_000)
    assert page.is_visible("#error")
    assert page.text_content("#error").startswith("400: ")
    page.close()
