"""One pass over every Engine.IO socket every few seconds, in place of python-engineio's monitor.

python-engineio's monitor task (``monitor_clients``) visits one socket per wake-up, spreading a
cycle over ``PING_TIMEOUT`` seconds: with 1,000 connections that is 50 wake-ups a second, each a
timed wait on an event, for a check that costs a microsecond. The sweep does the same checks
(forget closed sockets; close a socket whose pong is overdue, which also ends a long-polling
client that vanished) for all sockets at once every ``interval`` seconds, and lets other
greenlets run after every ``chunk`` sockets. A dead client is found within ``PING_TIMEOUT`` +
``interval`` of its missed pong (python-engineio's own cycle: up to 2 x ``PING_TIMEOUT``).
"""

import logging

log = logging.getLogger(__name__)


def sweep(eio_server, chunk=500):
    """Check every socket once; return how many were closed or forgotten."""
    ended = 0
    for n, eio_socket in enumerate(list(eio_server.sockets.values()), 1):
        if eio_socket.closed:
            eio_server.sockets.pop(eio_socket.sid, None)
            ended += 1
        elif not eio_socket.closing and not eio_socket.check_ping_timeout():
            ended += 1
        if n % chunk == 0:
            eio_server.sleep(0)
    return ended


def sweep_forever(eio_server, interval):
    """Sweep every ``interval`` seconds for as long as the process runs."""
    while True:
        eio_server.sleep(interval)
        try:
            sweep(eio_server)
        except Exception:  # noqa: BLE001 - a bad pass must not end the sweeping
            log.exception("[WEBSOCKET] socket sweep failed")


def start_sweeper(eio_server, interval):
    """Start the sweeping background task (the server must run with ``monitor_clients=False``)."""
    eio_server.start_background_task(sweep_forever, eio_server, interval)
    log.info("[WEBSOCKET] sweeping sockets for missed pongs every %.1f s", interval)
