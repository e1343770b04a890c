"""Failures by reason: the bucket rule, counts kept by the worker's transaction, the API's answer."""

import threading

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from campaigns.ingest import TenantLocks, apply_batch
from campaigns.models import CampaignFailureReason
from campaigns.reasons import OTHER, REASON_TEXT_LIMIT, bucket_reasons, top_reasons
from campaigns.timeutil import utcnow
from tests.test_api import acme, bearer, cli, token  # noqa: F401 - fixtures
from tests.test_ingest import T0, apply, campaign, ev, started, tenants  # noqa: F401 - fixtures


def failed(i, error, **kw):
    return ev("message_failed", {"message_id": f"f{i}", "error": error}, **kw)


def test_the_first_twenty_reasons_keep_their_bucket_and_later_ones_share_other():
    errors = [f"reason {n}" for n in range(25)] + ["reason 3", "reason 24"]
    counts = bucket_reasons(set(), errors)
    assert len(counts) == 21 and counts[OTHER] == 6 and counts["reason 3"] == 2
    assert bucket_reasons({"a", "b"}, ["c", "a"], limit=2) == {OTHER: 1, "a": 1}
    assert bucket_reasons({"a", OTHER}, ["b"], limit=2) == {"b": 1}
    assert bucket_reasons(set(), ["  rate\n limited ", "x" * 500]) == {"rate limited": 1, "x" * REASON_TEXT_LIMIT: 1}


def test_top_reasons_are_largest_first_with_other_last_and_shares_of_all_failures():
    rows = [("rate limited", 30), (OTHER, 8), ("not on WhatsApp", 62)]
    assert top_reasons(rows) == [
        {"reason": "not on WhatsApp", "count": 62, "share": 0.62},
        {"reason": "rate limited", "count": 30, "share": 0.3},
        {"reason": None, "count": 8, "share": 0.08},
    ]
    assert top_reasons([]) == []


def test_counts_cover_the_whole_campaign_across_batches(db_session, tenants):  # noqa: F811
    apply(db_session, [started(1000)])
    for batch in range(5):
        events = [failed(batch * 100 + i, "not on WhatsApp") for i in range(62)]
        events += [failed(batch * 100 + 62 + i, "rate limited") for i in range(30)]
        events += [failed(batch * 100 + 92 + i, f"odd error {batch}-{i}") for i in range(8)]
        apply(db_session, events)
    assert campaign(db_session).failed == 500
    rows = dict(db_session.execute(select(CampaignFailureReason.reason, CampaignFailureReason.count)).all())
    assert len(rows) == 21, "20 named reasons and the other bucket, never more"
    assert rows["not on WhatsApp"] == 310 and rows["rate limited"] == 150
    assert sum(rows.values()) == 500


def test_several_workers_count_every_failure_once(app, db_session, tenants):  # noqa: F811
    from extensions import db

    engine = db.engine
    apply(db_session, [started(100000)])
    errors = ["timeout", "banned", "rate limited"]

    def worker(offset):
        session = Session(bind=engine.connect(), expire_on_commit=False)
        locks = TenantLocks(session)
        for batch in range(20):
            events = [failed(offset + batch * 60 + i, errors[i % 3]) for i in range(60)]
            apply_batch(session, events, utcnow(), 2.0, locks)
            session.commit()
            locks.release()
        session.close()

    threads = [threading.Thread(target=worker, args=(n * 100000,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert campaign(db_session).failed == 3600
    rows = dict(db_session.execute(select(CampaignFailureReason.reason, CampaignFailureReason.count)).all())
    assert rows == {"timeout": 1200, "banned": 1200, "rate limited": 1200}
    assert db_session.scalar(select(func.sum(CampaignFailureReason.count))) == 3600


def test_the_api_answers_failures_by_reason(app, store, token):  # noqa: F811
    apply(store, [started(100, tenant="acme", campaign="bf")])
    apply(store, [failed(i, "not on WhatsApp", campaign="bf") for i in range(3)] + [failed(9, "rate limited")])
    body = app.test_client().get("/api/campaigns/bf", headers=bearer(token)).get_json()
    assert body["failed"] == 4
    assert body["failure_reasons"] == [
        {"reason": "not on WhatsApp", "count": 3, "share": 0.75},
        {"reason": "rate limited", "count": 1, "share": 0.25},
    ]
