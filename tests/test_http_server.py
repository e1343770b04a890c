"""The eventlet HTTP server's listen backlog and request parsing (sockets/http_server.py); what its
protocol relies on in eventlet (TCP_NODELAY, buffers, parse_request) is checked by
tests/test_library_internals.py."""

import http.client
import io

import pytest

from sockets.http_server import request_headers
from tests import support


def test_the_listener_holds_a_burst_of_polling_connections():
    """300 clients connecting at once (a fan-out to long-polling clients) all get through; with
    eventlet's default backlog of 50 (what ``socketio.run`` uses) most would wait 1 s for a retry."""
    found = support.child_findings("tests.http_server_child", "backlog", 1024, timeout=60)
    assert found["completed"] == found["clients"], found
    small = support.child_findings("tests.http_server_child", "backlog", 50, timeout=60)
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
