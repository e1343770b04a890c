"""The connection indicator links to the troubleshooting guide when the socket cannot connect."""

from tests.browser.test_dashboard import LIVE, create_user, log_in

HELP = "#connection a.help"


def test_the_indicator_links_to_the_guide_while_the_socket_cannot_connect(stack, page):
    tenant = stack.create_tenant()
    email = create_user(stack, tenant)
    server = stack.servers[0]
    page.route("**/socket.io/**", lambda route: route.abort())
    log_in(page, server, email)
    page.wait_for_selector("#connection[data-state=error]", timeout=15000)
    link = page.locator(HELP)
    link.wait_for(state="visible", timeout=5000)
    assert link.inner_text() == "Troubleshooting"
    assert link.get_attribute("href") == "/help/troubleshooting"
    guide = page.request.get(server.url + link.get_attribute("href"))
    assert guide.status == 200 and guide.headers["content-type"].startswith("text/plain")
    text = guide.text()
    assert text.startswith("# Troubleshooting campaign-live") and "## The WebSocket does not connect" in text
    assert "flask --app app doctor" in text
    page.unroute("**/socket.io/**")
    page.wait_for_selector(LIVE, timeout=30000)
    assert page.locator(HELP).is_hidden()


def test_a_live_page_does_not_show_the_link(stack, page):
    tenant = stack.create_tenant()
    log_in(page, stack.servers[0], create_user(stack, tenant))
    page.wait_for_selector(LIVE, timeout=15000)
    assert page.locator(HELP).count() == 1 and page.locator(HELP).is_hidden()
