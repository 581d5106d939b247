"""
Email messages: Django 6.1's EmailMessage API on every supported Django.

Messages are built with Python's modern email API (``email.message`` with an
``email.policy.EmailPolicy``), which encodes non-ASCII headers, folds long
ones and chooses safe transfer encodings. Addresses are always handled as
``email.headerregistry.Address`` objects, never formatted from strings.
"""

from __future__ import annotations

import copy
import email
import email.message
import email.policy
import functools
import mimetypes
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader, Group
from email.utils import make_msgid
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import django
from django.conf import settings
from django.core.mail import message as django_message
from django.core.mail.utils import DNS_NAME
from django.utils.encoding import force_bytes, force_str, punycode
from django.utils.functional import Promise
from django.utils.timezone import get_current_timezone

from . import deprecation, rendering
from .envelope import envelope_address
from .exceptions import InvalidAddress

# Django 6.1 made BadHeaderError plain ValueError (5.2 and 6.0 subclass it).
_DjangoBadHeaderError: type[ValueError] = getattr(
    django_message, "BadHeaderError", ValueError
)

if TYPE_CHECKING:
    from .backends.base import BaseEmailBackend

__all__ = [
    "DEFAULT_ATTACHMENT_MIME_TYPE",
    "DNS_NAME",
    "BadHeaderError",
    "EmailAlternative",
    "EmailAttachment",
    "EmailMessage",
    "EmailMultiAlternatives",
    "MIMEMessage",
    "make_msgid",
]

#: MIME type of an attachment whose type is neither given nor guessable.
DEFAULT_ATTACHMENT_MIME_TYPE = "application/octet-stream"

# Every character that str.splitlines() treats as a line boundary: any of
# them in a header value could start a new header somewhere down the line.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# RFC 5322 field names: printable US-ASCII except the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")

# Headers whose value is a list of addresses (RFC 5322 3.6.2/3.6.3/3.6.6).
_ADDRESS_HEADERS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
    }
)
# Headers computed from the message structure: overriding them would
# contradict the body.
_STRUCTURAL_HEADERS = frozenset(
    {"content-type", "content-transfer-encoding", "mime-version"}
)
# Defects that don't make an address unusable. Django has always allowed
# local mailboxes such as "webmaster" (no domain), and a non-ASCII local part
# is valid once SMTPUTF8 is in play (the SMTP backend checks that).
_TOLERATED_DEFECTS = frozenset(
    {
        "addr-spec local part with no domain",
        "local-part contains non-ASCII characters)",
    }
)


class BadHeaderError(_DjangoBadHeaderError):  # type: ignore[misc,valid-type]
    """
    A header name or value is unsafe (for example, contains a line break).

    A ValueError, as Django 6.1 raises; on Django 5.2 and 6.0 also Django's
    own ``BadHeaderError``, so existing ``except`` clauses catch it.
    """


class EmailAttachment(NamedTuple):
    """An attachment given as data: filename, content and MIME type."""

    filename: str | None
    content: Any
    mimetype: str


class EmailAlternative(NamedTuple):
    """An alternative rendering of the body, such as an HTML version."""

    content: Any
    mimetype: str


class MIMEMessage(email.message.EmailMessage):
    """
    The ``email.message.EmailMessage`` returned by ``EmailMessage.message()``.

    It also accepts ``linesep`` when serialized, as the legacy MIME classes
    did, because Django 5.2's SMTP backend calls ``as_bytes(linesep="\\r\\n")``.
    """

    # The email package's list of (name, header object); typeshed omits it.
    _headers: list[tuple[str, Any]]

    def __setitem__(self, name: str, val: Any) -> None:
        """Set a header, as the ``email`` package does (see registry_class())."""
        cls = rendering.registry_class(self.policy, name)
        if cls is None or (isinstance(val, str) and len(val.splitlines()) > 1):
            # The email package's own way, and its own error for line breaks.
            super().__setitem__(name, val)
            return
        max_count = cls.max_count  # type: ignore[attr-defined]
        if max_count:
            lname = name.lower()
            found = sum(1 for key, _ in self._headers if key.lower() == lname)
            if found >= max_count:
                super().__setitem__(name, val)  # raises the email package's error
                return
        if not (hasattr(val, "name") and val.name.lower() == name.lower()):
            val = rendering.new_header(cls, name, val)
        self._headers.append((name, val))

    def replace_header(self, _name: str, _value: Any) -> None:
        """Replace the first ``_name`` header, keeping its place and its name."""
        if isinstance(_value, str) and len(_value.splitlines()) <= 1:
            lname = _name.lower()
            for key, _ in self._headers:
                if key.lower() == lname:
                    cls = rendering.registry_class(self.policy, key)
                    if cls is not None:
                        _value = rendering.new_header(cls, key, _value)
                    break
        super().replace_header(_name, _value)

    def as_bytes(
        self,
        unixfrom: bool = False,
        policy: email.policy.Policy | None = None,
        linesep: str | None = None,
    ) -> bytes:
        """Serialize the message to bytes, optionally with another line end."""
        if linesep is not None:
            policy = (policy or self.policy).clone(linesep=linesep)
        return super().as_bytes(unixfrom=unixfrom, policy=policy)

    def as_string(
        self,
        unixfrom: bool = False,
        maxheaderlen: int | None = None,
        policy: email.policy.Policy | None = None,
        linesep: str | None = None,
    ) -> str:
        """Serialize the message to text, optionally with another line end."""
        if linesep is not None:
            policy = (policy or self.policy).clone(linesep=linesep)
        return super().as_string(
            unixfrom=unixfrom, maxheaderlen=maxheaderlen, policy=policy
        )


def check_header(name: str, value: str) -> None:
    """Raise BadHeaderError if ``value`` could inject a header into ``name``."""
    if _LINE_BREAK.search(value):
        # Python's own words (Django 6.1 lets its ValueError through).
        raise BadHeaderError(
            "Header values may not contain linefeed or carriage return "
            f"characters (header {name!r}: {value!r})."
        )


def _check_header_name(name: Any) -> str:
    if not isinstance(name, str) or not _FIELD_NAME.match(name):
        raise BadHeaderError(
            f"Invalid header name {name!r}: use printable ASCII without "
            "spaces or colons."
        )
    return name


class _AddressError(Exception):
    """Why an address doesn't parse (the caller says where it came from)."""


def _parse_address_list(text: str) -> Any:
    try:
        parsed = AddressHeader.value_parser(text)
    except (HeaderParseError, IndexError, ValueError) as exc:
        raise _AddressError(str(exc)) from exc
    defects = {str(defect) for defect in parsed.all_defects} - _TOLERATED_DEFECTS
    if defects:
        raise _AddressError(f"{'; '.join(sorted(defects))}.")
    return parsed


def _mailbox_address(mailbox: Any) -> Address:
    return Address(
        display_name=mailbox.display_name or "",
        username=mailbox.local_part or "",
        domain=mailbox.domain or "",
    )


def to_address(value: Any, *, field: str) -> Address:
    """
    Return ``value`` (an address string or Address) as a single Address.

    ``field`` names where the address came from, for error messages.
    """
    if isinstance(value, Address):
        parts = (value.display_name, value.username, value.domain)
        for part in parts:
            check_header(field, part)
            _check_nul(value, part, field)
        if any(type(part) is not str for part in parts):
            # Parts of a str subclass: the caches must see exactly their text.
            plain = Address(*(str.__str__(part) for part in parts))
            return _checked_spec(plain, value, field)
        return _checked_spec(value, value, field)
    text = str(value)  # may be a lazy translation string
    if type(text) is not str:
        # A str subclass may define == and hash() as it likes (say, ignoring
        # case): the caches below must see exactly the text it holds.
        text = str.__str__(text)
    address = _VALID_ADDRESSES.get(text)
    if address is not None:
        return address
    check_header(field, text)
    _check_nul(text, text, field)
    try:
        address = _parse_mailbox(text)
    except _AddressError as exc:
        raise ValueError(f"Invalid address {text!r} in {field}: {exc}") from None
    address = _checked_spec(address, text, field)
    # Only what passed every check: a bad address fails every time.
    if len(_VALID_ADDRESSES) >= 4096:
        _VALID_ADDRESSES.clear()
    _VALID_ADDRESSES[text] = address
    return address


# Address strings that passed to_address(), and their Address (immutable).
_VALID_ADDRESSES: dict[str, Address] = {}


def _check_nul(value: Any, part: str, field: str) -> None:
    # Python writes a NUL as it is; no mail system accepts it.
    if "\x00" in part:
        raise InvalidAddress(value, field=field, reason="it contains NUL")


def _checked_spec(address: Address, value: Any, field: str) -> Address:
    """
    Return ``address`` if its addr-spec is one the SMTP envelope accepts.

    A header gets the same addresses as the envelope: a domain such as
    ``"example.com, victim@example.net"`` would add a recipient to the header.
    """
    reason = _spec_problem(address.username, address.domain)
    if reason:
        raise InvalidAddress(value, field=field, reason=reason)
    return address


@functools.lru_cache(maxsize=4096)
def _spec_problem(username: str, domain: str) -> str:
    try:
        envelope_address(Address(username=username, domain=domain))
    except InvalidAddress as exc:
        return exc.reason
    return ""


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_ADDRESS = re.compile(
    rf"(?:(?P<name>{_ATOM}(?: {_ATOM})*) <)?"
    rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})*)"
    r"(?(name)>)\Z"
)


@functools.lru_cache(maxsize=4096)
def _parse_mailbox(text: str) -> Address:
    """
    Parse one address; cached, so a message's addresses (and a bulk
    mailing's sender) are parsed once, for the headers and the envelope.
    """
    # The common shapes ("a@b.c", "Name <a@b.c>") skip the full parser,
    # which gives the same result for them.
    match = _SIMPLE_ADDRESS.match(text)
    if match:
        return Address(
            display_name=match["name"] or "",
            username=match["local"],
            domain=match["domain"],
        )
    mailboxes = _parse_address_list(text).all_mailboxes
    if len(mailboxes) != 1:
        raise _AddressError("give exactly one address per list item.")
    return _mailbox_address(mailboxes[0])


def _header_groups(text: str, *, field: str) -> list[Group]:
    """
    Return a whole address header value as Groups of Addresses.

    Unlike a list item, a header value given as one string (in ``headers``)
    may list several addresses, or groups such as ``undisclosed-recipients:;``.
    """
    check_header(field, text)
    _check_nul(text, text, field)
    try:
        parsed = _parse_address_list(text)
    except _AddressError as exc:
        raise ValueError(f"Invalid address {text!r} in {field}: {exc}") from None
    return [
        Group(
            item.display_name,
            [
                _checked_spec(_mailbox_address(mb), text, field)
                for mb in item.all_mailboxes
            ],
        )
        for item in parsed.addresses
    ]


def _ascii_domain(address: Address) -> Address:
    if address.domain.isascii():
        return address
    return Address(
        display_name=address.display_name,
        username=address.username,
        domain=punycode(address.domain),
    )


def _as_list(value: Any, argument: str) -> list[Any]:
    if not value:
        return []
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f'"{argument}" argument must be a list or tuple')
    return list(value)


def _text(value: Any, encoding: str) -> str:
    # Bytes that aren't valid in ``encoding`` become surrogates here and make
    # encoding the body fail (UnicodeEncodeError), as in Django: a message
    # is never sent with its text silently altered.
    return force_str(value, encoding=encoding, errors="surrogateescape")


class EmailMessage:
    """An email message: subject, body, addresses, headers and attachments."""

    #: Subtype of the ``text/*`` body part.
    content_subtype = "plain"
    #: Subtype of the ``multipart/*`` container that holds the attachments.
    mixed_subtype = "mixed"
    #: Charset for the body and text attachments; None means DEFAULT_CHARSET.
    encoding: str | None = None

    # Set by the SMTP backend on every send, for callers to inspect.
    #: The delivery error for this message, or None when the server took it.
    smtp_error: BaseException | None = None
    #: The recipients the server refused: address -> (code, reply text).
    #: Read-only and empty until the message is sent; each send assigns a
    #: new dict.
    refused_recipients: Mapping[str, tuple[int, str]] = MappingProxyType({})

    #: Through an outbox mailer: how urgent the message is, ``"bulk"``,
    #: ``"default"`` or ``"high"``; None takes the mailer's ``priority``
    #: OPTION. Workers send the most urgent due messages first. Other
    #: backends send at once and ignore it.
    priority: str | None = None

    @deprecation.keyword_only_after(
        "bcc", "connection", "attachments", "headers", "cc", "reply_to"
    )
    def __init__(
        self,
        subject: Any = "",
        body: Any = "",
        from_email: str | Address | None = None,
        to: Sequence[str | Address] | None = None,
        *,
        bcc: Sequence[str | Address] | None = None,
        connection: BaseEmailBackend | None = None,
        attachments: Iterable[Any] | None = None,
        headers: dict[str, Any] | None = None,
        cc: Sequence[str | Address] | None = None,
        reply_to: Sequence[str | Address] | None = None,
    ) -> None:
        self.to = _as_list(to, "to")
        self.cc = _as_list(cc, "cc")
        self.bcc = _as_list(bcc, "bcc")
        self.reply_to = _as_list(reply_to, "reply_to")
        self.from_email = from_email or settings.DEFAULT_FROM_EMAIL
        self.subject = subject
        self.body = body or ""
        self.attachments: list[Any] = []
        for attachment in attachments or ():
            if isinstance(attachment, email.message.Message):
                self.attach(attachment)
            else:
                self.attach(*attachment)
        self.extra_headers: dict[str, Any] = dict(headers or {})
        if connection is not None:
            deprecation.warn(deprecation.CONNECTION_ARG)  # RemovedInDjango2028Warning
        self._connection = connection  # RemovedInDjango2028Warning

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} subject={str(self.subject)!r} "
            f"to={[str(a) for a in self.to]!r}>"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> EmailMessage:
        # A connection (a socket, a lock) is not part of the message: the
        # copy shares it rather than failing to copy it.
        clone = copy.copy(self)
        memo[id(self)] = clone
        for name, value in vars(self).items():
            if name != "_connection":
                setattr(clone, name, copy.deepcopy(value, memo))
        return clone

    # RemovedInDjango2028Warning: the connection property.
    @property
    def connection(self) -> BaseEmailBackend | None:
        deprecation.warn(deprecation.CONNECTION_ATTR_GET)
        return self._connection

    @connection.setter
    def connection(self, value: BaseEmailBackend | None) -> None:
        deprecation.warn(deprecation.CONNECTION_ATTR_SET)
        self._connection = value

    @property
    def charset(self) -> str:
        """The charset used for text parts: ``encoding`` or DEFAULT_CHARSET."""
        return self.encoding or settings.DEFAULT_CHARSET

    def recipients(self) -> list[str | Address]:
        """Return every envelope recipient: the to, cc and bcc addresses."""
        return [address for address in (*self.to, *self.cc, *self.bcc) if address]

    def message(
        self, *, policy: email.policy.Policy = email.policy.default
    ) -> MIMEMessage:
        """Build this message as a Python ``email.message.EmailMessage``."""
        msg = MIMEMessage(policy=policy)
        self._add_headers(msg)
        self._add_bodies(msg)
        self._add_attachments(msg)
        return msg

    def send(self, fail_silently: bool = False, *, using: str | None = None) -> int:
        """Send the message; return 1 if it was sent, else 0."""
        if not self.recipients():
            # Nobody to send to: don't even open a connection.
            return 0
        from .sending import backend_for

        if hasattr(self, "get_connection"):
            # As Django 6.0+: a subclass's get_connection() would be silently
            # bypassed, changing where its mail goes.
            raise AttributeError(
                "EmailMessage no longer supports the undocumented "
                "get_connection() method."
            )
        backend = backend_for(
            using=using,
            connection=self._connection,
            fail_silently=fail_silently,
            warn_connection=False,
        )
        return backend.send_messages([self]) or 0

    def attach(
        self,
        filename: str | email.message.Message | None = None,
        content: Any = None,
        mimetype: str | None = None,
    ) -> None:
        """
        Attach a file's content, or a ready-made MIME part.

        Call it as ``attach(filename, content, mimetype=None)`` or as
        ``attach(mimepart)``. Without a mimetype, one is guessed from the
        filename. Bytes given for a ``text/*`` type are decoded as UTF-8;
        when that fails the type becomes application/octet-stream and the
        bytes are attached unchanged.
        """
        if isinstance(filename, email.message.Message):
            modern = isinstance(filename, email.message.MIMEPart)
            if not modern:
                # RemovedInDjango2028Warning: legacy email.mime classes.
                deprecation.warn(deprecation.MIMEBASE_ATTACHMENT)
            if content is not None or mimetype is not None:
                raise ValueError(
                    "content and mimetype must not be given when a "
                    f"{'MIMEPart' if modern else 'MIMEBase'} instance is provided."
                )
            self.attachments.append(filename)
            return
        if content is None:
            raise ValueError(
                f"content must be provided. (Attachment filename: {filename!r}.)"
            )
        if mimetype is None:
            guessed = mimetypes.guess_type(filename)[0] if filename else None
            mimetype = guessed or DEFAULT_ATTACHMENT_MIME_TYPE
        content, mimetype = _decode_text(content, mimetype, filename)
        self.attachments.append(EmailAttachment(filename, content, mimetype))

    def attach_file(self, path: str | Path, mimetype: str | None = None) -> None:
        """Attach the file at ``path``; guess its MIME type if not given."""
        path = Path(path)
        self.attach(path.name, path.read_bytes(), mimetype)

    # Building the MIME tree.

    def header_items(self, *, ascii_only: bool = True) -> list[tuple[str, Any]]:
        """
        Return the headers to write, in order, as ``(name, value)`` pairs.

        A value is checked text, a datetime (Date) or a list of
        ``email.headerregistry.Group`` (address headers; ``ascii_only``
        punycodes their domains). ``message()`` and the fast renderer both
        write exactly these.
        """
        extra: dict[str, tuple[str, Any]] = {}
        for name, value in self.extra_headers.items():
            key = _check_header_name(name).lower()
            if key == "bcc":
                raise ValueError(
                    'Bcc is not a valid email header. Use the "bcc" argument '
                    "to specify blind carbon copy recipients."
                )
            if key in _STRUCTURAL_HEADERS:
                raise ValueError(
                    f"Header {name!r} cannot be set through headers: it is "
                    "computed from the message structure."
                )
            extra[key] = (name, value)

        items: list[tuple[str, Any]] = []
        if "subject" not in extra:
            items.append(
                ("Subject", self._header_value("Subject", self.subject, ascii_only))
            )
        for name, value in (
            ("From", [self.from_email]),
            ("To", self.to),
            ("Cc", self.cc),
            ("Reply-To", self.reply_to),
        ):
            if name.lower() not in extra and value:
                items.append((name, self._header_value(name, value, ascii_only)))
        if "date" not in extra:
            tz = get_current_timezone() if settings.EMAIL_USE_LOCALTIME else UTC
            items.append(("Date", datetime.now(tz).replace(microsecond=0)))
        if "message-id" not in extra:
            # Read at call time: pytest-django replaces Django's DNS_NAME to
            # keep getfqdn() out of tests.
            # (django-stubs omit this module's import of DNS_NAME.)
            dns_name = django_message.DNS_NAME  # type: ignore[attr-defined]
            items.append(("Message-ID", make_msgid(domain=str(dns_name))))
        for name, value in extra.values():
            items.append((name, self._header_value(name, value, ascii_only)))
        # An address header whose every item was empty is left out.
        return [(name, value) for name, value in items if value != []]

    def _header_value(self, name: str, value: Any, ascii_only: bool) -> Any:
        key = name.lower()
        if key in _ADDRESS_HEADERS:
            if isinstance(value, str | Promise):
                groups = _header_groups(str(value), field=name)
            else:
                if isinstance(value, Address) or not isinstance(value, Iterable):
                    value = [value]
                # Empty items are skipped, as recipients() skips them.
                groups = [
                    Group(None, [to_address(item, field=name)])
                    for item in value
                    if item
                ]
            if ascii_only and not all(
                a.domain.isascii() for g in groups for a in g.addresses
            ):
                groups = [
                    Group(g.display_name, [_ascii_domain(a) for a in g.addresses])
                    for g in groups
                ]
            return groups
        if isinstance(value, datetime) and key == "date":
            return value
        text = str(value)
        check_header(name, text)
        return text

    def _add_headers(self, msg: MIMEMessage) -> None:
        ascii_only = not getattr(msg.policy, "utf8", False)
        for name, value in self.header_items(ascii_only=ascii_only):
            # Folded as on the fast route: see rendering.py.
            msg[name] = rendering.header(msg.policy, name, value)

    def _add_bodies(self, msg: MIMEMessage) -> None:
        if self.body or not self.attachments:
            msg.set_content(
                _text(self.body, self.charset),
                subtype=self.content_subtype,
                charset=self.charset,
            )

    def _add_attachments(self, msg: MIMEMessage) -> None:
        if not self.attachments:
            return
        msg.make_mixed()
        for attachment in self.attachments:
            if isinstance(attachment, email.message.Message):
                # typeshed wants the container's own class; any Message works.
                msg.attach(attachment)  # type: ignore[arg-type]
            else:
                self._add_attachment(msg, *attachment)
        if self.mixed_subtype != "mixed":
            msg.set_type(f"multipart/{self.mixed_subtype}")

    def _add_attachment(
        self, msg: MIMEMessage, filename: str | None, content: Any, mimetype: str
    ) -> None:
        # Attachments appended to self.attachments directly skip attach().
        content, mimetype = _decode_text(content, mimetype, filename)
        maintype, subtype = mimetype.split("/", 1)
        if maintype == "text":
            msg.add_attachment(
                _text(content, self.charset),
                subtype=subtype,
                filename=filename,
                charset=self.charset,
            )
        elif maintype == "message":
            msg.add_attachment(
                _as_mime(content, msg.policy), subtype=subtype, filename=filename
            )
        else:
            msg.add_attachment(
                bytes(content)
                if isinstance(content, bytes | bytearray | memoryview)
                else force_bytes(content, encoding=self.charset),
                maintype=maintype,
                subtype=subtype,
                filename=filename,
            )


class EmailMultiAlternatives(EmailMessage):
    """An EmailMessage with alternative renderings of its body, such as HTML."""

    #: Subtype of the ``multipart/*`` container that holds the alternatives.
    alternative_subtype = "alternative"

    @deprecation.keyword_only_after(
        "bcc",
        "connection",
        "attachments",
        "headers",
        "alternatives",
        "cc",
        "reply_to",
    )
    def __init__(
        self,
        subject: Any = "",
        body: Any = "",
        from_email: str | Address | None = None,
        to: Sequence[str | Address] | None = None,
        *,
        bcc: Sequence[str | Address] | None = None,
        connection: BaseEmailBackend | None = None,
        attachments: Iterable[Any] | None = None,
        headers: dict[str, Any] | None = None,
        alternatives: Iterable[tuple[Any, str]] | None = None,
        cc: Sequence[str | Address] | None = None,
        reply_to: Sequence[str | Address] | None = None,
    ) -> None:
        super().__init__(
            subject,
            body,
            from_email,
            to,
            bcc=bcc,
            connection=connection,
            attachments=attachments,
            headers=headers,
            cc=cc,
            reply_to=reply_to,
        )
        self.alternatives: list[EmailAlternative] = []
        for content, mimetype in alternatives or ():
            self.attach_alternative(content, mimetype)

    def attach_alternative(self, content: Any, mimetype: str) -> None:
        """Add an alternative rendering of the body, e.g. ``"text/html"``."""
        if content is None or mimetype is None:
            raise ValueError("Both content and mimetype must be provided.")
        split_mimetype(mimetype, "alternative")
        self.alternatives.append(EmailAlternative(content, mimetype))

    def body_contains(self, text: str) -> bool:
        """Return whether ``text`` is in the body and every text/* alternative."""
        if text not in self.body:
            return False
        for content, mimetype in self.alternatives:
            if mimetype.startswith("text/"):
                if isinstance(content, bytes):
                    content = content.decode(errors="replace")
                if text not in content:
                    return False
        return True

    def _add_bodies(self, msg: MIMEMessage) -> None:
        if self.body or not self.alternatives:
            super()._add_bodies(msg)
        if not self.alternatives:
            return
        msg.make_alternative()
        for content, mimetype in self.alternatives:
            maintype, subtype = split_mimetype(mimetype, "alternative")
            if maintype == "text":
                msg.add_alternative(
                    _text(content, self.charset),
                    subtype=subtype,
                    charset=self.charset,
                )
            else:
                msg.add_alternative(
                    force_bytes(content, encoding=self.charset),
                    maintype=maintype,
                    subtype=subtype,
                )
        if self.alternative_subtype != "alternative":
            msg.set_type(f"multipart/{self.alternative_subtype}")


# RFC 6838 type and subtype names: nothing that could end a header line or
# start a parameter.
_MIME_TYPE = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*)/([A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*)\Z"
)


def split_mimetype(mimetype: Any, what: str) -> tuple[str, str]:
    """Return (maintype, subtype), or raise ValueError for a malformed type."""
    match = _MIME_TYPE.match(mimetype) if isinstance(mimetype, str) else None
    if match is None:
        raise ValueError(f"Invalid MIME type {mimetype!r} for {what}.")
    return match[1], match[2]


def _decode_text(content: Any, mimetype: str, filename: str | None) -> tuple[Any, str]:
    """Decode bytes given for a text/* type, or fall back to octet-stream."""
    split_mimetype(mimetype, f"attachment {filename!r}")
    if filename is not None:
        check_header("attachment filename", str(filename))
    if mimetype.startswith("text/") and isinstance(content, bytes | bytearray):
        try:
            return bytes(content).decode(), mimetype
        except UnicodeDecodeError:
            return content, DEFAULT_ATTACHMENT_MIME_TYPE
    return content, mimetype


def _as_mime(content: Any, policy: email.policy.Policy) -> email.message.Message:
    """Return message/rfc822 attachment content as a Python email message."""
    if isinstance(content, EmailMessage):
        return content.message(policy=policy)
    if isinstance(content, django_message.EmailMessage):
        if django.VERSION >= (6, 0):
            return content.message(policy=policy)
        # Django 5.2 builds legacy compat32 objects: re-parse them so the
        # whole tree follows one policy.
        legacy = content.message()
        # Django 5.2's SafeMIME classes take linesep; django-stubs describe 6.x.
        data = legacy.as_bytes(linesep="\n")  # type: ignore[call-arg]
        return email.message_from_bytes(data, policy=policy)
    if isinstance(content, email.message.Message):
        return content
    return email.message_from_bytes(force_bytes(content), policy=policy)


def __getattr__(name: str) -> Any:
    # RemovedInDjango2028Warning: Django's legacy MIME helpers (see legacy.py).
    from .legacy import message_getattr

    return message_getattr(name)
