"""Tenant isolation, the polling fallback and metrics, against a real server and worker."""

import json
import re
import subprocess

import jwt
import pytest
import requests
import socketio

from tests import support
from tests.support import event, metric, wait_until
from tests.test_pipeline import final_update, started, status


@pytest.fixture(scope="module")
def stack(module_database, module_vhost, tmp_path_factory):
    """A server and a worker that exposes its metrics on a port of its own."""
    with support.Stack(module_database, module_vhost, tmp_path_factory.mktemp("logs")) as stack:
        stack.worker_metrics_port = support.free_port()
        stack.start_server()
        stack.start_worker(WORKER_METRICS_PORT=stack.worker_metrics_port)
        yield stack


def get(stack, path, token=None, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(stack.servers[0].url + path, headers=headers, timeout=10)


def flask_cli(stack, *args):
    result = subprocess.run(
        [support.PYTHON, "-m", "flask", "--app", "app", *args],
        cwd=support.REPO,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_rest_never_shows_another_tenants_data(stack, publisher):
    alice, bob = stack.create_tenant(), stack.create_tenant()
    publisher.publish(started(alice, "alice-campaign", 5))
    publisher.publish(started(bob, "bob-campaign", 5))
    wait_until(lambda: stack.campaign(alice, "alice-campaign") and stack.campaign(bob, "bob-campaign"), 10)
    token = stack.token(alice)
    assert [c["id"] for c in get(stack, "/api/campaigns", token).json()["campaigns"]] == ["alice-campaign"]
    assert get(stack, "/api/campaigns/alice-campaign", token).status_code == 200
    theirs = get(stack, "/api/campaigns/bob-campaign", token)
    assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"
    events = get(stack, "/api/events?after_seq=0", token).json()["events"]
    assert events and {e["campaign"]["tenant_id"] for e in events} == {alice}


def test_no_client_event_lets_a_socket_into_another_tenants_room(stack, publisher, clients):
    alice, bob = stack.create_tenant(), stack.create_tenant()
    intruder = stack.client(alice)
    bob_client = stack.client(bob)
    clients.extend([intruder, bob_client])
    for name in ("join", "join_room", "enter_room", "subscribe", "room", "connect", "replay"):
        for payload in ({"room": f"tenant:{bob}"}, f"tenant:{bob}", {"tenant": bob}, {"after_seq": 0, "tenant": bob}):
            intruder.sio.call(name, payload, timeout=5)
    publisher.publish(started(bob, "bob-secret", 5))
    final_update(bob_client, "bob-secret", "campaign_started")
    publisher.publish(started(alice, "alice-marker", 5))
    final_update(intruder, "alice-marker", "campaign_started")
    assert {u["campaign"]["tenant_id"] for u in intruder.updates} == {alice}


def test_api_keys_of_a_deleted_tenant_stop_working(stack):
    tenant = stack.create_tenant()
    key = flask_cli(stack, "create-api-key", tenant)
    assert re.fullmatch(r"clk_[\w-]{40,}", key)
    url = stack.servers[0].url + "/api/tokens"
    minted = requests.post(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert minted.status_code == 201
    token = minted.json()["token"]
    assert get(stack, "/api/campaigns", token).status_code == 200
    assert "deleted tenant" in flask_cli(stack, "delete-tenant", tenant)
    assert requests.post(url, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 401
    assert get(stack, "/api/campaigns", token).status_code == 401
    refused = support.LiveClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.sio.connect(stack.servers[0].url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    wait_until(lambda: refused.errors, 5)
    assert refused.errors[0]["message"] == "unauthorized"


def in_chunks(body, size=4096):
    """``body`` as a generator: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_request_body_is_read_and_limited_like_a_sized_one(stack):
    # eventlet's server gave Werkzeug no way to read a body of unknown length: it read none.
    tenant = stack.create_tenant()
    key = flask_cli(stack, "create-api-key", tenant)
    url = stack.servers[0].url + "/api/tokens"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    minted = requests.post(
        url, headers=headers, data=in_chunks(json.dumps({"sub": "mobile-user-7"}).encode()), timeout=10
    )
    assert minted.status_code == 201, minted.text
    assert jwt.decode(minted.json()["token"], options={"verify_signature": False})["sub"] == "mobile-user-7"
    oversized = json.dumps({"sub": "x" * 70_000}).encode()  # MAX_CONTENT_LENGTH is 64 KiB
    refused = requests.post(url, headers=headers, data=in_chunks(oversized), timeout=10)
    assert (refused.status_code, refused.json()["error"]) == (413, "payload_too_large")
    assert get(stack, "/healthz").status_code == 200


def test_polling_gets_304_until_a_campaign_changes(stack, publisher):
    tenant = stack.create_tenant()
    token = stack.token(tenant)
    publisher.publish(started(tenant, "poll", 10))
    wait_until(lambda: stack.campaign(tenant, "poll"), 10)
    first = get(stack, "/api/campaigns", token)
    etag = first.headers["ETag"]
    for _ in range(3):
        unchanged = get(stack, "/api/campaigns", token, **{"If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.content == b""
    publisher.publish(status(tenant, "poll", "campaign_paused", 1))

    def changed():
        answer = get(stack, "/api/campaigns", token, **{"If-None-Match": etag})
        return answer if answer.status_code == 200 else None

    answer = wait_until(changed, 10, 0.1, "a 200 after the campaign changed")
    assert answer.json()["campaigns"][0]["status"] == "paused"
    assert answer.headers["ETag"] != etag


def test_metrics_move_when_events_flow(stack, publisher, clients):
    worker_url = f"http://127.0.0.1:{stack.worker_metrics_port}/metrics"
    before = requests.get(worker_url, timeout=10).text
    tenant = stack.create_tenant()
    client = stack.client(tenant)
    polling = stack.client(tenant, transports=["polling"])
    clients.extend([client, polling])
    server_text = get(stack, "/metrics").text
    assert metric(server_text, "campaign_live_connected_clients", transport="websocket") >= 1
    assert metric(server_text, "campaign_live_connected_clients", transport="polling") >= 1
    publisher.publish(started(tenant, "m", 30))
    for i in range(25):
        publisher.publish(event(tenant, "m", "message_sent", message_id=f"m{i}"))
    publisher.publish_raw(b"garbage", f"{tenant}.message_sent")
    publisher.publish(status(tenant, "m", "campaign_completed", 1))
    final_update(client, "m", "campaign_completed")
    after = requests.get(worker_url, timeout=10).text
    grew = {
        name: metric(after, name, **labels) - metric(before, name, **labels)
        for name, labels in [
            ("campaign_live_events_applied_total", {"type": "message_sent"}),
            ("campaign_live_updates_emitted_total", {"type": "campaign_completed"}),
            ("campaign_live_dead_lettered_total", {"reason": "invalid_json"}),
        ]
    }
    assert grew == {
        "campaign_live_events_applied_total": 25,
        "campaign_live_updates_emitted_total": 1,
        "campaign_live_dead_lettered_total": 1,
    }
    assert metric(after, "campaign_live_updates_merged_total") >= 1
    assert "campaign_live_receive_to_emit_seconds_bucket" in after
    client.close()
    assert "campaign_live_http_requests_total" in get(stack, "/metrics").text
