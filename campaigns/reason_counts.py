"""Failures by reason in the database: counted by the worker in the batch's transaction, read by the pages.

The counts live in ``campaign_failure_reasons``, one row per (tenant, campaign, reason bucket),
so reading them costs at most ``REASON_LIMIT + 1`` rows whatever the campaign's size, and
writing them one upsert per batch. Workers never race on a campaign's rows: ``apply_batch``
holds the tenant's advisory lock and the campaign's row lock (FOR UPDATE) meanwhile.
"""

from sqlalchemy import select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from campaigns.models import CampaignFailureReason
from campaigns.reasons import bucket_reasons, top_reasons
from extensions import db


def count_failures(session, events):
    """Add the ``message_failed`` events among ``events`` (applied, validated) to their campaigns' counts."""
    errors = {}
    for event in events:
        if event.type == "message_failed":
            errors.setdefault((event.tenant_id, event.campaign_id), []).append(event.data["error"])
    if not errors:
        return 0
    table = CampaignFailureReason.__table__
    connection = session.connection()
    known = {}
    existing = select(table.c.tenant_id, table.c.campaign_id, table.c.reason).where(
        tuple_(table.c.tenant_id, table.c.campaign_id).in_(sorted(errors))
    )
    for tenant_id, campaign_id, reason in connection.execute(existing):
        known.setdefault((tenant_id, campaign_id), set()).add(reason)
    rows = [
        {"tenant_id": tenant_id, "campaign_id": campaign_id, "reason": reason, "count": count}
        for (tenant_id, campaign_id), texts in sorted(errors.items())
        for reason, count in bucket_reasons(known.get((tenant_id, campaign_id), set()), texts).items()
    ]
    builder = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = builder(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.tenant_id, table.c.campaign_id, table.c.reason],
        set_={"count": table.c.count + statement.excluded.count},
    )
    connection.execute(statement, rows)
    return len(rows)


def failure_reasons(tenant_id, campaign_id):
    """The campaign's failures by reason, largest first (see ``campaigns.reasons.top_reasons``)."""
    table = CampaignFailureReason.__table__
    rows = db.session.execute(
        select(table.c.reason, table.c.count).where(table.c.tenant_id == tenant_id, table.c.campaign_id == campaign_id)
    ).all()
    return top_reasons([(reason, count) for reason, count in rows])
