"""How the report words what the hits hold about clients: the privacy note and the modes
of a period ("IP addresses until Tue 14:10, pseudonyms since")."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from resolver.i18n import N_, Language
from resolver.privacy import Period

#: What the hits hold about clients in each mode, as the privacy note words it.
MODE_WORDS = {
    "ip": N_("IP addresses"),
    "hashed": N_("pseudonyms"),
    "group": N_("client groups only"),
    "none": N_("neither clients nor groups"),
}
#: What hits rewritten to each mode keep.
KEEP_WORDS = {
    "hashed": N_("pseudonyms instead of IP addresses"),
    "group": N_("the client group only"),
    "none": N_("neither client nor group"),
}
CLIENT_MODES = ("ip", "hashed")


def _when(ts: int, zi: ZoneInfo, dated: bool, lang: Language) -> str:
    """A moment for the note: "Tue 14:10", or with its date ("Tue 2026-03-24 14:10")."""
    return lang.moment(datetime.fromtimestamp(ts, zi), dated=dated)


def mode_runs(spans: list[Period]) -> list[tuple[int, int, str]]:
    """(start, end, mode) of the stretches that hold one mode, adjacent ones merged."""
    runs: list[tuple[int, int, str]] = []
    for p in spans:
        if runs and runs[-1][2] == p.clients:
            runs[-1] = (runs[-1][0], p.end, p.clients)
        else:
            runs.append((p.start, p.end, p.clients))
    return runs


def describe_modes(
    spans: list[Period], zi: ZoneInfo, dated: bool, lang: Language | None = None
) -> str:
    """ "IP addresses until Tue 14:10, pseudonyms since": which mode held when."""
    lang = lang or Language()
    runs = mode_runs(spans)
    if len(runs) == 1:
        return lang._(MODE_WORDS[runs[0][2]])
    parts = [
        lang._(
            "%(mode)s until %(when)s", mode=lang._(MODE_WORDS[m]), when=_when(end, zi, dated, lang)
        )
        for _, end, m in runs[:-1]
    ]
    return ", ".join([*parts, lang._("%(mode)s since", mode=lang._(MODE_WORDS[runs[-1][2]]))])


def _ranges(
    stretches: list[tuple[int, int]], t0: int, t1: int, zi: ZoneInfo, dated: bool, lang: Language
) -> str:
    """ "until Tue 14:10", "since Tue 14:10", "from Mon 09:00 to Tue 14:10", joined."""
    merged: list[tuple[int, int]] = []
    for lo, hi in stretches:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    words = []
    for lo, hi in merged:
        if lo <= t0 and hi >= t1:
            words.append(lang._("of the whole period"))
        elif lo <= t0:
            words.append(lang._("until %(when)s", when=_when(hi, zi, dated, lang)))
        elif hi >= t1:
            words.append(lang._("since %(when)s", when=_when(lo, zi, dated, lang)))
        else:
            words.append(
                lang._(
                    "from %(start)s to %(end)s",
                    start=_when(lo, zi, dated, lang),
                    end=_when(hi, zi, dated, lang),
                )
            )
    return lang._(" and ").join(words)


def privacy_note(
    spans: list[Period],
    config_mode: str,
    listed: bool,
    approximate: bool,
    retention_days: int,
    t0: int,
    t1: int,
    zi: ZoneInfo,
    now: datetime,
    lang: Language,
) -> str:
    """What the hits of the period hold about clients and since when, what the report
    therefore shows, and what retention may have taken."""
    _ = lang._
    notes = {
        "ip": N_("Clients are recorded by IP address."),
        "hashed": N_("Clients are recorded as pseudonyms; their IP addresses are not stored."),
        "group": N_("Clients are not recorded, only the group of their network."),
        "none": N_("Neither clients nor their groups are recorded."),
    }
    dated = t1 - t0 > 7 * 86400
    modes = {p.clients for p in spans}
    if len(modes) == 1:
        parts = [_(notes[spans[0].clients])]
    else:
        parts = [
            _("Recorded about clients: %(modes)s.", modes=describe_modes(spans, zi, dated, lang))
        ]
    for when in sorted({p.rewritten for p in spans if p.rewritten is not None}):
        done = [p for p in spans if p.rewritten == when]
        what = _ranges([(p.start, p.end) for p in done], t0, t1, zi, dated, lang)
        parts.append(
            _(
                "The hits %(what)s were rewritten on %(when)s by sinkhole privacy apply: "
                "they keep %(kept)s.",
                what=what,
                when=_when(when, zi, True, lang),
                kept=_(KEEP_WORDS[done[0].clients]),
            )
        )
    with_clients = [(p.start, p.end) for p in spans if p.clients in CLIENT_MODES]
    if listed and len(with_clients) < len(spans):
        parts.append(
            _(
                "Client counts and top clients cover only the hits %(what)s, which hold "
                "client identities.",
                what=_ranges(with_clients, t0, t1, zi, dated, lang),
            )
        )
    if listed and set(CLIENT_MODES) <= modes:
        parts.append(
            _(
                "A client recorded both ways counts twice, by address and by pseudonym; "
                "sinkhole privacy apply makes them one."
            )
        )
    if not listed and with_clients:
        parts.append(
            _(
                "Clients are not listed: privacy.clients is now %(mode)s, though the hits "
                "%(what)s hold client identities; sinkhole privacy apply rewrites them.",
                mode=config_mode,
                what=_ranges(with_clients, t0, t1, zi, dated, lang),
            )
        )
    if approximate:
        anonymous = modes - set(CLIENT_MODES)
        if anonymous == {"none"}:
            parts.append(
                _(
                    "Attempts are approximate: without client addresses they are counted per "
                    "service."
                )
            )
        else:
            parts.append(
                _(
                    "Attempts are approximate: without client addresses they are counted per "
                    "client group."
                )
            )
    horizon = now.timestamp() - retention_days * 86400
    if t0 < horizon:
        parts.append(
            _(
                "Hits older than %(days)s days are deleted, so part of this period may be missing.",
                days=lang.number(retention_days),
            )
        )
    return " ".join(parts)
