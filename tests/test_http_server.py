"""The eventlet HTTP server's listen backlog and TCP_NODELAY (sockets/http_server.py)."""

import json
import subprocess

from tests import support


def run_child(*args):
    result = subprocess.run(
        [support.PYTHON, "-m", "tests.http_server_child", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=support.REPO,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_accepted_connection_has_nagle_off():
    """Also fails loudly when an eventlet upgrade stops honouring ``protocol=`` or ``setup``."""
    found = run_child("nodelay")
    assert found == dict.fromkeys(found, True), found


def test_the_listener_holds_a_burst_of_polling_connections():
    """300 clients connecting at once (a fan-out to long-polling clients) all get through; with
    eventlet's default backlog of 50 (what ``socketio.run`` uses) most would wait 1 s for a retry."""
    found = run_child("backlog", 1024)
    assert found["completed"] == found["clients"], found
    small = run_child("backlog", 50)
    assert small["completed"] < small["clients"], small
