"""The exceptions sinkhole raises; the CLI turns each into one line on stderr."""


class SinkholeError(Exception):
    """Something the administrator can fix; the message says what and where."""


class ConfigError(SinkholeError):
    """The config file is missing, unreadable or has a bad key or value."""


class ListError(SinkholeError):
    """A catalog file or an imported list cannot be used."""


class StoreError(SinkholeError):
    """The SQLite database cannot be opened, migrated or written."""
