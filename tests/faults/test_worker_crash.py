"""A worker killed with SIGKILL in the middle of a backlog: a replacement applies the rest, once each.

The events are published without confirms (20,000 of them, for speed) into the durable
worker queue before any worker runs; the queue depth proves the broker holds every one.
"""

import time

import pytest
from kombu import Connection

from campaigns.queues import DEAD_LETTER_QUEUE, declare_topology
from tests import support
from tests.faults.helpers import (
    Ledger,
    applied_count,
    assert_exact,
    outcome,
    progress_events,
    queue_ready,
    queue_state,
    report_outcome,
    wait_applied,
)
from tests.support import wait_until

EVENTS = 20_000
TENANTS = 3
CAMPAIGNS_PER_TENANT = 4
QUEUE = "campaign.events.worker"
# With a backlog, a 5 ms linger cuts batches of a few dozen messages and the worker spends its
# time on per-batch commits; 100 ms gives full batches and keeps this test near a minute.
LINGER_MS = 100


@pytest.fixture
def stack(database, vhost, tmp_path):
    with support.Stack(database, vhost, tmp_path, WORKER_BATCH_LINGER_MS=LINGER_MS) as stack:
        yield stack


def test_a_killed_worker_loses_nothing_and_applies_nothing_twice(stack):
    tenants = [stack.create_tenant() for _ in range(TENANTS)]
    campaigns = [(tenant, f"crash-{i}") for tenant in tenants for i in range(CAMPAIGNS_PER_TENANT)]
    events = list(progress_events(campaigns, seed=20_000, count=EVENTS - len(campaigns)))
    assert len({e["event_id"] for e in events}) == EVENTS
    with Connection(stack.broker_url) as connection:
        declare_topology(connection, QUEUE)  # the durable queue keeps events until a worker comes
    ledger = Ledger()
    started = time.monotonic()
    with stack.publisher(confirm=False) as publisher:
        for item in events:
            publisher.publish(item)
            ledger.add(item)
    publish_seconds = time.monotonic() - started
    # No confirms: the queue depth is the proof that the broker holds every event.
    wait_until(lambda: queue_ready(stack.broker_url, QUEUE) == EVENTS, 30, 0.1, f"{EVENTS} messages in {QUEUE}")

    worker = stack.start_worker()
    kill_after = EVENTS // 5
    wait_until(lambda: applied_count(stack) >= kill_after, 90, 0.02, f"the worker to apply {kill_after} events")
    worker.kill()
    killed_at = time.monotonic()
    applied_at_kill = applied_count(stack)
    assert 0 < applied_at_kill < EVENTS, "kill the worker while it has work left"
    # Its unacknowledged messages go back to the queue once the broker sees the connection drop.
    ready_after_kill = wait_until(
        lambda: (state := queue_state(stack.broker_url, QUEUE))[1] == 0 and state[0], 15, 0.05, "the requeue"
    )
    committed_not_acked = applied_at_kill - (EVENTS - ready_after_kill)

    replacement = stack.start_worker()
    recovered_at = wait_applied(stack, EVENTS, 180)
    wait_until(lambda: queue_ready(stack.broker_url, QUEUE) == 0, 30, 0.05, "an empty worker queue")

    result = outcome(stack, ledger)
    versions = {
        (tenant, campaign): version
        for tenant, campaign, version in stack.sql("SELECT tenant_id, id, version FROM campaigns")
    }
    expected = ledger.expected()
    report_outcome(
        "worker kill -9 mid-backlog",
        result,
        recovery_seconds=recovered_at - killed_at,
        applied_at_kill=applied_at_kill,
        redelivered_after_commit=committed_not_acked,
        publish_seconds=publish_seconds,
    )
    assert_exact(result)
    assert applied_count(stack) == len({e["event_id"] for e in events})
    assert versions == {key: counts["version"] for key, counts in expected.items()}
    assert queue_ready(stack.broker_url, DEAD_LETTER_QUEUE) == 0
    assert replacement.alive()
