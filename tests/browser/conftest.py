"""Browser tests: Playwright's sync API driving Debian's headless chromium (/usr/bin/chromium).

Playwright's own browser builds are never downloaded (``make browser-deps`` installs Debian's
``chromium``). Fixtures:

- ``browser`` (session): one headless chromium; the test fails (never skips) when it is missing.
- ``page``: a page in a fresh browser context, closed after the test. ``page.console_lines``
  collects the text of every console message (``console.log`` and friends) and
  ``page.page_errors`` every uncaught exception, for assertions.
- ``screenshot``: ``screenshot("name")`` or ``screenshot(path)`` saves a full-page PNG of the
  test's page (a bare name goes to the test's ``tmp_path``) and returns its path.

When a test that used ``page`` fails, a screenshot is saved to its ``tmp_path`` as
``failure.png`` and its path, the console lines and page errors are added to the report.
"""

import os
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = [
    "--no-sandbox",  # root in CI and on the developers' machines
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # The network is closed: nothing in the background that would try to reach the outside.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, for the whole session."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's chromium. "
            "Run `make browser-deps` (as root it runs apt-get install chromium).",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, request, tmp_path):
    """A page in its own browser context; console messages in ``page.console_lines``."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.console_lines = []
    page.page_errors = []
    page.on("console", lambda message: page.console_lines.append(message.text))
    page.on("pageerror", lambda error: page.page_errors.append(str(error)))
    request.node.browser_page = page
    request.node.browser_tmp_path = tmp_path
    try:
        yield page
    finally:
        request.node.browser_page = None
        context.close()


@pytest.fixture
def screenshot(page, tmp_path):
    """``screenshot(name_or_path)``: a full-page PNG of ``page``; returns the file's path."""

    def take(where):
        path = Path(where)
        if len(path.parts) == 1 and not path.is_absolute():
            path = tmp_path / path
        if path.suffix != ".png":
            path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed browser test, keep a screenshot and what the page printed in the report."""
    outcome = yield
    report = outcome.get_result()
    page = getattr(item, "browser_page", None)
    if report.when != "call" or not report.failed or page is None or page.is_closed():
        return
    lines = [f"console: {line}" for line in page.console_lines] + [f"page error: {e}" for e in page.page_errors]
    try:
        shot = item.browser_tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        lines.insert(0, f"screenshot: {shot}")
    except Exception as exc:  # noqa: BLE001 - the report must not fail because of the screenshot
        lines.insert(0, f"screenshot failed: {exc}")
    report.sections.append(("browser page", "\n".join(lines) or "(nothing)"))
