"""The report as CSV: one row per local day, service and client group."""

from __future__ import annotations

import csv
import io
from typing import Any

from resolver.i18n import N_
from resolver.presentation import csv_cell, strip_controls
from resolver.report.tables import day_privacy, language_of

CSV_COLUMNS = ("date", "service", "category", "group", "blocked", "attempts")
#: The CSV's header row in the report's language (the English one is the column keys).
CSV_HEADERS = {
    "date": N_("date"),
    "service": N_("service"),
    "category": N_("category"),
    "group": N_("group"),
    "blocked": N_("blocked"),
    "attempts": N_("attempts"),
    "privacy": N_("privacy"),
}


def render_csv(report: dict[str, Any]) -> str:
    """One row per (local day, service, client group) with blocked queries and attempts,
    and the privacy mode(s) the day's hits are stored with. The header and the privacy
    column are in the report's language; dates stay ISO and counts plain integers, which
    every spreadsheet reads whatever its language."""
    lang = language_of(report)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([lang._(CSV_HEADERS[c]) for c in (*CSV_COLUMNS, "privacy")])
    modes: dict[str, str] = {}
    for row in report["breakdown"]:
        if row["date"] not in modes:
            modes[row["date"]] = day_privacy(report, row["date"], lang)
        cells = [
            csv_cell(strip_controls(str(row[c]))) if row[c] is not None else "" for c in CSV_COLUMNS
        ]
        writer.writerow([*cells, modes[row["date"]]])
    return buf.getvalue()
