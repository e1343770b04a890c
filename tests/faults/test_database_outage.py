"""PostgreSQL unreachable for a while under a confirmed stream: nothing acknowledged, nothing lost.

The worker and the server reach PostgreSQL through a TCP proxy of the test's
(``helpers.TcpProxy``); ``cut()`` drops their connections and refuses new ones, as a
database that went away would. The test itself reads the database directly.

The second test also loses the worker's broker connection while the database is down: the
worker is then in ``EventConsumer.wait``, sending heartbeats between retries, and must hand
the lost connection to kombu's loop, which connects and consumes again. (It once swallowed
the failed heartbeat; kombu then connected again quietly, without the consumer, and the
worker drained an empty connection for good.)
"""

import time

import pytest

from tests import support
from tests.faults.helpers import (
    TcpProxy,
    applied_count,
    assert_exact,
    assert_in_order_without_gaps,
    completed_outcome,
    http_get,
    is_applied,
    proxied_database_url,
    report_outcome,
    start_progress_stream,
    stored_updates,
    tenant_client,
    wait_applied,
)
from tests.support import wait_until

OUTAGE_SECONDS = 20.0  # the outage length
RATE = 50  # events per second
QUEUE = "campaign.events.worker"


@pytest.fixture
def proxy():
    proxy = TcpProxy(support.PG_HOST, support.PG_PORT).start()
    yield proxy
    proxy.close()


@pytest.fixture
def broker_proxy():
    proxy = TcpProxy(support.AMQP_HOST, support.AMQP_PORT).start()
    yield proxy
    proxy.close()


def in_queue(vhost):
    """Messages of the worker queue held by the broker: ready plus delivered but unacknowledged."""
    ready, unacked = support.list_queues(vhost)[QUEUE]
    return ready + unacked, unacked


def test_a_database_outage_acknowledges_nothing_and_loses_nothing(stack, proxy, vhost):
    proxied = proxied_database_url(stack, proxy)
    server = stack.start_server(DATABASE_URL=proxied)
    worker = stack.start_worker(DATABASE_URL=proxied)
    tenant = stack.create_tenant()
    campaigns = [(tenant, f"db-{i}") for i in range(3)]
    client = tenant_client(stack, server, tenant)
    assert http_get(f"{server.url}/readyz")[0] == 200
    ledger, stream = start_progress_stream(stack, campaigns, 3, RATE)
    try:
        wait_until(lambda: applied_count(stack) >= RATE, 30, 0.05, "events applied before the outage")
        cut_at = time.monotonic()
        dropped = proxy.cut()

        def not_ready():
            status, body = http_get(f"{server.url}/readyz")
            return status == 503 and body

        readiness = wait_until(not_ready, 10, 0.1, "/readyz to answer 503 during the outage")
        assert "database" in readiness["failing"] and "broker" not in readiness["failing"], readiness
        applied_before = applied_count(stack)

        samples = []
        for moment in (OUTAGE_SECONDS * 0.3, OUTAGE_SECONDS * 0.8):
            # Pace the samples inside the outage; nothing to wait for.
            time.sleep(max(cut_at + moment - time.monotonic(), 0))
            confirmed_before = len(ledger)
            held, unacked = in_queue(vhost)
            samples.append((confirmed_before, held, len(ledger), unacked, applied_count(stack)))
        time.sleep(max(cut_at + OUTAGE_SECONDS - time.monotonic(), 0))  # the rest of the outage
        assert http_get(f"{server.url}/readyz")[0] == 503
        proxy.restore()
        restored_at = time.monotonic()
        backlog = len(ledger)

        wait_until(lambda: http_get(f"{server.url}/readyz")[0] == 200, 15, 0.1, "/readyz 200 after the outage")
        ready_again = time.monotonic()
        first_new = wait_until(lambda: stream.first_confirmed_after(restored_at), 15, 0.05, "a new publish")
        wait_until(lambda: is_applied(stack, first_new), 30, 0.05, "the worker to apply events again")
        worker_back = time.monotonic()
        wait_applied(stack, backlog, 60, "the outage's backlog to be applied")
        backlog_applied = time.monotonic()
    finally:
        stream.stop()

    result = completed_outcome(stack, campaigns, ledger, client, tenant)
    report_outcome(
        f"database outage ({OUTAGE_SECONDS:.0f} s, TCP proxy cut)",
        result,
        recovery_seconds=backlog_applied - restored_at,
        worker_recovery_seconds=worker_back - restored_at,
        readyz_recovery_seconds=ready_again - restored_at,
        published_during_outage=len(stream.confirmations_after(cut_at)) - len(stream.confirmations_after(restored_at)),
        connections_cut=dropped,
        queue_samples=[{"confirmed": s[0], "held": s[1], "unacked": s[3]} for s in samples],
    )
    # While the database was down the worker applied nothing and acknowledged nothing: every
    # confirmed event not applied before the cut was still held by the broker.
    for confirmed_before, held, confirmed_after, _, applied in samples:
        assert applied == applied_before
        assert confirmed_before - applied_before <= held <= confirmed_after - applied_before, samples
    assert samples[1][1] > samples[0][1], "the queue grows while the database is down"
    assert worker.alive() and server.alive() and stack.workers == [worker]
    assert_exact(result)
    assert_in_order_without_gaps(client, stored_updates(stack, tenant))
    client.close()


def test_a_broker_connection_lost_during_a_database_outage_is_consumed_on_again(stack, proxy, broker_proxy, vhost):
    proxied_broker = support.amqp_url(vhost).replace(
        f"{support.AMQP_HOST}:{support.AMQP_PORT}", f"127.0.0.1:{broker_proxy.port}"
    )
    server = stack.start_server()
    worker = stack.start_worker(DATABASE_URL=proxied_database_url(stack, proxy), BROKER_URL=proxied_broker)
    tenant = stack.create_tenant()
    campaigns = [(tenant, f"both-{i}") for i in range(3)]
    client = tenant_client(stack, server, tenant)
    ledger, stream = start_progress_stream(stack, campaigns, 5, RATE)
    try:
        wait_until(lambda: applied_count(stack) >= RATE, 30, 0.05, "events applied before the outages")
        proxy.cut()
        wait_until(
            lambda: "[WORKER] database failed" in worker.log(), 15, 0.1, "the worker to wait for the database"
        )
        broker_proxy.cut(reset=True)
        # Let the broker be reachable again at once: what is measured is whether the worker notices
        # the lost connection and consumes again, while the database is still down.
        broker_proxy.restore()
        wait_until(
            lambda: worker.log().count("[WORKER] consuming from") >= 2,
            20,
            0.1,
            "the worker to consume again on a new broker connection while the database is down",
        )
        proxy.restore()
        restored_at = time.monotonic()
        first_new = wait_until(lambda: stream.first_confirmed_after(restored_at), 15, 0.05, "a new publish")
        wait_until(
            lambda: is_applied(stack, first_new),
            30,
            0.05,
            "the worker to apply events published after both outages (is it consuming on a connection "
            "without its consumer?)",
        )
        worker_back = time.monotonic()
    finally:
        stream.stop()

    result = completed_outcome(stack, campaigns, ledger, client, tenant)
    report_outcome(
        "broker connection reset while the database was down",
        result,
        worker_recovery_seconds=worker_back - restored_at,
        broker_consumers=worker.log().count("[WORKER] consuming from"),
    )
    assert worker.alive() and server.alive() and stack.workers == [worker]
    assert "dead-lettered" not in worker.log()
    assert_exact(result)
    assert_in_order_without_gaps(client, stored_updates(stack, tenant))
    client.close()
