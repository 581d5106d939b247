"""
The worker's messages one after another over one SMTP connection: with
PIPELINING, each message's content goes out with the next one's commands
(one round trip a message), and every check made before a message's send
(SIGTERM, the lease, the age of unwritten results, the stored addresses)
still holds for each message of the run. Each test runs against a server
with PIPELINING and one without.
"""

import os
import signal
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.db import OperationalError
from django.test import override_settings
from django.utils import timezone

from django_mailkit import send_mail
from django_mailkit.backends import smtp as smtp_backend
from django_mailkit.delivery import Result, deliver_batch
from django_mailkit.models import (
    OutboxMessage,
    OutboxMessageQuerySet,
    Recipient,
    RecipientStatus,
    Status,
)
from django_mailkit.worker import Worker
from tests.mailers import outbox_via_smtp
from tests.test_outbox_fencing import LEASE, run_worker_command, take_over

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(smtp_server_factory):
    server = smtp_server_factory()
    with override_settings(
        MAILERS=outbox_via_smtp(server, timeout=5),
        MAILKIT={"USE_TASKS": False, "MAX_ATTEMPTS": 3},
    ):
        yield server


def queue(count):
    for i in range(count):
        send_mail(f"m{i}", "body", None, [f"u{i}@example.com"])
    return list(OutboxMessage.objects.order_by("pk"))


def delivered(server):
    return [d.message["Subject"] for d in server.deliveries]


def statuses():
    return {
        m.subject: (m.status, m.attempts) for m in OutboxMessage.objects.order_by("pk")
    }


@pytest.fixture
def turns(monkeypatch):
    """
    How many times the client went from reading the server's replies to
    writing: the round trips, EHLO and QUIT included.
    """
    count = [0]
    real_connect = smtp_backend.EmailBackend._connect

    def connect(self):
        connection = real_connect(self)
        send, getreply = connection.send, connection.getreply
        reading = [True]

        def counted_send(data):
            if reading[0]:
                count[0] += 1
                reading[0] = False
            return send(data)

        def counted_getreply():
            reading[0] = True
            return getreply()

        connection.send = counted_send
        connection.getreply = counted_getreply
        return connection

    monkeypatch.setattr(smtp_backend.EmailBackend, "_connect", connect)
    return count


@pytest.fixture
def after_send(monkeypatch):
    """
    ``after_send(hook, connections=None)``: call ``hook(data)`` after each
    write of bytes on the SMTP connections opened from then on; past
    ``connections`` of them, opening another is refused.
    """

    def install(hook, *, connections=None):
        real_connect = smtp_backend.EmailBackend._connect
        opened = []

        def connect(self):
            opened.append(self)
            if connections is not None and len(opened) > connections:
                raise ConnectionRefusedError("refused")
            connection = real_connect(self)
            send = connection.send

            def hooked(data):
                result = send(data)
                if isinstance(data, bytes):
                    hook(data)
                return result

            connection.send = hooked
            return connection

        monkeypatch.setattr(smtp_backend.EmailBackend, "_connect", connect)

    return install


def test_a_group_costs_one_round_trip_a_message(server, turns):
    queue(10)
    stats = Worker(once=True, interval=0).run()
    assert stats.sent == 10
    assert delivered(server) == [f"m{i}" for i in range(10)]
    assert set(statuses().values()) == {(Status.SENT, 1)}
    if server.pipelining:
        # EHLO, a round trip per message (its commands, with the content
        # of the one before), the last content, QUIT. Two round trips a
        # message when each message has a pipeline of its own.
        assert turns[0] <= 10 + 3
    else:
        # MAIL, RCPT, DATA and the content: one command at a time.
        assert turns[0] >= 4 * 10


def test_sigterm_during_a_run_finishes_what_is_on_the_wire(server):
    """
    A SIGTERM while the server takes the first message: with PIPELINING,
    the second message's commands went out with the first one's content,
    so it is finished too; nothing after it starts. Everything sent is
    recorded sent; the rest goes back untried and uncharged.
    """
    queue(6)

    def sigterm(delivery):
        server.on_delivery = None
        os.kill(os.getpid(), signal.SIGTERM)

    server.on_delivery = sigterm
    run_worker_command("--interval", "0", "--batch-size", "6")
    sent = ["m0", "m1"] if server.pipelining else ["m0"]
    assert delivered(server) == sent
    assert statuses() == {
        f"m{i}": (Status.SENT, 1) if f"m{i}" in sent else (Status.QUEUED, 0)
        for i in range(6)
    }
    released = OutboxMessage.objects.filter(status=Status.QUEUED)
    assert {m.claimed_by for m in released} == {""}


def test_a_message_taken_over_during_the_run_is_not_sent(
    server, monkeypatch, after_send
):
    """
    The worker is paused past its lease once the second message's commands
    are out, and another worker takes the fourth over meanwhile. A lease
    more than half spent ends the run before its message, and the loop
    renews it (fenced): the fourth is not sent, and its row stays as the
    other worker left it; the rest go.
    """
    records = queue(6)
    claimed = OutboxMessage.objects.claim("slow", limit=6, lease=LEASE)
    taken = {}
    real_now = timezone.now

    def paused(data):
        if b"<u1@example.com>" in data and not taken:
            taken["row"] = take_over(records[3].pk)
            monkeypatch.setattr(timezone, "now", lambda: real_now() + LEASE)

    after_send(paused)
    result = deliver_batch(claimed, worker="slow", lease=LEASE)
    monkeypatch.setattr(timezone, "now", real_now)
    assert delivered(server) == ["m0", "m1", "m2", "m4", "m5"]
    assert result.of(records[3].pk) is Result.LEASE_LOST
    fourth = OutboxMessage.objects.get(pk=records[3].pk)
    assert (fourth.status, fourth.claimed_by, fourth.attempts) == (
        Status.SENDING,
        "other",
        0,
    )
    assert fourth.claim_token == taken["row"].claim_token
    assert fourth.recipient_set.get().status == RecipientStatus.PENDING
    assert {s for k, s in statuses().items() if k != "m3"} == {(Status.SENT, 1)}


def test_results_are_written_every_record_group_seconds(server, monkeypatch):
    """
    Against a slow server (0.15 s a message), a run stops starting messages
    once RECORD_GROUP_SECONDS (0.2 s) have passed, and the results are
    written before the next message goes: never more than three messages
    accepted and unwritten (the duplicate window), never one write for
    the whole group.
    """
    server.stall("DATA", 0.15)
    queue(6)
    writes = []
    record_attempts = OutboxMessageQuerySet.record_attempts

    def spy(self, outcomes, **kwargs):
        if outcomes:
            written = OutboxMessage.objects.filter(status=Status.SENT).count()
            writes.append((len(outcomes), len(server.deliveries) - written))
        return record_attempts(self, outcomes, **kwargs)

    monkeypatch.setattr(OutboxMessageQuerySet, "record_attempts", spy)
    with override_settings(MAILKIT={"USE_TASKS": False, "RECORD_GROUP_SECONDS": 0.2}):
        assert Worker(once=True, interval=0).run().sent == 6
    assert len(writes) > 1
    assert all(unwritten <= 3 for _, unwritten in writes), writes
    assert sum(size for size, _ in writes) == 6


def test_a_tampered_row_inside_a_run_fails_alone(server):
    """
    A stored recipient that fails the envelope check ends the run before
    its message: that one fails alone, unsent, and the messages after it
    go in a run of their own.
    """
    records = queue(5)
    Recipient.objects.filter(message=records[2]).update(
        address="x@example.com>\r\nRCPT TO:<evil@example.com"
    )
    assert Worker(once=True, interval=0).run().sent == 4
    assert delivered(server) == ["m0", "m1", "m3", "m4"]
    assert all(d.rcpt_tos != ["evil@example.com"] for d in server.deliveries)
    assert all(b"evil" not in c for s in server.sessions for c in s.commands)
    bad = OutboxMessage.objects.get(pk=records[2].pk)
    assert bad.status == Status.FAILED
    assert bad.recipient_set.get().smtp_code == 553


def test_a_hang_up_inside_a_run(server):
    """
    The server hangs up after the second message's content: that one is
    retried (the server may have it: the one-transaction window); the
    first is sent, and the rest go over a new connection in the same run.
    """
    server.hang_up_during_data(times=1, skip=1)
    queue(5)
    Worker(once=True, interval=0).run()
    assert delivered(server) == ["m0", "m2", "m3", "m4"]
    assert statuses() == {
        "m0": (Status.SENT, 1),
        "m1": (Status.QUEUED, 1),
        "m2": (Status.SENT, 1),
        "m3": (Status.SENT, 1),
        "m4": (Status.SENT, 1),
    }
    first, *rest = [d.session.number for d in server.deliveries]
    assert set(rest) == {rest[0]} != {first}


def test_a_lease_renewal_is_never_made_inside_a_run(server, monkeypatch):
    """
    Half the lease is spent: a run ends at each message whose lease needs
    renewing, and the worker's loop renews it (fenced) with nothing of the
    run left unsent. The second message's renewal meets a database error:
    the batch stops there, the first message sent and recorded, nothing
    after it sent.
    """
    queue(5)
    claimed = OutboxMessage.objects.claim("w", limit=5, lease=LEASE)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + LEASE * 0.6)
    real_renew = OutboxMessage.renew_lease
    seen = []

    def renew(self, lease):
        # What the server had when the renewal was asked for.
        seen.append((self.subject, delivered(server)))
        if self.subject == "m1":
            raise OperationalError("server closed the connection unexpectedly")
        return real_renew(self, lease)

    monkeypatch.setattr(OutboxMessage, "renew_lease", renew)
    with pytest.raises(OperationalError):
        deliver_batch(claimed, worker="w", lease=LEASE)
    monkeypatch.setattr(timezone, "now", real_now)
    assert seen == [("m0", []), ("m1", ["m0"])]
    assert delivered(server) == ["m0"]
    assert statuses() == {
        "m0": (Status.SENT, 1),
        **{f"m{i}": (Status.SENDING, 0) for i in range(1, 5)},
    }


def test_a_message_s_content_never_waits_for_the_database(server, monkeypatch):
    """
    A renewal that blocks (here: long enough for the message before to be
    taken over) comes after that message's content is answered, so a lease
    lost meanwhile never lets held-back content go out.
    """
    records = queue(4)
    claimed = OutboxMessage.objects.claim("w", limit=4, lease=LEASE)
    real_now = timezone.now
    half_spent = lambda: real_now() + LEASE * 0.6  # noqa: E731
    monkeypatch.setattr(timezone, "now", half_spent)
    real_renew = OutboxMessage.renew_lease
    before = []

    def renew(self, lease):
        if self.subject == "m2" and not before:
            monkeypatch.setattr(timezone, "now", real_now)
            take_over(records[1].pk)
            before.extend(delivered(server))
            monkeypatch.setattr(timezone, "now", half_spent)
        return real_renew(self, lease)

    monkeypatch.setattr(OutboxMessage, "renew_lease", renew)
    deliver_batch(claimed, worker="w", lease=LEASE)
    monkeypatch.setattr(timezone, "now", real_now)
    assert before == ["m0", "m1"]
    assert delivered(server) == ["m0", "m1", "m2", "m3"]


def test_sigterm_after_a_lost_lease_keeps_what_was_sent(
    server, monkeypatch, after_send
):
    """
    The second message is taken over during the run, and a SIGTERM comes
    while the server takes the third: what went out stays recorded as sent
    (none of it released to be sent again), the rest goes back untried.
    """
    records = queue(6)
    claimed = OutboxMessage.objects.claim("slow", limit=6, lease=LEASE)
    real_now = timezone.now
    stop = threading.Event()

    def paused(data):
        if b"<u0@example.com>" in data and timezone.now is real_now:
            take_over(records[1].pk)
            monkeypatch.setattr(timezone, "now", lambda: real_now() + LEASE)

    after_send(paused)
    server.on_delivery = lambda d: d.message["Subject"] == "m2" and stop.set()
    result = deliver_batch(claimed, worker="slow", lease=LEASE, should_stop=stop.is_set)
    monkeypatch.setattr(timezone, "now", real_now)
    # With the clock past half the lease, every message's lease needs
    # renewing: each goes in a run of its own, so nothing follows m2.
    sent = ["m0", "m2"]
    assert delivered(server) == sent
    assert result.of(records[1].pk) is Result.LEASE_LOST
    assert {k: v for k, v in statuses().items() if k != "m1"} == {
        f"m{i}": (Status.SENT, 1) if f"m{i}" in sent else (Status.QUEUED, 0)
        for i in range(6)
        if i != 1
    }


@pytest.fixture(scope="module")
def dkim_pem():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def test_a_message_that_cannot_be_signed_fails_alone(smtp_server_factory, dkim_pem):
    """
    With DKIM, a stored message whose header block can't be signed (a row
    edited by hand) fails alone, unsent; the others of its run go.
    """
    server = smtp_server_factory()
    dkim = {"domain": "example.com", "selector": "s1", "private_key": dkim_pem}
    with override_settings(
        MAILERS=outbox_via_smtp(server, timeout=5, dkim=dkim),
        MAILKIT={"USE_TASKS": False},
    ):
        records = queue(5)
        bad = b" folded\r\nSubject: m3\r\n\r\nbody\r\n"
        OutboxMessage.objects.filter(pk=records[3].pk).update(mime=bad, size=len(bad))
        assert Worker(once=True, interval=0).run().sent == 4
    assert delivered(server) == ["m0", "m1", "m2", "m4"]
    failed = OutboxMessage.objects.get(pk=records[3].pk)
    assert failed.status == Status.FAILED
    assert "SigningError" in failed.last_error


def test_chunked_recipients_and_a_421_inside_a_run(server):
    """Nobody gets a message twice, and each message is charged once."""
    server.max_recipients = 2
    server.reply("MAIL", "421 4.3.2 Going down", times=1)
    for i in range(4):
        send_mail(f"m{i}", "b", None, [f"u{i}{j}@example.com" for j in range(5)])
    Worker(once=True, interval=0).run()
    OutboxMessage.objects.update(next_attempt_at=timezone.now())
    Worker(once=True, interval=0).run()
    recipients = [r for d in server.deliveries for r in d.rcpt_tos]
    assert sorted(recipients) == sorted(
        f"u{i}{j}@example.com" for i in range(4) for j in range(5)
    )
    assert set(statuses().values()) <= {(Status.SENT, 1), (Status.SENT, 2)}
    assert list(statuses().values()).count((Status.SENT, 2)) == 1


def test_a_reconnection_refused_leaves_the_rest_of_the_run_untried(server):
    """
    The server hangs up after the second message's content, and answers
    421 to the first MAIL on the new connection. The message that got the
    421 is retried (charged); those after it were never asked to start: the
    loop sends them over a connection of their own, charged once.
    """
    server.hang_up_during_data(times=1, skip=1)
    server.reply("MAIL", "421 4.3.2 Going down", times=1, skip=2)
    queue(5)
    Worker(once=True, interval=0).run()
    assert delivered(server) == ["m0", "m3", "m4"]
    assert statuses() == {
        "m0": (Status.SENT, 1),
        "m1": (Status.QUEUED, 1),
        "m2": (Status.QUEUED, 1),
        "m3": (Status.SENT, 1),
        "m4": (Status.SENT, 1),
    }


def test_sigterm_and_no_connection_leave_the_rest_untried(server, after_send):
    """
    A SIGTERM as the second message's content goes out, then the server
    hangs up and no new connection can be opened: the messages the run
    never asked to start go back untried and uncharged.
    """
    queue(5)
    claimed = OutboxMessage.objects.claim("w", limit=5, lease=LEASE)
    stop = threading.Event()
    after_send(lambda data: b"Subject: m1" in data and stop.set(), connections=1)
    server.hang_up_during_data(times=1, skip=1)
    deliver_batch(claimed, worker="w", lease=LEASE, should_stop=stop.is_set)
    assert delivered(server) == ["m0"]
    untried = {f"m{i}": (Status.QUEUED, 0) for i in range(2, 5)}
    if not server.pipelining:
        # m1's commands went before its content (and the SIGTERM).
        assert statuses() == {
            "m0": (Status.SENT, 1),
            "m1": (Status.QUEUED, 1),
            **untried,
        }
    else:
        # m1's content went out with m2's commands: both are in flight.
        assert statuses() == {
            "m0": (Status.SENT, 1),
            "m1": (Status.QUEUED, 1),
            "m2": (Status.QUEUED, 1),
            "m3": (Status.QUEUED, 0),
            "m4": (Status.QUEUED, 0),
        }


def test_sigterm_releases_an_unsignable_message_untried(smtp_server_factory, dkim_pem):
    """
    A message that can't be signed, after a SIGTERM ended the run before
    it, goes back untried like the others, not failed.
    """
    server = smtp_server_factory()
    dkim = {"domain": "example.com", "selector": "s1", "private_key": dkim_pem}
    stop = threading.Event()
    server.on_delivery = lambda d: stop.set()
    with override_settings(
        MAILERS=outbox_via_smtp(server, timeout=5, dkim=dkim),
        MAILKIT={"USE_TASKS": False},
    ):
        records = queue(5)
        bad = b" folded\r\nSubject: m3\r\n\r\nbody\r\n"
        OutboxMessage.objects.filter(pk=records[3].pk).update(mime=bad, size=len(bad))
        claimed = OutboxMessage.objects.claim("w", limit=5, lease=LEASE)
        deliver_batch(claimed, worker="w", lease=LEASE, should_stop=stop.is_set)
    unsigned = OutboxMessage.objects.get(pk=records[3].pk)
    assert (unsigned.status, unsigned.attempts) == (Status.QUEUED, 0)
    assert "m3" not in delivered(server)


def test_between_transactions_the_content_goes_before_the_renewal(
    smtp_server_factory, monkeypatch, after_send
):
    """
    A message in several transactions: the lease is renewed (a database
    call) only once the last transaction's content is answered, never while
    it waits unsent; a lease found lost stops the next transaction.
    """
    server = smtp_server_factory()
    with override_settings(
        MAILERS=outbox_via_smtp(server, timeout=5, max_recipients_per_transaction=2),
        MAILKIT={"USE_TASKS": False},
    ):
        send_mail("s", "b", None, [f"u{i}@example.com" for i in range(6)])
        real_now = timezone.now
        seen = []

        def half_spent_after_the_first(data):
            if b"<u1@example.com>" in data:
                later = lambda: real_now() + LEASE * 0.6  # noqa: E731
                monkeypatch.setattr(timezone, "now", later)

        def renew(self, lease):
            seen.append([d.rcpt_tos for d in server.deliveries])
            return False  # taken over meanwhile

        after_send(half_spent_after_the_first)
        monkeypatch.setattr(OutboxMessage, "renew_lease", renew)
        (claimed,) = OutboxMessage.objects.claim("w", limit=1, lease=LEASE)
        deliver_batch([claimed], worker="w", lease=LEASE)
        monkeypatch.setattr(timezone, "now", real_now)
    assert seen == [[["u0@example.com", "u1@example.com"]]]
    assert [d.rcpt_tos for d in server.deliveries] == [
        ["u0@example.com", "u1@example.com"]
    ]
