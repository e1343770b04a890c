"""The newest WARNING+ log records of this process, kept in memory for the ops page.

Bounded (``KEEP`` records, ``MESSAGE_LIMIT`` characters each): a storm of warnings costs a
fixed amount of memory, and the page shows what happened last. Each server process only has
its own; the logs (or Loki/ELK) remain the place for everything.
"""

import logging
from collections import deque
from datetime import datetime, timezone

KEEP = 100
MESSAGE_LIMIT = 500


class RecentErrors(logging.Handler):
    """A logging handler that keeps the newest ``KEEP`` records of level WARNING and above."""

    def __init__(self, keep=KEEP):
        super().__init__(level=logging.WARNING)
        self.records = deque(maxlen=keep)

    def emit(self, record):
        """Keep a short, JSON-ready form of the record."""
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                message = f"{message} ({record.exc_info[0].__name__})"
            self.records.append(
                {
                    "at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="seconds"),
                    "level": record.levelname,
                    "logger": record.name,
                    "message": message[:MESSAGE_LIMIT],
                }
            )
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def newest(self, limit=50):
        """The newest ``limit`` records, newest first."""
        return list(self.records)[::-1][:limit]


recent_errors = RecentErrors()


def install(logger=None):
    """Attach the process's one ``recent_errors`` handler to the root logger (once)."""
    logger = logger or logging.getLogger()
    if recent_errors not in logger.handlers:
        logger.addHandler(recent_errors)
    return recent_errors
