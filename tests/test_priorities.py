"""Priorities: the outbox mailer's option, the per-message override, the claim order."""

from datetime import timedelta

import pytest
from django.core import mail
from django.test import override_settings
from django.utils import timezone

from django_mailkit import EmailMessage, EmailMultiAlternatives, InvalidMailer, mailers
from django_mailkit.models import OutboxMessage, Priority, Status
from django_mailkit.worker import Worker

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

OUTBOX = "django_mailkit.backends.outbox.EmailBackend"
LOCMEM = "django_mailkit.backends.locmem.EmailBackend"


@pytest.fixture
def outboxes():
    """A default outbox and a bulk one, both queueing for the same transport."""
    mail.outbox = []
    with override_settings(
        MAILERS={
            "default": {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "transport"}},
            "news": {
                "BACKEND": OUTBOX,
                "OPTIONS": {"deliver_using": "transport", "priority": "bulk"},
            },
            "transport": {"BACKEND": LOCMEM},
        },
        MAILKIT={"USE_TASKS": False},
    ):
        yield


def message(subject, priority=None, cls=EmailMessage):
    msg = cls(subject, "body", "from@example.com", ["to@example.com"])
    if priority is not None:
        msg.priority = priority
    return msg


def test_priority_of_the_mailer_and_of_the_message(outboxes):
    mailers["news"].send_messages([message("newsletter")])
    mailers["default"].send_messages([message("receipt")])
    mailers["news"].send_messages([message("reset", "high")])
    mailers["default"].send_messages(
        [message("digest", "bulk", cls=EmailMultiAlternatives)]
    )
    assert dict(OutboxMessage.objects.values_list("subject", "priority")) == {
        "newsletter": Priority.BULK,
        "receipt": Priority.DEFAULT,
        "reset": Priority.HIGH,
        "digest": Priority.BULK,
    }


def test_the_message_priority_is_not_a_header(outboxes):
    mailers["default"].send_messages([message("reset", "high")])
    mime = bytes(OutboxMessage.objects.get().mime).lower()
    assert b"priority" not in mime


@pytest.mark.parametrize("value", ["urgent", "HIGH", 30, ""])
def test_bad_message_priority_fails_the_send_and_stores_nothing(outboxes, value):
    with pytest.raises(ValueError) as info:
        mailers["default"].send_messages([message("ok"), message("bad", value)])
    assert str(info.value) == (
        "The message's priority must be one of 'bulk', 'default', 'high' "
        f"(got {value!r})."
    )
    assert not OutboxMessage.objects.exists()


@pytest.mark.parametrize("value", ["urgent", None, 3])
def test_bad_priority_option_names_the_option(value):
    with (
        override_settings(
            MAILERS={
                "default": {"BACKEND": LOCMEM},
                "news": {
                    "BACKEND": OUTBOX,
                    "OPTIONS": {"deliver_using": "default", "priority": value},
                },
            }
        ),
        pytest.raises(InvalidMailer) as info,
    ):
        mailers["news"]
    assert str(info.value) == (
        "MAILERS['news']['OPTIONS']['priority']: must be one of 'bulk', "
        f"'default', 'high' (got {value!r})."
    )


def test_claims_take_the_most_urgent_due_messages_first_then_the_oldest(outboxes):
    now = timezone.now()
    rows = {
        "bulk old": (Priority.BULK, now - timedelta(minutes=9)),
        "default old": (Priority.DEFAULT, now - timedelta(minutes=8)),
        "bulk new": (Priority.BULK, now - timedelta(minutes=1)),
        "high new": (Priority.HIGH, now - timedelta(seconds=1)),
        "high not due": (Priority.HIGH, now + timedelta(minutes=1)),
        "high old": (Priority.HIGH, now - timedelta(minutes=5)),
        "default new": (Priority.DEFAULT, now - timedelta(seconds=2)),
    }
    OutboxMessage.objects.bulk_create(
        OutboxMessage(
            queued_via="default",
            mailer="transport",
            from_email="f@example.com",
            recipients=["a@example.com"],
            subject=subject,
            mime=b"x",
            priority=priority,
            next_attempt_at=due,
        )
        for subject, (priority, due) in rows.items()
    )
    first = OutboxMessage.objects.claim("w1", limit=3, lease=timedelta(minutes=1))
    second = OutboxMessage.objects.claim("w2", limit=10, lease=timedelta(minutes=1))
    assert [m.subject for m in first] == ["high old", "high new", "default old"]
    assert [m.subject for m in second] == ["default new", "bulk old", "bulk new"]


def test_the_worker_delivers_in_priority_order(outboxes):
    mailers["news"].send_messages([message(f"news {i}") for i in range(5)])
    mailers["news"].send_messages([message("reset", "high")])
    mailers["default"].send_messages([message("receipt")])
    Worker(once=True, batch_size=2).run()
    assert [m.subject for m in mail.outbox] == [
        "reset",
        "receipt",
        *(f"news {i}" for i in range(5)),
    ]
    assert not OutboxMessage.objects.exclude(status=Status.SENT).exists()


def test_a_resent_copy_keeps_the_priority(outboxes):
    mailers["news"].send_messages([message("newsletter")])
    Worker(once=True).run()
    original = OutboxMessage.objects.get()
    copy = original.resend()
    assert copy.priority == Priority.BULK


def test_the_admin_page_shows_the_priority(outboxes, admin_client):
    mailers["news"].send_messages([message("newsletter")])
    record = OutboxMessage.objects.get()
    response = admin_client.get(
        f"/admin/django_mailkit/outboxmessage/{record.pk}/change/"
    )
    assert response.status_code == 200
    assert "Priority:" in response.content.decode()
    assert ">Bulk<" in response.content.decode()
