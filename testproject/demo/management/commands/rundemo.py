"""
``manage.py rundemo``: the whole demo in one process.

Starts the mail sink, makes sure the demo admin user exists, starts a
delivery worker (for retries), sends the sample messages through the outbox
(when the outbox is empty, or with ``--samples``) and serves the site with
``runserver`` on 127.0.0.1. With ``--smoke`` it
checks the admin over HTTP instead of serving, and exits (for CI).
"""

from __future__ import annotations

import http.cookiejar
import re
import struct
import threading
import urllib.parse
import urllib.request
import zlib
from email.message import MIMEPart
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo.sink import start_sink
from django_mailkit import EmailMessage, EmailMultiAlternatives, send_mail
from django_mailkit.models import OutboxMessage
from django_mailkit.worker import Worker

USERNAME = PASSWORD = "admin"


class Command(BaseCommand):
    help = "Run the django_mailkit demo: mail sink, sample messages, web server."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport",
            nargs="?",
            default="127.0.0.1:8000",
            help="Where to serve the site (default: %(default)s).",
        )
        parser.add_argument(
            "--smoke",
            action="store_true",
            help="Check the admin over HTTP on a free port, then exit.",
        )
        samples = parser.add_mutually_exclusive_group()
        samples.add_argument(
            "--samples",
            action="store_true",
            help="Send the sample messages, even if an earlier run sent them.",
        )
        samples.add_argument(
            "--no-samples",
            action="store_true",
            help="Don't send the sample messages, even on the first run.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        sink_dir = settings.VAR_DIR / "sink"
        port = settings.DEMO_SMTP_PORT
        try:
            sink = start_sink(sink_dir, port, echo=self.stdout.write)
        except (OSError, RuntimeError) as exc:
            raise CommandError(
                f"Could not start the mail sink on 127.0.0.1:{port} ({exc}). Is "
                "another program using that port? Set DEMO_SMTP_PORT to another."
            ) from exc
        worker = Worker(interval=2.0)
        threading.Thread(target=worker.run, name="demo-worker", daemon=True).start()
        try:
            self.ensure_user()
            # The samples go once: on the first run (the outbox is empty),
            # or when asked. Running the demo again shows what is there.
            earlier = OutboxMessage.objects.count()
            if options["samples"] or not (earlier or options["no_samples"]):
                self.stdout.write("Sending the sample messages through the outbox:")
                send_samples()
                self.report()
            elif earlier:
                self.stdout.write(
                    f"The outbox has {earlier} messages from earlier runs; "
                    "--samples sends the sample messages again."
                )
            if options["smoke"]:
                smoke_test(self.stdout.write)
                self.stdout.write(self.style.SUCCESS("Smoke test passed."))
                return
            host, _colon, web_port = options["addrport"].rpartition(":")
            base = f"http://{host or '127.0.0.1'}:{web_port}"
            self.stdout.write(
                self.style.SUCCESS("\nThe django_mailkit demo is ready:\n")
                + f"  Admin:      {base}/admin/\n"
                + f"  Log in as:  user {USERNAME!r}, password {PASSWORD!r}\n"
                + f"  The outbox: {base}/admin/django_mailkit/outboxmessage/\n"
                + f"  Suppressed: {base}/admin/django_mailkit/suppression/\n"
                + f"  Mail sink:  127.0.0.1:{port}, messages saved in {sink_dir}\n"
                + "  Stop with Ctrl-C.\n"
            )
            call_command("runserver", options["addrport"], use_reloader=False)
        finally:
            worker.request_stop()
            sink.stop()

    def ensure_user(self) -> None:
        """The demo admin, with the demo password whatever happened before."""
        User = get_user_model()
        user = User.objects.filter(username=USERNAME).first()
        if user is None:
            User.objects.create_superuser(USERNAME, "admin@example.com", PASSWORD)
        else:
            user.is_staff = user.is_superuser = user.is_active = True
            user.set_password(PASSWORD)
            user.save()

    def report(self) -> None:
        self.stdout.write("The outbox now:")
        for message in OutboxMessage.objects.order_by("-created_at")[:8]:
            self.stdout.write(
                f"  #{message.pk:<4} {message.get_status_display():<15} "
                f"{message.subject!r} to {', '.join(message.recipients)}"
            )


def logo_png(size: int = 64) -> bytes:
    """A small PNG (a blue gradient with a stripe), made without any library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = bytearray()
    for y in range(size):
        rows.append(0)
        for x in range(size):
            stripe = abs(x - y) < 6
            rows += bytes((255, 255, 255) if stripe else (12, 60 + y * 2, 90 + x * 2))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


NEWSLETTER_HTML = """\
<div style="font-family: sans-serif; max-width: 36em; margin: 1em auto">
  <img src="cid:logo@demo.example" alt="Logo" width="64" height="64">
  <h1 style="color: #417690">This month at the demo</h1>
  <p>The logo above is an <b>inline image</b>: a MIME part with a
     Content-ID, shown by the preview.</p>
  <p>This one is a <b>remote image</b>, blocked until you click
     "Load remote images":</p>
  <img src="https://static.djangoproject.com/img/logos/django-logo-positive.png"
       alt="(remote image, blocked)" width="160">
</div>
"""

HOSTILE_HTML = """\
<h1>You won a prize!</h1>
<p>This message tries every trick; the admin's preview runs none of them.</p>
<script>alert("This script never runs."); document.title = "pwned";</script>
<img src="data:image/png;base64,AAAA" alt="broken image"
     onerror="alert('Nor does this event handler.')">
<form method="post" action="/admin/django_mailkit/outboxmessage/">
  <input type="hidden" name="action" value="delete_selected">
  <button type="submit">Claim it (this form can't be submitted)</button>
</form>
"""


def send_samples() -> None:
    """Send what the demo shows: plain, HTML with an inline image, attachment..."""
    send_mail(
        "Welcome to the django_mailkit demo",
        "Hello Ann,\n\nThis is a plain-text message, queued in the outbox and "
        "delivered to the demo's SMTP sink.\n\n-- The demo",
        None,
        ["Ann Example <ann@example.com>"],
    )

    newsletter = EmailMultiAlternatives(
        "Your monthly newsletter",
        "This month at the demo.\n\n(Open the HTML version to see the logo.)",
        to=["bob@example.com"],
    )
    newsletter.mixed_subtype = "related"
    newsletter.attach_alternative(NEWSLETTER_HTML, "text/html")
    logo = MIMEPart()
    logo.set_content(
        logo_png(),
        maintype="image",
        subtype="png",
        disposition="inline",
        filename="logo.png",
        cid="<logo@demo.example>",
    )
    newsletter.attach(logo)
    newsletter.send()

    invoice = EmailMessage(
        "Invoice #1042",
        "Hello Carol,\n\nYour invoice is attached.",
        to=["carol@example.com"],
        cc=["accounts@example.com"],
    )
    invoice.attach(
        "invoice-1042.csv", "item,amount\nHosting,40.00\nSupport,25.00\n", "text/csv"
    )
    invoice.send()

    send_mail(
        "Your account was closed",
        "This goes to an address the sink refuses (550): the message fails.",
        None,
        ["refused-dave@example.com"],
    )
    send_mail(
        "Team update",
        "One recipient is accepted, one refused: the message is partially sent.",
        None,
        ["erin@example.com", "refused-frank@example.com"],
    )

    hostile = EmailMultiAlternatives(
        "Suspicious HTML (a script, an event handler, a form)",
        "The HTML version of this message tries to run code in the admin.",
        to=["grace@example.com"],
    )
    hostile.attach_alternative(HOSTILE_HTML, "text/html")
    hostile.send()


def smoke_test(echo: Any) -> None:
    """Serve the site on a free port and walk the admin over real HTTP."""
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.servers.basehttp import (
        ThreadedWSGIServer,
        WSGIRequestHandler,
        get_internal_wsgi_application,
    )

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
    server.set_app(StaticFilesHandler(get_internal_wsgi_application()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    browser = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )

    def get(path: str) -> tuple[Any, str]:
        response = browser.open(base + path, timeout=30)
        return response, response.read().decode()

    try:
        _response, page = get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = {"csrfmiddlewaretoken": token, "username": USERNAME}
        form["password"] = PASSWORD
        form["next"] = "/admin/"
        response = browser.open(
            base + "/admin/login/",
            urllib.parse.urlencode(form).encode(),
            timeout=30,
        )
        assert response.url == base + "/admin/", f"login failed: {response.url}"
        _response, page = get("/admin/django_mailkit/outboxmessage/")
        for subject in ("Your monthly newsletter", "Invoice #1042"):
            assert subject in page, f"{subject!r} is not in the outbox"
        newsletter = OutboxMessage.objects.filter(subject="Your monthly newsletter")
        pk = newsletter.latest("pk").pk
        _response, page = get(f"/admin/django_mailkit/outboxmessage/{pk}/change/")
        # Sandboxed: its origin only (the page sizes it), never scripts.
        assert '<iframe class="mailkit-preview" sandbox="allow-same-origin" ' in page
        response, page = get(f"/admin/django_mailkit/outboxmessage/{pk}/preview/")
        policy = response.headers["Content-Security-Policy"]
        assert "sandbox allow-same-origin" in policy and "allow-scripts" not in policy
        assert "data:image/png;base64," in page, "the inline image is not embedded"
        _response, page = get("/admin/django_mailkit/suppression/")
        assert "Suppressed addresses" in page, "the suppression list is missing"
        for asset in ("admin.css", "message.js"):
            response, _page = get(f"/static/django_mailkit/{asset}")
            assert response.status == 200, asset
        echo(
            f"Checked over HTTP: login, the outbox, message {pk} and its preview, "
            "the suppression list."
        )
    finally:
        server.shutdown()
        server.server_close()
