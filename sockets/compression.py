"""WebSocket compression (permessage-deflate) is off unless ``WEBSOCKET_COMPRESSION=1``.

eventlet's and simple-websocket's servers accept a browser's permessage-deflate offer. Each
connection then keeps its own zlib streams, and every update is compressed once per
recipient: for a tenant room of many dashboards that is CPU per frame and memory per
connection for payloads of a few hundred bytes. The JavaScript Socket.IO server ships with it
off for the same reason.
"""


def without_websocket_compression(wsgi_app):
    """WSGI middleware that hides the client's ``Sec-WebSocket-Extensions`` offer, so the
    server answers the upgrade without compression."""

    def middleware(environ, start_response):
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return wsgi_app(environ, start_response)

    return middleware
