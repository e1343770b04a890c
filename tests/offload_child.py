"""Run by tests/test_offload.py in its own process, monkey-patched for one async mode.

While ``run_blocking`` runs 0.3 s of scrypt work (which releases the GIL), a green ticker
counts how often the hub ran it. Prints one JSON line of findings.

Usage: ``python -m tests.offload_child eventlet|gevent|threading``.
"""

import sys

MODE = sys.argv[1]
if MODE == "eventlet":
    import eventlet

    eventlet.monkey_patch()
elif MODE == "gevent":
    from gevent import monkey

    monkey.patch_all()

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from campaigns.offload import run_blocking  # noqa: E402

WORK_SECONDS = 0.3


def scrypt_for(seconds):
    """CPU work that releases the GIL; returns where and at which niceness it ran."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hashlib.scrypt(b"password", salt=b"salt", n=2**14, r=8, p=1)
    return {"native_thread": threading.get_native_id(), "niceness": os.getpriority(os.PRIO_PROCESS, 0)}


def main():
    """Tick every 10 ms on the hub while the work runs through ``run_blocking``."""
    ticks = []
    done = threading.Event()

    def ticker():
        # One tick per 10 ms while the hub is free, until the work is done.
        while not done.wait(0.01):
            ticks.append(time.monotonic())

    caller = threading.get_native_id()
    if MODE != "threading":
        threading.Thread(target=ticker, daemon=True).start()
    ran = run_blocking(scrypt_for, WORK_SECONDS, niceness=10)
    done.set()
    print(
        json.dumps(
            {
                "ticks_during_work": len(ticks),
                "on_caller_thread": ran["native_thread"] == caller,
                "worker_niceness": ran["niceness"],
                "caller_niceness": os.getpriority(os.PRIO_PROCESS, 0),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
