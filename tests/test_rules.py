"""The campaign rules of campaigns/rules.py, without a database."""

import itertools
from datetime import datetime, timedelta, timezone

from campaigns.events import CampaignEvent
from campaigns.models import Campaign, CampaignRow
from campaigns.rules import (
    WINDOW_PHASE_SPREAD_SECONDS,
    CampaignRules,
    FailureAlertRule,
    alert_changed,
    record_message,
    window_counts,
    window_phase,
)

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


# The throttle and the status order (CampaignRules), on plain Campaign objects.

THROTTLE = 2.0
EVENT_IDS = itertools.count()
KEY = ("acme", "bf")


def event(kind, data=None, at=NOW, campaign_id="bf"):
    """A valid event of campaign ``campaign_id`` of tenant acme."""
    return CampaignEvent(f"e{next(EVENT_IDS)}", kind, "acme", campaign_id, at, data or {})


def started(at=NOW):
    return event("campaign_started", {"name": "Black Friday", "total_messages": 1000}, at=at)


def sent(count=1):
    return [event("message_sent", {"message_id": f"m{next(EVENT_IDS)}"}) for _ in range(count)]


def failed(count=1):
    return [event("message_failed", {"message_id": f"m{next(EVENT_IDS)}", "error": "banned"}) for _ in range(count)]


def batch(campaigns, events, now, rule=RULE, kind=CampaignRow):
    """Apply one batch to ``campaigns`` (created on first sight, as ingest does) and decide."""
    for item in events:
        key = (item.tenant_id, item.campaign_id)
        campaigns.setdefault(key, kind.new(*key))
    return CampaignRules(THROTTLE, rule).apply(campaigns, events, now)


def emitted(decisions):
    """``(type, status, sent)`` of each update to emit now, in order."""
    return [(kind, campaign["status"], campaign["sent"]) for _, kind, campaign in decisions.emissions]


def test_the_first_progress_goes_at_once_and_the_rest_of_the_window_merge_until_its_end():
    campaigns = {}
    lead = batch(campaigns, sent(3), NOW)
    assert emitted(lead) == [("message_sent", "running", 3)] and lead.merged == 2
    campaign = campaigns[KEY]
    assert campaign.last_emitted_at == NOW and campaign.emit_due_at is None

    later = NOW + timedelta(seconds=0.5)
    merged = batch(campaigns, sent(2), later)
    due_at = NOW + timedelta(seconds=THROTTLE + window_phase(*KEY))
    assert merged.emissions == [] and merged.merged == 2
    assert campaign.emit_due_at == due_at
    assert merged.throttled == [("acme", "bf", "bf", (due_at - later).total_seconds())]

    # Already pending: merged into that update, which keeps its time.
    again = batch(campaigns, sent(4), NOW + timedelta(seconds=1.9))
    assert again.emissions == [] and again.merged == 4 and again.throttled == []
    assert campaign.emit_due_at == due_at and campaign.last_emitted_at == NOW


def test_progress_after_a_quiet_window_goes_at_once():
    campaigns = {}
    batch(campaigns, sent(), NOW)
    just_before = batch(campaigns, sent(), NOW + timedelta(seconds=THROTTLE) - timedelta(microseconds=1))
    assert just_before.emissions == []
    campaigns[KEY].emit_due_at = None  # as flush_due_updates leaves it, without its new window
    at_the_end = NOW + timedelta(seconds=THROTTLE)
    assert emitted(batch(campaigns, sent(), at_the_end)) == [("message_sent", "running", 3)]
    assert campaigns[KEY].last_emitted_at == at_the_end


def test_the_merged_update_of_each_campaign_falls_due_at_its_own_phase_within_the_slack():
    rules = CampaignRules(THROTTLE)
    phases = set()
    for number in range(50):
        campaign = Campaign.new("acme", f"c{number}")
        campaign.last_emitted_at = NOW
        due_at = rules.due_at(campaign, NOW + timedelta(seconds=1))
        delay = (due_at - NOW).total_seconds()
        assert THROTTLE <= delay < THROTTLE + WINDOW_PHASE_SPREAD_SECONDS
        assert abs(delay - THROTTLE - window_phase("acme", f"c{number}")) < 1e-6  # the campaign's own phase
        phases.add(delay)
    assert len(phases) >= 40, "spread out, not one burst"
    assert rules.due_at(campaign, NOW + timedelta(seconds=THROTTLE)) is None


def test_a_status_update_goes_at_once_and_supersedes_the_pending_merge():
    campaigns = {}
    batch(campaigns, [started()], NOW)
    batch(campaigns, sent(), NOW)
    assert batch(campaigns, sent(5), NOW + timedelta(seconds=0.5)).emissions == []
    assert campaigns[KEY].emit_due_at is not None
    paused = batch(campaigns, [event("campaign_paused", at=NOW + timedelta(seconds=1))], NOW + timedelta(seconds=1))
    assert emitted(paused) == [("campaign_paused", "paused", 6)]  # the latest state, merged progress included
    assert campaigns[KEY].emit_due_at is None  # nothing left to flush
    assert campaigns[KEY].last_emitted_at == NOW  # a status update opens no progress window


def test_a_status_update_opens_no_progress_window():
    campaigns = {}
    assert emitted(batch(campaigns, [started()], NOW)) == [("campaign_started", "running", 0)]
    assert campaigns[KEY].last_emitted_at is None
    assert emitted(batch(campaigns, sent(), NOW + timedelta(seconds=0.1))) == [("message_sent", "running", 1)]


def test_status_events_of_one_batch_are_each_emitted_in_order_with_the_state_of_their_time():
    events = [started(), *sent(2), event("campaign_paused", at=NOW + timedelta(seconds=1))]
    events += [event("campaign_resumed", at=NOW + timedelta(seconds=2)), *sent()]
    events += [event("campaign_completed", at=NOW + timedelta(seconds=3))]
    decisions = batch({}, events, NOW)
    assert emitted(decisions) == [
        ("campaign_started", "running", 0),
        ("campaign_paused", "paused", 2),
        ("campaign_resumed", "running", 2),
        ("campaign_completed", "completed", 3),
    ]
    assert decisions.merged == 3  # the progress events, each carried by the status update after it


def test_an_older_status_event_is_emitted_but_never_rolls_the_status_back():
    campaigns = {}
    batch(campaigns, [event("campaign_completed", at=NOW)], NOW)
    late = batch(campaigns, [event("campaign_paused", at=NOW - timedelta(seconds=5))], NOW + timedelta(seconds=1))
    assert emitted(late) == [("campaign_paused", "completed", 0)]


def test_progress_of_several_campaigns_is_throttled_per_campaign():
    campaigns = {}
    batch(campaigns, sent(), NOW)
    other = [event("message_sent", {"message_id": "x"}, campaign_id="other")]
    decisions = batch(campaigns, sent() + other, NOW + timedelta(seconds=0.5))
    assert [(campaign["id"], campaign["sent"]) for _, _, campaign in decisions.emissions] == [("other", 1)]
    assert [entry[1] for entry in decisions.throttled] == ["bf"]


def test_setting_or_clearing_the_alert_goes_at_once_even_inside_the_window():
    campaigns = {}
    batch(campaigns, [started()], NOW)
    batch(campaigns, sent(), NOW)
    raised = batch(campaigns, sent(14) + failed(10), NOW + timedelta(seconds=0.5))
    assert raised.alerts_raised == 1 and raised.merged == 23
    ((_, kind, campaign),) = raised.emissions
    assert kind == "message_failed" and campaign["failure_alert"]["rate"] == 10 / 25
    assert campaigns[KEY].last_emitted_at == NOW + timedelta(seconds=0.5)  # a new window starts
    # Still failing, within the window: no update at once, the stored alert follows the rate.
    still = batch(campaigns, failed(5), NOW + timedelta(seconds=1))
    assert still.emissions == [] and still.alerts_raised == 0
    assert campaigns[KEY].failure_alert["rate"] == 15 / 30
    # Failures stop; once the failed messages have left the alert's window it clears, at once.
    cleared = batch(campaigns, sent(30), NOW + timedelta(seconds=75))
    assert [campaign["failure_alert"] for _, _, campaign in cleared.emissions] == [None]


def test_next_message_starting_is_progress_but_not_counted_by_the_alert():
    campaigns = {}
    batch(campaigns, [started()], NOW)
    starting = [event("next_message_starting", {"message_id": f"m{i}"}) for i in range(30)]
    decisions = batch(campaigns, starting, NOW, rule=FailureAlertRule(rate=0.0, min_messages=1))
    assert decisions.alerts_raised == 0 and campaigns[KEY].failure_window is None
    assert [kind for _, kind, _ in decisions.emissions] == ["next_message_starting"] and decisions.merged == 29


def test_the_workers_plain_campaign_rows_behave_as_the_model_does():
    """The worker applies events to ``CampaignRow`` objects; the API and the pages read ``Campaign``
    models: the same events must leave both with the same columns and the same contract object."""
    late = NOW - timedelta(minutes=5)
    batches = [
        [started(), *sent(3)],
        [*failed(2), event("next_message_starting", {"message_id": "m-next"})],
        [event("campaign_paused"), event("campaign_resumed", at=late), *sent(40), *failed(25)],
        [event("campaign_resumed", at=NOW + timedelta(seconds=1)), *sent(2)],
        [event("campaign_completed", at=NOW + timedelta(seconds=9)), *sent(1)],
    ]
    rows, models = {}, {}
    for number, events in enumerate(batches):
        now = NOW + timedelta(seconds=number * 1.5)
        from_rows, from_models = batch(rows, events, now), batch(models, events, now, kind=Campaign)
        assert from_rows.emissions == from_models.emissions
        assert from_rows.merged == from_models.merged
    row, model = rows[("acme", "bf")], models[("acme", "bf")]
    columns = [column.name for column in Campaign.__table__.columns]
    assert {name: getattr(row, name) for name in columns} == {name: getattr(model, name) for name in columns}
    assert row.to_dict() == model.to_dict()
    assert row.failure_alert is None and row.status == "completed" and row.sent == 46 and row.failed == 27
