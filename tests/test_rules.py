"""The campaign rules of campaigns/rules.py, without a database."""

from datetime import datetime, timedelta, timezone

from campaigns.rules import FailureAlertRule, alert_changed, record_message, window_counts

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
RULE = FailureAlertRule(rate=0.2, window_seconds=60, min_messages=20)


def test_the_alert_needs_enough_messages_and_a_failed_share_at_the_rate():
    assert RULE.next(None, "running", sent=15, failed=4, now=NOW) is None  # 19 messages: too few
    assert RULE.next(None, "running", sent=17, failed=3, now=NOW) is None  # 15 %
    alert = RULE.next(None, "running", sent=16, failed=4, now=NOW)
    assert alert == {"rate": 0.2, "window_seconds": 60, "since": "2026-12-01T12:00:00.000Z"}


def test_a_set_alert_follows_the_rate_and_keeps_its_start_until_the_share_halves():
    alert = RULE.next(None, "running", sent=10, failed=10, now=NOW)
    later = RULE.next(alert, "running", sent=18, failed=2, now=NOW.replace(minute=5))
    assert later == {**alert, "rate": 0.1}  # 10 %: not below half of 20 %
    assert RULE.next(later, "running", sent=91, failed=9, now=NOW) is None  # 9 %: cleared


def test_a_campaign_that_stops_running_loses_its_alert():
    alert = RULE.next(None, "running", sent=0, failed=30, now=NOW)
    for status in ("paused", "completed", "failed", "cancelled"):
        assert RULE.next(alert, status, sent=0, failed=30, now=NOW) is None
        assert RULE.next(None, status, sent=0, failed=30, now=NOW) is None


def test_setting_and_clearing_are_changes_but_a_new_rate_is_not():
    alert = {"rate": 0.5, "window_seconds": 60, "since": "x"}
    assert alert_changed(None, alert) and alert_changed(alert, None)
    assert not alert_changed(alert, {**alert, "rate": 0.4}) and not alert_changed(None, None)


def test_the_window_counts_the_last_window_seconds_of_messages():
    window = None
    for second in range(0, 60):
        kind = "message_failed" if second % 4 == 0 else "message_sent"
        window = record_message(RULE, window, kind, NOW + timedelta(seconds=second))
    assert window_counts(RULE, window, NOW + timedelta(seconds=59)) == (45, 15)
    # 30 s later the first half of them has left the window (one bucket of 5 s is the precision).
    sent, failed = window_counts(RULE, window, NOW + timedelta(seconds=89))
    assert (sent, failed) == (23, 7)  # the messages of seconds 30-59
    assert window_counts(RULE, window, NOW + timedelta(seconds=200)) == (0, 0)
    assert len(window) <= 12
