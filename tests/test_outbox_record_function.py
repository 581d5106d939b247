"""
The group record statement as a PostgreSQL function (``_sql``): it writes
and reads exactly what the statement itself does, a worker copes with it
going away, and ``migrate`` installs it safely while others run.
"""

import contextlib
import threading
import time
from datetime import timedelta

import pytest
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_mailkit import _sql
from django_mailkit.models import (
    Attempt,
    AttemptRecord,
    OutboxMessage,
    Recipient,
    RecipientStatus,
    Status,
)
from tests.test_outbox_drain_path import (  # noqa: F401 (outbox: a fixture)
    STATEMENT,
    attempt_for,
    claimed_group,
    outbox,
    seq_scans,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("outbox"),
]


@pytest.fixture
def postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL function (MAILKIT_DB=postgresql)")
    _sql._available.clear()
    yield _sql.record_function("default")[0]
    # Whatever a test did to it, the function is there again for the next.
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")
        cursor.execute(f"DROP FUNCTION IF EXISTS {signature()}")
    _sql.install_record_function("default")
    _sql._available.clear()


def signature():
    return f"{_sql.record_function('default')[0]}({_sql._ARGUMENTS})"


def function_calls(queries):
    return [q for q in queries if q["sql"].startswith("SELECT * FROM mailkit_record_")]


def state():
    """Every row the record statement may write (Attempt ids aside)."""
    return (
        list(OutboxMessage.objects.order_by("pk").values()),
        list(Recipient.objects.order_by("pk").values()),
        [
            {name: value for name, value in row.items() if name != "id"}
            for row in Attempt.objects.order_by("message_id", "number").values()
        ],
    )


def both_ways(call, *, statement_sent=True):
    """
    ``call()`` through the function, then through the statement itself,
    each from the same rows (rolled back): both results and both states.
    """
    results = {}
    for way in ("function", "statement"):
        with transaction.atomic():
            _sql._available.clear()
            if way == "statement":
                _sql._available["default"] = None  # as if not installed
            with CaptureQueriesContext(connection) as queries:
                result = call()
            # The way meant is the way taken.
            assert len(function_calls(queries)) == (
                way == "function" and statement_sent
            )
            results[way] = (result, state())
            transaction.set_rollback(True)
    _sql._available.clear()
    return results["function"], results["statement"]


def retry(record, address):
    now = timezone.now()
    reply = "451 4.3.0 try later"
    return AttemptRecord(
        outcome=Attempt.Outcome.RETRY,
        worker="w",
        started_at=now,
        finished_at=now,
        error=f"{address}: {reply}",
        smtp_code=451,
        smtp_reply=reply,
        replies={address: (451, reply)},
        recipients={address: (RecipientStatus.DEFERRED, 451, reply)},
    )


@pytest.mark.parametrize(
    "record, load",
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["record and load", "record only", "load only", "neither"],
)
def test_the_function_does_exactly_what_the_statement_does(
    postgresql, monkeypatch, record, load
):
    sent, stale, retried, other, large = claimed_group(5)
    # Another worker took one over; one was sent before (its sent_at is
    # set to NULL on purpose below); one is read in pieces.
    OutboxMessage.objects.filter(pk=stale.pk).update(claim_token=F("claim_token") + 1)
    OutboxMessage.objects.filter(pk=retried.pk).update(sent_at=timezone.now())
    big = b"x" * 2500
    OutboxMessage.objects.filter(pk=large.pk).update(mime=big)
    monkeypatch.setattr(_sql, "INLINE_BYTES", 1000)
    now = timezone.now()
    finished = {
        "status": Status.SENT,
        "lease_expires_at": None,
        "sent_at": now,
        "last_error": "",
        "attempts": 1,
        "updated_at": now,
    }
    changes = [
        (sent, attempt_for(sent, "u0@example.com", "250 ok"), finished),
        (stale, attempt_for(stale, "u1@example.com", "250 ok"), finished),
        (
            retried,
            retry(retried, "u2@example.com"),
            {
                "status": Status.QUEUED,
                "claimed_by": "",
                "lease_expires_at": None,
                "sent_at": None,
                "next_attempt_at": now + timedelta(minutes=1),
                "last_error": "u2@example.com: 451 4.3.0 try later",
                "attempts": 1,
                "updated_at": now,
            },
        ),
    ]
    # The retried one is in both lists; the stale one is not read.
    then_load = [retried, other, stale, large]

    def call():
        return _sql.record_attempts_postgresql(
            changes if record else [], "default", then_load=then_load if load else []
        )

    function, statement = both_ways(call, statement_sent=record or load)
    assert function == statement
    (written, loaded), (messages, recipients, attempts) = function
    assert written == ({sent.pk, retried.pk} if record else set())
    if load:
        assert set(loaded) == {retried.pk, other.pk, large.pk}
        assert loaded[large.pk] == big
        assert loaded[other.pk] == OutboxMessage.objects.get(pk=other.pk).mime
    else:
        assert loaded == {}
    rows = {row["id"]: row for row in messages}
    if record:
        # What is set to NULL is set to NULL; what is not set stays.
        assert rows[sent.pk]["lease_expires_at"] is None
        assert rows[sent.pk]["sent_at"] == now
        assert rows[retried.pk]["sent_at"] is None
        assert rows[retried.pk]["lease_expires_at"] is None
        assert (rows[retried.pk]["status"], rows[retried.pk]["claimed_by"]) == (
            Status.QUEUED,
            "",
        )
        assert rows[retried.pk]["subject"] == retried.subject
        assert rows[stale.pk]["status"] == Status.SENDING
        assert rows[stale.pk]["lease_expires_at"] is not None
        assert sorted(a["message_id"] for a in attempts) == [sent.pk, retried.pk]
        assert {r["message_id"]: r["status"] for r in recipients} == {
            sent.pk: RecipientStatus.SENT,
            stale.pk: RecipientStatus.PENDING,
            retried.pk: RecipientStatus.DEFERRED,
            other.pk: RecipientStatus.PENDING,
            large.pk: RecipientStatus.PENDING,
        }
    else:
        assert {row["status"] for row in messages} == {Status.SENDING}
        assert attempts == []


@pytest.mark.parametrize("way", ["function", "statement"])
def test_the_group_is_read_and_written_by_key_in_a_small_outbox(postgresql, way):
    """
    An outbox of a few hundred rows, freshly analyzed: joined on the JSON
    alone, the planner hashed the group over a scan of the whole message
    table, twice a group, wherever it thought the table small.
    """
    now = timezone.now()
    OutboxMessage.objects.bulk_create(
        OutboxMessage(
            queued_via="default",
            mailer="transport",
            from_email="f@example.com",
            recipients=[f"old{i}@example.com"],
            subject=f"old {i}",
            mime=b"x" * 1000,
            size=1000,
            status=Status.SENT,
            sent_at=now,
        )
        for i in range(600)
    )
    first, second, third = claimed_group(3)
    with connection.cursor() as cursor:
        cursor.execute(
            f"ANALYZE {OutboxMessage._meta.db_table}, {Recipient._meta.db_table}"
        )
    _sql._available.clear()
    if way == "statement":
        _sql._available["default"] = None  # as if not installed
    with transaction.atomic():
        before = seq_scans(OutboxMessage, Recipient)
        with CaptureQueriesContext(connection) as queries:
            written, loaded = OutboxMessage.objects.record_attempts(
                [
                    (record, attempt_for(record, f"u{i}@example.com", "250 ok"))
                    for i, record in enumerate((first, second))
                ],
                then_load=[third],
            )
        assert seq_scans(OutboxMessage, Recipient) == before
    assert len(function_calls(queries)) == (way == "function")
    assert (written, set(loaded)) == ({first.pk, second.pk}, {third.pk})
    assert Recipient.objects.filter(status=RecipientStatus.SENT).count() == 2


def test_a_function_dropped_while_a_worker_runs_is_noticed(postgresql):
    first, second = claimed_group(2)
    assert _sql._record_function("default") == postgresql  # the worker asked
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {signature()}")
    with CaptureQueriesContext(connection) as queries:
        written, _loaded = OutboxMessage.objects.record_attempts(
            [(first, attempt_for(first, "u0@example.com", "250 ok"))]
        )
    assert written == {first.pk}
    assert OutboxMessage.objects.get(pk=first.pk).status == Status.SENT
    assert any(STATEMENT in q["sql"] for q in queries)
    # Asked again: it is not there.
    assert _sql._record_function("default") is None
    written, _loaded = OutboxMessage.objects.record_attempts(
        [(second, attempt_for(second, "u1@example.com", "250 ok"))]
    )
    assert written == {second.pk}


@contextlib.contextmanager
def a_role(suffix):
    """A role of this test's own, and a cursor; all it owns is dropped after."""
    # Quoted: tox's database names hold a "-".
    role = connection.ops.quote_name(f"{connection.settings_dict['NAME']}_{suffix}")
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} NOLOGIN")
        try:
            yield cursor, role
        finally:
            cursor.execute("RESET ROLE")
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


def test_a_role_that_may_not_execute_it_sends_the_statement(postgresql):
    first, second = claimed_group(2)
    with a_role("worker") as (cursor, role):
        cursor.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        cursor.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        cursor.execute(f"SET ROLE {role}")
        # Anyone may execute a new function: this worker asks, and may.
        assert _sql._record_function("default") == postgresql
        cursor.execute("RESET ROLE")
        cursor.execute(f"REVOKE EXECUTE ON FUNCTION {signature()} FROM PUBLIC")
        cursor.execute(f"SET ROLE {role}")
        # Revoked while it runs: refused, then the statement goes.
        written, _loaded = OutboxMessage.objects.record_attempts(
            [(first, attempt_for(first, "u0@example.com", "250 ok"))]
        )
        assert written == {first.pk}
        # Asked again, and not allowed: the statement, without a refusal.
        assert _sql._record_function("default") is None
        with CaptureQueriesContext(connection) as queries:
            written, _loaded = OutboxMessage.objects.record_attempts(
                [(second, attempt_for(second, "u1@example.com", "250 ok"))]
            )
        assert written == {second.pk}
        assert not function_calls(queries)
    assert OutboxMessage.objects.filter(status=Status.SENT).count() == 2


def wait_until_the_other_waits(what):
    """Until one other session of this database waits for a lock (10 s)."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                "current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone() == (1,):
                return
            time.sleep(0.02)
    pytest.fail(f"the other {what} never waited")


@pytest.mark.parametrize("there", [False, True], ids=["new version", "same version"])
def test_two_migrates_at_once_both_succeed(postgresql, there):
    """
    Several deploys run ``migrate`` at the same moment (every container
    at its start): neither fails for the function, whether it is new or
    already there.
    """
    if not there:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP FUNCTION {signature()}")
    errors = []

    def other_migrate():
        try:
            _sql.install_record_function("default")
        except Exception as error:
            errors.append(error)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_migrate)
    with transaction.atomic():
        # This migrate's post_migrate, not yet committed when the other's
        # comes.
        _sql.install_record_function("default")
        thread.start()
        wait_until_the_other_waits("migrate")
    thread.join(10)
    assert errors == []
    assert _sql._record_function("default") == postgresql


def test_a_new_connection_elsewhere_meanwhile_is_no_error(postgresql, monkeypatch):
    # Another thread's new connection (connection_created) forgets the
    # answer just as this thread has stored it.
    class Forgetful(dict):
        def __setitem__(self, alias, name):
            super().__setitem__(alias, name)
            _sql._forget(None, connection)

    monkeypatch.setattr(_sql, "_available", Forgetful())
    assert _sql._record_function("default") == postgresql


def test_dropped_inside_a_transaction_the_error_stands_then_it_is_noticed(
    postgresql,
):
    from django.db import DatabaseError

    first, second = claimed_group(2)
    assert _sql._record_function("default") == postgresql
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {signature()}")
    # The transaction is aborted: nothing more can run in it.
    with pytest.raises(DatabaseError), transaction.atomic():
        OutboxMessage.objects.record_attempts(
            [(first, attempt_for(first, "u0@example.com", "250 ok"))]
        )
    assert OutboxMessage.objects.get(pk=first.pk).status == Status.SENDING
    # The next try asks again, and sends the statement.
    written, _loaded = OutboxMessage.objects.record_attempts(
        [(first, attempt_for(first, "u0@example.com", "250 ok"))]
    )
    assert written == {first.pk}


def test_a_worker_running_before_migrate_finds_the_function_later(
    postgresql, monkeypatch
):
    first, second = claimed_group(2)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {signature()}")
    assert _sql._record_function("default") is None
    # The deploy's migrate, in another process (this one's answer stays).
    with connection.cursor() as cursor:
        cursor.execute(_sql.record_function("default")[1])
    assert _sql._record_function("default") is None
    # A minute later.
    monotonic = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: monotonic() + 60)
    with CaptureQueriesContext(connection) as queries:
        written, _loaded = OutboxMessage.objects.record_attempts(
            [(first, attempt_for(first, "u0@example.com", "250 ok"))],
            then_load=[second],
        )
    assert (written, len(function_calls(queries))) == ({first.pk}, 1)


def pg_proc_version():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xmin::text FROM pg_proc WHERE oid = to_regprocedure(%s)",
            [signature()],
        )
        row = cursor.fetchone()
    return row and row[0]


def test_migrate_leaves_the_function_alone_when_it_is_there(postgresql):
    # Not replaced: the sessions running it keep their plans, and a role
    # that doesn't own it can migrate.
    before = pg_proc_version()
    _sql.install_record_function("default")
    assert pg_proc_version() == before
    # Unless it isn't this version's text: then it is.
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE OR REPLACE FUNCTION {signature()} RETURNS TABLE "
            "(o_kind text, o_id bigint, o_size integer, o_mime bytea) "
            "LANGUAGE sql AS $$ SELECT 'w', 0::bigint, NULL::integer, NULL::bytea $$"
        )
    _sql.install_record_function("default")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT lanname, prosrc FROM pg_proc JOIN pg_language l "
            "ON l.oid = prolang WHERE pg_proc.oid = to_regprocedure(%s)",
            [signature()],
        )
        assert cursor.fetchone() == (
            "plpgsql",
            _sql._record_function_parts("default")[1],
        )


class NoOutboxHere:
    def allow_migrate(self, db, app_label, **hints):
        return app_label != "django_mailkit"


def test_migrate_installs_it_only_where_the_router_puts_the_outbox(
    postgresql, settings
):
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {signature()}")
    settings.DATABASE_ROUTERS = [f"{__name__}.NoOutboxHere"]
    _sql.install_record_function("default")
    assert pg_proc_version() is None
    settings.DATABASE_ROUTERS = []
    _sql.install_record_function("default")
    assert pg_proc_version() is not None


def test_elsewhere_than_postgresql_migrate_installs_nothing():
    if connection.vendor == "postgresql":
        pytest.skip("the other databases (the SQLite pass)")
    with CaptureQueriesContext(connection) as queries:
        _sql.install_record_function("default")
    assert len(queries) == 0


def test_a_role_that_may_not_create_it_migrates_all_the_same(postgresql):
    import io

    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {signature()}")
    with a_role("deploy") as (cursor, role):
        # Its tables, but no CREATE on the schema (PostgreSQL 15+'s
        # default for a role that doesn't own it).
        cursor.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}, PUBLIC")
        cursor.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        cursor.execute(f"SET ROLE {role}")
        stdout = io.StringIO()
        _sql.install_record_function("default", verbosity=1, stdout=stdout)
        assert pg_proc_version() is None
        assert "record function" in stdout.getvalue()
        assert "permission denied for schema public" in stdout.getvalue()
        assert stdout.getvalue().count("\n") == 1
        assert _sql._record_function("default") is None


def test_a_role_that_may_update_only_some_columns_sends_the_statement(postgresql):
    # The function's UPDATE names every column it can set; the statement
    # only those a group sets: refused once, then the statement for a while.
    first, second = claimed_group(2)
    sets = ", ".join(
        connection.ops.quote_name(OutboxMessage._meta.get_field(name).column)
        for name in first.outcome_fields(attempt_for(first, "u0@example.com", "ok"))
    )
    table = connection.ops.quote_name(OutboxMessage._meta.db_table)
    with a_role("cols") as (cursor, role):
        cursor.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        cursor.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        cursor.execute(f"REVOKE UPDATE ON {table} FROM {role}")
        cursor.execute(f"GRANT UPDATE ({sets}) ON {table} TO {role}")
        cursor.execute(f"SET ROLE {role}")
        calls = []
        for i, record in enumerate((first, second)):
            with CaptureQueriesContext(connection) as queries:
                written, _loaded = OutboxMessage.objects.record_attempts(
                    [(record, attempt_for(record, f"u{i}@example.com", "250 ok"))]
                )
            assert written == {record.pk}
            calls.append(len(function_calls(queries)))
        assert calls == [1, 0]


def quoted(name):
    """An SQL identifier, whatever it holds (quote_name() leaves quotes be)."""
    return '"' + name.replace('"', '""') + '"'


def an_old_function(name, schema=None, arguments=_sql._ARGUMENTS):
    """A function with the record function's signature, as a version's."""
    where = f"{quoted(schema)}." if schema else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE FUNCTION {where}{quoted(name)}"
            f"({arguments}) RETURNS TABLE (o_kind text, o_id bigint, "
            "o_size integer, o_mime bytea) LANGUAGE sql "
            "AS 'SELECT NULL::text, NULL::bigint, NULL::integer, NULL::bytea'"
        )


def functions_command(*args):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("mailkit_outbox", "functions", *args, stdout=out)
    return out.getvalue()


def schemas_functions():
    """Every function of every schema but the system's: (schema, name, args)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2, 3"
        )
        return cursor.fetchall()


@contextlib.contextmanager
def extra_objects(*statements, drop):
    """Create a test's own objects; drop them after, whatever happened."""
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET search_path")
            for statement in drop:
                cursor.execute(statement)


def test_the_functions_command_drops_only_other_versions_of_its_schema(postgresql):
    old = "mailkit_record_0000000000000000"
    current = f"public.{postgresql}({_sql._ARGUMENTS})"
    # Not a version's: another deployment's schema (the same name but for
    # its capitals), a project's function named alike, an overload, a
    # procedure, a name made to break out of the DROP and reach the
    # terminal (within PostgreSQL's 63 bytes).
    evil = 'mailkit_record_"(json); --\x1b[2J\x1b]0;pwned\x07\rPAID\n\x9b31m'
    assert len(evil.encode()) <= 63
    with extra_objects(
        'CREATE SCHEMA "Tenant"',
        "CREATE SCHEMA tenant",
        "CREATE FUNCTION mailkit_record_stats(text) RETURNS int "
        "LANGUAGE sql AS 'SELECT 1'",
        f"CREATE FUNCTION {old}(integer) RETURNS int LANGUAGE sql AS 'SELECT 1'",
        f"CREATE PROCEDURE mailkit_record_1234567890abcdef({_sql._ARGUMENTS}) "
        "LANGUAGE sql AS 'SELECT 1'",
        drop=[
            'DROP SCHEMA "Tenant" CASCADE',
            "DROP SCHEMA tenant CASCADE",
            "DROP FUNCTION IF EXISTS mailkit_record_stats(text)",
            f"DROP FUNCTION IF EXISTS {old}(integer)",
            f"DROP FUNCTION IF EXISTS {old}({_sql._ARGUMENTS})",
            f"DROP FUNCTION IF EXISTS {quoted(evil)}({_sql._ARGUMENTS})",
            "DROP PROCEDURE IF EXISTS "
            f"mailkit_record_1234567890abcdef({_sql._ARGUMENTS})",
        ],
    ):
        an_old_function(old)
        an_old_function(evil)
        an_old_function("mailkit_record_1111111111111111", schema="tenant")
        an_old_function("mailkit_record_2222222222222222", schema="Tenant")
        before = schemas_functions()
        listed = functions_command()
        assert listed == (
            f"public.{old}({_sql._ARGUMENTS})\n{current}  (this version's)\n"
        )
        assert functions_command("--drop-old") == (
            f"Dropped public.{old}({_sql._ARGUMENTS})\n"
            "Dropped 1 record function(s) of other versions on 'default'.\n"
            f"{current}  (this version's)\n"
        )
        assert set(before) - set(schemas_functions()) == {
            ("public", old, _sql._ARGUMENTS)
        }

        # From the deployment whose schema is "Tenant": its workers find this
        # version's function in public; only its own schema's other version
        # goes, not its lowercase twin's.
        with connection.cursor() as cursor:
            cursor.execute('SET search_path = "Tenant", public')
        before = schemas_functions()
        tenants = f'"Tenant".mailkit_record_2222222222222222({_sql._ARGUMENTS})'
        further = (
            f"This version's record function is {current}, further along the "
            "search path: workers use it.\n"
        )
        assert functions_command() == f"{tenants}\n{further}"
        assert functions_command("--drop-old") == (
            f"Dropped {tenants}\n"
            "Dropped 1 record function(s) of other versions on 'default'.\n"
            f"{further}"
        )
        assert set(before) - set(schemas_functions()) == {
            ("Tenant", "mailkit_record_2222222222222222", _sql._ARGUMENTS)
        }


def test_the_functions_command_without_this_versions_drops_nothing(postgresql):
    # A copy of the command from a version whose migrate never ran must not
    # drop the function the workers use.
    old = "mailkit_record_0000000000000000"
    an_old_function(old)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP FUNCTION {signature()}")
        before = schemas_functions()
        assert functions_command() == (
            f"public.{old}({_sql._ARGUMENTS})\n"
            "This version's record function is not installed on 'default': "
            "workers send the statement itself. Run migrate to install it.\n"
        )
        with pytest.raises(CommandError, match="so --drop-old drops nothing"):
            functions_command("--drop-old")
        assert _sql.drop_record_functions("default") == []
        assert schemas_functions() == before
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP FUNCTION {old}({_sql._ARGUMENTS})")


def test_the_functions_command_without_the_right_to_drop_is_one_line(postgresql):
    old = "mailkit_record_0000000000000000"
    an_old_function(old)
    try:
        with a_role("notowner") as (cursor, role):
            cursor.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            cursor.execute(f"SET ROLE {role}")
            with pytest.raises(CommandError) as raised:
                functions_command("--drop-old")
            assert str(raised.value) == (
                "No record function was dropped on 'default': must be owner of "
                f"function public.{old}"
            )
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP FUNCTION {old}({_sql._ARGUMENTS})")


def test_a_drop_that_waited_for_another_lists_what_is_left(postgresql):
    """
    Two ``--drop-old`` at once, on a database whose transactions are
    REPEATABLE READ by default: the second, let through by the first's
    commit, must see that the first dropped the old function. (Either
    guard is enough: its own transaction READ COMMITTED, or the listing's
    argument test, which asks the catalog as it is now. This fails
    without both.)
    """
    old = "mailkit_record_0000000000000000"
    an_old_function(old)
    name = connection.settings_dict["NAME"]
    quoted_name = connection.ops.quote_name(name)
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER DATABASE {quoted_name} "
            "SET default_transaction_isolation = 'repeatable read'"
        )
    results = []

    def other_drop():
        try:
            results.append(_sql.drop_record_functions("default"))
        except Exception as error:
            results.append(error)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_drop)
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                # This one holds the lock, and drops the old function.
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_sql._INSTALL_LOCK])
                thread.start()
                wait_until_the_other_waits("drop")
                cursor.execute(f"DROP FUNCTION {old}({_sql._ARGUMENTS})")
        thread.join(10)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                f"ALTER DATABASE {quoted_name} RESET default_transaction_isolation"
            )
            cursor.execute(f"DROP FUNCTION IF EXISTS {old}({_sql._ARGUMENTS})")
    assert results == [[]]
