"""The `sinkhole` command: a thin click layer over config, catalog, policy, store and server."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from resolver import __version__
from resolver.cli_common import (
    SinkholeGroup,
    command_line,
    common,
    get_config,
    normalize_names,
    open_store,
    parse_duration,
)
from resolver.config import CONFIG_ENV
from resolver.errors import ConfigError, SinkholeError
from resolver.presentation import display_name


@click.group(cls=SinkholeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sinkhole")
def cli() -> None:
    """A DNS sinkhole for AI chatbot services: blocks, forwards, records.

    Example: sinkhole serve --listen 127.0.0.1:1053
    """


@cli.command()
@common
@click.option("--listen", multiple=True, help="HOST:PORT to listen on (repeatable; [::1]:53).")
@click.option("--upstream", multiple=True, help="HOST[:PORT] of an upstream (repeatable).")
def serve(config_path: str | None, db: str | None, listen: tuple, upstream: tuple) -> None:
    """Run the DNS server until SIGTERM or Ctrl-C; SIGHUP reloads config and catalog.

    Example: sinkhole serve --config /etc/sinkhole/config.yaml
    """
    from resolver.config import parse_hostport
    from resolver.serve import run_server

    config = get_config(config_path, db)
    overrides: dict[str, Any] = {"database": db}
    for key, entries, option in (
        ("listen", listen, "--listen"),
        ("upstreams", upstream, "--upstream"),
    ):
        for entry in entries:
            try:
                parse_hostport(entry, 53, option)
            except ConfigError as exc:
                raise click.BadParameter(exc.reason, param_hint=option) from None
        if entries:
            overrides[key] = tuple(entries)
    config = config.with_overrides(**overrides)
    config.upstream_addresses()  # no upstream at all: one clear line now, not at first query
    sys.exit(run_server(config, {k: v for k, v in overrides.items() if v is not None}))


@cli.command()
@common
@click.argument("name")
@click.option("--client", help="Client IP address, for client groups and their exemptions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(config_path, db, name: str, client: str | None, as_json: bool) -> None:
    """Say whether NAME is blocked or allowed, and by which rule; exit 0 either way.

    Example: sinkhole check chat.openai.com --client 10.1.9.20
    """
    from resolver.policy import build_policy

    if client is not None:
        import ipaddress

        try:
            ipaddress.ip_address(client)
        except ValueError:
            raise click.BadParameter(
                f"{client!r} is not an IP address", param_hint="--client"
            ) from None
    qname = normalize_names((name,))[0]
    config = get_config(config_path, db)
    store, catalog = open_store(config)
    with store:
        policy = build_policy(catalog, store.policy_state(), config)
    d = policy.explain(qname, client)
    action = policy.action_of(d.match[0]) if d.match else None
    result: dict[str, Any] = {
        "name": qname,
        "blocked": d.blocked,
        "client": client,
        "group": d.group,
    }
    if d.match:
        rule, pattern = d.match
        result["rule"] = {
            "pattern": pattern,
            "category": rule.category,
            "service": rule.service,
            "service_name": rule.service_name,
            "source": rule.source,
            "action": action,
        }
    if d.allow:
        result["allow"] = {"pattern": d.allow[1], "source": d.allow[0].source}
    result["exempted"] = [{"pattern": p, "service": r.service} for r, p in d.exempted]
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    who = f" for client {client}" + (f" (group {d.group})" if d.group else "") if client else ""
    if d.blocked:
        rule, pattern = d.match
        what = f"service {rule.service} ({rule.service_name})" if rule.service else rule.category
        click.echo(f"{qname}: BLOCKED{who} by rule {pattern} of {what}; answer: {action}")
        click.echo(f"  source: {rule.source}")
    else:
        click.echo(f"{qname}: allowed{who}")
        if d.allow:
            click.echo(f"  allow rule {d.allow[1]} ({d.allow[0].source}) beats block rules")
            if d.match:
                click.echo(f"  would otherwise be blocked by {d.match[1]} ({d.match[0].label})")
        elif not d.exempted:
            click.echo("  no block rule matches; it is forwarded upstream")
    for rule, pattern in d.exempted:
        click.echo(f"  group {d.group} is exempt from {rule.service}: rule {pattern} not applied")


# -- lists --------------------------------------------------------------------------------


@cli.group(cls=SinkholeGroup, invoke_without_command=True)
@common
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def lists(ctx: click.Context, config_path, db, as_json: bool) -> None:
    """Catalog services and imported lists, enabled or not, with counts.

    Example: sinkhole lists enable ai-chatbots
    """
    if ctx.invoked_subcommand is not None:
        return
    from resolver.admin import list_overview

    config = get_config(config_path, db)
    store, catalog = open_store(config)
    with store:
        out, new = list_overview(store, catalog)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    width = max((len(r["name"]) for r in out), default=4)
    click.echo(f"{'NAME':<{width}}  {'ON':<3}  {'NAMES':>7}  {'CATEGORY':<12}  TITLE")
    for r in out:
        on = "yes" if r["enabled"] else "no"
        api = ""
        if r.get("api"):
            api = f" [api {'blocked' if r['api_blocked'] else 'allowed'}: {r['name']}:api]"
        mark = "  NEW" if r.get("new") else ""
        click.echo(
            f"{r['name']:<{width}}  {on:<3}  {r['domains']:>7}  {r['category']:<12}  "
            f"{r['title']}{api}{mark}"
        )
    if new:
        click.echo(f"NEW: {len(new)} services added to the catalog at the last start or since")


def _toggle(config_path, db, names, comment, enabled: bool) -> None:
    from resolver.admin import toggle_lists

    config = get_config(config_path, db)
    store, catalog = open_store(config)
    with store:
        targets = toggle_lists(
            store, catalog, names, enabled, command=command_line(*names), comment=comment
        )
    verb = "enabled" if enabled else "disabled"
    click.echo(f"{verb}: {', '.join(targets)}")


@lists.command("enable")
@common
@click.argument("names", nargs=-1, required=True)
@click.option("--comment", help="Why; kept in the audit trail.")
def lists_enable(config_path, db, names, comment) -> None:
    """Enable catalog services (an id, a whole category, ID:api) or imported lists.

    Example: sinkhole lists enable openai-chatgpt anthropic-claude
    """
    _toggle(config_path, db, names, comment, True)


@lists.command("disable")
@common
@click.argument("names", nargs=-1, required=True)
@click.option("--comment", help="Why; kept in the audit trail.")
def lists_disable(config_path, db, names, comment) -> None:
    """Disable catalog services or imported lists; ID:api allows only a service's API.

    Example: sinkhole lists disable openai-chatgpt:api --comment "approved integration"
    """
    _toggle(config_path, db, names, comment, False)


LIST_FORMATS = ["auto", "hosts", "domains", "adblock", "v2fly", "adguard-services"]
#: Invalid lines printed by `lists import` and `lists update`; the rest are counted.
SHOWN_ERRORS = 20


def format_option(f: Callable) -> Callable:
    """--format and --service, shared by `lists import` and `catalog compare`."""
    f = click.option(
        "--service",
        "services",
        multiple=True,
        metavar="ID|GROUP",
        help="adguard-services: only these service ids or groups, e.g. ai (repeatable).",
    )(f)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(LIST_FORMATS),
        default="auto",
        show_default=True,
        help="Format of the source (v2fly: a domain-list-community data file).",
    )(f)


def progress_bar(source: str):
    """A progress bar on stderr when it is a terminal: (bar or None, callback or None)."""
    if not sys.stderr.isatty():
        return None, None
    bar = click.progressbar(length=0, label=f"reading {source}", file=sys.stderr)

    def progress(done: int, total: int | None) -> None:
        if total:
            bar.length = total
        bar.update(done - bar.pos)

    return bar, progress


def read_list(source: str, fmt: str, services: tuple[str, ...] = (), **fetch):
    """Fetch and parse a list, printing its first invalid lines on stderr: (result, fetched).

    `fetched.lines` is None when a conditional request found the list unchanged.
    """
    from resolver.listformats import fetch_source, parse_lines, v2fly_includes

    bar, progress = progress_bar(source)
    try:
        fetched = fetch_source(source, progress=progress, **fetch)
    finally:
        if bar is not None:
            bar.render_finish()
    if fetched.lines is None:
        return None, fetched
    include = v2fly_includes(source) if fmt in ("auto", "v2fly") else None
    result = parse_lines(fetched.lines, fmt, source, include=include, services=services)
    for message in result.messages()[:SHOWN_ERRORS]:
        click.echo(message, err=True)
    if len(result.errors) > SHOWN_ERRORS:
        more = len(result.errors) - SHOWN_ERRORS
        click.echo(f"{source}: ... and {more} more invalid lines", err=True)
    return result, fetched


@lists.command("import")
@common
@click.argument("source")
@click.option("--name", "list_name", required=True, help="Name of the imported list.")
@format_option
@click.option("--comment", help="Why; kept in the audit trail.")
def lists_import(config_path, db, source, list_name, fmt, services, comment) -> None:
    """Import a list from a file or http(s) URL; re-importing replaces it atomically.

    A list imported from a URL is fetched again by `sinkhole lists update`.

    Example: sinkhole lists import https://example.org/ai.txt --name extra-ai
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", list_name) or ":" in list_name:
        raise click.BadParameter("letters, digits, '.', '_' and '-' only", param_hint="--name")
    config = get_config(config_path, db)
    from resolver.admin import store_fetched_list

    result, fetched = read_list(source, fmt, services)
    store, _catalog = open_store(config)
    with store:
        store_fetched_list(
            store,
            list_name,
            result,
            fetched,
            source=source,
            services=services,
            command=command_line(source, "--name", list_name),
            comment=comment,
        )
    click.echo(
        f"imported {len(result.domains)} names ({len(result.allow)} allowed) into {list_name} "
        f"from {source} as {result.format}; {len(result.errors)} invalid lines skipped"
    )


@lists.command("remove")
@common
@click.argument("name")
@click.option("--comment", help="Why; kept in the audit trail.")
def lists_remove(config_path, db, name, comment) -> None:
    """Remove an imported list.

    Example: sinkhole lists remove extra-ai
    """
    config = get_config(config_path, db)
    store, _ = open_store(config)
    with store:
        store.remove_list(name, command=command_line(name), comment=comment)
    click.echo(f"removed list {name}")


#: Names printed per list by `lists update`; the rest are counted.
SHOWN_CHANGES = 50


@lists.command("update")
@common
@click.argument("names", nargs=-1)
@click.option("--comment", help="Why; kept in the audit trail.")
def lists_update(config_path, db, names, comment) -> None:
    """Fetch the lists imported from URLs again and replace those that changed.

    Conditional requests: an unchanged list (HTTP 304) is left alone. A failed
    fetch, an empty list or one that would lose half of its names keeps the old
    list and makes the command exit 1, so a timer's failure shows.

    Example: sinkhole lists update extra-ai
    """
    config = get_config(config_path, db)
    store, _catalog = open_store(config)
    with store:
        targets = store.url_lists(names)
        if not targets:
            click.echo("no list was imported from a URL; nothing to update")
            return
        failed = sum(not _update_one(store, row, comment) for row in targets)
    if failed:
        sys.exit(1)


def _update_one(store, row: dict, comment: str | None) -> bool:
    """Fetch one URL list again and replace it if it changed; False when it failed."""
    from resolver.admin import store_fetched_list

    name, source = row["name"], row["source"]
    services = tuple(json.loads(row["services"])) if row["services"] else ()
    try:
        result, fetched = read_list(
            source,
            row["format"] or "auto",
            services,
            etag=row["etag"],
            last_modified=row["last_modified"],
        )
        if result is None:
            store.list_checked(name)
            click.echo(f"{name}: not modified since the last fetch ({source})")
            return True
        change = store_fetched_list(
            store,
            name,
            result,
            fetched,
            source=source,
            services=services,
            command=command_line(name),
            comment=comment,
            guard=True,
        )
    except SinkholeError as exc:
        message = exc.reason if exc.where == name else str(exc)
        if "old list is kept" not in message:
            message = f"{message}; the old list is kept"
        click.echo(f"sinkhole: {name}: {message}", err=True)
        return False
    click.echo(
        f"{name}: {change.names} names, +{len(change.added)} -{len(change.removed)} ({source})"
    )
    for sign, names in (("+", change.added), ("-", change.removed)):
        for n in names[:SHOWN_CHANGES]:
            click.echo(f"  {sign} {display_name(n)}")
        if len(names) > SHOWN_CHANGES:
            click.echo(f"  {sign} ... and {len(names) - SHOWN_CHANGES} more")
    return True


@lists.command("history")
@common
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def lists_history(config_path, db, limit, as_json) -> None:
    """The audit trail of policy changes: when, who, which command, why.

    Example: sinkhole lists history --limit 10
    """
    config = get_config(config_path, db)
    store, _ = open_store(config)
    with store:
        rows = store.history(limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no policy changes recorded yet")
    for r in rows:
        why = f"  # {r['comment']}" if r["comment"] else ""
        click.echo(f"{r['ts']}  {r['user']:<10}  {r['command']}{why}")


# -- catalog ------------------------------------------------------------------------------


@cli.group("catalog", cls=SinkholeGroup)
def catalog_group() -> None:
    """Check the shipped catalog against the lists other projects maintain."""


@catalog_group.command("compare")
@common
@click.argument("source")
@format_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def catalog_compare(config_path, db, source, fmt, services, as_json) -> None:
    """List what SOURCE has that the enabled policy does not block, by domain.

    SOURCE is a file or URL: AdGuard services JSON, a v2fly data file, hosts,
    plain domains or adblock. Names the must-not-block list beside the catalog
    calls shared (office suites, search, CDNs) are shown apart. Changes nothing.

    Example: sinkhole catalog compare services.json --service ai
    """
    from resolver.compare import compare, must_not_block
    from resolver.policy import build_policy

    config = get_config(config_path, db)
    result, _fetched = read_list(source, fmt, services)
    store, catalog = open_store(config)
    with store:
        policy = build_policy(catalog, store.policy_state(), config)
    cmp = compare(result, policy, must_not_block(catalog.directory))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "source": source,
                    "format": result.format,
                    "names": cmp.total,
                    "blocked": cmp.blocked,
                    "missing": cmp.missing,
                    "shared": cmp.shared,
                    "origin": {n: result.origin.get(n) for v in cmp.missing.values() for n in v},
                },
                indent=2,
            )
        )
        return
    missing = sum(len(v) for v in cmp.missing.values())
    click.echo(
        f"{source} ({result.format}): {cmp.total} names; {cmp.blocked} blocked by the enabled "
        f"policy, {missing} not blocked in {len(cmp.missing)} domains, "
        f"{len(cmp.shared)} shared (must-not-block)"
    )
    for domain, names in cmp.missing.items():
        click.echo(f"{display_name(domain)} ({len(names)})")
        for n in names:
            where = f"  [{result.origin[n]}]" if n in result.origin else ""
            click.echo(f"  {display_name(n)}{where}")
    if cmp.shared:
        click.echo("shared, never blocked by the catalog (must-not-block):")
        for n in cmp.shared:
            click.echo(f"  {display_name(n)}")


# -- custom rules ---------------------------------------------------------------------------


def _rules(config_path, db, names, comment, action: str, add: bool) -> None:
    from resolver.admin import edit_rules

    patterns = normalize_names(names)
    config = get_config(config_path, db)
    store, _ = open_store(config)
    with store:
        edit = edit_rules(
            store, patterns, action, add, command=command_line(*patterns), comment=comment
        )
    if add:
        click.echo(f"{action}: {', '.join(edit.done)}")
        return
    if edit.done:
        click.echo(f"removed {action} rule: {', '.join(edit.done)}")
    if edit.missing:
        raise SinkholeError(f"no {action} rule for {', '.join(edit.missing)}")


def _rule_command(name: str, action: str, add: bool, doc: str) -> None:
    @cli.command(name, help=doc)
    @common
    @click.argument("names", nargs=-1, required=True)
    @click.option("--comment", help="Why; kept in the audit trail.")
    def command(config_path, db, names, comment) -> None:
        _rules(config_path, db, names, comment, action, add)


_rule_command(
    "block",
    "block",
    True,
    "Block NAMEs and every name under them (*.x: only under x).\n\n"
    "Example: sinkhole block chat.example.com --comment 'ticket 4711'",
)
_rule_command(
    "unblock",
    "block",
    False,
    "Remove custom block rules.\n\nExample: sinkhole unblock chat.example.com",
)
_rule_command(
    "allow",
    "allow",
    True,
    "Allow NAMEs; an allow rule beats every block rule.\n\n"
    "Example: sinkhole allow api.openai.com --comment 'approved integration'",
)
_rule_command(
    "unallow", "allow", False, "Remove allow rules.\n\nExample: sinkhole unallow api.openai.com"
)


@cli.group("groups", cls=SinkholeGroup, invoke_without_command=True)
@common
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def groups(ctx: click.Context, config_path, db, as_json: bool) -> None:
    """Client groups: their networks (config) and the services they may use (config and
    policy; a group may use the services of both).

    Example: sinkhole groups exempt ai-lab openai-chatgpt
    """
    if ctx.invoked_subcommand is not None:
        return
    from resolver.admin import group_overview

    config = get_config(config_path, db)
    store, _ = open_store(config)
    with store:
        out = group_overview(store, config)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    if not out:
        click.echo("no client groups (clients.groups in the config)")
    for g in out:
        nets = ", ".join(g["networks"]) or "no networks in this config"
        click.echo(f"{g['label']}: {nets}")
        click.echo(f"  exempt (config): {', '.join(g['exempt_config']) or '-'}")
        click.echo(f"  exempt (policy): {', '.join(g['exempt_policy']) or '-'}")


def _group_exempt(config_path, db, label, names, comment, exempt: bool) -> None:
    from resolver.admin import edit_group_exempt

    config = get_config(config_path, db)
    store, catalog = open_store(config)
    with store:
        done, same = edit_group_exempt(
            store,
            catalog,
            label,
            names,
            exempt,
            command=command_line(label, *names),
            comment=comment,
        )
    verb = "may now use" if exempt else "may no longer use"
    if done:
        click.echo(f"group {label} {verb}: {', '.join(done)}")
    if same:
        state = "already exempt" if exempt else "not exempt in the policy"
        click.echo(f"group {label} {state}: {', '.join(same)}")
    if label not in config.clients.groups:
        click.echo(
            f"note: this config has no group {label!r} (clients.groups.{label}.networks): "
            "the exemption applies on the sites whose config has it",
            err=True,
        )


@groups.command("exempt")
@common
@click.argument("label")
@click.argument("names", nargs=-1, required=True)
@click.option("--comment", help="Why; kept in the audit trail.")
def groups_exempt(config_path, db, label, names, comment) -> None:
    """Let client group LABEL use catalog services (ids or categories), in the policy.

    Example: sinkhole groups exempt ai-lab openai-chatgpt --comment "pilot, ticket 4711"
    """
    _group_exempt(config_path, db, label, names, comment, True)


@groups.command("unexempt")
@common
@click.argument("label")
@click.argument("names", nargs=-1, required=True)
@click.option("--comment", help="Why; kept in the audit trail.")
def groups_unexempt(config_path, db, label, names, comment) -> None:
    """Remove exemptions set with `groups exempt` (the config's stay).

    Example: sinkhole groups unexempt ai-lab openai-chatgpt
    """
    _group_exempt(config_path, db, label, names, comment, False)


@cli.command("export")
@common
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["hosts", "domains", "dnsmasq", "unbound", "rpz", "adblock"]),
    help="Output format, for another resolver or blocker.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File (default stdout).")
def export_cmd(config_path, db, fmt, output) -> None:
    """Export what is blocked and allowed now, for Pi-hole, AdGuard, dnsmasq, Unbound, BIND.

    Example: sinkhole export --format dnsmasq -o /etc/dnsmasq.d/ai-chatbots.conf
    """
    from resolver.admin import export_policy

    config = get_config(config_path, db)
    store, catalog = open_store(config)
    with store:
        out = export_policy(
            store,
            catalog,
            config,
            fmt,
            header=f"exported by sinkhole {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        )
    if output:
        Path(output).write_text(out.text)
        click.echo(f"wrote {out.block} block and {out.allow} allow patterns to {output}", err=True)
    else:
        click.echo(out.text, nl=False)


# -- hits and retention -------------------------------------------------------------------


@cli.command()
@common
@click.option("--since", default="24h", show_default=True, help="How far back: 30m, 24h, 7d.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--site",
    "sites",
    multiple=True,
    metavar="NAME",
    help="With a central store: only this site (repeatable; default: all).",
)
def hits(config_path, db, since, limit, as_json, sites) -> None:
    """Recent blocked attempts, newest first.

    Example: sinkhole hits --since 7d --limit 20
    """
    from resolver.admin import hits_since

    seconds = parse_duration(since)
    config = get_config(config_path, db)
    if sites and config.central is None:
        raise click.UsageError("--site needs a central section in the config")
    rows = hits_since(config, int(time.time()) - seconds, limit, sites)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no blocked attempts in the last {since}")
        return
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"]))
        who = r["client"] or r["client_group"] or "-"
        count = f" x{r['count']}" if r["count"] > 1 else ""
        site = f"{r['site']:<16}  " if "site" in r else ""
        click.echo(
            f"{when}  {site}{who:<20}  {r['qtype']:<6} {r['qname']}  "
            f"({r['service'] or r['category']}: {r['rule']}, {r['action']}){count}"
        )


@cli.command()
@common
@click.option("--week", metavar="YYYY-Www", help="ISO week to report, like 2026-W47.")
@click.option("--last-week", is_flag=True, help="The last complete ISO week (the default).")
@click.option(
    "--since",
    metavar="WHEN",
    help="Start: a date (2026-03-23), a date and time, or a duration before now (7d).",
)
@click.option("--until", metavar="WHEN", help="End, excluded (default: now); needs --since.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "html", "csv", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write to FILE instead of stdout; {week} in FILE becomes the ISO week.",
)
@click.option(
    "--mail-to",
    multiple=True,
    metavar="ADDR",
    help="Mail the report (text and HTML) through the smtp config (repeatable).",
)
@click.option(
    "--top", default=10, show_default=True, type=click.IntRange(1, 1000), help="Top rows."
)
@click.option(
    "--lang",
    type=click.Choice(["en", "fr"]),
    help="Language of the report and its mail (default: report.lang of the config, else en).",
)
@click.option(
    "--site",
    "sites",
    multiple=True,
    metavar="NAME",
    help="With a central store: only this site (repeatable; default: all).",
)
def report(
    config_path: str | None,
    db: str | None,
    week: str | None,
    last_week: bool,
    since: str | None,
    until: str | None,
    fmt: str,
    output: str | None,
    mail_to: tuple[str, ...],
    top: int,
    lang: str | None,
    sites: tuple[str, ...],
) -> None:
    """Report of blocked attempts per service, day and group, with gaps in recording.

    Example: sinkhole report --last-week --format html -o report-{week}.html
    """
    from resolver import report as rpt
    from resolver.admin import build_report_for
    from resolver.catalog import load_catalog

    if sum(1 for x in (week, last_week, since) if x) > 1:
        raise click.UsageError("give one of --week, --last-week and --since")
    if until and not since:
        raise click.UsageError("--until needs --since")
    config = get_config(config_path, db)
    if mail_to and not config.smtp:
        raise click.UsageError("--mail-to needs an smtp section in the config")
    tz = config.timezone or rpt.local_timezone()
    start, end = rpt.parse_range(since, until, tz) if since else rpt.week_bounds(week, tz)
    catalog = load_catalog(config.catalog)
    if sites and config.central is None:
        raise click.UsageError("--site needs a central section in the config")
    data = build_report_for(config, catalog, start, end, tz=tz, top=top, lang=lang, sites=sites)
    text = rpt.RENDERERS[fmt](data)
    if output:
        label = data["period"]["week"] or data["period"]["start"][:10]
        path = Path(output.replace("{week}", label))
        # Write then rename, so an archive never holds half a report.
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    if mail_to:
        from resolver.mailer import send_report

        send_report(data, to=list(mail_to), smtp=config.smtp)
    if not output and not mail_to:
        # With -o or --mail-to stdout stays empty: cron mails whatever a job prints.
        click.echo(text, nl=False)


@cli.command()
@common
@click.option("--older-than", help="Age of the hits to delete (default: retention_days).")
def purge(config_path, db, older_than) -> None:
    """Delete recorded hits older than the retention period.

    Example: sinkhole purge --older-than 30d
    """
    from resolver.store import open_store as open_database

    config = get_config(config_path, db)
    seconds = parse_duration(older_than) if older_than else config.privacy.retention_days * 86_400
    with open_database(config) as store:
        n = store.purge(int(time.time()) - seconds)
    click.echo(f"deleted {n} hits older than {older_than or f'{config.privacy.retention_days}d'}")


@cli.group("privacy", cls=SinkholeGroup)
def privacy_group() -> None:
    """What the stored hits say about clients (privacy.clients)."""


@privacy_group.command("apply")
@common
@click.option("--dry-run", is_flag=True, help="Count the hits to rewrite; change nothing.")
@click.option("--comment", help="Why; kept in the audit trail.")
def privacy_apply(config_path, db, dry_run, comment) -> None:
    """Rewrite the stored hits to privacy.clients where it is stricter than they are.

    ip -> hashed -> group -> none, never the other way. Runs in short batches beside a
    running server; safe to interrupt and run again.

    Example: sinkhole privacy apply --config /etc/sinkhole/config.yaml --dry-run
    """
    from resolver import privacy as pv
    from resolver.errors import StoreError
    from resolver.store import Store

    config = get_config(config_path, db)
    mode = config.privacy.clients
    if not Path(config.database).is_file():
        raise StoreError(f"{config.database}: database not found")
    if mode == "ip":
        click.echo("privacy.clients is ip: nothing to rewrite (a pseudonym never turns back)")
        return
    done = pv.ApplyResult(mode, 0)

    def progress(result: pv.ApplyResult) -> None:
        done.rewritten = result.rewritten

    with Store(config.database) as store:
        last = pv.last_mode(store.conn)
        if not dry_run and last is not None and pv.stricter(last.mode, mode) != last.mode:
            click.echo(
                f"sinkhole: warning: the server records with {last.mode} (audit trail): hits it "
                f"writes from now on are not rewritten; reload it, then run this again",
                err=True,
            )
        try:
            result = pv.apply(
                store.conn,
                mode,
                command=command_line(),
                comment=comment,
                dry_run=dry_run,
                progress=progress,
            )
        except KeyboardInterrupt:
            click.echo(
                f"sinkhole: interrupted: {done.rewritten} hits rewritten to {mode} so far, "
                "rollups and audit trail with them; run it again to finish",
                err=True,
            )
            sys.exit(130)
    if dry_run:
        click.echo(f"would rewrite {result.rewritten} hits to {mode}")
    elif result.rewritten:
        click.echo(
            f"rewrote {result.rewritten} hits to {mode} in {result.batches} "
            f"batch{'es' if result.batches > 1 else ''} "
            "(rollups with them; audit trail: sinkhole lists history)"
        )
        if not result.checkpointed:
            click.echo(
                f"sinkhole: warning: {config.database}-wal still holds the old values: another "
                "connection kept it busy; they go at its next checkpoint",
                err=True,
            )
    else:
        click.echo(f"nothing to rewrite: no stored hit holds more than {mode} allows")


# -- config ------------------------------------------------------------------------------------


DEFAULT_CONFIG = """\
# sinkhole configuration. Every key is optional; the values below are the defaults.
listen: ["127.0.0.1:1053"]          # production: ["0.0.0.0:53", "[::]:53"]
upstreams: []                       # empty: the nameservers of /etc/resolv.conf
upstream_timeout: 2.0               # seconds for a whole answer, failover included
database: sinkhole.db
sinkhole: {mode: "null", ipv4: 0.0.0.0, ipv6: "::", ttl: 10}  # null|ip|nxdomain|nodata|refused
lists: [ai-chatbots, bypass]        # catalog categories/services enabled at first start
allow_networks: [127.0.0.0/8, "::1/128", 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
                 "fc00::/7", "fe80::/10"]
clients:
  groups: {}   # e.g. ai-lab: {networks: [10.1.9.0/24], exempt: [openai-chatgpt]}
privacy: {clients: ip, retention_days: 90}   # clients: ip|hashed|group|none
cache: {size: 100000, min_ttl: 0, max_ttl: 86400}
rate_limit: {per_client: 1000, window: 60, exempt: []}
workers: 1                          # or "auto": one process per core (SO_REUSEPORT)
metrics_listen: 127.0.0.1:9153      # /health and /metrics; "" turns it off
log_level: info
"""


@cli.group("config", cls=SinkholeGroup)
def config_group() -> None:
    """Write or validate a config file."""


@config_group.command("init")
@click.option(
    "-o", "--output", default="sinkhole.yaml", show_default=True, type=click.Path(dir_okay=False)
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(output, force) -> None:
    """Write a commented config with the defaults.

    Example: sinkhole config init -o /etc/sinkhole/config.yaml
    """
    path = Path(output)
    if path.exists() and not force:
        raise SinkholeError(f"{output}: exists already (use --force to overwrite)")
    path.write_text(DEFAULT_CONFIG)
    click.echo(f"wrote {output}")


@config_group.command("check")
@common
def config_check(config_path, db) -> None:
    """Validate the config and the catalog; exit 1 listing every problem.

    Example: sinkhole config check --config /etc/sinkhole/config.yaml
    """
    from resolver.catalog import check_catalog, load_catalog
    from resolver.config import check_config

    problems: list[str] = []
    config = None
    try:
        config = get_config(config_path, db)
    except ConfigError:
        problems.extend(check_config(config_path or os.environ[CONFIG_ENV]))
    catalog_dir = config.catalog if config else None
    problems.extend(check_catalog(Path(catalog_dir) if catalog_dir else None))
    if config is not None and not problems:
        catalog = load_catalog(config.catalog)
        for i, name in enumerate(config.lists):
            if name not in catalog.categories and name not in catalog.services:
                problems.append(f"{config.path}: lists[{i}]: unknown list {name!r}")
        for label, group in config.clients.groups.items():
            for sid in group.exempt:
                if sid not in catalog.services:
                    problems.append(
                        f"{config.path}: clients.groups.{label}.exempt: unknown service {sid!r}"
                    )
    for p in problems:
        click.echo(p, err=True)
    if problems:
        sys.exit(1)
    from resolver.config import RESTART_KEYS

    click.echo(f"{config_path or 'built-in defaults'}: OK")
    click.echo(
        f"a running server applies every key at SIGHUP but {', '.join(RESTART_KEYS)} "
        "(restart for those)"
    )


@cli.command()
@common
@click.option(
    "--metrics",
    "metrics_address",
    metavar="HOST:PORT",
    help="Where /health and /metrics are (default: metrics_listen of the config).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path, db, metrics_address: str | None, as_json: bool) -> None:
    """Show a running server's health, queries, upstreams; exit 1 unless healthy.

    Example: sinkhole status --metrics 127.0.0.1:9153
    """
    from resolver.status import metrics_url, read_status, render_status

    if metrics_address is None:
        config = get_config(config_path, db)
        if not config.metrics_listen:
            raise SinkholeError(
                f"{config.path or 'built-in defaults'}: metrics_listen is empty, so the "
                "server has no /health; pass --metrics HOST:PORT"
            )
        metrics_address = config.metrics_listen
    try:
        url = metrics_url(metrics_address)
    except ConfigError as exc:
        raise click.BadParameter(exc.reason, param_hint="--metrics") from None
    st = read_status(url)
    if as_json:
        click.echo(json.dumps(st, indent=2))
    else:
        click.echo(render_status(st))
    if not st["healthy"]:
        sys.exit(1)


# -- the dashboard -------------------------------------------------------------------------


@cli.command()
@common
@click.option("--listen", metavar="HOST:PORT", help="Address to serve on (default: web.listen).")
def web(config_path, db, listen: str | None) -> None:
    """Run the web dashboard (its own process, never the DNS server's) until SIGTERM.

    Needs the web extra: pip install 'chatbot-sinkhole[web]'.

    Example: sinkhole web --config /etc/sinkhole/config.yaml
    """
    from dataclasses import replace

    from resolver.config import parse_config

    config = get_config(config_path, db)
    if listen:
        try:
            # The same checks as the config key: loopback, or TLS, or behind_proxy.
            web_section = {
                "listen": listen,
                "tls_cert": config.web.tls_cert,
                "tls_key": config.web.tls_key,
                "behind_proxy": config.web.behind_proxy,
            }
            checked = parse_config({"web": web_section}, "--listen").web
        except ConfigError as exc:
            raise click.BadParameter(exc.reason, param_hint="--listen") from None
        config = config.with_overrides(web=replace(config.web, listen=checked.listen))
    try:
        from resolver.web.server import run_web
    except ImportError as exc:
        raise SinkholeError(
            f"the dashboard needs the web extra (pip install 'chatbot-sinkhole[web]'): {exc}"
        ) from None
    sys.exit(run_web(config))


@cli.group("users", cls=SinkholeGroup)
def users_group() -> None:
    """Dashboard accounts: an admin changes the policy, a viewer reads."""


@users_group.command("add")
@common
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["admin", "viewer"]), required=True, help="What it may do."
)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (one line).")
@click.option("--replace", is_flag=True, help="Change an existing user's role and password.")
def users_add(config_path, db, name, role, password_stdin, replace) -> None:
    """Add a dashboard user; the password is asked twice, or read from stdin.

    Example: echo 'long secret words' | sinkhole users add alice --role admin --password-stdin
    """
    from resolver.users import add_user, check_username

    check_username(name)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    config = get_config(config_path, db)
    from resolver.store import Store

    with Store(config.database) as store:
        add_user(store, name, role, password, replace=replace)
    click.echo(f"{'updated' if replace else 'added'} {role} {name}")


@users_group.command("list")
@common
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def users_list(config_path, db, as_json) -> None:
    """The dashboard users and their roles.

    Example: sinkhole users list
    """
    from resolver.store import Store
    from resolver.users import list_users

    config = get_config(config_path, db)
    with Store(config.database) as store:
        rows = [{"name": u.name, "role": u.role, "created": u.created} for u in list_users(store)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dashboard users yet: sinkhole users add NAME --role admin")
    for r in rows:
        click.echo(f"{r['name']:<20}  {r['role']:<6}  {r['created']}")


@users_group.command("remove")
@common
@click.argument("name")
def users_remove(config_path, db, name) -> None:
    """Remove a dashboard user; their open sessions end at their next request.

    Example: sinkhole users remove alice
    """
    from resolver.store import Store
    from resolver.users import remove_user

    config = get_config(config_path, db)
    with Store(config.database) as store:
        remove_user(store, name)
    click.echo(f"removed {name}")


# The central store's commands: `sinkhole central init|push|purge`, `sinkhole sites`.
from resolver.central.commands import register as _register_central  # noqa: E402

_register_central(cli)


def main() -> None:
    try:
        cli(prog_name="sinkhole")
    except KeyboardInterrupt:
        sys.exit(130)
