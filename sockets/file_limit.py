"""The server's open-file limit: every client holds a socket, and past the soft limit
``RLIMIT_NOFILE`` the kernel refuses the next one ("Too many open files").

Shells and containers often start processes with a soft limit of 1,024 under a much higher hard
limit. The server raises its own soft limit at start to what ``MAX_CONNECTIONS`` needs, as far as
the hard limit allows (an unprivileged process may raise its soft limit up to the hard one), and
says so; ``flask --app app doctor`` then only fails when the hard limit is too low.
"""

import logging
import resource

log = logging.getLogger(__name__)
# Files the server needs besides its clients' sockets: listener, database and broker
# connections, logs, the interpreter's own.
SPARE_FILE_DESCRIPTORS = 100


def files_needed(max_connections):
    """Open files a server of ``MAX_CONNECTIONS`` clients needs."""
    return max_connections + SPARE_FILE_DESCRIPTORS


def short_of(limit, needed):
    """True when an ``RLIMIT_NOFILE`` value (soft or hard) is below ``needed``; unlimited never is."""
    return limit != resource.RLIM_INFINITY and limit < needed


def raise_file_limit(max_connections):
    """Raise this process's soft open-file limit toward ``files_needed`` (never lower it, never past
    the hard limit); log what it is; return ``(soft, hard)``."""
    needed = files_needed(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if short_of(soft, needed):
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            # An unlimited hard limit (BSD, macOS) may still refuse a soft one above the system's.
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("[WEBSOCKET] could not raise the open-file limit to %d: %s", target, exc)
        else:
            log.info(
                "[WEBSOCKET] open-file limit raised from %d to %d for MAX_CONNECTIONS=%d", soft, target, max_connections
            )
            soft = target
    if short_of(soft, needed):
        log.warning(
            "[WEBSOCKET] open-file limit %d (hard %d) is below the %d that MAX_CONNECTIONS=%d needs: clients past "
            "about %d are refused; raise the hard limit (LimitNOFILE= in a systemd unit) or lower MAX_CONNECTIONS",
            soft,
            hard,
            needed,
            max_connections,
            max(soft - SPARE_FILE_DESCRIPTORS, 0),
        )
    return soft, hard
