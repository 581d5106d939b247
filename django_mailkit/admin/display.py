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
import email.policy
import mimetypes
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
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


class ParsedMessage:
    """A stored outbox message (its exact bytes), parsed for display."""

    def __init__(self, mime: bytes) -> None:
        self.message: email.message.EmailMessage = email.message_from_bytes(
            mime, policy=email.policy.default
        )

    @cached_property
    def headers(self) -> list[tuple[str, str]]:
        """Every top-level header, decoded; a malformed one is shown raw."""
        result = []
        for name, raw in self.message.raw_items():
            try:
                value = str(self.message.policy.header_fetch_parse(name, raw))
            except Exception:  # the email package's parsers raise anything
                value = str(raw)
            result.append((name, value))
        return result

    def addresses(self, name: str) -> list[str]:
        """The addr-specs in header ``name`` (To, Cc...); [] if absent or bad."""
        try:
            header = self.message.get(name)
            return [a.addr_spec for a in getattr(header, "addresses", ())]
        except Exception:  # the email package's parsers raise anything
            return []

    @cached_property
    def _nodes(self) -> list[email.message.MIMEPart]:
        """Every part in document order; an attached message is one part."""
        nodes: list[email.message.MIMEPart] = []

        def visit(part: email.message.MIMEPart) -> None:
            nodes.append(part)
            if part.get_content_maintype() == "multipart" and part.is_multipart():
                for child in part.iter_parts():
                    visit(child)

        visit(self.message)
        return nodes

    @cached_property
    def _text_part(self) -> email.message.MIMEPart | None:
        return self.message.get_body(("plain",))

    @cached_property
    def _html_part(self) -> email.message.MIMEPart | None:
        return self.message.get_body(("html",))

    @property
    def text(self) -> str | None:
        """The plain-text body, or None when the message has none."""
        return None if self._text_part is None else _decode_text(self._text_part)

    @property
    def html(self) -> str | None:
        """The HTML alternative, or None. Untrusted: serve it, never embed it."""
        return None if self._html_part is None else _decode_text(self._html_part)

    @property
    def has_html(self) -> bool:
        return self._html_part is not None

    def iter_parts(self) -> Iterator[tuple[int, email.message.MIMEPart]]:
        """Yield (index, part) for every leaf that is not a body."""
        bodies = {id(self._text_part), id(self._html_part)}
        for index, part in enumerate(self._nodes):
            if part.is_multipart() and part.get_content_maintype() == "multipart":
                continue
            if id(part) in bodies:
                continue
            yield index, part

    @cached_property
    def parts(self) -> list[Part]:
        """The attachments and inline parts, for listing with download links."""
        return [
            Part(
                index=index,
                content_type=_content_type(part),
                filename=_filename(part, index),
                size=len(_payload(part)),
                content_id=_content_id(part),
                inline=part.get_content_disposition() != "attachment",
            )
            for index, part in self.iter_parts()
        ]

    def part(self, index: int) -> email.message.MIMEPart | None:
        """Return the non-body leaf part at ``index`` (from ``parts``), or None."""
        return dict(self.iter_parts()).get(index)

    def preview_html(self) -> str | None:
        """
        Return the HTML alternative with its ``cid:`` images made ``data:`` URLs.

        Browsers cannot resolve ``cid:`` references, so the inline images
        (parts with a Content-ID) are embedded. Only exact ``cid:<id>``
        strings are replaced, by base64 text, so this cannot add markup.
        """
        html = self.html
        if html is None:
            return None
        for _index, part in self.iter_parts():
            content_id = _content_id(part)
            content_type = _content_type(part)
            if not content_id or not _IMAGE_TYPE.fullmatch(content_type):
                continue
            data = base64.b64encode(_payload(part)).decode("ascii")
            url = f"data:{content_type};base64,{data}"
            for reference in {content_id, quote(content_id, safe="@")}:
                html = html.replace(f"cid:{reference}", url)
        return html


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

    The stored outcome of a retry that finishes a message says what the
    message became over all its attempts: a retry that delivered nothing to
    a message partly delivered before is stored as "partial". Label the
    attempt by what it did.
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
        return "failed", str(_("Delivered to nobody"))
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
    Say why a failed or partially sent message failed: a permanent refusal
    (a 5xx reply), or temporary failures until the retries ran out.
    """
    failed = [r for r in recipients if r.status == "failed"]
    if obj.status not in ("failed", "partial") or not failed:
        return []
    permanent = [r for r in failed if r.smtp_code and 500 <= r.smtp_code < 600]
    temporary = [r for r in failed if r.smtp_code and 400 <= r.smtp_code < 500]
    unknown = [r for r in failed if not r.smtp_code]
    budget_spent = obj.attempts - obj.requeued_attempts >= max_attempts
    if unknown and budget_spent:
        temporary += unknown
    else:
        permanent += unknown
    lines = []
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
                "(4xx replies or connection errors), %(attempts)d attempts in a row.",
                "Retries ran out: %(count)d recipients failed only temporarily "
                "(4xx replies or connection errors), %(attempts)d attempts in a row.",
                len(temporary),
            )
            % {
                "count": len(temporary),
                "attempts": obj.attempts - obj.requeued_attempts,
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
