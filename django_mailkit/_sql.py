"""
The outbox's hand-written SQL: the per-message writes of a worker.

``begin_attempt_returning()`` counts the attempt of a message sent alone
and loads its bytes in one fenced UPDATE ... RETURNING (PostgreSQL, SQLite
3.35+).

``record_attempts_postgresql()`` is the one-statement form of
``OutboxMessageQuerySet.record_attempts()``: the outcomes of a group of
messages (each message's row with its attempt count, its recipients and
its Attempt row) and the read of the next group's bytes, in one statement
(data-modifying CTEs over arrays, and a plain SELECT), one round trip,
through Django's cursor (query logging and ``connection.execute_wrapper()``
see it). Every row is fenced on its own message's claim token: the message
UPDATE is the fence, and the recipients' UPDATE and the Attempt INSERT join
its RETURNING rows, so for a message whose claim token no longer matches
nothing at all is written, while the rest of the group is; the read returns
only the messages whose token matches.
"""

from __future__ import annotations

import functools
import io
import json
from typing import TYPE_CHECKING, Any

from django.db import connections, models
from django.db.models import Field

if TYPE_CHECKING:
    from datetime import datetime

    from django.db.models.options import Options

    from .models import AttemptRecord, OutboxMessage

# The Attempt columns, in the order the statement takes them.
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


def column(meta: Options[Any], name: str) -> str:
    """The column of the concrete field ``name``."""
    model_field = meta.get_field(name)
    assert isinstance(model_field, Field) and model_field.column  # concrete
    return model_field.column


#: Messages up to this size come back with begin_attempt's UPDATE (or the
#: group's read); larger ones are read in pieces of this size, so that the
#: database driver never holds a large message twice over (PostgreSQL sends
#: bytea as hex text).
INLINE_BYTES = 1 << 20


def begin_attempt_returning(
    record: OutboxMessage, db: str, *, now: datetime, expires: datetime
) -> tuple[int, bytes] | None:
    """
    The fenced UPDATE of ``begin_attempt()``, returning the new attempt count
    and the bytes (PostgreSQL, SQLite 3.35+); None if the lease was lost.
    """
    connection = connections[db]
    quote = connection.ops.quote_name
    meta = record._meta
    length = "octet_length" if connection.vendor == "postgresql" else "length"

    def col(name: str) -> str:
        return quote(column(meta, name))

    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(meta.db_table)} SET "
            f"{col('attempts')} = {col('attempts')} + 1, "
            f"{col('lease_expires_at')} = %s, {col('updated_at')} = %s "
            f"WHERE {col('id')} = %s AND {col('claim_token')} = %s "
            f"RETURNING {col('attempts')}, {length}({col('mime')}), "
            f"CASE WHEN {length}({col('mime')}) <= %s THEN {col('mime')} END",
            [
                connection.ops.adapt_datetimefield_value(expires),
                connection.ops.adapt_datetimefield_value(now),
                record.pk,
                record.claim_token,
                INLINE_BYTES,
            ],
        )
        row = cursor.fetchone()
        if row is None:
            return None
        attempts, size, mime = row
        if mime is None:
            mime = _read_in_pieces(cursor, record, size or 0)
    return attempts, bytes(mime)


def _read_in_pieces(cursor: Any, record: OutboxMessage, size: int) -> bytes:
    quote = cursor.db.ops.quote_name
    meta = record._meta
    buffer = io.BytesIO()
    for start in range(1, size + 1, INLINE_BYTES):
        cursor.execute(
            f"SELECT substr({quote(column(meta, 'mime'))}, %s, %s) "
            f"FROM {quote(meta.db_table)} WHERE {quote(column(meta, 'id'))} = %s",
            [start, INLINE_BYTES, record.pk],
        )
        (piece,) = cursor.fetchone()
        buffer.write(piece)
        del piece
    # The buffer's own bytes object, not a copy.
    return buffer.getvalue()


def record_attempts_postgresql(
    changes: list[tuple[OutboxMessage, AttemptRecord, dict[str, Any]]],
    db: str,
    *,
    then_load: list[OutboxMessage],
) -> tuple[set[int], dict[int, bytes]]:
    """
    Record a group of attempts, and read the next group, in one statement.

    ``changes`` are (message, attempt, the message's new field values).
    Every row is fenced on its own message's claim token: a message whose
    lease was lost matches nothing, so neither its recipients nor its
    Attempt row are written; the others are. Then the bytes of each of
    ``then_load`` whose token still matches are read (nothing is written
    for them). Returns the ids recorded, and {id: bytes} for the messages
    read.
    """
    from .models import OutboxMessage

    connection = connections[db]
    meta = OutboxMessage._meta
    names = tuple(sorted({name for _r, _a, fields in changes for name in fields}))
    sql = _statement(db, names, bool(changes), bool(then_load))
    params: list[Any] = []
    if changes:
        params += [[record.pk for record, _a, _f in changes]]
        params += [[record.claim_token for record, _a, _f in changes]]
        for name in names:
            model_field = meta.get_field(name)
            assert isinstance(model_field, Field)
            # Whether the message sets the column, and to what.
            params.append([name in fields for _r, _a, fields in changes])
            params.append(
                [
                    model_field.get_db_prep_value(fields.get(name), connection)
                    if name in fields
                    else None
                    for _r, _a, fields in changes
                ]
            )
        rows = [
            (record.pk, address, state)
            for record, attempt, _f in changes
            for address, state in attempt.recipients.items()
        ]
        params += [
            [pk for pk, _address, _state in rows],
            [address for _pk, address, _state in rows],
            [str(state[0]) for _pk, _address, state in rows],
            [state[1] for _pk, _address, state in rows],
            [state[2] for _pk, _address, state in rows],
            [
                attempt.finished_at
                for _record, attempt, _f in changes
                for _address in attempt.recipients
            ],
        ]
        values = [
            attempt.attempt_fields(record.attempts) for record, attempt, _f in changes
        ]
        params.append([record.pk for record, _a, _f in changes])
        for name in _ATTEMPT_FIELDS[1:-1]:
            params.append(
                [str(v[name]) if name == "outcome" else v[name] for v in values]
            )
        params.append([json.dumps(v["recipients"]) for v in values])
    if then_load:
        params += [
            INLINE_BYTES,
            [message.pk for message in then_load],
            [message.claim_token for message in then_load],
        ]
    written: set[int] = set()
    loaded: dict[int, bytes] = {}
    by_pk = {message.pk: message for message in then_load}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        large = []
        for kind, pk, size, mime in cursor.fetchall():
            if kind == "w":
                written.add(pk)
            elif mime is None:
                large.append((pk, size))
            else:
                loaded[pk] = bytes(mime)
        for pk, size in large:
            loaded[pk] = _read_in_pieces(cursor, by_pk[pk], size or 0)
    return written, loaded


@functools.cache
def _statement(
    db: str, field_names: tuple[str, ...], record: bool, then_load: bool
) -> str:
    from .models import Attempt, OutboxMessage, Recipient, RecipientStatus

    connection = connections[db]
    quote = connection.ops.quote_name
    r_meta, a_meta, m_meta = Recipient._meta, Attempt._meta, OutboxMessage._meta
    message_table = quote(m_meta.db_table)

    def col(meta: Options[Any], name: str) -> str:
        return quote(column(meta, name))

    def db_type(meta: Options[Any], name: str) -> str:
        model_field = meta.get_field(name)
        assert isinstance(model_field, Field)
        if isinstance(model_field, models.ForeignKey):
            model_field = model_field.target_field
        return str(model_field.rel_db_type(connection))

    ctes = []
    selects = []
    if record:
        # Each message's row, by primary key and claim token only: the plan
        # never depends on how many messages are in flight, and a message
        # whose lease was lost matches nothing. A column a message doesn't
        # set keeps its value.
        assignments = ", ".join(
            f"{col(m_meta, name)} = CASE WHEN v.set_{i} THEN v.value_{i} "
            f"ELSE m.{col(m_meta, name)} END"
            for i, name in enumerate(field_names)
        )
        arrays = ", ".join(
            f"%s::boolean[], %s::{db_type(m_meta, name)}[]" for name in field_names
        )
        aliases = ", ".join(f"set_{i}, value_{i}" for i in range(len(field_names)))
        ctes.append(
            f"msg AS (UPDATE {message_table} AS m SET {assignments} "
            f"FROM unnest(%s::bigint[], %s::bigint[], {arrays}) "
            f"AS v(id, token, {aliases}) "
            f"WHERE m.{col(m_meta, 'id')} = v.id "
            f"AND m.{col(m_meta, 'claim_token')} = v.token "
            f"RETURNING m.{col(m_meta, 'id')} AS id)"
        )
        # Recipients still pending or deferred, of the messages written.
        ctes.append(
            f"rcpt AS (UPDATE {quote(r_meta.db_table)} AS r SET "
            f"{col(r_meta, 'status')} = v.status, "
            f"{col(r_meta, 'smtp_code')} = v.code, "
            f"{col(r_meta, 'smtp_reply')} = v.reply, "
            f"{col(r_meta, 'updated_at')} = v.updated_at "
            "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::integer[], "
            "%s::text[], %s::timestamptz[]) "
            "AS v(message_id, address, status, code, reply, updated_at) "
            "JOIN msg ON msg.id = v.message_id "
            f"WHERE r.{col(r_meta, 'message')} = v.message_id "
            f"AND r.{col(r_meta, 'address')} = v.address "
            f"AND r.{col(r_meta, 'status')} IN "
            f"('{RecipientStatus.PENDING}', '{RecipientStatus.DEFERRED}'))"
        )
        attempt_columns = ", ".join(
            quote(column(a_meta, name)) for name in _ATTEMPT_FIELDS
        )
        ctes.append(
            f"att AS (INSERT INTO {quote(a_meta.db_table)} ({attempt_columns}) "
            "SELECT v.message_id, v.number, v.started_at, v.finished_at, v.worker, "
            "v.outcome, v.smtp_code, v.smtp_reply, v.error, v.recipients "
            "FROM unnest(%s::bigint[], %s::integer[], %s::timestamptz[], "
            "%s::timestamptz[], %s::text[], %s::text[], %s::integer[], %s::text[], "
            "%s::text[], %s::jsonb[]) AS v(message_id, number, started_at, "
            "finished_at, worker, outcome, smtp_code, smtp_reply, error, "
            "recipients) "
            "JOIN msg ON msg.id = v.message_id)"
        )
        selects.append("SELECT 'w', id, NULL::integer, NULL::bytea FROM msg")
    if then_load:
        # The next group's bytes: a read, each row fenced on its own token.
        # (Its attempts are counted with their outcomes; its leases stand
        # as the claim set them.) The statement's snapshot is taken before
        # the writes above, which touch other messages.
        mime = f"m.{col(m_meta, 'mime')}"
        selects.append(
            f"SELECT 'r', m.{col(m_meta, 'id')}, octet_length({mime}), "
            f"CASE WHEN octet_length({mime}) <= %s THEN {mime} END "
            f"FROM {message_table} AS m "
            "JOIN unnest(%s::bigint[], %s::bigint[]) AS v(id, token) "
            f"ON m.{col(m_meta, 'id')} = v.id "
            f"AND m.{col(m_meta, 'claim_token')} = v.token"
        )
    with_ = f"WITH {', '.join(ctes)} " if ctes else ""
    return with_ + " UNION ALL ".join(selects)
