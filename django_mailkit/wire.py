"""
Fast rendering of messages to wire bytes.

``EmailMessage.message()`` builds a tree of Python ``email`` objects, whose
modern API parses and re-folds every header: correct, but slow (most of the
cost of sending a small message). ``message_bytes()`` writes the same
message straight to bytes. The output is not byte-identical to the standard
library's (boundaries, encodings and folding differ), but it means the same:
parsed back with Python's ``email`` parser it gives the same headers,
structure, parameters and payloads, which the test suite checks
differentially, including with generated inputs.

It is deliberately narrow. Anything it does not handle raises
``Unsupported`` inside and the caller falls back to the standard route: a
subclass overriding how the message is built, an unusual policy, attached
``MIMEPart`` objects it can't simply embed, header text that looks like an
RFC 2047 encoded word, and so on.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import os
import re
from datetime import datetime
from email.headerregistry import Address, Group
from email.utils import format_datetime
from typing import Any

__all__ = ["Unsupported", "encode_header", "format_addresses", "message_bytes"]


class Unsupported(Exception):
    """The fast path does not handle this message; use the standard route."""


# RFC 5322 atext: a display name made only of these (and single spaces)
# needs no quoting.
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
)
_MAX_LINE = 78
# Control characters, and every character str.splitlines() breaks on.
_UNSAFE = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# Encoded-word payload per line: 45 bytes of UTF-8 make 60 base64 characters,
# so "=?utf-8?b?" + 60 + "?=" stays within RFC 2047's 75.
_WORD_BYTES = 45


def policy_supported(policy: Any) -> bool:
    """Return whether the fast path can write for ``policy``."""
    return (
        isinstance(policy, email.policy.EmailPolicy)
        and policy.linesep in ("\r\n", "\n")
        and policy.max_line_length == _MAX_LINE
        and not policy.mangle_from_
    )


def _encoded_words(text: str) -> list[str]:
    """Split ``text`` into RFC 2047 base64 words, at character boundaries."""
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > _WORD_BYTES:
            words.append(_word(chunk))
            chunk = bytearray()
        chunk += data
    if chunk or not words:
        words.append(_word(chunk))
    return words


def _word(data: bytes | bytearray) -> str:
    return "=?utf-8?b?" + base64.b64encode(bytes(data)).decode("ascii") + "?="


def _fold(name: str, pieces: list[str], separator: str, linesep: str) -> str:
    """Join ``pieces`` after ``name: ``, breaking lines before 78 where possible."""
    line = f"{name}: "
    lines: list[str] = []
    for index, piece in enumerate(pieces):
        token = piece if index == 0 else separator + piece
        if index and len(line) + len(token) > _MAX_LINE:
            lines.append(line + separator.rstrip())
            line = " " + piece
        else:
            line += token
    lines.append(line)
    text = linesep.join(lines)
    if any(len(part) > 998 for part in lines):
        raise Unsupported("header line too long to fold")
    return text + linesep


def encode_header(name: str, value: str, *, utf8: bool, linesep: str) -> str:
    """Write an unstructured header (e.g. Subject)."""
    if "=?" in value:
        raise Unsupported("text that looks like an encoded word")
    if not value.isascii() and not utf8:
        return _fold(name, _encoded_words(value), " ", linesep)
    if value != value.strip() or "  " in value or "\t" in value:
        # Runs of white space survive unfolding only if left unfolded.
        if len(name) + 2 + len(value) > 998:
            raise Unsupported("long header with significant white space")
        return f"{name}: {value}{linesep}"
    return _fold(name, value.split(" "), " ", linesep)


def _display_name(name: str, utf8: bool) -> str:
    if "=?" in name:
        raise Unsupported("display name that looks like an encoded word")
    if not name.isascii() and not utf8:
        return " ".join(_encoded_words(name))
    if (
        name
        and all(c in _ATEXT or c == " " or ord(c) > 127 for c in name)
        and (name == name.strip() and "  " not in name)
    ):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox(address: Address, utf8: bool) -> str:
    if not utf8 and not (address.username.isascii() and address.domain.isascii()):
        raise Unsupported("non-ASCII address without SMTPUTF8")
    spec = address.addr_spec
    if not address.display_name:
        return spec
    return f"{_display_name(address.display_name, utf8)} <{spec}>"


def format_addresses(
    name: str, groups: list[Group], *, utf8: bool, linesep: str
) -> str:
    """Write an address header from Groups (a None group name: bare mailboxes)."""
    pieces: list[str] = []
    for group in groups:
        if group.display_name is None:
            pieces.extend(_mailbox(a, utf8) for a in group.addresses)
        else:
            members = ", ".join(_mailbox(a, utf8) for a in group.addresses)
            pieces.append(f"{_display_name(group.display_name, utf8)}:{members};")
    return _fold(name, pieces, ", ", linesep)


def header_line(name: str, value: Any, *, utf8: bool, linesep: str) -> str:
    """Write one header whose value is text, a datetime or a list of Groups."""
    if isinstance(value, list):
        return format_addresses(name, value, utf8=utf8, linesep=linesep)
    if isinstance(value, datetime):
        return f"{name}: {format_datetime(value)}{linesep}"
    return encode_header(name, value, utf8=utf8, linesep=linesep)


# Bodies.


def _params(params: list[tuple[str, str]]) -> str:
    out = ""
    for key, value in params:
        if (
            value.isascii()
            and '"' not in value
            and "\\" not in value
            and ("=?" not in value)
        ):
            out += f'; {key}="{value}"'
        else:
            # RFC 2231: charset''percent-encoded.
            quoted = "".join(
                chr(b)
                if (
                    48 <= b <= 57
                    or 65 <= b <= 90
                    or 97 <= b <= 122
                    or b in b"!#$&+-.^_`|~"
                )
                else f"%{b:02X}"
                for b in value.encode("utf-8")
            )
            out += f"; {key}*=utf-8''{quoted}"
    return out


def _entity_headers(
    content_type: str,
    params: list[tuple[str, str]],
    cte: str | None,
    disposition: str | None,
    filename: str | None,
    linesep: str,
) -> str:
    # The message layer validated both; never write a line break, whatever.
    if _UNSAFE.search(content_type) or (filename and _UNSAFE.search(filename)):
        raise Unsupported("unsafe content type or filename")
    head = f"Content-Type: {content_type}{_params(params)}{linesep}"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}{linesep}"
    if disposition:
        extra = _params([("filename", filename)]) if filename is not None else ""
        head += f"Content-Disposition: {disposition}{extra}{linesep}"
    if len(head.split(linesep)[0]) > 998:
        raise Unsupported("parameters too long")
    return head


def text_entity(
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
    if data.isascii() and all(len(line) <= 998 for line in lines):
        cte, body = "7bit", sep.join(lines) + sep
    else:
        # Quoted-printable keeps mostly-ASCII text readable; the lines end
        # as they will after decoding, so the text comes back unchanged.
        cte = "quoted-printable"
        body = binascii.b2a_qp(b"\r\n".join(lines) + b"\r\n", istext=True)
        if sep != b"\r\n":
            body = body.replace(b"\r\n", sep)
    head = _entity_headers(
        f"text/{subtype}", [("charset", charset)], cte, disposition, filename, linesep
    )
    return head.encode("ascii") + sep + body


def binary_entity(
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
    head = _entity_headers(content_type, [], "base64", disposition, filename, linesep)
    return head.encode("ascii") + sep + body


def embedded_entity(
    inner: bytes,
    content_type: str,
    *,
    linesep: str,
    disposition: str | None = None,
    filename: str | None = None,
) -> bytes:
    """A message/* entity wrapping an already rendered message."""
    cte = "7bit" if inner.isascii() else "8bit"
    head = _entity_headers(content_type, [], cte, disposition, filename, linesep)
    return head.encode("ascii") + linesep.encode("ascii") + inner


def multipart(subtype: str, parts: list[bytes], *, linesep: str) -> bytes:
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


def message_bytes(headers: str, entity: bytes, *, linesep: str) -> bytes:
    """Put the top-level headers in front of the root entity."""
    return (headers + f"MIME-Version: 1.0{linesep}").encode("utf-8") + entity
