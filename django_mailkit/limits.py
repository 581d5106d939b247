"""
Limits a transport mailer's delivery keeps across every worker on every host.

Two OPTIONS of a transport mailer (the SMTP backend's) set them:

* ``rate``: at most so many messages per second, minute or hour
  (``"50/s"``, ``"600/m"``, ``"1000/h"``);
* ``max_connections_total``: at most so many connections to the server at
  once, from all workers together.

Their state is in the database, so that it is shared:

* a token bucket per mailer, one row (``MailerLimit``). A worker takes tokens
  with one conditional UPDATE computed from the database's clock; when none is
  left, it reads when the next one is due and sleeps until then;
* connection slots, one row each (``ConnectionSlot``), leased to a worker
  like a claimed message: a worker that crashes holding one loses it when the
  lease runs out.

No transaction is open, and no row lock held, while SMTP is talked: each
statement commits on its own.

``Gate`` applies both to one batch of ``deliver_batch()``: before a message
is charged its attempt, it waits for a token (never past the first half of
the claim's lease) and makes sure its worker holds a connection slot. When
it can't have them in time, the message goes back to the queue untried, and
uncharged.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connections, models, router, transaction
from django.utils.translation import gettext_lazy as _

logger = logging.getLogger("django_mailkit.limits")

__all__ = [
    "ConnectionSlot",
    "Gate",
    "MailerLimit",
    "Rate",
    "SlotLease",
    "parse_rate",
    "take_tokens",
]

#: The bucket holds at most this many seconds' worth of tokens (and at least
#: one): the burst a rate allows beyond its average.
BURST_SECONDS = 0.1
#: A worker takes at most this many seconds' worth of tokens at once (and at
#: least one), for the messages it is about to send: at high rates this
#: spares a statement per message; at low rates it takes them one by one.
TAKE_SECONDS = 0.02

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"(\d+(?:\.\d+)?)/([smh])")


@dataclass(frozen=True)
class Rate:
    """A message rate: ``count`` messages per ``period`` seconds."""

    count: float
    period: float
    text: str

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def burst(self) -> float:
        """The bucket's capacity: the most sent at once after a quiet spell."""
        return float(max(1, math.floor(self.per_second * BURST_SECONDS)))

    @property
    def take_at_most(self) -> int:
        return max(1, int(self.per_second * TAKE_SECONDS))

    def __str__(self) -> str:
        return self.text


def parse_rate(value: object) -> Rate:
    """
    Parse ``"600/m"`` (per ``s``econd, ``m``inute or ``h``our) into a Rate.

    Raises ValueError with a sentence that can follow the option's name.
    """
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    count = float(match.group(1)) if match else 0.0
    if not match or not count or not math.isfinite(count):
        raise ValueError(
            "must be a number of messages per second, minute or hour, such as "
            f"'50/s', '600/m' or '1000/h' (got {value!r})."
        )
    return Rate(count, _PERIODS[match.group(2)], value)  # type: ignore[arg-type]


class MailerLimit(models.Model):
    """A transport mailer's rate limit, shared by every worker: a token bucket."""

    mailer = models.CharField(_("mailer"), max_length=100, unique=True)
    #: Tokens in the bucket at ``stamp``.
    tokens = models.FloatField(_("tokens"), default=0)
    #: When ``tokens`` was counted: seconds since the epoch, by the database's
    #: clock. 0: never, so the bucket is full.
    stamp = models.FloatField(_("counted at"), default=0)
    #: How many tokens the last take got.
    granted = models.PositiveIntegerField(_("last granted"), default=0)

    class Meta:
        verbose_name = _("mailer rate limit")
        verbose_name_plural = _("mailer rate limits")

    def __str__(self) -> str:
        return self.mailer


class ConnectionSlot(models.Model):
    """One of a transport mailer's ``max_connections_total`` connections."""

    mailer = models.CharField(_("mailer"), max_length=100)
    number = models.PositiveIntegerField(_("number"))
    #: Who holds it (a worker's name and a token of this lease); empty: free.
    holder = models.CharField(_("holder"), max_length=250, blank=True)
    #: When the lease runs out: seconds since the epoch, by the database's
    #: clock. A worker that crashed holding the slot holds it until then.
    expires = models.FloatField(_("expires"), default=0)

    class Meta:
        verbose_name = _("connection slot")
        verbose_name_plural = _("connection slots")
        constraints = [
            models.UniqueConstraint(
                fields=["mailer", "number"], name="mailkit_slot_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.mailer} #{self.number}"


# The SQL. Each statement commits on its own (or in a transaction of its
# own, where the database can't return what an UPDATE wrote).


@dataclass(frozen=True)
class _Dialect:
    #: The database's clock, in seconds since the epoch; None: the worker's
    #: clock is passed instead.
    now: str | None
    greatest: str
    least: str
    floor: str
    returning: bool


def _dialect(db: str) -> _Dialect:
    connection = connections[db]
    if connection.vendor == "postgresql":
        # The time the row is written, once its lock is held: not when the
        # statement arrived (a statement that waited for the lock, or for
        # the CPU, must not count tokens from before it got the row).
        return _Dialect(
            "EXTRACT(EPOCH FROM clock_timestamp())::float8",
            "GREATEST",
            "LEAST",
            "FLOOR(%s)",
            True,
        )
    if connection.vendor == "sqlite":
        # 'now' is one value for the whole statement, to the millisecond.
        return _Dialect(
            "((julianday('now') - 2440587.5) * 86400.0)",
            "MAX",
            "MIN",
            "CAST(%s AS INTEGER)",  # of a positive number: its floor
            bool(connection.features.can_return_columns_from_insert),  # 3.35
        )
    if connection.vendor == "mysql":
        return _Dialect(
            "UNIX_TIMESTAMP(SYSDATE(6))", "GREATEST", "LEAST", "FLOOR(%s)", False
        )
    return _Dialect(None, "GREATEST", "LEAST", "FLOOR(%s)", False)


def _now(dialect: _Dialect, params: list[Any]) -> str:
    if dialect.now is not None:
        return dialect.now
    params.append(time.time())
    return "%s"


def _write_db() -> str:
    return router.db_for_write(MailerLimit)


def take_tokens(mailer: str, rate: Rate, wanted: int = 1) -> tuple[int, float]:
    """
    Take up to ``wanted`` tokens from ``mailer``'s bucket.

    Returns how many were taken and, when none was, how many seconds until
    the next one is due. One conditional UPDATE when a token is there (the
    bucket is refilled and taken from in the same statement, by the
    database's clock); a SELECT more when it isn't.
    """
    db = _write_db()
    return _take(db, _dialect(db), mailer, rate, wanted)


def _take(
    db: str, dialect: _Dialect, mailer: str, rate: Rate, wanted: int
) -> tuple[int, float]:
    connection = connections[db]
    quote = connection.ops.quote_name
    table = quote(MailerLimit._meta.db_table)
    tokens, stamp = quote("tokens"), quote("stamp")
    granted, name = quote("granted"), quote("mailer")
    params: list[Any] = []

    def available() -> str:
        params.append(rate.burst)
        now = _now(dialect, params)
        params.append(rate.per_second)
        # Never back in time: a statement that waited for the row lock may
        # carry an older clock than the one that wrote the row.
        return (
            f"{dialect.least}(%s, {tokens} + "
            f"{dialect.greatest}(0, {now} - {stamp}) * %s)"
        )

    def grant() -> str:
        floor = dialect.floor % available()
        params.append(wanted)
        return f"{dialect.least}({floor}, %s)"

    # Each assignment reads the row as it was: in standard SQL all do; in
    # MySQL, which assigns left to right, these read only columns assigned
    # after them. (The params follow the text's order.)
    set_granted = f"{granted} = {grant()}"
    set_tokens = f"{tokens} = {available()} - {grant()}"
    set_stamp = f"{stamp} = {dialect.greatest}({stamp}, {_now(dialect, params)})"
    where = f"{name} = %s"
    params.append(mailer)
    where += f" AND {available()} >= 1"
    sql = f"UPDATE {table} SET {set_granted}, {set_tokens}, {set_stamp} WHERE {where}"
    for _try in range(2):
        if dialect.returning:
            with connection.cursor() as cursor:
                cursor.execute(sql + f" RETURNING {granted}", params)
                row = cursor.fetchone()
        else:
            with transaction.atomic(using=db), connection.cursor() as cursor:
                cursor.execute(sql, params)
                row = None
                if cursor.rowcount:
                    cursor.execute(
                        f"SELECT {granted} FROM {table} WHERE {name} = %s", [mailer]
                    )
                    row = cursor.fetchone()
        if row is not None:
            return int(row[0]), 0.0
        wait = _wait(db, dialect, mailer, rate)
        if wait is not None:
            return 0, wait
        # No row yet: the mailer's first take. A full bucket.
        MailerLimit.objects.using(db).bulk_create(
            [MailerLimit(mailer=mailer)], ignore_conflicts=True
        )
    return 0, 1 / rate.per_second


def _wait(db: str, dialect: _Dialect, mailer: str, rate: Rate) -> float | None:
    """Seconds until ``mailer``'s bucket has a token; None if it has no row."""
    connection = connections[db]
    quote = connection.ops.quote_name
    params: list[Any] = []
    now = _now(dialect, params)
    params.append(mailer)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {quote('tokens')}, {quote('stamp')}, {now} "
            f"FROM {quote(MailerLimit._meta.db_table)} WHERE {quote('mailer')} = %s",
            params,
        )
        row = cursor.fetchone()
    if row is None:
        return None
    tokens, stamp, now_value = (float(value) for value in row)
    available = min(rate.burst, tokens + max(0.0, now_value - stamp) * rate.per_second)
    return max(0.0, (1 - available) / rate.per_second)


class SlotLease:
    """
    A worker's hold on one of ``mailer``'s ``total`` connection slots.

    ``acquire()`` takes a free slot (or one whose lease ran out) with a
    conditional UPDATE; ``renew()`` extends the lease once half of it is
    spent; ``release()`` frees it. Each is fenced on this lease's holder
    token: a worker paused past its lease can't free a slot someone else
    holds now.
    """

    def __init__(
        self,
        mailer: str,
        total: int,
        *,
        worker: str,
        lease: timedelta,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mailer = mailer
        self.total = total
        self.holder = f"{worker}:{uuid.uuid4().hex[:8]}"
        self.lease = lease.total_seconds()
        self.number: int | None = None
        self._clock = clock
        self._renew_at = 0.0

    @property
    def held(self) -> bool:
        return self.number is not None

    def acquire(self) -> bool:
        """Take a free slot; False if all ``total`` are held."""
        if self.number is not None:
            return True
        numbers = list(range(self.total))
        random.shuffle(numbers)  # workers don't all queue on slot 0
        for _try in range(2):
            for number in numbers:
                if self._write(number, free=True):
                    self.number = number
                    self._renew_at = self._clock() + self.lease / 2
                    return True
            db = _write_db()
            existing = ConnectionSlot.objects.using(db).filter(
                mailer=self.mailer, number__lt=self.total
            )
            if existing.count() >= self.total:
                return False
            # The mailer's first connection (or a larger total): make the
            # slots, then try again.
            ConnectionSlot.objects.using(db).bulk_create(
                [ConnectionSlot(mailer=self.mailer, number=n) for n in numbers],
                ignore_conflicts=True,
            )
        return False

    def renew(self) -> bool:
        """Extend the lease once half of it is spent; False if it was lost."""
        if self.number is None:
            return False
        if self._clock() < self._renew_at:
            return True
        if not self._write(self.number, free=False):
            logger.warning(
                "Connection slot %s of mailer %r was lost (its lease ran out).",
                self.number,
                self.mailer,
            )
            self.number = None
            return False
        self._renew_at = self._clock() + self.lease / 2
        return True

    def release(self) -> None:
        """Free the slot (if this lease still holds it)."""
        if self.number is None:
            return
        number, self.number = self.number, None
        db = _write_db()
        ConnectionSlot.objects.using(db).filter(
            mailer=self.mailer, number=number, holder=self.holder
        ).update(holder="", expires=0)

    def _write(self, number: int, *, free: bool) -> bool:
        """Lease slot ``number`` to this holder: if it is free, or if ours."""
        db = _write_db()
        connection = connections[db]
        dialect = _dialect(db)
        quote = connection.ops.quote_name
        holder, expires = quote("holder"), quote("expires")
        params: list[Any] = [self.holder]
        set_expires = f"{_now(dialect, params)} + %s"
        params += [self.lease, self.mailer, number]
        if free:
            condition = f"({holder} = '' OR {expires} < {_now(dialect, params)})"
        else:
            condition = f"{holder} = %s"
            params.append(self.holder)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {quote(ConnectionSlot._meta.db_table)} "
                f"SET {holder} = %s, {expires} = {set_expires} "
                f"WHERE {quote('mailer')} = %s AND {quote('number')} = %s "
                f"AND {condition}",
                params,
            )
            return bool(cursor.rowcount)


#: How long a message waits for a free connection slot before it goes back
#: to the queue (the worker tries again after its interval).
SLOT_WAIT = 1.0
#: Pause between two tries for a free connection slot.
SLOT_POLL = 0.05


class Gate:
    """
    The shared limits, applied to one batch of claimed messages.

    ``admit(record)`` is asked right before a message is charged its attempt.
    For a mailer with limits it makes sure this worker holds a connection
    slot, and takes a token, sleeping until one is due, but never past the
    first half of the claim's lease: until then the rest of the batch is
    safely this worker's. When it can't, it says no, and says no to the rest
    of that mailer's messages in the batch, which go back to the queue
    untried (no attempt is charged). ``close()`` frees the slots.
    """

    def __init__(
        self,
        messages: list[Any],
        *,
        worker: str,
        lease: timedelta,
        should_stop: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.worker = worker
        self.lease = lease
        self._stopping = should_stop or (lambda: False)
        self._clock = clock
        self._sleep = sleep
        self.deadline = clock() + lease.total_seconds() / 2
        #: Messages of each mailer not admitted yet: how many tokens to ask for.
        self._left: dict[str, int] = {}
        for record in messages:
            self._left[record.mailer] = self._left.get(record.mailer, 0) + 1
        self._limits: dict[str, tuple[Rate | None, int | None]] = {}
        self._tokens: dict[str, int] = {}
        self._slots: dict[str, SlotLease] = {}
        #: Mailers held back for the rest of the batch.
        self.refused: set[str] = set()

    def limits_of(self, alias: str) -> tuple[Rate | None, int | None]:
        """The mailer's ``rate`` and ``max_connections_total`` (None: none)."""
        if alias not in self._limits:
            from .handler import mailers

            try:
                backend = mailers[alias]
            except Exception:  # delivery records the error on each message
                self._limits[alias] = (None, None)
            else:
                self._limits[alias] = (
                    getattr(backend, "rate", None),
                    getattr(backend, "max_connections_total", None),
                )
        return self._limits[alias]

    def admit(self, record: Any, *, wait: bool = True, take: bool = True) -> bool:
        """
        Whether ``record`` may be sent now (its token taken, a slot held).

        ``wait=False`` only tries, and never holds the mailer back;
        ``take=False`` only uses a token already taken (by the last take,
        which takes a few at high rates), so that a worker never holds more
        than one take's tokens ahead of its sends.
        """
        alias = record.mailer
        if alias in self.refused:
            return False
        rate, total = self.limits_of(alias)
        if rate is None and total is None:
            return True
        if total is not None and not self._slot(alias, total, wait=wait):
            return self._refuse(alias, wait, "no connection slot was free")
        if rate is not None and not self._token(alias, rate, wait=wait, take=take):
            return self._refuse(alias, wait, "no token was due in time")
        self._left[alias] = max(0, self._left.get(alias, 1) - 1)
        return True

    def close(self) -> None:
        """Free the connection slots this batch held."""
        for slot in self._slots.values():
            try:
                slot.release()
            except Exception:  # it runs out with its lease
                logger.warning(
                    "Freeing connection slot of mailer %r failed",
                    slot.mailer,
                    exc_info=True,
                )
        self._slots.clear()

    def _refuse(self, alias: str, wait: bool, why: str) -> bool:
        if wait and not self._stopping():
            self.refused.add(alias)
            logger.info(
                "Mailer %r: %s; its remaining messages in this batch go back "
                "to the queue, untried.",
                alias,
                why,
            )
        return False

    def _slot(self, alias: str, total: int, *, wait: bool) -> bool:
        slot = self._slots.get(alias)
        if slot is None:
            slot = self._slots[alias] = SlotLease(
                alias, total, worker=self.worker, lease=self.lease, clock=self._clock
            )
        elif slot.held:
            return slot.renew()
        give_up = min(self._clock() + SLOT_WAIT, self.deadline)
        while not slot.acquire():
            if not wait or not self._pause_until(
                self._clock() + random.uniform(SLOT_POLL / 2, SLOT_POLL), give_up
            ):
                return False
        return True

    def _token(self, alias: str, rate: Rate, *, wait: bool, take: bool) -> bool:
        if self._tokens.get(alias, 0) > 0:
            self._tokens[alias] -= 1
            return True
        while take:
            wanted = min(max(1, self._left.get(alias, 1)), rate.take_at_most)
            taken, due_in = take_tokens(alias, rate, wanted)
            if taken:
                self._tokens[alias] = taken - 1
                return True
            if not wait:
                return False
            # Sleep until the next token is due: a little later, at random,
            # so that the workers waiting for it don't all ask at once.
            due_in = max(due_in, 0.001) + random.uniform(0, 0.002)
            if not self._pause_until(self._clock() + due_in, self.deadline):
                return False
        return False

    def _pause_until(self, wake: float, deadline: float) -> bool:
        """Sleep until ``wake``; False (at once) if that is past ``deadline``,
        or if the worker is told to stop meanwhile."""
        if wake > deadline:
            return False
        while not self._stopping():
            left = wake - self._clock()
            if left <= 0:
                return True
            self._sleep(min(left, 0.1))
        return False
