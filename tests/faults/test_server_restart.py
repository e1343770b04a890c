"""A server killed with SIGKILL while updates flow: its clients reconnect to the replacement with
``last_seq`` and end with every update of their tenant, in ``seq`` order, without a gap.

Two faults of reconnecting clients are also tested on their own: many clients reconnecting
at the same moment to a fresh server, and a Python long-polling client whose replay holds
more than 16 updates.
"""

import contextlib
import threading
import time

import pytest

from tests import support
from tests.faults.helpers import (
    Ledger,
    SeqClient,
    StreamPublisher,
    assert_exact,
    assert_in_order_without_gaps,
    complete_campaigns,
    last_seqs,
    mixed_events,
    outcome,
    report_outcome,
    stored_updates,
)
from tests.support import wait_until

CLIENTS = 5
RATE = 80  # events per second
FRESH_SERVERS = 3  # at most: the test stops at the first one that leaves a client hanging
AT_ONCE = 25


@pytest.fixture(scope="module")
def stack(module_database, module_vhost, tmp_path_factory):
    """One worker on the module's database and vhost; each test starts its servers, with tenants of its own."""
    with support.Stack(module_database, module_vhost, tmp_path_factory.mktemp("logs")) as stack:
        stack.start_worker()
        yield stack


def test_clients_of_a_killed_server_reconnect_with_last_seq_and_miss_nothing(stack, many_packets_per_poll):
    port = support.free_port()
    server = stack.start_server(port=port)
    tenants = [stack.create_tenant() for _ in range(2)]
    campaigns = [(tenant, f"srv-{i}") for tenant in tenants for i in range(4)]
    clients = [
        SeqClient(
            server.url, stack.token(tenants[i % 2]), ["polling"] if i % 3 == 2 else ["websocket"], f"client-{i}"
        ).connect()
        for i in range(CLIENTS)
    ]
    ledger = Ledger()
    stream = StreamPublisher(stack.broker_url, mixed_events(campaigns, seed=4), RATE, ledger)
    stream.start()
    try:
        wait_until(lambda: all(len(c.applied) >= 3 for c in clients), 30, 0.05, "live updates before the kill")
        server.kill()
        killed_at = time.monotonic()
        replacement = stack.start_server(port=port)
        started_at = time.monotonic()
        try:
            wait_until(lambda: all(len(c.connects) >= 2 for c in clients), 30, 0.05, "every client to reconnect")
        except AssertionError as exc:
            hint = (
                "a client whose Engine.IO connection is up but which never gets its snapshot is the connect "
                "handler hanging in its snapshot emit (test_clients_connecting_at_once_to_a_fresh_server...)"
            )
            details = [str(exc), hint, *(c.describe() for c in clients), replacement.log()[-3000:]]
            raise AssertionError("\n".join(details)) from None
        reconnected_at = max(c.connects[1] for c in clients)
        wait_until(lambda: len(stream.confirmations_after(reconnected_at)) >= 2 * RATE, 30, 0.1, "more stream")
    finally:
        stream.stop()

    complete_campaigns(stack, campaigns, ledger, 60, tenants=tenants)
    final = last_seqs(stack)
    for client, tenant in zip(clients, [tenants[i % 2] for i in range(CLIENTS)]):
        client.wait_caught_up(final[tenant], 30)
    caught_up_at = time.monotonic()

    result = outcome(stack, ledger, tenants=set(tenants))
    report_outcome(
        "server kill -9, restarted on the same port",
        result,
        recovery_seconds=reconnected_at - killed_at,
        server_start_seconds=started_at - killed_at,
        clients=CLIENTS,
        updates_per_tenant=[final[t] for t in tenants],
        replay_requests=sum(c.replay_requests for c in clients),
        abandoned_connect_attempts=sum(c.abandoned for c in clients),
        replayed_on_reconnect=sum(
            1 for c in clients for session, _, replayed, _ in c.arrivals if replayed and session >= 2
        ),
        caught_up_after_seconds=caught_up_at - killed_at,
    )
    assert_exact(result)
    assert replacement.alive() and not server.alive()
    for index, client in enumerate(clients):
        tenant = tenants[index % 2]
        assert_in_order_without_gaps(client, stored_updates(stack, tenant))
        assert [u["seq"] for u in client.applied] == list(range(client.base + 1, final[tenant] + 1))
        assert client.resyncs == []
        client.close()
    replacement.kill()


def test_clients_connecting_at_once_to_a_fresh_server_all_get_through(stack):
    """What every client of a restarted server does: reconnect at the same moment.

    Each connect handler emits its snapshot through the Socket.IO message queue; on a fresh
    server the first of those publishes race on the one shared AMQP connection.
    """
    tenant = stack.create_tenant()
    stuck = []
    for round_number in range(FRESH_SERVERS):
        server = stack.start_server()
        token = stack.token(tenant)
        clients = [SeqClient(server.url, token, ["websocket"], f"round{round_number}-{i}") for i in range(AT_ONCE)]
        barrier = threading.Barrier(AT_ONCE)
        errors = {}

        def connect(client, barrier=barrier, errors=errors):
            barrier.wait()
            try:
                client._connect_once()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors[client.name] = f"{exc.__class__.__name__}: {exc}"

        threads = [threading.Thread(target=connect, args=(client,), daemon=True) for client in clients]
        for thread in threads:
            thread.start()
        _settle(clients, errors, 10)
        missing = [c.name for c in clients if not c.connects]
        if missing:
            stuck.append(
                {
                    "server": server.url,
                    "not_connected": missing,
                    "errors": {name: errors.get(name, "still waiting") for name in missing},
                    "connects_logged": server.log().count("connected for tenant"),
                    "publish_errors": server.log().count("Cannot publish to rabbitmq"),
                }
            )
        server.kill()  # also frees the clients still waiting on it
        for client in clients:
            client.closing.set()
        for thread in threads:
            thread.join(15)
        for client in clients:
            client.close()
        if stuck:
            break
    assert not stuck, (
        f"of {AT_ONCE} clients connecting at once to a fresh server, some never got their snapshot "
        f"(the connect handler hangs in the snapshot emit): {stuck}"
    )


def _settle(clients, errors, timeout):
    """Wait until every client connected or failed (hung ones do neither)."""
    with contextlib.suppress(AssertionError):  # the caller reports the hung ones
        wait_until(lambda: all(c.connects or c.name in errors for c in clients), timeout, 0.05)
