"""
The envelope module: which addresses may become SMTP paths, and as what.

The end-to-end tests (API, stored rows, resend against a real server) are in
``test_hostile_addresses.py``; this is the table of the function itself.
"""

from __future__ import annotations

import copy
import pickle
from email.headerregistry import Address

import pytest
from django.utils.functional import lazy
from hypothesis import example, given, settings
from hypothesis import strategies as st

from django_mailkit.envelope import (
    EnvelopeAddress,
    InvalidAddress,
    envelope_address,
    message_envelope,
    stored_envelope,
)
from django_mailkit.message import EmailMessage

ACCEPTED = [
    ("a@example.com", "a@example.com"),
    ("Name <a@example.com>", "a@example.com"),
    ("a@example.com (comment)", "a@example.com"),
    ("(comment) a@example.com", "a@example.com"),
    ('"john doe"@example.com', '"john doe"@example.com'),
    ('"a,b"@example.com', '"a,b"@example.com'),
    ("group: a@example.com;", "a@example.com"),
    ("a@[192.0.2.1]", "a@[192.0.2.1]"),
    ("a@[IPv6:2001:db8::1]", "a@[IPv6:2001:db8::1]"),
    ("webmaster", "webmaster"),
    ("a@exämple.com", "a@xn--exmple-cua.com"),
    ("jörg@example.com", "jörg@example.com"),
    (Address("Name, Inc.", "a", "example.com"), "a@example.com"),
    (Address("", "a b", "example.com"), '"a b"@example.com'),
    (Address("", 'a"b\\c', "example.com"), '"a\\"b\\\\c"@example.com'),
    (Address("", "a", "exämple.com"), "a@xn--exmple-cua.com"),
]

REFUSED = [
    ("a@example.com\r\nRCPT TO:<evil@example.net>", "control character"),
    ("a@example.com\nRCPT TO:<evil@example.net>", "control character"),
    ("a@example.com\rX", "control character"),
    ("a@exa\x00mple.com", "control character"),
    ("a\x00@example.com", "control character"),
    ("a@example.com\x85", "control character"),
    ("a@example.com\u2028", "control character"),
    ("a\tb@example.com", "control character"),
    ("a@example.com> BODY=8BITMIME", "invalid address"),
    ("<a@example.com> SIZE=1", "invalid address"),
    ("a@example.com, evil@example.net", "single address"),
    ("group: a@example.com, b@example.net;", "single address"),
    ("undisclosed-recipients:;", "single address"),
    ("", "single address"),
    ("<@route.example:user@example.com>", "route"),
    ("a@exa mple.com", "invalid address"),
    ("a b@example.com", "local-part is not dot-atom"),
    ("<a@example.com", "missing trailing '>'"),
    ('"a>b"@example.com', "'<' or '>'"),
    ('"a<b"@example.com', "'<' or '>'"),
    ("a@", ""),  # the parser's words differ between Pythons
    ("@example.com", "invalid address"),
    ("a@[192.0.2]", "address literal"),
    ("a@-example.com", "host name labels"),
    (Address("", "bounce", "example.com> BODY=8BITMIME"), "host name labels"),
    (Address("", "a", "example.com, victim@evil.example"), "host name labels"),
    (Address("", "a", "exa mple.com"), "host name labels"),
    (Address("", "a", "example.com>"), "host name labels"),
    (Address("", "a>", "example.com"), "'<' or '>'"),
    (Address("", "<a", "example.com"), "'<' or '>'"),
    (Address("Na\x00me", "a", "example.com"), "control character"),
    (Address("", "a\x00", "example.com"), "control character"),
    (Address("", "a\x7f", "example.com"), "control character"),
    (Address("", "", "example.com"), "local part"),
    (Address("", "a\u200e", "example.com"), "non-printable"),
    (Address("", "a", "ex\u200eample.com"), "non-printable"),
]


@pytest.mark.parametrize(("value", "path"), ACCEPTED, ids=repr)
def test_accepted(value, path):
    result = envelope_address(value, field="to")
    assert type(result) is EnvelopeAddress
    assert result == path
    assert result.smtputf8 == (not path.isascii())


@pytest.mark.parametrize(("value", "reason"), REFUSED, ids=repr)
def test_refused_with_a_message_naming_the_address_and_field(value, reason):
    with pytest.raises(InvalidAddress) as caught:
        envelope_address(value, field="cc")
    message = str(caught.value)
    # Django's sentence first, then where the address came from.
    assert message.startswith(f"Invalid address {value!r}: ")
    assert message.endswith(" (cc).")
    assert reason in message
    assert isinstance(caught.value, ValueError)
    assert "\n" not in message and "\r" not in message


def test_bytes_are_a_type_error():
    with pytest.raises(TypeError, match=r"^Invalid address b'x@example.com' \(to\)"):
        envelope_address(b"x@example.com", field="to")


def test_lazy_strings_are_accepted():
    assert envelope_address(lazy(lambda: "a@example.com", str)()) == "a@example.com"


def test_only_envelope_address_makes_an_envelope_address():
    with pytest.raises(TypeError, match="envelope_address"):
        EnvelopeAddress("evil@example.com\r\nDATA")
    # Derived strings are plain str, which the session refuses.
    path = envelope_address("a@example.com")
    assert type(path.upper()) is str
    assert type(path + "\r\nDATA") is str
    # Copies and pickles are checked again on the way back.
    assert type(copy.deepcopy(path)) is EnvelopeAddress
    assert type(pickle.loads(pickle.dumps(path))) is EnvelopeAddress


def test_message_envelope():
    message = EmailMessage(
        from_email="Sender <from@exämple.com>",
        to=["a@example.com", "A again <a@example.com>"],
        cc=["jörg@example.com"],
        bcc=[Address("", "b", "example.com")],
    )
    sender, recipients, smtputf8 = message_envelope(message)
    assert sender == "from@xn--exmple-cua.com"
    assert recipients == ["a@example.com", "jörg@example.com", "b@example.com"]
    assert smtputf8 is True
    message.cc = []
    assert message_envelope(message).smtputf8 is False


def test_message_envelope_names_the_field():
    message = EmailMessage(from_email="a@example.com> X", to=["b@example.com"])
    with pytest.raises(InvalidAddress, match=r"\(from_email\)\.$"):
        message_envelope(message)
    message = EmailMessage(to=[Address("", "b", "example.com> X")])
    with pytest.raises(InvalidAddress, match=r"\(recipients\)\.$"):
        message_envelope(message)


def test_stored_envelope_refuses_each_bad_recipient_alone():
    envelope, invalid = stored_envelope(
        "from@example.com",
        [
            "a@example.com",
            "evil@example.com\r\nRCPT TO:<x@example.net>",
            "Name <b@example.com>",  # not what the outbox stores
            "c@exämple.com",  # a Unicode domain is fine (IDNA)
            "d@example.com (comment)",
            5,
        ],
    )
    assert envelope.recipients == ["a@example.com", "c@xn--exmple-cua.com"]
    assert all(type(r) is EnvelopeAddress for r in envelope.recipients)
    assert list(invalid) == [
        "evil@example.com\r\nRCPT TO:<x@example.net>",
        "Name <b@example.com>",
        "d@example.com (comment)",
        "5",
    ]
    assert "control character" in invalid[list(invalid)[0]]
    assert "bare addr-spec 'b@example.com'" in invalid["Name <b@example.com>"]


def test_stored_envelope_bad_sender_or_recipient_list():
    with pytest.raises(InvalidAddress, match=r"\(from_email\)"):
        stored_envelope("from@example.com> BODY=8BITMIME", ["a@example.com"])
    # A string is not a list of addresses (it would be one per character).
    with pytest.raises(TypeError, match="list of addresses"):
        stored_envelope("from@example.com", "a@example.com")


_ATOM = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=8)
_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)


@given(
    name=st.lists(_ATOM, max_size=3),
    local=st.lists(_ATOM, min_size=1, max_size=3),
    domain=st.lists(_LABEL, min_size=1, max_size=3),
)
@settings(max_examples=200, deadline=None)
# RFC 2047 encoded words look like atoms, but the parser decodes them: a
# line break or an unknown charset inside refuses the address both ways.
@example(name=["=?utf-8?q?a=0D=0Ab?="], local=["a"], domain=["example"])
@example(name=[], local=["=?a", "?q?b?="], domain=["x"])
def test_fast_path_agrees_with_the_full_parser(name, local, domain):
    addr_spec = f"{'.'.join(local)}@{'.'.join(domain)}"
    text = f"{' '.join(name)} <{addr_spec}>" if name else addr_spec
    # A trailing space keeps the text off the fast path.
    assert _path_or_reason(text) == _path_or_reason(text + " ")
    if "=?" not in text:
        assert envelope_address(text) == addr_spec


def _path_or_reason(text):
    try:
        return envelope_address(text)
    except InvalidAddress as exc:
        return exc.reason
