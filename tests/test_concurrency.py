"""
Many workers on PostgreSQL: real processes, a real SMTP sink, real locks.

These run in the PostgreSQL pass only (MAILKIT_DB=postgresql).
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import django
import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_mailkit import EmailMessage, mailers
from django_mailkit.models import Attempt, OutboxMessage, Priority, Status
from tests.mailers import outbox_via_smtp

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
#: The workers' RECORD_GROUP_SIZE (tests/worker_settings.py): the most
#: messages a worker can have had accepted without recording them yet.
WINDOW = 4
MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)


@pytest.fixture
def outbox_to(smtp_server):
    """Queue through the outbox (no tasks) for an SMTP mailer at the sink."""
    with override_settings(
        MAILERS=outbox_via_smtp(smtp_server),
        MAILKIT={"USE_TASKS": False},
    ):
        yield smtp_server


def queue(count, prefix="m"):
    backend = mailers.default
    for start in range(0, count, 500):
        backend.send_messages(
            [
                EmailMessage(
                    f"{prefix}{i}", "body", "from@example.com", [f"u{i}@example.com"]
                )
                for i in range(start, min(start + 500, count))
            ]
        )
    return set(OutboxMessage.objects.values_list("message_id", flat=True))


def start_worker(server, *args, lease=60):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "MAILKIT_DB": "postgresql",
        "MAILKIT_DB_NAME": connection.settings_dict["NAME"],
        "MAILKIT_SINK_PORT": str(server.port),
        "MAILKIT_LEASE_SECONDS": str(lease),
        "MAILKIT_RECORD_GROUP_SIZE": str(WINDOW),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "django", "mailkit_worker", "--interval", "0.1", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def delivered_ids(server):
    counts = Counter()
    for delivery in list(server.deliveries):
        match = MESSAGE_ID.search(delivery.data)
        assert match, delivery.data[:200]
        counts[match.group(1).decode()] += 1
    return counts


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finish(workers, timeout=60):
    outputs = []
    for worker in workers:
        try:
            out, _ = worker.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
        outputs.append(out)
    return outputs


def test_four_workers_deliver_each_message_exactly_once(outbox_to):
    expected = queue(2000)
    assert len(expected) == 2000
    workers = [
        start_worker(outbox_to, "--once", "--batch-size", "50") for _ in range(4)
    ]
    outputs = finish(workers, timeout=240)
    assert [w.returncode for w in workers] == [0, 0, 0, 0], "\n".join(outputs)
    counts = delivered_ids(outbox_to)
    assert set(counts) == expected
    assert [mid for mid, n in counts.items() if n > 1] == []
    assert OutboxMessage.objects.exclude(status=Status.SENT).count() == 0
    # The work really was shared: every worker delivered some of it.
    per_worker = Counter(Attempt.objects.values_list("worker", flat=True))
    assert len(per_worker) == 4, per_worker
    assert sum(per_worker.values()) == 2000


def test_forked_processes_share_the_queue(outbox_to):
    """--processes: one command, several workers forked after start-up."""
    if not outbox_to.pipelining or django.VERSION[:2] != (6, 1):
        pytest.skip("runs once: pipelining server, newest Django")
    expected = queue(300)
    command = start_worker(
        outbox_to, "--once", "--processes", "3", "--batch-size", "10"
    )
    (output,) = finish([command], timeout=120)
    assert command.returncode == 0, output
    counts = delivered_ids(outbox_to)
    assert set(counts) == expected
    assert [mid for mid, n in counts.items() if n > 1] == []
    pids = {
        worker.split(":")[2]
        for worker in Attempt.objects.values_list("worker", flat=True)
    }
    assert str(command.pid) not in pids  # the parent only waits
    assert len(pids) == 3, pids
    assert output.count(" stopped: ") == 3, output


def children_of(pid):
    """The pids of ``pid``'s child processes (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_forked_processes_finish_their_message_on_sigterm(outbox_to):
    if not outbox_to.pipelining or django.VERSION[:2] != (6, 1):
        pytest.skip("runs once: pipelining server, newest Django")
    queue(200)
    outbox_to.stall("DATA", 0.05)
    command = start_worker(outbox_to, "--processes", "2", "--batch-size", "50")
    wait_until(lambda: len(outbox_to.deliveries) >= 6, 30, "deliveries to start")
    children = children_of(command.pid)
    assert len(children) == 2, children
    command.send_signal(signal.SIGTERM)
    try:
        output, _ = command.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        # Not passed on: the children (each in a process group of its own)
        # would run on, holding the output pipe open.
        for pid in [*children, command.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError("SIGTERM did not stop the worker processes") from None
    assert command.returncode == 0, output
    # Passed on to each process once: each finishes its message, then exits.
    assert output.count("Finishing the message in flight") == 2, output
    assert "Second signal" not in output
    sent = OutboxMessage.objects.filter(status=Status.SENT).count()
    assert 6 <= sent < 200
    assert OutboxMessage.objects.filter(status=Status.SENDING).count() == 0
    assert OutboxMessage.objects.filter(status=Status.QUEUED).count() == 200 - sent
    assert len(delivered_ids(outbox_to)) == sent


def test_sigkilled_worker_loses_nothing(outbox_to):
    expected = queue(300)
    outbox_to.stall("DATA", 0.02)  # keep batches in flight long enough to kill
    victim = start_worker(outbox_to, "--batch-size", "40", lease=3)
    wait_until(
        lambda: (
            OutboxMessage.objects.filter(
                status=Status.SENDING, claimed_by__contains=f":{victim.pid}:"
            ).exists()
            and len(outbox_to.deliveries) >= 5
        ),
        30,
        "the victim to claim a batch and deliver some of it",
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    stranded = set(
        OutboxMessage.objects.filter(
            status=Status.SENDING, claimed_by__contains=f":{victim.pid}:"
        ).values_list("pk", flat=True)
    )
    assert stranded, "the victim died holding claimed messages"

    rescuers = [
        start_worker(outbox_to, "--batch-size", "40", lease=3) for _ in range(2)
    ]
    try:
        wait_until(
            lambda: not OutboxMessage.objects.exclude(status=Status.SENT).exists(),
            90,
            "every message to be sent",
        )
    finally:
        for worker in rescuers:
            worker.send_signal(signal.SIGTERM)
        outputs = finish(rescuers)
    assert [w.returncode for w in rescuers] == [0, 0], "\n".join(outputs)

    counts = delivered_ids(outbox_to)
    assert set(counts) == expected, "a message was lost"
    duplicates = [mid for mid, n in counts.items() if n > 1]
    # Only what the server had accepted and the victim had not recorded yet
    # (its group in flight) may go out twice.
    assert len(duplicates) <= WINDOW, duplicates
    rescued = Attempt.objects.filter(message_id__in=stranded)
    assert rescued.count() >= len(stranded)
    assert not rescued.filter(worker__contains=f":{victim.pid}:").exists()
    # A crash charges only the message in flight: the victim died inside a
    # group, which charges nobody, and every message's count is its
    # attempts on record, numbered from 1.
    charged = dict(OutboxMessage.objects.values_list("pk", "attempts"))
    recorded = Counter(Attempt.objects.values_list("message_id", flat=True))
    assert {
        pk: (n, recorded[pk]) for pk, n in charged.items() if n != recorded[pk]
    } == {}
    assert not Attempt.objects.exclude(number=1).exists()
    assert not Attempt.objects.filter(outcome=Attempt.Outcome.INTERRUPTED).exists()
    assert OutboxMessage.objects.filter(pk__in=stranded, recoveries=1).count() == len(
        stranded
    )
    assert sum("recovered" in out and "0 recovered" not in out for out in outputs) >= 1


def test_sigkilled_while_sending_alone_the_attempt_is_recorded(outbox_to):
    """
    Killed while a message sent alone (charged before its send) waits for
    the server's reply to DATA: the rescuer's recovery records that
    attempt, INTERRUPTED, by the victim; the others, claimed but untried,
    get no row. Every message ends with as many rows as attempts.
    """
    if outbox_to.pipelining or django.VERSION[:2] != (6, 1):
        pytest.skip("runs once: serial server, newest Django")
    expected = queue(3)
    # Taken back from a dead worker once before: each now goes alone.
    OutboxMessage.objects.update(recoveries=1)
    outbox_to.stall("DATA")
    victim = start_worker(outbox_to, "--batch-size", "3", lease=3)
    try:
        wait_until(
            lambda: any(
                line.strip().upper() == b"DATA" for line in outbox_to.commands()
            ),
            30,
            "the victim to send DATA",
        )
        (in_flight,) = OutboxMessage.objects.filter(attempts=1).values_list(
            "pk", flat=True
        )
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    outbox_to.stall("DATA", 0)
    rescuer = start_worker(outbox_to, "--batch-size", "3", lease=3)
    try:
        wait_until(
            lambda: not OutboxMessage.objects.exclude(status=Status.SENT).exists(),
            60,
            "every message to be sent",
        )
    finally:
        rescuer.send_signal(signal.SIGTERM)
        outputs = finish([rescuer])
    assert rescuer.returncode == 0, outputs[0]
    assert set(delivered_ids(outbox_to)) == expected
    (row,) = Attempt.objects.filter(outcome=Attempt.Outcome.INTERRUPTED)
    assert (row.message_id, row.number) == (in_flight, 1)
    assert f":{victim.pid}:" in row.worker
    assert row.started_at <= row.finished_at
    outcomes = list(
        Attempt.objects.filter(message_id=in_flight).values_list("number", "outcome")
    )
    assert outcomes == [(1, Attempt.Outcome.INTERRUPTED), (2, Attempt.Outcome.SENT)]
    charged = dict(OutboxMessage.objects.values_list("pk", "attempts"))
    recorded = Counter(Attempt.objects.values_list("message_id", flat=True))
    assert charged == {pk: (2 if pk == in_flight else 1) for pk in charged}
    assert charged == dict(recorded)


def test_sigterm_finishes_the_message_in_flight(outbox_to):
    queue(100)
    outbox_to.stall("DATA", 0.05)
    worker = start_worker(outbox_to, "--batch-size", "100")
    wait_until(lambda: len(outbox_to.deliveries) >= 3, 30, "deliveries to start")
    worker.send_signal(signal.SIGTERM)
    (output,) = finish([worker])
    assert worker.returncode == 0, output
    assert "Finishing the message in flight" in output
    sent = OutboxMessage.objects.filter(status=Status.SENT).count()
    # Stopped early; whatever it had claimed but not tried went back.
    assert 3 <= sent < 100
    assert OutboxMessage.objects.filter(status=Status.SENDING).count() == 0
    assert OutboxMessage.objects.filter(status=Status.QUEUED).count() == 100 - sent
    assert len(delivered_ids(outbox_to)) == sent


def test_claims_skip_rows_locked_by_another_transaction(outbox_to):
    """A second real connection holds row locks; the claim skips, not waits."""
    queue(10)
    import psycopg

    settings = connection.settings_dict
    other = psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        password=settings["PASSWORD"],
        dbname=settings["NAME"],
        autocommit=False,
    )
    try:
        ids = list(
            OutboxMessage.objects.order_by("next_attempt_at", "id").values_list(
                "id", flat=True
            )
        )
        with other.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM django_mailkit_outboxmessage "
                "WHERE id = ANY(%s) FOR UPDATE",
                [ids[:4]],
            )
        started = time.monotonic()
        # Without SKIP LOCKED the claim would wait for the other transaction
        # forever: fail in two seconds instead of hanging the suite.
        with lock_timeout("2s"):
            claimed = OutboxMessage.objects.claim(
                "w", limit=10, lease=timedelta(minutes=1)
            )
        assert time.monotonic() - started < 2  # SKIP LOCKED: no waiting
        assert sorted(m.pk for m in claimed) == ids[4:]
    finally:
        other.rollback()
        other.close()


@contextlib.contextmanager
def lock_timeout(value):
    """Make this connection's lock waits fail after ``value``, not hang."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = %s", [value])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = 0")


def test_claim_query_uses_its_index(outbox_to):
    """
    On a large table with few due rows, PostgreSQL plans the partial index,
    read in the claim's order (priority, then due time): no sort.
    """
    now = timezone.now()
    priorities = [Priority.BULK, Priority.DEFAULT, Priority.HIGH]
    rows = [
        OutboxMessage(
            queued_via="default",
            mailer="smtp",
            from_email="f@example.com",
            recipients=["a@example.com"],
            mime=b"x",
            status=Status.QUEUED if i % 100 == 0 else Status.SENT,
            next_attempt_at=now - timedelta(seconds=i),
            priority=priorities[i % 7 % 3],
        )
        for i in range(20000)
    ]
    OutboxMessage.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_mailkit_outboxmessage")
    with transaction.atomic(), connection.cursor() as cursor:
        query = OutboxMessage.objects.claimable(timezone.now())[:100]
        sql, params = query.query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "mailkit_ready_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "Sort" not in plan, plan


def stopped(pid):
    """True once the process is really stopped (SIGSTOP is asynchronous)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def db_state():
    """Every row the outbox holds, to compare before and after."""
    from django_mailkit.models import Recipient

    return (
        list(OutboxMessage.objects.order_by("pk").values()),
        list(Recipient.objects.order_by("pk").values()),
        list(Attempt.objects.order_by("pk").values()),
    )


def test_sigstopped_worker_past_its_lease_changes_nothing(outbox_to):
    """
    A worker paused past its lease (GC pause, VM freeze, SIGSTOP) comes back
    after another worker delivered its batch: its late writes are fenced off.

    Run once, against the pipelining server (a message's content still
    unanswered while the next transaction starts), on the newest Django:
    the workers' fencing doesn't depend on either.
    """
    if not outbox_to.pipelining or django.VERSION[:2] != (6, 1):
        pytest.skip("runs once: pipelining server, newest Django")
    expected = queue(60)
    outbox_to.stall("DATA", 0.03)
    # --once: after its batch it finds nothing due and exits by itself.
    paused = start_worker(outbox_to, "--once", "--batch-size", "60", lease=2)
    try:
        wait_until(
            lambda: len(outbox_to.deliveries) >= 5,
            30,
            "the paused worker to deliver part of its batch",
        )
        paused.send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped(paused.pid), 5, "the worker to stop")
        recorded_by_paused = set(
            Attempt.objects.filter(worker__contains=f":{paused.pid}:").values_list(
                "message_id", flat=True
            )
        )
        time.sleep(2.5)  # past its lease
        rescuer = start_worker(outbox_to, "--batch-size", "60", lease=2)
        try:
            wait_until(
                lambda: not OutboxMessage.objects.exclude(status=Status.SENT).exists(),
                60,
                "the rescuer to deliver everything",
            )
        finally:
            rescuer.send_signal(signal.SIGTERM)
            (rescuer_output,) = finish([rescuer])
        assert rescuer.returncode == 0, rescuer_output
        before = db_state()
        deliveries_before = len(outbox_to.deliveries)

    finally:
        # It finishes its message in flight, tries the rest of its batch,
        # finds nothing due and exits.
        paused.send_signal(signal.SIGCONT)
        (output,) = finish([paused], timeout=30)
    assert paused.returncode == 0, output
    # Its late writes changed nothing, and it sent nothing more.
    assert db_state() == before
    assert len(outbox_to.deliveries) in (deliveries_before, deliveries_before + 1)
    assert re.search(r"\b[1-9]\d* lost to another worker", output), output

    counts = delivered_ids(outbox_to)
    assert set(counts) == expected, "a message was lost"
    duplicates = [mid for mid, n in counts.items() if n > 1]
    # Only what the server had accepted and the paused worker had not
    # recorded yet (its group in flight) may go out twice.
    assert len(duplicates) <= WINDOW, duplicates
    for duplicate in duplicates:
        record = OutboxMessage.objects.get(message_id=duplicate)
        assert record.pk not in recorded_by_paused
    # Everything it recorded before the pause stands; nothing after.
    by_paused = set(
        Attempt.objects.filter(worker__contains=f":{paused.pid}:").values_list(
            "message_id", flat=True
        )
    )
    assert by_paused == recorded_by_paused
