"""The throttle's log volume: per-campaign lines at DEBUG, one INFO summary a minute."""

import logging

from worker.throttle_log import ThrottleSummary


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_per_campaign_lines_are_debug_and_one_info_summary_a_minute(caplog):
    clock = Clock()
    summary = ThrottleSummary(clock=clock)
    caplog.set_level(logging.DEBUG, logger="worker.throttle_log")
    for second in range(59):
        clock.now = 1000.0 + second
        # 1,000 campaigns, each throttled every other second; two tenants share campaign ids.
        if second % 2 == 0:
            summary.add([("acme", f"c{n}", f"Campaign {n}", 1.5) for n in range(500)])
            summary.add([("globex", f"c{n}", f"Campaign {n}", 1.5) for n in range(500)])
        assert summary.maybe_log() is False
    per_campaign = [r for r in caplog.records if "throttling update" in r.getMessage()]
    assert per_campaign and {r.levelno for r in per_campaign} == {logging.DEBUG}
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]

    clock.now = 1060.0
    assert summary.maybe_log() is True
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in info] == ["[WEBSOCKET] throttled 30000 updates of 1000 campaigns in the last 60 s"]

    clock.now = 1130.0  # a quiet minute logs nothing
    assert summary.maybe_log() is False
    summary.add([("acme", "c1", "Campaign 1", 0.5)])
    clock.now = 1190.0
    assert summary.maybe_log() is True
    assert caplog.records[-1].getMessage() == "[WEBSOCKET] throttled 1 updates of 1 campaigns in the last 60 s"
