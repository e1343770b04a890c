"""Expired history, the gevent way out, and the embedded demo, each on a stack of its own."""

import json
import re
import subprocess

import pytest
from kombu import Connection

from tests import support
from tests.support import LiveClient, Process, event, wait_until


@pytest.fixture
def make_stack(database, vhost, tmp_path):
    """Build a stack with settings of the test's choosing; stopped afterwards."""
    made = []

    def build(**settings):
        stack = support.Stack(database, vhost, tmp_path, **settings)
        made.append(stack)
        return stack

    yield build
    for stack in made:
        stack.stop()


def test_a_client_behind_the_kept_history_gets_resync(make_stack):
    stack = make_stack(EVENT_RETENTION_SECONDS=1)
    stack.start_server()
    stack.start_worker()
    tenant = stack.create_tenant()
    with stack.publisher() as publisher:
        publisher.publish(event(tenant, "old", "campaign_started", name="Old", total_messages=1))
        wait_until(lambda: stack.sql("SELECT last_seq FROM tenants WHERE id = %s", (tenant,))[0][0] == 1, 10)
        wait_until(
            lambda: stack.sql(
                "SELECT bool_and(created_at < now() - interval '1.2 seconds') FROM campaign_updates "
                "WHERE tenant_id = %s",
                (tenant,),
            )[0][0],
            10,
            0.1,
            "the update to age past retention",
        )
        client = stack.client(tenant, auth_extra={"last_seq": 0})
        try:
            wait_until(lambda: client.resyncs, 10, message="resync")
            assert client.resyncs[0]["reason"] == "history_expired"
            assert client.updates == []
            assert [c["id"] for c in client.snapshots[0]["campaigns"]] == ["old"]
            answer = client.sio.call("replay", {"after_seq": 0}, timeout=5)
            assert answer == {"ok": True, "resync": True}
            wait_until(lambda: len(client.snapshots) == 2, 5, message="a fresh snapshot after resync")
        finally:
            client.close()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_the_server_runs_under_gevent(make_stack, transport):
    stack = make_stack()
    server = stack.start_server(ASYNC_MODE="gevent")
    stack.start_worker()
    tenant = stack.create_tenant()
    client = stack.client(tenant, transports=[transport])
    try:
        assert client.sio.transport() == transport
        with stack.publisher() as publisher:
            publisher.publish(event(tenant, "gv", "campaign_started", name="Gevent", total_messages=3))
        update = client.wait_for(lambda updates: updates and updates[0], message="an update under gevent")
        assert update["campaign"]["name"] == "Gevent"
        # A client event spends the connection's budget (sockets/limits.py, limits' in-memory storage).
        assert client.sio.call("replay", {"after_seq": 0}, timeout=10) == {"ok": True, "seq": update["seq"]}
        assert "async mode gevent" in server.log()
    finally:
        client.close()


def test_make_run_without_services_runs_the_embedded_demo(tmp_path):
    port = support.free_port()
    env = {key: value for key, value in support.os.environ.items() if key not in ("DATABASE_URL", "BROKER_URL")}
    env.update(PORT=str(port), DEMO_DATABASE_URL=f"sqlite:///{tmp_path}/demo.db", PYTHONUNBUFFERED="1")
    demo = Process("demo", [support.PYTHON, "app.py"], env, tmp_path)
    client = LiveClient()
    try:
        token = wait_until(
            lambda: re.search(r"tenant 'acme' \(24 h\):\n(\S+)", demo.log()), 60, 0.1, "the demo's token"
        ).group(1)
        wait_until(lambda: support.server_healthy(demo, port), 30, 0.1, "the demo server")
        client.connect(f"http://127.0.0.1:{port}", {"token": token}, ["websocket"])
        update = client.wait_for(lambda updates: updates and updates[0], 30, "a simulated campaign update")
        assert update["campaign"]["tenant_id"] == "acme"
        assert (tmp_path / "demo.db").exists()
    finally:
        client.close()
        demo.stop()
    assert demo.popen.returncode is not None


def test_python_m_worker_refuses_to_run_without_broker_and_database(tmp_path):
    env = {key: value for key, value in support.os.environ.items() if key not in ("DATABASE_URL", "BROKER_URL")}
    result = subprocess.run(
        [support.PYTHON, "-m", "worker"], cwd=support.REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "set BROKER_URL and DATABASE_URL" in result.stderr


def test_create_tenant_declares_the_topology_for_a_sender_that_declares_nothing(make_stack):
    stack = make_stack()
    created = subprocess.run(
        [support.PYTHON, "-m", "flask", "--app", "app", "create-tenant", "early-bird", "--name", "Early Bird"],
        cwd=support.REPO,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr[-2000:]
    assert "campaign.events.worker" in support.list_queues(stack.vhost)
    # A sender in another language: publishes to the exchange, declares nothing (passive would fail).
    body = json.dumps(event("early-bird", "early", "campaign_started", name="Early", total_messages=1)).encode()
    with Connection(stack.broker_url) as connection, connection.channel() as channel:
        channel.basic_publish(
            channel.prepare_message(body, content_type="application/json", properties={"delivery_mode": 2}),
            exchange="campaign.events",
            routing_key="early-bird.campaign_started",
            mandatory=True,
        )
    stack.start_worker()
    state = wait_until(lambda: stack.campaign("early-bird", "early"), 15, message="the early event applied")
    assert state["name"] == "Early"


def test_events_published_before_any_worker_ever_ran_wait_for_one(make_stack):
    stack = make_stack()
    tenant = stack.create_tenant()
    with stack.publisher() as publisher:  # nothing has declared the worker queue on this vhost yet
        publisher.publish(event(tenant, "early", "campaign_started", name="Early", total_messages=1))
    stack.start_worker()
    state = wait_until(lambda: stack.campaign(tenant, "early"), 15, message="the early event applied")
    assert state["name"] == "Early"
