"""sockets/polling.py: a long-polling response to a client that may be python-engineio's carries at
most 16 packets (that client drops a connection that gets more), the rest follow in order; the
JavaScript client and its ports get every packet queued."""

import engineio
import pytest
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio import socket as eio_socket_module

from sockets.polling import MAX_PACKETS_PER_POLL, cap_polls, install


def message(i):
    return eio_packet.Packet(eio_packet.MESSAGE, f"update {i}")


def test_a_burst_is_answered_in_polls_of_at_most_16_packets_in_order():
    server = engineio.Server(async_mode="threading")
    sock = eio_socket_module.Socket(server, "sid-1")
    cap_polls(sock)
    for i in range(40):
        sock.send(message(i))
    sock.queue.put(None)  # the socket closes after them
    polls = [sock.poll() for _ in range(4)]
    assert [len(batch) for batch in polls] == [16, 16, 8, 0]
    assert [pkt.data for batch in polls for pkt in batch] == [f"update {i}" for i in range(40)]
    # What python-engineio's client accepts: the first response decodes, the stock one would not.
    eio_payload.Payload(encoded_payload=eio_payload.Payload(packets=polls[0]).encode())
    assert eio_payload.Payload.max_decode_packets >= MAX_PACKETS_PER_POLL


@pytest.mark.parametrize(
    ("query", "packets_in_first_poll"),
    [
        ("EIO=4&transport=polling&t=1764650000.1234567", MAX_PACKETS_PER_POLL),  # python-engineio's client
        ("EIO=4&transport=polling", MAX_PACKETS_PER_POLL),  # its timestamp_requests=False, or unknown
        ("EIO=4&transport=polling&t=", MAX_PACKETS_PER_POLL),
        ("EIO=4&transport=polling&t=1.5e9", MAX_PACKETS_PER_POLL),
        ("t=PZq3Xa_&EIO=4&transport=polling&t=1764650000.25", MAX_PACKETS_PER_POLL),  # the caller's t, then its own
        ("EIO=4&transport=polling&t=oc1a2bx3k", 20),  # engine.io-client 6 (randomString)
        ("EIO=4&transport=polling&t=PZq3Xa_-", 20),  # yeast (Java, older JavaScript clients)
    ],
)
def test_polls_are_capped_from_the_engineio_connect_on_for_clients_that_may_be_python_engineio(
    query, packets_in_first_poll
):
    server = engineio.Server(async_mode="threading")
    seen = []
    server.on("connect", lambda sid, environ: seen.append(sid))
    install(server)
    install(server)  # built again in the same process: still one wrapper
    sock = server.sockets["sid-2"] = eio_socket_module.Socket(server, "sid-2")
    server._trigger_event("connect", "sid-2", {"QUERY_STRING": query}, run_async=False)
    assert seen == ["sid-2"]
    for i in range(20):
        sock.send(message(i))
    first = sock.poll()
    assert len(first) == packets_in_first_poll
    assert [pkt.data for pkt in first + (sock.poll() if len(first) < 20 else [])] == [f"update {i}" for i in range(20)]
