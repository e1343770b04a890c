"""Direct websocket writes: the fan-out of one update to a room costs one frame build and one
``send()`` per recipient; and no writer greenlet per connection.

Why
    python-engineio hands every packet to a per-connection writer greenlet: a queue put, a
    wake-up of that greenlet, a queue get armed with a timeout (a hub timer), and eventlet's
    framing of the same text once per recipient. Measured under eventlet with 1,000 dashboards
    (bench/polling_vs_socket.py), that work was about three quarters of the server's CPU per
    delivered update; the ``send()`` system call itself is the rest. Re-measured with the frame
    order fix of issue 11 (default run, a machine shared with other suites): 0.104 ms of server
    CPU per update delivered through the writer, 0.058 ms direct (0.053 ms before the fix).
    And that writer greenlet waits in its queue for as long as the connection lasts, with its
    saved C stack, a page of Python frames, its greenthread and a hub timer: ~8 KB of RSS per
    idle websocket (bench/vs_peer.py idle-1000: 47.0 -> 38.8 KB per connection without it).

What it does
    ``install`` wraps the Engine.IO server's ``send_packet`` (the call python-socketio makes once
    per recipient of an emit, with the same packet object for every recipient). The websocket
    frame of a packet is built once; for each recipient it is written with one non-blocking
    ``send()`` on the connection's socket, when all of these hold:

    - the connection is an eventlet RFC 6455 websocket over plain TCP, without compression
      (compressed frames differ per connection);
    - it has finished upgrading and is not closing;
    - no writer task runs for it and nothing is queued (see below);
    - nobody holds or waits for the connection's send lock (eventlet's per-websocket lock).

    Otherwise the packet takes python-engineio's own path: ``Socket.send`` queues it.

    For those websockets, ``install`` also replaces python-engineio's writer greenlet (the
    closure its ``_websocket_handler`` starts with ``start_background_task`` once upgraded) by
    an ``OnDemandWriter``: a queued packet starts a task that writes everything queued, in
    order, through eventlet's websocket (under its send lock), and ends when the queue is
    empty; the check for "empty" and the end of the task happen in one hub turn, so nothing is
    left behind. The ``None`` python-engineio queues when the connection ends closes the
    websocket, as its writer does, and its handler's ``join()`` waits for the task.

Frame order
    A frame may be written directly only when nothing can be ahead of it. An empty queue and a
    lock that ``acquire(blocking=False)`` gets are not enough (issue 11): a writer takes a packet
    off the queue and then writes it under the send lock, and eventlet's
    ``Semaphore.release`` only *schedules* a waiter, so for one hub turn the lock is free while
    the writer holds a packet it has taken but not written; a non-blocking acquire then succeeds
    ahead of it. So the direct path asks for positive proof that no writer holds anything: no
    writer task exists (one is started, and recorded, in the same hub turn as the put that
    needs it, and forgotten only when it has written everything), nothing is queued, and the
    lock's ``balance`` (free slots minus waiters) is positive. While a task runs, every packet
    follows it through the queue.

A slow client never blocks the emitter: when the kernel takes only part of a frame, the rest is
written by a background task that keeps holding the send lock, so that every later frame for
that connection waits behind it (they go through the queue meanwhile). If that finish fails
(the client stopped reading until the socket timeout, or it went away), half a frame is on the
wire and nothing may follow it: the socket is shut down before the lock is released, so the
writer's next send fails and the reader sees the end of the stream, and python-engineio closes
the Engine.IO socket as for any broken connection.

What it relies on (checked by ``tests/fanout_child.py internals``; python-engineio 4.15,
eventlet 0.41): python-engineio's websocket handler starts its writer, a closure over ``self``
and ``ws`` named ``Socket._websocket_handler.<locals>.writer``, with the server's
``start_background_task`` after the upgrade, puts ``None`` in the queue when the reader ends
and then joins the writer; the writer is the only consumer of the queue once upgraded;
eventlet's websocket writes under ``_sendlock`` (a ``Semaphore``) on ``socket`` (a
``GreenSocket`` over a non-blocking socket). A dead client is still found by the reader's socket
timeout (``ping_interval + ping_timeout``, set by python-engineio) and the pong check
(sockets/sweeper.py); python-engineio's writer closed a websocket that had nothing to write for
that long too, which the pings (sockets/pings.py) never let happen.

Only eventlet (the default ``ASYNC_MODE``) gets direct writes and on-demand writers; other
modes keep the stock path. ``DIRECT_WEBSOCKET_WRITES=0`` turns both off.
"""

import contextlib
import logging
import socket
import struct

from campaigns import metrics

log = logging.getLogger(__name__)

ATTRIBUTE = "campaign_live_direct_websocket"


def websocket_text_frame(text):
    """One final, unmasked RFC 6455 text frame (a server's frames are never masked)."""
    payload = text.encode("utf-8")
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


class DirectWebsocket:
    """What direct writes need of one eventlet websocket: its send lock and its raw socket."""

    __slots__ = ("lock", "raw", "green", "writer")

    def __init__(self, ws):
        self.lock = ws._sendlock
        self.green = ws.socket
        self.raw = ws.socket.fd
        self.writer = None  # its OnDemandWriter, from the end of the upgrade on

    @classmethod
    def of(cls, ws):
        """A ``DirectWebsocket`` for ``ws``, or None when its frames cannot be written directly."""
        from eventlet import patcher
        from eventlet.greenio import GreenSocket
        from eventlet.websocket import RFC6455WebSocket

        if type(ws) is not RFC6455WebSocket or ws.extensions or type(getattr(ws, "socket", None)) is not GreenSocket:
            return None
        raw = getattr(ws.socket, "fd", None)
        # Plain TCP only (TLS sockets are another class), already non-blocking (eventlet sets it so).
        if type(raw) is not patcher.original("socket").socket or raw.gettimeout() != 0.0:
            return None
        if not hasattr(ws, "_sendlock"):
            return None
        return cls(ws)


class DirectWrites:
    """``send_packet`` for an Engine.IO server: direct frame writes where safe, else the stock path."""

    def __init__(self, eio_server):
        self.eio = eio_server
        self.stock_send_packet = eio_server.send_packet
        self.frames_of = (None, None)  # (packets, frame) of the packets being fanned out
        self.single = (None, ())  # (packet, (packet,)): one tuple for every recipient of a packet
        self.direct = 0
        self.queued = 0
        self.partial = 0  # direct writes the kernel took only part of (finished in the background)
        self.broken = 0  # of those, finishes that failed (the connection was then shut down)

    def send_packet(self, sid, pkt):
        """Send an Engine.IO packet to one client (same signature as ``engineio.Server.send_packet``)."""
        if self.single[0] is not pkt:  # python-socketio sends one packet object to a room's clients
            self.single = (pkt, (pkt,))
        self.send_packets(sid, self.single[1])

    def send_packets(self, sid, pkts):
        """Send Engine.IO packets to one client, in order: directly in one ``send()`` when safe.

        ``pkts`` must be the same sequence object for every recipient of a fan-out (its frames
        are built once)."""
        eio_socket = self.eio.sockets.get(sid)
        if eio_socket is not None and self.write(eio_socket, pkts):
            self.direct += len(pkts)
            return
        self.queued += len(pkts)
        for pkt in pkts:
            self.stock_send_packet(sid, pkt)

    def frame(self, pkts):
        """The websocket frames of ``pkts``, joined, built once for all recipients; None unless
        every packet is a text packet."""
        cached, frame = self.frames_of
        if cached is not pkts:
            encoded = [pkt.encode() for pkt in pkts]
            if all(isinstance(text, str) for text in encoded):
                frame = b"".join(websocket_text_frame(text) for text in encoded)
            else:
                frame = None
            self.frames_of = (pkts, frame)
        return frame

    def write(self, eio_socket, pkts):
        """Write ``pkts`` straight to the socket's websocket if nothing can be overtaken; True if done."""
        direct = eio_socket.__dict__.get(ATTRIBUTE)
        if direct is None or not eio_socket.upgraded or eio_socket.upgrading or eio_socket.closing or eio_socket.closed:
            return False
        # No writer task holds or awaits packets, nothing is queued, and nobody has or awaits the
        # lock: only then can no frame be ahead of this one (see "Frame order" above).
        writer = direct.writer
        if writer is None or writer.task is not None or eio_socket.queue.qsize() or direct.lock.balance <= 0:
            return False
        frame = self.frame(pkts)
        if frame is None or not eio_socket.check_ping_timeout():
            # check_ping_timeout closes a client that stopped answering pings (as the stock path does).
            return False
        if not direct.lock.acquire(blocking=False):
            return False
        try:
            sent = direct.raw.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The connection broke: the stock path queues the packet; the reader sees the close.
            direct.lock.release()
            return False
        if sent == len(frame):
            direct.lock.release()
        else:
            self.partial += 1
            self.eio.start_background_task(self.finish_frame, direct, memoryview(frame)[sent:])
        return True

    def finish_frame(self, direct, rest):
        """Write the rest of a partly sent frame, then free the connection's send lock.

        If that fails, half a frame is on the wire: the socket is shut down before the lock is
        released, so nothing is ever written after it and the connection closes."""
        finished = False
        try:
            direct.green.sendall(rest)
            finished = True
        except OSError as exc:
            log.info("[WEBSOCKET] closing a connection that took only part of a frame: %s", exc)
        finally:
            if not finished:
                self.broken += 1
                with contextlib.suppress(OSError):  # already disconnected
                    direct.raw.shutdown(socket.SHUT_RDWR)
            direct.lock.release()


WRITER_QUALNAME = "Socket._websocket_handler.<locals>.writer"


class OnDemandWriter:
    """Writes what python-engineio queues for one websocket, from a task that exists only while
    packets are queued, in place of python-engineio's writer greenlet that waits in the queue
    for the connection's whole life.

    A queued packet (``Socket.send``: a ping, an emit that could not be written directly) starts
    a task if none runs; the task writes the queued packets one by one, in order, through
    eventlet's websocket (under its send lock) and ends when the queue is empty. The check for "empty" and
    the end of the task happen in one hub turn, so a packet is never left behind. The ``None``
    that python-engineio queues when the connection ends is written as its writer does: the
    websocket is closed. A failed send closes it too, and nothing is written after that."""

    __slots__ = ("eio_socket", "ws", "task", "stopped", "start_task", "stock_put")

    def __init__(self, eio_socket, ws, start_task):
        self.eio_socket, self.ws, self.start_task = eio_socket, ws, start_task
        self.task, self.stopped = None, False
        queue = eio_socket.queue
        self.stock_put = queue.put
        queue.put = self.put  # the socket's own queue, for as long as the websocket lasts
        if queue.qsize():  # queued before the upgrade finished
            self.task = start_task(self.drain)

    def put(self, item, block=True, timeout=None):
        """The queue's ``put``, which starts a writer task when none runs."""
        self.stock_put(item, block, timeout)
        if self.task is None and not self.stopped:
            self.task = self.start_task(self.drain)

    def drain(self):
        """The task: write what is queued, then end; close the websocket if the connection ended."""
        try:
            if self.write_queued():
                return  # nothing queued: the task ends in the same hub turn as that check
            self.stopped = True
            self.ws.close()
        finally:
            self.task = None

    def write_queued(self):
        """Write queued packets in order: True once the queue is empty, False when the connection
        ended (python-engineio queued ``None``) or a send failed."""
        queue, empty = self.eio_socket.queue, self.eio_socket.server.get_queue_empty_exception()
        while True:
            try:
                packet = queue.get(block=False)
            except empty:
                return True
            queue.task_done()
            if packet is None:
                return False
            try:
                self.ws.send(packet.encode())
            except Exception:  # noqa: BLE001 - as python-engineio's writer: a failed send ends the writing
                return False

    def join(self):
        """Wait until the task writing now, if any, has ended (python-engineio joins its writer)."""
        task = self.task
        if task is not None:
            task.join()
        del self.eio_socket.queue.put  # the connection is over: the queue's own put again


def writer_of(target):
    """``(engine.io socket, websocket)`` if ``target`` is python-engineio's websocket writer, else None."""
    code = getattr(target, "__code__", None)
    if getattr(target, "__qualname__", None) != WRITER_QUALNAME or code is None or not target.__closure__:
        return None
    cells = dict(zip(code.co_freevars, target.__closure__, strict=True))
    if "self" not in cells or "ws" not in cells:
        return None
    return cells["self"].cell_contents, cells["ws"].cell_contents


def recording_websocket_class(base):
    """A subclass of the eventlet driver's websocket WSGI app that records, on each Engine.IO
    socket, the ``DirectWebsocket`` of its connection for as long as the connection lasts."""

    class RecordingWebSocketWSGI(base):
        def __init__(self, handler, server):
            eio_socket = getattr(handler, "__self__", None)
            if eio_socket is None:  # not python-engineio's bound Socket._websocket_handler: leave it
                super().__init__(handler, server)
                return

            def recording_handler(ws):
                setattr(eio_socket, ATTRIBUTE, DirectWebsocket.of(ws))
                try:
                    return handler(ws)
                finally:
                    setattr(eio_socket, ATTRIBUTE, None)

            super().__init__(recording_handler, server)

    return RecordingWebSocketWSGI


def install(eio_server, enabled=True):
    """Turn on direct websocket writes and on-demand writers for an Engine.IO server when its
    async mode allows it.

    Returns the ``DirectWrites`` in use, or None (logged with the reason) when off.
    """
    if not enabled:
        log.info("[WEBSOCKET] direct websocket writes off (DIRECT_WEBSOCKET_WRITES=0)")
        return None
    if eio_server.async_mode != "eventlet":
        log.info("[WEBSOCKET] direct websocket writes off: async mode %s keeps the stock path", eio_server.async_mode)
        return None
    from eventlet.queue import LightQueue

    if not issubclass(eio_server._async["queue"], LightQueue):  # the writers take from eventlet's queue
        log.warning("[WEBSOCKET] direct websocket writes off: Engine.IO queue %s", eio_server._async["queue"])
        return None
    writes = DirectWrites(eio_server)
    eio_server.campaign_live_direct_writes = writes
    stock_start_background_task = eio_server.start_background_task

    def start_background_task(target, *args, **kwargs):
        # python-engineio's websocket writer: an OnDemandWriter instead, for websockets we write to.
        found = None if args or kwargs else writer_of(target)
        direct = found and found[0].__dict__.get(ATTRIBUTE)
        if direct is None or direct.writer is not None:
            return stock_start_background_task(target, *args, **kwargs)
        direct.writer = OnDemandWriter(found[0], found[1], stock_start_background_task)
        return direct.writer

    eio_server.start_background_task = start_background_task
    # A copy: the driver's dict is shared by every Engine.IO server of the process.
    eio_server._async = dict(eio_server._async, websocket=recording_websocket_class(eio_server._async["websocket"]))
    eio_server.send_packet = writes.send_packet
    metrics.watch_packet_writes(writes)
    log.info("[WEBSOCKET] direct websocket writes on")
    return writes


def emit_in_order(sio_server, event, payloads, room, namespace="/"):
    """Send ``event`` once per payload, in order, to every client of ``room`` on this server.

    What ``socketio.emit(event, payload, to=room)`` does for each payload, but each packet is
    encoded once for the whole room and, with direct writes, a client whose writer is idle gets
    all of them in one ``send()``. A burst of updates (merged progress falling due together, a
    catch-up) costs one system call per client instead of one per client and update, so a
    status update behind the burst is not held up by it.
    """
    from engineio import packet as eio_packet
    from socketio import packet as sio_packet

    if not payloads:
        return
    packet_class = sio_server.packet_class
    encoded = [packet_class(sio_packet.EVENT, namespace=namespace, data=[event, p]).encode() for p in payloads]
    if not all(isinstance(text, str) for text in encoded):  # binary attachments: python-socketio's own way
        for payload in payloads:
            sio_server.emit(event, payload, to=room, namespace=namespace)
        return
    pkts = tuple(eio_packet.Packet(eio_packet.MESSAGE, text) for text in encoded)
    writes = getattr(sio_server.eio, "campaign_live_direct_writes", None)
    for _sid, eio_sid in sio_server.manager.get_participants(namespace, room):
        if writes is not None:
            writes.send_packets(eio_sid, pkts)
        else:
            for pkt in pkts:
                sio_server._send_eio_packet(eio_sid, pkt)
