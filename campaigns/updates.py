"""The ``campaign_update`` payload, built in one place for the worker, the replay and the API."""

from sqlalchemy import insert, update

from campaigns.models import CampaignUpdate, Tenant
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
    next_seq = {}
    for tenant_id in sorted(counts):
        last = session.execute(
            update(Tenant)
            .where(Tenant.id == tenant_id)
            .values(last_seq=Tenant.last_seq + counts[tenant_id])
            .returning(Tenant.last_seq)
        ).scalar_one()
        next_seq[tenant_id] = last - counts[tenant_id] + 1
    payloads, rows = [], []
    for tenant_id, kind, campaign in emissions:
        seq = next_seq[tenant_id]
        next_seq[tenant_id] = seq + 1
        payload = build_update(seq, kind, campaign, now)
        payloads.append(payload)
        rows.append(
            {"tenant_id": tenant_id, "seq": seq, "campaign_id": campaign["id"], "payload": payload, "created_at": now}
        )
    session.execute(insert(CampaignUpdate.__table__), rows)
    return payloads
