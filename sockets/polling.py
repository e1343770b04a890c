"""Long-polling responses of at most ``MAX_PACKETS_PER_POLL`` packets, for clients that need it.

python-engineio's ``Socket.poll`` hands a polling GET every packet queued for the client. Its
own client refuses a payload of more than 16 packets (``Payload.max_decode_packets``, a guard
against decoding bombs): it logs "Unexpected packet from server" and drops the connection. A
burst of updates (merged progress falling due together, delivered as one batch; a replay) thus
cost Python clients their session, every time; found under gevent, whose server handed a burst
of 40 updates to one poll. The rest stays queued, in order, for the next poll.

Other clients take any number, and a cap costs them one more request per 16 packets: with
300 polling clients at ~37 updates a second each (bench/vs_peer.py poll-300), capped answers
made every client poll again and again, and on a box whose cores the load clients share, the
latency went from 0.8 s to 2.6 s (p50, same hour). So only the clients that may be
python-engineio's are capped, told apart by Engine.IO's ``t`` query parameter (a cache
buster): the JavaScript client and its ports (Java, Kotlin, Dart) send a yeast id (letters,
digits, ``-``, ``_``), python-engineio's ``time.time()`` (``1764650000.123``) or, with
``timestamp_requests=False``, nothing. Any other client sending a float or no ``t`` is capped:
it loses requests, never its connection.

What it relies on (python-engineio 4.15, watched by tests/test_polling.py): the Engine.IO
``connect`` handler (python-socketio's) runs once the socket is in ``server.sockets`` and
before its first poll, with the environ of the handshake request; ``handle_get_request`` and
the websocket writer take packets through ``socket.poll()``; the queue holds packets and a
``None`` that asks the writer to stop.
"""

import logging
import re
import urllib.parse

from engineio import exceptions

MAX_PACKETS_PER_POLL = 16
# engine.io-client's yeast ids: its 64-character alphabet, no '.'.
YEAST = re.compile(r"[0-9A-Za-z_-]+")


def cap_polls(eio_socket, limit=MAX_PACKETS_PER_POLL):
    """Make ``eio_socket.poll`` return at most ``limit`` packets (python-engineio's poll, capped)."""
    server, queue = eio_socket.server, eio_socket.queue

    def poll():
        queue_empty = server.get_queue_empty_exception()
        try:
            packets = [queue.get(timeout=server.ping_interval + server.ping_timeout)]
            queue.task_done()
        except queue_empty:
            raise exceptions.QueueEmpty() from None
        if packets == [None]:
            return []
        while len(packets) < limit:
            try:
                pkt = queue.get(block=False)
                queue.task_done()
            except queue_empty:
                break
            if pkt is None:
                queue.put(None)
                break
            packets.append(pkt)
        return packets

    eio_socket.poll = poll


def may_be_python_engineio(environ):
    """True when the handshake's ``t`` is not a JavaScript-style yeast id (a float, or none):
    the client may be python-engineio's, which refuses more than 16 packets per response."""
    # The last one: python-engineio appends its own after any the caller put in the URL.
    stamp = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("t", [""])[-1]
    return not stamp or not YEAST.fullmatch(stamp)


def install(eio_server, limit=MAX_PACKETS_PER_POLL):
    """Cap the polls of every socket of ``eio_server`` that may be python-engineio's client
    (``may_be_python_engineio``), from its Engine.IO connect on."""
    stock_connect = eio_server.handlers["connect"]
    if getattr(stock_connect, "caps_polls", False):  # an app built again in the same process
        return

    def connect(sid, environ, *args):
        eio_socket = eio_server.sockets.get(sid)
        if eio_socket is not None and may_be_python_engineio(environ):
            cap_polls(eio_socket, limit)
        return stock_connect(sid, environ, *args)

    connect.caps_polls = True
    eio_server.on("connect", connect)
    logging.getLogger(__name__).info(
        "[WEBSOCKET] at most %d packets per long-polling response to clients that may be python-engineio's", limit
    )
