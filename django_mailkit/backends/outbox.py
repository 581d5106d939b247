"""
Outbox backend: records each message in the database for later delivery.

``send_messages()`` stores every message (its exact bytes, envelope and one
row per recipient) in one transaction and returns how many were queued.
Delivery happens after commit, through Django's Tasks framework when it is
available, or by ``manage.py mailkit_worker``; a rolled-back transaction
sends nothing.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError, router, transaction
from django.utils import timezone

from ..envelope import message_envelope
from ..rendering import render_bytes
from .base import BaseEmailBackend

__all__ = ["EmailBackend"]

#: Outbox mailers list the addresses a server refuses for good at RCPT TO
#: unless told otherwise: mail queued in bulk is what hammers dead addresses,
#: and the list is per mailer (see django_mailkit.suppression).
DEFAULT_SUPPRESS_ON_PERMANENT_FAILURE = True


class EmailBackend(BaseEmailBackend):
    """Queue messages in the outbox; ``deliver_using`` names the real mailer."""

    # It queues for a mailer that delivers (the deploy check looks there).
    delivers_mail = True
    silenced_errors = (DatabaseError,)

    def __init__(
        self,
        *,
        deliver_using: str | None = None,
        suppress_on_permanent_failure: bool = DEFAULT_SUPPRESS_ON_PERMANENT_FAILURE,
        priority: str = "default",
        **kwargs: Any,
    ) -> None:
        from ..models import Priority

        super().__init__(**kwargs)
        if not isinstance(suppress_on_permanent_failure, bool):
            raise self.config_error(
                "suppress_on_permanent_failure",
                f"must be True or False (got {suppress_on_permanent_failure!r}).",
            )
        self.suppress_on_permanent_failure = suppress_on_permanent_failure
        if not deliver_using or not isinstance(deliver_using, str):
            raise self.config_error(
                "deliver_using",
                "is required: the alias of the mailer that delivers queued "
                "messages (for example an SMTP mailer).",
            )
        if deliver_using == self.alias:
            raise self.config_error(
                "deliver_using", "must name another mailer, not the outbox itself."
            )
        self.deliver_using = deliver_using
        try:
            #: The priority of the messages it queues (``message.priority``
            #: overrides it).
            self.priority = Priority.from_name(priority)
        except ValueError as exc:
            raise self.config_error("priority", str(exc)) from None

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Store the messages; they are delivered after the transaction commits."""
        if not email_messages:
            return 0
        # Build everything before touching the database: a message that
        # can't be built raises here, to the code that sent it.
        prepared = [
            prepare(message, default_priority=self.priority)
            for message in email_messages
            if message.recipients()
        ]
        if not prepared:
            return 0
        try:
            queued = self._store(prepared)
        except self.silenced_errors:
            if not self.fail_silently:
                raise
            return 0
        return len(queued)

    def _store(self, prepared: list[dict[str, Any]]) -> list[int]:
        from ..models import OutboxMessage, Recipient, enqueue_delivery_on_commit

        now = timezone.now()
        db = router.db_for_write(OutboxMessage)
        with transaction.atomic(using=db):
            records = OutboxMessage.objects.using(db).bulk_create(
                [
                    OutboxMessage(
                        queued_via=self.alias or "",
                        mailer=self.deliver_using,
                        from_email=item["from_email"],
                        recipients=item["recipients"],
                        subject=item["subject"],
                        message_id=item["message_id"],
                        mime=item["mime"],
                        size=len(item["mime"]),
                        priority=item["priority"],
                        created_at=now,
                        updated_at=now,
                        next_attempt_at=now,
                    )
                    for item in prepared
                ]
            )
            Recipient.objects.using(db).bulk_create(
                [
                    Recipient(message=record, address=address, updated_at=now)
                    for record, item in zip(records, prepared, strict=True)
                    for address in item["recipients"]
                ]
            )
            ids = [record.pk for record in records]
            enqueue_delivery_on_commit(ids, using=db)
        return ids


def prepare(message: Any, *, default_priority: int | None = None) -> dict[str, Any]:
    """Return what the outbox stores for ``message``: envelope, bytes, priority."""
    from ..models import Priority

    # Any message object may carry it (Django's own, too): checked first,
    # so that a bad one fails before anything is rendered or stored.
    priority = getattr(message, "priority", None)
    if priority is None:
        priority = Priority.DEFAULT if default_priority is None else default_priority
    else:
        try:
            priority = Priority.from_name(priority)
        except ValueError as exc:
            raise ValueError(f"The message's priority {exc}") from None
    envelope = message_envelope(message)
    # The bytes go on the wire as they are: SMTP line ends, and UTF-8
    # headers only when an address needs SMTPUTF8 anyway.
    policy = email.policy.SMTPUTF8 if envelope.smtputf8 else email.policy.SMTP
    mime, message_id = render_bytes(message, policy)
    return {
        "from_email": envelope.sender,
        "recipients": envelope.recipients,
        "subject": _subject(message),
        "message_id": message_id,
        "mime": mime,
        "priority": priority,
    }


def _subject(message: Any) -> str:
    """
    The subject as displayed: a Subject in ``headers`` overrides. Control
    characters (a NUL, which PostgreSQL's text columns refuse) become
    U+FFFD; the message's bytes keep the subject as rendered.
    """
    subject = getattr(message, "subject", "")
    for name, value in (getattr(message, "extra_headers", None) or {}).items():
        if name.lower() == "subject":
            subject = value
    return _CONTROL.sub("\ufffd", str(subject))


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
