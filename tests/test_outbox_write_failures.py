"""
Outcomes a database refuses to store, in a group of outcomes: each message
of the group is still recorded once, and the others are never left claimed
(to be sent again by lease recovery) because of one of them.
"""

from datetime import timedelta

import pytest
from django.core import mail
from django.db import OperationalError, connection
from django.test import override_settings
from django.utils import timezone

from django_mailkit import send_mail
from django_mailkit.backends.base import BaseEmailBackend
from django_mailkit.delivery import deliver_batch
from django_mailkit.models import Attempt, OutboxMessage, Status

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

LEASE = timedelta(minutes=1)


class RaisingBackend(BaseEmailBackend):
    """
    A third-party transport: its error for the message whose subject is in
    ``errors`` is that text (any text a library may put in an exception).
    """

    errors: dict[str, str] = {}
    delivered: list[str] = []

    def deliver(self, message):
        if message.subject in RaisingBackend.errors:
            raise ValueError(RaisingBackend.errors[message.subject])
        RaisingBackend.delivered.append(message.subject)
        return True


@pytest.fixture
def outbox():
    mail.outbox = []
    RaisingBackend.errors = {}
    RaisingBackend.delivered = []
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "transport"},
            },
            "transport": {"BACKEND": "tests.test_outbox_write_failures.RaisingBackend"},
        },
        MAILKIT={"USE_TASKS": False},
    ):
        yield


def queue(count):
    for i in range(count):
        send_mail(f"m{i}", "body", None, [f"u{i}@example.com"])
    return list(OutboxMessage.objects.order_by("pk"))


def attempts_of(pk):
    return list(Attempt.objects.filter(message_id=pk).values_list("number", "outcome"))


def test_an_error_text_with_a_lone_surrogate_is_stored_cleaned(outbox):
    """
    Python text may hold a lone surrogate (bytes decoded with
    "surrogateescape", as the email package does); no database column takes
    one. The message is recorded with U+FFFD in its place, and the rest of
    its group as usual.
    """
    first, second, third = queue(3)
    RaisingBackend.errors = {"m1": "bad header \udcff\udcfe in <u1@example.com>"}
    claimed = OutboxMessage.objects.claim("w", limit=3, lease=LEASE)
    result = deliver_batch(claimed, worker="w", lease=LEASE)
    assert (result.sent, result.failed) == ([first.pk, third.pk], [second.pk])
    assert RaisingBackend.delivered == ["m0", "m2"]
    rows = OutboxMessage.objects.order_by("pk").values_list("status", "attempts")
    assert list(rows) == [(Status.SENT, 1), (Status.FAILED, 1), (Status.SENT, 1)]
    failed = OutboxMessage.objects.get(pk=second.pk)
    assert failed.last_error == (
        "ValueError: bad header \ufffd\ufffd in <u1@example.com>"
    )
    assert Attempt.objects.get(message_id=second.pk).error == failed.last_error
    assert failed.recipient_set.get().smtp_reply == failed.last_error
    for record in (first, second, third):
        assert len(attempts_of(record.pk)) == 1


def writes_outcomes(sql, params):
    """
    Whether a statement writes outcomes: an UPDATE or INSERT, the group's
    statement, or (on PostgreSQL, once migrate has installed it) the call
    of its function with outcomes (its first value is the messages' list).
    """
    if sql.startswith("SELECT * FROM mailkit_record_"):
        return params[0] != "[]"
    return sql.lstrip().upper().startswith(("UPDATE", "INSERT", "WITH"))


def test_a_group_write_that_fails_part_way_records_each_message_once(outbox):
    """
    The group's write fails at its second message (the database was busy):
    nothing of the group may stay written, or the one-by-one writes that
    follow record the first message's attempt twice.
    """
    first, second, third = queue(3)
    claimed = OutboxMessage.objects.claim("w", limit=3, lease=LEASE)
    writes = []

    def busy_once(execute, sql, params, many, context):
        if writes_outcomes(sql, params):
            writes.append(sql)
            # The group's write of the second message (on PostgreSQL, the
            # group's single statement) fails, once.
            if len(writes) == (1 if connection.vendor == "postgresql" else 4):
                raise OperationalError("database is locked")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(busy_once):
        result = deliver_batch(claimed, worker="w", lease=LEASE)
    # It failed once, and the writes went on.
    assert len(writes) > (1 if connection.vendor == "postgresql" else 4)
    assert result.sent == [first.pk, second.pk, third.pk]
    assert RaisingBackend.delivered == ["m0", "m1", "m2"]
    for record in (first, second, third):
        assert attempts_of(record.pk) == [(1, Attempt.Outcome.SENT)]
    rows = OutboxMessage.objects.values_list("status", "attempts")
    assert list(rows) == [(Status.SENT, 1)] * 3


def test_one_outcome_that_cannot_be_stored_leaves_no_other_claimed(outbox):
    """
    A message whose outcome can't be written at all (not even as finished)
    stays claimed, for lease recovery; the others of its group are recorded,
    not left claimed to be sent again.
    """
    first, second, third = queue(3)
    RaisingBackend.errors = {"m1": "refused-by-the-database"}
    claimed = OutboxMessage.objects.claim("w", limit=3, lease=LEASE)

    def refuse(execute, sql, params, many, context):
        if any("refused-by-the-database" in str(p) for p in params or ()):
            raise OperationalError("value refused")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse):
        result = deliver_batch(claimed, worker="w", lease=LEASE)
    assert result.sent == [first.pk, third.pk]
    assert result.of(second.pk) is None  # nothing recorded, logged
    assert RaisingBackend.delivered == ["m0", "m2"]
    statuses = dict(OutboxMessage.objects.values_list("pk", "status"))
    assert statuses == {
        first.pk: Status.SENT,
        second.pk: Status.SENDING,
        third.pk: Status.SENT,
    }
    assert attempts_of(first.pk) == attempts_of(third.pk) == [(1, Attempt.Outcome.SENT)]
    assert attempts_of(second.pk) == []


def test_an_error_between_two_sends_still_records_what_was_sent(outbox):
    """
    The database fails (once) while the worker renews the lease before the
    group's second message: the first, sent, must still be recorded, not
    left claimed for lease recovery to send again.
    """
    first, second, third = queue(3)
    # Claimed with a lease already spent: each send renews it first.
    claimed = OutboxMessage.objects.claim("w", limit=3, lease=timedelta(milliseconds=1))
    renewals = []

    def fail_second_renewal(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("UPDATE"):
            renewals.append(sql)
            if len(renewals) == 2:
                raise OperationalError("server closed the connection")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(fail_second_renewal):
        with pytest.raises(OperationalError):
            deliver_batch(claimed, worker="w", lease=LEASE)
    assert RaisingBackend.delivered == ["m0"]
    rows = dict(OutboxMessage.objects.values_list("pk", "status"))
    assert rows == {
        first.pk: Status.SENT,
        second.pk: Status.SENDING,
        third.pk: Status.SENDING,
    }
    assert attempts_of(first.pk) == [(1, Attempt.Outcome.SENT)]
    # The two not sent are recovered uncharged, and sent once.
    OutboxMessage.objects.filter(pk__in=[second.pk, third.pk]).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert OutboxMessage.objects.recover_expired() == 2
    again = OutboxMessage.objects.claim("w2", limit=3, lease=LEASE)
    assert deliver_batch(again, worker="w2", lease=LEASE).sent == [
        second.pk,
        third.pk,
    ]
    assert RaisingBackend.delivered == ["m0", "m1", "m2"]
    for record in (first, second, third):
        assert attempts_of(record.pk) == [(1, Attempt.Outcome.SENT)]


def test_a_group_write_whose_next_read_fails_records_each_message_once(outbox):
    """
    The group's outcomes are written with the read of the next group's
    bytes; when that read fails (once), the outcomes must not stay written,
    or the writes one by one that follow record them twice.
    """
    records = queue(4)
    claimed = OutboxMessage.objects.claim("w", limit=4, lease=LEASE)
    seen = {"write": False, "failed": False}

    def read_fails_once(execute, sql, params, many, context):
        record = "mailkit_record_" in sql and params[0] != "[]"
        if writes_outcomes(sql, params):
            seen["write"] = True
        if seen["write"] and not seen["failed"] and ("mime" in sql.lower() or record):
            seen["failed"] = True
            raise OperationalError("canceling statement due to conflict")
        return execute(sql, params, many, context)

    with override_settings(MAILKIT={"USE_TASKS": False, "RECORD_GROUP_SIZE": 2}):
        with connection.execute_wrapper(read_fails_once):
            result = deliver_batch(claimed, worker="w", lease=LEASE)
    assert seen["failed"]
    assert result.sent == [record.pk for record in records]
    for record in records:
        assert attempts_of(record.pk) == [(1, Attempt.Outcome.SENT)]
