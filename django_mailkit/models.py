"""
The outbox: a persistent record of every message, its delivery attempts and
the fate of each recipient.

The schema is designed around the claim query (``OutboxMessageQuerySet.
claim()``): queued messages that are due, the most urgent first and then
the oldest, locked with SKIP LOCKED and leased to one worker. SMTP never
happens inside a transaction; each state change is a short, conditional
UPDATE.
"""

from __future__ import annotations

import email
import email.policy
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, models, router, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import conf
from .exceptions import InvalidStoredMessage


class Status(models.TextChoices):
    QUEUED = "queued", _("Queued")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    PARTIAL = "partial", _("Partially sent")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    #: Every recipient was on the suppression list: nothing went out.
    SUPPRESSED = "suppressed", _("Suppressed")


#: Statuses a message never leaves on its own.
FINAL_STATUSES = frozenset(
    {Status.SENT, Status.PARTIAL, Status.FAILED, Status.CANCELLED, Status.SUPPRESSED}
)
#: Each final status by its value (outcome_fields(): the status an attempt's
#: outcome sets, found without Enum's call).
_FINAL_STATUS = {status.value: status for status in FINAL_STATUSES}


class Priority(models.IntegerChoices):
    """
    How urgent a queued message is: claims take the most urgent due first.

    Set per outbox mailer (the ``priority`` OPTION) or per message
    (``message.priority``), by name: ``"bulk"``, ``"default"`` or
    ``"high"``. Stored as a number, with room between the levels.
    """

    BULK = 10, _("Bulk")
    DEFAULT = 20, _("Default")
    HIGH = 30, _("High")

    @classmethod
    def from_name(cls, name: object) -> Priority:
        """The level called ``name``; ValueError naming the levels otherwise."""
        if isinstance(name, cls):
            return name
        if isinstance(name, str) and name.upper() in cls.names and name.islower():
            return cls[name.upper()]
        levels = ", ".join(repr(level.lower()) for level in cls.names)
        raise ValueError(f"must be one of {levels} (got {name!r}).")


#: The order in which due messages are claimed: the most urgent first, then
#: the longest due. ``mailkit_ready_idx`` has the same order.
CLAIM_ORDER = ("-priority", "next_attempt_at", "id")


#: The fields a claim loads: what delivery reads and writes. Any other field
#: is loaded from the database if asked for (one query per message): the
#: bytes by ``begin_attempt()``, the subject for a non-SMTP mailer.
CLAIMED_FIELDS = (
    "id",
    "queued_via",
    "mailer",
    "from_email",
    "size",
    "status",
    "attempts",
    "requeued_attempts",
    "recoveries",
    "claimed_by",
    "lease_expires_at",
    "sent_at",
    "priority",
    "claim_token",
)


def _recovery_fields(now: datetime, **fields: Any) -> dict[str, Any]:
    """
    What recovery writes to a message it takes back from a dead worker:
    the claim ends (the token moves on, fencing the old worker off), the
    recovery is counted, plus ``fields`` (back to the queue, or finished).
    """
    return {
        **fields,
        "claimed_by": "",
        "claim_token": F("claim_token") + 1,
        "recoveries": F("recoveries") + 1,
        "updated_at": now,
    }


_REQUEUED = {"status": Status.QUEUED, "lease_expires_at": None}

#: The fields recovery reads of a message it takes back one at a time.
_RECOVERED_FIELDS = (
    "pk",
    "claim_token",
    "recoveries",
    "sent_at",
    "attempts",
    "requeued_attempts",
    "claimed_by",
    "updated_at",
)


class RecipientStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    DEFERRED = "deferred", _("Deferred (temporary failure)")
    SENT = "sent", _("Accepted by the server")
    FAILED = "failed", _("Failed")
    #: On the suppression list when its turn came: never sent to.
    SUPPRESSED = "suppressed", _("Suppressed")


class OutboxMessageQuerySet(models.QuerySet["OutboxMessage"]):
    def ready(self, now: datetime | None = None) -> OutboxMessageQuerySet:
        """Queued messages whose next attempt is due."""
        return self.filter(
            status=Status.QUEUED, next_attempt_at__lte=now or timezone.now()
        )

    def queued(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.QUEUED)

    def sending(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.SENDING)

    def sent(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.SENT)

    def failed(self) -> OutboxMessageQuerySet:
        return self.filter(status=Status.FAILED)

    def expired_leases(self, now: datetime | None = None) -> OutboxMessageQuerySet:
        """Messages claimed by a worker whose lease ran out (it crashed)."""
        return self.filter(
            status=Status.SENDING, lease_expires_at__lt=now or timezone.now()
        )

    def recover_expired(self, now: datetime | None = None) -> int:
        """
        Take back the messages of workers whose lease ran out; return how many.

        A worker that dies (or stalls past its lease) leaves its claims
        behind. Each of them has ``recoveries`` counted, and is queued
        again with its attempt count as it is: a message sent in a group is
        charged its attempt only when its outcome is written, so a crash
        inside a group charges nobody (the database can't tell which
        message was on the wire); ``delivery._group()`` then sends each
        recovered message alone, charged before it is sent
        (``begin_attempt()``), so that a crash from then on charges exactly
        the message in flight. A recovered message whose retry budget is
        spent (one that keeps killing its worker) is not queued again: it
        fails, with its pending recipients (``_fail_recovered()``).

        A message charged before its send whose outcome nobody wrote (its
        ``attempts`` has no Attempt row of that number) gets that row, in
        the same transaction and only if its own recovery write changed it:
        outcome INTERRUPTED, the dead claimant as its worker
        (``Attempt.interrupted()``). A group's messages, charged with their
        outcomes, get none.

        The claim token moves on, so the old worker, if it was only paused,
        can no longer write.
        """
        db = router.db_for_write(self.model)
        now = now or timezone.now()
        expired = self.using(db).expired_leases(now)
        if not expired.exists():
            return 0  # the usual case: one query (a worker runs this per batch)
        max_attempts = conf.max_attempts()
        spent = Q(attempts__gte=F("requeued_attempts") + max_attempts)
        # The attempt in flight was charged (begin_attempt()) and has no row.
        numbered = Attempt.objects.filter(
            message=OuterRef("pk"), number=OuterRef("attempts")
        )
        unrecorded = Q(attempts__gt=0) & ~Exists(numbered)
        recorded = Q(attempts=0) | Exists(numbered)
        with transaction.atomic(using=db):
            # Rare: one fenced write per message. Rows another recovery
            # holds are left to it.
            failed = requeued = 0
            for message in (
                expired.filter(unrecorded)
                .select_for_update(skip_locked=True)
                .only(*_RECOVERED_FIELDS)
            ):
                if message.attempts >= message.requeued_attempts + max_attempts:
                    failed += message._fail_recovered(db, now)
                else:
                    requeued += message._requeue_recovered(db, now)
            failed += sum(
                message._fail_recovered(db, now)
                for message in expired.filter(spent, recorded)
                .select_for_update(skip_locked=True)
                .only(*_RECOVERED_FIELDS)
            )
            requeued += (
                expired.exclude(spent)
                .filter(recorded)
                .update(**_recovery_fields(timezone.now(), **_REQUEUED))
            )
        return failed + requeued

    def claimable(
        self,
        now: datetime,
        *,
        mailer: str | None = None,
        ids: list[int] | None = None,
    ) -> models.QuerySet[Any]:
        """The claim query: ids of due messages in CLAIM_ORDER, locked."""
        candidates = self.ready(now)
        if mailer is not None:
            candidates = candidates.filter(mailer=mailer)
        if ids is not None:
            candidates = candidates.filter(id__in=ids)
        return (
            candidates.order_by(*CLAIM_ORDER)
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("id", flat=True)
        )

    def claim(
        self,
        worker: str,
        *,
        limit: int,
        lease: timedelta,
        mailer: str | None = None,
        ids: list[int] | None = None,
    ) -> list[OutboxMessage]:
        """
        Lease up to ``limit`` due messages to ``worker`` and return them.

        The candidates are locked with SKIP LOCKED (PostgreSQL), so workers
        don't wait on each other; the UPDATE is conditional on the status,
        so two workers can never both claim a message, even on databases
        without row locks (SQLite). Each claim bumps the message's
        ``claim_token``: every later write of this claim is fenced on it.
        The messages come back with only ``CLAIMED_FIELDS`` loaded, not
        their bytes: they are loaded when they are sent, a group at a time
        (``record_attempts(then_load=...)``) or alone (``begin_attempt()``).
        No attempt is counted yet.
        """
        now = timezone.now()
        # The lock, the UPDATE and the read all go to the write database.
        db = router.db_for_write(self.model)
        qs = self.using(db)
        with transaction.atomic(using=db):
            locked = list(qs.claimable(now, mailer=mailer, ids=ids)[:limit])
            if not locked:
                return []
            if connections[db].vendor == "postgresql":
                from ._sql import claim_returning

                return claim_returning(
                    locked, db, worker=worker, now=now, expires=now + lease
                )
            qs.filter(id__in=locked, status=Status.QUEUED).update(
                status=Status.SENDING,
                claimed_by=worker,
                lease_expires_at=now + lease,
                claim_token=F("claim_token") + 1,
                updated_at=now,
            )
            # Read back in the same transaction: a row this worker claimed
            # can't be taken over before the tokens are read. Only what
            # delivery uses (CLAIMED_FIELDS): not the bytes, and not the
            # texts and timestamps a worker never reads.
            return list(
                qs.filter(id__in=locked, status=Status.SENDING, claimed_by=worker)
                .only(*CLAIMED_FIELDS)
                .order_by(*CLAIM_ORDER)
            )

    def record_attempts(
        self,
        outcomes: Sequence[tuple[OutboxMessage, AttemptRecord]],
        *,
        then_load: Sequence[OutboxMessage] = (),
    ) -> tuple[set[int], set[int]]:
        """
        Record several attempts' outcomes, then load the next messages' bytes.

        Each outcome is ``record_attempt()``'s write, fenced on its own
        message's claim token: a message whose lease was lost gets nothing
        written, the others are recorded. Each write counts its message's
        attempt (``attempts`` as the worker holds it: see ``load_group()``).

        Then ``then_load`` is ``load_group()``: a read, fenced the same way.
        Returns the ids recorded and the ids loaded. On PostgreSQL all of it
        is one statement (one round trip for a group of messages);
        elsewhere the records are one transaction, and the group's read one
        query. Either way, if it fails, none of the records is written.
        """
        db = router.db_for_write(self.model)
        changes = [
            (record, attempt, record.outcome_fields(attempt))
            for record, attempt in outcomes
        ]
        if connections[db].vendor == "postgresql":
            from ._sql import record_attempts_postgresql

            written, rows = record_attempts_postgresql(
                changes, db, then_load=list(then_load)
            )
        else:
            # All of the group or nothing of it, the next group's read
            # included, as the one statement is: a failure part way must
            # leave no message written, or the writes one by one that follow
            # (delivery's) record some twice.
            with transaction.atomic(using=db):
                written = {
                    record.pk
                    for record, attempt, fields in changes
                    if record._record_attempt_orm(attempt, fields, db)
                }
                rows = self._load_orm(then_load, db) if then_load else {}
        for record, _attempt, fields in changes:
            if record.pk in written:
                for name, value in fields.items():
                    setattr(record, name, value)
        for message in then_load:
            if message.pk in rows:
                message._loaded(rows[message.pk])
        return written, set(rows)

    def load_group(self, messages: Sequence[OutboxMessage]) -> set[int]:
        """
        Start sending a group of messages: load the bytes of those this
        worker still holds (fenced on each one's claim token); return their
        ids.

        Nothing is written: the lease stands as the claim set it (renewed
        before each send once half spent), and each message's attempt is
        counted in memory only (``attempts`` is then the number of the
        attempt under way) and written with its outcome. So a worker that
        dies inside a group has charged nobody; see ``recover_expired()``.
        """
        return self.record_attempts([], then_load=messages)[1]

    def _load_orm(self, messages: Sequence[OutboxMessage], db: str) -> dict[int, bytes]:
        tokens = {message.pk: message.claim_token for message in messages}
        return {
            pk: bytes(mime)
            for pk, token, mime in self.model.objects.using(db)
            .filter(pk__in=list(tokens))
            .values_list("pk", "claim_token", "mime")
            if tokens[pk] == token
        }

    # Operators' state changes. Each runs in one transaction on the write
    # database, applies only to the messages in the right state, returns how
    # many it changed, and enqueues delivery of what it queued on commit.

    def requeue(self, *, include_partial: bool = True) -> int:
        """
        Queue failed messages again, due now; return how many.

        With ``include_partial`` (the default), partially sent messages are
        requeued too, for their failed recipients only: a recipient the
        server accepted is never sent to again. Suppressed recipients are
        tried too, and checked against the suppression list again (still
        listed, they stay suppressed). The retry budget starts afresh;
        ``attempts`` keeps counting the whole history.
        """
        statuses = [Status.FAILED]
        if include_partial:
            statuses.append(Status.PARTIAL)
        db = router.db_for_write(self.model)
        now = timezone.now()
        count = 0
        with transaction.atomic(using=db):
            for chunk in _chunks(self._pks(db), _CHUNK):
                candidates = self.model.objects.using(db).filter(
                    pk__in=chunk, status__in=statuses
                )
                ids = list(candidates.select_for_update().values_list("pk", flat=True))
                if not ids:
                    continue
                # Both writes repeat the status test, so they agree even on
                # SQLite (no row locks): the first write takes its lock.
                Recipient.objects.using(db).filter(
                    message__in=candidates.filter(pk__in=ids),
                    status__in=(RecipientStatus.FAILED, RecipientStatus.SUPPRESSED),
                ).update(status=RecipientStatus.PENDING, updated_at=now)
                count += candidates.filter(pk__in=ids).update(
                    status=Status.QUEUED,
                    next_attempt_at=now,
                    requeued_attempts=F("attempts"),
                    claimed_by="",
                    lease_expires_at=None,
                    last_error="",
                    updated_at=now,
                )
                enqueue_delivery_on_commit(ids, using=db)
        return count

    def cancel(self) -> int:
        """Cancel queued messages (not those being sent); return how many."""
        db = router.db_for_write(self.model)
        now = timezone.now()
        count = 0
        with transaction.atomic(using=db):
            for chunk in _chunks(self._pks(db), _CHUNK):
                count += (
                    self.model.objects.using(db)
                    .filter(pk__in=chunk, status=Status.QUEUED)
                    .update(status=Status.CANCELLED, updated_at=now)
                )
        return count

    def resend(self) -> int:
        """
        Queue a copy of each finished message; return how many were queued.

        See ``resend_messages()``, which also says which copy is whose.
        """
        return len(resend_messages(self))

    def _pks(self, db: str) -> list[int]:
        # Ids first: the selection may be sliced, or filtered on a status
        # the change alters, and SQLite can't write a table while reading it.
        return list(self.using(db).values_list("pk", flat=True))


class OutboxMessage(models.Model):
    """One message handed to the outbox, with its exact bytes and its state."""

    queued_via = models.CharField(
        _("queued via"), max_length=100, help_text=_("The outbox mailer alias.")
    )
    mailer = models.CharField(
        _("mailer"), max_length=100, help_text=_("The mailer alias that delivers it.")
    )
    from_email = models.TextField(_("envelope sender"))
    recipients = models.JSONField(_("envelope recipients"), default=list)
    subject = models.TextField(_("subject"), blank=True)
    message_id = models.CharField(_("Message-ID"), max_length=998, blank=True)
    mime = models.BinaryField(_("message bytes"))
    #: ``len(mime)``, stored when queued, so lists and pages show a message's
    #: size without loading its bytes. None for messages queued before 0004.
    size = models.PositiveBigIntegerField(_("size"), null=True, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.QUEUED
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    #: ``attempts`` when an admin last requeued the message: the retry budget
    #: counts from there, while ``attempts`` keeps the whole history.
    requeued_attempts = models.PositiveIntegerField(default=0, editable=False)
    next_attempt_at = models.DateTimeField(_("next attempt"), default=timezone.now)
    claimed_by = models.CharField(_("claimed by"), max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated"), default=timezone.now)
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    #: The message this one is a resent copy of.
    resent_from = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="resends",
        verbose_name=_("resent from"),
    )
    #: Claims take the most urgent due messages first (see ``Priority``).
    priority = models.SmallIntegerField(
        _("priority"), choices=Priority.choices, default=Priority.DEFAULT
    )
    #: Bumped by every claim: each write of a claimed message is fenced on
    #: it, so a worker whose lease was taken over can't write.
    claim_token = models.PositiveBigIntegerField(default=0, editable=False)
    #: How many times the message was taken back from a worker whose lease
    #: ran out (it died, or stalled): see ``recover_expired()``. Such a
    #: message is sent alone from then on.
    recoveries = models.PositiveIntegerField(_("recoveries"), default=0, editable=False)

    objects = OutboxMessageQuerySet.as_manager()

    class Meta:
        verbose_name = _("outbox message")
        verbose_name_plural = _("outbox messages")
        ordering = ["-created_at", "-id"]
        # The admin's operations, each granted on its own (django_mailkit.admin).
        permissions = [
            ("resend_outboxmessage", _("Can resend outbox message")),
            ("requeue_outboxmessage", _("Can requeue outbox message")),
            ("cancel_outboxmessage", _("Can cancel outbox message")),
            ("send_test_email", _("Can send a test email from the admin")),
        ]
        indexes = [
            # The claim query: due queued messages, most urgent first, then
            # oldest due first (CLAIM_ORDER).
            models.Index(
                fields=list(CLAIM_ORDER),
                condition=Q(status="queued"),
                name="mailkit_ready_idx",
            ),
            # Crash recovery: leases of messages still marked sending.
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="sending"),
                name="mailkit_lease_idx",
            ),
            # Admin: newest first, filtered by status or mailer.
            models.Index(fields=["status", "-created_at"], name="mailkit_status_idx"),
            models.Index(fields=["mailer", "-created_at"], name="mailkit_mailer_idx"),
            models.Index(fields=["-created_at", "-id"], name="mailkit_created_idx"),
            models.Index(fields=["message_id"], name="mailkit_msgid_idx"),
        ]

    def __str__(self) -> str:
        return self.subject or f"Message {self.pk}"

    def parsed(self, policy: email.policy.Policy = email.policy.default) -> Any:
        """Return the stored bytes parsed as a Python email message."""
        return email.message_from_bytes(bytes(self.mime), policy=policy)

    # A worker's state changes of a message it claimed. Each is fenced on
    # the claim token: it writes only while the row still carries the token
    # this worker's claim gave it, and returns False ("lease lost") when it
    # doesn't, having written nothing. The token is the whole condition:
    # every claim and every recovery of an expired lease bumps it, so the
    # UPDATE is planned on the primary key whatever the statistics say
    # about the status column.

    def _fenced(self, db: str | None = None) -> models.QuerySet[OutboxMessage]:
        return (
            type(self)
            .objects.using(db or router.db_for_write(type(self)))
            .filter(pk=self.pk, claim_token=self.claim_token)
        )

    def _update_claimed(self, **fields: Any) -> bool:
        fields["updated_at"] = timezone.now()
        changed = self._fenced().update(**fields)
        if changed:
            for name, value in fields.items():
                setattr(self, name, value)
        return bool(changed)

    def begin_attempt(self, lease: timedelta) -> bool:
        """
        Count an attempt that starts now, renew the lease, load the bytes.

        For a message sent alone (``delivery._group()``: a retry, a large
        message, one recovered from a worker that died), right before it
        goes to the transport: if the worker dies while sending it, the
        attempt is charged to it, the message in flight, and to no other.
        (A group's messages are charged with their outcomes instead: see
        ``OutboxMessageQuerySet.load_group()``.) The message's bytes are in
        memory only while it is sent. False, with nothing written, if the
        lease was lost.
        """
        db = router.db_for_write(type(self))
        now = timezone.now()
        expires = now + lease
        connection = connections[db]
        if connection.vendor == "postgresql" or (
            connection.vendor == "sqlite"
            and connection.features.can_return_columns_from_insert  # 3.35+
        ):
            from ._sql import begin_attempt_returning

            # One round trip (for all but large messages): the fenced
            # UPDATE returns the bytes.
            row = begin_attempt_returning(self, db, now=now, expires=expires)
            if row is None:
                return False
            self._begun(*row, now=now, expires=expires)
            return True
        with transaction.atomic(using=db):
            if not self._fenced(db).update(
                attempts=F("attempts") + 1, lease_expires_at=expires, updated_at=now
            ):
                return False
            attempts, mime = self._fenced(db).values_list("attempts", "mime").get()
        self._begun(attempts, bytes(mime), now=now, expires=expires)
        return True

    def _begun(
        self, attempts: int, mime: bytes, *, now: datetime, expires: datetime
    ) -> None:
        self.attempts = attempts
        self.mime = mime
        self.lease_expires_at = expires
        self.updated_at = now

    def _loaded(self, mime: bytes) -> None:
        # load_group(): the attempt under way is counted here, in memory,
        # and written with the outcome (outcome_fields()).
        self.attempts += 1
        self.mime = mime

    def forget_bytes(self) -> None:
        """Drop the loaded bytes (they are loaded again if asked for)."""
        self.__dict__.pop("mime", None)

    def release(self, *, begun: bool = False) -> bool:
        """
        Give a claimed message back to the queue, untried (worker stopping).

        ``begun``: its attempt was already counted (by ``begin_attempt()``,
        or in memory by ``load_group()``) but it was not sent after all; the
        count is taken back.
        """
        fields: dict[str, Any] = {
            "status": Status.QUEUED,
            "claimed_by": "",
            "lease_expires_at": None,
        }
        if begun:
            fields["attempts"] = self.attempts - 1
        return self._update_claimed(**fields)

    def renew_lease(self, lease: timedelta) -> bool:
        """Extend this worker's lease; False if it was lost meanwhile."""
        return self._update_claimed(lease_expires_at=timezone.now() + lease)

    def finish(self, status: str, *, error: str = "") -> bool:
        """Record a final status (sent, partial or failed)."""
        fields = self.finish_fields(status, error=error)
        return self._update_claimed(**fields, attempts=self.attempts)

    def retry_later(self, *, error: str) -> bool:
        """Queue the message again after a backoff that grows per attempt."""
        fields = self.retry_fields(error=error)
        return self._update_claimed(**fields, attempts=self.attempts)

    def record_attempt(self, attempt: AttemptRecord) -> bool:
        """
        Write one attempt's outcome: the message, its recipients, the Attempt.

        One transaction. The message row is written first, fenced on the
        claim token; if the lease was lost it matches nothing and nothing
        else is written (False). A RETRY outcome queues the message again
        after its backoff; the others are final.
        """
        written, _begun = type(self).objects.record_attempts([(self, attempt)])
        return self.pk in written

    def outcome_fields(self, attempt: AttemptRecord) -> dict[str, Any]:
        """The message's fields that recording ``attempt`` writes."""
        outcome = attempt.outcome
        if outcome == Attempt.Outcome.RETRY:
            fields = self.retry_fields(error=attempt.error)
        else:
            # Status(outcome), without Enum's call (this runs per message).
            status = _FINAL_STATUS.get(outcome) or Status(outcome)
            fields = self.finish_fields(status, error=attempt.error)
        # The attempt recorded is counted with it (a grouped message's count
        # is only in memory until now; see load_group()). The fence makes
        # the number safe to write as it stands: while the claim token
        # matches, nobody else changes the row.
        fields["attempts"] = self.attempts
        fields["updated_at"] = attempt.finished_at
        return fields

    def _fail_recovered(self, db: str, now: datetime) -> bool:
        """
        Fail a message taken back from a dead worker with its budget spent.

        Its pending and deferred recipients fail; it is partially sent if
        an earlier attempt delivered to someone. Conditional on the row
        still being this expired claim (the token read with it, status
        sending, lease run out): False, with nothing written, otherwise.
        """
        recoveries = self.recoveries + 1
        times = "once" if recoveries == 1 else f"{recoveries} times"
        error = (
            f"Out of attempts: the worker delivering it stopped (died, or "
            f"stalled past its lease) while it was claimed, {times}; not queued "
            f"again, as the message itself may be what stops the worker."
        )
        recipients = Recipient.objects.using(db).filter(message_id=self.pk)
        delivered = recipients.filter(status=RecipientStatus.SENT).exists()
        fields = self.finish_fields(
            Status.PARTIAL if delivered else Status.FAILED, error=error
        )
        changed = (
            self._fenced(db)
            .filter(status=Status.SENDING, lease_expires_at__lt=now)
            .update(**_recovery_fields(now, **fields))
        )
        if not changed:
            return False
        self._record_interrupted(db, now)
        pending = recipients.filter(
            status__in=(RecipientStatus.PENDING, RecipientStatus.DEFERRED)
        )
        # A deferred recipient keeps its last reply; the others say why.
        pending.filter(smtp_reply="").update(smtp_reply=error)
        pending.update(status=RecipientStatus.FAILED, updated_at=now)
        return True

    def _requeue_recovered(self, db: str, now: datetime) -> bool:
        """
        Queue again a message taken back from a dead worker, one at a time
        (``recover_expired()`` requeues the others in one UPDATE), and
        record its interrupted attempt, if it has one. Conditional like
        ``_fail_recovered()``: False, with nothing written, otherwise.
        """
        changed = (
            self._fenced(db)
            .filter(status=Status.SENDING, lease_expires_at__lt=now)
            .update(**_recovery_fields(timezone.now(), **_REQUEUED))
        )
        if not changed:
            return False
        self._record_interrupted(db, now)
        return True

    def _record_interrupted(self, db: str, now: datetime) -> None:
        """
        Write the Attempt row of the attempt in flight when the worker
        stopped, if it was charged (``begin_attempt()``) and has none.

        Called by recovery in its transaction, right after its fenced write
        changed the row: ``self`` holds the values read before it.
        """
        if self.attempts == 0:
            return
        attempts = Attempt.objects.using(db).filter(message_id=self.pk)
        if attempts.filter(number=self.attempts).exists():
            return  # a group's message: its attempt was not charged
        attempts.create(message_id=self.pk, **Attempt.interrupted(self, now))

    def _record_attempt_orm(
        self, attempt: AttemptRecord, fields: dict[str, Any], db: str
    ) -> bool:
        # Always inside record_attempts()' transaction: no savepoint needed.
        with transaction.atomic(using=db, savepoint=False):
            if not self._fenced(db).update(**fields):
                return False
            still_pending = Recipient.objects.using(db).filter(
                message_id=self.pk,
                status__in=(RecipientStatus.PENDING, RecipientStatus.DEFERRED),
            )
            # One UPDATE per distinct result: usually one for the whole message.
            groups: dict[tuple[str, int | None, str], list[str]] = {}
            for address, state in attempt.recipients.items():
                groups.setdefault(state, []).append(address)
            for (status, code, reply), addresses in groups.items():
                still_pending.filter(address__in=addresses).update(
                    status=status,
                    smtp_code=code,
                    smtp_reply=reply,
                    updated_at=attempt.finished_at,
                )
            Attempt.objects.using(db).create(
                message_id=self.pk, **attempt.attempt_fields(self.attempts)
            )
        return True

    def finish_fields(self, status: str, *, error: str = "") -> dict[str, Any]:
        """The fields finish() writes."""
        fields: dict[str, Any] = {
            "status": status,
            "lease_expires_at": None,
            "last_error": error,
        }
        if status in (Status.SENT, Status.PARTIAL):
            # When it was first delivered: a later retry doesn't move it.
            fields["sent_at"] = self.sent_at or timezone.now()
        return fields

    def retry_fields(self, *, error: str) -> dict[str, Any]:
        """The fields retry_later() writes."""
        return {
            "status": Status.QUEUED,
            "claimed_by": "",
            "lease_expires_at": None,
            "next_attempt_at": timezone.now()
            + backoff(self.attempts - self.requeued_attempts),
            "last_error": error,
        }

    # Operators' state changes (see the queryset's methods).

    def requeue(self, *, include_partial: bool = True) -> bool:
        """Queue this failed (or partially sent) message again; see the queryset's."""
        changed = (
            type(self)
            .objects.filter(pk=self.pk)
            .requeue(include_partial=include_partial)
        )
        if changed:
            self.refresh_from_db()
        return bool(changed)

    def cancel(self) -> bool:
        """Cancel this message if it is still queued; False otherwise."""
        changed = type(self).objects.filter(pk=self.pk).cancel()
        if changed:
            self.refresh_from_db()
        return bool(changed)

    def resend(self) -> OutboxMessage:
        """
        Queue a copy of this finished message, linked to it; return the copy.

        Raises ``ValueError`` if the message is still queued or being sent,
        and ``InvalidStoredMessage`` if its stored envelope is unusable.
        """
        pairs = resend_messages(type(self).objects.filter(pk=self.pk))
        if not pairs:
            raise ValueError(
                f"Outbox message {self.pk} is {self.status}, not finished: "
                "only sent, partially sent, failed or cancelled messages can "
                "be resent."
            )
        ((_original, copy),) = pairs
        return type(self).objects.using(router.db_for_write(type(self))).get(pk=copy)


_CHUNK = 500


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def enqueue_delivery_on_commit(ids: Iterable[int], *, using: str) -> None:
    """
    Start delivering the outbox messages ``ids`` once the transaction commits.

    The one way anything (the outbox backend, requeue, resend) hands queued
    messages to the Tasks framework: a rolled-back transaction sends
    nothing. ``mailkit_worker`` delivers whatever a task never gets to.
    """
    ids = list(ids)
    if not ids:
        return

    def enqueue() -> None:
        from .tasks import enqueue_delivery  # lazily: tasks import the models

        enqueue_delivery(ids)

    transaction.on_commit(enqueue, using=using)


def resend_messages(
    queryset: models.QuerySet[Any], *, chunk_size: int = 200
) -> list[tuple[int, int]]:
    """
    Queue a copy of each finished message in ``queryset``; return (original, copy) ids.

    A copy is the original's exact bytes (Message-ID included: it is the
    same message, sent again) to its whole envelope, and links to the
    original (``resent_from``). Messages still queued or being sent are
    left out. The stored envelope is checked first: a row whose envelope
    is not a list of valid addresses raises ``InvalidStoredMessage`` and
    nothing is resent. Delivery starts when the transaction commits.
    """
    using = router.db_for_write(OutboxMessage)
    fields = ["queued_via", "mailer", "from_email", "subject", "message_id", "mime"]
    fields += ["size", "priority"]
    pairs: list[tuple[int, int]] = []
    with transaction.atomic(using=using):
        ids = sorted(queryset.using(using).values_list("pk", flat=True))
        for chunk in _chunks(ids, chunk_size):
            now = timezone.now()
            originals = list(
                OutboxMessage.objects.using(using)
                .filter(pk__in=chunk, status__in=FINAL_STATUSES)
                .order_by("pk")
                .only("pk", "recipients", *fields)
            )
            envelopes = [stored_envelope(original) for original in originals]
            copies = OutboxMessage.objects.using(using).bulk_create(
                [
                    OutboxMessage(
                        **{name: getattr(original, name) for name in fields},
                        recipients=recipients,
                        resent_from_id=original.pk,
                        created_at=now,
                        updated_at=now,
                        next_attempt_at=now,
                    )
                    for original, recipients in zip(originals, envelopes, strict=True)
                ]
            )
            Recipient.objects.using(using).bulk_create(
                [
                    Recipient(message=copy, address=address, updated_at=now)
                    for copy, recipients in zip(copies, envelopes, strict=True)
                    for address in recipients
                ]
            )
            pairs += [
                (original.pk, copy.pk)
                for original, copy in zip(originals, copies, strict=True)
            ]
        enqueue_delivery_on_commit([copy for _original, copy in pairs], using=using)
    return pairs


def stored_envelope(record: OutboxMessage) -> list[str]:
    """
    Return the stored envelope recipients of ``record``, checked.

    The row is not trusted: anything but a non-empty list of valid
    addresses raises ``InvalidStoredMessage`` naming the message (a string
    would otherwise be sent to one "address" per character).
    """
    from .envelope import stored_envelope as checked_envelope

    value = record.recipients
    if not isinstance(value, list) or not value:
        raise InvalidStoredMessage(
            record.pk,
            "its stored recipients must be a non-empty list of addresses, "
            f"not {type(value).__name__} {_short(value)}.",
        )
    for item in value:
        if not isinstance(item, str):
            raise InvalidStoredMessage(
                record.pk,
                f"a stored recipient must be an address (a string), not "
                f"{type(item).__name__} {_short(item)}.",
            )
    try:
        envelope, invalid = checked_envelope(record.from_email, value)
    except (ValueError, TypeError) as exc:
        raise InvalidStoredMessage(
            record.pk, f"its stored sender is invalid: {exc}"
        ) from None
    for item, reason in invalid.items():
        raise InvalidStoredMessage(
            record.pk, f"stored recipient {_short(item)} is invalid: {reason}"
        )
    return list(envelope.recipients)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with full jitter, capped (MAILKIT settings)."""
    base, cap = conf.backoff_base(), conf.backoff_cap()
    ceiling = min(cap, base * 2 ** max(attempts - 1, 0))
    # Full jitter spreads retries of a burst of failures over the window.
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


@dataclass(frozen=True, kw_only=True)
class AttemptRecord:
    """
    One finished attempt, classified: what ``record_attempt()`` writes.

    ``outcome`` is what becomes of the message: RETRY queues it again, the
    others are its final status.
    """

    outcome: Attempt.Outcome
    #: What this attempt did, for its Attempt row: RETRY, or judged by the
    #: recipients it decided (``outcome`` is the message's, over all its
    #: attempts). None: the same as ``outcome``.
    attempt_outcome: Attempt.Outcome | None = None
    worker: str
    started_at: datetime
    finished_at: datetime
    #: The message's ``last_error``.
    error: str = ""
    #: The attempt's own error, code and reply (the whole transaction's).
    attempt_error: str = ""
    smtp_code: int | None = None
    smtp_reply: str = ""
    #: Every server reply this attempt got: {address: (code, reply)}.
    replies: Mapping[str, tuple[int | None, str]] = field(default_factory=dict)
    #: The recipients' new states: {address: (status, code, reply)}; only
    #: recipients still pending or deferred are changed.
    recipients: dict[str, tuple[str, int | None, str]] = field(default_factory=dict)

    def attempt_fields(self, number: int) -> dict[str, Any]:
        """The Attempt row's fields (without its message)."""
        return {
            "number": number,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker": self.worker,
            "outcome": self.attempt_outcome or self.outcome,
            "smtp_code": self.smtp_code,
            "smtp_reply": self.smtp_reply,
            "error": self.attempt_error,
            "recipients": {a: [c, r] for a, (c, r) in self.replies.items()},
        }


class Recipient(models.Model):
    """One envelope recipient of an outbox message, and its fate."""

    message = models.ForeignKey(
        OutboxMessage,
        on_delete=models.CASCADE,
        related_name="recipient_set",
        verbose_name=_("message"),
    )
    address = models.TextField(_("address"))
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=RecipientStatus.choices,
        default=RecipientStatus.PENDING,
    )
    smtp_code = models.PositiveSmallIntegerField(_("SMTP code"), null=True, blank=True)
    smtp_reply = models.TextField(_("SMTP reply"), blank=True)
    updated_at = models.DateTimeField(_("updated"), default=timezone.now)

    class Meta:
        verbose_name = _("recipient")
        verbose_name_plural = _("recipients")
        ordering = ["id"]
        indexes = [models.Index(fields=["address"], name="mailkit_rcpt_addr_idx")]

    def __str__(self) -> str:
        return self.address


class Attempt(models.Model):
    """One delivery attempt of an outbox message."""

    class Outcome(models.TextChoices):
        SENT = "sent", _("Sent")
        PARTIAL = "partial", _("Partially sent")
        RETRY = "retry", _("Temporary failure")
        FAILED = "failed", _("Failed")
        #: Every recipient left was suppressed: no connection was opened.
        SUPPRESSED = "suppressed", _("Suppressed")
        #: Its worker stopped (died, or stalled past its lease) while the
        #: attempt was in progress; written by the recovery that took the
        #: message back (``OutboxMessageQuerySet.recover_expired()``).
        INTERRUPTED = "interrupted", _("Interrupted")

    message = models.ForeignKey(
        OutboxMessage,
        on_delete=models.CASCADE,
        related_name="attempt_set",
        verbose_name=_("message"),
    )
    number = models.PositiveIntegerField(_("attempt"))
    started_at = models.DateTimeField(_("started"))
    finished_at = models.DateTimeField(_("finished"))
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices)
    smtp_code = models.PositiveSmallIntegerField(_("SMTP code"), null=True, blank=True)
    smtp_reply = models.TextField(_("SMTP reply"), blank=True)
    error = models.TextField(_("error"), blank=True)
    #: {address: [code, reply]} for every recipient this attempt addressed.
    recipients = models.JSONField(_("recipient results"), default=dict)

    class Meta:
        verbose_name = _("delivery attempt")
        verbose_name_plural = _("delivery attempts")
        ordering = ["message", "number"]

    def __str__(self) -> str:
        return f"#{self.number}: {self.get_outcome_display()}"

    @staticmethod
    def interrupted(message: OutboxMessage, now: datetime) -> dict[str, Any]:
        """
        The fields of the row of ``message``'s attempt in flight when its
        worker stopped, as recovery read the message (before its write).

        ``started_at`` is when that worker last wrote to the message: the
        attempt's start (``begin_attempt()``), or a later renewal of its
        lease while it was sending; the attempt started no later than that.
        ``finished_at`` is the recovery's time.
        """
        return {
            "number": message.attempts,
            "started_at": message.updated_at,
            "finished_at": now,
            "worker": message.claimed_by,
            "outcome": Attempt.Outcome.INTERRUPTED,
            "error": (
                "Interrupted: its worker stopped (died, or stalled past its "
                "lease) while this attempt was in progress; the server may or "
                "may not have received the message. Started: when the worker "
                "last wrote to the message (the attempt's start, or a later "
                "renewal of its lease)."
            ),
        }


class SuppressionReason(models.TextChoices):
    #: A permanent failure at RCPT that names the address (see suppression.py).
    BOUNCED = "bounced", _("Refused by the server (permanent)")
    UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")
    IMPORTED = "imported", _("Imported")


class Suppression(models.Model):
    """
    An address the outbox no longer sends to, through one mailer or all.

    ``address`` is the normalised form (``suppression.normalise()``); the
    logic lives in ``django_mailkit.suppression``.
    """

    address = models.CharField(_("address"), max_length=320)
    #: The outbox mailer alias it applies to; empty: every mailer.
    mailer = models.CharField(
        _("mailer"),
        max_length=100,
        blank=True,
        help_text=_("The outbox mailer alias; empty for every mailer."),
    )
    reason = models.CharField(
        _("reason"), max_length=16, choices=SuppressionReason.choices
    )
    smtp_code = models.PositiveSmallIntegerField(_("SMTP code"), null=True, blank=True)
    smtp_reply = models.TextField(_("SMTP reply"), blank=True)
    #: Where it came from: an outbox message, an unsubscribe, an import.
    source = models.CharField(_("source"), max_length=200, blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("suppressed address")
        verbose_name_plural = _("suppressed addresses")
        ordering = ["-created_at", "-id"]
        # Unsuppressing is granted on its own (django_mailkit.admin).
        permissions = [("unsuppress_suppression", _("Can unsuppress an address"))]
        constraints = [
            # Also the index of the delivery's lookup (address IN ..., mailer IN ...).
            models.UniqueConstraint(
                fields=["address", "mailer"], name="mailkit_suppression_unique"
            )
        ]
        indexes = [
            models.Index(
                fields=["-created_at", "-id"], name="mailkit_suppr_created_idx"
            )
        ]

    def __str__(self) -> str:
        return self.address

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, with the address in the form delivery compares (or refuse it)."""
        # Rows written directly (the shell, a data migration) must match
        # too. Bulk writes (suppress(), import) normalise on their own path.
        from .suppression import normalise

        self.address = normalise(self.address)
        super().save(*args, **kwargs)


# The shared limits' models live with their logic (limits.py); imported here
# so that Django finds them.
from .limits import ConnectionSlot as ConnectionSlot  # noqa: E402
from .limits import MailerLimit as MailerLimit  # noqa: E402
