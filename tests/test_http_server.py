"""The eventlet HTTP server's listen backlog, TCP_NODELAY, buffers and request parsing (sockets/http_server.py)."""

import http.client
import io
import json
import subprocess

import pytest

from sockets.http_server import request_headers
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


HEADER_BLOCKS = [
    b"Host: 127.0.0.1:5000\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    b"Host: a\r\nX-Empty:\r\nX-Spaces:   \r\nX-Trailing: v  \r\nX-Tab:\tv\r\n\r\n",
    b"Cookie: a=1\r\nCookie: b=2\r\nX-Latin: caf\xe9\r\n\n",
    b"Host: a\r\nX-Folded: one\r\n two\r\n\r\n",  # obsolete line folding
    b"Host: a\r\nX-Bare-CR: one\rX-Hidden: two\r\n\r\n",  # a bare CR splits lines for the email parser
    b"Host: a\r\nno colon here\r\nX-After: lost\r\n\r\n",
    b"From nobody\r\nHost: a\r\n\r\n",
    b": no name\r\nHost: a\r\n\r\n",
    b"Bad Name: x\r\nHost: a\r\n\r\n",
    b"Host: a\r\n",  # the connection closed before the blank line
    b"\r\n",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_engineio_request_headers_are_parsed_as_the_standard_library_parses_them(block):
    """The short way of sockets/http_server.py gives the same headers as http.client, plain or not."""
    lines = block.splitlines(keepends=True) or [b""]
    ours = request_headers(lines)
    theirs = http.client.parse_headers(io.BytesIO(block))
    assert type(ours) is type(theirs)
    assert ours.items() == theirs.items()
    names = list(theirs.keys())
    assert [ours.get_all(name) for name in names] == [theirs.get_all(name) for name in names]


def test_our_protocol_sees_requests_as_eventlets_own_does():
    """Real requests, Engine.IO's and others, through eventlet's WSGI server with each protocol."""
    found = run_child("parsed-alike")
    assert found["seen"] == found["requests"], found
    assert found["environs_equal"] and found["answers_equal"], found
