"""
Interoperability of messages and backends across django_mailkit and Django.

Our EmailMessage goes through Django's own backends
(``django.core.mail.backends.*``), and Django's EmailMessage goes through
ours, on every supported Django version.
"""

import email
import email.policy
import io
import socket
import warnings
from email.headerregistry import Address

import django
import pytest
from aiosmtpd.controller import Controller
from django.core import mail as django_mail
from django.core.mail.backends import console as django_console
from django.core.mail.backends import dummy as django_dummy
from django.core.mail.backends import filebased as django_filebased
from django.core.mail.backends import locmem as django_locmem
from django.core.mail.backends import smtp as django_smtp
from django.test import override_settings

from django_mailkit import EmailMessage, EmailMultiAlternatives
from django_mailkit.backends import console as our_console
from django_mailkit.backends import filebased as our_filebased
from django_mailkit.backends import locmem as our_locmem
from django_mailkit.message import BadHeaderError

DJANGO_61 = django.VERSION >= (6, 1)
SEPARATOR = b"-" * 79


def parse(raw):
    return email.message_from_bytes(
        raw.replace(b"\r\n", b"\n"), policy=email.policy.default
    )


def split_stream(data):
    """Split what a console or file backend wrote into one chunk per message."""
    chunks = data.split(b"\n" + SEPARATOR + b"\n")
    assert chunks[-1] == b""
    return chunks[:-1]


def structure(part):
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.get_payload()])
    return part.get_content_type()


def our_message():
    """One of our messages using addresses, non-ASCII text and attachments."""
    message = EmailMultiAlternatives(
        subject="Grüße — interop",
        body="Plain bödy\n",
        from_email=Address("Jürgen", "juergen", "bücher.example"),
        to=["Zoë <zoe@example.com>", Address("Ann", "ann", "exämple.com")],
        cc=['"Smith, Bob" <bob@example.com>'],
        bcc=["secret@example.com"],
        reply_to=["reply@example.com"],
        headers={"X-Interop": "yes"},
    )
    message.attach_alternative("<p>HTML bödy</p>", "text/html")
    message.attach("données.bin", b"\x00\x01\xff", "application/octet-stream")
    return message


def assert_is_our_message(parsed):
    """Assert ``parsed`` is what our_message() builds, as a client sees it."""
    assert parsed["Subject"] == "Grüße — interop"
    assert [(a.display_name, a.addr_spec) for a in parsed["From"].addresses] == [
        ("Jürgen", "juergen@xn--bcher-kva.example")
    ]
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [
        ("Zoë", "zoe@example.com"),
        ("Ann", "ann@xn--exmple-cua.com"),
    ]
    assert [a.display_name for a in parsed["Cc"].addresses] == ["Smith, Bob"]
    assert parsed["Bcc"] is None
    assert parsed["X-Interop"] == "yes"
    assert parsed["Message-ID"] is not None
    assert parsed["Date"] is not None
    assert structure(parsed) == (
        "multipart/mixed",
        [
            ("multipart/alternative", ["text/plain", "text/html"]),
            "application/octet-stream",
        ],
    )
    assert parsed.get_body(("plain",)).get_content() == "Plain bödy\n"
    assert parsed.get_body(("html",)).get_content() == "<p>HTML bödy</p>\n"
    [attachment] = parsed.iter_attachments()
    assert attachment.get_filename() == "données.bin"
    assert attachment.get_content() == b"\x00\x01\xff"


def injected_message():
    return EmailMessage("Hi\nBcc: victim@example.com", "B", None, ["a@example.com"])


# --- Building Django's backends ----------------------------------------------


@pytest.mark.parametrize(
    ("module", "options"),
    [
        (django_locmem, {}),
        (django_console, {"stream": io.StringIO()}),
        (django_filebased, {"file_path": "FILE_PATH"}),
        (django_dummy, {}),
    ],
    ids=["locmem", "console", "filebased", "dummy"],
)
def test_direct_construction_of_djangos_development_backends(module, options, tmp_path):
    # On every supported version these can be built directly without a
    # deprecation warning (the suite turns any into an error anyway).
    if options.get("file_path") == "FILE_PATH":
        options = {"file_path": str(tmp_path)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = module.EmailBackend(**options)
    assert [str(w.message) for w in caught] == []
    assert backend.send_messages([our_message()]) == 1


@pytest.mark.skipif(not DJANGO_61, reason="Django 6.1 deprecates direct construction")
def test_direct_construction_of_djangos_smtp_backend_is_deprecated_on_61():
    from django.utils.deprecation import RemovedInDjango2028Warning

    # Every option is given: with MAILERS defined, 6.1 refuses to read the
    # legacy EMAIL_* settings that would fill in the others.
    options = {
        "host": "127.0.0.1",
        "port": 25,
        "username": "",
        "password": "",
        "use_tls": False,
        "use_ssl": False,
        "timeout": 10,
        "ssl_keyfile": "",
        "ssl_certfile": "",
    }
    with pytest.warns(RemovedInDjango2028Warning, match="mail.mailers"):
        backend = django_smtp.EmailBackend(**options)
    assert backend.host == "127.0.0.1"


def supported_django_backend(path, **options):
    """
    Return Django's backend ``path`` the way the running version supports.

    Django 6.1 configures backends in MAILERS and hands them out through
    ``mail.mailers`` (and deprecates building them directly, or through
    get_connection()); earlier versions use get_connection().
    """
    if DJANGO_61:
        config = {"interop": {"BACKEND": path, "OPTIONS": options}}
        with override_settings(MAILERS=config):
            return django_mail.mailers["interop"]
    return django_mail.get_connection(path, **options)


# --- Our message through Django's backends -----------------------------------


def test_djangos_locmem_backend_delivers_our_message_to_the_outbox():
    message = our_message()
    backend = django_locmem.EmailBackend()
    assert backend.send_messages([message]) == 1
    [sent] = django_mail.outbox
    # The outbox holds a copy of our message, still our class.
    assert type(sent) is EmailMultiAlternatives
    assert sent is not message
    assert sent.subject == message.subject
    assert sent.to == message.to
    assert sent.recipients() == message.recipients()
    assert sent.alternatives == message.alternatives
    assert sent.attachments == message.attachments
    assert_is_our_message(parse(sent.message().as_bytes()))


def test_djangos_locmem_backend_obtained_the_supported_way():
    backend = supported_django_backend("django.core.mail.backends.locmem.EmailBackend")
    assert isinstance(backend, django_locmem.EmailBackend)
    assert backend.send_messages([our_message(), EmailMessage("Two")]) == 2
    assert [m.subject for m in django_mail.outbox] == ["Grüße — interop", "Two"]
    if DJANGO_61:
        assert django_mail.outbox[0].sent_using == "interop"


def test_djangos_locmem_backend_rejects_our_injected_header():
    backend = django_locmem.EmailBackend()
    with pytest.raises(BadHeaderError, match="Subject"):
        backend.send_messages([injected_message()])
    assert django_mail.outbox == []


def test_djangos_console_backend_writes_our_message():
    stream = io.StringIO()
    backend = django_console.EmailBackend(stream=stream)
    assert backend.send_messages([our_message(), our_message()]) == 2
    chunks = split_stream(stream.getvalue().encode())
    assert len(chunks) == 2
    for chunk in chunks:
        assert_is_our_message(parse(chunk))
        assert b"secret@example.com" not in chunk


def test_djangos_filebased_backend_writes_our_message(tmp_path):
    backend = django_filebased.EmailBackend(file_path=str(tmp_path))
    assert backend.send_messages([our_message()]) == 1
    [written] = tmp_path.iterdir()
    [chunk] = split_stream(written.read_bytes())
    assert_is_our_message(parse(chunk))


def test_djangos_dummy_backend_accepts_our_message():
    backend = django_dummy.EmailBackend()
    assert backend.send_messages([our_message(), our_message()]) == 2


# --- Our message through Django's SMTP backend -------------------------------


class _Recorder:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted"


@pytest.fixture
def smtp_recorder():
    """A throwaway SMTP server on 127.0.0.1 that keeps what it receives."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    recorder = _Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, recorder.envelopes
    finally:
        controller.stop()


def test_djangos_smtp_backend_sends_our_message(smtp_recorder):
    port, envelopes = smtp_recorder
    if DJANGO_61:
        backend = supported_django_backend(
            "django.core.mail.backends.smtp.EmailBackend",
            host="127.0.0.1",
            port=port,
            timeout=10,
        )
    else:
        backend = django_smtp.EmailBackend(host="127.0.0.1", port=port, timeout=10)
    assert backend.send_messages([our_message()]) == 1

    [envelope] = envelopes
    assert envelope.mail_from == "juergen@xn--bcher-kva.example"
    assert envelope.rcpt_tos == [
        "zoe@example.com",
        "ann@xn--exmple-cua.com",
        "bob@example.com",
        "secret@example.com",
    ]
    data = envelope.original_content
    # SMTP wants CRLF everywhere (Django 5.2 asks for it with linesep=).
    assert data.count(b"\n") == data.count(b"\r\n")
    assert b"secret@example.com" not in data
    assert_is_our_message(parse(data))


def test_djangos_smtp_backend_rejects_our_injected_header(smtp_recorder):
    port, envelopes = smtp_recorder
    if DJANGO_61:
        backend = supported_django_backend(
            "django.core.mail.backends.smtp.EmailBackend", host="127.0.0.1", port=port
        )
    else:
        backend = django_smtp.EmailBackend(host="127.0.0.1", port=port)
    with pytest.raises(ValueError, match="Subject"):
        backend.send_messages([injected_message()])
    assert envelopes == []


# --- Django's message through our backends -----------------------------------


def djangos_message():
    message = django_mail.EmailMultiAlternatives(
        "Django's own — Grüße",
        "Django bödy\n",
        "django@example.com",
        ["to@example.com"],
        cc=["cc@example.com"],
        bcc=["hidden@example.com"],
        headers={"X-Origin": "django"},
    )
    message.attach_alternative("<p>Django bödy</p>\n", "text/html")
    message.attach("report.csv", "a,b\n1,2\n", "text/csv")
    return message


def assert_is_djangos_message(parsed):
    assert parsed["Subject"] == "Django's own — Grüße"
    assert parsed["From"] == "django@example.com"
    assert parsed["To"] == "to@example.com"
    assert parsed["Cc"] == "cc@example.com"
    assert parsed["Bcc"] is None
    assert parsed["X-Origin"] == "django"
    assert structure(parsed) == (
        "multipart/mixed",
        [("multipart/alternative", ["text/plain", "text/html"]), "text/csv"],
    )
    assert parsed.get_body(("plain",)).get_content() == "Django bödy\n"
    assert parsed.get_body(("html",)).get_content() == "<p>Django bödy</p>\n"
    [attachment] = parsed.iter_attachments()
    assert attachment.get_filename() == "report.csv"
    assert attachment.get_content() == "a,b\n1,2\n"


def test_our_locmem_backend_accepts_djangos_message():
    message = djangos_message()
    backend = our_locmem.EmailBackend()
    assert backend.send_messages([message]) == 1
    [sent] = django_mail.outbox
    assert type(sent) is django_mail.EmailMultiAlternatives
    assert sent is not message
    assert sent.recipients() == [
        "to@example.com",
        "cc@example.com",
        "hidden@example.com",
    ]
    assert sent.sent_using is None  # Built directly: no alias, as Django 6.1.
    raw = sent.message().as_bytes()
    assert_is_djangos_message(parse(raw))


def test_our_locmem_backend_rejects_djangos_injected_header():
    message = django_mail.EmailMessage(
        "Hi\nBcc: victim@example.com", "B", "a@example.com", ["b@example.com"]
    )
    with pytest.raises(ValueError):
        our_locmem.EmailBackend().send_messages([message])
    assert django_mail.outbox == []


def test_our_console_backend_writes_djangos_message():
    stream = io.StringIO()
    backend = our_console.EmailBackend(stream=stream)
    assert backend.send_messages([djangos_message()]) == 1
    [chunk] = split_stream(stream.getvalue().encode())
    assert_is_djangos_message(parse(chunk))
    assert b"hidden@example.com" not in chunk


def test_our_filebased_backend_writes_djangos_message(tmp_path):
    backend = our_filebased.EmailBackend(file_path=tmp_path)
    assert backend.send_messages([djangos_message()]) == 1
    [written] = tmp_path.iterdir()
    [chunk] = split_stream(written.read_bytes())
    assert_is_djangos_message(parse(chunk))
