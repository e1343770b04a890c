"""One of two workers frozen (SIGSTOP) right after its batch's COMMIT, with the tenant's lock held.

A frozen (or cut-off) worker cannot release anything itself. PostgreSQL ends its idle
session after ``WORKER_IDLE_SESSION_TIMEOUT_SECONDS`` and the session's advisory locks go
with it, so the other worker takes the tenant over; when the frozen one wakes up it finishes
its batch on a session that is gone: it must not emit that batch's updates then (the other
worker has emitted later ``seq`` since), so clients still get the tenant's live updates in
``seq`` order; nothing is lost or applied twice.
"""

import os
import signal
import time

import pytest

from tests import support
from tests.faults.helpers import (
    CommitTrigger,
    TcpProxy,
    applied_count,
    assert_exact,
    assert_in_order_without_gaps,
    complete_campaigns,
    last_seqs,
    outcome,
    proxied_database_url,
    report_outcome,
    start_progress_stream,
    stored_updates,
    tenant_client,
)
from tests.support import wait_until

RATE = 60  # events per second
IDLE_SESSION_TIMEOUT = 3.0
TAKE_OVER_LIMIT = IDLE_SESSION_TIMEOUT + 7.0


@pytest.fixture
def stack(database, vhost, tmp_path):
    # No throttle: every batch has updates to emit, the frozen worker's too.
    settings = {"WORKER_IDLE_SESSION_TIMEOUT_SECONDS": IDLE_SESSION_TIMEOUT, "THROTTLE_SECONDS": 0}
    with support.Stack(database, vhost, tmp_path, **settings) as stack:
        yield stack


def test_a_worker_frozen_while_holding_a_tenant_lock_loses_it_and_the_other_takes_over(stack, many_packets_per_poll):
    frozen = {}
    trigger = CommitTrigger(lambda: os.kill(frozen["worker"].pid, signal.SIGSTOP))
    proxy = TcpProxy(support.PG_HOST, support.PG_PORT, on_client_data=trigger.inspect).start()
    stopped = False
    try:
        server = stack.start_server()
        proxied = proxied_database_url(stack, proxy)
        frozen["worker"] = worker = stack.start_worker(DATABASE_URL=proxied)
        other = stack.start_worker()
        tenant = stack.create_tenant()
        campaigns = [(tenant, f"frozen-{i}") for i in range(3)]
        client = tenant_client(stack, server, tenant)
        ledger, stream = start_progress_stream(stack, campaigns, 31, RATE)
        try:
            wait_until(lambda: applied_count(stack) >= 2 * RATE, 30, 0.05, "both workers to apply events")
            trigger.arm()
            frozen_at = wait_until(lambda: trigger.fired_at, 30, 0.02, "a batch COMMIT of the proxied worker")
            stopped = True

            def applied_after_freeze():
                # RabbitMQ still delivers about half of the new events to the frozen worker: any
                # of them applied is the other worker's. The first few confirms after the freeze
                # may be of events delivered before it (a confirm comes after the delivery).
                keys = stream.confirmations_after(frozen_at)[5:]
                return (
                    keys
                    and stack.sql(
                        "SELECT count(*) FROM applied_events WHERE event_id = ANY(%s)", ([key[1] for key in keys],)
                    )[0][0]
                )

            wait_until(
                applied_after_freeze,
                TAKE_OVER_LIMIT,
                0.05,
                "the other worker to apply the tenant's events while the frozen one holds its lock",
            )
            taken_over_at = time.monotonic()
            os.kill(worker.pid, signal.SIGCONT)
            stopped = False
            wait_until(lambda: len(stream.confirmations_after(taken_over_at)) >= 2 * RATE, 30, 0.1, "more events")
        finally:
            stream.stop()
        complete_campaigns(stack, campaigns, ledger, 60)
        client.wait_caught_up(last_seqs(stack)[tenant], 30)
    finally:
        if stopped:
            os.kill(frozen["worker"].pid, signal.SIGCONT)
        proxy.close()

    result = outcome(stack, ledger)
    report_outcome(
        f"1 of 2 workers frozen after a COMMIT, tenant lock held (idle session timeout {IDLE_SESSION_TIMEOUT:.0f} s)",
        result,
        recovery_seconds=taken_over_at - frozen_at,
    )
    assert_exact(result)
    assert worker.alive() and other.alive()
    assert_in_order_without_gaps(client, stored_updates(stack, tenant))
    client.close()
