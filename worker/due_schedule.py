"""When the worker looks for merged updates that fell due: every ``DUE_CHECK_SECONDS``, and at
the due time of each merged update that its own batches scheduled.

The regular look finds what any worker left due. But with only that, a merged update fell due
up to a tick before anyone looked, and the contract's bound (the latest state within
``THROTTLE_SECONDS`` + 0.5 s of its last event) also holds the campaign's window phase (up to
``WINDOW_PHASE_SPREAD_SECONDS``, campaigns/rules.py), the drain timeout and the delivery. Waking
at the due time gives that tick back (measured in tests/test_pipeline.py).
"""

import heapq
import time

from campaigns.timeutil import utcnow

# A look a hair early would find nothing due yet (the flush compares with the stored due time)
# and the update would wait for the next tick.
AFTER_DUE_SECONDS = 0.002
# Beyond this many pending wake-ups, new ones are left to the regular look.
MAX_WAKEUPS = 10_000


class DueSchedule:
    """The regular look for due updates every ``every`` seconds, plus wake-ups at due times."""

    def __init__(self, every, clock=time.monotonic):
        self.every = every
        self.clock = clock
        self.next_look = 0.0
        self.wakeups = []

    def add(self, due_times):
        """Also look just after each of these due times (aware UTC datetimes)."""
        if not due_times:
            return
        now, wall = self.clock(), utcnow()
        for due in due_times:
            if len(self.wakeups) >= MAX_WAKEUPS:
                return
            heapq.heappush(self.wakeups, now + (due - wall).total_seconds() + AFTER_DUE_SECONDS)

    def is_due(self, now):
        """True when a look for due updates should run at ``now``."""
        return now >= self.next_look or bool(self.wakeups and self.wakeups[0] <= now)

    def looked(self, now, next_look=None):
        """A look ran at ``now``: forget the wake-ups it served; the next regular one comes at
        ``next_look`` (default: one interval from now)."""
        self.next_look = now + self.every if next_look is None else next_look
        while self.wakeups and self.wakeups[0] <= now:
            heapq.heappop(self.wakeups)
