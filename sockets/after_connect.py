"""Work a connect handler leaves for after the Socket.IO CONNECT packet has gone out.

python-socketio sends CONNECT once the connect handler has returned, so whatever the handler
emits (the snapshot, replayed updates, ``resync``) reaches the client before it: the JavaScript
and Java clients buffer such events until they are connected, but socket.io-client-swift drops
them (``SocketIOClient.handleEvent``: ``guard status == .connected``), and a Swift app would
never see its snapshot. The handler decides (and may refuse) as before; what it must send is
registered here and runs when python-socketio marks the client connected, right after it sent
CONNECT (``Server._handle_connect``; ``tests/test_library_internals.py`` checks the order).
"""


class AfterConnect:
    """Mixin for a python-socketio manager (before it in the bases): ``after_connect`` callbacks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_connect_callbacks = {}  # (namespace, sid) -> callable

    def after_connect(self, sid, namespace, callback):
        """Run ``callback()`` once ``sid`` is connected to ``namespace`` (after its CONNECT packet)."""
        self.after_connect_callbacks[(namespace, sid)] = callback

    def connect(self, sid, namespace):
        """python-socketio's; then the callback registered for the client, if any."""
        sid = super().connect(sid, namespace)
        callback = self.after_connect_callbacks.pop((namespace, sid), None)
        if callback is not None:
            callback()
        return sid

    def basic_disconnect(self, sid, namespace, **kwargs):
        """python-socketio's; a client refused or gone before it was connected leaves no callback."""
        self.after_connect_callbacks.pop((namespace, sid), None)
        return super().basic_disconnect(sid, namespace, **kwargs)
