"""The eventlet HTTP server: a listen backlog that holds a burst of long-polling requests,
TCP_NODELAY on every connection it accepts, and connection files that hold no memory between
requests.

Listen backlog
    A long-polling client of the Node ``socket.io-client`` (``xmlhttprequest-ssl``, no agent)
    opens a new TCP connection for every GET: after an update is fanned out to a room, all its
    polling clients connect again within a few milliseconds. Flask-SocketIO's ``run`` listens
    with eventlet's default backlog of 50; the kernel drops the SYNs beyond it
    (``TcpExtListenOverflows``) and each of those clients retries only after TCP's initial
    retransmission timeout, 1 s (then 3 s). Measured with bench/vs_peer.py poll-300: the
    counter grew by hundreds every 5 s during campaign-live's round and not at all during the
    Node peer's (Node listens with 511); latency p50/p99 425/1,973 ms against the peer's
    33/118. ``serve`` listens itself with ``LISTEN_BACKLOG`` (default 1024; the kernel caps it
    at ``net.core.somaxconn``).

TCP_NODELAY
    eventlet's WSGI server writes a response through a 16 KB buffered file: the headers go in
    one ``send()`` and a body of 16 KB or more in a second one. With Nagle's algorithm on (the
    default; eventlet only sets ``TCP_QUICKACK``, which changes our ACKs, not our sends), the
    kernel holds that second write until the client ACKs the first, and the client delays its
    ACK (40 ms on Linux). A long-polling GET returns every packet queued for the client, so the
    clients that fell behind get the big responses, and each of those then waits 40 ms more.
    Measured on loopback (eventlet 0.41, sequential keep-alive GETs): a 40,000-byte body took
    42 ms p50 without TCP_NODELAY, 2.1 ms with it; a 2,000-byte body 1.8 ms either way. Node's
    ``http`` server sets ``noDelay`` on every socket too. ``TCP_NODELAY=0`` turns it off. (A response
    is now one ``sendall`` (see "Connection files"), but without TCP_NODELAY the kernel still holds
    the last, partial segment of a large one behind the unacknowledged ones.)

Measured with both (bench/vs_peer.py poll-300, --repeat 2, same hour, box 95-98 % busy with
    other suites, load average 4.5): with ``LISTEN_BACKLOG=50 TCP_NODELAY=0`` (what
    ``socketio.run`` did) campaign-live p50/p99 2,078/4,135 and 2,753/6,044 ms against the
    peer's 410/1,075 and 831/1,891, ~1,700 (poll-300) and ~5,000 (poll-500) listen overflows
    per round; with them 1,365/2,734 and 2,333/3,958 against 327/837 and 417/1,158, no
    overflow. The dropped SYNs are gone; the rest of the gap is CPU per update on a full
    machine (server 1.3-1.5x the peer's, server + worker 2.3-2.7x; eventlet's per-connection
    HTTP handling is about half the server's CPU while polling) and shows over websocket too
    (ws-300 in the same hour: 1,003 ms p50 against the peer's 44).

Connection files
    eventlet reads a request through ``socket.makefile('rb')`` and writes the response through
    ``socket.makefile('wb')``: per connection a ``SocketIO`` and a buffered file each, with 8 and
    16 KB buffers that live as long as the connection, a websocket's included (which never uses
    them after its upgrade). ``ConnectionReader`` keeps only bytes received and not yet read;
    ``ConnectionWriter`` sends each write with one ``sendall``. Measured: idle-1000 RSS per
    websocket 53.9 -> 47.0 KB (bench/vs_peer.py; with the 2 + 4 KB buffers of before), and the
    two ``makefile`` calls were ~8 % of the server's CPU in poll-300, where every GET of a Node
    client is a new connection.

What it relies on
    ``eventlet.wsgi.server(..., protocol=...)`` (still accepted in 0.41, documented as
    deprecated) and ``HttpProtocol.setup`` with the accepted socket in ``self.request``
    (checked by ``tests/http_server_child.py``). Other async modes keep ``socketio.run`` with
    TCP_NODELAY off; under gevent ``main`` passes ``LISTEN_BACKLOG`` to ``pywsgi.WSGIServer``
    (whose own default is 128).
"""

import contextlib
import email.parser
import http.client
import logging
import re
import socket

log = logging.getLogger(__name__)
# What a connection's reader asks the kernel for at once: a request line and headers of up to
# this size take one recv(); a body is read in pieces of up to BODY_RECV_BYTES, never past its end.
RECV_BYTES = 4096
BODY_RECV_BYTES = 65536

# The requests of Engine.IO clients, parsed without the email package (see ``parse_request``).
ENGINEIO_REQUEST_LINE = re.compile(rb"(GET|POST) (/socket\.io/[\x21-\x7e]*) HTTP/1\.([01])\r?\n")
# A header line whose meaning is plain: a token, a colon, a value without CR or LF.
PLAIN_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*)\r?\n")
# http.client's limits on request headers (_MAXLINE, _MAXHEADERS). eventlet's own, tighter ones come
# first: it reads the headers through FileObjectForHeaders (8 KB a line, 64 KB in all: a 400).
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


def request_headers(lines, message_class=http.client.HTTPMessage):
    """The headers ``http.client.parse_headers`` makes of these lines (the block and its end).

    When every line is a plain ``Name: value``, the message is filled directly, as the email
    parser would fill it (name as sent, value without leading blanks and line end); otherwise
    the email parser reads the whole block, with its rules for continuation lines, bare CRs
    and malformed lines."""
    message = message_class()
    for line in lines:
        if line in (b"\r\n", b"\n", b""):
            break
        plain = PLAIN_HEADER.fullmatch(line)
        if plain is None:
            return email.parser.Parser(_class=message_class).parsestr(b"".join(lines).decode("iso-8859-1"))
        message._headers.append((plain[1].decode("iso-8859-1"), plain[2].decode("iso-8859-1")))
    return message


def read_header_lines(rfile):
    """The request's header lines up to the blank one, with http.client's limits."""
    lines = []
    while True:
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            return lines


class ConnectionReader:
    """The request side of one connection, for eventlet's WSGI server: ``readline`` (request line,
    headers, chunk sizes) and ``read`` (bodies), holding only the bytes received and not yet read.

    eventlet makes it with ``socket.makefile('rb', bufsize)``: a ``SocketIO`` and a
    ``BufferedReader`` whose buffer lives as long as the connection. A websocket never reads
    through it after its upgrade (eventlet's websocket reads the socket itself), so the buffer
    was dead weight for as long as the websocket lasted, and building the two objects was a
    visible part of each long-polling request's CPU (a Node polling client opens a connection
    per GET). This one keeps nothing when nothing is pending.

    As ``makefile``'s file does, it holds a reference on the socket until it is closed (in the
    server's ``finish``): eventlet's websocket closes the socket when it is done writing, while
    the connection's reader may still wait on it, and only then is the descriptor really closed.
    And as ``SocketIO`` does, it reads nothing more once a read timed out."""

    __slots__ = ("sock", "pending", "closed")

    def __init__(self, sock):
        self.sock, self.pending, self.closed = sock, bytearray(), False
        sock._io_refs += 1

    def _recv(self, size):
        if self.closed:
            raise OSError("cannot read from a timed out or closed connection")
        try:
            return self.sock.recv(size)
        except TimeoutError:
            self.closed = True  # part of a request may have been read: nothing after it makes sense
            raise

    def _take(self, count):
        """The first ``count`` pending bytes (all of them if fewer are pending)."""
        if count >= len(self.pending):
            taken, self.pending = bytes(self.pending), bytearray()
        else:
            taken = bytes(self.pending[:count])
            del self.pending[:count]
        return taken

    def readline(self, limit=-1):
        """Up to and including the next b"\\n", at most ``limit`` bytes, or what is left at the end.

        Without a limit (eventlet reads chunk sizes and trailers so), a line longer than
        ``MAX_HEADER_LINE`` is refused with an OSError, on which eventlet closes the connection:
        a chunk size without an end would otherwise be buffered for as long as the client sends."""
        if limit is not None and limit >= 0:
            return self._line(limit)
        line = self._line(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            self.closed, self.pending = True, bytearray()  # nothing after it makes sense
            raise OSError(f"line longer than {MAX_HEADER_LINE} bytes")
        return line

    def _line(self, limit):
        """``readline`` as a buffered file does it (``limit`` < 0: no limit)."""
        bounded = limit is not None and limit >= 0
        searched = 0  # each byte is searched once, however long the line
        while True:
            newline = self.pending.find(b"\n", searched)
            if newline >= 0 and not (bounded and newline >= limit):
                return self._take(newline + 1)
            if bounded and len(self.pending) >= limit:
                return self._take(limit)
            searched = len(self.pending)
            chunk = self._recv(RECV_BYTES)
            if not chunk:
                return self._take(len(self.pending))
            self.pending += chunk

    def read(self, size=-1):
        """``size`` bytes (fewer only at the end of the stream); everything to the end if ``size`` < 0."""
        to_end = size is None or size < 0
        if not to_end and size <= len(self.pending):
            return self._take(size)
        parts = [self._take(len(self.pending))]
        missing = -1 if to_end else size - len(parts[0])
        while missing:  # a body is received in pieces and never past its end
            chunk = self._recv(BODY_RECV_BYTES if to_end else min(missing, BODY_RECV_BYTES))
            if not chunk:
                break
            parts.append(chunk)
            if not to_end:
                missing -= len(chunk)
        return b"".join(parts)

    def readlines(self, hint=-1):
        """Lines up to the end of the stream, or until they hold ``hint`` bytes or more."""
        lines, total = [], 0
        while line := self._line(-1):  # a body's lines, as a buffered file reads them
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def close(self):
        """Drop what is pending and give the socket back its reference (once)."""
        self.closed, self.pending = True, bytearray()
        sock, self.sock = self.sock, None
        if sock is not None:
            sock._decref_socketios()


class ConnectionWriter:
    """The response side of one connection: each ``write`` or ``writelines`` is one ``sendall``.

    eventlet writes a response as ``writelines(parts)`` then ``flush()`` on a ``BufferedWriter``
    (a buffer kept for the connection's life); here the parts are joined and sent at once, the
    status line, headers and body of a long-polling answer in one system call."""

    __slots__ = ("sock", "closed")

    def __init__(self, sock):
        self.sock, self.closed = sock, False

    def write(self, data):
        if self.closed:
            raise ValueError("write to a closed connection")
        self.sock.sendall(memoryview(data))  # eventlet's sendall slices what is left: no copies
        return len(data)

    def writelines(self, parts):
        self.write(b"".join(parts))

    def flush(self):
        """Nothing is ever held back."""

    def close(self):
        self.closed = True


def http_protocol(nodelay=True):
    """An ``eventlet.wsgi.HttpProtocol`` subclass with lean connection files that sets TCP_NODELAY (if asked)."""
    from eventlet import wsgi
    from eventlet.greenio import GreenSocket

    from sockets.lean_requests import lean_environ, lean_request, respond

    class CampaignLiveHttpProtocol(wsgi.HttpProtocol):
        def parse_request(self):
            """``BaseHTTPRequestHandler.parse_request``, with a short way for Engine.IO's requests.

            Every long-polling client sends a GET per update it receives (and the Node client a
            new connection for each), and the email parser that ``http.client.parse_headers``
            runs on the headers was the largest part of the server's CPU per poll (9.5 % of it
            in a profile of bench/vs_peer.py poll-300). A request line of the plain form
            ``GET|POST /socket.io/... HTTP/1.x`` is parsed here the way the standard library
            does it; any other request goes to the standard library's own parse."""
            self.lean = False
            line = ENGINEIO_REQUEST_LINE.fullmatch(self.raw_requestline)
            if line is None:
                return super().parse_request()
            self.command, self.path = line[1].decode(), line[2].decode("iso-8859-1")
            self.request_version = "HTTP/1." + line[3].decode()
            self.requestline = self.raw_requestline.decode("iso-8859-1").rstrip("\r\n")
            self.close_connection = not (line[3] == b"1" and self.protocol_version >= "HTTP/1.1")
            try:
                self.headers = request_headers(read_header_lines(self.rfile), self.MessageClass)
            except http.client.LineTooLong as err:
                self.send_error(431, "Line too long", str(err))
                return False
            except http.client.HTTPException as err:
                self.send_error(431, "Too many headers", str(err))
                return False
            connection = self.headers.get("Connection", "").lower()
            if connection == "close":
                self.close_connection = True
            elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            # Expect: 100-continue needs nothing here: eventlet answers it when the body is read
            # (its handle_expect_100 does nothing).
            self.lean = lean_request(self.headers) and not self.server.log_output
            return True

        def get_environ(self):
            """eventlet's environ; for a long-polling request (see ``lean_request``) built here,
            with the connection's addresses looked up once."""
            if not self.lean:
                environ = super().get_environ()
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    # eventlet's wsgi.Input ends a chunked body itself; without this key Werkzeug
                    # reads a body of unknown length as empty (a chunked POST /api/tokens lost
                    # its JSON), with it Werkzeug reads it up to MAX_CONTENT_LENGTH, then 413.
                    environ["wsgi.input_terminated"] = True
                return environ
            return lean_environ(self)

        def handle_one_response(self):
            """eventlet's; for a long-polling request, the whole answer in one write (``respond``)."""
            if not self.lean:
                return super().handle_one_response()
            return respond(self)

        def setup(self):
            if nodelay:
                # Not TCP (a UNIX socket), or an SSL wrapper without setsockopt: leave it.
                with contextlib.suppress(OSError, AttributeError):
                    self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if type(self.request) is not GreenSocket:  # TLS, or another wrapper: eventlet's own files
                super().setup()
                return
            conn = self.connection = self.request
            # What eventlet's setup does first (see its comment on TCP_QUICKACK).
            with contextlib.suppress(OSError, AttributeError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, True)
            self.rfile, self.wfile = ConnectionReader(conn), ConnectionWriter(conn)

    return CampaignLiveHttpProtocol


def server_options(async_mode, nodelay=True):
    """Extra keyword arguments of eventlet's ``wsgi.server``: our protocol."""
    if async_mode != "eventlet":
        return {}
    if not nodelay:
        log.info("[WEBSOCKET] TCP_NODELAY off (TCP_NODELAY=0)")
    return {"protocol": http_protocol(nodelay)}


def listen(host, port, backlog):
    """An eventlet listening socket on ``host:port`` with ``backlog`` (as Flask-SocketIO resolves it)."""
    import eventlet
    from eventlet.green import socket as green_socket

    addresses = green_socket.getaddrinfo(host, port)
    if not addresses:
        raise RuntimeError(f"could not resolve {host}")
    return eventlet.listen(addresses[0][4], addresses[0][0], backlog=backlog)


def serve(app, host, port, backlog, nodelay=True, idle_timeout=None, **options):
    """Serve ``app`` (its wsgi_app wrapped by Flask-SocketIO) with eventlet's WSGI server, as
    ``socketio.run`` does, but with our listen backlog and TCP_NODELAY.

    ``idle_timeout``: seconds a connection may keep the server waiting on its socket (a request
    that never ends, a keep-alive connection with no next request). eventlet's default is never:
    ``max_size`` clients that open a request and stop would hold every slot of the server.
    A websocket gets python-engineio's own timeout once upgraded. The timeout is eventlet's, per
    socket operation: a client that trickles a byte every few seconds is not bounded by it (the
    proxy in front is: ``client_header_timeout`` / ``client_body_timeout`` of deploy/nginx.conf).

    ``debug=False``: an application error answers a bare 500; eventlet's default sends the
    Python traceback to the client."""
    from eventlet import wsgi

    listener = listen(host, port, backlog)
    log.info("[WEBSOCKET] listening with a backlog of %s, TCP_NODELAY %s, idle timeout %s s", backlog,
             "on" if nodelay else "off", idle_timeout)
    wsgi.server(listener, app, log_output=False, debug=False, socket_timeout=idle_timeout,
                keepalive=idle_timeout or True, **server_options("eventlet", nodelay=nodelay), **options)
