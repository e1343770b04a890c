"""Run by tests/test_nodelay.py in its own process (eventlet monkey-patches the interpreter).

Serves a WSGI app with eventlet's server and sockets/nodelay.py's protocol on loopback, makes
keep-alive requests whose responses are over eventlet's 16 KB write buffer, and prints one JSON
line: whether each accepted socket had TCP_NODELAY when the app ran, and the bodies were whole.
"""

import eventlet

eventlet.monkey_patch()

import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402

from eventlet import wsgi  # noqa: E402

from sockets.nodelay import no_delay_protocol, server_options  # noqa: E402

BODY = b"x" * 40000
seen = []


class Recording(no_delay_protocol()):
    def handle_one_response(self):
        seen.append(self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
        return super().handle_one_response()


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [BODY]


def main():
    listener = eventlet.listen(("127.0.0.1", 0))
    eventlet.spawn(wsgi.server, listener, app, log_output=False, protocol=Recording)
    connection = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=10)
    whole = []
    for _ in range(3):
        connection.request("GET", "/socket.io/?EIO=4&transport=polling")
        whole.append(connection.getresponse().read() == BODY)
    print(
        json.dumps(
            {
                "nodelay_on_every_request": len(seen) == 3 and all(seen),
                "bodies_whole": all(whole),
                "eventlet_gets_the_protocol": issubclass(
                    server_options("eventlet").get("protocol", object), wsgi.HttpProtocol
                ),
                "other_modes_unchanged": server_options("gevent") == {}
                and server_options("eventlet", enabled=False) == {},
            }
        )
    )


if __name__ == "__main__":
    main()
