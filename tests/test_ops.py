"""The ops page's JSON and actions in-process, on real PostgreSQL and RabbitMQ; who may see it."""

import logging
import re
import uuid
from datetime import timedelta

import pytest
from kombu import Connection, Producer
from sqlalchemy import select

from campaigns.ingest import apply_batch
from campaigns.models import Tenant, User
from campaigns.queues import DEAD_LETTER_QUEUE, REJECTION_HEADER, declare_topology
from campaigns.timeutil import utcnow
from ops.throughput import throughput
from sockets.presence import count_clients, publish
from tests import support
from tests.support import wait_until
from tests.test_ingest import ev, started


@pytest.fixture
def ops_app(make_app, vhost):
    """An app whose broker is a real vhost with the topology declared."""
    url = support.amqp_url(vhost)
    with Connection(url) as connection:
        declare_topology(connection)
    return make_app(EVENTS_BROKER_URL=url, SERVER_HEARTBEAT_SECONDS=1.0)


@pytest.fixture
def users(ops_app, store):
    store.add(Tenant(id="acme", name="Acme", last_seq=0))
    store.flush()
    admin = User(email="root@example.test", is_admin=True)
    member = User(email="ana@acme.test", tenant_id="acme")
    for user in (admin, member):
        user.set_password("password-123")
        store.add(user)
    store.commit()
    return {"admin": admin.id, "member": member.id}


def client_as(app, user_id=None):
    client = app.test_client()
    if user_id is not None:
        with client.session_transaction() as session:
            session["_user_id"] = str(user_id)
            session["_fresh"] = True
    return client


def dead_letter(url, reason, body, routing_key="acme.message_sent"):
    with Connection(url) as connection:
        Producer(connection.channel()).publish(
            body,
            exchange="",
            routing_key=DEAD_LETTER_QUEUE,
            headers={
                REJECTION_HEADER: reason,
                "x-original-routing-key": routing_key,
                "x-rejected-at": utcnow().isoformat(),
            },
            content_type="application/json",
            content_encoding="binary",
        )


def test_the_ops_page_does_not_exist_for_anonymous_and_tenant_users(ops_app, users):
    for who in (None, users["member"]):
        client = client_as(ops_app, who)
        assert (client.get("/ops").status_code, client.get("/ops").data) == (404, client.get("/nowhere").data)
        answer = client.get("/ops/status", headers={"Accept": "application/json"})
        nowhere = client.get("/ops/no-such-thing", headers={"Accept": "application/json"})
        assert (answer.status_code, answer.get_json()) == (404, nowhere.get_json()), "like a URL that does not exist"
        assert answer.get_json()["error"] == "not_found"
        # Not even a CSRF refusal that would tell the route exists.
        assert client.post("/ops/dead-letters/requeue", data={"reason": "x"}).status_code == 404
    page = client_as(ops_app, users["member"]).get("/")
    assert b"/ops" not in page.data, "no link to it either"
    assert b'href="/ops"' in client_as(ops_app, users["admin"]).get("/ops").data
    in_portuguese = client_as(ops_app, users["admin"]).get("/ops", headers={"Accept-Language": "pt-BR"})
    assert "<h1>Operações</h1>" in in_portuguese.get_data(as_text=True)


def test_the_status_has_real_numbers_from_the_broker_the_database_and_the_servers(ops_app, users, store):
    url = ops_app.config["EVENTS_BROKER_URL"]
    with Connection(url) as connection:
        producer = Producer(connection.channel())
        for _number in range(3):
            producer.publish(b"{}", exchange="", routing_key="campaign.events.worker")
    dead_letter(url, "unknown_tenant: late", b'{"event_id": "e1", "tenant_id": "late"}')
    dead_letter(url, "unknown_tenant: later", b'{"event_id": "e2"}')
    dead_letter(url, "invalid_json", b"{broken <script>")
    now = utcnow()
    events = [started(10, tenant="acme", campaign="c", at=now - timedelta(seconds=2))]
    events += [
        ev("message_sent", {"message_id": f"m{i}"}, tenant="acme", campaign="c", at=now - timedelta(seconds=1))
        for i in range(29)
    ]
    apply_batch(store, events, now, 2.0)
    store.commit()
    with ops_app.app_context():
        publish(
            "host-a:5001:11:aaaaaa",
            {"transports": {"websocket": 3, "polling": 1}, "tenants": {"acme": 4}},
            now,
            1.0,
            now,
        )
        publish(
            "host-b:5002:12:bbbbbb",
            {"transports": {"websocket": 2, "polling": 0}, "tenants": {"acme": 1, "globex": 1}},
            now,
            1.0,
            now,
        )
        publish(
            "gone:5003:13:cccccc",
            {"transports": {"websocket": 9}, "tenants": {"ghost": 9}},
            now - timedelta(seconds=5),
            1.0,
            now,
        )
    logging.getLogger("sockets.tenants").warning("[WEBSOCKET] something to look at %s", uuid.uuid4().hex[:4])

    body = client_as(ops_app, users["admin"]).get("/ops/status").get_json()
    workers = body["workers"]
    assert (workers["queue"], workers["depth"], workers["consumers"]) == ("campaign.events.worker", 3, 0)
    assert workers["events_per_second"] == 0.5, "30 events over the minute"
    assert 0.9 <= workers["lag_seconds"]["p50"] <= 1.5 and workers["lag_seconds"]["max"] >= 1.9
    dead = body["dead_letters"]
    assert (dead["total"], dead["scanned"]) == (3, 3)
    assert dead["by_reason"] == [{"reason": "unknown_tenant", "count": 2}, {"reason": "invalid_json", "count": 1}]
    assert [letter["reason"] for letter in dead["newest"]] == [
        "invalid_json",
        "unknown_tenant: later",
        "unknown_tenant: late",
    ]
    assert dead["newest"][0]["body"] == "{broken <script>" and re.fullmatch(r"[0-9a-f]{16}", dead["newest"][0]["id"])
    sockets = body["sockets"]
    assert [server["host"] for server in sockets["servers"]] == ["host-a", "host-b"], "the stale row is not shown"
    assert sockets["clients"] == 6
    assert sockets["tenants"] == [{"tenant_id": "acme", "clients": 5}, {"tenant_id": "globex", "clients": 1}]
    assert any("something to look at" in error["message"] and error["level"] == "WARNING" for error in body["errors"])
    assert support.list_queues(url.rsplit("/", 1)[1])[DEAD_LETTER_QUEUE][0] == 3, "looking took nothing away"


def test_an_admin_requeues_and_discards_dead_letters_with_a_csrf_token(ops_app, users):
    url = ops_app.config["EVENTS_BROKER_URL"]
    vhost = url.rsplit("/", 1)[1]
    dead_letter(url, "unknown_tenant: acme", b'{"event_id": "e1"}')
    dead_letter(url, "invalid_json", b"{broken")
    dead_letter(url, "invalid_json", b"{broken too")
    admin = client_as(ops_app, users["admin"])
    token = re.search(rb'data-csrf="([^"]+)"', admin.get("/ops").data).group(1).decode()
    letters = admin.get("/ops/status").get_json()["dead_letters"]["newest"]
    wanted = next(letter["id"] for letter in letters if letter["reason"].startswith("unknown_tenant"))

    assert admin.post("/ops/dead-letters/requeue", data={"id": wanted}).status_code == 400, "no CSRF token"
    answer = admin.post("/ops/dead-letters/requeue", data={"id": wanted}, headers={"X-CSRFToken": token})
    assert answer.get_json() == {"action": "requeue", "done": 1, "kept": 2}
    queues = wait_until(lambda: (q := support.list_queues(vhost)) and q["campaign.events.worker"][0] == 1 and q)
    assert queues[DEAD_LETTER_QUEUE][0] == 2
    assert admin.get("/ops/status").get_json()["dead_letters"]["total"] == 2, "the page sees the change at once"

    answer = admin.post("/ops/dead-letters/discard", data={"reason": "invalid_json", "csrf_token": token})
    assert answer.get_json() == {"action": "discard", "done": 2, "kept": 0}
    assert support.list_queues(vhost)[DEAD_LETTER_QUEUE][0] == 0
    assert (
        admin.post("/ops/dead-letters/explode", data={"reason": "x"}, headers={"X-CSRFToken": token}).status_code == 404
    )


def test_throughput_is_over_the_minute_or_over_what_a_full_sample_spans():
    now = utcnow()
    rows = [(now - timedelta(seconds=s), now - timedelta(seconds=s + 0.5)) for s in range(30)]
    answer = throughput(rows, now)
    assert answer["events_per_second"] == 0.5 and answer["lag_seconds"] == {"p50": 0.5, "p95": 0.5, "max": 0.5}
    full = [(now - timedelta(milliseconds=n), now - timedelta(milliseconds=n)) for n in range(100)]
    assert throughput(full, now, sample_limit=100)["events_per_second"] == pytest.approx(100 / 0.099, rel=0.01)
    assert throughput([], now) == {"events_per_second": 0.0, "lag_seconds": None, "sample": 0}


def test_a_server_counts_its_clients_by_transport_and_its_largest_tenants():
    connections = {"a": 1, "b": 1, "c": 1, "gone": 1}
    transports = {"a": "websocket", "b": "polling", "c": "websocket"}
    counts = count_clients(connections, {"t1": 2, "t2": 1, "t3": 1}, lambda sid: transports[sid], tenants_published=2)
    assert counts["transports"] == {"websocket": 2, "polling": 1}
    assert counts["tenants"] == {"t1": 2, "t2": 1, "(other tenants)": 1}


def test_rows_of_servers_gone_long_ago_are_deleted_by_any_heartbeat(ops_app, store):
    from campaigns.models import ServerPresence

    now = utcnow()
    with ops_app.app_context():
        publish("dead:1:1:aaaaaa", {"transports": {}, "tenants": {}}, now - timedelta(seconds=13), 1.0, now)
        publish("quiet:2:2:bbbbbb", {"transports": {}, "tenants": {}}, now - timedelta(seconds=11), 1.0, now)
        publish("alive:3:3:cccccc", {"transports": {}, "tenants": {}}, now, 1.0, now)
    assert sorted(store.scalars(select(ServerPresence.id))) == ["alive:3:3:cccccc", "quiet:2:2:bbbbbb"]
