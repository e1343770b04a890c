"""Rooms indexed by client: a disconnect costs the rooms the client is in, not every room.

python-socketio's manager (``BaseManager``, 5.x) keeps namespace -> room -> {sid: eio_sid}, and
every client is alone in a room named by its sid. To disconnect one client it copies the
namespace's dict of rooms and asks every room whether the client is in it (``basic_disconnect``;
``get_rooms`` walks them the same way): O(clients) per disconnect, O(clients^2) when a server's
clients all go at once, as after a deploy, a network blip, or a proxy that drops its connections.
Measured (py-spy on a server as the 10,000 websockets of bench/vs_peer.py idle-10000 left): 100 %
of a core for 21 s, 84 % of it in ``basic_disconnect``, and meanwhile 300 long-polling clients
took 21 s to connect.

The same goes for the lists of clients between a connect and its handler's answer
(``pending_connect``), which a connect storm fills: ``PendingList`` makes them O(1).

``RoomIndex`` keeps, for every (namespace, sid), the rooms it entered (``None``, the namespace's
list of connected clients, included), kept up to date where python-socketio enters and leaves
rooms (``basic_enter_room``, ``basic_leave_room``; ``connect`` and ``basic_close_room`` go
through them), and disconnects a client from those rooms only. The rest of ``basic_disconnect``
(callbacks, the pending connect and disconnect lists) is python-socketio's, unchanged.

What it relies on (python-socketio 5.18; ``tests/test_library_internals.py check_manager_rooms``):
``self.rooms`` changes only in ``basic_enter_room`` and ``basic_leave_room``,
``basic_disconnect`` does what ``disconnect_rest`` repeats here, and the pending lists are stored
by item assignment and used through ``in``, ``append``, ``remove`` and ``len`` only.
"""

import socketio

from sockets.after_connect import AfterConnect


class RoomIndex:
    """Mixin for a python-socketio manager (before it in the bases): rooms indexed by client."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rooms_of = {}  # (namespace, sid) -> {room name: None}, in the order entered
        self.pending_connect, self.pending_disconnect = PendingLists(), PendingLists()

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.rooms_of.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        rooms = self.rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self.rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid, namespace, **kwargs):
        """python-socketio's ``basic_disconnect``, leaving only the rooms the client is in."""
        if namespace not in self.rooms:
            self.rooms_of.pop((namespace, sid), None)
            return
        for room in list(self.rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.disconnect_rest(sid, namespace)

    def disconnect_rest(self, sid, namespace):
        """What ``basic_disconnect`` does after leaving the rooms (python-socketio 5.18's code)."""
        if sid in self.callbacks:
            del self.callbacks[sid]
        if namespace in self.pending_connect and sid in self.pending_connect[namespace]:
            self.pending_connect[namespace].remove(sid)
            if len(self.pending_connect[namespace]) == 0:
                del self.pending_connect[namespace]
        if namespace in self.pending_disconnect and sid in self.pending_disconnect[namespace]:
            self.pending_disconnect[namespace].remove(sid)
            if len(self.pending_disconnect[namespace]) == 0:
                del self.pending_disconnect[namespace]

    def get_rooms(self, sid, namespace):
        """The rooms a client is in (its own and the named ones; not the connected list), in the
        order it entered them (python-socketio's walk gives the order the rooms were made in)."""
        return [room for room in self.rooms_of.get((namespace, sid), ()) if room is not None]


class PendingList(dict):
    """The sids of one namespace between ``pre_connect`` and ``connect`` (or ``pre_disconnect``
    and ``disconnect``): python-socketio keeps a list and asks it ``in`` and ``remove``, O(n) in
    the clients of a connect storm that wait in their connect handler (the connect throttle, a
    tenant's first load), and ``in`` again for every event a client sends (``is_connected``).
    A dict in insertion order with the list's ``append`` and ``remove``: O(1)."""

    def append(self, sid):
        self[sid] = None

    def remove(self, sid):
        del self[sid]


class PendingLists(dict):
    """namespace -> ``PendingList``: the list python-socketio stores is made a ``PendingList``."""

    def __setitem__(self, namespace, sids):
        super().__setitem__(namespace, sids if isinstance(sids, PendingList) else PendingList.fromkeys(sids))


class IndexedManager(AfterConnect, RoomIndex, socketio.Manager):
    """python-socketio's in-process manager (no message queue: the demo, tests) with ``RoomIndex``
    and ``AfterConnect`` (sockets/after_connect.py)."""
