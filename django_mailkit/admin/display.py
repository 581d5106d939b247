"""
What the outbox admin shows and serves: stored messages read for display,
the sandboxed HTML preview, and downloads.

Everything here treats the stored message as untrusted input. Nothing from
it is marked safe for an admin page: the HTML alternative is only ever
served by itself, from its own URL, under a Content-Security-Policy that
blocks scripts, forms, plugins and remote content, and sandboxes the
document even when it is opened directly rather than in the admin's
``<iframe sandbox>``. Downloads are attachments, never rendered.

Permission checks belong to the callers (``views.py``); these functions
only build responses.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.parser
import email.policy
import mimetypes
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any
from urllib.parse import quote

from django.http import HttpResponse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.http import content_disposition_header
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

__all__ = [
    "PREVIEW_CSP",
    "PREVIEW_CSP_REMOTE_IMAGES",
    "ParsedMessage",
    "eml_response",
    "part_response",
    "preview_response",
]

#: The HTML preview's policy: no script, no plugins, no forms, no frames,
#: no fetches; inline styles and embedded images only; framed by the admin
#: alone. ``sandbox allow-same-origin`` keeps the document from running
#: anything even when it is opened as a page of its own, while the admin
#: page (never the email) may read its height to size the iframe: without
#: ``allow-scripts`` nothing in the document can use that origin.
PREVIEW_CSP = (
    "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; "
    "sandbox allow-same-origin"
)
#: The same, when the user asked for remote images (they reveal that the
#: message was opened, and from where, to whoever serves them). Images
#: only: every other fetch stays blocked.
PREVIEW_CSP_REMOTE_IMAGES = PREVIEW_CSP.replace(
    "img-src data: cid:;", "img-src data: cid: https: http:;"
)
#: Downloads are never rendered; if a browser tried, nothing could run.
DOWNLOAD_CSP = "default-src 'none'; sandbox"

_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_IMAGE_TYPE = re.compile(r"image/[a-z0-9][a-z0-9.+-]*")
_FETCHING_TAGS = re.compile(r"<(/?)(link|meta)(?=[\s/>])", re.IGNORECASE)
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]+")


@dataclass(frozen=True)
class Part:
    """A MIME part other than the bodies: an attachment or an inline part."""

    index: int
    content_type: str
    filename: str
    size: int
    content_id: str
    inline: bool


@dataclass
class _Node:
    """One MIME part located in the message's bytes, its body not decoded."""

    index: int
    #: The part's headers alone (a header-only parse).
    headers: email.message.EmailMessage
    #: Byte offsets: where the part starts, where its body starts, its end.
    start: int
    body_start: int
    end: int
    container: bool = False
    children: list[_Node] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type()

    @property
    def attachment(self) -> bool:
        return self.headers.get_content_disposition() == "attachment"


class ParsedMessage:
    """
    A stored outbox message (its exact bytes), read for display.

    Cheap for large messages: the parts are located in the bytes and only
    their headers are parsed. A body is decoded when it is shown (the plain
    text and HTML alternatives) or downloaded (one part, on its own URL);
    attachment sizes are worked out from the encoded lengths.
    """

    def __init__(self, mime: bytes) -> None:
        self.mime = mime
        self._index: list[_Node] = []
        self.root = self._locate(0, len(mime), depth=0)

    # Locating parts.

    def _locate(self, start: int, end: int, *, depth: int) -> _Node:
        data = self.mime
        body_start = _header_end(data, start, end)
        headers = email.parser.BytesHeaderParser(
            policy=email.policy.default
        ).parsebytes(data[start:body_start])
        node = _Node(len(self._index), headers, start, body_start, end)
        self._index.append(node)
        boundary = (
            headers.get_boundary()
            if headers.get_content_maintype() == "multipart"
            else None
        )
        if boundary and depth < _MAX_DEPTH:
            node.container = True
            for child_start, child_end in _split(data, body_start, end, boundary):
                node.children.append(
                    self._locate(child_start, child_end, depth=depth + 1)
                )
        return node

    def _parse(self, node: _Node) -> email.message.EmailMessage:
        """One part, parsed in full (its body decodable)."""
        return email.message_from_bytes(
            self.mime[node.start : node.end], policy=email.policy.default
        )

    # What the page shows.

    @cached_property
    def headers(self) -> list[tuple[str, str]]:
        """Every top-level header, decoded; a malformed one is shown raw."""
        message = self.root.headers
        result = []
        for name, raw in message.raw_items():
            try:
                value = str(message.policy.header_fetch_parse(name, raw))
            except Exception:  # the email package's parsers raise anything
                value = str(raw)
            result.append((name, value))
        return result

    def addresses(self, name: str) -> list[str]:
        """The addr-specs in header ``name`` (To, Cc...); [] if absent or bad."""
        try:
            header = self.root.headers.get(name)
            return [a.addr_spec for a in getattr(header, "addresses", ())]
        except Exception:  # the email package's parsers raise anything
            return []

    @cached_property
    def _text_node(self) -> _Node | None:
        return _body(self.root, "text/plain")

    @cached_property
    def _html_node(self) -> _Node | None:
        return _body(self.root, "text/html")

    @property
    def text(self) -> str | None:
        """The plain-text body, or None when the message has none."""
        node = self._text_node
        return None if node is None else _decode_text(self._parse(node))

    @property
    def html(self) -> str | None:
        """The HTML alternative, or None. Untrusted: serve it, never embed it."""
        node = self._html_node
        return None if node is None else _decode_text(self._parse(node))

    @property
    def has_html(self) -> bool:
        return self._html_node is not None

    def _leaves(self) -> Iterator[_Node]:
        """Every part that is not a body or a container, in document order."""
        bodies = {id(self._text_node), id(self._html_node)}
        for node in self._index:
            if not node.container and id(node) not in bodies:
                yield node

    @cached_property
    def parts(self) -> list[Part]:
        """The attachments and inline parts, for listing with download links."""
        return [
            Part(
                index=node.index,
                content_type=_content_type(node.headers),
                filename=_filename(node.headers, node.index),
                size=_decoded_size(self.mime, node),
                content_id=_content_id(node.headers),
                inline=not node.attachment,
            )
            for node in self._leaves()
        ]

    def part(self, index: int) -> email.message.EmailMessage | None:
        """Return the non-body leaf part at ``index`` (from ``parts``), parsed."""
        for node in self._leaves():
            if node.index == index:
                return self._parse(node)
        return None

    def preview_html(self) -> str | None:
        """
        Return the HTML alternative with its ``cid:`` images made ``data:`` URLs.

        Browsers cannot resolve ``cid:`` references, so the inline images
        (parts with a Content-ID) that the HTML refers to are embedded; no
        other part is decoded. Only exact ``cid:<id>`` strings are replaced,
        by base64 text, so this cannot add markup.
        """
        html = self.html
        if html is None:
            return None
        for node in self._leaves():
            content_id = _content_id(node.headers)
            content_type = _content_type(node.headers)
            if not content_id or not _IMAGE_TYPE.fullmatch(content_type):
                continue
            references = {content_id, quote(content_id, safe="@")}
            if not any(f"cid:{reference}" in html for reference in references):
                continue
            data = base64.b64encode(_payload(self._parse(node))).decode("ascii")
            url = f"data:{content_type};base64,{data}"
            for reference in references:
                html = html.replace(f"cid:{reference}", url)
        return html


#: Nesting deeper than this is shown as one part (a hostile message could
#: nest thousands of levels).
_MAX_DEPTH = 32
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _header_end(data: bytes, start: int, end: int) -> int:
    """Where the body of the part at ``start`` begins (after the blank line)."""
    if data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        # No headers at all: the body starts after the blank line.
        return start + (2 if data.startswith(b"\r\n", start) else 1)
    match = _HEADER_END.search(data, start, end)
    return match.end() if match else end


def _split(data: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """The (start, end) of each body part of a multipart body (RFC 2046)."""
    delimiter = b"--" + boundary.encode("ascii", "replace")
    lines = []  # (where the delimiter line starts, where the CRLF before it starts)
    if data.startswith(delimiter, start):
        lines.append((start, start))
    position = start
    while True:
        found = data.find(b"\n" + delimiter, position, end)
        if found < 0:
            break
        after = found + 1 + len(delimiter)
        position = after
        if data[after : after + 1] not in (b"\r", b"\n", b" ", b"\t", b"-", b""):
            continue  # a longer boundary that starts the same
        before = (
            found - 1 if found > start and data[found - 1 : found] == b"\r" else found
        )
        lines.append((found + 1, before))
    ranges = []
    for number, (line, _before) in enumerate(lines):
        after = line + len(delimiter)
        if data.startswith(b"--", after):
            break  # the close delimiter
        line_end = data.find(b"\n", after, end)
        if line_end < 0:
            break
        part_end = lines[number + 1][1] if number + 1 < len(lines) else end
        ranges.append((line_end + 1, max(part_end, line_end + 1)))
    return ranges


def _body(node: _Node, content_type: str) -> _Node | None:
    """
    The part a mail client shows as the ``text/plain`` (or ``text/html``)
    body: not an attachment, reached through multipart containers only (an
    attached message's body is not this message's).
    """
    if node.container:
        if node.content_type == "multipart/related" and node.children:
            return _body(node.children[0], content_type)
        for child in node.children:
            found = _body(child, content_type)
            if found is not None:
                return found
        return None
    if node.content_type == content_type and not node.attachment:
        return node
    return None


def _base64_size(data: bytes, start: int, end: int) -> int:
    """
    The decoded size of base64 text, without a pass over it when its lines
    are all as long as the first (as every encoder writes them).
    """
    first_end = data.find(b"\n", start, end)
    if first_end > start:
        eol = 2 if data[first_end - 1 : first_end] == b"\r" else 1
        width = first_end + 1 - start  # a line and its line end
        lines = (end - start) // width
        last = data[start + lines * width : end].strip()
        # Every line break where it would be if all lines are as wide.
        regular = all(
            data[start + n * width - 1 : start + n * width] == b"\n"
            for n in (1, lines // 2 or 1, lines)
        ) and not last.count(b"\n")
        if regular and b" " not in data[start:first_end]:
            chars = lines * (width - eol) + len(last)
            tail = data[max(start, end - 8) : end].rstrip(b"\r\n \t")
            return max(0, chars * 3 // 4 - (len(tail) - len(tail.rstrip(b"="))))
    blanks = sum(data.count(c, start, end) for c in (b"\r", b"\n", b" ", b"\t"))
    tail = data[max(start, end - 8) : end].rstrip(b"\r\n \t")
    padding = len(tail) - len(tail.rstrip(b"="))
    return max(0, (end - start - blanks) * 3 // 4 - padding)


def _decoded_size(data: bytes, node: _Node) -> int:
    """A leaf's decoded size, from its encoded length: nothing is decoded."""
    encoding = str(node.headers.get("Content-Transfer-Encoding", "")).strip().lower()
    start, end = node.body_start, node.end
    length = end - start
    if encoding == "base64":
        return _base64_size(data, start, end)
    if encoding == "quoted-printable":
        soft = data.count(b"=\r\n", start, end) * 3 + data.count(b"=\n", start, end) * 2
        escapes = (
            data.count(b"=", start, end)
            - data.count(b"=\r\n", start, end)
            - data.count(b"=\n", start, end)
        )
        return max(0, length - soft - escapes * 2)
    return length


def _decode_text(part: email.message.MIMEPart) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, KeyError):
        # An unknown or lying charset: show what there is.
        content = _payload(part).decode("utf-8", "replace")
    return (
        content
        if isinstance(content, str)
        else bytes(content).decode("utf-8", "replace")
    )


def _payload(part: email.message.MIMEPart) -> bytes:
    if part.get_content_type() == "message/rfc822" and part.is_multipart():
        inner = part.get_payload(0)
        assert isinstance(inner, email.message.Message)  # multipart: a list
        return inner.as_bytes()
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _content_type(part: email.message.MIMEPart) -> str:
    content_type = part.get_content_type()
    return (
        content_type
        if _MIME_TYPE.fullmatch(content_type)
        else "application/octet-stream"
    )


def _content_id(part: email.message.MIMEPart) -> str:
    value = part.get("Content-ID")
    return str(value).strip().strip("<>") if value else ""


def _filename(part: email.message.MIMEPart, index: int) -> str:
    try:
        name = part.get_filename()
    except Exception:  # a malformed parameter
        name = None
    if name:
        name = _UNSAFE_FILENAME.sub("_", os.path.basename(str(name))).strip(". ")
    if not name:
        # An inline image is known by its Content-ID, "logo@example.com".
        stem = _UNSAFE_FILENAME.sub("_", _content_id(part).partition("@")[0])
        extension = mimetypes.guess_extension(_content_type(part)) or ".bin"
        name = f"{stem.strip('. ') or f'part-{index}'}{extension}"
    return name


def _attachment(body: bytes, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(
        as_attachment=True, filename=filename
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = DOWNLOAD_CSP
    return response


def eml_response(record: Any) -> HttpResponse:
    """Serve the exact stored bytes as a ``.eml`` file."""
    return _attachment(
        bytes(record.mime),
        content_type="message/rfc822",
        filename=f"outbox-message-{record.pk}.eml",
    )


def part_response(message: ParsedMessage, index: int) -> HttpResponse | None:
    """Serve one attachment or inline part for download, or None if absent."""
    part = message.part(index)
    if part is None:
        return None
    content_type = _content_type(part)
    charset = part.get_content_charset()
    if (
        content_type.startswith("text/")
        and charset
        and _MIME_TYPE.fullmatch(f"x/{charset}")
    ):
        content_type = f"{content_type}; charset={charset}"
    return _attachment(
        _payload(part), content_type=content_type, filename=_filename(part, index)
    )


def preview_response(
    message: ParsedMessage, *, remote_images: bool = False
) -> HttpResponse | None:
    """Serve the HTML alternative, sandboxed by its CSP; None if there is none."""
    html = message.preview_html()
    if html is None:
        return None
    # <link> (prefetch, prerender...) and <meta> (refresh) fetch or navigate
    # whatever img-src allows, or past the CSP altogether: make them unknown
    # elements, which browsers ignore. Tag names are literal ASCII in HTML,
    # so this finds every one.
    html = _FETCHING_TAGS.sub(r"<\1x-mailkit-\2", html)
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = (
        PREVIEW_CSP_REMOTE_IMAGES if remote_images else PREVIEW_CSP
    )
    response["X-Content-Type-Options"] = "nosniff"
    # Remote images, when allowed, must not learn the admin's URLs.
    response["Referrer-Policy"] = "no-referrer"
    return response


# What the message page says about times, attempts and failures.


def when(value: datetime | None) -> str:
    """A time with seconds, and beside it how long ago (or how soon) it is."""
    if value is None:
        return "—"
    local = timezone.localtime(value)
    now = timezone.now()
    seconds = int(abs((now - value).total_seconds()))
    if seconds < 60:
        relative = (
            ngettext("%d second ago", "%d seconds ago", seconds)
            if value <= now
            else ngettext("in %d second", "in %d seconds", seconds)
        ) % seconds
    elif value <= now:
        relative = _("%(delta)s ago") % {"delta": timesince(value, now, depth=1)}
    else:
        relative = _("in %(delta)s") % {"delta": timeuntil(value, now, depth=1)}
    return format_html(
        '<time datetime="{}">{}</time> <span class="mailkit-relative">({})</span>',
        value.isoformat(),
        date_format(local, "Y-m-d H:i:s T"),
        relative,
    )


def attempt_outcome(attempt: Any) -> tuple[str, str]:
    """
    What one attempt did, as (css kind, label), judged by its own replies.

    An attempt's stored outcome is what it did (``delivery._classify()``),
    but rows recorded before 0.1.0 stored what the message became over all
    its attempts: a retry that delivered nothing to a message partly
    delivered before as "partial". The replies decide.
    """
    replies = list((attempt.recipients or {}).values())
    accepted = sum(1 for code, _reply in replies if code is None or code < 400)
    refused = len(replies) - accepted
    if accepted and refused:
        return "partial", str(_("Partially sent"))
    if accepted:
        return "sent", str(_("Sent"))
    if refused:
        temporary = all(400 <= (code or 0) < 500 for code, _reply in replies)
        if attempt.outcome == "retry" and temporary:
            return "retry", str(_("Temporary failure"))
        if attempt.outcome in ("sent", "partial"):
            # The message's outcome, not this attempt's.
            return "failed", str(_("Delivered to nobody"))
        return "failed", str(_("Failed"))
    return attempt.outcome, str(attempt.get_outcome_display())


def first_delivery(attempts: list[Any]) -> datetime | None:
    """When the first recipient accepted the message, from its attempts."""
    for attempt in sorted(attempts, key=lambda a: a.number):
        kind, _label = attempt_outcome(attempt)
        if kind in ("sent", "partial"):
            return attempt.finished_at  # type: ignore[no-any-return]
    return None


def failure_summary(
    obj: Any, recipients: list[Any], attempts: list[Any], max_attempts: int
) -> list[str]:
    """
    Say why a failed, partially sent or suppressed message was not sent to
    everyone: suppressed recipients, a permanent refusal (a 5xx reply),
    temporary failures until the retries ran out, or a worker that stopped
    while sending it, its last attempt.
    """
    failed = [r for r in recipients if r.status == "failed"]
    suppressed = [r for r in recipients if r.status == "suppressed"]
    if obj.status not in ("failed", "partial", "suppressed"):
        return []
    permanent = [r for r in failed if r.smtp_code and 500 <= r.smtp_code < 600]
    temporary = [r for r in failed if r.smtp_code and 400 <= r.smtp_code < 500]
    unknown = [r for r in failed if not r.smtp_code]
    budget_spent = obj.attempts - obj.requeued_attempts >= max_attempts
    # Failed at recovery: the last attempt ended with its worker, not a reply.
    newest = max(attempts, key=lambda a: a.number, default=None)
    stopped = []
    if newest is not None and newest.outcome == "interrupted" and budget_spent:
        stopped, unknown = unknown, []
    if unknown and budget_spent:
        temporary += unknown
    else:
        permanent += unknown
    lines = []
    count = obj.attempts - obj.requeued_attempts
    spent = ngettext("%(count)d attempt", "%(count)d attempts", count) % {
        "count": count
    }
    if suppressed:
        lines.append(
            ngettext(
                "Suppressed: %(count)d recipient was on the suppression list, "
                "so it was not sent to.",
                "Suppressed: %(count)d recipients were on the suppression list, "
                "so they were not sent to.",
                len(suppressed),
            )
            % {"count": len(suppressed)}
        )
    if permanent:
        lines.append(
            ngettext(
                "Permanent failure: %(count)d recipient was refused for good "
                "(a 5xx reply, or an error retrying can't fix). It was not retried.",
                "Permanent failure: %(count)d recipients were refused for good "
                "(a 5xx reply, or an error retrying can't fix). They were not "
                "retried.",
                len(permanent),
            )
            % {"count": len(permanent)}
        )
    if temporary:
        lines.append(
            ngettext(
                "Retries ran out: %(count)d recipient failed only temporarily "
                "(4xx replies or connection errors), %(attempts)s in a row.",
                "Retries ran out: %(count)d recipients failed only temporarily "
                "(4xx replies or connection errors), %(attempts)s in a row.",
                len(temporary),
            )
            % {
                "count": len(temporary),
                "attempts": spent,
            }
        )
    if stopped:
        lines.append(
            ngettext(
                "Worker stopped: %(count)d recipient was not sent to. The worker "
                "sending the message stopped (died, or stalled past its lease) "
                "during its last attempt, with %(attempts)s spent; the "
                "message itself may be what stops it.",
                "Worker stopped: %(count)d recipients were not sent to. The worker "
                "sending the message stopped (died, or stalled past its lease) "
                "during its last attempt, with %(attempts)s spent; the "
                "message itself may be what stops it.",
                len(stopped),
            )
            % {
                "count": len(stopped),
                "attempts": spent,
            }
        )
    return lines


def header_fields(message: ParsedMessage) -> dict[str, str]:
    """{address in lower case: "To" or "Cc"}, from the message's headers."""
    fields: dict[str, str] = {}
    for name in ("Cc", "To"):  # To wins when an address is in both
        for address in message.addresses(name):
            fields[address.lower()] = name
    return fields
