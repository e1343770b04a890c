"""The worker's adaptive batches: progress waits for more while the stream is steady, a status
event ends the wait (worker/consumer.py ``batch_due``)."""

from datetime import datetime, timedelta, timezone

from campaigns.timeutil import isoformat
from tests import support
from tests.support import event, wait_until


def test_progress_waits_for_more_and_a_status_event_ends_the_wait(database, vhost, tmp_path):
    # A linger far longer than the test: progress alone would wait a minute for more.
    with support.Stack(database, vhost, tmp_path, WORKER_BATCH_LINGER_MS=60_000) as stack:
        tenant = stack.create_tenant()
        stack.start_worker()
        publisher = stack.publisher()
        try:
            start = event(tenant, "c1", "campaign_started", name="Batch", total_messages=100)
            publisher.publish(start)
            wait_until(lambda: stack.campaign(tenant, "c1"), 15, message="the campaign_started event applied")
            progress = [event(tenant, "c1", "message_sent", message_id=f"m-{i}") for i in range(20)]
            for e in progress:
                publisher.publish(e)  # confirmed one by one: they reach the worker spread out
            pause = event(tenant, "c1", "campaign_paused")
            pause["occurred_at"] = isoformat(datetime.now(timezone.utc) + timedelta(seconds=1))
            publisher.publish(pause)
            state = wait_until(
                lambda: (c := stack.campaign(tenant, "c1")) and c["status"] == "paused" and c,
                15,
                message="the pause applied long before the linger ends",
            )
        finally:
            publisher.close()
        assert state["sent"] == 20
        ids = [e["event_id"] for e in progress] + [pause["event_id"]]
        batches = stack.sql(
            "SELECT count(DISTINCT applied_at) FROM applied_events WHERE tenant_id = %s AND event_id = ANY(%s)",
            (tenant, ids),
        )[0][0]
        # The progress events waited for more, and the status event took them along in its batch.
        assert batches == 1
