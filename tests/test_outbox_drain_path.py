"""
The worker's drain path reads and writes only what it must.

A claim loads the fields delivery uses (``CLAIMED_FIELDS``) and nothing
else; a field left out would be loaded by Django on first use, one query per
message. These tests fail if delivery ever touches such a field.
"""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from django_mailkit import EmailMessage, mailers
from django_mailkit.models import (
    CLAIMED_FIELDS,
    OutboxMessage,
    RecipientStatus,
    Status,
)
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

LEASE = timedelta(minutes=5)


@pytest.fixture
def server(smtp_server):
    with override_settings(
        MAILERS=outbox_via_smtp(smtp_server, timeout=5),
        MAILKIT={"USE_TASKS": False, "MAX_ATTEMPTS": 2},
    ):
        yield smtp_server


@pytest.fixture
def no_lazy_loads(monkeypatch):
    """Fail on any field of an outbox message loaded after its query."""
    loads = []
    original = OutboxMessage.refresh_from_db

    def refresh_from_db(self, *args, **kwargs):
        loads.append((self.pk, kwargs.get("fields", args[1] if args[1:] else None)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OutboxMessage, "refresh_from_db", refresh_from_db)
    yield loads
    assert loads == [], f"fields loaded one message at a time: {loads}"


def queue(*recipients_lists):
    mailers.default.send_messages(
        [
            EmailMessage(f"m{i}", "body", "f@example.com", list(to))
            for i, to in enumerate(recipients_lists)
        ]
    )


def test_claim_loads_only_the_fields_delivery_uses(server):
    queue(["a@example.com"])
    (claimed,) = OutboxMessage.objects.claim("w", limit=5, lease=LEASE)
    loaded = {f.attname for f in OutboxMessage._meta.concrete_fields} - (
        claimed.get_deferred_fields()
    )
    assert loaded == {OutboxMessage._meta.get_field(n).attname for n in CLAIMED_FIELDS}
    assert "mime" not in loaded
    # What was left out still reads right (loaded on use).
    assert claimed.subject == "m0"


def test_delivery_touches_no_field_the_claim_left_out(server, no_lazy_loads):
    # Sent, partially sent, retried and then failed: every classification
    # path and both kinds of write (final and retry later).
    server.refuse_recipient("gone@example.com", "550 5.1.1 No such user")
    server.refuse_recipient("busy@example.com", "451 4.3.0 Try later")
    queue(
        ["a@example.com"],
        ["b@example.com", "gone@example.com"],
        ["busy@example.com"],
        ["c@example.com", "d@example.com"],
    )
    first = Worker(once=True, interval=0).run()
    assert (first.sent, first.partial, first.retry) == (2, 1, 1)
    OutboxMessage.objects.filter(status=Status.QUEUED).update(
        next_attempt_at=timezone.now()
    )
    second = Worker(once=True, interval=0).run()
    assert second.failed == 1
    statuses = dict(OutboxMessage.objects.values_list("subject", "status"))
    assert statuses == {
        "m0": Status.SENT,
        "m1": Status.PARTIAL,
        "m2": Status.FAILED,
        "m3": Status.SENT,
    }
    busy = OutboxMessage.objects.get(subject="m2")
    assert busy.attempts == 2
    assert list(busy.recipient_set.values_list("status", flat=True)) == [
        RecipientStatus.FAILED
    ]
    assert OutboxMessage.objects.get(subject="m1").sent_at is not None
