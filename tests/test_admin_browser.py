"""
The outbox admin in a real browser: Playwright driving Debian's chromium
against a live server.

Two things only a browser can show: that hostile HTML in a message's preview
never runs (no script, no event handler, no form reaching the admin), and
that the whole journey works (log in, filter, read, download, resend, send a
test email). Screenshots of the pages go to ``artifacts/``.

Without playwright or chromium these tests skip, saying why, except in CI
(``CI`` set), where they fail: CI installs both.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator
from email.message import MIMEPart
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import django
import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.urls import reverse

from django_mailkit import EmailMultiAlternatives, send_mail
from django_mailkit.models import OutboxMessage, Status
from django_mailkit.suppression import suppress
from tests.smtpserver import SMTPTestServer, mailer_config

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = os.environ.get("MAILKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHANGE_FORM_ACTIONS = django.VERSION >= (6, 1)
PASSWORD = "browser-test-password"
MARKER = "rendered-in-the-sandbox"


def missing() -> str | None:
    """Why the browser can't run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install 'playwright>=1.40')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, but {reason}.")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread, which makes
    # Django refuse ORM calls from the test. Nothing here is async code:
    # the loop only drives the browser.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            instance = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS
            )
            yield instance
            instance.close()
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    context = browser.new_context(
        base_url=live_server.url,
        accept_downloads=True,
        viewport={"width": 1440, "height": 900},
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def smtp_server():
    """One plain SMTP server: the admin doesn't depend on how SMTP is spoken."""
    server = SMTPTestServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def outbox(smtp_server: Any) -> Iterator[Any]:
    """The default mailer queues; "smtp" delivers to the test server, at once."""
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "smtp"},
            },
            "smtp": mailer_config(smtp_server),
        },
        MAILKIT={"USE_TASKS": True},
    ):
        yield smtp_server


def log_in(page: Any) -> None:
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def admin_url(name: str, *args: Any) -> str:
    return reverse(f"admin:django_mailkit_outboxmessage_{name}", args=args)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real (decodable) PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class Beacon:
    """A local HTTP server that records every request: what hostile HTML reached."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def beacon() -> Iterator[Beacon]:
    server = Beacon()
    yield server
    server.close()


def hostile_html(beacon: Beacon, admin_origin: str, target: int) -> str:
    """Email HTML that, if it ran, would tell the admin page and the beacon."""
    delete = f"{admin_origin}{admin_url('changelist')}"
    return f"""
<title>email</title>
<p id="marker">{MARKER}</p>
<script>
  parent.postMessage("script ran", "*");
  document.title = "pwned";
  fetch("{beacon.url}/script");
</script>
<img id="broken" src="data:image/png;base64,AAAA" onerror="
  parent.postMessage('onerror ran', '*'); new Image().src='{beacon.url}/onerror'">
<img src="{beacon.url}/remote-image.png">
<form id="prize" method="post" action="{delete}">
  <input type="hidden" name="action" value="delete_selected">
  <input type="hidden" name="_selected_action" value="{target}">
  <input type="hidden" name="post" value="yes">
  <button id="claim" type="submit">Claim your prize</button>
</form>
<form id="beacon-form" method="get" action="{beacon.url}/form">
  <button id="beacon-submit" type="submit">Go</button>
</form>
"""


def listen_for_messages(page: Any) -> None:
    """Record, in every page, what frames postMessage to it."""
    page.context.add_init_script(
        "window.__received = [];"
        "addEventListener('message', e => window.__received.push(String(e.data)));"
    )


def test_preview_runs_no_script_and_cannot_reach_the_admin(
    page, beacon, live_server, outbox
):
    listen_for_messages(page)
    log_in(page)
    target = OutboxMessage.objects.create(
        queued_via="default",
        mailer="smtp",
        from_email="a@example.com",
        recipients=["x@example.com"],
        subject="Bystander",
        mime=b"Subject: x\r\n\r\nx\r\n",
        status=Status.SENT,
    )
    html = hostile_html(beacon, live_server.url, target.pk)
    message = EmailMultiAlternatives("Hostile", "Plain", to=["victim@example.com"])
    message.attach_alternative(html, "text/html")
    message.send()
    record = OutboxMessage.objects.get(subject="Hostile")
    requests: list[tuple[str, str]] = []
    page.on("request", lambda request: requests.append((request.method, request.url)))

    page.goto(admin_url("change", record.pk))
    title = page.title()
    frame = page.frame_locator("iframe.mailkit-preview")
    # The HTML did render, in the sandbox.
    frame.locator("#marker").wait_for()
    assert frame.locator("#marker").inner_text() == MARKER
    # The broken image has loaded (and failed) by the time the page is done.
    page.wait_for_load_state("load")
    # Submitting either form does nothing: the sandbox has no allow-forms.
    frame.locator("#claim").click(no_wait_after=True)
    frame.locator("#beacon-submit").click(no_wait_after=True)
    page.wait_for_timeout(750)

    assert page.evaluate("window.__received") == []  # no script, no onerror
    assert page.title() == title != "pwned"
    assert beacon.hits == []  # no fetch, no remote image, no form
    assert [url for method, url in requests if method != "GET"] == []
    assert OutboxMessage.objects.filter(pk=target.pk).exists()
    preview = next(
        f for f in page.frames if f.url.endswith(admin_url("preview", record.pk))
    )
    assert preview.url == f"{live_server.url}{admin_url('preview', record.pk)}"

    # Opened as a page of its own, the preview is still sandboxed by its CSP.
    page.goto(admin_url("preview", record.pk))
    page.locator("#marker").wait_for()
    page.locator("#claim").click(no_wait_after=True)
    page.wait_for_timeout(500)
    assert page.title() == "email"
    assert beacon.hits == []
    assert OutboxMessage.objects.filter(pk=target.pk).exists()

    # The control: the same HTML, framed without the sandbox and the CSP,
    # does everything it says, in this browser. So the checks above can fail.
    page.goto(admin_url("changelist"))
    page.evaluate(
        "html => { const f = document.createElement('iframe');"
        " f.srcdoc = html; document.body.append(f); }",
        html,
    )
    page.wait_for_function("window.__received.length >= 2")
    assert sorted(page.evaluate("window.__received")) == ["onerror ran", "script ran"]
    for _ in range(50):
        if {"/script", "/onerror", "/remote-image.png"} <= set(beacon.hits):
            break
        page.wait_for_timeout(100)
    assert {"/script", "/onerror", "/remote-image.png"} <= set(beacon.hits)


def send_samples() -> dict[str, OutboxMessage]:
    """Send what the demo sends: plain, HTML with inline image, refused."""
    send_mail("Welcome aboard", "Hello Ann!", None, ["ann@example.com"])
    logo = MIMEPart()
    logo.set_content(
        png(48, 48, (65, 118, 144)),
        maintype="image",
        subtype="png",
        cid="<logo@example.com>",
    )
    newsletter = EmailMultiAlternatives(
        "Monthly newsletter", "Our news, in plain text.", to=["bob@example.com"]
    )
    newsletter.mixed_subtype = "related"
    newsletter.attach_alternative(
        f'<h1 id="headline">{MARKER}</h1>'
        '<img id="logo" src="cid:logo@example.com" alt="logo">',
        "text/html",
    )
    newsletter.attach(logo)
    newsletter.attach("report.csv", "month,sent\nMay,42\n", "text/csv")
    newsletter.send()
    send_mail(
        "Undeliverable", "Nobody reads this.", None, ["refused-carol@example.com"]
    )
    return {m.subject: m for m in OutboxMessage.objects.all()}


def test_the_admin_end_to_end(page, live_server, outbox):
    smtp_server = outbox
    messages = send_samples()
    assert messages["Undeliverable"].status == Status.FAILED
    assert len(smtp_server.deliveries) == 2
    ARTIFACTS.mkdir(exist_ok=True)

    log_in(page)
    page.get_by_role("link", name="Outbox messages").first.click()
    page.wait_for_url(f"**{admin_url('changelist')}")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 3
    assert page.locator(".mailkit-dashboard").is_visible()
    page.screenshot(path=str(ARTIFACTS / "admin-changelist.png"), full_page=True)

    # Filter: the failed one.
    page.locator("#changelist-filter").get_by_role("link", name="Failed").click()
    page.wait_for_url("**status__exact=failed**")
    assert rows.count() == 1
    assert "Undeliverable" in rows.first.inner_text()
    assert "refused-carol@example.com" in rows.first.inner_text()

    # Open the newsletter: its preview renders, with its inline image.
    page.goto(admin_url("changelist"))
    page.get_by_role("link", name="Monthly newsletter").click()
    page.wait_for_url(f"**{admin_url('change', messages['Monthly newsletter'].pk)}")
    frame = page.frame_locator("iframe.mailkit-preview")
    assert frame.locator("#headline").inner_text() == MARKER
    frame.locator("#logo").wait_for()
    assert (
        frame.locator("#logo").evaluate("img => img.complete && img.naturalWidth") == 48
    )
    assert (
        page.locator(".mailkit-parts").inner_text().count("\n") >= 2
    )  # logo.png, report.csv
    # Chromium paints an iframe for a full-page screenshot once it was seen.
    page.locator("iframe.mailkit-preview").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "admin-message.png"), full_page=True)

    # Download the .eml: the exact bytes.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download .eml").click()
    record = messages["Monthly newsletter"]
    assert Path(download.value.path()).read_bytes() == bytes(record.mime)
    assert download.value.suggested_filename == f"outbox-message-{record.pk}.eml"

    # Resend it, from the message page.
    if CHANGE_FORM_ACTIONS:
        page.select_option("select[name='CHANGE_FORM-action']", "resend")
        page.get_by_role("button", name="Run").click()
    else:
        page.get_by_role("button", name="Resend").click()
    # It asks first, explaining what resend does.
    page.wait_for_selector(".mailkit-confirm-page")
    assert "its whole envelope" in page.locator(".mailkit-explain").inner_text()
    page.get_by_role("button", name="Yes, resend").click()
    page.locator(".messagelist .success").wait_for()
    assert "Resent as message" in page.locator(".messagelist").inner_text()
    copy = OutboxMessage.objects.exclude(pk__in=[m.pk for m in messages.values()]).get()
    assert bytes(copy.mime) == bytes(record.mime)
    assert copy.status == Status.SENT  # delivered on commit
    assert len(smtp_server.deliveries) == 3

    # Send a test email.
    page.goto(admin_url("changelist"))
    page.get_by_role("link", name="Send test email").click()
    page.fill("#id_to", "dora@example.com")
    page.select_option("#id_mailer", "smtp")
    page.screenshot(path=str(ARTIFACTS / "admin-send-test-email.png"), full_page=True)
    page.get_by_role("button", name="Send test email").click()
    page.locator(".messagelist .success").wait_for()
    assert (
        "Sent a test email with mailer 'smtp' to dora@example.com."
        in page.locator(".messagelist").inner_text()
    )
    assert smtp_server.deliveries[-1].rcpt_tos == ["dora@example.com"]


# Layout: every page, at two widths, light and dark, on the oldest and the
# newest supported Django (6.0 shares 5.2's admin layout and CSS hooks).

LAYOUT_VERSIONS = {(5, 2), (6, 1)}
WIDTHS = [1280, 1920]
SCHEMES = ["light", "dark"]

#: Per page: pairs of elements whose boxes must not overlap.
APART = {
    "changelist": [
        (".object-tools", ".mailkit-dashboard"),
        ("#content h1", ".mailkit-dashboard"),
        (".mailkit-dashboard", "#changelist"),
        (".breadcrumbs", "#content"),
    ],
    "message": [
        (".object-tools", "#content-main fieldset"),
        (".mailkit-tabs", "iframe.mailkit-preview"),
        (".breadcrumbs", "#content"),
    ],
    "failed-message": [
        (".breadcrumbs", "#content"),
        (".mailkit-tabs", ".mailkit-recipients"),
    ],
    "send-test-email": [
        (".breadcrumbs", "#content"),
        ("#send-test-email-form fieldset", ".submit-row"),
    ],
    "confirm-resend": [
        (".breadcrumbs", "#content"),
        (".mailkit-explain", ".mailkit-confirm-list"),
        (".mailkit-confirm-list", "input[type=submit]"),
    ],
    "suppressions": [
        (".breadcrumbs", "#content"),
        ("#toolbar", "#result_list"),
    ],
    "confirm-unsuppress": [
        (".breadcrumbs", "#content"),
        (".mailkit-explain", ".mailkit-confirm-list"),
        (".mailkit-confirm-list", "input[type=submit]"),
    ],
}


def boxes(page: Any, selectors: list[str]) -> dict[str, dict[str, float]]:
    """Each selector's first visible element's box, in page coordinates."""
    return page.evaluate(
        """selectors => Object.fromEntries(selectors.map(s => {
            const el = Array.from(document.querySelectorAll(s))
                .find(e => e.getClientRects().length);
            if (!el) return [s, null];
            const r = el.getBoundingClientRect();
            return [s, {x: r.left + scrollX, y: r.top + scrollY,
                        width: r.width, height: r.height}];
        }))""",
        selectors,
    )


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"] - 1
        and b["x"] < a["x"] + a["width"] - 1
        and a["y"] < b["y"] + b["height"] - 1
        and b["y"] < a["y"] + a["height"] - 1
    )


def check_layout(page: Any, name: str) -> list[str]:
    """What is wrong with the page's layout (an empty list: nothing)."""
    problems = []
    pairs = APART[name]
    found = boxes(page, sorted({s for pair in pairs for s in pair}))
    for first, second in pairs:
        a, b = found[first], found[second]
        if a is None or b is None:
            problems.append(f"missing: {first if a is None else second}")
        elif overlap(a, b):
            problems.append(f"{first} overlaps {second}: {a} / {b}")
    # Breadcrumbs are one line (a raw numbered list is several).
    crumbs = found.get(".breadcrumbs") or boxes(page, [".breadcrumbs"])[".breadcrumbs"]
    if crumbs and crumbs["height"] > 60:
        problems.append(f"breadcrumbs are {crumbs['height']}px tall")
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    if overflow > 0:
        problems.append(f"the page scrolls sideways by {overflow}px")
    # The changelist's columns fit: no column hides behind a sideways scroll.
    hidden = page.evaluate(
        "(() => { const r = document.querySelector('.results');"
        " return r ? r.scrollWidth - r.clientWidth : 0; })()"
    )
    if hidden > 0:
        problems.append(f"the list's columns overflow by {hidden}px")
    return problems


@pytest.mark.skipif(
    django.VERSION[:2] not in LAYOUT_VERSIONS,
    reason="the screenshot matrix runs on Django 5.2 and 6.1",
)
def test_every_page_lays_out_at_two_widths_light_and_dark(browser, live_server, outbox):
    messages = send_samples()
    failed = messages["Undeliverable"]
    OutboxMessage.objects.filter(pk=failed.pk).update(
        last_error="refused-carol@example.com: 550 5.1.1 <refused-carol@example.com>: "
        "Recipient address rejected: User unknown in virtual mailbox table"
    )
    newsletter = messages["Monthly newsletter"]
    suppress(
        ["a-rather-long-address.for-the-layout@subdomain.example.com"],
        reason="bounced",
        mailer="default",
        smtp_code=550,
        smtp_reply="5.1.1 <a-rather-long-address.for-the-layout@subdomain.example"
        ".com>: Recipient address rejected: User unknown in virtual mailbox table",
        source="outbox message 1",
    )
    suppress(["unsubscribed@example.com"], reason="unsubscribed")
    suppressions = reverse("admin:django_mailkit_suppression_changelist")
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    ARTIFACTS.mkdir(exist_ok=True)
    version = "django{}{}".format(*django.VERSION[:2])
    problems = {}
    for scheme in SCHEMES:
        context = browser.new_context(
            base_url=live_server.url,
            viewport={"width": WIDTHS[0], "height": 900},
            color_scheme=scheme,
        )
        context.set_default_timeout(10_000)
        page = context.new_page()
        page.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            for name in APART:
                if name == "confirm-resend":
                    page.goto(admin_url("changelist"))
                    page.locator(f"input[value='{newsletter.pk}']").check()
                    page.select_option("select[name=action]", "resend")
                    page.locator("button[name=index]").first.click()
                    page.wait_for_selector(".mailkit-confirm-page")
                elif name == "confirm-unsuppress":
                    page.goto(suppressions)
                    page.locator("input.action-select").first.check()
                    page.select_option("select[name=action]", "unsuppress")
                    page.locator("button[name=index]").first.click()
                    page.wait_for_selector(".mailkit-confirm-page")
                elif name == "suppressions":
                    page.goto(suppressions)
                else:
                    page.goto(
                        {
                            "changelist": admin_url("changelist"),
                            "message": admin_url("change", newsletter.pk),
                            "failed-message": admin_url("change", failed.pk),
                            "send-test-email": admin_url("send_test_email"),
                        }[name]
                    )
                if name == "message":
                    # The preview is as tall as its content.
                    frame = page.locator("iframe.mailkit-preview")
                    page.frame_locator("iframe.mailkit-preview").locator(
                        "#logo"
                    ).wait_for()
                    page.wait_for_function(
                        "() => { const f = document.querySelector("
                        "'iframe.mailkit-preview'); const d = f.contentDocument;"
                        " return d && d.readyState === 'complete' &&"
                        " Math.abs(f.clientHeight - d.documentElement.scrollHeight)"
                        " <= 4; }"
                    )
                    assert frame.bounding_box()["height"] < 400  # not 30rem
                found = check_layout(page, name)
                if found:
                    problems[f"{name} {width} {scheme}"] = found
                page.screenshot(
                    path=str(
                        ARTIFACTS / f"layout-{version}-{name}-{width}-{scheme}.png"
                    ),
                    full_page=True,
                )
        context.close()
    assert problems == {}


def test_loading_remote_images_loads_images_only(page, beacon, outbox):
    """With remote images allowed, nothing but images is fetched."""
    log_in(page)
    html = f"""
<meta http-equiv="refresh" content="1; url={beacon.url}/refresh">
<link rel="prefetch" href="{beacon.url}/prefetch">
<LINK REL=prefetch HREF="{beacon.url}/prefetch-upper">
<svg><link rel="prefetch" href="{beacon.url}/prefetch-svg"/></svg>
<link rel="prerender" href="{beacon.url}/prerender">
<link rel="stylesheet" href="{beacon.url}/stylesheet.css">
<link rel="preload" as="fetch" href="{beacon.url}/preload-fetch">
<link rel="modulepreload" href="{beacon.url}/modulepreload.js">
<style>@import url("{beacon.url}/import.css");
  @font-face {{ font-family: x; src: url("{beacon.url}/font.woff"); }}
  p {{ font-family: x; }}</style>
<p id="marker">{MARKER}</p>
<img id="remote" src="{beacon.url}/image.png">
<video poster="{beacon.url}/poster.png" src="{beacon.url}/video.mp4"></video>
<audio src="{beacon.url}/audio.mp3" autoplay></audio>
<object data="{beacon.url}/object"></object>
<embed src="{beacon.url}/embed">
<iframe src="{beacon.url}/iframe"></iframe>
"""
    message = EmailMultiAlternatives("Remote", "Plain", to=["ann@example.com"])
    message.attach_alternative(html, "text/html")
    message.send()
    record = OutboxMessage.objects.get(subject="Remote")

    page.goto(admin_url("change", record.pk))
    page.frame_locator("iframe.mailkit-preview").locator("#marker").wait_for()
    page.wait_for_timeout(1500)
    assert beacon.hits == []  # blocked: nothing at all

    page.get_by_role("link", name="Load remote images").click()
    page.frame_locator("iframe.mailkit-preview").locator("#marker").wait_for()
    for _ in range(30):
        if "/image.png" in beacon.hits:
            break
        page.wait_for_timeout(100)
    page.wait_for_timeout(1500)  # past the refresh's second
    images = {"/image.png", "/poster.png"}
    assert "/image.png" in beacon.hits
    assert set(beacon.hits) <= images, beacon.hits
