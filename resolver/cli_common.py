"""The click plumbing every `sinkhole` command shares: one-line errors, --config and --db,
the config, the store and the argument types. cli.py and the central store's commands
(resolver/central/commands.py) both build on it, so neither imports the other."""

from __future__ import annotations

import shlex
import sqlite3
from collections.abc import Callable
from typing import Any

import click

from resolver.config import CONFIG_ENV, DB_ENV, Config, load_config
from resolver.config import parse_duration as config_duration
from resolver.errors import SinkholeError


class SinkholeGroup(click.Group):
    """Turns every SinkholeError (and stray OS/SQLite errors) into one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SinkholeError as exc:
            raise click.ClickException(str(exc)) from None
        except sqlite3.Error as exc:
            raise click.ClickException(f"database: {exc}") from None
        except OSError as exc:
            name = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{name}{exc.strerror or exc}") from None


def common(f: Callable) -> Callable:
    """--config and --db, taken by every command."""
    f = click.option(
        "--db",
        "db",
        envvar=DB_ENV,
        type=click.Path(dir_okay=False),
        help="SQLite database (default: `database` of the config).",
    )(f)
    f = click.option(
        "--config",
        "config_path",
        envvar=CONFIG_ENV,
        type=click.Path(dir_okay=False),
        help="YAML config file (default: built-in defaults).",
    )(f)
    return f


def get_config(config_path: str | None, db: str | None) -> Config:
    config = load_config(config_path)
    return config.with_overrides(database=db)


def command_line(*args: str) -> str:
    """The command as typed, for the audit trail: `sinkhole block x.com`."""
    ctx = click.get_current_context()
    return shlex.join([*ctx.command_path.split(), *args])


def open_store(config: Config):
    """The database, with every catalog service given a row (config seeds new ones)."""
    from resolver.catalog import load_catalog
    from resolver.store import open_store as open_database

    catalog = load_catalog(config.catalog)
    store = open_database(config)
    store.seed(catalog, config.lists)
    return store, catalog


def parse_duration(text: str) -> int:
    try:
        return config_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def normalize_names(names: tuple[str, ...]) -> list[str]:
    from resolver.catalog import normalize_name

    out = []
    for n in names:
        try:
            out.append(normalize_name(n))
        except ValueError as exc:
            raise click.BadParameter(f"{n!r}: {exc}") from None
    return out
