"""
Rendering messages to bytes: one module decides how, and writes.

There are two routes from an ``EmailMessage`` to bytes:

- the standard route, ``message()``: a tree of Python ``email`` objects,
  serialized by the ``email`` package (correct, but slow: the modern API
  parses and re-folds every header);
- the fast route: the same message written straight to bytes by this module.

``render_bytes()`` is the only place that chooses between them: the fast
route is taken when the message's class builds exactly as ours do (no
method the standard route calls is overridden, on the class or the
instance), the policy is one the fast writer follows, and the writer handles
every part; anything else (text that looks like an RFC 2047 encoded word in
an unstructured header, another charset, a control character in a
filename...) raises ``Unsupported`` inside and takes the standard route.

Both routes write address headers with the same function,
``format_addresses()``: ``message()`` stores address headers as header
objects that fold through it. So an address means the same whatever route
a message takes, and CPython's refolding bugs (gh-80222: a long quoted
display name losing its quotes and turning into several addresses;
gh-100884: a list's comma vanishing into an encoded word) never apply.
Folding only ever inserts a line break before existing white space, so
unfolding gives back exactly the text written.

The fast route is not byte-identical to the standard one (boundaries,
encodings and folding differ) but means the same: parsed back with Python's
``email`` parser it gives the same headers, structure, parameters and
payloads, which the test suite checks differentially, including with
generated inputs.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import email.policy
import functools
import os
import re
from datetime import datetime
from email.headerregistry import (
    Address,
    AddressHeader,
    DateHeader,
    Group,
    HeaderRegistry,
    MessageIDHeader,
    UnstructuredHeader,
)
from email.utils import format_datetime
from typing import Any

import django
from django.utils.encoding import force_bytes, punycode

from . import message as _message

__all__ = ["Unsupported", "format_addresses", "render", "render_bytes"]


class Unsupported(Exception):
    """The fast route does not handle this message; use the standard route."""


# RFC 5322 atext: a display name made only of these (and single spaces)
# needs no quoting.
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
)
# RFC 5322's hard limit on a line, without its line end.
_MAX_LINE = 998
# Control characters, and every character str.splitlines() breaks on.
_UNSAFE = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# The same, but tab: a tab is white space, which quoted strings keep.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
# A header line in pieces, each breakable before its leading white space.
_CHUNK = re.compile(r"[ \t]*[^ \t]+|[ \t]+")
# A display name with a run this long without white space is encoded.
_LONG_RUN = re.compile(r"[^ \t]{700}")
# Encoded-word payload per word: 45 bytes of UTF-8 make 60 base64 characters,
# so "=?utf-8?b?" + 60 + "?=" stays within RFC 2047's 75.
_WORD_BYTES = 45


# Policies.

_DEFAULT = email.policy.default
_DEFAULT_FACTORY: Any = _DEFAULT.header_factory


def _standard_registry(factory: Any) -> bool:
    default: Any = _DEFAULT.header_factory
    return factory is default or (
        type(factory) is HeaderRegistry
        and factory.registry == default.registry
        and factory.base_class is default.base_class
        and factory.default_class is default.default_class
    )


def fast_policy(policy: Any) -> bool:
    """Return whether the fast writer writes what ``policy`` asks for."""
    return (
        isinstance(policy, email.policy.EmailPolicy)
        and policy.linesep in ("\r\n", "\n")
        and policy.max_line_length == 78
        and not policy.mangle_from_
        and policy.cte_type == "8bit"
        and policy.content_manager is _DEFAULT.content_manager
        and _standard_registry(policy.header_factory)
    )


def _line_limit(policy: email.policy.EmailPolicy) -> int:
    return min(policy.max_line_length or _MAX_LINE, _MAX_LINE)


# Headers.


def _fold(line: str, linesep: str, limit: int) -> tuple[str, int]:
    """
    Fold a whole ``Name: value`` line; return it and its longest line.

    A break is only ever inserted before white space that is already there,
    and never before the first word of the value, so unfolding (removing
    the line ends) gives back exactly ``line``.
    """
    if len(line) <= limit:
        return line + linesep, len(line)
    lines: list[str] = []
    current = ""
    for index, chunk in enumerate(_CHUNK.findall(line)):
        if (
            index > 1
            and chunk[0] in " \t"
            and not chunk.isspace()
            and len(current) + len(chunk) > limit
        ):
            lines.append(current)
            current = chunk
        else:
            current += chunk
    lines.append(current)
    return linesep.join(lines) + linesep, max(map(len, lines))


def _encoded_words(text: str) -> str:
    """Write ``text`` as RFC 2047 base64 words, split at character boundaries."""
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        data = char.encode("utf-8", "surrogatepass")
        if len(chunk) + len(data) > _WORD_BYTES:
            words.append(_word(chunk))
            chunk = bytearray()
        chunk += data
    if chunk or not words:
        words.append(_word(chunk))
    return " ".join(words)


def _word(data: bytes | bytearray) -> str:
    return "=?utf-8?b?" + base64.b64encode(bytes(data)).decode("ascii") + "?="


def _unstructured(
    name: str, value: str, *, utf8: bool, linesep: str, limit: int
) -> str:
    """
    Write an unstructured header (e.g. Subject) so that it reads back as
    exactly ``value``.

    Text that needs it (non-ASCII without SMTPUTF8, control characters,
    encoded-word look-alikes, or a word too long to fold) is written as
    encoded words, whole: white space inside them is kept by every reader,
    where white space between them would be dropped.
    """
    if utf8 or value.isascii():
        if "=?" not in value and not _CONTROL.search(value):
            folded, longest = _fold(f"{name}: {value}", linesep, limit)
            if longest <= _MAX_LINE:
                return folded
    return _fold(f"{name}: {_encoded_words(value)}", linesep, limit)[0]


def _display_name(name: str, utf8: bool) -> str:
    if (
        _CONTROL.search(name)
        or not (utf8 or name.isascii())
        # Nowhere to fold it within 998 characters, with an addr-spec.
        or _LONG_RUN.search(name)
    ):
        # Encoded words give back exactly the text, whatever it is, and
        # can be folded between any two characters.
        return _encoded_words(name)
    if (
        all(c in _ATEXT or c == " " or ord(c) > 127 for c in name)
        and name == name.strip()
        and "  " not in name
        and "=?" not in name
    ):
        return name
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    # "=\?" is "=?" to every reader, and no reader takes it for the start
    # of an encoded word (CPython decodes those even inside quotes).
    return '"' + quoted.replace("=?", "=\\?") + '"'


def _mailbox(address: Address, utf8: bool) -> str:
    return _mailbox_text(address.display_name, address.username, address.domain, utf8)


@functools.lru_cache(maxsize=4096)
def _mailbox_text(display_name: str, username: str, domain: str, utf8: bool) -> str:
    address = Address(display_name, username, domain)
    if utf8 or (username.isascii() and domain.isascii()):
        spec = address.addr_spec
    elif username.isascii():
        spec = Address(username=username, domain=punycode(domain)).addr_spec
    else:
        # Only SMTPUTF8 can carry this local part; written the way the
        # email package writes it, so the header reads back the same.
        spec = _word(username.encode("utf-8", "surrogatepass"))
        spec += f"@{punycode(domain)}" if domain else ""
    if not address.display_name:
        return spec
    return f"{_display_name(address.display_name, utf8)} <{spec}>"


def format_addresses(
    name: str,
    groups: list[Group],
    *,
    utf8: bool,
    linesep: str,
    limit: int = 78,
) -> str:
    """
    Write an address header from Groups (a None group name: bare mailboxes).

    Every display name is an atom, a quoted string or encoded words, and
    lines are folded only before white space, so each address reads back
    as exactly one address with exactly its display name.
    """
    pieces: list[str] = []
    for group in groups:
        members = [_mailbox(a, utf8) for a in group.addresses]
        if group.display_name is None:
            pieces.extend(members)
        else:
            label = _display_name(group.display_name, utf8)
            pieces.append(f"{label}:{', '.join(members)};")
    # An addr-spec over 998 characters (never valid) stays on a long line.
    return _fold(f"{name}: {', '.join(pieces)}", linesep, limit)[0]


@functools.lru_cache(maxsize=8)
def _date_text(value: datetime, offset: Any) -> str:
    return format_datetime(value)


def date_text(value: datetime) -> str:
    """
    Return ``format_datetime(value)``, once per second for a bulk send.

    Equal datetimes in different zones read differently: the offset is part
    of the key. A subclass might format itself differently: never cached.
    """
    if type(value) is not datetime:
        return format_datetime(value)
    return _date_text(value, value.utcoffset())


def _header_line(name: str, value: Any, *, utf8: bool, linesep: str, limit: int) -> str:
    """Write one header whose value is text, a datetime or a list of Groups."""
    if isinstance(value, list):
        return format_addresses(name, value, utf8=utf8, linesep=linesep, limit=limit)
    if isinstance(value, datetime):
        return f"{name}: {date_text(value)}{linesep}"
    if "=?" in value:
        # message() decodes encoded-word look-alikes in the text it is
        # given (the email package does); leave that to it.
        raise Unsupported("text that looks like an encoded word")
    return _unstructured(name, value, utf8=utf8, linesep=linesep, limit=limit)


class _Formatted:
    """
    Make an ``email`` header object fold with this module's writers.

    Its parse tree, which only the email package's own folding uses, is
    built only if that folding is ever needed (a policy that is not an
    EmailPolicy): parsing the text again is most of the cost of a header.
    """

    # Provided by the email package's header classes.
    name: str
    _parse_tree: Any
    value_parser: Any

    def fold(self, *, policy: email.policy.Policy) -> str:
        if isinstance(policy, email.policy.EmailPolicy):
            folded = self._write(
                utf8=policy.utf8, linesep=policy.linesep, limit=_line_limit(policy)
            )
            if folded is not None:
                return folded
        if self._parse_tree is None:
            self._parse_tree = self.value_parser(str(self))
        return super().fold(policy=policy)  # type: ignore[misc, no-any-return]

    def _write(self, *, utf8: bool, linesep: str, limit: int) -> str | None:
        """Return the folded header, or None to fold it the standard way."""
        raise NotImplementedError


class _FormattedAddresses(_Formatted):
    groups: tuple[Group, ...]

    @classmethod
    def parse(cls, value: list[Group], kwds: dict[str, Any]) -> None:
        # As AddressHeader.parse() does for a list of Groups, less the parse.
        kwds["groups"] = value
        kwds["defects"] = []
        kwds["decoded"] = ", ".join(str(group) for group in value)
        kwds["parse_tree"] = None

    def _write(self, *, utf8: bool, linesep: str, limit: int) -> str | None:
        groups = list(self.groups)
        return format_addresses(
            self.name, groups, utf8=utf8, linesep=linesep, limit=limit
        )


class _FormattedText(_Formatted):
    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        if "=?" in value:
            # The email package decodes encoded-word look-alikes: so do we.
            super().parse(value, kwds)  # type: ignore[misc]
        else:
            kwds["decoded"] = value
            kwds["parse_tree"] = None

    def _write(self, *, utf8: bool, linesep: str, limit: int) -> str | None:
        # str(self) is the text as the email package decoded it when set.
        text = str(self)
        return _unstructured(self.name, text, utf8=utf8, linesep=linesep, limit=limit)


class _FormattedDate(_Formatted):
    @classmethod
    def parse(cls, value: datetime, kwds: dict[str, Any]) -> None:
        # As DateHeader.parse() does for a datetime, less the parse.
        kwds["datetime"] = value
        kwds["decoded"] = date_text(value)
        kwds["parse_tree"] = None

    def _write(self, *, utf8: bool, linesep: str, limit: int) -> str | None:
        # An RFC 5322 date is short ASCII: the email package writes it as is
        # on any line long enough.
        line = f"{self.name}: {self}"
        return line + linesep if len(line) <= limit else None


# A Message-ID as make_msgid() writes it: <dot-atom-text@dot-atom-text>.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_SIMPLE_MSGID = re.compile(f"<{_DOT_ATOM}@{_DOT_ATOM}>\\Z")


class _FormattedMessageID(_Formatted):
    """A simple Message-ID, which parses to exactly its own text."""

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        kwds["decoded"] = value
        kwds["parse_tree"] = None

    def _write(self, *, utf8: bool, linesep: str, limit: int) -> str | None:
        line = f"{self.name}: {self}"
        # A longer line is the email package's to fold (it moves the msg-id
        # to a line of its own when it fits there, and never breaks it).
        return line + linesep if len(line) <= limit else None


class _SharedFold:
    """
    Remember how a shared header object folds (see new_header()).

    Folding depends only on the policy's line end, line length and utf8
    flag; the header object itself never changes.
    """

    def fold(self, *, policy: email.policy.Policy) -> str:
        if not isinstance(policy, email.policy.EmailPolicy):
            return super().fold(policy=policy)  # type: ignore[misc, no-any-return]
        key = (policy.linesep, policy.max_line_length, policy.utf8)
        folds: dict[tuple[str, int | None, bool], str] = self.__dict__.setdefault(
            "_folds", {}
        )
        folded = folds.get(key)
        if folded is None:
            folded = folds[key] = super().fold(policy=policy)  # type: ignore[misc]
        return folded


_FORMATTED_CLASSES: dict[tuple[type, type], type] = {}
_REGISTRY_CLASSES: dict[str, type] = {}
# Keyed by the bases of a registry_class() class (the registry's class and
# base_class), not by the class: those classes are made again each time
# _REGISTRY_CLASSES is cleared, and keys holding them would pile up.
_SHARED_CLASSES: dict[tuple[type, ...], type] = {}
# The headers set_content() and friends write: a handful of values, the
# same in every message.
_SHARED_NAMES = frozenset(
    {"content-type", "content-transfer-encoding", "mime-version", "content-disposition"}
)
_SHARED_HEADERS: dict[tuple[tuple[type, ...], str, str], Any] = {}


def registry_class(policy: Any, name: str) -> type | None:
    """
    Return the header class ``policy`` makes for ``name``, made once.

    The standard registry makes a new class (``type()``) at every lookup,
    twice per header set, which was most of the cost of ``message()``; the
    class made here has the same bases, so its instances behave the same.
    None for a policy that is not a plain ``EmailPolicy`` with the standard
    registry: its own ``header_factory`` is then left to do its work.
    """
    if type(policy) is not email.policy.EmailPolicy:
        return None
    factory: Any = policy.header_factory
    if factory is not _DEFAULT_FACTORY and not _standard_registry(factory):
        return None
    # Every standard registry maps a name to the same class.
    made = _REGISTRY_CLASSES.get(name)
    if made is None:
        cls = factory.registry.get(name.lower(), factory.default_class)
        made = type("_" + cls.__name__, (cls, factory.base_class), {})
        if len(_REGISTRY_CLASSES) >= 1024:
            _REGISTRY_CLASSES.clear()
        _REGISTRY_CLASSES[name] = made
    return made


def new_header(cls: type, name: str, value: Any) -> Any:
    """
    Return ``cls(name, value)``, a header object from ``registry_class()``.

    A MIME structure header (Content-Type, ...) is parsed once per distinct
    text and its object shared: header objects are immutable strings.
    """
    if type(value) is not str or name.lower() not in _SHARED_NAMES:
        return cls(name, value)
    bases = cls.__bases__
    key = (bases, name, value)
    made = _SHARED_HEADERS.get(key)
    if made is None:
        shared = _SHARED_CLASSES.get(bases)
        if shared is None:
            # Module-level bases, so the header still pickles.
            shared = type(cls.__name__, (_SharedFold, *bases), {})
            _SHARED_CLASSES[bases] = shared
        made = shared(name, value)
        if len(_SHARED_HEADERS) >= 1024:
            _SHARED_HEADERS.clear()
        _SHARED_HEADERS[key] = made
    return made


def header(policy: email.policy.Policy, name: str, value: Any) -> Any:
    """
    Return what ``message()`` stores for a header from ``header_items()``.

    Address headers (a list of Groups) and unstructured ones (Subject,
    X-...) become the standard header registry's own objects, except that
    they fold with this module's writers: the same text the fast route
    writes. Any other header, or another registry, gets the value as it is.
    """
    factory: Any = getattr(policy, "header_factory", None)
    if not _standard_registry(factory):
        return value
    # The registry's class for the name, without its __getitem__, which
    # makes a new class at every call.
    cls = factory.registry.get(name.lower(), factory.default_class)
    if isinstance(value, datetime):
        if not issubclass(cls, DateHeader):
            return value
        mixin: type = _FormattedDate
    elif issubclass(cls, MessageIDHeader):
        if not (isinstance(value, str) and _SIMPLE_MSGID.match(value)):
            return value
        mixin = _FormattedMessageID
    elif isinstance(value, list):
        if not issubclass(cls, AddressHeader):
            return value
        mixin = _FormattedAddresses
    elif issubclass(cls, UnstructuredHeader):
        mixin = _FormattedText
    else:
        return value
    formatted = _FORMATTED_CLASSES.get((cls, factory.base_class))
    if formatted is None:
        # Module-level bases, as the registry's own classes have, so the
        # header still pickles, and unpickles folding the same way.
        formatted = type("_" + cls.__name__, (mixin, cls, factory.base_class), {})
        _FORMATTED_CLASSES[cls, factory.base_class] = formatted
    return formatted(name, value)


# Bodies.


def _params(params: tuple[tuple[str, str], ...]) -> str:
    out = ""
    for key, value in params:
        if value.isascii() and '"' not in value and "\\" not in value:
            out += f'; {key}="{value}"'
            continue
        # RFC 2231: charset''percent-encoded.
        quoted = "".join(
            chr(b)
            if (
                48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b in b"!#$&+-.^_`|~"
            )
            else f"%{b:02X}"
            for b in value.encode("utf-8")
        )
        out += f"; {key}*=utf-8''{quoted}"
    return out


@functools.lru_cache(maxsize=256)
def _entity_headers(
    content_type: str,
    params: tuple[tuple[str, str], ...],
    cte: str | None,
    disposition: str | None,
    filename: str | None,
    linesep: str,
) -> str:
    # The message layer validated both; never write a line break, whatever.
    if _UNSAFE.search(content_type) or (filename and _UNSAFE.search(filename)):
        raise Unsupported("unsafe content type or filename")
    if filename and "=?" in filename:
        # message() decodes encoded-word look-alikes here too.
        raise Unsupported("filename that looks like an encoded word")
    head = f"Content-Type: {content_type}{_params(params)}{linesep}"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}{linesep}"
    if disposition:
        extra = _params((("filename", filename),)) if filename is not None else ""
        head += f"Content-Disposition: {disposition}{extra}{linesep}"
    if max(len(line) for line in head.split(linesep)) > _MAX_LINE:
        raise Unsupported("parameters too long")
    return head


def _text_entity(
    text: str,
    subtype: str,
    charset: str,
    *,
    linesep: str,
    disposition: str | None = None,
    filename: str | None = None,
) -> bytes:
    """A text/* entity: headers and a 7-bit-safe body."""
    try:
        data = text.encode(charset)
    except (UnicodeEncodeError, LookupError) as exc:
        raise Unsupported("text the charset can't encode") from exc
    lines = data.splitlines()
    sep = linesep.encode("ascii")
    if data.isascii() and all(len(line) <= _MAX_LINE for line in lines):
        cte, body = "7bit", sep.join(lines) + sep
    else:
        # Quoted-printable keeps mostly-ASCII text readable; the lines end
        # as they will after decoding, so the text comes back unchanged.
        cte = "quoted-printable"
        body = binascii.b2a_qp(b"\r\n".join(lines) + b"\r\n", istext=True)
        if sep != b"\r\n":
            body = body.replace(b"\r\n", sep)
    head = _entity_headers(
        f"text/{subtype}", (("charset", charset),), cte, disposition, filename, linesep
    )
    return head.encode("ascii") + sep + body


def _binary_entity(
    data: bytes,
    content_type: str,
    *,
    linesep: str,
    disposition: str | None = None,
    filename: str | None = None,
) -> bytes:
    """A non-text entity, base64-encoded."""
    body = base64.encodebytes(data)
    sep = linesep.encode("ascii")
    if sep != b"\n":
        body = body.replace(b"\n", sep)
    head = _entity_headers(content_type, (), "base64", disposition, filename, linesep)
    return head.encode("ascii") + sep + body


def _embedded_entity(
    inner: bytes,
    content_type: str,
    *,
    linesep: str,
    filename: str | None,
) -> bytes:
    """A message/* attachment wrapping an already rendered message."""
    cte = "7bit" if inner.isascii() else "8bit"
    head = _entity_headers(content_type, (), cte, "attachment", filename, linesep)
    return head.encode("ascii") + linesep.encode("ascii") + inner


def _multipart(subtype: str, parts: list[bytes], *, linesep: str) -> bytes:
    """A multipart entity: headers, then each part between boundaries."""
    sep = linesep.encode("ascii")
    while True:
        boundary = "=_mk_" + os.urandom(12).hex()
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in part for part in parts):
            break
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"{linesep}'
    body = b"".join(marker + sep + part + sep for part in parts)
    return head.encode("ascii") + sep + body + marker + b"--" + sep


# The fast writer. It reads the message's attributes and calls only
# header_items(); _route_is_standard() has checked that nothing the standard
# route calls is overridden, so both routes build the same message.


def _fast_bytes(msg: Any, policy: email.policy.EmailPolicy) -> tuple[bytes, str]:
    if msg.charset.lower() not in ("utf-8", "utf8"):
        raise Unsupported("charset")
    utf8, linesep = bool(policy.utf8), policy.linesep
    items = msg.header_items(ascii_only=not utf8)
    head = "".join(
        _header_line(name, value, utf8=utf8, linesep=linesep, limit=78)
        for name, value in items
    )
    message_id = next(
        (str(value) for name, value in items if name.lower() == "message-id"), ""
    )
    body = _fast_body(msg, policy)
    if msg.attachments:
        parts = [] if body is None else [body]
        parts.extend(_fast_attachment(msg, a, policy) for a in msg.attachments)
        body = _multipart(msg.mixed_subtype, parts, linesep=linesep)
    assert body is not None
    head += f"MIME-Version: 1.0{linesep}"
    return head.encode("utf-8") + body, message_id


def _fast_text_body(msg: Any, policy: email.policy.EmailPolicy) -> bytes | None:
    if not (msg.body or not msg.attachments):
        return None
    return _text_entity(
        _message._text(msg.body, msg.charset),
        msg.content_subtype,
        msg.charset,
        linesep=policy.linesep,
    )


def _fast_body(msg: Any, policy: email.policy.EmailPolicy) -> bytes | None:
    alternatives = getattr(msg, "alternatives", None)
    if not isinstance(msg, _message.EmailMultiAlternatives) or not alternatives:
        return _fast_text_body(msg, policy)
    linesep = policy.linesep
    parts = [_fast_text_body(msg, policy)] if msg.body else []
    for content, mimetype in alternatives:
        maintype, subtype = _message.split_mimetype(mimetype, "alternative")
        if maintype == "text":
            parts.append(
                _text_entity(
                    _message._text(content, msg.charset),
                    subtype,
                    msg.charset,
                    linesep=linesep,
                )
            )
        else:
            data = force_bytes(content, encoding=msg.charset)
            parts.append(_binary_entity(data, mimetype, linesep=linesep))
    return _multipart(
        msg.alternative_subtype, [p for p in parts if p is not None], linesep=linesep
    )


def _fast_attachment(
    msg: Any, attachment: Any, policy: email.policy.EmailPolicy
) -> bytes:
    linesep = policy.linesep
    if isinstance(attachment, email.message.Message):
        return attachment.as_bytes(policy=policy)
    filename, content, mimetype = attachment
    if filename is not None and type(filename) is not str:
        # A lazy translation string (or anything else): message() writes it
        # as Django does, and raises where Django raises.
        raise Unsupported("a filename that is not a plain str")
    content, mimetype = _message._decode_text(content, mimetype, filename)
    maintype, subtype = mimetype.split("/", 1)
    if maintype == "text":
        return _text_entity(
            _message._text(content, msg.charset),
            subtype,
            msg.charset,
            linesep=linesep,
            disposition="attachment",
            filename=filename,
        )
    if maintype == "message":
        if isinstance(content, _message.EmailMessage):
            inner, _ = render_bytes(content, policy)
        else:
            inner = _message._as_mime(content, policy).as_bytes(policy=policy)
        return _embedded_entity(inner, mimetype, linesep=linesep, filename=filename)
    data = (
        bytes(content)
        if isinstance(content, bytes | bytearray | memoryview)
        else force_bytes(content, encoding=msg.charset)
    )
    return _binary_entity(
        data, mimetype, linesep=linesep, disposition="attachment", filename=filename
    )


# The decision.

#: Every method and property of a message that the standard route calls
#: (tests/test_wire.py traces message() to keep this list complete). A
#: subclass or an instance that overrides any of them takes the standard
#: route, so its customisation is honoured.
ROUTE_METHODS = frozenset(
    {
        "message",
        "header_items",
        "_header_value",
        "_add_headers",
        "_add_bodies",
        "_add_attachments",
        "_add_attachment",
        "charset",
    }
)


def _route_is_standard(msg: Any) -> bool:
    """Return whether ``msg`` builds exactly as our own classes do."""
    if not isinstance(msg, _message.EmailMessage):
        return False
    cls = type(msg)
    if cls is not _message.EmailMessage and cls is not _message.EmailMultiAlternatives:
        base = (
            _message.EmailMultiAlternatives
            if isinstance(msg, _message.EmailMultiAlternatives)
            else _message.EmailMessage
        )
        for name in ROUTE_METHODS:
            if getattr(cls, name) is not getattr(base, name):
                return False
    return ROUTE_METHODS.isdisjoint(vars(msg))


def render_bytes(email_message: Any, policy: email.policy.Policy) -> tuple[bytes, str]:
    """
    Return the wire bytes of any EmailMessage-like object, and its Message-ID.

    Our messages (and subclasses that don't change how they are built) are
    written by the fast writer when it handles them; the rest go through
    ``message()``.
    """
    if fast_policy(policy) and _route_is_standard(email_message):
        try:
            return _fast_bytes(email_message, policy)  # type: ignore[arg-type]
        except Unsupported:
            pass
    mime = render(email_message, policy)
    return mime.as_bytes(), str(mime.get("Message-ID", ""))


def render(email_message: Any, policy: email.policy.Policy) -> email.message.Message:
    """
    Build any EmailMessage-like object (ours or Django's) under ``policy``.

    Django 5.2's EmailMessage.message() takes no policy and returns a legacy
    compat32 object; its wire form is re-parsed under ``policy``.
    """
    if isinstance(email_message, _message.EmailMessage) or django.VERSION >= (6, 0):
        return email_message.message(policy=policy)  # type: ignore[no-any-return]
    try:
        return email_message.message(policy=policy)  # type: ignore[no-any-return]
    except TypeError:
        data = email_message.message().as_bytes(linesep="\n")
        return email.message_from_bytes(data, policy=policy)
