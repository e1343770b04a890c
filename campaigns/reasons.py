"""Failures by reason: which bucket a ``message_failed`` error is counted in (plain code).

A campaign keeps its own count for the first ``REASON_LIMIT`` distinct reasons it meets;
later new reasons share the ``OTHER`` bucket. That bounds the rows per campaign (a producer
that puts message ids into its errors cannot grow the table without end) while the reasons
that matter, which show up early and often, keep their own line.
"""

REASON_LIMIT = 20
REASON_TEXT_LIMIT = 200
# Never a real reason: the event contract requires a non-empty error.
OTHER = ""


def reason_key(error):
    """The stored form of an error text: stripped and cut to ``REASON_TEXT_LIMIT`` characters."""
    key = " ".join(str(error).split())[:REASON_TEXT_LIMIT]
    return key or "(blank)"


def bucket_reasons(known, errors, limit=REASON_LIMIT):
    """Count ``errors`` (in order) into buckets: ``{reason or OTHER: count}``.

    ``known`` is the set of reasons the campaign already has a bucket for (``OTHER`` included
    or not); new reasons get their own bucket while fewer than ``limit`` exist.
    """
    own = {reason for reason in known if reason != OTHER}
    counts = {}
    for error in errors:
        key = reason_key(error)
        if key not in own and len(own) < limit:
            own.add(key)
        bucket = key if key in own else OTHER
        counts[bucket] = counts.get(bucket, 0) + 1
    return counts


def top_reasons(rows, shown=REASON_LIMIT):
    """``[{"reason", "count", "share"}]`` from ``(reason, count)`` rows, largest first.

    ``reason`` is None for the bucket of the other reasons, which always comes last; ``share``
    is of all counted failures.
    """
    total = sum(count for _, count in rows) or 1
    named = sorted(((r, c) for r, c in rows if r != OTHER), key=lambda rc: (-rc[1], rc[0]))[:shown]
    rest = sum(c for r, c in rows if r == OTHER) + sum(c for r, c in rows if r != OTHER) - sum(c for _, c in named)
    result = [{"reason": reason, "count": count, "share": round(count / total, 4)} for reason, count in named]
    if rest:
        result.append({"reason": None, "count": rest, "share": round(rest / total, 4)})
    return result
