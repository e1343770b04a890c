"""What sockets/ (and worker/emitter.py) rely on inside eventlet, python-engineio and python-socketio.

Each check names the library, what of it is relied on and who relies on it; a failure says which
library, at which installed version, changed it. What needs eventlet's monkey-patching (the writer
greenlet, the send lock, eventlet's WSGI server over a real connection) runs in a child process
(tests/fanout_child.py, tests/http_server_child.py); the rest runs here, on the real classes.
docs/architecture.md, "Upgrading eventlet, python-engineio, python-socketio", lists them all.
"""

import base64
import contextlib
import http.server
import inspect
import io
import json
import os
import re
import socket
import socketserver
import time
from dataclasses import dataclass
from importlib.metadata import version

import pytest

from sockets import fanout
from sockets.compression import without_websocket_compression
from sockets.encoding import PacketJSON, PreEncoded
from tests import support

EVENTLET, ENGINEIO, SOCKETIO = "eventlet", "python-engineio", "python-socketio"


@dataclass(frozen=True)
class Internal:
    """One thing a module of ours relies on inside a library."""

    library: str
    what: str
    used_by: str

    def failure(self, problem):
        """The message of a failed check: the library and its version, what changed, who relies on it."""
        return (
            f"{self.library} {version(self.library)} changed what {self.used_by} relies on: {self.what} "
            f"({problem}). See docs/architecture.md, 'Upgrading eventlet, python-engineio, python-socketio'."
        )


CHECKS = []


def relied_on(library, what, used_by):
    """Register a check of ``library``: it raises (an assertion or anything else) when ``what`` no longer holds."""

    def register(check):
        CHECKS.append((Internal(library, what, used_by), check))
        return check

    return register


def engineio_server(**options):
    import engineio

    return engineio.Server(async_mode="threading", **options)


def engineio_socket(server, sid="sid-1"):
    from engineio import socket as engineio_socket_module

    eio_socket = engineio_socket_module.Socket(server, sid)
    server.sockets[sid] = eio_socket
    return eio_socket


@contextlib.contextmanager
def eventlet_websocket(**options):
    """An eventlet RFC 6455 websocket over a GreenSocket on one end of a socket pair (of the OS socket
    class eventlet wraps: without monkey-patching, ``patcher.original`` is another copy of ``socket``)."""
    from eventlet import patcher
    from eventlet.greenio import GreenSocket
    from eventlet.websocket import RFC6455WebSocket

    near, far = patcher.original("socket").socketpair()
    with near, far:
        yield RFC6455WebSocket(GreenSocket(near), {}, version=13, **options)


# eventlet ------------------------------------------------------------------------------


@relied_on(
    EVENTLET,
    "websocket.RFC6455WebSocket has `_sendlock` (a semaphore.Semaphore), `socket` (a greenio.GreenSocket whose "
    "`fd` is the non-blocking OS socket, with `sendall`) and `extensions` (empty without compression)",
    "sockets/fanout.py DirectWebsocket",
)
def check_websocket_parts():
    from eventlet import semaphore

    with eventlet_websocket() as ws:
        assert type(ws._sendlock) is semaphore.Semaphore, type(ws._sendlock)
        assert ws.socket.fd.gettimeout() == 0.0 and callable(ws.socket.sendall)
        assert not ws.extensions
        direct = fanout.DirectWebsocket.of(ws)
        assert direct is not None and direct.lock is ws._sendlock and direct.raw is ws.socket.fd
    with eventlet_websocket(extensions={"permessage-deflate": {}}) as compressed:
        assert fanout.DirectWebsocket.of(compressed) is None, "a compressed websocket is not told apart"


@relied_on(
    EVENTLET,
    "queue.LightQueue.getting() (greenlets waiting in get) and semaphore.Semaphore.balance (free slots minus "
    "waiters), acquire(blocking=False), locked()",
    "sockets/fanout.py DirectWrites.write",
)
def check_queue_and_lock_api():
    from eventlet import queue, semaphore

    assert queue.LightQueue().getting() == 0
    lock = semaphore.Semaphore()
    assert lock.balance == 1 and lock.acquire(blocking=False) and lock.locked() and lock.balance == 0
    assert not lock.acquire(blocking=False)
    lock.release()


@relied_on(
    EVENTLET,
    "websocket.WebSocketWSGI takes the client's compression offer from environ['HTTP_SEC_WEBSOCKET_EXTENSIONS'] only",
    "sockets/compression.py without_websocket_compression",
)
def check_compression_offer_comes_from_the_environ():
    from eventlet.websocket import WebSocketWSGI

    def handshake(wsgi_app):
        near, far = socket.socketpair()
        opened = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/socket.io/",
            "HTTP_HOST": "localhost",
            "HTTP_UPGRADE": "websocket",
            "HTTP_CONNECTION": "Upgrade",
            "HTTP_SEC_WEBSOCKET_VERSION": "13",
            "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode(),
            "HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate; client_max_window_bits",
            "eventlet.input": type("Input", (), {"get_socket": lambda self: near})(),
        }
        with near, far:
            wsgi_app(WebSocketWSGI(opened.append))(environ, lambda *args: None)
            far.settimeout(5)
            return opened[0].extensions, far.recv(4096)

    extensions, answer = handshake(lambda app: app)
    assert "permessage-deflate" in extensions and b"permessage-deflate" in answer, "the offer is not negotiated"
    extensions, answer = handshake(without_websocket_compression)
    assert not extensions and b"permessage-deflate" not in answer, answer


@relied_on(
    EVENTLET,
    "wsgi.server(..., protocol=...); HttpProtocol.setup() reads the accepted socket from self.request and sets "
    "self.connection, self.rfile and self.wfile (ours: ConnectionReader / ConnectionWriter); the server reads "
    "through rfile.readline / read / readlines and rfile.closed, writes through wfile.write / writelines / flush; "
    "handle_one_request() calls self.parse_request(); GreenSocket forwards _io_refs to the OS socket, whose "
    "close() waits for _decref_socketios()",
    "sockets/http_server.py http_protocol, serve",
)
def check_wsgi_server_takes_a_protocol():
    from eventlet import wsgi

    assert "protocol" in inspect.signature(wsgi.server).parameters
    setup = inspect.getsource(wsgi.HttpProtocol.setup)
    assert all(name in setup for name in ("self.request", "self.connection", "self.rfile", "self.wfile")), setup
    # ConnectionReader holds the socket open as makefile's file does.
    from eventlet.greenio import GreenSocket

    assert isinstance(GreenSocket.__dict__.get("_io_refs"), property), "GreenSocket._io_refs is not forwarded"
    assert "_decref_socketios" in vars(socket.socket) and "self._io_refs <= 0" in inspect.getsource(socket.socket.close)
    readers = (wsgi, http.server.BaseHTTPRequestHandler, socketserver.StreamRequestHandler)
    used = set(re.findall(r"\b[rw]file\.(\w+)", "".join(inspect.getsource(code) for code in readers)))
    assert used <= {"readline", "read", "readlines", "closed", "write", "writelines", "flush", "close"}, used
    assert "self.parse_request()" in inspect.getsource(wsgi.HttpProtocol.handle_one_request)


@relied_on(
    EVENTLET,
    "HttpProtocol.handle_one_request() sets self.environ = self.get_environ() and self.application, then calls "
    "self.handle_one_response() (both ours for a lean request); Input(rfile, length, sock) with position, "
    "content_length and discard(); wsgi.STATE_IDLE, addr_to_host_port, format_date_time, ChunkReadError; the "
    "server's keepalive, debug, log, log_output, address, get_environ() and capitalize_response_headers",
    "sockets/lean_requests.py, sockets/http_server.py http_protocol",
)
def check_lean_requests_parts():
    from eventlet import wsgi

    one_request = inspect.getsource(wsgi.HttpProtocol.handle_one_request)
    for needed in ("self.environ = self.get_environ()", "self.application = self.server.app",
                   "self.handle_one_response()"):
        assert needed in one_request, needed
    assert list(inspect.signature(wsgi.Input.__init__).parameters)[1:4] == ["rfile", "content_length", "sock"]
    body = wsgi.Input(io.BytesIO(b"abc"), "3", None)
    assert (body.position, body.content_length) == (0, 3) and callable(body.discard)
    assert wsgi.STATE_IDLE == "idle" and wsgi.addr_to_host_port(("h", 1)) == ("h", 1)
    assert wsgi.format_date_time(0) == "Thu, 01 Jan 1970 00:00:00 GMT" and issubclass(wsgi.ChunkReadError, ValueError)
    server = wsgi.Server(None, ("127.0.0.1", 1), None, log_output=False)
    for name in ("keepalive", "debug", "log", "log_output", "address", "capitalize_response_headers"):
        assert hasattr(server, name), name
    assert server.get_environ()["wsgi.url_scheme"] == "http"


# python-engineio -----------------------------------------------------------------------


@relied_on(
    ENGINEIO,
    "the eventlet driver's dict (`engineio.async_drivers.eventlet._async`) has 'queue' (a subclass of eventlet's "
    "LightQueue) and 'websocket'; a Server keeps it in `_async`, makes each socket's queue from it",
    "sockets/fanout.py install",
)
def check_eventlet_driver():
    from engineio.async_drivers.eventlet import _async
    from eventlet.queue import LightQueue

    assert issubclass(_async["queue"], LightQueue) and "websocket" in _async
    server = engineio_server()
    server._async = dict(server._async, queue=LightQueue)
    assert isinstance(engineio_socket(server).queue, LightQueue), "the socket's queue is not made from `_async`"


@relied_on(
    ENGINEIO,
    "Socket._upgrade_websocket builds `server._async['websocket'](socket._websocket_handler, server)` (a bound "
    "method of the Engine.IO socket)",
    "sockets/fanout.py recording_websocket_class",
)
def check_websocket_class_gets_the_bound_handler():
    from engineio import socket as engineio_socket_module

    made = []

    class Recording:
        def __init__(self, handler, server):
            made.append((handler, server))

        def __call__(self, environ, start_response):
            return []

    server = engineio_server()
    server._async = dict(server._async, websocket=Recording)
    eio_socket = engineio_socket(server)
    eio_socket._upgrade_websocket({}, lambda *args: None)
    [(handler, given)] = made
    assert given is server and handler.__self__ is eio_socket, made
    assert handler.__func__ is engineio_socket_module.Socket._websocket_handler


@relied_on(
    ENGINEIO,
    "Socket has `upgraded`, `upgrading`, `closing`, `closed` (False when made), `queue`, `sid`; Server has "
    "`sockets` (sid -> Socket) and `send_packet(sid, pkt)`",
    "sockets/fanout.py DirectWrites, sockets/sweeper.py sweep, sockets/handlers.py",
)
def check_socket_state():
    server = engineio_server()
    eio_socket = engineio_socket(server, "abc")
    flags = {name: getattr(eio_socket, name) for name in ("upgraded", "upgrading", "closing", "closed")}
    assert flags == dict.fromkeys(flags, False), flags
    assert eio_socket.sid == "abc" and server.sockets == {"abc": eio_socket} and eio_socket.queue.qsize() == 0
    assert list(inspect.signature(server.send_packet).parameters) == ["sid", "pkt"]


@relied_on(
    ENGINEIO,
    "Socket.check_ping_timeout() is True for a live client; for one whose last ping is older than ping_timeout "
    "it closes the socket and returns False",
    "sockets/sweeper.py sweep, sockets/fanout.py DirectWrites.write",
)
def check_ping_timeout():
    server = engineio_server(ping_timeout=5)
    live, gone = engineio_socket(server, "live"), engineio_socket(server, "gone")
    live.last_ping = time.time()
    gone.last_ping = time.time() - 6
    assert live.check_ping_timeout() is True and not live.closing
    assert gone.check_ping_timeout() is False and gone.closed


@relied_on(ENGINEIO, "engineio.json.loads", "sockets/encoding.py PacketJSON")
def check_engineio_json():
    from engineio import json as engineio_json

    assert engineio_json.loads('{"a": [1]}') == {"a": [1]}


@relied_on(
    ENGINEIO,
    "Socket.schedule_ping() clears `last_ping` and starts exactly server.start_background_task(socket._send_ping); "
    "_send_ping() sleeps ping_interval, then sets `last_ping` and sends a PING unless the socket is closing",
    "sockets/pings.py PingSchedule",
)
def check_ping_task():
    from engineio import packet as eio_packet
    from engineio import socket as engineio_socket_module

    started, slept = [], []
    server = engineio_server(ping_interval=7)
    server.start_background_task = lambda target, *args, **kwargs: started.append((target, args, kwargs))
    server.sleep = slept.append
    eio_socket = engineio_socket(server)
    eio_socket.last_ping = time.time()
    eio_socket.schedule_ping()
    [(target, args, kwargs)] = started
    assert eio_socket.last_ping is None and not args and not kwargs
    assert target.__self__ is eio_socket and target.__func__ is engineio_socket_module.Socket._send_ping
    target()
    assert slept == [7] and eio_socket.last_ping is not None
    assert eio_socket.queue.get_nowait().packet_type == eio_packet.PING


@relied_on(
    ENGINEIO,
    "a polling GET takes its packets through socket.poll() (an instance attribute wins), and the Engine.IO "
    "`connect` handler (server.handlers['connect']) runs once the socket is in server.sockets, before any poll",
    "sockets/polling.py cap_polls, install",
)
def check_polls_go_through_socket_poll():
    from engineio import packet as eio_packet

    server = engineio_server()
    registered = []
    server.on("connect", lambda sid, environ: registered.append(sid in server.sockets))
    opened = server.handle_request(
        {"REQUEST_METHOD": "GET", "QUERY_STRING": "EIO=4&transport=polling", "wsgi.url_scheme": "http"},
        lambda status, headers: None,
    )
    assert registered == [True], "the connect handler ran before the socket was registered"
    sid = json.loads(b"".join(opened)[1:])["sid"]
    server.sockets[sid].poll = lambda: [eio_packet.Packet(eio_packet.MESSAGE, "from our poll")]
    answer = server.handle_request(
        {"REQUEST_METHOD": "GET", "QUERY_STRING": f"EIO=4&transport=polling&sid={sid}", "wsgi.url_scheme": "http"},
        lambda status, headers: None,
    )
    assert b"from our poll" in b"".join(answer)


# python-socketio -----------------------------------------------------------------------


@relied_on(
    SOCKETIO,
    "Server(json=...) sets `packet_class.json`; Packet.encode() calls its dumps() once with [event, *args], and "
    "the binary check stops at an argument that is neither list nor dict",
    "sockets/encoding.py PacketJSON, PreEncoded",
)
def check_packet_json(monkeypatch):
    import socketio
    from socketio import packet

    monkeypatch.setattr(packet.Packet, "json", packet.Packet.json)  # Server(json=) sets it for every server
    assert socketio.Server(async_mode="threading", json=PacketJSON).packet_class.json is PacketJSON
    payload = {"seq": 1, "campaigns": []}
    encoded = packet.Packet(packet.EVENT, data=["campaign_snapshot", PreEncoded(payload)]).encode()
    assert encoded == "2" + json.dumps(["campaign_snapshot", payload], separators=(",", ":")), encoded


def socketio_server_with_a_room(*eio_sids):
    """A python-socketio server whose clients ``eio_sids`` are in room tenant:acme, and the list of
    what its Engine.IO server's ``send_packet`` is given."""
    import socketio

    server = socketio.Server(async_mode="threading")
    sent = []
    server.eio.send_packet = lambda eio_sid, pkt: sent.append((eio_sid, pkt))
    server.manager.initialize()
    for eio_sid in eio_sids:
        server.manager.enter_room(server.manager.connect(eio_sid, "/"), "/", "tenant:acme")
    return server, sent


@relied_on(
    SOCKETIO,
    "an emit to a room calls the Engine.IO server's send_packet(eio_sid, pkt) once per recipient, with the same "
    "packet object for all",
    "sockets/fanout.py DirectWrites (the frame built once per packet)",
)
def check_one_packet_per_emit():
    server, sent = socketio_server_with_a_room("e1", "e2")
    server.emit("campaign_update", {"seq": 1}, to="tenant:acme")
    assert sorted(eio_sid for eio_sid, _ in sent) == ["e1", "e2"], sent
    assert sent[0][1] is sent[1][1], "one packet object per recipient"
    assert server.manager.eio_sid_from_sid(server.manager.sid_from_eio_sid("e1", "/"), "/") == "e1"


@relied_on(
    SOCKETIO,
    "Server.packet_class(EVENT, namespace=, data=).encode(); manager.get_participants(namespace, room) yields "
    "(sid, eio_sid); Server._send_eio_packet(eio_sid, pkt) hands the packet to eio.send_packet",
    "sockets/fanout.py emit_in_order",
)
def check_room_participants():
    from engineio import packet as eio_packet
    from socketio import packet as sio_packet

    server, sent = socketio_server_with_a_room("e1")
    sid = server.manager.sid_from_eio_sid("e1", "/")
    assert list(server.manager.get_participants("/", "tenant:acme")) == [(sid, "e1")]
    text = server.packet_class(sio_packet.EVENT, namespace="/", data=["campaign_update", {"seq": 1}]).encode()
    assert text == '2["campaign_update",{"seq":1}]', text
    pkt = eio_packet.Packet(eio_packet.MESSAGE, text)
    server._send_eio_packet("e1", pkt)
    assert sent == [("e1", pkt)]


@relied_on(
    SOCKETIO,
    "BaseManager changes `self.rooms` only in basic_enter_room / basic_leave_room (connect and basic_close_room go "
    "through them); basic_disconnect leaves the client's rooms, then does what RoomIndex.disconnect_rest repeats; "
    "the pending_connect / pending_disconnect lists are stored by item assignment, used through in, len, append, "
    "remove",
    "sockets/rooms.py RoomIndex",
)
def check_manager_rooms():
    import ast
    import textwrap

    from socketio import base_manager, manager, pubsub_manager

    from sockets.rooms import RoomIndex

    def changes_rooms(node):
        """Whether an assignment or a del writes into self.rooms (self.rooms[...] = / del self.rooms[...])."""
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else []
        return any("self.rooms" in ast.unparse(target) for target in targets)

    for module in (base_manager, manager, pubsub_manager):
        for cls in (node for node in ast.parse(inspect.getsource(module)).body if isinstance(node, ast.ClassDef)):
            for function in (node for node in cls.body if isinstance(node, ast.FunctionDef)):
                writes = [node for node in ast.walk(function) if changes_rooms(node)]
                allowed = function.name in ("__init__", "basic_enter_room", "basic_leave_room")
                assert allowed or not writes, f"{module.__name__}.{cls.name}.{function.name} writes self.rooms"

    def statements(function):
        body = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0].body
        return [ast.unparse(node) for node in body if not isinstance(node, ast.Expr)]  # without the docstring

    # The pending lists (RoomIndex makes them PendingList): stored by item assignment, used through
    # in / len / append / remove only.
    sources = "".join(inspect.getsource(module) for module in (base_manager, manager, pubsub_manager))
    methods = set(re.findall(r"self\.pending_(?:dis)?connect\[\w+\]\.(\w+)", sources))
    assert methods <= {"append", "remove"}, methods
    stores = set(re.findall(r"self\.pending_(?:dis)?connect(\[\w+\])? = (.+)", sources))
    assert stores <= {("", "{}"), ("[namespace]", "[]")}, stores

    stock = statements(base_manager.BaseManager.basic_disconnect)
    rest = statements(RoomIndex.disconnect_rest)
    assert stock[-len(rest) :] == rest, "basic_disconnect's end differs from RoomIndex.disconnect_rest"


@relied_on(
    SOCKETIO,
    "Server._handle_connect runs the connect handler, then (when it accepts) sends the CONNECT packet, then calls "
    "manager.connect(sid, namespace); a refused connect gets CONNECT_ERROR and never reaches manager.connect",
    "sockets/after_connect.py AfterConnect (the snapshot after CONNECT)",
)
def check_connect_packet_before_manager_connect():
    import socketio

    from sockets.rooms import IndexedManager

    server = socketio.Server(async_mode="threading", client_manager=IndexedManager())
    order = []
    server.eio.send_packet = lambda eio_sid, pkt: order.append(("packet", pkt.data[0]))
    server.manager.initialize()

    @server.on("connect")
    def connect(sid, environ, auth):
        order.append(("handler", auth["name"]))
        server.manager.after_connect(sid, "/", lambda: order.append(("after_connect", auth["name"])))
        return auth["name"] != "refused"

    for name in ("accepted", "refused"):
        server._handle_eio_connect(name, {})
        server._handle_eio_message(name, "0" + json.dumps({"name": name}))
    assert order == [
        ("handler", "accepted"),
        ("packet", "0"),
        ("after_connect", "accepted"),
        ("handler", "refused"),
        ("packet", "4"),
    ], order
    assert server.manager.after_connect_callbacks == {}, "a refused client's callback is dropped"


@relied_on(
    SOCKETIO,
    "Server._handle_eio_message decodes and dispatches in the caller: a message that is not JSON or of an unknown "
    "type raises ValueError, an event without a name (42[], 42{}, 42 5) IndexError, KeyError or TypeError, there",
    "sockets/handlers.py refuse_malformed_packets",
)
def check_malformed_packets_raise_in_the_caller():
    import socketio

    server = socketio.Server(async_mode="threading")
    server.manager.initialize()
    server._handle_eio_connect("e1", {})
    server._handle_eio_message("e1", "0")
    for message, raised in [("2garbage", ValueError), ("\x00", ValueError), ("9", ValueError),
                            ("2[]", IndexError), ('2{"a":1}', KeyError), ("25", TypeError)]:
        with pytest.raises(raised):
            server._handle_eio_message("e1", message)


class StopListening(BaseException):
    """Ends a listener loop (python-socketio catches Exception only)."""


@relied_on(
    SOCKETIO,
    "KombuManager._listen() calls _queue() for every (re)connect of the listener",
    "sockets/stream.py UpdateStreamManager._queue",
)
def check_listener_names_a_queue_per_connect(monkeypatch):
    import socketio
    from socketio import kombu_manager

    class Counting(socketio.KombuManager):
        queues = connects = 0
        listening = False

        def _queue(self):
            self.queues += 1
            return super()._queue()

        def _connection(self):
            if not self.listening:  # the publisher's connection, made at once
                return super()._connection()
            self.connects += 1
            if self.connects == 3:
                raise StopListening
            raise ConnectionError("the broker is away")

    monkeypatch.setattr(kombu_manager.time, "sleep", lambda seconds: None)
    manager = Counting("memory://", write_only=True)
    manager.listening = True
    with pytest.raises(StopListening):
        next(manager._listen())
    assert manager.queues == manager.connects == 3, (manager.queues, manager.connects)


@relied_on(
    SOCKETIO,
    "the listener hands another host's messages to _handle_emit / _handle_disconnect / _handle_enter_room / "
    "_handle_leave_room / _handle_close_room by their 'method'; an emit has 'event', 'data' (the arguments as a "
    "list), 'room', 'namespace'; KombuManager(url, channel=, logger=)",
    "sockets/stream.py UpdateStreamManager",
)
def check_listener_dispatch():
    import socketio

    handled = []
    methods = ("emit", "disconnect", "enter_room", "leave_room", "close_room")

    class Recording(socketio.KombuManager):
        def _listen(self):
            yield from self.messages

    for method in methods:
        setattr(Recording, f"_handle_{method}", lambda self, message, method=method: handled.append((method, message)))
    published = []
    emitter = Recording("memory://", channel="flask-socketio", write_only=True, logger=None)
    emitter._publish = published.append
    emitter.emit("campaign_update", {"seq": 1}, room="tenant:acme")
    message = published[0]
    assert (message["event"], message["data"], message["room"], message["namespace"]) == (
        "campaign_update",
        [{"seq": 1}],
        "tenant:acme",
        "/",
    ), message
    listener = Recording("memory://", channel="flask-socketio", write_only=True)
    listener.server = socketio.Server(async_mode="threading")
    listener.messages = [message] + [{"method": method, "host_id": "another"} for method in methods[1:]]
    handled.clear()
    listener._thread()
    assert [method for method, _ in handled] == list(methods), handled


@relied_on(
    SOCKETIO,
    "KombuManager has `publisher_connection`, `_exchange()`, `_producer_publish(connection)`, `_publish(data)` "
    "and `json`",
    "worker/emitter.py",
)
def check_publisher_parts():
    import socketio

    manager = socketio.KombuManager("memory://", write_only=True)
    assert manager.publisher_connection is not None and manager._exchange().type == "fanout"
    assert list(inspect.signature(manager._producer_publish).parameters) == ["connection"]
    assert list(inspect.signature(manager._publish).parameters) == ["data"]
    assert manager.json.dumps({"a": 1})


# the checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(("internal", "check"), CHECKS, ids=[check.__name__ for _, check in CHECKS])
def test_what_we_rely_on_still_holds(internal, check, request):
    arguments = {name: request.getfixturevalue(name) for name in inspect.signature(check).parameters}
    try:
        check(**arguments)
    except Exception as exc:  # noqa: BLE001 - whatever broke, say which library changed it
        pytest.fail(internal.failure(f"{type(exc).__name__}: {exc}"), pytrace=True)


def failures(found, meanings):
    """The failure message of every finding that is not True."""
    return [meanings[key].failure(f"{key}: {value}") for key, value in found.items() if value is not True]


WRITER_AND_LOCK = {
    "queue_is_eventlets": Internal(ENGINEIO, "an Engine.IO socket's queue is eventlet's", "sockets/fanout.py"),
    "send_lock_is_eventlets_semaphore": Internal(
        EVENTLET, "RFC6455WebSocket._sendlock is a semaphore.Semaphore", "sockets/fanout.py DirectWebsocket"
    ),
    "direct_websocket_recorded": Internal(
        EVENTLET, "a server-side RFC6455WebSocket over a GreenSocket", "sockets/fanout.py DirectWebsocket.of"
    ),
    "idle_websocket_has_no_writer_task": Internal(
        ENGINEIO,
        "Socket._websocket_handler starts its writer (a closure over self and ws named "
        "Socket._websocket_handler.<locals>.writer) with server.start_background_task, after the upgrade",
        "sockets/fanout.py writer_of, install",
    ),
    "writer_took_a_packet_then_waits_for_the_lock": Internal(
        ENGINEIO,
        "a queued packet starts a writer task, which takes a packet off the queue, then waits for the send lock",
        "sockets/fanout.py write (frame order)",
    ),
    "release_only_schedules_the_waiting_writer": Internal(
        EVENTLET, "Semaphore.release() schedules its waiter (balance 0, not locked)", "sockets/fanout.py write"
    ),
    "direct_write_refused_meanwhile": Internal(
        EVENTLET, "Semaphore.balance while the writer task holds packets", "sockets/fanout.py write"
    ),
    "packets_written_in_order": Internal(
        ENGINEIO, "the writer task writes the queued packets in order, then ends", "sockets/fanout.py write"
    ),
    "direct_write_when_idle": Internal(
        EVENTLET, "a non-blocking send() on GreenSocket.fd of an idle websocket", "sockets/fanout.py write"
    ),
}


def test_the_websocket_writer_and_its_lock_behave_as_direct_writes_assume():
    """A real python-engineio socket, its writer greenlet and eventlet's websocket on loopback
    (tests/fanout_child.py internals). Meanwhile, DIRECT_WEBSOCKET_WRITES=0 turns direct writes off."""
    found = support.child_findings("tests.fanout_child", "internals")
    assert set(found) == set(WRITER_AND_LOCK), found
    assert not failures(found, WRITER_AND_LOCK), "\n".join(failures(found, WRITER_AND_LOCK))


HTTP_PROTOCOL = {
    "nodelay_on_every_request": Internal(
        EVENTLET,
        "wsgi.server(protocol=...) and HttpProtocol.setup() with the accepted socket in self.request",
        "sockets/http_server.py http_protocol",
    ),
    "bodies_whole": Internal(EVENTLET, "wsgi.server with our protocol serves whole bodies", "sockets/http_server.py"),
    "idle_files_hold_nothing": Internal(
        EVENTLET,
        "HttpProtocol reads and writes through self.rfile / self.wfile",
        "sockets/http_server.py http_protocol",
    ),
    "eventlet_gets_the_protocol": Internal(
        EVENTLET, "wsgi.HttpProtocol (the base of ours)", "sockets/http_server.py server_options"
    ),
    "other_modes_unchanged": Internal(EVENTLET, "nothing (our own switch)", "sockets/http_server.py server_options"),
}


def test_every_accepted_connection_has_nagle_off_and_lean_files():
    """eventlet's WSGI server on loopback with our protocol (tests/http_server_child.py nodelay):
    keep-alive requests whose responses are over eventlet's 16 KB write buffer."""
    found = support.child_findings("tests.http_server_child", "nodelay")
    assert set(found) == set(HTTP_PROTOCOL), found
    assert not failures(found, HTTP_PROTOCOL), "\n".join(failures(found, HTTP_PROTOCOL))


PARSE_REQUEST = Internal(
    EVENTLET,
    "HttpProtocol reads a request through parse_request() (command, path, request_version, headers, "
    "close_connection), as BaseHTTPRequestHandler does",
    "sockets/http_server.py http_protocol parse_request",
)


def test_our_protocol_sees_requests_as_eventlets_own_does():
    """Real requests, Engine.IO's and others, through eventlet's WSGI server with each protocol
    (tests/http_server_child.py parsed-alike)."""
    found = support.child_findings("tests.http_server_child", "parsed-alike")
    alike = all(
        app["seen"] >= found["requests"] - 1 and app["environs_equal"] and app["answers_equal"]
        for app in found["apps"].values()
    )
    # Every Engine.IO request that can takes the lean way (the failing app ends its connection
    # before the second of two pipelined requests).
    assert found["apps"]["plain"]["lean_answers"] == found["lean_requests"], found
    assert min(app["lean_answers"] for app in found["apps"].values()) >= found["lean_requests"] - 1, found
    assert alike, PARSE_REQUEST.failure(found)
