"""The worker's code deployed before ``flask db upgrade``: the database is one migration behind.

Every batch fails with an undefined column (a ProgrammingError, SQLSTATE 42703), which says
nothing about the events: they must wait in the queue, not be dead-lettered, and flow once
the operator runs ``flask db upgrade``. See tests/faults/pending_migration.py for how the
database is put one migration behind whatever the newest real migration is.
"""

import time

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
    started,
    wait_applied,
    worker_metrics,
    worker_probe,
)
from tests.faults.pending_migration import COLUMN, TABLE, PendingMigration
from tests.support import metric, wait_until

EVENTS = 300  # published while the schema is behind
RETRIES = 3  # the worker's failed attempts to wait for before the upgrade


def column_exists(stack):
    return bool(
        stack.sql(
            "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s", (TABLE, COLUMN)
        )
    )


def test_events_wait_for_db_upgrade_instead_of_being_dead_lettered(stack, tmp_path):
    pending = PendingMigration(tmp_path, stack.database_url)
    port = support.free_port()
    worker = stack.start_worker(WORKER_METRICS_PORT=port)
    tenant = stack.create_tenant()
    campaigns = [(tenant, f"schema-{i}") for i in range(2)]
    ledger = Ledger()
    with stack.publisher() as publisher:
        for tenant_id, campaign_id in campaigns:
            item = started(tenant_id, campaign_id, 10**6)
            publisher.publish(item)
            ledger.add(item)
        wait_applied(stack, len(ledger), 30, "the campaigns to start")

        pending.fall_behind()
        assert not column_exists(stack)
        for item in progress_events(campaigns, seed=23, count=EVENTS, start=False):
            publisher.publish(item)
            ledger.add(item)
    behind_since = time.monotonic()

    def retried(times):
        scrape = worker_metrics(port)
        return metric(scrape, "campaign_live_worker_retries_total", reason="schema_mismatch") >= times

    # The worker has tried the batch several times and given up on nothing (or, before the
    # fix, dead-lettered the whole batch one event at a time).
    wait_until(
        lambda: retried(RETRIES) or queue_ready(stack.broker_url, DEAD_LETTER_QUEUE) >= EVENTS,
        60,
        0.1,
        f"{RETRIES} retries of the worker (or every event dead-lettered)",
    )
    dead_while_behind = queue_ready(stack.broker_url, DEAD_LETTER_QUEUE)
    assert dead_while_behind == 0, f"{dead_while_behind} valid events dead-lettered:\n{worker.log()[-3000:]}"
    applied_while_behind = applied_count(stack)
    readiness = worker_probe(port)

    pending.upgrade()
    upgraded_at = time.monotonic()
    wait_applied(stack, len(ledger), 60, "the events to flow after db upgrade")
    flowing_at = time.monotonic()
    complete_campaigns(stack, campaigns, ledger, 60)

    result = outcome(stack, ledger)
    dead = queue_ready(stack.broker_url, DEAD_LETTER_QUEUE)
    report_outcome(
        "schema one migration behind the code, then flask db upgrade",
        result,
        recovery_seconds=flowing_at - upgraded_at,
        seconds_behind=upgraded_at - behind_since,
        dead_lettered=dead,
        readyz_while_behind=readiness,
    )
    assert dead == 0, f"valid events dead-lettered:\n{worker.log()[-3000:]}"
    assert applied_while_behind == len(campaigns), "nothing is applied while the schema is behind"
    assert worker.alive(), worker.log()[-3000:]
    assert_exact(result)
    status, body = readiness
    assert status == 503 and "database" in body["failing"], readiness
    wait_until(lambda: worker_probe(port)[0] == 200, 10, 0.1, "the worker's /readyz 200 after the upgrade")
