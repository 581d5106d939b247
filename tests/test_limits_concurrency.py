"""
Priorities and shared limits with real worker processes on PostgreSQL.

Each scenario runs once: in the PostgreSQL pass, on the newest Django, against
one sink (what they test doesn't depend on either).
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import django
import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_mailkit import EmailMessage, mailers
from django_mailkit.limits import ConnectionSlot
from django_mailkit.models import Attempt, OutboxMessage, Priority, Recipient
from tests.mailers import outbox_via_smtp
from tests.smtpserver import SMTPTestServer
from tests.test_concurrency import MESSAGE_ID, ROOT, finish, wait_until

pytestmark = [
    pytest.mark.concurrency,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        django.VERSION[:2] != (6, 1), reason="runs once, on the newest Django"
    ),
]


@pytest.fixture
def sink():
    server = SMTPTestServer(pipelining=True)
    server.start()
    with override_settings(
        MAILERS=outbox_via_smtp(server),
        MAILKIT={"USE_TASKS": False},
    ):
        yield server
    server.stop()


def start_workers(server, count, *args, **env):
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "MAILKIT_DB": "postgresql",
        "MAILKIT_DB_NAME": connection.settings_dict["NAME"],
        "MAILKIT_SINK_PORT": str(server.port),
        **{f"MAILKIT_{name.upper()}": str(value) for name, value in env.items()},
    }
    return [
        subprocess.Popen(
            [sys.executable, "-m", "django", "mailkit_worker", "--interval", "0.1"]
            + list(args),
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]


def bulk_queue(count, *, priority=Priority.BULK):
    """Queue ``count`` copies of one message, fast: two INSERT ... SELECTs."""
    message = EmailMessage("news", "body", "from@example.com", ["u@example.com"])
    mailers.default.send_messages([message])
    model = OutboxMessage.objects.get()
    model.priority = priority
    model.save(update_fields=["priority"])

    def copy(model_class, replace, source, where, params):
        table = model_class._meta.db_table
        columns = [f.column for f in model_class._meta.concrete_fields]
        columns = [column for column in columns if column != "id"]
        values = [replace.get(column, f"t.{column}") for column in columns]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"SELECT {', '.join(values)} FROM {table} AS t, {source} "
                f"WHERE {where}",
                params,
            )

    copy(
        OutboxMessage, {}, "generate_series(2, %s) AS n", "t.id = %s", [count, model.pk]
    )
    # One recipient row for each copy.
    copy(
        Recipient,
        {"message_id": "m.id"},
        f"{OutboxMessage._meta.db_table} AS m",
        "t.message_id = %s AND m.id <> %s",
        [model.pk, model.pk],
    )
    assert OutboxMessage.objects.filter(priority=priority).count() == count
    assert Recipient.objects.count() == count


def test_urgent_message_goes_in_the_first_batch_after_10000_bulk(sink):
    bulk_queue(10_000)
    reset = EmailMessage("Password reset", "link", "from@example.com", ["me@a.org"])
    reset.priority = "high"
    mailers.default.send_messages([reset])
    record = OutboxMessage.objects.get(subject="Password reset")
    assert record.priority == Priority.HIGH

    # Each worker stops after one batch: what the first batches took.
    workers = start_workers(sink, 4, "--max-messages", "50", "--batch-size", "50")
    outputs = finish(workers, timeout=120)
    assert [w.returncode for w in workers] == [0, 0, 0, 0], "\n".join(outputs)

    ids = [MESSAGE_ID.search(d.data).group(1).decode() for d in sink.deliveries]
    assert len(ids) == 200
    # The first message of whichever batch was claimed first: at most the
    # other three workers' first messages reached the sink before it.
    print(f"priorities: the reset was delivered {ids.index(record.message_id) + 1}")
    assert record.message_id in ids[:4], ids.index(record.message_id)
    attempt = Attempt.objects.get(message=record)
    first_of_its_worker = (
        Attempt.objects.filter(worker=attempt.worker).order_by("started_at").first()
    )
    assert first_of_its_worker == attempt


def most_in_any_window(times, seconds):
    """The most acceptance times in any window of ``seconds``."""
    times = sorted(times)
    most = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def drain(sink, count, **env):
    """
    Queue ``count`` messages, start 4 warmed-up workers, then make the
    messages due; return when the messages became due, once all are sent.
    """
    bulk_queue(count, priority=Priority.DEFAULT)
    OutboxMessage.objects.update(next_attempt_at=timezone.now() + timedelta(days=1))
    connected = connections_to_database()
    workers = start_workers(sink, 4, "--batch-size", "25", **env)
    try:
        # Warmed up: each worker connected and polling (slow on a busy box).
        wait_until(
            lambda: connections_to_database() >= connected + 4, 60, "workers to poll"
        )
        due = time.monotonic()
        OutboxMessage.objects.update(next_attempt_at=timezone.now())
        wait_until(
            lambda: not OutboxMessage.objects.exclude(status="sent").exists(),
            120,
            "every message to be sent",
        )
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        outputs = finish(workers)
    assert [w.returncode for w in workers] == [0, 0, 0, 0], "\n".join(outputs)
    assert len(sink.deliveries) == count
    return due


def connections_to_database():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        )
        return cursor.fetchone()[0]


def test_four_workers_keep_to_a_shared_rate(sink):
    """
    600 messages, 4 workers, rate "50/s": no 1-second window holds more than
    the documented bound, and the run takes at most 1.5 x the ideal 12 s.

    The bound: the rate (50), the bucket's burst (5), and one message per
    worker that took its token just before the window and was still being
    sent (4; a worker takes one token at a time at this rate).
    """
    due = drain(sink, 600, sink_rate="50/s")
    times = sorted(d.accepted_at for d in sink.deliveries)
    busiest = most_in_any_window(times, 1.0)
    elapsed = times[-1] - due
    print(f"rate 50/s: busiest second {busiest}; run {elapsed:.1f} s")
    assert busiest <= 50 + 5 + 4, busiest
    assert elapsed <= 1.5 * 12, elapsed
    # Every worker took part: the limit was shared, not one worker's.
    assert Attempt.objects.values("worker").distinct().count() == 4
    # Waiting for a token costs no attempt.
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}


def test_four_workers_share_two_connections(sink):
    """600 messages, 4 workers, max_connections_total 2: never a third."""
    drain(sink, 600, sink_max_connections_total=2)
    # Waiting for a slot costs no attempt.
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}
    most = sink.most_concurrent_sessions()
    print(f"max_connections_total 2: at most {most} at once")
    assert most == 2
    assert ConnectionSlot.objects.exclude(holder="").count() == 0


def test_a_killed_workers_connection_slot_expires(sink):
    """
    max_connections_total 1: a worker SIGKILLed holding the slot keeps it
    only until its lease runs out; then another worker delivers the rest.
    """
    bulk_queue(100, priority=Priority.DEFAULT)
    sink.stall("DATA", 0.02)  # keep the victim's batch in flight
    limits = {"sink_max_connections_total": 1, "lease_seconds": 3}
    (victim,) = start_workers(sink, 1, "--batch-size", "50", **limits)
    try:
        wait_until(lambda: len(sink.deliveries) >= 5, 60, "the victim to deliver")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    killed = time.monotonic()
    slot = ConnectionSlot.objects.get()
    assert slot.holder and f":{victim.pid}:" in slot.holder
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        held_for = slot.expires - cursor.fetchone()[0]
    assert 0 < held_for <= 3
    sessions_before = len(sink.sessions)

    (rescuer,) = start_workers(sink, 1, "--batch-size", "50", **limits)
    try:
        wait_until(
            lambda: not OutboxMessage.objects.exclude(status="sent").exists(),
            30,
            "the rescuer to deliver the rest",
        )
    finally:
        rescuer.send_signal(signal.SIGTERM)
        (output,) = finish([rescuer])
    assert rescuer.returncode == 0, output
    first_session = sink.sessions[sessions_before]
    # Not one connection while the dead worker's lease held the slot.
    assert first_session.opened_at >= killed + held_for - 0.1
    assert sink.most_concurrent_sessions() == 1
    # Only the message on the wire when the victim died may go out twice.
    assert 100 <= len(sink.deliveries) <= 101
