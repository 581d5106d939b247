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
import functools
import json
import logging
import operator
import smtplib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email.headerregistry import AddressHeader
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.models import Field
from django.utils import timezone

from . import conf
from .backends.base import BaseEmailBackend
from .envelope import stored_envelope
from .handler import mailers
from .message import EmailMessage
from .models import Attempt, OutboxMessage, Recipient, RecipientStatus, Status
from .smtp_session import Transmission, accepted, decode_reply

if TYPE_CHECKING:
    from django.db.models.options import Options

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
        self._parsed = parsed = record.parsed()
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
        if policy is email.policy.default:
            return self._parsed  # parsed once, in __init__
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
    replies: Mapping[str, tuple[int | None, str]] = field(default_factory=dict)
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
    messages = list(messages)
    # Where every recipient stands, for the whole batch in one query.
    pending: dict[int, list[str]] = defaultdict(list)
    delivered_before: set[int] = set()
    failed_before: set[int] = set()
    for message_id, address, status in (
        # The primary, never a replica that may lag behind the claim.
        Recipient.objects.using(router.db_for_write(Recipient))
        .filter(message_id__in=[m.pk for m in messages])
        .order_by("id")
        .values_list("message_id", "address", "status")
    ):
        if status in (RecipientStatus.PENDING, RecipientStatus.DEFERRED):
            pending[message_id].append(address)
        elif status == RecipientStatus.SENT:
            delivered_before.add(message_id)
        elif status == RecipientStatus.FAILED:
            failed_before.add(message_id)
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
            outcome = _attempt(record, backend, pending[record.pk])
            if outcome.connection_lost and isinstance(backend, BaseEmailBackend):
                # Start afresh for the next message of this mailer. (A mailer
                # that could not even connect stays failed for this batch.)
                _close(connections.pop(record.mailer, None))
            kind = _record(
                record,
                outcome,
                worker=worker,
                started=started,
                pending=pending[record.pk],
                delivered_before=record.pk in delivered_before,
                failed_before=record.pk in failed_before,
            )
            result.add(kind, record.pk)
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


def _attempt(
    record: OutboxMessage, backend: BaseEmailBackend | Exception, pending: list[str]
) -> Outcome:
    if not pending:
        return Outcome("sent")
    # The stored row is not trusted: an address that fails the envelope
    # check (a tampered or migrated row) fails that recipient, here, and
    # never reaches the wire; the others go ahead.
    try:
        envelope, invalid = stored_envelope(record.from_email, pending)
    except (ValueError, TypeError) as exc:
        return Outcome("failed", error=f"Not sent: {exc}")
    refused: dict[str, tuple[int | None, str]] = {
        address: (INVALID_ADDRESS_CODE, f"Not sent: {reason}")
        for address, reason in invalid.items()
    }
    if not envelope.recipients:
        return Outcome("failed", replies=refused, error="; ".join(invalid.values()))
    if isinstance(backend, Exception):
        outcome = _failure(backend)
    else:
        outcome = _send(record, backend, envelope)
    outcome.replies = {**outcome.replies, **refused}
    return outcome


#: Recorded for a recipient whose stored address fails the envelope check:
#: RFC 5321's "mailbox syntax incorrect", though no server was asked.
INVALID_ADDRESS_CODE = 553


def _send(record: OutboxMessage, backend: BaseEmailBackend, envelope: Any) -> Outcome:
    try:
        transmit = getattr(backend, "transmit", None)
        if transmit is not None:
            # SMTP: the exact stored bytes, and every server reply.
            return _smtp_outcome(transmit(envelope, bytes(record.mime)), envelope)
        stored = StoredMessage(record, list(envelope.recipients))
        if backend.send_messages([stored]):
            replies = {address: (None, "") for address in envelope.recipients}
            return Outcome("sent", replies=dict(replies))
        return Outcome("retry", error="The mailer reported the message as not sent.")
    except Exception as exc:
        return _failure(exc)


def _smtp_outcome(transmission: Transmission, envelope: Any) -> Outcome:
    # Each recipient's reply is the one that decided it (RCPT's, or the
    # reply to its transaction's DATA).
    replies: dict[str, tuple[int | None, str]] = {
        str(address): (code, decode_reply(text))
        for address, (code, text) in transmission.replies.items()
    }
    code: int | None = None
    reply = ""
    if transmission.data_reply is not None:
        code = transmission.data_reply.code
        reply = decode_reply(transmission.data_reply.text)
    error = ""
    if transmission.error is not None:
        # The connection was lost before some recipients were tried: they
        # stay pending and are retried.
        error = f"{type(transmission.error).__name__}: {transmission.error}"
    codes = [c for c, _ in replies.values() if c is not None]
    if transmission.error is not None or any(400 <= c < 500 for c in codes):
        kind = "retry"
    elif all(accepted(c) for c in codes):
        kind = "sent"
    elif any(accepted(c) for c in codes):
        kind = "partial"
    else:
        kind = "failed"
    return Outcome(
        kind,
        replies=replies,
        code=code,
        reply=reply,
        error=error,
        connection_lost=transmission.error is not None,
    )


def _failure(exc: BaseException) -> Outcome:
    """Classify an exception that stopped the whole attempt."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = {
            address: (code, decode_reply(reply))
            for address, (code, reply) in exc.recipients.items()
        }
        temporary = any(400 <= code < 500 for code, _ in replies.values())
        return Outcome(
            "retry" if temporary else "failed",
            replies=replies,
            connection_lost=any(code == 421 for code, _ in replies.values()),
            error=text,
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code, reply = exc.smtp_code, decode_reply(exc.smtp_error)
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


def _record(
    record: OutboxMessage,
    outcome: Outcome,
    *,
    worker: str,
    started: Any,
    pending: list[str],
    delivered_before: bool,
    failed_before: bool,
) -> str:
    """
    Write one attempt's outcome: recipients, the attempt, the message.

    One transaction, committed before the next message is sent: the window
    in which a crash could make this message go out twice stays this short.
    """
    now = timezone.now()
    kind = outcome.kind
    error = outcome.error or (
        f"{outcome.code} {outcome.reply}"
        if outcome.code and outcome.code >= 400
        else ""
    )
    if not error:
        # Say who was refused, and how.
        error = "; ".join(
            f"{address}: {code} {reply}"
            for address, (code, reply) in outcome.replies.items()
            if code is not None and code >= 400
        )
    # Each recipient's new state.
    rows: dict[str, tuple[str, int | None, str]] = {}
    for address, (code, reply) in outcome.replies.items():
        rows[address] = (_recipient_status(code), code, reply)
    if not outcome.replies and kind == "failed":
        for address in pending:
            rows[address] = (
                RecipientStatus.FAILED,
                outcome.code,
                outcome.reply or outcome.error,
            )
    if (
        kind == "retry"
        and record.attempts - record.requeued_attempts >= conf.max_attempts()
    ):
        # Out of attempts: what is still pending fails.
        for address in pending:
            status, code, reply = rows.get(address, (RecipientStatus.PENDING, None, ""))
            if status in (RecipientStatus.PENDING, RecipientStatus.DEFERRED):
                rows[address] = (RecipientStatus.FAILED, code, reply or error)
        kind = "final"
    if kind != "retry":
        # The message's fate is its recipients', over all its attempts.
        states = {status for status, _, _ in rows.values()}
        delivered = delivered_before or RecipientStatus.SENT in states
        failed = failed_before or RecipientStatus.FAILED in states
        kind = ("partial" if failed else "sent") if delivered else "failed"
    attempt = {
        "message_id": record.pk,
        "number": record.attempts,
        "started_at": started,
        "finished_at": now,
        "worker": worker,
        "outcome": kind,
        "smtp_code": outcome.code,
        "smtp_reply": outcome.reply,
        "error": outcome.error,
        "recipients": {
            a: [code, reply] for a, (code, reply) in outcome.replies.items()
        },
    }
    if kind == "retry":
        fields = record.retry_fields(error=error)
    else:
        final = {
            "sent": Status.SENT,
            "partial": Status.PARTIAL,
            "failed": Status.FAILED,
        }
        fields = record.finish_fields(final[kind], error=error)
    fields["updated_at"] = now
    _write(record, rows, attempt, fields)
    if kind != "sent":
        logger.warning("Outbox message %s: %s. %s", record.pk, kind, error)
    return kind


def _recipient_status(code: int | None) -> str:
    if code is None or accepted(code):
        return RecipientStatus.SENT
    if 400 <= code < 500:
        return RecipientStatus.DEFERRED
    return RecipientStatus.FAILED


def _write(
    record: OutboxMessage,
    rows: dict[str, tuple[str, int | None, str]],
    attempt: dict[str, Any],
    fields: dict[str, Any],
) -> None:
    """Save the recipients' states, the attempt and the message's, atomically."""
    db = router.db_for_write(OutboxMessage)
    if connections[db].vendor == "postgresql":
        _write_postgresql(record, rows, attempt, fields, db)
        return
    with transaction.atomic(using=db):
        still_pending = Recipient.objects.filter(
            message=record,
            status__in=(RecipientStatus.PENDING, RecipientStatus.DEFERRED),
        )
        # One UPDATE per distinct result: usually one for the whole message.
        groups: dict[tuple[str, int | None, str], list[str]] = defaultdict(list)
        for address, state in rows.items():
            groups[state].append(address)
        for (status, code, reply), addresses in groups.items():
            still_pending.filter(address__in=addresses).update(
                status=status,
                smtp_code=code,
                smtp_reply=reply,
                updated_at=fields["updated_at"],
            )
        Attempt.objects.create(**attempt)
        record._update_claimed(**fields)


def _write_postgresql(
    record: OutboxMessage,
    rows: dict[str, tuple[str, int | None, str]],
    attempt: dict[str, Any],
    fields: dict[str, Any],
    db: str,
) -> None:
    """
    The same writes as _write(), in one statement and one round trip.

    This runs once per delivered message, so on PostgreSQL the three writes
    go in one statement with data-modifying CTEs, skipping the ORM's cost of
    building three queries and three round trips.
    """
    states = set(rows.values())
    # Usually every recipient has the same result: a plain UPDATE does.
    shape = "uniform" if len(states) == 1 else "mixed" if rows else "none"
    sql = _postgresql_sql(shape, tuple(fields))
    connection = connections[db]
    params: list[Any] = []
    if shape == "uniform":
        ((status, code, reply),) = states
        params += [status, code, reply, fields["updated_at"], record.pk, list(rows)]
    elif shape == "mixed":
        addresses = list(rows)
        params += [
            fields["updated_at"],
            addresses,
            [rows[a][0] for a in addresses],
            [rows[a][1] for a in addresses],
            [rows[a][2] for a in addresses],
            record.pk,
        ]
    params += [*_ATTEMPT_VALUES(attempt)[:-1], json.dumps(attempt["recipients"])]
    params += list(fields.values())
    params += [record.pk, record.claimed_by]
    if _execute(connection, sql, params):
        for name, value in fields.items():
            setattr(record, name, value)


# The attempt's columns, in the order _write_postgresql() passes them.
_ATTEMPT_FIELDS = (
    "message",
    "number",
    "started_at",
    "finished_at",
    "worker",
    "outcome",
    "smtp_code",
    "smtp_reply",
    "error",
    "recipients",
)
_ATTEMPT_VALUES = operator.itemgetter(
    "message_id", *(name for name in _ATTEMPT_FIELDS if name != "message")
)


def _execute(connection: Any, sql: str, params: list[Any]) -> int:
    """Run ``sql`` with parameters bound on the server where psycopg 3 allows."""
    connection.ensure_connection()
    raw = connection.connection
    try:
        import psycopg
    except ImportError:  # psycopg2
        psycopg = None  # type: ignore[assignment]  # checked just below
    if psycopg is not None and isinstance(raw, psycopg.Connection):
        # psycopg's own cursor sends the parameters separately (Django's
        # quotes each one into the SQL text in Python, which costs more per
        # message). Not a named prepared statement: those break behind
        # transaction-pooling PgBouncer, which is why Django avoids them.
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(sql, params, prepare=False)
            return cursor.rowcount
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rowcount: int = cursor.rowcount
        return rowcount


@functools.cache
def _postgresql_sql(shape: str, field_names: tuple[str, ...]) -> str:
    quote = connections[router.db_for_write(OutboxMessage)].ops.quote_name
    r_meta, a_meta, m_meta = Recipient._meta, Attempt._meta, OutboxMessage._meta

    def col(meta: Options[Any], name: str) -> str:
        model_field = meta.get_field(name)
        assert isinstance(model_field, Field) and model_field.column  # concrete
        return quote(model_field.column)

    ctes: list[str] = []
    still_pending = (
        f"r.{col(r_meta, 'status')} IN "
        f"('{RecipientStatus.PENDING}', '{RecipientStatus.DEFERRED}')"
    )
    if shape == "uniform":
        ctes.append(
            f"rcpt AS (UPDATE {quote(r_meta.db_table)} AS r SET "
            f"{col(r_meta, 'status')} = %s, {col(r_meta, 'smtp_code')} = %s, "
            f"{col(r_meta, 'smtp_reply')} = %s, {col(r_meta, 'updated_at')} = %s "
            f"WHERE r.{col(r_meta, 'message')} = %s "
            f"AND r.{col(r_meta, 'address')} = ANY(%s::text[]) AND {still_pending})"
        )
    elif shape == "mixed":
        ctes.append(
            f"rcpt AS (UPDATE {quote(r_meta.db_table)} AS r SET "
            f"{col(r_meta, 'status')} = v.status, {col(r_meta, 'smtp_code')} = v.code, "
            f"{col(r_meta, 'smtp_reply')} = v.reply, {col(r_meta, 'updated_at')} = %s "
            "FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[]) "
            "AS v(address, status, code, reply) "
            f"WHERE r.{col(r_meta, 'message')} = %s "
            f"AND r.{col(r_meta, 'address')} = v.address "
            f"AND {still_pending})"
        )
    attempt_columns = ", ".join(col(a_meta, n) for n in _ATTEMPT_FIELDS)
    ctes.append(
        f"att AS (INSERT INTO {quote(a_meta.db_table)} ({attempt_columns}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb))"
    )
    assignments = ", ".join(f"{col(m_meta, name)} = %s" for name in field_names)
    return (
        f"WITH {', '.join(ctes)} UPDATE {quote(m_meta.db_table)} SET {assignments} "
        f"WHERE {col(m_meta, 'id')} = %s "
        f"AND {col(m_meta, 'status')} = '{Status.SENDING}' "
        f"AND {col(m_meta, 'claimed_by')} = %s"
    )
