"""The rules of a campaign that are not bookkeeping: plain code, no database (CONTRACT.md section 2).

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
from dataclasses import dataclass

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
# updates every 0.1 s).
WINDOW_PHASE_SPREAD_SECONDS = 0.3


def window_phase(tenant_id, campaign_id):
    """Seconds added to a campaign's throttle window: stable per campaign, in [0, 0.3)."""
    digest = zlib.crc32(f"{tenant_id}/{campaign_id}".encode())
    return WINDOW_PHASE_SPREAD_SECONDS * (digest % 1000) / 1000
