"""
The outbox admin: permissions, actions, the message page, previews, the test
email page, and the changelist on large tables.

Every admin view and action is tried by an anonymous user (sent to the login
page), by staff without the permission (403, nothing changed) and by staff
with it. Delivery is real where it matters: messages go through the outbox
backend and, for attempt histories and test emails, to an aiosmtpd server.
"""

from __future__ import annotations

import base64
import email
import email.policy
import html
import re
from datetime import timedelta
from email.message import MIMEPart
from functools import partial
from html.parser import HTMLParser

import django
import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.core import mail
from django.db import connection, transaction
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from django_mailkit import EmailMultiAlternatives
from django_mailkit.admin import OutboxPaginator, resend_messages
from django_mailkit.admin.display import (
    PREVIEW_CSP,
    PREVIEW_CSP_REMOTE_IMAGES,
    ParsedMessage,
)
from django_mailkit.models import (
    Attempt,
    OutboxMessage,
    RecipientStatus,
    Status,
    Suppression,
)
from django_mailkit.worker import Worker
from tests.admin_users import staff
from tests.smtpserver import SMTPTestServer, mailer_config

pytestmark = pytest.mark.django_db

CHANGE_FORM_ACTIONS = django.VERSION >= (6, 1)
OUTBOX = "django_mailkit.backends.outbox.EmailBackend"
LOCMEM = "django_mailkit.backends.locmem.EmailBackend"
LOGIN = "/admin/login/"
#: Something only the HTML alternative of test messages contains.
HTML_MARKER = "only-in-the-html-7f3a"


def outbox_mailers(transport=None, **mailkit):
    """The default mailer queues in the outbox; "smtp" delivers."""
    return override_settings(
        MAILERS={
            "default": {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "smtp"}},
            "smtp": transport or {"BACKEND": LOCMEM},
            "notifications": {"BACKEND": LOCMEM},
        },
        MAILKIT={"USE_TASKS": False, **mailkit},
    )


@pytest.fixture
def smtp_server():
    """One plain SMTP server: the admin doesn't depend on how SMTP is spoken."""
    server = SMTPTestServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def outbox():
    mail.outbox = []
    with outbox_mailers():
        yield


def queue(subject="Hello", to=("ann@example.com",), *, html=None, attach=(), **kwargs):
    """Send a message through the outbox; return its record."""
    message = EmailMultiAlternatives(subject, "Plain body", to=list(to), **kwargs)
    if html is not None:
        message.attach_alternative(html, "text/html")
    for filename, content, mimetype in attach:
        message.attach(filename, content, mimetype)
    assert message.send() == 1
    return OutboxMessage.objects.order_by("-pk").first()


def set_status(record, status):
    OutboxMessage.objects.filter(pk=record.pk).update(status=status)
    record.refresh_from_db()
    return record


def admin_url(name, *args):
    return reverse(f"admin:django_mailkit_outboxmessage_{name}", args=args)


def superuser(username="root", **client_options):
    client = Client(**client_options)
    client.force_login(
        User.objects.create_superuser(username, "root@example.com", None)
    )
    return client


@pytest.fixture
def superuser_client():
    return superuser()


def snapshot():
    """The outbox and the admin log, to show that nothing changed."""
    return sorted(
        OutboxMessage.objects.values_list("pk", "status", "attempts", "updated_at")
    ) + [("logs", LogEntry.objects.count()), ("sent", len(mail.outbox))]


def assert_login_redirect(response):
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN + "?next=")


class IframeFinder(HTMLParser):
    def __init__(self):
        super().__init__()
        self.iframes = []

    def handle_starttag(self, tag, attrs):
        if tag == "iframe":
            self.iframes.append(dict(attrs))


def iframes(html):
    finder = IframeFinder()
    finder.feed(html)
    return finder.iframes


def action_post(action, *records, **extra):
    return {
        "action": action,
        "_selected_action": [r.pk for r in records],
        "index": 0,
        **extra,
    }


def without_raw_source(page):
    """The page without its "Raw source" tab (the message's bytes, as text)."""
    return re.sub(
        r'<pre class="mailkit-text mailkit-raw">.*?</pre>', "", page, flags=re.S
    )


def confirm_form(page):
    """The confirmation page's form: the fields it posts back."""
    form = re.search(r'<form method="post">(.*?)</form>', page, re.S).group(1)
    return [
        (name, html.unescape(value))
        for name, value in re.findall(
            r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form
        )
        if name != "csrfmiddlewaretoken"
    ]


def post_confirmed(client, url, data, **kwargs):
    """Post a risky action, check that it asks first, and confirm it."""
    before = snapshot()
    response = client.post(url, data)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="post" value="yes"' in page
    assert snapshot() == before  # nothing happens before the confirmation
    fields = confirm_form(page)
    data = {}
    for name, value in fields:
        data.setdefault(name, []).append(value)
    return client.post(url, data, **kwargs)


# Every custom view of the admin, and who may use it.

READ_VIEWS = ["change", "eml", "preview", "part"]


def read_url(view, record):
    if view == "part":
        (part,) = ParsedMessage(bytes(record.mime)).parts
        return admin_url("part", record.pk, part.index)
    return admin_url(view, record.pk)


@pytest.fixture
def html_message():
    return queue(
        "With HTML",
        html=f"<p>{HTML_MARKER}</p>",
        attach=[("notes.txt", "some notes", "text/plain")],
    )


class TestPermissions:
    @pytest.mark.parametrize("view", ["changelist", *READ_VIEWS])
    def test_anonymous_is_sent_to_login(self, view, html_message):
        url = (
            admin_url("changelist")
            if view == "changelist"
            else read_url(view, html_message)
        )
        assert_login_redirect(Client().get(url))

    @pytest.mark.parametrize("view", ["changelist", *READ_VIEWS])
    def test_staff_without_view_permission_is_refused(self, view, html_message):
        client = staff("resend_outboxmessage", "send_test_email")
        url = (
            admin_url("changelist")
            if view == "changelist"
            else read_url(view, html_message)
        )
        response = client.get(url)
        assert response.status_code == 403
        assert HTML_MARKER.encode() not in response.content

    @pytest.mark.parametrize("view", ["changelist", *READ_VIEWS])
    def test_staff_with_view_permission_may_read(self, view, html_message):
        client = staff("view_outboxmessage")
        url = (
            admin_url("changelist")
            if view == "changelist"
            else read_url(view, html_message)
        )
        assert client.get(url).status_code == 200

    def test_the_change_permission_also_lets_staff_read(self, html_message):
        # Django's rule: whoever may change may view.
        client = staff("change_outboxmessage")
        assert client.get(admin_url("preview", html_message.pk)).status_code == 200

    def test_missing_message_is_404_only_for_those_who_may_read(self):
        assert staff("view_outboxmessage").get(admin_url("eml", 999)).status_code == 404
        other = staff(username="nobody")
        assert other.get(admin_url("eml", 999)).status_code == 403

    def test_send_test_email_page(self):
        url = admin_url("send_test_email")
        data = {"to": "ann@example.com", "mailer": "smtp"}
        assert_login_redirect(Client().get(url))
        assert_login_redirect(Client().post(url, data))
        assert mail.outbox == []
        # The view permission on the outbox is not enough.
        viewer = staff("view_outboxmessage")
        assert viewer.get(url).status_code == 403
        assert viewer.post(url, data).status_code == 403
        assert mail.outbox == []
        sender = staff("send_test_email", username="sender")
        assert sender.get(url).status_code == 200
        assert sender.post(url, data).status_code == 302
        assert len(mail.outbox) == 1

    def test_the_outbox_is_read_only(self, superuser_client, html_message):
        before = snapshot()
        assert (
            superuser_client.get(
                reverse("admin:django_mailkit_outboxmessage_add")
            ).status_code
            == 403
        )
        response = superuser_client.post(
            admin_url("change", html_message.pk),
            {"subject": "Changed", "_save": "Save"},
        )
        assert response.status_code == 403
        assert snapshot() == before
        page = superuser_client.get(
            admin_url("change", html_message.pk)
        ).content.decode()
        assert 'name="_save"' not in page
        assert 'name="subject"' not in page  # shown, not editable

    def test_delete_needs_the_delete_permission(self, html_message):
        url = admin_url("delete", html_message.pk)
        viewer = staff("view_outboxmessage")
        assert viewer.post(url, {"post": "yes"}).status_code == 403
        assert OutboxMessage.objects.filter(pk=html_message.pk).exists()
        deleter = staff(
            "view_outboxmessage", "delete_outboxmessage", username="deleter"
        )
        assert deleter.post(url, {"post": "yes"}).status_code == 302
        assert not OutboxMessage.objects.filter(pk=html_message.pk).exists()


# Actions, through the standard action machinery.

ACTIONS = {
    # action: (permission, status before, status after)
    "resend": ("resend_outboxmessage", Status.SENT, Status.SENT),
    "requeue": ("requeue_outboxmessage", Status.FAILED, Status.QUEUED),
    "cancel": ("cancel_outboxmessage", Status.QUEUED, Status.CANCELLED),
}


def action_choices(page):
    select = re.search(r'<select name="action"[^>]*>(.*?)</select>', page, re.S)
    return re.findall(r'<option value="([^"]+)"', select.group(1)) if select else []


class TestActions:
    @pytest.mark.parametrize("action", [*ACTIONS, "delete_selected"])
    def test_anonymous_post_changes_nothing(self, action):
        record = queue()
        before = snapshot()
        response = Client().post(admin_url("changelist"), action_post(action, record))
        assert_login_redirect(response)
        if CHANGE_FORM_ACTIONS:
            response = Client().post(
                admin_url("change", record.pk),
                {"CHANGE_FORM-action": action, "_selected_action": record.pk},
            )
            assert_login_redirect(response)
        assert snapshot() == before

    @pytest.mark.parametrize("action", [*ACTIONS, "delete_selected"])
    def test_staff_without_the_permission_gets_403(self, action):
        permission, status, _after = ACTIONS.get(action, (None, Status.SENT, None))
        record = set_status(queue(), status)
        # The view permission, and every other action's permission.
        others = [p for p, *_ in ACTIONS.values() if p != permission]
        client = staff("view_outboxmessage", *others)
        page = client.get(admin_url("changelist")).content.decode()
        assert action not in action_choices(page)
        before = snapshot()
        response = client.post(admin_url("changelist"), action_post(action, record))
        assert response.status_code == 403
        assert snapshot() == before
        if CHANGE_FORM_ACTIONS:
            response = client.post(
                admin_url("change", record.pk),
                {
                    "CHANGE_FORM-action": action,
                    "_selected_action": record.pk,
                    "index": 0,
                },
            )
            assert response.status_code == 403
            assert snapshot() == before

    @pytest.mark.parametrize("action", [*ACTIONS, "delete_selected"])
    def test_a_view_only_user_forging_an_action_gets_403(self, action):
        # With no action offered at all, Django shows the changelist (200)
        # as if nothing was posted; docs/topics/admin.rst promises 403.
        _permission, status, _after = ACTIONS.get(action, (None, Status.SENT, None))
        record = set_status(queue(), status)
        client = staff("view_outboxmessage")
        page = client.get(admin_url("changelist")).content.decode()
        assert action_choices(page) == []
        before = snapshot()
        response = client.post(admin_url("changelist"), action_post(action, record))
        assert response.status_code == 403
        confirmed = action_post(action, record, post="yes")
        del confirmed["index"]
        assert client.post(admin_url("changelist"), confirmed).status_code == 403
        assert snapshot() == before

    @pytest.mark.parametrize("action", ACTIONS)
    def test_the_permission_without_view_is_not_enough(self, action):
        permission, status, _after = ACTIONS[action]
        record = set_status(queue(), status)
        before = snapshot()
        client = staff(permission)
        response = client.post(admin_url("changelist"), action_post(action, record))
        assert response.status_code == 403
        assert snapshot() == before

    @pytest.mark.parametrize("action", ACTIONS)
    def test_staff_with_the_permission(
        self, action, django_capture_on_commit_callbacks
    ):
        permission, status, after = ACTIONS[action]
        record = set_status(queue(), status)
        client = staff("view_outboxmessage", permission)
        page = client.get(admin_url("changelist")).content.decode()
        assert action_choices(page) == [action]
        post = client.post if action == "cancel" else partial(post_confirmed, client)
        with django_capture_on_commit_callbacks(execute=True):
            response = post(admin_url("changelist"), action_post(action, record))
        assert response.status_code == 302
        record.refresh_from_db()
        assert record.status == after
        assert OutboxMessage.objects.count() == (2 if action == "resend" else 1)
        assert LogEntry.objects.filter(object_id=str(record.pk)).count() == 1

    def test_actions_need_post_and_csrf(self):
        record = queue()
        client = superuser(enforce_csrf_checks=True)
        before = snapshot()
        response = client.get(admin_url("changelist"), action_post("cancel", record))
        assert response["Location"].endswith("?e=1")  # not a filter: refused
        response = client.post(admin_url("changelist"), action_post("cancel", record))
        assert response.status_code == 403  # no CSRF token
        assert snapshot() == before

    @pytest.mark.skipif(
        not CHANGE_FORM_ACTIONS, reason="Django 6.1's change-form actions"
    )
    def test_change_form_actions(self, superuser_client):
        record = queue()
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        select = re.search(
            r'<select name="CHANGE_FORM-action"[^>]*>(.*?)</select>', page, re.S
        )
        labels = re.findall(r'<option value="(\w+)">([^<]+)</option>', select.group(1))
        assert labels == [
            ("resend", "Resend"),
            ("requeue", "Requeue"),
            ("cancel", "Cancel"),
        ]
        response = superuser_client.post(
            admin_url("change", record.pk),
            {"CHANGE_FORM-action": "cancel", "_selected_action": record.pk, "index": 0},
        )
        assert response.status_code == 302
        record.refresh_from_db()
        assert record.status == Status.CANCELLED
        # Resend asks first, and comes back to the message page.
        set_status(record, Status.SENT)
        url = admin_url("change", record.pk)
        response = superuser_client.post(
            url, {"CHANGE_FORM-action": "resend", "_selected_action": record.pk}
        )
        page = response.content.decode()
        assert f'href="{url}" class="button cancel-link"' in page
        response = post_confirmed(
            superuser_client,
            url,
            {"CHANGE_FORM-action": "resend", "_selected_action": record.pk},
        )
        assert response.status_code == 302
        assert OutboxMessage.objects.filter(resent_from=record).count() == 1


@pytest.mark.skipif(CHANGE_FORM_ACTIONS, reason="Django 6.1 has change-form actions")
class TestMessagePageButtons:
    """Before Django 6.1: the same actions, from the message page."""

    def test_buttons_are_those_permitted_and_applicable(self):
        record = queue()  # queued: only cancel applies
        client = staff(
            "view_outboxmessage", "cancel_outboxmessage", "resend_outboxmessage"
        )
        page = client.get(admin_url("change", record.pk)).content.decode()
        actions = re.findall(r'action="[^"]*/actions/(\w+)/"', page)
        assert actions == ["cancel"]
        set_status(record, Status.FAILED)
        page = client.get(admin_url("change", record.pk)).content.decode()
        assert re.findall(r'action="[^"]*/actions/(\w+)/"', page) == ["resend"]

    @pytest.mark.parametrize("action", ACTIONS)
    def test_permissions(self, action, django_capture_on_commit_callbacks):
        permission, status, after = ACTIONS[action]
        record = set_status(queue(), status)
        url = admin_url("object_action", record.pk, action)
        before = snapshot()
        assert_login_redirect(Client().post(url))
        others = [p for p, *_ in ACTIONS.values() if p != permission]
        assert staff("view_outboxmessage", *others).post(url).status_code == 403
        assert staff(permission, username="no-view").post(url).status_code == 403
        assert snapshot() == before
        client = staff("view_outboxmessage", permission, username="allowed")
        assert client.get(url).status_code == 405
        assert snapshot() == before
        post = client.post if action == "cancel" else partial(post_confirmed, client)
        with django_capture_on_commit_callbacks(execute=True):
            response = post(url, {})
        assert response.status_code == 302
        assert response["Location"] == admin_url("change", record.pk)
        record.refresh_from_db()
        assert record.status == after
        assert OutboxMessage.objects.count() == (2 if action == "resend" else 1)

    def test_csrf(self):
        record = queue()
        client = superuser(enforce_csrf_checks=True)
        response = client.post(admin_url("object_action", record.pk, "cancel"))
        assert response.status_code == 403
        record.refresh_from_db()
        assert record.status == Status.QUEUED

    def test_unknown_action_is_404(self, superuser_client):
        record = queue()
        url = admin_url("object_action", record.pk, "delete_model")
        assert superuser_client.post(url).status_code == 404


class TestResend:
    def test_a_copy_of_the_bytes_to_the_same_envelope(
        self, superuser_client, django_capture_on_commit_callbacks
    ):
        original = queue(
            "Receipt",
            to=["ann@example.com"],
            cc=["bob@example.com"],
            bcc=["c@example.com"],
        )
        set_status(original, Status.SENT)
        with (
            outbox_mailers(USE_TASKS=True),
            django_capture_on_commit_callbacks(execute=True),
        ):
            response = post_confirmed(
                superuser_client,
                admin_url("changelist"),
                action_post("resend", original),
                follow=True,
            )
        copy = OutboxMessage.objects.exclude(pk=original.pk).get()
        assert bytes(copy.mime) == bytes(original.mime)
        assert (
            copy.recipients
            == original.recipients
            == ["ann@example.com", "bob@example.com", "c@example.com"]
        )
        assert (copy.from_email, copy.mailer, copy.queued_via, copy.message_id) == (
            original.from_email,
            original.mailer,
            original.queued_via,
            original.message_id,
        )
        # Delivered on commit, through the original's mailer.
        assert copy.status == Status.SENT
        assert [m.sent_using for m in mail.outbox] == ["smtp"]
        assert sorted(mail.outbox[0].recipients()) == original.recipients
        assert set(copy.recipient_set.values_list("status", flat=True)) == {
            RecipientStatus.SENT
        }
        original.refresh_from_db()
        assert original.status == Status.SENT
        assert f"message {copy.pk}" in response.content.decode()

    def test_nothing_is_sent_if_the_transaction_rolls_back(
        self, django_capture_on_commit_callbacks
    ):
        original = set_status(queue(), Status.SENT)
        with (
            outbox_mailers(USE_TASKS=True),
            django_capture_on_commit_callbacks() as callbacks,
        ):
            try:
                with transaction.atomic():
                    resend_messages(OutboxMessage.objects.filter(pk=original.pk))
                    raise RuntimeError("rolled back")
            except RuntimeError:
                pass
        assert callbacks == []
        assert OutboxMessage.objects.count() == 1

    def test_unfinished_messages_are_not_resent(self, superuser_client):
        queued = queue()
        sending = set_status(queue(), Status.SENDING)
        response = superuser_client.post(
            admin_url("changelist"),
            action_post("resend", queued, sending, post="yes"),
            follow=True,
        )
        assert OutboxMessage.objects.count() == 2
        assert "2 messages are still queued or being sent" in response.content.decode()

    def test_many_at_once(self, superuser_client):
        records = [set_status(queue(f"m{i}"), Status.FAILED) for i in range(5)]
        pairs = resend_messages(
            OutboxMessage.objects.filter(pk__in=[r.pk for r in records]), chunk_size=2
        )
        assert [old for old, _new in pairs] == [r.pk for r in records]
        copies = OutboxMessage.objects.filter(pk__in=[new for _old, new in pairs])
        assert {c.subject for c in copies} == {f"m{i}" for i in range(5)}
        assert {c.status for c in copies} == {Status.QUEUED}


class TestConfirmation:
    """Resend and requeue ask first, as delete_selected does."""

    def test_resend_lists_the_messages_and_explains(self, superuser_client):
        sent = set_status(queue("Receipt <1>", to=["ann@example.com"]), Status.SENT)
        queued = queue("Still queued")
        before = snapshot()
        response = superuser_client.post(
            admin_url("changelist"), action_post("resend", sent, queued)
        )
        page = response.content.decode()
        assert snapshot() == before
        assert "<title>Resend 1 message?" in page
        assert (
            f'<a href="{admin_url("change", sent.pk)}">{sent.pk}: Receipt &lt;1&gt;'
            in page
        )
        assert "ann@example.com" in page
        assert "<strong>its whole envelope</strong>" in page
        assert "requeue it instead" in page
        assert "1 selected message is still queued or being sent" in page
        assert sorted(confirm_form(page)) == sorted(
            [
                ("action", "resend"),
                ("_selected_action", str(sent.pk)),
                ("_selected_action", str(queued.pk)),
                ("post", "yes"),
            ]
        )

    def test_requeue_says_whether_partially_sent_messages_are_included(
        self, superuser_client
    ):
        failed = set_status(queue("Failed"), Status.FAILED)
        partial_ = set_status(queue("Partial"), Status.PARTIAL)
        page = superuser_client.post(
            admin_url("changelist"), action_post("requeue", failed, partial_)
        ).content.decode()
        assert "<title>Requeue 2 messages?" in page
        assert "<strong>the recipients that have not accepted them</strong>" in page
        assert "This includes 1 partially sent message" in page
        assert "resend it instead" in page
        page = superuser_client.post(
            admin_url("changelist"), action_post("requeue", failed)
        ).content.decode()
        assert "No partially sent message is selected." in page

    def test_the_action_names_say_what_requeue_takes(self, superuser_client):
        page = superuser_client.get(admin_url("changelist")).content.decode()
        assert "Requeue selected failed or partially sent outbox messages" in page

    def test_nothing_applicable_offers_no_button(self, superuser_client):
        queued = queue()
        page = superuser_client.post(
            admin_url("changelist"), action_post("resend", queued)
        ).content.decode()
        assert "Yes, resend" not in page
        assert "No, take me back" in page


class TestRequeueAndCancel:
    def test_requeue_failed_delivers_again(
        self, superuser_client, django_capture_on_commit_callbacks
    ):
        failed = set_status(queue("Failed"), Status.FAILED)
        sent = set_status(queue("Sent"), Status.SENT)
        with (
            outbox_mailers(USE_TASKS=True),
            django_capture_on_commit_callbacks(execute=True),
        ):
            response = post_confirmed(
                superuser_client,
                admin_url("changelist"),
                action_post("requeue", failed, sent),
                follow=True,
            )
        failed.refresh_from_db()
        sent.refresh_from_db()
        assert failed.status == Status.SENT  # requeued, then delivered on commit
        assert [m.subject for m in mail.outbox] == ["Failed"]
        assert sent.status == Status.SENT
        page = response.content.decode()
        assert "Requeued 1 message." in page
        assert "1 message had not failed" in page

    def test_all_across_a_filtered_list(self, superuser_client):
        # The selection is "every failed message": the action changes that.
        failed = [set_status(queue(f"F{i}"), Status.FAILED) for i in range(3)]
        set_status(queue("Sent"), Status.SENT)
        response = post_confirmed(
            superuser_client,
            admin_url("changelist") + "?status__exact=failed",
            {**action_post("requeue", failed[0]), "select_across": "1"},
            follow=True,
        )
        page = response.content.decode()
        assert "Requeued 3 messages." in page
        assert "had not failed" not in page
        assert {OutboxMessage.objects.get(pk=r.pk).status for r in failed} == {
            Status.QUEUED
        }

    def test_cancel_queued_only(self, superuser_client):
        queued = queue("Queued")
        sent = set_status(queue("Sent"), Status.SENT)
        response = superuser_client.post(
            admin_url("changelist"), action_post("cancel", queued, sent), follow=True
        )
        queued.refresh_from_db()
        sent.refresh_from_db()
        assert (queued.status, sent.status) == (Status.CANCELLED, Status.SENT)
        assert "1 message was not queued" in response.content.decode()
        # A cancelled message is never delivered.
        Worker(once=True, interval=0).run()
        assert mail.outbox == []


# The message page and what it links to.


def inline_image_message():
    """HTML with an inline image (multipart/related) and an attachment."""
    png = b"\x89PNG\r\n\x1a\nfake-image-bytes"
    image = MIMEPart()
    image.set_content(png, maintype="image", subtype="png", cid="<logo@example.com>")
    message = EmailMultiAlternatives(
        "Newsletter", "Plain <b>not bold</b> text", to=["ann@example.com"]
    )
    message.mixed_subtype = "related"
    message.attach_alternative(
        f'<p>{HTML_MARKER}</p><img src="cid:logo@example.com" alt="logo">'
        '<img src="https://tracker.example.net/pixel.gif">',
        "text/html",
    )
    message.attach(image)
    message.attach("report.csv", "a,b\n1,2\n", "text/csv")
    assert message.send() == 1
    return OutboxMessage.objects.order_by("-pk").first(), png


def full_parse_view(mime):
    """What the email package's full parse says: bodies and (index, size)."""
    message = email.message_from_bytes(mime, policy=email.policy.default)
    nodes = []

    def visit(part):
        nodes.append(part)
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            for child in part.iter_parts():
                visit(child)

    visit(message)
    text, html_ = message.get_body(("plain",)), message.get_body(("html",))
    sizes = []
    for index, part in enumerate(nodes):
        if part.get_content_maintype() == "multipart" or part in (text, html_):
            continue
        if part.get_content_type() == "message/rfc822":
            size = len(part.get_payload(0).as_bytes())
        else:
            size = len(part.get_payload(decode=True))
        sizes.append((index, size))
    body = (
        None if text is None else text.get_content(),
        None if html_ is None else html_.get_content(),
    )
    return body, sizes


class TestParsedMessage:
    """The cheap reader agrees with the email package's full parse."""

    def message(self):
        inner = EmailMultiAlternatives("Inner", "inner body", to=["x@example.com"])
        inner.attach_alternative("<p>inner html</p>", "text/html")
        logo = MIMEPart()
        logo.set_content(
            b"\x89PNG" + bytes(range(256)) * 40,
            maintype="image",
            subtype="png",
            cid="<logo@example.com>",
        )
        outer = EmailMultiAlternatives(
            "Outer", "Grüße, plain\n" * 50, to=["ann@example.com"]
        )
        outer.attach_alternative(
            "<p>Grüße</p><img src='cid:logo@example.com'>", "text/html"
        )
        outer.attach(logo)
        outer.attach("data.bin", bytes(range(256)) * 1001, "application/octet-stream")
        outer.attach("notes.txt", "é=ü\n" * 300, "text/plain")
        outer.attach(inner.message())
        outer.attach("empty.bin", b"", "application/octet-stream")
        return outer.message().as_bytes()

    @pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
    def test_parts_sizes_and_bodies(self, line_end):
        mime = self.message()
        if line_end == b"\r\n":
            mime = mime.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        (text, html_), sizes = full_parse_view(mime)
        parsed = ParsedMessage(mime)
        assert [(part.index, part.size) for part in parsed.parts] == sizes
        assert parsed.text == text
        assert parsed.html == html_
        names = [part.filename for part in parsed.parts]
        assert {"data.bin", "notes.txt", "empty.bin"} <= set(names)

    def test_only_what_is_shown_is_decoded(self, superuser_client, monkeypatch):
        big = queue(
            "Big",
            html="<p>hi</p>",
            attach=[("big.bin", bytes(range(256)) * 8192, "application/octet-stream")],
        )
        decoded = []
        original = ParsedMessage._parse

        def spy(self, node):
            decoded.append(node.headers.get_content_type())
            return original(self, node)

        monkeypatch.setattr(ParsedMessage, "_parse", spy)
        page = superuser_client.get(admin_url("change", big.pk)).content.decode()
        assert "2.0\xa0MB" in page  # its size, from its encoded length
        # The plain text only: the HTML is the iframe's, the 2 MB part waits.
        assert decoded == ["text/plain"]
        (part,) = ParsedMessage(bytes(big.mime)).parts
        decoded.clear()
        response = superuser_client.get(admin_url("part", big.pk, part.index))
        assert response.content == bytes(range(256)) * 8192
        assert decoded == ["application/octet-stream"]  # on download


class TestMessagePage:
    def test_headers_text_html_and_attachments(self, superuser_client):
        record, png = inline_image_message()
        response = superuser_client.get(admin_url("change", record.pk))
        page = response.content.decode()
        assert '<th scope="row">Subject</th><td>Newsletter</td>' in page
        assert '<th scope="row">Message-ID</th>' in page
        # The plain text is escaped, as text.
        assert "Plain &lt;b&gt;not bold&lt;/b&gt; text" in page
        # The HTML is never in the admin page: only in a sandboxed iframe
        # (and, escaped, as text in the raw source).
        assert HTML_MARKER not in without_raw_source(page)
        assert f"&lt;p&gt;{HTML_MARKER}&lt;/p&gt;" in page
        assert "tracker.example.net" not in without_raw_source(page)
        (frame,) = iframes(page)
        # No allow-scripts, forms, popups or navigation: only the origin, so
        # the admin page can read the preview's height.
        assert frame["sandbox"] == "allow-same-origin"
        assert frame["src"] == admin_url("preview", record.pk)
        assert frame["referrerpolicy"] == "no-referrer"
        # Attachments and inline parts, each with its own download link.
        parts = re.findall(
            r'<a href="(/admin/[^"]+/parts/(\d+)/)" download>([^<]+)</a>', page
        )
        assert [name for _url, _index, name in parts] == ["logo.png", "report.csv"]
        image = superuser_client.get(parts[0][0])
        assert image["Content-Type"] == "image/png"
        assert image["Content-Disposition"] == 'attachment; filename="logo.png"'
        assert image.content == png
        csv = superuser_client.get(parts[1][0])
        assert csv["Content-Type"] == "text/csv; charset=utf-8"
        assert csv["Content-Disposition"] == 'attachment; filename="report.csv"'
        assert csv["X-Content-Type-Options"] == "nosniff"
        # Text travels with CRLF line ends, and is downloaded as it travelled.
        assert csv.content == b"a,b\r\n1,2\r\n"
        assert superuser_client.get(admin_url("part", record.pk, 0)).status_code == 404

    def test_eml_is_the_exact_stored_bytes(self, superuser_client):
        record, _png = inline_image_message()
        response = superuser_client.get(admin_url("eml", record.pk))
        assert response["Content-Type"] == "message/rfc822"
        assert response["Content-Disposition"] == (
            f'attachment; filename="outbox-message-{record.pk}.eml"'
        )
        assert "no-store" in response["Cache-Control"]
        assert response.content == bytes(record.mime)

    def test_attempt_history_with_smtp_codes(self, superuser_client, smtp_server):
        with outbox_mailers(mailer_config(smtp_server)):
            record = queue(to=["ann@example.com", "refused-bob@example.com"])
            Worker(once=True, interval=0).run()
        record.refresh_from_db()
        assert record.status == Status.PARTIAL
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        attempt = Attempt.objects.get(message=record)
        refused_reply = attempt.recipients["refused-bob@example.com"][1]
        assert "<code>550</code>" in page
        assert escape(refused_reply) in page
        assert re.search(r"ann@example\.com: <code>250</code>", page)
        assert 'mailkit-rcpt-failed">Failed</span>' in page
        assert 'mailkit-outcome-partial">Partially sent</span>' in page

    def test_an_interrupted_attempt_says_so(self, superuser_client, smtp_server):
        with outbox_mailers(mailer_config(smtp_server)):
            record = queue(to=["ann@example.com"])
        (claimed,) = OutboxMessage.objects.claim(
            "host:1:dead", limit=1, lease=timedelta(seconds=1)
        )
        assert claimed.begin_attempt(timedelta(seconds=1)) is True
        later = timezone.now() + timedelta(seconds=2)
        assert OutboxMessage.objects.recover_expired(later) == 1
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        outcomes = re.findall(r'mailkit-outcome-(\w+)">([^<]+)</span>', page)
        assert outcomes == [("interrupted", "Interrupted")]
        assert "host:1:dead" in page
        assert "the server may or may not have received the message" in page

    def test_a_message_failed_because_its_worker_kept_stopping_says_so(
        self, superuser_client, smtp_server
    ):
        with outbox_mailers(mailer_config(smtp_server)):
            record = queue(to=["ann@example.com"])
        with override_settings(MAILKIT={"MAX_ATTEMPTS": 1}):
            (claimed,) = OutboxMessage.objects.claim(
                "host:1:dead", limit=1, lease=timedelta(seconds=1)
            )
            assert claimed.begin_attempt(timedelta(seconds=1)) is True
            later = timezone.now() + timedelta(seconds=2)
            assert OutboxMessage.objects.recover_expired(later) == 1
            record.refresh_from_db()
            assert record.status == Status.FAILED
            page = superuser_client.get(admin_url("change", record.pk))
        text = page.content.decode()
        assert "Worker stopped: 1 recipient was not sent to." in text
        assert "with 1 attempt spent;" in text
        assert "failed only temporarily" not in text

    def test_a_retry_that_delivered_nothing_is_not_partially_sent(
        self, superuser_client, smtp_server
    ):
        with outbox_mailers(mailer_config(smtp_server)):
            record = queue(to=["ann@example.com", "refused-bob@example.com"])
            Worker(once=True, interval=0).run()
            # The first delivery happened at a known time.
            first = timezone.now().replace(microsecond=0) - timedelta(hours=3)
            Attempt.objects.filter(message=record).update(finished_at=first)
            record.refresh_from_db()
            first_sent_at = record.sent_at
            # An operator unsuppressed bob (the 550 listed him): tried again.
            Suppression.objects.all().delete()
            OutboxMessage.objects.filter(pk=record.pk).requeue()
            Worker(once=True, interval=0).run()
        record.refresh_from_db()
        assert record.status == Status.PARTIAL  # over both attempts: true
        assert record.sent_at == first_sent_at  # the "sent" column doesn't move
        second = Attempt.objects.get(message=record, number=2)
        assert list(second.recipients) == ["refused-bob@example.com"]
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        outcomes = re.findall(r'mailkit-outcome-(\w+)">([^<]+)</span>', page)
        assert outcomes == [("partial", "Partially sent"), ("failed", "Failed")]
        assert second.outcome == "failed"  # stored as what the attempt did
        # The first delivery time, not the retry's.
        delivered = re.search(
            r"First delivered:</label>\s*<div class=\"readonly\">(.*?)</div>",
            page,
            re.S,
        ).group(1)
        assert first.strftime("%Y-%m-%d %H:%M:%S") in delivered
        assert "3\xa0hours ago" in delivered
        # A permanent refusal, said as such.
        assert "Permanent failure: 1 recipient was refused for good" in page
        assert "Retries ran out" not in page

    def test_retries_that_ran_out_are_not_called_permanent(
        self, superuser_client, smtp_server
    ):
        smtp_server.refuse_recipient("bob@example.com", "451 4.7.1 Greylisted")
        with outbox_mailers(mailer_config(smtp_server), MAX_ATTEMPTS=1):
            record = queue(to=["ann@example.com", "bob@example.com"])
            Worker(once=True, interval=0).run()
        record.refresh_from_db()
        assert record.status == Status.PARTIAL
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        assert (
            "Retries ran out: 1 recipient failed only temporarily (4xx replies "
            "or connection errors), 1 attempt in a row." in page
        )
        assert "Permanent failure" not in page

    def test_lease_fields_only_while_unfinished(self, superuser_client):
        record = queue()
        labels = ("Next attempt:", "Claimed by:", "Lease expires:")
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        assert all(label in page for label in labels)
        assert "Why it failed:" not in page
        for status in (Status.SENT, Status.FAILED, Status.CANCELLED):
            set_status(record, status)
            page = superuser_client.get(admin_url("change", record.pk)).content.decode()
            assert not any(label in page for label in labels), status

    def test_a_message_recovered_from_a_dead_worker_says_so(self, superuser_client):
        record = queue()
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        assert "Recovered:" not in page
        for times in (1, 2):
            OutboxMessage.objects.claim("w", limit=1, lease=timedelta(seconds=60))
            later = timezone.now() + timedelta(seconds=61)
            assert OutboxMessage.objects.recover_expired(later) == 1
            page = superuser_client.get(admin_url("change", record.pk)).content
            assert ("Once, from a worker" in page.decode()) is (times == 1)
        assert "2 times, from workers that stopped" in page.decode()

    def test_to_cc_bcc_and_times(self, superuser_client):
        record = queue(
            to=["ann@example.com"], cc=["Bob <bob@example.com>"], bcc=["c@example.com"]
        )
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        rows = re.findall(
            r"<td>([^<]+)</td>\s*<td class=\"mailkit-field\">(\w+)</td>", page
        )
        assert rows == [
            ("ann@example.com", "To"),
            ("bob@example.com", "Cc"),
            ("c@example.com", "Bcc"),
        ]
        created = re.search(
            r"Created:</label>\s*<div class=\"readonly\">(.*?)</div>", page, re.S
        ).group(1)
        assert re.search(
            r"<time datetime=\"[^\"]+\">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", created
        )
        assert re.search(r"\(\d+ seconds? ago\)", created)

    def test_a_resent_copy_and_its_original_link_to_each_other(self, superuser_client):
        original = set_status(queue("Receipt"), Status.SENT)
        copy = original.resend()
        page = superuser_client.get(admin_url("change", copy.pk)).content.decode()
        assert (
            f'<a href="{admin_url("change", original.pk)}">message {original.pk}'
            in page
        )
        page = superuser_client.get(admin_url("change", original.pk)).content.decode()
        assert f'<a href="{admin_url("change", copy.pk)}">message {copy.pk}</a>' in page
        assert "Resent from:" not in page

    def test_a_message_without_html(self, superuser_client):
        record = queue()
        page = superuser_client.get(admin_url("change", record.pk)).content.decode()
        assert iframes(page) == []
        assert "This message has no HTML version." in page
        assert superuser_client.get(admin_url("preview", record.pk)).status_code == 404


HOSTILE_HTML = f"""
<p id="visible">{HTML_MARKER}</p>
<script>parent.postMessage("script ran", "*"); document.title = "pwned";</script>
<img src="data:image/png;base64,AAAA" onerror="parent.postMessage('onerror ran', '*')">
<form method="post" action="/admin/django_mailkit/outboxmessage/">
  <input type="hidden" name="action" value="delete_selected">
  <input type="hidden" name="post" value="yes">
  <button id="submit">Win a prize</button>
</form>
"""


class TestPreviewSafety:
    def test_preview_headers(self, superuser_client):
        record = queue(html=HOSTILE_HTML)
        response = superuser_client.get(admin_url("preview", record.pk))
        page = superuser_client.get(admin_url("change", record.pk))
        assert response["Content-Type"] == "text/html; charset=utf-8"
        assert response["Content-Security-Policy"] == PREVIEW_CSP
        policy = dict(
            directive.strip().partition(" ")[::2]
            for directive in response["Content-Security-Policy"].split(";")
        )
        assert policy["default-src"] == "'none'"
        assert policy["img-src"] == "data: cid:"
        assert policy["style-src"] == "'unsafe-inline'"
        assert policy["frame-ancestors"] == "'self'"
        assert policy["form-action"] == "'none'"
        assert policy["sandbox"] == "allow-same-origin"
        assert "script-src" not in policy
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["X-Frame-Options"] == "SAMEORIGIN"  # the admin may frame it
        assert page["X-Frame-Options"] == "DENY"  # nobody frames the admin
        assert response["Referrer-Policy"] == "no-referrer"
        assert "no-store" in response["Cache-Control"]
        # The HTML is served as it is: the browser is what keeps it inert.
        assert "<script>" in response.content.decode()
        # ... and never inlined into the admin page.
        admin_page = page.content.decode()
        assert "<script>" not in admin_page.replace("<script src=", "")
        admin_page = without_raw_source(admin_page)
        assert HTML_MARKER not in admin_page and "pwned" not in admin_page
        (frame,) = iframes(admin_page)
        assert frame["sandbox"] == "allow-same-origin"  # never allow-scripts

    def test_tags_that_fetch_or_navigate_are_made_inert(self, superuser_client):
        record = queue(
            html='<LINK rel=prefetch href="https://t.example/p"><meta\thttp-equiv='
            '"refresh" content="0;url=https://t.example/r"><link/rel=preload>'
            "<linkage>text</linkage><p>kept</p>"
        )
        body = superuser_client.get(
            admin_url("preview", record.pk), {"remote_images": "1"}
        ).content.decode()
        assert re.findall(r"<(/?[\w-]+)", body) == [
            "x-mailkit-LINK",
            "x-mailkit-meta",
            "x-mailkit-link",
            "linkage",
            "/linkage",
            "p",
            "/p",
        ]

    def test_remote_images_only_on_request(self, superuser_client):
        record, png = inline_image_message()
        response = superuser_client.get(admin_url("preview", record.pk))
        html = response.content.decode()
        # Inline images are embedded; the remote one stays, blocked by the CSP.
        assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
        assert "cid:" not in html
        assert "img-src data: cid:;" in response["Content-Security-Policy"]
        page = superuser_client.get(admin_url("change", record.pk) + "?remote_images=1")
        (frame,) = iframes(page.content.decode())
        assert frame["src"] == admin_url("preview", record.pk) + "?remote_images=1"
        remote = superuser_client.get(frame["src"])
        assert remote["Content-Security-Policy"] == PREVIEW_CSP_REMOTE_IMAGES
        assert "img-src data: cid: https: http:;" in PREVIEW_CSP_REMOTE_IMAGES
        assert "script-src" not in PREVIEW_CSP_REMOTE_IMAGES


# The send-test-email page.


@pytest.fixture
def sender():
    return staff("send_test_email", "view_outboxmessage", username="sender")


class TestSendTestEmail:
    def test_form(self, sender):
        page = sender.get(admin_url("send_test_email")).content.decode()
        assert re.findall(r'<option value="(\w+)"', page) == [
            "default",
            "smtp",
            "notifications",
        ]
        assert (
            '<option value="default" selected>default (outbox → smtp)</option>' in page
        )
        assert "Admin One &lt;admin1@example.com&gt;, admin2@example.com" in page
        assert 'name="managers"' in page

    def test_sends_through_smtp(self, sender, smtp_server):
        with outbox_mailers(mailer_config(smtp_server)):
            response = sender.post(
                admin_url("send_test_email"),
                {"to": "ann@example.com, bob@example.com", "mailer": "smtp"},
                follow=True,
            )
        (delivery,) = smtp_server.deliveries
        assert delivery.rcpt_tos == ["ann@example.com", "bob@example.com"]
        assert delivery.message["Subject"].startswith("Test email from ")
        assert (
            "Sent a test email with mailer &#x27;smtp&#x27; to "
            "ann@example.com, bob@example.com." in response.content.decode()
        )
        assert OutboxMessage.objects.count() == 0  # straight through, not queued

    def test_admins_and_managers(self, sender):
        response = sender.post(
            admin_url("send_test_email"),
            {
                "admins": "on",
                "managers": "on",
                "to": "admin2@example.com",
                "mailer": "notifications",
            },
        )
        assert response.status_code == 302
        (message,) = mail.outbox
        assert message.to == [
            "admin2@example.com",
            "Admin One <admin1@example.com>",
            "manager@example.com",
        ]
        assert message.sent_using == "notifications"

    @pytest.mark.parametrize(
        "misbehave, expected",
        [
            (
                lambda s: s.reply("DATA", "554 5.7.1 Message rejected as spam"),
                "the server answered 554 5.7.1 Message rejected as spam",
            ),
            (
                lambda s: s.reply("MAIL", "421 4.3.2 Try again later"),
                "the server answered 421 4.3.2 Try again later",
            ),
        ],
    )
    def test_smtp_errors_in_plain_words(self, sender, smtp_server, misbehave, expected):
        misbehave(smtp_server)
        with outbox_mailers(mailer_config(smtp_server)):
            response = sender.post(
                admin_url("send_test_email"),
                {"to": "ann@example.com", "mailer": "smtp"},
            )
        assert response.status_code == 200
        page = response.content.decode()
        assert (
            '<p class="errornote">Sending with mailer &#x27;smtp&#x27; failed: '
            f"{expected}.</p>" in page
        )
        assert smtp_server.deliveries == []

    def test_every_recipient_refused(self, sender, smtp_server):
        with outbox_mailers(mailer_config(smtp_server)):
            response = sender.post(
                admin_url("send_test_email"),
                {"to": "refused-a@example.com", "mailer": "smtp"},
            )
        page = response.content.decode()
        assert (
            "failed: the server refused every recipient: refused-a@example.com: 550"
            in page
        )

    def test_some_recipients_refused(self, sender, smtp_server):
        with outbox_mailers(mailer_config(smtp_server)):
            response = sender.post(
                admin_url("send_test_email"),
                {"to": "ann@example.com refused-b@example.com", "mailer": "smtp"},
                follow=True,
            )
        page = response.content.decode()
        assert "but the server refused 1 recipient: refused-b@example.com: 550" in page
        assert [d.rcpt_tos for d in smtp_server.deliveries] == [["ann@example.com"]]

    def test_nothing_listens(self, sender, closed_port):
        with outbox_mailers(
            {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": {"host": "127.0.0.1", "port": closed_port, "timeout": 5},
            }
        ):
            response = sender.post(
                admin_url("send_test_email"),
                {"to": "ann@example.com", "mailer": "smtp"},
            )
        assert (
            "failed: could not connect: Connection refused."
            in response.content.decode()
        )

    @pytest.mark.django_db(transaction=True)
    def test_through_the_outbox(self, sender, smtp_server):
        with outbox_mailers(mailer_config(smtp_server), USE_TASKS=True):
            response = sender.post(
                admin_url("send_test_email"),
                {"to": "ann@example.com", "mailer": "default"},
                follow=True,
            )
        record = OutboxMessage.objects.get()
        assert record.status == Status.SENT
        assert len(smtp_server.deliveries) == 1
        page = response.content.decode()
        assert f"Queued as message {record.pk}; status: Sent." in page
        assert f'<a href="{admin_url("change", record.pk)}">Open it.</a>' in page
        assert '<li class="success">' in page

    @pytest.mark.django_db(transaction=True)
    def test_a_failed_delivery_through_the_outbox_is_an_error(
        self, sender, smtp_server
    ):
        with outbox_mailers(mailer_config(smtp_server), USE_TASKS=True):
            response = sender.post(
                admin_url("send_test_email"),
                {"to": "refused-ann@example.com", "mailer": "default"},
                follow=True,
            )
        record = OutboxMessage.objects.get()
        assert record.status == Status.FAILED
        page = response.content.decode()
        (error,) = re.findall(r'<li class="error">(.*?)</li>', page, re.S)
        assert f"Queued as message {record.pk}; status: Failed." in error
        # The server's reply, as the server gave it.
        assert "refused-ann@example.com: 550" in error
        assert '<li class="success">' not in page

    @pytest.mark.django_db(transaction=True)
    def test_a_first_attempt_that_failed_is_an_error_not_a_success(
        self, sender, closed_port
    ):
        nowhere = {
            "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": closed_port, "timeout": 5},
        }
        with outbox_mailers(nowhere, USE_TASKS=True):
            response = sender.post(
                admin_url("send_test_email"),
                {"to": "ann@example.com", "mailer": "default"},
                follow=True,
            )
        record = OutboxMessage.objects.get()
        assert record.status == Status.QUEUED  # waiting for its retry
        page = response.content.decode()
        (error,) = re.findall(r'<li class="error">(.*?)</li>', page, re.S)
        assert f"Queued as message {record.pk}; status: Queued." in error
        assert "The first attempt failed, and it will be retried:" in error
        assert "Connection refused" in error
        assert '<li class="success">' not in page

    def test_invalid_input_sends_nothing(self, sender):
        response = sender.post(
            admin_url("send_test_email"), {"to": "ann@, bob", "mailer": "smtp"}
        )
        assert "Not an email address: ann@, bob" in response.content.decode()
        response = sender.post(
            admin_url("send_test_email"), {"to": "", "mailer": "smtp"}
        )
        assert "Give at least one address" in response.content.decode()
        response = sender.post(
            admin_url("send_test_email"), {"to": "a@example.com", "mailer": "nope"}
        )
        assert "Select a valid choice" in response.content.decode()
        assert mail.outbox == []

    def test_empty_admins_cannot_be_chosen(self, sender):
        with override_settings(ADMINS=[]):
            page = sender.get(admin_url("send_test_email")).content.decode()
            assert "ADMINS is empty." in page
            assert re.search(r'<input type="checkbox" name="admins"[^>]*disabled', page)
            response = sender.post(
                admin_url("send_test_email"), {"admins": "on", "mailer": "smtp"}
            )
        assert "Give at least one address" in response.content.decode()


# The changelist, built for large tables.


def make_rows(count, **fields):
    """Insert outbox rows directly (the changelist doesn't parse them)."""
    now = timezone.now()
    OutboxMessage.objects.bulk_create(
        [
            OutboxMessage(
                queued_via="default",
                mailer=fields.get("mailer", "smtp"),
                from_email="webmaster@example.com",
                recipients=[
                    f"user{i}@example.com",
                    "cc@example.com",
                    "x@example.com",
                    "y@example.com",
                ],
                subject=f"Row {i}",
                message_id=f"<row{i}@example.com>",
                mime=b"Subject: x\r\n\r\nbody\r\n",
                status=fields.get("status", Status.SENT),
                created_at=fields.get("created_at", now - timedelta(seconds=i)),
            )
            for i in range(count)
        ]
    )


class TestChangelist:
    def test_columns_and_order(self, superuser_client):
        old = queue(
            "Older",
            to=["a@example.com", "b@example.com", "c@example.com", "d@example.com"],
        )
        OutboxMessage.objects.filter(pk=old.pk).update(
            created_at=timezone.now() - timedelta(hours=1)
        )
        new = set_status(queue("Newer"), Status.FAILED)
        page = superuser_client.get(admin_url("changelist")).content.decode()
        for column in [
            "Subject",
            "Recipients",
            "Status",
            "Created",
            "Sent",
        ]:
            assert re.search(rf">\s*{column}\s*<", page), column
        assert page.index("Newer") < page.index("Older")
        assert "a@example.com, b@example.com, c@example.com and 1 more" in page
        assert f'value="{new.pk}"' in page
        assert 'mailkit-status-failed">Failed</span>' in page
        # Attempts show in the status when there were several.
        OutboxMessage.objects.filter(pk=new.pk).update(attempts=3)
        page = superuser_client.get(admin_url("changelist")).content.decode()
        assert (
            'mailkit-status-failed">Failed</span> '
            '<span class="mailkit-attempts-count">3 attempts</span>' in page
        )

    @pytest.mark.parametrize(
        "query",
        ["", "?status__exact=sent", "?mailer=smtp", "?q=Row", "?q=user3@example.com"],
    )
    def test_query_count_does_not_grow_with_rows(self, query):
        client = staff("view_outboxmessage", "resend_outboxmessage")
        url = admin_url("changelist") + query
        make_rows(3)
        with CaptureQueriesContext(connection) as few:
            assert client.get(url).status_code == 200
        make_rows(45)
        with CaptureQueriesContext(connection) as many:
            page = client.get(url).content.decode()
        assert len(many) == len(few), [q["sql"] for q in many.captured_queries]
        if not query:
            assert page.count('class="action-select"') == 48
        selects = [
            q["sql"]
            for q in many.captured_queries
            if "django_mailkit_outboxmessage" in q["sql"]
        ]
        # The bytes of the messages are never loaded for the list.
        assert all('."mime"' not in sql for sql in selects)

    def test_no_whole_table_count(self, superuser_client, monkeypatch):
        monkeypatch.setattr(OutboxPaginator, "count_limit", 20)
        make_rows(30)
        with CaptureQueriesContext(connection) as queries:
            page = superuser_client.get(admin_url("changelist")).content.decode()
        # Every count but the dashboard's (bounded by its 7 days) is capped.
        counts = [
            q["sql"]
            for q in queries.captured_queries
            if "COUNT(" in q["sql"].upper() and "GROUP BY" not in q["sql"].upper()
        ]
        assert counts and all("LIMIT 21" in sql for sql in counts), counts
        assert "More than 20 messages match" in page
        # Within the limit the count is exact, and nothing is said.
        page = superuser_client.get(
            admin_url("changelist") + "?q=Row+1"
        ).content.decode()
        assert "More than" not in page
        expected = sum("1" in str(i) for i in range(30))  # Row 1, 10-19, 21
        assert f"{expected} results" in page

    @pytest.mark.postgres
    def test_estimated_count_on_postgresql(self, superuser_client, monkeypatch):
        if connection.vendor != "postgresql":
            pytest.skip("PostgreSQL's estimate (MAILKIT_DB=postgresql)")
        monkeypatch.setattr(OutboxPaginator, "count_limit", 20)
        make_rows(30)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE django_mailkit_outboxmessage")
        with CaptureQueriesContext(connection) as queries:
            page = superuser_client.get(admin_url("changelist")).content.decode()
        counts = [
            q["sql"]
            for q in queries.captured_queries
            if "COUNT(" in q["sql"].upper() and "GROUP BY" not in q["sql"].upper()
        ]
        assert counts == []  # only the dashboard's, over its 7 days
        assert "30 outbox messages" in page
        assert "is the database’s estimate" in page

    @pytest.mark.postgres
    def test_substring_search_uses_trigram_indexes_on_postgresql(self):
        if connection.vendor != "postgresql":
            pytest.skip("trigram indexes (MAILKIT_DB=postgresql)")
        from django.contrib import admin

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%%_trgm'"
            )
            names = sorted(row[0] for row in cursor.fetchall())
        assert names == ["mailkit_rcpt_addr_trgm", "mailkit_subject_trgm"]
        model_admin = admin.site._registry[OutboxMessage]
        queryset, _duplicates = model_admin.get_search_results(
            None, OutboxMessage.objects.all(), "frank"
        )
        with transaction.atomic(), connection.cursor() as cursor:
            # Whether the planner *can* use them; on a small table it scans.
            cursor.execute("SET LOCAL enable_seqscan = off")
            plan = queryset.explain()
        assert "mailkit_rcpt_addr_trgm" in plan
        assert "mailkit_subject_trgm" in plan

    def test_filters(self, superuser_client):
        make_rows(2, status=Status.SENT)
        make_rows(3, status=Status.FAILED, mailer="notifications")
        make_rows(
            4, status=Status.QUEUED, created_at=timezone.now() - timedelta(days=30)
        )
        url = admin_url("changelist")

        def rows(query):
            page = superuser_client.get(url + query).content.decode()
            return page.count('class="action-select"')

        assert rows("?status__exact=failed") == 3
        assert rows("?mailer=notifications") == 3
        assert rows("?mailer=smtp&status__exact=sent") == 2
        page = superuser_client.get(url).content.decode()
        (past_week,) = re.findall(
            r'<a href="(\?created_at__gte=[^"]+)">\s*Past 7 days', page
        )
        assert rows(past_week.replace("&amp;", "&")) == 5

    def test_mailer_filter_lists_delivering_mailers_without_a_query(
        self, superuser_client
    ):
        make_rows(2, mailer="retired")
        with CaptureQueriesContext(connection) as queries:
            page = superuser_client.get(admin_url("changelist")).content.decode()
        assert not [
            q for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()
        ]
        filter_html = page[page.index("By mailer") :]
        filter_html = filter_html[: filter_html.index("</details>")]
        assert re.findall(r"\?mailer=(\w+)", filter_html) == ["smtp", "notifications"]
        # A mailer no longer configured can still be filtered on.
        page = superuser_client.get(
            admin_url("changelist") + "?mailer=retired"
        ).content.decode()
        assert page.count('class="action-select"') == 2

    def test_the_reason_for_a_failure(self, superuser_client):
        reason = (
            "refused-frank@example.com: 550 5.1.1 <refused-frank@example.com>: "
            "Recipient address rejected: User unknown in virtual mailbox table; "
            "refused-grace@example.com: 550 5.1.1 no such user"
        )
        failed = set_status(queue("Bounced"), Status.FAILED)
        OutboxMessage.objects.filter(pk=failed.pk).update(last_error=reason)
        queue("Fine")
        page = superuser_client.get(admin_url("changelist")).content.decode()
        cells = re.findall(r'<td class="field-display_outcome">(.*?)</td>', page, re.S)
        # Newest first: "Fine" has no error to show.
        assert len(cells) == 2
        assert "mailkit-last-error" not in cells[0]
        cell = cells[1]
        # Shortened in the column, whole on hover.
        assert f'title="{escape(reason)}"' in cell
        assert 'mailkit-status-failed">Failed</span>' in cell
        shown = html.unescape(re.search(r">([^<]*)</div>", cell).group(1))
        assert shown.startswith("refused-frank@example.com: 550 5.1.1")
        assert shown.endswith("…") and len(shown) <= 80

    def test_search(self, superuser_client):
        ann = queue("Your receipt", to=["ann@example.com"])
        bob = queue(
            "Password reset",
            to=["bob@example.com"],
            headers={"Message-ID": "<reset.1@site.example>"},
        )
        url = admin_url("changelist")

        def found(term):
            page = superuser_client.get(url, {"q": term}).content.decode()
            return sorted(
                int(pk)
                for pk in re.findall(r'name="_selected_action" value="(\d+)"', page)
            )

        assert found("receipt") == [ann.pk]
        assert found("ann@example.com") == [ann.pk]
        assert found("Ann@Example.COM") == [ann.pk]
        assert found("ann@example") == [ann.pk]  # part of an address
        frank = queue("Bounce", to=["refused-frank@example.com"])
        assert found("frank") == [frank.pk]
        assert found("FRANK") == [frank.pk]
        assert found("bob@example.com") == [bob.pk]
        assert found("<reset.1@site.example>") == [bob.pk]
        assert found("reset.1@site.example") == [bob.pk]
        assert found("password bob@example.com") == [bob.pk]
        assert found("receipt bob@example.com") == []  # every word must match
        assert found('"Password reset"') == [bob.pk]

    def test_dashboard(self, superuser_client):
        now = timezone.now()
        make_rows(2, status=Status.SENT, created_at=now - timedelta(hours=1))
        make_rows(1, status=Status.FAILED, created_at=now - timedelta(hours=2))
        make_rows(3, status=Status.FAILED, created_at=now - timedelta(days=3))
        make_rows(5, status=Status.SENT, created_at=now - timedelta(days=10))
        response = superuser_client.get(admin_url("changelist"))
        dashboard = response.context["dashboard"]
        counts = {c["status"]: (c["day"], c["week"]) for c in dashboard["columns"]}
        assert counts == {
            "queued": (0, 0),
            "sending": (0, 0),
            "sent": (2, 2),
            "partial": (0, 0),
            "failed": (1, 4),
            "cancelled": (0, 0),
            "suppressed": (0, 0),
        }
        assert (dashboard["day_total"], dashboard["week_total"]) == (3, 6)
        # Each count links to the messages it counts.
        failed = next(c for c in dashboard["columns"] if c["status"] == "failed")
        page = superuser_client.get(failed["week_url"]).content.decode()
        assert page.count('class="action-select"') == 4
        assert failed["week_url"].replace("&", "&amp;") in response.content.decode()

    def test_links_for_those_allowed(self):
        viewer = staff("view_outboxmessage")
        page = viewer.get(admin_url("changelist")).content.decode()
        assert admin_url("send_test_email") not in page
        sender = staff("view_outboxmessage", "send_test_email", username="sender")
        page = sender.get(admin_url("changelist")).content.decode()
        assert admin_url("send_test_email") in page
