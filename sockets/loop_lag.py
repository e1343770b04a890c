"""How late the server's event loop runs what it scheduled: the figure that says a server is
overloaded before its clients do.

Every client of a server shares one event loop (eventlet or gevent: one OS thread). Whatever
holds it (a burst of long-polling requests, a fan-out to a big room, a call that blocks where
it should yield) delays every other client's updates, pings and polls by as much. A background
task sleeps ``INTERVAL_SECONDS`` and records by how much it woke late in
``campaign_live_event_loop_lag_seconds``; the ``CampaignLiveEventLoopLagging`` alert and the
dashboard read it. A lag of ``WARN_SECONDS`` or more is also logged, at most once per
``WARN_EVERY_SECONDS`` (with how many such stalls there were since the last line).

It costs two wake-ups a second. Only ``socketio.sleep`` and ``start_background_task``: the same
under every async mode.
"""

import logging
import time

from campaigns import metrics
from extensions import socketio

log = logging.getLogger(__name__)
INTERVAL_SECONDS = 0.5
WARN_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0


class LoopLagWatch:
    """Measures the event loop's lag, one sleep at a time, into the histogram and the log."""

    def __init__(self, interval=INTERVAL_SECONDS, sleep=socketio.sleep, clock=time.monotonic):
        self.interval = interval
        self.sleep = sleep
        self.clock = clock
        self.stalls_unlogged = 0
        self.last_warning = None
        self.last_failure_logged = None

    def measure_once(self):
        """Sleep one interval; record and return how much later than asked it ended."""
        started = self.clock()
        self.sleep(self.interval)
        lag = max(self.clock() - started - self.interval, 0.0)
        metrics.event_loop_lag.observe(lag)
        if lag >= WARN_SECONDS:
            self.warn(lag)
        return lag

    def warn(self, lag):
        """Log a stall, unless one was logged within ``WARN_EVERY_SECONDS`` (then count it)."""
        now = self.clock()
        self.stalls_unlogged += 1
        if self.last_warning is not None and now - self.last_warning < WARN_EVERY_SECONDS:
            return
        log.warning(
            "[WEBSOCKET] the event loop ran %.2f s late (%d stall(s) of %.1f s or more since the last such line): "
            "every client of this server waited as long; see docs/troubleshooting.md",
            lag,
            self.stalls_unlogged,
            WARN_SECONDS,
        )
        self.stalls_unlogged = 0
        self.last_warning = now

    def run(self):
        """Measure for as long as the process runs (a failed measurement is logged, at most once
        per ``WARN_EVERY_SECONDS``, and the watch goes on)."""
        while True:
            try:
                self.measure_once()
            except Exception:  # noqa: BLE001 - a dead watch would read as a loop that never lags
                now = self.clock()
                if self.last_failure_logged is None or now - self.last_failure_logged >= WARN_EVERY_SECONDS:
                    log.exception("[WEBSOCKET] measuring the event loop's lag failed; measuring on")
                    self.last_failure_logged = now
                self.sleep(self.interval)


def start_loop_lag_watch(interval=INTERVAL_SECONDS):
    """Start measuring the event loop's lag in a background task."""
    socketio.start_background_task(LoopLagWatch(interval).run)
