"""The admin pages in a real browser (Debian's chromium) against a real server, worker and broker."""

import os
import re
import uuid

import pytest
from werkzeug.security import generate_password_hash

from tests import support
from tests.support import event, wait_until
from tests.test_pipeline import started, status

PASSWORD = "browser-test-password"
SCREENSHOTS = support.REPO / "docs" / "screenshots"
LIVE = "#connection[data-state=live]"
# static/js/live.js: the REST poll while the socket is down, and the longest reconnect delay. The
# tests that wait for them move the page's clock on (Playwright's clock) instead of waiting.
POLL_MS = 10_000
MAX_RECONNECT_DELAY_MS = 30_000


def create_user(stack, tenant_id, email=None):
    email = email or f"{tenant_id}@example.test"
    stack.sql(
        "INSERT INTO users (email, password_hash, tenant_id, is_admin, created_at) VALUES (%s, %s, %s, false, now())",
        (email, generate_password_hash(PASSWORD), tenant_id),
    )
    return email


def log_in(page, server, email):
    page.goto(server.url + "/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")


def row(page, campaign_id):
    return page.locator(f'tr[data-id="{campaign_id}"]')


def cell(page, campaign_id, field):
    return row(page, campaign_id).locator(f'[data-field="{field}"]')


def console_has(page, text):
    return any(text in line for line in page.console_lines)


def screenshot_path(screenshot, name):
    """Into docs/screenshots with UPDATE_SCREENSHOTS=1 (for the README), else the test's tmp_path."""
    return screenshot(SCREENSHOTS / name if os.environ.get("UPDATE_SCREENSHOTS") == "1" else name)


def test_the_dashboard_goes_live_and_shows_updates(stack, page, publisher, screenshot):
    tenant = stack.create_tenant(name="Acme Retail")
    log_in(page, stack.servers[0], create_user(stack, tenant))
    page.wait_for_selector(LIVE, timeout=15000)
    assert console_has(page, "[CAMPAIGN-WS] connecting to " + stack.servers[0].url)
    assert console_has(page, "[CAMPAIGN-WS] connected")
    assert page.locator("#connection .label").inner_text() == "Live"

    publisher.publish(started(tenant, "bf", 1000, name="Black Friday"))
    page.wait_for_selector('tr[data-id="bf"]', timeout=5000)
    page.wait_for_selector(".toast:has-text('Black Friday started')", timeout=5000)
    assert cell(page, "bf", "status").inner_text() == "Running"
    assert console_has(page, "[CAMPAIGN-WS] received update: Black Friday campaign_started")

    for i in range(500):
        publisher.publish(event(tenant, "bf", "message_sent", message_id=f"m-{i}"))
    for i in range(3):
        publisher.publish(event(tenant, "bf", "message_failed", message_id=f"f-{i}", error="not on WhatsApp"))
    page.wait_for_function(
        "() => document.querySelector('tr[data-id=\"bf\"] [data-field=sent]').textContent === '500'", timeout=10000
    )
    page.wait_for_function(
        "() => document.querySelector('tr[data-id=\"bf\"] [data-field=failed]').textContent === '3'", timeout=10000
    )
    assert cell(page, "bf", "pending").inner_text() == "497"
    assert cell(page, "bf", "percent").inner_text() == "50.3%"
    assert cell(page, "bf", "bar").get_attribute("style") == "width: 50.3%;"
    page.wait_for_selector(".toast:has-text('3 messages failed in Black Friday')", timeout=8000)
    assert page.locator(".toast:has-text('failed in Black Friday')").count() == 1

    publisher.publish(started(tenant, "cm", 800, name="Cyber Monday"))
    publisher.publish(status(tenant, "bf", "campaign_paused", 1))
    page.wait_for_selector('tr[data-id="bf"][data-status="paused"]', timeout=5000)
    page.wait_for_selector(".toast:has-text('Black Friday paused')", timeout=5000)
    ids = page.eval_on_selector_all("tbody tr[data-id]", "rows => rows.map(r => r.dataset.id)")
    assert ids == ["cm", "bf"], "running campaigns come first"
    screenshot_path(screenshot, "dashboard.png")

    page.click('tr[data-id="bf"] a')
    page.wait_for_selector(LIVE, timeout=15000)
    assert page.locator("#campaign [data-field=sent]").inner_text() == "500"
    assert page.locator("#failures li").count() == 3
    assert "not on WhatsApp" in page.locator("#failures").inner_text()
    publisher.publish(status(tenant, "bf", "campaign_resumed", 2))
    for i in range(20):
        publisher.publish(event(tenant, "bf", "message_sent", message_id=f"n-{i}"))
    page.wait_for_function(
        "() => document.querySelector('#campaign [data-field=sent]').textContent === '520'", timeout=10000
    )
    page.wait_for_selector("#timeline li.t-campaign_resumed", timeout=10000)
    assert page.locator('#reasons li[data-reason="not on WhatsApp"]').inner_text().split() == [
        "not", "on", "WhatsApp", "3", "100%"
    ]
    publisher.publish(event(tenant, "bf", "message_failed", message_id="f-9", error="rate limited"))
    page.wait_for_selector('#reasons li[data-reason="rate limited"]', timeout=10000)
    assert page.locator("#reasons li .share").all_inner_texts() == ["75%", "25%"]
    screenshot_path(screenshot, "campaign.png")
    assert not page.page_errors


def test_a_page_falls_back_to_polling_when_the_socket_cannot_connect(stack, page, publisher):
    tenant = stack.create_tenant()
    email = create_user(stack, tenant)
    publisher.publish(started(tenant, "poll", 100, name="Polled"))
    wait_until(lambda: stack.campaign(tenant, "poll"), 10)
    page.clock.install()
    page.route("**/socket.io/**", lambda route: route.abort())
    log_in(page, stack.servers[0], email)
    page.wait_for_selector("#connection[data-state=error]", timeout=15000)
    assert "Error — polling" in page.locator("#connection").inner_text()
    page.wait_for_function("() => document.querySelector('#connection').dataset.polledAt", timeout=15000)
    for i in range(7):
        publisher.publish(event(tenant, "poll", "message_sent", message_id=f"m-{i}"))
    wait_until(lambda: stack.campaign(tenant, "poll")["sent"] == 7, 10)
    page.clock.fast_forward(POLL_MS)  # the next poll
    page.wait_for_function(
        "() => document.querySelector('tr[data-id=\"poll\"] [data-field=sent]').textContent === '7'", timeout=15000
    )
    assert console_has(page, "polling /api/campaigns every 10 s")
    assert console_has(page, "reconnecting in ")
    page.unroute("**/socket.io/**")
    page.clock.fast_forward(MAX_RECONNECT_DELAY_MS)  # the next reconnect attempt
    page.wait_for_selector(LIVE, timeout=30000)
    assert console_has(page, "socket is back: polling stopped")


def test_a_websocket_blocked_browser_goes_live_over_long_polling(stack, page, publisher):
    tenant = stack.create_tenant()
    page.route_web_socket(re.compile(r".*/socket\.io/.*"), lambda ws: ws.close())
    log_in(page, stack.servers[0], create_user(stack, tenant))
    page.wait_for_selector(LIVE, timeout=15000)
    publisher.publish(started(tenant, "lp", 10, name="Over polling"))
    page.wait_for_selector('tr[data-id="lp"]', timeout=10000)
    assert page.locator("#connection").get_attribute("data-transport") == "polling"
    assert "polling" in page.locator("#connection .transport").inner_text()


def test_a_tenants_page_never_shows_another_tenant(stack, page, publisher):
    alice, bob = stack.create_tenant(), stack.create_tenant()
    publisher.publish(started(bob, "bob-before", 10, name="Bob's private campaign"))
    wait_until(lambda: stack.campaign(bob, "bob-before"), 10)
    log_in(page, stack.servers[0], create_user(stack, alice))
    page.wait_for_selector(LIVE, timeout=15000)
    publisher.publish(started(bob, "bob-live", 10, name="Bob's live campaign"))
    publisher.publish(started(alice, "alice-live", 10, name="Alice's campaign"))
    page.wait_for_selector('tr[data-id="alice-live"]', timeout=10000)
    html = page.content()
    assert "Bob's" not in html and "bob-" not in html
    assert page.goto(stack.servers[0].url + "/campaigns/bob-before").status == 404


def test_pages_speak_brazilian_portuguese(stack, browser):
    tenant = stack.create_tenant()
    email = create_user(stack, tenant)
    context = browser.new_context(locale="pt-BR")
    try:
        page = context.new_page()
        log_in(page, stack.servers[0], email)
        page.wait_for_selector(LIVE, timeout=15000)
        assert page.locator("h1").inner_text() == "Campanhas"
        assert page.locator("#connection .label").inner_text() == "Ao vivo"
    finally:
        context.close()


@pytest.fixture
def own_stack(database, vhost, tmp_path):
    """A stack this test may stop and restart."""
    with support.Stack(database, vhost, tmp_path) as stack:
        yield stack


def test_a_restarted_server_brings_the_page_back_with_the_missed_updates(own_stack, page):
    stack = own_stack
    server = stack.start_server()
    stack.start_worker()
    tenant = stack.create_tenant()
    page.clock.install()
    with stack.publisher() as publisher:
        publisher.publish(started(tenant, "r", 100, name="Restarted"))
        log_in(page, server, create_user(stack, tenant))
        page.wait_for_selector(LIVE, timeout=15000)
        page.wait_for_selector('tr[data-id="r"]', timeout=10000)
        server.stop()
        page.wait_for_selector("#connection[data-state=connecting]", timeout=15000)
        page.clock.fast_forward(MAX_RECONNECT_DELAY_MS)  # the first reconnect attempt, which fails
        page.wait_for_selector("#connection[data-state=error]", timeout=20000)
        publisher.publish(started(tenant, "while-away", 50, name="Started while away"))
        publisher.publish(status(tenant, "r", "campaign_completed", 1))
        wait_until(lambda: (stack.campaign(tenant, "r") or {}).get("status") == "completed", 10)
        stack.servers.remove(server)
        stack.start_server(port=server.port)
        page.clock.fast_forward(MAX_RECONNECT_DELAY_MS)  # the next reconnect attempt
        page.wait_for_selector(LIVE, timeout=40000)
        page.wait_for_selector('tr[data-id="while-away"]', timeout=10000)
        page.wait_for_selector('tr[data-id="r"][data-status="completed"]', timeout=10000)
        page.wait_for_selector(".toast:has-text('While you were away')", timeout=10000)
    assert console_has(page, "(replayed)")
    assert any(re.search(r"reconnecting in \d+ms \(attempt 1/10\)", line) for line in page.console_lines)


def test_an_open_page_resyncs_when_its_tenant_is_created_again(stack, page, publisher):
    """A new epoch: the tenant's seq and versions start again from 1, and the page follows them."""
    tenant = f"a{uuid.uuid4().hex[:10]}"  # sorts first: the admin's default tenant
    stack.create_tenant(tenant)
    email = f"admin-{tenant}@example.test"
    stack.sql(
        "INSERT INTO users (email, password_hash, tenant_id, is_admin, created_at) VALUES (%s, %s, NULL, true, now())",
        (email, generate_password_hash(PASSWORD)),
    )
    publisher.publish(started(tenant, "c1", 10, name="First life"))
    for number in range(5):
        publisher.publish(event(tenant, "c1", "message_sent", message_id=f"m{number}"))
    wait_until(lambda: stack.campaign(tenant, "c1") and stack.campaign(tenant, "c1")["sent"] == 5, 10)
    log_in(page, stack.servers[0], email)
    page.wait_for_selector(LIVE, timeout=15000)
    page.wait_for_function(
        "id => document.querySelector(`tr[data-id='${id}'] [data-field=sent]`)?.textContent.trim() === '5'", arg="c1"
    )

    stack.sql("DELETE FROM tenants WHERE id = %s", (tenant,))
    stack.create_tenant(tenant)
    publisher.publish(started(tenant, "c1", 3, name="Second life"))
    publisher.publish(event(tenant, "c1", "message_sent", message_id="again"))
    page.wait_for_function(
        "id => document.querySelector(`tr[data-id='${id}'] [data-field=name]`)?.textContent.trim() === 'Second life'",
        arg="c1",
        timeout=20000,
    )
    wait_until(lambda: cell(page, "c1", "sent").inner_text().strip() == "1", 10, message="the new life's count")
    assert console_has(page, "resync: epoch_changed")
    assert page.locator("#connection").get_attribute("data-state") == "live"


def test_a_failing_campaign_shows_its_alert_on_the_dashboard_and_its_page(stack, page, publisher, screenshot):
    tenant = stack.create_tenant(name="Failing Co")
    log_in(page, stack.servers[0], create_user(stack, tenant))
    page.wait_for_selector(LIVE, timeout=15000)
    publisher.publish(started(tenant, "promo", 500, name="Promo"))
    for number in range(15):
        publisher.publish(event(tenant, "promo", "message_sent", message_id=f"s{number}"))
    for number in range(10):
        publisher.publish(event(tenant, "promo", "message_failed", message_id=f"f{number}", error="number banned"))
    banner = row(page, "promo").locator('[data-field="failure_alert"]')
    banner.wait_for(state="visible", timeout=10000)
    # The rate follows the messages as the worker's batches apply them: 40 % once all are in.
    pattern = r"Failing: 40% of the messages of the last 60 s, since \d\d:\d\d:\d\d UTC"
    wait_until(lambda: re.search(pattern, banner.inner_text()), 10, message="the banner at 40 %")
    wait_until(lambda: page.locator("#toasts").inner_text().count("Promo is failing:") == 1, 5, message="one toast")

    page.goto(stack.servers[0].url + "/campaigns/promo")
    page.wait_for_selector(LIVE, timeout=15000)
    assert "Failing: 40%" in page.locator('#campaign [data-field="failure_alert"]').inner_text()
    screenshot_path(screenshot, "failure-alert.png")
    publisher.publish(event(tenant, "promo", "campaign_paused", reason="provider outage"))
    page.locator('#campaign [data-field="failure_alert"]').wait_for(state="hidden", timeout=10000)
