"""
Priorities and shared limits with real worker processes on PostgreSQL.

Each scenario runs once: in the PostgreSQL pass, on the newest Django, against
one sink (what they test doesn't depend on either).
"""

import os
import subprocess
import sys

import django
import pytest
from django.db import connection
from django.test import override_settings

from django_mailkit import EmailMessage, mailers
from django_mailkit.models import Attempt, OutboxMessage, Priority, Recipient
from tests.smtpserver import SMTPTestServer
from tests.test_concurrency import MESSAGE_ID, ROOT, finish

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
        MAILERS={
            "default": {
                "BACKEND": "django_mailkit.backends.outbox.EmailBackend",
                "OPTIONS": {"deliver_using": "smtp"},
            },
            "smtp": {
                "BACKEND": "django_mailkit.backends.smtp.EmailBackend",
                "OPTIONS": {"host": server.host, "port": server.port},
            },
        },
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
    assert record.message_id in ids[:4], ids.index(record.message_id)
    attempt = Attempt.objects.get(message=record)
    first_of_its_worker = (
        Attempt.objects.filter(worker=attempt.worker).order_by("started_at").first()
    )
    assert first_of_its_worker == attempt
