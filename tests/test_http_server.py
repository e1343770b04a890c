"""The eventlet HTTP server's listen backlog, request parsing and connection files
(sockets/http_server.py); what its protocol relies on in eventlet (TCP_NODELAY, the files,
parse_request) is checked by tests/test_library_internals.py."""

import http.client
import io

import pytest

from sockets.http_server import MAX_HEADER_LINE, ConnectionReader, ConnectionWriter, request_headers
from tests import support


def test_the_listener_holds_a_burst_of_polling_connections():
    """300 clients connecting at once (a fan-out to long-polling clients) all get through; with
    eventlet's default backlog of 50 (what ``socketio.run`` uses) most would wait 1 s for a retry."""
    found = support.child_findings("tests.http_server_child", "backlog", 1024, timeout=60)
    assert found["completed"] == found["clients"], found
    small = support.child_findings("tests.http_server_child", "backlog", 50, timeout=60)
    assert small["completed"] < small["clients"], small


def test_a_long_polling_request_leaves_nothing_to_the_cyclic_garbage_collector():
    """Every object of a poll is freed when the request ends (eventlet's own protocol leaves ~35 in
    reference cycles per poll; at ~1,000 polls a second the collector's passes stalled the server)."""
    ours = support.child_findings("tests.http_server_child", "garbage", "ours", timeout=60)
    assert ours["answered"] == ours["polls"], ours
    assert ours["cyclic_per_poll"] == 0, ours
    stock = support.child_findings("tests.http_server_child", "garbage", "eventlet", timeout=60)
    assert stock["answered"] == stock["polls"] and stock["cyclic_per_poll"] > 10, stock  # what the test tells apart


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


class ChunkedSocket:
    """What ConnectionReader needs of a socket: ``recv`` handing out ``data`` in the given chunk sizes
    (then the end of the stream, or a timeout), and makefile's reference count."""

    def __init__(self, data, sizes, then=b""):
        self.data, self.sizes, self.then, self._io_refs, self.received = data, sizes, then, 0, 0

    def recv(self, size):
        if not self.data:
            if isinstance(self.then, Exception):
                raise self.then
            return self.then
        size = min(size, self.sizes[self.received % len(self.sizes)])
        self.received += 1
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def _decref_socketios(self):
        self._io_refs -= 1


STREAM = (
    b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: a\r\n\r\n" + b"5\r\nhello\r\n" + b"x" * 70000 + b"\nlast line without end"
)
READS = [
    ("readline", -1),
    ("readline", 5),
    ("readline", 0),
    ("read", 3),
    ("readline", 40),
    ("read", 9),
    ("readline", 100000),
    ("read", 0),
    ("read", 65000),
    ("readline", 8),
    ("readline", -1),
    ("read", -1),
]


@pytest.mark.parametrize("sizes", [[1], [3, 7], [4096], [70000], [1, 65536, 2]])
def test_the_connection_reader_reads_as_a_buffered_file_does(sizes):
    """ConnectionReader (eventlet's rfile, sockets/http_server.py) gives what io.BufferedReader gives for
    the same calls on the same bytes, however the kernel splits them; the socket's reference is
    taken while it is open and given back once."""
    sock = ChunkedSocket(STREAM, sizes)
    reader, expected = ConnectionReader(sock), io.BufferedReader(io.BytesIO(STREAM))
    assert sock._io_refs == 1
    for method, size in READS:
        assert getattr(reader, method)(size) == getattr(expected, method)(size), (method, size)
    assert reader.read() == b"" and reader.readline() == b"" and not reader.pending
    reader.close()
    reader.close()
    assert sock._io_refs == 0 and reader.closed


def test_the_connection_reader_reads_nothing_after_a_timeout():
    """As socket.makefile's file: once a read timed out, the stream position is lost and every
    later read fails, instead of parsing the next request from the middle of a body."""
    reader = ConnectionReader(ChunkedSocket(b"POST / HTTP/1.1\r\n", [8], then=TimeoutError("timed out")))
    assert reader.readline() == b"POST / HTTP/1.1\r\n"
    with pytest.raises(TimeoutError):
        reader.read(10)
    with pytest.raises(OSError, match="timed out"):
        reader.readline()
    assert reader.closed


def test_a_line_without_end_is_refused_not_buffered():
    """eventlet reads a chunk size (and trailers) with an unbounded readline: a client that sends
    a chunk size without an end must not make the server buffer all it sends."""
    sock = ChunkedSocket(b"f" * 1_000_000, [4096])
    reader = ConnectionReader(sock)
    with pytest.raises(OSError, match="line longer than"):
        reader.readline()
    assert not reader.pending and reader.closed
    assert 1_000_000 - len(sock.data) <= MAX_HEADER_LINE + 4096  # what it read before refusing
    bounded = ConnectionReader(ChunkedSocket(b"g" * 100_000 + b"\n", [4096]))
    assert len(bounded.readline(100_001)) == 100_001  # a limit the caller gives is the caller's


def test_the_connection_writer_sends_each_write_whole():
    """One sendall per write (headers and body of a response in one), nothing held back by flush."""
    sent = []

    class Recording:
        def sendall(self, data):
            sent.append(bytes(data))

    writer = ConnectionWriter(Recording())
    writer.writelines([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 2\r\n\r\n", b"ok"])
    assert writer.write(b"more") == 4
    writer.flush()
    assert sent == [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"more"]
    writer.close()
    with pytest.raises(ValueError):
        writer.write(b"late")


@pytest.mark.parametrize("writes", ["direct", "stock"])
def test_a_websocket_the_server_closes_ends_at_once(writes):
    """python-engineio's writer (or ours, sockets/fanout.py) closes the websocket's socket while the
    connection's reader still waits on it. The descriptor must stay open until the connection is
    finished, so that the reader sees the client's answer and the end of the stream: the HTTP
    connection then ends at once, not after the reader's socket timeout (45 s here)."""
    found = support.child_findings("tests.http_server_child", "server-close", writes, timeout=60)
    assert found["client_saw_the_end"] and found["connection_finished"], found


def test_clients_that_never_finish_a_request_do_not_hold_the_server():
    """``serve``'s idle timeout (app.py: PING_INTERVAL + PING_TIMEOUT): with every slot taken by
    clients that sent half a request line, a new client is answered once they time out (1 s
    here); with eventlet's default (no timeout) it is not."""
    found = support.child_findings("tests.http_server_child", "idle-timeout", 1, timeout=60)
    assert found["third_client_answered"], found
    without = support.child_findings("tests.http_server_child", "idle-timeout", 0, timeout=60)
    assert not without["third_client_answered"], without
