"""`sinkhole central init|push|purge` and `sinkhole sites`: the central store's commands."""

from __future__ import annotations

import json
import time

import click

from resolver.central import CentralError, connect, first_line, psycopg, require_central
from resolver.cli_common import SinkholeGroup, common, get_config, parse_duration


def register(cli: click.Group) -> None:
    """Add the central store's commands to the `sinkhole` group (resolver/cli.py)."""

    @cli.group("central", cls=SinkholeGroup)
    def central_group() -> None:
        """The central store on PostgreSQL shared by many sites (docs/operations.md)."""

    @central_group.command("init")
    @common
    def central_init(config_path, db) -> None:
        """Create the central schema, or migrate it to this version.

        Example: sinkhole central init --config /etc/sinkhole/config.yaml
        """
        from resolver.central.schema import migrate

        central = require_central(get_config(config_path, db))
        pg = psycopg()
        try:
            with connect(central) as conn:
                before, after = migrate(conn)
        except pg.Error as exc:
            raise CentralError(f"central store: {first_line(exc)}") from None
        if before == after:
            click.echo(f"central schema is current (version {after})")
        elif before == 0:
            click.echo(f"central schema created (version {after})")
        else:
            click.echo(f"central schema migrated from version {before} to {after}")

    @central_group.command("push")
    @common
    def central_push(config_path, db) -> None:
        """Seed the central store from this site's database: its policy and audit trail
        when the central store has no policy yet, and its hits and traffic. Idempotent.

        Example: sinkhole central push --config /etc/sinkhole/config.yaml
        """
        from resolver.central.policy import push_policy
        from resolver.central.shipper import ship_all
        from resolver.store import Store

        config = get_config(config_path, db)
        central = require_central(config)
        Store(config.database).close()  # creates or migrates the file
        seeded, version = push_policy(central, config.database)
        if seeded:
            click.echo(f"central policy seeded from {config.database} (version {version})")
        else:
            click.echo(f"central policy kept (version {version}): it is not replaced")
        sent, left = ship_all(central, config.database)
        click.echo(f"site {central.site}: {sent} rows sent, {left} waiting")

    @central_group.command("purge")
    @common
    @click.option("--older-than", required=True, help="Drop the months entirely before: 400d.")
    def central_purge(config_path, db, older_than) -> None:
        """Drop the central store's monthly partitions older than the given age.

        Example: sinkhole central purge --older-than 400d
        """
        from resolver.central.schema import drop_partitions_before, require_schema

        central = require_central(get_config(config_path, db))
        before = int(time.time()) - parse_duration(older_than)
        pg = psycopg()
        try:
            with connect(central) as conn:
                require_schema(conn)
                dropped = drop_partitions_before(conn, before)
        except pg.Error as exc:
            raise CentralError(f"central store: {first_line(exc)}") from None
        click.echo(
            f"dropped {len(dropped)} monthly partitions"
            + (f": {', '.join(dropped)}" if dropped else "")
        )

    @cli.command("sites")
    @common
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def sites(config_path, db, as_json) -> None:
        """The sites of the central store: last contact, backlog, policy version.

        Example: sinkhole sites --json
        """
        from resolver.central.report import sites_status
        from resolver.presentation import strip_controls

        rows = sites_status(require_central(get_config(config_path, db)))
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            click.echo("no site has reached the central store yet")
            return
        for r in rows:
            click.echo(
                f"{strip_controls(r['site']):<24} last contact {r['last_contact'] or '-'}  "
                f"backlog {r['backlog']}  oldest unshipped {r['oldest_unshipped'] or '-'}  "
                f"policy {r['policy_version'] if r['policy_version'] is not None else '-'}  "
                f"hits {r['hits']}" + (f"  DROPPED {r['dropped']}" if r["dropped"] else "")
            )
