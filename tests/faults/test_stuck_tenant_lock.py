"""A tenant's lock held by a stuck worker: the worker times out, says so, retries, and waits.

The test holds the tenant's advisory lock (campaigns/ingest.py TenantLocks) on a session of
its own, as a worker that hangs between its commit and its release would. The waiting
worker's ``lock_timeout`` (or, when that is the longer one, its ``statement_timeout``) ends
the wait with an error: it backs off and tries again, shows it in ``/readyz`` and
``campaign_live_worker_retries_total``, dead-letters nothing, and applies every event once
the lock is free. Without the timeouts it waits in silence, forever if the holder never
comes back.
"""

import time
from contextlib import closing

import psycopg2
import pytest

from campaigns.queues import DEAD_LETTER_QUEUE
from tests import support
from tests.faults.helpers import (
    Ledger,
    applied_count,
    assert_exact,
    complete_campaigns,
    outcome,
    progress_events,
    queue_ready,
    report_outcome,
    wait_applied,
    worker_metrics,
    worker_probe,
)
from tests.support import metric, wait_until

WAIT_LIMIT = 15.0  # for two timeouts of 1 s and the backoff between them
TIMEOUTS = {
    "lock_timeout": {"WORKER_LOCK_TIMEOUT_SECONDS": 1, "WORKER_STATEMENT_TIMEOUT_SECONDS": 30},
    "statement_timeout": {"WORKER_LOCK_TIMEOUT_SECONDS": 30, "WORKER_STATEMENT_TIMEOUT_SECONDS": 1},
}


@pytest.mark.parametrize("reason", list(TIMEOUTS))
def test_a_tenant_lock_that_is_not_given_back_times_out_and_is_retried(stack, reason):
    port = support.free_port()
    worker = stack.start_worker(WORKER_METRICS_PORT=port, **TIMEOUTS[reason])
    tenant = stack.create_tenant()
    campaigns = [(tenant, "stuck")]
    ledger = Ledger()
    events = progress_events(campaigns, seed=29, count=100)
    with stack.publisher() as publisher:
        first = next(events)
        publisher.publish(first)
        ledger.add(first)
        wait_applied(stack, 1, 30, "the campaign to start")
        with closing(psycopg2.connect(stack.database_url)) as holder, holder.cursor() as cursor:
            holder.autocommit = True
            cursor.execute("SELECT pg_advisory_lock(7281, hashtext(%s))", (tenant,))
            for item in events:
                publisher.publish(item)
                ledger.add(item)

            def timed_out_twice():
                return metric(worker_metrics(port), "campaign_live_worker_retries_total", reason=reason) >= 2

            wait_until(timed_out_twice, WAIT_LIMIT, 0.1, f"the worker to time out ({reason}) twice")
            readiness = worker_probe(port)
            applied_while_held = applied_count(stack)
            cursor.execute("SELECT pg_advisory_unlock(7281, hashtext(%s))", (tenant,))
        released_at = time.monotonic()
    wait_applied(stack, len(ledger), 30, "the events after the lock is released")
    flowing_at = time.monotonic()
    complete_campaigns(stack, campaigns, ledger, 30)
    result = outcome(stack, ledger)
    dead = queue_ready(stack.broker_url, DEAD_LETTER_QUEUE)
    report_outcome(
        f"tenant lock held by a stuck session until 2 timeouts ({reason} 1 s)",
        result,
        recovery_seconds=flowing_at - released_at,
        dead_lettered=dead,
        readyz_while_held=readiness,
    )
    assert dead == 0 and applied_while_held == 1, (dead, applied_while_held)
    assert_exact(result)
    assert worker.alive()
    status, body = readiness
    assert status == 503 and body["failing"]["database"]["reason"].startswith(reason), readiness
