"""The queue topology under its former name, for bench/ and tests/ that still import it from here.

The declarations live in ``campaigns/queues.py`` (campaigns/ never imports worker/); import them
from there. Remove this module once nothing imports ``worker.queues``.
"""

from campaigns.queues import (
    DEAD_LETTER_QUEUE,
    EVENTS_EXCHANGE,
    REJECTION_HEADER,
    dead_letter_queue,
    declare_topology,
    events_exchange,
    worker_queue,
)

__all__ = [
    "DEAD_LETTER_QUEUE",
    "EVENTS_EXCHANGE",
    "REJECTION_HEADER",
    "dead_letter_queue",
    "declare_topology",
    "events_exchange",
    "worker_queue",
]
