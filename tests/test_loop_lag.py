"""sockets/loop_lag.py: a server whose event loop stalls says so, in its metrics and its log.

The stall is real: the server process is stopped (SIGSTOP) for ``STALL_SECONDS`` and continued,
which holds its event loop as a blocking call would, under eventlet and under gevent.
"""

import os
import signal

import pytest
import requests

from sockets.loop_lag import LoopLagWatch
from tests.support import metric, wait_until

LAG = "campaign_live_event_loop_lag_seconds"
STALL_SECONDS = 2.0


def lag_figures(server):
    """``(samples, samples over 1 s, sum of lags)`` from the server's /metrics."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    count = metric(text, f"{LAG}_count")
    return count, count - metric(text, f"{LAG}_bucket", le="1.0"), metric(text, f"{LAG}_sum")


@pytest.mark.parametrize("async_mode", ["eventlet", "gevent"])
def test_a_stalled_event_loop_shows_in_the_lag_histogram_and_the_log(stack, async_mode):
    server = stack.start_server(ASYNC_MODE=async_mode)
    wait_until(lambda: lag_figures(server)[0] >= 2, 10, 0.1, "the server to measure its event loop's lag")
    count, over_a_second, total = lag_figures(server)
    assert over_a_second == 0, (count, over_a_second, total)  # an idle loop is on time

    os.kill(server.pid, signal.SIGSTOP)
    try:
        # The stall lasts as long as a request waits for the stopped server, which must not answer it.
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(f"{server.url}/healthz", timeout=STALL_SECONDS)
    finally:
        os.kill(server.pid, signal.SIGCONT)

    after = wait_until(lambda: (f := lag_figures(server))[1] > 0 and f, 10, 0.1, "a lag over 1 s to be recorded")
    assert after[2] - total >= STALL_SECONDS - 0.5, (total, after)
    line = wait_until(
        lambda: next((ln for ln in server.log().splitlines() if "[WEBSOCKET] the event loop ran" in ln), None),
        10,
        0.1,
        "the stall's log line",
    )
    assert "s late" in line


def test_stalls_are_logged_once_a_minute_with_how_many_there_were(caplog):
    now = [0.0]
    sleeps = iter([0.5 + 2.0, 0.5 + 1.2, 0.5, 0.5 + 1.1])  # how long each "sleep" really took

    def sleep(_seconds):
        now[0] += next(sleeps)

    watch = LoopLagWatch(interval=0.5, sleep=sleep, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="sockets.loop_lag"):
        lags = [round(watch.measure_once(), 3) for _ in range(3)]
        now[0] += 60.0
        lags.append(round(watch.measure_once(), 3))
    assert lags == [2.0, 1.2, 0.0, 1.1]
    lines = [r.getMessage() for r in caplog.records if "event loop ran" in r.getMessage()]
    assert len(lines) == 2, lines  # the second stall came within a minute of the first line
    assert "2.00 s late (1 stall" in lines[0] and "1.10 s late (2 stall" in lines[1], lines


class Stop(BaseException):
    pass


def test_a_failed_measurement_is_logged_and_the_watch_goes_on(caplog, monkeypatch):
    now, sleeps, measured = [0.0], [], []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) >= 6:
            raise Stop
        now[0] += seconds

    watch = LoopLagWatch(interval=0.5, sleep=sleep, clock=lambda: now[0])
    stock_measure_once = watch.measure_once

    def measure_once():
        measured.append(now[0])
        if len(measured) <= 3:  # the first three measurements break
            raise RuntimeError("histogram broke")
        return stock_measure_once()

    monkeypatch.setattr(watch, "measure_once", measure_once)
    with pytest.raises(Stop):
        watch.run()
    assert len(measured) >= 4  # measured again after each failure
    assert caplog.text.count("measuring the event loop's lag failed") == 1  # not once a second
