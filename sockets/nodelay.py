"""TCP_NODELAY on every connection the eventlet server accepts.

Why
    eventlet's WSGI server writes a response through a 16 KB buffered file: the headers go in
    one ``send()`` and a body of 16 KB or more in a second one. With Nagle's algorithm on (the
    default; eventlet only sets ``TCP_QUICKACK``, which changes our ACKs, not our sends), the
    kernel holds that second write until the client ACKs the first, and the client delays its
    ACK (40 ms on Linux). A long-polling GET returns every packet queued for the client, so the
    clients that fell behind get the big responses, and each of those then waits 40 ms more:
    the slow get slower. Measured on loopback (eventlet 0.41, sequential keep-alive GETs): a
    40,000-byte body took 42 ms p50 without TCP_NODELAY, 2.1 ms with it; a 2,000-byte body
    1.8 ms either way. Websocket frames over 16 KB (snapshots) go through the same buffered
    file. The Node peer (Node's ``http`` server) sets ``noDelay`` on every socket too.

What it relies on
    ``eventlet.wsgi.server(..., protocol=...)`` (still accepted in 0.41, documented as
    deprecated) and ``HttpProtocol.setup`` with the accepted socket in ``self.request``
    (checked by ``tests/nodelay_child.py``). ``TCP_NODELAY=0`` turns it off; other async
    modes keep their server's default.
"""

import contextlib
import logging
import socket

log = logging.getLogger(__name__)


def no_delay_protocol():
    """An ``eventlet.wsgi.HttpProtocol`` subclass that sets TCP_NODELAY on the connection."""
    from eventlet import wsgi

    class NoDelayHttpProtocol(wsgi.HttpProtocol):
        def setup(self):
            # Not TCP (a UNIX socket), or an SSL wrapper without setsockopt: leave it.
            with contextlib.suppress(OSError, AttributeError):
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().setup()

    return NoDelayHttpProtocol


def server_options(async_mode, enabled=True):
    """Extra keyword arguments of ``socketio.run`` for the async mode: the protocol under eventlet."""
    if not enabled:
        log.info("[WEBSOCKET] TCP_NODELAY off (TCP_NODELAY=0)")
        return {}
    if async_mode != "eventlet":
        return {}
    return {"protocol": no_delay_protocol()}
