"""The report in a real browser: headless Chromium opens the page, every embedded image decodes (naturalWidth > 0),
nothing in the page errors, no caption runs as code, and a screenshot shows a rendered page.

Needs Debian's ``chromium`` on PATH (``apt-get install -y chromium``); skipped, saying so, without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmfuse.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        BROWSER is None,
        reason=f"no Chromium on PATH (tried {', '.join(BROWSERS)}); install it with `apt-get install -y chromium`",
    ),
]

# Injected into a copy of the page: the first script of <head> records every error (scripts and failed loads, which
# do not bubble, hence the capture phase); after `load` the last one writes what it saw into the DOM for --dump-dom.
PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.outerHTML)) || e.type));
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason); });
</script>"""
PROBE_TAIL = """<script>window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
            local: img.src.indexOf('data:') === 0};
  });
  var out = document.createElement('pre');
  out.id = 'mmfuse-probe';
  out.textContent = JSON.stringify({images: images, errors: window.__errors, pwned: window.__pwned || null,
                                    sections: document.querySelectorAll('section').length,
                                    charts: document.querySelectorAll('figure svg').length});
  document.body.appendChild(out);
});</script>"""


def _run_browser(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI runs as root)
    return subprocess.run([str(BROWSER), *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def _probe(page: Path, tmp_path: Path) -> dict[str, Any]:
    """Opens a probed copy of ``page`` and returns what the probe saw."""
    html = page.read_text(encoding="utf-8")
    assert html.count("<head>") == 1 and html.count("</body>") == 1
    probed = tmp_path / f"probed-{page.parent.name}.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE_HEAD).replace("</body>", PROBE_TAIL + "</body>"))
    done = _run_browser(["--dump-dom", "--virtual-time-budget=10000", probed.as_uri()], tmp_path / "profile")
    found = re.search(r'<pre id="mmfuse-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page never finished loading (exit {done.returncode}): {done.stderr[-2000:]}"
    import html as html_lib

    return json.loads(html_lib.unescape(found.group(1)))


def _screenshot(page: Path, tmp_path: Path) -> np.ndarray:
    shot = tmp_path / f"{page.parent.name}.png"
    done = _run_browser([f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()], tmp_path / "profile")
    assert shot.is_file(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return np.asarray(Image.open(shot).convert("RGB"))


def _check_page(page: Path, tmp_path: Path, min_images: int, min_charts: int) -> dict[str, Any]:
    seen = _probe(page, tmp_path)
    assert seen["errors"] == [], seen["errors"]
    assert seen["pwned"] is None  # no caption ran as a script
    images = seen["images"]
    assert len(images) >= min_images and seen["charts"] >= min_charts  # gallery cards; inline SVG charts
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert broken == [], f"images that did not load: {broken}"
    assert all(i["local"] for i in images)  # self-contained: nothing fetched
    pixels = _screenshot(page, tmp_path)
    assert pixels.shape[:2] == (2000, 1280)
    header = pixels[:60].reshape(-1, 3)
    assert (header[:, 2].astype(int) - header[:, 0].astype(int)).mean() > 20  # the blue header was painted
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # figures and text, not a blank page
    return seen


def test_run_report_loads_in_chromium(binary_run, tmp_path):
    page = write_report(binary_run, tmp_path / "run", log=lambda _: None)
    seen = _check_page(page, tmp_path, min_images=6, min_charts=6)
    assert seen["sections"] >= 5


def test_sweep_report_loads_in_chromium(small_sweep, tmp_path):
    page = write_report(small_sweep, tmp_path / "sweep", per_group=2, log=lambda _: None)
    seen = _check_page(page, tmp_path, min_images=2, min_charts=7)
    assert seen["sections"] >= 8  # overview, trials, table, then the selected trial's own sections
