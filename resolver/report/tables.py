"""The report's tables as every human format shows them: titles, headers and cells in the
report's language, names from the wire in presentation format."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

from resolver.i18n import DEFAULT_LANGUAGE, N_, Language
from resolver.presentation import display_name, strip_controls
from resolver.privacy import Period
from resolver.report.notes import CLIENT_MODES, describe_modes, mode_runs
from resolver.report.periods import WEEKDAYS, zone
from resolver.report.queries import (
    ATTEMPT_GAP_SECONDS,
    GAP_BEHIND,
    GAP_DOWN,
    GAP_NOT_SHIPPED,
    GAP_NOT_YET,
)

EMPTY_WEEK = N_("No blocked attempts this week.")
EMPTY_PERIOD = N_("No blocked attempts in this period.")


def language_of(report: dict[str, Any]) -> Language:
    """The language a report dict was built in (English for a dict without "lang")."""
    return Language(report.get("lang") or DEFAULT_LANGUAGE)


def report_title(report: dict[str, Any], lang: Language) -> str:
    period = report["period"]
    if period["week"]:
        return lang._("Sinkhole report, week %(week)s", week=period["week"])
    return lang._("Sinkhole report")


def period_line(report: dict[str, Any], lang: Language) -> str:
    period = report["period"]
    zi = zone(period["timezone"])
    start = datetime.fromisoformat(period["start"]).astimezone(zi)
    end = datetime.fromisoformat(period["end"]).astimezone(zi)
    # The end is exclusive; a period ending at midnight reads better as the day before.
    last = end - timedelta(seconds=1)
    if start.time() == end.time() == datetime.min.time():
        span = lang._(
            "%(start)s to %(end)s",
            start=lang.day(start.date(), WEEKDAYS[start.weekday()]),
            end=lang.day(last.date(), WEEKDAYS[last.weekday()]),
        )
    elif lang.english:
        span = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} (end excluded)"
    else:
        span = lang._(
            "%(start)s to %(end)s (end excluded)",
            start=lang.moment(start, dated=True),
            end=lang.moment(end, dated=True),
        )
    return lang._("%(span)s, time zone %(zone)s", span=span, zone=period["timezone"])


def _empty_line(report: dict[str, Any], lang: Language) -> str:
    return lang._(EMPTY_WEEK if report["period"]["week"] else EMPTY_PERIOD)


def empty_banner(report: dict[str, Any], lang: Language) -> str:
    # "None blocked" is only evidence where the server was recording.
    if report["gaps"]:
        return lang._(
            "%(empty)s Recording had gaps in this period; see below.",
            empty=_empty_line(report, lang),
        )
    return _empty_line(report, lang)


def is_empty(report: dict[str, Any]) -> bool:
    return report["totals"]["blocked"] == 0 and not report["bypass"]


def _change(blocked: int, previous: int, lang: Language) -> str:
    if previous == 0:
        return lang._("new") if blocked else lang.number(0)
    diff = blocked - previous
    return f"{lang.signed(diff)} ({lang.signed_percent(diff / previous)})"


def _share(share: float | None, lang: Language) -> str:
    return lang._("n/a") if share is None else lang.percent(share)


def _num(value: int | None, lang: Language) -> str:
    return "-" if value is None else lang.number(value)


def _short_time(stamp: str | None, lang: Language) -> str:
    if stamp is None:
        return "-"
    when = datetime.fromisoformat(stamp)
    if lang.english:
        return when.strftime("%a %Y-%m-%d %H:%M:%S %z")
    return f"{lang.moment(when, dated=True, seconds=True)} {when:%z}"


def _odd_days(report: dict[str, Any], lang: Language) -> list[str]:
    zi = zone(report["period"]["timezone"])
    notes = []
    for day in report["days"]:
        d = date.fromisoformat(day["date"])
        lo = datetime.combine(d, datetime.min.time(), zi)
        hi = datetime.combine(d + timedelta(days=1), datetime.min.time(), zi)
        hours = round((hi.timestamp() - lo.timestamp()) / 3600)
        if hours != 24:
            notes.append(
                lang._(
                    "%(day)s had %(hours)s hours (clock change).",
                    day=lang.day(d, day["weekday"]),
                    hours=hours,
                )
            )
    return notes


class Name(str):
    """A cell that holds a name from the wire (already in presentation format): markdown
    shows it as a code span, where no autolink or emphasis can form."""


def sections(
    report: dict[str, Any], lang: Language | None = None
) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, text when there are no rows) for every table of the report.

    Every cell is text without control characters: names from the wire as
    `display_name` renders them, everything else through `strip_controls`.
    """
    lang = lang or language_of(report)
    return [
        (title, headers, [[_clean(c) for c in row] for row in rows], empty)
        for title, headers, rows, empty in _raw_sections(report, lang)
    ]


def _clean(cell: str) -> str:
    if isinstance(cell, Name):
        return Name(display_name(cell))
    return strip_controls(cell).replace("\n", " ")


#: The gap kinds as the tables word them (the JSON keeps the kind itself).
GAP_WORDS = {
    GAP_DOWN: N_("server-down"),
    GAP_BEHIND: N_("recorder-behind"),
    GAP_NOT_YET: N_("not-yet-running"),
    GAP_NOT_SHIPPED: N_("not-shipped-yet"),
}
#: The changes of an imported list as the tables word them.
LIST_CHANGE_WORDS = {
    "imported": N_("imported"),
    "updated": N_("updated"),
    "removed": N_("removed"),
}
#: Section ids: the HTML report puts its charts by them, whatever the language.
DAYS_SECTION, SERVICES_SECTION = 2, 1


def _raw_sections(
    report: dict[str, Any], lang: Language
) -> list[tuple[str, list[str], list[list[str]], str]]:
    _ = lang._
    n = lang.number
    totals = report["totals"]
    clients_recorded = report["privacy"]["clients_listed"]
    summary = [
        [_("Blocked queries"), n(totals["blocked"])],
        [_("Attempts"), n(totals["attempts"])],
        [
            _("Distinct clients"),
            _num(totals["clients"], lang) if clients_recorded else _("not recorded"),
        ],
        [_("All queries"), n(totals["queries"])],
        [_("Blocked share"), _share(totals["blocked_share"], lang)],
        [_("First attempt"), _short_time(report["first_attempt"], lang)],
        [_("Last attempt"), _short_time(report["last_attempt"], lang)],
    ]
    services = [
        [
            s["name"],
            s["id"],
            n(s["blocked"]),
            n(s["attempts"]),
            _num(s["clients"], lang),
            n(s["previous_week"]),
            _change(s["blocked"], s["previous_week"], lang),
        ]
        for s in report["services"]
    ]
    days = [
        [
            lang.weekday(date.fromisoformat(d["date"]), d["weekday"]),
            d["date"] if lang.english else lang.long_date(date.fromisoformat(d["date"])),
            n(d["blocked"]),
            n(d["attempts"]),
            n(d["queries"]),
        ]
        for d in report["days"]
    ]
    groups = [
        [g["group"], n(g["blocked"]), n(g["attempts"]), _num(g["clients"], lang)]
        for g in report["groups"]
    ]
    clients = [
        [c["client"], c["group"], n(c["blocked"]), n(c["attempts"])] for c in report["top_clients"]
    ]
    names = [[Name(x["name"]), x["service"], n(x["blocked"])] for x in report["top_names"]]
    bypass = [
        [b["name"], b["id"], n(b["blocked"]), n(b["attempts"]), _num(b["clients"], lang)]
        for b in report["bypass"]
    ]
    gaps = [
        [
            _(GAP_WORDS[g["kind"]]) if g["kind"] in GAP_WORDS else g["kind"],
            _short_time(g["start"], lang),
            _short_time(g["end"], lang),
        ]
        for g in report["gaps"]
    ]
    # The central store's report: each site's own figures and gaps (the totals above
    # count a client's attempt once, whichever sites answered it).
    sites = [
        [
            s["site"],
            n(s["blocked"]),
            n(s["attempts"]),
            "; ".join(_gap_cell(g, lang) for g in s["gaps"]) or _("none"),
        ]
        for s in report.get("sites") or []
    ]
    # A report dict from before the changes were reported (a stored JSON) has none.
    changes = report.get("changes") or {
        "new_services": [],
        "lists": [],
        "policy": [],
        "policy_omitted": 0,
    }
    new_services = [
        [
            s["name"],
            s["id"],
            s["category"] or "",
            _("yes") if s["enabled"] else _("no"),
            _short_time(s["added"], lang),
        ]
        for s in changes["new_services"]
    ]
    list_changes = [
        [
            c["list"],
            _(LIST_CHANGE_WORDS.get(c["change"], c["change"])),
            _short_time(c["at"], lang),
            f"+{n(c['added'])}",
            "-" if c["removed"] is None else f"-{n(c['removed'])}",
            n(c["names"]),
            c["source"] or "",
        ]
        for c in changes["lists"]
    ]
    policy = [
        [_short_time(c["at"], lang), c["user"] or "", c["command"], c["comment"] or ""]
        for c in changes["policy"]
    ]
    if changes["policy_omitted"]:
        policy.append(
            [
                "",
                "",
                _(
                    "... and %(n)s more: sinkhole lists history",
                    n=n(changes["policy_omitted"]),
                ),
                "",
            ]
        )
    spans = _spans(report)
    if clients_recorded:
        no_clients = _("No clients.")
    elif any(p.clients in CLIENT_MODES for p in spans):
        no_clients = _("Clients are not listed in the current privacy mode: see the note below.")
    else:
        no_clients = _(
            "Clients are not recorded (privacy mode: %(mode)s).",
            mode=report["privacy"]["clients"],
        )
    top_title = _("Top clients")
    if clients_recorded and len(mode_runs(spans)) > 1:
        zi = zone(report["period"]["timezone"])
        dated = spans[-1].end - spans[0].start > 7 * 86400
        top_title = _("Top clients (%(modes)s)", modes=describe_modes(spans, zi, dated, lang))
    out = [
        (_("Summary"), ["", ""], summary, ""),
        (
            _("Services"),
            [
                _("Service"),
                _("Id"),
                _("Blocked"),
                _("Attempts"),
                _("Clients"),
                _("Previous"),
                _("Change"),
            ],
            services,
            _empty_line(report, lang),
        ),
        (
            _("Per day"),
            [_("Day"), _("Date"), _("Blocked"), _("Attempts"), _("Queries")],
            days,
            "",
        ),
        (
            _("Client groups"),
            [_("Group"), _("Blocked"), _("Attempts"), _("Clients")],
            groups,
            _("Client groups are not recorded (privacy mode: none)."),
        ),
        (top_title, [_("Client"), _("Group"), _("Blocked"), _("Attempts")], clients, no_clients),
        (
            _("Top blocked names"),
            [_("Name"), _("Service"), _("Blocked")],
            names,
            _("No blocked names."),
        ),
        (
            _("Bypass attempts (DoH, Private Relay, canary domains)"),
            [_("Bypass"), _("Id"), _("Blocked"), _("Attempts"), _("Clients")],
            bypass,
            _("No bypass attempts."),
        ),
        (
            _("Gaps in recording"),
            [_("Kind"), _("From"), _("To")],
            gaps,
            _("None: the server ran and recorded the whole period."),
        ),
        (
            _("New catalog services"),
            [_("Service"), _("Id"), _("Category"), _("Enabled"), _("First seen")],
            new_services,
            _("No service was added to the catalog."),
        ),
        (
            _("Imported lists"),
            [
                _("List"),
                _("Change"),
                _("When"),
                _("Added"),
                _("Removed"),
                _("Names"),
                _("Source"),
            ],
            list_changes,
            _("No list was imported, updated or removed."),
        ),
        (
            _("Policy changes"),
            [_("When"), _("Who"), _("Command"), _("Why")],
            policy,
            _("No other policy change."),
        ),
    ]
    if report.get("sites"):
        # After the gaps, so the sections' ids (DAYS_SECTION, ...) stay what they are.
        at = next(i for i, s in enumerate(out) if s[2] is gaps) + 1
        out.insert(
            at,
            (
                _("Sites"),
                [_("Site"), _("Blocked"), _("Attempts"), _("Gaps")],
                sites,
                "",
            ),
        )
    return out


def _gap_cell(gap: dict[str, Any], lang: Language) -> str:
    kind = lang._(GAP_WORDS[gap["kind"]]) if gap["kind"] in GAP_WORDS else gap["kind"]
    return lang._(
        "%(kind)s from %(start)s to %(end)s",
        kind=kind,
        start=_short_time(gap["start"], lang),
        end=_short_time(gap["end"], lang),
    )


def _spans(report: dict[str, Any]) -> list[Period]:
    """The report's privacy periods back as `Period`s."""
    return [
        Period(
            _ts_of(p["from"]),
            _ts_of(p["until"]),
            p["clients"],
            p["recorded"],
            None if p["rewritten"] is None else _ts_of(p["rewritten"]),
        )
        for p in report["privacy"]["periods"]
    ]


def _ts_of(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


def day_privacy(report: dict[str, Any], day: str, lang: Language) -> str:
    """The modes of one local day for the CSV: "ip", or "ip until 14:10, hashed since"."""
    zi = zone(report["period"]["timezone"])
    d = date.fromisoformat(day)
    lo = int(datetime.combine(d, datetime.min.time(), zi).timestamp())
    hi = int(datetime.combine(d + timedelta(days=1), datetime.min.time(), zi).timestamp())
    runs = [r for r in mode_runs(_spans(report)) if r[0] < hi and r[1] > lo]
    if len(runs) == 1:
        return runs[0][2]
    parts = [
        lang._("%(mode)s until %(when)s", mode=m, when=f"{datetime.fromtimestamp(end, zi):%H:%M}")
        for _, end, m in runs[:-1]
    ]
    return ", ".join([*parts, lang._("%(mode)s since", mode=runs[-1][2])])


def footer(report: dict[str, Any], lang: Language) -> list[str]:
    privacy = report["privacy"]
    lines = [
        lang._(
            "Privacy mode: %(mode)s; retention: %(days)s days. %(note)s",
            mode=privacy["clients"],
            days=lang.number(privacy["retention_days"]),
            note=privacy["note"],
        ),
        lang._(
            "An attempt is a run of one client's lookups of one service with no pause longer "
            "than %(minutes)s minutes; blocked queries count every lookup.",
            minutes=ATTEMPT_GAP_SECONDS // 60,
        ),
    ]
    return lines + _odd_days(report, lang)


#: A figure of the tables, right-aligned: "1234", "12.50%", "+3 (+25%)", and the French
#: forms, "1 234" (narrow no-break space), "12,5 %", "+3 (+25 %)".
_NUMERIC_RE = re.compile(
    r"[-+]?\d[\d\u202f]*([.,]\d+)?([\u00a0\u202f]?%)?( \([-+]?\d+[\u00a0\u202f]?%\))?|-"
)


def numeric(cell: str, lang: Language | None = None) -> bool:
    words = {"new", "n/a"} if lang is None else {lang._("new"), lang._("n/a")}
    return bool(_NUMERIC_RE.fullmatch(cell)) or cell in words
