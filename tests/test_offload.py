"""``run_blocking``: CPU work off the hub, on a thread of the async mode's own pool."""


import pytest

from tests import support


def run_child(mode):
    """Findings of tests/offload_child.py monkey-patched for ``mode``."""
    return support.child_findings("tests.offload_child", mode)


@pytest.mark.parametrize("mode", ["eventlet", "gevent"])
def test_the_hub_keeps_running_while_the_work_runs_on_a_pool_thread(mode):
    found = run_child(mode)
    assert found["ticks_during_work"] >= 10, "the hub stood still during 0.3 s of work"
    assert not found["on_caller_thread"]
    # Niceness is per OS thread on Linux: the pool's thread gave way, the hub's did not.
    assert (found["worker_niceness"], found["caller_niceness"]) == (10, 0)


def test_without_a_hub_it_is_a_plain_call_that_leaves_the_callers_priority_alone():
    found = run_child("threading")
    assert found["on_caller_thread"]
    assert (found["worker_niceness"], found["caller_niceness"]) == (0, 0)
