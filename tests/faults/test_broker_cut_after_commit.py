"""The broker connection of one of two workers cut between its batch's COMMIT and its ack.

Worker A reaches RabbitMQ and PostgreSQL through TCP proxies of the test's; worker B reaches
them directly. Both apply one tenant's events, so both take that tenant's advisory lock
(campaigns/ingest.py TenantLocks). When A sends the COMMIT of a batch, the test resets A's
broker connections before the COMMIT goes on (``CommitTrigger``): A's commit succeeds and
its ack fails. A must give the tenant's lock back at once (it holds it on its own database
session, which stays open), or B waits on it forever; and what A committed is delivered to
the clients in ``seq`` order all the same.
"""

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
    is_applied,
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
TAKE_OVER_LIMIT = 10.0  # seconds for worker B to apply an event published after the cut


@pytest.fixture
def broker_proxy():
    proxy = TcpProxy(support.AMQP_HOST, support.AMQP_PORT).start()
    yield proxy
    proxy.close()


@pytest.fixture
def trigger(broker_proxy):
    return CommitTrigger(lambda: broker_proxy.cut(reset=True))


@pytest.fixture
def database_proxy(trigger):
    proxy = TcpProxy(support.PG_HOST, support.PG_PORT, on_client_data=trigger.inspect).start()
    yield proxy
    proxy.close()


def advisory_locks(stack):
    """Advisory locks granted in the stack's database right now."""
    return stack.sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )[0][0]


def test_a_broker_cut_between_commit_and_ack_leaves_no_tenant_locked(
    stack, vhost, broker_proxy, database_proxy, trigger, many_packets_per_poll
):
    server = stack.start_server()
    proxied_broker = support.amqp_url(vhost).replace(
        f"{support.AMQP_HOST}:{support.AMQP_PORT}", f"127.0.0.1:{broker_proxy.port}"
    )
    proxied_database = proxied_database_url(stack, database_proxy)
    cut_worker = stack.start_worker(DATABASE_URL=proxied_database, BROKER_URL=proxied_broker)
    other_worker = stack.start_worker()
    tenant = stack.create_tenant()
    campaigns = [(tenant, f"cut-{i}") for i in range(3)]
    client = tenant_client(stack, server, tenant)
    ledger, stream = start_progress_stream(stack, campaigns, 11, RATE)
    try:
        wait_until(lambda: applied_count(stack) >= 2 * RATE, 30, 0.05, "both workers to apply events")
        trigger.arm()
        fired_at = wait_until(lambda: trigger.fired_at, 30, 0.02, "a batch COMMIT of the proxied worker")
        # Not the first confirm after the cut: the broker may confirm an event after it delivered it
        # to the proxied worker's batch; five events later (at 60/s) was certainly published after.
        later = wait_until(lambda: stream.confirmations_after(fired_at)[5:], 15, 0.02, "publishes after the cut")
        first_new = later[0]
        wait_until(
            lambda: is_applied(stack, first_new),
            TAKE_OVER_LIMIT,
            0.02,
            "the other worker to apply the tenant's events after the cut (is the tenant's lock still held?)",
        )
        taken_over_at = time.monotonic()
        wait_until(lambda: len(stream.confirmations_after(fired_at)) >= 3 * RATE, 30, 0.1, "more of the stream")
    finally:
        stream.stop()

    complete_campaigns(stack, campaigns, ledger, 60)
    final_seq = last_seqs(stack)[tenant]
    client.wait_caught_up(final_seq, 30)
    locks_when_idle = advisory_locks(stack)
    broker_proxy.restore()
    wait_until(
        lambda: cut_worker.log().count("[WORKER] consuming from") >= 2, 30, 0.1, "the cut worker to consume again"
    )

    result = outcome(stack, ledger)
    report_outcome(
        "broker connection of 1 of 2 workers reset between COMMIT and ack",
        result,
        recovery_seconds=taken_over_at - fired_at,
        updates=final_seq,
        replay_requests=client.replay_requests,
        advisory_locks_when_idle=locks_when_idle,
    )
    assert "[WORKER] broker connection lost after committing" in cut_worker.log(), cut_worker.log()[-3000:]
    assert_exact(result)
    assert locks_when_idle == 0
    assert cut_worker.alive() and other_worker.alive()
    assert_in_order_without_gaps(client, stored_updates(stack, tenant))
    assert client.handler_errors == []
    client.close()
