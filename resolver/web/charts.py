"""SVG charts of the dashboard: the weekly report's own (per day, per service) and per hour."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from resolver import report as rpt
from resolver.i18n import Language
from resolver.report.htmlpage import bar_chart_svg
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
    zi = ZoneInfo(tz)
    bars = []
    for h in hours:
        local = datetime.fromtimestamp(h["start"], zi)
        stamp = (
            local.isoformat(timespec="minutes") if fmt.english else fmt.moment(local, dated=True)
        )
        tip = _("%(when)s: %(blocked)s blocked, %(attempts)s attempts") % {
            "when": stamp,
            "blocked": fmt.number(h["blocked"]),
            "attempts": fmt.number(h["attempts"]),
        }
        bars.append(
            {
                "value": h["blocked"],
                "data": [
                    ("start", h["start"]),
                    ("end", h["end"]),
                    ("blocked", h["blocked"]),
                    ("attempts", h["attempts"]),
                ],
                "tip": tip,
                "value_label": fmt.number(h["blocked"]) if h["blocked"] else None,
                "labels": [local.strftime("%H")],
            }
        )
    return bar_chart_svg("chart-hours", _("Blocked queries per hour"), bars)
