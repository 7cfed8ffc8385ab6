"""The report as one self-contained HTML page, with its inline SVG charts (shared with the
dashboard)."""

from __future__ import annotations

import html
from datetime import date
from typing import Any

from resolver.i18n import DEFAULT_LANGUAGE, Language
from resolver.report.tables import (
    DAYS_SECTION,
    SERVICES_SECTION,
    empty_banner,
    footer,
    is_empty,
    language_of,
    numeric,
    period_line,
    report_title,
    sections,
)

_CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font: 10.5pt/1.4 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #1d2329;
       margin: 0 auto; max-width: 186mm; padding: 8mm 0; background: #fff; }
h1 { font-size: 18pt; margin: 0 0 2pt; }
h2 { font-size: 12.5pt; margin: 16pt 0 5pt; border-bottom: 1.5pt solid #c9d1d9;
     padding-bottom: 2pt; break-after: avoid; }
p.period { color: #57606a; margin: 0 0 10pt; }
p.empty { font-size: 13pt; font-weight: bold; background: #eef6ee; border-left: 4pt solid #2f8f46;
          padding: 6pt 10pt; }
table { border-collapse: collapse; width: 100%; break-inside: avoid; }
th, td { padding: 2.5pt 6pt; border-bottom: 0.75pt solid #d8dee4; text-align: left;
         vertical-align: top; }
th { background: #f2f4f7; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
section { break-inside: avoid; }
svg.chart { display: block; width: 100%; height: auto; margin: 4pt 0 8pt; }
svg.chart text { font: 9px "DejaVu Sans", Arial, sans-serif; fill: #1d2329; }
svg.chart .bar { fill: #3b6ea8; }
svg.chart .axis { stroke: #8c959f; stroke-width: 1; }
.note { color: #57606a; font-size: 9pt; margin: 3pt 0; }
"""


def _h(text: object) -> str:
    return html.escape(str(text), quote=True)


def bar_chart_svg(css: str, title: str, bars: list[dict[str, Any]]) -> str:
    """A bar chart as inline SVG, shared by the report's days and the dashboard's hours.

    Each bar: `value` (its height), `data` (the rect's data-* attributes, in order),
    `tip` (its tooltip), `value_label` (the text above it, or None for none) and
    `labels` (one or two lines of text under it). Every text is escaped here.
    """
    width, height, top, bottom = 680, 190, 18, 34
    slot = (width - 20) / max(len(bars), 1)
    bar_w = slot * 0.62
    peak = max([b["value"] for b in bars] + [1])
    parts = [
        f'<svg class="chart {css}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{_h(title)}">',
        f'<line class="axis" x1="10" y1="{height - bottom}" x2="{width - 10}" '
        f'y2="{height - bottom}"/>',
    ]
    for i, b in enumerate(bars):
        h = (height - top - bottom) * b["value"] / peak
        x = 10 + i * slot + (slot - bar_w) / 2
        y = height - bottom - h
        cx = x + bar_w / 2
        data = "".join(f'data-{k}="{_h(v)}" ' for k, v in b["data"])
        parts.append(
            f'<rect class="bar" {data}x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}"><title>{_h(b["tip"])}</title></rect>'
        )
        if b["value_label"] is not None:
            parts.append(
                f'<text x="{cx:.1f}" y="{y - 4:.1f}" text-anchor="middle">'
                f"{_h(b['value_label'])}</text>"
            )
        for n, label in enumerate(b["labels"]):
            parts.append(
                f'<text x="{cx:.1f}" y="{height - bottom + 13 + 12 * n}" '
                f'text-anchor="middle">{_h(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def days_svg(days: list[dict[str, Any]], lang: str = DEFAULT_LANGUAGE) -> str:
    """Blocked queries per day as an inline SVG bar chart (the html report's and the
    dashboard's), its labels and tooltips in `lang`."""
    tr = Language(lang)
    bars = []
    for d in days:
        day = date.fromisoformat(d["date"])
        tip = tr._(
            "%(date)s: %(blocked)s blocked, %(attempts)s attempts",
            date=d["date"] if tr.english else tr.long_date(day),
            blocked=tr.number(d["blocked"]),
            attempts=tr.number(d["attempts"]),
        )
        label = d["date"][5:] if tr.english else f"{day.day:02d}/{day.month:02d}"
        bars.append(
            {
                "value": d["blocked"],
                "data": [
                    ("date", d["date"]),
                    ("blocked", d["blocked"]),
                    ("attempts", d["attempts"]),
                ],
                "tip": tip,
                "value_label": tr.number(d["blocked"]),
                "labels": [tr.weekday(day, d["weekday"]), label],
            }
        )
    return bar_chart_svg("chart-days", tr._("Blocked queries per day"), bars)


def services_svg(services: list[dict[str, Any]], lang: str = DEFAULT_LANGUAGE) -> str:
    """Blocked queries per service as an inline SVG bar chart, labels in `lang`."""
    tr = Language(lang)
    chart_title = tr._("Blocked queries per service")
    width, row, label_w = 680, 22, 210
    height = row * len(services) + 8
    peak = max([s["blocked"] for s in services] + [1])
    span = width - label_w - 60
    parts = [
        f'<svg class="chart chart-services" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{_h(chart_title)}">'
    ]
    for i, s in enumerate(services):
        y = 4 + i * row
        w = span * s["blocked"] / peak
        tip = tr._(
            "%(service)s: %(blocked)s blocked", service=s["name"], blocked=tr.number(s["blocked"])
        )
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_h(s["name"])}</text>'
        )
        parts.append(
            f'<rect class="bar" data-service="{_h(s["id"])}" data-blocked="{s["blocked"]}" '
            f'data-attempts="{s["attempts"]}" x="{label_w}" y="{y + 3}" width="{w:.1f}" '
            f'height="{row - 8}"><title>{_h(tip)}</title></rect>'
        )
        parts.append(
            f'<text x="{label_w + w + 5:.1f}" y="{y + 14}">{_h(tr.number(s["blocked"]))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained, printable HTML page: inline CSS and SVG, no scripts."""
    lang = language_of(report)
    title = report_title(report, lang)
    out = [
        "<!DOCTYPE html>",
        f'<html lang="{lang.lang}"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        f'<p class="period">{_h(period_line(report, lang))}</p>',
    ]
    if is_empty(report):
        out.append(f'<p class="empty">{_h(empty_banner(report, lang))}</p>')
    charts = {
        DAYS_SECTION: days_svg(report["days"], lang.lang),
        SERVICES_SECTION: services_svg(report["services"], lang.lang) if report["services"] else "",
    }
    for i, (title_, headers, rows, empty) in enumerate(sections(report, lang)):
        out.append(f"<section><h2>{_h(title_)}</h2>")
        out.append(charts.get(i, ""))
        if not rows:
            out.append(f"<p>{_h(empty)}</p></section>")
            continue
        out.append("<table>")
        if any(headers):
            out.append(
                "<thead><tr>"
                + "".join(
                    f'<th class="{"n" if numeric(rows[0][i], lang) else ""}">{_h(h)}</th>'
                    for i, h in enumerate(headers)
                )
                + "</tr></thead>"
            )
        out.append("<tbody>")
        for row in rows:
            out.append(
                "<tr>"
                + "".join(
                    f'<td class="{"n" if numeric(c, lang) else ""}">{_h(c)}</td>' for c in row
                )
                + "</tr>"
            )
        out.append("</tbody></table></section>")
    out += [f'<p class="note">{_h(line)}</p>' for line in footer(report, lang)]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
