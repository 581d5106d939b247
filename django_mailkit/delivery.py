"""
Delivery of claimed outbox messages, and the record of each attempt.

``deliver_batch()`` takes messages already leased to a worker (see
``OutboxMessageQuerySet.claim()``), opens one connection per mailer, sends
each message to its pending recipients (a group's messages for one SMTP
mailer as one pipelined run, ``_Run``), and writes the outcomes a group at
a time. Nothing here runs inside a transaction while talking SMTP.

Classification:

* connection failures, timeouts and 4xx replies are temporary: the message
  is retried with exponential backoff until ``MAILKIT['MAX_ATTEMPTS']``;
* 5xx replies are permanent;
* per recipient, 4xx at RCPT defers that recipient alone, 5xx fails it, and
  a recipient the server accepted is never sent to again;
* any other error (the message can't be handled at all) is permanent, and
  recorded on the message, which stays visible as failed.

Suppression (``django_mailkit.suppression``): a pending recipient on the
suppression list is recorded as suppressed and never sent to; a 5xx at RCPT
that says the address is dead puts it on the list.
"""

from __future__ import annotations

import dataclasses
import email.policy
import enum
import logging
import smtplib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email.headerregistry import AddressHeader
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import router
from django.utils import timezone

from . import conf, suppression
from ._sql import one_of
from .backends.base import BaseEmailBackend
from .envelope import envelope_address, stored_envelope
from .handler import mailers
from .limits import Gate
from .message import EmailMessage
from .models import Attempt, AttemptRecord, OutboxMessage, Recipient, RecipientStatus
from .smtp_session import (
    Job,
    NotStarted,
    Transmission,
    accepted,
    decode_reply,
    known_code,
)

logger = logging.getLogger("django_mailkit.delivery")

__all__ = ["BatchResult", "Result", "deliver_batch"]


class Result(enum.Enum):
    """What became of one claimed message in a batch."""

    SENT = "sent"
    PARTIAL = "partial"
    #: Queued again, after a backoff.
    RETRY = "retry"
    FAILED = "failed"
    #: Every recipient was suppressed: nothing was sent.
    SUPPRESSED = "suppressed"
    #: Given back to the queue untried (the worker is stopping).
    RELEASED = "released"
    #: Another worker holds the message now (this one's lease ran out):
    #: nothing was written.
    LEASE_LOST = "lease lost"


@dataclass
class BatchResult:
    """What a batch did: message ids by result."""

    sent: list[int] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    suppressed: list[int] = field(default_factory=list)
    #: Released untried.
    skipped: list[int] = field(default_factory=list)
    lease_lost: list[int] = field(default_factory=list)

    def add(self, result: Result, message_id: int) -> None:
        getattr(self, _BATCH_LISTS[result]).append(message_id)

    @property
    def _lists(self) -> dict[Result, list[int]]:
        return {result: getattr(self, name) for result, name in _BATCH_LISTS.items()}

    def of(self, message_id: int) -> Result | None:
        """What became of ``message_id`` in this batch (None: not in it)."""
        for result, ids in self._lists.items():
            if message_id in ids:
                return result
        return None

    @property
    def handled(self) -> int:
        """Messages attempted and recorded."""
        return (
            len(self.sent)
            + len(self.partial)
            + len(self.retry)
            + len(self.failed)
            + len(self.suppressed)
        )


#: The BatchResult list of each Result.
_BATCH_LISTS = {
    Result.SENT: "sent",
    Result.PARTIAL: "partial",
    Result.RETRY: "retry",
    Result.FAILED: "failed",
    Result.SUPPRESSED: "suppressed",
    Result.RELEASED: "skipped",
    Result.LEASE_LOST: "lease_lost",
}


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


Kind = Attempt.Outcome


#: The Result of recording each kind of outcome.
_RESULTS = {
    Kind.SENT: Result.SENT,
    Kind.PARTIAL: Result.PARTIAL,
    Kind.RETRY: Result.RETRY,
    Kind.FAILED: Result.FAILED,
    Kind.SUPPRESSED: Result.SUPPRESSED,
}


@dataclass(kw_only=True)
class Outcome:
    """What one attempt's transaction returned, before it is classified."""

    kind: Kind = field(kw_only=False)
    #: The connection can't be used for another message.
    connection_lost: bool = False
    replies: Mapping[str, tuple[int | None, str]] = field(default_factory=dict)
    code: int | None = None
    reply: str = ""
    error: str = ""
    #: The recipients (in ``replies``) refused at their own RCPT TO.
    refused_at_rcpt: set[str] = field(default_factory=set)


def deliver_batch(
    messages: Iterable[OutboxMessage],
    *,
    worker: str,
    lease: timedelta | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResult:
    """
    Deliver messages leased to ``worker``, one connection per mailer.

    The messages go in groups (``_group()``): a group's bytes are loaded
    together, right before its first message is sent (a fenced read: a
    message whose lease was lost meanwhile is not sent), and each message's
    attempt is counted when its outcome is written. Outcomes are written a
    group at a time, together with the read of the next group
    (``OutboxMessageQuerySet.record_attempts()``), or sooner once the
    oldest unwritten one is ``RECORD_GROUP_SECONDS`` old: that is the
    accepted-but-not-recorded window (docs/topics/outbox). A message sent
    alone (a retry, a large one, one recovered from a dead worker) is
    charged its attempt before it is sent (``begin_attempt()``).

    ``should_stop`` is asked before and after each message; once it says
    yes, the outcomes so far are written and the remaining messages are
    released to the queue untried (uncharged).
    """
    lease = lease or timedelta(seconds=conf.lease_seconds())
    result = BatchResult()
    connections: dict[str, BaseEmailBackend | Exception] = {}
    messages = list(messages)
    # Where every recipient stands, for the whole batch in one query.
    pending: dict[int, list[str]] = defaultdict(list)
    delivered_before: set[int] = set()
    failed_before: set[int] = set()
    suppressed_before: set[int] = set()
    for message_id, address, status in (
        # The primary, never a replica that may lag behind the claim.
        Recipient.objects.using(db := router.db_for_write(Recipient))
        .filter(one_of("message_id", [m.pk for m in messages], db, integers=True))
        .order_by("id")
        .values_list("message_id", "address", "status")
    ):
        if status in (RecipientStatus.PENDING, RecipientStatus.DEFERRED):
            pending[message_id].append(address)
        elif status == RecipientStatus.SENT:
            delivered_before.add(message_id)
        elif status == RecipientStatus.FAILED:
            failed_before.add(message_id)
        elif status == RecipientStatus.SUPPRESSED:
            suppressed_before.add(message_id)
    # Suppressed recipients leave the envelope here: they never reach the wire.
    suppressed = suppression.suppressed_recipients(messages, pending)
    for message_id, skipped in suppressed.items():
        pending[message_id] = [a for a in pending[message_id] if a not in skipped]
    stopping = should_stop or (lambda: False)
    recorder = _Recorder(worker, lease, result, delivered_before)
    # The mailers' shared limits (django_mailkit.limits): a token and a
    # connection slot for each message before its attempt is counted, but
    # for one with nobody left to send to, which opens no connection.
    gate = Gate(
        [m for m in messages if pending[m.pk]],
        worker=worker,
        lease=lease,
        should_stop=stopping,
    )
    # Messages of the groups begun so far: True if they were loaded (this
    # worker holds the lease; the attempt is counted, in memory for a
    # group's), False if the lease was lost.
    begun: dict[int, bool] = {}
    # Messages sent in an earlier message's run (_Run), recorded already.
    done: set[int] = set()
    try:
        for index, record in enumerate(messages):
            pk = record.pk
            if pk in done:
                continue
            if stopping():
                recorder.flush()
                for rest in messages[index:]:
                    if rest.pk in done:
                        continue  # sent in an earlier message's run
                    if rest.release(begun=begun.get(rest.pk, False)):
                        result.add(Result.RELEASED, rest.pk)
                    else:
                        result.add(Result.LEASE_LOST, rest.pk)
                break
            if pk not in begun:
                group = _admitted(gate, recorder, _group(messages, index), pending)
                if not group:
                    # Its mailer's limits can't let it go before half the
                    # lease is spent: back to the queue, untried, uncharged.
                    if record.release():
                        result.add(Result.RELEASED, pk)
                    else:
                        result.add(Result.LEASE_LOST, pk)
                    continue
                begun.update(recorder.begin(group))
            elif recorder.due():
                recorder.flush()
            # The fence before the send: a worker paused past its lease
            # learns here that the message is someone else's now.
            if not begun[pk] or not _lease_held(record, lease):
                _lease_lost(record, worker, "before sending")
                result.add(Result.LEASE_LOST, pk)
                continue
            backend: BaseEmailBackend | Exception | None = None
            sent: list[tuple[OutboxMessage, Any, Outcome]] = []
            since = time.monotonic()
            try:
                if pending[pk]:
                    backend = _connection_for(record.mailer, connections)
                    run = _Run(record, backend, pending, lease, recorder, stopping)
                    run.join(messages[index + 1 :], begun, done)
                    sent = run.send(since)
                else:
                    # Nobody left to send to (all suppressed): no connection.
                    sent = [(record, timezone.now(), Outcome(Kind.SENT))]
            finally:
                record.forget_bytes()
                for other, _, _ in sent:
                    other.forget_bytes()
            if isinstance(backend, BaseEmailBackend) and any(
                outcome.connection_lost for _, _, outcome in sent
            ):
                # Start afresh for the next message of this mailer. (A mailer
                # that could not even connect stays failed for this batch.)
                _close(connections.pop(record.mailer, None))
            classified = []
            error: Exception | None = None
            for sent_record, started, outcome in sent:
                sent_pk = sent_record.pk
                done.add(sent_pk)
                try:
                    attempt = _classify(
                        sent_record,
                        outcome,
                        worker=worker,
                        started=started,
                        pending=pending[sent_pk],
                        delivered_before=sent_pk in delivered_before,
                        failed_before=sent_pk in failed_before,
                        suppressed=suppressed.get(sent_pk, {}),
                        suppressed_before=sent_pk in suppressed_before,
                    )
                except Exception as exc:
                    # Raised after the others of the run are recorded.
                    error = error or exc
                    continue
                classified.append((sent_record, attempt, outcome))
            recorder.add(classified, since=since)
            if error is not None:
                raise error
            if index + 1 < len(messages) and stopping():
                recorder.flush()  # the release follows at the next message
        recorder.flush()
    except Exception:
        # Whatever stopped the batch (the database failing while a lease is
        # renewed or a message admitted, a transport's odd error), the
        # outcomes of the messages already sent are written first: left
        # unwritten, their claims would expire, and lease recovery would
        # send them again. (A flush that failed has nothing left to write.)
        try:
            recorder.flush()
        except Exception:
            logger.exception("Writing the outcomes of a failed batch failed too")
        raise
    finally:
        for backend in connections.values():
            _close(backend)
        gate.close()
    return result


def _admitted(
    gate: Gate,
    recorder: _Recorder,
    group: list[OutboxMessage],
    pending: Mapping[int, list[str]],
) -> list[OutboxMessage]:
    """
    The first messages of ``group`` the mailers' limits let go now.

    The first may wait for its token (or slot); the outcomes not written
    yet are written first, so that a wait doesn't hold them back. The
    others only use tokens that take already got: the group ends at the
    first that can't go. A message with no ``pending`` recipient opens no
    connection: it needs neither token nor slot.
    """

    def admit(record: OutboxMessage, **how: bool) -> bool:
        return not pending[record.pk] or gate.admit(record, **how)

    first, *rest = group
    if not admit(first, wait=False):
        recorder.flush()
        if not admit(first):
            return []
    admitted = [first]
    for record in rest:
        if not admit(record, wait=False, take=False):
            break
        admitted.append(record)
    return admitted


#: A group's messages are loaded together: at most this many bytes in all.
#: A larger message is a group of its own (and is read in pieces).
GROUP_BYTES = 1 << 20


def _group(messages: list[OutboxMessage], index: int) -> list[OutboxMessage]:
    """
    The messages begun together from ``messages[index]``: at most
    ``RECORD_GROUP_SIZE`` of them, ``GROUP_BYTES`` in all.

    A message that goes alone (``_alone()``) is a group of its own.
    """
    size = conf.record_group_size()
    group: list[OutboxMessage] = []
    total = 0
    for record in messages[index : index + size]:
        if _alone(record) or total + (record.size or 0) > GROUP_BYTES:
            return group or [record]
        group.append(record)
        total += record.size or 0
    return group


def _alone(record: OutboxMessage) -> bool:
    """
    Whether ``record`` is sent alone, charged its attempt before the send.

    A group's messages are charged with their outcomes, so a worker that
    dies inside a group charges none of them. A message recovered from a
    worker that died may be what killed it: from then on it goes alone,
    where a crash charges exactly the message in flight, so that one that
    kills its worker every time spends its own retry budget and no one
    else's (``OutboxMessageQuerySet.recover_expired()`` fails it once it is
    spent). A retry goes alone too, and so does a message too large for a
    group's read (or of unknown size).
    """
    return (
        record.size is None
        or record.size > GROUP_BYTES
        or record.recoveries > 0
        or record.attempts > record.requeued_attempts
    )


def _lease_fresh(record: OutboxMessage, lease: timedelta) -> bool:
    """Whether less than half of the lease is spent: no renewal due."""
    expires = record.lease_expires_at
    return expires is not None and timezone.now() < expires - lease / 2


def _lease_held(record: OutboxMessage, lease: timedelta) -> bool:
    """Renew the lease (fenced) once half of it is spent; False if lost."""
    return _lease_fresh(record, lease) or record.renew_lease(lease)


class _Recorder:
    """
    Outcomes not written yet, and the writes: a group at a time, with the
    start of the next group, or once the oldest is RECORD_GROUP_SECONDS old.
    """

    def __init__(
        self,
        worker: str,
        lease: timedelta,
        result: BatchResult,
        delivered_before: set[int],
    ) -> None:
        self.worker = worker
        #: Messages an earlier attempt delivered to someone.
        self.delivered_before = delivered_before
        self.lease = lease
        self.result = result
        self.seconds = conf.record_group_seconds()
        self.unwritten: list[tuple[OutboxMessage, AttemptRecord]] = []
        self.outcomes: dict[int, Outcome] = {}
        self.oldest = 0.0

    def add(
        self,
        sent: list[tuple[OutboxMessage, AttemptRecord, Outcome]],
        *,
        since: float,
    ) -> None:
        """The outcomes of one send (a run's); ``since``: when it began."""
        for record, attempt, outcome in sent:
            if not self.unwritten:
                self.oldest = since
            self.unwritten.append((record, attempt))
            self.outcomes[record.pk] = outcome
        if self.due():
            self.flush()

    def due(self) -> bool:
        # (There are never more than a group's: each group's first
        # message writes the previous group's outcomes.)
        return bool(self.unwritten) and (time.monotonic() - self.oldest >= self.seconds)

    def begin(self, group: list[OutboxMessage]) -> dict[int, bool]:
        """
        Write what is unwritten, and begin ``group``; who was begun.

        A group is loaded in the same statement as the write (on
        PostgreSQL); a message that goes alone is charged its attempt
        before it is sent, on its own.
        """
        if len(group) == 1 and _alone(group[0]):
            self.flush()
            (record,) = group
            return {record.pk: record.begin_attempt(self.lease)}
        return self.flush(then_load=group)

    def flush(self, then_load: list[OutboxMessage] | None = None) -> dict[int, bool]:
        """Write what is unwritten, then load ``then_load``; who was loaded."""
        outcomes, self.unwritten = self.unwritten, []
        then_load = then_load or []
        if not outcomes and not then_load:
            return {}
        try:
            written, begun = OutboxMessage.objects.record_attempts(
                outcomes, then_load=then_load
            )
        except Exception:
            if not outcomes:
                raise
            # Nothing of it was written. Each message alone, so that one bad
            # row doesn't keep the others' outcomes from being recorded.
            written = set()
            recorded = []
            for record, attempt in outcomes:
                try:
                    written |= OutboxMessage.objects.record_attempts(
                        [(record, attempt)]
                    )[0]
                except Exception as alone:
                    try:
                        attempt, finished = _finish_unrecorded(
                            record,
                            attempt,
                            alone,
                            delivered_before=record.pk in self.delivered_before,
                        )
                    except Exception:
                        # Nothing of it can be written: it stays claimed
                        # until its lease runs out (recover_expired()). The
                        # others' outcomes are still written, so that they
                        # are not sent again.
                        logger.exception(
                            "Outbox message %s: finishing it failed too; it "
                            "stays claimed until its lease runs out.",
                            record.pk,
                        )
                        self.outcomes.pop(record.pk, None)
                        continue
                    if finished:
                        written.add(record.pk)
                recorded.append((record, attempt))
            outcomes = recorded
            begun = set()
            if then_load:
                begun = OutboxMessage.objects.load_group(then_load)
        for record, attempt in outcomes:
            pk = record.pk
            outcome = self.outcomes.pop(pk, None)
            if pk not in written:
                # Sent, but another worker holds the message now: its record
                # stands (docs/topics/outbox.rst, on the one window for a
                # duplicate).
                _lease_lost(record, self.worker, "after sending")
                self.result.add(Result.LEASE_LOST, pk)
                continue
            if outcome is not None and outcome.refused_at_rcpt:
                _suppress_refused(record, outcome)
            if attempt.outcome != Kind.SENT:
                logger.warning(
                    "Outbox message %s: %s. %s",
                    pk,
                    attempt.outcome.label,
                    attempt.error,
                )
            self.result.add(_RESULTS[attempt.outcome], pk)
        return {message.pk: message.pk in begun for message in then_load}


def _suppress_refused(record: OutboxMessage, outcome: Outcome) -> None:
    """List the addresses refused for good at RCPT (never fails the batch)."""
    refusals = {
        address: outcome.replies[address]
        for address in outcome.refused_at_rcpt
        if address in outcome.replies
    }
    try:
        suppression.record_refusals(record, refusals)
    except Exception:
        logger.exception(
            "Outbox message %s: listing refused recipients as suppressed failed",
            record.pk,
        )


def _finish_unrecorded(
    record: OutboxMessage,
    attempt: AttemptRecord,
    exc: Exception,
    *,
    delivered_before: bool,
) -> tuple[AttemptRecord, bool]:
    """
    Finish a message whose attempt could not be written: never sent again.

    Its recipients' rows keep their old state; the message's status says
    what the attempt did, and its error why nothing else was recorded.
    """
    logger.exception(
        "Outbox message %s: writing the attempt's outcome failed; the "
        "message is finished without it so that it is not sent again.",
        record.pk,
    )
    status = attempt.outcome
    if status == Attempt.Outcome.RETRY:
        # Partially sent if anyone got it, in this attempt or an earlier one.
        delivered = delivered_before or any(
            status == RecipientStatus.SENT
            for status, _, _ in attempt.recipients.values()
        )
        status = Attempt.Outcome.PARTIAL if delivered else Attempt.Outcome.FAILED
    error = decode_reply(
        f"The attempt's outcome could not be recorded "
        f"({type(exc).__name__}: {exc}); not retried. {attempt.error}"
    )
    attempt = dataclasses.replace(attempt, outcome=status, error=error)
    return attempt, record.finish(status, error=error)


def _lease_lost(record: OutboxMessage, worker: str, when: str) -> None:
    logger.warning(
        "Outbox message %s: lease lost %s (worker %s, claim %s); another "
        "worker holds it now, so nothing was recorded.",
        record.pk,
        when,
        worker,
        record.claim_token,
    )


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
    record: OutboxMessage,
    backend: BaseEmailBackend | Exception,
    pending: list[str],
    lease: timedelta,
) -> Outcome:
    if not pending:
        return Outcome(Kind.SENT)
    prepared = _prepared(record, pending)
    if isinstance(prepared, Outcome):
        return prepared
    envelope, invalid = prepared
    if isinstance(backend, Exception):
        outcome = _failure(backend)
    else:
        outcome = _send(record, backend, envelope, lease)
    return _as_stored(outcome, envelope, pending, invalid)


def _prepared(
    record: OutboxMessage, pending: list[str]
) -> tuple[Any, dict[str, str]] | Outcome:
    """
    The envelope of ``record`` to its ``pending`` recipients, and the
    invalid ones; or the outcome, when nobody can be sent to.

    The stored row is not trusted: an address that fails the envelope
    check (a tampered or migrated row) fails that recipient, here, and
    never reaches the wire; the others go ahead.
    """
    try:
        envelope, invalid = stored_envelope(record.from_email, pending)
    except (ValueError, TypeError) as exc:
        return Outcome(Kind.FAILED, error=f"Not sent: {exc}")
    if not envelope.recipients:
        return Outcome(
            Kind.FAILED, replies=_invalid(invalid), error="; ".join(invalid.values())
        )
    return envelope, invalid


def _invalid(invalid: dict[str, str]) -> dict[str, tuple[int | None, str]]:
    return {
        address: (INVALID_ADDRESS_CODE, f"Not sent: {reason}")
        for address, reason in invalid.items()
    }


def _as_stored(
    outcome: Outcome, envelope: Any, pending: list[str], invalid: dict[str, str]
) -> Outcome:
    """
    ``outcome`` with its replies keyed by the stored addresses, which may
    differ from the envelope's paths (a Unicode domain goes out
    IDNA-encoded), and the invalid addresses' refusals added.
    """
    stored = _stored_addresses(envelope, pending, invalid)
    outcome.replies = {
        address: reply
        for path, reply in outcome.replies.items()
        for address in stored.get(path, [path])
    }
    outcome.refused_at_rcpt = {
        address
        for path in outcome.refused_at_rcpt
        for address in stored.get(path, [path])
    }
    outcome.replies.update(_invalid(invalid))
    return outcome


class _Run:
    """
    One message's send, and the messages of its group that follow it over
    the same SMTP connection.

    With PIPELINING, a message's content goes out with the next message's
    commands (``transmit_jobs()``): one round trip a message instead of two.
    Each following message is asked for, right before its first command
    is written, what the message loop asks before each send: the worker
    isn't stopping, the outcomes waiting to be written are younger than
    ``RECORD_GROUP_SECONDS`` (counted from the run's start), and less than
    half of the message's lease is spent (renewing it, a database call, is
    the loop's work, never done while content waits). The first that may
    not go ends the run: it and the ones after it are left untried, and the
    loop takes them from there, in order, as if the run had never reached
    them. So what a run sent always comes before what the loop has left.
    """

    def __init__(
        self,
        record: OutboxMessage,
        backend: BaseEmailBackend | Exception,
        pending: Mapping[int, list[str]],
        lease: timedelta,
        recorder: _Recorder,
        stopping: Callable[[], bool],
    ) -> None:
        self.record = record
        self.backend = backend
        self.pending = pending
        self.lease = lease
        self.recorder = recorder
        self.stopping = stopping
        self.members: list[tuple[OutboxMessage, Any, dict[str, str]]] = []

    def join(
        self, rest: list[OutboxMessage], begun: Mapping[int, bool], done: set[int]
    ) -> None:
        """
        Take the messages from the start of ``rest`` that can follow: loaded
        in the group begun last (``begun``), not sent yet (``done``), for
        the same mailer, with someone to send to. Only over a backend that
        sends jobs (SMTP).
        """
        if not hasattr(self.backend, "transmit_jobs"):
            return
        first = _prepared(self.record, self.pending[self.record.pk])
        if isinstance(first, Outcome):
            return
        members = [(self.record, *first)]
        for other in rest:
            if not begun.get(other.pk) or other.pk in done:
                break
            if other.mailer != self.record.mailer:
                break
            if not self.pending[other.pk]:
                break
            prepared = _prepared(other, self.pending[other.pk])
            if isinstance(prepared, Outcome):
                break
            members.append((other, *prepared))
        if len(members) > 1:
            self.members = members

    def send(self, began: float) -> list[tuple[OutboxMessage, Any, Outcome]]:
        """
        Send, from ``began`` (``time.monotonic()``); each message that went,
        when it started, and its outcome.
        """
        record = self.record
        started = timezone.now()
        if not self.members:
            outcome = _attempt(
                record, self.backend, self.pending[record.pk], self.lease
            )
            return [(record, started, outcome)]
        times = {record.pk: started}
        try:
            jobs = [
                Job(
                    envelope,
                    bytes(member.mime),
                    keep_going=_lease_keeper(member, self.lease),
                    may_start=(
                        None
                        if member is record
                        else self._may_start(member, began, times)
                    ),
                )
                for member, envelope, _ in self.members
            ]
        except Exception:
            # Whatever it is, the message alone meets it the usual way.
            outcome = _attempt(
                record, self.backend, self.pending[record.pk], self.lease
            )
            return [(record, started, outcome)]
        error: Exception | None = None
        try:
            self.backend.transmit_jobs(jobs)  # type: ignore[union-attr]
        except Exception as exc:
            error = exc
        sent = []
        for (member, envelope, invalid), job in zip(self.members, jobs, strict=True):
            transmission = job.result
            if member.pk not in times or isinstance(transmission.error, NotStarted):
                # Never asked to start, whatever ended the run before it (the
                # worker stopping, a lost lease, a connection that couldn't
                # be opened again, an earlier message that couldn't be
                # signed): untried and uncharged, the loop takes it from
                # there.
                continue
            if error is not None and not job.answered:
                # Cut short by an error the session doesn't expect: what
                # went out is unknown, and so is the connection's state.
                outcome = _failure(error)
                outcome.connection_lost = True
            elif not transmission.replies and transmission.error is not None:
                outcome = _failure(transmission.error)
            else:
                outcome = _smtp_outcome(transmission, envelope)
            pending = self.pending[member.pk]
            sent.append(
                (
                    member,
                    times[member.pk],
                    _as_stored(outcome, envelope, pending, invalid),
                )
            )
        return sent

    def _may_start(
        self, record: OutboxMessage, began: float, times: dict[int, Any]
    ) -> Callable[[], bool]:
        def may_start() -> bool:
            # Asked while the message before's content waits to go out:
            # nothing here may wait. A lease more than half spent ends the
            # run, as renewing it is a database call: the loop renews it
            # (fenced) and starts a new run.
            try:
                if self.stopping() or self.recorder.due():
                    return False
                if time.monotonic() - began >= self.recorder.seconds:
                    return False
                if not _lease_fresh(record, self.lease):
                    return False
            except Exception:
                return False  # the loop asks again, and meets the error
            times[record.pk] = timezone.now()
            return True

        return may_start


def _stored_addresses(
    envelope: Any, pending: list[str], invalid: dict[str, str]
) -> dict[str, list[str]]:
    """Each envelope path's stored address(es), where they differ."""
    paths = {str(path) for path in envelope.recipients}
    stored: dict[str, list[str]] = {}
    for address in pending:
        if address in invalid:
            continue
        path = address if address in paths else str(envelope_address(address))
        stored.setdefault(path, []).append(address)
    return stored


#: Recorded for a recipient whose stored address fails the envelope check:
#: RFC 5321's "mailbox syntax incorrect", though no server was asked.
INVALID_ADDRESS_CODE = 553


def _send(
    record: OutboxMessage, backend: BaseEmailBackend, envelope: Any, lease: timedelta
) -> Outcome:
    try:
        transmit = getattr(backend, "transmit", None)
        if transmit is not None:
            # SMTP: the exact stored bytes, and every server reply.
            transmission = transmit(
                envelope, bytes(record.mime), keep_going=_lease_keeper(record, lease)
            )
            return _smtp_outcome(transmission, envelope)
        stored = StoredMessage(record, list(envelope.recipients))
        if backend.send_messages([stored]):
            replies = {address: (None, "") for address in envelope.recipients}
            return Outcome(Kind.SENT, replies=dict(replies))
        return Outcome(Kind.RETRY, error="The mailer reported the message as not sent.")
    except Exception as exc:
        return _failure(exc)


def _lease_keeper(record: OutboxMessage, lease: timedelta) -> Callable[[], bool]:
    """
    Between two transactions of one message: renew the lease once half of
    it is spent (fenced). False if it was lost: another worker may be
    sending the message now, so no further transaction goes out.
    """

    def keep_going() -> bool:
        if _lease_fresh(record, lease):
            return True
        try:
            renewed = record.renew_lease(lease)
        except Exception:
            logger.exception("Outbox message %s: renewing its lease failed", record.pk)
            return False
        if not renewed:
            logger.warning(
                "Outbox message %s: lease lost part way; the remaining "
                "recipients are not sent to by this worker.",
                record.pk,
            )
        return renewed

    return keep_going


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
    # Any temporary reply: retry; else all accepted: sent; else any
    # accepted: partial; else failed. (One pass over the replies.)
    temporary = some_accepted = some_refused = False
    for c, _ in replies.values():
        if c is None:
            continue
        if _temporary(c):
            temporary = True
        elif accepted(c):
            some_accepted = True
        else:
            some_refused = True
    if transmission.error is not None or temporary:
        kind = Kind.RETRY
    elif not some_refused:
        kind = Kind.SENT
    elif some_accepted:
        kind = Kind.PARTIAL
    else:
        kind = Kind.FAILED
    return Outcome(
        kind,
        replies=replies,
        code=code,
        reply=reply,
        error=error,
        connection_lost=transmission.error is not None,
        refused_at_rcpt={str(address) for address in transmission.refused_at_rcpt},
    )


def _failure(exc: BaseException) -> Outcome:
    """Classify an exception that stopped the whole attempt."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = {
            address: (code, decode_reply(reply))
            for address, (code, reply) in exc.recipients.items()
        }
        temporary = any(_temporary(code) for code, _ in replies.values())
        return Outcome(
            Kind.RETRY if temporary else Kind.FAILED,
            replies=replies,
            connection_lost=any(code == 421 for code, _ in replies.values()),
            error=text,
            # smtplib raises it when every RCPT TO was refused.
            refused_at_rcpt=set(replies),
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code, reply = exc.smtp_code, decode_reply(exc.smtp_error)
        text = f"{type(exc).__name__}: {code} {reply}"
        temporary = not 500 <= code < 600
        return Outcome(
            Kind.RETRY if temporary else Kind.FAILED,
            # 421: the server is closing the connection.
            connection_lost=code == 421,
            code=code,
            reply=reply,
            error=text,
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return Outcome(Kind.FAILED, error=text)  # e.g. SMTPUTF8 needed, not offered
    if isinstance(exc, OSError | ImproperlyConfigured):
        # Network trouble, or a mailer misconfiguration someone may fix.
        return Outcome(Kind.RETRY, connection_lost=True, error=text)
    return Outcome(Kind.FAILED, error=text)


def _classify(
    record: OutboxMessage,
    outcome: Outcome,
    *,
    worker: str,
    started: Any,
    pending: list[str],
    delivered_before: bool,
    failed_before: bool,
    suppressed: Mapping[str, str] | None = None,
    suppressed_before: bool = False,
) -> AttemptRecord:
    """
    Decide what one attempt means: each recipient's fate and the message's.

    A temporary failure is retried until the retry budget is spent; then
    what is still pending fails. A final status is the recipients', over
    all the message's attempts: sent to some and not to others (failed or
    suppressed) is partially sent; sent to none, failed if any failed, and
    suppressed if every one was.

    The Attempt row says what this attempt did, judged the same way by the
    recipients it decided: "retry" if the message is queued again, and
    otherwise sent, partial, failed or suppressed. So a last retry that
    delivered nothing is "failed" even when the message, delivered to
    some recipients earlier, is partially sent; and one that delivered to
    everyone it still had to is "sent" even when an earlier attempt had
    failed someone.
    """
    kind = outcome.kind
    error = outcome.error or (
        f"{outcome.code} {outcome.reply}"
        if outcome.code and outcome.code >= 400
        else ""
    )
    # Each recipient's new state, its reply as stored, and who was refused.
    # (One pass over the replies: this runs for every message sent.)
    rows: dict[str, tuple[str, int | None, str]] = {}
    replies: dict[str, tuple[int | None, str]] = {}
    refusals: list[str] = []
    for address, (code, reply) in outcome.replies.items():
        stored_code = _stored_code(code)
        rows[address] = (_recipient_status(code), stored_code, reply)
        replies[address] = (stored_code, decode_reply(reply))
        if code is not None and code >= 400:
            refusals.append(f"{address}: {code} {reply}")
    if not error:
        # Say who was refused, and how.
        error = "; ".join(refusals)
    if not outcome.replies and kind == Kind.FAILED:
        for address in pending:
            rows[address] = (
                RecipientStatus.FAILED,
                outcome.code,
                outcome.reply or outcome.error,
            )
    for address, reason in (suppressed or {}).items():
        rows[address] = (RecipientStatus.SUPPRESSED, None, reason)
    final = kind != Kind.RETRY
    this_attempt: Kind | None = None
    if not final and record.attempts - record.requeued_attempts >= conf.max_attempts():
        # Out of attempts: what is still pending fails.
        for address in pending:
            status, code, reply = rows.get(address, (RecipientStatus.PENDING, None, ""))
            if status in (RecipientStatus.PENDING, RecipientStatus.DEFERRED):
                rows[address] = (RecipientStatus.FAILED, code, reply or error)
        final = True
    if final:
        states = {status for status, _, _ in rows.values()}
        if states:
            this_attempt = _fate(
                RecipientStatus.SENT in states,
                RecipientStatus.FAILED in states,
                RecipientStatus.SUPPRESSED in states,
            )
        # The message's fate is its recipients', over all its attempts.
        kind = _fate(
            delivered_before or RecipientStatus.SENT in states,
            failed_before or RecipientStatus.FAILED in states,
            suppressed_before or RecipientStatus.SUPPRESSED in states,
        )
        if kind == Kind.SUPPRESSED:
            error = error or "Not sent: every recipient is suppressed."
    # Here (and for the replies, above) an attempt's texts and codes are
    # made storable: text columns take no NUL, code columns only real reply
    # codes.
    return AttemptRecord(
        outcome=kind,
        attempt_outcome=this_attempt or kind,
        worker=worker,
        started_at=started,
        finished_at=timezone.now(),
        error=decode_reply(error),
        attempt_error=decode_reply(outcome.error),
        smtp_code=_stored_code(outcome.code),
        smtp_reply=decode_reply(outcome.reply),
        replies=replies,
        recipients={
            address: (status, code, decode_reply(reply))
            for address, (status, code, reply) in rows.items()
        },
    )


def _fate(delivered: bool, failed: bool, skipped: bool) -> Kind:
    """A final outcome, from who was delivered, failed and suppressed."""
    if delivered:
        return Kind.PARTIAL if failed or skipped else Kind.SENT
    if skipped and not failed:
        return Kind.SUPPRESSED
    return Kind.FAILED


def _temporary(code: int) -> bool:
    """A 4yz reply, or no reply code at all (a garbled reply)."""
    return 400 <= code < 500 or not known_code(code)


def _stored_code(code: int | None) -> int | None:
    return code if known_code(code) else None


def _recipient_status(code: int | None) -> str:
    if code is None or accepted(code):
        return RecipientStatus.SENT
    if _temporary(code):
        return RecipientStatus.DEFERRED
    return RecipientStatus.FAILED
