"""Applying inbound events to the database exactly once, and storing what to emit.

The worker calls ``apply_batch`` for each batch of valid events and ``flush_due_updates``
a few times a second. Both run inside the caller's transaction and return the
``campaign_update`` payloads that were stored; the caller commits, acknowledges the
messages and only then emits the payloads, then releases the tenant locks.

This module only moves data: it loads the rows, asks ``campaigns/rules.py CampaignRules``
what the events make the clients see (status order, throttle, failure alert) and stores the
campaigns and the updates. ``flush_due_updates`` emits the merged updates the rules
scheduled (``emit_due_at``), once they fall due.
"""

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import String, bindparam, delete, func, insert, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from campaigns.models import AppliedEvent, Campaign, CampaignRow, CampaignUpdate, Tenant
from campaigns.reason_counts import count_failures
from campaigns.rules import DEFAULT_ALERT_RULE, CampaignRules
from campaigns.timeutil import utcnow
from campaigns.updates import store_updates

log = logging.getLogger(__name__)
# Merged updates emitted per transaction (see EventConsumer.emit_due_updates).
DUE_BATCH = 20


@dataclass
class IngestResult:
    """What one batch did: counts by outcome and the updates to emit, in ``seq`` order."""

    applied: list = field(default_factory=list)
    duplicates: int = 0
    unknown_tenant: list = field(default_factory=list)
    updates: list = field(default_factory=list)
    merged: int = 0
    throttled: list = field(default_factory=list)
    alerts_raised: int = 0


class TenantLocks:
    """Keeps a tenant's updates in ``seq`` order across workers.

    PostgreSQL session-level advisory locks, taken in sorted order before the transaction
    and released after the emit, so two workers never interleave one tenant's
    store-commit-emit. A no-op on SQLite, where the demo runs a single worker.
    """

    def __init__(self, session):
        self.session = session
        self.enabled = session.get_bind().dialect.name == "postgresql"
        self.held = False

    # One round trip; the sorted subquery fixes the order in which the locks are taken (by the
    # lock key itself: two tenants whose hashes collide share one lock, taken once, in one
    # order). It also says which tenants exist, which saves the batch a query of its own.
    ACQUIRE = text(
        "SELECT t, pg_advisory_lock(7281, hashtext(t)) IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM tenants WHERE tenants.id = t) "
        "FROM (SELECT t FROM unnest(CAST(:tenants AS text[])) AS t ORDER BY hashtext(t), t) AS sorted"
    )

    def acquire(self, tenant_ids):
        """Lock these tenants (blocking until other workers release them); return those that exist.

        Without locks (SQLite) it only looks the tenants up.
        """
        if not tenant_ids:
            return set()
        if not self.enabled:
            return known_tenants(self.session, tenant_ids)
        self.held = True
        rows = self.session.connection().execute(self.ACQUIRE, {"tenants": sorted(set(tenant_ids))})
        return {tenant_id for tenant_id, exists in rows if exists}

    def release(self):
        """Release every lock this connection holds (between two transactions of the session)."""
        if self.enabled and self.held:
            self.between_transactions("SELECT pg_advisory_unlock_all()")
            self.held = False

    def confirm_held(self):
        """Raise unless the session that took the locks is still there (between two transactions)."""
        self.between_transactions("SELECT 1")

    def between_transactions(self, sql):
        """Run ``sql`` on the session's connection outside any transaction: one round trip.

        Inside a transaction it would cost three: psycopg2 sends BEGIN and COMMIT as statements
        of their own. Session-level advisory locks need no transaction, and after it the session
        is idle, not "idle in transaction" (``idle_session_timeout`` keeps watching it). The
        worker runs this after each batch's commit, on the way to the emit, and again after the
        emit. Only between two of the session's transactions: raises if one is open.
        """
        connection = self.session.get_bind()
        if connection.invalidated:  # SQLAlchemy would connect again: a new session holds no lock
            raise RuntimeError("the session's connection was lost, and its locks with it")
        if connection.in_transaction():
            raise RuntimeError(f"{sql!r} needs the session between two transactions")
        driver_connection = connection.connection.dbapi_connection
        driver_connection.autocommit = True
        try:
            with driver_connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            try:
                driver_connection.autocommit = False
            except Exception:  # a connection that broke: never used again, locks with it
                connection.invalidate()
                raise  # the locks are gone: the caller must not go on as if they were held


def _dialect_insert(session, table):
    """INSERT ... ON CONFLICT DO NOTHING for the session's database."""
    dialect = session.get_bind().dialect.name
    builder = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return builder(table).on_conflict_do_nothing()


# On PostgreSQL the batch goes in as one array per column: one statement, and psycopg2 adapts
# each list in C, where a multi-row VALUES costs per-row bind processing in Python.
RECORD_EVENTS_PG = text(
    "INSERT INTO applied_events (tenant_id, event_id, campaign_id, type, occurred_at, data, applied_at) "
    "SELECT tenant_id, event_id, campaign_id, type, occurred_at, CAST(data AS jsonb), :applied_at "
    "FROM unnest(CAST(:tenant_ids AS text[]), CAST(:event_ids AS text[]), CAST(:campaign_ids AS text[]), "
    "CAST(:types AS text[]), CAST(:occurred AS timestamptz[]), CAST(:data AS text[])) "
    "AS batch(tenant_id, event_id, campaign_id, type, occurred_at, data) "
    "ON CONFLICT DO NOTHING RETURNING tenant_id, event_id"
)


def _record_new_events(session, events, now):
    """Insert the events' ids; return the keys of those not applied before."""
    if session.get_bind().dialect.name == "postgresql":
        columns = {
            "tenant_ids": [event.tenant_id for event in events],
            "event_ids": [event.event_id for event in events],
            "campaign_ids": [event.campaign_id for event in events],
            "types": [event.type for event in events],
            "occurred": [event.occurred_at for event in events],
            "data": [json.dumps(event.data, separators=(",", ":")) for event in events],
        }
        rows = session.connection().execute(RECORD_EVENTS_PG, {**columns, "applied_at": now})
        return {tuple(row) for row in rows}
    rows = [
        {
            "tenant_id": event.tenant_id,
            "event_id": event.event_id,
            "campaign_id": event.campaign_id,
            "type": event.type,
            "occurred_at": event.occurred_at,
            "data": event.data,
            "applied_at": now,
        }
        for event in events
    ]
    table = AppliedEvent.__table__
    statement = _dialect_insert(session, table).returning(table.c.tenant_id, table.c.event_id)
    return {tuple(row) for row in session.execute(statement, rows)}


def _load_campaigns(session, keys):
    """The campaigns with these ``(tenant_id, id)`` keys, locked for update, by key.

    They are plain ``CampaignRow`` objects, not the ORM's: ``_save_campaigns`` writes them back
    in one statement, where the ORM's flush would send one UPDATE per campaign whenever their
    changed columns differ.
    """
    if not keys:
        return {}
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        tenant_ids, ids = (list(column) for column in zip(*sorted(keys)))
        rows = connection.execute(LOAD_CAMPAIGNS_PG, {"tenant_ids": tenant_ids, "ids": ids})
    else:
        table = Campaign.__table__
        rows = connection.execute(
            select(table).where(tuple_(table.c.tenant_id, table.c.id).in_(sorted(keys))).with_for_update()
        )
    return {(row.tenant_id, row.id): CampaignRow.from_row(row) for row in rows}


def load_by_arrays(table, key):
    """``SELECT <every column> FROM table JOIN unnest(<one array per key column>) ... FOR UPDATE``
    (PostgreSQL), in key order, its result typed as the table's columns. The same text for any
    number of rows: SQLAlchemy compiles it once, where a ``tuple_(...).in_()`` of the keys was built,
    expanded and rendered again for each batch (its IN list a statement PostgreSQL parsed and
    planned anew each time), ~40 % of ``apply_batch``'s CPU in the worker (cProfile)."""
    dialect = postgresql.dialect()
    quote = dialect.identifier_preparer.quote
    name = quote(table.name)
    columns = ", ".join(f"{name}.{quote(column.name)}" for column in table.columns)
    arrays = ", ".join(  # one parameter per key column, its name plural: :tenant_ids, :ids
        f"CAST(:{column}s AS {_array_element_type(table.c[column].type, dialect)}[])" for column in key
    )
    match = " AND ".join(f"{name}.{quote(column)} = wanted.{quote(column)}" for column in key)
    order = ", ".join(f"{name}.{quote(column)}" for column in key)
    return text(
        f"SELECT {columns} FROM {name} JOIN unnest({arrays}) AS wanted({', '.join(quote(c) for c in key)}) "
        f"ON {match} ORDER BY {order} FOR UPDATE OF {name}"
    ).columns(*table.columns)


CAMPAIGN_KEY = ("tenant_id", "id")
CAMPAIGN_STATE = tuple(
    column.name for column in Campaign.__table__.columns if column.name not in CAMPAIGN_KEY + ("created_at",)
)


def _save_campaigns(session, created, changed):
    """Insert the campaigns first seen in this batch and write back the changed ones."""
    table = Campaign.__table__
    connection = session.connection()
    if created:
        connection.execute(
            insert(table),
            [
                {name: getattr(campaign, name) for name in CAMPAIGN_KEY + CAMPAIGN_STATE + ("created_at",)}
                for campaign in created
            ],
        )
    if not changed:
        return
    if connection.dialect.name == "postgresql":
        columns = {name: [getattr(campaign, name) for campaign in changed] for name in CAMPAIGN_KEY + CAMPAIGN_STATE}
        connection.execute(UPDATE_CAMPAIGNS_PG, bound_arrays(connection.dialect, table, columns))
        return
    statement = update(table).where(table.c.tenant_id == bindparam("key_tenant_id"), table.c.id == bindparam("key_id"))
    rows = []
    for campaign in changed:
        row = {name: getattr(campaign, name) for name in CAMPAIGN_STATE}
        row["key_tenant_id"], row["key_id"] = campaign.tenant_id, campaign.id
        rows.append(row)
    connection.execute(statement, rows)


def update_from_arrays(table, key, columns):
    """``UPDATE table ... FROM unnest(<one array per column>)`` (PostgreSQL): many rows changed by
    one statement, parsed and planned once. An executemany UPDATE sends one statement per row
    (psycopg2's ``execute_batch``): with 50 campaigns a batch, PostgreSQL parsed and planned 50
    UPDATEs in each of the worker's transactions. Pass the values through ``bound_arrays``."""
    dialect = postgresql.dialect()
    quote = dialect.identifier_preparer.quote
    names = key + columns
    arrays = ", ".join(f"CAST(:{name} AS {_array_element_type(table.c[name].type, dialect)}[])" for name in names)
    assignments = ", ".join(f"{quote(name)} = batch.{quote(name)}" for name in columns)
    match = " AND ".join(f"{quote(table.name)}.{quote(name)} = batch.{quote(name)}" for name in key)
    return text(
        f"UPDATE {quote(table.name)} SET {assignments} "
        f"FROM unnest({arrays}) AS batch({', '.join(quote(name) for name in names)}) WHERE {match}"
    )


def _array_element_type(column_type, dialect):
    # Text goes as TEXT: a CAST to VARCHAR(n) would cut a longer value without a word, where the
    # assignment to the column refuses it as a row's UPDATE does.
    return "TEXT" if isinstance(column_type, String) else column_type.compile(dialect=dialect)


def bound_arrays(dialect, table, columns):
    """``{name: [value, ...]}`` with each value as its column's type binds it (an aware datetime
    in UTC, a JSON column's value serialized): what SQLAlchemy sends for one row, for every row."""
    bound = {}
    for name, values in columns.items():
        process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        bound[name] = [process(value) for value in values] if process else values
    return bound


UPDATE_CAMPAIGNS_PG = update_from_arrays(Campaign.__table__, CAMPAIGN_KEY, CAMPAIGN_STATE)
LOAD_CAMPAIGNS_PG = load_by_arrays(Campaign.__table__, CAMPAIGN_KEY)


def known_tenants(session, tenant_ids):
    """The subset of ``tenant_ids`` that exist."""
    if not tenant_ids:
        return set()
    tenants = Tenant.__table__
    return set(session.connection().scalars(select(tenants.c.id).where(tenants.c.id.in_(sorted(tenant_ids)))))


def apply_batch(session, events, now, throttle_seconds, locks=None, alert_rule=DEFAULT_ALERT_RULE):
    """Apply a batch of valid events once each; store and return the updates to emit."""
    result = IngestResult()
    unique, seen = [], set()
    for event in events:
        key = (event.tenant_id, event.event_id)
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        unique.append(event)
    tenant_ids = {event.tenant_id for event in unique}
    if locks is not None:
        known = locks.acquire(tenant_ids)
        now = max(now, utcnow())  # the throttle window counts from after the wait for the lock
    else:
        known = known_tenants(session, tenant_ids)
    result.unknown_tenant = [event for event in unique if event.tenant_id not in known]
    unique = [event for event in unique if event.tenant_id in known]
    if not unique:
        return result
    inserted = _record_new_events(session, unique, now)
    result.applied = [event for event in unique if (event.tenant_id, event.event_id) in inserted]
    result.duplicates += len(unique) - len(result.applied)
    campaigns = _load_campaigns(session, {(e.tenant_id, e.campaign_id) for e in result.applied})
    created = []
    for event in result.applied:
        key = (event.tenant_id, event.campaign_id)
        if key not in campaigns:
            campaign = campaigns[key] = CampaignRow.new(event.tenant_id, event.campaign_id)
            campaign.created_at = now
            created.append(campaign)
    decisions = CampaignRules(throttle_seconds, alert_rule).apply(campaigns, result.applied, now)
    result.merged, result.throttled = decisions.merged, decisions.throttled
    result.alerts_raised = decisions.alerts_raised
    new = {id(campaign) for campaign in created}
    _save_campaigns(session, created, [c for c in campaigns.values() if id(c) not in new])
    # In this transaction, under the campaigns' row locks: counts agree with `failed` whatever the workers.
    count_failures(session, result.applied)
    result.updates = store_updates(session, decisions.emissions, now)
    return result


def next_due_at(session):
    """When the earliest merged update falls due, or None."""
    return session.scalar(select(func.min(Campaign.emit_due_at)))


def flush_due_updates(session, now, locks=None, force=False):
    """Emit up to ``DUE_BATCH`` merged updates whose window has ended (pending ones with ``force``)."""
    table = Campaign.__table__
    condition = table.c.emit_due_at.is_not(None) if force else table.c.emit_due_at <= now
    keys = session.connection().execute(
        select(table.c.tenant_id, table.c.id).where(condition).order_by(table.c.emit_due_at).limit(DUE_BATCH)
    ).all()
    if not keys:
        return []
    if locks is not None:
        locks.acquire({tenant_id for tenant_id, _ in keys})
        now = max(now, utcnow())
    # Read again under the locks: another worker may have emitted some of them meanwhile.
    due = [
        campaign
        for campaign in _load_campaigns(session, {tuple(key) for key in keys}).values()
        if campaign.emit_due_at is not None and (force or campaign.emit_due_at <= now)
    ]
    if not due:
        return []
    due.sort(key=lambda campaign: (campaign.tenant_id, campaign.emit_due_at))  # a tenant's seqs in due order
    for campaign in due:
        campaign.emit_due_at, campaign.last_emitted_at = None, now
    _save_campaigns(session, [], due)
    return store_updates(session, [(c.tenant_id, c.last_event_type, c.to_dict()) for c in due], now)


# Rows deleted per table and statement by ``prune``: a backlog of history (workers stopped for
# days, a retention lowered) goes in statements that stay far below the worker's
# statement_timeout, instead of one that the timeout would cancel every time.
PRUNE_CHUNK = 5000


def _delete_older(session, model, key, column, cutoff, limit):
    """Delete up to ``limit`` rows of ``model`` whose ``column`` is before ``cutoff``; return how many."""
    # Rows another worker is pruning right now are left to it (two prunes would deadlock).
    oldest = select(*key).where(column < cutoff).limit(limit).with_for_update(skip_locked=True)
    return session.execute(delete(model).where(tuple_(*key).in_(oldest))).rowcount


def prune(session, now, update_retention_seconds, event_retention_seconds, limit=PRUNE_CHUNK):
    """Delete up to ``limit`` stored updates and applied events older than their retention; return counts.

    A count equal to ``limit`` means more may be left: call again (in a new transaction).
    """
    events = _delete_older(
        session,
        AppliedEvent,
        (AppliedEvent.tenant_id, AppliedEvent.event_id),
        AppliedEvent.applied_at,
        now - timedelta(seconds=event_retention_seconds),
        limit,
    )
    updates = _delete_older(
        session,
        CampaignUpdate,
        (CampaignUpdate.tenant_id, CampaignUpdate.seq),
        CampaignUpdate.created_at,
        now - timedelta(seconds=update_retention_seconds),
        limit,
    )
    return {"applied_events": events, "campaign_updates": updates}
