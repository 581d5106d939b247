"""
Hostile addresses, end to end, against a real server that logs every command.

Each input is fed (a) through the API, (b) through a stored outbox row that
was tampered with and is then delivered by the worker, and (c) through
resend; with PIPELINING offered and not, and over parallel connections.
Whatever happens, the server must only ever read the commands a clean
message needs, with the recipients we meant; the message and its recipients
must end in the right state with a clear error; and the next message must
go through untouched.
"""

from __future__ import annotations

import re
from email.headerregistry import Address

import django
import pytest
from django.test import override_settings

from django_mailkit import EmailMessage, mailers, send_mail
from django_mailkit.envelope import Envelope, envelope_address
from django_mailkit.exceptions import InvalidStoredMessage
from django_mailkit.models import OutboxMessage, Recipient, RecipientStatus, Status
from django_mailkit.smtp_session import Job
from django_mailkit.worker import Worker
from tests.smtpserver import SMTPTestServer

pytestmark = pytest.mark.django_db(transaction=True)

# The worker-driven tables don't depend on Django's version: run them once.
once = pytest.mark.skipif(
    django.VERSION[:2] != (5, 2), reason="version-independent; runs on Django 5.2"
)

OK = "ok@example.com"
SENDER = "from@example.com"

# (id, the value given to the API, its form in a stored row)
HOSTILE = [
    ("crlf-rcpt", "x@example.com\r\nRCPT TO:<injected@evil.example>", None),
    ("lf-rcpt", "x@example.com\nRCPT TO:<injected@evil.example>", None),
    ("cr-rcpt", "x@example.com\rRCPT TO:<injected@evil.example>", None),
    ("crlf-data", "x@example.com\r\nDATA\r\n", None),
    ("nul", "x\x00@example.com", None),
    ("nul-domain", "x@exam\x00ple.com", None),
    ("unicode-line-break", "x@example.com\u2028RCPT TO:<injected@evil.example>", None),
    (
        "address-param-smuggling",
        Address("", "bounce", "example.com> BODY=8BITMIME"),
        "bounce@example.com> BODY=8BITMIME",
    ),
    ("string-param-smuggling", "x@example.com> SIZE=1", None),
    (
        "address-comma-domain",
        Address("", "x", "example.com, injected@evil.example"),
        "x@example.com, injected@evil.example",
    ),
    ("comma-list", "x@example.com, injected@evil.example", None),
    ("bytes", b"x@example.com", "b'x@example.com'"),
    (
        "nul-display-name",
        Address("Na\x00me", "x", "example.com"),
        "Na\x00me <x@example.com>",
    ),
    ("quoted-angle", '"x>injected"@example.com', None),
    ("angle-open", "<x@example.com", None),
    ("route", "<@evil.example:x@example.com>", None),
    ("group-of-two", "g: x@example.com, injected@evil.example;", None),
    ("space-in-domain", "x@exa mple.com", None),
    ("space-in-local-part", "x y@example.com", None),
    ("display-name", None, "Name <x@example.com>"),
    ("comment", None, "x@example.com (comment)"),
]
API_CASES = [pytest.param(v, id=i) for i, v, _ in HOSTILE if v is not None]
STORED_CASES = [
    pytest.param(stored if stored is not None else value, id=i)
    for i, value, stored in HOSTILE
]

# What a clean conversation may contain, and nothing else.
_ALLOWED = re.compile(
    rb"(?:EHLO|HELO) [!-~]+"
    # Every address here is ASCII: SMTPUTF8 is never asked for.
    rb"|MAIL FROM:<(?P<sender>[^<>\s]+)>(?: SIZE=\d+)?"
    rb'|RCPT TO:<(?P<rcpt>[^<>\s"]+|"[^"<>\\]*"@[a-z.]+)>'
    rb"|DATA|RSET|QUIT|NOOP",
    re.IGNORECASE,  # smtplib writes its own commands in lower case
)


@pytest.fixture(scope="module", params=[False, True], ids=["serial", "pipelining"])
def server(request, pki):
    server = SMTPTestServer(pki=pki, pipelining=request.param)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def seen(server):
    """The server's commands and deliveries from this test only."""
    sessions, deliveries = len(server.sessions), len(server.deliveries)

    class Seen:
        @staticmethod
        def commands():
            return [
                line
                for record in server.sessions[sessions:]
                for line in record.commands
            ]

        @staticmethod
        def deliveries():
            return server.deliveries[deliveries:]

    return Seen


def smtp_options(server, **options):
    return {"host": server.host, "port": server.port, "timeout": 5, **options}


@pytest.fixture
def mailer_settings(server):
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": smtp_options(server, max_connections=4),
            },
            "outbox": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "default"},
            },
        },
        MAILKIT={"USE_TASKS": False},
    ):
        yield


def transactions(seen):
    """The command lines that begin or belong to a mail transaction."""
    verbs = (b"MAIL", b"RCPT", b"DATA")
    return [line for line in seen.commands() if line[:4].upper() in verbs]


def assert_clean(seen, recipients):
    """Only allowed commands were read, to no one but ``recipients``."""
    for line in seen.commands():
        assert line.endswith(b"\r\n") and line.count(b"\n") == 1, line
        match = _ALLOWED.fullmatch(line[:-2])
        assert match, f"unexpected command line {line!r}"
        if match["sender"]:
            assert match["sender"] == SENDER.encode(), line
        if match["rcpt"]:
            assert match["rcpt"].decode() in recipients, line
    for delivery in seen.deliveries():
        assert set(delivery.rcpt_tos) <= set(recipients)
        assert b"injected" not in delivery.data


def assert_next_message_unaffected(seen, using="default"):
    before = len(seen.deliveries())
    assert send_mail("Next", "body", SENDER, ["next@example.com"], using=using) == 1
    if using == "outbox":
        deliver()
        assert OutboxMessage.objects.get(subject="Next").status == Status.SENT
    assert [d.rcpt_tos for d in seen.deliveries()[before:]] == [["next@example.com"]]


def deliver():
    stats = Worker(once=True, interval=0).run()
    assert stats.errors == 0
    return stats


# (a) Through the API: refused before anything reaches the server.


@pytest.mark.parametrize("value", API_CASES)
@pytest.mark.usefixtures("mailer_settings")
def test_api_recipient(seen, value):
    with pytest.raises((ValueError, TypeError)) as caught:
        send_mail("Hostile", "body", SENDER, [OK, value])
    assert "\n" not in str(caught.value).rstrip("\n")
    assert seen.commands() == []
    assert_next_message_unaffected(seen)
    assert_clean(seen, {"next@example.com"})


@pytest.mark.parametrize("value", API_CASES)
@pytest.mark.usefixtures("mailer_settings")
def test_api_sender(seen, value):
    message = EmailMessage("Hostile", "body", value, [OK])
    with pytest.raises((ValueError, TypeError)):
        message.send()
    with pytest.raises((ValueError, TypeError)):
        mailers["outbox"].send_messages([EmailMessage("Hostile", "b", value, [OK])])
    assert seen.commands() == []
    assert not OutboxMessage.objects.exists()
    assert_next_message_unaffected(seen)


@pytest.mark.usefixtures("mailer_settings")
def test_api_batch_over_parallel_connections(server, seen):
    """A bad message in a batch stops the batch before anything is sent."""
    clean = [
        EmailMessage(f"m{i}", "body", SENDER, [f"u{i}@example.com"]) for i in range(40)
    ]
    hostile = EmailMessage("bad", "body", SENDER, [HOSTILE[0][1]])
    with pytest.raises(ValueError):
        mailers.default.send_messages([*clean, hostile])
    assert seen.commands() == []
    assert mailers.default.send_messages(clean) == 40
    sessions = {d.session.number for d in seen.deliveries()}
    assert len(sessions) == (4 if server.pipelining else 1)
    assert_clean(seen, {f"u{i}@example.com" for i in range(40)})


@pytest.mark.usefixtures("mailer_settings")
def test_accepted_odd_addresses_go_out_canonical(seen):
    to = ['"john doe"@example.com', "x@example.com (comment)", "Name <y@example.com>"]
    assert send_mail("Odd", "body", SENDER, to) == 1
    (delivery,) = seen.deliveries()
    assert delivery.rcpt_tos == [
        '"john doe"@example.com',
        "x@example.com",
        "y@example.com",
    ]
    assert_clean(seen, set(delivery.rcpt_tos))


# (b) A stored row, tampered with after it was queued, delivered by the worker.


def queue(to=(OK, "placeholder@example.com")):
    assert send_mail("Stored", "body", SENDER, list(to), using="outbox") == 1
    return OutboxMessage.objects.get(subject="Stored")


def tamper_recipient(record, old, new):
    Recipient.objects.filter(message=record, address=old).update(address=new)
    record.recipients = [new if a == old else a for a in record.recipients]
    OutboxMessage.objects.filter(pk=record.pk).update(recipients=record.recipients)


@pytest.mark.parametrize("value", STORED_CASES)
@once
@pytest.mark.usefixtures("mailer_settings")
def test_stored_recipient(seen, value):
    record = queue()
    tamper_recipient(record, "placeholder@example.com", value)
    deliver()
    record.refresh_from_db()
    assert record.status == Status.PARTIAL
    bad = record.recipient_set.get(address=value)
    assert bad.status == RecipientStatus.FAILED
    assert bad.smtp_reply.startswith("Not sent: Invalid address ")
    assert record.recipient_set.get(address=OK).status == RecipientStatus.SENT
    assert value in record.last_error or repr(value) in record.last_error
    assert [d.rcpt_tos for d in seen.deliveries()] == [[OK]]
    assert_next_message_unaffected(seen, using="outbox")
    assert_clean(seen, {OK, "next@example.com"})


@pytest.mark.parametrize("value", STORED_CASES)
@once
@pytest.mark.usefixtures("mailer_settings")
def test_stored_sender(seen, value):
    record = queue()
    OutboxMessage.objects.filter(pk=record.pk).update(from_email=value)
    deliver()
    record.refresh_from_db()
    assert record.status == Status.FAILED
    assert "Invalid address" in record.last_error
    assert set(record.recipient_set.values_list("status", flat=True)) == {
        RecipientStatus.FAILED
    }
    # (The worker connects to the mailer before it looks at the message.)
    assert transactions(seen) == []
    assert_next_message_unaffected(seen, using="outbox")


# (c) Resend of a finished message whose stored envelope was tampered with.


@pytest.mark.parametrize("value", STORED_CASES)
@once
@pytest.mark.usefixtures("mailer_settings")
def test_resend(seen, value):
    record = queue()
    deliver()
    record.refresh_from_db()
    assert record.status == Status.SENT
    before = len(seen.commands())
    tamper_recipient(record, "placeholder@example.com", value)
    with pytest.raises(InvalidStoredMessage, match=rf"^Outbox message {record.pk}: "):
        record.resend()
    assert OutboxMessage.objects.count() == 1
    deliver()
    assert len(seen.commands()) == before
    OutboxMessage.objects.filter(pk=record.pk).update(from_email=value, recipients=[OK])
    with pytest.raises(InvalidStoredMessage, match="sender"):
        record.resend()
    assert OutboxMessage.objects.count() == 1
    assert_next_message_unaffected(seen, using="outbox")
    assert_clean(seen, {OK, "placeholder@example.com", "next@example.com"})


# The session itself writes nothing that envelope_address() did not make.


@pytest.mark.usefixtures("mailer_settings")
def test_session_refuses_unchecked_paths(seen):
    unchecked = Envelope(SENDER, ["x@example.com\r\nRCPT TO:<injected@x>"], False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Refusing to write"):
        Job(unchecked, b"Subject: x\r\n\r\nbody\r\n")
    with pytest.raises(TypeError, match="Refusing to write"):
        mailers.default.transmit(unchecked, b"Subject: x\r\n\r\nbody\r\n")
    checked = Envelope(envelope_address(SENDER), [envelope_address(OK)], False)
    job = Job(checked, b"Subject: x\r\n\r\nbody\r\n")
    job.envelope.recipients.append("injected@evil.example")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Refusing to write"):
        mailers.default.transmit(job.envelope, job.data)
    assert [line for line in seen.commands() if b"RCPT" in line] == []


@pytest.mark.usefixtures("mailer_settings")
def test_stored_bytes_get_crlf_line_ends_and_dot_stuffing(seen):
    data = b"Subject: Lines\nFrom: from@example.com\n\nbare LF\rbare CR\r\n.dot\n"
    envelope = Envelope(envelope_address(SENDER), [envelope_address(OK)], False)
    result = mailers.default.transmit(envelope, data)
    assert result.replies[OK].code == 250
    (delivery,) = seen.deliveries()
    # aiosmtpd un-stuffs the dot; every line end arrived as CRLF.
    assert delivery.data == (
        b"Subject: Lines\r\nFrom: from@example.com\r\n\r\nbare LF\r\nbare CR\r\n"
        b".dot\r\n"
    )
