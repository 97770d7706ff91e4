"""Shared by the browser tests (marker ``browser``): one headless Chromium driven by Playwright, the layout facts a
person would check on a page, and the folder where screenshots are kept.

Needs the ``playwright`` Python package (its driver ships in the wheel; no browser download) and Debian's
``chromium`` (``make browser`` installs it); a test without them is skipped, saying which is missing.

Screenshots are kept as test artifacts in ``$MMFUSE_TEST_ARTIFACTS`` or, when unset, ``test-artifacts/screenshots``
in the checkout (ignored by git), so a person can look at what the tests saw after a run, CI's included.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REPO = Path(__file__).resolve().parents[1]


def chromium_path() -> Path | None:
    named = os.environ.get("MMFUSE_CHROMIUM")
    if named:
        return Path(named) if Path(named).is_file() else None
    found = next((path for path in map(shutil.which, BROWSERS) if path), None)
    return Path(found) if found else None


@contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright ``Browser`` on the system Chromium; skips the test (saying why) when either is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need Playwright for Python: pip install playwright"
    )
    path = chromium_path()
    if path is None:
        pytest.skip(f"the browser tests need Chromium (tried {', '.join(BROWSERS)}): apt-get install chromium")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: Chromium refuses its sandbox when run as root, which CI is
        browser = p.chromium.launch(
            executable_path=str(path), headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            yield browser
        finally:
            browser.close()


def artifact_dir() -> Path:
    folder = Path(os.environ.get("MMFUSE_TEST_ARTIFACTS") or REPO / "test-artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def artifact_path(name: str) -> Path:
    """Where a screenshot called ``name`` is kept (a file name; unsafe characters become ``-``)."""
    return artifact_dir() / re.sub(r"[^A-Za-z0-9._-]+", "-", name)


# Run in the page by `layout_facts`. An element "overflows" when its right edge passes the viewport and no ancestor
# scrolls it horizontally (overflow-x auto/scroll/hidden): a wide table inside a scrolling wrapper is fine, a table
# that runs past the page edge is not. Text sizes are the computed font size of every SVG <text> and every element
# with a `data-chart-label` attribute (charts drawn as inline SVG keep their labels as text the browser lays out), in
# screen pixels: an SVG's font size is in its user units, so it is scaled by the text's screen transform (matplotlib's
# SVG: 1 unit = 1 pt = 4/3 px at the figure's own size, less where CSS shrinks the figure).
LAYOUT_FACTS_JS = r"""() => {
  const vw = document.documentElement.clientWidth;
  const clipped = (el) => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const ox = getComputedStyle(p).overflowX;
      if (ox === 'auto' || ox === 'scroll' || ox === 'hidden') return true;
    }
    return false;
  };
  const visible = (el) => {
    const s = getComputedStyle(el);
    const r = el.getBoundingClientRect();
    return s.display !== 'none' && s.visibility !== 'hidden' && r.width > 0 && r.height > 0;
  };
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\s+/).join('.') : '');
  const overflowing = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (!visible(el)) continue;
    const r = el.getBoundingClientRect();
    if (r.right > vw + 1 && !clipped(el)) overflowing.push({element: name(el), right: Math.round(r.right)});
  }
  const broken = [];
  for (const img of document.images) {
    if (visible(img) && (!img.complete || img.naturalWidth === 0)) broken.push(img.alt || img.src.slice(0, 80));
  }
  const labels = [];
  for (const el of document.querySelectorAll('svg text, [data-chart-label]')) {
    if (!visible(el) || !el.textContent.trim()) continue;
    // an SVG's font size is in its user units: scaled by the viewBox and transforms to screen pixels
    let px = parseFloat(getComputedStyle(el).fontSize);
    const m = el instanceof SVGGraphicsElement ? el.getScreenCTM() : null;
    if (m) px *= Math.sqrt(Math.abs(m.a * m.d - m.b * m.c));
    labels.push({text: el.textContent.trim().slice(0, 40), px: Math.round(px * 100) / 100});
  }
  return {viewport: vw, page_width: document.documentElement.scrollWidth, overflowing, broken_images: broken,
          chart_labels: labels};
}"""


def layout_facts(page: Any) -> dict[str, Any]:
    """What `LAYOUT_FACTS_JS` measures on a Playwright ``page``: ``viewport``, ``page_width``, ``overflowing``
    elements, ``broken_images`` (visible ones only), ``chart_labels`` with their rendered font size in px."""
    return page.evaluate(LAYOUT_FACTS_JS)
