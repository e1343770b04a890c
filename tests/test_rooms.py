"""Rooms indexed by client (sockets/rooms.py): the same rooms as python-socketio's own manager,
and a disconnect that never walks the other clients' rooms."""

import random

import pytest
import socketio

from sockets.rooms import IndexedManager


class Ids:
    """What a manager needs of its server: ``eio.generate_id()`` and a packet class."""

    packet_class = socketio.packet.Packet

    def __init__(self):
        self.eio, self.count = self, 0

    def generate_id(self):
        self.count += 1
        return f"sid-{self.count}"


def manager_of(cls):
    manager = cls()
    manager.set_server(Ids())
    manager.initialize()
    return manager


def rooms_of(manager):
    """Every room of every namespace and who is in it, as plain data."""
    return {ns: {room: dict(members) for room, members in rooms.items()} for ns, rooms in manager.rooms.items()}


def pending_of(manager):
    """The clients between connect and its answer, and between disconnect and its end, in order."""
    return [{ns: list(sids) for ns, sids in pending.items()} for pending in (manager.pending_connect,
                                                                           manager.pending_disconnect)]


@pytest.mark.parametrize("seed", range(5))
def test_the_index_keeps_the_rooms_python_socketio_keeps(seed):
    """The same random connects (some left waiting for their handler's answer), room changes,
    closes and disconnects on both managers leave the same rooms and the same pending clients,
    in the same order, and each client is reported in the same rooms (python-socketio lists them
    in the order the rooms were made, RoomIndex in the order the client entered them)."""
    rng = random.Random(seed)
    ours, stock = manager_of(IndexedManager), manager_of(socketio.Manager)
    clients, waiting = [], []  # (namespace, sid): connected; between pre_connect and connect
    actions = ["connect", "connect", "pre_connect", "answer", "enter", "enter", "leave", "close", "disconnect"]
    for step in range(600):
        action = rng.choice(actions)
        if action in ("connect", "pre_connect") or not clients:
            namespace, eio_sid = rng.choice(["/", "/admin"]), f"eio-{step}"
            call = "pre_connect" if action == "pre_connect" else "connect"
            sid = getattr(ours, call)(eio_sid, namespace)
            assert getattr(stock, call)(eio_sid, namespace) == sid
            (waiting if call == "pre_connect" else clients).append((namespace, sid))
        elif action == "answer":
            if waiting:
                namespace, sid = waiting.pop(rng.randrange(len(waiting)))
                for manager in (ours, stock):
                    manager.connect(sid, namespace)
                clients.append((namespace, sid))
        elif action == "disconnect":
            namespace, sid = clients.pop(rng.randrange(len(clients)))
            for manager in (ours, stock):
                manager.pre_disconnect(sid, namespace)
                manager.disconnect(sid, namespace)
        else:
            namespace, sid = rng.choice(clients)
            room = rng.choice(["tenant:a", "tenant:b", "ops"])
            for manager in (ours, stock):
                {"enter": manager.enter_room, "leave": manager.leave_room}.get(action, manager.close_room)(
                    *((sid, namespace, room) if action != "close" else (room, namespace)))
        assert rooms_of(ours) == rooms_of(stock), (step, action)
        assert pending_of(ours) == pending_of(stock), (step, action)
        for namespace, sid in clients + waiting:
            assert ours.is_connected(sid, namespace) == stock.is_connected(sid, namespace)
    for namespace, sid in clients + waiting:
        assert sorted(ours.get_rooms(sid, namespace)) == sorted(stock.get_rooms(sid, namespace))
    assert set(ours.rooms_of) == set(clients + waiting)
    assert all(type(sids).__name__ == "PendingList" for sids in ours.pending_connect.values())


class Unwalkable(dict):
    """A namespace's rooms that refuse to be walked or copied whole."""

    def _walked(self, *args):
        raise AssertionError("a disconnect walked every room of the namespace")

    copy = items = keys = values = __iter__ = _walked


def test_a_disconnect_never_walks_the_other_clients_rooms():
    """With 5,000 clients connected, disconnecting one touches its own rooms only (python-socketio's
    manager copies and walks the namespace's 5,000 rooms for each disconnect: O(clients^2) when a
    server's clients all leave at once)."""
    manager = manager_of(IndexedManager)
    sids = [manager.connect(f"eio-{i}", "/") for i in range(5000)]
    for sid in sids:
        manager.enter_room(sid, "/", "tenant:a")
    manager.rooms["/"] = Unwalkable(manager.rooms["/"])
    manager.pre_disconnect(sids[0], "/")
    manager.disconnect(sids[0], "/")
    assert sids[0] not in manager.rooms["/"]["tenant:a"] and sids[0] not in dict.keys(manager.rooms["/"])
    assert len(manager.rooms["/"]["tenant:a"]) == 4999
    stock = manager_of(socketio.Manager)
    stock.connect("eio-0", "/")
    stock.rooms["/"] = Unwalkable(stock.rooms["/"])
    with pytest.raises(AssertionError, match="walked every room"):
        stock.disconnect(stock.sid_from_eio_sid("eio-0", "/"), "/")
