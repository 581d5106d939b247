"""
Replies no server should send: a NUL in the text, a code that is not a
number. Every message still ends in a stored state and is never sent again
by lease recovery; an outcome that cannot be written still finishes it.
"""

from unittest import mock

import pytest
from django.test import override_settings
from django.utils import timezone

from django_mailkit import send_mail
from django_mailkit.models import (
    Attempt,
    OutboxMessage,
    OutboxMessageQuerySet,
    RecipientStatus,
    Status,
)
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp

from .rawsmtp import RawSMTP

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def outbox_to(server, **mailkit):
    return override_settings(
        MAILERS=outbox_via_smtp(server, timeout=5),
        MAILKIT={"USE_TASKS": False, "MAX_ATTEMPTS": 2, **mailkit},
    )


def run_until_done(server, passes=4):
    """Worker passes, with retries and expired leases made due at once."""
    for _ in range(passes):
        Worker(once=True, interval=0).run()
        OutboxMessage.objects.filter(status=Status.QUEUED).update(
            next_attempt_at=timezone.now()
        )
        # Whatever is still "sending" is what lease recovery would resend.
        OutboxMessage.objects.filter(status=Status.SENDING).update(
            lease_expires_at=timezone.now()
        )
    return OutboxMessage.objects.get()


@pytest.fixture
def server():
    server = RawSMTP()
    yield server
    server.close()


@pytest.mark.parametrize(
    "rcpt_reply, data_reply, status",
    [
        (b"250 ok", b"250 queued as \x00abc\x07", Status.SENT),
        (b"550 no such\x00user", b"250 ok", Status.FAILED),
    ],
)
def test_a_nul_in_a_reply_is_stored_cleaned(server, rcpt_reply, data_reply, status):
    server.rcpt_reply, server.data_reply = rcpt_reply, data_reply
    with outbox_to(server):
        send_mail("s", "b", "from@example.com", ["to@example.com"])
        record = run_until_done(server)
    assert record.status == status
    assert len(server.deliveries) == (status == Status.SENT)
    attempt = Attempt.objects.get()
    recipient = record.recipient_set.get()
    stored = attempt.smtp_reply + recipient.smtp_reply + record.last_error
    assert "\x00" not in stored and "\x07" not in stored
    if status == Status.SENT:
        assert attempt.smtp_reply == "queued as \ufffdabc\ufffd"
    else:
        assert recipient.smtp_reply == "no such\ufffduser"
        assert "no such\ufffduser" in record.last_error


@pytest.mark.parametrize(
    "rcpt_reply, data_reply, deliveries",
    [(b"250 ok", b"xyz garbage", 2), (b"5x0 no", b"250 ok", 0)],
)
def test_a_garbled_reply_code_is_a_temporary_failure(
    server, rcpt_reply, data_reply, deliveries
):
    server.rcpt_reply, server.data_reply = rcpt_reply, data_reply
    with outbox_to(server):
        send_mail("s", "b", "from@example.com", ["to@example.com"])
        record = run_until_done(server)
    # Retried as a temporary failure, then failed once MAX_ATTEMPTS is spent:
    # never looped through lease recovery.
    assert record.status == Status.FAILED
    assert record.attempts == 2
    assert len(server.deliveries) == deliveries
    assert list(Attempt.objects.values_list("outcome", "smtp_code")) == [
        (Attempt.Outcome.RETRY, None),
        (Attempt.Outcome.FAILED, None),
    ]
    recipient = record.recipient_set.get()
    assert (recipient.status, recipient.smtp_code) == (RecipientStatus.FAILED, None)


def test_an_outcome_that_cannot_be_written_still_finishes_the_message(server, caplog):
    with outbox_to(server):
        send_mail("s", "b", "from@example.com", ["to@example.com"])
        record_attempts = OutboxMessageQuerySet.record_attempts

        def full_disk(self, outcomes, **kwargs):
            if outcomes:  # beginning an attempt still works
                raise RuntimeError("disk full")
            return record_attempts(self, outcomes, **kwargs)

        with mock.patch.object(OutboxMessageQuerySet, "record_attempts", full_disk):
            record = run_until_done(server)
    assert len(server.deliveries) == 1
    assert record.status == Status.SENT
    assert record.last_error.startswith(
        "The attempt's outcome could not be recorded (RuntimeError: disk full)"
    )
    assert "writing the attempt's outcome failed" in caplog.text
