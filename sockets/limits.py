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
