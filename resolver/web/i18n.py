"""The dashboard's languages: gettext catalogues (Babel), the choice per request, formats."""

from __future__ import annotations

import gettext
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale
from babel.core import negotiate_locale
from babel.dates import format_datetime
from babel.numbers import format_decimal, format_percent

from resolver.i18n import DEFAULT_LANGUAGE, LANGUAGES, load_translations, percent_pattern

#: The dashboard's own catalogues; the report's are in resolver/locale (resolver.i18n).
LOCALE_DIR = Path(__file__).with_name("locale")
LANGUAGE_NAMES = {"en": "English", "fr": "Français"}
LANG_COOKIE = "sinkhole_lang"
__all__ = ["DEFAULT_LANGUAGE", "LANGUAGES", "Formats", "choose_language", "translations"]


def translations(lang: str) -> gettext.NullTranslations:
    """The dashboard's catalogue of `lang`, read from its .po file (as the report's)."""
    return load_translations(LOCALE_DIR, lang)


def parse_accept_language(header: str) -> list[str]:
    """The languages of an Accept-Language header, best first (RFC 9110 §12.5.4)."""
    weighted = []
    for i, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and q > 0:
            weighted.append((-q, i, tag.strip().replace("-", "_")))
    return [tag for _, _, tag in sorted(weighted)]


def choose_language(query: str | None, cookie: str | None, accept: str | None) -> str:
    """?lang= beats the cookie (the switch), which beats the browser's Accept-Language."""
    for explicit in (query, cookie):
        if explicit in LANGUAGES:
            return explicit
    if accept:
        preferred = [t.split("_")[0].lower() for t in parse_accept_language(accept)]
        found = negotiate_locale(preferred, list(LANGUAGES))
        if found:
            return found
    return DEFAULT_LANGUAGE


class Formats:
    """Numbers and dates as the language writes them, in the site's time zone."""

    def __init__(self, lang: str, tz: str) -> None:
        self.lang = lang
        self.locale = Locale.parse(lang)
        self.zone = ZoneInfo(tz)

    def number(self, value: int | float | None) -> str:
        if value is None:
            return "–"
        return format_decimal(value, locale=self.locale)

    def percent(self, value: float | None) -> str:
        if value is None:
            return "–"
        # One or two decimals, the sign as the language places it: "12.5%", "12,5 %".
        return format_percent(value, format=percent_pattern(self.locale, ".0"), locale=self.locale)

    def datetime(self, ts: int | float | str | None, fmt: str = "medium") -> str:
        if ts is None or ts == "":
            return "–"
        when = (
            datetime.fromisoformat(ts)
            if isinstance(ts, str)
            else datetime.fromtimestamp(ts, self.zone)
        )
        return format_datetime(when, format=fmt, tzinfo=self.zone, locale=self.locale)

    def time(self, ts: int) -> str:
        return format_datetime(
            datetime.fromtimestamp(ts, self.zone), "HH:mm:ss", tzinfo=self.zone, locale=self.locale
        )
