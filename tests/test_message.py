"""
Tests for the message layer: django_mailkit.EmailMessage and friends.

Most tests build a message, serialize it, and read the bytes back with
Python's own parser (``email.policy.default``), so they check what a mail
client would see rather than how the message object is put together.
"""

import email
import email.message
import email.policy
import email.utils
import re
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import MIMEPart
from email.mime.image import MIMEImage
from email.mime.text import MIMEText
from zoneinfo import ZoneInfo

import pytest
from django.core import mail as django_mail
from django.test import override_settings
from django.utils import timezone, translation
from django.utils.translation import gettext_lazy
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import django_mailkit
from django_mailkit import (
    DEFAULT_ATTACHMENT_MIME_TYPE,
    DNS_NAME,
    EmailAlternative,
    EmailAttachment,
    EmailMessage,
    EmailMultiAlternatives,
    make_msgid,
)
from django_mailkit.deprecation import MailkitDeprecationWarning
from django_mailkit.message import BadHeaderError

# A policy that forbids 8-bit data anywhere in the output.
SEVEN_BIT = email.policy.default.clone(cte_type="7bit")
# RFC 5322 2.1.1: a line must not exceed 998 octets, excluding CRLF.
MAX_LINE_OCTETS = 998

# Every character that str.splitlines() treats as a line boundary, worked out
# from Python rather than listed by hand (plus the CRLF pair).
LINE_BREAKS = [
    char for char in map(chr, range(0x3000)) if len(f"a{char}b".splitlines()) == 2
] + ["\r\n"]

# Text in several scripts, including astral-plane emoji and combining marks.
SCRIPTS = {
    "latin": "Ünïcödé façade, naïve café",
    "greek": "Καλημέρα κόσμε",
    "cyrillic": "Съешь же ещё этих мягких французских булок",
    "cjk": "日本語のテキストと中文文本",
    "arabic": "مرحبا بالعالم",
    "devanagari": "नमस्ते दुनिया",
    "emoji": "📧 ✉️ 👩🏽‍💻 🎉",
    "combining": "e\u0301 a\u0308 n\u0303",
}


def parse(raw):
    """Parse serialized bytes back the way a modern client would."""
    # Mail is stored with local line endings once delivered, and Python's
    # parser keeps a CR that is part of a CRLF inside decoded bodies.
    return email.message_from_bytes(
        raw.replace(b"\r\n", b"\n"), policy=email.policy.default
    )


def decoded_text(part):
    """
    Return a text part's decoded content with LF line endings.

    Under the SMTP policy a base64 or quoted-printable text part carries
    CRLF line breaks inside its encoding (the canonical form of text, RFC
    2046 4.1.1), and decoding keeps them.
    """
    return part.get_content().replace("\r\n", "\n")


def roundtrip(message, policy=email.policy.default):
    """Return (raw bytes, parsed message) for ``message`` under ``policy``."""
    raw = message.message(policy=policy).as_bytes()
    return raw, parse(raw)


def structure(part):
    """Return the content-type tree of a parsed message as nested tuples."""
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.get_payload()])
    return part.get_content_type()


def mailboxes(parsed, name):
    """Return ``[(display_name, addr_spec), ...]`` for the header ``name``."""
    return [(a.display_name, a.addr_spec) for a in parsed[name].addresses]


def squash(text):
    """
    Return ``text`` without whitespace.

    For display names long enough to be folded into several RFC 2047
    encoded-words, Python's email package gets the whitespace at the
    boundaries wrong in both directions: before CPython gh-128110 the parser
    inserts a space between adjacent encoded-words, and the folder may drop a
    space that falls between two encoded-words. Everything else must survive.
    """
    return "".join(text.split())


def header_lines(raw):
    """Return the header lines of every MIME part in ``raw``."""
    lines = []
    for part in parse(raw).walk():
        lines.extend(f"{name}: {value}" for name, value in part.raw_items())
    return lines


def assert_wire_safe(raw):
    """Assert every line fits RFC 5322 and every header is 7-bit."""
    for line in raw.splitlines():
        assert len(line) <= MAX_LINE_OCTETS, line[:80]
    for line in header_lines(raw):
        assert line.isascii(), line


def attachment_parts(parsed):
    return list(parsed.iter_attachments())


# --- Public API ---------------------------------------------------------------


def test_public_names_are_exported():
    for name in (
        "EmailMessage",
        "EmailMultiAlternatives",
        "EmailAttachment",
        "EmailAlternative",
        "make_msgid",
        "DEFAULT_ATTACHMENT_MIME_TYPE",
        "DNS_NAME",
    ):
        assert name in django_mailkit.__all__
        assert getattr(django_mailkit, name) is getattr(django_mailkit.message, name)
    with pytest.warns(MailkitDeprecationWarning, match="BadHeaderError"):
        assert django_mailkit.BadHeaderError is BadHeaderError


def test_default_attachment_mime_type():
    assert DEFAULT_ATTACHMENT_MIME_TYPE == "application/octet-stream"


def test_email_attachment_is_a_named_tuple():
    attachment = EmailAttachment("a.txt", "content", "text/plain")
    assert attachment == ("a.txt", "content", "text/plain")
    assert attachment._fields == ("filename", "content", "mimetype")
    filename, content, mimetype = attachment
    assert (filename, content, mimetype) == ("a.txt", "content", "text/plain")


def test_email_alternative_is_a_named_tuple():
    alternative = EmailAlternative("<p>Hi</p>", "text/html")
    assert alternative == ("<p>Hi</p>", "text/html")
    assert alternative._fields == ("content", "mimetype")
    assert alternative.content == "<p>Hi</p>"
    assert alternative.mimetype == "text/html"


def test_make_msgid():
    first = make_msgid(domain="mail.example.com")
    second = make_msgid(domain="mail.example.com")
    assert re.fullmatch(r"<[^<>@\s]+@mail\.example\.com>", first)
    assert first != second
    assert "invoice" in make_msgid(idstring="invoice", domain="example.com")


def test_dns_name_is_a_cached_host_name():
    name = str(DNS_NAME)
    assert name
    assert name.isascii()
    assert " " not in name
    assert str(DNS_NAME) == name


def test_bad_header_error_is_a_value_error():
    assert issubclass(BadHeaderError, ValueError)
    message = EmailMessage("Hi\nBcc: evil@example.com", "", None, ["a@example.com"])
    with pytest.raises(BadHeaderError):
        message.message()
    # Code written for Django 6.1 catches ValueError.
    with pytest.raises(ValueError):
        message.message()


# --- Constructor --------------------------------------------------------------


def test_first_four_arguments_are_positional():
    message = EmailMessage("Subject", "Body", "from@example.com", ["to@example.com"])
    assert message.subject == "Subject"
    assert message.body == "Body"
    assert message.from_email == "from@example.com"
    assert message.to == ["to@example.com"]
    assert message.cc == message.bcc == message.reply_to == []
    assert message.attachments == []
    assert message.extra_headers == {}


def test_all_arguments_by_keyword():
    message = EmailMessage(
        subject="Subject",
        body="Body",
        from_email="from@example.com",
        to=["to@example.com"],
        cc=["cc@example.com"],
        bcc=["bcc@example.com"],
        reply_to=["reply@example.com"],
        attachments=[("a.txt", "text", "text/plain")],
        headers={"X-Custom": "yes"},
    )
    assert message.cc == ["cc@example.com"]
    assert message.bcc == ["bcc@example.com"]
    assert message.reply_to == ["reply@example.com"]
    assert message.attachments == [EmailAttachment("a.txt", "text", "text/plain")]
    assert message.extra_headers == {"X-Custom": "yes"}


def test_all_arguments_are_optional():
    message = EmailMessage()
    assert message.subject == ""
    assert message.body == ""
    assert message.to == []
    assert message.recipients() == []


def test_legacy_positional_arguments_warn_and_still_work():
    with pytest.warns(MailkitDeprecationWarning, match="positional") as record:
        message = EmailMessage(
            "Subject",
            "Body",
            "from@example.com",
            ["to@example.com"],
            ["bcc@example.com"],  # bcc
            None,  # connection
            [("a.txt", "text", "text/plain")],  # attachments
            {"X-Custom": "yes"},  # headers
            ["cc@example.com"],  # cc
            ["reply@example.com"],  # reply_to
        )
    text = str(record[0].message)
    for name in ("bcc", "connection", "attachments", "headers", "cc", "reply_to"):
        assert repr(name) in text
    # The warning points at the caller, not at django_mailkit.
    assert record[0].filename == __file__
    assert message.bcc == ["bcc@example.com"]
    assert message.attachments == [EmailAttachment("a.txt", "text", "text/plain")]
    assert message.extra_headers == {"X-Custom": "yes"}
    assert message.cc == ["cc@example.com"]
    assert message.reply_to == ["reply@example.com"]


def test_legacy_positional_arguments_warn_for_only_the_ones_given():
    with pytest.warns(MailkitDeprecationWarning) as record:
        message = EmailMessage("S", "B", None, ["to@example.com"], ["bcc@example.com"])
    assert "'bcc'" in str(record[0].message)
    assert "'cc'" not in str(record[0].message)
    assert message.bcc == ["bcc@example.com"]


def test_legacy_positional_alternatives():
    with pytest.warns(MailkitDeprecationWarning, match="alternatives"):
        message = EmailMultiAlternatives(
            "S",
            "B",
            None,
            ["to@example.com"],
            None,
            None,
            None,
            None,
            [("<p>B</p>", "text/html")],
        )
    assert message.alternatives == [EmailAlternative("<p>B</p>", "text/html")]


def test_too_many_positional_arguments():
    with pytest.raises(
        TypeError,
        match=r"^EmailMessage\(\) takes at most 11 positional argument\(s\) "
        r"\(including 6 deprecated\) but 12 were given\.$",
    ):
        EmailMessage("S", "B", None, [], None, None, None, None, None, None, None)


def test_positional_and_keyword_for_the_same_argument():
    with pytest.raises(TypeError, match="bcc"):
        EmailMessage("S", "B", None, [], ["a@example.com"], bcc=["b@example.com"])


def test_connection_argument_is_deprecated():
    backend = object()
    with pytest.warns(MailkitDeprecationWarning, match="connection"):
        EmailMessage("S", "B", None, ["to@example.com"], connection=backend)


@override_settings(DEFAULT_FROM_EMAIL="Site Robot <robot@example.org>")
def test_from_email_defaults_to_default_from_email():
    message = EmailMessage("S", "B", None, ["to@example.com"])
    assert message.from_email == "Site Robot <robot@example.org>"
    _, parsed = roundtrip(message)
    assert mailboxes(parsed, "From") == [("Site Robot", "robot@example.org")]


@pytest.mark.parametrize("argument", ["to", "cc", "bcc", "reply_to"])
def test_address_list_given_as_a_string(argument):
    with pytest.raises(TypeError, match=f'"{argument}" argument must be a list'):
        EmailMessage(**{argument: "someone@example.com"})


@pytest.mark.parametrize("argument", ["to", "cc", "bcc", "reply_to"])
def test_address_list_given_as_a_tuple(argument):
    message = EmailMessage(**{argument: ("a@example.com", "b@example.com")})
    assert getattr(message, argument) == ["a@example.com", "b@example.com"]


def test_encoding_defaults_to_default_charset():
    message = EmailMessage("S", "Grüße", None, ["to@example.com"])
    _, parsed = roundtrip(message)
    assert parsed.get_content_charset() == "utf-8"
    assert parsed.get_content() == "Grüße\n"


@override_settings(DEFAULT_CHARSET="iso-8859-1")
def test_encoding_follows_default_charset_setting():
    message = EmailMessage("S", "Grüße", None, ["to@example.com"])
    raw, parsed = roundtrip(message)
    assert parsed.get_content_charset() == "iso-8859-1"
    assert "Grüße".encode("iso-8859-1") in raw
    assert "Grüße".encode() not in raw
    assert parsed.get_content() == "Grüße\n"


def test_encoding_attribute():
    message = EmailMessage("S", "Grüße", None, ["to@example.com"])
    message.encoding = "iso-8859-1"
    message.attach("note.txt", "Maß", "text/plain")
    raw, parsed = roundtrip(message)
    assert "Grüße".encode("iso-8859-1") in raw
    body, attachment = parsed.get_payload()
    assert body.get_content_charset() == "iso-8859-1"
    assert body.get_content() == "Grüße\n"
    assert attachment.get_content_charset() == "iso-8859-1"
    assert attachment.get_content() == "Maß\n"


def test_content_subtype():
    message = EmailMessage("S", "<p>Hello</p>", None, ["to@example.com"])
    message.content_subtype = "html"
    _, parsed = roundtrip(message)
    assert parsed.get_content_type() == "text/html"
    assert parsed.get_content() == "<p>Hello</p>\n"


def test_content_subtype_on_a_subclass():
    class HTMLMessage(EmailMessage):
        content_subtype = "html"

    _, parsed = roundtrip(HTMLMessage("S", "<p>Hello</p>", None, ["a@example.com"]))
    assert parsed.get_content_type() == "text/html"


def test_mixed_subtype():
    message = EmailMessage("S", "See the logo.", None, ["to@example.com"])
    message.mixed_subtype = "related"
    message.attach("logo.png", b"\x89PNG\r\n", "image/png")
    _, parsed = roundtrip(message)
    assert structure(parsed) == ("multipart/related", ["text/plain", "image/png"])


def test_extra_headers_attribute():
    message = EmailMessage("S", "B", None, ["to@example.com"], headers={"X-A": "1"})
    assert message.extra_headers == {"X-A": "1"}
    message.extra_headers["X-B"] = "2"
    _, parsed = roundtrip(message)
    assert parsed["X-A"] == "1"
    assert parsed["X-B"] == "2"


def test_headers_argument_is_copied():
    headers = {"X-A": "1"}
    message = EmailMessage("S", "B", None, ["to@example.com"], headers=headers)
    headers["X-B"] = "2"
    assert "X-B" not in roundtrip(message)[1]


# --- message() and policies ---------------------------------------------------


def test_message_returns_a_python_email_message():
    msg = EmailMessage("S", "B", None, ["to@example.com"]).message()
    assert isinstance(msg, email.message.EmailMessage)
    assert msg.policy == email.policy.default
    assert msg["Subject"] == "S"
    assert msg.get_content() == "B\n"


def test_message_takes_the_policy_as_a_keyword_only_argument():
    message = EmailMessage("S", "B", None, ["to@example.com"])
    with pytest.raises(TypeError):
        message.message(email.policy.SMTP)


def test_default_policy_uses_lf_line_endings():
    raw = EmailMessage("S", "one\ntwo\n", None, ["a@example.com"]).message()
    data = raw.as_bytes()
    assert b"\r" not in data
    assert data.count(b"\n") > 5


def test_smtp_policy_uses_crlf_line_endings():
    message = EmailMessage("S", "one\ntwo\n", None, ["to@example.com"])
    message.attach("a.txt", "three\nfour\n", "text/plain")
    msg = message.message(policy=email.policy.SMTP)
    assert msg.policy == email.policy.SMTP
    data = msg.as_bytes()
    assert b"\r\n" in data
    # Every line feed is part of a CRLF pair.
    assert data.count(b"\n") == data.count(b"\r\n")
    assert parse(data).get_body(("plain",)).get_content() == "one\ntwo\n"


def test_smtputf8_policy_keeps_unicode_headers():
    message = EmailMessage(
        "Grüße",
        "B",
        "Jürgen <jurgen@bücher.example>",
        [Address("Zoë", "zoe", "exämple.com")],
    )
    raw = message.message(policy=email.policy.SMTPUTF8).as_bytes()
    head = raw.split(b"\n\n", 1)[0].decode()
    assert "Subject: Grüße" in head
    assert "From: Jürgen <jurgen@bücher.example>" in head
    assert "To: Zoë <zoe@exämple.com>" in head
    assert "xn--" not in head
    assert "=?utf-8?" not in head


@pytest.mark.parametrize("policy", [email.policy.default, email.policy.SMTP])
def test_ascii_policies_punycode_domains_and_encode_names(policy):
    message = EmailMessage(
        "Grüße",
        "B",
        "Jürgen <jurgen@bücher.example>",
        [Address("Zoë", "zoe", "exämple.com")],
        cc=["cc@münchen.example"],
        reply_to=[Address(addr_spec="reply@ñandú.example")],
    )
    raw = message.message(policy=policy).as_bytes()
    assert_wire_safe(raw)
    parsed = parse(raw)
    assert mailboxes(parsed, "From") == [("Jürgen", "jurgen@xn--bcher-kva.example")]
    assert mailboxes(parsed, "To") == [("Zoë", "zoe@xn--exmple-cua.com")]
    assert mailboxes(parsed, "Cc") == [("", "cc@xn--mnchen-3ya.example")]
    assert mailboxes(parsed, "Reply-To") == [("", "reply@xn--and-6ma2c.example")]
    assert parsed["Subject"] == "Grüße"
    # The envelope still has the addresses as given.
    assert message.recipients() == [message.to[0], "cc@münchen.example"]


# --- Date and Message-ID ------------------------------------------------------


def test_date_is_added_in_utc():
    before = datetime.now(UTC).replace(microsecond=0)
    _, parsed = roundtrip(EmailMessage("S", "B", None, ["to@example.com"]))
    after = datetime.now(UTC)
    date = parsed["Date"].datetime
    assert date.utcoffset() == timedelta(0)
    assert before <= date <= after


@override_settings(EMAIL_USE_LOCALTIME=True, TIME_ZONE="Asia/Kathmandu")
def test_email_use_localtime_uses_the_time_zone_setting():
    before = datetime.now(UTC).replace(microsecond=0)
    _, parsed = roundtrip(EmailMessage("S", "B", None, ["to@example.com"]))
    date = parsed["Date"].datetime
    assert date.utcoffset() == timedelta(hours=5, minutes=45)
    assert before <= date <= datetime.now(UTC)


@override_settings(EMAIL_USE_LOCALTIME=True, TIME_ZONE="Asia/Kathmandu")
def test_email_use_localtime_uses_the_current_time_zone():
    with timezone.override(ZoneInfo("America/Caracas")):
        _, parsed = roundtrip(EmailMessage("S", "B", None, ["to@example.com"]))
    assert parsed["Date"].datetime.utcoffset() == timedelta(hours=-4)


@override_settings(EMAIL_USE_LOCALTIME=False, TIME_ZONE="Asia/Kathmandu")
def test_without_email_use_localtime_the_time_zone_is_ignored():
    _, parsed = roundtrip(EmailMessage("S", "B", None, ["to@example.com"]))
    assert parsed["Date"].datetime.utcoffset() == timedelta(0)


def test_message_id_uses_the_dns_name():
    _, parsed = roundtrip(EmailMessage("S", "B", None, ["to@example.com"]))
    assert re.fullmatch(
        rf"<[^<>@\s]+@{re.escape(str(DNS_NAME))}>", parsed["Message-ID"]
    )


def test_message_id_follows_pytest_djangos_dns_patch(django_mail_patch_dns):
    _, parsed = roundtrip(EmailMessage("S", "B", None, ["to@example.com"]))
    assert parsed["Message-ID"].endswith("@fake-tests.example.com>")


def test_message_id_is_new_each_time():
    message = EmailMessage("S", "B", None, ["to@example.com"])
    assert message.message()["Message-ID"] != message.message()["Message-ID"]


@pytest.mark.parametrize("name", ["Date", "date", "DATE"])
def test_date_from_headers_is_kept(name):
    value = "Fri, 09 Nov 2001 01:08:47 -0000"
    message = EmailMessage("S", "B", None, ["a@example.com"], headers={name: value})
    _, parsed = roundtrip(message)
    assert parsed.get_all("Date") == [value]


def test_date_from_headers_as_a_datetime():
    when = datetime(2001, 11, 9, 1, 8, 47, tzinfo=ZoneInfo("Europe/Paris"))
    message = EmailMessage("S", "B", None, ["a@example.com"], headers={"Date": when})
    _, parsed = roundtrip(message)
    assert parsed["Date"].datetime == when
    assert len(parsed.get_all("Date")) == 1


@pytest.mark.parametrize("name", ["Message-ID", "message-id", "Message-Id"])
def test_message_id_from_headers_is_kept(name):
    value = "<custom.123@example.com>"
    message = EmailMessage("S", "B", None, ["a@example.com"], headers={name: value})
    _, parsed = roundtrip(message)
    assert parsed.get_all("Message-ID") == [value]


# --- Header overrides ---------------------------------------------------------


@pytest.mark.parametrize("header", ["To", "Cc", "Reply-To", "From"])
@pytest.mark.parametrize("spelling", [str, str.lower, str.upper])
def test_address_header_override_changes_display_only(header, spelling):
    message = EmailMessage(
        "S",
        "B",
        "from@example.com",
        ["to@example.com"],
        cc=["cc@example.com"],
        bcc=["bcc@example.com"],
        reply_to=["reply@example.com"],
        headers={spelling(header): "Shown <shown@example.com>"},
    )
    _, parsed = roundtrip(message)
    assert len(parsed.get_all(header)) == 1
    assert mailboxes(parsed, header) == [("Shown", "shown@example.com")]
    for other in {"To", "Cc", "Reply-To", "From"} - {header}:
        assert "shown" not in str(parsed[other])
    # Neither the envelope nor the attributes change.
    assert message.recipients() == [
        "to@example.com",
        "cc@example.com",
        "bcc@example.com",
    ]
    assert message.from_email == "from@example.com"
    assert message.reply_to == ["reply@example.com"]


def test_to_header_override_without_to_argument():
    message = EmailMessage(
        "S", "B", None, bcc=["hidden@example.com"], headers={"To": "list@example.com"}
    )
    _, parsed = roundtrip(message)
    assert mailboxes(parsed, "To") == [("", "list@example.com")]
    assert message.recipients() == ["hidden@example.com"]


def test_address_header_override_may_list_several_addresses():
    message = EmailMessage(
        "S",
        "B",
        None,
        ["to@example.com"],
        headers={
            "To": 'a@example.com, "Doe, Jane" <jane@example.com>',
            "Reply-To": "Team: x@example.com, y@bücher.example;",
        },
    )
    _, parsed = roundtrip(message)
    assert mailboxes(parsed, "To") == [
        ("", "a@example.com"),
        ("Doe, Jane", "jane@example.com"),
    ]
    assert parsed["Reply-To"].groups[0].display_name == "Team"
    assert [a.addr_spec for a in parsed["Reply-To"].addresses] == [
        "x@example.com",
        "y@xn--bcher-kva.example",
    ]


def test_undisclosed_recipients_group_in_headers():
    message = EmailMessage(
        "S",
        "B",
        None,
        bcc=["hidden@example.com"],
        headers={"To": "undisclosed-recipients:;"},
    )
    raw, parsed = roundtrip(message)
    assert parsed["To"].groups[0].display_name == "undisclosed-recipients"
    assert parsed["To"].addresses == ()
    assert b"hidden@example.com" not in raw


def test_address_header_override_with_address_objects():
    message = EmailMessage(
        "S",
        "B",
        None,
        ["to@example.com"],
        headers={
            "From": Address("Ünïcode Sender", "sender", "exämple.com"),
            "Cc": [Address("A", addr_spec="a@example.com"), "B <b@example.com>"],
        },
    )
    _, parsed = roundtrip(message)
    assert mailboxes(parsed, "From") == [
        ("Ünïcode Sender", "sender@xn--exmple-cua.com")
    ]
    assert mailboxes(parsed, "Cc") == [("A", "a@example.com"), ("B", "b@example.com")]


@pytest.mark.parametrize("name", ["Bcc", "bcc", "BCC"])
def test_bcc_in_headers_is_rejected(name):
    message = EmailMessage(
        "S", "B", None, ["to@example.com"], headers={name: "b@example.com"}
    )
    with pytest.raises(ValueError, match="Bcc"):
        message.message()


def test_bcc_never_appears_in_the_output():
    message = EmailMultiAlternatives(
        "S",
        "B",
        None,
        ["to@example.com"],
        cc=["cc@example.com"],
        bcc=["secret@example.com", Address("Hidden", "hidden", "example.com")],
    )
    message.attach_alternative("<p>B</p>", "text/html")
    message.attach("a.txt", "text", "text/plain")
    for policy in (email.policy.default, email.policy.SMTP, email.policy.SMTPUTF8):
        raw = message.message(policy=policy).as_bytes()
        assert b"secret@example.com" not in raw
        assert b"hidden@example.com" not in raw
        assert b"Hidden" not in raw
        assert parse(raw)["Bcc"] is None
    assert message.recipients()[-2:] == message.bcc


@pytest.mark.parametrize("name", ["Subject", "subject", "SUBJECT"])
def test_extra_header_replaces_generated_subject(name):
    message = EmailMessage("Generated", "B", None, ["a@example.com"])
    message.extra_headers[name] = "Chosen"
    _, parsed = roundtrip(message)
    assert parsed.get_all("Subject") == ["Chosen"]


@pytest.mark.parametrize(
    "name",
    [
        "Content-Type",
        "content-type",
        "Content-Transfer-Encoding",
        "MIME-Version",
        "mime-version",
    ],
)
def test_structural_headers_cannot_be_set(name):
    message = EmailMessage("S", "B", None, ["a@example.com"], headers={name: "x"})
    with pytest.raises(ValueError, match=re.escape(name)):
        message.message()


def test_other_extra_headers_are_added():
    message = EmailMessage(
        "S",
        "B",
        None,
        ["a@example.com"],
        headers={
            "List-Unsubscribe": "<mailto:unsub@example.com>",
            "X-Priority": 1,
            "X-Label": "Grüße",
        },
    )
    raw, parsed = roundtrip(message)
    assert parsed["List-Unsubscribe"] == "<mailto:unsub@example.com>"
    assert parsed["X-Priority"] == "1"
    assert parsed["X-Label"] == "Grüße"
    assert_wire_safe(raw)


# --- recipients() -------------------------------------------------------------


def test_recipients_are_to_then_cc_then_bcc():
    message = EmailMessage(
        "S",
        "B",
        "from@example.com",
        ["to1@example.com", "to2@example.com"],
        cc=["cc@example.com"],
        bcc=["bcc1@example.com", "bcc2@example.com"],
        reply_to=["reply@example.com"],
    )
    assert message.recipients() == [
        "to1@example.com",
        "to2@example.com",
        "cc@example.com",
        "bcc1@example.com",
        "bcc2@example.com",
    ]


def test_recipients_skip_empty_entries():
    message = EmailMessage(
        "S",
        "B",
        None,
        ["to@example.com", ""],
        cc=["", "cc@example.com"],
        bcc=[None, "bcc@example.com"],
    )
    assert message.recipients() == [
        "to@example.com",
        "cc@example.com",
        "bcc@example.com",
    ]


def test_empty_entries_are_left_out_of_the_headers():
    message = EmailMessage(
        "S",
        "B",
        None,
        ["to@example.com", ""],
        cc=["", "cc@example.com"],
        reply_to=["", "reply@example.com"],
    )
    _, parsed = roundtrip(message)
    assert mailboxes(parsed, "To") == [("", "to@example.com")]
    assert mailboxes(parsed, "Cc") == [("", "cc@example.com")]
    assert mailboxes(parsed, "Reply-To") == [("", "reply@example.com")]


def test_recipients_follow_attribute_changes():
    message = EmailMessage("S", "B", None, ["to@example.com"])
    message.bcc.append("late@example.com")
    message.to = ["other@example.com"]
    assert message.recipients() == ["other@example.com", "late@example.com"]


def test_recipients_keep_address_objects():
    to = Address("Zoë", "zoe", "example.com")
    bcc = Address("Hidden", "hidden", "exämple.com")
    message = EmailMessage("S", "B", None, [to], bcc=[bcc])
    assert message.recipients() == [to, bcc]


# --- Attachments --------------------------------------------------------------


def test_attach_filename_content_mimetype():
    message = EmailMessage("S", "Body", None, ["to@example.com"])
    message.attach("design.png", b"\x89PNG\r\n\x1a\n\x00", "image/png")
    assert message.attachments == [
        EmailAttachment("design.png", b"\x89PNG\r\n\x1a\n\x00", "image/png")
    ]
    assert isinstance(message.attachments[0], EmailAttachment)
    _, parsed = roundtrip(message)
    assert structure(parsed) == ("multipart/mixed", ["text/plain", "image/png"])
    [part] = attachment_parts(parsed)
    assert part.get_filename() == "design.png"
    assert part.get_content_disposition() == "attachment"
    assert part.get_content() == b"\x89PNG\r\n\x1a\n\x00"
    assert parsed.get_body(("plain",)).get_content() == "Body\n"


def test_attach_text_string():
    message = EmailMessage("S", "Body", None, ["to@example.com"])
    message.attach("notes.txt", "line one\nline two\n", "text/plain")
    [part] = attachment_parts(roundtrip(message)[1])
    assert part.get_content_type() == "text/plain"
    assert part.get_content() == "line one\nline two\n"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "application/pdf"),
        ("photo.jpg", "image/jpeg"),
        ("data.csv", "text/csv"),
        ("page.html", "text/html"),
        ("archive.unknown-extension", DEFAULT_ATTACHMENT_MIME_TYPE),
        ("no-extension", DEFAULT_ATTACHMENT_MIME_TYPE),
        (None, DEFAULT_ATTACHMENT_MIME_TYPE),
    ],
)
def test_attach_guesses_the_mimetype(filename, expected):
    message = EmailMessage("S", "B", None, ["to@example.com"])
    message.attach(filename, b"data")
    assert message.attachments[0].mimetype == expected
    [part] = attachment_parts(roundtrip(message)[1])
    assert part.get_content_type() == expected
    assert part.get_filename() == filename


def test_text_bytes_are_decoded_as_utf8():
    message = EmailMessage("S", "B", None, ["to@example.com"])
    message.attach("greeting.txt", "Grüße 👋".encode(), "text/plain")
    assert message.attachments[0] == ("greeting.txt", "Grüße 👋", "text/plain")
    [part] = attachment_parts(roundtrip(message)[1])
    assert part.get_content_type() == "text/plain"
    assert part.get_content() == "Grüße 👋\n"


def test_guessed_text_mimetype_also_decodes_bytes():
    message = EmailMessage("S", "B", None, ["to@example.com"])
    message.attach("table.csv", "a,b\nä,ö\n".encode())
    assert message.attachments[0] == ("table.csv", "a,b\nä,ö\n", "text/csv")


def test_undecodable_text_bytes_fall_back_to_octet_stream():
    data = b"\xff\xfe not utf-8 \x80"
    message = EmailMessage("S", "B", None, ["to@example.com"])
    message.attach("binary.txt", data, "text/plain")
    assert message.attachments[0] == ("binary.txt", data, DEFAULT_ATTACHMENT_MIME_TYPE)
    [part] = attachment_parts(roundtrip(message)[1])
    assert part.get_content_type() == DEFAULT_ATTACHMENT_MIME_TYPE
    assert part.get_content() == data
    assert part.get_filename() == "binary.txt"


def test_attachments_appended_directly_are_handled_like_attach():
    message = EmailMessage("S", "B", None, ["to@example.com"])
    message.attachments.append(("ok.txt", "é".encode(), "text/plain"))
    message.attachments.append(("bad.txt", b"\xff", "text/plain"))
    ok, bad = attachment_parts(roundtrip(message)[1])
    assert (ok.get_content_type(), ok.get_content()) == ("text/plain", "é\n")
    assert (bad.get_content_type(), bad.get_content()) == (
        DEFAULT_ATTACHMENT_MIME_TYPE,
        b"\xff",
    )


def test_attachments_argument_accepts_every_form():
    inline = MIMEPart()
    inline.set_content(b"GIF89a", maintype="image", subtype="gif", filename="x.gif")
    message = EmailMessage(
        "S",
        "B",
        None,
        ["to@example.com"],
        attachments=[
            EmailAttachment("a.txt", "named tuple", "text/plain"),
            ("b.csv", "plain,tuple\n", "text/csv"),
            ["c.bin", b"\x00\x01", "application/octet-stream"],
            inline,
        ],
    )
    assert message.attachments[:3] == [
        ("a.txt", "named tuple", "text/plain"),
        ("b.csv", "plain,tuple\n", "text/csv"),
        ("c.bin", b"\x00\x01", "application/octet-stream"),
    ]
    assert message.attachments[3] is inline
    parts = attachment_parts(roundtrip(message)[1])
    assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
        ("a.txt", "text/plain"),
        ("b.csv", "text/csv"),
        ("c.bin", "application/octet-stream"),
        ("x.gif", "image/gif"),
    ]
    assert parts[0].get_content() == "named tuple\n"
    assert parts[2].get_content() == b"\x00\x01"
    assert parts[3].get_content() == b"GIF89a"


def test_attach_mimepart_inline_image_with_content_id():
    cid = email.utils.make_msgid(domain="example.com")
    image = MIMEPart()
    image.set_content(
        b"\x89PNG fake image",
        maintype="image",
        subtype="png",
        disposition="inline",
        cid=cid,
    )
    message = EmailMultiAlternatives("S", "Text", None, ["to@example.com"])
    message.attach_alternative(f'<img src="cid:{cid[1:-1]}">', "text/html")
    message.attach(image)
    message.mixed_subtype = "related"
    assert message.attachments == [image]
    _, parsed = roundtrip(message)
    assert structure(parsed) == (
        "multipart/related",
        [("multipart/alternative", ["text/plain", "text/html"]), "image/png"],
    )
    part = parsed.get_payload()[1]
    assert part["Content-ID"] == cid
    assert part.get_content_disposition() == "inline"
    assert part.get_content() == b"\x89PNG fake image"
    html = parsed.get_body(("html",)).get_content()
    assert f"cid:{cid[1:-1]}" in html


def test_attach_mimepart_rejects_content_and_mimetype():
    part = MIMEPart()
    part.set_content("x")
    message = EmailMessage()
    with pytest.raises(ValueError, match="content and mimetype"):
        message.attach(part, "content")
    with pytest.raises(ValueError, match="content and mimetype"):
        message.attach(part, mimetype="text/plain")
    assert message.attachments == []


def test_attach_without_content():
    message = EmailMessage()
    with pytest.raises(ValueError, match="content"):
        message.attach("empty.txt")
    with pytest.raises(ValueError, match="content"):
        message.attach("empty.txt", None, "text/plain")
    assert message.attachments == []


def test_attach_empty_content_is_allowed():
    message = EmailMessage("S", "B", None, ["a@example.com"])
    message.attach("empty.bin", b"", "application/octet-stream")
    [part] = attachment_parts(roundtrip(message)[1])
    assert part.get_content() == b""


def test_attach_invalid_mimetype():
    with pytest.raises(ValueError, match="MIME type"):
        EmailMessage().attach("a.txt", "x", "text")


def test_legacy_mimebase_attachment_warns():
    message = EmailMessage("S", "B", None, ["to@example.com"])
    with pytest.warns(MailkitDeprecationWarning, match="MIMEPart"):
        message.attach(MIMEText("legacy text"))
    with pytest.warns(MailkitDeprecationWarning, match="MIMEBase"):
        message.attach(MIMEImage(b"GIF89a", "gif"))
    parts = parse(message.message().as_bytes()).get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "text/plain",
        "image/gif",
    ]
    assert parts[1].get_content() == "legacy text"
    assert parts[2].get_content() == b"GIF89a"


def test_legacy_mimebase_in_attachments_argument_warns():
    with pytest.warns(MailkitDeprecationWarning, match="MIMEBase"):
        message = EmailMessage(
            "S", "B", None, ["a@example.com"], attachments=[MIMEText("legacy")]
        )
    parts = roundtrip(message)[1].get_payload()
    assert [p.get_content() for p in parts] == ["B\n", "legacy"]


def test_attach_file(tmp_path):
    path = tmp_path / "résumé.pdf"
    path.write_bytes(b"%PDF-1.7 binary \x00\xff")
    message = EmailMessage("S", "B", None, ["to@example.com"])
    message.attach_file(path)
    assert message.attachments == [
        ("résumé.pdf", b"%PDF-1.7 binary \x00\xff", "application/pdf")
    ]
    [part] = attachment_parts(roundtrip(message)[1])
    assert part.get_filename() == "résumé.pdf"
    assert part.get_content() == b"%PDF-1.7 binary \x00\xff"


def test_attach_file_accepts_a_string_path_and_a_mimetype(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"\x00\x01")
    message = EmailMessage()
    message.attach_file(str(path), mimetype="application/x-custom")
    assert message.attachments == [("data.bin", b"\x00\x01", "application/x-custom")]


def test_attach_file_decodes_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Grüße\n", encoding="utf-8")
    message = EmailMessage()
    message.attach_file(path)
    assert message.attachments == [("notes.txt", "Grüße\n", "text/plain")]


def test_attach_file_falls_back_for_binary_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\xff\xfe\x00")
    message = EmailMessage()
    message.attach_file(path)
    assert message.attachments == [
        ("notes.txt", b"\xff\xfe\x00", DEFAULT_ATTACHMENT_MIME_TYPE)
    ]


def test_attach_file_unknown_type(tmp_path):
    path = tmp_path / "blob.unknown-extension"
    path.write_bytes(b"\x01")
    message = EmailMessage()
    message.attach_file(path)
    assert message.attachments[0].mimetype == DEFAULT_ATTACHMENT_MIME_TYPE


def test_attach_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        EmailMessage().attach_file(tmp_path / "missing.txt")


# --- message/rfc822 attachments -----------------------------------------------


def _python_message(policy):
    inner = email.message.EmailMessage(policy=policy)
    inner["Subject"] = "Python ünïcode"
    inner["From"] = "python@example.com"
    inner.set_content("Python bödy\n")
    return inner


def _rfc822_contents():
    legacy = email.message_from_string(
        "Subject: Legacy\nFrom: legacy@example.com\n\nLegacy body\n"
    )
    return {
        "ours": (EmailMessage("Ours ünïcode", "Ours bödy\n", None, ["x@example.com"])),
        "django": (
            django_mail.EmailMessage(
                "Django ünïcode", "Django bödy\n", "d@example.com", ["x@example.com"]
            )
        ),
        "python": _python_message(email.policy.default),
        "python-compat32": legacy,
        "bytes": b"Subject: Bytes\nFrom: bytes@example.com\n\nBytes body\n",
    }


EXPECTED_RFC822 = {
    "ours": ("Ours ünïcode", "Ours bödy\n"),
    "django": ("Django ünïcode", "Django bödy\n"),
    "python": ("Python ünïcode", "Python bödy\n"),
    "python-compat32": ("Legacy", "Legacy body\n"),
    "bytes": ("Bytes", "Bytes body\n"),
}


@pytest.mark.parametrize("kind", EXPECTED_RFC822)
@pytest.mark.parametrize("policy", [email.policy.default, SEVEN_BIT])
def test_message_rfc822_attachment(kind, policy):
    content = _rfc822_contents()[kind]
    message = EmailMessage("Outer", "Outer body", None, ["to@example.com"])
    message.attach("forwarded.eml", content, "message/rfc822")
    raw = message.message(policy=policy).as_bytes()
    assert_wire_safe(raw)
    if policy is SEVEN_BIT:
        assert raw.isascii()
    parsed = parse(raw)
    assert structure(parsed)[0] == "multipart/mixed"
    [part] = attachment_parts(parsed)
    assert part.get_content_type() == "message/rfc822"
    assert part.get_filename() == "forwarded.eml"
    inner = part.get_content()
    subject, body = EXPECTED_RFC822[kind]
    assert inner["Subject"] == subject
    assert inner.get_body(("plain",)).get_content() == body


def test_message_rfc822_guessed_from_eml_filename():
    message = EmailMessage("Outer", "B", None, ["to@example.com"])
    message.attach("fwd.eml", b"Subject: Guessed\n\nInner\n")
    assert message.attachments[0].mimetype == "message/rfc822"
    [part] = attachment_parts(roundtrip(message)[1])
    assert part.get_content()["Subject"] == "Guessed"


def test_nested_message_rfc822_two_levels():
    innermost = EmailMessage(
        "Level 2 — 日本", "Deepest bödy\n", None, ["c@example.com"]
    )
    innermost.attach("deep.bin", b"\x00deep\xff", "application/octet-stream")
    middle = EmailMultiAlternatives("Level 1 — Ελλάδα", "Middle\n", None, ["b@ex.com"])
    middle.attach_alternative("<p>Middle</p>", "text/html")
    middle.attach("level2.eml", innermost, "message/rfc822")
    outer = EmailMessage("Level 0", "Outer\n", None, ["a@example.com"])
    outer.attach("level1.eml", middle, "message/rfc822")

    raw, parsed = roundtrip(outer)
    assert_wire_safe(raw)
    assert structure(parsed) == (
        "multipart/mixed",
        [
            "text/plain",
            (
                "message/rfc822",
                [
                    (
                        "multipart/mixed",
                        [
                            ("multipart/alternative", ["text/plain", "text/html"]),
                            (
                                "message/rfc822",
                                [
                                    (
                                        "multipart/mixed",
                                        ["text/plain", "application/octet-stream"],
                                    )
                                ],
                            ),
                        ],
                    )
                ],
            ),
        ],
    )
    [level1_part] = attachment_parts(parsed)
    level1 = level1_part.get_content()
    assert level1["Subject"] == "Level 1 — Ελλάδα"
    assert level1.get_body(("html",)).get_content() == "<p>Middle</p>\n"
    [level2_part] = attachment_parts(level1)
    assert level2_part.get_filename() == "level2.eml"
    level2 = level2_part.get_content()
    assert level2["Subject"] == "Level 2 — 日本"
    assert level2.get_body(("plain",)).get_content() == "Deepest bödy\n"
    [deep] = attachment_parts(level2)
    assert deep.get_content() == b"\x00deep\xff"


# --- EmailMultiAlternatives ---------------------------------------------------


def test_alternatives_from_the_constructor_are_named_tuples():
    message = EmailMultiAlternatives(
        "S",
        "Text",
        None,
        ["to@example.com"],
        alternatives=[("<p>Text</p>", "text/html")],
    )
    [alternative] = message.alternatives
    assert isinstance(alternative, EmailAlternative)
    assert alternative.content == "<p>Text</p>"
    assert alternative.mimetype == "text/html"


def test_attach_alternative():
    message = EmailMultiAlternatives("S", "Text", None, ["to@example.com"])
    message.attach_alternative("<p>Text</p>", "text/html")
    message.attach_alternative(b"{}", "application/json")
    assert message.alternatives == [
        EmailAlternative("<p>Text</p>", "text/html"),
        EmailAlternative(b"{}", "application/json"),
    ]
    assert all(isinstance(a, EmailAlternative) for a in message.alternatives)
    _, parsed = roundtrip(message)
    assert structure(parsed) == (
        "multipart/alternative",
        ["text/plain", "text/html", "application/json"],
    )
    plain, html, data = parsed.get_payload()
    assert plain.get_content() == "Text\n"
    assert html.get_content() == "<p>Text</p>\n"
    assert data.get_content() == b"{}"


@pytest.mark.parametrize(
    ("content", "mimetype"), [(None, "text/html"), ("<p>x</p>", None)]
)
def test_attach_alternative_needs_content_and_mimetype(content, mimetype):
    message = EmailMultiAlternatives()
    with pytest.raises(ValueError):
        message.attach_alternative(content, mimetype)
    assert message.alternatives == []


def test_alternative_subtype():
    class RelatedAlternatives(EmailMultiAlternatives):
        alternative_subtype = "related"

    message = RelatedAlternatives("S", "Text", None, ["to@example.com"])
    message.attach_alternative("<p>Text</p>", "text/html")
    _, parsed = roundtrip(message)
    assert structure(parsed) == ("multipart/related", ["text/plain", "text/html"])


def test_html_only_message():
    message = EmailMultiAlternatives("S", "", None, ["to@example.com"])
    message.attach_alternative("<p>Only HTML</p>", "text/html")
    _, parsed = roundtrip(message)
    assert structure(parsed) == ("multipart/alternative", ["text/html"])
    assert parsed.get_body().get_content() == "<p>Only HTML</p>\n"


def test_alternatives_and_attachments():
    message = EmailMultiAlternatives("S", "Text", None, ["to@example.com"])
    message.attach_alternative("<p>Text</p>", "text/html")
    message.attach("a.pdf", b"%PDF", "application/pdf")
    message.attach("b.txt", "notes", "text/plain")
    _, parsed = roundtrip(message)
    assert structure(parsed) == (
        "multipart/mixed",
        [
            ("multipart/alternative", ["text/plain", "text/html"]),
            "application/pdf",
            "text/plain",
        ],
    )
    assert parsed.get_body(("plain",)).get_content() == "Text\n"
    assert parsed.get_body(("html",)).get_content() == "<p>Text</p>\n"
    assert [p.get_filename() for p in attachment_parts(parsed)] == ["a.pdf", "b.txt"]


def test_attachments_only_message():
    message = EmailMessage("S", "", None, ["to@example.com"])
    message.attach("a.pdf", b"%PDF", "application/pdf")
    _, parsed = roundtrip(message)
    assert structure(parsed) == ("multipart/mixed", ["application/pdf"])


def test_multi_alternatives_without_alternatives_is_plain():
    _, parsed = roundtrip(EmailMultiAlternatives("S", "Text", None, ["a@example.com"]))
    assert structure(parsed) == "text/plain"


def test_body_contains():
    message = EmailMultiAlternatives("S", "I am content.", None, ["to@example.com"])
    message.attach_alternative("<p>I am content.</p>", "text/html")
    assert message.body_contains("I am content") is True
    assert message.body_contains("<p>I am content.</p>") is False
    assert message.body_contains("missing") is False


def test_body_contains_needs_every_text_alternative():
    message = EmailMultiAlternatives("S", "Hello there", None, ["to@example.com"])
    message.attach_alternative("<p>Hello there</p>", "text/html")
    message.attach_alternative("Hello", "text/x-amp-html")
    assert message.body_contains("Hello") is True
    assert message.body_contains("there") is False


def test_body_contains_ignores_non_text_alternatives():
    message = EmailMultiAlternatives("S", "Hello", None, ["to@example.com"])
    message.attach_alternative(b"\x00binary", "application/octet-stream")
    assert message.body_contains("Hello") is True


def test_body_contains_text_alternative_given_as_bytes():
    message = EmailMultiAlternatives("S", "Grüße", None, ["to@example.com"])
    message.attach_alternative("<b>Grüße</b>".encode(), "text/html")
    assert message.body_contains("Grüße") is True
    assert message.body_contains("Hallo") is False


# --- Addresses ----------------------------------------------------------------

ADDRESS_FORMS = {
    "plain": ("a@example.com", ("", "a@example.com")),
    "named": ("Ann Example <a@example.com>", ("Ann Example", "a@example.com")),
    "quoted-comma": (
        '"Example, Inc." <a@example.com>',
        ("Example, Inc.", "a@example.com"),
    ),
    "non-ascii": ("Zoë Ünïcode <a@example.com>", ("Zoë Ünïcode", "a@example.com")),
    "address": (Address("Ann", "a", "example.com"), ("Ann", "a@example.com")),
    "address-comma-quote": (
        Address('Doe, "Jack" Jr.', "jack", "example.com"),
        ('Doe, "Jack" Jr.', "jack@example.com"),
    ),
    "address-non-ascii": (
        Address("Ελένη Παπαδοπούλου", "eleni", "example.gr"),
        ("Ελένη Παπαδοπούλου", "eleni@example.gr"),
    ),
    "address-idn": (
        Address("Jürgen", "j", "bücher.example"),
        ("Jürgen", "j@xn--bcher-kva.example"),
    ),
    "string-idn": ("Jürgen <j@bücher.example>", ("Jürgen", "j@xn--bcher-kva.example")),
}


def _message_with(field, value):
    kwargs = {"to": ["fixed@example.com"]}
    if field == "from_email":
        kwargs["from_email"] = value
    elif field in ("to", "cc", "reply_to"):
        kwargs[field] = [value]
    else:  # A header override, e.g. "headers:Reply-To".
        kwargs["headers"] = {field.partition(":")[2]: value}
    return EmailMessage("S", "B", **kwargs)


ADDRESS_FIELDS = {
    "from_email": "From",
    "to": "To",
    "cc": "Cc",
    "reply_to": "Reply-To",
    "headers:From": "From",
    "headers:To": "To",
    "headers:Cc": "Cc",
    "headers:Reply-To": "Reply-To",
    "headers:Sender": "Sender",
}


@pytest.mark.parametrize("form", ADDRESS_FORMS)
@pytest.mark.parametrize("field", ADDRESS_FIELDS)
def test_address_forms_in_every_address_field(field, form):
    value, expected = ADDRESS_FORMS[form]
    raw, parsed = roundtrip(_message_with(field, value))
    assert_wire_safe(raw)
    assert mailboxes(parsed, ADDRESS_FIELDS[field]) == [expected]


def test_non_ascii_display_names_are_rfc2047_encoded():
    message = EmailMessage(
        "S", "B", "Zoë <z@example.com>", [Address("日本語", "j", "example.jp")]
    )
    raw = message.message().as_bytes()
    head = raw.split(b"\n\n", 1)[0]
    assert head.isascii()
    assert re.search(rb"^From: =\?utf-8\?[qb]\?[^?]+\?= <z@example\.com>$", head, re.M)
    assert re.search(rb"^To: =\?utf-8\?[qb]\?[^?]+\?= <j@example\.jp>$", head, re.M)


def test_several_addresses_in_one_list_item_are_rejected():
    message = EmailMessage("S", "B", None, ["a@example.com, evil@example.com"])
    with pytest.raises(ValueError, match="To"):
        message.message()


@pytest.mark.parametrize("value", ["not an address <", "a@example.com>", "@", "<>"])
def test_malformed_addresses_are_rejected(value):
    with pytest.raises(ValueError):
        EmailMessage("S", "B", None, [value]).message()


def test_local_mailbox_without_domain_is_allowed():
    _, parsed = roundtrip(EmailMessage("S", "B", "webmaster", ["to@example.com"]))
    assert [a.username for a in parsed["From"].addresses] == ["webmaster"]


def test_lazy_subject_and_body():
    subject = gettext_lazy("Enter a valid email address.")
    body = gettext_lazy("This field is required.")
    message = EmailMessage(subject, body, None, ["to@example.com"])
    with translation.override("de"):
        expected_subject, expected_body = str(subject), str(body)
        _, parsed = roundtrip(message)
    # The German catalog really was used, so the strings were evaluated late.
    assert expected_subject != "Enter a valid email address."
    assert parsed["Subject"] == expected_subject
    assert parsed.get_content() == expected_body + "\n"
    with translation.override("en"):
        _, parsed = roundtrip(message)
    assert parsed["Subject"] == "Enter a valid email address."


def test_lazy_addresses():
    message = EmailMessage(
        "S", "B", gettext_lazy("from@example.com"), [gettext_lazy("to@example.com")]
    )
    _, parsed = roundtrip(message)
    assert mailboxes(parsed, "From") == [("", "from@example.com")]
    assert mailboxes(parsed, "To") == [("", "to@example.com")]


# --- Header injection ---------------------------------------------------------

INJECTED = "Bcc: victim@example.com"


def _injection_cases():
    """Yield (case id, header the error must name, message factory)."""

    def address_string(brk):
        return f"Name{brk}{INJECTED} <name@example.com>"

    def address_object(brk):
        return Address(f"Name{brk}{INJECTED}", "name", "example.com")

    yield "subject", "Subject", lambda brk: EmailMessage(f"Hi{brk}{INJECTED}")
    for form, make in (("string", address_string), ("address", address_object)):
        yield (
            f"from_email-{form}",
            "From",
            lambda brk, make=make: EmailMessage(from_email=make(brk)),
        )
        for argument, header in (("to", "To"), ("cc", "Cc"), ("reply_to", "Reply-To")):
            yield (
                f"{argument}-{form}",
                header,
                lambda brk, make=make, argument=argument: EmailMessage(
                    **{argument: ["ok@example.com", make(brk)]}
                ),
            )
        for header in ("From", "To", "Cc", "Reply-To", "Sender"):
            yield (
                f"headers-{header}-{form}",
                header,
                lambda brk, make=make, header=header: EmailMessage(
                    headers={header: make(brk)}
                ),
            )
    for header in ("X-Custom", "Subject", "Message-ID", "Date", "List-Unsubscribe"):
        yield (
            f"headers-{header}-value",
            header,
            lambda brk, header=header: EmailMessage(
                headers={header: f"value{brk}{INJECTED}"}
            ),
        )


INJECTION_CASES = {
    case: (header, factory) for case, header, factory in _injection_cases()
}


def _injection_params():
    for case in INJECTION_CASES:
        for brk in LINE_BREAKS:
            # Python's Address() itself refuses CR and LF, so those can't
            # even reach us inside an Address object.
            if "-address" in case and ("\r" in brk or "\n" in brk):
                continue
            yield pytest.param(case, brk, id=f"{case}-{brk!r}")


@pytest.mark.parametrize(("case", "brk"), list(_injection_params()))
def test_line_breaks_in_header_values_are_rejected(case, brk):
    header, factory = INJECTION_CASES[case]
    message = factory(brk)
    for policy in (email.policy.default, email.policy.SMTPUTF8):
        with pytest.raises(BadHeaderError) as excinfo:
            message.message(policy=policy)
        assert repr(header) in str(excinfo.value)


def test_address_objects_refuse_cr_and_lf_themselves():
    # Why the Address cases above skip CR and LF.
    for brk in ("\r", "\n"):
        with pytest.raises(ValueError):
            Address(f"Name{brk}Bcc: x@example.com", "name", "example.com")


def test_line_break_list_covers_the_usual_suspects():
    # Guard against LINE_BREAKS silently shrinking.
    for char in ("\r", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"):
        assert char in LINE_BREAKS


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=repr)
def test_line_breaks_in_header_names_are_rejected(brk):
    name = f"X-Custom{brk}Bcc"
    message = EmailMessage("S", "B", None, ["a@example.com"], headers={name: "x"})
    with pytest.raises(BadHeaderError) as excinfo:
        message.message()
    assert "X-Custom" in str(excinfo.value)


@pytest.mark.parametrize(
    "name", ["X-Custom:", "X Custom", "", "X-Ünicode", "X-Tab\tName", "X-\x00"]
)
def test_malformed_header_names_are_rejected(name):
    message = EmailMessage("S", "B", None, ["a@example.com"], headers={name: "x"})
    with pytest.raises(BadHeaderError) as excinfo:
        message.message()
    assert repr(name) in str(excinfo.value)


# Display names crafted to smuggle in an extra address. All of them fit on
# one header line, so Python never has to refold them.
CRAFTED_DISPLAY_NAMES = [
    "evil@example.net, ",
    '"a" <b@example.net>, d@example.net',
    "Name <evil@example.net>",
    'x\\", evil@example.net, "',
    "Ünï <evil@example.net>, o@example.net",
    "<evil@example.net>",
    "Group: evil@example.net;",
    "(comment) evil@example.net",
    "=?utf-8?q?evil=40example.net=2C?=",
]


def _assert_single_mailboxes(message, policy, name, *, folded=False):
    raw = message.message(policy=policy).as_bytes()
    if policy.utf8:
        parsed = email.message_from_string(raw.decode(), policy=email.policy.default)
    else:
        parsed = parse(raw)
    for header in ("From", "To", "Cc", "Reply-To", "Sender"):
        user = header.lower()
        [mailbox] = parsed[header].addresses
        assert mailbox.addr_spec == f"{user}@example.com"
        if name.startswith("=?"):  # Python decodes encoded-word look-alikes.
            continue
        if folded:
            assert squash(mailbox.display_name) == squash(name)
        else:
            assert mailbox.display_name == name


def _message_from_crafted(name):
    def address(user):
        return Address(name, user, "example.com")

    return EmailMessage(
        "S",
        "B",
        address("from"),
        [address("to")],
        cc=[address("cc")],
        reply_to=[address("reply-to")],
        headers={"Sender": address("sender")},
    )


@pytest.mark.parametrize("name", CRAFTED_DISPLAY_NAMES)
@pytest.mark.parametrize(
    "policy",
    [email.policy.default, email.policy.SMTP, email.policy.SMTPUTF8],
    ids=["default", "SMTP", "SMTPUTF8"],
)
def test_display_names_cannot_inject_addresses(name, policy):
    message = _message_from_crafted(name)
    _assert_single_mailboxes(message, policy, name)
    # The envelope is exactly the Address objects given.
    assert message.recipients() == [message.to[0], message.cc[0]]


@pytest.mark.parametrize(
    "policy", [email.policy.default, email.policy.SMTP], ids=["default", "SMTP"]
)
def test_long_non_ascii_display_name_cannot_inject_addresses(policy):
    # Under 7-bit policies, Python folds it as RFC 2047 encoded-words.
    name = "a" * 70 + ", evil@example.net, " + "ü" * 40
    _assert_single_mailboxes(_message_from_crafted(name), policy, name, folded=True)


# CPython's own folding of these (gh-80222) drops the quotes, so the commas
# split the name into several addresses; ours never refolds a display name.
@pytest.mark.parametrize(
    ("name", "policy"),
    [
        ("a" * 70 + ", evil@example.net, b", email.policy.default),
        ("a" * 70 + ", evil@example.net, b", email.policy.SMTP),
        ("Doe, John " * 10, email.policy.default),
        ("a" * 70 + ", evil@example.net, " + "ü" * 40, email.policy.SMTPUTF8),
    ],
    ids=["ascii-default", "ascii-SMTP", "many-commas", "non-ascii-SMTPUTF8"],
)
def test_long_quoted_display_names_cannot_inject_addresses(name, policy):
    _assert_single_mailboxes(_message_from_crafted(name), policy, name)


def test_address_strings_with_quoted_specials_are_one_address():
    message = EmailMessage(
        "S",
        "B",
        None,
        ['"evil@example.net, other@example.net" <real@example.com>'],
    )
    _, parsed = roundtrip(message)
    assert mailboxes(parsed, "To") == [
        ("evil@example.net, other@example.net", "real@example.com")
    ]


# Two addresses laid out so that the comma between them lands where the bug
# needs it (the exact lengths matter).
LIST_SEPARATOR_TRIGGER = [
    Address("000" + "¡" * 14, "to0", "example.com"),
    Address("0", "to1", "example.com"),
]


# CPython's own folding of these (gh-100884, CVE-2025-1795) encodes the comma
# between the two addresses, so the second one disappears.
@pytest.mark.parametrize(
    "policy", [email.policy.default, email.policy.SMTP], ids=["default", "SMTP"]
)
def test_folded_address_lists_keep_every_address(policy):
    to = LIST_SEPARATOR_TRIGGER
    _, parsed = roundtrip(EmailMessage("S", "B", None, to), policy)
    assert mailboxes(parsed, "To") == [(a.display_name, a.addr_spec) for a in to]


# --- Bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [email.policy.default, email.policy.SMTP, SEVEN_BIT],
    ids=["default", "SMTP", "7bit"],
)
@pytest.mark.parametrize(
    "body",
    [
        "x" * 5000 + "\n",
        "ü" * 3000 + "\nshort line\n" + "日本" * 700 + "\n",
        ("word " * 400 + "\n") * 3,
        "a" * 997 + "\n" + "b" * 998 + "\n" + "c" * 999 + "\n",
    ],
    ids=["ascii", "non-ascii", "words", "boundary"],
)
def test_long_lines_are_transfer_encoded(body, policy):
    message = EmailMessage("S", body, None, ["to@example.com"])
    raw = message.message(policy=policy).as_bytes()
    assert_wire_safe(raw)
    # Long lines always need an encoding that is itself 7-bit.
    assert raw.isascii()
    parsed = parse(raw)
    assert parsed["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert decoded_text(parsed) == body


@pytest.mark.parametrize("script", SCRIPTS)
def test_non_ascii_bodies(script):
    text = SCRIPTS[script]
    body = f"{text}\n\n{text * 3}\n"
    message = EmailMultiAlternatives(text, body, None, ["to@example.com"])
    message.attach_alternative(f"<p>{text}</p>", "text/html")
    raw, parsed = roundtrip(message)
    assert_wire_safe(raw)
    assert parsed["Subject"] == text
    assert parsed.get_body(("plain",)).get_content() == body
    assert parsed.get_body(("html",)).get_content() == f"<p>{text}</p>\n"
    # A policy that forbids 8-bit data gets QP or base64 instead.
    raw = message.message(policy=SEVEN_BIT).as_bytes()
    assert raw.isascii()
    assert parse(raw).get_body(("plain",)).get_content() == body


def test_short_non_ascii_body_uses_8bit_under_the_default_policy():
    # As on Django 6.1: Python's default policy allows 8-bit bodies, and only
    # the headers must be ASCII.
    raw, parsed = roundtrip(EmailMessage("Grüße", "Grüße\n", None, ["a@example.com"]))
    assert parsed["Content-Transfer-Encoding"] == "8bit"
    assert "Grüße\n".encode() in raw
    assert_wire_safe(raw)


def test_crlf_and_lone_cr_in_body():
    body = "one\r\ntwo\rthree\n"
    raw, parsed = roundtrip(EmailMessage("S", body, None, ["a@example.com"]))
    assert_wire_safe(raw)
    assert parsed.get_content().splitlines() == ["one", "two", "three"]


# --- Parse-back: everything non-ASCII -----------------------------------------


def _kitchen_sink():
    """A message that uses non-ASCII text in every place that takes text."""
    message = EmailMultiAlternatives(
        subject="Résumé — 日本語 — Ελληνικά — 📧 " + "long subject " * 10,
        body="Grüße aus Köln 👋\n" + "Съешь же ещё " * 100 + "\n",
        from_email=Address("Jürgen Müller, Ph.D.", "juergen", "bücher.example"),
        to=["Zoë Ünïcode <zoe@example.com>", Address("山田 太郎", "taro", "例え.jp")],
        cc=['"Smith, Ann" <ann@example.com>'],
        bcc=["hidden@example.com"],
        reply_to=[Address("Ελένη", "eleni", "example.gr")],
        headers={"X-Tag": "étiquette 🏷", "Organization": "Straße & Söhne"},
    )
    message.attach_alternative("<p>Grüße — <b>日本語</b> 🎉</p>", "text/html")
    message.attach("résumé.txt", "Ünïcode text\nzweite Zeile\n", "text/plain")
    message.attach("données.csv", "clé,valeur\nα,β\n".encode(), None)
    message.attach("图片 picture.png", b"\x89PNG\r\n\x1a\n\x00\xff", "image/png")
    message.attach(
        "a very long file name with ünïcode characters " * 3 + ".bin",
        bytes(range(256)),
        "application/octet-stream",
    )
    inner = EmailMessage("Innere Nachricht ✉", "Innen: äöü\n", None, ["i@example.com"])
    message.attach("weitergeleitet.eml", inner, "message/rfc822")
    return message


EXPECTED_KITCHEN_SINK_STRUCTURE = (
    "multipart/mixed",
    [
        ("multipart/alternative", ["text/plain", "text/html"]),
        "text/plain",
        "text/csv",
        "image/png",
        "application/octet-stream",
        ("message/rfc822", ["text/plain"]),
    ],
)


@pytest.mark.parametrize(
    "policy",
    [email.policy.default, email.policy.SMTP, SEVEN_BIT],
    ids=["default", "SMTP", "7bit"],
)
def test_non_ascii_everywhere_parses_back(policy):
    message = _kitchen_sink()
    raw = message.message(policy=policy).as_bytes()
    assert_wire_safe(raw)
    if policy is SEVEN_BIT:
        assert raw.isascii()
    parsed = parse(raw)

    assert parsed["Subject"] == message.subject
    assert mailboxes(parsed, "From") == [
        ("Jürgen Müller, Ph.D.", "juergen@xn--bcher-kva.example")
    ]
    assert mailboxes(parsed, "To") == [
        ("Zoë Ünïcode", "zoe@example.com"),
        ("山田 太郎", "taro@xn--r8jz45g.jp"),
    ]
    assert mailboxes(parsed, "Cc") == [("Smith, Ann", "ann@example.com")]
    assert mailboxes(parsed, "Reply-To") == [("Ελένη", "eleni@example.gr")]
    assert parsed["X-Tag"] == "étiquette 🏷"
    assert parsed["Organization"] == "Straße & Söhne"
    assert parsed["Bcc"] is None
    assert b"hidden@example.com" not in raw

    assert structure(parsed) == EXPECTED_KITCHEN_SINK_STRUCTURE
    assert decoded_text(parsed.get_body(("plain",))) == message.body
    assert (
        parsed.get_body(("html",)).get_content() == "<p>Grüße — <b>日本語</b> 🎉</p>\n"
    )
    notes, csv, png, binary, forwarded = attachment_parts(parsed)
    assert (notes.get_filename(), decoded_text(notes)) == (
        "résumé.txt",
        "Ünïcode text\nzweite Zeile\n",
    )
    assert (csv.get_filename(), decoded_text(csv)) == (
        "données.csv",
        "clé,valeur\nα,β\n",
    )
    assert (png.get_filename(), png.get_content()) == (
        "图片 picture.png",
        b"\x89PNG\r\n\x1a\n\x00\xff",
    )
    assert binary.get_filename() == message.attachments[3].filename
    assert binary.get_content() == bytes(range(256))
    assert forwarded.get_filename() == "weitergeleitet.eml"
    inner = forwarded.get_content()
    assert inner["Subject"] == "Innere Nachricht ✉"
    assert decoded_text(inner) == "Innen: äöü\n"


def test_non_ascii_everywhere_under_smtputf8():
    message = _kitchen_sink()
    raw = message.message(policy=email.policy.SMTPUTF8).as_bytes()
    for line in raw.splitlines():
        assert len(line) <= MAX_LINE_OCTETS
    parsed = email.message_from_string(raw.decode(), policy=email.policy.default)
    assert parsed["Subject"] == message.subject
    assert mailboxes(parsed, "From") == [
        ("Jürgen Müller, Ph.D.", "juergen@bücher.example")
    ]
    assert mailboxes(parsed, "To")[1] == ("山田 太郎", "taro@例え.jp")
    assert structure(parsed) == EXPECTED_KITCHEN_SINK_STRUCTURE
    assert [p.get_filename() for p in attachment_parts(parsed)] == [
        a.filename for a in message.attachments
    ]


# --- Parse-back: property test ------------------------------------------------

# Printable text from every plane, without controls or line breaks (those are
# rejected in headers, tested above) and without surrogates.
_TEXT = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn")
)
# Python's parser strips and collapses runs of whitespace around header
# values, so generated header text has single inner spaces only.
_HEADER_TEXT = (
    st.text(_TEXT, min_size=1, max_size=40)
    .map(lambda text: " ".join(text.split()))
    .filter(bool)
)
# Display names short enough that Python never refolds a quoted-string, see
# test_long_quoted_display_names_cannot_inject_addresses.
_DISPLAY_NAME = (
    st.text(_TEXT, min_size=1, max_size=20)
    .map(lambda text: " ".join(text.split()))
    .filter(lambda text: text and not text.startswith("=?"))
)
_FILENAME = (
    st.text(
        st.characters(
            codec="utf-8",
            exclude_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn"),
            exclude_characters='/\\"',
        ),
        min_size=1,
        max_size=60,
    )
    .map(lambda text: " ".join(text.split()))
    .filter(bool)
)
_BODY = st.lists(st.text(_TEXT, max_size=120), max_size=8).map(
    lambda lines: "\n".join(lines) + "\n"
)


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    subject=_HEADER_TEXT,
    from_name=_DISPLAY_NAME,
    # Several addresses in one header: folding must keep every one.
    to_names=st.lists(_DISPLAY_NAME, min_size=1, max_size=3),
    filename=_FILENAME,
    body=_BODY,
    attachment_text=_BODY,
    policy=st.sampled_from([email.policy.default, email.policy.SMTP, SEVEN_BIT]),
)
def test_round_trip_property(
    subject, from_name, to_names, filename, body, attachment_text, policy
):
    to = [Address(name, f"to{i}", "example.com") for i, name in enumerate(to_names)]
    message = EmailMultiAlternatives(
        subject, body, Address(from_name, "from", "exämple.com"), to
    )
    message.attach_alternative(f"<p>{body}</p>", "text/html")
    message.attach(filename, attachment_text, "text/plain")
    message.attach(filename + ".bin", attachment_text.encode(), "application/x-data")

    raw = message.message(policy=policy).as_bytes()
    assert_wire_safe(raw)
    if policy is SEVEN_BIT:
        assert raw.isascii()
    parsed = parse(raw)
    assert parsed["Subject"] == subject
    assert [(squash(n), a) for n, a in mailboxes(parsed, "From")] == [
        (squash(from_name), "from@xn--exmple-cua.com")
    ]
    assert [(squash(n), a) for n, a in mailboxes(parsed, "To")] == [
        (squash(a.display_name), a.addr_spec) for a in to
    ]
    assert structure(parsed) == (
        "multipart/mixed",
        [
            ("multipart/alternative", ["text/plain", "text/html"]),
            "text/plain",
            "application/x-data",
        ],
    )
    assert decoded_text(parsed.get_body(("plain",))) == body
    text_part, data = attachment_parts(parsed)
    assert text_part.get_filename() == filename
    assert decoded_text(text_part) == attachment_text
    assert data.get_filename() == filename + ".bin"
    assert data.get_content() == attachment_text.encode()
