"""Blocking CPU work (scrypt password checks) run on a real OS thread, off the event loop.

A wrong login costs ~75 ms of scrypt. On eventlet's or gevent's hub that is 75 ms during
which no other client is served; ``hashlib.scrypt`` releases the GIL, so on a real thread the
hub goes on serving meanwhile. This is the one place that knows the async libraries' thread
pools: everything else calls ``run_blocking``.
"""

import logging
import os
import sys

log = logging.getLogger(__name__)


def _pool_runner():
    """The thread pool of the hub this process runs on, or None when it runs plain threads.

    Decided by what is monkey-patched, not by ``ASYNC_MODE``: a CLI command reads the same
    setting but runs no hub, and a plain call is then right.
    """
    if "eventlet" in sys.modules:
        from eventlet import patcher

        if patcher.is_monkey_patched("thread"):
            from eventlet import tpool

            return tpool.execute
    if "gevent" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            import gevent

            return lambda func, *args, **kwargs: gevent.get_hub().threadpool.apply(func, args, kwargs)
    return None


def _niced(niceness, func, *args, **kwargs):
    # Runs on the pool's thread. On Linux, ``who=0`` is the calling thread only (elsewhere it
    # would be the whole process, hub included). Niceness only goes up for an unprivileged
    # process, so a thread that already has enough is left alone.
    if sys.platform.startswith("linux"):
        try:
            if os.getpriority(os.PRIO_PROCESS, 0) < niceness:
                os.setpriority(os.PRIO_PROCESS, 0, niceness)
        except OSError as exc:
            log.debug("could not lower a pool thread's priority: %s", exc)
    return func(*args, **kwargs)


def run_blocking(func, *args, niceness=0, **kwargs):
    """Call ``func(*args, **kwargs)`` on an OS thread of the hub's pool and return its result.

    Under eventlet (``tpool.execute``) or gevent (the hub's threadpool) the calling greenlet
    waits while the others run; in threading mode it is a plain call (the caller already is a
    thread). Exceptions propagate to the caller either way. ``niceness`` > 0 lowers the pool
    thread's CPU priority first (Linux), so that on a busy machine the hub gets the core
    before CPU-heavy work; a plain call is left alone (there is no hub to give way to).
    """
    runner = _pool_runner()
    if runner is None:
        return func(*args, **kwargs)
    if niceness > 0:
        return runner(_niced, niceness, func, *args, **kwargs)
    return runner(func, *args, **kwargs)
