"""Run by tests/test_fanout.py in its own process (eventlet monkey-patches the interpreter).

Each scenario runs one real python-engineio socket, with its real websocket handler and writer
greenlet, over a real eventlet websocket on a loopback TCP connection whose buffers are small,
and prints one JSON line of findings. ``python -m tests.fanout_child SCENARIO [N]``:

stream N
    The "emitter" sends N numbered packets through ``DirectWrites.send_packet`` (the fan-out's
    path) and, every 7th, through the Engine.IO socket's own ``send`` (the path of pings and of
    packets queued meanwhile), while the peer reads nothing (every 5 packets, as between two emits,
    a writer task with packets queued gets its turn). Then the peer reads and parses every frame.
overtake N
    N rounds of the interleaving of issue 11: a big update is written in part (the rest by a
    background task holding the send lock), the next one is queued and taken off the queue by
    python-engineio's writer, which then waits for the send lock; the peer reads slowly; the
    emitter emits again at the worst moment (the lock was just released: the writer is scheduled
    but has not run) and goes on emitting while the peer reads.
failed-finish
    The background finish of a partly written frame fails (a peer that stops reading, a socket
    timeout of 2 s) while the writer holds the next packet; the peer keeps talking (so the
    server's reader never times out), then reads everything until the end of the stream.
burst
    ``emit_in_order`` sends bursts of updates to a room of a real python-socketio server: to an
    idle writer in one ``send()``; while the connection's send lock is held, through the queue;
    every frame arrives in order.
internals
    What sockets/fanout.py relies on in python-engineio and eventlet, checked by behaviour.
"""

import eventlet

eventlet.monkey_patch()

import contextlib  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import engineio  # noqa: E402
from engineio import packet as eio_packet  # noqa: E402
from engineio import socket as eio_socket_module  # noqa: E402
from eventlet import websocket  # noqa: E402

from sockets import fanout  # noqa: E402
from tests.support import wait_until  # noqa: E402

SID = "sid-1"
PAD = "x" * 900  # ~1 KB frames: the 4 KB buffers fill after a few
BIG = "x" * 65536  # a frame larger than both buffers together: always written in part


def next_frame(buffer):
    """The first whole server frame (unmasked) in ``buffer`` as ((opcode, fin, text), rest), or None."""
    if len(buffer) < 2:
        return None
    length, offset = buffer[1] & 0x7F, 2
    if length == 126:
        length, offset = (struct.unpack("!H", buffer[2:4])[0], 4) if len(buffer) >= 4 else (None, 0)
    elif length == 127:
        length, offset = (struct.unpack("!Q", buffer[2:10])[0], 10) if len(buffer) >= 10 else (None, 0)
    if length is None or len(buffer) < offset + length:
        return None
    frame = (buffer[0] & 0x0F, bool(buffer[0] & 0x80), buffer[offset : offset + length].decode())
    return frame, buffer[offset + length :]


def read_frames(sock, count, timeout=20.0):
    """Read and parse ``count`` frames from ``sock`` (fewer if it closes or stays silent)."""
    sock.settimeout(timeout)
    buffer, frames = b"", []
    while len(frames) < count:
        parsed = next_frame(buffer)
        if parsed:
            frame, buffer = parsed
            frames.append(frame)
            continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return frames


def numbered(i, pad=PAD):
    """An Engine.IO MESSAGE packet carrying its number."""
    return eio_packet.Packet(eio_packet.MESSAGE, json.dumps({"i": i, "pad": pad}))


def number_of(text):
    return json.loads(text[1:])["i"] if text.startswith("4{") else None


def order_findings(numbers, expected):
    return {
        "frames": len(numbers),
        "numbers": numbers if numbers != expected else "in order",
        "in_order": numbers == expected,
        "first_out_of_place": next((k for k, n in enumerate(numbers) if n != k), None),
    }


def client_text_frame(text):
    """A client's (masked, with a zero mask) final text frame."""
    payload = text.encode()
    assert len(payload) < 126
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + b"\0\0\0\0" + payload


class Peer:
    """The client end: reads without yielding to the hub (the scenario decides when the hub runs)."""

    def __init__(self, sock):
        self.sock = sock
        self.raw = sock.fd  # the non-blocking socket under eventlet's GreenSocket
        self.buffer = b""
        self.closed = False

    def read(self, limit=65536):
        """Read what the kernel holds, at most ``limit`` bytes; never waits."""
        try:
            chunk = self.raw.recv(limit)
        except BlockingIOError:
            return 0
        if not chunk:
            self.closed = True
        self.buffer += chunk
        return len(chunk)

    def ended(self):
        """Read what arrived; True once the server ended the stream (nothing is read after that)."""
        if not self.closed:
            self.read()
        return self.closed

    def catch_up(self, count, timeout=10):
        """Read until ``count`` whole frames have arrived, letting the hub run between reads."""

        def arrived():
            self.read()
            return len(self.frames()) >= count

        wait_until(arrived, timeout, 0, f"{count} frames")

    def frames(self):
        """Every whole frame received so far, as (opcode, fin, text)."""
        buffer, frames = self.buffer, []
        while parsed := next_frame(buffer):
            frame, buffer = parsed
            frames.append(frame)
        return frames


def connection(server, sndbuf=4096, sid=SID):
    """A python-engineio socket upgraded to a websocket on a loopback connection with small buffers,
    its handler (reader + writer) running: (engine.io socket, eventlet websocket, client socket)."""
    listener = eventlet.listen(("127.0.0.1", 0))  # accepted as eventlet's WSGI server accepts
    far = socket.create_connection(listener.getsockname())
    near, _ = listener.accept()
    listener.close()
    near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = websocket.RFC6455WebSocket(near, {}, version=13)
    sock = eio_socket_module.Socket(server, sid)
    server.sockets[sid] = sock
    setattr(sock, fanout.ATTRIBUTE, fanout.DirectWebsocket.of(ws))
    eventlet.spawn(sock._websocket_handler, ws)  # python-engineio's handler: reader + writer
    wait_until(lambda: sock.upgraded, 5, 0, "python-engineio's websocket handler to start")
    wait_until(lambda: writer_parked(sock), 5, 0, "the websocket's writer to be in place")
    return sock, ws, far


def writer_of(sock):
    """The ``OnDemandWriter`` that writes the socket's queued packets."""
    return getattr(sock, fanout.ATTRIBUTE).writer


def writer_parked(sock):
    """No writer task runs (so none holds a packet) and nothing is queued."""
    writer = writer_of(sock)
    return writer is not None and writer.task is None and not sock.queue.qsize()


def writer_had_its_turn(sock, lock):
    """No writer task waits to run: none exists, it took everything queued, or it holds or awaits
    the send lock (only a task scheduled and not yet run has packets queued and the lock free)."""
    return writer_of(sock).task is None or not sock.queue.qsize() or lock.locked()


def writer_holds_packets(sock):
    """A writer task runs and has taken everything off the queue."""
    return writer_of(sock).task is not None and not sock.queue.qsize()


def stream(count):
    server = engineio.Server(async_mode="eventlet")
    writes = fanout.install(server)
    sock, ws, far = connection(server)
    compressed = websocket.RFC6455WebSocket(ws.socket, {}, version=13, extensions={"permessage-deflate": {}})

    sent_before_peer_read = 0
    with eventlet.Timeout(10, False):
        for i in range(count):
            # The second frame is larger than both buffers: its direct write is always partial (on a
            # loaded machine the ~1 KB frames alone did not always meet a nearly full buffer).
            pkt = numbered(i, BIG if i == 1 else PAD)
            if i % 7 == 6:
                sock.send(pkt)
            else:
                server.send_packet(SID, pkt)
            sent_before_peer_read += 1
            if i % 5 == 4:  # as between two emits: a writer task with packets queued gets its turn
                wait_until(lambda: writer_had_its_turn(sock, ws._sendlock), 10, 0, "the writer to take its turn")
    frames = read_frames(far, count)
    return {
        "emitter_sent_before_peer_read": sent_before_peer_read,
        **order_findings([number_of(text) for _, _, text in frames], list(range(count))),
        "all_final_text_frames": all(opcode == 1 and fin for opcode, fin, _ in frames),
        "direct": writes.direct,
        "queued": writes.queued,
        "partial": writes.partial,
        "compressed_websocket_is_direct": fanout.DirectWebsocket.of(compressed) is not None,
    }


def overtake(rounds, emits_after=4):
    server = engineio.Server(async_mode="eventlet")
    writes = fanout.install(server)
    sock, ws, far = connection(server)
    lock, peer = ws._sendlock, Peer(far)
    sent = []

    def emit(pad=PAD):
        sent.append(len(sent))
        server.send_packet(SID, numbered(sent[-1], pad))  # what python-socketio calls per recipient

    writer_waited_holding_a_packet = emitted_while_writer_scheduled = 0
    for _ in range(rounds):
        emit(BIG)  # written in part; the rest by a background task that holds the send lock
        emit()  # queued: the lock is held...
        # ...and the writer task takes it off the queue, then waits for the send lock.
        wait_until(lambda: writer_holds_packets(sock), 10, 0, "the writer to take the packet")
        writer_waited_holding_a_packet += lock.balance < 0
        # The slow reader: 1 KB per hub turn (tens of thousands of them), until the background
        # finish releases the lock.
        wait_until(lambda: peer.read(1024) is not None and not lock.locked(), 20, 0, "the finish to release the lock")
        # eventlet's release only scheduled the writer: the lock is free, the writer holds its
        # packet and has not run. The next emit comes now, and emits go on while the peer reads.
        emitted_while_writer_scheduled += lock.balance == 0 and writer_of(sock).task is not None
        for _ in range(emits_after):
            emit()
            # While a writer task runs, the emit was queued behind it: the writer takes it next.
            wait_until(lambda: peer.read(1024) is not None and not sock.queue.qsize(), 10, 0, "the writer to take it")
        # The peer catches up, so that the next round starts with the writer idle.
        peer.catch_up(len(sent))
        wait_until(lambda: writer_parked(sock) and not lock.locked(), 10, 0, "the writer to be idle")
    frames = peer.frames()
    return {
        **order_findings([number_of(text) for _, _, text in frames], sent),
        "all_final_text_frames": all(opcode == 1 and fin for opcode, fin, _ in frames),
        "rounds": rounds,
        "writer_waited_holding_a_packet": writer_waited_holding_a_packet,
        "emitted_while_writer_scheduled": emitted_while_writer_scheduled,
        "direct": writes.direct,
        "queued": writes.queued,
        "partial": writes.partial,
    }


def failed_finish():
    server = engineio.Server(async_mode="eventlet")
    writes = fanout.install(server)
    sock, ws, far = connection(server)
    # python-engineio set the socket's timeout to ping_interval + ping_timeout (45 s, also how long
    # its idle writer waits for a packet before it closes the connection): 2 s for the writes here.
    ws.socket.settimeout(2.0)
    lock, peer = ws._sendlock, Peer(far)
    frames = [numbered(0, BIG), numbered(1)]
    server.send_packet(SID, frames[0])  # written in part: the finish waits for a peer that stopped reading
    server.send_packet(SID, frames[1])  # queued; the writer takes it and waits for the send lock
    wait_until(lambda: not sock.queue.qsize() and lock.balance < 0, 10, 0, "the writer to wait holding the packet")
    # The peer still talks (an Engine.IO message at each poll, every 0.3 s), so the server's reader
    # never times out, while the finish waits for a peer that does not read.
    def finish_ended():
        if lock.balance >= 0 or sock.closed:  # the writer no longer waits: the finish ended
            return True
        far.sendall(client_text_frame("4still here"))  # (never to a closing socket: that resets it)
        return False

    failed_at = None
    with contextlib.suppress(AssertionError):
        failed_at = wait_until(lambda: finish_ended() and time.monotonic(), 6, 0.3, "the finish to fail")
    # Then it reads everything the server wrote: it must see the end of the stream soon.
    with contextlib.suppress(AssertionError):
        wait_until(peer.ended, 5, 0.01, "the end of the stream")
    eof_after = time.monotonic() - failed_at if failed_at and peer.closed else None
    wait_until(lambda: sock.closed, 3, 0.01, "python-engineio to close the socket") if peer.closed else None
    expected = b"".join(fanout.websocket_text_frame(pkt.encode()) for pkt in frames)
    return {
        "finish_failed": failed_at is not None,
        "peer_saw_end_of_stream": peer.closed,
        "seconds_from_failure_to_end_of_stream": eof_after,
        "received": len(peer.buffer),
        "first_frame_length": len(expected) - len(fanout.websocket_text_frame(frames[1].encode())),
        "received_is_a_prefix_of_the_frames_in_order": expected.startswith(peer.buffer),
        "first_unexpected_byte": next((k for k, (a, b) in enumerate(zip(peer.buffer, expected)) if a != b), None),
        "engineio_socket_closed": sock.closed,
        "partial": writes.partial,
        "broken": getattr(writes, "broken", None),
    }


class CountingSocket:
    """A socket that counts its ``send()`` calls (the rest is the socket's own)."""

    def __init__(self, raw):
        self.raw, self.sends = raw, 0

    def send(self, data):
        self.sends += 1
        return self.raw.send(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)


def burst():
    import socketio

    server = socketio.Server(async_mode="eventlet")
    writes = fanout.install(server.eio)
    sock, ws, far = connection(server.eio, sndbuf=65536)
    direct = getattr(sock, fanout.ATTRIBUTE)
    direct.raw = counting = CountingSocket(direct.raw)
    sid = server.manager.connect(SID, "/")
    server.manager.enter_room(sid, "/", "room")
    peer = Peer(far)

    def updates(first, count):
        return [{"seq": seq} for seq in range(first, first + count)]

    fanout.emit_in_order(server, "campaign_update", updates(1, 5), "room")
    sends_for_an_idle_writer = counting.sends
    ws._sendlock.acquire()  # busy: as while the background finish of a partly written frame runs
    fanout.emit_in_order(server, "campaign_update", updates(6, 3), "room")
    queued_while_busy = writes.queued
    ws._sendlock.release()
    wait_until(lambda: writer_parked(sock) and not ws._sendlock.locked(), 10, 0, "the writer to write the queued burst")
    fanout.emit_in_order(server, "campaign_update", updates(9, 2), "room")
    peer.catch_up(10)
    texts = [text for _, _, text in peer.frames()]
    # python-socketio's own emit to a room of two: one frame built for both.
    second, _, second_far = connection(server.eio, sndbuf=65536, sid="sid-2")
    server.manager.enter_room(server.manager.connect("sid-2", "/"), "/", "room")
    built = []
    stock_frame = fanout.websocket_text_frame
    fanout.websocket_text_frame = lambda text: built.append(text) or stock_frame(text)
    server.emit("campaign_snapshot", {"campaigns": []}, to="room")
    fanout.websocket_text_frame = stock_frame
    both = [Peer(far), Peer(second_far)]
    for each in both:
        each.catch_up(1)
    return {
        "frames_built_for_a_room_emit": len(built),
        "room_emit_received": [each.frames()[-1][2][:20] for each in both],
        "sends_for_an_idle_writer": sends_for_an_idle_writer,
        "queued_while_busy": queued_while_busy,
        "direct": writes.direct,
        "seqs": [json.loads(text[2:])[1]["seq"] if text.startswith("42[") else text for text in texts],
        "event_names": sorted({json.loads(text[2:])[0] for text in texts if text.startswith("42[")}),
    }


def internals():
    """python-engineio's websocket handler with our on-demand writer, and eventlet's queue and lock,
    behave as sockets/fanout.py assumes."""
    from eventlet import queue, semaphore

    server = engineio.Server(async_mode="eventlet")
    writes = fanout.install(server)
    sock, ws, far = connection(server)
    lock, peer = ws._sendlock, Peer(far)
    found = {
        "queue_is_eventlets": isinstance(sock.queue, queue.LightQueue),
        "send_lock_is_eventlets_semaphore": type(lock) is semaphore.Semaphore,
        "direct_websocket_recorded": isinstance(getattr(sock, fanout.ATTRIBUTE), fanout.DirectWebsocket),
        "idle_websocket_has_no_writer_task": writer_parked(sock),
    }
    lock.acquire()  # as the background finish of a partly written frame holds it
    sock.send(numbered(0))
    sock.send(numbered(1))
    wait_until(lambda: lock.balance < 0, 10, 0, "the writer to wait for the send lock")
    # It took the first packet off the queue; the second waits its turn.
    found["writer_took_a_packet_then_waits_for_the_lock"] = writer_of(sock).task is not None and sock.queue.qsize() == 1
    lock.release()
    found["release_only_schedules_the_waiting_writer"] = not lock.locked() and lock.balance == 0
    found["direct_write_refused_meanwhile"] = not writes.write(sock, (numbered(2),))
    wait_until(lambda: writer_parked(sock) and not lock.locked(), 10, 0, "the writer to write both packets")
    peer.catch_up(2)
    found["packets_written_in_order"] = [number_of(text) for _, _, text in peer.frames()] == [0, 1]
    # send_packet counts direct writes, write itself does not
    found["direct_write_when_idle"] = writes.write(sock, (numbered(2),)) and writes.direct == 0
    return found


SCENARIOS = {
    "stream": lambda n: stream(n or 400),
    "overtake": lambda n: overtake(n or 5),
    "failed-finish": lambda n: failed_finish(),
    "burst": lambda n: burst(),
    "internals": lambda n: internals(),
}


if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](int(sys.argv[2]) if len(sys.argv) > 2 else None)), flush=True)
