"""The administrator's commands as library functions, one per CLI command.

The CLI (resolver/cli.py) parses arguments, calls one of these with a PolicyStore
(resolver.store) and prints what it returns; the work, and every error with its parts
(`where`, `reason`), is here, so the dashboard or a central store can reuse it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resolver.errors import SinkholeError
from resolver.policy import policy_sources
from resolver.presentation import display_name, strip_controls

if TYPE_CHECKING:
    from resolver.catalog import Catalog
    from resolver.config import Config
    from resolver.store import PolicyStore
    from resolver.store.policy_state import ListChange


def list_overview(store: PolicyStore, catalog: Catalog) -> tuple[list[dict[str, Any]], set[str]]:
    """`sinkhole lists`: every catalog service (in catalog order) with its state, then
    every imported list; and the services new since the server's last start."""
    rows = {r["name"]: r for r in store.lists()}
    new = store.new_services()
    out = []
    for category, ids in catalog.categories.items():
        for sid in ids:
            svc = catalog.services[sid]
            row = rows.get(sid, {})
            api = rows.get(f"{sid}:api")
            out.append(
                {
                    "name": sid,
                    "kind": "service",
                    "category": category,
                    "title": svc.name,
                    "enabled": bool(row.get("enabled")),
                    "domains": len(svc.domains),
                    "api": len(svc.api),
                    "api_blocked": bool(api["enabled"]) if api else None,
                    "new": sid in new,
                    "added": row.get("added"),
                }
            )
    for r in rows.values():
        if r["kind"] == "imported":
            out.append(
                {
                    "name": r["name"],
                    "kind": "imported",
                    "category": r["category"],
                    "title": r["source"],
                    "enabled": bool(r["enabled"]),
                    "domains": r["domains"],
                    "allow": r["allows"],
                    "errors": r["errors"],
                    "updated": r["updated"],
                    "checked": r["checked"],
                }
            )
    return out, new


def store_fetched_list(
    store: PolicyStore,
    name: str,
    result: Any,
    fetched: Any,
    *,
    source: str,
    services: Iterable[str],
    command: str,
    comment: str | None,
    guard: bool = False,
) -> ListChange:
    """`lists import` and `lists update`: a parsed list (listformats.ParseResult) and
    how it was fetched (its ETag and Last-Modified) stored as list `name`, in one
    transaction with its audit row. `guard`: refuse a list that would drop more than
    half of the names (Store.import_list), as an update must."""
    return store.import_list(
        name,
        result.domains,
        result.allow,
        source=source,
        fmt=result.format,
        errors=len(result.errors),
        command=command,
        comment=comment,
        etag=fetched.etag,
        last_modified=fetched.last_modified,
        services=services,
        guard=guard,
    )


def resolve_list_names(store: PolicyStore, catalog: Catalog, names: Iterable[str]) -> list[str]:
    """Categories to their services; service ids, `id:api` and imported lists as they are.

    Raises:
        SinkholeError: a name is none of them.
    """
    known = {r["name"] for r in store.lists()}
    out: list[str] = []
    for name in names:
        if name in catalog.categories:
            out.extend(catalog.categories[name])
        elif name in known:
            out.append(name)
        else:
            raise SinkholeError(
                f"unknown list {name!r}: use a category ({', '.join(catalog.categories)}), "
                f"a service id or an imported list (see `sinkhole lists`)"
            )
    return out


def toggle_lists(
    store: PolicyStore,
    catalog: Catalog,
    names: Iterable[str],
    enabled: bool,
    *,
    command: str,
    comment: str | None = None,
) -> list[str]:
    """`sinkhole lists enable|disable`: the services and lists it switched."""
    targets = resolve_list_names(store, catalog, names)
    store.set_enabled(targets, enabled, command=command, comment=comment)
    return targets


def edit_group_exempt(
    store: PolicyStore,
    catalog: Catalog,
    label: str,
    names: Iterable[str],
    exempt: bool,
    *,
    command: str,
    comment: str | None = None,
) -> tuple[list[str], list[str]]:
    """`sinkhole groups exempt|unexempt`: (services changed, services already so).

    Raises:
        SinkholeError: the label is empty or a name is no catalog service or category.
    """
    if not label.strip() or label != label.strip():
        raise SinkholeError(f"group label {label!r}: must be a non-empty word")
    services: list[str] = []
    for name in names:
        if name in catalog.categories:
            services.extend(catalog.categories[name])
        elif name in catalog.services:
            services.append(name)
        else:
            raise SinkholeError(
                f"unknown service {name!r}: use a service id or a category "
                f"({', '.join(catalog.categories)}); see `sinkhole lists`"
            )
    services = list(dict.fromkeys(services))
    same = store.set_group_exempt(label, services, exempt, command=command, comment=comment)
    return [s for s in services if s not in same], same


def group_overview(store: PolicyStore, config) -> list[dict]:
    """`sinkhole groups`: each group of this config or of the policy, its networks (from
    the config), and the services it may use, from the config and from the policy."""
    db: dict[str, list[str]] = {}
    for row in store.group_exemptions():
        db.setdefault(row["label"], []).append(row["service"])
    labels = list(config.clients.groups) + sorted(set(db) - set(config.clients.groups))
    out = []
    for label in labels:
        group = config.clients.groups.get(label)
        out.append(
            {
                "label": label,
                "networks": list(group.networks) if group else [],
                "exempt_config": list(group.exempt) if group else [],
                "exempt_policy": db.get(label, []),
                "in_config": group is not None,
            }
        )
    return out


@dataclass(frozen=True)
class RuleEdit:
    """What `edit_rules` did: the patterns changed, and those it found no rule for."""

    done: list[str]
    missing: list[str]


def edit_rules(
    store: PolicyStore,
    patterns: list[str],
    action: str,
    add: bool,
    *,
    command: str,
    comment: str | None = None,
) -> RuleEdit:
    """`sinkhole block|unblock|allow|unallow`: add or remove custom rules."""
    if add:
        store.add_rules(patterns, action, command=command, comment=comment)
        return RuleEdit(list(patterns), [])
    missing = store.remove_rules(patterns, action, command=command, comment=comment)
    return RuleEdit([p for p in patterns if p not in missing], missing)


@dataclass(frozen=True)
class Export:
    """What `export_policy` wrote: the text, and the patterns it was made of."""

    text: str
    block: int
    allow: int


def export_policy(
    store: PolicyStore, catalog: Catalog, config: Config, fmt: str, header: str = ""
) -> Export:
    """`sinkhole export`: what the policy blocks and allows now, in format `fmt`.

    The patterns are the ones `build_policy` compiles (`policy_sources`).

    Raises:
        ListError: unknown format or a bad sinkhole address.
    """
    from resolver.listformats import export

    state = store.policy_state()
    block: list[str] = []
    allow: list[str] = []
    for kind, patterns, _ in policy_sources(catalog, state):
        (block if kind == "block" else allow).extend(patterns)
    text = export(
        block,
        allow,
        fmt,
        config.sinkhole.ipv4,
        config.sinkhole.ipv6,
        config.sinkhole.ttl,
        header=header,
    )
    return Export(text, len(block), len(allow))


def recent_hits(store: PolicyStore, since: int, limit: int) -> list[dict[str, Any]]:
    """`sinkhole hits`: the hits since `since` (unix seconds), newest first, every name
    from the wire in presentation format and the rest without control bytes."""
    return clean_hits(store.recent_hits(since, limit))


def hits_since(
    config: Config, since: int, limit: int, sites: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """`sinkhole hits` (and the dashboard's /api/attempts): this site's hits since
    `since`, or with `central` every site's (or SITES'), newest first, cleaned.

    Raises:
        SinkholeError: sites without a central store, or the store cannot be read.
    """
    sites = tuple(sites)
    if sites and config.central is None:
        raise SinkholeError("--site needs a central section in the config")
    if config.central is not None:  # all sites, from the central store (resolver/central)
        from resolver.central.report import recent_hits as central_hits

        return clean_hits(central_hits(config.central, since, limit, sites))
    from resolver.store import open_store

    with open_store(config) as store:
        return recent_hits(store, since, limit)


def clean_hits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hit rows for display: names in presentation format, the rest without control
    bytes (`site`: the central store's, issue 14)."""
    for r in rows:
        r["qname"] = display_name(r["qname"])
        for key in ("client", "client_group", "service", "category", "rule", "action", "site"):
            if isinstance(r.get(key), str):
                r[key] = strip_controls(r[key])
    return rows


def build_report_for(
    config: Config,
    catalog: Catalog,
    start: Any,
    end: Any,
    *,
    tz: str,
    top: int = 10,
    lang: str | None = None,
    sites: Iterable[str] = (),
    per_site: bool = True,
    sections: Iterable[str] | None = None,
) -> dict[str, Any]:
    """`sinkhole report`'s dict (and the dashboard's): this site's database, or with
    `central` every site's record (or SITES) in the central store, with each site's own
    figures unless not PER_SITE; only the SECTIONS named, when given (`build_report`).

    Raises:
        SinkholeError: --site without a central store, or the store cannot be read.
    """
    from resolver import report as rpt

    sites = tuple(sites)
    sections = None if sections is None else frozenset(sections)
    if sites and config.central is None:
        raise SinkholeError("--site needs a central section in the config")

    def build(path: str) -> dict:
        return rpt.build_report(
            path,
            start=start,
            end=end,
            tz=tz,
            privacy=config.privacy.clients,
            retention_days=config.privacy.retention_days,
            groups={label: list(g.networks) for label, g in config.clients.groups.items()},
            service_names={sid: s.name for sid, s in catalog.services.items()},
            top=top,
            lang=lang or config.report.lang,
            sections=sections,
        )

    if config.central is not None:  # all sites, from the central store (resolver/central)
        from resolver.central.report import central_report

        return central_report(
            config.central,
            build,
            int(start.timestamp()),
            int(end.timestamp()),
            sites,
            tz=tz,
            per_site=per_site,
            sections=sections,
        )
    from resolver.store import Store

    Store(config.database).close()  # creates or migrates the file: a new install gets one
    return build(config.database)
