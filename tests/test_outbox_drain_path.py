"""
The worker's drain path reads and writes only what it must, and exactly.

A claim loads the fields delivery uses (``CLAIMED_FIELDS``) and nothing
else; a field left out would be loaded by Django on first use, one query per
message. These tests fail if delivery ever touches such a field.

A group's outcomes are written together (on PostgreSQL in one statement
whose values go as JSON): still fenced message by message, and every text
stored exactly as it was, whatever quotes, backslashes or characters it
holds.
"""

from datetime import timedelta

import pytest
from django.db.models import F
from django.test import override_settings
from django.utils import timezone

from django_mailkit import EmailMessage, mailers, suppression
from django_mailkit.delivery import deliver_batch
from django_mailkit.models import (
    CLAIMED_FIELDS,
    Attempt,
    AttemptRecord,
    OutboxMessage,
    Recipient,
    RecipientStatus,
    Status,
    Suppression,
    SuppressionReason,
)
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

LEASE = timedelta(minutes=5)


@pytest.fixture
def server(smtp_server):
    with override_settings(
        MAILERS=outbox_via_smtp(smtp_server, timeout=5),
        MAILKIT={"USE_TASKS": False, "MAX_ATTEMPTS": 2},
    ):
        yield smtp_server


@pytest.fixture
def outbox():
    """An outbox mailer, for the tests that call the writes directly."""
    with override_settings(
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "transport"},
            },
            "transport": {"BACKEND": "django_mailkit.backends.locmem.EmailBackend"},
        },
        MAILKIT={"USE_TASKS": False},
    ):
        yield


@pytest.fixture
def no_lazy_loads(monkeypatch):
    """Fail on any field of an outbox message loaded after its query."""
    loads = []
    original = OutboxMessage.refresh_from_db

    def refresh_from_db(self, *args, **kwargs):
        loads.append((self.pk, kwargs.get("fields", args[1] if args[1:] else None)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OutboxMessage, "refresh_from_db", refresh_from_db)
    yield loads
    assert loads == [], f"fields loaded one message at a time: {loads}"


def queue(*recipients_lists):
    mailers.default.send_messages(
        [
            EmailMessage(f"m{i}", "body", "f@example.com", list(to))
            for i, to in enumerate(recipients_lists)
        ]
    )


def test_claim_loads_only_the_fields_delivery_uses(server):
    queue(["a@example.com"])
    (claimed,) = OutboxMessage.objects.claim("w", limit=5, lease=LEASE)
    loaded = {f.attname for f in OutboxMessage._meta.concrete_fields} - (
        claimed.get_deferred_fields()
    )
    assert loaded == {OutboxMessage._meta.get_field(n).attname for n in CLAIMED_FIELDS}
    assert "mime" not in loaded
    # The message the ORM makes of the same fields (on PostgreSQL, the
    # claim makes it from its UPDATE's rows itself).
    orm = OutboxMessage.objects.only(*CLAIMED_FIELDS).get(pk=claimed.pk)
    assert type(claimed) is OutboxMessage
    assert {k: v for k, v in vars(claimed).items() if k != "_state"} == {
        k: v for k, v in vars(orm).items() if k != "_state"
    }
    assert (claimed._state.db, claimed._state.adding) == ("default", False)
    # What was left out still reads right (loaded on use).
    assert claimed.subject == "m0"


def test_delivery_touches_no_field_the_claim_left_out(server, no_lazy_loads):
    # Sent, partially sent, retried and then failed: every classification
    # path and both kinds of write (final and retry later).
    server.refuse_recipient("gone@example.com", "550 5.1.1 No such user")
    server.refuse_recipient("busy@example.com", "451 4.3.0 Try later")
    queue(
        ["a@example.com"],
        ["b@example.com", "gone@example.com"],
        ["busy@example.com"],
        ["c@example.com", "d@example.com"],
    )
    first = Worker(once=True, interval=0).run()
    assert (first.sent, first.partial, first.retry) == (2, 1, 1)
    OutboxMessage.objects.filter(status=Status.QUEUED).update(
        next_attempt_at=timezone.now()
    )
    second = Worker(once=True, interval=0).run()
    assert second.failed == 1
    statuses = dict(OutboxMessage.objects.values_list("subject", "status"))
    assert statuses == {
        "m0": Status.SENT,
        "m1": Status.PARTIAL,
        "m2": Status.FAILED,
        "m3": Status.SENT,
    }
    busy = OutboxMessage.objects.get(subject="m2")
    assert busy.attempts == 2
    assert list(busy.recipient_set.values_list("status", flat=True)) == [
        RecipientStatus.FAILED
    ]
    assert OutboxMessage.objects.get(subject="m1").sent_at is not None


# The grouped write (one statement on PostgreSQL, its values as JSON).

ODD_TEXTS = [
    "o'brien@example.com",
    '"quoted \\"local\\""@example.com',
    "back\\slash@example.com",
    "literal-\\u0000-not-a-nul@example.com",
    "jörg@exämple.com",
    "emoji-😀@example.com",
    '{"json": ["looking", 1]}@example.com',
]


#: What the group record statement, sent as it is, holds.
STATEMENT = 'UPDATE "django_mailkit_outboxmessage" AS m SET'


def claimed_group(count):
    queue(*([f"u{i}@example.com"] for i in range(count)))
    claimed = OutboxMessage.objects.claim("w", limit=count, lease=LEASE)
    for record in claimed:
        record.attempts = 1  # its attempt, counted when its group began
    return claimed


def attempt_for(record, address, reply, outcome=Attempt.Outcome.SENT, code=250):
    now = timezone.now()
    status = RecipientStatus.SENT if code < 400 else RecipientStatus.FAILED
    return AttemptRecord(
        outcome=outcome,
        worker="w",
        started_at=now,
        finished_at=now,
        error="" if code < 400 else f"{address}: {code} {reply}",
        smtp_code=code,
        smtp_reply=reply,
        replies={address: (code, reply)},
        recipients={address: (status, code, reply)},
    )


def test_a_group_write_is_fenced_per_message(outbox):
    first, second, third = claimed_group(3)
    # Another worker took the second over (its lease ran out).
    OutboxMessage.objects.filter(pk=second.pk).update(claim_token=F("claim_token") + 1)
    before = OutboxMessage.objects.filter(pk=second.pk).values().get()
    written, _loaded = OutboxMessage.objects.record_attempts(
        [
            (record, attempt_for(record, f"u{i}@example.com", "250 ok"))
            for i, record in enumerate((first, second, third))
        ]
    )
    assert written == {first.pk, third.pk}
    assert OutboxMessage.objects.filter(pk=second.pk).values().get() == before
    assert not Attempt.objects.filter(message_id=second.pk).exists()
    assert second.recipient_set.get().status == RecipientStatus.PENDING
    for record in (first, third):
        row = OutboxMessage.objects.get(pk=record.pk)
        assert (row.status, row.attempts) == (Status.SENT, 1)
        assert record.recipient_set.get().status == RecipientStatus.SENT
        assert Attempt.objects.filter(message_id=record.pk).count() == 1


@pytest.mark.parametrize("address", ODD_TEXTS)
def test_odd_addresses_and_replies_are_written_as_they_are(outbox, address):
    # Texts with quotes, backslashes, a JSON look-alike, an escape sequence
    # written out, non-ASCII and astral characters: stored byte for byte.
    (record,) = claimed_group(1)
    Recipient.objects.filter(message=record).update(address=address)
    reply = f"5.1.1 <{address}>: \"no\" \\ 'such' user\n\tü 😀 \\n \\u0041 %s %(x)s"
    attempt = attempt_for(record, address, reply, Attempt.Outcome.FAILED, 550)
    written, _loaded = OutboxMessage.objects.record_attempts([(record, attempt)])
    assert written == {record.pk}
    row = OutboxMessage.objects.get(pk=record.pk)
    assert row.status == Status.FAILED
    assert row.last_error == f"{address}: 550 {reply}"
    recipient = record.recipient_set.get()
    assert (recipient.address, recipient.status) == (address, RecipientStatus.FAILED)
    assert (recipient.smtp_code, recipient.smtp_reply) == (550, reply)
    (stored,) = Attempt.objects.filter(message_id=record.pk)
    assert (stored.smtp_code, stored.smtp_reply) == (550, reply)
    assert stored.recipients == {address: [550, reply]}


# A batch's lookups take their many values as one JSON parameter.


def test_a_batch_reads_its_recipients_and_suppressions_whatever_the_text(outbox):
    listed = ["o'brien@example.com", "jörg@exämple.com", '"john doe"@example.com']
    others = ["a@example.com", "c+tag@example.com"]
    queue(*([address] for address in listed + others))
    suppression.suppress(listed, reason=SuppressionReason.IMPORTED)
    claimed = OutboxMessage.objects.claim("w", limit=10, lease=LEASE)
    result = deliver_batch(claimed, worker="w", lease=LEASE)
    assert sorted(result.suppressed) == sorted(m.pk for m in claimed[:3])
    assert sorted(result.sent) == sorted(m.pk for m in claimed[3:])
    skipped = Recipient.objects.filter(status=RecipientStatus.SUPPRESSED)
    assert sorted(skipped.values_list("message_id", flat=True)) == sorted(
        result.suppressed
    )


def seq_scans(*models):
    """This transaction's scans of each model's whole table so far (PostgreSQL)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables "
            "WHERE relname = ANY(%s)",
            [[model._meta.db_table for model in models]],
        )
        return dict(cursor.fetchall())


def test_a_batch_reads_its_rows_by_key_in_a_small_outbox(outbox, postgresql):
    """
    Some thousands of recipients, freshly analyzed: looked up ``IN`` a
    subquery, a batch's recipients were hashed over a scan of the whole
    table wherever the planner thought it small (about 16,000 rows).
    """
    from django.db import connection, transaction

    queue(*([f"old{i}@example.com", f"old{i}@example.org"] for i in range(1500)))
    OutboxMessage.objects.update(status=Status.SENT)
    suppression.suppress(
        [f"gone{i}@example.com" for i in range(1500)] + ["u1@example.com"],
        reason=SuppressionReason.IMPORTED,
    )
    queue(["u0@example.com"], ["u1@example.com"])
    claimed = OutboxMessage.objects.claim("w", limit=10, lease=LEASE)
    tables = (OutboxMessage, Recipient, Suppression)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {', '.join(t._meta.db_table for t in tables)}")
    with transaction.atomic():
        before = seq_scans(*tables)
        result = deliver_batch(claimed, worker="w", lease=LEASE)
        assert seq_scans(*tables) == before
    assert (result.sent, result.suppressed) == ([claimed[0].pk], [claimed[1].pk])


# On PostgreSQL, migrate installs the group statement as a function (its
# plan is then kept for the session); a database without this version's
# function gets the statement as it is.


@pytest.fixture
def postgresql():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL function (MAILKIT_DB=postgresql)")


def test_migrate_installs_the_record_function_and_workers_call_it(outbox, postgresql):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_mailkit._sql import record_function

    name, _definition = record_function("default")
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regproc(%s) IS NOT NULL", [name])
        assert cursor.fetchone() == (True,)
    first, second = claimed_group(2)
    with CaptureQueriesContext(connection) as queries:
        written, loaded = OutboxMessage.objects.record_attempts(
            [(first, attempt_for(first, "u0@example.com", "250 ok"))],
            then_load=[second],
        )
    assert (written, loaded) == ({first.pk}, {second.pk})
    calls = [q["sql"] for q in queries if q["sql"].startswith(f"SELECT * FROM {name}(")]
    assert len(calls) == 1
    assert not [q for q in queries if STATEMENT in q["sql"]]
    assert OutboxMessage.objects.get(pk=first.pk).status == Status.SENT
    assert second.mime == OutboxMessage.objects.get(pk=second.pk).mime


def test_without_the_function_the_statement_goes_as_it_is(outbox, postgresql):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_mailkit import _sql

    name, _definition = _sql.record_function("default")
    first, second, third = claimed_group(3)
    OutboxMessage.objects.filter(pk=second.pk).update(claim_token=F("claim_token") + 1)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {name}")
    _sql._available.clear()
    try:
        with CaptureQueriesContext(connection) as queries:
            written, loaded = OutboxMessage.objects.record_attempts(
                [
                    (record, attempt_for(record, f"u{i}@example.com", "250 ok"))
                    for i, record in enumerate((first, second))
                ],
                then_load=[third],
            )
    finally:
        _sql.install_record_function("default")
    assert (written, loaded) == ({first.pk}, {third.pk})
    assert not [q for q in queries if q["sql"].startswith(f"SELECT * FROM {name}")]
    assert [q for q in queries if STATEMENT in q["sql"]]
    assert OutboxMessage.objects.get(pk=first.pk).status == Status.SENT
    assert OutboxMessage.objects.get(pk=second.pk).status == Status.SENDING
    # Installed again, it is found on the next connection.
    connection.close()
    assert _sql._record_function("default") == name


def test_a_state_changes_values_go_as_their_fields_would_write_them(postgresql):
    # The record statement's values skip the fields' preparation when it
    # would change nothing: the JSON is the same either way.
    from django.db import connection

    from django_mailkit._sql import _db_value, _json

    message = OutboxMessage(pk=1, attempts=2, sent_at=None)
    now = timezone.now()
    states = [
        message.finish_fields(Status.SENT),
        message.finish_fields(Status.FAILED, error="550 «no» \\ 'such' user"),
        message.retry_fields(error="451 later"),
        {"attempts": 3, "updated_at": now, "claimed_by": "", "sent_at": None},
    ]
    for fields in states:
        for name, value in fields.items():
            field = OutboxMessage._meta.get_field(name)
            fast = _db_value(field, value, connection)
            prepared = field.get_db_prep_value(value, connection)
            assert _json([{"v": fast}]) == _json([{"v": prepared}]), name
