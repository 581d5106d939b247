"""
The shared limits: the rate option's token bucket, the connection slots, and
the worker's use of them. Fast, on SQLite (and again on PostgreSQL); the
multi-process guarantees are in test_limits_concurrency.py.
"""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings

from django_mailkit import EmailMessage, InvalidMailer, mailers
from django_mailkit.limits import (
    ConnectionSlot,
    Gate,
    MailerLimit,
    SlotLease,
    parse_rate,
    take_tokens,
)
from django_mailkit.models import Attempt, OutboxMessage, Status
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp
from tests.smtpserver import SMTPTestServer

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SMTP = "django_mailkit.backends.smtp.EmailBackend"


def db_now():
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        else:
            cursor.execute("SELECT (julianday('now') - 2440587.5) * 86400.0")
        return cursor.fetchone()[0]


# The options.


@pytest.mark.parametrize(
    ("text", "per_second", "burst"),
    [
        ("50/s", 50, 5),
        ("600/m", 10, 1),
        ("1000/h", 1000 / 3600, 1),
        ("2.5/s", 2.5, 1),
        ("12000/s", 12000, 1200),
    ],
)
def test_rates(text, per_second, burst):
    rate = parse_rate(text)
    assert rate.per_second == pytest.approx(per_second)
    assert rate.burst == burst
    assert str(rate) == text


@pytest.mark.parametrize(
    "value", ["600/d", "600", 600, "0/s", "-5/s", " 5/s", "5 /s", "nan/s", "/m"]
)
def test_bad_rate_names_the_option(value):
    config = {"BACKEND": SMTP, "OPTIONS": {"host": "localhost", "rate": value}}
    with override_settings(MAILERS={"smtp": config}), pytest.raises(InvalidMailer) as e:
        mailers["smtp"]
    assert str(e.value) == (
        "MAILERS['smtp']['OPTIONS']['rate']: must be a number of messages per "
        "second, minute or hour, such as '50/s', '600/m' or '1000/h' "
        f"(got {value!r})."
    )


def test_no_rate_and_no_connection_limit_by_default():
    config = {"BACKEND": SMTP, "OPTIONS": {"host": "localhost"}}
    with override_settings(MAILERS={"smtp": config}):
        backend = mailers["smtp"]
    assert backend.rate is None
    assert backend.max_connections_total is None


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_bad_max_connections_total_names_the_option(value):
    config = {
        "BACKEND": SMTP,
        "OPTIONS": {"host": "localhost", "max_connections_total": value},
    }
    with override_settings(MAILERS={"smtp": config}), pytest.raises(InvalidMailer) as e:
        mailers["smtp"]
    assert str(e.value) == (
        "MAILERS['smtp']['OPTIONS']['max_connections_total']: must be a whole "
        f"number of at least 1, or None for no limit (got {value!r})."
    )


# The token bucket.


def test_a_new_bucket_is_full_then_empty():
    rate = parse_rate("50/s")  # a burst of 5
    assert take_tokens("m", rate, 3) == (3, 0.0)
    # Hold the refill still: a stamp ahead of the database's clock.
    MailerLimit.objects.filter(mailer="m").update(tokens=2.5, stamp=db_now() + 60)
    assert take_tokens("m", rate, 3)[0] == 2  # whole tokens only
    taken, wait = take_tokens("m", rate, 3)
    assert taken == 0
    # Half a token left: the next one is due in a hundredth of a second.
    assert 0 < wait <= 0.011
    assert MailerLimit.objects.get().tokens == pytest.approx(0.5)


def test_tokens_come_back_at_the_rate():
    rate = parse_rate("10/s")  # a burst of 1
    assert take_tokens("m", rate)[0] == 1
    # 50 ms ago, by the database's clock, the bucket was empty.
    MailerLimit.objects.filter(mailer="m").update(tokens=0, stamp=db_now() - 0.05)
    taken, wait = take_tokens("m", rate)
    assert taken == 0
    assert 0 < wait <= 0.051
    time.sleep(wait + 0.005)
    assert take_tokens("m", rate)[0] == 1


def test_the_bucket_never_holds_more_than_its_burst():
    rate = parse_rate("50/s")
    take_tokens("m", rate)
    # An hour of quiet.
    MailerLimit.objects.filter(mailer="m").update(tokens=0, stamp=db_now() - 3600)
    assert take_tokens("m", rate, 100)[0] == 5


def test_each_mailer_has_its_own_bucket():
    rate = parse_rate("1/m")
    assert take_tokens("a", rate)[0] == 1
    assert take_tokens("b", rate)[0] == 1
    assert take_tokens("a", rate)[0] == 0
    assert MailerLimit.objects.count() == 2


def test_taking_greedily_keeps_to_the_rate():
    """Over half a second, at most the burst plus the rate's share."""
    rate = parse_rate("40/s")  # a burst of 4
    started = time.monotonic()
    taken = 0
    while time.monotonic() - started < 0.5:
        got, wait = take_tokens("m", rate)
        taken += got
        if not got:
            time.sleep(wait)
    elapsed = time.monotonic() - started
    assert taken <= 4 + 40 * elapsed + 1
    # And close to it (a loaded machine oversleeps now and then).
    assert taken >= 40 * elapsed * 0.5


# Connection slots.


def test_slots_are_shared_and_freed():
    lease = timedelta(seconds=60)
    first, second, third = (
        SlotLease("smtp", 2, worker=name, lease=lease) for name in "abc"
    )
    assert first.acquire() and second.acquire()
    assert {first.number, second.number} == {0, 1}
    assert not third.acquire()
    first.release()
    assert third.acquire()
    assert ConnectionSlot.objects.filter(mailer="smtp").count() == 2
    # Only who holds a slot can free it.
    first.number = third.number
    first.release()
    assert ConnectionSlot.objects.get(number=third.number).holder == third.holder


def test_a_crashed_workers_slot_expires():
    crashed = SlotLease("smtp", 1, worker="crashed", lease=timedelta(seconds=1))
    assert crashed.acquire()
    acquired = time.monotonic()
    # It never releases the slot: the next worker waits for the lease.
    rescuer = SlotLease("smtp", 1, worker="rescuer", lease=timedelta(seconds=60))
    assert not rescuer.acquire()
    assert time.monotonic() - acquired < 1  # (or the test proves nothing)
    time.sleep(max(0, acquired + 1.05 - time.monotonic()))
    assert rescuer.acquire()
    # The crashed worker, if it was only paused, finds it lost the slot and
    # can't free the rescuer's.
    crashed._renew_at = 0
    assert not crashed.renew()
    crashed.number = rescuer.number
    crashed.release()
    assert ConnectionSlot.objects.get().holder == rescuer.holder


def test_a_slot_is_renewed_once_half_its_lease_is_spent():
    now = [1000.0]
    slot = SlotLease(
        "smtp", 1, worker="w", lease=timedelta(seconds=10), clock=lambda: now[0]
    )
    assert slot.acquire()
    expires = ConnectionSlot.objects.get().expires
    now[0] += 4
    assert slot.renew()
    assert ConnectionSlot.objects.get().expires == expires  # not yet
    now[0] += 2
    time.sleep(0.01)
    assert slot.renew()
    assert ConnectionSlot.objects.get().expires > expires


# The worker.


@pytest.fixture
def limited():
    """An outbox delivering through an SMTP sink; the test sets the limits."""
    server = SMTPTestServer()
    server.start()

    def configure(lease=60, **limits):
        return override_settings(
            MAILERS=outbox_via_smtp(server, timeout=5, **limits),
            MAILKIT={"USE_TASKS": False, "LEASE_SECONDS": lease},
        )

    server.configure = configure
    yield server
    server.stop()


def queue(count):
    mailers.default.send_messages(
        [
            EmailMessage(f"m{i}", "body", "f@example.com", [f"u{i}@example.com"])
            for i in range(count)
        ]
    )


def test_the_worker_keeps_to_the_rate(limited):
    with limited.configure(rate="40/s"):
        queue(24)
        started = time.monotonic()
        stats = Worker(once=True, interval=0).run()
    assert stats.sent == 24
    times = sorted(d.accepted_at for d in limited.deliveries)
    # A burst of 4, then one every 25 ms.
    assert times[-1] - started >= (24 - 4) / 40 * 0.95
    for start in times:
        assert sum(1 for t in times if start <= t < start + 0.25) <= 4 + 10 + 1


def test_no_token_before_half_the_lease_sends_the_rest_back_uncharged(limited):
    with limited.configure(rate="1/m", lease=0.4):
        queue(3)
        stats = Worker(once=True, interval=0).run()
    # The bucket's one token went to the first message; the others would
    # have waited a minute, past half the lease.
    assert stats.sent == 1
    assert len(limited.deliveries) == 1
    waiting = OutboxMessage.objects.exclude(status=Status.SENT)
    assert [(m.status, m.attempts, m.claimed_by) for m in waiting] == [
        (Status.QUEUED, 0, ""),
        (Status.QUEUED, 0, ""),
    ]
    assert Attempt.objects.count() == 1


def test_a_stopping_worker_does_not_wait_for_a_token(limited):
    # The next token is due in a minute, within half the lease: the worker
    # would sleep for it, but for the SIGTERM.
    with limited.configure(rate="1/m", lease=300):
        queue(2)
        worker = Worker(once=True, interval=0)
        started = time.monotonic()
        timer = threading.Timer(0.3, worker.request_stop)
        timer.start()
        stats = worker.run()
        timer.join()
    assert time.monotonic() - started < 2
    assert stats.sent == 1
    assert OutboxMessage.objects.filter(status=Status.QUEUED, attempts=0).count() == 1


def test_a_slot_held_elsewhere_holds_delivery_back_until_it_expires(limited):
    crashed = SlotLease("smtp", 1, worker="crashed", lease=timedelta(seconds=2.5))
    assert crashed.acquire()
    acquired = time.monotonic()
    with limited.configure(max_connections_total=1):
        queue(3)
        # It waits a second for the slot, then gives the batch back.
        first = Worker(once=True, interval=0).run()
        assert time.monotonic() - acquired < 2.5  # (or the test proves nothing)
        assert first.sent == 0
        assert not limited.sessions
        assert (
            OutboxMessage.objects.filter(status=Status.QUEUED, attempts=0).count() == 3
        )
        time.sleep(max(0, acquired + 2.55 - time.monotonic()))
        second = Worker(once=True, interval=0).run()
    assert second.sent == 3
    # The worker freed its slot when its batch was done.
    assert ConnectionSlot.objects.get().holder == ""


def test_the_gate_lets_unlimited_mailers_through(limited):
    with limited.configure():
        queue(1)
        gate = Gate(list(OutboxMessage.objects.all()), worker="w", lease=timedelta(60))
        assert gate.admit(OutboxMessage.objects.get())
    assert not MailerLimit.objects.exists()
    assert not ConnectionSlot.objects.exists()


# System checks.


def check_messages(mailer_settings):
    from tests.test_checks import mailkit_messages

    # Not about limits: no timeout (W004), Django < 6.1 without the bridge (W003).
    other = {"django_mailkit.W003", "django_mailkit.W004"}
    with override_settings(MAILERS=mailer_settings):
        return [m for m in mailkit_messages() if m.id not in other]


OUTBOX = "django_mailkit.backends.outbox.EmailBackend"


@pytest.mark.parametrize(
    ("option", "value"),
    [("rate", "600/d"), ("max_connections_total", 0)],
)
def test_bad_limits_fail_a_check(option, value):
    smtp = {"BACKEND": SMTP, "OPTIONS": {"host": "h", option: value}}
    outbox = {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "smtp"}}
    (message,) = check_messages({"default": outbox, "smtp": smtp})
    assert message.id == "django_mailkit.E009"
    assert message.msg.startswith(f"MAILERS['smtp']['OPTIONS'][{option!r}]: ")


def test_bad_priority_fails_a_check():
    smtp = {"BACKEND": SMTP, "OPTIONS": {"host": "h"}}
    outbox = {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "smtp", "priority": 1}}
    (message,) = check_messages({"default": outbox, "smtp": smtp})
    assert message.id == "django_mailkit.E009"
    assert message.msg == (
        "MAILERS['default']['OPTIONS']['priority']: must be one of 'bulk', "
        "'default', 'high' (got 1)."
    )


def test_limits_no_outbox_delivers_through_are_a_warning():
    smtp = {"BACKEND": SMTP, "OPTIONS": {"host": "h", "rate": "10/s"}}
    other = {
        "BACKEND": SMTP,
        "OPTIONS": {"host": "h", "rate": "1/s", "max_connections_total": 1},
    }
    outbox = {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "smtp"}}
    (message,) = check_messages({"default": outbox, "smtp": smtp, "other": other})
    assert message.id == "django_mailkit.W005"
    assert message.msg == (
        "MAILERS['other'] sets 'rate' and 'max_connections_total', but no outbox "
        "mailer delivers through it: the limits apply to outbox delivery only, "
        "and a direct send does not wait for them."
    )
    assert check_messages({"default": outbox, "smtp": smtp}) == []


def test_a_worker_with_no_token_sleeps_until_it_is_due(limited):
    """No spinning: one take, one read of when the next token is due, a sleep."""
    from django.test.utils import CaptureQueriesContext

    with limited.configure(rate="4/s"):
        queue(2)
        records = list(OutboxMessage.objects.order_by("pk"))
        sleeps = []

        def sleep(seconds):
            sleeps.append(seconds)
            time.sleep(seconds)

        gate = Gate(records, worker="w", lease=timedelta(seconds=60), sleep=sleep)
        assert gate.admit(records[0])  # the bucket's one token
        started = time.monotonic()
        with CaptureQueriesContext(connection) as queries:
            assert gate.admit(records[1])
        waited = time.monotonic() - started
    assert 0.2 <= waited < 1
    limit_table = MailerLimit._meta.db_table
    statements = [q["sql"] for q in queries if limit_table in q["sql"]]
    # Take (none), when is the next one due, sleep, take: a few, however
    # long the wait (twice that if it woke a hair early, by the database's
    # clock; spinning would be hundreds).
    assert len(statements) <= 6, statements
    assert sum(sleeps) >= 0.2


def test_a_delivery_task_honours_the_rate_too(limited):
    from django_mailkit.tasks import deliver_message_now

    with limited.configure(rate="1/m", lease=0.4):
        queue(2)
        first, second = OutboxMessage.objects.order_by("pk")
        assert deliver_message_now(first.pk) == "sent"
        # No token within half the lease: the message stays queued for
        # mailkit_worker, uncharged.
        assert deliver_message_now(second.pk) == "skipped"
    second.refresh_from_db()
    assert (second.status, second.attempts) == (Status.QUEUED, 0)
    assert len(limited.deliveries) == 1


def test_a_rate_too_slow_for_a_batch_is_a_warning():
    smtp = {"BACKEND": SMTP, "OPTIONS": {"host": "h", "rate": "1000/h"}}
    outbox = {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "smtp"}}
    with override_settings(MAILKIT={"BATCH_SIZE": 100, "LEASE_SECONDS": 300}):
        (message,) = check_messages({"default": outbox, "smtp": smtp})
    assert message.id == "django_mailkit.W006"
    assert message.msg == (
        "MAILERS['smtp']['OPTIONS']['rate'] is 1000/h: about 42 messages go out "
        "in half a lease (150 s), fewer than a worker claims "
        "(MAILKIT['BATCH_SIZE'] = 100); the rest of each batch goes back to the "
        "queue."
    )
    assert message.hint.endswith("to 41 or less.")
    with override_settings(MAILKIT={"BATCH_SIZE": 40, "LEASE_SECONDS": 300}):
        assert check_messages({"default": outbox, "smtp": smtp}) == []


def test_a_rate_too_slow_for_both_batches_is_two_warnings():
    smtp = {"BACKEND": SMTP, "OPTIONS": {"host": "h", "rate": "1000/h"}}
    outbox = {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "smtp"}}
    mailkit = {"BATCH_SIZE": 100, "LEASE_SECONDS": 300, "TASK_BATCH_SIZE": 50}
    with override_settings(MAILKIT=mailkit):
        worker, task = check_messages({"default": outbox, "smtp": smtp})
    assert (worker.id, task.id) == ("django_mailkit.W006", "django_mailkit.W006")
    assert "(MAILKIT['BATCH_SIZE'] = 100)" in worker.msg
    assert "(MAILKIT['TASK_BATCH_SIZE'] = 50)" in task.msg


def test_a_rate_too_slow_for_a_task_batch_is_a_warning():
    smtp = {"BACKEND": SMTP, "OPTIONS": {"host": "h", "rate": "1000/h"}}
    outbox = {"BACKEND": OUTBOX, "OPTIONS": {"deliver_using": "smtp"}}
    mailkit = {"BATCH_SIZE": 40, "LEASE_SECONDS": 300, "TASK_BATCH_SIZE": 50}
    with override_settings(MAILKIT=mailkit):
        (message,) = check_messages({"default": outbox, "smtp": smtp})
    assert message.id == "django_mailkit.W006"
    assert message.msg == (
        "MAILERS['smtp']['OPTIONS']['rate'] is 1000/h: about 42 messages go out "
        "in half a lease (150 s), fewer than a delivery task takes "
        "(MAILKIT['TASK_BATCH_SIZE'] = 50); the rest of each task's batch goes "
        "back to the queue, for mailkit_worker."
    )
    assert message.hint == "Set MAILKIT['TASK_BATCH_SIZE'] to 41 or less."
    # Without delivery tasks, or with a batch the rate sends: nothing.
    for more in ({"USE_TASKS": False}, {"TASK_BATCH_SIZE": 20}):
        with override_settings(MAILKIT={**mailkit, **more}):
            assert check_messages({"default": outbox, "smtp": smtp}) == []


def test_a_message_with_every_recipient_suppressed_takes_no_token_or_slot(limited):
    from django_mailkit.suppression import suppress

    suppress([f"u{i}@example.com" for i in range(3)], reason="bounced")
    # One token a minute: a second take would wait past half the lease.
    with limited.configure(rate="1/m", max_connections_total=1, lease=4):
        queue(3)
        started = time.monotonic()
        stats = Worker(once=True, interval=0).run()
        assert time.monotonic() - started < 1
        assert stats.suppressed == 3
        assert not limited.sessions
        # No bucket was touched, no slot taken.
        assert not MailerLimit.objects.exists()
        assert not ConnectionSlot.objects.exists()
        # The bucket's one token is still there for a message to send.
        EmailMessage("m", "body", "f@example.com", ["other@example.com"]).send()
        assert Worker(once=True, interval=0).run().sent == 1
