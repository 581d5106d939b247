"""
DKIM signing (the SMTP backend's ``dkim`` OPTION).

Every signature is checked the way a receiver checks it: dkimpy's verify()
on the bytes the aiosmtpd sink received, with the public key served by a
fake DNS lookup (the key pair is generated for this test session).
"""

import base64
import email
import email.policy
import sys
import time
from unittest import mock

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core import checks
from django.core import mail as django_mail
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from django_mailkit import EmailMessage, EmailMultiAlternatives, InvalidMailer, mailers
from django_mailkit import dkim as dkim_module
from django_mailkit.dkim import SigningError, signer_from_option
from django_mailkit.models import OutboxMessage, Status
from django_mailkit.rendering import render_bytes
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp

DOMAIN = "example.com"
SELECTOR = "mk2026"


def _pem(key, fmt=serialization.PrivateFormat.TraditionalOpenSSL, encryption=None):
    return key.private_bytes(
        serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption()
    ).decode("ascii")


@pytest.fixture(scope="session")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def private_pem(rsa_key):
    return _pem(rsa_key)


def txt_record(key):
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.fixture(scope="session")
def dns(rsa_key):
    """A dnsfunc for dkimpy: the TXT record of our selector, nothing else."""
    records = {f"{SELECTOR}._domainkey.{DOMAIN}.".encode(): txt_record(rsa_key)}

    def lookup(name, timeout=5):
        return records.get(name)

    return lookup


def verifies(data, dns):
    return dkim.verify(data, dnsfunc=dns)


def signature_tags(data):
    parsed = email.message_from_bytes(data, policy=email.policy.compat32)
    value = "".join(parsed["DKIM-Signature"].split())
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def dkim_option(private_pem, **extra):
    return {"domain": DOMAIN, "selector": SELECTOR, "private_key": private_pem, **extra}


def smtp_mailer(server, dkim_config, **options):
    return {
        "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
        "OPTIONS": {
            "host": server.host,
            "port": server.port,
            "timeout": 5,
            "dkim": dkim_config,
            **options,
        },
    }


# The message profiles.


def plain():
    return EmailMessage(
        "Your order has shipped",
        "Hello,\n\nyour order is on its way.\n.\nA line with a dot above.\n",
        "Shop <shop@example.com>",
        ["ann@example.com", "bob@example.net"],
        cc=["carol@example.org"],
        headers={"Reply-To": "help@example.com"},
    )


def non_ascii():
    msg = EmailMultiAlternatives(
        "Grüße aus Köln — 日本語の件名 " + "lang " * 20,
        "Καλημέρα κόσμε, ünïcödé.\n" * 40,
        "Zeitung Köln <news@example.com>",
        ["Léa Müller <lea@example.com>"],
    )
    msg.attach_alternative("<p>Καλημέρα κόσμε</p>", "text/html")
    return msg


def smtputf8():
    # A non-ASCII local part: the message goes with SMTPUTF8, raw UTF-8
    # in its headers.
    return EmailMessage(
        "Ünïcödé all the way",
        "Grüße\n",
        "shop@example.com",
        ["jörg@example.com"],
    )


def attachments():
    msg = EmailMessage(
        "Invoice 2026-114",
        "Please find the invoice attached.",
        "billing@example.com",
        ["ann@example.com"],
    )
    msg.attach("invoice.pdf", bytes(range(256)) * 300, "application/pdf")
    msg.attach("notes.txt", "Ligne accentuée\n" * 50, "text/plain")
    msg.attach("résumé.bin", b"\x00\xff" * 100, "application/octet-stream")
    return msg


PROFILES = [plain, non_ascii, smtputf8, attachments]


# Sending directly over SMTP (with and without PIPELINING: the fixture).


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.__name__)
def test_direct_smtp_signatures_verify(smtp_server, private_pem, dns, profile):
    with override_settings(
        MAILERS={"default": smtp_mailer(smtp_server, dkim_option(private_pem))}
    ):
        assert mailers.default.send_messages([profile()]) == 1
    [delivery] = smtp_server.deliveries
    assert delivery.data.startswith(b"DKIM-Signature: ")
    assert verifies(delivery.data, dns)
    # CRLF line ends throughout, the signature's folding included, and no
    # line over RFC 5322's limit: what a receiver hashes is what was signed.
    data = delivery.data
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    # SIZE= announced the signed message's size.
    sizes = [o for o in delivery.mail_options if o.startswith("SIZE=")]
    assert sizes == [f"SIZE={len(data)}"]
    tags = signature_tags(delivery.data)
    assert tags["d"] == DOMAIN and tags["s"] == SELECTOR
    assert tags["a"] == "rsa-sha256" and tags["c"] == "relaxed/relaxed"
    # The message's own headers are covered, and From, To, Subject... are
    # oversigned (a second one can't be added).
    signed = tags["h"].split(":")
    assert signed.count("from") == 2 and signed.count("subject") == 2
    assert "mime-version" in signed and "content-type" in signed


def test_a_tampered_message_fails_verification(smtp_server, private_pem, dns):
    with override_settings(
        MAILERS={"default": smtp_mailer(smtp_server, dkim_option(private_pem))}
    ):
        mailers.default.send_messages([plain()])
    data = smtp_server.deliveries[0].data
    assert verifies(data, dns)
    # One byte of the body, then one of a signed header.
    assert not verifies(data.replace(b"on its way", b"on its wax"), dns)
    assert not verifies(data.replace(b"Subject: Your", b"Subject: Our"), dns)
    # An added second Subject (oversigned) breaks it too.
    assert not verifies(b"Subject: Pay now\r\n" + data, dns)
    # And a signature made with another key does not verify with ours.
    other = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    smtp_server.deliveries.clear()
    with override_settings(
        MAILERS={"default": smtp_mailer(smtp_server, dkim_option(other))}
    ):
        mailers.default.send_messages([plain()])
    assert not verifies(smtp_server.deliveries[0].data, dns)


def test_every_transaction_of_a_chunked_message_is_signed(
    smtp_server, private_pem, dns
):
    message = plain()
    message.to = [f"u{i}@example.com" for i in range(5)]
    config = smtp_mailer(
        smtp_server, dkim_option(private_pem), max_recipients_per_transaction=2
    )
    with override_settings(MAILERS={"default": config}):
        assert mailers.default.send_messages([message]) == 1
    assert len(smtp_server.deliveries) == 3
    # Signed once: every recipient gets the same copy.
    assert len({d.data for d in smtp_server.deliveries}) == 1
    assert all(verifies(d.data, dns) for d in smtp_server.deliveries)
    assert smtp_server.deliveries[0].data.count(b"DKIM-Signature:") == 1


def test_a_batch_over_several_connections_is_signed(smtp_server, private_pem, dns):
    messages = [plain() for _ in range(24)]
    config = smtp_mailer(smtp_server, dkim_option(private_pem), max_connections=3)
    with override_settings(MAILERS={"default": config}):
        assert mailers.default.send_messages(messages) == 24
    assert len(smtp_server.deliveries) == 24
    assert all(verifies(d.data, dns) for d in smtp_server.deliveries)


def test_djangos_own_message_is_signed(smtp_server, private_pem, dns):
    # Built by the email package (the standard route), not our fast writer.
    message = django_mail.EmailMessage(
        "Grüße", "Körper\n", "from@example.com", ["to@example.com"]
    )
    with override_settings(
        MAILERS={"default": smtp_mailer(smtp_server, dkim_option(private_pem))}
    ):
        assert mailers.default.send_messages([message]) == 1
    assert verifies(smtp_server.deliveries[0].data, dns)


def test_headers_and_identity_options(smtp_server, private_pem, dns):
    option = dkim_option(
        private_pem,
        headers=["From", "Subject", "Date", "Message-ID", "X-Campaign"],
        identity="news@mail.example.com",
    )
    message = plain()
    message.extra_headers["X-Campaign"] = "autumn"
    with override_settings(MAILERS={"default": smtp_mailer(smtp_server, option)}):
        mailers.default.send_messages([message])
    data = smtp_server.deliveries[0].data
    assert verifies(data, dns)
    tags = signature_tags(data)
    assert tags["h"] == "from:subject:date:message-id:x-campaign"
    assert tags["i"] == "news@mail.example.com"
    assert not verifies(data.replace(b"autumn", b"winter"), dns)
    # To is not signed now: changing it keeps the signature valid.
    assert verifies(data.replace(b"To: ann@", b"To: eve@"), dns)


def test_a_key_file_in_pkcs8_with_windows_line_ends(
    smtp_server, rsa_key, dns, tmp_path
):
    path = tmp_path / "dkim.key"
    pem = _pem(rsa_key, serialization.PrivateFormat.PKCS8)
    path.write_bytes(pem.replace("\n", "\r\n").encode())
    option = {"domain": DOMAIN, "selector": SELECTOR, "private_key_file": str(path)}
    with override_settings(MAILERS={"default": smtp_mailer(smtp_server, option)}):
        mailers.default.send_messages([plain()])
    assert verifies(smtp_server.deliveries[0].data, dns)


def test_without_the_option_nothing_is_signed(smtp_server):
    with override_settings(MAILERS={"default": smtp_mailer(smtp_server, None)}):
        mailers.default.send_messages([plain()])
    assert b"DKIM-Signature" not in smtp_server.deliveries[0].data


def test_a_message_dkimpy_cannot_sign_fails_before_anything_is_sent(
    smtp_server, private_pem
):
    class Garbled:
        def as_bytes(self):
            return b"From: a@example.com\r\nnot a header line\r\n\r\nbody\r\n"

        def get(self, name, default=None):
            return default

    class GarbledHeaders(EmailMessage):
        def message(self, *, policy=email.policy.default):
            return Garbled()

    broken = GarbledHeaders("s", "b", "from@example.com", ["to@example.com"])
    with override_settings(
        MAILERS={"default": smtp_mailer(smtp_server, dkim_option(private_pem))}
    ):
        with pytest.raises(SigningError, match="DKIM signing failed"):
            mailers.default.send_messages([plain(), broken])
    assert smtp_server.deliveries == []


# The outbox: stored unsigned, signed at send time.


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("profile", [non_ascii, attachments], ids=lambda p: p.__name__)
def test_outbox_stores_unsigned_and_the_worker_signs(
    smtp_server, private_pem, dns, profile
):
    config = smtp_mailer(
        smtp_server, dkim_option(private_pem), max_recipients_per_transaction=1
    )
    message = profile()
    message.to.append("second@example.com")
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "smtp"},
            },
            "smtp": config,
        },
        MAILKIT={"USE_TASKS": False},
    ):
        assert mailers.default.send_messages([message]) == 1
        record = OutboxMessage.objects.get()
        stored = bytes(record.mime)
        assert b"DKIM-Signature" not in stored
        Worker(once=True, interval=0).run()
    record.refresh_from_db()
    assert record.status == Status.SENT
    # The stored .eml is still the unsigned original...
    assert bytes(record.mime) == stored
    # ...and each copy on the wire is it, signed.
    assert len(smtp_server.deliveries) == 2
    for delivery in smtp_server.deliveries:
        assert verifies(delivery.data, dns)
        signature, rest = delivery.data.split(b"\r\n", 1)
        while rest[:1] in (b" ", b"\t"):  # the folded signature
            rest = rest.split(b"\r\n", 1)[1]
        assert signature.startswith(b"DKIM-Signature:")
        assert rest == stored


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "tamper",
    [
        lambda mime: b"not a header line\r\n" + mime,
        lambda mime: b" a continuation first\r\n" + mime,
        lambda mime: b"",
    ],
    ids=["no-colon", "continuation", "empty"],
)
def test_a_stored_message_that_cannot_be_signed_fails_unsent(
    smtp_server, private_pem, tamper
):
    # A tampered row: a header line dkimpy can't parse. It must fail with
    # the reason recorded, not go out unsigned, and not be retried forever.
    with override_settings(
        MAILERS=outbox_via_smtp(smtp_server, timeout=5, dkim=dkim_option(private_pem)),
        MAILKIT={"USE_TASKS": False},
    ):
        mailers.default.send_messages([plain()])
        record = OutboxMessage.objects.get()
        OutboxMessage.objects.filter(pk=record.pk).update(
            mime=tamper(bytes(record.mime))
        )
        Worker(once=True, interval=0).run()
    record.refresh_from_db()
    assert record.status == Status.FAILED
    assert "DKIM signing failed" in record.last_error
    assert smtp_server.deliveries == []


# Signing speed: OpenSSL does the RSA step, dkimpy everything else, and the
# output is dkimpy's own, byte for byte (RSASSA-PKCS1-v1_5 is deterministic).

FROZEN = 1767225600  # 2026-01-01T00:00:00Z, for dkimpy's and our t=


@pytest.fixture
def fresh_key_cache():
    """Each test parses and probes its key again (and leaves no trace)."""
    dkim_module._fast_key.cache_clear()
    yield
    dkim_module._fast_key.cache_clear()


def wire_bytes(message):
    """The bytes the SMTP backend signs: the rendered message, CRLF."""
    return render_bytes(message, email.policy.SMTP)[0]


def dkimpy_signature(data, private_pem, headers, identity=None):
    """What dkimpy alone writes for the same message, key and headers."""
    return dkim.sign(
        data,
        SELECTOR.encode(),
        DOMAIN.encode(),
        private_pem.encode(),
        identity=identity,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=headers,
        linesep=b"\r\n",
    )


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.__name__)
def test_signature_is_dkimpys_byte_for_byte(monkeypatch, private_pem, dns, profile):
    signer = signer_from_option(dkim_option(private_pem), ValueError)
    assert signer is not None and signer.key is not None  # the OpenSSL path
    data = wire_bytes(profile())
    monkeypatch.setattr(time, "time", lambda: FROZEN + 0.5)
    # Neither dkimpy's RSA nor its PEM parser runs: they are the slow parts.
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)
    monkeypatch.setattr(dkim, "parse_pem_private_key", None)
    signed = signer.sign(data)
    monkeypatch.undo()
    header = signed[: len(signed) - len(data)]
    assert signed.endswith(data) and header.startswith(b"DKIM-Signature: ")
    assert f"t={FROZEN};".encode() in header
    headers = signature_tags(signed)["h"].encode().split(b":")
    monkeypatch.setattr(time, "time", lambda: FROZEN + 0.5)
    assert header == dkimpy_signature(data, private_pem, headers)
    monkeypatch.undo()
    assert verifies(signed, dns)


def test_headers_and_identity_options_are_dkimpys_byte_for_byte(
    monkeypatch, private_pem, dns
):
    headers = ["From", "Subject", "Date", "Message-ID", "From"]
    signer = signer_from_option(
        dkim_option(private_pem, headers=headers, identity="news@mail.example.com"),
        ValueError,
    )
    data = wire_bytes(attachments())
    monkeypatch.setattr(time, "time", lambda: FROZEN)
    assert (
        signer.sign(data)
        == dkimpy_signature(
            data,
            private_pem,
            [h.lower().encode() for h in headers],
            identity=b"news@mail.example.com",
        )
        + data
    )
    monkeypatch.undo()
    assert verifies(signer.sign(data), dns)


# Any message dkimpy can sign: white space to canonicalize, folded and
# repeated headers, empty lines at the end, an empty body.
_wsp = st.sampled_from([" ", "\t", "  ", " \t "])
_text = st.lists(
    st.one_of(st.text(alphabet="abcXYZ09.,:;<>@=-", min_size=1, max_size=12), _wsp),
    max_size=12,
).map("".join)


@st.composite
def raw_messages(draw):
    names = draw(
        st.lists(
            st.sampled_from(["To", "Cc", "Subject", "Date", "X-Tag", "Reply-To"]),
            max_size=6,
        )
    )
    lines = [f"From: {draw(_text)}shop@example.com"]
    for name in names:
        value = draw(_text)
        if draw(st.booleans()):  # folded onto a continuation line
            value += "\r\n" + draw(_wsp) + draw(_text)
        lines.append(f"{name}:{draw(st.sampled_from(['', ' ', '  ']))}{value}")
    body = draw(st.lists(_text, max_size=8)) + [""] * draw(st.integers(0, 3))
    return ("\r\n".join(lines) + "\r\n\r\n" + "\r\n".join(body)).encode("ascii")


@settings(max_examples=60, deadline=None)
@given(data=raw_messages(), oversign=st.booleans())
def test_any_message_is_signed_byte_for_byte_as_dkimpy_signs_it(
    private_pem, data, oversign
):
    headers = ["From", "To", "Subject", "X-Tag"] + (["From", "Cc"] if oversign else [])
    option = dkim_option(private_pem, headers=headers)
    signer = signer_from_option(option, ValueError)
    assert signer.key is not None
    with mock.patch.object(time, "time", return_value=FROZEN):
        signed = signer.sign(data)
        expected = dkimpy_signature(
            data, private_pem, [h.lower().encode() for h in headers]
        )
    assert signed == expected + data


def test_the_key_is_parsed_once_per_process(private_pem, fresh_key_cache):
    first = build(dkim_option(private_pem)).dkim_signer
    second = build(dkim_option(private_pem)).dkim_signer
    assert first.key is not None and second.key is first.key
    assert dkim_module._fast_key.cache_info().misses == 1


def test_a_dkimpy_that_signs_differently_signs_alone(
    monkeypatch, private_pem, dns, fresh_key_cache, caplog
):
    # A dkimpy release whose output is no longer what _signature() writes
    # (here: one that adds an l= tag): the probe at build time notices, and
    # dkimpy signs alone, so what goes out is still dkimpy's and verifies.
    original = dkim.DKIM.sign

    def sign(self, *args, **kwargs):
        return original(self, *args, **{**kwargs, "length": True})

    monkeypatch.setattr(dkim.DKIM, "sign", sign)
    with caplog.at_level("WARNING", logger="django_mailkit.dkim"):
        signer = build(dkim_option(private_pem)).dkim_signer
    assert signer.key is None
    assert "does not reproduce dkimpy 1.1" in caplog.text
    assert "the signatures differ" in caplog.text
    signed = signer.sign(wire_bytes(plain()))
    assert "l" in signature_tags(signed) and verifies(signed, dns)


def test_without_cryptography_dkimpy_signs_alone(
    monkeypatch, private_pem, dns, fresh_key_cache, caplog
):
    monkeypatch.setitem(
        sys.modules, "cryptography.hazmat.primitives.asymmetric.rsa", None
    )
    with caplog.at_level("WARNING", logger="django_mailkit.dkim"):
        signer = build(dkim_option(private_pem)).dkim_signer
    assert signer.key is None
    assert "cryptography package is not installed" in caplog.text
    assert verifies(signer.sign(wire_bytes(non_ascii())), dns)


# Configuration errors: one line naming the option, at build time and as a
# system check at startup.


def build(option):
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": {"host": "localhost", "dkim": option},
            }
        }
    ):
        return mailers.default


@pytest.mark.parametrize(
    "option, expected",
    [
        ("yes", "must be a dict with 'domain', 'selector'"),
        ({"domain": DOMAIN, "selector": "s", "key": "x"}, "unknown key(s) 'key'"),
        ({"selector": "s", "private_key": "x"}, "'domain' is required."),
        ({"domain": DOMAIN, "private_key": "x"}, "'selector' is required."),
        ({"domain": DOMAIN, "selector": "s"}, "'private_key' or 'private_key_file'"),
        (
            {"domain": "example.com; s=evil", "selector": "s", "private_key": "x"},
            "'domain' is not a valid domain name",
        ),
        (
            {"domain": DOMAIN, "selector": "a b", "private_key": "x"},
            "'selector' is not a valid selector",
        ),
        (
            {"domain": DOMAIN, "selector": "s\r\nBcc: x", "private_key": "x"},
            "'selector' is not a valid selector",
        ),
        (
            {"domain": DOMAIN, "selector": 7, "private_key": "x"},
            "'selector' must be a string (got int).",
        ),
    ],
)
def test_option_shape_errors(option, expected):
    with pytest.raises(InvalidMailer) as caught:
        build(option)
    text = str(caught.value)
    assert text.startswith("MAILERS['default']['OPTIONS']['dkim']: ")
    assert expected in text
    assert "\n" not in text


def test_option_value_errors(private_pem, tmp_path):
    good = dkim_option(private_pem)
    cases = [
        ({**good, "private_key_file": "/x"}, "not both"),
        ({**good, "headers": "From"}, "'headers' must be a list of header names"),
        ({**good, "headers": ["To", "Subject"]}, "must include 'From'"),
        ({**good, "headers": ["From", "Bcc"]}, "'Bcc', which RFC 6376 says not to"),
        ({**good, "headers": ["From", "Bad Name"]}, "'Bad Name', which is not a"),
        ({**good, "identity": "ops@example.org"}, "'identity' must be an address"),
        ({**good, "identity": "ops@badexample.com"}, "'identity' must be an address"),
        ({**good, "identity": "a;b@example.com"}, "'identity' must be an address"),
    ]
    for option, expected in cases:
        with pytest.raises(InvalidMailer, match="\\['dkim'\\]: ") as caught:
            build(option)
        assert expected in str(caught.value), option
    # Accepted: the domain itself, a subdomain, an empty local part, a
    # Unicode domain (signed as its A-labels).
    assert build({**good, "identity": "@example.com"}).dkim_signer.identity == (
        b"@example.com"
    )
    assert build({**good, "identity": "a@x.example.com"}).dkim_signer
    signer = build({**good, "domain": "bücher.example"}).dkim_signer
    assert signer.domain == b"xn--bcher-kva.example"


def _pkcs1_pem(n, e, d, p, q):
    """A PKCS#1 PEM built from the numbers (whatever they are)."""

    def length(n):
        if n < 128:
            return bytes([n])
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return bytes([0x80 | len(raw)]) + raw

    def integer(x):
        raw = x.to_bytes(x.bit_length() // 8 + 1, "big")
        return b"\x02" + length(len(raw)) + raw

    fields = [0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p)]
    body = b"".join(integer(x) for x in fields)
    der = b"\x30" + length(len(body)) + body
    return (
        "-----BEGIN RSA PRIVATE KEY-----\n"
        + base64.encodebytes(der).decode()
        + "-----END RSA PRIVATE KEY-----\n"
    )


def _prime(bits):
    import secrets

    while True:
        # The top two bits set: the product of two has exactly 2 * bits.
        n = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23)):
            return n


def _small_rsa_pem(bits=512):
    # cryptography won't make an RSA key this weak; build one by hand.
    e = 65537
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            return _pkcs1_pem(p * q, e, pow(e, -1, phi), p, q)


def _bad_keys(tmp_path):
    ec_key = _pem(
        ec.generate_private_key(ec.SECP256R1()), fmt=serialization.PrivateFormat.PKCS8
    )
    small = _small_rsa_pem()
    encrypted = _pem(
        rsa.generate_private_key(public_exponent=65537, key_size=1024),
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    )
    return [
        ({"private_key": "not a key"}, "is not an RSA private key in PEM form"),
        (
            {"private_key": "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END"},
            "is not an RSA private key in PEM form",
        ),
        ({"private_key": ec_key}, "is not an RSA private key in PEM form"),
        ({"private_key": small}, "is a 512-bit RSA key: DKIM needs at least 1024"),
        ({"private_key": encrypted}, "is encrypted"),
        (
            {"private_key_file": str(tmp_path / "missing.key")},
            f"'private_key_file' '{tmp_path / 'missing.key'}' cannot be read: "
            "No such file or directory.",
        ),
    ]


def test_bad_keys_fail_the_system_check_at_startup(tmp_path):
    for key, expected in _bad_keys(tmp_path):
        option = {"domain": DOMAIN, "selector": SELECTOR, **key}
        with override_settings(
            MAILERS={
                "default": {
                    "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                    "OPTIONS": {"host": "localhost", "dkim": option},
                }
            }
        ):
            errors = [
                e
                for e in checks.run_checks(tags=["mail"])
                if e.id.startswith("django_mailkit.E")
            ]
        assert [e.id for e in errors] == ["django_mailkit.E008"], key
        assert errors[0].msg.startswith("MAILERS['default']['OPTIONS']['dkim']: ")
        assert expected in errors[0].msg, (expected, errors[0].msg)


@pytest.mark.django_db  # the model checks ask the database what it supports
def test_the_worker_does_not_start_with_a_bad_key():
    # mailkit_worker runs the system checks first: a bad key stops it at
    # startup, before it claims (and fails) any message.
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    option = {"domain": DOMAIN, "selector": SELECTOR, "private_key": "not a key"}
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "smtp"},
            },
            "smtp": {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": {"host": "localhost", "timeout": 5, "dkim": option},
            },
        },
    ):
        with pytest.raises(SystemCheckError, match="django_mailkit.E008"):
            call_command("mailkit_worker", "--once", skip_checks=False)


def test_a_key_given_as_private_key_file_is_never_echoed(private_pem):
    # The PEM text put in 'private_key_file' by mistake (an environment
    # variable holding the key): the error, a check message that ends up in
    # logs and CI output, must not carry the key.
    body = private_pem.splitlines()[1]
    for value in (private_pem, private_pem.replace("\n", "\r\n"), body * 40):
        option = {"domain": DOMAIN, "selector": SELECTOR, "private_key_file": value}
        with pytest.raises(InvalidMailer) as caught:
            build(option)
        text = str(caught.value)
        assert body not in text, text
        assert "\n" not in text
    assert "'private_key_file' (a value of 2560 characters, not shown)" in text
    with pytest.raises(InvalidMailer, match="pass the key itself as 'private_key'"):
        build({"domain": DOMAIN, "selector": SELECTOR, "private_key_file": private_pem})


def test_an_inconsistent_key_fails_the_check(rsa_key):
    # Parts that don't belong together (another modulus): dkimpy would sign,
    # and no receiver could verify.
    numbers = rsa_key.private_numbers()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pkcs1_pem(
        other.private_numbers().public_numbers.n,
        numbers.public_numbers.e,
        numbers.d,
        numbers.p,
        numbers.q,
    )
    with pytest.raises(InvalidMailer, match="is inconsistent"):
        build({"domain": DOMAIN, "selector": SELECTOR, "private_key": pem})


def test_dkim_without_dkimpy_installed_fails_the_check(monkeypatch, private_pem):
    monkeypatch.setitem(sys.modules, "dkim", None)  # import dkim: ImportError
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": {"host": "localhost", "dkim": dkim_option(private_pem)},
            }
        }
    ):
        errors = [
            e
            for e in checks.run_checks(tags=["mail"])
            if e.id.startswith("django_mailkit.E")
        ]
    assert [e.id for e in errors] == ["django_mailkit.E008"]
    assert "needs the dkimpy package" in errors[0].msg
    assert "pip install 'django-mailkit[dkim]'" in errors[0].msg


def test_one_click_unsubscribe_headers_are_signed(smtp_server, private_pem, dns):
    # RFC 8058 section 4: providers honour List-Unsubscribe-Post only under
    # a DKIM signature that covers both headers.
    from django_mailkit.unsubscribe import add_list_unsubscribe

    message = EmailMessage("News", "body", "news@example.com", ["ann@example.com"])
    add_list_unsubscribe(message, "https://example.com", mailer=None)
    with override_settings(
        MAILERS={"default": smtp_mailer(smtp_server, dkim_option(private_pem))}
    ):
        assert mailers.default.send_messages([message]) == 1
    [delivery] = smtp_server.deliveries
    assert verifies(delivery.data, dns)
    signed = signature_tags(delivery.data)["h"].split(":")
    assert "list-unsubscribe" in signed and "list-unsubscribe-post" in signed
