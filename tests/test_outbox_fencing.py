"""
Fencing, claim races, crash accounting and SIGTERM, in-process (SQLite and
PostgreSQL): each test fails in seconds when its guarantee is broken.
"""

import os
import signal
from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_mailkit import send_mail
from django_mailkit.backends.base import BaseEmailBackend
from django_mailkit.delivery import Result, deliver_batch
from django_mailkit.models import (
    Attempt,
    AttemptRecord,
    OutboxMessage,
    RecipientStatus,
    Status,
)
from django_mailkit.worker import Worker

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

OUTBOX = "django_mailkit.backends.outbox.EmailBackend"
LEASE = timedelta(minutes=1)


class HookBackend(BaseEmailBackend):
    """A transport that runs ``hook(message)`` while it "sends" a message."""

    hook = None
    delivered: list = []

    def deliver(self, message):
        if HookBackend.hook is not None:
            HookBackend.hook(message)
        HookBackend.delivered.append(message)
        return True


@pytest.fixture
def outbox():
    mail.outbox = []
    HookBackend.hook = None
    HookBackend.delivered = []
    with override_settings(
        MAILERS={
            "default": {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "transport"}},
            "transport": {"BACKEND": "tests.test_outbox_fencing.HookBackend"},
        },
        MAILKIT={"USE_TASKS": False, "BACKOFF_BASE": 1, "BACKOFF_CAP": 2},
    ):
        yield


def queue(count):
    for i in range(count):
        send_mail(f"m{i}", "body", None, [f"u{i}@example.com"])
    return list(OutboxMessage.objects.order_by("pk"))


def take_over(pk, by="other"):
    """What happens when a worker's lease runs out: another takes the message."""
    OutboxMessage.objects.filter(pk=pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert OutboxMessage.objects.recover_expired() == 1
    (claimed,) = OutboxMessage.objects.claim(by, limit=1, lease=LEASE, ids=[pk])
    return claimed


def run_worker_command(*args):
    """``mailkit_worker`` in this process, its signal handlers undone after."""
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        call_command("mailkit_worker", *args)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def snapshot(pk):
    message = OutboxMessage.objects.filter(pk=pk).values().get()
    recipients = list(
        OutboxMessage.objects.get(pk=pk).recipient_set.values_list(
            "address", "status", "smtp_code"
        )
    )
    attempts = list(Attempt.objects.filter(message_id=pk).values())
    return message, recipients, attempts


class TestFencing:
    def test_taken_over_between_claim_and_send_sends_nothing(self, outbox):
        (record,) = queue(1)
        (mine,) = OutboxMessage.objects.claim("slow", limit=1, lease=LEASE)
        # The slow worker pauses past its lease; another worker takes over.
        theirs = take_over(record.pk)
        before = snapshot(record.pk)
        result = deliver_batch([mine], worker="slow", lease=LEASE)
        assert result.of(record.pk) is Result.LEASE_LOST
        assert HookBackend.delivered == []  # checked before sending
        assert snapshot(record.pk) == before
        # The new holder's claim is intact and completes.
        assert deliver_batch([theirs], worker="other").of(record.pk) is Result.SENT

    def test_late_writer_changes_nothing(self, outbox):
        """Taken over while sending: the first worker's record is not written."""
        (record,) = queue(1)
        (mine,) = OutboxMessage.objects.claim("slow", limit=1, lease=LEASE)
        state = {}

        def paused_while_sending(message):
            # The new holder takes the message over, sends and records it.
            theirs = take_over(record.pk)
            HookBackend.hook = None
            assert deliver_batch([theirs], worker="other").of(record.pk) is (
                Result.SENT
            )
            state["after_other"] = snapshot(record.pk)

        HookBackend.hook = paused_while_sending
        result = deliver_batch([mine], worker="slow", lease=LEASE)
        assert result.of(record.pk) is Result.LEASE_LOST
        message, recipients, attempts = snapshot(record.pk)
        assert (message, recipients, attempts) == state["after_other"]
        assert [a["worker"] for a in attempts] == ["other"]
        assert message["status"] == Status.SENT
        assert message["claimed_by"] == "other"

    def test_the_next_message_taken_over_meanwhile_is_not_sent(self, outbox):
        """One message at a time: the record of one also begins the next, fenced."""
        first, second = queue(2)
        claimed = OutboxMessage.objects.claim("slow", limit=2, lease=LEASE)

        taken = {}

        def second_taken_over(message):
            HookBackend.hook = None
            take_over(second.pk)
            taken["state"] = snapshot(second.pk)

        HookBackend.hook = second_taken_over
        with override_settings(MAILKIT={"USE_TASKS": False, "RECORD_GROUP_SIZE": 1}):
            result = deliver_batch(claimed, worker="slow", lease=LEASE)
        assert result.of(first.pk) is Result.SENT
        assert result.of(second.pk) is Result.LEASE_LOST
        assert [m.subject for m in HookBackend.delivered] == ["m0"]
        assert snapshot(second.pk) == taken["state"]

    def test_paused_past_its_lease_inside_a_group(self, outbox, monkeypatch):
        """
        A group is begun together; a worker paused past its lease while
        sending the group's first message finds out before sending the next
        (its lease is more than half spent, and the renewal is fenced).
        """
        first, second, third = queue(3)
        claimed = OutboxMessage.objects.claim("slow", limit=3, lease=LEASE)
        taken = {}
        real_now = timezone.now

        def paused(message):
            HookBackend.hook = None
            # The lease ran out while it was paused: another worker took
            # the rest of its group over.
            take_over(second.pk)
            take_over(third.pk)
            taken["state"] = snapshot(second.pk), snapshot(third.pk)
            monkeypatch.setattr(timezone, "now", lambda: real_now() + LEASE)

        HookBackend.hook = paused
        result = deliver_batch(claimed, worker="slow", lease=LEASE)
        monkeypatch.setattr(timezone, "now", real_now)
        assert result.of(first.pk) is Result.SENT
        assert result.of(second.pk) is Result.LEASE_LOST
        assert result.of(third.pk) is Result.LEASE_LOST
        assert [m.subject for m in HookBackend.delivered] == ["m0"]
        assert (snapshot(second.pk), snapshot(third.pk)) == taken["state"]
        assert OutboxMessage.objects.get(pk=first.pk).status == Status.SENT

    def test_every_worker_write_is_fenced(self, outbox):
        (record,) = queue(1)
        (mine,) = OutboxMessage.objects.claim("slow", limit=1, lease=LEASE)
        take_over(record.pk)
        before = snapshot(record.pk)
        assert mine.begin_attempt(LEASE) is False
        assert mine.renew_lease(LEASE) is False
        assert mine.release() is False
        assert mine.finish(Status.SENT) is False
        assert mine.retry_later(error="x") is False
        assert snapshot(record.pk) == before

    def test_a_recovered_lease_fences_even_before_anyone_reclaims(self, outbox):
        (record,) = queue(1)
        (mine,) = OutboxMessage.objects.claim("slow", limit=1, lease=LEASE)
        OutboxMessage.objects.filter(pk=record.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert OutboxMessage.objects.recover_expired() == 1
        assert mine.finish(Status.SENT) is False
        assert OutboxMessage.objects.get(pk=record.pk).status == Status.QUEUED


class TestClaimRace:
    def test_a_candidate_claimed_in_between_is_not_taken(self, outbox):
        """
        Another worker claims the candidates after this claim selected them
        and before its UPDATE: the UPDATE's status condition must skip them.
        """
        queue(3)
        fired = []

        def other_worker_claims_first(execute, sql, params, many, context):
            result = execute(sql, params, many, context)
            if not fired and sql.lstrip().upper().startswith("SELECT"):
                fired.append(sql)
                # The other worker's claim lands right after our candidate
                # query. (On PostgreSQL our row locks forbid that from
                # another connection, so our own connection writes it: the
                # status condition is what's under test.)
                OutboxMessage.objects.filter(pk__in=list(_ids())).update(
                    status=Status.SENDING,
                    claimed_by="other",
                    claim_token=7,
                    lease_expires_at=timezone.now() + LEASE,
                )
            return result

        with connection.execute_wrapper(other_worker_claims_first):
            claimed = OutboxMessage.objects.claim("me", limit=3, lease=LEASE)
        assert fired, "the claim's candidate query was not seen"
        assert claimed == []
        assert set(OutboxMessage.objects.values_list("claimed_by", flat=True)) == {
            "other"
        }
        assert set(OutboxMessage.objects.values_list("claim_token", flat=True)) == {7}


def _ids():
    return OutboxMessage.objects.values_list("pk", flat=True)


class Died(BaseException):
    """A worker process dying mid-send: nothing after it runs, or is written."""


def expire_and_recover():
    OutboxMessage.objects.filter(status=Status.SENDING).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    return OutboxMessage.objects.recover_expired()


def crash_on(subject):
    """Every send of ``subject`` kills its worker."""

    def hook(message):
        if message.subject == subject:
            raise Died(subject)

    return hook


def run_until_done(rounds=10):
    """Claim and deliver until nothing is left, recovering from each death."""
    deaths = 0
    for _ in range(rounds):
        claimed = OutboxMessage.objects.claim("w", limit=10, lease=LEASE)
        if not claimed:
            return deaths
        try:
            deliver_batch(claimed, worker="w", lease=LEASE)
        except Died:
            deaths += 1
            expire_and_recover()
    raise AssertionError("still delivering")


def numbers(pk):
    return list(
        Attempt.objects.filter(message_id=pk)
        .order_by("number")
        .values_list("number", flat=True)
    )


class TestCrashAccounting:
    def test_recovered_untried_messages_keep_their_attempts(self, outbox):
        queue(5)
        claimed = OutboxMessage.objects.claim("crashed", limit=5, lease=LEASE)
        # It got as far as starting the first message alone, then died.
        assert claimed[0].begin_attempt(LEASE) is True
        assert expire_and_recover() == 5
        rows = OutboxMessage.objects.values_list("pk", "attempts", "recoveries")
        assert sorted(rows) == [(m.pk, 1 if m is claimed[0] else 0, 1) for m in claimed]
        assert Worker(once=True, interval=0).run().sent == 5
        attempts = dict(OutboxMessage.objects.values_list("pk", "attempts"))
        assert attempts == {m.pk: (2 if m is claimed[0] else 1) for m in claimed}

    def test_a_crash_inside_a_group_charges_nobody(self, outbox):
        """
        The worker dies sending the third message of a group, two of which
        the server accepted: the database can't know which one was on the
        wire, so nobody is charged; each is then sent alone, charged once.
        """
        queue(5)
        claimed = OutboxMessage.objects.claim("crashed", limit=5, lease=LEASE)
        HookBackend.hook = crash_on("m2")
        with pytest.raises(Died):
            deliver_batch(claimed, worker="crashed", lease=LEASE)
        assert [m.subject for m in HookBackend.delivered] == ["m0", "m1"]
        assert expire_and_recover() == 5
        rows = OutboxMessage.objects.values_list("status", "attempts", "recoveries")
        assert list(rows) == [(Status.QUEUED, 0, 1)] * 5
        assert not Attempt.objects.exists()

        HookBackend.hook = None
        loaded = []
        HookBackend.hook = lambda message: loaded.append(
            sum("mime" in m.__dict__ for m in again)
        )
        again = OutboxMessage.objects.claim("rescuer", limit=5, lease=LEASE)
        assert len(deliver_batch(again, worker="rescuer", lease=LEASE).sent) == 5
        assert loaded == [1] * 5  # each alone
        for message in OutboxMessage.objects.all():
            assert (message.status, message.attempts) == (Status.SENT, 1)
            assert numbers(message.pk) == [1]

    def test_a_message_that_kills_its_worker_spends_its_own_budget(self, outbox):
        """
        One uncharged try in a group, then alone until its own budget is
        spent; then recovery fails it, with its recipient, saying why. The
        others are sent, each charged once.
        """
        first, killer, last = queue(3)
        HookBackend.hook = crash_on("m1")
        with override_settings(MAILKIT={"USE_TASKS": False, "MAX_ATTEMPTS": 2}):
            # In the group; then alone, charged: 1, then 2 = spent.
            assert run_until_done() == 3
        killer = OutboxMessage.objects.get(pk=killer.pk)
        assert (killer.status, killer.attempts, killer.recoveries) == (
            Status.FAILED,
            2,
            3,
        )
        assert "stopped (died, or stalled past its lease)" in killer.last_error
        assert "3 times" in killer.last_error
        assert (killer.claimed_by, killer.lease_expires_at) == ("", None)
        (recipient,) = killer.recipient_set.all()
        assert recipient.status == RecipientStatus.FAILED
        assert recipient.smtp_reply == killer.last_error
        # Its two charged attempts, each cut short: recorded by recovery.
        assert list(killer.attempt_set.values_list("number", "outcome", "worker")) == [
            (n, Attempt.Outcome.INTERRUPTED, "w") for n in (1, 2)
        ]
        for pk in (first.pk, last.pk):
            message = OutboxMessage.objects.get(pk=pk)
            assert (message.status, message.attempts) == (Status.SENT, 1)
            assert numbers(pk) == [1]
        assert [m.subject for m in HookBackend.delivered].count("m0") == 2

    def test_an_attempt_begun_alone_and_cut_short_is_recorded(self, outbox):
        """
        The worker died sending a message alone (charged by begin_attempt()):
        recovery writes that attempt's row, and none for the untried ones.
        """
        queue(3)
        claimed = OutboxMessage.objects.claim("crashed", limit=3, lease=LEASE)
        assert claimed[0].begin_attempt(LEASE) is True
        begun = OutboxMessage.objects.get(pk=claimed[0].pk).updated_at
        before = timezone.now()
        assert expire_and_recover() == 3
        (row,) = Attempt.objects.all()
        assert (row.message_id, row.number, row.outcome, row.worker) == (
            claimed[0].pk,
            1,
            Attempt.Outcome.INTERRUPTED,
            "crashed",
        )
        assert row.started_at == begun
        assert before <= row.finished_at <= timezone.now()
        assert "may or may not have received" in row.error
        assert (row.smtp_code, row.smtp_reply, row.recipients) == (None, "", {})
        # Another recovery pass finds nothing: no second row.
        assert OutboxMessage.objects.recover_expired() == 0
        assert Attempt.objects.count() == 1
        # Sent afterwards: every message has as many rows as attempts.
        assert Worker(once=True, interval=0).run().sent == 3
        for message in OutboxMessage.objects.all():
            assert message.attempt_set.count() == message.attempts
        assert numbers(claimed[0].pk) == [1, 2]
        assert Attempt.objects.get(message_id=claimed[0].pk, number=2).outcome == (
            Attempt.Outcome.SENT
        )

    def test_recovering_nothing_writes_nothing(self, outbox, django_assert_num_queries):
        queue(2)
        claimed = OutboxMessage.objects.claim("alive", limit=2, lease=LEASE)
        assert claimed[0].begin_attempt(LEASE) is True
        with django_assert_num_queries(1):
            assert OutboxMessage.objects.recover_expired() == 0
        assert not Attempt.objects.exists()
        assert OutboxMessage.objects.get(pk=claimed[0].pk).attempts == 1

    def test_a_paused_worker_back_adds_or_removes_nothing(self, outbox):
        """
        Back after recovery, its record matches nothing: the INTERRUPTED row
        stays the only one. Back before recovery (its lease renewed), there
        is nothing to recover and no row is written.
        """
        first, second = queue(2)
        (mine,) = OutboxMessage.objects.claim("paused", limit=1, lease=LEASE)
        assert mine.begin_attempt(LEASE) is True
        assert expire_and_recover() == 1
        before = snapshot(mine.pk)
        now = timezone.now()
        sent = AttemptRecord(
            outcome=Attempt.Outcome.SENT,
            worker="paused",
            started_at=now,
            finished_at=now,
            replies={"u0@example.com": (250, "ok")},
            recipients={"u0@example.com": (RecipientStatus.SENT, 250, "ok")},
        )
        assert mine.record_attempt(sent) is False
        assert mine.release(begun=True) is False
        assert snapshot(mine.pk) == before
        assert [a["outcome"] for a in before[2]] == [Attempt.Outcome.INTERRUPTED]

        (other,) = OutboxMessage.objects.claim(
            "slow", limit=1, lease=LEASE, ids=[second.pk]
        )
        assert other.begin_attempt(LEASE) is True
        OutboxMessage.objects.filter(pk=second.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert other.renew_lease(LEASE) is True  # back in time
        assert OutboxMessage.objects.recover_expired() == 0
        assert numbers(second.pk) == []
        assert other.record_attempt(sent) is True
        assert numbers(second.pk) == [1]

    def test_beginning_a_group_writes_nothing_and_is_fenced(self, outbox):
        first, second, third = queue(3)
        claimed = OutboxMessage.objects.claim("w", limit=3, lease=LEASE)
        take_over(third.pk)
        before = [snapshot(m.pk) for m in claimed]
        assert OutboxMessage.objects.load_group(claimed) == {first.pk, second.pk}
        assert [snapshot(m.pk) for m in claimed] == before  # a read
        assert [m.attempts for m in claimed] == [1, 1, 0]  # counted in memory
        assert b"Subject: m1" in claimed[1].__dict__["mime"]
        assert "mime" not in claimed[2].__dict__
        # The count is written with the outcome, as the Attempt's number.
        now = timezone.now()
        sent = AttemptRecord(
            outcome=Attempt.Outcome.SENT,
            worker="w",
            started_at=now,
            finished_at=now,
            replies={"u0@example.com": (250, "ok")},
            recipients={"u0@example.com": (RecipientStatus.SENT, 250, "ok")},
        )
        assert claimed[0].record_attempt(sent) is True
        assert OutboxMessage.objects.get(pk=first.pk).attempts == 1
        assert numbers(first.pk) == [1]
        assert OutboxMessage.objects.get(pk=second.pk).attempts == 0

    def test_spent_at_recovery_after_delivering_to_some_is_partial(self, outbox):
        send_mail("s", "body", None, ["a@example.com", "b@example.com"])
        (mine,) = OutboxMessage.objects.claim("crashed", limit=1, lease=LEASE)
        # An earlier attempt delivered to a@ and deferred b@; the budget is
        # spent by the attempt the worker died in.
        mine.recipient_set.filter(address="a@example.com").update(
            status=RecipientStatus.SENT, smtp_code=250
        )
        mine.recipient_set.filter(address="b@example.com").update(
            status=RecipientStatus.DEFERRED, smtp_code=451, smtp_reply="try later"
        )
        OutboxMessage.objects.filter(pk=mine.pk).update(attempts=5)
        assert expire_and_recover() == 1
        message = OutboxMessage.objects.get(pk=mine.pk)
        assert (message.status, message.recoveries) == (Status.PARTIAL, 1)
        assert "stopped" in message.last_error and "once" in message.last_error
        assert message.sent_at is not None
        assert sorted(
            message.recipient_set.values_list("address", "status", "smtp_reply")
        ) == [
            ("a@example.com", RecipientStatus.SENT, ""),
            ("b@example.com", RecipientStatus.FAILED, "try later"),
        ]
        # The paused worker, back, can't write (the token moved on).
        before = snapshot(mine.pk)
        assert mine.finish(Status.SENT) is False
        assert snapshot(mine.pk) == before
        assert expire_and_recover() == 0


class TestStopping:
    def test_a_message_begun_but_not_sent_is_released_uncharged(self, outbox):
        queue(3)
        claimed = OutboxMessage.objects.claim("w", limit=3, lease=LEASE)
        answers = iter([False, False])  # message 1, and whether to go on

        result = deliver_batch(
            claimed, worker="w", lease=LEASE, should_stop=lambda: next(answers, True)
        )
        assert len(result.sent) == 1 and len(result.skipped) == 2
        rows = list(
            OutboxMessage.objects.order_by("pk").values_list("status", "attempts")
        )
        assert rows == [(Status.SENT, 1), (Status.QUEUED, 0), (Status.QUEUED, 0)]


class TestMemory:
    def test_claim_leaves_the_bytes_in_the_database(self, outbox):
        queue(2)
        claimed = OutboxMessage.objects.claim("w", limit=2, lease=LEASE)
        assert all("mime" not in m.__dict__ for m in claimed)
        assert claimed[0].begin_attempt(LEASE) is True
        assert b"Subject: m0" in claimed[0].__dict__["mime"]
        claimed[0].forget_bytes()
        assert "mime" not in claimed[0].__dict__

    def test_large_messages_are_read_in_pieces(self, outbox, monkeypatch):
        from django_mailkit import _sql

        monkeypatch.setattr(_sql, "INLINE_BYTES", 100)
        (record,) = queue(1)
        stored = bytes(OutboxMessage.objects.get(pk=record.pk).mime)
        assert len(stored) > 250  # three pieces
        (claimed,) = OutboxMessage.objects.claim("w", limit=1, lease=LEASE)
        assert claimed.begin_attempt(LEASE) is True
        assert claimed.__dict__["mime"] == stored
        assert type(claimed.__dict__["mime"]) is bytes
        assert deliver_batch([claimed], worker="w").of(record.pk) is Result.SENT

    def test_each_message_bytes_loaded_only_while_it_is_sent(self, outbox, monkeypatch):
        from django_mailkit import delivery

        queue(3)
        size = max(OutboxMessage.objects.values_list("size", flat=True))
        # Room for one message per group: each is loaded alone.
        monkeypatch.setattr(delivery, "GROUP_BYTES", size)
        claimed = OutboxMessage.objects.claim("w", limit=3, lease=LEASE)
        loaded = []

        def count_loaded(message):
            loaded.append(sum("mime" in m.__dict__ for m in claimed))

        HookBackend.hook = count_loaded
        assert len(deliver_batch(claimed, worker="w").sent) == 3
        assert loaded == [1, 1, 1]

    def test_a_group_is_loaded_together_within_its_bytes(self, outbox, monkeypatch):
        from django_mailkit import delivery

        queue(5)
        size = max(OutboxMessage.objects.values_list("size", flat=True))
        monkeypatch.setattr(delivery, "GROUP_BYTES", 2 * size)  # two at a time
        claimed = OutboxMessage.objects.claim("w", limit=5, lease=LEASE)
        loaded = []

        def count_loaded(message):
            loaded.append(sum("mime" in m.__dict__ for m in claimed))

        HookBackend.hook = count_loaded
        assert len(deliver_batch(claimed, worker="w").sent) == 5
        assert loaded == [2, 1, 2, 1, 1]


class TestSigterm:
    """The command's first SIGTERM finishes the message in flight; no exit at once."""

    def test_first_sigterm_finishes_the_message_in_flight(self, outbox, capsys):
        queue(4)

        def sigterm(message):
            HookBackend.hook = None
            os.kill(os.getpid(), signal.SIGTERM)

        HookBackend.hook = sigterm
        run_worker_command("--interval", "0", "--batch-size", "4")
        assert "Finishing the message in flight" in capsys.readouterr().err
        assert len(HookBackend.delivered) == 1
        first, *rest = OutboxMessage.objects.order_by("pk")
        assert (first.status, first.attempts) == (Status.SENT, 1)
        assert first.recipient_set.get().status == RecipientStatus.SENT
        # The rest of the batch went back untried and uncharged.
        assert [(m.status, m.attempts, m.claimed_by) for m in rest] == [
            (Status.QUEUED, 0, "")
        ] * 3
