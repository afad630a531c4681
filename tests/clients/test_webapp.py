"""The embedded web app in a real browser (Debian Chromium through Playwright):
subscribe, render, update/delete by sequence, publish from the form, log in, ACL
refusals, the admin view, dark mode, a phone-size viewport, axe-core.

Screenshots go to tests/clients/artifacts/ (gitignored; the README's come from here).
"""

from __future__ import annotations

import time
import urllib.parse

import pytest

from conftest import start_herald, stop_herald
from test_auth_clients import herald_cli
from webapp_support import JsonStream, axe_serious, new_page, open_app, shot

ADMIN, ADMIN_PW = "ada", "ada-secret-pw"
USER, USER_PW = "phil", "phil-secret-pw"


def publish(herald, path: str, body: str = "", headers: dict | None = None, method: str = "PUT"):
    status, _, out = herald.request(method, path, body, headers or {})
    assert status == 200, (path, status, out)


def test_served_files_and_routing(herald):
    """`/` and `/<topic>` give a browser the app (curl keeps the text pointer and
    ntfy's 404); the files carry ETags and answer 304 when unchanged."""
    status, headers, body = herald.request("GET", "/mytopic", headers={"Accept": "text/html"})
    assert status == 200 and body.startswith(b"<!doctype html>"), body[:80]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert herald.request("GET", "/mytopic")[0] == 404
    status, headers, body = herald.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/plain"), headers
    status, headers, body = herald.request("GET", "/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    status, _, _ = herald.request("GET", "/static/app.js", headers={"If-None-Match": headers["etag"]})
    assert status == 304
    status, _, body = herald.request("GET", "/config.js")
    assert status == 200 and body.startswith(b"// Generated") and b'"app_root":"/"' in body
    status, headers, body = herald.request("GET", "/manifest.webmanifest")
    assert status == 200 and headers["content-type"] == "application/manifest+json"
    assert herald.request("GET", "/sw.js")[0] == 200
    assert herald.request("GET", "/static/nope.js")[0] == 404
    # The gzip copies (scripts/web-assets-gzip.sh) are the files, compressed.
    import gzip

    for path in ["/", "/static/app.js", "/static/render.js", "/static/api.js", "/static/admin.js",
                 "/static/style.css", "/static/icon.svg", "/sw.js"]:
        html = {"Accept": "text/html"} if path == "/" else {}
        _, plain_headers, plain = herald.request("GET", path, headers=html)
        status, headers, packed = herald.request("GET", path, headers={**html, "Accept-Encoding": "gzip, br"})
        assert status == 200 and headers["content-encoding"] == "gzip", (path, headers)
        assert gzip.decompress(packed) == plain, f"{path}: stale .gz, run scripts/web-assets-gzip.sh"
        assert headers["etag"] != plain_headers["etag"]


def test_web_root_disable_and_path(tmp_path):
    off = start_herald(tmp_path / "off", ["--web-root", "disable"])
    try:
        assert off.request("GET", "/mytopic", headers={"Accept": "text/html"})[0] == 404
        assert off.request("GET", "/config.js")[0] == 404
        assert off.request("GET", "/", headers={"Accept": "text/html"})[2].startswith(b"herald ")
    finally:
        stop_herald(off.proc)
    app = start_herald(tmp_path / "app", ["--web-root", "/app"])
    try:
        assert app.request("GET", "/app")[2].startswith(b"<!doctype html>")
        assert app.request("GET", "/", headers={"Accept": "text/html"})[2].startswith(b"herald ")
        assert b'"app_root":"/app"' in app.request("GET", "/v1/config")[2]
    finally:
        stop_herald(app.proc)


def test_subscribe_in_the_ui_then_curl_publish_renders_everything(browser, herald):
    context, page = new_page(browser, herald.url)
    open_app(page, "/mytopic")  # ntfy: opening /<topic> subscribes to it
    page.wait_for_selector("#topics a[href='/mytopic']")
    image = f"{herald.url}/static/icon.svg"
    publish(herald, "/mytopic", "Disk **almost** full: see [the graph](https://example.com/g)\n- sda1 97%\n<img src=x onerror=alert(1)>", {
        "Title": "Backup done", "Tags": "warning,backup", "Priority": "5", "Markdown": "yes",
        "Attach": image, "Click": "https://example.com/click",
        "Actions": "view, Open dashboard, https://example.com/dash; http, Retry, https://example.com/retry; broadcast, Hidden",
    })
    card = page.locator("#notifications li.card").first
    card.wait_for()
    assert card.locator("h3.title").inner_text() == "⚠️ Backup done"
    assert card.locator(".md strong").inner_text() == "almost"
    assert card.locator(".md a").get_attribute("href") == "https://example.com/g"
    assert card.locator(".md li").inner_text() == "sda1 97%"
    # Markup in a message is text, never elements.
    assert card.locator(".md img").count() == 0
    assert "<img src=x onerror=alert(1)>" in card.locator(".md").inner_text()
    assert card.locator(".tags li").all_inner_texts() == ["backup"]
    assert card.locator("img.attachment").get_attribute("src") == image
    assert card.locator(".prio").inner_text() == "priority max"
    assert card.locator(".actions a", has_text="Open dashboard").get_attribute("href") == "https://example.com/dash"
    assert card.locator(".actions button", has_text="Retry").count() == 1
    assert card.locator(".actions", has_text="Hidden").count() == 0
    assert page.locator("#topics a[href='/mytopic'] .badge").inner_text() == "1"
    publish(herald, "/mytopic", "plain *not markdown*", {"Title": "Second"})
    page.wait_for_selector("#notifications li.card >> nth=1")
    assert page.locator("#notifications li.card").first.locator(".text").inner_text() == "plain *not markdown*"
    shot(page, "topic-light")
    # Mark one read, then delete it from the list.
    page.locator("#notifications li.card").first.get_by_role("button", name="Mark read").click()
    assert page.locator("#topics a[href='/mytopic'] .badge").inner_text() == "1"
    page.locator("#notifications li.card").first.get_by_role("button", name="Delete notification").click()
    assert page.locator("#notifications li.card").count() == 1
    # Remembered across a reload, and resumed with since= (no duplicates).
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    publish(herald, "/mytopic", "after reload")
    page.wait_for_selector("text=after reload")
    assert page.locator("#notifications li.card").count() == 2
    assert page.js_errors == []
    context.close()


def test_update_and_delete_by_sequence(browser, herald):
    context, page = new_page(browser, herald.url)
    open_app(page, "/seqs")
    page.wait_for_selector("#topics a[href='/seqs']")
    time.sleep(0.3)  # the WebSocket's open
    publish(herald, "/seqs/job-1", "running", {"Title": "Job 1"})
    page.wait_for_selector("text=running")
    publish(herald, "/seqs/job-1", "finished", {"Title": "Job 1"})
    page.wait_for_selector("text=finished")
    assert page.locator("#notifications li.card").count() == 1
    publish(herald, "/seqs/job-1", method="DELETE")
    page.wait_for_selector("#notifications li.card", state="detached")
    assert page.locator("#empty").is_visible()
    context.close()


def test_publish_from_the_form_reaches_a_json_subscriber(browser, herald):
    stream = JsonStream(f"{herald.url}/formtopic/json")
    assert stream.opened.wait(10)
    context, page = new_page(browser, herald.url)
    open_app(page, "/formtopic")
    page.get_by_role("button", name="Publish").click()
    form = page.locator("#publish-form")
    assert form.locator("input[name=topic]").input_value() == "formtopic"
    form.get_by_label("Title").fill("From the browser")
    form.get_by_label("Message").fill("Hello **world**")
    form.get_by_label("Markdown").check()
    form.get_by_label("Priority").select_option("4")
    form.get_by_label("Tags").fill("tada,web")
    form.get_by_label("Click URL").fill("https://example.com/x")
    shot(page, "publish-dialog")
    form.get_by_role("button", name="Send").click()
    page.wait_for_selector("#publish-dialog", state="hidden")
    m = stream.only_message()
    assert (m["title"], m["message"], m["priority"], m["tags"], m["click"], m["content_type"]) == (
        "From the browser", "Hello **world**", 4, ["tada", "web"], "https://example.com/x", "text/markdown",
    )
    page.wait_for_selector("#notifications .md strong")
    # A bad delay is the server's 400, shown in the form.
    page.get_by_role("button", name="Publish").click()
    form.get_by_label("Message").fill("later")
    form.get_by_label("Delay").fill("not a time")
    form.get_by_role("button", name="Send").click()
    page.wait_for_selector("#publish-error:has-text('400')")
    context.close()


@pytest.fixture
def private_herald(tmp_path):
    data = tmp_path / "data"
    server = start_herald(data, ["--auth-default-access", "deny-all", "--webhook-allow-private", "true"])
    herald_cli(data, "user", "add", "--role", "admin", ADMIN, password=ADMIN_PW)
    herald_cli(data, "user", "add", USER, password=USER_PW)
    herald_cli(data, "access", USER, "team*", "rw")
    yield server
    stop_herald(server.proc)


def basic(user: str, pw: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_login_and_acl_refusals(browser, private_herald):
    server = private_herald
    context, page = new_page(browser, server.url)
    open_app(page, "/team-alerts")
    # Anonymous: refused, and the app says why.
    page.wait_for_selector("#topics .warn:has-text('login required (403)')")
    page.get_by_role("button", name="Log in").click()
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill("wrong")
    page.locator("#login-form").get_by_role("button", name="Log in").click()
    page.wait_for_selector("#login-error:has-text('401')")
    page.get_by_label("Password").fill(USER_PW)
    page.locator("#login-form").get_by_role("button", name="Log in").click()
    page.wait_for_selector(f"#logout:has-text('{USER}')")
    assert page.locator("#admin-open").is_hidden()
    page.wait_for_selector("#topics a[href='/team-alerts']:not(:has(.warn))")
    time.sleep(0.3)
    publish(server, "/team-alerts", "for the team", basic(ADMIN, ADMIN_PW))
    page.wait_for_selector("text=for the team")
    # A topic outside the user's grants: 403 in the list and in the publish form.
    page.get_by_label("Subscribe to topic").fill("secret")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    page.wait_for_selector("#topics .warn:has-text('access denied (403)')")
    page.get_by_role("button", name="Publish").click()
    page.get_by_label("Message").fill("nope")
    page.locator("#publish-form").get_by_role("button", name="Send").click()
    page.wait_for_selector("#publish-error:has-text('403')")
    shot(page, "acl-refusal")
    context.close()


def test_admin_view_lists_a_webhooks_failed_attempts(browser, private_herald):
    server = private_herald
    # A webhook whose endpoint refuses connections (nothing listens on port 9).
    import json

    status, _, body = server.request(
        "POST", "/v1/webhooks",
        json.dumps({"topic": "team-ops", "url": "http://127.0.0.1:9/hook"}),
        {**basic(ADMIN, ADMIN_PW), "Content-Type": "application/json"},
    )
    assert status == 201, body
    publish(server, "/team-ops", "deploy", basic(ADMIN, ADMIN_PW))
    context, page = new_page(browser, server.url)
    open_app(page)
    page.evaluate(f"localStorage.setItem('herald.auth', JSON.stringify({{user: '{ADMIN}', password: '{ADMIN_PW}'}}))")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_role("button", name="Admin").click()
    page.wait_for_selector("#admin-view .figure")
    deadline = time.monotonic() + 20
    while page.locator("#admin-view tr.failed").count() == 0 and time.monotonic() < deadline:
        page.get_by_role("button", name="Admin").click()  # re-read the attempts
        time.sleep(1)
    failed = page.locator("#admin-view tr.failed").first
    assert failed.is_visible()
    assert "refused" in failed.inner_text().lower() or "connect" in failed.inner_text().lower(), failed.inner_text()
    assert page.locator("#admin-view td", has_text=USER).count() >= 1
    assert page.locator("#admin-view td", has_text="team*: read-write").count() == 1
    page.get_by_role("button", name="Replay last hour").click()
    page.wait_for_selector("text=Replayed")
    shot(page, "admin")
    # Add a user from the view; the server has it.
    page.get_by_label("New user").fill("newbie")
    page.locator("#admin-view input[name=p]").fill("newbie-pass-1")
    page.get_by_role("button", name="Add user").click()
    page.wait_for_selector("#admin-view td:text-is('newbie')")
    # Reset a user's access entries.
    page.get_by_role("button", name=f"Reset access of {USER}").click()
    page.wait_for_selector("#admin-view td:text-is('team*: read-write')", state="detached")
    # Tokens: create one (shown once, and it works), then remove it.
    page.get_by_label("Token label").fill("ci-bot")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#admin-view code.new-token").inner_text()
    assert token.startswith("tk_"), token
    status, _, _ = server.request("GET", "/v1/account", headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    page.get_by_role("button", name="Remove token ci-bot").click()
    page.wait_for_selector("#admin-view td:text-is('ci-bot')", state="detached")
    status, _, _ = server.request("GET", "/v1/account", headers={"Authorization": f"Bearer {token}"})
    assert status == 401
    context.close()


def test_dark_mode_phone_viewport_and_accessibility(browser, herald):
    publish(herald, "/phone", "The **build** passed", {"Title": "CI", "Tags": "white_check_mark,main", "Markdown": "yes"})
    for scheme in ("light", "dark"):
        context, page = new_page(browser, herald.url, color_scheme=scheme, viewport={"width": 390, "height": 844},
                                 is_mobile=True, has_touch=True)
        open_app(page, "/phone")
        page.wait_for_selector("#notifications li.card")
        bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (bg == "rgb(17, 20, 24)") == (scheme == "dark"), bg
        # Phone: the topic list is behind the menu button.
        assert page.locator("#nav").is_hidden()
        shot(page, f"phone-{scheme}")
        assert axe_serious(page) == []
        page.get_by_role("button", name="Show topics").click()
        assert page.locator("#nav").is_visible()
        page.get_by_role("button", name="Publish").click()
        assert axe_serious(page) == [], "publish dialog"
        context.close()
    # Desktop, the theme switched by hand, keyboard only.
    context, page = new_page(browser, herald.url, viewport={"width": 1280, "height": 800})
    open_app(page, "/phone")
    page.get_by_role("button", name="Switch light or dark theme").click()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    page.wait_for_selector("#notifications li.card")
    assert axe_serious(page) == []
    shot(page, "desktop-dark")
    # Keyboard only: Tab reaches the subscribe field and the Publish button, Enter
    # subscribes.
    page.evaluate("document.activeElement.blur()")
    seen = []
    for _ in range(20):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.id"))
        if seen[-1] == "subscribe-topic":
            break
    assert seen[-1] == "subscribe-topic", seen
    page.keyboard.type("kbd-topic")
    page.keyboard.press("Enter")
    page.wait_for_selector("#topics a[href='/kbd-topic'][aria-current=page]")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "publish-open":
            break
    page.keyboard.press("Enter")
    assert page.locator("#publish-dialog").is_visible()
    context.close()


def test_first_load_size_and_time_to_interactive(browser, herald):
    """Measured, never asserted against a timing: the figures docs/BENCHMARKS.md quotes
    (printed with -s), next to a floor in the same browser and run (a new page loading
    one small file), measured first so the app does not get the warmer browser."""
    context0, page0 = new_page(browser, herald.url)
    start = time.monotonic()
    page0.goto("/static/icon.svg")
    floor = time.monotonic() - start
    context0.close()
    context, page = new_page(browser, herald.url)
    sizes: list[int] = []
    page.on("response", lambda r: sizes.append(int(r.headers.get("content-length", "0") or 0)))
    start = time.monotonic()
    open_app(page, "/t")
    tti = time.monotonic() - start
    print(f"\nfirst load: {len(sizes)} responses, {sum(sizes)} bytes; ready after {tti * 1000:.0f} ms"
          f" (floor, one small file in a new page: {floor * 1000:.0f} ms)")
    assert sum(sizes) < 80_000
    context.close()


# A 1x1 PNG, as a phone's camera would send a (larger) snapshot.
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2"
    "21bc330000000049454e44ae426082"
)


def test_form_uploads_a_file_and_the_image_renders_inline(browser, herald_files):
    """With attachments on (issue #14), the form's file field uploads the file
    (`PUT` with `X-Filename`); a JSON subscriber gets ntfy's attachment object and
    the app shows the image inline, loaded from the attachment's URL."""
    from conftest import FILES_BASE_URL

    herald = herald_files
    stream = JsonStream(f"{herald.url}/uploads/json")
    assert stream.opened.wait(10)
    context, page = new_page(browser, herald.url)
    # The attachment URLs name the server by its base-url: route them to it.
    page.route(
        f"{FILES_BASE_URL}/**",
        lambda route: route.continue_(url=route.request.url.replace(FILES_BASE_URL, herald.url)),
    )
    open_app(page, "/uploads")
    page.get_by_role("button", name="Publish").click()
    form = page.locator("#publish-form")
    file_input = form.get_by_label("Attach file")
    assert file_input.is_visible(), "the file field shows when the server stores attachments"
    file_input.set_input_files({"name": "snap.png", "mimeType": "image/png", "buffer": PNG_1x1})
    form.get_by_label("Message").fill("Front door")
    form.get_by_role("button", name="Send").click()
    page.wait_for_selector("#publish-dialog", state="hidden")
    m = stream.only_message()
    att = m["attachment"]
    assert (m["message"], att["name"], att["type"], att["size"]) == ("Front door", "snap.png", "image/png", len(PNG_1x1))
    img = page.locator("#notifications img.attachment")
    img.wait_for()
    page.wait_for_function("() => { const i = document.querySelector('#notifications img.attachment'); return i && i.complete && i.naturalWidth === 1; }")
    shot(page, "attachment-inline")
    context.close()
