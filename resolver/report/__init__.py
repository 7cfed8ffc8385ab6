"""Weekly report of blocked attempts: SQL aggregation over hits and traffic, and its renderers.

`from resolver import report as rpt` gives the whole of it: the periods (`periods`), the
figures (`queries.build_report`, one function per section; `changes` for the policy
changes of the period), the tables every human format shares (`tables`), and one module
per format (`text` for text and Markdown, `htmlpage` for HTML and its SVG charts,
`csvfile`, `jsonfile`).
"""

from __future__ import annotations

from resolver.report.changes import MAX_CHANGES, policy_changes
from resolver.report.csvfile import CSV_COLUMNS, CSV_HEADERS, render_csv
from resolver.report.htmlpage import days_svg, render_html, services_svg
from resolver.report.jsonfile import render_json
from resolver.report.notes import CLIENT_MODES, KEEP_WORDS, MODE_WORDS, describe_modes
from resolver.report.periods import (
    MAX_PERIOD_DAYS,
    WEEKDAYS,
    day_bounds,
    local_timezone,
    parse_range,
    week_bounds,
    zone,
)
from resolver.report.queries import (
    ATTEMPT_GAP_SECONDS,
    BYPASS_CATEGORY,
    GAP_BEHIND,
    GAP_DOWN,
    GAP_NOT_YET,
    GAP_SETTLE_SECONDS,
    OTHER_GROUP,
    PRIVACY_MODES,
    SCHEMA_VERSION,
    build_report,
)
from resolver.report.tables import EMPTY_PERIOD, EMPTY_WEEK, language_of
from resolver.report.text import render_markdown, render_text

RENDERERS = {
    "text": render_text,
    "markdown": render_markdown,
    "html": render_html,
    "csv": render_csv,
    "json": render_json,
}

__all__ = [
    "ATTEMPT_GAP_SECONDS",
    "BYPASS_CATEGORY",
    "CLIENT_MODES",
    "CSV_COLUMNS",
    "CSV_HEADERS",
    "EMPTY_PERIOD",
    "EMPTY_WEEK",
    "GAP_BEHIND",
    "GAP_DOWN",
    "GAP_NOT_YET",
    "GAP_SETTLE_SECONDS",
    "KEEP_WORDS",
    "MAX_CHANGES",
    "MAX_PERIOD_DAYS",
    "MODE_WORDS",
    "OTHER_GROUP",
    "PRIVACY_MODES",
    "RENDERERS",
    "SCHEMA_VERSION",
    "WEEKDAYS",
    "build_report",
    "day_bounds",
    "days_svg",
    "describe_modes",
    "language_of",
    "policy_changes",
    "local_timezone",
    "parse_range",
    "render_csv",
    "render_html",
    "render_json",
    "render_markdown",
    "render_text",
    "services_svg",
    "week_bounds",
    "zone",
]
