"""The official JavaScript client (socket.io-client 4.x, run by Node.js) against a real stack.

``tests/js/contract.test.mjs`` holds the checks (``node --test``); this module starts the
server and the worker, creates the tenants, mints the tokens and publishes to RabbitMQ what
the node test asks for through a small HTTP control endpoint (``POST /publish``), so that
the node side stays a plain client of the contract.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.support import REPO

JS_DIR = REPO / "tests" / "js"
LOCK = JS_DIR / "package-lock.json"
# Written by `make js-deps` and by this module after `npm ci`: the hash of the lock installed.
STAMP = JS_DIR / "node_modules" / ".lock-stamp"
NODE_TIMEOUT = 300
# 5 tests per transport (websocket, polling); fewer would mean node skipped some.
NODE_TESTS = 12
OTHER_SECRET = "another-jwt-secret-of-32-bytes-or-more"


def lock_hash():
    """The stamp's content for the current package.json and package-lock.json."""
    digest = hashlib.sha256()
    for path in (JS_DIR / "package.json", LOCK):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_js_deps():
    """``npm ci`` in tests/js unless node_modules already matches the lock file."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"`{tool}` is not on PATH: the JS client test needs Node.js >= 20 with npm "
                "(Debian: apt-get install nodejs npm), then `make js-deps`",
                pytrace=False,
            )
    if STAMP.exists() and STAMP.read_text().strip() == lock_hash():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        pytest.fail(f"`npm ci` in tests/js failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    STAMP.write_text(lock_hash() + "\n")


class ControlServer(HTTPServer):
    """``POST /publish {"events": [...]}``: publishes each event, confirmed, then answers."""

    def __init__(self, publisher):
        super().__init__(("127.0.0.1", 0), ControlHandler)
        self.publisher = publisher
        self.published = []
        self.thread = threading.Thread(target=self.serve_forever, name="js-control", daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        self.server_close()
        self.thread.join(10)


class ControlHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        try:
            if self.path != "/publish":
                return self._answer(404, {"error": "not_found"})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            for event in body["events"]:
                self.server.publisher.publish(event)
                self.server.published.append(event)
            return self._answer(200, {"published": len(body["events"])})
        except Exception as exc:  # noqa: BLE001 - reported to the node test, which fails with it
            return self._answer(500, {"error": type(exc).__name__, "message": str(exc)})

    def _answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass


def test_the_official_js_client_follows_the_contract(stack, tenant, publisher):
    ensure_js_deps()
    other = stack.create_tenant()
    server = stack.servers[0]
    with ControlServer(publisher) as control:
        env = {
            **os.environ,
            "SERVER_URL": server.url,
            "CONTROL_URL": control.url,
            "TENANT": tenant,
            "TOKEN": stack.token(tenant),
            "OTHER_TENANT": other,
            "OTHER_TOKEN": stack.token(other),
            "EXPIRED_TOKEN": stack.token(tenant, ttl=-120),
            "BAD_TOKEN": stack.token(tenant, secret=OTHER_SECRET),
            "NO_COLOR": "1",
        }
        started = time.monotonic()
        try:
            result = subprocess.run(
                ["node", "--test", "--test-reporter=spec", "tests/js/contract.test.mjs"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=NODE_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"node --test ran over {NODE_TIMEOUT}s:\n{exc.stdout}\n{exc.stderr}\n{_logs(stack)}")
        took = time.monotonic() - started
    # Shown by pytest only when the test fails (captured output).
    print(f"node --test took {took:.1f}s\n{result.stdout}\n{result.stderr}")
    if result.returncode != 0:
        pytest.fail(
            f"node --test exited {result.returncode}:\n{result.stdout}\n{result.stderr}\n{_logs(stack)}",
            pytrace=False,
        )
    counts = dict(re.findall(r"^\S* ?(pass|fail|cancelled) (\d+)$", result.stdout, re.MULTILINE))
    assert counts == {"pass": str(NODE_TESTS), "fail": "0", "cancelled": "0"}, result.stdout
    assert {event["tenant_id"] for event in control.published} == {tenant, other}


def _logs(stack):
    return "\n".join(f"--- {p.name} log (tail) ---\n{p.log()[-4000:]}" for p in stack.processes)


def test_the_vendored_browser_client_is_the_tested_version():
    ensure_js_deps()
    dist = JS_DIR / "node_modules" / "socket.io-client" / "dist"
    version = json.loads((dist.parent / "package.json").read_text())["version"]
    assert json.loads((JS_DIR / "package.json").read_text())["dependencies"]["socket.io-client"] == version
    for name in ("socket.io.min.js", "socket.io.min.js.map"):
        vendored = REPO / "static" / "vendor" / name
        assert vendored.read_bytes() == (dist / name).read_bytes(), (
            f"static/vendor/{name} is not socket.io-client {version}'s: see static/vendor/README.md"
        )
    assert f"| {version} |" in (REPO / "static" / "vendor" / "README.md").read_text(), "update the README's version"
