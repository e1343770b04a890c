"""Run by tests/test_fanout.py in its own process (eventlet monkey-patches the interpreter).

One real python-engineio socket, with its real websocket handler and writer greenlet, over a real
eventlet websocket on a loopback TCP connection whose buffers are small. The "emitter" sends numbered packets
through ``DirectWrites.send_packet`` (the fan-out's path) and, every 7th, through the Engine.IO
socket's own ``send`` (the path of pings and of packets queued meanwhile), while the peer reads
nothing (the hub runs between every 5 packets, as between two emits). Then the peer reads
and parses every frame. Prints one JSON line of findings.
"""

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

import engineio  # noqa: E402
from engineio import packet as eio_packet  # noqa: E402
from engineio import socket as eio_socket_module  # noqa: E402
from eventlet import websocket  # noqa: E402

from sockets import fanout  # noqa: E402
from tests.support import wait_until  # noqa: E402

PACKETS = int(sys.argv[1]) if len(sys.argv) > 1 else 400
PAD = "x" * 900  # ~1 KB frames: the 4 KB buffers fill after a few


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


def main():
    server = engineio.Server(async_mode="eventlet")
    writes = fanout.install(server)
    listener = eventlet.listen(("127.0.0.1", 0))  # accepted as eventlet's WSGI server accepts
    far = socket.create_connection(listener.getsockname())
    near, _ = listener.accept()
    near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = websocket.RFC6455WebSocket(near, {}, version=13)
    compressed = websocket.RFC6455WebSocket(near, {}, version=13, extensions={"permessage-deflate": {}})
    sock = eio_socket_module.Socket(server, "sid-1")
    server.sockets["sid-1"] = sock
    setattr(sock, fanout.ATTRIBUTE, fanout.DirectWebsocket.of(ws))
    handler = eventlet.spawn(sock._websocket_handler, ws)  # python-engineio's handler: reader + writer
    wait_until(lambda: sock.upgraded, 5, 0.001, "python-engineio's websocket handler to start")

    sent_before_peer_read = 0
    with eventlet.Timeout(10, False):
        for i in range(PACKETS):
            pkt = eio_packet.Packet(eio_packet.MESSAGE, json.dumps({"i": i, "pad": PAD}))
            if i % 7 == 6:
                sock.send(pkt)
            else:
                server.send_packet("sid-1", pkt)
            sent_before_peer_read += 1
            if i % 5 == 4:
                # Not a wait but a yield: between two emits the hub runs once (writers and
                # finishers move on), as it does between two messages of the Socket.IO queue.
                eventlet.sleep(0)
    frames = read_frames(far, PACKETS)
    numbers = [json.loads(text[1:])["i"] if text.startswith("4{") else None for _, _, text in frames]
    print(
        json.dumps(
            {
                "emitter_sent_before_peer_read": sent_before_peer_read,
                "frames": len(frames),
                "all_final_text_frames": all(opcode == 1 and fin for opcode, fin, _ in frames),
                "in_order": numbers == list(range(PACKETS)),
                "first_out_of_place": next((k for k, n in enumerate(numbers) if n != k), None),
                "direct": writes.direct,
                "queued": writes.queued,
                "partial": writes.partial,
                "compressed_websocket_is_direct": fanout.DirectWebsocket.of(compressed) is not None,
            }
        ),
        flush=True,
    )
    handler.kill()


if __name__ == "__main__":
    main()
