"""
Delivery tasks in batches (MAILKIT["TASK_BATCH_SIZE"]), in this process.

Messages committed together go to one task per TASK_BATCH_SIZE of them. A
task that runs on a task worker (any backend but the immediate one; here the
dummy backend, whose tasks the tests run by hand in the order a worker
would) and has a message to deliver also takes other due messages, in the
claim order (priority first), up to TASK_BATCH_SIZE in all. Their own tasks
then find nothing to do. The real backends' workers do the same in
tests/test_task_backends.py.
"""

import smtplib
from datetime import timedelta
from email import message_from_bytes

import django
import pytest
from django.core import mail
from django.db import transaction
from django.test import override_settings

from django_mailkit import EmailMessage, mailers, tasks
from django_mailkit.delivery import deliver_batch
from django_mailkit.models import Attempt, OutboxMessage, Status

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

OUTBOX = "django_mailkit.backends.outbox.EmailBackend"
LOCMEM = "django_mailkit.backends.locmem.EmailBackend"
SCRIPTED = "tests.test_outbox.ScriptedBackend"
MODULE = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"


def settings(transport=LOCMEM, backend="dummy.DummyBackend", **mailkit):
    return override_settings(
        MAILERS={
            "default": {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "transport"}},
            "urgent": {
                "BACKEND": OUTBOX,
                "OPTIONS": {"deliver_using": "transport", "priority": "high"},
            },
            "transport": {"BACKEND": transport},
        },
        TASKS={"default": {"BACKEND": f"{MODULE}.backends.{backend}"}},
        MAILKIT={"USE_TASKS": True, **mailkit},
    )


@pytest.fixture
def dummy():
    """The dummy backend: tasks are kept, never run (the tests run them)."""
    if tasks.task_backends is None:
        pytest.skip("no Tasks framework (django.tasks or django-tasks)")
    from tests.test_outbox import ScriptedBackend

    mail.outbox = []
    ScriptedBackend.script = []
    ScriptedBackend.delivered = []
    with settings():
        backend = tasks.task_backends["default"]
        backend.clear()
        yield backend


def send_each(count, mailer="default", subject="m"):
    """Send ``count`` messages, each in a transaction of its own."""
    for n in range(count):
        with transaction.atomic():
            EmailMessage(
                f"{subject} {n}", "body", "from@example.com", [f"u{n}@example.com"]
            ).send(using=mailer)


def run(result):
    """Run one kept task the way a task worker would."""
    return tasks.deliver_message_now(*result.args)


def subjects():
    return sorted(m.subject for m in mail.outbox)


def sending_runs():
    """Task runs that delivered something: each has a claimant name of its own."""
    return Attempt.objects.values("worker").distinct().count()


def test_messages_committed_together_go_in_tasks_of_the_batch_size(dummy):
    with transaction.atomic():
        mailers.default.send_messages(
            [
                EmailMessage(f"m {n}", "b", "f@example.com", [f"u{n}@example.com"])
                for n in range(45)
            ]
        )
        assert dummy.results == []  # nothing before commit
    ids = list(OutboxMessage.objects.order_by("pk").values_list("pk", flat=True))
    assert [r.args for r in dummy.results] == [ids[:20], ids[20:40], ids[40:]]
    with override_settings(MAILKIT={"USE_TASKS": True, "TASK_BATCH_SIZE": 7}):
        dummy.clear()
        tasks.enqueue_delivery(ids)
        assert [len(r.args) for r in dummy.results] == [7] * 6 + [3]
        assert run(dummy.results[0]) == "sent"
    assert len(mail.outbox) == 7  # its own seven: a full batch, nothing taken


def test_a_task_takes_other_due_messages_priority_first(dummy):
    send_each(30)
    send_each(1, mailer="urgent", subject="urgent")
    first = dummy.results[0]
    assert run(first) == "sent"
    # Its own message, the urgent one, then the oldest others: 20 in all,
    # in one task run.
    assert len(mail.outbox) == 20
    assert "urgent 0" in subjects()
    assert {f"m {n}" for n in range(19)} <= set(subjects())
    assert sending_runs() == 1
    assert OutboxMessage.objects.filter(status=Status.QUEUED).count() == 11


def test_the_tasks_of_taken_messages_find_nothing_to_do(dummy):
    send_each(31)
    outcomes = [run(r) for r in dummy.results]
    # The first task delivers 20, the twenty-first the 11 left; the other
    # 29 find their message sent and do nothing.
    assert outcomes.count("sent") == 2
    assert outcomes.count("not due") == 29
    assert outcomes[0] == outcomes[20] == "sent"
    message_ids = [_message_id(m) for m in mail.outbox]
    assert len(message_ids) == len(set(message_ids)) == 31
    assert subjects() == sorted(f"m {n}" for n in range(31))
    assert sending_runs() == 2
    assert not OutboxMessage.objects.exclude(status=Status.SENT).exists()


def test_a_message_claimed_elsewhere_is_left_to_its_claimant(dummy):
    send_each(5)
    records = list(OutboxMessage.objects.order_by("pk"))
    # A worker has claimed the third message and not sent it yet.
    lease = timedelta(seconds=60)
    held = OutboxMessage.objects.claim(
        "worker:elsewhere", limit=1, lease=lease, ids=[records[2].pk]
    )
    assert [r.pk for r in held] == [records[2].pk]
    # Its own task finds nothing to do; another task takes everything else.
    assert run(dummy.results[2]) == "not due"
    assert run(dummy.results[0]) == "sent"
    assert len(mail.outbox) == 4 and "m 2" not in subjects()
    assert OutboxMessage.objects.get(pk=records[2].pk).status == Status.SENDING
    # The worker's claim still holds: it delivers the message, once.
    result = deliver_batch(held, worker="worker:elsewhere", lease=lease)
    assert result.sent == [records[2].pk]
    assert [run(r) for r in dummy.results] == ["not due"] * 5
    assert subjects() == [f"m {n}" for n in range(5)]


def test_a_taken_message_to_retry_gets_a_deferred_task_of_its_own(dummy):
    from tests.test_outbox import ScriptedBackend

    with settings(transport=SCRIPTED):
        backend = tasks.task_backends["default"]  # the dummy, anew
        send_each(3)
        ScriptedBackend.script = [None, smtplib.SMTPResponseException(451, b"later")]
        enqueued = len(backend.results)
        assert enqueued == 3
        assert run(backend.results[0]) == "sent"
        retries = backend.results[enqueued:]
    second = OutboxMessage.objects.order_by("pk")[1]
    assert (second.status, second.attempts) == (Status.QUEUED, 1)
    assert [(r.args, r.task.run_after) for r in retries] == [
        ([second.pk], second.next_attempt_at)
    ]
    assert len(ScriptedBackend.delivered) == 2


def test_the_immediate_backend_delivers_only_the_messages_of_the_commit():
    if tasks.task_backends is None:
        pytest.skip("no Tasks framework (django.tasks or django-tasks)")
    mail.outbox = []
    with settings(backend="immediate.ImmediateBackend"):
        with override_settings(MAILKIT={"USE_TASKS": False}):
            send_each(3, subject="waiting")
        # The request that commits this one delivers it, and nothing else.
        send_each(1, subject="now")
    assert subjects() == ["now 0"]
    assert OutboxMessage.objects.filter(status=Status.QUEUED).count() == 3


def test_the_messages_a_task_takes_keep_to_the_mailers_rate():
    if tasks.task_backends is None:
        pytest.skip("no Tasks framework (django.tasks or django-tasks)")
    from tests.mailers import outbox_via_smtp
    from tests.smtpserver import SMTPTestServer

    server = SMTPTestServer()
    server.start()
    try:
        with override_settings(
            MAILERS=outbox_via_smtp(server, timeout=5, rate="1/m"),
            TASKS={"default": {"BACKEND": f"{MODULE}.backends.dummy.DummyBackend"}},
            MAILKIT={"USE_TASKS": True, "LEASE_SECONDS": 0.4},
        ):
            backend = tasks.task_backends["default"]
            send_each(3)
            first = backend.results[0]
            # It takes the other two, but the rate lets one message go: they
            # go back to the queue untried and uncharged, as in the worker.
            assert run(first) == "sent"
    finally:
        server.stop()
    assert len(server.deliveries) == 1
    rows = OutboxMessage.objects.order_by("pk").values_list(
        "status", "attempts", "claim_token"
    )
    # Each was claimed once (by this task run); two given back uncharged.
    assert list(rows) == [
        (Status.SENT, 1, 1),
        (Status.QUEUED, 0, 1),
        (Status.QUEUED, 0, 1),
    ]
    assert sending_runs() == 1


def test_the_batch_size_is_a_whole_number():
    from django.core.exceptions import ImproperlyConfigured

    from django_mailkit import conf

    with override_settings(MAILKIT={"TASK_BATCH_SIZE": "20"}):
        with pytest.raises(ImproperlyConfigured, match=r"TASK_BATCH_SIZE'\] must be"):
            conf.task_batch_size()
    with override_settings(MAILKIT={"TASK_BATCH_SIZE": 0}):
        assert conf.task_batch_size() == 1


def _message_id(message):
    return message_from_bytes(message.message().as_bytes())["Message-ID"]


class ReadsFromAReplica:
    """A router that sends every read to a replica (here, one that's absent)."""

    def db_for_read(self, model, **hints):
        return "replica"


def test_a_retry_is_scheduled_from_the_primary_not_a_replica(dummy):
    with settings():
        backend = tasks.task_backends["default"]
        with override_settings(MAILKIT={"USE_TASKS": False}):
            send_each(1)
        record = OutboxMessage.objects.get()
        OutboxMessage.objects.filter(pk=record.pk).update(
            next_attempt_at=record.created_at + timedelta(minutes=5)
        )
        before = len(backend.results)
        # A replica may not have the retry's due time yet: the primary has.
        with override_settings(DATABASE_ROUTERS=[f"{__name__}.ReadsFromAReplica"]):
            tasks._schedule_retry(record.pk)
        (scheduled,) = backend.results[before:]
    assert scheduled.args == [record.pk]
    assert scheduled.task.run_after == record.created_at + timedelta(minutes=5)
