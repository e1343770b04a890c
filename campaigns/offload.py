"""Blocking CPU work (scrypt password checks) run on a real OS thread, off the event loop.

A wrong login costs ~75 ms of scrypt. On eventlet's or gevent's hub that is 75 ms during
which no other client is served; ``hashlib.scrypt`` releases the GIL, so on a real thread the
hub goes on serving meanwhile. This is the one place that knows the async libraries' thread
pools: everything else calls ``run_blocking``.
"""

import sys


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


def run_blocking(func, *args, **kwargs):
    """Call ``func(*args, **kwargs)`` on an OS thread of the hub's pool and return its result.

    Under eventlet (``tpool.execute``) or gevent (the hub's threadpool) the calling greenlet
    waits while the others run; in threading mode it is a plain call (the caller already is a
    thread). Exceptions propagate to the caller either way.
    """
    runner = _pool_runner()
    if runner is None:
        return func(*args, **kwargs)
    return runner(func, *args, **kwargs)
