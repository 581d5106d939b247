"""
The outbox's hand-written SQL: the per-message writes of a worker, and
its batch's lookups.

``begin_attempt_returning()`` counts the attempt of a message sent alone
and loads its bytes in one fenced UPDATE ... RETURNING (PostgreSQL, SQLite
3.35+).

``record_attempts_postgresql()`` is the one-statement form of
``OutboxMessageQuerySet.record_attempts()``: the outcomes of a group of
messages (each message's row with its attempt count, its recipients and
its Attempt row) and the read of the next group's bytes, in one statement
(data-modifying CTEs, and a plain SELECT), one round trip, through Django's
cursor (query logging and ``connection.execute_wrapper()`` see it). The
values go as three JSON parameters (messages, recipients, attempts),
unpacked by ``json_to_recordset()``: encoded in C, and parsed by the server
more cheaply than an array per column. Every row is fenced on its own
message's claim token: the message UPDATE is the fence, and the
recipients' UPDATE and the Attempt INSERT join its RETURNING rows, so for
a message whose claim token no longer matches nothing at all is written,
while the rest of the group is; the read returns only the messages whose
token matches.

That statement is also installed as a PL/pgSQL function by every
``migrate`` (``install_record_function()``, on ``post_migrate``), named after
a hash of its text, and workers call the function when the database has it.
PL/pgSQL keeps a statement's plan for the session, so the server no longer
parses and plans the whole statement for every group (about a fifth of its
cost): the benefit of a prepared statement, without one, so it works behind
a transaction-pooling pgbouncer too. Until ``migrate`` has installed the
function for this version of the code, the statement goes as it is.

``record_functions()`` and ``drop_record_functions()`` list the functions
of every version in the database, and drop other versions' (``manage.py
mailkit_outbox functions``).

``claim_returning()`` is the claim's conditional UPDATE on PostgreSQL,
returning the claimed rows (no read-back).

``one_of()`` is a batch's lookup of many values (its recipients, their
suppressions) as one JSON parameter, read by index on PostgreSQL.
"""

from __future__ import annotations

import datetime
import enum
import functools
import hashlib
import io
import itertools
import json
import operator
import sys
import time
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, models, router, transaction
from django.db.backends.signals import connection_created
from django.db.models import DEFERRED, Field
from django.db.models.expressions import RawSQL
from django.db.models.lookups import Lookup

if TYPE_CHECKING:
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
    record: OutboxMessage,
    db: str,
    *,
    now: datetime.datetime,
    expires: datetime.datetime,
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
    written: set[int] = set()
    loaded: dict[int, bytes] = {}
    if not changes and not then_load:
        return written, loaded  # (the statement would be empty)
    connection = connections[db]
    function = _record_function(db)
    by_pk = {message.pk: message for message in then_load}
    with connection.cursor() as cursor:
        try:
            cursor.execute(*_group_statement(db, changes, then_load, function))
        except DatabaseError as error:
            if function is None or _sqlstate(error) not in (
                _UNDEFINED_FUNCTION,
                _INSUFFICIENT_PRIVILEGE,
            ):
                raise
            # Dropped by hand, or this role may not run it (or not update
            # every column it names, when its privileges are per column):
            # the statement itself, until asked again (_record_function).
            _refuse(db)
            # Outside a transaction nothing was written and nothing is left
            # aborted, so it goes now.
            if connection.in_atomic_block or not connection.get_autocommit():
                raise
            cursor.execute(*_group_statement(db, changes, then_load, None))
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


def _group_statement(
    db: str,
    changes: list[tuple[OutboxMessage, AttemptRecord, dict[str, Any]]],
    then_load: list[OutboxMessage],
    function: str | None,
) -> tuple[str, list[Any]]:
    """
    The SQL and parameters of ``record_attempts_postgresql()``: a call of
    ``function``, or (None) the statement itself.
    """
    if function is not None:
        # Every part, empty or not: the function takes all five values.
        names = _function_fields(db)
        sql = f"SELECT * FROM {function}(%s::json, %s::json, %s::json, %s, %s::json)"
        record, load = True, True
    else:
        names = tuple(sorted({name for _r, _a, fields in changes for name in fields}))
        record, load = bool(changes), bool(then_load)
        sql = _statement(db, names, record, load)
    params: list[Any] = []
    if record:
        params += _record_params(changes, names, connections[db])
    if load:
        params += [
            INLINE_BYTES,
            _json(
                [
                    {"id": message.pk, "token": message.claim_token}
                    for message in then_load
                ]
            ),
        ]
    return sql, params


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} can't be written as JSON")


def _json(rows: list[dict[str, Any]]) -> str:
    """
    ``rows`` as one JSON text, for ``json_to_recordset()``: a whole table of
    values in one parameter, encoded in C. (An array parameter per column
    is quoted element by element in Python, and parsed again by the server
    as an array literal.) Texts go as they are, not escaped; none holds a
    NUL, which a text column refuses (``decode_reply()`` replaces it).
    """
    return json.dumps(
        rows, default=_json_default, ensure_ascii=False, separators=(",", ":")
    )


@functools.cache
def _columns(names: tuple[str, ...]) -> dict[str, tuple[str, str, Field[Any, Any]]]:
    """
    {name: (its "set" key, its value's key, the field)} for ``names``, the
    statement's columns (``s0``, ``v0`` for the first).
    """
    from .models import OutboxMessage

    columns = {}
    for i, name in enumerate(names):
        model_field = OutboxMessage._meta.get_field(name)
        assert isinstance(model_field, Field)
        columns[name] = (f"s{i}", f"v{i}", model_field)
    return columns


def _db_value(model_field: Field[Any, Any], value: Any, connection: Any) -> Any:
    """
    ``value`` as ``model_field`` writes it to PostgreSQL, for JSON. The
    values of a state change are plain ints and texts, None, and aware
    datetimes, which the field would write as they are (a choice as its
    value, a datetime in ISO format, as ``_json`` writes them): those skip
    its preparation,
    a few microseconds each. Anything else (an enum, a naive datetime, a
    lazy text) is prepared by the field.
    """
    kind = type(value)
    if value is None or kind is int or kind is str:
        return value
    if isinstance(value, enum.Enum) and type(value.value) in (int, str):
        return value.value  # a Status
    if kind is datetime.datetime and value.utcoffset() is not None:
        return value.isoformat()
    return model_field.get_db_prep_value(value, connection)


def _record_params(
    changes: list[tuple[OutboxMessage, AttemptRecord, dict[str, Any]]],
    names: tuple[str, ...],
    connection: Any,
) -> list[str]:
    """
    A group's record as three JSON tables: each message's new values (and,
    for each column of ``names`` it sets, that it sets it), the recipients'
    new states, and the Attempt rows.
    """
    columns = _columns(names)
    messages = []
    recipients = []
    attempts = []
    for record, attempt, fields in changes:
        row: dict[str, Any] = {"id": record.pk, "token": record.claim_token}
        # A column the message doesn't set has no key: NULL, so it keeps
        # its value.
        for name, value in fields.items():
            try:
                is_set, to, model_field = columns[name]
            except KeyError:
                raise ValueError(
                    f"Not a column of the record statement: {name!r}"
                ) from None
            row[is_set] = True
            row[to] = _db_value(model_field, value, connection)
        messages.append(row)
        finished = attempt.finished_at.isoformat()
        for address, (status, code, reply) in attempt.recipients.items():
            recipients.append(
                {
                    "m": record.pk,
                    "a": address,
                    "s": str(status),
                    "c": code,
                    "r": reply,
                    "u": finished,
                }
            )
        values = attempt.attempt_fields(record.attempts)
        values["started_at"] = attempt.started_at.isoformat()
        values["finished_at"] = finished
        values["outcome"] = str(values["outcome"])
        values["message_id"] = record.pk
        attempts.append(values)
    return [_json(messages), _json(recipients), _json(attempts)]


@functools.cache
def _statement(
    db: str,
    field_names: tuple[str, ...],
    record: bool,
    then_load: bool,
    *,
    numbered: bool = False,
) -> str:
    """
    The statement of ``record_attempts_postgresql()``: with ``%s``
    placeholders, or ``$1``, ``$2``... (``numbered``, a function's body).
    """
    from .models import Attempt, OutboxMessage, Recipient, RecipientStatus

    numbers = itertools.count(1)

    def arg() -> str:
        return f"${next(numbers)}" if numbered else "%s"

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

    def by_keys(key: str, rows: str) -> str:
        # The rows' keys, as an array the planner can't see the length of:
        # the message table is read by its primary key whatever the
        # statistics say. (Joined on the JSON alone, a group was hashed
        # over a scan of the whole table wherever the planner thought the
        # table small: up to about a thousand messages.)
        return f"{key} = ANY (ARRAY(SELECT id FROM {rows}))"

    message_key = f"m.{col(m_meta, 'id')}"
    ctes = []
    selects = []
    if record:
        # Each message's row, by primary key and claim token only (and read
        # by the key, by_keys()): the plan never depends on how many
        # messages are in flight, and a message whose lease was lost
        # matches nothing. A column a message doesn't set keeps its value.
        assignments = ", ".join(
            f"{col(m_meta, name)} = CASE WHEN v.s{i} THEN v.v{i} "
            f"ELSE m.{col(m_meta, name)} END"
            for i, name in enumerate(field_names)
        )
        columns = "".join(
            f", s{i} boolean, v{i} {db_type(m_meta, name)}"
            for i, name in enumerate(field_names)
        )
        ctes.append(
            f"mv AS MATERIALIZED (SELECT * FROM json_to_recordset({arg()}::json) "
            f"AS v(id bigint, token bigint{columns}))"
        )
        ctes.append(
            f"msg AS (UPDATE {message_table} AS m SET {assignments} FROM mv AS v "
            f"WHERE m.{col(m_meta, 'id')} = v.id "
            f"AND m.{col(m_meta, 'claim_token')} = v.token "
            f"AND {by_keys(message_key, 'mv')} "
            f"RETURNING m.{col(m_meta, 'id')} AS id)"
        )
        # Recipients still pending or deferred, of the messages written.
        ctes.append(
            f"rcpt AS (UPDATE {quote(r_meta.db_table)} AS r SET "
            f"{col(r_meta, 'status')} = v.s, "
            f"{col(r_meta, 'smtp_code')} = v.c, "
            f"{col(r_meta, 'smtp_reply')} = v.r, "
            f"{col(r_meta, 'updated_at')} = v.u "
            f"FROM json_to_recordset({arg()}::json) AS v(m bigint, a text, s text, "
            "c integer, r text, u timestamptz) "
            "JOIN msg ON msg.id = v.m "
            f"WHERE r.{col(r_meta, 'message')} = v.m "
            f"AND r.{col(r_meta, 'address')} = v.a "
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
            f"FROM json_to_recordset({arg()}::json) AS v(message_id bigint, "
            "number integer, started_at timestamptz, finished_at timestamptz, "
            "worker text, outcome text, smtp_code integer, smtp_reply text, "
            "error text, recipients jsonb) "
            "JOIN msg ON msg.id = v.message_id)"
        )
        selects.append("SELECT 'w', id, NULL::integer, NULL::bytea FROM msg")
    if then_load:
        # The next group's bytes: a read, each row fenced on its own token.
        # (Its attempts are counted with their outcomes; its leases stand
        # as the claim set them.) The statement's snapshot is taken before
        # the writes above, which touch other messages.
        mime = f"m.{col(m_meta, 'mime')}"
        ctes.append(
            f"lv AS MATERIALIZED (SELECT v.*, {arg()}::integer AS inline "
            f"FROM json_to_recordset({arg()}::json) AS v(id bigint, token bigint))"
        )
        selects.append(
            f"SELECT 'r', m.{col(m_meta, 'id')}, octet_length({mime}), "
            f"CASE WHEN octet_length({mime}) <= v.inline THEN {mime} END "
            f"FROM {message_table} AS m JOIN lv AS v "
            f"ON m.{col(m_meta, 'id')} = v.id "
            f"AND m.{col(m_meta, 'claim_token')} = v.token "
            f"WHERE {by_keys(message_key, 'lv')}"
        )
    with_ = f"WITH {', '.join(ctes)} " if ctes else ""
    return with_ + " UNION ALL ".join(selects)


# The statement as a function (module docstring).


@functools.cache
def _function_fields(db: str) -> tuple[str, ...]:
    """
    The message columns the function can set: every one but the primary
    key, the bytes and any the database computes (a ``GeneratedField``,
    which an UPDATE may not set), so that a new state change needs no new
    function.
    """
    from .models import OutboxMessage

    return tuple(
        sorted(
            f.name
            for f in OutboxMessage._meta.concrete_fields
            if not f.primary_key
            and f.name != "mime"
            and not getattr(f, "generated", False)
        )
    )


@functools.cache
def record_function(db: str) -> tuple[str, str]:
    """
    The name and the ``CREATE FUNCTION`` of the record statement's function
    on ``db``. The name holds a hash of the definition: a version of the
    code whose statement differs calls a function of its own.
    """
    name, _source, create = _record_function_parts(db)
    return name, create


@functools.cache
def _record_function_parts(db: str) -> tuple[str, str, str]:
    """The function's name, its source (``prosrc``), its ``CREATE``."""
    body = _statement(db, _function_fields(db), True, True, numbered=True)
    source = f" BEGIN RETURN QUERY {body}; END "
    definition = (
        f"({_ARGUMENTS}) "
        "RETURNS TABLE (o_kind text, o_id bigint, o_size integer, o_mime bytea) "
        "LANGUAGE plpgsql VOLATILE "
        f"AS $mailkit${source}$mailkit$"
    )
    digest = hashlib.sha256(definition.encode()).hexdigest()[:_DIGITS]
    name = f"{_PREFIX}{digest}"
    return name, source, f"CREATE OR REPLACE FUNCTION {name}{definition}"


_ARGUMENTS = "json, json, json, integer, json"
#: A version's function is named _PREFIX and _DIGITS hex digits of a hash.
_PREFIX = "mailkit_record_"
_DIGITS = 16

# SQLSTATEs of a call of a function that is gone, or may not be run.
_UNDEFINED_FUNCTION = "42883"
_INSUFFICIENT_PRIVILEGE = "42501"


def _sqlstate(error: DatabaseError) -> str | None:
    cause = error.__cause__
    # psycopg 3, psycopg2
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return str(code) if code else None


#: {alias: the function's name, or None}: whether each database has this
#: version's function, and may run it; asked once per connection, and
#: while the answer is no, again every ASK_AGAIN seconds (a worker started
#: before the deploy's migrate, or kept across it, finds the function).
_available: dict[str, str | None] = {}
#: {alias: when the answer was no (time.monotonic())}
_refused_at: dict[str, float] = {}
ASK_AGAIN = 60.0


def _forget(sender: Any, connection: Any, **kwargs: Any) -> None:
    _available.pop(connection.alias, None)


connection_created.connect(_forget)


def _record_function(db: str) -> str | None:
    """The record function's name, if ``db`` has it and this user may run it."""
    # Read once: another thread's new connection may forget it meanwhile
    # (connection_created).
    found = _available.get(db, "")
    if found == "" or (
        found is None
        and time.monotonic() - _refused_at.get(db, float("inf")) >= ASK_AGAIN
    ):
        name, _definition = record_function(db)
        with connections[db].cursor() as cursor:
            cursor.execute(
                "SELECT CASE WHEN to_regprocedure(%s) IS NOT NULL "
                "THEN has_function_privilege(to_regprocedure(%s), 'EXECUTE') END",
                [f"{name}({_ARGUMENTS})"] * 2,
            )
            (runs,) = cursor.fetchone()
        if not runs:
            _refuse(db)
            return None
        found = _available[db] = name
    return found


def _refuse(db: str) -> None:
    """Send the statement itself on ``db`` until asked again (ASK_AGAIN)."""
    _available[db] = None
    _refused_at[db] = time.monotonic()


def install_record_function(using: str, **kwargs: Any) -> None:
    """
    Create the record function on ``using``, a PostgreSQL database holding
    the outbox's tables, unless it has it: a ``post_migrate`` receiver.
    Functions of earlier versions stay: their workers may still be running.
    """
    from .models import OutboxMessage

    connection = connections[using]
    if connection.vendor != "postgresql" or not router.allow_migrate_model(
        using, OutboxMessage
    ):
        return
    if OutboxMessage._meta.db_table not in connection.introspection.table_names():
        return  # migrated back to zero
    name, source, create = _record_function_parts(using)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        # One migrate at a time: two creating it at once, one would fail
        # (a duplicate key, or "tuple concurrently updated"). And nothing
        # to do when it is there (its name is its definition's hash): no
        # need to own it, and the sessions running it keep their plans.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_INSTALL_LOCK])
        cursor.execute(
            "SELECT prosrc = %s FROM pg_proc WHERE oid = to_regprocedure(%s)",
            [source, f"{name}({_ARGUMENTS})"],
        )
        row = cursor.fetchone()
        if row is None or not row[0]:
            try:
                with transaction.atomic(using=using):
                    cursor.execute(create)
            except DatabaseError as error:
                if _sqlstate(error) != _INSUFFICIENT_PRIVILEGE:
                    raise
                # Not worth failing migrate for (a role that may migrate
                # nothing new, at a container's start): workers send the
                # statement itself.
                if kwargs.get("verbosity", 1) >= 1:
                    stdout = kwargs.get("stdout") or sys.stdout
                    reason = str(error).splitlines()[0]
                    stdout.write(
                        f"django_mailkit: the outbox's record function "
                        f"{name} was not installed on {using!r} ({reason}); "
                        f"workers send the statement itself. Run migrate as "
                        f"a role that may create functions to install it.\n"
                    )
    _available.pop(using, None)


def record_functions(db: str) -> tuple[list[str], str | None]:
    """
    The record functions of every version in the schema ``migrate`` installs
    them into (``current_schema()``, the first of the search path), each
    one's signature (schema-qualified, quoted as needed); and this
    version's, wherever on the search path the workers find it (None: they
    don't). Only functions named and typed as a version's are listed;
    other schemas' (another deployment's) never are.
    """
    name, _definition = record_function(db)
    signature = "format('%%I.%%I(%%s)', n.nspname, p.proname, %s)"
    with connections[db].cursor() as cursor:
        cursor.execute(
            f"SELECT {signature} FROM pg_proc AS p "
            "JOIN pg_namespace AS n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() AND p.prokind = 'f' "
            "AND p.proname ~ %s "
            "AND pg_get_function_identity_arguments(p.oid) = %s ORDER BY p.proname",
            [_ARGUMENTS, f"^{_PREFIX}[0-9a-f]{{{_DIGITS}}}$", _ARGUMENTS],
        )
        found = [row[0] for row in cursor.fetchall()]
        # As the workers look it up (_record_function()).
        cursor.execute(
            f"SELECT {signature} FROM pg_proc AS p "
            "JOIN pg_namespace AS n ON n.oid = p.pronamespace "
            "WHERE p.oid = to_regprocedure(%s)",
            [_ARGUMENTS, f"{name}({_ARGUMENTS})"],
        )
        row = cursor.fetchone()
    return found, row[0] if row else None


def drop_record_functions(db: str) -> list[str]:
    """
    Drop the record functions of other versions (``record_functions()``),
    unless the workers of this version find none (then a copy of this
    command from a version whose ``migrate`` never ran would drop the one
    in use); return their signatures. Workers of those versions still
    running send the statement itself from then on.
    """
    connection = connections[db]
    dropped = []
    # A transaction of its own (not one its caller began and used already).
    own = connection.get_autocommit()
    with transaction.atomic(using=db), connection.cursor() as cursor:
        if own:
            # The transaction's first statement, so that the listing below
            # sees what a drop that held the lock before this one committed.
            cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        # Not while a migrate installs one, nor another drop runs.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_INSTALL_LOCK])
        found, current = record_functions(db)
        if current is None:
            return []
        for signature in found:
            if signature != current:
                cursor.execute(f"DROP FUNCTION IF EXISTS {signature}")
                dropped.append(signature)
    return dropped


#: The advisory lock install_record_function() takes (a 64-bit key).
_INSTALL_LOCK = int.from_bytes(
    hashlib.sha256(b"django_mailkit.install_record_function").digest()[:8],
    "big",
    signed=True,
)


def claim_returning(
    ids: list[int],
    db: str,
    *,
    worker: str,
    now: datetime.datetime,
    expires: datetime.datetime,
) -> list[OutboxMessage]:
    """
    The claim's UPDATE of the locked candidates ``ids``, conditional on
    their status, returning the rows it claimed (``CLAIMED_FIELDS``) in
    ``CLAIM_ORDER`` (PostgreSQL): one statement instead of an UPDATE and a
    read-back.
    """
    from .models import CLAIM_ORDER, CLAIMED_FIELDS, OutboxMessage, Status

    connection = connections[db]
    quote = connection.ops.quote_name
    meta = OutboxMessage._meta
    # from_db() takes the values in the model's field order.
    fields = [f for f in meta.concrete_fields if f.name in CLAIMED_FIELDS]
    names = [quote(column(meta, f.name)) for f in fields]
    # What the claim order needs that the claim doesn't load.
    extra = [
        quote(column(meta, name.lstrip("-")))
        for name in CLAIM_ORDER
        if name.lstrip("-") not in CLAIMED_FIELDS
    ]
    order = ", ".join(
        quote(column(meta, name.lstrip("-")))
        + (" DESC" if name.startswith("-") else "")
        for name in CLAIM_ORDER
    )

    def col(name: str) -> str:
        return quote(column(meta, name))

    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH claimed AS (UPDATE {quote(meta.db_table)} "
            f"SET {col('status')} = %s, "
            f"{col('claimed_by')} = %s, {col('lease_expires_at')} = %s, "
            f"{col('claim_token')} = {col('claim_token')} + 1, "
            f"{col('updated_at')} = %s "
            f"WHERE {col('id')} = ANY(%s::bigint[]) AND {col('status')} = %s "
            f"RETURNING {', '.join(names + extra)}) "
            f"SELECT {', '.join(names)} FROM claimed ORDER BY {order}",
            [
                str(Status.SENDING),
                worker,
                connection.ops.adapt_datetimefield_value(expires),
                connection.ops.adapt_datetimefield_value(now),
                # One array literal (the ids are integers): not a Python
                # loop over the elements in the driver.
                "{" + ",".join(str(int(pk)) for pk in ids) + "}",
                str(Status.QUEUED),
            ],
        )
        rows = cursor.fetchall()
    # Each row as from_db() takes a complete one, DEFERRED for each field
    # the claim doesn't load (after the row's values, at len(row)): given a
    # shorter row, Django looks each of the model's fields up in the list
    # of loaded names, a tenth of a worker's CPU per message.
    complete = operator.itemgetter(
        *(fields.index(f) if f in fields else len(fields) for f in meta.concrete_fields)
    )
    attnames = [f.attname for f in meta.concrete_fields]
    return [
        OutboxMessage.from_db(db, attnames, complete((*row, DEFERRED))) for row in rows
    ]


def one_of(field: str, values: list[Any], db: str, *, integers: bool = False) -> Any:
    """
    A ``filter()`` condition: ``field`` is one of ``values`` (a batch's
    message ids, its recipients' addresses). On PostgreSQL and SQLite the
    values go as one JSON parameter unpacked by the database, instead of a
    placeholder per value that Django compiles and the driver quotes one at
    a time. On PostgreSQL the condition is ``= ANY`` over that array, whose
    length the planner can't see: the table is read by its index whatever
    the statistics say (``IN`` a subquery hashed the batch over a scan of
    the whole table, until the table held about 16,000 rows).
    """
    connection = connections[db]
    if connection.vendor == "postgresql":
        cast = "::bigint" if integers else ""
        return _AnyOf(
            models.F(field),
            RawSQL(
                f"SELECT json_array_elements_text(%s::json){cast}",
                [json.dumps(values)],
            ),
        )
    if connection.vendor == "sqlite" and connection.features.supports_json_field:
        unpacked = RawSQL("SELECT value FROM json_each(%s)", [json.dumps(values)])
        return models.Q(**{f"{field}__in": unpacked})
    return models.Q(**{f"{field}__in": values})


if TYPE_CHECKING:
    # Generic in django-stubs only: not subscriptable at run time.
    _LookupBase = Lookup[Any]
else:
    _LookupBase = Lookup


class _AnyOf(_LookupBase):
    """``lhs = ANY (ARRAY(rhs))``, ``rhs`` a subquery (``one_of()``)."""

    lookup_name = "mailkit_any_of"  # never registered: used as it is

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} = ANY (ARRAY{rhs})", (*lhs_params, *rhs_params)
