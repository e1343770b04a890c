"""Engine.IO's long-polling requests, answered on eventlet's server without its general machinery.

A long-polling client makes one request per batch of updates it receives (the Node client a new
connection for each), so what eventlet does around the application on every request is paid
per update. Measured with py-spy on bench/vs_peer.py poll-300: ``get_environ`` 8.5 % of the
server's CPU, the ``write`` closure of ``handle_one_response`` 12.8 % (its ``sendall`` 5.8),
``start_response`` 2.9 %, ``format_date_time`` 2.4 %, against 18.7 % for the whole Engine.IO
application. Each answer is a small, complete list of bytes; eventlet builds it for any WSGI
application (streamed bodies, chunked encoding, 100-continue, logging).

``lean_request`` picks the requests that need none of that: GET and POST under ``/socket.io/``
(the request line parsed by ``http_server``'s short way), no ``Upgrade`` (a websocket needs
eventlet's own response path), no ``Transfer-Encoding``, no ``Expect``. For those, ``lean_environ``
builds the same environ eventlet does (the connection's addresses looked up once per connection)
and ``respond`` runs the application and sends status line, headers and body in one write, with
the headers eventlet would send: names capitalized, ``Date``, ``Content-Length``, ``Connection``
and ``Keep-Alive`` by eventlet's rules. ``tests/http_server_child.py`` (``parsed-alike``) checks
both against eventlet's own protocol, request by request and byte by byte (``Date`` aside).

No reference cycles: eventlet's environ holds a ``set_idle`` closure over the protocol, which
holds the environ, so every request's objects (~35, the connection's files and sockets among
them) waited for the cyclic garbage collector. At ~1,000 polls a second (poll-300) the
collector ran a generation-0 pass every few hundred milliseconds and a full one every second
or two, 26-60 ms each with the event loop stopped. Here nothing of a request outlives it
(``tests/http_server_child.py garbage``: 0 objects per poll, eventlet's protocol 35).
"""

import time
import traceback
import urllib.parse

import eventlet
from eventlet.wsgi import STATE_IDLE, ChunkReadError, Input, addr_to_host_port, format_date_time

# Response statuses that carry no body (RFC 9110), as eventlet decides it.
BODYLESS_STATUSES = {204, 304}


# Request headers that need eventlet's own response path.
NOT_LEAN_HEADERS = frozenset(("upgrade", "transfer-encoding", "expect"))
WILDCARD_HOSTS = frozenset(("0.0.0.0", "::", ""))


def lean_request(headers):
    """True when a request whose line is Engine.IO's can be answered by ``respond``."""
    return not any(name.lower() in NOT_LEAN_HEADERS for name, _ in headers._headers)


def connection_environ(protocol):
    """A new environ holding what is the same for every request of this connection.

    The server's part is built once per server (eventlet's ``Server.get_environ`` looks for
    ``do_handshake`` on the listening socket each time, an AttributeError raised and caught), the
    connection's addresses once per connection; a request copies the server's part once (a Node
    polling client makes one request per connection). The server's own address is looked up per
    connection only when it listens on every address (then it is the address the client reached)."""
    server = protocol.server
    server_base = getattr(server, "lean_environ", None)
    if server_base is None:
        # Our keys after the server's ``environ=`` option, which they override as in eventlet.
        server_base = server.get_environ()
        server_base.update(SCRIPT_NAME="", SERVER_PROTOCOL="HTTP/1.0", GATEWAY_INTERFACE="CGI/1.1")
        host, port = addr_to_host_port(server.address)
        if host not in WILDCARD_HOSTS and isinstance(port, int):
            server_base.update(SERVER_NAME=host, SERVER_PORT=str(port))
        else:
            server_base.pop("SERVER_NAME", None)  # per connection (a caller's environ= cannot stand in)
        server.lean_environ = server_base
    addresses = getattr(protocol, "connection_addresses", None)
    if addresses is None:
        client_host, client_port = addr_to_host_port(protocol.client_address)
        addresses = protocol.connection_addresses = {"REMOTE_ADDR": client_host, "REMOTE_PORT": str(client_port)}
        if "SERVER_NAME" not in server_base:
            server_host, server_port = addr_to_host_port(protocol.request.getsockname())
            addresses.update(SERVER_NAME=server_host, SERVER_PORT=str(server_port))
    env = dict(server_base)
    env.update(addresses)
    return env


def lean_environ(protocol):
    """The WSGI environ eventlet's ``HttpProtocol.get_environ`` builds, for a lean request."""
    env = connection_environ(protocol)
    headers = protocol.headers
    env["REQUEST_METHOD"] = protocol.command
    path, question_mark, query = protocol.path.partition("?")
    env["RAW_PATH_INFO"] = path
    env["PATH_INFO"] = urllib.parse.unquote(path, encoding="latin1")
    if question_mark:
        env["QUERY_STRING"] = query
    content_type = headers.get("content-type")
    env["CONTENT_TYPE"] = headers.get_content_type() if content_type is None else content_type
    length = headers.get("content-length")
    if length:
        env["CONTENT_LENGTH"] = length
    env["headers_raw"] = headers_raw = tuple((name, value.strip(" \t\n\r")) for name, value in headers._headers)
    for name, value in headers_raw:
        if "_" in name:  # eventlet drops them: Foo_Bar and Foo-Bar would share one key
            continue
        key = name.replace("-", "_").upper()
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            continue
        key = "HTTP_" + key
        env[key] = env[key] + "," + value if key in env else value
    env["wsgi.input"] = env["eventlet.input"] = Input(protocol.rfile, length or "0", protocol.connection)
    env["eventlet.posthooks"] = []
    conn_state = protocol.conn_state  # not the protocol: a cycle, left to the garbage collector (see ``respond``)
    env["eventlet.set_idle"] = lambda: conn_state.__setitem__(2, STATE_IDLE)
    return env


def respond(protocol):
    """Run the application on a lean request and send its whole answer with one write.

    As eventlet does: an application that fails gets a 500 (its traceback logged, and sent when
    the server runs with ``debug``) and the connection closed; the result's ``close()`` is called
    once the answer is sent; a failed write ends the connection quietly (the server's log only);
    a body the application left unread is discarded before the connection's next request.

    Unlike eventlet, a body the application streams (a generator, WSGI's ``write()``) is
    gathered and sent whole with a ``Content-Length`` instead of chunked: python-engineio, the
    only application on this path, answers with a list."""
    environ = protocol.environ
    request_input = environ["eventlet.input"]
    started, written = [], []

    def start_response(status, response_headers, exc_info=None):
        del exc_info  # nothing is sent before the application returns: a new status replaces the old
        started[:] = (status, response_headers)
        return written.append  # WSGI's write(): its bytes go before the returned body's

    result = None
    try:
        try:
            result = protocol.application(environ, start_response)
            body = b"".join([*written, *(part.encode("ascii") if isinstance(part, str) else part for part in result)])
            if not started:
                raise AssertionError("the application returned without start_response()")
            answer = encode_answer(protocol, *started, body)
        except (Exception, eventlet.Timeout):
            protocol.close_connection = 1
            trace = traceback.format_exc()
            protocol.server.log.info(trace)
            body = trace.encode() if protocol.server.debug else b""
            answer = encode_answer(protocol, "500 Internal Server Error", [("Content-type", "text/plain")], body)
        try:
            protocol.wfile.write(answer)
            protocol.wfile.flush()  # eventlet's own buffered file where ours is not used (TLS)
        except OSError:  # the client went away, or a timeout: as eventlet, nothing but the server's log
            protocol.close_connection = 1
            protocol.server.log.info(traceback.format_exc())
        finally:
            if hasattr(result, "close"):
                result.close()
    finally:
        if request_input.position < (request_input.content_length or 0) and not protocol.close_connection:
            discard_body(protocol, request_input)
        for hook, args, kwargs in environ["eventlet.posthooks"]:
            hook(environ, *args, **kwargs)


def encode_answer(protocol, status, response_headers, body):
    """Status line, headers and body as eventlet's ``handle_one_response`` sends them for a
    complete answer; sets ``protocol.close_connection`` as it does."""
    status_code = int(status.split(" ", 1)[0])
    bodyless = status_code in BODYLESS_STATUSES or 100 <= status_code < 200
    lines = [f"{protocol.protocol_version} {status}\r\n"]
    has_length = has_date = False
    for name, value in response_headers:
        if protocol.capitalize_response_headers:
            name = capitalized(name)
        lowered = name.lower()
        has_length = has_length or lowered == "content-length"
        has_date = has_date or lowered == "date"
        lines.append(f"{name}: {value}\r\n")
    if not has_length and not bodyless:
        lines.append(f"Content-Length: {len(body)}\r\n")
    if not has_date:
        lines.append(f"Date: {http_date()}\r\n")
    client_connection = protocol.headers.get("Connection", "").lower()
    keep_alive_header = False
    if protocol.close_connection == 0 and protocol.server.keepalive and (
        client_connection == "keep-alive"
        or (protocol.request_version == "HTTP/1.1" and client_connection != "close")
    ):
        keep_alive_header = client_connection == "keep-alive"  # HTTP/1.1 clients need no such header
    else:
        protocol.close_connection = 1
    if protocol.close_connection:
        lines.append("Connection: close\r\n")
    elif keep_alive_header:
        lines.append("Connection: keep-alive\r\n")
        seconds = int(protocol.server.keepalive or 0)
        if not isinstance(protocol.server.keepalive, bool) and seconds:
            lines.append(f"Keep-Alive: timeout={seconds}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body


CAPITALIZED = {}


def capitalized(name):
    """``CONTENT-type`` -> ``Content-Type``, as eventlet normalizes response header names."""
    result = CAPITALIZED.get(name)
    if result is None:
        result = "-".join(part.encode("latin1").capitalize().decode("latin1") for part in name.split("-"))
        if len(CAPITALIZED) < 256:
            CAPITALIZED[name] = result
    return result


_date = [None, ""]


def http_date():
    """``Date``'s value for now, formatted once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = now, format_date_time(now)
    return _date[1]


def discard_body(protocol, request_input):
    """Read and drop what is left of the request's body, so the connection can take the next request."""
    try:
        request_input.discard()
    except (ChunkReadError, OSError) as exc:
        protocol.close_connection = 1
        protocol.server.log.error(
            f"error while discarding request body. client={protocol.get_client_address()[0]} "
            f'request="{protocol.requestline}" error="{exc}"'
        )
