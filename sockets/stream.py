"""The update stream into a server: the Socket.IO message queue, read into ``sockets/tenants.py``.

Workers emit each ``campaign_update`` to ``tenant:<id>`` through the message queue
(python-socketio's ``KombuManager``). This manager hands those updates to the server's tenant
states instead of the room, so that they are applied in ``seq`` order and gaps are filled from
PostgreSQL before anything reaches a client. Nothing else a publisher on that exchange may send
is obeyed: no other event, no remote disconnect or room change (workers never send them).

Updates that arrive together are delivered together: the listener reads every message the
broker has already sent before it waits again, and only then (the next turn of the event loop)
are they handed over, as one batch. A burst of merged progress updates falling due together
then costs one write per client, and a status update behind it is not held up by one fan-out
per update.
"""

import logging
import threading

from socketio import KombuManager

from campaigns.events import is_integer
from campaigns.updates import UPDATE_EVENT, tenant_room
from extensions import socketio
from sockets.after_connect import AfterConnect
from sockets.rooms import RoomIndex

log = logging.getLogger(__name__)
# A new listener queue is bound a moment after it is named: reconcile once it surely is.
RECONCILE_AFTER_RECONNECT_SECONDS = 1.0
# What `flask --app app doctor` emits to a room nobody is in, to see the queue go round trip.
PROBE_EVENT = "doctor_probe"


def campaign_update_of(event, data, room):
    """The ``campaign_update`` payload of an emit, or None when it is not a well-formed one for ``room``."""
    if event != UPDATE_EVENT or not isinstance(data, dict):
        return None
    campaign = data.get("campaign")
    if not is_integer(data.get("seq")) or not isinstance(data.get("timestamp"), str) or not isinstance(campaign, dict):
        return None
    if not is_integer(campaign.get("version")):
        return None
    if not all(isinstance(campaign.get(key), str) for key in CAMPAIGN_TEXT_FIELDS):
        return None
    if room != tenant_room(campaign["tenant_id"]):
        return None
    return data


# What a server reads of an update's campaign (sockets/tenant_state.py), besides its version.
CAMPAIGN_TEXT_FIELDS = ("id", "tenant_id", "status", "updated_at")


class UpdateStreamManager(AfterConnect, RoomIndex, KombuManager):
    """A ``KombuManager`` whose campaign updates go through the server's tenant states (and
    whose rooms are indexed by client, sockets/rooms.py; ``AfterConnect``, sockets/after_connect.py)."""

    def __init__(self, url, channel, states):
        super().__init__(url, channel=channel, logger=logging.getLogger("socketio"))
        self.states = states
        self.listening = False
        self.arrived = []
        self.arrived_lock = threading.Lock()
        self.handing_over = False

    def _handle_emit(self, message):
        data = message.get("data")
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if message.get("event") == PROBE_EVENT:
            log.debug("[WEBSOCKET] doctor's probe seen on the message queue (dropped)")
            return
        payload = campaign_update_of(message.get("event"), data, message.get("room"))
        if payload is None or message.get("namespace") not in (None, "/"):
            log.warning("[WEBSOCKET] dropped a message-queue emit that is no campaign update: %r", message.get("event"))
            return
        with self.arrived_lock:
            self.arrived.append(payload)
            if self.handing_over:
                return
            self.handing_over = True
        socketio.start_background_task(self._hand_over)

    def _hand_over(self):
        """Hand what arrived meanwhile to the tenant states, until nothing is left."""
        try:
            while True:
                with self.arrived_lock:
                    batch, self.arrived = self.arrived, []
                    if not batch:
                        self.handing_over = False
                        return
                try:
                    self.states.receive_many(batch)
                except Exception:  # noqa: BLE001 - the stream must go on; reconciliation fills what was lost
                    log.exception("[WEBSOCKET] delivering %d updates from the message queue failed", len(batch))
        finally:
            # Ended otherwise (a timeout, the greenlet killed): the next arrival starts a new hand-over.
            with self.arrived_lock:
                if self.handing_over and not self.arrived:
                    self.handing_over = False
                elif self.handing_over:
                    socketio.start_background_task(self._hand_over)

    def _handle_disconnect(self, message):
        log.warning("[WEBSOCKET] ignored a remote disconnect from the message queue")

    def _handle_enter_room(self, message):
        log.warning("[WEBSOCKET] ignored a remote room change from the message queue")

    _handle_leave_room = _handle_close_room = _handle_enter_room

    def _queue(self):
        # python-socketio names a new queue each time its listener (re)connects.
        if self.listening:
            socketio.start_background_task(self._reconcile_soon)
        self.listening = True
        return super()._queue()

    def _reconcile_soon(self):
        socketio.sleep(RECONCILE_AFTER_RECONNECT_SECONDS)
        self.states.listener_reconnected()


class LocalUpdateStream:
    """The demo's emitter: its in-process worker hands updates straight to the tenant states."""

    def __init__(self, states):
        self.states = states

    def emit(self, event, data, to=None, **kwargs):
        """Take a worker's ``emit(UPDATE_EVENT, payload, to=room)``."""
        payload = campaign_update_of(event, data, to)
        if payload is not None:
            self.states.receive(payload)
