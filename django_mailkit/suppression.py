"""
The suppression list: addresses the outbox no longer sends to.

An address gets on the list three ways: a permanent refusal at ``RCPT TO``
that names the address (recorded by the outbox worker, when the outbox
mailer's ``suppress_on_permanent_failure`` OPTION is on, its default), a
one-click unsubscribe (``django_mailkit.unsubscribe``), or an import
(``manage.py mailkit_suppressions import``).

Each entry applies to one outbox mailer alias (the alias the message was
sent with, ``using=...``), or to every mailer when its ``mailer`` is empty.
When a worker picks up a message, every pending recipient on the list for
that message's outbox mailer (or for all) is recorded as suppressed, with
the reason, and never reaches the wire. A message left with nobody to send
to ends as ``suppressed`` without a connection being opened.

Addresses are compared in a normalised form (:func:`normalise`): the SMTP
path ``envelope_address()`` makes (a Unicode domain IDNA-encoded, a display
name dropped), lower-cased, in Unicode NFC. RFC 5321 lets a server treat
``Bob@`` and ``bob@`` as two mailboxes, but no provider in use does, and a
suppression list errs on the side of not sending.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import router
from django.utils import timezone

from ._sql import one_of
from .envelope import envelope_address
from .exceptions import InvalidAddress
from .models import Suppression, SuppressionReason

if TYPE_CHECKING:
    from .models import OutboxMessage

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "is_address_failure",
    "normalise",
    "suppress",
    "suppressed_recipients",
]

logger = logging.getLogger("django_mailkit.suppression")

#: The longest normalised address stored (64 for the local part, 255 for the
#: domain, and the @): RFC 5321's own limits, so a real address always fits.
MAX_ADDRESS_LENGTH = 320
#: Addresses per query: well under every database's parameter limit.
_CHUNK = 500
#: Suppression.mailer's length.
_MAX_MAILER = 100


def normalise(value: Any, *, field: str = "address") -> str:
    """
    Return the suppression list's key for ``value``, or raise InvalidAddress.

    The value is checked as any SMTP path is (``envelope_address()``): a
    display name is dropped, a Unicode domain IDNA-encoded, control
    characters refused. The result is lower-cased, in Unicode NFC.
    """
    if not isinstance(value, str):
        raise InvalidAddress(
            value,
            field=field,
            reason=f"it must be a string, not {type(value).__name__}",
        )
    # NFC: "ö" typed as one code point or as o and a combining mark is one
    # mailbox to mail systems (RFC 6532 section 3.1), so one entry here.
    key = unicodedata.normalize(
        "NFC", str(envelope_address(value.strip(), field=field)).lower()
    )
    if "@" not in key:
        raise InvalidAddress(value, field=field, reason="it has no domain")
    if len(key) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(
            value,
            field=field,
            reason=f"it is longer than {MAX_ADDRESS_LENGTH} characters",
        )
    return key


# Which permanent refusals say that the address itself is dead.

_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")
#: Without an enhanced status code (RFC 3463): "mailbox unavailable", "user
#: not local", "mailbox name not allowed". Not 554 (transaction failed) nor
#: 552 (storage), nor 500-504 (the command itself).
_ADDRESS_CODES = frozenset({550, 551, 553})
#: X.1.7 and X.1.8 are about the sender's address, not the recipient's.
_SENDER_SUBJECTS = frozenset({(1, 7), (1, 8)})


def is_address_failure(code: int | None, reply: str) -> bool:
    """
    Whether a reply to RCPT TO says the recipient's address is dead.

    Only a permanent (5yz) reply counts, and only one about the address: with
    an enhanced status code, 5.1.x (bad mailbox, bad domain, moved; not the
    sender's 5.1.7/5.1.8) and 5.2.1 (mailbox disabled); without one, 550,
    551 and 553. A policy refusal (5.7.x, e.g. "relay denied") is about the
    sender or the relay, and suppressing on it would suppress every
    recipient of a misconfigured mailer.
    """
    if code is None or not 500 <= code < 600:
        return False
    enhanced = _ENHANCED.match(reply or "")
    if enhanced is None:
        return code in _ADDRESS_CODES
    klass, subject, detail = (int(part) for part in enhanced.groups())
    if klass != 5:
        return False
    if subject == 1:
        return (subject, detail) not in _SENDER_SUBJECTS
    return (subject, detail) == (2, 1)


# Writing the list.


def suppress(
    addresses: Iterable[str],
    *,
    reason: str,
    mailer: str = "",
    source: str = "",
    smtp_code: int | None = None,
    smtp_reply: str = "",
    created_at: datetime | None = None,
    using: str | None = None,
) -> int:
    """
    Put ``addresses`` on the suppression list; return how many were new.

    ``addresses`` is a list (not one string), ``reason`` a
    ``SuppressionReason`` value, ``mailer`` an outbox mailer alias or ""
    for every mailer; anything else raises before anything is written.
    Idempotent: an address already listed for ``mailer`` keeps its entry
    (its first reason and date). Each address is normalised first; an
    invalid one raises InvalidAddress and nothing is written.
    """
    if isinstance(addresses, str):
        # A string is iterable too: each character would be "an address".
        raise TypeError(
            "suppress() takes a list of addresses, not one string: "
            f"suppress([{addresses[:80]!r}], ...)."
        )
    if reason not in SuppressionReason.values:
        choices = ", ".join(repr(value) for value in SuppressionReason.values)
        raise ValueError(
            f"suppress(): reason must be one of {choices} (got {reason!r:.60})."
        )
    if not isinstance(mailer, str) or len(mailer) > _MAX_MAILER:
        raise ValueError(
            f"suppress(): mailer must be an outbox mailer alias of at most "
            f"{_MAX_MAILER} characters, or '' for every mailer (got {mailer!r:.60})."
        )
    keys = list(dict.fromkeys(normalise(address) for address in addresses))
    db = using or router.db_for_write(Suppression)
    now = created_at or timezone.now()
    new = 0
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        known = set(
            Suppression.objects.using(db)
            .filter(address__in=chunk, mailer=mailer)
            .values_list("address", flat=True)
        )
        rows = [
            Suppression(
                address=key,
                mailer=mailer,
                reason=reason,
                smtp_code=smtp_code,
                smtp_reply=smtp_reply,
                source=source[:200],
                created_at=now,
            )
            for key in chunk
            if key not in known
        ]
        # ignore_conflicts: another writer may list the same address now.
        Suppression.objects.using(db).bulk_create(rows, ignore_conflicts=True)
        new += len(rows)
    return new


def record_refusals(
    record: OutboxMessage, refusals: Mapping[str, tuple[int | None, str]]
) -> int:
    """
    List the addresses a server refused for good at RCPT TO; return how many.

    ``refusals`` are the RCPT replies ``{stored address: (code, reply)}`` of
    one attempt of ``record``; only those that say the address is dead
    (``is_address_failure()``) are listed, for the message's outbox mailer,
    and only when that mailer's ``suppress_on_permanent_failure`` is on.
    """
    dead = {
        address: (code, reply)
        for address, (code, reply) in refusals.items()
        if is_address_failure(code, reply)
    }
    if not dead or not records_refusals(record.queued_via):
        return 0
    listed = 0
    for address, (code, reply) in dead.items():
        try:
            listed += suppress(
                [address],
                reason=SuppressionReason.BOUNCED,
                mailer=record.queued_via,
                source=f"outbox message {record.pk}",
                smtp_code=code,
                smtp_reply=reply,
            )
        except InvalidAddress:
            continue  # a stored row that was never valid; not sent either
    return listed


def records_refusals(alias: str) -> bool:
    """Whether the outbox mailer ``alias`` lists addresses refused for good."""
    from .backends.outbox import DEFAULT_SUPPRESS_ON_PERMANENT_FAILURE
    from .handler import mailers

    try:
        backend = mailers[alias]
    except Exception:
        # The alias is gone from MAILERS (or broken, which the checks say):
        # its messages still deliver; the default applies.
        return DEFAULT_SUPPRESS_ON_PERMANENT_FAILURE
    return bool(
        getattr(
            backend,
            "suppress_on_permanent_failure",
            DEFAULT_SUPPRESS_ON_PERMANENT_FAILURE,
        )
    )


# Reading the list.


def suppressed_recipients(
    messages: Iterable[OutboxMessage], pending: Mapping[int, list[str]]
) -> dict[int, dict[str, str]]:
    """
    Which pending recipients of each message are suppressed, and why.

    One query per 500 distinct addresses, on the write database (a listing
    made a moment ago counts). Returns ``{message id: {stored address:
    reason}}`` for the messages that have any.
    """
    wanted: dict[str, list[tuple[OutboxMessage, str]]] = {}
    for record in messages:
        for address in pending.get(record.pk, ()):
            try:
                key = normalise(address)
            except InvalidAddress:
                continue  # the envelope check refuses it when it is sent
            wanted.setdefault(key, []).append((record, address))
    if not wanted:
        return {}
    scopes = {
        "",
        *(record.queued_via for items in wanted.values() for record, _ in items),
    }
    db = router.db_for_write(Suppression)
    keys = list(wanted)
    found: dict[int, dict[str, str]] = {}
    for start in range(0, len(keys), _CHUNK):
        rows = Suppression.objects.using(db).filter(
            one_of("address", keys[start : start + _CHUNK], db),
            mailer__in=scopes,
        )
        # A mailer's own entry is listed before the global one.
        for row in rows.order_by("address", "-mailer"):
            for record, address in wanted[row.address]:
                if row.mailer in ("", record.queued_via):
                    found.setdefault(record.pk, {}).setdefault(address, explain(row))
    return found


def explain(row: Suppression) -> str:
    """The reason recorded on a recipient skipped because of ``row``."""
    scope = f"for mailer {row.mailer!r}" if row.mailer else "for every mailer"
    created = row.created_at
    if timezone.is_aware(created):
        created = timezone.localtime(created)
    when = created.strftime("%Y-%m-%d %H:%M %Z").rstrip()
    text = f"Suppressed {scope} since {when}: {row.get_reason_display()}"
    if row.smtp_code is not None or row.smtp_reply:
        text += f" ({row.smtp_code or ''} {row.smtp_reply})".replace("( ", "(")
    if row.source:
        text += f"; source: {row.source}"
    return text + "."
