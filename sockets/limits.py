"""Per-connection budget for client events, so one client cannot flood the server."""

import time


class TokenBucket:
    """``burst`` events at once, refilled at ``rate`` per second."""

    def __init__(self, burst, rate):
        self.burst, self.rate = burst, rate
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.refusals = 0

    def take(self):
        """Spend one token; False (and one more refusal) when none is left."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
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
