"""Budgets of what a client may do: client events per connection, connect attempts per credential.

The event budget is the ``limits`` library's (installed with Flask-Limiter, which the HTTP routes
use): a moving window in its in-memory storage. That storage empties an expired key but keeps it
(and walks every key it holds on each expiry pass), so a budget is cleared when its connection ends.

The connect throttle keeps its own token bucket, because it *reserves*: an attempt over the budget
is told how long to wait and counts from then on, so 35 attempts at once with a burst of 20, 5/s
and 3 s of delay all go through within 3 s. ``limits``' strategies (moving, fixed and sliding
window) only say yes or no now and give a window's capacity back a whole window later: the 21st
attempt after a burst of 20 would wait 4 s (past the 3 s cap: refused) where the bucket holds it
0.2 s. And the in-memory storage sweeps every key 10 ms after a hit (3 ms per pass with 5,000 keys,
measured): fine for client events, which are rare (replays), too much for every connect of a storm.
"""

import itertools
import time

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

_moving_window = None
_budget_keys = itertools.count()
BUDGET_NAMESPACE = "socket-events"


def moving_window():
    """The process's moving-window limiter on an in-memory storage, made on first use (after the
    server's monkey-patching: the storage's expiry timer is a thread, which must be a green one)."""
    global _moving_window
    if _moving_window is None:
        _moving_window = MovingWindowRateLimiter(MemoryStorage())
    return _moving_window


class EventBudget:
    """One connection's client events: ``burst`` within any ``burst / rate`` seconds (whole seconds,
    at least one), so ``rate`` per second on average; refusals are counted."""

    def __init__(self, burst, rate):
        self.limit = RateLimitItemPerSecond(burst, max(1, round(burst / rate)))
        self.key = str(next(_budget_keys))
        self.refusals = 0

    def clear(self):
        """Forget this budget in the storage (its connection ended)."""
        moving_window().storage.clear(self.limit.key_for(BUDGET_NAMESPACE, self.key))

    def take(self):
        """Spend one event; False (and one more refusal) when the window is full."""
        if moving_window().hit(self.limit, BUDGET_NAMESPACE, self.key):
            return True
        self.refusals += 1
        return False


class ConnectThrottle:
    """Connect attempts per credential: ``burst`` at once, then ``rate`` per second.

    An attempt over the budget is slowed (told how long to wait) as long as its wait stays within
    ``max_wait`` seconds, and refused beyond. Credentials whose budget refilled are forgotten
    every ``PRUNE_EVERY`` attempts, so memory follows the credentials seen recently.
    """

    PRUNE_EVERY = 1024

    def __init__(self, burst, rate, max_wait):
        self.burst, self.rate, self.max_wait = burst, rate, max_wait
        self._tokens = {}
        self._reserved = 0

    def reserve(self, key):
        """Seconds to wait before this attempt may go on (0 for none), or None to refuse it."""
        self._reserved += 1
        if self._reserved % self.PRUNE_EVERY == 0:
            self.prune()
        now = time.monotonic()
        tokens, updated = self._tokens.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate) - 1
        wait = -tokens / self.rate if tokens < 0 else 0.0
        if wait > self.max_wait:
            return None
        self._tokens[key] = (tokens, now)
        return wait

    def prune(self):
        """Forget credentials whose budget has refilled."""
        now = time.monotonic()
        full = [
            key for key, (tokens, updated) in self._tokens.items() if tokens + (now - updated) * self.rate >= self.burst
        ]
        for key in full:
            del self._tokens[key]
