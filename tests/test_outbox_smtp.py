"""
The outbox against a real SMTP server that misbehaves: per-recipient
421/451/452/550/554, refused DATA, dropped connections. Every message must
end in the right state, with the right attempt history, and an accepted
recipient is never sent to twice.
"""

from unittest import mock

import pytest
from django.test import override_settings
from django.utils import timezone

from django_mailkit import EmailMessage, mailers
from django_mailkit.models import (
    OutboxMessage,
    OutboxMessageQuerySet,
    RecipientStatus,
    Status,
)
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(smtp_server_factory):
    server = smtp_server_factory()
    with override_settings(
        MAILERS=outbox_via_smtp(server, timeout=5),
        MAILKIT={"USE_TASKS": False, "MAX_ATTEMPTS": 3},
    ):
        yield server


def send(subject="s", to=("a@example.com",), **kwargs):
    assert (
        mailers.default.send_messages(
            [EmailMessage(subject, "body", "f@example.com", list(to), **kwargs)]
        )
        == 1
    )
    return OutboxMessage.objects.get(subject=subject)


def attempt():
    """One worker pass over what is due, then make retries due at once."""
    stats = Worker(once=True, interval=0).run()
    assert stats.errors == 0
    OutboxMessage.objects.filter(status=Status.QUEUED).update(
        next_attempt_at=timezone.now()
    )
    return stats


def states(record):
    return {
        r.address: (r.status, r.smtp_code) for r in record.recipient_set.order_by("id")
    }


def history(record):
    return [
        (a.number, a.outcome, {k: v[0] for k, v in a.recipients.items()})
        for a in record.attempt_set.order_by("number")
    ]


def test_per_recipient_results_and_retries(server):
    server.refuse_recipient("b@example.com", "451 4.2.1 Mailbox busy", times=1)
    server.refuse_recipient("c@example.com", "550 5.1.1 No such user")
    server.refuse_recipient("d@example.com", "452 4.2.2 Mailbox full")
    server.refuse_recipient("e@example.com", "554 5.7.1 Relay denied")
    record = send(to=[f"{x}@example.com" for x in "abcde"])

    attempt()
    record.refresh_from_db()
    assert record.status == Status.QUEUED
    assert states(record) == {
        "a@example.com": (RecipientStatus.SENT, 250),
        "b@example.com": (RecipientStatus.DEFERRED, 451),
        "c@example.com": (RecipientStatus.FAILED, 550),
        "d@example.com": (RecipientStatus.DEFERRED, 452),
        "e@example.com": (RecipientStatus.FAILED, 554),
    }

    attempt()  # b goes through, d is still full
    attempt()  # d again: out of attempts
    record.refresh_from_db()
    assert record.status == Status.PARTIAL and record.attempts == 3
    assert states(record)["b@example.com"] == (RecipientStatus.SENT, 250)
    assert states(record)["d@example.com"] == (RecipientStatus.FAILED, 452)
    assert history(record) == [
        (
            1,
            "retry",
            {
                "a@example.com": 250,
                "b@example.com": 451,
                "c@example.com": 550,
                "d@example.com": 452,
                "e@example.com": 554,
            },
        ),
        (2, "retry", {"b@example.com": 250, "d@example.com": 452}),
        # The message is partially sent, over all its attempts; this one
        # delivered nothing: d failed, its retries spent.
        (3, "failed", {"d@example.com": 452}),
    ]
    # Each accepted recipient got the message exactly once.
    assert [d.rcpt_tos for d in server.deliveries] == [
        ["a@example.com"],
        ["b@example.com"],
    ]


def test_a_stored_unicode_domain_gets_its_result(server):
    # A migrated row keeps the Unicode domain; it goes out IDNA-encoded and
    # its reply must still land on the stored row (or it is resent forever).
    server.refuse_recipient("b@example.com", "451 4.2.1 Mailbox busy", times=1)
    record = send(to=["a@xn--bcher-kva.example", "b@example.com"])
    record.recipient_set.filter(address="a@xn--bcher-kva.example").update(
        address="a@bücher.example"
    )
    attempt()
    attempt()
    record.refresh_from_db()
    assert record.status == Status.SENT
    assert states(record) == {
        "a@bücher.example": (RecipientStatus.SENT, 250),
        "b@example.com": (RecipientStatus.SENT, 250),
    }
    assert [d.rcpt_tos for d in server.deliveries] == [
        ["a@xn--bcher-kva.example"],
        ["b@example.com"],
    ]


def test_all_recipients_refused_for_good(server):
    server.refuse_recipient("x@example.com", "550 5.1.1 No such user")
    record = send(to=["x@example.com"])
    attempt()
    record.refresh_from_db()
    assert record.status == Status.FAILED
    assert "x@example.com" in record.attempt_set.get().recipients
    assert server.deliveries == []


@pytest.mark.parametrize(
    "stage, reply, outcomes, final",
    [
        ("MAIL", "421 4.3.2 Service shutting down", ["retry", "sent"], Status.SENT),
        ("DATA", "451 4.3.0 Local error", ["retry", "sent"], Status.SENT),
        ("DATA", "554 5.6.0 Message rejected", ["failed"], Status.FAILED),
        ("MAIL", "553 5.1.8 Sender rejected", ["failed"], Status.FAILED),
    ],
)
def test_whole_message_replies(server, stage, reply, outcomes, final):
    server.reply(stage, reply, times=1)
    record = send()
    attempt()
    attempt()
    record.refresh_from_db()
    assert record.status == final
    assert [a.outcome for a in record.attempt_set.order_by("number")] == outcomes
    first = record.attempt_set.order_by("number").first()
    assert first.smtp_code == int(reply[:3])
    assert reply[4:] in first.smtp_reply
    if final == Status.FAILED:
        assert states(record) == {
            "a@example.com": (RecipientStatus.FAILED, int(reply[:3]))
        }
        assert reply[:3] in record.last_error


def test_dropped_connection_mid_data_is_retried(server):
    server.hang_up_during_data(times=1)
    record = send()
    stats = attempt()
    assert stats.retry == 1
    record.refresh_from_db()
    assert record.status == Status.QUEUED
    assert "SMTPServerDisconnected" in record.last_error
    attempt()
    record.refresh_from_db()
    assert record.status == Status.SENT
    assert len(server.deliveries) == 1


def test_one_connection_per_batch_and_no_blocking(server):
    server.refuse_recipient("bad@example.com", "550 5.1.1 No such user")
    records = [send(f"m{i}") for i in range(5)]
    bad = send("bad", to=["bad@example.com"])
    stats = attempt()
    assert (stats.sent, stats.failed) == (5, 1)
    assert all(
        OutboxMessage.objects.get(pk=r.pk).status == Status.SENT for r in records
    )
    assert OutboxMessage.objects.get(pk=bad.pk).status == Status.FAILED
    assert len(server.wait_closed()) == 1


def test_connection_refused_keeps_messages_queued(server, closed_port):
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "smtp"},
            },
            "smtp": {
                "OPTIONS": {"host": "127.0.0.1", "port": closed_port, "timeout": 2}
            },
        },
        MAILKIT={"USE_TASKS": False},
    ):
        record = send()
        stats = attempt()
    assert stats.retry == 1
    record.refresh_from_db()
    assert (
        record.status == Status.QUEUED and "ConnectionRefusedError" in record.last_error
    )
    assert states(record) == {"a@example.com": (RecipientStatus.PENDING, None)}


def test_last_error_names_the_refused_recipients(server):
    server.refuse_recipient("x@example.com", "550 5.1.1 No such user")
    record = send(to=["x@example.com", "y@example.com"])
    attempt()
    record.refresh_from_db()
    assert record.status == Status.PARTIAL
    assert record.last_error == "x@example.com: 550 5.1.1 No such user"


@pytest.mark.parametrize(
    "first, second, final",
    [
        # A fails for good on the first attempt; B gets through on the second.
        ("550 5.1.1 No such user", "451 4.2.1 Busy", Status.PARTIAL),
        # A gets through at once; B fails for good on the second attempt.
        (None, "451 4.2.1 Busy", Status.PARTIAL),
    ],
)
def test_fate_counts_every_attempt(server, first, second, final):
    if first:
        server.refuse_recipient("a@example.com", first)
    server.refuse_recipient("b@example.com", second, times=1)
    if first is None:
        # ...and then refuses B for good.
        record = send(to=["a@example.com", "b@example.com"])
        attempt()
        server.refuse_recipient("b@example.com", "550 5.1.1 Gone")
    else:
        record = send(to=["a@example.com", "b@example.com"])
        attempt()
    attempt()
    record.refresh_from_db()
    assert record.status == final
    assert {a for a, (status, _) in states(record).items() if status == "sent"} == {
        "b@example.com" if first else "a@example.com"
    }


@pytest.mark.parametrize(
    "first, second, message, attempts",
    [
        # Delivered to a; the retry delivers nothing and b fails for good.
        (None, "550 5.1.1 Gone", Status.PARTIAL, ["retry", "failed"]),
        # Nothing ever delivered: never "partial", not even the message.
        (
            "550 5.1.1 No such user",
            "550 5.1.1 Gone",
            Status.FAILED,
            ["retry", "failed"],
        ),
        # The retry delivers to everyone it addresses; a had failed before.
        ("550 5.1.1 No such user", None, Status.PARTIAL, ["retry", "sent"]),
    ],
)
def test_each_attempt_records_what_it_did(server, first, second, message, attempts):
    """
    A message's status is its recipients' fate over all its attempts; an
    Attempt row's outcome is what that attempt did, judged by its own
    recipients (so a retry that delivered nothing is never "partial").
    """
    if first:
        server.refuse_recipient("a@example.com", first)
    server.refuse_recipient("b@example.com", "451 4.2.1 Busy", times=1)
    record = send(to=["a@example.com", "b@example.com"])
    attempt()
    if second:
        server.refuse_recipient("b@example.com", second)
    attempt()
    record.refresh_from_db()
    assert record.status == message
    assert [outcome for _n, outcome, _r in history(record)] == attempts


def test_an_unwritable_retry_of_a_partly_delivered_message_is_partial(server):
    """
    The retry's outcome can't be written, so the message is finished as it
    stands: partially sent, for a@ got it on the first attempt (the retry
    itself delivered nothing).
    """
    server.refuse_recipient("b@example.com", "451 4.2.1 Busy")
    record = send(to=["a@example.com", "b@example.com"])
    attempt()
    record_attempts = OutboxMessageQuerySet.record_attempts

    def full_disk(self, outcomes, **kwargs):
        if outcomes:
            raise RuntimeError("disk full")
        return record_attempts(self, outcomes, **kwargs)

    with mock.patch.object(OutboxMessageQuerySet, "record_attempts", full_disk):
        Worker(once=True, interval=0).run()
    record.refresh_from_db()
    assert (record.status, record.attempts) == (Status.PARTIAL, 2)
    assert record.last_error.startswith("The attempt's outcome could not be recorded")
    assert states(record)["a@example.com"] == (RecipientStatus.SENT, 250)


def test_an_unreachable_server_is_tried_once_per_batch(server, closed_port):
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "smtp"},
            },
            "smtp": {
                "OPTIONS": {"host": "127.0.0.1", "port": closed_port, "timeout": 2}
            },
        },
        MAILKIT={"USE_TASKS": False},
    ):
        for i in range(5):
            send(f"m{i}")
        from django_mailkit.backends import smtp

        attempts = []
        original = smtp.EmailBackend._connect

        def counting(self):
            attempts.append(1)
            return original(self)

        smtp.EmailBackend._connect = counting
        try:
            stats = attempt()
        finally:
            smtp.EmailBackend._connect = original
    assert stats.retry == 5
    assert len(attempts) == 1
