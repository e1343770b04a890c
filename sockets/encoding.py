"""JSON for Socket.IO packets, where a payload sent to many clients is encoded once.

python-socketio encodes an event's payload again for every client it is sent to (and walks
it looking for binary parts first). A snapshot of 500 campaigns is about 200 KB of JSON: a
connect storm of 5,000 clients would encode the same snapshot 5,000 times, and the same
replayed updates as often. ``PreEncoded``
holds the JSON text of a payload, built once (``TenantState.snapshot``); ``PacketJSON``, the
JSON module the Socket.IO server is given (``json=`` of ``SocketIO``), writes that text as is.
A ``PreEncoded`` is neither a dict nor a list, so python-socketio's binary check stops at it.
"""

import json

from engineio import json as engineio_json

COMPACT = (",", ":")


class PreEncoded:
    """A payload already encoded as JSON text, sent as is by ``PacketJSON``; its fields stay
    readable (``payload["seq"]``)."""

    __slots__ = ("text", "value")

    def __init__(self, value):
        self.value = value
        self.text = json.dumps(value, separators=COMPACT)

    def __getitem__(self, key):
        return self.value[key]


class PacketJSON:
    """The JSON module of the Socket.IO server: ``json`` itself, but for ``PreEncoded`` payloads."""

    @staticmethod
    def dumps(value, **kwargs):
        """JSON text of ``value``; ``PreEncoded`` items of a packet's argument list are copied in."""
        if isinstance(value, list) and any(isinstance(item, PreEncoded) for item in value):
            parts = (item.text if isinstance(item, PreEncoded) else json.dumps(item, **kwargs) for item in value)
            return "[" + ",".join(parts) + "]"
        return json.dumps(value, **kwargs)

    # python-engineio's, which refuses integers of more than 100 digits from clients.
    loads = staticmethod(engineio_json.loads)
