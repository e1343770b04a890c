"""RabbitMQ stops and starts again under a confirmed stream: the worker and the server recover in place.

The shared broker is never touched: this module starts a private RabbitMQ node of its own
(own node name, ports, data and logs under the test's temporary directory) and does
``rabbitmqctl -n <node> stop_app`` / ``start_app`` on it.
"""

import time

import pytest

from tests import support
from tests.faults.helpers import (
    PrivateBroker,
    SeqClient,
    assert_exact,
    assert_in_order_without_gaps,
    complete_campaigns,
    is_applied,
    last_seqs,
    outcome,
    report_outcome,
    start_progress_stream,
    stored_updates,
    tenant_client,
)
from tests.support import wait_until

OUTAGE_SECONDS = 3.0  # between stop_app returning and start_app
RECOVERY_LIMIT = 15.0
RATE = 100  # events per second


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    node = PrivateBroker(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def private_vhost(broker):
    name = broker.add_vhost()
    yield name
    broker.ctl("delete_vhost", name, check=False)


@pytest.fixture
def stack(database, private_vhost, broker, tmp_path):
    stack = support.Stack(database, private_vhost, tmp_path)
    stack.broker_url = broker.url(private_vhost)
    yield stack
    stack.stop()


def test_worker_and_server_recover_from_a_broker_restart_without_losing_confirmed_events(stack, broker):
    server = stack.start_server()
    worker = stack.start_worker()
    tenant = stack.create_tenant()
    campaigns = [(tenant, f"broker-{i}") for i in range(3)]
    clients = [
        tenant_client(stack, server, tenant),
        tenant_client(stack, server, tenant, "polling"),
    ]
    ledger, stream = start_progress_stream(stack, campaigns, 2, RATE)
    try:
        wait_until(lambda: all(len(c.applied) >= 3 for c in clients), 30, 0.05, "live updates before the restart")
        down_at = time.monotonic()
        broker.ctl("stop_app")
        # A client arriving while the broker is away (its snapshot and replay come from PostgreSQL).
        late = SeqClient(server.url, stack.token(tenant), ["websocket"], "joined-during-outage")
        late.connect_in_background()
        time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to wait for
        broker.ctl("start_app")
        up_at = time.monotonic()
        seq_at_restart = last_seqs(stack)[tenant]

        first_new = wait_until(lambda: stream.first_confirmed_after(up_at), RECOVERY_LIMIT, 0.05, "a new publish")
        wait_until(lambda: is_applied(stack, first_new), RECOVERY_LIMIT, 0.05, "the worker to apply a new event")
        worker_back = time.monotonic()

        def live_after_restart():
            return [
                at
                for client in clients
                for _, seq, replayed, at in list(client.arrivals)
                if not replayed and seq > seq_at_restart
            ]

        wait_until(live_after_restart, RECOVERY_LIMIT, 0.05, "a live update through the re-bound listener")
        server_back = min(live_after_restart())
        # A little more of the stream on the recovered broker.
        wait_until(lambda: len(stream.confirmations_after(up_at)) >= 2 * RATE, 30, 0.1, "more of the stream")
    finally:
        stream.stop()

    complete_campaigns(stack, campaigns, ledger, 60)
    # Each campaign ends with a status update, emitted at once: nothing is left to merge.
    assert stack.sql("SELECT count(*) FROM campaigns WHERE emit_due_at IS NOT NULL")[0][0] == 0
    final_seq = last_seqs(stack)[tenant]
    clients.append(late)
    for client in clients:
        client.wait_caught_up(final_seq, 30)

    result = outcome(stack, ledger)
    recovery = max(worker_back, server_back) - up_at
    report_outcome(
        "broker stop_app/start_app",
        result,
        recovery_seconds=recovery,
        worker_recovery_seconds=worker_back - up_at,
        server_recovery_seconds=server_back - up_at,
        broker_down_seconds=up_at - down_at,
        publish_retries=len(stream.errors),
        replay_requests=sum(c.replay_requests for c in clients),
        outage_client_snapshot_after_start_app=late.snapshots[0]["at"] - up_at,
    )
    assert_exact(result)
    assert worker.alive() and server.alive(), "the worker and the server recover without a restart"
    assert stack.workers == [worker] and stack.servers == [server]
    assert worker_back - up_at <= RECOVERY_LIMIT and server_back - up_at <= RECOVERY_LIMIT
    stored = stored_updates(stack, tenant)
    for client in clients:
        assert_in_order_without_gaps(client, stored)
        for _, campaign in campaigns:
            state = stack.campaign(tenant, campaign)
            latest = client.latest(campaign)
            assert (latest["status"], latest["sent"], latest["failed"], latest["version"]) == (
                "completed",
                state["sent"],
                state["failed"],
                state["version"],
            ), client.name
        client.close()
