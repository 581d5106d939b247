"""
Delivery of claimed outbox messages, and the record of each attempt.

``deliver_batch()`` takes messages already leased to a worker (see
``OutboxMessageQuerySet.claim()``), opens one connection per mailer, sends
each message to its pending recipients, and writes the outcome right after
each message. Nothing here runs inside a transaction while talking SMTP.

Classification:

* connection failures, timeouts and 4xx replies are temporary: the message
  is retried with exponential backoff until ``MAILKIT['MAX_ATTEMPTS']``;
* 5xx replies are permanent;
* per recipient, 4xx at RCPT defers that recipient alone, 5xx fails it, and
  a recipient the server accepted is never sent to again;
* any other error (the message can't be handled at all) is permanent, and
  recorded on the message, which stays visible as failed.
"""

from __future__ import annotations

import email.policy
import logging
import smtplib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from email.headerregistry import AddressHeader
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from . import conf
from .backends.base import BaseEmailBackend
from .handler import mailers
from .message import EmailMessage
from .models import Attempt, OutboxMessage, Recipient, RecipientStatus, Status

logger = logging.getLogger("django_mailkit.delivery")

__all__ = ["BatchResult", "deliver_batch"]


@dataclass
class BatchResult:
    """What a batch did: message ids by outcome."""

    sent: list[int] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def add(self, outcome: str, message_id: int) -> None:
        getattr(self, outcome).append(message_id)

    @property
    def handled(self) -> int:
        return len(self.sent) + len(self.partial) + len(self.retry) + len(self.failed)


class StoredMessage(EmailMessage):
    """
    An outbox message as an EmailMessage, for backends other than SMTP.

    ``message()`` returns the stored bytes, parsed; ``recipients()`` is the
    stored envelope (only the recipients still pending).
    """

    def __init__(self, record: OutboxMessage, recipients: list[str]) -> None:
        self.mime = bytes(record.mime)
        parsed = record.parsed()
        super().__init__(
            subject=record.subject,
            body=_plain_body(parsed),
            from_email=record.from_email,
            to=_header_addresses(parsed, "To"),
            cc=_header_addresses(parsed, "Cc"),
            reply_to=_header_addresses(parsed, "Reply-To"),
        )
        self.envelope = list(recipients)
        self.outbox_id = record.pk

    def recipients(self) -> list[Any]:
        return list(self.envelope)

    def message(self, *, policy: email.policy.Policy = email.policy.default) -> Any:
        return email.message_from_bytes(self.mime, policy=policy)


def _plain_body(parsed: Any) -> str:
    body = parsed.get_body(("plain",))
    try:
        return body.get_content() if body is not None else ""
    except (LookupError, KeyError):
        return ""


def _header_addresses(parsed: Any, name: str) -> list[str]:
    header = parsed.get(name)
    if header is None or not isinstance(header, AddressHeader):
        return []
    return [str(address) for address in header.addresses]


@dataclass(kw_only=True)
class Outcome:
    """The result of one attempt, before it is written."""

    kind: str = field(kw_only=False)  # an Attempt.Outcome value
    #: The connection can't be used for another message.
    connection_lost: bool = False
    replies: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    code: int | None = None
    reply: str = ""
    error: str = ""


def deliver_batch(
    messages: Iterable[OutboxMessage],
    *,
    worker: str,
    lease: timedelta | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResult:
    """
    Deliver messages leased to ``worker``, one connection per mailer.

    ``should_stop`` is asked before each message; once it says yes, the
    remaining messages are released to the queue untried.
    """
    lease = lease or timedelta(seconds=conf.lease_seconds())
    result = BatchResult()
    connections: dict[str, BaseEmailBackend | Exception] = {}
    try:
        for record in messages:
            if should_stop is not None and should_stop():
                record.release()
                result.add("skipped", record.pk)
                continue
            if not _still_ours(record, lease):
                result.add("skipped", record.pk)
                continue
            started = timezone.now()
            backend = _connection_for(record.mailer, connections)
            outcome = _attempt(record, backend)
            if outcome.connection_lost:
                # Start afresh for the next message of this mailer.
                _close(connections.pop(record.mailer, None))
            result.add(_record(record, outcome, worker, started), record.pk)
    finally:
        for backend in connections.values():
            _close(backend)
    return result


def _still_ours(record: OutboxMessage, lease: timedelta) -> bool:
    # Renew a lease that is past half its length, so a long batch never
    # runs into expiry (which would let another worker send the same mail).
    assert record.lease_expires_at is not None
    if record.lease_expires_at - timezone.now() > lease / 2:
        return True
    return record.renew_lease(lease)


def _connection_for(
    alias: str, connections: dict[str, BaseEmailBackend | Exception]
) -> BaseEmailBackend | Exception:
    if alias not in connections:
        try:
            backend = mailers[alias]
            backend.open()
            connections[alias] = backend
        except Exception as exc:  # recorded on each message of this mailer
            connections[alias] = exc
    return connections[alias]


def _close(backend: BaseEmailBackend | Exception | None) -> None:
    if isinstance(backend, BaseEmailBackend):
        try:
            backend.close()
        except Exception:
            logger.warning("Closing mailer %r failed", backend.alias, exc_info=True)


def _attempt(record: OutboxMessage, backend: BaseEmailBackend | Exception) -> Outcome:
    pending = list(
        record.recipient_set.filter(
            status__in=(RecipientStatus.PENDING, RecipientStatus.DEFERRED)
        ).values_list("address", flat=True)
    )
    if not pending:
        return Outcome("sent")
    if isinstance(backend, Exception):
        return _failure(backend)
    try:
        transmit = getattr(backend, "transmit", None)
        if transmit is not None:
            # SMTP: the exact stored bytes, and every server reply.
            transmission = transmit(
                record.from_email,
                pending,
                bytes(record.mime),
                smtputf8=not all(a.isascii() for a in [record.from_email, *pending]),
            )
            return _smtp_outcome(transmission)
        if backend.send_messages([StoredMessage(record, pending)]):
            return Outcome("sent", replies={address: (None, "") for address in pending})
        return Outcome("retry", error="The mailer reported the message as not sent.")
    except Exception as exc:
        return _failure(exc)


def _smtp_outcome(transmission: Any) -> Outcome:
    replies: dict[str, tuple[int | None, str]] = {
        address: (code, _decode(reply))
        for address, (code, reply) in transmission.replies.items()
    }
    code: int | None = None
    reply = ""
    if transmission.data_reply is not None:
        code, reply = transmission.data_reply[0], _decode(transmission.data_reply[1])
        # DATA's answer is the answer for every recipient RCPT accepted.
        for address, (rcpt_code, _) in list(replies.items()):
            if rcpt_code is not None and 200 <= rcpt_code < 300:
                replies[address] = (code, reply)
    codes = [c for c, _ in replies.values() if c is not None]
    if all(200 <= c < 300 for c in codes):
        kind = "sent"
    elif any(400 <= c < 500 for c in codes):
        kind = "retry"
    elif any(200 <= c < 300 for c in codes):
        kind = "partial"
    else:
        kind = "failed"
    return Outcome(kind, replies=replies, code=code, reply=reply)


def _failure(exc: BaseException) -> Outcome:
    """Classify an exception that stopped the whole attempt."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = {
            address: (code, _decode(reply)) for address, (code, reply) in exc.recipients.items()
        }
        temporary = any(400 <= code < 500 for code, _ in replies.values())
        return Outcome(
            "retry" if temporary else "failed",
            replies=replies,
            connection_lost=any(code == 421 for code, _ in replies.values()),
            error=text,
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code, reply = exc.smtp_code, _decode(exc.smtp_error)
        text = f"{type(exc).__name__}: {code} {reply}"
        temporary = not 500 <= code < 600
        return Outcome(
            "retry" if temporary else "failed",
            # 421: the server is closing the connection.
            connection_lost=code == 421,
            code=code,
            reply=reply,
            error=text,
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return Outcome("failed", error=text)  # e.g. SMTPUTF8 needed, not offered
    if isinstance(exc, OSError | ImproperlyConfigured):
        # Network trouble, or a mailer misconfiguration someone may fix.
        return Outcome("retry", connection_lost=True, error=text)
    return Outcome("failed", error=text)


def _decode(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _record(record: OutboxMessage, outcome: Outcome, worker: str, started: Any) -> str:
    """Write one attempt's outcome: recipients, the attempt, the message."""
    now = timezone.now()
    _update_recipients(record, outcome, now)
    kind = outcome.kind
    if kind == "retry" and record.attempts - record.requeued_attempts >= conf.max_attempts():
        kind = _give_up(record, now)
    Attempt.objects.create(
        message=record,
        number=record.attempts,
        started_at=started,
        finished_at=now,
        worker=worker,
        outcome=kind,
        smtp_code=outcome.code,
        smtp_reply=outcome.reply,
        error=outcome.error,
        recipients={a: [code, reply] for a, (code, reply) in outcome.replies.items()},
    )
    error = outcome.error or (
        f"{outcome.code} {outcome.reply}" if outcome.code and outcome.code >= 400 else ""
    )
    if kind == "retry":
        record.retry_later(error=error)
    else:
        final = {"sent": Status.SENT, "partial": Status.PARTIAL, "failed": Status.FAILED}
        record.finish(final[kind], error=error)
    if kind != "sent":
        logger.warning("Outbox message %s: %s. %s", record.pk, kind, error)
    return kind


def _update_recipients(record: OutboxMessage, outcome: Outcome, now: Any) -> None:
    if not outcome.replies:
        if outcome.kind == "failed":
            Recipient.objects.filter(
                message=record,
                status__in=(RecipientStatus.PENDING, RecipientStatus.DEFERRED),
            ).update(
                status=RecipientStatus.FAILED,
                smtp_code=outcome.code,
                smtp_reply=outcome.reply or outcome.error,
                updated_at=now,
            )
        return
    rows = list(Recipient.objects.filter(message=record, address__in=outcome.replies))
    for row in rows:
        code, reply = outcome.replies[row.address]
        if code is None or 200 <= code < 300:
            row.status = RecipientStatus.SENT
        elif 400 <= code < 500:
            row.status = RecipientStatus.DEFERRED
        else:
            row.status = RecipientStatus.FAILED
        row.smtp_code, row.smtp_reply, row.updated_at = code, reply, now
    Recipient.objects.bulk_update(rows, ["status", "smtp_code", "smtp_reply", "updated_at"])


def _give_up(record: OutboxMessage, now: Any) -> str:
    """Out of attempts: fail what is still pending; say what the message became."""
    Recipient.objects.filter(
        message=record, status__in=(RecipientStatus.PENDING, RecipientStatus.DEFERRED)
    ).update(status=RecipientStatus.FAILED, updated_at=now)
    delivered = record.recipient_set.filter(status=RecipientStatus.SENT).exists()
    return "partial" if delivered else "failed"
