"""Engine.IO pings for every connection from one task, in place of a greenlet per connection.

python-engineio schedules each socket's next PING (at connect, then at every PONG) by starting a
background task that sleeps ``ping_interval`` and sends it (``Socket.schedule_ping`` ->
``_send_ping``). An idle server with 10,000 clients thus keeps 10,000 sleeping greenlets, each
with its saved C stack, its own block of Python frames and a hub timer: measured with
tracemalloc on 1,000 idle websockets, about 3 KB of traced memory per connection, and more of
frame memory that tracemalloc does not see (``bench/vs_peer.py idle-1000`` gives the RSS).

``PingSchedule`` takes those tasks over: the socket goes into the bucket of the tick its ping is
due in, and one task sends every due ping each ``tick`` seconds (a ping goes at most one tick
early or late; the JavaScript client waits ``pingInterval + pingTimeout`` for it, and
``PING_TIMEOUT`` is at least 1 s). Nothing else changes:
the ping is sent through the socket's own ``send`` (or, with direct websocket writes, written
straight to an idle websocket, as a room update is) and ``last_ping`` is set as python-engineio
does, so the pong check (``check_ping_timeout``, run by sockets/sweeper.py) is untouched.

What it relies on (python-engineio 4.15; watched by tests/test_pings.py): ``schedule_ping``
starts exactly ``server.start_background_task(socket._send_ping)``, ``_send_ping`` only sleeps
then pings, and ``last_ping`` means "waiting for a pong since".
"""

import logging
import time
from collections import defaultdict

from engineio import packet as eio_packet
from engineio import socket as eio_socket_module

log = logging.getLogger(__name__)
TICK_SECONDS = 0.5
YIELD_EVERY = 500  # pings sent before other greenlets get a turn (10,000 due at once: ~12 ms)


class PingSchedule:
    """Sends every socket's due PING from one background task."""

    def __init__(self, eio_server, tick=TICK_SECONDS):
        self.eio = eio_server
        self.tick = tick
        self.due = defaultdict(list)  # tick number -> sockets whose ping falls due in it
        self.stock_start_background_task = eio_server.start_background_task

    def start_background_task(self, target, *args, **kwargs):
        """The Engine.IO server's ``start_background_task``, which takes the ping tasks over."""
        if not args and not kwargs and getattr(target, "__func__", None) is eio_socket_module.Socket._send_ping:
            self.add(target.__self__)
            return None
        return self.stock_start_background_task(target, *args, **kwargs)

    def add(self, eio_socket):
        """Ping ``eio_socket`` ``ping_interval`` seconds from now."""
        # The tick the due time falls in: sent within one tick of it (early or late).
        self.due[int((time.monotonic() + self.eio.ping_interval) / self.tick)].append(eio_socket)

    def send_due(self, now=None):
        """Send the pings that fell due by ``now``; return how many."""
        current = int((now if now is not None else time.monotonic()) / self.tick)
        sent = 0
        # With direct websocket writes (sockets/fanout.py), one frame for the whole tick, written
        # straight to each idle websocket instead of starting its writer task.
        direct_writes = getattr(self.eio, "campaign_live_direct_writes", None)
        pings = (eio_packet.Packet(eio_packet.PING),)
        for number in sorted(number for number in self.due if number <= current):
            for eio_socket in self.due.pop(number):
                if eio_socket.closing or eio_socket.closed:
                    continue
                try:
                    eio_socket.last_ping = time.time()
                    if direct_writes is not None:
                        direct_writes.send_packets(eio_socket.sid, pings)
                    else:
                        eio_socket.send(pings[0])
                except Exception:  # noqa: BLE001 - the other sockets of the tick still get theirs
                    log.exception("[WEBSOCKET] could not ping socket %s", eio_socket.sid)
                    continue
                sent += 1
                if sent % YIELD_EVERY == 0:
                    self.eio.sleep(0)
        return sent

    def run(self):
        """Send due pings every tick for as long as the process runs."""
        while True:
            self.eio.sleep(self.tick)
            try:
                self.send_due()
            except Exception:  # noqa: BLE001 - a bad pass must not end the heartbeat
                log.exception("[WEBSOCKET] sending pings failed")


def start_ping_schedule(eio_server, tick=TICK_SECONDS):
    """Take the Engine.IO server's per-socket ping tasks over; returns the ``PingSchedule``."""
    schedule = PingSchedule(eio_server, tick)
    eio_server.start_background_task = schedule.start_background_task
    schedule.stock_start_background_task(schedule.run)
    log.info("[WEBSOCKET] one task sends every socket's pings (tick %.1f s)", tick)
    return schedule
