"""The worker's adaptive batches (worker/consumer.py ``batch_due``): progress waits for more while
the stream is steady, a status event ends the batch at once (in a backlog, once nothing more is
ready), a lone event goes at once."""

import contextlib
import socket
from types import SimpleNamespace

from tests import support
from tests.support import RecordingEmitter, bare_worker, event, wait_until
from worker.broker_reads import READ_AHEAD_BYTES, buffered_bytes, read_ahead
from worker.consumer import BACKLOG_BYTES, EventConsumer, StopRequested, backlog_threshold, unread_bytes

LINGER = 0.05


def consumer(batch, started, last_batch_at, more_ready=False, backlog=False):
    """An ``EventConsumer`` holding ``batch`` (routing keys), for its batching decision only."""
    worker = bare_worker(
        batch=[], batch_has_status=False, batch_size=500, linger=LINGER, last_batch_at=last_batch_at, unsettled=set()
    )
    for number, routing_key in enumerate(batch):
        worker.on_message(SimpleNamespace(delivery_tag=number, delivery_info={"routing_key": routing_key}))
    worker.batch_started = started
    worker.more_ready = lambda: more_ready
    worker.reading_backlog = lambda: backlog
    return worker


def test_progress_waits_while_the_stream_is_steady_and_a_status_event_goes_at_once():
    steady = {"started": 10.0, "last_batch_at": 9.99}  # this batch began 10 ms after the last one
    assert not consumer(["t.message_sent"] * 3, **steady).batch_due(10.01)
    assert consumer(["t.message_sent"] * 3, **steady).batch_due(10.0 + LINGER)  # waited long enough
    assert consumer(["t.message_sent", "t.campaign_paused"], **steady).batch_due(10.01)
    assert consumer(["bad routing key"], **steady).batch_due(10.01)  # unknown: treated as urgent
    # A lone event after a quiet spell goes at once.
    assert consumer(["t.message_sent"], started=10.0, last_batch_at=5.0).batch_due(10.001)
    # A status does not wait for what the broker has ready behind it; progress does...
    assert consumer(["t.message_sent", "t.campaign_paused"], **steady, more_ready=True).batch_due(10.001)
    assert not consumer(["t.message_sent"] * 2, started=10.0, last_batch_at=5.0, more_ready=True).batch_due(10.001)
    # ... unless a backlog is being read: then even a status fills the batch while more is ready.
    assert not consumer(["t.campaign_paused"], **steady, more_ready=True, backlog=True).batch_due(10.01)
    assert consumer(["t.campaign_paused"], **steady, backlog=True).batch_due(10.01)


@contextlib.contextmanager
def worker_on_a_socketpair(**amqp_connection):
    """``(worker, broker_side, worker_side)``: a bare ``EventConsumer`` whose broker connection is
    one end of a socket pair (``amqp_connection``: more attributes of the py-amqp connection)."""
    worker = bare_worker()
    broker_side, worker_side = socket.socketpair()
    try:
        worker.active_connection = SimpleNamespace(
            connected=True, connection=SimpleNamespace(sock=worker_side, **amqp_connection)
        )
        yield worker, broker_side, worker_side
    finally:
        broker_side.close()
        worker_side.close()


def test_a_backlog_is_seen_in_what_the_broker_sent_unread_and_lasts_until_the_worker_catches_up():
    with worker_on_a_socketpair() as (worker, broker_side, worker_side):
        assert not worker.reading_backlog()
        broker_side.sendall(b"x" * 2000)  # a few events arrived during a transaction
        assert not worker.reading_backlog()
        broker_side.sendall(b"x" * BACKLOG_BYTES)  # the prefetch window filling up
        assert worker.reading_backlog()
        worker_side.recv(BACKLOG_BYTES)
        assert worker.reading_backlog()  # a dip in the socket's buffer does not end it
    worker.active_connection, worker.backlog = None, False
    assert worker.reading_backlog()  # the demo's in-memory transport: its backlog cannot be seen
    # TLS: what the socket decrypted and has not handed over is invisible to select and FIONREAD.
    worker.active_connection = SimpleNamespace(
        connected=True, connection=SimpleNamespace(sock=SimpleNamespace(pending=lambda: 400))
    )
    assert worker.more_ready()


def test_bytes_read_ahead_count_as_ready_and_toward_a_backlog():
    """What py-amqp holds in its read buffer is invisible to select() and FIONREAD."""
    transport = SimpleNamespace(_read_buffer=b"")
    with worker_on_a_socketpair(transport=transport) as (worker, broker_side, worker_side):
        assert not worker.more_ready()
        transport._read_buffer = b"x" * 300  # a message read ahead, the kernel's buffer empty
        assert worker.more_ready()
        broker_side.sendall(b"x" * (backlog_threshold(worker_side) - 1000))
        assert not worker.reading_backlog()
        transport._read_buffer = b"x" * 2000
        assert worker.reading_backlog()


def test_read_ahead_takes_several_messages_in_one_read_and_delivers_each_in_order(vhost):
    """The py-amqp internals ``worker/broker_reads.py`` relies on, on a real connection: one
    read takes what the kernel holds, and the messages come out of the read buffer one by one."""
    import amqp

    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest", virtual_host=vhost) as connection:
        channel = connection.channel()
        queue, _, _ = channel.queue_declare(exclusive=True)
        bodies = [f"message {number:02} ".encode() * 20 for number in range(30)]
        for body in bodies:
            channel.basic_publish(amqp.Message(body), routing_key=queue)
        wait_until(lambda: channel.queue_declare(queue, passive=True).message_count == len(bodies), 10)
        sizes, received = [], []
        recv = connection.transport._quick_recv
        connection.transport._quick_recv = lambda wanted: sizes.append(wanted) or recv(wanted)
        assert read_ahead(connection)
        channel.basic_consume(queue, callback=lambda message: received.append(message.body), no_ack=True)
        # Every body has arrived (basic_consume read its reply, and what came with it, ahead).
        total = sum(len(body) for body in bodies)
        arrived = lambda: unread_bytes(connection.sock) + buffered_bytes(connection) >= total  # noqa: E731
        wait_until(arrived, 10, message="the deliveries in the socket")
        connection.drain_events(timeout=5)
        assert buffered_bytes(connection) > 0  # the next messages, read ahead
        while len(received) < len(bodies):
            connection.drain_events(timeout=5)
        assert received == bodies
        assert sizes and min(sizes) >= READ_AHEAD_BYTES
        assert len(sizes) < len(bodies) / 3, sizes  # py-amqp alone: six reads per message


def test_the_backlog_ends_with_a_batch_applied_while_nothing_more_is_ready():
    for more_ready, still_backlog in ((True, True), (False, False)):
        worker = consumer(["t.message_sent"] * 2, started=0.0, last_batch_at=-1.0, more_ready=more_ready)
        worker.backlog, worker.next_due_check, worker.next_prune = True, float("inf"), float("inf")
        worker.throttle_summary = SimpleNamespace(maybe_log=lambda: None)
        worker.process_batch = lambda worker=worker: setattr(worker, "batch", [])
        worker.on_iteration()  # older than the linger: applied
        assert not worker.batch and worker.backlog is still_backlog


def test_a_steady_stream_of_progress_is_applied_in_few_transactions(database, vhost, tmp_path):
    with support.Stack(database, vhost, tmp_path) as stack:
        tenant = stack.create_tenant()
        stack.start_worker()
        publisher = stack.publisher()
        try:
            publisher.publish(event(tenant, "c1", "campaign_started", name="Batch", total_messages=1000))
            progress = [event(tenant, "c1", "message_sent", message_id=f"m-{i}") for i in range(200)]
            for e in progress:
                publisher.publish(e)  # confirmed one by one: each reaches the worker alone
            # (the campaign's row may not exist yet: a worker slow to start has applied nothing)
            wait_until(
                lambda: (stack.campaign(tenant, "c1") or {}).get("sent") == len(progress), 30, message="every event"
            )
        finally:
            publisher.close()
        transactions = stack.sql(
            "SELECT count(DISTINCT applied_at) FROM applied_events WHERE tenant_id = %s AND event_id = ANY(%s)",
            (tenant, [e["event_id"] for e in progress]),
        )[0][0]
        # Applied whenever nothing more was ready (before adaptive batching): 54 transactions
        # measured here, 6 with it.
        assert transactions <= len(progress) / 10, transactions


def test_a_stop_asked_while_a_batch_is_dead_lettered_leaves_the_loop_through_its_end():
    """``StopRequested`` from a dead letter waiting for the broker stays inside ``on_iteration``:
    kombu's loop then sees ``should_stop`` and ends through ``on_consume_end`` (its flush)."""
    worker = consumer(["t.message_sent"] * 2, started=0.0, last_batch_at=-1.0)
    worker.next_due_check, worker.next_prune, worker.backlog = float("inf"), float("inf"), False
    worker.throttle_summary = SimpleNamespace(maybe_log=lambda: None)

    def process_batch():
        worker.batch = []
        raise StopRequested()

    worker.process_batch = process_batch
    worker.on_iteration()  # does not raise
    assert not worker.batch


def test_a_status_events_campaign_is_committed_and_emitted_before_the_rest_of_its_batch(app, db_session):
    """Outside a backlog, a batch with a status event goes as two transactions: the campaigns with a
    status event first (all their events, in order), then the rest; in a backlog, as one."""
    import json

    from kombu import Connection
    from sqlalchemy import select

    from campaigns.models import AppliedEvent, Campaign, Tenant
    from extensions import db

    db_session.add(Tenant(id="acme", name="Acme", last_seq=0))
    db_session.commit()
    recorder = RecordingEmitter()
    emitted = recorder.payloads
    consumer = EventConsumer(Connection("memory://"), db.engine, recorder, app.config)
    consumer.last_batch_at, consumer.batch_started = 0.0, 0.0

    def run(events, backlog):
        """Apply ``events`` as one batch; the commits' times of the events, and the emitted updates."""
        consumer.batch, consumer.backlog = [], backlog
        for number, body in enumerate(events):
            message = SimpleNamespace(
                body=json.dumps(body).encode(),
                delivery_tag=number + 1,
                delivery_info={"routing_key": f"acme.{body['type']}"},
                ack=lambda: None,
            )
            consumer.on_message(message)
        del emitted[:]
        consumer.process_batch()
        ids = [body["event_id"] for body in events]
        query = select(AppliedEvent.event_id, AppliedEvent.applied_at).where(AppliedEvent.event_id.in_(ids))
        applied = dict(db_session.execute(query).all())
        return [applied[event_id] for event_id in ids], [(u["campaign"]["id"], u["type"], u["seq"]) for u in emitted]

    campaigns = ["a", "b"] + [f"p{number}" for number in range(8)]
    run([event("acme", name, "campaign_started", name=name, total_messages=100) for name in campaigns], False)
    progress = [event("acme", name, "message_sent", message_id=f"{name}-1") for name in campaigns[1:]]
    batch = [event("acme", "a", "message_sent", message_id="a-1"), *progress[:2], event("acme", "a", "campaign_paused")]
    committed, updates = run([*batch, *progress[2:]], backlog=False)
    first, rest = committed[0], committed[1]
    assert committed[3] == first < rest  # a's events together, in a transaction before the others'
    assert set(committed[1:3] + committed[4:]) == {rest}
    assert updates[0][:2] == ("a", "campaign_paused")
    assert [seq for _, _, seq in updates] == list(range(updates[0][2], updates[0][2] + len(updates)))
    assert db_session.get(Campaign, ("acme", "a")).sent == 1

    # A backlog is applied in large transactions: one for the whole batch.
    progress = [event("acme", name, "message_sent", message_id=f"{name}-2") for name in campaigns[1:]]
    committed, _ = run([*progress[:2], event("acme", "a", "campaign_resumed"), *progress[2:]], backlog=True)
    assert len(set(committed)) == 1
    # A status event with few other events behind it is not worth a second transaction.
    small = [event("acme", "b", "message_sent", message_id="b-3"), event("acme", "a", "campaign_paused")]
    committed, _ = run(small, backlog=False)
    assert len(set(committed)) == 1
    consumer.close_database()


def test_a_stop_during_the_one_by_one_fallback_leaves_the_rest_of_the_batch_unapplied():
    """A campaign's later event must not commit before an earlier one left for redelivery."""
    worker = bare_worker()
    calls = []

    def in_transaction(work):
        calls.append(work)
        if len(calls) == 1:
            raise ValueError("an event's own fault")  # the group fails: one by one
        raise StopRequested()  # asked to stop while the first event waits for the database

    worker.in_transaction = in_transaction
    pairs = [(SimpleNamespace(event_id=f"e{number}"), SimpleNamespace()) for number in range(3)]
    assert worker.apply_pairs(pairs, received=0.0) is False
    assert len(calls) == 2  # the group, then its first event alone: nothing after it
