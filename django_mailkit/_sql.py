"""
The outbox's hand-written SQL: the per-message writes of a worker.

``begin_attempt_returning()`` counts the attempt and loads the bytes in one
fenced UPDATE ... RETURNING (PostgreSQL, SQLite 3.35+).

``record_attempt_postgresql()`` is the one-statement form of
``OutboxMessage.record_attempt()``. It runs once per delivered message, so
on PostgreSQL the message, its recipients and its Attempt row go in one
statement (data-modifying CTEs), one round trip, through Django's cursor
(query logging and ``connection.execute_wrapper()`` see it). The message
UPDATE is the fence: the recipients' UPDATE and the Attempt INSERT read its
RETURNING rows, so if the claim token no longer matches, nothing at all is
written. It can also begin the next message's attempt: one round trip per
message in all.
"""

from __future__ import annotations

import functools
import io
import json
from typing import TYPE_CHECKING, Any

from django.db import connections
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


#: Messages up to this size come back with begin_attempt's UPDATE; larger
#: ones are read in pieces of this size, so that the database driver never
#: holds a large message twice over (PostgreSQL sends bytea as hex text).
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


def record_attempt_postgresql(
    record: OutboxMessage,
    attempt: AttemptRecord,
    fields: dict[str, Any],
    db: str,
    *,
    then_begin: tuple[OutboxMessage, datetime, datetime] | None = None,
) -> tuple[bool, tuple[int, bytes] | None]:
    """
    Write the attempt in one statement; False (nothing written) if fenced out.

    With ``then_begin`` (a message, now, its lease's end), the same statement
    also does that message's ``begin_attempt()`` UPDATE, and its result (or
    None if fenced out) comes second.
    """
    rows = attempt.recipients
    states = set(rows.values())
    # Usually every recipient has the same result: a plain UPDATE does.
    shape = "uniform" if len(states) == 1 else "mixed" if rows else "none"
    sql = _statement(db, shape, tuple(fields), then_begin is not None)
    params: list[Any] = list(fields.values())
    params += [record.pk, record.claim_token]
    if shape == "uniform":
        ((status, code, reply),) = states
        params += [status, code, reply, attempt.finished_at, list(rows)]
    elif shape == "mixed":
        addresses = list(rows)
        params += [
            attempt.finished_at,
            addresses,
            [rows[a][0] for a in addresses],
            [rows[a][1] for a in addresses],
            [rows[a][2] for a in addresses],
        ]
    values = attempt.attempt_fields(record.attempts)
    params += [values[name] for name in _ATTEMPT_FIELDS[1:-1]]
    params.append(json.dumps(values["recipients"]))
    if then_begin is not None:
        following, now, expires = then_begin
        params += [expires, now, following.pk, following.claim_token, INLINE_BYTES]
    with connections[db].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        begun: tuple[int, bytes] | None = None
        if then_begin is not None and row[1] is not None:
            _written, attempts, size, mime = row
            if mime is None:
                mime = _read_in_pieces(cursor, then_begin[0], size or 0)
            begun = (attempts, bytes(mime))
    return bool(row[0]), begun


@functools.cache
def _statement(
    db: str, shape: str, field_names: tuple[str, ...], then_begin: bool
) -> str:
    from .models import Attempt, OutboxMessage, Recipient, RecipientStatus

    quote = connections[db].ops.quote_name
    r_meta, a_meta, m_meta = Recipient._meta, Attempt._meta, OutboxMessage._meta

    def col(meta: Options[Any], name: str) -> str:
        return quote(column(meta, name))

    assignments = ", ".join(f"{col(m_meta, name)} = %s" for name in field_names)
    # By primary key and token only: the plan never depends on how many
    # messages are in flight (see OutboxMessage._fenced()).
    ctes = [
        f"msg AS (UPDATE {quote(m_meta.db_table)} SET {assignments} "
        f"WHERE {col(m_meta, 'id')} = %s AND {col(m_meta, 'claim_token')} = %s "
        f"RETURNING {col(m_meta, 'id')} AS id)"
    ]
    still_pending = (
        f"r.{col(r_meta, 'status')} IN "
        f"('{RecipientStatus.PENDING}', '{RecipientStatus.DEFERRED}')"
    )
    if shape == "uniform":
        ctes.append(
            f"rcpt AS (UPDATE {quote(r_meta.db_table)} AS r SET "
            f"{col(r_meta, 'status')} = %s, {col(r_meta, 'smtp_code')} = %s, "
            f"{col(r_meta, 'smtp_reply')} = %s, {col(r_meta, 'updated_at')} = %s "
            f"FROM msg WHERE r.{col(r_meta, 'message')} = msg.id "
            f"AND r.{col(r_meta, 'address')} = ANY(%s::text[]) AND {still_pending})"
        )
    elif shape == "mixed":
        ctes.append(
            f"rcpt AS (UPDATE {quote(r_meta.db_table)} AS r SET "
            f"{col(r_meta, 'status')} = v.status, {col(r_meta, 'smtp_code')} = v.code, "
            f"{col(r_meta, 'smtp_reply')} = v.reply, {col(r_meta, 'updated_at')} = %s "
            "FROM msg, unnest(%s::text[], %s::text[], %s::int[], %s::text[]) "
            "AS v(address, status, code, reply) "
            f"WHERE r.{col(r_meta, 'message')} = msg.id "
            f"AND r.{col(r_meta, 'address')} = v.address "
            f"AND {still_pending})"
        )
    attempt_columns = ", ".join(quote(column(a_meta, name)) for name in _ATTEMPT_FIELDS)
    ctes.append(
        f"att AS (INSERT INTO {quote(a_meta.db_table)} ({attempt_columns}) "
        "SELECT msg.id, %s::integer, %s::timestamptz, %s::timestamptz, %s::text, "
        "%s::text, %s::integer, %s::text, %s::text, %s::jsonb FROM msg)"
    )
    if not then_begin:
        return f"WITH {', '.join(ctes)} SELECT count(*) FROM msg"
    # The next message's begin_attempt(), fenced on its own token.
    ctes.append(
        f"nxt AS (UPDATE {quote(m_meta.db_table)} SET "
        f"{col(m_meta, 'attempts')} = {col(m_meta, 'attempts')} + 1, "
        f"{col(m_meta, 'lease_expires_at')} = %s, {col(m_meta, 'updated_at')} = %s "
        f"WHERE {col(m_meta, 'id')} = %s AND {col(m_meta, 'claim_token')} = %s "
        f"RETURNING {col(m_meta, 'attempts')} AS attempts, "
        f"octet_length({col(m_meta, 'mime')}) AS size, "
        f"CASE WHEN octet_length({col(m_meta, 'mime')}) <= %s "
        f"THEN {col(m_meta, 'mime')} END AS mime)"
    )
    return (
        f"WITH {', '.join(ctes)} SELECT (SELECT count(*) FROM msg), "
        "nxt.attempts, nxt.size, nxt.mime FROM (SELECT 1) AS one "
        "LEFT JOIN nxt ON true"
    )
