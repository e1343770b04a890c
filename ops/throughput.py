"""Events applied per second and their lag, from a bounded sample of the newest applied events (plain code)."""

from datetime import timedelta

WINDOW_SECONDS = 60
# Newest applied events read per look: an index range scan of at most this many rows whatever
# the load (at 10,000 events/s the sample spans half a second, at 50 events/s the whole minute).
SAMPLE_LIMIT = 5000


def throughput(rows, now, window_seconds=WINDOW_SECONDS, sample_limit=SAMPLE_LIMIT):
    """``{"events_per_second", "lag_seconds": {"p50", "p95", "max"} or None, "sample"}``.

    ``rows`` are ``(applied_at, occurred_at)`` of the newest applied events of the window,
    newest first, at most ``sample_limit``. A sample that is cut by the limit covers less than
    the window: the rate is then over the time it spans.
    """
    if not rows:
        return {"events_per_second": 0.0, "lag_seconds": None, "sample": 0}
    if len(rows) < sample_limit:
        span = window_seconds
    else:
        span = max((now - rows[-1][0]).total_seconds(), 0.001)
    lags = sorted(max((applied - occurred).total_seconds(), 0.0) for applied, occurred in rows)
    return {
        "events_per_second": round(len(rows) / span, 2),
        "lag_seconds": {
            "p50": round(_percentile(lags, 0.50), 3),
            "p95": round(_percentile(lags, 0.95), 3),
            "max": round(lags[-1], 3),
        },
        "sample": len(rows),
    }


def _percentile(ordered, share):
    """The nearest-rank percentile of an ascending list."""
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


def window_start(now, window_seconds=WINDOW_SECONDS):
    """The oldest ``applied_at`` the sample looks at."""
    return now - timedelta(seconds=window_seconds)
