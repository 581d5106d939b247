"""
The suppression list in the admin: read-only, searchable, and "unsuppress"
behind its own permission, confirmed first. Tried by an anonymous user, staff
without the permission (403, even forging the POST), and staff with it.
"""

import re

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_mailkit import EmailMessage, mailers
from django_mailkit.models import (
    OutboxMessage,
    Recipient,
    RecipientStatus,
    Status,
    Suppression,
    SuppressionReason,
)
from django_mailkit.suppression import suppress
from tests.admin_users import staff

pytestmark = pytest.mark.django_db

LOGIN = reverse("admin:login")


def url(name, *args):
    return reverse(f"admin:django_mailkit_suppression_{name}", args=args)


def listed():
    return sorted(Suppression.objects.values_list("address", "mailer"))


@pytest.fixture
def rows():
    suppress(["ann@example.com"], reason=SuppressionReason.IMPORTED)
    suppress(
        ["bob@example.com"],
        reason=SuppressionReason.BOUNCED,
        mailer="newsletter",
        smtp_code=550,
        smtp_reply="5.1.1 <script>alert(1)</script> no such user",
        source="outbox message 7",
    )
    return list(Suppression.objects.order_by("address"))


def post(*rows, **extra):
    return {
        "action": "unsuppress",
        "_selected_action": [row.pk for row in rows],
        "index": 0,
        **extra,
    }


def confirmed(*rows):
    data = post(*rows, post="yes")
    del data["index"]  # as the confirmation page posts it
    return data


def action_choices(page):
    select = re.search(r'<select name="action"[^>]*>(.*?)</select>', page, re.S)
    return re.findall(r'<option value="([^"]+)"', select.group(1)) if select else []


def test_anonymous_is_sent_to_log_in(rows):
    for response in (
        Client().get(url("changelist")),
        Client().post(url("changelist"), confirmed(*rows)),
    ):
        assert response.status_code == 302
        assert response["Location"].startswith(LOGIN + "?next=")
    assert len(listed()) == 2


def test_the_list_is_read_only_and_escapes_what_servers_said(rows):
    client = staff("view_suppression")
    page = client.get(url("changelist")).content.decode()
    assert "ann@example.com" in page and "bob@example.com" in page
    assert "(every mailer)" in page and "newsletter" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert action_choices(page) == []
    assert client.get(url("add")).status_code == 403
    change = client.get(url("change", rows[1].pk))
    assert change.status_code == 200
    assert b'name="address"' not in change.content  # nothing to edit
    assert client.get(url("delete", rows[1].pk)).status_code == 403


def test_search_takes_an_address_in_any_spelling(rows):
    client = staff("view_suppression")

    def found(term):
        response = client.get(url("changelist"), {"q": term})
        return [row.address for row in response.context["cl"].result_list]

    assert found("Ann <ANN@Example.COM>") == ["ann@example.com"]
    assert found("bob") == ["bob@example.com"]
    assert found("example.com") == ["bob@example.com", "ann@example.com"]
    assert found("nobody") == []


@pytest.mark.parametrize("action", ["unsuppress", "delete_selected"])
def test_staff_without_the_permission_gets_403_even_forging_the_post(rows, action):
    client = staff("view_suppression")
    for data in (post(*rows), confirmed(*rows)):
        data["action"] = action
        assert client.post(url("changelist"), data).status_code == 403
    assert len(listed()) == 2
    assert not LogEntry.objects.exists()


def test_the_permission_without_view_is_not_enough(rows):
    client = staff("unsuppress_suppression")
    assert client.post(url("changelist"), confirmed(*rows)).status_code == 403
    assert len(listed()) == 2


def test_unsuppress_confirms_first_then_removes_and_logs(rows):
    client = staff("view_suppression", "unsuppress_suppression")
    page = client.get(url("changelist")).content.decode()
    assert action_choices(page) == ["unsuppress"]
    ann, bob = rows

    response = client.post(url("changelist"), post(bob))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Unsuppress 1 address?" in page
    assert "bob@example.com" in page and "ann@example.com" not in page
    assert "Yes, unsuppress" in page
    assert 'name="index"' not in page
    assert len(listed()) == 2  # nothing yet

    response = client.post(url("changelist"), confirmed(bob))
    assert response.status_code == 302
    assert listed() == [("ann@example.com", "")]
    (entry,) = LogEntry.objects.all()
    assert (entry.action_flag, entry.object_repr) == (DELETION, "bob@example.com")
    messages = [str(m) for m in response.wsgi_request._messages]
    assert messages == ["Unsuppressed 1 address: it will be sent to again."]


@override_settings(
    MAILERS={
        "default": {
            "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
            "OPTIONS": {"deliver_using": "smtp"},
        },
        "smtp": {"BACKEND": "django_mailkit.backends.locmem.EmailBackend"},
    },
    MAILKIT={"USE_TASKS": False},
)
def test_the_message_page_shows_suppressed_recipients(rows):
    from django_mailkit.worker import Worker

    message = EmailMessage("Hi", "body", "f@example.com", ["ann@example.com"])
    assert mailers["default"].send_messages([message]) == 1
    Worker(once=True, interval=0).run()
    record = OutboxMessage.objects.get()
    assert record.status == Status.SUPPRESSED
    assert Recipient.objects.get().status == RecipientStatus.SUPPRESSED
    change = reverse("admin:django_mailkit_outboxmessage_change", args=[record.pk])

    root = Client()
    root.force_login(User.objects.create_superuser("root", "r@example.com", None))
    page = root.get(change).content.decode()
    assert 'mailkit-status-suppressed">Suppressed</span>' in page
    assert 'mailkit-rcpt-suppressed">Suppressed</span>' in page
    assert "Suppressed for every mailer since " in page
    assert "Suppressed: 1 recipient was on the suppression list" in page
    link = url("changelist") + "?q=ann%40example.com"
    assert f'href="{link}"' in page
    assert 'mailkit-outcome-suppressed">Suppressed</span>' in page

    # Without the view permission on the list, no link to it.
    viewer = staff("view_outboxmessage", username="viewer")
    page = viewer.get(change).content.decode()
    assert "Suppressed for every mailer since " in page
    assert link not in page


def test_the_mailer_filter_offers_the_outbox_mailers_without_a_table_scan(rows):
    outbox = {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "smtp"},
    }
    configured = {
        "default": outbox,
        "newsletter": outbox,
        "smtp": {"BACKEND": "django_mailkit.backends.locmem.EmailBackend"},
    }
    client = staff("view_suppression")
    with override_settings(MAILERS=configured):
        with CaptureQueriesContext(connection) as queries:
            page = client.get(url("changelist")).content.decode()
        # A mailer no longer configured stays shown while it is chosen.
        chosen = client.get(url("changelist") + "?mailer=gone").content.decode()
    assert re.findall(r'href="\?mailer=([^"&]+)"', page) == [
        "-",
        "default",
        "newsletter",
    ]
    assert not [q["sql"] for q in queries if "DISTINCT" in q["sql"].upper()]
    assert "gone" in re.findall(r'href="\?mailer=([^"&]+)"', chosen)
