"""Run by tests/test_http_server.py in its own process (eventlet monkey-patches the interpreter).

``nodelay``: serves a WSGI app with eventlet's server and sockets/http_server.py's protocol on
loopback, makes keep-alive requests whose responses are over eventlet's 16 KB write buffer, and
reports whether each accepted socket had TCP_NODELAY when the app ran and the bodies were whole.

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

from sockets.http_server import READ_BUFFER_BYTES, WRITE_BUFFER_BYTES, http_protocol, listen, server_options  # noqa: E402
from tests.support import wait_until  # noqa: E402

BODY = b"x" * 40000
# A connect whose SYN the kernel dropped (backlog full) is retried after 1 s: count before that.
DROPPED_SYN_RETRY_SECONDS = 0.9
seen = []
buffers = []


class Recording(http_protocol()):
    def handle_one_response(self):
        seen.append(self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
        # A buffered file's size counts its buffer: what each connection keeps for as long as it lasts.
        buffers.append((sys.getsizeof(self.rfile), sys.getsizeof(self.wfile)))
        return super().handle_one_response()


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
        "small_buffers": all(
            READ_BUFFER_BYTES <= read < READ_BUFFER_BYTES + 1024
            and WRITE_BUFFER_BYTES <= write < WRITE_BUFFER_BYTES + 1024
            for read, write in buffers
        ),
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


def _connected(client):
    try:
        client.getpeername()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    scenario = sys.argv[1]
    print(json.dumps(nodelay() if scenario == "nodelay" else backlog(int(sys.argv[2]))))
