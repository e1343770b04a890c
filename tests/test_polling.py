"""sockets/polling.py: a long-polling response carries at most 16 packets (python-engineio's own
client drops a connection that gets more), the rest follow in order."""

import engineio
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


def test_every_socket_gets_capped_polls_from_its_engineio_connect_on():
    server = engineio.Server(async_mode="threading")
    seen = []
    server.on("connect", lambda sid, environ: seen.append(sid))
    install(server)
    install(server)  # built again in the same process: still one wrapper
    sock = server.sockets["sid-2"] = eio_socket_module.Socket(server, "sid-2")
    server._trigger_event("connect", "sid-2", {}, run_async=False)
    assert seen == ["sid-2"]
    for i in range(20):
        sock.send(message(i))
    assert len(sock.poll()) == MAX_PACKETS_PER_POLL
