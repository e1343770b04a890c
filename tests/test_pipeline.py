"""End to end: RabbitMQ -> worker -> PostgreSQL -> Socket.IO, with real processes and clients."""

import json
import socket
import threading
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

import jwt
import pytest
import requests
import socketio

from campaigns.queues import REJECTION_HEADER, dead_letter_queue, worker_queue
from campaigns.rules import window_phase
from campaigns.timeutil import isoformat
from config import Config
from tests import support
from tests.support import JWT_SECRET, LiveClient, event, wait_until

THROTTLE_SECONDS = Config().THROTTLE_SECONDS  # what the module's stack reads (it inherits the environment)

STATUS_TYPES = ("campaign_started", "campaign_paused", "campaign_resumed", "campaign_completed")


def at(seconds):
    """An ``occurred_at`` a little after now, so status events keep their order."""
    return isoformat(datetime.now(timezone.utc) + timedelta(seconds=seconds))


def status(tenant, campaign, kind, offset, **data):
    e = event(tenant, campaign, kind, **data)
    e["occurred_at"] = at(offset)
    return e


def started(tenant, campaign, total, offset=0, name="Black Friday"):
    return status(tenant, campaign, "campaign_started", offset, name=name, total_messages=total)


def sent(tenant, campaign, i):
    return event(tenant, campaign, "message_sent", message_id=f"m-{i}")


def final_update(client, campaign, kind):
    return client.wait_for(
        lambda updates: next((u for u in updates if u["campaign"]["id"] == campaign and u["type"] == kind), None),
        15,
        f"{kind} of {campaign}",
    )


def test_every_event_type_reaches_the_tenants_client(stack, tenant, publisher, clients):
    client = stack.client(tenant)
    clients.append(client)
    base_seq = client.snapshots[0]["seq"]
    for e in [
        started(tenant, "bf", 5),
        sent(tenant, "bf", 1),
        event(tenant, "bf", "message_failed", message_id="m-2", error="not on WhatsApp"),
        event(tenant, "bf", "next_message_starting", message_id="m-3", position=3),
        status(tenant, "bf", "campaign_paused", 1, reason="operator"),
        status(tenant, "bf", "campaign_resumed", 2),
        status(tenant, "bf", "campaign_completed", 3),
    ]:
        publisher.publish(e)
    done = final_update(client, "bf", "campaign_completed")["campaign"]
    assert {k: done[k] for k in ("status", "total", "sent", "failed", "pending", "current_message", "last_error")} == {
        "status": "completed",
        "total": 5,
        "sent": 1,
        "failed": 1,
        "pending": 3,
        "current_message": "m-3",
        "last_error": "not on WhatsApp",
    }
    assert done["version"] == 7 and done["progress"] == pytest.approx(0.4)
    assert done["tenant_id"] == tenant and done["name"] == "Black Friday" and done["completed_at"]
    assert [u["type"] for u in client.updates if u["type"].startswith("campaign_")] == list(STATUS_TYPES)
    assert client.seqs() == list(range(base_seq + 1, base_seq + 1 + len(client.updates)))
    assert all(u["replayed"] is False and u["timestamp"].endswith("Z") for u in client.updates)


def test_events_published_twice_are_applied_once(stack, tenant, publisher):
    events = [started(tenant, "dup", 40)] + [sent(tenant, "dup", i) for i in range(30)]
    events += [event(tenant, "dup", "message_failed", message_id=f"f-{i}", error="x") for i in range(5)]
    for e in events + events:
        publisher.publish(e)
    marker = status(tenant, "dup", "campaign_paused", 1)
    publisher.publish(marker)
    publisher.publish(marker)
    state = wait_until(lambda: (c := stack.campaign(tenant, "dup")) and c["status"] == "paused" and c, 15)
    assert (state["sent"], state["failed"], state["version"]) == (30, 5, len(events) + 1)
    assert stack.sql("SELECT count(*) FROM applied_events WHERE tenant_id = %s", (tenant,))[0][0] == len(events) + 1


def test_a_burst_is_throttled_and_its_last_state_delivered(stack, tenant, publisher, clients):
    client = stack.client(tenant)
    clients.append(client)
    publisher.publish(started(tenant, "burst", 200))
    first = final_update(client, "burst", "campaign_started")
    # The first progress update goes at once and opens the window (the burst must come after it: read
    # in one batch with it, the whole burst would be that first update, with nothing left to merge).
    publisher.publish(sent(tenant, "burst", 0))
    opened = client.wait_campaign("burst", lambda c: c["sent"] == 1)
    # Without publisher confirms: 200 confirmed publishes took 1.06 s on a saturated 2-core box, and the
    # burst must fit in the window (the final state below says every event arrived).
    with closing(stack.publisher(confirm=False)) as fast:
        burst_started = time.monotonic()
        for i in range(1, 200):
            fast.publish(sent(tenant, "burst", i))
        burst_took = time.monotonic() - burst_started
    last = client.wait_campaign("burst", lambda c: c["sent"] == 200, timeout=10)
    merged = [u for u in client.updates if u["campaign"]["id"] == "burst" and u["at"] > opened["at"]]
    assert burst_took < 1.0, "the publisher could not produce the burst within a second"
    assert merged[-1] is last and len(merged) <= 2  # one merged update (two if the burst straddled the end)
    assert last["campaign"]["pending"] == 0 and last["campaign"]["version"] == first["campaign"]["version"] + 200
    # the merged update goes at the end of the window (THROTTLE_SECONDS) after the update that opened it
    assert last["at"] - opened["at"] >= THROTTLE_SECONDS - 0.1


def test_the_latest_state_arrives_within_the_throttle_and_half_a_second_of_the_last_event(
    stack, tenant, publisher, clients
):
    """CONTRACT.md: the latest state arrives within THROTTLE_SECONDS + 0.5 s of its last event. The
    worst case: the last event comes just after an update opened the window, on the campaign whose
    window phase (campaigns/rules.py) is the largest of 40."""
    campaign_id = max((f"late-{n}" for n in range(40)), key=lambda c: window_phase(tenant, c))
    client = stack.client(tenant)
    clients.append(client)
    publisher.publish(started(tenant, campaign_id, 10))
    publisher.publish(sent(tenant, campaign_id, 0))
    client.wait_campaign(campaign_id, lambda c: c["sent"] == 1)  # a progress update: its window opened
    publisher.publish(sent(tenant, campaign_id, 1))  # confirmed by the broker on return
    last_event_at = time.monotonic()
    merged = client.wait_campaign(campaign_id, lambda c: c["sent"] == 2, timeout=10)
    took = merged["at"] - last_event_at
    print(f"latest state {took:.3f} s after the last event (window phase {window_phase(tenant, campaign_id):.3f} s)")
    assert took <= THROTTLE_SECONDS + 0.5, f"the latest state came {took:.3f} s after the last event"
    assert took >= THROTTLE_SECONDS * 0.9, "merged at the window's end, not sent at once"


def test_status_events_are_never_merged_away(stack, tenant, publisher, clients):
    client = stack.client(tenant)
    clients.append(client)
    kinds = ["campaign_paused", "campaign_resumed"] * 3
    publisher.publish(started(tenant, "flip", 10))
    for i, kind in enumerate(kinds):
        publisher.publish(sent(tenant, "flip", i))
        publisher.publish(status(tenant, "flip", kind, i + 1))
    publisher.publish(status(tenant, "flip", "campaign_cancelled", 10))
    final_update(client, "flip", "campaign_cancelled")
    seen = [(u["type"], u["campaign"]["status"]) for u in client.updates if u["type"].startswith("campaign_")]
    expected_status = {
        "campaign_started": "running",
        "campaign_paused": "paused",
        "campaign_resumed": "running",
        "campaign_cancelled": "cancelled",
    }
    expected = ["campaign_started", *kinds, "campaign_cancelled"]
    assert seen == [(kind, expected_status[kind]) for kind in expected]


def test_a_tenant_never_receives_another_tenants_updates(stack, publisher, clients):
    alice, bob = stack.create_tenant(), stack.create_tenant()
    publisher.publish(started(alice, "secret-plan", 3, name="Alice only"))
    wait_until(lambda: stack.campaign(alice, "secret-plan"), 10)
    alice_client, bob_client = stack.client(alice), stack.client(bob)
    polling_bob = stack.client(bob, transports=["polling"])
    clients.extend([alice_client, bob_client, polling_bob])
    assert bob_client.snapshots[0]["campaigns"] == []
    for i in range(20):
        publisher.publish(sent(alice, "secret-plan", i))
    publisher.publish(status(alice, "secret-plan", "campaign_completed", 1))
    final_update(alice_client, "secret-plan", "campaign_completed")
    publisher.publish(started(bob, "bob-marker", 1))
    final_update(bob_client, "bob-marker", "campaign_started")
    final_update(polling_bob, "bob-marker", "campaign_started")
    for bob_side in (bob_client, polling_bob):
        assert {u["campaign"]["tenant_id"] for u in bob_side.updates} == {bob}
        assert all("secret-plan" not in json.dumps(u) for u in bob_side.updates)
    assert {u["campaign"]["tenant_id"] for u in alice_client.updates} == {alice}


def _refusal(stack, auth):
    client = LiveClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.sio.connect(stack.servers[0].url, auth=auth, transports=["websocket"], wait_timeout=5)
    wait_until(lambda: client.errors, 5, message="connect_error")
    return client.errors[0].get("message")


def _forge(claims, secret=JWT_SECRET, algorithm="HS256"):
    return jwt.encode(claims, secret, algorithm=algorithm)


def test_bad_credentials_are_refused(stack, tenant):
    now = int(time.time())
    good = {"tenant": tenant, "sub": "x", "exp": now + 60}
    unsigned = jwt.encode(good, None, algorithm="none")
    head, _, signature = stack.token(tenant).split(".")
    tampered = ".".join(
        [head, jwt.utils.base64url_encode(json.dumps({**good, "tenant": "other"}).encode()).decode(), signature]
    )
    cases = {
        "no auth": None,
        "no token": {},
        "empty token": {"token": ""},
        "garbage": {"token": "not-a-jwt"},
        "wrong secret": {"token": _forge(good, secret="another-secret-of-32-bytes-or-more!!")},
        "alg none": {"token": unsigned},
        "tampered": {"token": tampered},
        "missing tenant": {"token": _forge({"sub": "x", "exp": now + 60})},
        "missing exp": {"token": _forge({"tenant": tenant, "sub": "x"})},
        "unknown tenant": {"token": _forge({**good, "tenant": "no-such-tenant"})},
    }
    for name, auth in cases.items():
        assert _refusal(stack, auth) == "unauthorized", name
    # Past exp, even by less than JWT_LEEWAY_SECONDS (which is for clocks ahead, on iat).
    for expired_for in (60, 2):
        assert _refusal(stack, {"token": _forge({**good, "exp": now - expired_for})}) == "token_expired"
        answer = requests.get(
            f"{stack.servers[0].url}/api/campaigns",
            headers={"Authorization": f"Bearer {_forge({**good, 'exp': now - expired_for})}"},
            timeout=10,
        )
        assert (answer.status_code, answer.json()["error"]) == (401, "token_expired"), expired_for


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_the_connect_packet_comes_before_the_snapshot_and_the_replay(stack, tenant, publisher, transport):
    # socket.io-client-swift drops every event that arrives before it is connected.
    publisher.publish(started(tenant, "first", 5))
    publisher.publish(status(tenant, "first", "campaign_paused", 1))
    wait_until(lambda: stack.sql("SELECT last_seq FROM tenants WHERE id = %s", (tenant,))[0][0] == 2, 10)
    packets = []
    raw = support.OrderedEngineIOClient()
    raw.on("message", packets.append)
    raw.connect(stack.servers[0].url, transports=[transport], engineio_path="socket.io")
    try:
        raw.send("0" + json.dumps({"token": stack.token(tenant), "last_seq": 0}))
        wait_until(lambda: len(packets) >= 4, 10, message="CONNECT, the snapshot and two replayed updates")
    finally:
        raw.disconnect()
    # Socket.IO packets inside Engine.IO messages: 0 is CONNECT, 2 an EVENT.
    kinds = [packet[0] + (json.loads(packet[1:])[0] if packet.startswith("2") else "") for packet in packets[:4]]
    assert kinds == ["0", "2campaign_snapshot", "2campaign_update", "2campaign_update"], packets[:4]
    assert [json.loads(packet[1:])[1]["seq"] for packet in packets[2:4]] == [1, 2]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest.mark.parametrize("message", ["2garbage", "2[]", '2{"a":1}', "\x00abc", "9", "4{}"])
def test_a_malformed_packet_closes_its_connection_in_one_line(stack, tenant, publisher, clients, transport, message):
    bystander = stack.client(tenant)
    clients.append(bystander)
    logged_before = len(stack.servers[0].log())
    closed = threading.Event()
    raw = support.OrderedEngineIOClient()
    raw.on("disconnect", lambda *args: closed.set())
    raw.connect(stack.servers[0].url, transports=[transport], engineio_path="socket.io")
    try:
        raw.send("0" + json.dumps({"token": stack.token(tenant)}))
        raw.send(message)
        assert closed.wait(15), "the server kept the connection of a client that sent garbage"
    finally:
        raw.disconnect()
    server_log = stack.servers[0].log()[logged_before:]
    assert server_log.count("it sent a malformed packet") == 1, server_log
    assert "Traceback" not in server_log
    publisher.publish(started(tenant, "after-garbage", 5))
    final_update(bystander, "after-garbage", "campaign_started")


def test_reconnecting_with_last_seq_replays_missed_updates_in_order(stack, tenant, publisher, clients):
    first = stack.client(tenant)
    publisher.publish(started(tenant, "r1", 5))
    final_update(first, "r1", "campaign_started")
    last_seen = first.updates[-1]["seq"]
    first.close()
    missed = ["campaign_paused", "campaign_resumed", "campaign_paused"]
    for i, kind in enumerate(missed):
        publisher.publish(status(tenant, "r1", kind, i + 1))
    wait_until(lambda: stack.sql("SELECT last_seq FROM tenants WHERE id = %s", (tenant,))[0][0] == last_seen + 3, 10)
    again = stack.client(tenant, auth_extra={"last_seq": last_seen})
    clients.append(again)
    again.wait_for(lambda updates: len(updates) >= 3, message="replayed updates")
    assert [(u["seq"], u["type"], u["replayed"]) for u in again.updates] == [
        (last_seen + 1 + i, kind, True) for i, kind in enumerate(missed)
    ]
    publisher.publish(status(tenant, "r1", "campaign_completed", 10))
    live = final_update(again, "r1", "campaign_completed")
    assert (live["seq"], live["replayed"]) == (last_seen + 4, False)


def test_replay_event_resends_updates_and_refuses_bad_input(stack, tenant, publisher, clients):
    client = stack.client(tenant)
    clients.append(client)
    publisher.publish(started(tenant, "rp", 5))
    publisher.publish(status(tenant, "rp", "campaign_paused", 1))
    final_update(client, "rp", "campaign_paused")
    live = list(client.updates)
    for bad in ({"after_seq": "x"}, {"after_seq": -1}, {"after_seq": True}, {}, "nonsense", None):
        answer = client.sio.call("replay", bad, timeout=5)
        assert answer["error"] == "bad_request", bad
    assert client.sio.connected
    answer = client.sio.call("replay", {"after_seq": live[0]["seq"] - 1}, timeout=5)
    assert answer == {"ok": True, "seq": live[-1]["seq"]}
    replayed = client.wait_for(
        lambda updates: (
            [u for u in updates if u["replayed"]] if len([u for u in updates if u["replayed"]]) == len(live) else None
        )
    )
    assert [(u["seq"], u["campaign"]) for u in replayed] == [(u["seq"], u["campaign"]) for u in live]


def _dead_letters(stack, wanted, marker):
    """Consume the dead-letter queue until ``wanted`` messages containing ``marker`` arrived."""

    def mine(headers, body):
        return marker.encode() in body or marker in headers.get("x-original-routing-key", "")

    letters = support.consume(stack.broker_url, dead_letter_queue, wanted, 20, accept=mine)
    return [(headers[REJECTION_HEADER], body) for headers, body in letters]


def test_invalid_messages_are_dead_lettered_and_valid_ones_around_them_applied(stack, tenant, publisher):
    good = event(tenant, "dl", "message_sent", message_id="m-1")
    bad = [
        (b"this is not json " + tenant.encode(), f"{tenant}.message_sent", "invalid_json"),
        (json.dumps({**good, "event_id": None}).encode(), f"{tenant}.message_sent", "missing_field"),
        (json.dumps({**good, "type": "message_exploded"}).encode(), f"{tenant}.message_exploded", "unknown_type"),
        (
            json.dumps({**good, "occurred_at": "2026-11-25T12:00:00"}).encode(),
            f"{tenant}.message_sent",
            "invalid_field",
        ),
        (
            json.dumps({**good, "tenant_id": "ghost-" + tenant[:20]}).encode(),
            f"ghost-{tenant[:20]}.message_sent",
            "unknown_tenant",
        ),
        (json.dumps({**good, "data": {"message_id": "x" * 70000}}).encode(), f"{tenant}.message_sent", "too_large"),
        (json.dumps(good).encode(), f"{tenant}.campaign_started", "routing_key_mismatch"),
        (b"\xff\xfe" + tenant.encode(), f"{tenant}.message_sent", "invalid_encoding"),
    ]
    publisher.publish(started(tenant, "dl", 10))
    for i, (body, routing_key, _) in enumerate(bad):
        publisher.publish_raw(body, routing_key)
        publisher.publish(sent(tenant, "dl", i))
    publisher.publish(status(tenant, "dl", "campaign_completed", 1))
    state = wait_until(lambda: (c := stack.campaign(tenant, "dl")) and c["status"] == "completed" and c, 15)
    assert (state["sent"], state["version"]) == (len(bad), len(bad) + 2)
    letters = _dead_letters(stack, len(bad), tenant)
    assert sorted(reason.split(":")[0] for reason, _ in letters) == sorted(code for _, _, code in bad)
    assert all(": " in reason for reason, _ in letters)
    assert {body for _, body in letters} == {body for body, _, _ in bad}
    assert stack.workers[0].alive()
    # Every message is settled: the valid ones (acknowledged together after the commit) and the
    # dead-lettered ones (acknowledged one by one) leave nothing delivered-but-unacknowledged.
    queue = worker_queue().name
    wait_until(lambda: support.list_queues(stack.vhost)[queue] == (0, 0), 15, 0.2, "no message left unacknowledged")


def test_a_long_polling_client_gets_live_updates(stack, tenant, publisher, clients):
    client = stack.client(tenant, transports=["polling"])
    clients.append(client)
    assert client.sio.transport() == "polling"
    publisher.publish(started(tenant, "lp", 2))
    publisher.publish(sent(tenant, "lp", 1))
    publisher.publish(status(tenant, "lp", "campaign_completed", 1))
    done = final_update(client, "lp", "campaign_completed")
    assert done["campaign"]["sent"] == 1


def test_long_polling_clients_get_every_update_in_seq_order(stack, tenant, publisher, clients):
    """Several long-polling clients, a burst of status updates over several campaigns: each
    client sees every ``seq`` once, in order (batched responses keep the order of the queue)."""
    polling = [stack.client(tenant, transports=["polling"]) for _ in range(4)]
    clients.extend(polling)
    kinds = ("campaign_paused", "campaign_resumed")
    events = [started(tenant, f"lp{c}", 10) for c in range(4)]
    events += [status(tenant, f"lp{i % 4}", kinds[(i // 4) % 2], 1 + i) for i in range(40)]
    for e in events:
        publisher.publish(e)
    for client in polling:
        client.wait_for(lambda updates: len(updates) >= len(events), 20, "every update")
        assert client.seqs() == list(range(1, len(events) + 1))


def websocket_upgrade_answer(port):
    """The server's answer to a browser-like WebSocket upgrade that offers permessage-deflate."""
    request = support.websocket_upgrade_request(extensions="permessage-deflate; client_max_window_bits")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n\r\n")[0].decode().lower()


def test_websocket_compression_is_refused_unless_enabled(stack):
    default = websocket_upgrade_answer(stack.servers[0].port)
    assert default.startswith("http/1.1 101")
    assert "permessage-deflate" not in default
    enabled = stack.start_server(WEBSOCKET_COMPRESSION="1")
    assert "permessage-deflate" in websocket_upgrade_answer(enabled.port)
