"""SIGTERM, as an orchestrator stops processes: a worker finishes what it holds and flushes its
merged update; a server goes away at once and its clients move to another server."""

import os
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest
from kombu import Connection

from campaigns.queues import declare_topology
from tests import support
from tests.faults.helpers import (
    Ledger,
    SeqClient,
    TcpProxy,
    applied_count,
    assert_exact,
    assert_in_order_without_gaps,
    complete_campaigns,
    last_seqs,
    outcome,
    progress_events,
    queue_ready,
    report_outcome,
    stored_updates,
    tenant_client,
    wait_applied,
)
from tests.support import event, wait_until
from worker.consumer import EventConsumer, StopRequested

BACKLOG = 3000
THROTTLE_SECONDS = 10  # long enough for a merged update to be pending when SIGTERM comes
EXIT_LIMIT = 10.0  # SIGTERM to exit, on a busy machine (about 2 s on a quiet one)
QUEUE = "campaign.events.worker"


def stop_with_sigterm(process, limit):
    """SIGTERM; return ``(exit code, seconds to exit, when the signal went)``; fail after ``limit`` s."""
    started = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    try:
        code = process.popen.wait(limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{process.name} still runs {limit} s after SIGTERM:\n{process.log()[-3000:]}") from None
    return code, time.monotonic() - started, started


def test_sigterm_to_a_worker_flushes_its_merged_update_and_loses_nothing(stack):
    server = stack.start_server()
    tenant = stack.create_tenant()
    campaigns = [(tenant, "term-a"), (tenant, "term-b")]
    client = tenant_client(stack, server, tenant)
    with Connection(stack.broker_url) as connection:
        declare_topology(connection, QUEUE)
    ledger = Ledger()
    with stack.publisher(confirm=False) as publisher:
        for item in progress_events(campaigns, seed=7, count=BACKLOG - len(campaigns)):
            publisher.publish(item)
            ledger.add(item)
    wait_until(lambda: queue_ready(stack.broker_url, QUEUE) == BACKLOG, 30, 0.05, f"{BACKLOG} queued events")

    worker = stack.start_worker(THROTTLE_SECONDS=THROTTLE_SECONDS)
    pending = "SELECT count(*) FROM campaigns WHERE emit_due_at IS NOT NULL"
    wait_until(
        lambda: stack.sql(pending)[0][0] == len(campaigns) and applied_count(stack) >= BACKLOG // 10,
        60,
        0.05,
        "merged updates pending for both campaigns",
    )
    code, exit_seconds, _ = stop_with_sigterm(worker, EXIT_LIMIT)
    applied_at_exit = applied_count(stack)
    at_exit = {campaign: stack.campaign(tenant, campaign) for _, campaign in campaigns}
    assert code == 0, worker.log()[-3000:]
    assert 0 < applied_at_exit < BACKLOG, "SIGTERM while the worker still had work"
    assert stack.sql(pending)[0][0] == 0, "the pending merged updates were emitted before exiting"
    for _, campaign in campaigns:
        wait_until(
            lambda campaign=campaign: (client.latest(campaign) or {}).get("version") == at_exit[campaign]["version"],
            5,
            0.05,
            f"the client to receive the state of {campaign} at the worker's exit",
        )

    replacement = stack.start_worker(THROTTLE_SECONDS=THROTTLE_SECONDS)
    started_at = time.monotonic()
    wait_applied(stack, BACKLOG, 120)
    drained_at = time.monotonic()
    complete_campaigns(stack, campaigns, ledger, 30)
    client.wait_caught_up(last_seqs(stack)[tenant], 20)
    result = outcome(stack, ledger)
    report_outcome(
        "worker SIGTERM with a batch in hand and merged updates pending",
        result,
        recovery_seconds=drained_at - started_at,
        exit_seconds=exit_seconds,
        exit_code=code,
        applied_at_exit=applied_at_exit,
    )
    assert_exact(result)
    assert replacement.alive()
    assert_in_order_without_gaps(client, stored_updates(stack, tenant))
    client.close()


def test_sigterm_to_a_server_disconnects_its_clients_who_reconnect_to_another(stack, many_packets_per_poll):
    first, second = stack.start_server(), stack.start_server()
    stack.start_worker()
    tenant = stack.create_tenant()

    def url():
        """What a load balancer does: the first server while it runs, then the other one."""
        return first.url if first.alive() else second.url

    clients = [
        SeqClient(url, stack.token(tenant), [transport], transport).connect() for transport in ("websocket", "polling")
    ]
    ledger = Ledger()
    with stack.publisher() as publisher:
        for kind in ("campaign_started", "campaign_paused", "campaign_resumed"):
            item = event(
                tenant, "move", kind, **({"name": "Move", "total_messages": 5} if kind == "campaign_started" else {})
            )
            publisher.publish(item)
            ledger.add(item)
    wait_applied(stack, len(ledger), 20)
    for client in clients:
        client.wait_caught_up(last_seqs(stack)[tenant], 10)

    code, exit_seconds, stopped_at = stop_with_sigterm(first, EXIT_LIMIT)
    wait_until(lambda: all(c.disconnects for c in clients), 10, 0.05, "the clients to see the server go")
    disconnected_at = max(c.disconnects[0] for c in clients)
    wait_until(lambda: all(len(c.connects) >= 2 for c in clients), 20, 0.05, "the clients to reconnect")
    reconnected_at = max(c.connects[1] for c in clients)
    with stack.publisher() as publisher:
        for kind in ("campaign_paused", "campaign_completed"):
            item = event(tenant, "move", kind)
            publisher.publish(item)
            ledger.add(item)
    wait_applied(stack, len(ledger), 20)
    final = last_seqs(stack)[tenant]
    for client in clients:
        client.wait_caught_up(final, 15)
    result = outcome(stack, ledger)
    report_outcome(
        "server SIGTERM, clients move to another server",
        result,
        recovery_seconds=reconnected_at - stopped_at,
        exit_seconds=exit_seconds,
        exit_code=code,
        disconnect_seen_after=disconnected_at - stopped_at,
    )
    assert code in (0, -signal.SIGTERM), f"exit code {code}"
    assert_exact(result)
    assert second.alive()
    stored = stored_updates(stack, tenant)
    for client in clients:
        assert_in_order_without_gaps(client, stored)
        assert client.latest("move")["status"] == "completed"
        client.close()


def test_sigterm_to_a_worker_whose_broker_is_unreachable_stops_it_cleanly(stack):
    """kombu retries an unreachable broker for as long as it takes (2, 4, 6, ... 30 s apart) and
    looks at the stop request only once connected: a worker stopped during a broker outage was
    killed at the end of its grace period. It stops now (exit 0), and another worker carries on."""
    tenant = stack.create_tenant()
    proxy = TcpProxy(support.AMQP_HOST, support.AMQP_PORT).start()
    try:
        proxied = stack.broker_url.replace(f"{support.AMQP_HOST}:{support.AMQP_PORT}", proxy.url_host)
        worker = stack.start_worker(BROKER_URL=proxied, SOCKETIO_MESSAGE_QUEUE_URL=stack.broker_url)
        proxy.cut()
        wait_until(lambda: "broker unavailable" in worker.log(), 30, 0.05, f"the outage seen\n{worker.log()[-3000:]}")
        code, _, _ = stop_with_sigterm(worker, EXIT_LIMIT)
    finally:
        proxy.close()
    assert code == 0, worker.log()[-3000:]
    assert "stopping without a broker" in worker.log(), worker.log()[-3000:]
    # The queue and the database are as they were: another worker applies what is published.
    stack.start_worker()
    with stack.publisher() as publisher:
        publisher.publish(event(tenant, "after-outage", "campaign_started", name="After", total_messages=1))
    wait_until(lambda: stack.campaign(tenant, "after-outage") is not None, 30, 0.1, "the campaign applied")


def test_a_worker_asked_to_stop_while_dead_lettering_into_an_outage_leaves_the_message_unacknowledged():
    """kombu's publish retries for as long as the broker is away; between two attempts the worker
    now looks at its stop request, and the message it could not move stays unacknowledged (it is
    delivered again), neither acknowledged nor rejected."""
    settled = []

    class Producer:
        def publish(self, body, retry_policy, **options):
            retry_policy["errback"](ConnectionRefusedError(111, "Connection refused"), 0.5)  # kombu, on a failure
            raise AssertionError("the worker went on retrying although asked to stop")

    class Worker(EventConsumer):
        producer = property(lambda self: Producer())

    worker = Worker.__new__(Worker)
    worker.connection = SimpleNamespace(connection_errors=(ConnectionError,))
    worker.should_stop, worker.unsettled, worker.stats = True, {1}, {"dead_lettered": 0}
    message = SimpleNamespace(
        delivery_tag=1, delivery_info={"routing_key": "t.bad", "exchange": ""}, headers={}, body=b"{",
        content_type="application/json", ack=lambda: settled.append("ack"),
        reject=lambda requeue: settled.append("reject"),
    )
    with pytest.raises(StopRequested):
        worker.dead_letter(message, "invalid_json")
    assert settled == [] and worker.unsettled == {1} and worker.stats["dead_lettered"] == 0
