"""The store: sinkhole's policy state and its record of blocked lookups.

The seam. The server, the CLI and the dashboard ask a `PolicyStore` (store.backend)
for the policy state and its audit trail: read (`policy_version`, `policy_state`,
`seed`, `mark_started`, `new_services`), edit (`set_enabled`, `add_rules`,
`remove_rules`, `import_list`, `remove_list`, ...; one transaction each, with its
audit row, or a StoreError and no change) and read the record (`recent_hits`,
`purge`, `report_connection`). `open_store(config)` picks the implementation; today
that is `Store`, on the SQLite file. Hits never go through it: the DNS path hands them
to a `Recorder`, whose `HitBatcher` folds them in memory and whose writer thread
gives the rows to a `HitSink` (SQLite: `SqliteHitSink`), so DNS never waits on
storage and the hot path touches no SQL.

A central store (PostgreSQL, issue 14) is an addition beside these, not a rewrite:
a second `PolicyStore` for the policy and audit, chosen by `open_store` when the
config has `central`; the local SQLite file stays the recorder's sink and outbox,
from which a shipper sends rows on; and the report reads `report_connection()`,
whose queries are keyed as `rollups` says.

Modules, each the one place for what it owns:

- `db`: the file: created 0600, WAL, busy timeout, one IMMEDIATE transaction.
- `migrations`: the schema's migrations, frozen as the literal SQL they released.
- `schema`: the migration runner and the schema version.
- `rollups`: the hourly rollups and the attempt rule: the SQL that writes, purges
  and rebuilds them (recorder, retention, privacy rewrites).
- `policy_state`: `Store`, the SQLite policy state, settings and audit trail.
- `pseudonyms`: what a privacy mode keeps of a client address; the HMAC key.
- `recorder`: `HitBatcher` (fold, hold, buffer, traffic; driven by a clock),
  `Recorder` (the thread and faults around it), `HitSink` and `SqliteHitSink`.
- `backend`: `PolicyStore`, the protocol of the seam, and `open_store`.
"""

from resolver.store.backend import PolicyStore, open_store
from resolver.store.policy_state import Store
from resolver.store.recorder import HitSink, Recorder

__all__ = ["HitSink", "PolicyStore", "Recorder", "Store", "open_store"]
