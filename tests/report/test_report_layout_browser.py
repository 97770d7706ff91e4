"""The reports as a person sees them at 100% zoom in a 1280 x 800 window (headless Chromium, Playwright): nothing
runs past the page edge (wide tables scroll inside their wrapper), every chart label renders at 10 px or more, no
image is broken. A screenshot of each section is kept (``tests/_browser.py``: ``test-artifacts/screenshots``).

Needs Playwright for Python and Debian's ``chromium``; skipped, saying which is missing, without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _browser import artifact_path, chromium, layout_facts
from mmfuse.report import write_report

pytestmark = [pytest.mark.slow, pytest.mark.browser]

MIN_LABEL_PX = 10

# per section: its id and how many chart labels (SVG <text>) it holds
SECTION_LABELS_JS = """() => Array.from(document.querySelectorAll('section')).map(s => ({
  id: s.id, labels: s.querySelectorAll('svg text').length, charts: s.querySelectorAll('figure svg').length}))"""


def _look(page_path: Path, name: str) -> tuple[dict, list[dict]]:
    """Opens the report at 1280 x 800, keeps a screenshot of each section, returns the layout facts and what each
    section holds."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.goto(page_path.as_uri(), wait_until="load")
            facts = layout_facts(page)
            sections = page.evaluate(SECTION_LABELS_JS)
            for i, section in enumerate(page.query_selector_all("section")):
                section.screenshot(path=str(artifact_path(f"report-{name}-{i:02d}-{section.get_attribute('id')}.png")))
        finally:
            page.close()
    return facts, sections


def _check(facts: dict, sections: list[dict], charted: set[str]) -> None:
    assert facts["viewport"] == 1280 and facts["page_width"] <= 1280
    assert facts["overflowing"] == [], f"past the right edge of a 1280-px window: {facts['overflowing'][:10]}"
    assert facts["broken_images"] == []
    by_id = {s["id"]: s for s in sections}
    for anchor in charted:  # the charts are measured: a section drawn as pictures of text would have no labels here
        assert by_id[anchor]["charts"] >= 1 and by_id[anchor]["labels"] >= 5, by_id[anchor]
    small = [label for label in facts["chart_labels"] if label["px"] < MIN_LABEL_PX]
    assert len(facts["chart_labels"]) >= 50
    assert small == [], f"chart labels under {MIN_LABEL_PX} px at 100% zoom: {small[:10]}"


def test_run_report_reads_at_100_percent_in_a_1280_px_window(binary_run, tmp_path):
    page = write_report(binary_run, tmp_path / "run", per_group=2, log=lambda _: None)
    facts, sections = _look(page, "run")
    _check(facts, sections, {"data", "curves", "evaluation"})  # the data strip's captions are chart labels too


def test_sweep_report_reads_at_100_percent_in_a_1280_px_window(small_sweep, tmp_path):
    page = write_report(small_sweep, tmp_path / "sweep", per_group=2, log=lambda _: None)
    facts, sections = _look(page, "sweep")
    _check(facts, sections, {"trials", "trial-data", "trial-curves", "trial-evaluation"})
    assert any(s["id"] == "table" for s in sections)  # the ranked table is on the page, inside the window
