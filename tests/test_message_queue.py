"""Where servers and workers exchange updates: ``SOCKETIO_MESSAGE_QUEUE_URL``.

By default it is ``BROKER_URL``; in production it gets its own vhost and user, so that a
program that may publish events cannot write into clients' rooms. Both layouts run here
with real processes.
"""

import pytest
import requests
import socketio
from amqp.exceptions import AccessRefused, NotAllowed
from kombu import Connection

from campaigns.publisher import EventPublisher
from tests import support
from tests.support import event

CHANNEL = "flask-socketio"
# The permissions deploy/README.md gives the event sender, on the events' vhost only.
SENDER_PERMISSIONS = (r"^campaign\.events.*",) * 3


@pytest.fixture
def queue_vhost(services):
    """A vhost of its own for the message queue, with a user of its own: ``(vhost, url)``."""
    user, password = support.create_broker_user()
    vhost = support.create_vhost(user)
    yield vhost, support.amqp_url(vhost, user, password)
    support.delete_vhost(vhost)
    support.delete_broker_user(user)


@pytest.fixture(params=["shared", "separate"])
def layout(request, database, vhost, tmp_path):
    """A server and a worker with the message queue on the events' vhost, or on its own."""
    queue = request.getfixturevalue("queue_vhost") if request.param == "separate" else (vhost, None)
    with support.Stack(database, vhost, tmp_path, message_queue_url=queue[1]) as stack:
        stack.start_server()
        stack.start_worker()
        yield stack, queue[0]


def test_updates_reach_clients_in_both_layouts(layout, clients):
    stack, queue_vhost = layout
    tenant = stack.create_tenant()
    client = stack.client(tenant)
    clients.append(client)
    with stack.publisher() as publisher:
        publisher.publish(event(tenant, "c1", "campaign_started", name="Both layouts", total_messages=3))
    update = client.wait_campaign("c1", lambda campaign: campaign["name"] == "Both layouts")
    assert update["seq"] == 1
    assert CHANNEL in support.list_exchanges(queue_vhost)
    assert requests.get(stack.servers[0].url + "/readyz", timeout=10).status_code == 200


def test_producers_cannot_write_into_clients_rooms_on_a_separate_vhost(database, vhost, queue_vhost, tmp_path, clients):
    queue, queue_url = queue_vhost
    with support.Stack(database, vhost, tmp_path, message_queue_url=queue_url) as stack:
        stack.start_server()
        stack.start_worker()
        tenant = stack.create_tenant()
        client = stack.client(tenant)
        clients.append(client)
        assert CHANNEL in support.list_exchanges(queue) and CHANNEL not in support.list_exchanges(vhost)

        sender, password = support.create_broker_user()
        try:
            support.set_permissions(vhost, sender, *SENDER_PERMISSIONS)
            # The sender of deploy/README.md publishes events, and the message queue's vhost refuses it.
            with EventPublisher(support.amqp_url(vhost, sender, password)) as publisher:
                publisher.publish(event(tenant, "c0", "campaign_started", name="Sent", total_messages=1))
            client.wait_campaign("c0", lambda campaign: campaign["name"] == "Sent")
            intruder = Connection(support.amqp_url(queue, sender, password))
            with pytest.raises((AccessRefused, NotAllowed)), intruder:
                intruder.connect()
        finally:
            support.delete_broker_user(sender)

        # Even with every right on the events' vhost (guest here), an emit in python-socketio's own
        # format published there reaches nobody: no server listens on that vhost.
        forger = socketio.KombuManager(stack.broker_url, channel=CHANNEL, write_only=True)
        forged = {"seq": 2, "type": "campaign_started", "forged": True, "campaign": {"id": "c1", "name": "Forged"}}
        forger.emit("campaign_update", forged, room=f"tenant:{tenant}")
        forger.publisher_connection.release()

        with stack.publisher() as publisher:
            publisher.publish(event(tenant, "c1", "campaign_started", name="Genuine", total_messages=1))
        # The forged emit went first: on a shared vhost it would have arrived before this one.
        client.wait_campaign("c1", lambda campaign: campaign["name"] == "Genuine")
        assert [update["campaign"]["name"] for update in client.updates] == ["Sent", "Genuine"]


class RecordingStates:
    """Stands for the server's tenant states: records each hand-over."""

    def __init__(self):
        self.batches = []

    def receive_many(self, payloads):
        self.batches.append([payload["seq"] for payload in payloads])


def update_message(tenant_id, seq):
    """A worker's ``campaign_update`` emit as it comes off the message queue."""
    campaign = {"tenant_id": tenant_id, "id": "c", "status": "running", "version": seq, "updated_at": "2026-12-01"}
    payload = {"seq": seq, "timestamp": "2026-12-01T00:00:00Z", "campaign": campaign}
    return {"method": "emit", "event": "campaign_update", "data": payload, "room": f"tenant:{tenant_id}"}


def test_updates_read_together_are_handed_over_together(monkeypatch):
    """The listener reads every message the broker already sent before the event loop turns: they
    are delivered as one batch (one write per client), in arrival order; a bad one is dropped."""
    from sockets import stream

    scheduled = []
    monkeypatch.setattr(stream.socketio, "start_background_task", lambda task, *args: scheduled.append(task))
    states = RecordingStates()
    manager = stream.UpdateStreamManager("amqp://guest:guest@127.0.0.1:5672//", "unused", states)
    for seq in (1, 2):
        manager._handle_emit(update_message("t1", seq))
    manager._handle_emit({"method": "emit", "event": "something_else", "data": {}, "room": "tenant:t1"})
    malformed = update_message("t1", 3)
    del malformed["data"]["campaign"]["version"]  # a worker of another version: dropped, a gap the server fills
    manager._handle_emit(malformed)
    manager._handle_emit(update_message("t2", 1))
    assert len(scheduled) == 1, "one hand-over for what arrived together"
    scheduled.pop()()
    assert states.batches == [[1, 2, 1]]
    manager._handle_emit(update_message("t1", 3))
    assert len(scheduled) == 1, "the next arrival starts the next hand-over"
    scheduled.pop()()
    assert states.batches == [[1, 2, 1], [3]]
