"""The ``campaign_update`` payload, built in one place for the worker, the replay and the API."""

from sqlalchemy import insert, text

from campaigns.models import CampaignUpdate
from campaigns.timeutil import isoformat

UPDATE_EVENT = "campaign_update"
SNAPSHOT_EVENT = "campaign_snapshot"
RESYNC_EVENT = "resync"


def tenant_room(tenant_id):
    """The Socket.IO room holding every connection of a tenant."""
    return f"tenant:{tenant_id}"


def build_update(seq, kind, campaign, emitted_at):
    """A live ``campaign_update`` payload; ``campaign`` is a ``Campaign.to_dict()``."""
    return {
        "seq": seq,
        "type": kind,
        "campaign": campaign,
        "timestamp": isoformat(emitted_at),
        "replayed": False,
    }


def as_replayed(payload):
    """The stored payload as it is sent again during recovery."""
    return {**payload, "replayed": True}


def store_updates(session, emissions, now):
    """Number ``emissions`` with their tenants' next ``seq`` values and store them.

    ``emissions`` is a list of ``(tenant_id, event_type, campaign_dict)`` in the order they
    must be seen. Returns the payloads in that order. Runs inside the caller's transaction,
    under the caller's tenant locks, so numbers are gap-free and in commit order.
    """
    if not emissions:
        return []
    counts = {}
    for tenant_id, _, _ in emissions:
        counts[tenant_id] = counts.get(tenant_id, 0) + 1
    next_seq = {tenant_id: last - counts[tenant_id] + 1 for tenant_id, last in _reserve_seqs(session, counts)}
    payloads, rows = [], []
    for tenant_id, kind, campaign in emissions:
        seq = next_seq[tenant_id]
        next_seq[tenant_id] = seq + 1
        payload = build_update(seq, kind, campaign, now)
        payloads.append(payload)
        rows.append(
            {"tenant_id": tenant_id, "seq": seq, "campaign_id": campaign["id"], "payload": payload, "created_at": now}
        )
    session.connection().execute(insert(CampaignUpdate.__table__), rows)
    return payloads


def _reserve_seqs(session, counts):
    """Add ``counts[tenant]`` to each tenant's ``last_seq`` in one statement; yield (tenant, new last_seq).

    A VALUES list in FROM, which PostgreSQL and SQLite (3.33+) both accept, with their
    default column names ``column1``, ``column2``.
    """
    tenants = sorted(counts)
    rows = ", ".join(f"(:tenant_{i}, :count_{i})" for i in range(len(tenants)))
    params = {}
    for i, tenant_id in enumerate(tenants):
        params[f"tenant_{i}"], params[f"count_{i}"] = tenant_id, counts[tenant_id]
    statement = text(
        f"UPDATE tenants SET last_seq = tenants.last_seq + batch.column2 FROM (VALUES {rows}) AS batch "
        "WHERE tenants.id = batch.column1 RETURNING tenants.id, tenants.last_seq"
    )
    return session.connection().execute(statement, params).all()
