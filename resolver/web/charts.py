"""SVG charts of the dashboard: the weekly report's own (per day, per service) and per hour."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from resolver import report as rpt
from resolver.i18n import Language
from resolver.web.i18n import translations


def services_svg(services: list[dict[str, Any]], lang: str) -> str:
    """The html report's chart per service, shared so that the dashboard and report draw
    alike, its title and tooltips in the page's language."""
    return rpt.services_svg(services, lang)


def days_svg(days: list[dict[str, Any]], lang: str) -> str:
    """The report's chart per day, weekdays, dates and tooltips in the page's language."""
    return rpt.days_svg(days, lang)


def hours_svg(hours: list[dict[str, Any]], tz: str, lang: str = "en") -> str:
    """Blocked queries per clock hour, drawn like the report's day chart; each bar carries
    its [start, end) in data attributes, so a click opens the attempts of that hour. The
    title and tooltips are in the page's language."""
    _ = translations(lang).gettext
    fmt = Language(lang)
    chart_title = _("Blocked queries per hour")
    width, height, top, bottom = 680, 190, 18, 34
    zi = ZoneInfo(tz)
    slot = (width - 20) / max(len(hours), 1)
    bar_w = slot * 0.62
    peak = max([h["blocked"] for h in hours] + [1])
    parts = [
        f'<svg class="chart chart-hours" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{html.escape(chart_title)}">',
        f'<line class="axis" x1="10" y1="{height - bottom}" x2="{width - 10}" '
        f'y2="{height - bottom}"/>',
    ]
    for i, h in enumerate(hours):
        bh = (height - top - bottom) * h["blocked"] / peak
        x = 10 + i * slot + (slot - bar_w) / 2
        y = height - bottom - bh
        cx = x + bar_w / 2
        local = datetime.fromtimestamp(h["start"], zi)
        label = local.strftime("%H")
        if fmt.english:
            stamp = local.isoformat(timespec="minutes")
        else:
            stamp = fmt.moment(local, dated=True)
        tip = _("%(when)s: %(blocked)s blocked, %(attempts)s attempts") % {
            "when": stamp,
            "blocked": fmt.number(h["blocked"]),
            "attempts": fmt.number(h["attempts"]),
        }
        parts.append(
            f'<rect class="bar" data-start="{h["start"]}" data-end="{h["end"]}" '
            f'data-blocked="{h["blocked"]}" data-attempts="{h["attempts"]}" x="{x:.1f}" '
            f'y="{y:.1f}" width="{bar_w:.1f}" height="{bh:.1f}"><title>{html.escape(tip)}'
            "</title></rect>"
        )
        if h["blocked"]:
            parts.append(
                f'<text x="{cx:.1f}" y="{y - 4:.1f}" text-anchor="middle">'
                f"{fmt.number(h['blocked'])}</text>"
            )
        parts.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 13}" text-anchor="middle">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
