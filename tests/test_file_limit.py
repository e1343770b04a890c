"""sockets/file_limit.py: a server started with a low soft open-file limit raises it for
``MAX_CONNECTIONS``, as far as the hard limit lets it, and says what it did."""

from pathlib import Path

from sockets.file_limit import files_needed
from tests import support


def open_files_limit(pid):
    """``(soft, hard)`` of a process's open-file limit, from /proc."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


def test_the_server_raises_its_soft_file_limit_up_to_what_max_connections_needs(stack):
    with support.low_soft_file_limit() as (soft, hard):
        reachable = min(hard, 10**6) - 1  # MAX_CONNECTIONS whose files the hard limit allows
        raised = stack.start_server(MAX_CONNECTIONS=reachable - 100)
        beyond = stack.start_server(MAX_CONNECTIONS=hard + 5000)  # the hard limit is too low for it
    assert open_files_limit(raised.pid) == (files_needed(reachable - 100), hard)
    assert f"open-file limit raised from {soft} to {files_needed(reachable - 100)}" in raised.log()
    assert open_files_limit(beyond.pid) == (hard, hard)
    assert "is below the" in beyond.log() and f"MAX_CONNECTIONS={hard + 5000} needs" in beyond.log()
