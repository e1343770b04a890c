"""campaign-live: the Socket.IO + HTTP server (``python app.py``); ``flask --app app`` finds ``create_app`` here.

The app itself is built by ``factory.py``; the demo is put together by ``demo.py``.
"""

import os
import warnings

# eventlet is the requested default and known to be deprecated upstream (docs/architecture.md).
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

if __name__ == "__main__":
    # Monkey patching must happen before anything imports socket, threading, psycopg2 or kombu.
    ASYNC_MODE = os.environ.get("ASYNC_MODE", "eventlet")
    if ASYNC_MODE == "eventlet":
        import eventlet

        eventlet.monkey_patch()
    elif ASYNC_MODE == "gevent":
        from gevent import monkey

        monkey.patch_all()
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()

import logging
import sys

import click

import factory
from campaigns.queues import declare_topology_at
from config import ConfigError
from extensions import socketio
from factory import create_service_app, freeze_startup_objects
from sockets.file_limit import raise_file_limit
from sockets.handlers import connections
from sockets.http_server import serve
from sockets.loop_lag import start_loop_lag_watch
from sockets.pings import start_ping_schedule
from sockets.presence import Presence
from sockets.sweeper import start_sweeper
from sockets.tenants import tenant_states

log = logging.getLogger("campaign_live")


def create_app():
    """The app of ``flask --app app <command>``: a setting out of range is one line, not a traceback."""
    try:
        return factory.create_app()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def check_cooperative_database(app):
    """Under eventlet or gevent, psycopg2 must yield to other greenlets while it waits."""
    if app.config["ASYNC_MODE"] not in ("eventlet", "gevent") or app.config["DEMO"]:
        return
    import psycopg2.extensions

    if psycopg2.extensions.get_wait_callback() is None:
        raise RuntimeError("psycopg2 has no wait callback: the database would block every client")


def main():
    """Run the server (and, without DATABASE_URL/BROKER_URL, the whole demo)."""
    app = create_service_app("[WEBSOCKET]")
    if app is None:
        return 2
    config = app.config
    if config["DEMO"]:
        from demo import prepare_demo, start_demo

        token = prepare_demo(app)
        start_demo(app)
        print(f"\ncampaign-live demo on http://{config['HOST']}:{config['PORT']}/", flush=True)
        print("Log in as ana@acme.test (tenant acme) or admin@demo.test (every tenant), password demo-password")
        print(f"Socket.IO token for tenant 'acme' (24 h):\n{token}\n", flush=True)
    check_cooperative_database(app)
    raise_file_limit(config["MAX_CONNECTIONS"])
    if not config["DEMO"]:
        problem = declare_topology_at(config["BROKER_URL"], config["WORKER_QUEUE"])
        if problem:  # the server still serves; workers declare it too
            log.warning("could not declare the broker topology at start-up: %s", problem)
    start_sweeper(socketio.server.eio, interval=config["PING_TIMEOUT"] / 4)
    start_ping_schedule(socketio.server.eio)
    start_loop_lag_watch()
    socketio.start_background_task(tenant_states.run_reconciliation)
    presence = app.extensions["presence"] = Presence(app, connections, tenant_states.clients, socketio.server.transport)
    socketio.start_background_task(presence.run)
    freeze_startup_objects()
    log.info(
        "[WEBSOCKET] serving on %s:%s (async mode %s, ping every %ss)",
        config["HOST"],
        config["PORT"],
        config["ASYNC_MODE"],
        config["PING_INTERVAL"],
    )
    if config["ASYNC_MODE"] == "eventlet":
        # socketio.run's listener has a backlog of 50: a burst of long-polling requests overflows it.
        serve(
            app,
            config["HOST"],
            config["PORT"],
            backlog=config["LISTEN_BACKLOG"],
            nodelay=config["TCP_NODELAY"],
            # A connection silent this long is gone (python-engineio's own rule for its clients).
            idle_timeout=config["PING_INTERVAL"] + config["PING_TIMEOUT"],
            max_size=config["MAX_CONNECTIONS"],
        )
    else:
        # gevent's WSGIServer takes the backlog (its own default is 128); werkzeug's would not.
        extra = {"backlog": config["LISTEN_BACKLOG"]} if config["ASYNC_MODE"] == "gevent" else {}
        socketio.run(app, host=config["HOST"], port=config["PORT"], log_output=False, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
