"""Database models: tenants, their campaigns, applied events and stored updates."""

import secrets
from datetime import datetime, timedelta

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from campaigns.timeutil import UTCDateTime, isoformat, utcnow
from extensions import db

JSONType = JSON().with_variant(JSONB(), "postgresql")

STATUS_BY_EVENT = {
    "campaign_started": "running",
    "campaign_paused": "paused",
    "campaign_resumed": "running",
    "campaign_completed": "completed",
    "campaign_failed": "failed",
    "campaign_cancelled": "cancelled",
}
PROGRESS_EVENTS = frozenset({"message_sent", "message_failed", "next_message_starting"})
EVENT_TYPES = frozenset(STATUS_BY_EVENT) | PROGRESS_EVENTS
ACTIVE_STATUSES = ("running", "paused")
SNAPSHOT_LIMIT = 500
SNAPSHOT_ENDED_WITHIN = timedelta(hours=24)
ERROR_TEXT_LIMIT = 1000


class Tenant(db.Model):
    """A customer of campaign-live; its updates are numbered by ``last_seq``."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # New with every tenant row, so a tenant deleted and created again never reuses a seq's meaning.
    epoch: Mapped[str] = mapped_column(String(32), default=lambda: secrets.token_hex(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


    @classmethod
    def positions(cls, tenant_ids):
        """``{tenant_id: (last_seq, epoch)}`` of those tenants that exist, in one query.

        The epoch the clients see is the tenant's own joined to the database's identity, so it
        also changes when the database is restored into a new one (same rows, new oid).
        """
        rows = db.session.execute(select(cls.id, cls.last_seq, cls.epoch).where(cls.id.in_(list(tenant_ids)))).all()
        identity = _database_identity()
        return {row.id: (row.last_seq, f"{row.epoch}.{identity}" if identity else row.epoch) for row in rows}


def _database_identity():
    """The PostgreSQL database's oid (new after a restore into a new database); '' on SQLite."""
    if db.session.get_bind().dialect.name != "postgresql":
        return ""
    return str(db.session.scalar(text("SELECT oid FROM pg_database WHERE datname = current_database()")))


class CampaignState:
    """What a campaign does with its events and how clients see it, on its columns' attributes.

    Shared by the ``Campaign`` model and ``CampaignRow``, the plain object the worker applies
    events to (see there).
    """

    __slots__ = ()

    @classmethod
    def new(cls, tenant_id, campaign_id):
        """A campaign first seen through one of its events, before ``campaign_started``."""
        return cls(
            tenant_id=tenant_id,
            id=campaign_id,
            name=campaign_id,
            status="running",
            total=0,
            sent=0,
            failed=0,
            version=0,
        )

    def apply(self, event, now):
        """Apply one validated event; return True when it is a status change to emit at once.

        A status event older than the newest applied one is kept in the history and bumps
        ``version``, but does not roll the status back; it is still emitted at once.
        """
        data = event.data
        kind = event.type
        self.version = (self.version or 0) + 1
        self.updated_at = now
        self.last_event_type = kind
        if kind == "message_sent":
            self.sent = (self.sent or 0) + 1
            return False
        if kind == "message_failed":
            self.failed = (self.failed or 0) + 1
            self.last_error = data["error"][:ERROR_TEXT_LIMIT]
            return False
        if kind == "next_message_starting":
            self.current_message = data["message_id"]
            return False
        if kind == "campaign_started":
            self.name = data["name"]
            self.total = data["total_messages"]
            if self.started_at is None:
                self.started_at = event.occurred_at
        in_order = self.status_changed_at is None or event.occurred_at >= self.status_changed_at
        if not in_order:
            return True  # never merged away (the contract), though the status stays
        self.status_changed_at = event.occurred_at
        self.status = STATUS_BY_EVENT[kind]
        if kind == "campaign_started":
            self.started_at = event.occurred_at
        elif kind == "campaign_completed":
            self.completed_at = event.occurred_at
        elif kind == "campaign_failed":
            self.last_error = data["error"][:ERROR_TEXT_LIMIT]
        return True

    @property
    def pending(self):
        """Messages neither sent nor failed yet."""
        return max(self.total - self.sent - self.failed, 0)

    @property
    def progress(self):
        """Share of messages done, in [0, 1]; 0 for a campaign without a total."""
        if not self.total:
            return 0.0
        return min(max((self.sent + self.failed) / self.total, 0.0), 1.0)

    def to_dict(self):
        """The ``<campaign>`` object of the contract."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "status": self.status,
            "total": self.total,
            "sent": self.sent,
            "failed": self.failed,
            "pending": self.pending,
            "progress": self.progress,
            "current_message": self.current_message,
            "last_error": self.last_error,
            "started_at": isoformat(self.started_at),
            "updated_at": isoformat(self.updated_at),
            "completed_at": isoformat(self.completed_at),
            "version": self.version,
            "failure_alert": self.failure_alert,
        }


class Campaign(CampaignState, db.Model):
    """The live state of one campaign, built by applying its events one by one."""

    __tablename__ = "campaigns"
    __table_args__ = (
        Index("ix_campaigns_emit_due_at", "emit_due_at"),
        Index("ix_campaigns_tenant_updated", "tenant_id", "updated_at"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="running")
    total: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    current_message: Mapped[str | None] = mapped_column(String(128))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_event_type: Mapped[str | None] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # occurred_at of the newest status event applied: older ones never roll the status back.
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Throttle state, kept here so that any worker can deliver a merged update after a crash.
    last_emitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    emit_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # campaigns/rules.py: the alert the clients see, and the message counts it is decided on.
    failure_alert: Mapped[dict | None] = mapped_column(JSONType)
    failure_window: Mapped[list | None] = mapped_column(JSONType)

    @classmethod
    def snapshot_query(cls, tenant_id, now, status=None):
        """The snapshot's set: running and paused campaigns and those ended in the last 24 h."""
        query = select(cls).where(
            cls.tenant_id == tenant_id,
            # Ended in the last 24 h: by the time of the status event that ended it, not by when an
            # event (maybe a late one) was last applied.
            or_(
                cls.status.in_(ACTIVE_STATUSES),
                func.coalesce(cls.status_changed_at, cls.updated_at) >= now - SNAPSHOT_ENDED_WITHIN,
            ),
        )
        if status is not None:
            query = query.where(cls.status == status)
        return query.order_by(cls.created_at.desc(), cls.id).limit(SNAPSHOT_LIMIT)

    @classmethod
    def live_set(cls, tenant_id, now, limit):
        """The snapshot's set without its cut at 500, newest first, as ``(campaign, created_at, ended_at)``.

        ``ended_at`` is when a campaign that is no longer running or paused ended (None otherwise):
        what the snapshot filters on after 24 h.
        """
        query = cls.snapshot_query(tenant_id, now).limit(limit)
        return [(campaign.to_dict(), campaign.created_at, campaign.ended_at) for campaign in db.session.scalars(query)]

    @classmethod
    def order_keys(cls, tenant_id, campaign_ids):
        """``{campaign_id: (created_at, ended_at)}``: where campaigns first seen in the stream belong."""
        query = select(cls).where(cls.tenant_id == tenant_id, cls.id.in_(list(campaign_ids)))
        return {campaign.id: (campaign.created_at, campaign.ended_at) for campaign in db.session.scalars(query)}

    @property
    def ended_at(self):
        """When the campaign stopped running or paused, by its status event; None while it runs."""
        if self.status in ACTIVE_STATUSES:
            return None
        return self.status_changed_at or self.updated_at

    @classmethod
    def snapshot(cls, tenant_id, status=None):
        """``{"seq", "campaigns"}`` for a tenant, read in one transaction so both agree."""
        seq = db.session.scalar(select(Tenant.last_seq).where(Tenant.id == tenant_id)) or 0
        campaigns = db.session.scalars(cls.snapshot_query(tenant_id, utcnow(), status)).all()
        return {"seq": seq, "campaigns": [campaign.to_dict() for campaign in campaigns]}


class CampaignRow(CampaignState):
    """A campaign's columns as a plain object, with ``Campaign``'s behaviour.

    The worker loads the campaigns of each batch, applies the events to them and writes them
    back with one statement (campaigns/ingest.py); it never needs the ORM's unit of work for
    them. A model instance costs ~20 instrumented attribute sets to build and one event hook
    per attribute the events change: building ``Campaign`` objects alone was 16 % of the
    worker's CPU at 1,000 events/s (py-spy, bench/latency.py).
    """

    __slots__ = tuple(column.name for column in Campaign.__table__.columns)

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, values.pop(name, None))
        if values:
            raise TypeError(f"not a column of campaigns: {', '.join(sorted(values))}")

    @classmethod
    def from_row(cls, row):
        """The campaign of a result row that has every column of ``campaigns``."""
        return cls(**row._mapping)


class CampaignFailureReason(db.Model):
    """How many of a campaign's messages failed with one reason (campaigns/reasons.py buckets)."""

    __tablename__ = "campaign_failure_reasons"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "campaign_id"], ["campaigns.tenant_id", "campaigns.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # "" is the bucket of the reasons past the campaign's first REASON_LIMIT.
    reason: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class AppliedEvent(db.Model):
    """An inbound event that was applied: makes applying idempotent and is the history."""

    __tablename__ = "applied_events"
    __table_args__ = (
        Index("ix_applied_events_campaign", "tenant_id", "campaign_id", "applied_at"),
        Index("ix_applied_events_applied_at", "applied_at"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    data: Mapped[dict] = mapped_column(JSONType, default=dict)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CampaignUpdate(db.Model):
    """An emitted ``campaign_update``, stored under its tenant's ``seq`` for replay."""

    __tablename__ = "campaign_updates"
    __table_args__ = (Index("ix_campaign_updates_created_at", "created_at"),)

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    campaign_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @classmethod
    def after(cls, tenant_id, after_seq, limit, not_before):
        """Stored updates of a tenant with ``seq > after_seq``, oldest first, within retention."""
        query = (
            select(cls.payload)
            .where(cls.tenant_id == tenant_id, cls.seq > after_seq, cls.created_at >= not_before)
            .order_by(cls.seq)
            .limit(limit)
        )
        return db.session.scalars(query).all()

    @classmethod
    def newest(cls, tenant_id, up_to_seq, limit, not_before):
        """The newest ``limit`` kept updates with ``seq <= up_to_seq``, oldest first."""
        query = (
            select(cls.payload)
            .where(cls.tenant_id == tenant_id, cls.seq <= up_to_seq, cls.created_at >= not_before)
            .order_by(cls.seq.desc())
            .limit(limit)
        )
        return db.session.scalars(query).all()[::-1]

    @classmethod
    def history_expired(cls, tenant_id, after_seq, not_before):
        """True when updates right after ``after_seq`` are no longer kept (or never existed)."""
        latest = db.session.scalar(select(Tenant.last_seq).where(Tenant.id == tenant_id)) or 0
        if after_seq > latest:
            return True
        if after_seq == latest:
            return False
        oldest_kept = db.session.scalar(
            select(func.min(cls.seq)).where(cls.tenant_id == tenant_id, cls.created_at >= not_before)
        )
        return oldest_kept is None or oldest_kept > after_seq + 1


class ApiKey(db.Model):
    """A tenant's API key, stored as a SHA-256 hash; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class User(UserMixin, db.Model):
    """A person using the admin pages: belongs to one tenant, or is a platform admin."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    tenant_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def set_password(self, password):
        """Store a salted scrypt hash of the password (Werkzeug)."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password):
        """True when ``password`` is this user's."""
        return check_password_hash(self.password_hash, password)


class ServerPresence(db.Model):
    """A Socket.IO server's connection counts, written by the server every few seconds (sockets/presence.py).

    Each server only knows its own connections; this row is how the ops page sees them all.
    A row whose ``seen_at`` is older than a few heartbeats belongs to a server that is gone.
    """

    __tablename__ = "server_presence"
    __table_args__ = (Index("ix_server_presence_seen_at", "seen_at"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # {"transports": {"websocket": n, "polling": n}, "tenants": {tenant_id: n}}
    clients: Mapped[dict] = mapped_column(JSONType, default=dict)
