"""One INFO line a minute about throttled updates, instead of one per campaign and window.

At 1,000 running campaigns the per-campaign line (kept at DEBUG) would be hundreds of lines a
second; operators need the volume, the detail only when they debug.
"""

import logging
import time

log = logging.getLogger(__name__)
SUMMARY_SECONDS = 60.0


class ThrottleSummary:
    """Counts throttled updates and the campaigns they belong to; logs a summary every interval."""

    def __init__(self, interval=SUMMARY_SECONDS, clock=time.monotonic, logger=log):
        self.interval = interval
        self.clock = clock
        self.logger = logger
        self.updates = 0
        self.campaigns = set()
        self.since = clock()

    def add(self, throttled):
        """Count ``(tenant_id, campaign_id, name, seconds)`` tuples and log each at DEBUG."""
        for tenant_id, campaign_id, name, seconds in throttled:
            self.logger.debug('[WEBSOCKET] throttling update for "%s" (%.1fs)', name, seconds)
            self.updates += 1
            self.campaigns.add((tenant_id, campaign_id))

    def maybe_log(self):
        """Log the summary once the interval has passed (nothing when nothing was throttled)."""
        now = self.clock()
        if now - self.since < self.interval:
            return False
        logged = self.updates > 0
        if logged:
            self.logger.info(
                "[WEBSOCKET] throttled %d updates of %d campaigns in the last %d s",
                self.updates,
                len(self.campaigns),
                round(now - self.since),
            )
        self.updates, self.campaigns, self.since = 0, set(), now
        return logged
