"""Checking a login's password in constant cost, off the event loop."""

import functools
import os
import secrets
import threading

from werkzeug.security import check_password_hash, generate_password_hash

from campaigns.offload import run_blocking

# scrypt on a thread still takes a core: with as many checks at once as cores, the hub waits
# for the scheduler (healthz p90 46-107 ms with 20 at once on 2 cores, 3-6 ms with one;
# measured). Created at import, after monkey patching, so the wait is green under a hub.
CONCURRENT_CHECKS = max(1, (os.cpu_count() or 2) - 1)
_checks = threading.BoundedSemaphore(CONCURRENT_CHECKS)
# Niceness of the pool thread that runs a check (Linux, per thread): when the cores are busy,
# the hub's thread gets them first. Slowest /healthz during 60 wrong logins on 2 cores busy
# with other work: 82-324 ms (mean 175) at 0, 68-191 ms (mean 110) at 19 (a check then waited
# twice as long). 10 keeps ~10 % of a contended core for logins instead of ~1.5 %.
CHECK_NICENESS = 10
# A login waits this long at most for a check's turn: a flood from many addresses then costs
# at most (logins per second x this) waiting requests, not a queue that grows until the
# server's connection pool is full (it is shared with every socket).
CHECK_WAIT_SECONDS = 5.0


class ChecksBusy(Exception):
    """Every password check is taken and the login waited ``CHECK_WAIT_SECONDS`` for one."""


@functools.cache
def _dummy_hash():
    # Made like a user's (User.set_password) so that checking against it costs the same.
    return generate_password_hash(secrets.token_urlsafe(24))


def _check_unknown(password):
    check_password_hash(_dummy_hash(), password)
    return False


def login_matches(user, password):
    """True when ``user`` exists and ``password`` is theirs.

    An unknown e-mail (``user`` None) is checked against a dummy hash, so the answer takes as
    long as a wrong password and does not tell which e-mails have an account. The scrypt work
    runs on a thread (``run_blocking``), at most ``CONCURRENT_CHECKS`` at once (the others
    wait their turn without blocking the hub, ``ChecksBusy`` after ``CHECK_WAIT_SECONDS``):
    other clients keep being served meanwhile.
    """
    # The hash is read here, on the request's greenlet: a model attribute read on the pool's
    # thread could load from the database there, outside the hub.
    stored_hash = None if user is None else user.password_hash
    if not _checks.acquire(timeout=CHECK_WAIT_SECONDS):
        raise ChecksBusy()
    try:
        if stored_hash is None:
            return run_blocking(_check_unknown, password, niceness=CHECK_NICENESS)
        return run_blocking(check_password_hash, stored_hash, password, niceness=CHECK_NICENESS)
    finally:
        _checks.release()
