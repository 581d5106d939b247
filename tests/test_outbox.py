"""The outbox: recording, delivery on commit, retries, the worker, commands."""

import email
import email.policy
import io
import smtplib
from datetime import timedelta

import django
import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_mailkit import (
    EmailMessage,
    EmailMultiAlternatives,
    InvalidMailer,
    mailers,
    send_mail,
)
from django_mailkit.backends.base import BaseEmailBackend
from django_mailkit.models import (
    Attempt,
    OutboxMessage,
    Recipient,
    RecipientStatus,
    Status,
)
from django_mailkit.tasks import deliver_message_now
from django_mailkit.worker import Worker

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

OUTBOX = "django_mailkit.backends.outbox.EmailBackend"
LOCMEM = "django_mailkit.backends.locmem.EmailBackend"


class ScriptedBackend(BaseEmailBackend):
    """A transport that fails as told, per message, then succeeds."""

    script: list[BaseException | None] = []
    delivered: list = []

    def deliver(self, message):
        outcome = ScriptedBackend.script.pop(0) if ScriptedBackend.script else None
        if outcome is not None:
            raise outcome
        ScriptedBackend.delivered.append(message)
        return True


def outbox_settings(*, use_tasks=True, transport=LOCMEM, **mailkit):
    return override_settings(
        MAILERS={
            "default": {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "transport"}},
            "transport": {"BACKEND": transport},
            "other": {"BACKEND": LOCMEM},
        },
        MAILKIT={"USE_TASKS": use_tasks, **mailkit},
    )


@pytest.fixture
def outbox():
    mail.outbox = []
    ScriptedBackend.script = []
    ScriptedBackend.delivered = []
    with outbox_settings():
        yield


@pytest.fixture
def queue_only():
    """Queue without delivering: the worker does it (USE_TASKS=False)."""
    mail.outbox = []
    ScriptedBackend.script = []
    ScriptedBackend.delivered = []
    with outbox_settings(
        use_tasks=False, transport="tests.test_outbox.ScriptedBackend"
    ):
        yield


def make_due():
    """Skip the backoff: make every queued message due now."""
    OutboxMessage.objects.queued().update(next_attempt_at=timezone.now())


def drain():
    stats = Worker(once=True, interval=0).run()
    assert stats.errors == 0, "a worker batch failed: see the log"
    return stats


class TestRecording:
    @pytest.mark.parametrize("where", ["subject", "headers"])
    def test_a_nul_in_the_subject_is_stored_for_display_cleaned(
        self, queue_only, where
    ):
        # PostgreSQL's text columns refuse a NUL: the displayed subject is
        # cleaned, the message's bytes carry it as rendered.
        subject, headers = ("a\x00b", None) if where == "subject" else ("s", {})
        if headers is not None:
            headers["Subject"] = "a\x00b"
        EmailMessage(
            subject, "b", "f@example.com", ["t@example.com"], headers=headers
        ).send()
        assert OutboxMessage.objects.get().subject == "a\ufffdb"

    def test_every_message_is_recorded_with_its_bytes(self, queue_only):
        msg = EmailMultiAlternatives(
            "Grüße",
            "Body",
            "Sender <sender@example.com>",
            ["Ann <ann@example.com>"],
            cc=["c@bücher.example"],
            bcc=["hidden@example.com"],
            headers={"Message-ID": "<fixed@example.com>"},
        )
        msg.attach_alternative("<p>Body</p>", "text/html")
        assert msg.send() == 1
        (record,) = OutboxMessage.objects.all()
        assert record.status == Status.QUEUED
        assert (record.queued_via, record.mailer) == ("default", "transport")
        assert record.from_email == "sender@example.com"
        assert record.recipients == [
            "ann@example.com",
            "c@xn--bcher-kva.example",
            "hidden@example.com",
        ]
        assert record.subject == "Grüße"
        assert record.message_id == "<fixed@example.com>"
        parsed = email.message_from_bytes(
            bytes(record.mime), policy=email.policy.default
        )
        assert parsed["Subject"] == "Grüße"
        assert "Bcc" not in parsed and b"hidden@example.com" not in bytes(record.mime)
        assert parsed.get_body(("html",)).get_content().strip() == "<p>Body</p>"
        assert b"\r\n" in bytes(record.mime) and b"\n" not in bytes(
            record.mime
        ).replace(b"\r\n", b"")
        assert [(r.address, r.status) for r in record.recipient_set.all()] == [
            (a, RecipientStatus.PENDING) for a in record.recipients
        ]

    def test_send_messages_returns_how_many_were_queued(self, queue_only):
        messages = [
            EmailMessage(f"m{i}", "b", None, [f"u{i}@example.com"]) for i in range(3)
        ]
        messages.append(EmailMessage("nobody", "b", None, []))
        assert mailers.default.send_messages(messages) == 3
        assert OutboxMessage.objects.count() == 3

    def test_duplicate_recipients_are_addressed_once(self, queue_only):
        EmailMessage("s", "b", None, ["a@example.com"], cc=["a@example.com"]).send()
        assert OutboxMessage.objects.get().recipients == ["a@example.com"]

    def test_bad_input_fails_at_send_and_stores_nothing(self, queue_only):
        with pytest.raises(ValueError, match="'Subject'"):
            send_mail("Hi\nBcc: x@example.com", "b", None, ["a@example.com"])
        with pytest.raises(ValueError, match="Invalid address"):
            send_mail("s", "b", None, ["not an address <<"])
        assert OutboxMessage.objects.count() == 0

    def test_deliver_using_is_required(self):
        with override_settings(MAILERS={"default": {"BACKEND": OUTBOX}}):
            with pytest.raises(
                InvalidMailer, match=r"\['deliver_using'\]: is required"
            ):
                mailers.default

    def test_djangos_own_messages_are_recorded(self, queue_only):
        from django.core.mail import EmailMessage as DjangoEmailMessage

        mailers.default.send_messages(
            [DjangoEmailMessage("django", "b", None, ["a@example.com"])]
        )
        assert OutboxMessage.objects.get().subject == "django"


class TestDeliveryOnCommit:
    def test_commit_delivers_exactly_once(self, outbox):
        with transaction.atomic():
            send_mail("committed", "b", None, ["a@example.com"])
            assert mail.outbox == []  # not before commit
        assert [m.subject for m in mail.outbox] == ["committed"]
        assert mail.outbox[0].sent_using == "transport"
        record = OutboxMessage.objects.get()
        assert record.status == Status.SENT and record.sent_at is not None
        assert record.attempts == 1
        # Running the task again, or a worker, does not send it again.
        assert deliver_message_now(record.pk) == "not due"
        assert drain().handled == 0
        assert len(mail.outbox) == 1

    def test_rollback_sends_nothing(self, outbox):
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                send_mail("rolled back", "b", None, ["a@example.com"])
                raise RuntimeError("abort")
        assert mail.outbox == []
        assert OutboxMessage.objects.count() == 0

    def test_outside_a_transaction_delivers_at_once(self, outbox):
        send_mail("autocommit", "b", None, ["a@example.com"])
        assert [m.subject for m in mail.outbox] == ["autocommit"]

    def test_transport_gets_the_stored_message(self, outbox):
        msg = EmailMessage(
            "s", "body text", "f@example.com", ["a@example.com"], bcc=["b@example.com"]
        )
        msg.send()
        (delivered,) = mail.outbox
        assert delivered.recipients() == ["a@example.com", "b@example.com"]
        assert delivered.to == ["a@example.com"]
        assert delivered.body.strip() == "body text"
        record = OutboxMessage.objects.get()
        assert delivered.message().as_bytes(policy=email.policy.SMTP) == bytes(
            record.mime
        )


class TestRetries:
    def test_temporary_failure_is_retried_then_sent(self, queue_only):
        ScriptedBackend.script = [smtplib.SMTPResponseException(451, b"try later")]
        send_mail("s", "b", None, ["a@example.com"])
        assert drain().retry == 1
        record = OutboxMessage.objects.get()
        assert record.status == Status.QUEUED and "451 try later" in record.last_error
        assert record.next_attempt_at > timezone.now()
        assert drain().handled == 0  # backing off
        make_due()
        assert drain().sent == 1
        record.refresh_from_db()
        assert record.status == Status.SENT and record.attempts == 2
        assert [
            (a.number, a.outcome, a.smtp_code) for a in record.attempt_set.all()
        ] == [
            (1, "retry", 451),
            (2, "sent", None),
        ]

    def test_backoff_defers_the_next_attempt(self, queue_only):
        ScriptedBackend.script = [ConnectionRefusedError("refused")]
        with override_settings(MAILKIT={"USE_TASKS": False, "BACKOFF_BASE": 600}):
            send_mail("s", "b", None, ["a@example.com"])
            drain()
            record = OutboxMessage.objects.get()
            assert record.next_attempt_at > timezone.now() + timedelta(seconds=250)
            assert drain().handled == 0  # not due yet
        assert ScriptedBackend.delivered == []

    def test_permanent_failure(self, queue_only):
        ScriptedBackend.script = [smtplib.SMTPResponseException(554, b"no thanks")]
        send_mail("s", "b", None, ["a@example.com"])
        assert drain().failed == 1
        record = OutboxMessage.objects.get()
        assert record.status == Status.FAILED
        assert "554 no thanks" in record.last_error
        assert record.recipient_set.get().status == RecipientStatus.FAILED

    def test_gives_up_after_max_attempts(self, queue_only):
        ScriptedBackend.script = [TimeoutError("timed out")] * 3
        with override_settings(MAILKIT={"USE_TASKS": False, "MAX_ATTEMPTS": 3}):
            send_mail("s", "b", None, ["a@example.com"])
            outcomes = []
            for _ in range(4):
                stats = drain()
                outcomes.append((stats.retry, stats.failed))
                make_due()
        record = OutboxMessage.objects.get()
        assert outcomes == [(1, 0), (1, 0), (0, 1), (0, 0)]
        assert record.status == Status.FAILED and record.attempts == 3
        assert "TimeoutError" in record.last_error
        assert ScriptedBackend.delivered == []

    def test_unexpected_errors_fail_the_message_without_blocking_the_queue(
        self, queue_only
    ):
        ScriptedBackend.script = [ValueError("cannot handle this one"), None]
        send_mail("bad", "b", None, ["a@example.com"])
        send_mail("good", "b", None, ["b@example.com"])
        stats = drain()
        assert (stats.failed, stats.sent) == (1, 1)
        bad = OutboxMessage.objects.get(subject="bad")
        assert (
            bad.status == Status.FAILED and "cannot handle this one" in bad.last_error
        )
        assert [m.subject for m in ScriptedBackend.delivered] == ["good"]

    def test_misconfigured_transport_retries(self, queue_only):
        with override_settings(
            MAILERS={
                "default": {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "missing"}},
            }
        ):
            send_mail("s", "b", None, ["a@example.com"])
            assert drain().retry == 1
        assert "missing" in OutboxMessage.objects.get().last_error


class TestClaims:
    def queue(self, n=3):
        for i in range(n):
            send_mail(f"m{i}", "b", None, [f"u{i}@example.com"])

    def test_claims_never_overlap(self, queue_only):
        self.queue(5)
        lease = timedelta(minutes=5)
        first = OutboxMessage.objects.claim("w1", limit=3, lease=lease)
        second = OutboxMessage.objects.claim("w2", limit=3, lease=lease)
        assert len(first) == 3 and len(second) == 2
        assert not {m.pk for m in first} & {m.pk for m in second}
        assert OutboxMessage.objects.claim("w3", limit=3, lease=lease) == []
        # Claimed with a fresh token; no attempt is counted before it starts.
        assert all(
            m.status == Status.SENDING and m.attempts == 0 and m.claim_token == 1
            for m in first
        )

    def test_oldest_due_first(self, queue_only):
        self.queue(3)
        later = OutboxMessage.objects.get(subject="m0")
        OutboxMessage.objects.filter(pk=later.pk).update(
            next_attempt_at=timezone.now() - timedelta(seconds=1)
        )
        OutboxMessage.objects.exclude(pk=later.pk).update(
            next_attempt_at=timezone.now() - timedelta(seconds=10)
        )
        claimed = OutboxMessage.objects.claim("w", limit=3, lease=timedelta(minutes=1))
        assert claimed[-1].pk == later.pk

    def test_expired_lease_is_recovered(self, queue_only):
        self.queue(1)
        (claimed,) = OutboxMessage.objects.claim(
            "crashed", limit=1, lease=timedelta(minutes=1)
        )
        assert drain().handled == 0  # leased to the crashed worker
        OutboxMessage.objects.filter(pk=claimed.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        stats = drain()
        assert (stats.recovered, stats.sent) == (1, 1)
        assert len(ScriptedBackend.delivered) == 1

    def test_a_worker_that_lost_its_lease_cannot_write(self, queue_only):
        self.queue(1)
        (claimed,) = OutboxMessage.objects.claim(
            "slow", limit=1, lease=timedelta(minutes=1)
        )
        OutboxMessage.objects.filter(pk=claimed.pk).update(
            status=Status.QUEUED, claimed_by="", lease_expires_at=None
        )
        (reclaimed,) = OutboxMessage.objects.claim(
            "fast", limit=1, lease=timedelta(minutes=1)
        )
        assert claimed.finish(Status.SENT) is False
        assert reclaimed.finish(Status.SENT) is True

    def test_cancel_and_requeue(self, queue_only):
        self.queue(2)
        first, second = OutboxMessage.objects.order_by("id")
        assert first.cancel() is True
        assert first.cancel() is False
        assert first.requeue() is False  # cancelled, not failed
        ScriptedBackend.script = [smtplib.SMTPResponseException(550, b"no such user")]
        drain()
        second.refresh_from_db()
        assert second.status == Status.FAILED
        assert second.requeue() is True
        assert second.recipient_set.get().status == RecipientStatus.PENDING
        assert drain().sent == 1
        second.refresh_from_db()
        assert (second.status, second.attempts) == (Status.SENT, 2)
        assert [m.subject for m in ScriptedBackend.delivered] == ["m1"]


class TestWorker:
    def test_max_messages_and_batch_size(self, queue_only):
        for i in range(7):
            send_mail(f"m{i}", "b", None, ["a@example.com"])
        stats = Worker(batch_size=2, max_messages=5, interval=0).run()
        assert stats.sent == 5 and stats.batches == 3
        assert OutboxMessage.objects.queued().count() == 2

    def test_using_only_that_mailer(self, queue_only):
        send_mail("t", "b", None, ["a@example.com"])
        OutboxMessage.objects.update(mailer="other")
        send_mail("u", "b", None, ["a@example.com"])
        assert Worker(mailer="other", once=True).run().sent == 1
        assert OutboxMessage.objects.get(status=Status.QUEUED).subject == "u"
        assert [m.subject for m in mail.outbox] == ["t"]

    def test_stop_releases_the_rest_of_the_batch(self, queue_only):
        for i in range(4):
            send_mail(f"m{i}", "b", None, ["a@example.com"])
        worker = Worker(batch_size=4, once=True)
        with override_settings(
            MAILERS={
                "default": {
                    "BACKEND": OUTBOX,
                    "OPTIONS": {"deliver_using": "transport"},
                },
                "transport": {"BACKEND": "tests.test_outbox.StopAfterFirstBackend"},
            }
        ):
            StopAfterFirstBackend.worker = worker
            stats = worker.run()
        assert stats.sent == 1
        released = OutboxMessage.objects.filter(status=Status.QUEUED)
        assert released.count() == 3
        assert all(m.attempts == 0 and m.claimed_by == "" for m in released)

    def test_management_command(self, queue_only):
        send_mail("s", "b", None, ["a@example.com"])
        out = io.StringIO()
        call_command("mailkit_worker", "--once", "--interval", "0", stdout=out)
        assert "1 sent" in out.getvalue()
        assert OutboxMessage.objects.get().status == Status.SENT


class StopAfterFirstBackend(BaseEmailBackend):
    worker = None

    def deliver(self, message):
        type(self).worker.request_stop()
        return True


class TestOutboxCommand:
    def test_list_show(self, queue_only):
        send_mail("Hello list", "b", None, ["a@example.com"])
        out = io.StringIO()
        call_command("mailkit_outbox", "list", stdout=out)
        assert "Hello list" in out.getvalue() and "queued" in out.getvalue()
        ScriptedBackend.script = [
            smtplib.SMTPResponseException(550, b"5.1.1 unknown user")
        ]
        drain()
        record = OutboxMessage.objects.get()
        out = io.StringIO()
        call_command("mailkit_outbox", "show", str(record.pk), stdout=out)
        text = out.getvalue()
        assert "Status:     failed after 1 attempt(s)" in text
        assert "a@example.com: failed 550 5.1.1 unknown user" in text
        assert "#1" in text and "550" in text
        out = io.StringIO()
        call_command("mailkit_outbox", "list", "--status", "sent", stdout=out)
        assert out.getvalue() == ""
        with pytest.raises(CommandError, match="No outbox message with id 999999"):
            call_command("mailkit_outbox", "show", "999999")

    def test_requeue_and_cancel(self, queue_only):
        send_mail("a", "b", None, ["a@example.com"])
        send_mail("b", "b", None, ["b@example.com"])
        ScriptedBackend.script = [smtplib.SMTPResponseException(550, b"no")]
        Worker(once=True, max_messages=1).run()
        failed = OutboxMessage.objects.get(status=Status.FAILED)
        queued = OutboxMessage.objects.get(status=Status.QUEUED)
        out = io.StringIO()
        call_command("mailkit_outbox", "requeue", "--all-failed", stdout=out)
        assert "Requeued 1" in out.getvalue()
        failed.refresh_from_db()
        assert failed.status == Status.QUEUED
        call_command("mailkit_outbox", "cancel", str(queued.pk), stdout=io.StringIO())
        queued.refresh_from_db()
        assert queued.status == Status.CANCELLED
        with pytest.raises(CommandError, match="not cancelled"):
            call_command(
                "mailkit_outbox", "cancel", str(queued.pk), stdout=io.StringIO()
            )

    def test_purge(self, queue_only):
        for subject in ("old sent", "old queued", "new sent"):
            send_mail(subject, "b", None, ["a@example.com"])
        OutboxMessage.objects.filter(subject__startswith="old").update(
            created_at=timezone.now() - timedelta(days=40)
        )
        OutboxMessage.objects.exclude(subject="old queued").update(status=Status.SENT)
        out = io.StringIO()
        call_command(
            "mailkit_outbox", "purge", "--older-than", "30", "--dry-run", stdout=out
        )
        assert "Would delete 1 message(s) older than 30 days (1 sent)" in out.getvalue()
        assert OutboxMessage.objects.count() == 3
        call_command(
            "mailkit_outbox", "purge", "--older-than", "30", stdout=io.StringIO()
        )
        assert sorted(OutboxMessage.objects.values_list("subject", flat=True)) == [
            "new sent",
            "old queued",  # never purged: still to be delivered
        ]
        assert Recipient.objects.count() == 2 and Attempt.objects.count() == 0


class TestTasksFramework:
    """Delivery goes through Django's Tasks framework, carrying only the pk."""

    @pytest.fixture
    def dummy_tasks(self):
        tasks = pytest.importorskip("django_mailkit.tasks")
        if tasks.task_backends is None:
            pytest.skip("no Tasks framework (django.tasks or django-tasks)")
        module = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
        with override_settings(
            TASKS={"default": {"BACKEND": f"{module}.backends.dummy.DummyBackend"}}
        ):
            backend = tasks.task_backends["default"]
            backend.clear()
            yield backend

    def test_one_task_per_message_enqueued_on_commit(self, dummy_tasks):
        mail.outbox = []
        with outbox_settings():
            with transaction.atomic():
                send_mail("a", "b", None, ["a@example.com"])
                send_mail("b", "b", None, ["b@example.com"])
                assert dummy_tasks.results == []  # nothing before commit
        ids = sorted(OutboxMessage.objects.values_list("pk", flat=True))
        assert sorted(r.args[0] for r in dummy_tasks.results) == ids
        assert all(
            r.args == [r.args[0]] and r.kwargs == {} for r in dummy_tasks.results
        )
        assert {r.task.name for r in dummy_tasks.results} == {"deliver_message"}
        # The dummy backend runs nothing: the messages wait, queued.
        assert mail.outbox == []
        assert OutboxMessage.objects.filter(status=Status.QUEUED).count() == 2

    def test_rollback_enqueues_nothing(self, dummy_tasks):
        with outbox_settings():
            with pytest.raises(RuntimeError):
                with transaction.atomic():
                    send_mail("a", "b", None, ["a@example.com"])
                    raise RuntimeError
        assert dummy_tasks.results == []


def test_requeue_all_failed_says_it_includes_partially_sent(queue_only):
    send_mail("a", "b", None, ["a@example.com"])
    send_mail("b", "b", None, ["ok@example.com", "no@example.com"])
    failed, partial = OutboxMessage.objects.order_by("pk")
    failed_at = {"status": RecipientStatus.FAILED, "smtp_code": 550}
    OutboxMessage.objects.filter(pk=failed.pk).update(status=Status.FAILED)
    failed.recipient_set.update(**failed_at)
    OutboxMessage.objects.filter(pk=partial.pk).update(status=Status.PARTIAL)
    partial.recipient_set.filter(address="ok@example.com").update(
        status=RecipientStatus.SENT, smtp_code=250
    )
    partial.recipient_set.filter(address="no@example.com").update(**failed_at)
    out = io.StringIO()
    call_command("mailkit_outbox", "requeue", "--all-failed", stdout=out)
    assert out.getvalue() == (
        "Requeued 2 message(s): 1 failed, 1 partially sent (only the "
        "recipients that did not accept it are retried).\n"
    )
    statuses = dict(partial.recipient_set.values_list("address", "status"))
    assert statuses == {
        "ok@example.com": RecipientStatus.SENT,
        "no@example.com": RecipientStatus.PENDING,
    }
