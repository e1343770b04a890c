"""Figures for the admin pages computed from the event history: send rate, per-minute buckets."""

from datetime import timedelta

from sqlalchemy import func, select

from campaigns.models import AppliedEvent
from campaigns.timeutil import isoformat
from extensions import db

MESSAGE_TYPES = ("message_sent", "message_failed")
RECENT_FAILURES = 20
TIMELINE = 50


def messages_last_minute(tenant_id, now):
    """Messages sent or failed per campaign of a tenant in the last 60 s: ``{campaign_id: n}``."""
    query = (
        select(AppliedEvent.campaign_id, func.count())
        .where(
            AppliedEvent.tenant_id == tenant_id,
            AppliedEvent.type.in_(MESSAGE_TYPES),
            AppliedEvent.applied_at >= now - timedelta(seconds=60),
        )
        .group_by(AppliedEvent.campaign_id)
    )
    return dict(db.session.execute(query).all())


def _minute(column):
    """The start of the minute of a timestamp column, as text, on PostgreSQL or SQLite."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.date_trunc("minute", func.timezone("UTC", column)), 'YYYY-MM-DD"T"HH24:MI')
    return func.strftime("%Y-%m-%dT%H:%M", column)


def messages_per_minute(tenant_id, campaign_id, now, minutes=30):
    """Sent and failed messages of a campaign per minute, oldest first, for the live chart."""
    since = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    minute = _minute(AppliedEvent.applied_at)
    query = (
        select(minute, AppliedEvent.type, func.count())
        .where(
            AppliedEvent.tenant_id == tenant_id,
            AppliedEvent.campaign_id == campaign_id,
            AppliedEvent.type.in_(MESSAGE_TYPES),
            AppliedEvent.applied_at >= since,
        )
        .group_by(minute, AppliedEvent.type)
    )
    counts = {(row[0], row[1]): row[2] for row in db.session.execute(query)}
    buckets = []
    for offset in range(minutes):
        label = (since + timedelta(minutes=offset)).strftime("%Y-%m-%dT%H:%M")
        buckets.append(
            {
                "minute": label,
                "sent": counts.get((label, "message_sent"), 0),
                "failed": counts.get((label, "message_failed"), 0),
            }
        )
    return buckets


def campaign_history(tenant_id, campaign_id):
    """``recent_failures`` (newest first) and ``timeline`` (non-message events, newest first)."""
    history = select(AppliedEvent).where(AppliedEvent.tenant_id == tenant_id, AppliedEvent.campaign_id == campaign_id)
    failures = db.session.scalars(
        history.where(AppliedEvent.type == "message_failed")
        .order_by(AppliedEvent.applied_at.desc(), AppliedEvent.event_id)
        .limit(RECENT_FAILURES)
    )
    timeline = db.session.scalars(
        history.where(AppliedEvent.type.not_in(("message_sent", "message_failed", "next_message_starting")))
        .order_by(AppliedEvent.occurred_at.desc(), AppliedEvent.event_id)
        .limit(TIMELINE)
    )
    return {
        "recent_failures": [
            {
                "message_id": e.data.get("message_id"),
                "error": e.data.get("error"),
                "occurred_at": isoformat(e.occurred_at),
            }
            for e in failures
        ],
        "timeline": [{"type": e.type, "occurred_at": isoformat(e.occurred_at), "data": e.data} for e in timeline],
    }
