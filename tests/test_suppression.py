"""
The suppression list against a real SMTP server: a permanent refusal at RCPT
that names the address lists it; later messages skip it, and the server's
log of RCPT commands shows it never reached the wire.
"""

import pytest
from django.test import override_settings
from django.utils import timezone

from django_mailkit import EmailMessage, InvalidMailer, mailers
from django_mailkit.exceptions import InvalidAddress
from django_mailkit.models import (
    OutboxMessage,
    RecipientStatus,
    Status,
    Suppression,
    SuppressionReason,
)
from django_mailkit.suppression import is_address_failure, normalise, suppress
from django_mailkit.worker import Worker

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

DEAD = "550 5.1.1 <gone@example.com>: Recipient address rejected"


def outbox(server, **options):
    return {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "smtp", **options},
    }


@pytest.fixture
def server(smtp_server_factory):
    server = smtp_server_factory()
    with override_settings(
        MAILERS={
            "default": outbox(server),
            "newsletter": outbox(server),
            "quiet": outbox(server, suppress_on_permanent_failure=False),
            "smtp": {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": {"host": server.host, "port": server.port, "timeout": 5},
            },
        },
        MAILKIT={"USE_TASKS": False, "MAX_ATTEMPTS": 3},
    ):
        yield server


def send(subject, to, using="default"):
    message = EmailMessage(subject, "body", "f@example.com", list(to))
    assert mailers[using].send_messages([message]) == 1
    return OutboxMessage.objects.get(subject=subject)


def deliver():
    stats = Worker(once=True, interval=0).run()
    assert stats.errors == 0
    return stats


def rcpt_to(server):
    """Every address the server was asked to take, in order."""
    return [
        line.split(b":", 1)[1].strip(b"<> \r\n").decode()
        for line in server.commands()
        if line[:8].upper() == b"RCPT TO:"
    ]


def states(record):
    return {
        r.address: (r.status, r.smtp_code, r.smtp_reply)
        for r in record.recipient_set.order_by("id")
    }


def test_a_dead_address_is_listed_then_never_sent_to_again(server):
    server.refuse_recipient("gone@example.com", DEAD)
    first = send("first", ["a@example.com", "gone@example.com"])
    deliver()
    first.refresh_from_db()
    assert first.status == Status.PARTIAL
    (row,) = Suppression.objects.all()
    assert (row.address, row.mailer, row.reason) == (
        "gone@example.com",
        "default",
        SuppressionReason.BOUNCED,
    )
    assert (row.smtp_code, row.source) == (550, f"outbox message {first.pk}")
    assert "Recipient address rejected" in row.smtp_reply
    assert rcpt_to(server) == ["a@example.com", "gone@example.com"]

    # Listed in another spelling: the list's key is normalised.
    second = send("second", ["b@example.com", "Gone <GONE@Example.COM>"])
    deliver()
    second.refresh_from_db()
    # Never asked for again: the second session's RCPTs are b's alone.
    assert rcpt_to(server) == ["a@example.com", "gone@example.com", "b@example.com"]
    assert [d.rcpt_tos for d in server.deliveries] == [
        ["a@example.com"],
        ["b@example.com"],
    ]
    # Sent to some, not to all.
    assert second.status == Status.PARTIAL
    status, code, reason = states(second)["GONE@Example.COM"]
    assert (status, code) == (RecipientStatus.SUPPRESSED, None)
    assert reason.startswith("Suppressed for mailer 'default' since ")
    assert "Refused by the server (permanent) (550 5.1.1" in reason
    assert f"source: outbox message {first.pk}" in reason
    # The attempt lists what the server answered, and only that.
    assert list(second.attempt_set.get().recipients) == ["b@example.com"]


def test_a_message_with_every_recipient_suppressed_opens_no_connection(server):
    suppress(["x@example.com", "y@example.com"], reason=SuppressionReason.IMPORTED)
    record = send("nobody", ["x@example.com", "Y@example.com"])
    stats = deliver()
    assert (stats.suppressed, stats.sent, stats.failed) == (1, 0, 0)
    record.refresh_from_db()
    assert record.status == Status.SUPPRESSED
    assert record.sent_at is None
    assert record.last_error == "Not sent: every recipient is suppressed."
    assert {s for s, _, _ in states(record).values()} == {RecipientStatus.SUPPRESSED}
    (attempt,) = record.attempt_set.all()
    assert (attempt.outcome, attempt.recipients) == ("suppressed", {})
    assert server.sessions == []
    # Final: a later pass leaves it alone.
    deliver()
    assert server.sessions == []


def test_suppression_is_per_outbox_mailer_or_global(server):
    suppress(
        ["n@example.com"], reason=SuppressionReason.UNSUBSCRIBED, mailer="newsletter"
    )
    suppress(["all@example.com"], reason=SuppressionReason.IMPORTED)
    news = send(
        "news", ["n@example.com", "all@example.com", "ok@example.com"], "newsletter"
    )
    reset = send("reset", ["n@example.com", "all@example.com"])
    deliver()
    assert sorted(rcpt_to(server)) == ["n@example.com", "ok@example.com"]
    news.refresh_from_db()
    reset.refresh_from_db()
    assert news.status == reset.status == Status.PARTIAL
    assert states(news)["n@example.com"][0] == RecipientStatus.SUPPRESSED
    assert "for mailer 'newsletter'" in states(news)["n@example.com"][2]
    assert "for every mailer" in states(news)["all@example.com"][2]
    # The newsletter's unsubscribe doesn't stop the password reset.
    assert states(reset)["n@example.com"][0] == RecipientStatus.SENT
    assert states(reset)["all@example.com"][0] == RecipientStatus.SUPPRESSED


@pytest.mark.parametrize(
    "stage, reply",
    [
        ("RCPT", "554 5.7.1 <x@example.com>: Relay access denied"),
        ("RCPT", "552 5.2.2 Mailbox full"),
        ("RCPT", "450 4.1.1 Try later"),
        ("DATA", "550 5.1.1 Content rejected"),
    ],
)
def test_refusals_that_say_nothing_about_the_address_list_nothing(server, stage, reply):
    if stage == "RCPT":
        server.refuse_recipient("x@example.com", reply)
    else:
        server.reply("DATA", reply)
    send("s", ["x@example.com"])
    deliver()
    assert not Suppression.objects.exists()


def test_the_option_turns_listing_off_but_not_the_skip(server):
    server.refuse_recipient("gone@example.com", DEAD)
    send("quiet", ["gone@example.com"], "quiet")
    deliver()
    assert not Suppression.objects.exists()
    suppress(["gone@example.com"], reason=SuppressionReason.IMPORTED)
    record = send("quiet again", ["gone@example.com"], "quiet")
    deliver()
    record.refresh_from_db()
    assert record.status == Status.SUPPRESSED
    assert rcpt_to(server) == ["gone@example.com"]


def test_a_requeued_message_skips_what_was_listed_meanwhile(server):
    server.refuse_recipient("gone@example.com", DEAD)
    record = send("m", ["gone@example.com"])
    deliver()
    record.refresh_from_db()
    assert record.status == Status.FAILED
    assert record.requeue()
    deliver()
    record.refresh_from_db()
    assert record.status == Status.SUPPRESSED
    assert rcpt_to(server) == ["gone@example.com"]


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_option_must_be_a_bool(value):
    config = {
        "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
        "OPTIONS": {"deliver_using": "x", "suppress_on_permanent_failure": value},
    }
    with override_settings(MAILERS={"default": config}):
        with pytest.raises(InvalidMailer) as caught:
            mailers["default"]
    assert str(caught.value).startswith(
        "MAILERS['default']['OPTIONS']['suppress_on_permanent_failure']: "
        "must be True or False"
    )


@pytest.mark.parametrize(
    "code, reply, dead",
    [
        (550, "5.1.1 No such user", True),
        (550, "No such user here", True),
        (551, "User not local", True),
        (553, "5.1.3 Bad address syntax", True),
        (550, "5.1.10 Null MX", True),
        (550, "5.2.1 Mailbox disabled", True),
        (550, "5.7.1 Relay access denied", False),
        (554, "5.7.1 Spam", False),
        (554, "Transaction failed", False),
        (552, "5.2.2 Mailbox full", False),
        (553, "5.1.8 Sender address rejected", False),
        (550, "4.1.1 odd", False),
        (450, "4.1.1 Try later", False),
        (250, "2.1.5 OK", False),
        (None, "", False),
    ],
)
def test_is_address_failure(code, reply, dead):
    assert is_address_failure(code, reply) is dead


@pytest.mark.parametrize(
    "value, key",
    [
        ("Bob@Example.COM", "bob@example.com"),
        ("Bob <bob@example.com>", "bob@example.com"),
        ("  bob@example.com ", "bob@example.com"),
        ("a@bücher.example", "a@xn--bcher-kva.example"),
        ("Jo\u0308rg@example.com", "j\u00f6rg@example.com"),
    ],
)
def test_normalise(value, key):
    assert normalise(value) == key


@pytest.mark.parametrize(
    "value",
    [
        "a@example.com\r\nRCPT TO:<b@example.com>",
        "a\x00@example.com",
        "webmaster",
        "a@example.com, b@example.com",
        "x" * 64 + "@" + ("d" * 60 + ".") * 5 + "com",
        b"a@example.com",
        "",
    ],
)
def test_normalise_refuses_hostile_addresses(value):
    with pytest.raises(InvalidAddress):
        normalise(value)


def test_suppress_is_idempotent():
    assert suppress(["a@example.com", "A@example.com"], reason="imported") == 1
    assert suppress(["a@example.com"], reason="unsubscribed") == 0
    assert suppress(["a@example.com"], reason="imported", mailer="news") == 1
    first = Suppression.objects.get(mailer="")
    assert first.reason == "imported"
    assert first.created_at <= timezone.now()


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (
            ("bob@example.com",),
            {"reason": "imported"},
            "suppress() takes a list of addresses, not one string: "
            "suppress(['bob@example.com'], ...).",
        ),
        (
            (["bob@example.com"],),
            {"reason": "gone"},
            "suppress(): reason must be one of 'bounced', 'unsubscribed', "
            "'imported' (got 'gone').",
        ),
        (
            (["bob@example.com"],),
            {"reason": "imported", "mailer": "m" * 101},
            "suppress(): mailer must be an outbox mailer alias of at most 100 "
            "characters, or '' for every mailer (got " + repr("m" * 101)[:60] + ").",
        ),
        (
            (["bob@example.com"],),
            {"reason": "imported", "mailer": None},
            "suppress(): mailer must be an outbox mailer alias of at most 100 "
            "characters, or '' for every mailer (got None).",
        ),
    ],
)
def test_suppress_says_what_is_wrong_with_its_arguments(args, kwargs, message):
    with pytest.raises((TypeError, ValueError)) as caught:
        suppress(*args, **kwargs)
    assert str(caught.value) == message
    assert not Suppression.objects.exists()


def test_unsuppress_then_requeue_sends_to_the_address_again(server):
    suppress(["back@example.com"], reason=SuppressionReason.UNSUBSCRIBED)
    record = send("m", ["a@example.com", "back@example.com"])
    deliver()
    record.refresh_from_db()
    assert record.status == Status.PARTIAL
    # Requeued while still listed: checked again, still suppressed.
    assert record.requeue()
    deliver()
    record.refresh_from_db()
    assert record.status == Status.PARTIAL
    assert rcpt_to(server) == ["a@example.com"]
    # Taken off the list: the requeue reaches it, and only it.
    Suppression.objects.all().delete()
    assert record.requeue()
    deliver()
    record.refresh_from_db()
    assert record.status == Status.SENT
    assert rcpt_to(server) == ["a@example.com", "back@example.com"]
    assert states(record)["back@example.com"][:2] == (RecipientStatus.SENT, 250)


def test_a_row_written_directly_is_normalised_and_matched(server):
    # As the admin, a shell or a data migration would write it.
    Suppression.objects.create(address=" Bob@Example.COM ", reason="imported")
    assert Suppression.objects.get().address == "bob@example.com"
    record = send("direct", ["BOB@example.com"])
    deliver()
    record.refresh_from_db()
    assert record.status == Status.SUPPRESSED
    assert rcpt_to(server) == []


def test_a_row_written_directly_with_a_bad_address_is_refused(server):
    with pytest.raises(
        InvalidAddress, match=r"^Invalid address 'nobody': it has no domain"
    ):
        Suppression.objects.create(address="nobody", reason="imported")
    assert not Suppression.objects.exists()
