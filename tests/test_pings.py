"""sockets/pings.py: one task sends every socket's Engine.IO pings, with no greenlet per socket,
and real clients still get their heartbeat."""

import json
import time

import engineio
import requests
from engineio import packet as eio_packet
from engineio import socket as eio_socket_module

from sockets.pings import PingSchedule


class CountingServer(engineio.Server):
    """An Engine.IO server that counts the background tasks it really starts."""

    started = 0

    def start_background_task(self, target, *args, **kwargs):
        self.started += 1
        return None


def scheduled_server():
    server = CountingServer(async_mode="threading", ping_interval=25)
    schedule = PingSchedule(server, tick=0.5)
    server.start_background_task = schedule.start_background_task
    return server, schedule


def queued(eio_socket):
    packets = []
    while eio_socket.queue.qsize():
        packets.append(eio_socket.queue.get_nowait())
    return packets


def test_python_engineio_pings_are_taken_over_without_a_task():
    """Fails when a python-engineio upgrade changes how ``schedule_ping`` starts its ping task."""
    server, schedule = scheduled_server()
    sock = eio_socket_module.Socket(server, "sid-1")
    sock.schedule_ping()
    assert CountingServer.started == 0 and server.started == 0, "python-engineio started its own ping task"
    assert sock.last_ping is None, "python-engineio's schedule_ping no longer clears last_ping"
    assert sum(len(due) for due in schedule.due.values()) == 1
    # Nothing before the interval is over; then one PING, and the pong check armed.
    assert schedule.send_due(time.monotonic() + 24) == 0 and queued(sock) == []
    assert schedule.send_due(time.monotonic() + 26) == 1
    assert [packet.packet_type for packet in queued(sock)] == [eio_packet.PING]
    assert sock.last_ping is not None and not schedule.due


def test_closed_sockets_get_no_ping_and_other_tasks_still_start():
    server, schedule = scheduled_server()
    sock = eio_socket_module.Socket(server, "sid-2")
    sock.schedule_ping()
    sock.closed = True
    assert schedule.send_due(time.monotonic() + 60) == 0
    schedule.start_background_task(lambda: None)
    assert server.started == 1


def test_a_long_polling_client_gets_its_pings(stack, tenant):
    """A real server: a client that answers every PING stays connected, ping after ping."""
    server = stack.start_server(PING_INTERVAL="1", PING_TIMEOUT="5")
    try:
        base = f"{server.url}/socket.io/?EIO=4&transport=polling"
        http = requests.Session()
        opened = json.loads(http.get(base, timeout=10).text[1:])
        sid = opened["sid"]
        assert opened["pingInterval"] == 1000
        http.post(f"{base}&sid={sid}", data="40" + json.dumps({"token": stack.token(tenant)}), timeout=10)
        pings = 0
        deadline = time.monotonic() + 20
        while pings < 3 and time.monotonic() < deadline:
            for packet in http.get(f"{base}&sid={sid}", timeout=10).text.split("\x1e"):
                if packet == "2":
                    pings += 1
                    assert http.post(f"{base}&sid={sid}", data="3", timeout=10).text == "OK"
        assert pings == 3
        assert "one task sends every socket's pings" in server.log()
    finally:
        server.stop()
        stack.servers.remove(server)
