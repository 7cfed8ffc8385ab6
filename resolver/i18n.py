"""French and English outside the dashboard: gettext catalogues read with Babel, and dates
and numbers as each language writes them. The weekly report and its mail use it, so it
lives outside resolver/web (the dashboard's extra) and Babel is a core dependency."""

from __future__ import annotations

import gettext
import io
import re
from datetime import date, datetime
from functools import cache
from pathlib import Path

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from babel.support import Translations

#: The report's catalogues (resolver/locale/LANG/LC_MESSAGES/messages.po).
LOCALE_DIR = Path(__file__).with_name("locale")
#: The source language first: English has no catalogue.
LANGUAGES = ("en", "fr")
DEFAULT_LANGUAGE = "en"


@cache
def load_translations(locale_dir: Path, lang: str) -> gettext.NullTranslations:
    """The catalogue of `lang` under `locale_dir`, compiled in memory from its .po file
    (no .mo to keep in step with the source in git)."""
    if lang == DEFAULT_LANGUAGE:
        return gettext.NullTranslations()
    po = locale_dir / lang / "LC_MESSAGES" / "messages.po"
    with po.open("rb") as f:
        catalog = read_po(f, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(buf)


def check_language(lang: str) -> str:
    """`lang` if it is one sinkhole speaks.

    Raises:
        ValueError: it is not.
    """
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r} (one of {', '.join(LANGUAGES)})")
    return lang


def percent_pattern(locale: Locale, decimals: str = ".0#") -> str:
    """The language's percent pattern with `decimals` (one or two by default):
    "#,##0.0#%" in English, "#,##0.0# %" (a no-break space before the sign) in French."""
    pattern = locale.percent_formats[None].pattern.split(";")[0]
    return re.sub(r"0(?=[^0]*$)", "0" + decimals, pattern, count=1)


class Language:
    """One language's messages, numbers and dates, for the report and its mail.

    English keeps the report's long-standing forms ("1234", "12.50%", "Mon 2026-03-23"),
    which scripts and tests read; French writes "1 234" (narrow no-break space),
    "12,5 %", "lun. 23 mars 2026".
    """

    def __init__(self, lang: str = DEFAULT_LANGUAGE) -> None:
        self.lang = check_language(lang)
        self.english = lang == "en"
        self.locale = Locale.parse(lang)
        self.translations = load_translations(LOCALE_DIR, lang)

    def _(self, message: str, **values: object) -> str:
        """The message in this language, with %(name)s filled from values."""
        text = self.translations.gettext(message)
        return text % values if values else text

    def ngettext(self, singular: str, plural: str, n: int, **values: object) -> str:
        text = self.translations.ngettext(singular, plural, n)
        return text % {"n": self.number(n), **values}

    def number(self, value: int | float) -> str:
        return str(value) if self.english else format_decimal(value, locale=self.locale)

    def signed(self, value: int) -> str:
        """+3, -2 (French: the same, with its digit grouping)."""
        return (
            f"{value:+d}"
            if self.english
            else ("+" if value >= 0 else "-") + self.number(abs(value))
        )

    def percent(self, share: float, digits: int = 2) -> str:
        if self.english:
            return f"{share:.{digits}%}"
        return format_percent(share, percent_pattern(self.locale), locale=self.locale)

    def signed_percent(self, share: float) -> str:
        """+25%, -50% (French: +25 %)."""
        if self.english:
            return f"{share:+.0%}"
        text = format_percent(abs(share), locale=self.locale)
        return ("+" if share >= 0 else "-") + text

    def weekday(self, day: date, english: str) -> str:
        """The short weekday: English's own three letters, "lun." in French."""
        return english if self.english else format_date(day, "EEE", locale=self.locale)

    def day(self, day: date, english: str) -> str:
        """A weekday and date: "Mon 2026-03-23", "lun. 23 mars 2026"."""
        if self.english:
            return f"{english} {day.isoformat()}"
        return format_date(day, "EEE d MMMM y", locale=self.locale)

    def long_date(self, day: date) -> str:
        """ "2 December 2026", "2 décembre 2026"."""
        return format_date(day, "d MMMM y", locale=self.locale)

    def moment(self, when: datetime, *, dated: bool, seconds: bool = False) -> str:
        """A moment in the report: "Tue 14:10", "Tue 2026-03-24 14:10"; French "mar. 14:10",
        "mar. 24 mars 2026 14:10"."""
        clock = "%H:%M:%S" if seconds else "%H:%M"
        if self.english:
            return when.strftime(f"%a %Y-%m-%d {clock}" if dated else f"%a {clock}")
        pattern = "EEE d MMM y HH:mm" if dated else "EEE HH:mm"
        return format_datetime(
            when, pattern + (":ss" if seconds else ""), tzinfo=when.tzinfo, locale=self.locale
        )


#: Marks a message for extraction where it is translated later, by Language._.
def N_(message: str) -> str:  # noqa: N802 - gettext's own name for it
    return message
