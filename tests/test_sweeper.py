"""sockets/sweeper.py: python-engineio's monitor task is off, and the sweep still ends clients that
vanished without closing their connection."""

import json

import pytest
import requests

from tests.support import metric, wait_until

CONNECTED = "campaign_live_connected_clients"


@pytest.fixture
def quick_ping_server(stack):
    server = stack.start_server(PING_INTERVAL="1", PING_TIMEOUT="1")
    yield server
    server.stop()
    stack.servers.remove(server)


def connected(server, transport):
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return metric(text, CONNECTED, transport=transport)


def test_a_long_polling_client_that_vanishes_is_disconnected(stack, tenant, quick_ping_server):
    """The client opens a session, connects with its token, reads once, then never polls again: no
    pong ever comes back and, with no update for its tenant, nothing else is sent to it either."""
    base = f"{quick_ping_server.url}/socket.io/?EIO=4&transport=polling"
    http = requests.Session()
    opened = http.get(base, timeout=10)
    assert opened.text.startswith("0"), opened.text[:200]
    sid = json.loads(opened.text[1:])["sid"]
    answer = http.post(f"{base}&sid={sid}", data="40" + json.dumps({"token": stack.token(tenant)}), timeout=10)
    assert answer.text == "OK"
    assert '"campaign_snapshot"' in http.get(f"{base}&sid={sid}", timeout=10).text
    assert connected(quick_ping_server, "polling") == 1
    # Gone within PING_INTERVAL + PING_TIMEOUT + a sweep interval (0.25 s), plus margin for a busy machine.
    wait_until(lambda: connected(quick_ping_server, "polling") == 0, 15, 0.1, "the vanished client to be dropped")
    assert "sweeping sockets for missed pongs every 0.2" in quick_ping_server.log()
