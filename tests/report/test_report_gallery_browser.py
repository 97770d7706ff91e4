"""The report gallery with its explanation panels in a real browser (Playwright, headless Chromium) at 1280 px:
every image decodes, nothing runs past the viewport, the panels are shown at their aspect ratio. A screenshot of the
gallery is kept as a test artifact (tests/_browser.py)."""

from __future__ import annotations

import pytest

from _browser import artifact_path, chromium, layout_facts
from mmfuse.report import write_report

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_gallery_panels_load_and_fit_a_1280_px_window(binary_run, tmp_path):
    page_path = write_report(binary_run, tmp_path / "run", per_group=1, log=lambda _: None)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        facts = layout_facts(page)
        assert facts["broken_images"] == [], facts["broken_images"]
        assert facts["overflowing"] == [], facts["overflowing"]
        assert facts["page_width"] <= facts["viewport"] == 1280
        panels = page.locator('#gallery img[alt^="explanation of example"]')
        assert panels.count() == 3
        for k in range(panels.count()):
            shown = panels.nth(k).evaluate(
                "img => [img.naturalWidth, img.naturalHeight, img.getBoundingClientRect().width,"
                " img.getBoundingClientRect().height]"
            )
            natural, rendered = shown[0] / shown[1], shown[2] / shown[3]
            assert shown[2] > 0.8 * 1100  # across the card's row, not a thumbnail
            assert rendered == pytest.approx(natural, rel=0.02)  # not squeezed: 2 % is a pixel of rounding
        gallery = page.locator("#gallery")
        gallery.scroll_into_view_if_needed()
        gallery.screenshot(path=str(artifact_path("report-gallery-panels.png")))
        assert not errors, errors
        page.close()
