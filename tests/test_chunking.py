"""
Recipient chunking: a message to many recipients goes in several mail
transactions, of at most ``max_recipients_per_transaction`` recipients, and a
server that says 452 "too many recipients" part way through a transaction
gets the rest in the next one, within the same send. Against a real server
that enforces its own limit, like Postfix's ``smtpd_recipient_limit``.
"""

import pytest
from django.test import override_settings
from django.utils import timezone

from django_mailkit import EmailMessage, InvalidMailer, mailers
from django_mailkit.models import OutboxMessage, RecipientStatus, Status
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp


def smtp_mailer(server, **options):
    return {
        "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
        "OPTIONS": {"host": server.host, "port": server.port, "timeout": 5, **options},
    }


def rcpt_counts(server):
    """RCPT TO commands per transaction, as the server read them."""
    counts = []
    for line in server.commands():
        if line.upper().startswith(b"MAIL FROM:"):
            counts.append(0)
        elif line.upper().startswith(b"RCPT TO:"):
            counts[-1] += 1
    return counts


def delivered_to(server):
    return [address for d in server.deliveries for address in d.rcpt_tos]


def addresses(count):
    return [f"user{i}@example.com" for i in range(count)]


def test_transactions_hold_at_most_the_configured_number(smtp_server):
    to = addresses(250)
    message = EmailMessage("Hello", "body", "from@example.com", to)
    with override_settings(MAILERS={"default": smtp_mailer(smtp_server)}):
        assert mailers.default.send_messages([message]) == 1
    assert rcpt_counts(smtp_server) == [100, 100, 50]  # the default limit
    assert sorted(delivered_to(smtp_server)) == sorted(to)
    # Every transaction carries the same bytes: one Message-ID.
    assert len({d.data for d in smtp_server.deliveries}) == 1
    assert message.refused_recipients == {} and message.smtp_error is None


def test_452_after_accepted_recipients_sends_the_rest_at_once(smtp_server):
    smtp_server.max_recipients = 30
    to = addresses(100)
    message = EmailMessage("Hello", "body", "from@example.com", to)
    mailer = smtp_mailer(smtp_server, max_recipients_per_transaction=80)
    with override_settings(MAILERS={"default": mailer}):
        assert mailers.default.send_messages([message]) == 1
    delivered = delivered_to(smtp_server)
    assert sorted(delivered) == sorted(to) and len(delivered) == len(set(delivered))
    # The first transaction found the server's limit; the rest kept to it.
    assert rcpt_counts(smtp_server) == [80, 30, 30, 10]
    assert [len(d.rcpt_tos) for d in smtp_server.deliveries] == [30, 30, 30, 10]
    assert message.refused_recipients == {}


def test_452_with_nobody_accepted_is_a_refusal(smtp_server):
    smtp_server.refuse_recipient("a@example.com", "452 4.2.2 Mailbox full")
    message = EmailMessage("Hello", "body", "from@example.com", ["a@example.com"])
    mailer = smtp_mailer(smtp_server, fail_silently=True)
    with override_settings(MAILERS={"default": mailer}):
        assert mailers.default.send_messages([message]) == 0
    assert message.refused_recipients == {"a@example.com": (452, "4.2.2 Mailbox full")}
    assert smtp_server.deliveries == []


@pytest.mark.parametrize("value", [0, -1, 1.5, "100", True, None])
def test_option_is_validated(smtp_server, value):
    mailer = smtp_mailer(smtp_server, max_recipients_per_transaction=value)
    with override_settings(MAILERS={"default": mailer}):
        with pytest.raises(
            InvalidMailer, match=r"\['max_recipients_per_transaction'\]: must be"
        ):
            mailers.default


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("limit", [100, 2500], ids=["default-limit", "452s"])
def test_outbox_2500_recipients_past_a_server_limit_of_1000(smtp_server, limit):
    """
    The case from issue 11: the server accepts 1,000 recipients per
    transaction. Every recipient gets the message once, in one attempt.
    """
    smtp_server.max_recipients = 1000
    to = addresses(2500)
    with override_settings(
        MAILERS=outbox_via_smtp(
            smtp_server, timeout=5, max_recipients_per_transaction=limit
        ),
        MAILKIT={"USE_TASKS": False},
    ):
        message = EmailMessage("Many", "body", "from@example.com", bcc=to)
        assert mailers.default.send_messages([message]) == 1
        OutboxMessage.objects.update(next_attempt_at=timezone.now())
        stats = Worker(once=True, interval=0).run()
    assert stats.errors == 0
    record = OutboxMessage.objects.get()
    assert record.status == Status.SENT and record.attempts == 1
    assert set(record.recipient_set.values_list("status", flat=True)) == {
        RecipientStatus.SENT
    }
    delivered = delivered_to(smtp_server)
    assert len(delivered) == 2500 and set(delivered) == set(to)
    expected = [100] * 25 if limit == 100 else [2500, 1000, 500]
    assert rcpt_counts(smtp_server) == expected
    assert len({d.message["Message-ID"] for d in smtp_server.deliveries}) == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_outbox_connection_lost_between_transactions(smtp_server):
    """
    The server hangs up in the second transaction's DATA, unanswered. The
    first transaction's recipients are recorded as sent and never sent to
    again; the rest are retried, and every recipient ends with one copy.
    """
    smtp_server.hang_up_during_data(times=1, skip=1)
    to = addresses(250)
    with override_settings(
        MAILERS=outbox_via_smtp(smtp_server, timeout=5),
        MAILKIT={"USE_TASKS": False},
    ):
        assert (
            mailers.default.send_messages(
                [EmailMessage("Many", "body", "from@example.com", to)]
            )
            == 1
        )
        Worker(once=True, interval=0).run()
        record = OutboxMessage.objects.get()
        assert record.status == Status.QUEUED and record.attempts == 1
        sent = set(
            record.recipient_set.filter(status=RecipientStatus.SENT).values_list(
                "address", flat=True
            )
        )
        assert sent == set(to[:100])
        assert "SMTPServerDisconnected" in record.last_error
        OutboxMessage.objects.update(next_attempt_at=timezone.now())
        Worker(once=True, interval=0).run()
    record.refresh_from_db()
    assert record.status == Status.SENT and record.attempts == 2
    delivered = delivered_to(smtp_server)
    assert sorted(delivered) == sorted(to)  # each exactly once
