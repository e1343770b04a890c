"""The rules of a campaign: plain code, no database (CONTRACT.md section 2).

``campaigns/ingest.py`` loads a batch's campaigns, asks ``CampaignRules`` what the batch's
events make the clients see, and stores the result.

- Status order: a status event's update goes at once and is never merged away; it carries the
  latest state, so it supersedes a pending merged progress update. It does not open a progress
  window (only progress updates count against it). Which status a campaign holds when status
  events come out of order (by ``occurred_at``) is ``Campaign.apply``'s rule.
- Throttle: progress events (``message_sent``, ``message_failed``, ``next_message_starting``)
  give at most one update per window of ``THROTTLE_SECONDS``: the first after a quiet window
  goes at once (``last_emitted_at``), the rest merge into one update that falls due at the
  window's end plus the campaign's phase (``emit_due_at``, ``window_phase``); the worker's
  ``flush_due_updates`` emits it then, with the latest state. The state lives in the campaign's
  row, so any worker delivers a merged update that another one scheduled.
- Throttle window phase (``window_phase``): spreads the merged updates of campaigns started
  together.
- Failure alert: while a running campaign fails too much, its ``failure_alert`` says so.
  Over the last ``window_seconds`` of its events, at least ``min_messages`` messages sent
  or failed and a failed share of at least ``rate`` set it; a share below ``rate / 2`` (the
  gap keeps it from flapping around the threshold), or the campaign no longer running,
  clears it. While set, it carries the share as of the latest update. The counts over the
  window come from the applied events in PostgreSQL, so the rule holds with any number of
  workers and across their restarts (``campaigns/ingest.py``).
"""

import zlib
from dataclasses import dataclass, field
from datetime import timedelta

from campaigns.timeutil import isoformat


@dataclass(frozen=True)
class FailureAlertRule:
    """Thresholds of the failure alert (``FAILURE_ALERT_*`` settings)."""

    rate: float = 0.2
    window_seconds: float = 60.0
    min_messages: int = 20

    @classmethod
    def from_config(cls, config):
        """The rule with a deployment's settings."""
        return cls(
            config["FAILURE_ALERT_RATE"], config["FAILURE_ALERT_WINDOW_SECONDS"], config["FAILURE_ALERT_MIN_MESSAGES"]
        )

    def next(self, current, status, sent, failed, now):
        """The ``failure_alert`` after an update: None or ``{"rate", "window_seconds", "since"}``.

        ``current`` is the alert held before; ``sent`` and ``failed`` count the campaign's
        messages over the window, this update's included.
        """
        if status != "running":
            return None
        done = sent + failed
        share = failed / done if done else 0.0
        if current is None:
            if done >= self.min_messages and share >= self.rate:
                return {"rate": share, "window_seconds": self.window_seconds, "since": isoformat(now)}
            return None
        if share < self.rate / 2:
            return None
        return {**current, "rate": share}


def alert_changed(before, after):
    """True when an update sets or clears the alert: it is then emitted at once."""
    return (before is None) != (after is None)


# The window is kept as a few buckets of counts in the campaign's row: ``[[bucket, sent, failed]]``,
# ``bucket`` being the index of a slice of window_seconds / WINDOW_BUCKETS since the epoch.
WINDOW_BUCKETS = 12


def _bucket(rule, now):
    return int(now.timestamp() // (rule.window_seconds / WINDOW_BUCKETS))


def record_message(rule, window, kind, now):
    """The window after one ``message_sent`` or ``message_failed`` applied at ``now``."""
    current = _bucket(rule, now)
    kept = [list(entry) for entry in (window or []) if entry[0] > current - WINDOW_BUCKETS]
    if not kept or kept[-1][0] != current:
        kept.append([current, 0, 0])
    kept[-1][1 if kind == "message_sent" else 2] += 1
    return kept


def window_counts(rule, window, now):
    """``(sent, failed)`` over the window ending at ``now`` (to one bucket's precision)."""
    current = _bucket(rule, now)
    recent = [entry for entry in (window or []) if entry[0] > current - WINDOW_BUCKETS]
    return sum(entry[1] for entry in recent), sum(entry[2] for entry in recent)


# Throttle windows: campaigns started together would have their merged updates fall due
# together every THROTTLE_SECONDS, a burst that status events then wait behind. Each campaign's
# window ends a little later than the throttle, by a phase of its own within the contract's
# slack (the latest state arrives within THROTTLE_SECONDS + 0.5 s; the worker looks for due
# updates every 0.1 s, and delivery takes the rest). It was 0.3 s: a campaign with the largest
# phase got its latest state 2.28-2.39 s after its last event, 0.11-0.22 s inside the bound.
WINDOW_PHASE_SPREAD_SECONDS = 0.2


def window_phase(tenant_id, campaign_id):
    """Seconds added to a campaign's throttle window: stable per campaign, in [0, 0.2)."""
    digest = zlib.crc32(f"{tenant_id}/{campaign_id}".encode())
    return WINDOW_PHASE_SPREAD_SECONDS * (digest % 1000) / 1000


# Only these count in the failure alert's window (``next_message_starting`` is neither).
FAILURE_WINDOW_EVENTS = ("message_sent", "message_failed")
DEFAULT_ALERT_RULE = FailureAlertRule()


@dataclass
class Decisions:
    """What the rules decided for one batch of events."""

    # The updates to emit now, in this order: ``(tenant_id, event type, <campaign>)``.
    emissions: list = field(default_factory=list)
    # Progress updates merged into another one (emitted now or falling due later).
    merged: int = 0
    # The merged updates scheduled by this batch: ``(tenant_id, campaign_id, name, seconds until due)``.
    throttled: list = field(default_factory=list)
    alerts_raised: int = 0


class CampaignRules:
    """The status order, the throttle and the failure alert, applied to a batch of events."""

    def __init__(self, throttle_seconds, alert_rule=DEFAULT_ALERT_RULE):
        self.window = timedelta(seconds=throttle_seconds)
        self.alert_rule = alert_rule

    def apply(self, campaigns, events, now):
        """Apply ``events`` in order to ``campaigns`` (by ``(tenant_id, campaign_id)``); return ``Decisions``.

        The campaigns change in place (state, throttle and alert fields): the caller stores
        them, with the emissions.
        """
        decisions = Decisions()
        progress = {}  # campaign key -> progress updates not emitted yet
        for event in events:
            key = (event.tenant_id, event.campaign_id)
            campaign = campaigns[key]
            if campaign.apply(event, now):
                self._decide_alert(campaign, now, decisions)
                decisions.emissions.append((event.tenant_id, event.type, campaign.to_dict()))
                campaign.emit_due_at = None  # superseded: this update carries the latest state
                decisions.merged += progress.pop(key, 0)  # the progress before it, merged into it
            else:
                if event.type in FAILURE_WINDOW_EVENTS:
                    campaign.failure_window = record_message(self.alert_rule, campaign.failure_window, event.type, now)
                progress[key] = progress.get(key, 0) + 1
        for key in list(progress):
            campaign = campaigns[key]
            if self._decide_alert(campaign, now, decisions):
                # Setting or clearing the alert goes at once, like a status change.
                self._emit_progress(campaign, progress.pop(key), now, decisions)
        for key, count in progress.items():
            campaign = campaigns[key]
            if campaign.emit_due_at is not None:
                decisions.merged += count  # into the update already pending
                continue
            due_at = self.due_at(campaign, now)
            if due_at is None:
                self._emit_progress(campaign, count, now, decisions)
            else:
                campaign.emit_due_at = due_at
                decisions.merged += count
                decisions.throttled.append(
                    (campaign.tenant_id, campaign.id, campaign.name, (due_at - now).total_seconds())
                )
        return decisions

    def due_at(self, campaign, now):
        """None when a progress update of ``campaign`` may go at ``now``; else when its merged update falls due."""
        last = campaign.last_emitted_at
        if last is None or now - last >= self.window:
            return None
        return last + self.window + timedelta(seconds=window_phase(campaign.tenant_id, campaign.id))

    def _emit_progress(self, campaign, count, now, decisions):
        """Emit the campaign's latest state now, for ``count`` progress updates; a new window starts."""
        decisions.emissions.append((campaign.tenant_id, campaign.last_event_type, campaign.to_dict()))
        campaign.emit_due_at = None
        campaign.last_emitted_at = now
        decisions.merged += count - 1

    def _decide_alert(self, campaign, now, decisions):
        """Update the campaign's ``failure_alert``; True when it was set or cleared."""
        sent, failed = window_counts(self.alert_rule, campaign.failure_window, now)
        before = campaign.failure_alert
        campaign.failure_alert = self.alert_rule.next(before, campaign.status, sent, failed, now)
        if before is None and campaign.failure_alert is not None:
            decisions.alerts_raised += 1
        return alert_changed(before, campaign.failure_alert)
