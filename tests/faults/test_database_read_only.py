"""The database read-only for 10 s under a confirmed stream, as after a failover to a replica.

``ALTER DATABASE ... SET default_transaction_read_only = on`` and the worker's sessions
terminated: every new session of the worker can read but not write (SQLSTATE 25006, which
psycopg2 raises as an InternalError, not an OperationalError). Then the setting is reset.
Valid events must wait, not be dead-lettered; the worker stays up and says it is not ready.
"""

import time
from contextlib import closing

import pytest

from campaigns.queues import DEAD_LETTER_QUEUE
from tests import support
from tests.faults.helpers import (
    applied_count,
    assert_exact,
    complete_campaigns,
    is_applied,
    outcome,
    queue_ready,
    report_outcome,
    start_progress_stream,
    wait_applied,
    worker_metrics,
    worker_probe,
)
from tests.support import metric, wait_until

READ_ONLY_SECONDS = 10.0
RATE = 50  # events per second


@pytest.fixture
def stack(database, vhost, tmp_path):
    # A short throttle window: merged updates fall due (and are written) during the outage too.
    with support.Stack(database, vhost, tmp_path, THROTTLE_SECONDS=0.5) as stack:
        yield stack


def set_read_only(database, on):
    """Make new sessions of ``database`` read-only (``on``) or writable; end its current sessions."""
    with closing(support.pg_admin()) as connection, connection.cursor() as cursor:
        if on:
            cursor.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            return cursor.fetchone()[0]
        cursor.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        return 0


def test_a_read_only_database_dead_letters_nothing_and_the_worker_waits(stack):
    port = support.free_port()
    worker = stack.start_worker(WORKER_METRICS_PORT=port)
    tenant = stack.create_tenant()
    campaigns = [(tenant, f"ro-{i}") for i in range(3)]
    ledger, stream = start_progress_stream(stack, campaigns, 17, RATE)
    readiness = []
    try:
        wait_until(lambda: applied_count(stack) >= RATE, 30, 0.05, "events applied before the fault")
        terminated = set_read_only(stack.database, True)
        read_only_at = time.monotonic()
        applied_during = []

        def probe_until_the_fault_ends():
            """One sample of what an operator sees; true once the fault has lasted its time."""
            readiness.append(worker_probe(port))
            applied_during.append((time.monotonic() - read_only_at, applied_count(stack)))
            return time.monotonic() >= read_only_at + READ_ONLY_SECONDS

        # The worker notices and says so (the event); the fault then lasts READ_ONLY_SECONDS in
        # all, sampled every 0.5 s.
        wait_until(lambda: probe_until_the_fault_ends() or readiness[-1][0] == 503, 10, 0.1, "/readyz 503")
        wait_until(probe_until_the_fault_ends, READ_ONLY_SECONDS + 5, 0.5, "the end of the fault")
        set_read_only(stack.database, False)
        writable_at = time.monotonic()
        backlog = len(ledger)
        first_new = wait_until(lambda: stream.first_confirmed_after(writable_at), 15, 0.05, "a new publish")
        wait_until(lambda: is_applied(stack, first_new), 30, 0.05, "the worker to apply events again")
        worker_back = time.monotonic()
        wait_applied(stack, backlog, 60, "the fault's backlog to be applied")
        backlog_applied = time.monotonic()
    finally:
        stream.stop()
        set_read_only(stack.database, False)

    complete_campaigns(stack, campaigns, ledger, 60)
    result = outcome(stack, ledger)
    dead = queue_ready(stack.broker_url, DEAD_LETTER_QUEUE)
    ready_after = wait_until(lambda: worker_probe(port)[0] == 200, 10, 0.1, "the worker's /readyz 200 again")
    scrape = worker_metrics(port)
    retries = metric(scrape, "campaign_live_worker_retries_total", reason="read_only")
    report_outcome(
        f"database read-only for {READ_ONLY_SECONDS:.0f} s (failover), sessions terminated",
        result,
        recovery_seconds=backlog_applied - writable_at,
        worker_recovery_seconds=worker_back - writable_at,
        dead_lettered=dead,
        sessions_terminated=terminated,
        retries_read_only=retries,
        readyz_during=sorted({status for status, _ in readiness}, key=str),
    )
    assert dead == 0, f"{dead} valid events dead-lettered:\n{worker.log()[-3000:]}"
    assert worker.alive(), worker.log()[-3000:]
    assert_exact(result)
    # Nothing was written while the database was read-only (a batch may end just after the switch).
    settled = [count for at, count in applied_during if at >= 2.0]
    assert settled and len(set(settled)) == 1, applied_during
    # What an operator sees: the worker says why it is not ready, and counts its retries.
    failing = [body["failing"] for status, body in readiness if status == 503 and body]
    assert failing and "database" in failing[-1], readiness
    assert ready_after and retries > 0
