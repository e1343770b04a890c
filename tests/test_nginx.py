"""deploy/nginx.conf in front of two real servers: websocket, long-polling, REST and /metrics.

The shipped file is what runs: the test only substitutes the upstream ports, the listen port and
the log paths, and wraps it in a main config of its own (``daemon off``, pid, error log and
every temp path under ``tmp_path``), so it is a private nginx instance started by pid.
"""

import http.client
import json
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
import socketio

from campaigns.timeutil import isoformat
from stack import NGINX, Nginx, require_nginx
from tests import support
from tests.support import LiveClient, event, wait_until


def request(url, path, headers=None, source="127.0.0.1"):
    """(status, headers, body) of a GET, from a chosen local source address."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def connect(url, token, transports, origin=None):
    """A ``LiveClient`` connected to ``url``, optionally sending a browser's ``Origin``."""
    client = LiveClient()
    headers = {"Origin": origin} if origin else {}
    try:
        client.sio.connect(url, headers=headers, auth={"token": token}, transports=transports, wait_timeout=10)
        wait_until(lambda: client.snapshots, 10, message="campaign_snapshot")
    except BaseException:
        client.close()
        raise
    return client


@pytest.fixture(scope="module")
def two_servers(module_database, module_vhost, tmp_path_factory):
    """Two servers and one worker on the module's database and vhost."""
    with support.Stack(module_database, module_vhost, tmp_path_factory.mktemp("logs")) as stack:
        stack.start_server()
        stack.start_server()
        stack.start_worker()
        yield stack


@pytest.fixture
def nginx(two_servers, tmp_path):
    proxy = Nginx([server.port for server in two_servers.servers], tmp_path)
    try:
        yield proxy
    finally:
        proxy.stop()


def status_event(tenant, campaign, kind, offset, **data):
    """A status event ``offset`` seconds after now, so status events keep their order."""
    e = event(tenant, campaign, kind, **data)
    e["occurred_at"] = isoformat(datetime.now(timezone.utc) + timedelta(seconds=offset))
    return e


def test_nginx_is_installed():
    require_nginx()
    version = subprocess.run([str(NGINX), "-v"], capture_output=True, text=True, timeout=10)
    assert version.returncode == 0 and "nginx/" in version.stderr


def test_every_client_through_nginx_and_direct_gets_every_update(two_servers, nginx):
    stack = two_servers
    tenant = stack.create_tenant()
    token = stack.token(tenant)
    clients = {}
    try:
        # Browser-like Origin (nginx's URL): accepted only if nginx passes Host or X-Forwarded-Host with
        # the port (Engine.IO's same-origin check). The websocket client (websocket-client) sends that
        # Origin by itself; a second one would be joined with it into an invalid value, so it is
        # passed to the polling client only.
        clients["nginx websocket"] = connect(nginx.url, token, ["websocket"])
        clients["nginx polling"] = connect(nginx.url, token, ["polling"], origin=nginx.url)
        for index, server in enumerate(stack.servers):
            clients[f"server {index} direct"] = connect(server.url, token, ["websocket"])
        assert clients["nginx websocket"].sio.transport() == "websocket"
        assert clients["nginx polling"].sio.transport() == "polling"
        snapshot_seq = {name: client.snapshots[0]["seq"] for name, client in clients.items()}
        assert set(snapshot_seq.values()) == {0}

        with stack.publisher() as publisher:
            publisher.publish(status_event(tenant, "nx", "campaign_started", 0, name="Behind nginx", total_messages=30))
            for i in range(20):
                publisher.publish(event(tenant, "nx", "message_sent", message_id=f"m-{i}"))
            publisher.publish(event(tenant, "nx", "message_failed", message_id="m-20", error="bounced"))
            publisher.publish(status_event(tenant, "nx", "campaign_paused", 1, reason="operator"))
            for i in range(21, 30):
                publisher.publish(event(tenant, "nx", "message_sent", message_id=f"m-{i}"))
            publisher.publish(status_event(tenant, "nx", "campaign_completed", 2))

        def final(client):
            return any(u["campaign"]["id"] == "nx" and u["campaign"]["status"] == "completed" for u in client.updates)

        for name, client in clients.items():
            wait_until(lambda client=client: final(client), 15, message=f"the final state at {name}")
        stored = [
            row[0] for row in stack.sql("SELECT seq FROM campaign_updates WHERE tenant_id = %s ORDER BY seq", (tenant,))
        ]
        assert stored and stored == list(range(1, len(stored) + 1))
        for name, client in clients.items():
            # Every stored update exactly once. Sorted: python-engineio's client runs each message's
            # handler in a thread of its own, so the order handlers record them in is not the wire order.
            wait_until(lambda client=client: sorted(client.seqs()) == stored, 5, message=f"every update at {name}")
            assert len(client.seqs()) == len(stored), name
            last = max(client.updates, key=lambda u: u["seq"])["campaign"]
            assert (last["status"], last["sent"], last["failed"], last["pending"]) == ("completed", 29, 1, 0), name
            assert {u["campaign"]["tenant_id"] for u in client.updates} == {tenant}
            assert not any(u["replayed"] for u in client.updates), name
        types = [u["type"] for u in sorted(clients["nginx polling"].updates, key=lambda u: u["seq"])]
        assert types[0] == "campaign_started" and types[-1] == "campaign_completed" and "campaign_paused" in types
    finally:
        for client in clients.values():
            client.close()

    # Sticky sessions: every request of the long-polling session went to one upstream, and the
    # websocket was upgraded (101) through nginx.
    log = nginx.access_log()
    polling = [(line, upstream) for line, status, upstream in log if "transport=polling" in line]
    assert polling, f"no long-polling requests in nginx's access log: {log[:5]}"
    assert len({upstream for _, upstream in polling}) == 1, polling
    assert any("transport=websocket" in line and status == "101" for line, status, _ in log), log
    ports = {f"127.0.0.1:{server.port}" for server in stack.servers}
    assert {upstream for _, _, upstream in log} <= ports


def test_rest_and_metrics_through_nginx(two_servers, nginx):
    stack = two_servers
    tenant = stack.create_tenant()
    with stack.publisher() as publisher:
        publisher.publish(event(tenant, "rest", "campaign_started", name="REST via nginx", total_messages=3))
    wait_until(lambda: stack.campaign(tenant, "rest"), 10, message="the campaign to be applied")
    auth = {"Authorization": f"Bearer {stack.token(tenant)}"}

    status, headers, body = request(nginx.url, "/api/campaigns", auth)
    assert status == 200, body
    assert [c["id"] for c in json.loads(body)["campaigns"]] == ["rest"]
    etag = headers["ETag"]
    status, headers, body = request(nginx.url, "/api/campaigns", {**auth, "If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert headers["ETag"] == etag
    assert request(nginx.url, "/api/campaigns")[0] == 401
    assert request(nginx.url, "/healthz")[0] == 200

    # /metrics: allowed from 127.0.0.1 only (deploy/nginx.conf); any other address gets nginx's 403.
    status, headers, body = request(nginx.url, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE campaign_live_" in body
    status, _, body = request(nginx.url, "/metrics", source="127.0.0.2")
    assert status == 403 and b"nginx" in body
    # ... while the servers themselves still answer it directly (they bind to a private address).
    assert request(stack.servers[0].url, "/metrics", source="127.0.0.2")[0] == 200
    # Same-origin checks still hold behind the proxy: a page of another site is refused.
    with pytest.raises(socketio.exceptions.ConnectionError):
        connect(nginx.url, stack.token(tenant), ["polling"], origin="http://elsewhere.example")
    # The REST API is not restricted by address.
    assert request(nginx.url, "/api/campaigns", auth, source="127.0.0.2")[0] == 200
