"""Long-polling responses of at most ``MAX_PACKETS_PER_POLL`` packets.

python-engineio's ``Socket.poll`` hands a polling GET every packet queued for the client. Its
own client refuses a payload of more than 16 packets (``Payload.max_decode_packets``, a guard
against decoding bombs): it logs "Unexpected packet from server" and drops the connection. A
burst of updates (merged progress falling due together, delivered as one batch; a replay) thus
cost Python clients their session, every time; found under gevent, whose server handed a burst
of 40 updates to one poll. The JavaScript client takes any number; with the cap it makes one
more request per 16 packets of a burst. The rest stays queued, in order, for the next poll.

What it relies on (python-engineio 4.15, watched by tests/test_polling.py): the Engine.IO
``connect`` handler (python-socketio's) runs once the socket is in ``server.sockets`` and
before its first poll; ``handle_get_request`` and the websocket writer take packets through
``socket.poll()``; the queue holds packets and a ``None`` that asks the writer to stop.
"""

import logging

from engineio import exceptions

MAX_PACKETS_PER_POLL = 16


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


def install(eio_server, limit=MAX_PACKETS_PER_POLL):
    """Cap the polls of every socket of ``eio_server`` from its Engine.IO connect on."""
    stock_connect = eio_server.handlers["connect"]
    if getattr(stock_connect, "caps_polls", False):  # an app built again in the same process
        return

    def connect(sid, environ, *args):
        eio_socket = eio_server.sockets.get(sid)
        if eio_socket is not None:
            cap_polls(eio_socket, limit)
        return stock_connect(sid, environ, *args)

    connect.caps_polls = True
    eio_server.on("connect", connect)
    logging.getLogger(__name__).info("[WEBSOCKET] at most %d packets per long-polling response", limit)
