"""The exceptions sinkhole raises; the CLI turns each into one line on stderr."""

from __future__ import annotations


class SinkholeError(Exception):
    """Something the administrator can fix; the message says what and where.

    Its parts are attributes, so that a caller that shows them elsewhere (a click
    option, a dashboard field) never parses the text: `where` (the file, database or
    option it is about), `key` (the key path inside it), `reason` (the rest). The
    message is the parts present, joined by ': '.
    """

    def __init__(self, reason: str, *, where: str | None = None, key: str | None = None) -> None:
        super().__init__(": ".join(p for p in (where, key, reason) if p))
        self.where = where
        self.key = key
        self.reason = reason


class ConfigError(SinkholeError):
    """The config file is missing, unreadable or has a bad key or value."""


class ListError(SinkholeError):
    """A catalog file or an imported list cannot be used."""


class StoreError(SinkholeError):
    """The SQLite database cannot be opened, migrated or written."""
