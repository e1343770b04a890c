"""Run by tests/test_http_server.py in its own process (eventlet monkey-patches the interpreter).

``nodelay``: serves a WSGI app with eventlet's server and sockets/http_server.py's protocol on
loopback, makes keep-alive requests whose responses are over eventlet's 16 KB write buffer, and
reports whether each accepted socket had TCP_NODELAY when the app ran and the bodies were whole.

``server-close direct|stock``: python-engineio's websocket closed by the server (see
``server_close``).

``idle-timeout SECONDS``: ``serve`` with 2 slots held by clients that never finish a request
(see ``idle_timeout``).

``garbage ours|eventlet``: objects per long-polling request that only the cyclic garbage
collector frees (see ``garbage``).

``backlog N``: a listener from ``sockets.http_server.listen`` with backlog N that accepts
nothing; opens 300 connections at once (as 300 long-polling clients after a fan-out) and
reports how many the kernel completed (a SYN beyond the backlog is dropped: its connect would
wait for TCP's 1 s retransmission).
"""

import eventlet

eventlet.monkey_patch()

import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

from eventlet import wsgi  # noqa: E402

from sockets.http_server import http_protocol, listen, server_options  # noqa: E402
from tests.support import wait_until, websocket_upgrade_request  # noqa: E402

BODY = b"x" * 40000
# A connect whose SYN the kernel dropped (backlog full) is retried after 1 s: count before that.
DROPPED_SYN_RETRY_SECONDS = 0.9
seen = []
held = []  # bytes of each connection's reader and writer after a response


class Recording(http_protocol()):
    def handle_one_response(self):
        seen.append(self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
        try:
            return super().handle_one_response()
        finally:
            # What the connection keeps between requests (as a websocket does for its whole life):
            # a buffered file's size counts its buffer.
            held.append(sys.getsizeof(self.rfile) + sys.getsizeof(getattr(self.rfile, "data", b"")))
            held.append(sys.getsizeof(self.wfile))


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [BODY]


def nodelay():
    listener = eventlet.listen(("127.0.0.1", 0))
    eventlet.spawn(wsgi.server, listener, app, log_output=False, protocol=Recording)
    connection = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=10)
    whole = []
    for _ in range(3):
        connection.request("GET", "/socket.io/?EIO=4&transport=polling")
        whole.append(connection.getresponse().read() == BODY)
    return {
        "nodelay_on_every_request": len(seen) == 3 and all(seen),
        "bodies_whole": all(whole),
        "idle_files_hold_nothing": len(held) == 6 and max(held) < 256,
        "eventlet_gets_the_protocol": issubclass(server_options("eventlet").get("protocol", object), wsgi.HttpProtocol),
        "other_modes_unchanged": server_options("gevent") == {},
    }


def backlog(size, clients=300):
    listener = listen("127.0.0.1", 0, size)
    port = listener.getsockname()[1]
    original = eventlet.patcher.original("socket")
    sockets = []
    for _ in range(clients):
        client = original.socket(original.AF_INET, original.SOCK_STREAM)
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        sockets.append(client)

    def completed():
        return sum(
            client.getsockopt(original.SOL_SOCKET, original.SO_ERROR) == 0 and _connected(client)
            for client in sockets
        )

    # Loopback handshakes take microseconds; a SYN the kernel dropped is retried only after 1 s,
    # so what has not completed by then never fit in the backlog.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: completed() == clients, DROPPED_SYN_RETRY_SECONDS, 0.01, "every handshake")
    return {"completed": completed(), "clients": clients}


RAW_REQUESTS = [
    b"GET /socket.io/?EIO=4&transport=polling&t=abc&sid=x1 HTTP/1.1\r\nHost: h\r\nUser-Agent: node\r\n"
    b"Accept: */*\r\nCookie: a=1\r\nCookie: b=2\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: close\r\n\r\n",
    b"POST /socket.io/?EIO=4&transport=polling&sid=x1 HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain;charset=UTF-8"
    b"\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n40abc",
    b"GET /socket.io/?EIO=4&transport=polling HTTP/1.0\r\nHost: h\r\n\r\n",
    b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: h\r\nX-Folded: one\r\n two\r\nX-Odd:  v \r\n\r\n",
    b"GET /api/campaigns HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET //socket.io/?EIO=4 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    # A chunked body, a body larger than any one read, Expect: 100-continue, two pipelined requests.
    b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 150000\r\nConnection: close\r\n\r\n" + b"b" * 150000,
    b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    b"GET /socket.io/?EIO=4&n=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /socket.io/?EIO=4&n=2 HTTP/1.1\r\nHost: h\r\n"
    b"Content-Length: 4\r\nConnection: close\r\n\r\n4abc",
    # Engine.IO's, but answered by eventlet's own path: a websocket upgrade, a chunked body, 100-continue.
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n",
    b"POST /socket.io/?EIO=4 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"2\r\n4a\r\n0\r\n\r\n",
    b"POST /socket.io/?EIO=4 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n4a",
    # Percent-escapes in the path, a header name with an underscore (dropped from the environ).
    b"GET /socket.io/%7Ex/?EIO=4&transport=polling HTTP/1.1\r\nHost: h\r\nX_Under: 1\r\nX-Under: 2\r\n\r\n",
]
# Requests of RAW_REQUESTS that take the lean way (sockets/lean_requests.py): Engine.IO's GET or POST
# without Upgrade, Transfer-Encoding or Expect.
LEAN_REQUESTS = 7
# What differs between two servers or connections, or is an object: left out of the comparison.
ENVIRON_OBJECTS = ("wsgi.input", "eventlet.input", "eventlet.posthooks", "eventlet.set_idle", "wsgi.errors",
                   "REMOTE_PORT")


class FailingClose(list):
    """An application's result whose ``close()`` fails (after the answer is sent, in eventlet)."""

    def close(self):
        raise RuntimeError("close() failed")


def recording_app(seen, read_body=True, answer=("200 OK", [("Content-Length", "2")], [b"ok"]), fail=False,
                  failing_close=False):
    """A WSGI app that records the environ (and the body, if it reads it) and gives ``answer``."""

    def app(environ, start_response):
        body = environ["wsgi.input"].read() if read_body else b""
        keys = {k: v for k, v in environ.items() if k not in ENVIRON_OBJECTS}
        seen.append({**keys, "body": body.decode(), "headers_raw": list(map(list, keys["headers_raw"]))})
        if fail:
            raise RuntimeError("the application failed")
        status, headers, parts = answer
        start_response(status, list(headers))
        return FailingClose(parts) if failing_close else list(parts)

    return app


# The answers compared: eventlet's test app; what python-engineio gives (no Content-Length, a
# list of bytes; a write() call; a 204; a 400); an app that leaves the body unread (discarded
# before the next request of the connection); an app that fails (500); a server listening on
# every address; our protocol on eventlet's buffered files (a TLS connection: the answer must be flushed);
# a result whose close() fails (after the answer).
APPS = {
    "plain": {},
    "engineio": {"answer": ("200 OK", [("Content-Type", "text/plain; charset=UTF-8"),
                                       ("access-control-allow-origin", "*")], [b"40{\"sid\":\"x\"}"])},
    "no-content": {"answer": ("204 No Content", [("X-Empty", "1")], [])},
    "bad-request": {"answer": ("400 BAD REQUEST", [("Content-Type", "text/plain")], [b'"Bad', b' request"'])},
    "body-unread": {"read_body": False},
    "fails": {"fail": True},
    "any-address": {"listen_on": "0.0.0.0"},  # the server's address is the connection's, not the listener's
    # A server's environ= option: its keys are kept, but the addresses are the connection's.
    "caller-environ": {"listen_on": "0.0.0.0", "server_environ": {"SERVER_NAME": "configured", "X_EXTRA": "1"}},
    "eventlet-files": {},  # our protocol with eventlet's buffered files, as on a TLS connection
    "failing-close": {"failing_close": True},
}


def parsed_alike():
    """Our protocol and eventlet's own see the same requests and give the same answers: environ,
    body, every byte of the answer but the Date header's value, and whether the connection stays open
    after it, for each of ``APPS``."""

    def serve(protocol, app_options):
        seen, app_options = [], dict(app_options)
        listener = eventlet.listen((app_options.pop("listen_on", "127.0.0.1"), 0))
        server_environ = app_options.pop("server_environ", None)
        server = eventlet.spawn(wsgi.server, listener, recording_app(seen, **app_options), environ=server_environ,
                                log_output=False, protocol=protocol, debug=False)
        results, address = [], ("127.0.0.1", listener.getsockname()[1])
        for raw in RAW_REQUESTS:
            client = socket.create_connection(address, timeout=5)
            client.sendall(raw)
            answer, closed = b"", False
            with contextlib.suppress(TimeoutError):
                client.settimeout(0.3)  # closed after the answer, or kept open (then the read times out)
                while chunk := client.recv(65536):
                    answer += chunk
                closed = True
            lines = [b"Date: (now)" if line.startswith(b"Date: ") else line for line in answer.split(b"\r\n")]
            results.append({"answer": b"\r\n".join(lines).decode("latin-1"), "closed": closed})
            client.close()
        server.kill()
        listener.close()
        port = str(address[1])
        for environ in seen:  # the two servers listen on two ports
            environ["SERVER_PORT"] = "the listener's" if environ["SERVER_PORT"] == port else environ["SERVER_PORT"]
        return seen, results

    def lean_protocol(answers, on_eventlets_files=False):
        """Our protocol, recording for each answer whether it took the lean way."""

        class Lean(http_protocol()):
            def handle_one_response(self):
                answers.append(self.lean)
                return super().handle_one_response()

            def setup(self):
                if on_eventlets_files:  # as on a TLS connection: eventlet's buffered makefile pair
                    wsgi.HttpProtocol.setup(self)
                else:
                    super().setup()

        return Lean

    def compare(name, options):
        lean = []
        ours = serve(lean_protocol(lean, on_eventlets_files=name == "eventlet-files"), options)
        stock = serve(wsgi.HttpProtocol, options)
        # The one key ours adds: a chunked body is terminated by eventlet's input (sockets/http_server.py).
        terminated = [environ.pop("wsgi.input_terminated", None) for environ in ours[0]]
        chunked = ["chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() for environ in ours[0]]
        if terminated != [True if is_chunked else None for is_chunked in chunked]:
            ours[0].append({"wsgi.input_terminated (chunked requests only)": terminated})
        result = {"seen": len(ours[0]), "environs_equal": ours[0] == stock[0], "answers_equal": ours[1] == stock[1],
                  "lean_answers": sum(lean)}
        if ours != stock:
            result.update(ours=ours, stock=stock)
        return name, result

    requests = sum(raw.count(b" HTTP/1.") for raw in RAW_REQUESTS)  # the last one holds two
    # The apps side by side: each answer kept open costs its client a 0.3 s read timeout.
    pool = eventlet.GreenPool()
    found = {"requests": requests, "lean_requests": LEAN_REQUESTS,
             "apps": dict(pool.starmap(compare, APPS.items()))}
    return found


def garbage(protocol_name, polls=50):
    """Long-polling GETs (a new connection each, as the Node client makes them) through python-engineio
    on eventlet's server with ``protocol_name``'s protocol ("ours" or "eventlet"): how many objects
    per poll only the cyclic garbage collector frees (a request whose objects form a cycle leaves
    them to the collector, whose passes stall the event loop)."""
    import gc

    import engineio

    from sockets import polling

    eio = engineio.Server(async_mode="eventlet", monitor_clients=False)
    eio.on("connect", lambda sid, environ: True)
    polling.install(eio)
    protocol = http_protocol() if protocol_name == "ours" else wsgi.HttpProtocol
    listener = eventlet.listen(("127.0.0.1", 0))
    server = eventlet.spawn(wsgi.server, listener, engineio.WSGIApp(eio, engineio_path="socket.io"), protocol=protocol,
                           log_output=False)
    address = listener.getsockname()

    def get(query):
        with socket.create_connection(address, timeout=10) as client:
            client.sendall(f"GET /socket.io/?EIO=4&transport=polling{query} HTTP/1.1\r\nHost: h\r\n"
                           "Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        return answer

    handshake = get("")
    sid = json.loads(handshake.split(b"\r\n\r\n", 1)[1][1:])["sid"]
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    answered = 0
    for number in range(polls):
        eio.send(sid, f"update {number}")
        answered += f"update {number}".encode() in get(f"&sid={sid}")
    gc.collect()
    cyclic = len(gc.garbage)
    gc.set_debug(0)
    gc.garbage.clear()
    gc.enable()
    server.kill()
    return {"protocol": protocol_name, "polls": polls, "answered": answered, "cyclic_per_poll": cyclic / polls}


def server_close(writes):
    """python-engineio on eventlet's WSGI server with our protocol (``writes``: "direct", our
    on-demand writer; "stock", python-engineio's writer); a raw websocket client; the server
    disconnects it. Does the client get the close frame and the end of the stream, and does the
    connection's greenthread finish well before the reader's socket timeout (25 + 20 s)?"""
    import engineio

    from sockets import fanout

    eio = engineio.Server(async_mode="eventlet", ping_interval=25, ping_timeout=20, monitor_clients=False)
    if writes == "direct":
        fanout.install(eio)
    sids, finished = [], []
    eio.on("connect", lambda sid, environ: sids.append(sid))

    class Finishing(http_protocol()):
        def finish(self):
            super().finish()
            finished.append(True)

    listener = eventlet.listen(("127.0.0.1", 0))
    eventlet.spawn(wsgi.server, listener, engineio.WSGIApp(eio), protocol=Finishing, log_output=False)
    client = socket.create_connection(listener.getsockname(), timeout=10)
    client.sendall(websocket_upgrade_request("/engine.io/?EIO=4&transport=websocket"))
    wait_until(lambda: sids, 10, 0.01, "the Engine.IO connect")
    eio.disconnect(sids[0])
    received = b""
    client.settimeout(10)
    with contextlib.suppress(OSError):
        while chunk := client.recv(4096):
            received += chunk
    saw_the_end = b"\x88" in received  # a close frame, then the end of the stream
    client.sendall(b"\x88\x80\x00\x00\x00\x00")  # the client's close frame (masked, empty)
    client.close()
    with contextlib.suppress(AssertionError):
        wait_until(lambda: finished, 10, 0.01, "the connection to finish")
    return {"client_saw_the_end": saw_the_end, "connection_finished": bool(finished), "writes": writes}


def idle_timeout(seconds):
    """``serve`` with room for 2 connections and ``seconds`` of idle timeout (0: eventlet's default,
    none): 2 clients send half a request line and stop; is a third client's request answered?"""
    from sockets.http_server import serve

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    eventlet.spawn(serve, app, "127.0.0.1", port, 50, idle_timeout=seconds or None, max_size=2)
    wait_until(lambda: _answers(port, timeout=1), 5, 0.05, "the server to answer")
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
    for client in stalled:
        client.sendall(b"GET /socket.io/?EIO=4")  # ... and nothing more
    answered = None
    with contextlib.suppress(AssertionError):
        answered = wait_until(lambda: _answers(port, timeout=1), 4, 0, "an answer to the third client")
    for client in stalled:
        client.close()
    return {"idle_timeout": seconds, "third_client_answered": bool(answered)}


def _answers(port, timeout):
    """The status line a GET gets within ``timeout`` seconds, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            return client.recv(4096).split(b"\r\n")[0].decode() or None
    except OSError:
        return None


def _connected(client):
    try:
        client.getpeername()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    scenario = sys.argv[1]
    if scenario == "idle-timeout":
        print(json.dumps(idle_timeout(float(sys.argv[2]))))
    elif scenario == "server-close":
        print(json.dumps(server_close(sys.argv[2])))
    elif scenario == "garbage":
        print(json.dumps(garbage(sys.argv[2])))
    elif scenario == "backlog":
        print(json.dumps(backlog(int(sys.argv[2]))))
    else:
        print(json.dumps({"nodelay": nodelay, "parsed-alike": parsed_alike}[scenario]()))
