"""Reading ahead on the worker's broker connection: a recv() takes what the kernel holds, up to
``READ_AHEAD_BYTES``, where py-amqp asks for exactly the bytes of the frame part it parses.

Why
    py-amqp reads each frame with two recv() calls (its 7-byte header, then the payload and the
    end octet), so every delivered message (a method, a header and a body frame) costs six
    system calls. At 1,000 events/s they were ~10 % of the worker's samples in py-spy
    (bench/latency.py). Asking for at least 4 KB takes ~10 messages in one call; py-amqp keeps
    what it has not parsed yet in its transport's read buffer, as it does for a frame that
    arrived in parts.

What it relies on (checked by ``tests/test_worker_batching.py``, amqp 5.4.2)
    The transport (``TCPTransport`` and ``SSLTransport``) reads through ``_quick_recv`` (the
    socket's ``recv``, or ``read`` under TLS), set once per connection in
    ``_setup_transport``, and its ``_read`` keeps any surplus in ``_read_buffer`` (bytes). The
    read buffer is invisible to select() and FIONREAD: ``buffered_bytes`` counts it for the
    worker's "more ready" and backlog checks.
"""

READ_AHEAD_BYTES = 4096


def read_ahead(amqp_connection, size=READ_AHEAD_BYTES):
    """Make each read of this py-amqp connection ask for at least ``size`` bytes; False if it
    has no transport of the expected shape (left as it is)."""
    transport = getattr(amqp_connection, "transport", None)
    recv = getattr(transport, "_quick_recv", None)
    if recv is None or not isinstance(getattr(transport, "_read_buffer", None), bytes):
        return False
    transport._quick_recv = lambda wanted: recv(max(wanted, size))
    return True


def buffered_bytes(amqp_connection):
    """Bytes read from the broker and not parsed yet (py-amqp's read buffer); 0 without one."""
    transport = getattr(amqp_connection, "transport", None)
    return len(getattr(transport, "_read_buffer", b"") or b"")
