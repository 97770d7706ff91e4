"""A self-contained HTML page: inline CSS, charts as inline SVG, images embedded as base64, no scripts, every piece
of user text escaped.

Captions, ids, labels and config values come from data files and may hold markup (``<script>``, ``<img onerror>``):
everything that is not this module's own markup goes through :func:`esc`. Charts are matplotlib's SVG with their
labels kept as ``<text>`` (``svg.fonttype: none``, which escapes them): the browser lays the labels out at the
figure's size in CSS pixels, so they read at 100% zoom, and a test can measure their rendered font size.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa; --card:#fff; --good:#2f8f5b; --bad:#c0392b;
        --accent:#3b6fb6; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:linear-gradient(120deg,#243b55,#3b6fb6); color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:26px; font-weight:650; }
header p { margin:2px 0; opacity:.9; overflow-wrap:anywhere; }
main { max-width:1240px; margin:0 auto; padding:24px 32px 60px; }
nav { margin:-8px 0 18px; font-size:14px; }
nav a { color:var(--accent); margin-right:14px; text-decoration:none; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:18px 22px 20px;
          margin:0 0 22px; box-shadow:0 1px 2px rgba(0,0,0,.04); }
section h2 { margin:0 0 4px; font-size:19px; }
.lead { color:var(--muted); margin:0 0 14px; font-size:14px; }
.figs { display:grid; grid-template-columns:repeat(auto-fit,minmax(420px,1fr)); gap:18px; align-items:start; }
figure { margin:0; }
figure img { max-width:100%; height:auto; display:block; margin:0 auto; }
figcaption { color:var(--muted); font-size:13px; margin-top:6px; text-align:center; }
.charts { display:flex; flex-wrap:wrap; gap:18px 28px; align-items:flex-start; }
.charts figure { flex:0 1 auto; min-width:0; max-width:100%; }
.charts svg { display:block; max-width:100%; height:auto; margin:0 auto; }
.charts figcaption { max-width:60em; margin-left:auto; margin-right:auto; }
table { border-collapse:collapse; font-size:13.5px; margin:6px 0 4px; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { white-space:nowrap; }
td { max-width:36em; overflow-wrap:break-word; }
th { background:#f0f3f7; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.hl td { background:#eef6ff; font-weight:600; }
.scroll { overflow-x:auto; }
.kpis { display:flex; flex-wrap:wrap; gap:12px; margin:4px 0 14px; }
.kpi { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:120px; }
.kpi b { display:block; font-size:20px; }
.kpi span { color:var(--muted); font-size:12.5px; }
.gallery h3 { margin:18px 0 8px; font-size:16px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(250px,1fr)); gap:16px; }
.card { border:1px solid var(--line); border-radius:10px; overflow:hidden; background:#fff; }
.card img { width:100%; display:block; aspect-ratio:1/1; object-fit:contain; background:#eef1f5; }
.card .body { padding:10px 12px 12px; }
.card .text { font-size:13.5px; margin:0 0 8px; max-height:7.5em; overflow:auto; white-space:pre-wrap;
              overflow-wrap:anywhere; }
.card .meta { font-size:12.5px; color:var(--muted); }
.chip { display:inline-block; border-radius:999px; padding:1px 9px; font-size:12px; margin:0 4px 4px 0;
        border:1px solid var(--line); background:var(--bg); }
.chip.good { background:#e6f4ec; border-color:#b7dec7; color:var(--good); }
.chip.bad { background:#fbeaea; border-color:#f0c2bd; color:var(--bad); }
.bar { height:6px; background:var(--line); border-radius:3px; margin:4px 0 6px; overflow:hidden; }
.bar i { display:block; height:100%; background:var(--accent); }
.note { color:var(--muted); font-style:italic; }
.warn { background:#fff7e6; border:1px solid #f3d59b; border-radius:8px; padding:8px 14px; margin:4px 0 12px; }
.warn ul { margin:4px 0 0; padding-left:20px; }
footer { color:var(--muted); font-size:12.5px; text-align:center; margin-top:30px; overflow-wrap:anywhere; }
"""


def esc(value: Any) -> str:
    """User text as HTML text or attribute value (``<``, ``>``, ``&``, quotes escaped)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell (escaped text for anything else)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -(digits - 1) or value == 0 else f"{value:.3g}"
    return esc(value)


def duration(seconds: float | None) -> str:
    """A duration for people: ``0.4 s``, ``2.4 s``, ``42 s``, ``3 min 12 s``, ``2 h 5 min`` (blank when unknown)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    s = max(0.0, float(seconds))
    if s == 0:
        return "0 s"
    if s < 0.05:
        return "< 0.1 s"
    if round(s, 1) < 10:
        return f"{round(s, 1):.1f} s"
    total = round(s)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        minutes, rest = divmod(total, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(round(s / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def data_uri(png: Path) -> str:
    """A PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def figure(png: Path, caption: str = "", alt: str = "") -> str:
    """An embedded image with an (escaped) caption."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png)}" alt="{esc(alt or caption)}">{cap}</figure>'


_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def svg_figure(svg: Path, caption: str = "", alt: str = "") -> str:
    """A chart written by :func:`mmfuse.report.plots.save_svg`, inline, with an (escaped) caption.

    The SVG keeps the size it was drawn at (CSS shrinks it only in a window too narrow for it), so its labels show at
    the font sizes they were drawn with. Its text was escaped by matplotlib; the XML prolog and metadata are dropped.
    """
    markup = _METADATA.sub("", _PROLOG.sub("", Path(svg).read_text(encoding="utf-8"), count=1), count=1)
    markup = markup.replace("<svg ", f'<svg role="img" aria-label="{esc(alt or caption)}" ', 1)
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{markup}{cap}</figure>"


def charts(items: Iterable[str]) -> str:
    """Charts (:func:`svg_figure`) side by side at their own size, wrapping to the next line when the window is too
    narrow for both."""
    return f'<div class="charts">{"".join(items)}</div>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[bool] | None = None,
          highlight: Sequence[bool] | None = None) -> str:  # fmt: skip
    """A table; cells are escaped (numbers formatted), numeric columns right-aligned."""
    rows = [list(r) for r in rows]
    if numeric is None:
        numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and bool(rows)
                   for i in range(len(header))]  # fmt: skip
    head = "".join(
        f'<th class="num">{esc(h)}</th>' if n else f"<th>{esc(h)}</th>" for h, n in zip(header, numeric, strict=True)
    )
    body = []
    for k, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{fmt(v)}</td>' if n else f"<td>{fmt(v)}</td>" for v, n in zip(row, numeric, strict=True)
        )
        cls = ' class="hl"' if highlight is not None and highlight[k] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def figs(items: Iterable[str]) -> str:
    """Figures side by side (wrapping on narrow screens)."""
    return f'<div class="figs">{"".join(items)}</div>'


def kpis(items: Iterable[tuple[str, Any]]) -> str:
    """Headline numbers as tiles."""
    tiles = "".join(
        f'<div class="kpi"><b>{fmt(v, 3)}</b><span>{esc(k)}</span></div>' for k, v in items if v is not None
    )
    return f'<div class="kpis">{tiles}</div>'


def section(anchor: str, title: str, body: str, lead: str = "") -> str:
    """A titled card; ``body`` is markup this module built (never raw user text)."""
    lead_html = f'<p class="lead">{esc(lead)}</p>' if lead else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{lead_html}{body}</section>'


def page(title: str, subtitle: Sequence[str], sections: Sequence[tuple[str, str, str]], footer: str) -> str:
    """The whole document.

    Args:
        title: page title (user text allowed).
        subtitle: header lines (user text allowed).
        sections: ``(anchor, nav title, section markup)``.
        footer: footer text (user text allowed).
    """
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    lines = "".join(f"<p>{esc(s)}</p>" for s in subtitle)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{lines}</header><main><nav>{nav}</nav>"
        + "".join(body for _, _, body in sections)
        + f"<footer>{esc(footer)}</footer></main></body></html>\n"
    )
