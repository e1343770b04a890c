"""The browser fixtures work: chromium runs a page's JavaScript, including the vendored client."""

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import REPO

SMOKE_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title><link rel="icon" href="data:,">
<script src="/vendor/socket.io.min.js"></script></head>
<body><h1 id="out">JavaScript did not run</h1>
<script>
  document.getElementById("out").textContent = "JavaScript ran: io " + typeof io + ", Manager " + typeof io.Manager;
  console.log("smoke: socket.io client loaded");
</script></body></html>
"""


class Handler(SimpleHTTPRequestHandler):
    """``/smoke.html`` from above, anything else from ``static/``."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path != "/smoke.html":
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(SMOKE_PAGE)))
        self.end_headers()
        self.wfile.write(SMOKE_PAGE)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass


@pytest.fixture
def static_server():
    """A local HTTP server of ``static/`` plus ``/smoke.html``; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(REPO / "static")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_a_served_page_runs_javascript_and_the_vendored_client(page, static_server, screenshot):
    response = page.goto(f"{static_server}/smoke.html")
    assert response.status == 200
    assert page.text_content("#out") == "JavaScript ran: io function, Manager function"
    assert page.console_lines == ["smoke: socket.io client loaded"]
    assert page.page_errors == []
    shot = screenshot("smoke")
    assert shot.name == "smoke.png" and shot.read_bytes().startswith(b"\x89PNG")
    assert screenshot(shot.parent / "sub" / "again.png").is_file()


def test_set_content_runs_javascript_and_reports_errors(page):
    page.set_content("<p id='p'>before</p><script>document.getElementById('p').textContent = 6 * 7;</script>")
    assert page.text_content("#p") == "42"
    with page.expect_event("pageerror"):
        page.evaluate("() => { console.warn('careful'); setTimeout(() => { throw new Error('boom'); }); }")
    assert page.console_lines == ["careful"]
    assert len(page.page_errors) == 1 and "boom" in page.page_errors[0]
