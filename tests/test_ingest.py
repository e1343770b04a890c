"""Applying events to PostgreSQL: effects, idempotency, status order, throttle, seq."""

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DataError

from campaigns.events import validate_event
from campaigns.ingest import (
    CAMPAIGN_STATE,
    TenantLocks,
    _load_campaigns,
    _save_campaigns,
    apply_batch,
    flush_due_updates,
    prune,
)
from campaigns.models import Campaign, CampaignUpdate, Tenant
from campaigns.rules import WINDOW_PHASE_SPREAD_SECONDS, window_phase
from campaigns.timeutil import isoformat, utcnow
from tests.support import RecordingEmitter, wait_until

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def ev(kind, data=None, tenant="acme", campaign="bf", at=T0, event_id=None):
    return validate_event(
        {
            "event_id": event_id or str(uuid.uuid4()),
            "type": kind,
            "tenant_id": tenant,
            "campaign_id": campaign,
            "occurred_at": isoformat(at),
            "data": data or {},
        }
    )


def started(total=100, name="Black Friday", **kw):
    return ev("campaign_started", {"name": name, "total_messages": total}, **kw)


def sent(i=0, **kw):
    return ev("message_sent", {"message_id": f"m{i}"}, **kw)


@pytest.fixture
def tenants(db_session):
    db_session.add_all([Tenant(id="acme", name="Acme", last_seq=0), Tenant(id="globex", name="Globex", last_seq=0)])
    db_session.commit()


def apply(session, events, now=T0, throttle=2.0):
    result = apply_batch(session, events, now, throttle)
    session.commit()
    return result


def campaign(session, tenant="acme", campaign_id="bf"):
    session.expire_all()
    return session.get(Campaign, (tenant, campaign_id))


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([started(10)], {"status": "running", "total": 10, "name": "Black Friday", "pending": 10}),
        ([started(10), sent(1), sent(2)], {"sent": 2, "pending": 8, "progress": 0.2}),
        (
            [started(4), ev("message_failed", {"message_id": "m", "error": "no whatsapp"})],
            {"failed": 1, "last_error": "no whatsapp", "progress": 0.25},
        ),
        (
            [started(4), ev("next_message_starting", {"message_id": "m-7", "position": 7})],
            {"current_message": "m-7", "sent": 0},
        ),
        ([started(4), ev("campaign_paused", {"reason": "night"}, at=T0 + timedelta(seconds=1))], {"status": "paused"}),
        (
            [
                started(4),
                ev("campaign_paused", at=T0 + timedelta(seconds=1)),
                ev("campaign_resumed", at=T0 + timedelta(seconds=2)),
            ],
            {"status": "running"},
        ),
        (
            [started(4), ev("campaign_completed", at=T0 + timedelta(seconds=3))],
            {"status": "completed", "completed_at": isoformat(T0 + timedelta(seconds=3))},
        ),
        (
            [started(4), ev("campaign_failed", {"error": "quota"}, at=T0 + timedelta(seconds=1))],
            {"status": "failed", "last_error": "quota"},
        ),
        ([started(4), ev("campaign_cancelled", at=T0 + timedelta(seconds=1))], {"status": "cancelled"}),
        ([sent(1)], {"status": "running", "name": "bf", "total": 0, "sent": 1, "progress": 0.0, "pending": 0}),
        ([started(1), sent(1), sent(2), sent(3)], {"sent": 3, "pending": 0, "progress": 1.0}),
    ],
    ids=[
        "started",
        "sent",
        "message_failed",
        "next_message",
        "paused",
        "resumed",
        "completed",
        "failed",
        "cancelled",
        "unknown_campaign",
        "progress_capped",
    ],
)
def test_each_event_type_has_its_effect(db_session, tenants, events, expected):
    apply(db_session, events)
    state = campaign(db_session).to_dict()
    assert {key: state[key] for key in expected} == expected
    assert state["version"] == len(events)


def test_an_event_delivered_twice_is_applied_once(db_session, tenants):
    events = [started(10), sent(1), sent(2), ev("message_failed", {"message_id": "m3", "error": "x"})]
    first = apply(db_session, events)
    again = apply(db_session, events + events, now=T0 + timedelta(seconds=5))
    state = campaign(db_session)
    assert (state.sent, state.failed, state.version) == (2, 1, 4)
    assert len(first.applied) == 4
    assert (len(again.applied), again.duplicates) == (0, 8)
    assert again.updates == []


def test_event_ids_are_scoped_to_their_tenant(db_session, tenants):
    apply(db_session, [sent(1, event_id="same"), sent(1, tenant="globex", event_id="same")])
    assert campaign(db_session).sent == 1
    assert campaign(db_session, "globex").sent == 1


def test_an_older_status_event_never_rolls_the_status_back(db_session, tenants):
    apply(db_session, [started(5), ev("campaign_completed", at=T0 + timedelta(minutes=5))])
    result = apply(db_session, [ev("campaign_paused", at=T0 + timedelta(minutes=1))], now=T0 + timedelta(seconds=10))
    state = campaign(db_session)
    assert state.status == "completed"
    assert state.version == 3
    assert len(result.applied) == 1
    # Still a status event: emitted at once with its own type, never merged away.
    assert [(u["type"], u["campaign"]["status"], u["campaign"]["version"]) for u in result.updates] == [
        ("campaign_paused", "completed", 3)
    ]
    assert campaign(db_session).emit_due_at is None


def test_progress_is_the_exact_share_of_messages_done(db_session, tenants):
    result = apply(db_session, [started(3), sent(1)])
    assert result.updates[-1]["campaign"]["progress"] == 1 / 3


def test_unknown_tenants_are_reported_and_not_applied(db_session, tenants):
    result = apply(db_session, [sent(1, tenant="nobody"), sent(2)])
    assert [event.tenant_id for event in result.unknown_tenant] == ["nobody"]
    assert campaign(db_session, "nobody") is None
    assert campaign(db_session).sent == 1


def test_progress_is_throttled_leading_then_trailing(db_session, tenants):
    lead = apply(db_session, [sent(1)], now=T0)
    assert [u["campaign"]["sent"] for u in lead.updates] == [1]
    merged = apply(db_session, [sent(2), sent(3)], now=T0 + timedelta(seconds=0.5))
    assert merged.updates == []
    assert merged.merged == 2
    due_at = T0 + timedelta(seconds=2 + window_phase("acme", "bf"))
    assert campaign(db_session).emit_due_at == due_at
    more = apply(db_session, [sent(4)], now=T0 + timedelta(seconds=1.5))
    assert more.updates == []
    early = flush_due_updates(db_session, due_at - timedelta(milliseconds=1))
    assert early == []
    due = flush_due_updates(db_session, due_at)
    db_session.commit()
    assert [(u["type"], u["campaign"]["sent"]) for u in due] == [("message_sent", 4)]
    assert campaign(db_session).emit_due_at is None
    # the window restarts at the trailing emit
    assert apply(db_session, [sent(5)], now=T0 + timedelta(seconds=3)).updates == []
    assert apply(db_session, [sent(6)], now=T0 + timedelta(seconds=3.5)).updates == []
    next_due = due_at + timedelta(seconds=2 + window_phase("acme", "bf"))
    assert flush_due_updates(db_session, next_due - timedelta(milliseconds=1)) == []
    assert [u["campaign"]["sent"] for u in flush_due_updates(db_session, next_due)] == [6]


def test_a_burst_gives_one_update_at_once_and_one_at_the_window_end(db_session, tenants):
    first = apply(db_session, [started(200)], now=T0)
    lead = apply(db_session, [sent(0)], now=T0 + timedelta(seconds=0.01))
    burst = apply(db_session, [sent(i) for i in range(1, 200)], now=T0 + timedelta(seconds=0.02))
    due = flush_due_updates(db_session, T0 + timedelta(seconds=2.01 + window_phase("acme", "bf")))
    db_session.commit()
    assert [u["type"] for u in first.updates] == ["campaign_started"]
    # a status update does not open the progress window: the first progress goes at once
    assert [u["campaign"]["sent"] for u in lead.updates] == [1]
    assert burst.updates == []
    assert [(u["campaign"]["sent"], u["campaign"]["pending"]) for u in due] == [(200, 0)]


def test_status_events_are_never_merged_away(db_session, tenants):
    t = T0
    events = [
        started(10, at=t),
        sent(1),
        ev("campaign_paused", at=t + timedelta(seconds=1)),
        ev("campaign_resumed", at=t + timedelta(seconds=2)),
        sent(2),
        ev("campaign_completed", at=t + timedelta(seconds=3)),
    ]
    result = apply(db_session, events, now=T0)
    assert [(u["type"], u["campaign"]["status"]) for u in result.updates] == [
        ("campaign_started", "running"),
        ("campaign_paused", "paused"),
        ("campaign_resumed", "running"),
        ("campaign_completed", "completed"),
    ]
    assert result.updates[-1]["campaign"]["sent"] == 2
    assert campaign(db_session).emit_due_at is None


def test_seq_numbers_each_tenants_updates_without_gaps(db_session, tenants):
    apply(
        db_session,
        [started(3, at=T0), ev("campaign_paused", at=T0 + timedelta(seconds=1)), started(3, tenant="globex")],
    )
    apply(db_session, [ev("campaign_resumed", at=T0 + timedelta(seconds=2))], now=T0 + timedelta(seconds=1))
    rows = db_session.query(CampaignUpdate).order_by(CampaignUpdate.tenant_id, CampaignUpdate.seq).all()
    assert [(row.tenant_id, row.seq, row.payload["type"]) for row in rows] == [
        ("acme", 1, "campaign_started"),
        ("acme", 2, "campaign_paused"),
        ("acme", 3, "campaign_resumed"),
        ("globex", 1, "campaign_started"),
    ]
    assert db_session.get(Tenant, "acme").last_seq == 3
    assert all(row.payload["replayed"] is False and row.payload["seq"] == row.seq for row in rows)


def test_stored_updates_are_read_back_in_order_and_expire(db_session, tenants):
    for i in range(5):
        apply(
            db_session,
            [ev("campaign_paused" if i % 2 else "campaign_resumed", at=T0 + timedelta(seconds=i))],
            now=T0 + timedelta(seconds=i),
        )
    assert [p["seq"] for p in CampaignUpdate.after("acme", 2, 100, T0 - timedelta(days=1))] == [3, 4, 5]
    assert CampaignUpdate.history_expired("acme", 2, T0 - timedelta(days=1)) is False
    assert CampaignUpdate.history_expired("acme", 5, T0) is False
    assert CampaignUpdate.history_expired("acme", 0, T0 + timedelta(seconds=1)) is True
    assert CampaignUpdate.history_expired("acme", 9, T0) is True
    prune(db_session, T0 + timedelta(seconds=3, milliseconds=1), 2, 86400)
    db_session.commit()
    assert [u.seq for u in db_session.query(CampaignUpdate).filter_by(tenant_id="acme")] == [3, 4, 5]


def test_a_backlog_of_history_is_pruned_in_chunks(db_session, tenants):
    for i in range(5):
        at = T0 + timedelta(seconds=i)
        apply(db_session, [ev("campaign_paused" if i % 2 else "campaign_resumed", at=at)], now=at)
    later = T0 + timedelta(days=30)
    chunks = []
    while not chunks or any(chunks[-1].values()):
        chunks.append(prune(db_session, later, 86400, 86400, limit=2))
        db_session.commit()
    assert [chunk["applied_events"] for chunk in chunks] == [2, 2, 1, 0]
    assert [chunk["campaign_updates"] for chunk in chunks] == [2, 2, 1, 0]
    assert db_session.query(CampaignUpdate).count() == 0


def test_snapshot_holds_active_and_recently_ended_campaigns_newest_first(db_session, tenants):
    now = datetime.now(timezone.utc)
    apply(db_session, [started(5, campaign="old", at=now - timedelta(days=3))], now=now - timedelta(days=3))
    apply(
        db_session, [ev("campaign_completed", campaign="old", at=now - timedelta(days=2))], now=now - timedelta(days=2)
    )
    apply(db_session, [started(5, campaign="done", at=now - timedelta(hours=2))], now=now - timedelta(hours=2))
    apply(
        db_session,
        [ev("campaign_completed", campaign="done", at=now - timedelta(hours=1))],
        now=now - timedelta(hours=1),
    )
    apply(db_session, [started(5, campaign="live", at=now)], now=now)
    apply(db_session, [started(5, campaign="theirs", tenant="globex", at=now)], now=now)
    snapshot = Campaign.snapshot("acme")
    assert [c["id"] for c in snapshot["campaigns"]] == ["live", "done"]
    assert snapshot["seq"] == 5
    assert [c["id"] for c in Campaign.snapshot("acme", status="completed")["campaigns"]] == ["done"]


def test_the_shutdown_flush_ends_while_other_workers_keep_applying(app, db_session, tenants):
    """Under load, every forced chunk lets new windows open: the flush must still end."""
    from kombu import Connection
    from sqlalchemy.orm import Session

    from extensions import db
    from worker.consumer import EventConsumer

    stop, recorder, engine = threading.Event(), RecordingEmitter(), db.engine

    def other_worker():
        session = Session(bind=engine.connect(), expire_on_commit=False)
        locks, i = TenantLocks(session), 0
        while not stop.is_set():
            batch = [sent(i * 100 + k, campaign=f"c{k % 200}") for k in range(100)]
            apply_batch(session, batch, utcnow(), 1.0, locks)
            session.commit()
            locks.release()
            i += 1
        session.close()

    others = [threading.Thread(target=other_worker, daemon=True) for _ in range(2)]
    for thread in others:
        thread.start()
    try:
        wait_until(lambda: db_session.scalar(select(func.count()).where(Campaign.emit_due_at.is_not(None))), 30)
        settings = {**app.config, "THROTTLE_SECONDS": 1.0}
        consumer = EventConsumer(Connection("memory://"), engine, recorder, settings)
        flush = threading.Thread(target=consumer.emit_due_updates, kwargs={"force": True}, daemon=True)
        flush.start()
        flush.join(30)
        assert not flush.is_alive(), "the shutdown flush did not end"
        consumer.close_database()
    finally:
        stop.set()
        for thread in others:
            thread.join(30)
    assert recorder.payloads


def test_tenant_locks_are_confirmed_and_released_outside_a_transaction(app, db_session, tenants):
    """After a batch's commit the worker checks its session, emits, then releases its locks: each
    one statement with no transaction around it (psycopg2 would add a BEGIN and a COMMIT, two
    round trips more on the way to every emit), and each does what it says."""
    import psycopg2
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from extensions import db

    connection = db.engine.connect()
    session = Session(bind=connection, expire_on_commit=False)
    locks = TenantLocks(session)
    apply_batch(session, [started()], utcnow(), 2.0, locks)
    session.commit()
    backend = session.scalar(text("SELECT pg_backend_pid()"))
    session.commit()
    lock_of_acme = "SELECT pg_try_advisory_lock(7281, hashtext('acme'))"
    with db.engine.connect() as other:
        assert other.scalar(text(lock_of_acme)) is False  # held by the worker's session
        begun = []
        event.listen(connection, "begin", lambda conn: begun.append(conn))
        locks.confirm_held()
        locks.release()
        assert begun == []
        driver_connection = connection.connection.dbapi_connection
        assert driver_connection.autocommit is False  # the session's next batch is a transaction again
        state = other.scalar(text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend})
        assert state == "idle"  # not "idle in transaction": idle_session_timeout still applies
        assert other.scalar(text(lock_of_acme)) is True
        other.execute(text("SELECT pg_advisory_unlock_all()"))
        other.commit()

        # A statement that fails leaves the connection out of autocommit all the same.
        with pytest.raises(psycopg2.Error):
            locks.between_transactions("SELECT 1 / 0")
        assert driver_connection.autocommit is False
        assert session.scalar(text("SELECT 2")) == 2
        session.rollback()

        # Inside a transaction they would not run alone: refused, the transaction left as it was.
        session.execute(text("SELECT 1"))
        with pytest.raises(RuntimeError):
            locks.confirm_held()
        session.rollback()

        # A session that is gone (idle_session_timeout, an operator) fails the check: no emit.
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        other.commit()
    with pytest.raises(psycopg2.Error):
        locks.confirm_held()
    session.close()
    connection.invalidate()
    connection.close()


def test_a_worker_whose_session_is_gone_after_its_commit_does_not_emit(app, db_session, tenants):
    """Another worker may own the tenant's locks and have emitted later ``seq`` numbers: the
    committed updates stay stored (clients replay them), none is emitted, the connection is dropped."""
    from kombu import Connection

    from extensions import db
    from worker.consumer import EventConsumer

    recorder = RecordingEmitter()
    emitted = recorder.payloads
    consumer = EventConsumer(Connection("memory://"), db.engine, recorder, app.config)

    def apply_one(event):
        return consumer.in_transaction(lambda session: apply_batch(session, [event], utcnow(), 2.0, consumer.locks))

    result = apply_one(started())
    consumer.emit_under_locks(result.updates)
    consumer.release_locks()
    assert [payload["seq"] for payload in emitted] == [update["seq"] for update in result.updates] != []

    result = apply_one(ev("campaign_paused"))
    backend = consumer.session.scalar(text("SELECT pg_backend_pid()"))
    consumer.session.commit()
    db_session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    db_session.commit()
    consumer.emit_under_locks(result.updates)
    consumer.release_locks()
    assert len(emitted) == 1
    assert consumer.session is None  # dropped: the next batch opens a new session
    stored = db_session.scalars(select(CampaignUpdate.seq).order_by(CampaignUpdate.seq)).all()
    assert stored[-1] == result.updates[-1]["seq"]
    consumer.close_database()


def failed(i=0, **kw):
    return ev("message_failed", {"message_id": f"f{i}", "error": "number banned"}, **kw)


def test_a_failing_campaign_raises_its_alert_at_once_and_clears_it_when_failures_stop(db_session, tenants):
    apply(db_session, [started(1000)], now=T0)
    # 25 messages, 10 failed (40 %), in the progress window that the start opened: still emitted at once.
    batch = [sent(i) for i in range(15)] + [failed(i) for i in range(10)]
    result = apply(db_session, batch, now=T0 + timedelta(seconds=1))
    assert result.alerts_raised == 1
    (update,) = result.updates
    alert = update["campaign"]["failure_alert"]
    assert alert == {"rate": 0.4, "window_seconds": 60.0, "since": isoformat(T0 + timedelta(seconds=1))}
    assert campaign(db_session).failure_alert == alert
    # Still failing: no new emission at once, the stored alert follows the rate.
    result = apply(db_session, [failed(i) for i in range(10, 15)], now=T0 + timedelta(seconds=1, milliseconds=500))
    assert result.updates == [] and campaign(db_session).failure_alert["rate"] == 0.5
    # A minute later the window holds only successes: the share falls under 10 % and the alert clears at once.
    later = T0 + timedelta(seconds=75)
    result = apply(db_session, [sent(i) for i in range(100, 130)], now=later)
    (update,) = result.updates
    assert update["campaign"]["failure_alert"] is None and result.alerts_raised == 0


def test_pausing_a_campaign_clears_its_alert(db_session, tenants):
    apply(db_session, [started(100)], now=T0)
    apply(db_session, [failed(i) for i in range(30)], now=T0 + timedelta(seconds=1))
    assert campaign(db_session).failure_alert is not None
    result = apply(db_session, [ev("campaign_paused", at=T0 + timedelta(seconds=2))], now=T0 + timedelta(seconds=2))
    assert [u["campaign"]["failure_alert"] for u in result.updates] == [None]
    assert campaign(db_session).failure_alert is None


def test_the_windows_of_campaigns_started_together_fall_due_spread_out(db_session, tenants):
    ids = [f"c{number}" for number in range(50)]
    apply(db_session, [started(100, campaign=c) for c in ids] + [sent(0, campaign=c) for c in ids], now=T0)
    apply(db_session, [sent(1, campaign=c) for c in ids], now=T0 + timedelta(seconds=0.5))
    due = sorted(campaign(db_session, campaign_id=c).emit_due_at for c in ids)
    offsets = [(at - T0).total_seconds() for at in due]
    spread = WINDOW_PHASE_SPREAD_SECONDS
    assert all(2.0 <= offset < 2.0 + spread for offset in offsets), offsets
    assert offsets[-1] - offsets[0] >= spread * 0.8, "spread over the phase range, not one burst"
    assert len(set(offsets)) >= 40


def stored_text(session, campaign_id):
    """Every column of a campaign as PostgreSQL prints it (JSON null and SQL NULL told apart)."""
    columns = ", ".join(f"{name}::text" for name in CAMPAIGN_STATE)
    return session.execute(text(f"SELECT {columns} FROM campaigns WHERE id = :id"), {"id": campaign_id}).one()


def test_changed_campaigns_are_stored_as_an_update_per_row_stores_them(db_session, tenants):
    """The batch's one UPDATE over arrays (PostgreSQL) writes what a row's own UPDATE writes."""
    india = timezone(timedelta(hours=5, minutes=30))
    values = [
        {
            "name": 'quote \' "double" {brace} back\\slash, comma',
            "current_message": None,
            "last_error": None,
            "failure_alert": None,
            "failure_window": None,
            "started_at": None,
            "version": 2**40,
        },
        {
            "name": "ünïcödé ✓",
            "current_message": "m-1",
            "last_error": "NULL",
            "failure_alert": {"a": [1, "x"]},
            "failure_window": [],
            "started_at": datetime(2026, 11, 25, 17, 30, 0, 123456, tzinfo=india),
            "version": 0,
        },
        {
            "name": "",
            "current_message": "{}",
            "last_error": "multi\nline",
            "failure_alert": {},
            "failure_window": [[1, 2], None],
            "started_at": T0,
            "version": 7,
        },
    ]
    for prefix in ("batch", "row"):
        for number in range(len(values)):
            apply(db_session, [started(campaign=f"{prefix}-{number}")])
    loaded = _load_campaigns(db_session, {("acme", f"batch-{number}") for number in range(len(values))})
    batch = [loaded["acme", f"batch-{number}"] for number in range(len(values))]
    for campaign_row, changes in zip(batch, values, strict=True):
        for name, value in changes.items():
            setattr(campaign_row, name, value)
    _save_campaigns(db_session, [], batch)
    table = Campaign.__table__
    for number, campaign_row in enumerate(batch):
        row = {name: getattr(campaign_row, name) for name in CAMPAIGN_STATE}
        db_session.execute(update(table).where(table.c.tenant_id == "acme", table.c.id == f"row-{number}").values(row))
    db_session.commit()
    for number in range(len(values)):
        assert stored_text(db_session, f"batch-{number}") == stored_text(db_session, f"row-{number}")
    # Too long for its column: refused, as a row's UPDATE refuses it (not cut to fit).
    batch[0].name = "x" * 201
    with pytest.raises(DataError):
        _save_campaigns(db_session, [], batch)
    db_session.rollback()


def test_campaigns_are_loaded_by_key_as_the_orm_reads_them_and_locked(db_session, tenants, app):
    """``_load_campaigns`` (one statement over key arrays on PostgreSQL) returns exactly the asked
    campaigns, each column as the ORM's ``Campaign`` reads it, and holds their rows until commit."""
    for tenant, campaign_id in (("acme", "bf"), ("acme", "cm"), ("globex", "bf"), ("globex", "other")):
        apply(db_session, [started(tenant=tenant, campaign=campaign_id), sent(3, tenant=tenant, campaign=campaign_id)])
    asked = {("acme", "bf"), ("globex", "other"), ("acme", "missing")}  # not ("acme", "cm") nor ("globex", "bf")
    loaded = _load_campaigns(db_session, asked)
    assert set(loaded) == {("acme", "bf"), ("globex", "other")}
    with app.app_context():  # the ORM's reading, on a connection of its own
        from extensions import db

        with db.engine.connect() as other:
            for (tenant, campaign_id), row in loaded.items():
                orm = other.execute(select(Campaign.__table__).where(
                    Campaign.tenant_id == tenant, Campaign.id == campaign_id)).one()._mapping
                assert {name: getattr(row, name) for name in orm} == dict(orm)
                assert row.started_at.tzinfo == timezone.utc
            locked = text("SELECT id FROM campaigns WHERE tenant_id = :t AND id = :c FOR UPDATE NOWAIT")
            for tenant, campaign_id in (("acme", "bf"), ("globex", "other")):
                with pytest.raises(Exception, match="could not obtain lock"):
                    other.execute(locked, {"t": tenant, "c": campaign_id})
                other.rollback()
            for tenant, campaign_id in (("globex", "bf"), ("acme", "cm")):  # not asked: free
                assert other.execute(locked, {"t": tenant, "c": campaign_id}).all() == [(campaign_id,)]
                other.rollback()
    db_session.commit()


def test_a_due_update_emitted_meanwhile_by_another_worker_is_not_emitted_again(db_session, tenants, app):
    """The due flush reads its campaigns again under their row locks: a campaign whose update another
    transaction emitted while the flush waited for the row is left out (no second update, no seq)."""
    apply(db_session, [started(), sent(1)], now=T0)
    apply(db_session, [sent(2)], now=T0 + timedelta(seconds=0.5))  # merged: falls due at the window end
    due_at = campaign(db_session).emit_due_at
    assert due_at is not None
    stored_before = db_session.scalar(select(func.count()).select_from(CampaignUpdate))
    db_session.commit()
    engine = db_session.get_bind()
    flush_pid = db_session.connection().connection.dbapi_connection.get_backend_pid()  # the flush's connection
    other = engine.connect()
    other.execute(text("SELECT 1 FROM campaigns WHERE tenant_id = 'acme' AND id = 'bf' FOR UPDATE"))

    def waiting_for_a_row_lock():
        with engine.connect() as watcher:
            waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = :pid")
            return watcher.scalar(waiting, {"pid": flush_pid})

    def emit_elsewhere():  # once the flush waits for the row: what another worker's flush does
        try:
            wait_until(waiting_for_a_row_lock, 30, message="the flush waiting for the campaign's row")
            other.execute(text("UPDATE campaigns SET emit_due_at = NULL WHERE tenant_id = 'acme' AND id = 'bf'"))
        finally:
            other.commit()  # the row is free whatever happened: the flush never waits forever

    elsewhere = threading.Thread(target=emit_elsewhere, daemon=True)
    elsewhere.start()
    try:
        assert flush_due_updates(db_session, due_at) == []
        db_session.commit()
    finally:
        elsewhere.join(30)
        other.close()
    assert campaign(db_session).emit_due_at is None
    assert db_session.scalar(select(func.count()).select_from(CampaignUpdate)) == stored_before
