"""
The SMTP envelope: the paths a message goes from and to, as the server sees them.

Every address that becomes an SMTP path (``MAIL FROM:<...>``,
``RCPT TO:<...>``) goes through :func:`envelope_address`, whatever its source:
an ``EmailMessage``, a row of the outbox, a resend. It returns an
:class:`EnvelopeAddress`, the only type the SMTP session will write.

The rules (RFC 5321 section 4.1.2, RFC 6531):

* exactly one address (a display name or a comment around it is dropped, as
  Django does; a group of one address is that address);
* no control characters anywhere, NUL, CR and LF included;
* the local part is a dot-string (atoms joined by dots), or else is sent
  quoted. Quoted, it may hold spaces, commas and other printable characters,
  but never ``<`` or ``>``: RFC 5321 would allow them, but a server that
  looks for the path's end naively would read the rest as ESMTP parameters;
* the domain is host name labels (letters, digits, ``-``, ``_``) or an
  address literal such as ``[192.0.2.1]``; a non-ASCII domain is IDNA
  encoded. An address without a domain (``"webmaster"``) is allowed, as in
  Django;
* SMTPUTF8 is needed only for a non-ASCII local part.

Addresses given as ``bytes`` are refused with a ``TypeError``: Django decodes
them for the envelope but writes ``b'...'`` into the header, so the header
and the envelope would disagree. Decode them yourself.

Django's ``prep_address`` rejects every address that the email parser
reports a defect for, and lists of more than one address; this module rejects
at least the same, and more (see above).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader
from typing import Any, NamedTuple

from django.utils.encoding import punycode

from .exceptions import InvalidAddress

__all__ = [
    "Envelope",
    "EnvelopeAddress",
    "InvalidAddress",
    "envelope_address",
    "message_envelope",
    "stored_envelope",
]

# The only key that opens EnvelopeAddress's constructor.
_SEAL = object()


class EnvelopeAddress(str):
    """
    An address checked by :func:`envelope_address`: safe as an SMTP path.

    It is a ``str`` (the addr-spec, IDNA-encoded domain), so it can be stored,
    compared and used as a key like any address; only
    :func:`envelope_address` makes one, and the SMTP session refuses anything
    else. String methods return plain ``str``, which must be checked again.
    """

    __slots__ = ()

    def __new__(cls, value: str, *, _seal: object = None) -> EnvelopeAddress:
        if _seal is not _SEAL:
            raise TypeError(
                "EnvelopeAddress objects are made by envelope_address() only."
            )
        return super().__new__(cls, value)

    def __reduce__(self) -> Any:
        # Copies and pickles are checked again, never trusted.
        return (envelope_address, (str(self),))

    @property
    def smtputf8(self) -> bool:
        """Whether the server must offer SMTPUTF8 (a non-ASCII local part)."""
        return not self.isascii()


class Envelope(NamedTuple):
    """The envelope of one message: ``(sender, [recipients], needs_smtputf8)``."""

    sender: EnvelopeAddress
    recipients: list[EnvelopeAddress]
    #: Whether any path needs the server's SMTPUTF8 extension.
    smtputf8: bool


# Characters never allowed in any part of an address, display name included:
# the C0 and C1 controls (NUL, CR, LF, tab, ...), DEL, and the Unicode line
# and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# RFC 5322 atext; RFC 6531 adds any non-ASCII character (checked separately).
_ATEXT = "-A-Za-z0-9!#$%&'*+/=?^_`{|}~"
_DOT_STRING = re.compile(
    rf"[{_ATEXT}\x80-\U0010ffff]+(?:\.[{_ATEXT}\x80-\U0010ffff]+)*"
)
# What a quoted local part may hold: printable ASCII except < and > (see the
# module docstring), and non-ASCII (checked separately). " and \ are escaped.
_QUOTABLE = re.compile("[ -;=?-~\x80-\U0010ffff]*")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# The common shapes, "a@example.com" and "Name <a@example.com>" in plain
# ASCII: the full parser would give the same answer, much more slowly.
_ASCII_ATOM = r"[-A-Za-z0-9!#$%&'*+/=?^_`{|}~]+"
_SIMPLE = re.compile(
    rf"(?P<name>{_ASCII_ATOM}(?: {_ASCII_ATOM})* <)?"
    rf"(?P<local>{_ASCII_ATOM}(?:\.{_ASCII_ATOM})*)@(?P<domain>{_HOST.pattern})"
    r"(?(name)>)"
)


class _Reason(Exception):
    """Why an address is refused; the caller adds which address and where."""


def _printable(text: str) -> bool:
    """No control, format, surrogate, unassigned or separator characters."""
    return text.isascii() or all(
        unicodedata.category(char)[0] not in "CZ" for char in text if ord(char) > 127
    )


def _local_part(local: str) -> str:
    if not local:
        raise _Reason("the local part (before the @) is empty") from None
    if not _printable(local):
        raise _Reason("the local part has a non-printable character") from None
    if _DOT_STRING.fullmatch(local):
        return local
    if not _QUOTABLE.fullmatch(local):
        raise _Reason("the local part must not contain '<' or '>'") from None
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _domain(domain: str) -> str:
    if not domain:
        return ""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
                return f"[IPv6:{literal[5:]}]"
            ipaddress.IPv4Address(literal)
        except ValueError:
            raise _Reason("the domain is not a valid address literal") from None
        return domain
    if not domain.isascii():
        if not _printable(domain):
            raise _Reason("the domain has a non-printable character") from None
        try:
            domain = punycode(domain)
        except UnicodeError as exc:
            raise _Reason(f"the domain can't be IDNA-encoded ({exc})") from None
    if len(domain) > 253 or not _HOST.fullmatch(domain):
        raise _Reason(
            "the domain must be host name labels (letters, digits, '-') "
            "separated by dots"
        )
    return domain


@functools.lru_cache(maxsize=4096)
def _path(display_name: str, local: str, domain: str) -> EnvelopeAddress:
    """The SMTP path of a parsed mailbox; raises _Reason."""
    if any(_CONTROL.search(part) for part in (display_name, local, domain)):
        raise _Reason("it contains a control character or line break")
    local = _local_part(local)
    domain = _domain(domain)
    return EnvelopeAddress(f"{local}@{domain}" if domain else local, _seal=_SEAL)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> EnvelopeAddress:
    """The SMTP path of one address given as text; raises _Reason."""
    simple = _SIMPLE.fullmatch(text)
    if simple and len(simple["domain"]) <= 253 and "=?" not in text:
        # What _path("", local, domain) returns, without its checks: they
        # can't fail. The local part is ASCII atoms joined by dots (a
        # dot-string, sent as it is), the domain ASCII host name labels of
        # at most 253 characters, and neither holds a control character.
        # (Every address of a batch is new to the caches: this is half of
        # checking one. A test compares the two on many addresses.)
        # Not with "=?": the parser decodes RFC 2047 encoded words (in the
        # display name, say), and a CR LF, a NUL or an unknown charset in
        # one is a defect that refuses the address, as Django refuses it.
        return EnvelopeAddress(f"{simple['local']}@{simple['domain']}", _seal=_SEAL)
    if _CONTROL.search(text):
        raise _Reason("it contains a control character or line break")
    try:
        parsed = AddressHeader.value_parser(text)
    except (HeaderParseError, IndexError, ValueError):
        raise _Reason("it can't be parsed as an address") from None
    defects = {str(defect) for defect in parsed.all_defects}
    # Django allows local mailboxes such as "webmaster" (#15042), and a
    # non-ASCII local part is fine with SMTPUTF8 (checked at send time).
    defects -= {
        "addr-spec local part with no domain",
        "local-part contains non-ASCII characters)",
    }
    if defects:
        raise _Reason("; ".join(sorted(defects)).rstrip("."))
    mailboxes = parsed.all_mailboxes
    if len(mailboxes) != 1:
        raise _Reason("it must be a single address")
    mailbox = mailboxes[0]
    return _path(
        mailbox.display_name or "", mailbox.local_part or "", mailbox.domain or ""
    )


def envelope_address(value: Any, *, field: str = "address") -> EnvelopeAddress:
    """
    Return ``value`` as an SMTP path, or raise ``InvalidAddress``.

    ``value`` is an address string (``"a@example.com"``, ``"Name
    <a@example.com>"``), an ``email.headerregistry.Address``, a lazy string,
    or an ``EnvelopeAddress`` (returned as it is). ``field`` names where it
    came from, for the error message. ``InvalidAddress`` is a ``ValueError``,
    as Django raises; bytes raise ``TypeError``.
    """
    if type(value) is EnvelopeAddress:
        return value
    if type(value) is str:
        # The common case (stored rows, most arguments), the same as below
        # without the tests that can't match a plain str.
        try:
            return _parse(value)
        except _Reason as reason:
            raise InvalidAddress(value, field=field, reason=str(reason)) from None
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(
            f"Invalid address {bytes(value)!r} ({field}): addresses must be str "
            "or email.headerregistry.Address, not bytes; decode them first."
        )
    try:
        if isinstance(value, Address):
            # Each part as given: Address() itself checks only for CR and LF.
            # Exactly their text, whatever a str subclass's == and hash() do.
            return _path(
                str.__str__(value.display_name),
                str.__str__(value.username),
                str.__str__(value.domain),
            )
        value = str(value)  # may be a lazy translation string
        # Exactly the text: a str subclass's own == and hash() (say, ignoring
        # case) must not match what _parse() remembered for another address.
        return _parse(str.__str__(value))
    except _Reason as reason:
        raise InvalidAddress(value, field=field, reason=str(reason)) from None


def message_envelope(message: Any) -> Envelope:
    """
    Return the envelope of ``message`` (any EmailMessage-like object).

    The sender is ``from_email``, the recipients ``recipients()`` (to, cc
    and bcc), each checked and in order, duplicates dropped.
    """
    sender = envelope_address(message.from_email, field="from_email")
    recipients = list(
        dict.fromkeys(
            envelope_address(value, field="recipients")
            for value in message.recipients()
        )
    )
    smtputf8 = sender.smtputf8 or any(r.smtputf8 for r in recipients)
    return Envelope(sender, recipients, smtputf8)


def stored_envelope(
    sender: Any, recipients: Iterable[Any]
) -> tuple[Envelope, dict[str, str]]:
    """
    Check a stored envelope: the sender, and each recipient on its own.

    Returns the envelope of the valid recipients, and why each invalid one
    is refused (keyed by the stored value, as text). A stored address must
    be a bare addr-spec, as the outbox stores it (a Unicode domain is
    accepted and IDNA-encoded). Raises ``InvalidAddress`` for a bad sender
    and ``TypeError`` when ``recipients`` is not a list of strings.
    """
    path = _stored(sender, "from_email")
    if type(recipients) is not list and (
        isinstance(recipients, str | bytes) or not isinstance(recipients, Iterable)
    ):
        raise TypeError(
            f"Stored recipients must be a list of addresses, not "
            f"{type(recipients).__name__} ({recipients!r:.80})."
        )
    valid: dict[EnvelopeAddress, None] = {}
    invalid: dict[str, str] = {}
    for value in recipients:
        try:
            valid[_stored(value, "recipients")] = None
        except (InvalidAddress, TypeError) as exc:
            invalid[str(value)] = str(exc)
    paths = list(valid)
    smtputf8 = path.smtputf8 or any(r.smtputf8 for r in paths)
    return Envelope(path, paths, smtputf8), invalid


def _stored(value: Any, field: str) -> EnvelopeAddress:
    if not isinstance(value, str):
        raise TypeError(
            f"Invalid address {value!r} ({field}): a stored address must be a "
            f"string, not {type(value).__name__}."
        )
    path = envelope_address(value, field=field)
    if path != value and _idna_form(value) != path:
        raise InvalidAddress(
            value,
            field=field,
            reason=f"a stored address must be the bare addr-spec {str(path)!r}",
        )
    return path


def _idna_form(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or domain.isascii():
        return value
    try:
        return f"{local}@{punycode(domain)}"
    except UnicodeError:
        return value
