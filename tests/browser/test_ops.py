"""The ops page in a real browser against a real stack (two servers, a worker, RabbitMQ, PostgreSQL)."""

import uuid

import pytest
from werkzeug.security import generate_password_hash

from tests import support
from tests.browser.test_dashboard import PASSWORD, create_user, log_in, screenshot_path
from tests.support import event, wait_until
from tests.test_pipeline import started


@pytest.fixture
def ops_stack(database, vhost, tmp_path):
    """Two servers heartbeating every second and one worker."""
    with support.Stack(database, vhost, tmp_path, SERVER_HEARTBEAT_SECONDS=1) as stack:
        stack.start_server()
        stack.start_server()
        stack.start_worker()
        yield stack


def create_admin(stack):
    email = f"admin-{uuid.uuid4().hex[:6]}@example.test"
    stack.sql(
        "INSERT INTO users (email, password_hash, tenant_id, is_admin, created_at) VALUES (%s, %s, NULL, true, now())",
        (email, generate_password_hash(PASSWORD)),
    )
    return email


def text(page, selector):
    return page.locator(selector).inner_text().strip()


def test_an_admin_sees_live_figures_and_requeues_a_dead_letter(ops_stack, page, screenshot, clients):
    stack = ops_stack
    tenant = stack.create_tenant(name="Acme Retail")
    late = f"late{uuid.uuid4().hex[:6]}"
    with stack.publisher() as publisher:
        publisher.publish(started(tenant, "bf", 1000, name="Black Friday"))
        for number in range(40):
            publisher.publish(event(tenant, "bf", "message_sent", message_id=f"m{number}"))
        publisher.publish(event(late, "early", "campaign_started", name="Too early", total_messages=2))
        publisher.publish_raw(b"{broken", f"{tenant}.message_sent")
    wait_until(lambda: (stack.campaign(tenant, "bf") or {}).get("sent") == 40, 15, message="the events applied")
    clients.append(stack.client(tenant, server=stack.servers[0]))
    clients.append(stack.client(tenant, server=stack.servers[1], transports=("polling",)))

    log_in(page, stack.servers[0], create_admin(stack))
    page.goto(stack.servers[0].url + "/ops")
    page.wait_for_selector("#ops-state[data-state=live]", timeout=10000)
    assert text(page, "[data-field=consumers]") == "1"
    assert text(page, "[data-field=depth]") == "0"
    assert float(text(page, "[data-field=events_per_second]")) > 0
    assert text(page, "[data-field=lag_p95]").endswith(" s")
    # Both servers, each with its own client and transport, and the tenant's total over both.
    page.wait_for_function("() => document.querySelectorAll('#servers tr[data-server]').length === 2", timeout=10000)
    page.wait_for_function(
        "t => document.querySelector(`#tenants tr[data-tenant='${t}'] td.num`)?.textContent === '2'",
        arg=tenant,
        timeout=10000,
    )
    rows = page.locator("#servers tr[data-server]")
    counts = [[int(rows.nth(i).locator("td").nth(n).inner_text()) for n in (1, 2)] for i in range(2)]
    websocket, polling = (sum(column) for column in zip(*counts))
    assert polling == 1 and websocket >= 1, counts
    page.wait_for_function("() => document.querySelector('[data-field=dead_total]').textContent === '2'", timeout=15000)
    assert "unknown_tenant" in text(page, "#dead-reasons") and "invalid_json" in text(page, "#dead-reasons")
    assert "{broken" in text(page, "#dead-letters")
    screenshot_path(screenshot, "ops.png")

    stack.create_tenant(late)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#dead-letters tr", has_text="unknown_tenant").locator("button.ops-requeue").click()
    page.wait_for_function("() => document.querySelector('[data-field=dead_total]').textContent === '1'", timeout=10000)
    assert "requeue: 1 done" in text(page, "[data-field=action_result]")
    state = wait_until(lambda: stack.campaign(late, "early"), 15, message="the requeued event applied")
    assert state["name"] == "Too early"
    assert "unknown_tenant" not in text(page, "#dead-reasons")
    assert not page.page_errors


def test_a_tenant_user_gets_404_for_the_ops_page(ops_stack, page):
    stack = ops_stack
    tenant = stack.create_tenant()
    log_in(page, stack.servers[0], create_user(stack, tenant))
    assert page.locator("a.ops-link").count() == 0
    assert page.goto(stack.servers[0].url + "/ops").status == 404
    assert page.goto(stack.servers[0].url + "/ops/status").status == 404
    page.context.clear_cookies()
    assert page.goto(stack.servers[0].url + "/ops").status == 404, "anonymous: 404 too, not a login redirect"
