"""Fixtures of the fault-injection tests (the services' fixtures come from tests/conftest.py)."""

import pytest
from engineio import payload

from tests import support


@pytest.fixture
def stack(database, vhost, tmp_path):
    """A stack on the test's own database and vhost; the test starts its servers and workers
    (tests that need other settings define their own ``stack``)."""
    with support.Stack(database, vhost, tmp_path) as stack:
        yield stack


@pytest.fixture
def many_packets_per_poll(monkeypatch):
    """Let this process's Python clients decode long-polling responses of any number of packets.

    python-engineio's client refuses a polling response with more than 16 packets
    (``Payload.max_decode_packets``), and the server puts every packet queued for a client
    into one response: a replay of 16 updates or more breaks a Python polling client. That
    is tested on its own (test_server_restart.py); the other tests look at other faults.
    """
    monkeypatch.setattr(payload.Payload, "max_decode_packets", 100_000)
